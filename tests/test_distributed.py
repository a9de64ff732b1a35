"""Data-parallel runs (torchrun, file-synchronised ranks), --shard and mub merge give single-process results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dist_helpers
import pytest

from mub.cli import main
from mub.config import RunConfig
from mub.runs.distributed import Launch, detect_launch, launch_id, placement_for
from mub.runs.merge import MergeError, merge_runs
from mub.testing.tiny_models import resolve_model_spec

HELPER = Path(dist_helpers.__file__)
REPO_ROOT = HELPER.parents[1]
ITEMS = 12
# A rank that waits longer than this for the others gives up (MUB_DIST_TIMEOUT);
# the test waits a little longer for the processes, then kills them.
RANK_WAIT_S = 120
TIMEOUT_S = RANK_WAIT_S + 60


@pytest.fixture(autouse=True)
def _scripted_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dist_helpers.BACKENDS, dist_helpers.SCRIPTED, "dist_helpers:scripted_backend")
    # This process is never part of a launch, whatever the environment running pytest says.
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def _run_args(out: Path, backend: str = dist_helpers.SCRIPTED, model: str = "scripted", *extra: str) -> list[str]:
    return [
        "run", "--model", model, "--backend", backend, "--dataset", "sample", "--limit", str(ITEMS),
        "--batch-size", "4", "--out", str(out), "--no-progress",
        "--protocol", "deterministic", *extra,  # greedy, 16 tokens: a random tiny model would write 256 per answer
    ]


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text(encoding="utf-8"))


def _comparable(results: dict) -> dict:
    return {key: value for key, value in results.items() if key != "merged_from"}


def _items(folder: Path) -> list[dict]:
    """Every item of a run folder (all predictions files), in id order, without timings."""
    records = [
        json.loads(line)
        for path in sorted(folder.glob("predictions*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    for record in records:
        for answer in record["stage1"] + record["stage2"]:
            answer.pop("seconds")
    return sorted(records, key=lambda record: record["id"])


def _assert_same_run(folder: Path, single_dir: Path) -> None:
    """Same items with the same raw outputs, parsed answers and outcomes, and the same results."""
    assert _items(folder) == _items(single_dir)
    assert _comparable(_results(folder)) == _results(single_dir)


def _single(tmp_path: Path, backend: str = dist_helpers.SCRIPTED, model: str = "scripted") -> dict:
    out = tmp_path / "single"
    assert main(_run_args(out, backend, model)) == 0
    return _results(out)


def _child_env(**extra: str) -> dict[str, str]:
    """The environment of a rank: it imports the tree under test (repo root first on its path), not an installed mub."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    path = [str(REPO_ROOT), str(HELPER.parent), env.get("PYTHONPATH")]
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, path)), MUB_DIST_TIMEOUT=str(RANK_WAIT_S))
    env.update(extra)
    return env


@contextmanager
def _processes(commands: list[tuple[list[str], dict[str, str]]]) -> Iterator[list[subprocess.Popen]]:
    """Start each command in its own process group; at exit, whatever happened, kill what still runs."""
    procs: list[subprocess.Popen] = []
    try:
        for command, env in commands:
            procs.append(
                subprocess.Popen(
                    command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
                )
            )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the group: torchrun's ranks too
            proc.communicate(timeout=10)


def _finish(procs: list[subprocess.Popen]) -> list[subprocess.CompletedProcess]:
    finished = []
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        finished.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return finished


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HELPER), *args]
    with _processes([(command, _child_env())]) as procs:
        return _finish(procs)[0]


def _file_synchronised(args: list[str], launch: str) -> list[subprocess.CompletedProcess]:
    """Two ranks without MASTER_ADDR/PORT: they meet through marker files."""
    commands = [
        ([sys.executable, str(HELPER), *args], _child_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MUB_LAUNCH_ID=launch))
        for rank in range(2)
    ]
    with _processes(commands) as procs:
        return _finish(procs)


def _record_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------- launch


