"""Where ``sampled_vs_greedy``'s cost goes: mub's seeded sampler, or the model's work on other tokens.

    python benchmarks/sampler_replay.py            # tiny:llava:bench (all-random), 16 requests, 256 tokens, 8 rounds

Three decodings of one batch of 16 stage-1 requests on one loaded copy of the weights, timed as
``benchmarks/run.py``'s ``sampled_vs_greedy`` times them (CPU seconds per generation step, one call per side and
round, order alternating): greedy; mub's seeded sampling at the paper's explicit settings; and a replay that emits
the sampled run's tokens through the same logits-processor hook at the cost of one fill and one scatter per step.
``replay_vs_greedy`` is then what the sampled tokens cost the model itself (the all-random model's greedy answer
repeats one token), and ``sampled_vs_replay`` what the sampler costs. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from typing import Any, Callable, Iterator

import torch
from run import PAPER_TOKENS, paper_sampling, seconds_per_step, stage1_requests  # the same requests and timing as sampled_vs_greedy

import mub.backends.transformers_backend as transformers_backend
import mub_dataset
from mub.backends.base import Request
from mub.backends.transformers_backend import TransformersBackend, _seeded_sampler
from mub.config import DecodingSettings
from mub.testing.tiny_models import resolve_model_spec


class Replay:
    """A logits processor that picks the recorded tokens, one column of them per step."""

    def __init__(self, steps: list[Any]) -> None:
        self.steps = steps
        self.step = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        picked = self.steps[self.step]
        self.step += 1
        return scores.fill_(float("-inf")).scatter_(1, picked, 0.0)


@contextlib.contextmanager
def sampler_made_by(make: Callable[[Any, DecodingSettings], Any]) -> Iterator[None]:
    """Inside, the transformers backend builds its per-call sampler with ``make(seeds, decoding)``."""
    transformers_backend._seeded_sampler = make
    try:
        yield
    finally:
        transformers_backend._seeded_sampler = _seeded_sampler


def recorded_tokens(sampled: TransformersBackend, requests: list[Request]) -> list[Any]:
    """The tokens the seeded sampler picks for ``requests``, one (rows, 1) column per step."""
    steps: list[Any] = []

    def recording(seeds: Any, decoding: DecodingSettings) -> Callable[[Any, Any], Any]:
        sampler = _seeded_sampler(seeds, decoding)

        def pick(input_ids: Any, scores: Any) -> Any:
            scores = sampler(input_ids, scores)
            steps.append(scores.argmax(-1, keepdim=True))
            return scores

        return pick

    with sampler_made_by(recording):
        sampled.generate(requests)
    return steps


class Replaying:
    """``sampled`` with its seeded sampler swapped for a :class:`Replay` of ``tokens``: the same calls otherwise."""

    def __init__(self, sampled: TransformersBackend, tokens: list[Any]) -> None:
        self.sampled = sampled
        self.tokens = tokens

    def generate(self, requests: list[Request]) -> list[Any]:
        with sampler_made_by(lambda seeds, decoding: Replay(self.tokens)):
            return self.sampled.generate(requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny:llava:bench")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=PAPER_TOKENS)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    path = resolve_model_spec(args.model, answers=False)
    greedy = TransformersBackend(
        path, dtype="float32", device="cpu", batch_size=args.requests, decoding=DecodingSettings(max_new_tokens=args.max_new_tokens)
    )
    sampled = paper_sampling(greedy)
    requests = stage1_requests(mub_dataset.load("explicit", "sample"), args.requests)
    replay = Replaying(sampled, recorded_tokens(sampled, requests))
    same = [g.text for g in replay.generate(requests)] == [g.text for g in sampled.generate(requests)]  # and warm-up
    greedy.generate(requests)
    sides: dict[str, Any] = {"greedy": greedy, "sampled": sampled, "replay": replay}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for number in range(args.rounds):  # one call per side and round, order alternating
        for name in list(sides) if number % 2 == 0 else list(reversed(sides)):
            seconds[name].append(seconds_per_step(sides[name], requests))

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(seconds[a], seconds[b])), 3)

    figures = {
        "sampled_vs_greedy": ratio("sampled", "greedy"), "replay_vs_greedy": ratio("replay", "greedy"),
        "sampled_vs_replay": ratio("sampled", "replay"),
    }  # fmt: skip
    print(json.dumps({"model": args.model, "requests": args.requests, "rounds": args.rounds, "replay_same_texts": same, **figures}))


if __name__ == "__main__":
    main()
