"""``mub submit --to`` shows what it will upload and asks first; repository paths never hold a local path.

Issue 13: ``mub submit --to`` uploaded without asking, and put a local model
path (``../fav``) into the repository path. The Hub is replaced by a recorder.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import dist_helpers
import huggingface_hub
import pytest

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
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    folders = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(dist_helpers.BACKENDS, dist_helpers.SCRIPTED, "dist_helpers:scripted_backend")
        for name, model in (("hub", "someone/model-x"), ("local", "../fav")):
            folders[name] = root / name
            argv = ["run", "--model", model, "--backend", dist_helpers.SCRIPTED, "--limit", "4", "--out", str(folders[name]), "--no-progress"]
            assert main(argv) == 0
    return folders


def _submit(runs: dict[str, Path], tmp_path: Path, name: str = "hub", *extra: str) -> int:
    argv = ["submit", str(runs[name]), "--to", "org/results", "--dataset-id", "org/mub", "--out", str(tmp_path / "sub")]
    return main([*argv, *extra])


def test_without_a_terminal_nothing_is_uploaded(runs, tmp_path, uploads, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # a pipe: nobody to ask
    assert _submit(runs, tmp_path) == 2
    captured = capsys.readouterr()
    assert uploads == [] and "pass --yes" in captured.err and captured.err.count("\n") == 1
    assert "org/results" in captured.out and "-> someone/model-x/results_" in captured.out  # what would have gone


def test_the_upload_is_shown_then_asked_for(runs, tmp_path, uploads, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert _submit(runs, tmp_path) == 2
    assert uploads == [] and "not confirmed" in capsys.readouterr().err

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    again = tmp_path / "again"  # a new folder: the refused attempt's file is not replaced
    assert _submit(runs, again) == 0
    out = capsys.readouterr().out
    [call] = uploads  # the results file alone: leaderboard readers skip a model folder holding anything else
    assert call["repo_id"] == "org/results" and call["path_in_repo"].startswith("someone/model-x/results_")
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
