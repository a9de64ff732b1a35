"""Time 1,000,000 rows through `evaluate.load(mub_metric.PATH).compute(...)`, without bootstrap.

Run from the repository root:  python benchmarks/metric_1m.py [--rows N]
Prints the seconds of each compute() call (input generation and module loading are not timed).
Target (issue 3): under 5 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()

    inputs = make_inputs(args.rows)
    required = {name: inputs[name] for name in ("predictions", "original_predictions", "references")}
    metric = mub_metric.load()
    print(f"rows: {args.rows:,}")
    print(f"required inputs only: {timed_compute(metric, **required):.2f} s")
    print(f"all optional inputs too: {timed_compute(metric, **inputs):.2f} s")


if __name__ == "__main__":
    main()
