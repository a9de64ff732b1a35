"""Draws of one prompt share one prefill (transformers backend), and the seeded sampler's random stream."""

from __future__ import annotations

import os
import time

os.environ["HF_HUB_OFFLINE"] = "1"

from collections import Counter
from dataclasses import replace
import pytest

pytest.importorskip("torch")
from PIL import Image

from mub.backends.base import Generation, Request
from mub.backends.common import request_seed
from mub.backends.transformers_backend import TransformersBackend, _seeded_sampler, prompt_groups
from mub.config import DecodingSettings
from mub.testing.tiny_models import TINY_ARCHITECTURES, build_tiny_model
from tests.test_reuse import one_thread  # noqa: F401 - the module's one-thread fixture

SAMPLED = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 11}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """All-random models: long, varied outputs, so a draw that read another's seed or row shows."""
    root = tmp_path_factory.mktemp("draw-models")
    return {arch: str(build_tiny_model(arch, root / arch, answers=False)) for arch in TINY_ARCHITECTURES}


def _draws() -> list[Request]:
    """Three draws of two prompts, a single request between them, and a fourth prompt drawn twice whose image
    is a different object with the same pixels (grouped by pixels). Same prompt and image, distinct keys."""
    red = Image.new("RGB", (30, 40), (200, 30, 30))
    blue = Image.new("RGB", (44, 26), (20, 40, 210))
    green = Image.new("RGB", (36, 36), (20, 190, 60))
    first = Request("item0/stage1", red, "What is shown?\nA. a dog\nB. a cat\nC. a car\nAnswer with the letter.", ("A", "B", "C"))
    second = Request("item1/stage1", blue, "Is it day or night?\nAnswer with Yes or No only.", ("Yes", "No"))
    alone = Request("item2/stage1", green, "Which color is the car?\nA. red\nB. blue", ("A", "B"))
    copies = [replace(first, key=f"{first.key}/draw{d}") for d in range(3)]
    copies += [alone]
    copies += [replace(second, key=f"{second.key}/draw{d}") for d in range(3)]
    copies += [replace(first, key=f"item3/draw{d}", image=red.copy(), prompt=first.prompt + " ") for d in range(2)]
    return copies


def _backend(path: str, share: bool, **decoding: object) -> TransformersBackend:
    settings = DecodingSettings(**{"max_new_tokens": 10, **decoding})
    return TransformersBackend(path, decoding=settings, batch_size=16, share_prompts=share)


def _outputs(generations: list[Generation]) -> list[tuple[str, int, object]]:
    return [(g.text, g.extra["new_tokens"], g.extra.get("seed")) for g in generations]


@pytest.mark.parametrize("decoding", [SAMPLED, {}], ids=["sampled", "greedy"])
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_shared_prefill_draws_equal_separate_draws(models: dict, arch: str, decoding: dict) -> None:
    requests = _draws()
    shared = _backend(models[arch], True, **decoding)
    together = shared.generate(requests)
    # Separately: no sharing, and each draw in a call of its own (its own batch, its own prefill).
    separate = _backend(models[arch], False, **decoding)
    alone = [separate.generate([request])[0] for request in requests]

    assert _outputs(together) == _outputs(alone)
    assert all(g.error is None for g in together)
    # Gemma 3's sliding-window cache is no plain prefix cache: its draws run in full (still equal).
    assert shared.share_prompts == (arch != "gemma3") and shared.describe()["share_prompts"] == shared.share_prompts
    # 9 requests, 4 distinct prompts: 5 rows ran on another row's prefill.
    assert shared.shared_rows == (5 if shared.share_prompts else 0)
    assert separate.shared_rows == 0
    if decoding:
        # Each draw samples from its own seed: the draws of one prompt differ.
        assert len({g.text for g in together[:3]}) == 3 and len({g.text for g in together[4:7]}) == 3
        assert [g.extra["seed"] for g in together] == [request_seed(11, r.key) for r in requests]


