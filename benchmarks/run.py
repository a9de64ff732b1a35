"""MUB speed benchmarks: one command, one JSON line at the end (issue 7).

    python benchmarks/run.py                      # CPU: tiny "bench" llava model (random weights)
    python benchmarks/run.py --device cuda --size real --items 160 --naive-items 16 --rounds 3   # a lent GPU

(``--size real``: a 1.7B-parameter llava shape in bfloat16, built on first use
into the tiny-model cache, ~3.4 GB.) Torch runs on ``--threads`` threads, 1 by
default: on a machine other processes share, two threads per process make
timings swing many-fold. ``--only ab`` or ``--only runs`` measures one part;
``--check`` then judges that part's figures.

All runs use the embedded synthetic sample (config ``explicit``), two stages
per item, greedy decoding, ``--max-new-tokens 16``, and the same randomly
initialised model (``tiny:<arch>:<size>``; plumbing-check weights, so only the
speed means anything; the all-random variant, ``answers=False``, so that
generations run to the token limit like a real model's explanations). Model loading, dataset loading and warm-up are not
timed. The model figures come from ``--rounds`` rounds of short runs (naive loop,
generation, logprob; back to back, order alternating); the JSON carries each
round's ratio and reports the median (neighbours' jobs make single timings on a
shared machine noisy). The naive loop's window of ``--naive-items`` moves
through the ``--items`` that every mub run covers.

Figures (last line, one JSON object):

- ``batched_vs_naive``: items/s of ``mub run`` (``mub.runs.runner.run``) at batch 16
  over items/s of a naive loop written like the reference scripts: one item at a
  time, per stage load-process-generate-decode with ``model.generate`` (stopping
  at EOS or max_new_tokens, as they do), then parse and build the stage-2 hint.
- ``logprob_vs_generate``: items/s of ``mub run --scoring logprob`` over
  generation mode, both at batch 16.
- ``overhead_share``: in the batch-16 generation runs, the share of ``run()``'s
  wall time spent outside the model's generate/forward calls (the backend's
  ``model_seconds``, which includes the vision encoder): prompts, image decoding
  and processing, tokenisation, parsing, writing predictions, scoring
  (``overhead_share_by_run`` gives it for the logprob and naive runs too).
- ``metric_1m_s``: ``benchmarks/metric_1m.py``'s timed ``compute()`` on 1,000,000
  rows with every optional input.
- ``build_items_per_s``: items/s of the ``datasets`` builder on the embedded
  sample's release folder (a fresh cache each time).
- ``paper``: ``mub run`` under the default ``--protocol paper`` (the
  authors' prompts; sampling at 0.4, top-k 80, top-p 0.9, up to 256 new
  tokens; every item drawn once per release copy) on ``--paper-items`` items
  of a release-layout build with copies (:func:`release_with_copies`), timed
  ``--paper-rounds`` times: draws/s, generations/s, items/s, the items and
  draws, mean new tokens per generation and the share of generations that
  ran to the 256-token limit. Early stopping
  (EOS, or the line after an answer) is what keeps a letter answer from paying
  for 256 tokens; random weights rarely write a letter and a newline, so on the
  plumbing model this figure is the worst case, not a real model's.

A/B figures (``--ab-rounds`` rounds; A and B back to back in alternating
order; the median ratio of A's cost over B's, with its range):

- ``sampled_vs_greedy``: CPU seconds per generation step of one batch of 16
  stage-1 requests at 256 new tokens (one call per side and round), mub's seeded
  sampling at the paper's explicit settings (the model's temperature, top-k 80,
  top-p 0.9) over greedy, both on one loaded copy of the weights
  (``TransformersBackend.with_decoding``);
  ``sampled_vs_transformers_sampling``: over transformers' own unseeded sampling
  at the same settings (``do_sample=True``: its warpers, then ``multinomial``),
  on the same weights and requests.
- ``draws_shared_vs_separate``: CPU seconds of 9 draws of one prompt (the paper
  preset's decoding, distinct keys and seeds) in one call, sharing one prefill,
  over the same 9 draws as single requests, each prefilled on its own;
  ``draws_shared_vs_unshared_batch``: over the 9 draws in one batch with
  sharing off (what the prefill sharing alone saves).
- ``stage1_vs_plain_loop``: whole processes, start-up included:
  ``mub run --stages 1 --protocol deterministic`` over
  ``benchmarks/plain_loop.py`` (a plain batched ``model.generate`` loop) on the
  same saved model, items and prompts, batch 16, 16 new tokens, greedy; the
  processes' CPU seconds (user + system), which a neighbour's burst does not
  inflate as it does wall time (the wall-time ratio is reported beside it).
  The loop runs at Python's default garbage-collection thresholds, as a script
  would; the ``mub`` command waits longer for full collections (README).
- ``batch1_vs_plain_loop``: inside the generation call at batch 1: CPU seconds of
  mub's backend (``batch_size=1``) over 16 stage-1 requests, greedy, 16 new
  tokens, over the same requests asked one at a time the plain way
  (``NaiveLoop.ask``: chat template, processor, ``model.generate``, decode),
  on the backend's own loaded weights, one call per side and round; every call gets fresh image objects, as a
  run's items do (no cached image work carries over).
- ``paper_draws_per_s``: draws per second of the ``paper`` run below (a draw:
  stage 1 and stage 2 of one release copy of an item); the median of its rounds.

The other model figures use ``--protocol deterministic`` (greedy, 16 new
tokens), so they compare with earlier runs of this benchmark.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import datetime
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# evaluate serialises metric instances through lock files in its cache folder; a
# neighbour's metric run on the same folder stalls ours for a 1 s lock timeout.
# A private folder keeps other processes out of these timings.
if "HF_METRICS_CACHE" not in os.environ:
    os.environ["HF_METRICS_CACHE"] = tempfile.mkdtemp(prefix="mub-bench-metrics-")
    atexit.register(shutil.rmtree, os.environ["HF_METRICS_CACHE"], ignore_errors=True)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from targets import misses, readme_targets

import mub_dataset
from mub.backends.base import Request
from mub.backends.transformers_backend import TransformersBackend
from mub.config import DecodingSettings, RunConfig
from mub.protocol import stages
from mub.protocol.parsing import option_labels, parse_answer
from mub.protocol.presets import protocol_named
from mub.protocol.prompts import explicit_cue, render, render_prompt
from mub.runs.runner import run
from mub.testing.tiny_models import resolve_model_spec
from mub_dataset.synthetic import write_synthetic_release

MAX_NEW_TOKENS = 16
BATCH_SIZE = 16
PAPER_TOKENS = 256  # the paper preset's token limit
DRAWS = 9  # the most release copies of one item: the paper draws an item once per copy
# The release sample's main file, read (when present) for its items' numbers of copies only.
SHARED_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "mub_release_sample"
# Without it: copies per item in the proportions of the release sample's main file
# (458 items: 4 copies 31, 5 copies 148, 6 copies 223, 7 copies 56).
FALLBACK_COPIES = (6, 5, 6, 7, 5, 6, 4, 6, 5, 6, 7, 5, 6, 6, 5, 6)


def log(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------ naive loop


class NaiveLoop:
    """The reference scripts' way: one item at a time, each stage processed and generated on its own."""

    def __init__(self, path: str, device: str, dtype: Any, model: Any = None) -> None:
        """``model``: weights already loaded (a backend's), so that an A/B runs both sides on one copy."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(path)
        self.model = model if model is not None else AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(device).eval()
        self.device = device
        self.model_seconds = 0.0
        self.new_tokens = 0

    def ask(self, image: Any, prompt: str) -> str:
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        bos = self.processor.tokenizer.bos_token
        inputs = self.processor(
            text=text, images=image, return_tensors="pt", add_special_tokens=not (bos and text.startswith(bos))
        ).to(self.device, dtype=self.model.dtype)
        start = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        _sync(self.device)
        self.model_seconds += time.perf_counter() - start
        new = output[0, inputs["input_ids"].shape[1] :]
        self.new_tokens += len(new)
        return self.processor.decode(new, skip_special_tokens=True)

    def run(self, dataset: Any, indices: range, out: Path) -> None:
        from PIL import Image

        raw = dataset.cast_column("image", __import__("datasets").Image(decode=False))
        with open(out / "predictions.jsonl", "w", encoding="utf-8") as sink:
            for index in indices:
                row = raw[index]
                cell = row["image"]
                data = cell["bytes"] if cell.get("bytes") is not None else Path(cell["path"]).read_bytes()
                image = Image.open(io.BytesIO(data)).convert("RGB")
                first = self.ask(image, render_prompt(row))
                parsed = parse_answer(first, row["choices"], row["question_type"])
                cue = explicit_cue(stages.hinted_answer(row, stages.is_correct(parsed, row)))
                second = self.ask(image, render_prompt(row, cue))
                after = parse_answer(second, row["choices"], row["question_type"])
                sink.write(json.dumps({"id": row["id"], "stage1": first, "stage2": second, "parsed": [parsed, after]}) + "\n")
                sink.flush()


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------- mub run timing


def count_new_tokens(backend: TransformersBackend) -> list[int]:
    """Record the new tokens of every generation the backend returns (the counter is outside model time)."""
    counts: list[int] = []
    answer = backend.generate

    def counting(requests: Any) -> Any:
        generations = answer(requests)
        counts.extend(g.extra.get("new_tokens", 0) for g in generations)
        return generations

    backend.generate = counting  # type: ignore[method-assign]
    return counts


def timed_run(
    backend: TransformersBackend, dataset: Any, n_items: int, scoring: str, model: str, protocol: str = "deterministic"
) -> dict[str, float]:
    """Wall seconds of ``mub.runs.runner.run`` on the first ``n_items`` and the seconds inside the model."""
    with tempfile.TemporaryDirectory() as out:
        config = RunConfig(
            model=model, limit=n_items, batch_size=BATCH_SIZE, out=out, progress=False, scoring=scoring, protocol=protocol,
        )
        backend.model_seconds = 0.0
        start = time.perf_counter()
        results = run(config, backend=backend, dataset=dataset)
        wall = time.perf_counter() - start
    figures = results["results"]["explicit"]
    assert figures["errors"] == 0 and figures["n_items"] == n_items, figures
    return {"wall_s": wall, "model_s": backend.model_seconds, "items_per_s": n_items / wall, "n_draws": figures["n_draws"]}


def timed_naive(loop: NaiveLoop, dataset: Any, first: int, n_items: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        loop.model_seconds, loop.new_tokens = 0.0, 0
        start = time.perf_counter()
        loop.run(dataset, range(first, first + n_items), Path(out))
        wall = time.perf_counter() - start
    return {"wall_s": wall, "model_s": loop.model_seconds, "items_per_s": n_items / wall,
            "mean_new_tokens": loop.new_tokens / (2 * n_items)}


# ---------------------------------------------------------------- other parts


def metric_seconds(rows: int) -> float:
    import metric_1m

    import mub_metric

    inputs = metric_1m.make_inputs(rows)
    metric = mub_metric.load()
    return metric_1m.timed_compute(metric, **inputs)


def build_items_per_s() -> tuple[float, int]:
    from mub_dataset.loading import build_from_release, sample_release_dir

    release = sample_release_dir()
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        built = build_from_release(release, "explicit", cache_dir=cache)
        seconds = time.perf_counter() - start
    return len(built) / seconds, len(built)


def release_copies(n_items: int) -> tuple[list[int], str]:
    """Copies per item as in the real release: those of the release sample's first ``n_items`` items (when
    ../shared holds it), else :data:`FALLBACK_COPIES` in turn; with where they came from."""
    main = SHARED_SAMPLE / "all_combined_items.jsonl"
    if main.is_file():
        records = json.loads(main.read_text(encoding="utf-8"))
        counts = Counter((record["new_id"], record["question"]) for record in records)
        first = list(counts)[:n_items]  # items in the file's order (a Counter keeps first-seen order)
        if len(first) == n_items:
            return [counts[item] for item in first], f"the release sample's first {n_items} items"
    return [FALLBACK_COPIES[i % len(FALLBACK_COPIES)] for i in range(n_items)], "FALLBACK_COPIES"


def release_with_copies(folder: Path, copies: list[int]) -> Path:
    """The synthetic sample as a release folder whose main file holds item i ``copies[i]`` times, its records
    side by side as in the real release (the implicit files keep one copy each)."""
    write_synthetic_release(folder, len(copies))
    main = folder / "all_combined_items.jsonl"
    records = json.loads(main.read_text(encoding="utf-8"))
    repeated = [record for record, count in zip(records, copies) for _ in range(count)]
    main.write_text(json.dumps(repeated, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder


def paper_figures(args: argparse.Namespace, path: str, spec: str, dtype_name: str) -> dict[str, Any]:
    """``mub run --protocol paper`` on a release-layout build whose items have copies: every copy one draw."""
    from mub_dataset.loading import build_from_release

    copies, copies_from = release_copies(args.paper_items)
    log(f"--protocol paper on {args.paper_items} items with copies ({copies_from}: {sum(copies)} draws) ...")
    decoding = RunConfig(model=spec, protocol="paper").decoding()
    backend = TransformersBackend(path, dtype=dtype_name, device=args.device, batch_size=BATCH_SIZE, decoding=decoding)
    tokens = count_new_tokens(backend)
    with tempfile.TemporaryDirectory() as folder:
        release = release_with_copies(Path(folder) / "release", copies)
        dataset = build_from_release(release, "explicit", cache_dir=str(Path(folder) / "cache"))
        timed_run(backend, dataset, 1, "generate", spec, "paper")  # warm-up: one item, its copies
        tokens.clear()
        runs = [timed_run(backend, dataset, args.paper_items, "generate", spec, "paper") for _ in range(args.paper_rounds)]
    n_draws = runs[0]["n_draws"]
    assert n_draws == sum(copies), (n_draws, copies)  # every copy drawn, none lost
    draws_per_s = [n_draws / r["wall_s"] for r in runs]
    generations = len(tokens) / len(runs)
    return {
        "items": args.paper_items,
        "n_draws": n_draws,
        "copies_from": copies_from,
        "rounds": len(runs),
        "decoding": {k: getattr(backend.decoding, k) for k in ("temperature", "top_k", "top_p", "max_new_tokens", "stop")},
        "draws_per_s": round(median(draws_per_s), 3),
        "draws_per_s_range": _rounded([min(draws_per_s), max(draws_per_s)]),
        "generations_per_s": round(median([generations / r["wall_s"] for r in runs]), 3),
        "items_per_s": round(median([r["items_per_s"] for r in runs]), 3),
        "wall_s": _rounded([r["wall_s"] for r in runs], 2),
        "mean_new_tokens": round(sum(tokens) / max(1, len(tokens)), 2),
        "share_at_limit": round(sum(t >= decoding.max_new_tokens for t in tokens) / max(1, len(tokens)), 4),
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


# ------------------------------------------------------------ A/B figures


def ab_rounds(name: str, rounds: int, a: Callable[[], float], b: Callable[[], float]) -> dict[str, Any]:
    """``a``'s cost over ``b``'s, per round; the two run back to back, in alternating order, so each round's
    ratio compares runs made under the same load. Each callable returns its cost (seconds, or seconds per step)."""
    ratios = []
    for number in range(rounds):
        first, second = (a, b) if number % 2 == 0 else (b, a)
        x = first()
        y = second()
        cost_a, cost_b = (x, y) if number % 2 == 0 else (y, x)
        ratios.append(cost_a / cost_b)
        log(f"{name} round {number + 1}/{rounds}: {ratios[-1]:.3f}")
    return {"median": round(median(ratios), 3), "range": [round(min(ratios), 3), round(max(ratios), 3)], "per_round": _rounded(ratios)}


def stage1_requests(dataset: Any, n_items: int, keys: Callable[[int], list[str]] | None = None) -> list[Request]:
    """The first items' stage-1 requests under the deterministic preset (``keys``: one request per key)."""
    prompts = protocol_named("deterministic").prompts["explicit"]
    requests = []
    for index in range(n_items):
        row = dataset[index]
        image = row["image"].convert("RGB")
        for key in (keys(index) if keys else [f"{row['id']}/stage1/0"]):
            requests.append(Request(key, image, render(row, prompts), option_labels(row["choices"], row["question_type"])))
    return requests


