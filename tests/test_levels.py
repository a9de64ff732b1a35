"""Levels are exact misled counts (6, 9, 12 of 12 reference models), checked on real counts.

The paper's MR_test.sh runs nums=(6 9 12) with is_equal='=': an item misled by 7, 8, 10 or 11
reference models is on no level. Every expectation here is recounted from the sample's own
``misled_count`` column and the run's records, never read from the code's level table.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import mub_dataset
from mub.backends.base import Generation, Request
from mub.config import RunConfig
from mub.protocol.presets import PROTOCOLS, level_of
from mub.runs.runner import run
from mub.testing.scripted import ScriptedBackend

# Written out from the paper (MR_test.sh), not imported.
EXACT = {6: "low", 9: "medium", 12: "high"}


@pytest.mark.parametrize("preset", sorted(PROTOCOLS))
def test_each_level_is_one_exact_count(preset):
    levels = PROTOCOLS[preset].levels
    for count in [None, *range(0, 14)]:
        assert level_of(levels, count) == EXACT.get(count), count


@pytest.fixture(scope="module")
def sample_rows() -> dict[str, dict]:
    dataset = mub_dataset.load("explicit", "sample")
    return {row["id"]: row for row in dataset.remove_columns("image").to_list()}


def _scripted_run(out: Path, rows: dict[str, dict], failing: frozenset[str] = frozenset(), **options) -> tuple[dict, list[dict]]:
    """A run whose stage 1 is right on two items in three and whose stage 2 follows the hint on every other item;
    the items in ``failing`` get a server error in stage 1."""

    def answer(request: Request) -> str | Generation:
        item_id, stage, _ = request.key.split("/")
        row = rows[item_id]
        number = sorted(rows).index(item_id)
        if item_id in failing:
            return Generation(text="", error="HTTP 500 from the test's server")
        if stage == "stage1":
            return row["answer"] if number % 3 else row["misleading_answer"]
        return row["misleading_answer"] if number % 2 else row["answer"]

    run(
        RunConfig(model="scripted", config="explicit", dataset="sample", backend="scripted", out=str(out), progress=False, **options),
        backend=ScriptedBackend(answer),
        dataset=mub_dataset.load("explicit", "sample"),
    )
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))["results"]["explicit"]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return results, records


def test_sample_has_counts_on_and_between_levels(sample_rows):
    counts = Counter(row["misled_count"] for row in sample_rows.values())
    # the checks below mean something only if every level and the counts between them occur
    assert all(counts[c] > 0 for c in (6, 7, 8, 9, 10, 11, 12)), counts


def test_run_levels_and_their_figures_are_recounted_from_the_records(sample_rows, tmp_path):
    results, records = _scripted_run(tmp_path / "run", sample_rows)
    assert len(records) == len(sample_rows)
    for record in records:
        assert record["misled_count"] == sample_rows[record["id"]]["misled_count"]
        assert record["difficulty"] == EXACT.get(record["misled_count"]), record["id"]
    assert any(r["misled_count"] == 7 and r["difficulty"] is None for r in records)

    by_level: dict[str, list[dict]] = {}
    for record in records:
        if record["misled_count"] in EXACT:
            by_level.setdefault(EXACT[record["misled_count"]], []).append(record)
    assert set(results["by_difficulty"]) == {"low", "medium", "high"}
    sizes = Counter(row["misled_count"] for row in sample_rows.values())
    for level, group in by_level.items():
        figures = results["by_difficulty"][level]
        exact_count = next(c for c, name in EXACT.items() if name == level)
        assert figures["n"] == len(group) == sizes[exact_count] > 0
        right = [r for r in group if r["stage1"][0]["parsed"] == r["answer"]]
        t2f = [r for r in right if r["stage2"][0]["parsed"] != r["answer"]]
        assert (figures["n_t"], figures["t2f"]) == (len(right), len(t2f))
        assert figures["mr_t2f"] == pytest.approx(len(t2f) / len(right))
    assert results["n"] == len(records)


@pytest.mark.parametrize(("level", "count"), [("low", 6), ("medium", 9), ("high", 12)])
def test_difficulty_filter_takes_exactly_the_items_of_its_count(sample_rows, tmp_path, level, count):
    results, records = _scripted_run(tmp_path / level, sample_rows, difficulty=level)
    expected = {item_id for item_id, row in sample_rows.items() if row["misled_count"] == count}
    assert {r["id"] for r in records} == expected
    assert results["n"] == len(expected) and set(results["by_difficulty"]) == {level}


def test_failed_items_are_counted_per_level_and_left_out_of_the_levels(sample_rows, tmp_path):
    failing = frozenset(sorted(sample_rows)[::7])  # every seventh item, on levels and between them
    results, records = _scripted_run(tmp_path / "errors", sample_rows, failing=failing)
    assert {r["id"] for r in records if r["error"]} == failing
    levels_of_failed = Counter(EXACT.get(sample_rows[item]["misled_count"]) for item in failing)
    assert levels_of_failed[None] > 0 and len(levels_of_failed) > 2  # failures on no level and on levels
    assert results["errors"] == len(failing)
    assert results["errors_by_difficulty"] == {level: n for level, n in levels_of_failed.items() if level is not None}
    sizes = Counter(EXACT.get(row["misled_count"]) for row in sample_rows.values())
    for level in ("low", "medium", "high"):
        assert results["by_difficulty"][level]["n"] == sizes[level] - levels_of_failed[level]
    assert results["n"] == len(sample_rows) - len(failing)
