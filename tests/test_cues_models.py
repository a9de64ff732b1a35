"""Multi-turn stage 2 on the tiny random models (plumbing checks): end to end, and the stage-1 prefix reuse.

A multi-turn stage 2 replays the stage-1 conversation with the model's own
reply. The transformers backend keeps the keys/values of the stage-1 prompt
and of the answer it generated, and reuses them for the tokens the stage-2
conversation shares with them: the outputs must be those of the full prompts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("torch")
os.environ["HF_HUB_OFFLINE"] = "1"

from PIL import Image

from mub.backends.base import Exchange, Request
from mub.backends.transformers_backend import TransformersBackend, from_run_config
from mub.config import DecodingSettings, RunConfig
from mub.runs.runner import run
from mub.testing.tiny_models import TINY_ARCHITECTURES, build_tiny_model


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("multi-turn-models")
    return {arch: str(build_tiny_model(arch, root / arch)) for arch in TINY_ARCHITECTURES}


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
