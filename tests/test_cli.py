"""The `mub` command's own behaviour: fast start-up, flags that map onto the Python API."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

from mub.config import RunConfig


def test_building_the_parser_imports_no_heavy_library():
    code = "import sys, mub.cli; mub.cli.make_parser(); print(sorted({'datasets', 'torch', 'transformers'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_run_config_field_is_a_run_flag_or_set_by_the_command():
    from mub.cli import make_parser

    args = make_parser().parse_args(["run", "--model", "m"])
    set_by_command = {"backend_options", "progress"}
    assert {field.name for field in fields(RunConfig)} - set(vars(args)) == set_by_command


def _run_cli(capsys, *argv: str) -> tuple[int, str]:
    from mub.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


def test_a_dataset_that_cannot_be_loaded_is_a_clear_error(capsys, tmp_path):
    code, err = _run_cli(capsys, "run", "--model", "tiny:llava", "--dataset", str(tmp_path / "missing"), "--no-progress")
    assert code == 2 and "no such folder" in err and "Traceback" not in err
    code, err = _run_cli(capsys, "run", "--model", "tiny:llava", "--dataset", "some-org/not-here", "--no-progress")
    assert code == 2 and "dataset some-org/not-here: cannot load" in err and "this machine is offline" in err
    assert "local dataset folder" in err


def test_a_model_that_cannot_be_loaded_is_a_clear_error_and_blocks_no_later_run(capsys, tmp_path):
    out = tmp_path / "run"
    args = ("run", "--dataset", "sample", "--limit", "2", "--out", str(out), "--no-progress")
    (tmp_path / "no-model").mkdir()  # a folder that holds no model (a missing one is "no such folder")
    code, err = _run_cli(capsys, *args, "--model", str(tmp_path / "no-model"))
    assert code == 2 and f"--model {tmp_path / 'no-model'}: cannot load it" in err and "Traceback" not in err
    assert not list(out.glob("predictions*.jsonl"))
    # The failed start wrote no predictions, so the next run needs neither --resume nor --overwrite.
    code, _ = _run_cli(capsys, *args, "--model", "tiny:llava")
    assert code == 0 and (out / "results.json").is_file()
