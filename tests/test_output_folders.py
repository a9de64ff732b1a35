"""Output folders are never lost: a command writes only into a new, empty or its own folder; one writer per run.

Issue 13: ``mub build --out X`` deleted X whatever X was (the ``mub/`` package
source, a folder holding a user's ``notes.txt``); two ``mub run`` on one folder
interleaved their predictions; results were created 0600 and exports 0700.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import dist_helpers
import pytest

from mub.cli import main
from mub_dataset.files import folder_marker

ITEMS = 4
HELPER_DIR = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _scripted_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dist_helpers.BACKENDS, dist_helpers.SCRIPTED, "dist_helpers:scripted_backend")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def _run_args(out: Path, *extra: str) -> list[str]:
    return [
        "run", "--model", "scripted", "--backend", dist_helpers.SCRIPTED, "--dataset", "sample",
        "--limit", str(ITEMS), "--batch-size", "2", "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def users_folder(path: Path) -> Path:
    """A folder that mub did not make: a user's notes and a small source tree."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes, not a mub output\n")
    (path / "pkg").mkdir()
    (path / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    return path


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(dist_helpers.BACKENDS, dist_helpers.SCRIPTED, "dist_helpers:scripted_backend")
        folders = {name: root / name for name in ("whole", "shard0", "shard1")}
        assert main(_run_args(folders["whole"])) == 0
        for index in (0, 1):
            assert main(_run_args(folders[f"shard{index}"], "--shard", f"{index}/2")) == 0
    return folders


def _argv(command: str, out: Path, runs: dict[str, Path]) -> list[str]:
    return {
        "build": ["build", "--out", str(out)],
        "run": _run_args(out),
        "merge": ["merge", str(runs["shard0"]), str(runs["shard1"]), "--out", str(out), "--no-progress"],
        "report": ["report", str(runs["whole"]), "--out", str(out), "--bootstrap", "10"],
        "import": ["import", "--from-dataset", str(out.parent / "absent"), "--column", "question=q", "--column",
                   "image=i", "--column", "answer=a", "--misled-count", "6", "--out", str(out)],  # fmt: skip
        "notes": ["notes", "--dataset", "sample", "--limit", "2", "--backend", "openai", "--base-url",
                  "http://127.0.0.1:9/v1", "--model", "m", "--out", str(out), "--no-progress"],  # fmt: skip
        "sft-data": ["sft-data", "--out", str(out), "--size", "4"],
    }[command]


COMMANDS = ["build", "run", "merge", "report", "import", "notes", "sft-data"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_mub_did_not_make_is_never_touched_even_with_overwrite(
    command: str, tmp_path: Path, finished_runs: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    out = users_folder(tmp_path / "mine")
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        capsys.readouterr()
        assert main(_argv(command, out, finished_runs) + extra) == 2
        captured = capsys.readouterr()
        assert snapshot(out) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left beside it
        error = captured.err.strip()
        assert error.count("\n") == 0 and "did not write" in error and "notes.txt" in error, captured.err


def test_build_replaces_only_its_own_folder_and_only_with_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "export"
    assert main(["build", "--out", str(out)]) == 0
    assert folder_marker(out) == "build"
    first = snapshot(out)
    capsys.readouterr()
    assert main(["build", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and snapshot(out) == first
    (out / "stale.txt").write_text("left by an earlier build\n")
    assert main(["build", "--out", str(out), "--overwrite"]) == 0
    assert snapshot(out) == first  # replaced whole: the stale file is gone, the export the same
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_folder_made_by_another_command_is_refused(tmp_path: Path, finished_runs, capsys) -> None:
    out = tmp_path / "export"
    assert main(["build", "--out", str(out)]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(_argv("sft-data", out, finished_runs) + ["--overwrite"]) == 2
    assert "written by `mub build`" in capsys.readouterr().err and snapshot(out) == before


def test_an_empty_folder_is_used(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert main(_run_args(out)) == 0
    assert folder_marker(out) == "run" and (out / "results.json").is_file()


def test_submit_never_replaces_a_file_it_did_not_write(tmp_path: Path, rankable_runs, capsys) -> None:
    theirs = tmp_path / "notes.json"
    theirs.write_text('{"mine": true}\n')
    assert main(["submit", str(rankable_runs["steady_explicit"]), "--out", str(theirs)]) == 2  # a file, not the results folder
    assert theirs.read_text() == '{"mine": true}\n'
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "README.md").write_text("my results repository\n")
    assert main(["submit", str(rankable_runs["steady_explicit"]), "--out", str(folder)]) == 0
    assert (folder / "README.md").read_text() == "my results repository\n"
    from mub.report.submit import build_submission, write_submission

    submission = build_submission([rankable_runs["steady_explicit"]], now=datetime(2026, 1, 1, tzinfo=timezone.utc))
    path = write_submission(submission, folder)
    path.write_text("edited by hand\n")
    with pytest.raises(ValueError, match="already exists"):
        write_submission(submission, folder)
    assert path.read_text() == "edited by hand\n"
    capsys.readouterr()


# ---------------------------------------------------------------- permissions


def test_results_and_exports_get_the_usual_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        run_dir, export = tmp_path / "run", tmp_path / "export"
        assert main(_run_args(run_dir)) == 0
        assert main(["build", "--out", str(export)]) == 0
    finally:
        os.umask(previous)
    for path in (run_dir / "results.json", run_dir / "run.json", export / "README.md"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    for path in (export, export / "explicit"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path


# ---------------------------------------------------------------- one writer per run

# A mub run in another process whose backend blocks until a file appears (bounded wait).
BLOCKING_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mub.config import RunConfig
    from mub.runs.runner import run
    from mub.testing.scripted import ScriptedBackend

    out, gate = Path(sys.argv[1]), Path(sys.argv[2])

    def answer(request):
        print("generating", flush=True)
        deadline = time.monotonic() + 60
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return request.options[0]

    run(RunConfig(model="model-A", dataset="sample", limit=4, batch_size=2, out=str(out), progress=False,
                  resume="--resume" in sys.argv), backend=ScriptedBackend(answer, name="model-A"))
    print("done", flush=True)
    """
)


def _start_blocking_run(out: Path, gate: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HELPER_DIR), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKING_RUN, str(out), str(gate), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "generating", proc.stderr.read()  # it holds the folder now
    return proc


def test_a_second_writer_is_refused_and_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, gate = tmp_path / "run", tmp_path / "gate"
    first = _start_blocking_run(out, gate)
    try:
        for extra in (["--resume"], [], ["--overwrite"]):
            capsys.readouterr()
            assert main(_run_args(out, *extra)) == 2
            error = capsys.readouterr().err
            assert f"pid {first.pid}" in error and socket.gethostname() in error and "started 20" in error, error
            assert not list(out.glob("results.json"))
    finally:
        gate.touch()
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    # Only model A's answers are in the folder, and its results are model A's.
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == ITEMS
    assert json.loads((out / "results.json").read_text())["model"] == "model-A"
    assert main(_run_args(out, "--overwrite")) == 0  # the lock died with the process that held it


def test_a_killed_holder_never_blocks_resume(tmp_path: Path) -> None:
    out, gate = tmp_path / "run", tmp_path / "gate"
    holder = _start_blocking_run(out, gate)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=60)
    assert (out / ".mub-lock").read_text().startswith(f'{{"pid": {holder.pid}')  # the file stays; the OS lock went
    gate.touch()
    resumed = _start_blocking_run(out, gate, "--resume")
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    ids = {json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()}
    assert len(ids) == ITEMS and (out / "results.json").is_file()


def _two_ranks(args: list[str], launch: str) -> list[subprocess.CompletedProcess]:
    """A two-process launch whose ranks meet through marker files (as in test_distributed)."""
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPER_DIR), base.get("PYTHONPATH")]))
    procs = [
        subprocess.Popen(
            [sys.executable, str(HELPER_DIR / "dist_helpers.py"), *args],
            env={**base, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MUB_LAUNCH_ID": launch},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for rank in range(2)
    ]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    return [subprocess.CompletedProcess(proc.args, proc.returncode, *output) for proc, output in zip(procs, outputs)]


def test_one_lock_per_launch_not_per_rank(tmp_path: Path) -> None:
    out, gate = tmp_path / "run", tmp_path / "gate"
    launched = _two_ranks(_run_args(out), launch="first")  # the ranks share the folder: rank 0 alone locks it
    assert [proc.returncode for proc in launched] == [0, 0], launched[1].stderr[-2000:]

    holder = _start_blocking_run(tmp_path / "busy", gate)
    try:
        refused = _two_ranks(_run_args(tmp_path / "busy", "--resume"), launch="second")
    finally:
        gate.touch()
        holder.communicate(timeout=120)
    assert [proc.returncode for proc in refused] == [2, 2]
    assert f"pid {holder.pid}" in refused[0].stderr, refused[0].stderr
    assert "rank 0" in refused[1].stderr and f"pid {holder.pid}" in refused[1].stderr
