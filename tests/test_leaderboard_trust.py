"""Issue 24: the leaderboard recomputes, it does not believe; `mub submit` sends only what can rank.

The hostile files are the issue's items 2 to 5, each as the issue describes it; the honest ones are
consistent results files (tests/leaderboard_files.py). Expected ranks are read off the rates chosen here.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from leaderboard_files import PUBLISHED, edited, hostile_files, honest_files, results_document, results_path, results_text, submission_file, task_figures

from mub.report.leaderboard import SubmissionFile, build_leaderboard
from mub.report.leaderboard_files import collect
from mub_metric.mub_misleading_rate.mub_misleading_rate import wilson_interval

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def test_honest_and_hostile_files_rank_exactly_the_honest_ones() -> None:
    hostile = hostile_files()
    board = build_leaderboard(honest_files() + [file for file, _ in hostile.values()], PUBLISHED, now=NOW)
    ranked = [(row.rank, row.model) for row in board.rows if not row.reference]
    assert ranked == [(1, "llava/llava-1.5"), (2, "org/alpha"), (3, "org/delta"), (4, "org/epsilon"), (5, "org/beta")]
    assert board.protocols == ["paper"]
    reasons = {s.source: s.reason for s in board.skipped}
    for name, (file, phrase) in hostile.items():
        assert phrase in reasons.get(file.source, ""), f"{name}: {reasons.get(file.source)!r}"
    assert "submitted again" in reasons["LLaVA/llava-1.5/results_2025-01-01T00-00-00.json"]
    assert len(board.skipped) == len(hostile) + 1


def test_the_expected_fingerprint_comes_from_the_dataset_not_a_majority() -> None:
    legit = [submission_file("org/one", rate=0.2), submission_file("org/two", rate=0.4)]
    forged = [submission_file(f"org/forger{i}", rate=0.0, fingerprint="evil", when="2024-01-01T00:00:00+00:00") for i in range(3)]
    board = build_leaderboard(legit + forged, PUBLISHED, now=NOW)
    assert [row.model for row in board.rows if row.rank] == ["org/one", "org/two"]
    assert board.fingerprints == PUBLISHED.fingerprints


def test_a_kind_missing_a_level_has_no_mean_and_no_rank() -> None:
    def drop_high(document: dict) -> None:
        task = document["results"]["mub_implicit"]
        task.update(t2f_high=0, n_t_high=0, n_high=0, mr_t2f_high=None, mr_t2f_high_ci=None, mr_t2f_levels_mean=0.5)

    partial = SubmissionFile(results_path("org/partial"), json.dumps(edited("org/partial", drop_high, rate=0.5)))
    board = build_leaderboard([partial, submission_file("org/whole", rate=0.9)], PUBLISHED, now=NOW)
    rows = {row.model: row for row in board.rows if not row.reference}
    assert rows["org/partial"].kinds["implicit"].mean is None and rows["org/partial"].rank is None
    assert rows["org/whole"].rank == 1  # ranked above a lower but incomplete one
    assert [row.model for row in board.rows][:2] == ["org/whole", "org/partial"]


def test_every_stated_rate_is_checked_against_its_counts() -> None:
    document = results_document("org/m")
    # 0.5 with its own interval still, but the levels' 30 + 10 + 10 exceed n_t = 32
    document["results"]["mub_explicit"].update(n_t_low=30, t2f_low=15, n_low=30, mr_t2f_low_ci=wilson_interval(15, 30))
    board = build_leaderboard([SubmissionFile(results_path("org/m"), json.dumps(document))], PUBLISHED, now=NOW)
    assert "the levels hold" in board.skipped[0].reason
    for field, value in (("mr_t2f", 0.0), ("accuracy_before", 0.99), ("mr_f2t", 0.5), ("mr_t2f_medium", 0.2)):
        document = results_document("org/m")
        document["results"]["mub_implicit"][field] = value
        board = build_leaderboard([SubmissionFile(results_path("org/m"), json.dumps(document))], PUBLISHED, now=NOW)
        assert [s.reason for s in board.skipped if field in s.reason], field


def test_a_clustered_interval_over_several_draws_is_checked_for_its_rate_and_width() -> None:
    document = results_document("org/draws", draws=3)  # intervals of the draws, as if unclustered
    good = json.loads(json.dumps(document))
    board = build_leaderboard([SubmissionFile(results_path("org/draws"), json.dumps(good))], PUBLISHED, now=NOW)
    assert not board.skipped  # the Wilson interval itself is a plausible clustered one
    document["results"]["mub_explicit"]["mr_t2f_low_ci"] = [0.0, 0.99]
    board = build_leaderboard([SubmissionFile(results_path("org/draws"), json.dumps(document))], PUBLISHED, now=NOW)
    assert "does not fit the rate" in board.skipped[0].reason


def test_oversized_and_special_files_are_skipped_unread(tmp_path: Path) -> None:
    import os

    from mub.report.leaderboard_files import MAX_FILE_BYTES

    repo = tmp_path / "repo"
    (repo / "org" / "big").mkdir(parents=True)
    with open(repo / "org" / "big" / "results_2025-01-01T00-00-00.json", "wb") as big:
        big.truncate(MAX_FILE_BYTES + 1)  # sparse: the test stays small, the size is what counts
    (repo / "org" / "pipe").mkdir()
    os.mkfifo(repo / "org" / "pipe" / "results_2025-01-01T00-00-00.json")  # would block a reader forever
    (repo / "org" / "link").mkdir()
    (repo / "org" / "link" / "results_2025-01-01T00-00-00.json").symlink_to("/etc/hostname")
    outside = tmp_path / "outside" / "elsewhere"
    outside.mkdir(parents=True)
    (outside / "results_2025-01-01T00-00-00.json").write_text(results_text("org/elsewhere"))
    (repo / "org" / "linked").symlink_to(outside)  # a linked folder: its files lie outside the repository
    files, skipped = collect([str(repo)])
    assert files == []
    reasons = {Path(s.source).parent.name: s.reason for s in skipped}
    assert "over the" in reasons["big"] and "not a regular file" in reasons["pipe"] and "a link" in reasons["link"]
    assert "a link" in {s.reason for s in skipped if s.source.endswith("/org/linked")}.pop()


def test_a_stated_overall_is_never_the_ranking_key() -> None:
    document = results_document("org/liar", rate=0.9)
    document["config"]["overall"] = 0.0
    for task in document["results"].values():
        task["mr_t2f"] = task["mr_t2f"]  # the stated figures are consistent: rank by the levels alone
    board = build_leaderboard([SubmissionFile(results_path("org/liar"), json.dumps(document)), submission_file("org/honest", rate=0.5)],
                              PUBLISHED, now=NOW)
    assert [row.model for row in board.rows if row.rank] == ["org/honest", "org/liar"]
    assert task_figures(0.5)["mr_t2f_levels_mean"] == 0.5