def cpu_seconds(call: Callable[[], Any]) -> float:
    """CPU seconds of this process (torch on ``--threads`` threads, 1 by default) spent in ``call()``, which a
    neighbour's burst does not inflate as it does wall time, so an A/B ratio measures work, not the machine's
    load. One call per side and round: the two sides' calls follow each other closely, so a round's ratio
    compares them under one load."""
    start = time.process_time()
    call()
    return time.process_time() - start


def seconds_per_step(backend: TransformersBackend, requests: list[Request]) -> float:
    """CPU seconds (:func:`cpu_seconds`) of one call over its longest generation's steps (the batch runs until
    its last row ends)."""
    generations: list[Any] = []
    seconds = cpu_seconds(lambda: generations.extend(backend.generate(requests)))
    return seconds / max(g.extra["new_tokens"] for g in generations)


def sampled_vs_greedy(path: str, dtype: str, device: str, dataset: Any, rounds: int) -> dict[str, Any]:
    """mub's seeded sampling (the paper's explicit settings) over greedy decoding, per generation step, 256 tokens."""
    greedy = TransformersBackend(
        path, dtype=dtype, device=device, batch_size=BATCH_SIZE, decoding=DecodingSettings(max_new_tokens=PAPER_TOKENS)
    )
    sampled = paper_sampling(greedy)
    unseeded = transformers_sampling(greedy, sampled.decoding)
    requests = stage1_requests(dataset, BATCH_SIZE)
    for backend in (greedy, sampled, unseeded):  # warm-up
        seconds_per_step(backend, requests)
    figure = ab_rounds("sampled_vs_greedy", rounds, lambda: seconds_per_step(sampled, requests), lambda: seconds_per_step(greedy, requests))
    own = ab_rounds(
        "sampled_vs_transformers_sampling", rounds,
        lambda: seconds_per_step(sampled, requests), lambda: seconds_per_step(unseeded, requests),
    )  # fmt: skip
    settings = sampled.decoding
    return {**figure, "transformers_sampling": own, "settings": {
        "temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p,
        "max_new_tokens": PAPER_TOKENS, "batch_size": BATCH_SIZE,
    }}  # fmt: skip