def test_shared_draws_leave_the_prompt_for_the_next_stage(models: dict) -> None:
    """The shared prefill is kept per image like a full batch's: stage 2 then runs only its new tokens."""
    requests = _draws()
    hinted = [replace(r, key=r.key + "/stage2", prompt=r.prompt.replace("\n", " The answer is B.\n", 1)) for r in requests]
    shared = _backend(models["llava"], True, **SAMPLED)
    plain = TransformersBackend(
        models["llava"], decoding=DecodingSettings(max_new_tokens=10, **SAMPLED), batch_size=16, reuse_prefix=False
    )
    with_sharing = shared.generate(requests) + shared.generate(hinted)
    without = plain.generate(requests) + plain.generate(hinted)
    assert _outputs(with_sharing) == _outputs(without)
    assert shared._prefix is not None and shared._prefix.cache.hits >= 3  # stage 2 found the images' prompts


def test_logprob_scores_identical_requests_once(models: dict, monkeypatch) -> None:
    """Draws of one prompt get one forward row under logprob scoring, and each the result it gets alone."""
    requests = _draws()
    merged = TransformersBackend(models["llava"], decoding=DecodingSettings(scoring="logprob"), batch_size=16)
    rows: list[int] = []
    score_batch = merged._score_batch
    monkeypatch.setattr(merged, "_score_batch", lambda batch, texts: rows.append(len(batch)) or score_batch(batch, texts))
    start = time.perf_counter()
    together = merged.generate(requests)
    elapsed = time.perf_counter() - start
    # The one pass's seconds are shared by its copies: the call's seconds add up to no more than its wall time.
    assert 0 < sum(g.seconds for g in together) <= elapsed
    assert sum(rows) == 4  # 9 requests, 4 distinct prompts (the fourth by pixels)
    alone = TransformersBackend(models["llava"], decoding=DecodingSettings(scoring="logprob"), batch_size=1)
    for request, got in zip(requests, together):
        expected = alone.generate([request])[0]
        assert got.text == expected.text and got.option_probs == pytest.approx(expected.option_probs, abs=1e-5)
    # Copies, not one shared object: a caller that edits one result edits no other.
    assert together[0].option_probs is not together[1].option_probs and together[0].extra is not together[1].extra


def test_prompt_groups() -> None:
    red = Image.new("RGB", (8, 8), (200, 0, 0))
    same_pixels = red.copy()
    other = Image.new("RGB", (8, 8), (0, 0, 200))
    requests = [Request(f"k{i}", image, "p", ("A",)) for i, image in enumerate([red, red, other, same_pixels, red])]
    texts = ["t", "t", "t", "t", "u"]
    # Same text and image object, or same text and pixels: one group; another text or pixels: its own.
    assert prompt_groups(requests, texts) == [0, 0, 2, 0, 4]
    assert prompt_groups(requests[:2], ["t", "v"]) == [0, 1]


def _sampled_tokens(probs: list[float], seeds: list[int], steps: int = 1, **settings: object) -> list[list[int]]:
    """The tokens the seeded sampler picks for rows with fixed next-token probabilities."""
    import torch

    decoding = DecodingSettings(**{"temperature": 1.0, **settings})
    sampler = _seeded_sampler(seeds, decoding)
    logits = torch.log(torch.tensor([probs] * len(seeds)))
    picks = []
    for _ in range(steps):
        masked = sampler(torch.zeros((len(seeds), 1), dtype=torch.long), logits.clone())
        assert bool(((masked == 0) | (masked == float("-inf"))).all()) and bool(((masked == 0).sum(-1) == 1).all())
        picks.append(masked.argmax(-1).tolist())
    return [list(row) for row in zip(*picks)]  # per seed, its token at each step


def test_sampler_draws_follow_the_distribution() -> None:
    probs = [0.1, 0.0, 0.2, 0.3, 0.4]
    rows = _sampled_tokens(probs, list(range(2000)), steps=2)
    for step in (0, 1):
        counts = Counter(row[step] for row in rows)
        assert counts[1] == 0  # a token of probability 0 is never drawn
        for token, p in enumerate(probs):
            assert abs(counts[token] / len(rows) - p) < 0.035, (step, token, counts)
    # Steps draw afresh: a row's second token is not a copy of its first.
    assert sum(row[0] != row[1] for row in rows) > 0.5 * len(rows)


