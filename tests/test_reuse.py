"""Work reuse in the transformers backend, multi-turn stage 2, and confidences end to end (plumbing checks on tiny random models).

A MUB item's stage-1 and stage-2 requests carry the same image object. The
backend then processes and encodes that image once (exact: outputs must not
change) and reuses the keys/values of the stage-1 prompt for the prefix the
stage-2 prompt shares with it (same arithmetic on fewer tokens: generated text
must not change, probabilities only in the last float bits).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("torch")
os.environ["HF_HUB_OFFLINE"] = "1"

from PIL import Image

from mub.backends.base import Exchange, Generation, Request
from mub.backends.transformers_backend import TransformersBackend, from_run_config
from mub.config import DecodingSettings, RunConfig
from mub.runs.runner import run
from mub.testing.tiny_models import TINY_ARCHITECTURES, build_tiny_model

QUESTIONS = (
    "What is shown?",
    "How many dogs are sitting on the red sofa next to the window in this picture?",
    "Is it day or night? Look at the sky before you answer.",
    "Which color is the car?",
    "Is there a cat?",
)
HINT = " And the true answer is : B"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("reuse-models")
    return {arch: str(build_tiny_model(arch, root / arch)) for arch in TINY_ARCHITECTURES}


def _stage1() -> list[Request]:
    """Images of different shapes (so padding processors pad) and prompts of different lengths."""
    requests = []
    for i, question in enumerate(QUESTIONS):
        image = Image.new("RGB", (30 + 11 * i, 44 - 4 * i), (41 * i % 256, 100, 180 - 25 * i))
        if question.startswith("Is "):
            prompt, options = f"{question}\nAnswer with Yes or No only.", ("Yes", "No")
        else:
            prompt, options = f"{question}\nA. one\nB. two\nC. three\nAnswer with the option letter only.", ("A", "B", "C")
        requests.append(Request(f"item{i}/stage1/0", image, prompt, options))
    return requests


def _stage2(stage1: list[Request]) -> list[Request]:
    """The hint after the question, same image objects, another order, plus one request with a new image."""
    hinted = [replace(r, key=r.key.replace("stage1", "stage2"), prompt=r.prompt.replace("\n", HINT + "\n", 1)) for r in stage1]
    return hinted[::-1]


def _two_stages(backend: TransformersBackend, extra: Request | None = None) -> list[Generation]:
    first = _stage1()
    second = _stage2(first)
    return backend.generate(first) + backend.generate(second + ([extra] if extra else []))


def _backend(path: str, scoring: str, **reuse: bool) -> TransformersBackend:
    return TransformersBackend(path, decoding=DecodingSettings(max_new_tokens=6, scoring=scoring), batch_size=2, **reuse)


def _exact(generations: list[Generation]) -> list[tuple]:
    return [(g.text, g.extra.get("new_tokens"), g.option_probs, g.error) for g in generations]


@pytest.mark.parametrize("scoring", ["generate", "logprob"])
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_image_reuse_gives_identical_outputs(models: dict, arch: str, scoring: str) -> None:
    reused = _backend(models[arch], scoring, reuse_images=True, reuse_prefix=False)
    plain = _backend(models[arch], scoring, reuse_images=False, reuse_prefix=False)

    assert _exact(_two_stages(reused)) == _exact(_two_stages(plain))
    # Stage 2 found every image processed and encoded already.
    assert reused.processor.image_processor._cache.hits >= len(QUESTIONS)
    assert reused._image_reuse.enabled and reused._image_reuse.cache.hits >= len(QUESTIONS)
    assert reused.describe()["reuse_images"] is True and plain.describe()["reuse_images"] is False


@pytest.mark.parametrize("scoring", ["generate", "logprob"])
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_prefix_reuse_matches_full_prompts(models: dict, arch: str, scoring: str) -> None:
    stranger = Request("new/stage1/0", Image.new("RGB", (40, 40), (5, 200, 90)), "Which color is the car?\nA. red\nB. blue", ("A", "B"))
    reused = _backend(models[arch], scoring, reuse_prefix=True)
    plain = _backend(models[arch], scoring, reuse_prefix=False)
    with_reuse = _two_stages(reused, stranger)
    without = _two_stages(plain, stranger)

    # Gemma 3's sliding-window cache is not a plain full-attention cache: no prefix reuse there.
    assert reused.reuse_prefix == (arch != "gemma3")
    if reused.reuse_prefix:
        assert reused._prefix.cache.hits >= len(QUESTIONS) - 1  # the batch holding the new image runs in full
    assert [(g.text, g.extra.get("new_tokens")) for g in with_reuse] == [(g.text, g.extra.get("new_tokens")) for g in without]
    for a, b in zip(with_reuse, without):
        assert a.error is None and b.error is None
        if scoring == "logprob":
            assert a.option_probs == pytest.approx(b.option_probs, abs=1e-5)


@pytest.mark.parametrize("scoring", ["generate", "logprob"])
def test_a_whole_stage_of_notes_reuses_every_items_prefix(models: dict, scoring: str) -> None:
    """Stage 2 of an implicit run: batch x notes requests in one call, sorted by length across them all."""
    first = _stage1()
    notes = [
        replace(r, key=r.key.replace("stage1/0", f"stage2/{n}"), prompt=r.prompt.replace("\n", f" Note {n}: {'look ' * n}closely.\n", 1))
        for n in range(3)
        for r in first
    ]
    reused = _backend(models["llava"], scoring, reuse_prefix=True)
    plain = _backend(models["llava"], scoring, reuse_prefix=False)
    # Caches smaller than the group (a runner group larger than the backend's batch):
    # a call's images must all stay cached until the next call.
    for cache in reused._image_caches:
        cache.capacity = 2
    with_reuse = reused.generate(first) + reused.generate(notes)
    without = plain.generate(first) + plain.generate(notes)
    assert reused._prefix.cache.hits == len(notes)  # every stage-2 batch ran on its items' cached prefixes
    assert reused._image_reuse.cache.hits == len(notes) and reused.processor.image_processor._cache.hits == len(notes)
    assert [(g.text, g.extra.get("new_tokens")) for g in with_reuse] == [(g.text, g.extra.get("new_tokens")) for g in without]
    if scoring == "logprob":
        for a, b in zip(with_reuse, without):
            assert a.option_probs == pytest.approx(b.option_probs, abs=1e-5)


def test_logprob_run_records_confidences(models: dict, tmp_path: Path) -> None:
    out = tmp_path / "logprob"
    config = RunConfig(model=models["llava"], scoring="logprob", protocol="deterministic", limit=6, batch_size=3, out=str(out), progress=False)
    backend = from_run_config(config)
    results = run(config, backend=backend)
    # The runner hands both stages the same image object, so stage 2 reused stage 1's work.
    assert backend._image_reuse.cache.hits >= 6 and backend._prefix.cache.hits >= 6
    written = json.loads((out / "results.json").read_text())
    assert written["results"] == results["results"]
    figures = written["results"]["explicit"]
    assert figures["n"] == 6 and figures["errors"] == 0

    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    before, after = [], []
    for record in records:
        answers = record["stage1"] + record["stage2"]
        for answer in answers:
            assert sum(answer["option_probs"].values()) == pytest.approx(1.0, abs=1e-9)
            assert answer["parsed"] == max(answer["option_probs"], key=answer["option_probs"].get)
        original = record["stage1"][0]["parsed"]
        before.append(record["stage1"][0]["option_probs"][original])
        after.append(record["stage2"][0]["option_probs"][original])
    assert figures["confidence_before"] == pytest.approx(sum(before) / len(before))
    assert figures["confidence_after_on_original"] == pytest.approx(sum(after) / len(after))
    assert figures["confidence_drop"] == pytest.approx(figures["confidence_before"] - figures["confidence_after_on_original"])


# ------------------------------------------------------------ multi-turn stage 2 (--dialogue multi)
# Stage 2 replays the stage-1 conversation with the model's own reply. The backend keeps the keys/values of the
# stage-1 prompt and of the answer it generated, and reuses them for the tokens the stage-2 conversation shares
# with them: the outputs must be those of the full prompts.


def _multi_turn_run(model: str, out: Path, reuse_prefix: bool) -> tuple[TransformersBackend, list[Request], dict]:
    config = RunConfig(
        model=model, protocol="deterministic", cue="opinion", dialogue="multi", limit=4, batch_size=2,
        max_new_tokens=6, out=str(out), progress=False, backend_options={"reuse_prefix": reuse_prefix},
    )  # fmt: skip
    backend = from_run_config(config)
    sent: list[Request] = []
    generate = backend.generate
    backend.generate = lambda requests: (sent.extend(requests), generate(requests))[1]  # type: ignore[method-assign]
    results = run(config, backend=backend)
    return backend, sent, results


def _outputs(out: Path) -> list[tuple]:
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return [(r["id"], [a["output"] for a in r["stage1"]], [(a["cue"], a["output"]) for a in r["stage2"]]) for r in records]


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_multi_turn_run_on_each_tiny_architecture(models: dict, arch: str, tmp_path: Path) -> None:
    backend, sent, results = _multi_turn_run(models[arch], tmp_path / "reuse", reuse_prefix=True)
    _, _, plain_results = _multi_turn_run(models[arch], tmp_path / "plain", reuse_prefix=False)

    figures = results["results"]["explicit"]
    assert figures["n"] == 4 and figures["errors"] == 0
    assert _outputs(tmp_path / "reuse") == _outputs(tmp_path / "plain")
    assert figures == plain_results["results"]["explicit"]
    # Stage 2 replayed each item's stage-1 prompt and the model's own reply, verbatim.
    stage1 = {r.key.split("/")[0]: r for r in sent if "/stage1/" in r.key}
    outputs = {item: first[0] for item, first, _ in _outputs(tmp_path / "reuse")}
    stage2 = [r for r in sent if "/stage2/" in r.key]
    assert len(stage2) == 4
    for request in stage2:
        item = request.key.split("/")[0]
        assert request.history == (Exchange(stage1[item].prompt, outputs[item]),)
        assert request.image is stage1[item].image and request.prompt.startswith("I think the answer is ")
    # Gemma 3's sliding-window cache is not a plain full-attention cache: no prefix reuse there.
    assert backend.reuse_prefix == (arch != "gemma3")
    if backend.reuse_prefix:
        assert backend._prefix.cache.hits >= 4


def test_the_generated_answer_is_reused_where_the_template_replays_it_token_for_token(models: dict, tmp_path: Path) -> None:
    """A template whose assistant turn starts exactly as its generation prompt ends (no space added)."""
    template = tmp_path / "exact.jinja"
    shipped = (Path(models["llava"]) / "chat_template.jinja").read_text()
    assert "'Assistant: '" in shipped
    template.write_text(shipped.replace("'Assistant: '", "'Assistant:'"))
    images = [Image.new("RGB", (30 + 7 * i, 40), (60 * i, 90, 20)) for i in range(3)]
    first = [Request(f"item{i}/stage1/0", image, f"Question {i}?\nA. one\nB. two", ("A", "B")) for i, image in enumerate(images)]

    def both_stages(reuse_prefix: bool) -> tuple[TransformersBackend, list, list[Request]]:
        backend = TransformersBackend(
            models["llava"], chat_template=str(template), decoding=DecodingSettings(max_new_tokens=6), batch_size=2,
            reuse_prefix=reuse_prefix,
        )  # fmt: skip
        replies = backend.generate(first)
        second = [
            Request(r.key.replace("stage1", "stage2"), r.image, "Are you sure?\nAnswer.", r.options, (Exchange(r.prompt, g.text),))
            for r, g in zip(first, replies)
        ]
        return backend, replies + backend.generate(second), second

    reused, with_reuse, second = both_stages(True)
    _, without, _ = both_stages(False)
    assert [(g.text, g.extra["new_tokens"]) for g in with_reuse] == [(g.text, g.extra["new_tokens"]) for g in without]

    # The stage-2 conversation shares more tokens with the cached stage 1 than its prompt: the answer's too.
    stage1_lengths = [int(n) for n in reused._encode(reused._prompt_texts(first), first)["attention_mask"].sum(dim=1)]
    reused.generate(first)  # the cache again holds stage 1 (stage 2 ran on it and stored nothing)
    inputs = reused._encode(reused._prompt_texts(second), second)
    plan = reused._prefix.plan(inputs, second)
    assert plan is not None
    shared = [int(n) for n in plan.attention_mask[:, : plan.cached].sum(dim=1)]
    assert all(s > length for s, length in zip(shared, stage1_lengths)), (shared, stage1_lengths)
