"""Transformers backend on tiny random models built offline (plumbing checks, answers mean nothing)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import hashlib
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("torch")
from PIL import Image

from mub.backends.base import Backend, Generation, Request
from mub.backends.local import MissingChatTemplateError
from mub.backends.transformers_backend import TransformersBackend, request_seed
from mub.config import DecodingSettings
from mub.testing.tiny_models import (
    ANSWER_LABELS,
    MARKER_FILE,
    TINY_ARCHITECTURES,
    answer_token_ids,
    build_tiny_model,
    parse_tiny_spec,
    resolve_model_spec,
)

LETTERS = ("A", "B", "C", "D", "E")
# The letters as they follow the tiny template's "Assistant:" prompt.
LETTER_TOKENS = tuple(f" {label}" for label in LETTERS)

QUESTIONS = (
    "What is shown?",
    "How many dogs are sitting on the red sofa next to the window in this picture?",
    "Which color is the car?",
    "Is it day or night? Look at the sky, the shadows and the street lights before you answer.",
    "Where is the man standing?",
    "Is there a cat?",
    "What animal is in the photo, and what is it holding in its mouth?",
)


def _requests() -> list[Request]:
    """Prompts of different lengths and images of different shapes, so padding matters."""
    requests = []
    for i, question in enumerate(QUESTIONS):
        image = Image.new("RGB", (24 + 9 * i, 40 - 3 * i), (37 * i % 256, 90, 200 - 20 * i))
        if question.startswith("Is "):
            prompt, options = f"{question}\nAnswer with Yes or No only.", ("Yes", "No")
        else:
            n = 3 + i % 3
            lines = "\n".join(f"{label}. choice {label.lower()}" for label in LETTERS[:n])
            prompt, options = f"{question}\n{lines}\nAnswer with the option letter only.", LETTERS[:n]
        requests.append(Request(key=f"item{i}/stage1", image=image, prompt=prompt, options=options))
    return requests


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matmuls gain nothing from threads, and on a busy machine two
    threads per process make these tests several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], str]:
    """Per architecture: an all-random model (long outputs exercise padding and
    caches over many steps), one whose every token is one of A-E (" A" ... " E"),
    one that favours A-C and the newline, and the default answering model."""
    root = tmp_path_factory.mktemp("tiny")
    built = {}
    for arch in TINY_ARCHITECTURES:
        built[arch, "plain"] = build_tiny_model(arch, root / f"{arch}-plain", answers=False)
        built[arch, "answers"] = build_tiny_model(arch, root / f"{arch}-answers")
        built[arch, "options"] = build_tiny_model(arch, root / f"{arch}-options", favour=LETTER_TOKENS, answers=False)
        built[arch, "newline"] = build_tiny_model(arch, root / f"{arch}-newline", favour=(" A", " B", " C", "\n"), answers=False)
    return {key: str(path) for key, path in built.items()}


def _backend(path: str, batch_size: int = 4, **decoding: object) -> TransformersBackend:
    settings = DecodingSettings(**{"max_new_tokens": 8, **decoding})
    return TransformersBackend(path, decoding=settings, batch_size=batch_size)


def _outputs(generations: list[Generation]) -> list[tuple[str, int]]:
    return [(g.text, g.extra["new_tokens"]) for g in generations]


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_generates_and_batched_equals_one_at_a_time(models: dict, arch: str) -> None:
    requests = _requests()
    batched = _backend(models[arch, "plain"], batch_size=4)
    assert isinstance(batched, Backend)
    lengths = {len(batched.tokenizer(t)["input_ids"]) for t in batched._prompt_texts(requests)}
    assert len(lengths) > 3  # different prompt lengths: left padding is exercised

    together = batched.generate(requests)
    alone = _backend(models[arch, "plain"], batch_size=1).generate(requests)

    assert len(together) == len(requests)
    for g in together:
        assert g.error is None and g.option_probs is None
        assert isinstance(g.text, str) and 1 <= g.extra["new_tokens"] <= 8
    assert _outputs(together) == _outputs(alone)
    # Each request is charged an equal share of its batch's wall time, and the model's own
    # time lies inside those batch times.
    shares = [g.seconds for g in together]
    assert len(set(shares)) <= -(-len(requests) // 4)
    assert 0 < batched.model_seconds <= sum(shares) * (1 + 1e-9)

    info = batched.describe()
    assert info["model"] == models[arch, "plain"]
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["decoding"]["scoring"] == "generate"
    assert info["plumbing_check"]["arch"] == arch
    assert set(info["versions"]) == {"transformers", "torch"}
    json.dumps(info)


def _hinted(requests: list[Request]) -> list[Request]:
    """Stage-2-like variants: the prompt itself contains an answer token (" B", " Yes")."""
    return [
        replace(r, key=r.key + "/hinted", prompt=f"{r.prompt}\nAnd the true answer is : {r.options[1]}")
        for r in requests
    ]


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("decoding", [{}, {"temperature": 1.0, "seed": 3}], ids=["greedy", "sampled"])
def test_default_tiny_models_answer_with_one_label_then_stop(models: dict, arch: str, decoding: dict) -> None:
    requests = _requests() + _hinted(_requests())
    generations = _backend(models[arch, "answers"], max_new_tokens=8, **decoding).generate(requests)
    labels = {" " + label for label in ANSWER_LABELS}
    for request, gen in zip(requests, generations):
        assert gen.error is None
        # The answer token, then the end-of-sequence token (not in the text).
        assert gen.text in labels and gen.extra["new_tokens"] == 2, (request.key, gen.text)
    # Which label wins depends on the prompt.
    assert len({gen.text for gen in generations}) >= 2


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_answer_marker_is_exactly_zero_except_on_answer_tokens(models: dict, arch: str) -> None:
    """The mechanism of the answer bias, checked in the residual stream of every layer."""
    import torch

    backend = _backend(models[arch, "answers"])
    requests = _hinted(_requests())
    inputs = backend._encode(backend._prompt_texts(requests), requests)
    with torch.inference_mode():
        hidden_states = backend.model(**inputs, output_hidden_states=True).hidden_states
    is_answer = torch.isin(inputs["input_ids"], torch.tensor(answer_token_ids(backend.tokenizer)))
    real = inputs["attention_mask"].bool()
    assert (is_answer & real).any()  # the hints put answer tokens into the prompts
    for layer, states in enumerate(hidden_states):
        marker = states[..., 0]
        assert (marker[real & ~is_answer] == 0).all(), layer
        assert (marker[real & is_answer] > 0).all(), layer


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_logprob_answer_equals_greedy_first_token(models: dict, arch: str) -> None:
    # Five options everywhere, so the model's first token is always an option;
    # the Yes/No requests are scored too, for the sum-to-one check.
    letter_requests = [replace(r, options=LETTERS) for r in _requests()]
    yes_no = [r for r in _requests() if r.options == ("Yes", "No")]
    path = models[arch, "options"]
    greedy = _backend(path, max_new_tokens=1).generate(letter_requests)
    scored = _backend(path, scoring="logprob").generate(letter_requests + yes_no)

    for request, score in zip(letter_requests + yes_no, scored):
        assert score.error is None
        assert list(score.option_probs) == list(request.options)
        assert sum(score.option_probs.values()) == pytest.approx(1.0, abs=1e-9)
        assert score.text == max(score.option_probs, key=score.option_probs.get)
        assert 0.0 < score.extra["option_mass"] <= 1.0
    for request, gen, score in zip(letter_requests, greedy, scored):
        assert gen.text.strip() in LETTERS and gen.text == " " + gen.text.strip()
        assert score.text == gen.text.strip(), (request.key, gen.text, score.option_probs)


def test_option_tokens_follow_the_template(models: dict) -> None:
    backend = _backend(models["llava", "plain"], scoring="logprob")
    ids = backend.option_token_ids(("A", "B", "Yes", "No"))
    # The tiny template answers "Assistant: B" after the prompt "Assistant:", so a
    # label's token carries the leading space.
    tokens = backend.tokenizer.convert_ids_to_tokens(list(ids.values()))
    assert tokens == ["ĠA", "ĠB", "ĠYes", "ĠNo"]
    assert ids["B"] != backend.tokenizer.convert_tokens_to_ids("B")


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_stops_only_where_the_stopping_rule_says(models: dict, arch: str) -> None:
    """eos (the paper's): newlines never end an answer. answer_line: an answer ends early only at the newline
    after a bare label (the favoured tokens " A", " B", " C"), and the text kept ends there."""
    requests = [replace(r, options=("A", "B", "C")) for r in _requests()]
    limit = 24
    full = _backend(models[arch, "newline"], batch_size=4, max_new_tokens=limit).generate(requests)
    assert all(g.extra["new_tokens"] == limit for g in full)
    assert any("\n" in g.text.strip() for g in full)
    batched = _backend(models[arch, "newline"], batch_size=4, max_new_tokens=limit, stop="answer_line").generate(requests)
    alone = _backend(models[arch, "newline"], batch_size=1, max_new_tokens=limit, stop="answer_line").generate(requests)
    assert _outputs(batched) == _outputs(alone)
    for gen, whole in zip(batched, full):
        first_line = re.match(r"\s*(\S[^\n]*)\n", whole.text)
        bare = first_line is not None and first_line.group(1).strip() in ("A", "B", "C")
        if bare:
            assert gen.text == whole.text[: first_line.end()] and gen.extra["new_tokens"] < limit, gen.text
        else:
            assert gen.text == whole.text and gen.extra["new_tokens"] == limit, gen.text
    # (tests/test_decoding_as_it_ran.py makes sure some answers do end early)


def test_results_return_in_original_order(models: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(models["llava", "plain"], batch_size=3)
    requests = _requests()
    seen_batches: list[list[int]] = []

    def fake_batch(batch: list[Request], texts: list[str]) -> list[Generation]:
        seen_batches.append([len(backend.tokenizer(t)["input_ids"]) for t in texts])
        return [Generation(text=r.key) for r in batch]

    monkeypatch.setattr(backend, "_generate_batch", fake_batch)
    out = backend.generate(requests)
    assert [g.text for g in out] == [r.key for r in requests]
    flat = [n for batch in seen_batches for n in batch]
    assert flat == sorted(flat) and max(map(len, seen_batches)) == 3
    assert flat != [len(backend.tokenizer(t)["input_ids"]) for t in backend._prompt_texts(requests)]


def test_sampling_is_reproducible_per_request(models: dict) -> None:
    requests = _requests()
    path = models["llava", "plain"]
    together = _backend(path, batch_size=4, temperature=1.0, seed=7).generate(requests)
    alone = _backend(path, batch_size=1, temperature=1.0, seed=7).generate(requests[::-1])[::-1]
    other_seed = _backend(path, batch_size=4, temperature=1.0, seed=8).generate(requests)
    assert _outputs(together) == _outputs(alone)
    assert _outputs(together) != _outputs(other_seed)
    assert together[0].extra["seed"] == request_seed(7, requests[0].key)


def test_with_decoding_shares_the_weights_and_decodes_as_a_new_backend(models: dict) -> None:
    """benchmarks/run.py compares decodings on one copy of the weights: the derived backend must decode exactly
    as a backend built with those settings, and leave the one it came from as it was."""
    requests = _requests()
    path = models["llava", "plain"]
    greedy = _backend(path)
    sampled = greedy.with_decoding(DecodingSettings(max_new_tokens=8, temperature=1.0, seed=7))
    assert sampled.model is greedy.model
    assert sampled.decoding == _backend(path, temperature=1.0, seed=7).decoding
    assert _outputs(sampled.generate(requests)) == _outputs(_backend(path, temperature=1.0, seed=7).generate(requests))
    assert greedy.decoding.greedy and _outputs(greedy.generate(requests)) == _outputs(_backend(path).generate(requests))
    assert _outputs(sampled.generate(requests)) != _outputs(greedy.generate(requests))


def test_missing_chat_template_points_at_option(models: dict, tmp_path: Path) -> None:
    folder = tmp_path / "no-template"
    shutil.copytree(models["idefics3", "plain"], folder)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config))

    with pytest.raises(MissingChatTemplateError, match="--chat-template FILE"):
        TransformersBackend(str(folder))

    template_file = tmp_path / "template.jinja"
    template_file.write_text(template)
    backend = TransformersBackend(str(folder), chat_template=str(template_file))
    assert backend.generate(_requests()[:2])[0].error is None
    assert backend.describe()["chat_template"] == str(template_file)


def _file_hashes(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_tiny_builds_are_deterministic(tmp_path: Path) -> None:
    first = build_tiny_model("gemma3", tmp_path / "a", seed=5)
    second = build_tiny_model("gemma3", tmp_path / "b", seed=5)
    other = build_tiny_model("gemma3", tmp_path / "c", seed=6)
    random = build_tiny_model("gemma3", tmp_path / "d", seed=5, answers=False)
    assert _file_hashes(first) == _file_hashes(second)
    assert _file_hashes(first)["model.safetensors"] != _file_hashes(other)["model.safetensors"]
    assert _file_hashes(first)["model.safetensors"] != _file_hashes(random)["model.safetensors"]
    label = json.loads((first / MARKER_FILE).read_text())
    assert "mean nothing" in label["note"] and label["answers"] == list(ANSWER_LABELS)
    assert json.loads((random / MARKER_FILE).read_text())["answers"] == []


def test_resolve_model_spec_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUB_CACHE", str(tmp_path))
    assert resolve_model_spec("org/some-model") == "org/some-model"
    path = Path(resolve_model_spec("tiny:llava"))
    assert path.parent == tmp_path / "tiny" and path.name.startswith("llava-test-0")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model_spec("tiny:llava")) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == [path.name]  # no staging folders left
    assert parse_tiny_spec("tiny:gemma3:bench:3") == ("gemma3", "bench", 3)
    with pytest.raises(ValueError, match="unknown tiny architecture"):
        parse_tiny_spec("tiny:nope")
