"""Results files in `mub submit`'s schema, written directly: for leaderboard tests that need no runs."""

from __future__ import annotations

import json

LEVELS = ("low", "medium", "high")


def results_document(model: str, *, protocol: str = "paper", fingerprint: str = "f1", when: str = "2025-01-01T00:00:00+00:00",
                     rate: float = 0.5, acc: float = 0.6) -> dict:
    """A submission whose misleading rates are all ``rate``, with intervals and counts."""
    task = {"accuracy_before": acc, "accuracy_before_ci": [acc - 0.1, acc + 0.1], "n": 40, "mr_t2f_levels_mean": rate,
            **{f"mr_t2f_{level}": rate for level in LEVELS},
            **{f"mr_t2f_{level}_ci": [max(0, rate - 0.2), min(1, rate + 0.2)] for level in LEVELS},
            **{f"n_t_{level}": 8 for level in LEVELS}}
    config = {"model_name": model, "protocol": protocol, "submitted_at": when, "dataset_id": "org/mub",
              "items_fingerprint": {"mub_explicit": fingerprint, "mub_implicit": "g1"}}
    return {"config": config, "results": {"mub_explicit": task, "mub_implicit": task}}


def results_text(model: str, **kwargs) -> str:
    return json.dumps(results_document(model, **kwargs))
