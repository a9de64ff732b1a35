"""Time 1,000,000 rows through `evaluate.load(mub_metric.PATH).compute(...)`, without bootstrap.

Run from the repository root:  python benchmarks/metric_1m.py [--rows N] [--rounds R] [--baseline FOLDER]
Prints the seconds of each compute() call (input generation and module loading are not timed): the median
and range of R rounds. ``--baseline FOLDER`` (another copy of the module folder, e.g. an older commit's
``git archive HEAD~1 mub_metric/mub_misleading_rate | tar -x -C /tmp/old``) is timed too, interleaved
round by round with this one, so a busy machine slows both alike.
Target (issue 3): under 5 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import mub_metric  # noqa: E402

CHOICES = np.array(["A", "B", "C", "D", "yes", "No", "", " b "], dtype=object)


def make_inputs(n_rows: int, seed: int = 0) -> dict[str, list]:
    """Synthetic rows shaped like real runs: short answers, some unparsed (None or ''), ~5 rows per image."""
    rng = np.random.default_rng(seed)

    def pick(values: list) -> list:
        return np.array(values, dtype=object)[rng.integers(0, len(values), n_rows)].tolist()

    def answers(unparsed_share: float) -> list:
        values = CHOICES[rng.integers(0, len(CHOICES), n_rows)]
        values[rng.random(n_rows) < unparsed_share] = None
        return values.tolist()

    return {
        "predictions": answers(0.05),
        "original_predictions": answers(0.02),
        "references": CHOICES[rng.integers(0, 6, n_rows)].tolist(),
        "difficulty": pick(["low", "medium", "high"]),
        "source": pick(["MMMU", "MME", "ScienceQA", "MMBench-cc"]),
        "question_type": pick(["CH", "YN"]),
        "group_id": [f"img_{i // 5}" for i in range(n_rows)],
        "original_confidence": rng.random(n_rows).tolist(),
        "confidence_on_original_after": rng.random(n_rows).tolist(),
    }


def timed_compute(metric, **inputs) -> float:
    start = time.perf_counter()
    result = metric.compute(**inputs)
    seconds = time.perf_counter() - start
    assert result["n"] == len(inputs["predictions"])
    return seconds


def spread(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.2f} s (range {min(seconds):.2f}-{max(seconds):.2f}, {len(seconds)} rounds)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", help="another copy of the metric's module folder, timed interleaved with this one")
    args = parser.parse_args()

    import evaluate

    inputs = make_inputs(args.rows)
    required = {name: inputs[name] for name in ("predictions", "original_predictions", "references")}
    metrics = {"this": mub_metric.load()}
    if args.baseline:
        metrics["baseline"] = evaluate.load(args.baseline)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, metric in metrics.items():
            times.setdefault((name, "required"), []).append(timed_compute(metric, **required))
            times.setdefault((name, "all"), []).append(timed_compute(metric, **inputs))
    print(f"rows: {args.rows:,}")
    for name in metrics:
        label = "" if len(metrics) == 1 else f"{name}: "
        print(f"{label}required inputs only: {spread(times[name, 'required'])}")
        print(f"{label}all optional inputs too: {spread(times[name, 'all'])}")
    if args.baseline:
        for inputs_given in ("required", "all"):
            ratios = [a / b for a, b in zip(times["this", inputs_given], times["baseline", inputs_given])]
            print(f"this over baseline, {inputs_given} inputs: {statistics.median(ratios):.2f} "
                  f"(range {min(ratios):.2f}-{max(ratios):.2f}, per round)")


if __name__ == "__main__":
    main()
