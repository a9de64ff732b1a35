"""Issue 24: `mub submit` sends only what can rank, with its provenance and the Hub's own formats;
issue 22, item 11: two submissions racing for one file name never lose or corrupt one."""

from __future__ import annotations

import json
import re
import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from built_runs import BUILD_REPO_ID, scripted_run

from mub.cli import main
from mub_dataset.loading import sample_release_dir


def _edited_copy(run: Path, target: Path, edit) -> Path:
    shutil.copytree(run, target)
    document = json.loads((target / "results.json").read_text())
    edit(document)
    (target / "results.json").write_text(json.dumps(document))
    return target


def _refusals(rankable_runs: dict[str, Path], root: Path) -> dict[str, tuple[Path, str]]:
    build = str(rankable_runs["build"])
    run = rankable_runs["steady_explicit"]

    def figures(document: dict) -> dict:
        return document["results"]["explicit"]

    sample_build = root / "sample_build"
    assert main(["build", "--out", str(sample_build), "--repo-id", "org/sample"]) == 0  # a build of the synthetic sample
    return {
        "a build of the sample": (scripted_run(root / "sample_built", "scripted/steady", "explicit", str(sample_build), 0),
                                  "synthetic sample"),
        "a tiny: model": (_edited_copy(run, root / "tiny", lambda d: d.update(model="tiny:idefics3")), "plumbing-check model"),
        "--limit": (scripted_run(root / "limit", "scripted/steady", "explicit", build, 0, limit=80), "--limit 80"),
        "--difficulty": (scripted_run(root / "low", "scripted/steady", "explicit", build, 0, difficulty="low"), "--difficulty low"),
        "an unmerged shard": (scripted_run(root / "shard", "scripted/steady", "explicit", build, 0, shard=(0, 2)), "mub merge"),
        "the synthetic sample": (scripted_run(root / "sample", "scripted/steady", "explicit", "sample", 0), "synthetic sample"),
        "the sample's release folder": (
            scripted_run(root / "sample_folder", "scripted/steady", "explicit", str(sample_release_dir()), 0), "synthetic sample"),
        "item errors": (_edited_copy(run, root / "errors", lambda d: figures(d).update(errors=2)), "2 item errors"),
        "a level not covered": (
            _edited_copy(run, root / "levels", lambda d: figures(d)["by_difficulty"]["high"].update(n=0)), "level high"),
    }