def test_launch_is_read_from_the_launcher_environment() -> None:
    assert detect_launch({}) == Launch()
    assert detect_launch({"WORLD_SIZE": "1", "RANK": "0"}) == Launch()
    launch = detect_launch({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert launch == Launch(rank=3, world_size=4, local_rank=1)
    assert launch.predictions_file == "predictions.rank3-of-4.jsonl"
    assert Launch().predictions_file == "predictions.jsonl"
    assert launch.share(list(range(10))) == [3, 7]
    with pytest.raises(ValueError, match="RANK"):
        detect_launch({"WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="outside"):
        detect_launch({"WORLD_SIZE": "2", "RANK": "2"})


def test_launch_id_comes_from_mub_or_the_launcher() -> None:
    assert launch_id({}) is None
    assert launch_id({"TORCHELASTIC_RUN_ID": "none"}) is None  # torchrun's placeholder, shared by all launches
    assert launch_id({"TORCHELASTIC_RUN_ID": "abc"}) == "abc"
    assert launch_id({"SLURM_JOB_ID": "12", "SLURM_STEP_ID": "3"}) == "12-3"
    assert launch_id({"MUB_LAUNCH_ID": "my run/1", "SLURM_JOB_ID": "12"}) == "my_run_1"


def test_shard_and_launch_do_not_combine(tmp_path: Path) -> None:
    config = RunConfig(model="m", shard=(0, 2), out=str(tmp_path))
    with pytest.raises(ValueError, match="use one of them"):
        placement_for(config, {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"})


def test_file_synchronised_launch_needs_a_launch_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MUB_LAUNCH_ID"):
        placement_for(RunConfig(model="m", out=str(tmp_path)), {"WORLD_SIZE": "2", "RANK": "1"})


def test_shards_get_their_own_default_folders() -> None:
    assert RunConfig(model="org/m").out_dir() == Path("runs/org_m__explicit")
    assert RunConfig(model="org/m", shard=(1, 4)).out_dir() == Path("runs/org_m__explicit__shard1-of-4")


def test_ranks_import_the_tree_under_test() -> None:
    code = "import dist_helpers, mub; print(mub.__file__); print(dist_helpers.__file__)"
    with _processes([([sys.executable, "-c", code], _child_env())]) as procs:
        (done,) = _finish(procs)
    assert done.returncode == 0, done.stderr
    mub_file, helper_file = done.stdout.split()
    assert Path(mub_file).resolve() == (REPO_ROOT / "mub" / "__init__.py").resolve()
    assert Path(helper_file).resolve() == HELPER.resolve()


# ------------------------------------------------------ scripted backend


def test_file_synchronised_ranks_resume_and_refuse_together(tmp_path: Path) -> None:
    _single(tmp_path)
    single_dir = tmp_path / "single"
    out = tmp_path / "ranks"
    for proc in _file_synchronised(_run_args(out), launch="first"):
        assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(out, single_dir)

    # Kill-like damage to rank 1's share: two records lost, half a line left.
    rank1 = out / "predictions.rank1-of-2.jsonl"
    lines = rank1.read_text(encoding="utf-8").splitlines(keepends=True)
    rank1.write_text("".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2], encoding="utf-8")
    (out / "results.json").unlink()

    # Without --resume, rank 0 refuses and rank 1 stops with rank 0's reason.
    refused = _file_synchronised(_run_args(out), launch="second")
    assert [proc.returncode for proc in refused] == [2, 2]
    assert "--resume" in refused[0].stderr and "rank 0" in refused[1].stderr

    resumed = _file_synchronised(_run_args(out, dist_helpers.SCRIPTED, "scripted", "--resume"), launch="third")
    assert [proc.returncode for proc in resumed] == [0, 0], resumed[1].stderr[-3000:]
    _assert_same_run(out, single_dir)
    assert len(set(_record_ids(rank1))) == len(lines)


def test_shards_then_merge_equal_single_process(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _single(tmp_path)
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for index, folder in enumerate(shards):
        assert main(_run_args(folder, dist_helpers.SCRIPTED, "scripted", "--shard", f"{index}/2")) == 0
        assert json.loads((folder / "run.json").read_text())["shard"] == [index, 2]
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, shards), "--out", str(merged)]) == 0
    results = _results(merged)
    _assert_same_run(merged, tmp_path / "single")
    assert results["merged_from"] == [str(p.resolve()) for p in shards]
    assert _record_ids(merged / "predictions.jsonl") == _record_ids(tmp_path / "single" / "predictions.jsonl")
    assert "mr_t2f" in capsys.readouterr().out  # the table is printed


def test_merge_refuses_folders_that_are_not_one_run(tmp_path: Path) -> None:
    def shard(name: str, index: int, count: int = 2, *extra: str) -> Path:
        folder = tmp_path / name
        assert main(_run_args(folder, dist_helpers.SCRIPTED, "scripted", "--shard", f"{index}/{count}", *extra)) == 0
        return folder

    zero, one = shard("s0", 0), shard("s1", 1)
    other_hint = shard("s1-hint", 1, 2, "--hint-template", "Surely it is {answer}.")
    zero_again = tmp_path / "s0-copy"
    assert main(_run_args(zero_again, dist_helpers.SCRIPTED, "scripted", "--shard", "0/2")) == 0
    out = str(tmp_path / "merged")

    with pytest.raises(MergeError, match="hint_template"):
        merge_runs([zero, other_hint], out)
    with pytest.raises(MergeError, match="in both"):
        merge_runs([zero, one, zero_again], out)
    with pytest.raises(MergeError, match=r"none of the folders .* shards given: 0/2"):
        merge_runs([zero], out)
    with pytest.raises(MergeError, match="more than once"):
        merge_runs([zero, one, zero], out)
    with pytest.raises(MergeError, match="not a run folder"):
        merge_runs([zero, tmp_path], out)
    with pytest.raises(MergeError, match="is one of the folders"):
        merge_runs([zero, one], zero)

    # A shard killed before the end: its missing items are named, with the cure.
    predictions = one / "predictions.jsonl"
    lines = predictions.read_text(encoding="utf-8").splitlines(keepends=True)
    predictions.write_text("".join(lines[:-1]), encoding="utf-8")
    with pytest.raises(MergeError, match=r"shard 1/2\) lacks 1 of its 6 draws .*--resume"):
        merge_runs([zero, one], out)
    assert main(_run_args(one, dist_helpers.SCRIPTED, "scripted", "--shard", "1/2", "--resume")) == 0
    merge_runs([zero, one], out, progress=False)
    with pytest.raises(MergeError, match="--overwrite"):
        merge_runs([zero, one], out)
    assert main(["merge", str(zero), str(one), "--out", out, "--overwrite", "--no-progress"]) == 0


def test_merge_reports_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["merge", str(tmp_path / "nowhere")]) == 2
    assert "mub merge: error:" in capsys.readouterr().err


# ------------------------------------------ torchrun with the tiny transformers model


@pytest.fixture(scope="module")
def tiny_single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A single-process run of the tiny Llava, which answers (a plumbing check: its answers mean nothing)."""
    resolve_model_spec("tiny:llava")  # build it once here, not concurrently in every rank
    out = tmp_path_factory.mktemp("tiny") / "single"
    assert main(_run_args(out, "transformers", "tiny:llava")) == 0
    figures = _results(out)["results"]["explicit"]
    # Equality below is only worth something if there are answers and flips to get wrong.
    assert figures["n"] - figures["unparsed_before"] > 0 and figures["t2f"] + figures["f2t"] > 0
    return out, _results(out)


def test_torchrun_two_ranks_equal_single_process(tmp_path: Path, tiny_single: tuple[Path, dict]) -> None:
    single_dir, _ = tiny_single
    out = tmp_path / "torchrun"
    done = _torchrun(_run_args(out, "transformers", "tiny:llava"))
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_run(out, single_dir)
    rank_files = sorted(p.name for p in out.glob("predictions*.jsonl"))
    assert rank_files == ["predictions.rank0-of-2.jsonl", "predictions.rank1-of-2.jsonl"]
    single_ids = _record_ids(single_dir / "predictions.jsonl")
    assert _record_ids(out / rank_files[0]) == single_ids[0::2]
    assert _record_ids(out / rank_files[1]) == single_ids[1::2]
    assert json.loads((out / "run.json").read_text())["shard"] is None


def test_tiny_shards_resumed_then_merged_equal_single_process(tmp_path: Path, tiny_single: tuple[Path, dict]) -> None:
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for index, folder in enumerate(shards):
        assert main(_run_args(folder, "transformers", "tiny:llava", "--shard", f"{index}/2")) == 0
    # Kill-like damage to shard 1: two records lost, half a line left; --resume redoes them.
    predictions = shards[1] / "predictions.jsonl"
    lines = predictions.read_text(encoding="utf-8").splitlines(keepends=True)
    predictions.write_text("".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2], encoding="utf-8")
    assert main(_run_args(shards[1], "transformers", "tiny:llava", "--shard", "1/2", "--resume")) == 0
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "merged"), "--no-progress"]) == 0
    _assert_same_run(tmp_path / "merged", tiny_single[0])


def test_ranks_split_items_with_all_their_draws_and_equal_single_process(tmp_path: Path, release_dir: Path) -> None:
    """Under the paper preset every item is drawn once per release copy; ranks take whole items."""
    args = ["run", "--model", "scripted", "--backend", dist_helpers.SCRIPTED, "--dataset", str(release_dir),
            "--limit", "6", "--batch-size", "2", "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    for proc in _file_synchronised([*args, "--out", str(tmp_path / "ranks")], launch="draws"):
        assert proc.returncode == 0, proc.stderr[-3000:]
    main_file = json.loads((release_dir / "all_combined_items.jsonl").read_text(encoding="utf-8"))
    single = _items(tmp_path / "single")
    ids = {record["id"] for record in single}
    copies = {item: sum(1 for r in main_file if _release_id(r) == item) for item in ids}
    assert len(ids) == 6 and len(single) == sum(copies.values()) > 6
    by_rank = [
        {json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()}
        for path in sorted((tmp_path / "ranks").glob("predictions.rank*.jsonl"))
    ]
    assert len(by_rank) == 2 and not by_rank[0] & by_rank[1]  # an item's draws are all in one rank's file
    key = lambda record: (record["id"], record["draw"])  # noqa: E731
    assert sorted(_items(tmp_path / "ranks"), key=key) == sorted(single, key=key)
    assert _results(tmp_path / "ranks")["results"] == _results(tmp_path / "single")["results"]


def _release_id(record: dict) -> str:
    import hashlib

    return "mub-" + hashlib.sha256(f"{record['new_id']}\0{record['question']}".encode("utf-8")).hexdigest()[:16]