def test_sampler_filters_and_is_a_function_of_seed_and_step() -> None:
    probs = [0.05, 0.15, 0.2, 0.25, 0.35]
    top2 = Counter(token for row in _sampled_tokens(probs, list(range(500)), top_k=2) for token in row)
    assert set(top2) == {3, 4}
    nucleus = Counter(token for row in _sampled_tokens(probs, list(range(500)), top_p=0.5) for token in row)
    assert set(nucleus) == {3, 4}  # 0.35 + 0.25 is the smallest set reaching 0.5
    # A seed's tokens do not depend on the other rows of its batch, nor on their order.
    seeds = [5, 17, 2**62 + 3, 99]
    together = _sampled_tokens(probs, seeds, steps=6)
    assert [_sampled_tokens(probs, [seed], steps=6)[0] for seed in seeds] == together
    assert _sampled_tokens(probs, seeds[::-1], steps=6)[::-1] == together


def _splitmix64_draw(seed: int, step: int) -> float:
    """SplitMix64 of (seed, step) with Python's unbounded integers, reduced modulo 2**64 by hand: the stream's
    definition, written apart from the backend's vectorised numpy form."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + (step + 1) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return ((z >> 11) + 0.5) / (1 << 53)


def test_sampler_stream_is_splitmix64_of_seed_and_step_across_blocks() -> None:
    """Over eight equally likely tokens the pick is the eighth the draw falls in, so the tokens of 150 steps
    (past the sampler's blocks of precomputed draws) spell out each seed's stream; seeds span 64 bits."""
    import numpy as np

    seeds = [0, 7, request_seed(0, "item3/stage1/2"), 2**63 - 1, 2**64 - 1]
    steps = 150
    picked = _sampled_tokens([1 / 8] * 8, seeds, steps=steps)
    for seed, tokens in zip(seeds, picked):
        # The first token whose cumulative probability (k + 1) / 8 reaches the float32 draw.
        expected = [next(k for k in range(8) if (k + 1) / 8 >= float(np.float32(_splitmix64_draw(seed, t)))) for t in range(steps)]
        assert tokens == expected, seed


@pytest.mark.parametrize("settings", [{"top_k": 6}, {"top_p": 0.7}, {"top_k": 6, "top_p": 0.8}, {}], ids=str)
def test_sampler_draws_from_transformers_warped_distribution(settings: dict) -> None:
    """Expectation from transformers' own warpers: the allowed tokens and their probabilities."""
    import torch
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.tensor([[2.0, 0.1, 1.5, -1.0, 0.7, 1.1, 0.3, 1.9, -0.4, 0.9]])
    warped = TemperatureLogitsWarper(0.8)(None, logits.clone())
    if "top_k" in settings:
        warped = TopKLogitsWarper(settings["top_k"])(None, warped)
    if "top_p" in settings:
        warped = TopPLogitsWarper(settings["top_p"])(None, warped)
    expected = torch.softmax(warped, dim=-1)[0].tolist()

    decoding = DecodingSettings(temperature=0.8, **settings)
    seeds = list(range(4000))
    masked = _seeded_sampler(seeds, decoding)(None, logits.repeat(len(seeds), 1))
    counts = Counter(masked.argmax(-1).tolist())
    assert {token for token in counts} <= {token for token, p in enumerate(expected) if p > 0}
    for token, p in enumerate(expected):
        assert abs(counts[token] / len(seeds) - p) < 0.03, (token, counts[token], p)


def test_length_order_tokenises_each_distinct_prompt_once_and_keeps_draws_together(models: dict, monkeypatch) -> None:
    backend = _backend(models["llava"], True)
    requests = _draws()
    texts = backend._prompt_texts(requests)
    groups = prompt_groups(requests, texts)
    tokenizer = backend.tokenizer
    seen: list[str] = []

    def counting(batch: list[str], **kwargs: object) -> object:
        seen.extend(batch)
        return tokenizer(batch, **kwargs)

    monkeypatch.setattr(backend, "tokenizer", counting)
    # A call that fits one batch is not sorted, so nothing is tokenised for it.
    assert backend._length_order(texts, groups) == list(range(len(texts))) and seen == []
    backend.batch_size = 2
    order = backend._length_order(texts, groups)
    assert sorted(order) == list(range(len(texts)))
    assert sorted(seen) == sorted(set(texts))  # 4 distinct prompts, each tokenised once
    lengths = {text: len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in set(texts)}
    assert [lengths[texts[i]] for i in order] == sorted(lengths[text] for text in texts)
    # Draws of one prompt sit side by side, so a batch holds them together.
    positions = {group: [n for n, i in enumerate(order) if groups[i] == group] for group in set(groups)}
    assert all(p == list(range(p[0], p[0] + len(p))) for p in positions.values())
