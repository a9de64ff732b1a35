"""Every failure a user can fix is one line with the fix (exit 2); a run with failed items exits 3.

Each case goes through the CLI (``main([...])``), as a user meets it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from fault_server import FaultServer

from mub.cli import main
from mub.errors import EXIT_ITEM_ERRORS, EXIT_USER_ERROR

RUN = ("run", "--model", "tiny:llava", "--max-new-tokens", "1")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == EXIT_USER_ERROR, err
    assert "Traceback" not in err and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main([*RUN, "--limit", "2", "--out", str(out), "--quiet"]) == 0
    return out


# ----------------------------------------------------------------- files and folders


@pytest.mark.parametrize("where", ["/proc/mub-run", "under-a-file/run"])
def test_an_unusable_out_folder_is_one_line(capsys, tmp_path, where):
    (tmp_path / "under-a-file").write_text("a file")
    out = where if where.startswith("/") else str(tmp_path / where)
    code, _, err = _cli(capsys, *RUN, "--limit", "1", "--out", out, "--no-progress")
    _one_line_error(code, err, f"--out {out}: cannot write the run folder there", "choose a writable folder")


GARBLED = {
    "not JSON": ("{model: ", "is not valid JSON"),
    "a list": ("[]", "holds a JSON list, not an object"),
    "a wrong field": ('{"model": 1, "dataset": {}, "run": {}, "results": {}}', "field 'model' is a int, not a str"),
    "nested 100k deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
}


@pytest.mark.parametrize("case", GARBLED)
def test_a_garbled_results_file_is_named(capsys, tmp_path, finished_run, case):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    text, message = GARBLED[case]
    (run / "results.json").write_text(text)
    for command in (("report", str(run), "--out", str(tmp_path / "report")), ("submit", str(run), "--out", str(tmp_path / "s.json"))):
        code, _, err = _cli(capsys, *command)
        _one_line_error(code, err, f"{run / 'results.json'}", message, "--resume")


@pytest.mark.parametrize("case", ["not JSON", "a list", "nested 100k deep"])
def test_a_garbled_settings_file_is_named(capsys, tmp_path, finished_run, case):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    text, message = GARBLED[case]
    (run / "run.json").write_text(text)
    code, _, err = _cli(capsys, *RUN, "--limit", "2", "--out", str(run), "--resume", "--quiet")
    _one_line_error(code, err, f"{run / 'run.json'}", message, "--overwrite")


def test_a_nul_byte_in_a_path_names_the_flag(capsys, tmp_path):
    code, _, err = _cli(capsys, *RUN, "--out", str(tmp_path / "a\0b"))
    _one_line_error(code, err, "--out holds a NUL byte")


def test_a_nul_byte_in_a_release_image_path_names_the_item(capsys, tmp_path, release_dir):
    release = tmp_path / "release"
    shutil.copytree(release_dir, release)
    main_file = release / "all_combined_items.jsonl"
    records = json.loads(main_file.read_text(encoding="utf-8"))
    records[0]["new_id"] = "extract_img_all/a\0b.jpg"
    main_file.write_text(json.dumps(records), encoding="utf-8")
    code, _, err = _cli(capsys, *RUN, "--dataset", str(release), "--out", str(tmp_path / "run"), "--quiet")
    _one_line_error(code, err, "all_combined_items.jsonl: item new_id=", "holds a NUL byte")


def test_a_decompression_bomb_image_names_the_item(capsys, tmp_path, release_dir, monkeypatch):
    from PIL import Image

    # The placeholder images are 16x16: with this bound they count as bombs (more than twice the bound).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    release = tmp_path / "release"
    shutil.copytree(release_dir, release)
    code, _, err = _cli(capsys, *RUN, "--dataset", str(release), "--out", str(tmp_path / "run"), "--quiet")
    _one_line_error(code, err, "item new_id=", "too large to decode safely", "replace the file")


# ----------------------------------------------------------------- environment


def test_cuda_on_a_cpu_build_of_torch_is_one_line(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = _cli(capsys, *RUN, "--limit", "1", "--device", "cuda", "--out", str(tmp_path / "run"), "--quiet")
    _one_line_error(code, err, "--device cuda:", "use --device cpu")


def test_the_openai_backend_without_httpx_names_the_extra(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "httpx", None)  # `import httpx` now raises ImportError
    code, _, err = _cli(capsys, "run", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                        "--limit", "1", "--out", str(tmp_path / "run"), "--quiet")  # fmt: skip
    _one_line_error(code, err, 'needs httpx: pip install -e ".[api]" in the mub clone, or pip install "httpx>=0.27"')


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="--limit must be at least 1"):
        main([*RUN, "--limit", "0", "--debug"])
    with pytest.raises(ValueError, match="--limit must be at least 1"):
        main(["--debug", *RUN, "--limit", "0"])


# ----------------------------------------------------------------- selections and exit codes


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--limit", "0"), "--limit must be at least 1"),
        (("--limit", "-1"), "--limit must be at least 1 (the first N items), got -1"),
        (("--misled-count", "3"), "match --misled-count 3 (counts present: 6, 7, 8, 9, 10, 11, 12)"),
        (("--shard", "170/300"), "match --shard 170/300 (more shards than items)"),
    ],
)
def test_a_selection_without_items_is_an_error_naming_the_filter(capsys, tmp_path, flags, message):
    code, _, err = _cli(capsys, *RUN, *flags, "--out", str(tmp_path / "run"), "--quiet")
    _one_line_error(code, err, message)


def test_failed_items_exit_3_with_the_count_and_the_resume_command(capsys, tmp_path):
    out = tmp_path / "run"
    with FaultServer() as server:
        server.add("status", status=400, body="bad request", match="", times=None)
        argv = ["run", "--backend", "openai", "--base-url", server.base_url, "--model", "m", "--limit", "3",
                "--out", str(out), "--no-progress"]  # fmt: skip
        code, printed, err = _cli(capsys, *argv)
    assert code == EXIT_ITEM_ERRORS
    assert f"3 of 3 draws failed (errors in {out / 'predictions.jsonl'}); ask for them again with: " in err
    assert err.rstrip().endswith(shlex.join(["mub", *argv, "--resume"]))
    row = next(line.split() for line in printed.splitlines() if line.startswith("explicit   all"))
    assert row[2:5] == ["0", "-", "3"]  # n 0, unparsed -, errors 3: visible in the table, not only in results.json


# ----------------------------------------------------------------- end of run


def test_the_end_of_a_run_says_where_the_results_are_and_what_comes_next(capsys, tmp_path):
    out = tmp_path / "run"
    code, printed, err = _cli(capsys, *RUN, "--limit", "3", "--out", str(out), "--no-progress")
    assert code == 0
    results = json.loads((out / "results.json").read_text())["results"]["explicit"]
    assert f"results: {out / 'results.json'}" in printed
    assert f"mub report {out}" in printed
    # A tiny model's --limit run cannot rank: the end of the run does not suggest submitting it (issue 24)
    assert "mub submit" not in printed and "not for the leaderboard: the model tiny:llava is a random" in printed
    header = next(line for line in printed.splitlines() if line.startswith("config"))
    assert header.split()[2:5] == ["n", "unparsed", "errors"]
    for level, figures in [("all", results), *results.get("by_difficulty", {}).items()]:
        row = next(line.split() for line in printed.splitlines() if line.startswith(f"explicit   {level} "))
        assert row[2:5] == [str(figures["n"]), f"{figures['unparsed_before']}/{figures['unparsed_after']}", "0"]
    assert "mub explicit" not in err  # --no-progress: no bar


def test_quiet_prints_neither_bars_nor_table(capsys, tmp_path):
    code, printed, err = _cli(capsys, *RUN, "--limit", "2", "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0 and printed == "" and "mub explicit" not in err


def test_without_flags_the_bars_and_the_table_show(capsys, tmp_path):
    code, printed, err = _cli(capsys, *RUN, "--limit", "2", "--out", str(tmp_path / "run"))
    assert code == 0 and "mr_t2f" in printed and "mub explicit" in err


# ----------------------------------------------------------------- configs


def test_a_config_the_dataset_lacks_lists_the_ones_it_has(capsys, tmp_path):
    code, _, err = _cli(capsys, *RUN, "--config", "mmmu", "--out", str(tmp_path / "run"), "--quiet")
    _one_line_error(code, err, "has no items for config 'mmmu'; the configs it has: explicit, implicit, synthetic_")
    assert "Instruction" not in err


def test_a_release_without_notes_says_so_for_the_implicit_config(capsys, tmp_path, release_dir):
    release = tmp_path / "release"
    shutil.copytree(release_dir, release)
    shutil.rmtree(release / "implicit")
    code, _, err = _cli(capsys, *RUN, "--config", "implicit", "--dataset", str(release), "--out", str(tmp_path / "r"), "--quiet")
    _one_line_error(code, err, "config 'implicit' is empty: the release has no implicit notes", "mub notes")


def test_an_empty_release_says_so(capsys, tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    (release / "all_combined_items.jsonl").write_text("[]")
    code, _, err = _cli(capsys, *RUN, "--dataset", str(release), "--out", str(tmp_path / "run"), "--quiet")
    _one_line_error(code, err, "the release holds no items")


# ----------------------------------------------------------------- offline


def test_a_hub_model_fails_at_once_when_offline(capsys, tmp_path):
    # conftest sets HF_HUB_OFFLINE=1
    code, _, err = _cli(capsys, "run", "--model", "some-org/some-vlm", "--limit", "1", "--out", str(tmp_path / "r"), "--quiet")
    _one_line_error(code, err, "--model some-org/some-vlm: this machine is offline (HF_HUB_OFFLINE=1 is set)",
                    "give a local model folder", "Hugging Face cache")  # fmt: skip


@pytest.fixture
def unreachable_hub(monkeypatch):
    """No offline variable, and a Hub endpoint on a loopback port where nothing listens."""
    import socket

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    return f"http://127.0.0.1:{port}"


def test_a_hub_model_or_dataset_fails_at_once_when_the_hub_cannot_be_reached(capsys, tmp_path, unreachable_hub):
    code, _, err = _cli(capsys, "run", "--model", "some-org/some-vlm", "--limit", "1", "--out", str(tmp_path / "r"), "--quiet")
    _one_line_error(code, err, f"this machine is offline ({unreachable_hub} cannot be reached", "local model folder")
    code, _, err = _cli(capsys, *RUN, "--dataset", "some-org/some-dataset", "--out", str(tmp_path / "r"), "--quiet")
    _one_line_error(code, err, "dataset some-org/some-dataset: this machine is offline", "local dataset folder")


def test_notes_with_failed_items_exit_3_with_the_resume_command(capsys, tmp_path):
    with FaultServer() as server:
        server.add("status", status=400, body="bad request", times=None)
        argv = ["notes", "--dataset", "sample", "--backend", "openai", "--base-url", server.base_url, "--model", "m",
                "--k", "1", "--limit", "2", "--max-retries", "0", "--out", str(tmp_path / "notes"), "--no-progress"]  # fmt: skip
        code, _, err = _cli(capsys, *argv)
    assert code == EXIT_ITEM_ERRORS
    assert f"2 of 2 items failed; ask for them again with: {shlex.join(['mub', *argv, '--resume'])}" in err


def test_ctrl_c_in_another_resumable_command_prints_its_resume_command(capsys, tmp_path, monkeypatch):
    import mub.extend.notes

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(mub.extend.notes, "generate_notes", interrupted)
    argv = ["notes", "--dataset", "sample", "--model", "tiny:llava", "--out", str(tmp_path / "notes"), "--overwrite"]
    code, _, err = _cli(capsys, *argv)
    assert code == 130 and "Traceback" not in err
    assert err.strip() == f"mub notes: interrupted; continue with: {shlex.join(['mub', *argv[:-1], '--resume'])}"


def test_merging_shards_with_failed_items_exits_3_and_says_to_finish_the_shards(capsys, tmp_path):
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    with FaultServer() as server:
        server.add("status", status=400, body="bad request", times=None)
        for index, folder in enumerate(shards):
            code, _, _ = _cli(capsys, "run", "--backend", "openai", "--base-url", server.base_url, "--model", "m",
                              "--limit", "4", "--shard", f"{index}/2", "--out", str(folder), "--quiet")  # fmt: skip
            assert code == EXIT_ITEM_ERRORS
    code, printed, err = _cli(capsys, "merge", *map(str, shards), "--out", str(tmp_path / "merged"))
    assert code == EXIT_ITEM_ERRORS
    assert "4 of 4 draws failed" in err and "--shard I/N` command with --resume), then merge again" in err
    assert f"mub report {tmp_path / 'merged'}" in printed


def test_a_garbled_predictions_line_is_named(capsys, tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    lines = (run / "predictions.jsonl").read_text().splitlines()
    for garbled in ("[" * 100_000 + "]" * 100_000, '["a list"]'):
        (run / "predictions.jsonl").write_text("\n".join([garbled, *lines]) + "\n")
        code, _, err = _cli(capsys, *RUN, "--limit", "2", "--out", str(run), "--resume", "--quiet")
        _one_line_error(code, err, f"{run / 'predictions.jsonl'}: line 1 is not a prediction record")


def test_a_release_record_nested_100k_deep_is_named(capsys, tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    (release / "all_combined_items.jsonl").write_text("[" + "[" * 100_000 + "]" * 100_000 + "]")
    code, _, err = _cli(capsys, *RUN, "--dataset", str(release), "--out", str(tmp_path / "run"), "--quiet")
    _one_line_error(code, err, f"{release / 'all_combined_items.jsonl'}: record 1 is nested too deeply")
