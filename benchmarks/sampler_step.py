"""One sampling step: mub's seeded sampler against transformers' own sampling, per vocabulary size.

    python benchmarks/sampler_step.py             # 16 rows; vocabularies of 768 (tiny:llava:bench) and 32,000

Both apply temperature 0.4, top-k 80 and top-p 0.9 (the paper's explicit settings) to the same random logits;
transformers' own is its warpers then ``torch.multinomial`` on the global generator (what ``do_sample=True``
does), mub's is :func:`mub.backends.transformers_backend._seeded_sampler` (a per-row counter-based stream).
Greedy's ``argmax`` is the floor. The last line is one JSON object of microseconds per step (median of rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from mub.backends.transformers_backend import _seeded_sampler
from mub.config import DecodingSettings

SETTINGS = {"temperature": 0.4, "top_k": 80, "top_p": 0.9}


def transformers_sampling(input_ids: Any, scores: Any) -> Any:
    warpers = [TemperatureLogitsWarper(SETTINGS["temperature"]), TopKLogitsWarper(SETTINGS["top_k"]), TopPLogitsWarper(SETTINGS["top_p"])]
    for warper in warpers:
        scores = warper(input_ids, scores)
    return torch.multinomial(torch.softmax(scores, dim=-1), 1)


def greedy(input_ids: Any, scores: Any) -> Any:
    return scores.argmax(-1)


def microseconds(step: Callable[[Any, Any], Any], rows: int, vocab: int, steps: int) -> float:
    input_ids = torch.zeros((rows, 1), dtype=torch.long)
    logits = torch.randn(rows, vocab)
    start = time.perf_counter()
    for _ in range(steps):
        step(input_ids, logits.clone())
    return (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--vocab", type=int, nargs="+", default=[768, 32000])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    figures: dict[str, dict[str, float]] = {}
    for vocab in args.vocab:
        mub = _seeded_sampler(range(args.rows), DecodingSettings(**SETTINGS))
        steps = {"greedy": greedy, "transformers": transformers_sampling, "mub": mub}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for number in range(args.rounds):  # interleaved, so each round compares under the same load
            for name in (list(steps) if number % 2 == 0 else list(reversed(steps))):
                times[name].append(microseconds(steps[name], args.rows, vocab, args.steps))
        figures[str(vocab)] = {name: round(statistics.median(values)) for name, values in times.items()}
        print(f"vocabulary {vocab}: {figures[str(vocab)]} microseconds per step", flush=True)
    print(json.dumps({"rows": args.rows, "settings": SETTINGS, "threads": args.threads, "us_per_step": figures}))


if __name__ == "__main__":
    main()
