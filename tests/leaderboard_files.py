"""Results files in `mub submit`'s schema, written directly: for leaderboard tests that need no runs.

Every figure is consistent with its counts, as `mub submit` writes them: per level 10 items answered
correctly in stage 1 (n_t) of 12, ``round(10 * rate)`` of them flipped; 40 items in all.
"""

from __future__ import annotations

import json
from datetime import datetime

from mub.report.leaderboard import PublishedItems, SubmissionFile
from mub_metric.mub_misleading_rate.mub_misleading_rate import wilson_interval

LEVELS = ("low", "medium", "high")
N_ITEMS = 40
PUBLISHED = PublishedItems("test build", {"mub_explicit": "f1", "mub_implicit": "g1"}, {"mub_explicit": N_ITEMS, "mub_implicit": N_ITEMS})


def _rate(successes: int, total: int) -> dict:
    return {"value": successes / total if total else None, "ci": wilson_interval(successes, total)}


def task_figures(rate: float, draws: int = 1) -> dict:
    """One config's figures: every level's misleading rate is ``rate`` (a multiple of 0.1); ``draws`` per item."""
    flips = round(10 * rate)
    n, n_t, n_f, t2f, f2t = N_ITEMS * draws, 32 * draws, 8 * draws, 3 * flips * draws, draws
    task = {"n": n, "n_t": n_t, "n_f": n_f, "t2f": t2f, "f2t": f2t, "errors": 0, "n_items": N_ITEMS, "n_draws": N_ITEMS * draws}
    for name, (k, total) in {"mr_t2f": (t2f, n_t), "mr_f2t": (f2t, n_f), "accuracy_before": (n_t, n)}.items():
        task[name], task[f"{name}_ci"] = _rate(k, total).values()
    for level in LEVELS:
        task.update({f"t2f_{level}": flips * draws, f"n_t_{level}": 10 * draws, f"n_{level}": 12 * draws})
        task[f"mr_t2f_{level}"], task[f"mr_t2f_{level}_ci"] = _rate(flips * draws, 10 * draws).values()
    task["mr_t2f_levels_mean"] = flips / 10
    return task


def results_document(model: str, *, protocol: str = "paper", fingerprint: str = "f1", when: str = "2025-01-01T00:00:00+00:00",
                     rate: float = 0.5, draws: int = 1) -> dict:
    """A submission whose misleading rates are all ``rate``, with intervals and counts."""
    task = task_figures(rate, draws)
    config = {"model_name": model, "protocol": protocol, "submitted_at": when, "dataset_id": "org/mub",
              "items_fingerprint": {"mub_explicit": fingerprint, "mub_implicit": "g1"}}
    return {"config": config, "results": {"mub_explicit": task, "mub_implicit": json.loads(json.dumps(task))}}


def results_path(model: str, when: str = "2025-01-01T00:00:00+00:00") -> str:
    """``<org>/<model>/results_<time>.json``, where mub submit puts the file."""
    return f"{model}/results_{datetime.fromisoformat(when).strftime('%Y-%m-%dT%H-%M-%S')}.json"


def results_text(model: str, **kwargs) -> str:
    return json.dumps(results_document(model, **kwargs))


def submission_file(model: str, *, when: str = "2025-01-01T00:00:00+00:00", **kwargs) -> SubmissionFile:
    return SubmissionFile(results_path(model, when), results_text(model, when=when, **kwargs))


def write_published_build(folder) -> str:
    """A folder whose dataset card publishes :data:`PUBLISHED` as `mub build` writes it (the `mub:` block)."""
    import yaml

    from mub.report.leaderboard_files import CARD_KEY

    block = {CARD_KEY: {"items_fingerprint": {"explicit": "f1", "implicit": "g1"}, "n_items": {"explicit": N_ITEMS, "implicit": N_ITEMS}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("---\n" + yaml.safe_dump(block) + "---\n# a MUB build\n", encoding="utf-8")
    return str(folder)