def paper_sampling(greedy: TransformersBackend) -> TransformersBackend:
    """``greedy`` decoding by mub's seeded sampling at the paper's explicit settings (its token limit kept).
    One copy of the weights for both: two loads of one model differ by a few percent per step by their
    placement in memory alone (two greedy backends: 0.975-1.021), which a comparison of the two must not measure."""
    paper = protocol_named("paper").decoding["explicit"]
    return greedy.with_decoding(
        DecodingSettings(
            max_new_tokens=greedy.decoding.max_new_tokens, temperature=paper.temperature, top_k=paper.top_k, top_p=paper.top_p
        )
    )


def transformers_sampling(greedy: TransformersBackend, settings: DecodingSettings) -> TransformersBackend:
    """``greedy`` (same weights) decoding by transformers' own sampling at ``settings``: ``generate`` with
    ``do_sample=True`` applies its temperature, top-k and top-p warpers, then draws with ``multinomial`` from
    the global generator (no per-request seeds). The cost mub's seeded sampler is held to."""
    other = copy.copy(greedy)
    config = copy.deepcopy(greedy._generation_config)
    config.update(do_sample=True, temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
    other._generation_config = config
    return other


def draws_shared_vs_separate(path: str, dtype: str, device: str, dataset: Any, rounds: int) -> dict[str, Any]:
    """9 draws of one prompt (the paper's explicit sampling) in one call sharing one prefill, over the same
    draws as 9 single requests, each prefilled on its own; also over the 9 draws in one batch without sharing."""
    decoding = RunConfig(model=path, protocol="paper").decoding()
    draws = stage1_requests(dataset, 1, keys=lambda index: [f"item{index}/stage1/{draw}" for draw in range(DRAWS)])

    def backend(**options: bool) -> TransformersBackend:
        return TransformersBackend(path, dtype=dtype, device=device, batch_size=BATCH_SIZE, decoding=decoding, **options)

    shared, unshared, alone = backend(), backend(share_prompts=False), backend(share_prompts=False, reuse_prefix=False)

    def one_call(chosen: TransformersBackend) -> float:
        return cpu_seconds(lambda: chosen.generate(draws))

    def separately() -> float:
        return cpu_seconds(lambda: [alone.generate([draw]) for draw in draws])

    # Equal up to float rounding: a CPU matmul rounds a row differently by how many rows it multiplies at once
    # (torch 2.13 on x86: one kernel for 1 row, another for 2-10, another from 11-16 on), and the shared draws
    # run as 9 rows where the separate ones run as 1. Over 256 sampled tokens such a difference can move a draw
    # across a token boundary of its inverse CDF, so the figure counts the equal texts (and warms up). It counts
    # them against the 9 draws in one unshared batch too, which decodes as 9 rows as well but prefills 9 copies
    # of the prompt at once: the prefill's rounding moves with its row count too.
    shared_texts = [g.text for g in shared.generate(draws)]
    same = sum(text == alone.generate([d])[0].text for text, d in zip(shared_texts, draws))
    same_batch = sum(text == g.text for text, g in zip(shared_texts, unshared.generate(draws)))
    figure = ab_rounds("draws_shared_vs_separate", rounds, lambda: one_call(shared), separately)
    batch = ab_rounds("draws_shared_vs_unshared_batch", rounds, lambda: one_call(shared), lambda: one_call(unshared))
    return {"separate": figure, "unshared_batch": batch, "draws": DRAWS, "same_texts": same, "same_texts_unshared_batch": same_batch,
            "max_new_tokens": decoding.max_new_tokens}


def batch1_vs_plain_loop(path: str, dtype: str, device: str, dataset: Any, rounds: int) -> dict[str, Any]:
    """Inside the generation call at batch 1: mub's backend over the plain per-request loop (greedy, 16 new tokens)."""
    backend = TransformersBackend(
        path, dtype=dtype, device=device, batch_size=1, decoding=DecodingSettings(max_new_tokens=MAX_NEW_TOKENS)
    )
    plain = NaiveLoop(path, device, getattr(torch, dtype), model=backend.model)  # one copy of the weights, as above
    requests = stage1_requests(dataset, BATCH_SIZE)

    def one_call(answer: Callable[[list[Request]], list[str]]) -> float:
        fresh = [replace(r, image=r.image.copy()) for r in requests]  # no image work cached from an earlier call
        return cpu_seconds(lambda: answer(fresh))

    def mub(batch: list[Request]) -> list[str]:
        return [g.text for g in backend.generate(batch)]

    def plain_loop(batch: list[Request]) -> list[str]:
        return [plain.ask(r.image, r.prompt) for r in batch]

    same = sum(a == b for a, b in zip(mub(requests), plain_loop(requests)))  # and warm
    figure = ab_rounds("batch1_vs_plain_loop", rounds, lambda: one_call(mub), lambda: one_call(plain_loop))
    return {**figure, "requests": len(requests), "same_answers": same}


def stage1_vs_plain_loop(model: str, n_items: int, threads: int, rounds: int) -> dict[str, Any]:
    """Whole processes: ``mub run --stages 1`` over ``benchmarks/plain_loop.py`` on the same saved model,
    items and prompts (greedy, 16 new tokens, batch 16)."""
    script = Path(sys.executable).with_name("mub")
    # The installed command, or what it runs where this checkout is not installed (a worktree on the path).
    mub = [str(script)] if script.exists() else [sys.executable, "-c", "from mub.cli import console_main; console_main()"]
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": path}
    folder = Path(tempfile.mkdtemp(prefix="mub-bench-stage1-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    common = ["--batch-size", str(BATCH_SIZE), "--max-new-tokens", str(MAX_NEW_TOKENS)]
    commands = {
        "mub": [*mub, "run", "--model", model, "--stages", "1", "--protocol", "deterministic", "--limit", str(n_items),
                "--dtype", "float32", "--device", "cpu", "--out", str(folder / "run"), "--overwrite", "--quiet", *common],
        "plain": [sys.executable, str(Path(__file__).with_name("plain_loop.py")), model, "--items", str(n_items),
                  "--out", str(folder / "plain.jsonl"), *common],
    }  # fmt: skip

    walls: dict[str, list[float]] = {"mub": [], "plain": []}

    def process(name: str) -> float:
        """The process's CPU seconds (user + system, its threads included), start-up and teardown included.
        Its wall time is kept too: on a shared machine it also measures the neighbours' bursts."""
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(commands[name], env=env, check=True, stdout=subprocess.DEVNULL)
        walls[name].append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    process("mub"), process("plain")  # warm file caches
    for kept in walls.values():
        kept.clear()
    figure = ab_rounds("stage1_vs_plain_loop", rounds, lambda: process("mub"), lambda: process("plain"))
    wall_ratios = [a / b for a, b in zip(walls["mub"], walls["plain"])]
    figure["wall"] = {"median": round(median(wall_ratios), 3), "range": [round(min(wall_ratios), 3), round(max(wall_ratios), 3)]}
    mub_answers = [a["output"] for line in (folder / "run" / "predictions.jsonl").read_text().splitlines()
                   for a in json.loads(line)["stage1"]]
    plain_answers = [json.loads(line)["answer"] for line in (folder / "plain.jsonl").read_text().splitlines()]
    return {**figure, "items": n_items, "same_answers": sum(a == b for a, b in zip(mub_answers, plain_answers))}


def _rounded(values: list[float], digits: int = 3) -> list[float]:
    return [round(v, digits) for v in values]


def run_figures(args: argparse.Namespace, path: str, spec: str, dtype_name: str, dataset: Any) -> dict[str, Any]:
    """The mub run figures (batched vs naive, logprob, overhead, paper preset), the metric and the build."""
    n_items = min(args.items, len(dataset))
    n_naive = min(args.naive_items, n_items)
    backends = {
        scoring: TransformersBackend(
            path, dtype=dtype_name, device=args.device, batch_size=BATCH_SIZE,
            decoding=DecodingSettings(max_new_tokens=MAX_NEW_TOKENS, scoring=scoring),
        )
        for scoring in ("generate", "logprob")
    }
    naive = NaiveLoop(path, args.device, getattr(torch, dtype_name))
    new_tokens = count_new_tokens(backends["generate"])

    log("warm-up ...")
    for scoring, backend in backends.items():
        timed_run(backend, dataset, BATCH_SIZE, scoring, spec)
    timed_naive(naive, dataset, 0, 2)
    new_tokens.clear()

    # Rounds of short runs, back to back and in alternating order, so each round's
    # ratios compare runs made under the same load. The naive loop's window moves
    # through the items the mub runs cover, so over the rounds it sees the same mix.
    rows: dict[str, list[dict[str, float]]] = {"naive": [], "generate": [], "logprob": []}
    for number in range(args.rounds):
        start = (number * n_naive) % n_items
        start = start if start + n_naive <= n_items else 0
        jobs: dict[str, Callable[[], dict[str, float]]] = {
            "naive": lambda start=start: timed_naive(naive, dataset, start, n_naive),
            "generate": lambda: timed_run(backends["generate"], dataset, n_items, "generate", spec),
            "logprob": lambda: timed_run(backends["logprob"], dataset, n_items, "logprob", spec),
        }
        for name in (list(jobs) if number % 2 == 0 else list(reversed(jobs))):
            rows[name].append(jobs[name]())
        log(
            f"round {number + 1}/{args.rounds}: items/s naive {rows['naive'][-1]['items_per_s']:.2f}, "
            f"batch {BATCH_SIZE} generate {rows['generate'][-1]['items_per_s']:.2f} "
            f"(model {rows['generate'][-1]['model_s']:.2f} of {rows['generate'][-1]['wall_s']:.2f} s), "
            f"logprob {rows['logprob'][-1]['items_per_s']:.2f}"
        )
    batched_vs_naive = [g["items_per_s"] / n["items_per_s"] for g, n in zip(rows["generate"], rows["naive"])]
    logprob_vs_generate = [lp["items_per_s"] / g["items_per_s"] for lp, g in zip(rows["logprob"], rows["generate"])]
    overhead = [(g["wall_s"] - g["model_s"]) / g["wall_s"] for g in rows["generate"]]
    overhead_logprob = [(lp["wall_s"] - lp["model_s"]) / lp["wall_s"] for lp in rows["logprob"]]
    naive_overhead = [(n["wall_s"] - n["model_s"]) / n["wall_s"] for n in rows["naive"]]

    paper = paper_figures(args, path, spec, dtype_name) if args.paper_items else None

    metric_s = None
    if not args.skip_metric:
        log(f"metric on {args.metric_rows:,} rows ...")
        metric_s = median([metric_seconds(args.metric_rows) for _ in range(args.repeats)])
    log("dataset build ...")
    builds = [build_items_per_s() for _ in range(args.repeats)]

    return {
        "items": {"mub_run": n_items, "naive": n_naive, "rounds": args.rounds, "stages_per_item": 2,
                  "batch_size": BATCH_SIZE, "max_new_tokens": MAX_NEW_TOKENS, "repeats": args.repeats,
                  "metric_rows": None if args.skip_metric else args.metric_rows, "build_items": builds[0][1]},
        "items_per_s": {name: round(median([r["items_per_s"] for r in values]), 3) for name, values in rows.items()},
        "mean_new_tokens": {"naive": round(median([r["mean_new_tokens"] for r in rows["naive"]]), 2),
                            "generate": round(sum(new_tokens) / max(1, len(new_tokens)), 2)},
        "reuse": {k: v for k, v in backends["generate"].describe().items() if k.startswith("reuse_")},
        "overhead_share_by_run": {"naive": round(median(naive_overhead), 4),
                                  "logprob": round(median(overhead_logprob), 4)},
        "model_s_per_item": {name: round(median([r["model_s"] / c for r in values]), 4)
                             for (name, values), c in zip(rows.items(), (n_naive, n_items, n_items))},
        "per_round": {
            "batched_vs_naive": _rounded(batched_vs_naive),
            "logprob_vs_generate": _rounded(logprob_vs_generate),
            "overhead_share": _rounded(overhead, 4),
        },
        "batched_vs_naive": round(median(batched_vs_naive), 3),
        "batched_vs_naive_range": [round(min(batched_vs_naive), 3), round(max(batched_vs_naive), 3)],
        "logprob_vs_generate": round(median(logprob_vs_generate), 3),
        "logprob_vs_generate_range": [round(min(logprob_vs_generate), 3), round(max(logprob_vs_generate), 3)],
        "overhead_share": round(median(overhead), 4),
        "overhead_share_range": [round(min(overhead), 4), round(max(overhead), 4)],
        "metric_1m_s": None if metric_s is None else round(metric_s, 3),
        "build_items_per_s": round(median([b[0] for b in builds]), 2),
        **paper_summary(paper),
    }


def paper_summary(paper: dict[str, Any] | None) -> dict[str, Any]:
    return {"paper": paper, "paper_draws_per_s": None if paper is None else paper["draws_per_s"]}


AB_FIGURES = ("sampled_vs_greedy", "draws_shared_vs_separate", "stage1_vs_plain_loop", "batch1_vs_plain_loop")
RUN_FIGURES = ("batched_vs_naive", "logprob_vs_generate", "overhead_share", "metric_1m_s", "build_items_per_s", "paper_draws_per_s")
# What each --only choice measures (and --check then judges): an A/B part may report more than its own figure.
PARTS = {
    "all": AB_FIGURES + RUN_FIGURES + ("sampled_vs_transformers_sampling",),
    "ab": AB_FIGURES + ("sampled_vs_transformers_sampling",), "runs": RUN_FIGURES,
    **{name: (name,) for name in (*AB_FIGURES, "paper_draws_per_s")},
    "sampled_vs_greedy": ("sampled_vs_greedy", "sampled_vs_transformers_sampling"),
}  # fmt: skip


def ab_summary(ab: dict[str, Any]) -> dict[str, Any]:
    """The A/B figures' medians under their names (what --check reads), with ranges and details beside them."""
    figures: dict[str, Any] = {}
    draws = ab.get("draws") or {}
    measured = {
        "sampled_vs_greedy": ab.get("sampled_vs_greedy"),
        "sampled_vs_transformers_sampling": (ab.get("sampled_vs_greedy") or {}).get("transformers_sampling"),
        "draws_shared_vs_separate": draws.get("separate"),
        "draws_shared_vs_unshared_batch": draws.get("unshared_batch"),
        "stage1_vs_plain_loop": ab.get("stage1_vs_plain_loop"),
        "batch1_vs_plain_loop": ab.get("batch1_vs_plain_loop"),
    }
    for name, figure in measured.items():
        if figure is not None:
            figures[name] = figure["median"]
            figures[f"{name}_range"] = figure["range"]
    return {**figures, "ab_details": ab}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--size", default="bench", help="tiny model size: bench (CPU) or real (2B-class, GPU)")
    parser.add_argument("--arch", default="llava", help="tiny architecture (llava: the plainest processor)")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
    parser.add_argument("--items", type=int, default=64, help="items per mub run (two stages each)")
    parser.add_argument("--naive-items", type=int, default=8, help="items per naive-loop run (a window of the same items)")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of naive + generate + logprob runs")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the metric and build timings")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stable on a shared machine)")
    parser.add_argument("--ab-rounds", type=int, default=9, help="rounds of each A/B figure (sampled, draws, stage 1, batch 1)")
    parser.add_argument(
        "--stage1-items", type=int, default=160,
        help="items of the stage1_vs_plain_loop processes (default: the whole embedded sample, 160)",
    )  # fmt: skip
    parser.add_argument(
        "--only", choices=tuple(PARTS), default="all",
        help="ab: only the A/B figures (sampled_vs_greedy, draws_shared_vs_separate, stage1_vs_plain_loop, "
        "batch1_vs_plain_loop), or one "
        "of them by name; runs: only the mub run figures and the metric and build timings; paper_draws_per_s: "
        "only the paper preset with copies",
    )  # fmt: skip
    parser.add_argument("--paper-items", type=int, default=16, help="items of the --protocol paper run (0: skip it)")
    parser.add_argument("--paper-rounds", type=int, default=1, help="timed runs of the --protocol paper run")
    parser.add_argument("--metric-rows", type=int, default=1_000_000)
    parser.add_argument("--skip-metric", action="store_true")
    parser.add_argument(
        "--check", action="store_true",
        help="exit with status 1 when a figure misses its target in README's performance table",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    spec = f"tiny:{args.arch}:{args.size}"

    log(f"building/loading {spec} ...")
    path = resolve_model_spec(spec, answers=False)
    dataset = mub_dataset.load("explicit", "sample")
    ab: dict[str, Any] = {}
    if args.only in ("all", "ab", "sampled_vs_greedy"):
        ab["sampled_vs_greedy"] = sampled_vs_greedy(path, dtype_name, args.device, dataset, args.ab_rounds)
    if args.only in ("all", "ab", "draws_shared_vs_separate"):
        ab["draws"] = draws_shared_vs_separate(path, dtype_name, args.device, dataset, args.ab_rounds)
    if args.only in ("all", "ab", "stage1_vs_plain_loop") and args.device == "cpu":
        ab["stage1_vs_plain_loop"] = stage1_vs_plain_loop(path, min(args.stage1_items, len(dataset)), args.threads, args.ab_rounds)
    if args.only in ("all", "ab", "batch1_vs_plain_loop"):
        ab["batch1_vs_plain_loop"] = batch1_vs_plain_loop(path, dtype_name, args.device, dataset, args.ab_rounds)
    runs = run_figures(args, path, spec, dtype_name, dataset) if args.only in ("all", "runs") else {}
    if args.only == "paper_draws_per_s":
        runs = paper_summary(paper_figures(args, path, spec, dtype_name))

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    summary = {
        "benchmark": "mub",
        "date": datetime.date.today().isoformat(),
        "machine": {
            "device": args.device,
            "device_name": device_name,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
        "model": spec,
        "tiny_variant": "all-random",
        "dtype": dtype_name,
        **runs,
        **ab_summary(ab),
    }
    print(json.dumps(summary))
    if args.check:
        targets = {name: target for name, target in readme_targets().items() if name in PARTS[args.only]}
        missed = misses(summary, targets)
        for line in missed:
            print(f"check: {line}", file=sys.stderr)
        if missed:
            sys.exit(1)
        print("check: every figure meets README's target", file=sys.stderr)


if __name__ == "__main__":
    main()
