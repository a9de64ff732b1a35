"""``mub submit --to`` shows what it will upload and asks first; repository paths never hold a local path.

Issue 13: ``mub submit --to`` uploaded without asking, and put a local model
path (``../fav``) into the repository path. Issue 24: ``--to`` took a local path,
and a refused or failed upload still wrote a file. The Hub is replaced by a recorder.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import huggingface_hub
import pytest
import yaml
from built_runs import scripted_run

from mub.cli import main


class Terminal(io.StringIO):
    """Typed answers on a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    calls: list[dict] = []
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", lambda self, **kwargs: calls.append(kwargs))
    return calls


@pytest.fixture(scope="module")
def runs(rankable_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Full runs on a MUB build: one of a model with a Hub id, one of a model given as a local path."""
    local = tmp_path_factory.mktemp("runs") / "local"
    return {"hub": rankable_runs["steady_explicit"], "local": scripted_run(local, "../fav", "explicit", str(rankable_runs["build"]), 0, draws="once")}


def _submit(runs: dict[str, Path], tmp_path: Path, name: str = "hub", *extra: str) -> int:
    argv = ["submit", str(runs[name]), "--to", "org/results", "--dataset-id", "org/mub", "--out", str(tmp_path / "sub")]
    return main([*argv, *extra])


def test_without_a_terminal_nothing_is_uploaded(runs, tmp_path, uploads, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # a pipe: nobody to ask
    assert _submit(runs, tmp_path) == 2
    captured = capsys.readouterr()
    assert uploads == [] and "pass --yes" in captured.err and captured.err.count("\n") == 1
    assert "org/results" in captured.out and "-> scripted/steady/results_" in captured.out  # what would have gone


def test_the_upload_is_shown_then_asked_for(runs, tmp_path, uploads, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert _submit(runs, tmp_path) == 2
    assert uploads == [] and "not confirmed" in capsys.readouterr().err

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    again = tmp_path / "again"  # a new folder: the refused attempt's file is not replaced
    assert _submit(runs, again) == 0
    out = capsys.readouterr().out
    [call] = uploads  # the results file alone: leaderboard readers skip a model folder holding anything else
    assert call["repo_id"] == "org/results" and call["path_in_repo"].startswith("scripted/steady/results_")
    assert Path(call["path_or_fileobj"]).relative_to(again / "sub").as_posix() == call["path_in_repo"]
    assert f"{call['path_or_fileobj']} -> {call['path_in_repo']}" in out  # the plan named the file before asking


def test_yes_uploads_without_asking(runs, tmp_path, uploads, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert _submit(runs, tmp_path, "hub", "--yes") == 0
    assert len(uploads) == 1


def test_a_local_model_path_never_becomes_a_repository_path(runs, tmp_path, uploads, capsys) -> None:
    assert _submit(runs, tmp_path, "local", "--yes") == 2
    assert uploads == [] and "--model-name" in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()  # refused before anything was written
    assert _submit(runs, tmp_path, "local", "--yes", "--model-name", "../../etc") == 2
    assert _submit(runs, tmp_path, "local", "--yes", "--model-name", "me/fav") == 0
    [call] = uploads
    assert call["path_in_repo"].startswith("me/fav/results_")


def test_to_must_be_a_hub_repository(runs, tmp_path, uploads, capsys) -> None:
    target = tmp_path / "a" / "local" / "path"
    target.mkdir(parents=True)
    assert main(["submit", str(runs["hub"]), "--to", str(target), "--dry-run", "--out", str(tmp_path / "sub")]) == 2
    err = capsys.readouterr().err
    assert "not a Hub repository id" in err and err.count("\n") == 1
    assert uploads == [] and not (tmp_path / "sub").exists() and list(target.iterdir()) == []


def test_a_refused_or_failed_upload_leaves_no_file(runs, tmp_path, monkeypatch, capsys) -> None:
    """Without --out, the files of an upload live only as long as the upload: nothing stays behind."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert main(["submit", str(runs["hub"]), "--to", "org/results"]) == 2
    assert "not confirmed" in capsys.readouterr().err and list(tmp_path.iterdir()) == []

    def fail(self, **kwargs):
        raise OSError("connection reset")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", fail)
    assert main(["submit", str(runs["hub"]), "--to", "org/results", "--yes"]) == 2
    assert "connection reset" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_eval_results_open_a_pull_request_on_the_model_repository(runs, tmp_path, monkeypatch, capsys) -> None:
    from huggingface_hub import parse_eval_result_entries

    calls: list[dict] = []

    def record(self, **kwargs):  # the file is a temporary one: read it while it exists
        calls.append({**kwargs, "text": Path(kwargs["path_or_fileobj"]).read_text(encoding="utf-8")})

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", record)
    argv = ["submit", str(runs["local"]), "--model-name", "me/fav", "--eval-results-pr", "me/fav", "--yes"]
    assert main(argv) == 0
    [call] = calls
    assert (call["repo_id"], call["repo_type"], call["create_pr"], call["path_in_repo"]) == ("me/fav", "model", True, ".eval_results/mub.yaml")
    entries = parse_eval_result_entries(yaml.safe_load(call["text"]))
    assert {entry.dataset_id for entry in entries} == {"org/mub"} and {entry.task_id for entry in entries} == {"explicit"}
    assert all("lower is better" in entry.notes for entry in entries)
