"""What the leaderboard results file's writer (:mod:`mub.report.submit`) and reader
(:mod:`mub.report.leaderboard`) share: task names, the protocol of older runs, the
way a figure is written. Kept light (stdlib only) so the leaderboard Space can
import it without datasets or matplotlib.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

UNKNOWN_PROTOCOL = "unknown (pre-preset)"  # runs made before protocol presets were recorded
DECIMALS = 12  # drops floating-point noise (2.7e-17) without touching any real figure
# A Hub repository id: one optional namespace and a name, no path syntax.
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def is_hub_id(text: str) -> bool:
    """A Hub repository id, and not a path that exists here (a local folder named like one)."""
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def task_name(config: str) -> str:
    return f"mub_{config}"


def number(value: Any) -> Any:
    """A figure as written out: floats rounded to :data:`DECIMALS`; whole values as ints (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return [number(v) for v in value] if isinstance(value, (list, tuple)) else value
    value = round(value, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    return int(value) if value.is_integer() else value


BUILD_SUMMARY = "build_summary.json"  # written by `mub build`; holds the Hub id given with --repo-id
RUN_FILTERS = {"limit": "--limit", "difficulty": "--difficulty", "misled_count": "--misled-count", "shard": "--shard"}
LEVELS = ("low", "medium", "high")  # mub_dataset.features.DIFFICULTY_LEVELS


def is_synthetic(dataset: str) -> bool:
    """The embedded synthetic sample, or a `mub build` of it: stand-in data whose figures say nothing about MUB."""
    from mub_dataset.loading import SAMPLE, SAMPLE_VERSION, cache_root

    # The sample's release folder (mub_dataset.loading.sample_release_dir), named without generating it.
    sample_folder = (cache_root() / f"synthetic-sample-{SAMPLE_VERSION}").resolve()
    if dataset == SAMPLE or (dataset and Path(dataset).resolve() == sample_folder):
        return True
    summary = Path(dataset) / BUILD_SUMMARY
    return summary.is_file() and bool(json.loads(summary.read_text(encoding="utf-8")).get("synthetic"))


def rank_refusal(document: Mapping[str, Any], config: str) -> str | None:
    """Why a finished run (its results.json) cannot be submitted to the leaderboard, or None: only full runs of
    the benchmark rank (mub submit refuses the rest; the end of `mub run` says so)."""
    settings = document.get("run", {})
    model = str(document.get("model", ""))
    if model.startswith("tiny:"):
        return f"the model {model} is a random plumbing-check model, not a model to rank"
    used = [f"{flag} {settings[key]}" for key, flag in RUN_FILTERS.items() if settings.get(key) is not None]
    if used:
        return (
            f"the run covers part of the benchmark ({', '.join(used)}); only full runs rank: run without them, "
            "or merge the shards (mub merge) and submit the merged run"
        )
    if is_synthetic(str(document.get("dataset", {}).get("name", ""))):
        return "the run is on the synthetic sample, whose figures say nothing about MUB; run on a MUB build"
    figures = document.get("results", {}).get(config, {})
    if figures.get("errors"):
        return f"the run has {figures['errors']} item errors; finish them (mub run ... --resume), then submit"
    missing = [level for level in LEVELS if not figures.get("by_difficulty", {}).get(level, {}).get("n")]
    if missing:
        return f"the run has no items on level {', '.join(missing)}; a submission covers every level"
    return None
