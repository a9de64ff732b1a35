"""Issue 24: the leaderboard recomputes, it does not believe; `mub submit` sends only what can rank.

The hostile files are the issue's items 2 to 5, each as the issue describes it; the honest ones are
consistent results files (tests/leaderboard_files.py). Expected ranks are read off the rates chosen here.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from leaderboard_files import PUBLISHED, results_document, results_path, submission_file, task_figures

from mub.report.leaderboard import SubmissionFile, build_leaderboard
from mub.report.leaderboard_files import collect

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def _hostile(source: str, document: dict | str) -> SubmissionFile:
    return SubmissionFile(source, document if isinstance(document, str) else json.dumps(document))


def _edited(model: str, edit, **kwargs) -> dict:
    document = results_document(model, **kwargs)
    edit(document)
    return document


def hostile_files() -> dict[str, tuple[SubmissionFile, str]]:
    """name -> (file, a phrase its skip reason must hold)."""
    explicit = lambda d: d["results"]["mub_explicit"]  # noqa: E731
    files = {
        # 1: a partial run (80 of the items) of a plumbing model
        "partial run": (_edited("my-org/tiny-idefics3", lambda d: explicit(d).update(n_items=8, n=8), rate=0.0), "only full runs"),
        # 2: fabricated numbers
        "levels 1.0, mean 0": (_edited("evil/a", lambda d: explicit(d).update(mr_t2f_levels_mean=0), rate=1.0), "levels give"),
        "a bare mean": ({"mr_t2f_levels_mean": 0}, "not a results file"),
        "rate 0 with t2f=999, n_t=3": (
            _edited("evil/b", lambda d: explicit(d).update(mr_t2f_low=0, t2f_low=999, n_t_low=3)), "exceeds"),
        "interval [0, 0.9]": (_edited("evil/c", lambda d: explicit(d).update(mr_t2f_low_ci=[0, 0.9])), "not the 95% Wilson"),
        "percentages": (_edited("evil/d", lambda d: explicit(d).update(mr_t2f_low=45.0)), "percentage"),
        # 3: identity
        "another model's folder": (
            _edited("Qwen/Qwen2-VL", lambda d: None, rate=0.0, when="2025-03-01T00:00:00+00:00"), "is not the file's folder"),
        "made-up fingerprint 1": (results_document("org/forger1", rate=0.0, fingerprint="evil"), "fingerprint"),
        "made-up fingerprint 2": (results_document("org/forger2", rate=0.0, fingerprint="evil"), "fingerprint"),
        "made-up fingerprint 3": (results_document("org/forger3", rate=0.0, fingerprint="evil"), "fingerprint"),
        "from the future": (
            results_document("org/future", rate=0.0, when="9000-01-01T00:00:00+00:00"), "lies in the future"),
        "date not its stamp": (_edited("org/stamp", lambda d: d["config"].update(submitted_at="2025-02-02T00:00:00+00:00")),
                               "not the file name's time"),
        # 4: files that took the board down
        "overflowing date": (_edited("org/overflow", lambda d: d["config"].update(submitted_at="0001-01-01T00:00:00+05:00")),
                             "out of range"),
        "90,000-deep array": ("[" * 90_000 + "]" * 90_000, "nested deeper"),  # under the size cap: the depth cap acts
        "12-deep object": ({"config": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}, "results": {}}, "nested deeper"),
        "5,000-digit integer": ('{"config": {}, "results": {"n": ' + "9" * 5000 + "}}", "digits"),
        "NaN": (json.dumps(results_document("org/nan")).replace('"mr_t2f_low": 0.5', '"mr_t2f_low": NaN'), "NaN"),
        "oversized text": ("{" + " " * 300_000 + "}", "characters, over"),
    }
    sources = {
        "another model's folder": "attacker/x/results_2025-03-01T00-00-00.json",
        "from the future": "org/future/results_9000-01-01T00-00-00.json",
        "overflowing date": "org/overflow/results_0001-01-01T00-00-00.json",
        "a bare mean": "org/bare/results_2025-01-01T00-00-00.json",
    }
    made = {}
    for name, (document, reason) in files.items():
        model = document.get("config", {}).get("model_name") if isinstance(document, dict) else None
        source = sources.get(name) or (results_path(model) if model else f"junk/{name.replace(' ', '_')}/results_2025-01-01T00-00-00.json")
        made[name] = (_hostile(source, document), reason)
    return made


def honest_files() -> list[SubmissionFile]:
    return [
        submission_file("org/alpha", rate=0.3),
        submission_file("org/beta", rate=0.6),
        # two legitimate submissions of one model; the later (0.1) counts
        submission_file("LLaVA/llava-1.5", rate=0.8, when="2025-01-01T00:00:00+00:00"),
        submission_file("llava/llava-1.5\u200b", rate=0.1, when="2025-02-01T00:00:00+00:00"),
        submission_file("org/delta", rate=0.4, protocol="Paper"),  # protocol labels compare normalised
        submission_file("org/epsilon", rate=0.5, protocol="paper "),
    ]


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

    partial = SubmissionFile(results_path("org/partial"), json.dumps(_edited("org/partial", drop_high, rate=0.5)))
    board = build_leaderboard([partial, submission_file("org/whole", rate=0.9)], PUBLISHED, now=NOW)
    rows = {row.model: row for row in board.rows if not row.reference}
    assert rows["org/partial"].kinds["implicit"].mean is None and rows["org/partial"].rank is None
    assert rows["org/whole"].rank == 1  # ranked above a lower but incomplete one
    assert [row.model for row in board.rows][:2] == ["org/whole", "org/partial"]


def test_every_stated_rate_is_checked_against_its_counts() -> None:
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
    files, skipped = collect([str(repo)])
    assert files == []
    reasons = {Path(s.source).parent.name: s.reason for s in skipped}
    assert "over the" in reasons["big"] and "not a regular file" in reasons["pipe"] and "not a regular file" in reasons["link"]


def test_a_stated_overall_is_never_the_ranking_key() -> None:
    document = results_document("org/liar", rate=0.9)
    document["config"]["overall"] = 0.0
    for task in document["results"].values():
        task["mr_t2f"] = task["mr_t2f"]  # the stated figures are consistent: rank by the levels alone
    board = build_leaderboard([SubmissionFile(results_path("org/liar"), json.dumps(document)), submission_file("org/honest", rate=0.5)],
                              PUBLISHED, now=NOW)
    assert [row.model for row in board.rows if row.rank] == ["org/honest", "org/liar"]
    assert task_figures(0.5)["mr_t2f_levels_mean"] == 0.5
