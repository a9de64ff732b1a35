"""The MUB schema and its configs, declared once.

Every producer of MUB rows (the `datasets` builder, the Hub export, the runner's
loaders) uses :data:`FEATURES` and :data:`CONFIGS` from here.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import datasets

IMAGE_HASH_COLUMN = "image_sha256"
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "image": datasets.Image(),
        # sha256 of the image bytes as stored, computed once by the builder: the items
        # fingerprint (mub_dataset.fingerprint) sees the image through it.
        IMAGE_HASH_COLUMN: datasets.Value("string"),
        "question": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.Value("string"),
        "question_type": datasets.Value("string"),
        "source": datasets.Value("string"),
        "category": datasets.Value("string"),
        "misled_count": datasets.Value("int32"),
        "difficulty": datasets.Value("string"),
        "misleading_answer": datasets.Value("string"),
        "misleading_answer_source": datasets.Value("string"),  # MISLEADING_ANSWER_SOURCES
        "misleading_notes": datasets.Sequence(datasets.Value("string")),
        "guiding_notes": datasets.Sequence(datasets.Value("string")),
        "reference_model": datasets.Value("string"),
        "reference_hint": datasets.Value("string"),
        "reference_response": datasets.Value("string"),
        "reference_outcome": datasets.Value("string"),
        # Records of the item in the release file the authors' script for a setting reads: the main
        # file (explicit and per-source configs) and the implicit files (implicit config). The paper
        # preset draws an item once per copy (mub.protocol.presets); 0 where the file lacks the item.
        "copies": datasets.Value("int32"),
        "implicit_copies": datasets.Value("int32"),
    }
)

MULTIPLE_CHOICE = "multiple_choice"
YES_NO = "yes_no"
DIFFICULTY_LEVELS = ("low", "medium", "high")
# The paper's levels: items misled by exactly 6, 9 or 12 of the 12 reference models
# (the authors' MR_test.sh: nums=(6 9 12), is_equal='='). Other counts are on no level.
DIFFICULTY_COUNTS = {"low": 6, "medium": 9, "high": 12}
MISLED_COUNT_RANGE = (6, 12)  # the release holds items that misled at least 6 of the 12 models
# Where an item's misleading_answer comes from: the wrong option the release's own
# hint (`guide`) names, or a choice seeded by the item's id where the release names none.
MISLEADING_ANSWER_SOURCES = ("release", "seeded")

# Source benchmarks of the full MUB release, then the project's synthetic ones
# (the embedded sample). ConBench_CH and ConBench_YN share one config.
RELEASE_SOURCES = (
    "MMBench-cc",
    "ScienceQA",
    "MMMU",
    "ConBench_CH",
    "ConBench_YN",
    "MathVista",
    "MME",
    "SEED",
    "MMStar",
    "AI2D",
)
SYNTHETIC_SOURCES = (
    "Synthetic-Count",
    "Synthetic-Color",
    "Synthetic-Position",
    "Synthetic-Chart",
)


def difficulty_for(misled_count: int) -> str | None:
    """The paper's level of a misled count (exactly 6, 9 or 12), or None for the counts in between."""
    low, high = MISLED_COUNT_RANGE
    if not low <= misled_count <= high:
        raise ValueError(f"misled_count must be between {low} and {high}, got {misled_count}")
    return next((level for level, count in DIFFICULTY_COUNTS.items() if count == misled_count), None)


def source_config_name(source: str) -> str:
    """Config name of a source: lower case, no _CH/_YN suffix, '-' -> '_'."""
    name = re.sub(r"_(CH|YN)$", "", source, flags=re.IGNORECASE)
    return name.lower().replace("-", "_")


@dataclass(frozen=True)
class ConfigSpec:
    """Which items a config holds: all, those with implicit notes, or one source."""

    name: str
    description: str
    implicit_only: bool = False
    source: str | None = None  # a source config name, e.g. "conbench"

    def includes(self, row: dict) -> bool:
        if self.implicit_only and not (row["misleading_notes"] or row["guiding_notes"]):
            return False
        if self.source is not None and source_config_name(row["source"]) != self.source:
            return False
        return True


def _source_specs() -> list[ConfigSpec]:
    names: dict[str, list[str]] = {}
    for source in RELEASE_SOURCES + SYNTHETIC_SOURCES:
        names.setdefault(source_config_name(source), []).append(source)
    return [
        ConfigSpec(name, f"Items from {' and '.join(sources)}.", source=name)
        for name, sources in names.items()
    ]


CONFIGS: tuple[ConfigSpec, ...] = (
    ConfigSpec("explicit", "Every item; evaluated with an explicit false hint."),
    ConfigSpec("implicit", "Items with implicit notes; evaluated with misleading or guiding notes.", implicit_only=True),
    *_source_specs(),
)
CONFIGS_BY_NAME = {spec.name: spec for spec in CONFIGS}
DEFAULT_CONFIG = "explicit"


def configs_with_items(rows: Sequence[dict]) -> list[str]:
    """The config names that hold at least one of ``rows``, in CONFIGS order (unknown sources last)."""
    names = [spec.name for spec in CONFIGS if any(spec.includes(row) for row in rows)]
    extra = {source_config_name(row["source"]) for row in rows} - set(names)
    return names + sorted(extra)


def empty_config_message(where: str | Path, spec: ConfigSpec, rows: Sequence[dict]) -> str:
    """Why config ``spec`` holds none of a release's ``rows``, and the configs it does hold."""
    if not rows:
        return f"{where}: the release holds no items; check its record files (all_combined_items.jsonl)"
    if spec.implicit_only and spec.source is None:
        return (
            f"{where}: config 'implicit' is empty: the release has no implicit notes; add them with `mub notes`, "
            f"or use one of the configs it has: {', '.join(configs_with_items(rows))}"
        )
    return f"{where} has no items for config {spec.name!r}; the configs it has: {', '.join(configs_with_items(rows))}"


def config_spec(name: str) -> ConfigSpec:
    """The spec of a config name, including sources outside the known list."""
    if name in CONFIGS_BY_NAME:
        return CONFIGS_BY_NAME[name]
    close = difflib.get_close_matches(name, CONFIGS_BY_NAME, n=1)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown MUB config {name!r}; {suggestion}known configs: {', '.join(CONFIGS_BY_NAME)}")