def test_submit_refuses_what_cannot_rank(rankable_runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    for name, (run, phrase) in _refusals(rankable_runs, tmp_path / "runs").items():
        capsys.readouterr()
        out = tmp_path / "sub" / name.replace(" ", "_")
        assert main(["submit", str(run), "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert phrase in err and err.count("\n") == 1 and str(run) in err, (name, err)
        assert not out.exists(), name
    assert main(["submit", str(rankable_runs["steady_explicit"]), "--out", str(tmp_path / "ok")]) == 0  # the full run goes
    # The end of a run suggests `mub submit` only where it would be accepted.
    from mub.cli import end_of_run

    for run in (rankable_runs["steady_explicit"], tmp_path / "runs" / "limit"):
        printed = end_of_run(json.loads((run / "results.json").read_text()), run)
        assert (f"mub submit {run}" in printed) == (run == rankable_runs["steady_explicit"]), printed


def test_eval_results_round_trip_through_huggingface_hub(rankable_runs: dict[str, Path], tmp_path: Path) -> None:
    from huggingface_hub import EvalResultEntry, eval_result_entries_to_yaml, parse_eval_result_entries

    runs = [str(rankable_runs["fickle_explicit"]), str(rankable_runs["fickle_implicit"])]
    out = tmp_path / "sub"
    assert main(["submit", *runs, "--dataset-revision", "0123abc", "--out", str(out)]) == 0
    (results_file,) = out.glob("*/*/results_*.json")
    (eval_file,) = (out / ".eval_results").rglob("*.yaml")
    document = json.loads(results_file.read_text())
    written = yaml.safe_load(eval_file.read_text())
    entries = parse_eval_result_entries(written)
    assert all(isinstance(entry, EvalResultEntry) for entry in entries)
    assert eval_result_entries_to_yaml(entries) == written  # nothing lost either way
    assert len(entries) == 2 * 4  # per config: its ranking figure, then each level
    for entry in entries:
        assert (entry.dataset_id, entry.dataset_revision) == (BUILD_REPO_ID, "0123abc")
        assert entry.date == document["config"]["submitted_at"] and "lower is better" in entry.notes
        assert entry.source_name.startswith(f"mub {document['config']['mub_version']}") and entry.source_url
    for config in ("explicit", "implicit"):
        figures = json.loads((rankable_runs[f"fickle_{config}"] / "results.json").read_text())["results"][config]
        levels = [figures["by_difficulty"][level] for level in ("low", "medium", "high")]
        values = [entry.value for entry in entries if entry.task_id == config]
        expected = [sum(level["t2f"] / level["n_t"] for level in levels) / 3] + [level["t2f"] / level["n_t"] for level in levels]
        assert values == pytest.approx(expected, abs=1e-12)
    assert document["config"]["dataset_revision"] == "0123abc"


EVAL_YAML_FIELDS = {"name": str, "description": str, "evaluation_framework": str, "tasks": list}
TASK_FIELDS = {"id", "config", "split"}


def test_build_writes_eval_yaml_and_the_card_the_board_reads(rankable_runs: dict[str, Path]) -> None:
    """eval.yaml holds the documented fields only, one task per config; the card's fingerprints are the ones a
    full run of each config records (the board checks submissions against them)."""
    from huggingface_hub import DatasetCard

    from mub.report.leaderboard_files import published_items

    build = rankable_runs["build"]
    text = (build / "eval.yaml").read_text()
    declared = yaml.safe_load(text)
    assert set(declared) == set(EVAL_YAML_FIELDS) and all(isinstance(declared[k], t) for k, t in EVAL_YAML_FIELDS.items())
    card = DatasetCard.load(build / "README.md").data.to_dict()
    configs = [entry["config_name"] for entry in card["configs"]]
    assert [task["id"] for task in declared["tasks"]] == configs
    for task in declared["tasks"]:
        assert set(task) == TASK_FIELDS and task["config"] == task["id"] and task["split"] == "test"
    commented = dict(zip(configs, re.findall(r"# items_fingerprint: (\w+)", text)))
    assert commented == card["mub"]["items_fingerprint"]
    published = published_items(str(build))
    for config in ("explicit", "implicit"):
        recorded = json.loads((rankable_runs[f"steady_{config}"] / "results.json").read_text())
        assert published.fingerprints[f"mub_{config}"] == recorded["dataset"]["fingerprint"]
        assert published.n_items[f"mub_{config}"] == recorded["results"][config]["n_items"]


def test_racing_submissions_each_get_their_own_file_or_a_refusal(rankable_runs: dict[str, Path], tmp_path: Path) -> None:
    from mub.report.submit import build_submission, write_submission

    same_second = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    submission = build_submission([rankable_runs["steady_explicit"]], now=same_second)
    for trial in range(20):
        out = tmp_path / f"trial{trial}"
        start = threading.Barrier(2)
        outcomes: list[object] = []

        def submit() -> None:
            start.wait()
            try:
                outcomes.append(write_submission(submission, out))
            except ValueError as exc:
                outcomes.append(exc)

        workers = [threading.Thread(target=submit) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        written = [o for o in outcomes if isinstance(o, Path)]
        refused = [o for o in outcomes if isinstance(o, ValueError)]
        assert len(written) == 1 and len(refused) == 1 and "already exists" in str(refused[0])
        assert json.loads(written[0].read_text()) == submission.results  # whole, never half written
        assert [p.name for p in written[0].parent.iterdir()] == [written[0].name]  # no staging file left
