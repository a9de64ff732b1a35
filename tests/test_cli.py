"""The `mub` command's own behaviour: fast start-up, flags that map onto the Python API."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from dataclasses import fields

import pytest

from mub.config import RunConfig


def test_building_the_parser_imports_no_heavy_library():
    code = "import sys, mub.cli; mub.cli.make_parser(); print(sorted({'datasets', 'torch', 'transformers'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# A stage-1 run on a tiny model, counting the full collections from the command's start; MAIN is the call.
FULL_COLLECTIONS = """
import gc, sys
full = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2 and full.append(1))
import mub.cli
full.clear()
sys.argv = ["mub", "run", "--model", "tiny:llava", "--stages", "1", "--limit", "2", "--out", sys.argv[1], "--quiet"]
try:
    MAIN
finally:
    print("full collections:", len(full))
"""


@pytest.mark.skipif(
    sys.version_info >= (3, 14) or bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    reason="Python 3.14's incremental collector and free-threaded builds have no third threshold",
)
def test_the_command_skips_the_full_collections_of_its_start_up(tmp_path):
    """Python's default thresholds scan the whole start-up (torch, transformers, the weights) several times over
    (7 full collections on Python 3.11); the ``mub`` command's own process (console_main) waits for ten times as
    many generation-1 collections, so its start-up makes at most one."""

    def full_collections(call: str, out: str) -> int:
        code = FULL_COLLECTIONS.replace("MAIN", call)
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / out)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.rsplit("full collections:", 1)[1])

    at_defaults = full_collections("sys.exit(mub.cli.main())", "library")  # main(): the caller's settings
    assert at_defaults >= 3  # else this start-up is too small to tell the two apart
    assert full_collections("mub.cli.console_main()", "command") <= 1


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


# ---------------------------------------------------------------- defaults that move a number

# README's documented defaults, written out (not read from mub): a changed default changes published figures,
# so it must be a deliberate change of this table too.
RUN_DEFAULTS = {"protocol": "paper", "notes": 5, "batch_size": 8, "dialogue": "single", "cue": None}
PAPER_HINT = "And the true answer is : {answer}"
PAPER_NOTE = " Please pay attention to this instruction: {note}"


def test_run_flag_defaults_are_the_documented_ones():
    from mub.cli import make_parser

    args = make_parser().parse_args(["run", "--model", "m"])
    assert {name: getattr(args, name) for name in RUN_DEFAULTS} == RUN_DEFAULTS
    # the Python API has the same defaults as the command
    config = RunConfig(model="m")
    assert {name: getattr(config, name) for name in RUN_DEFAULTS} == RUN_DEFAULTS


def test_run_help_states_the_defaults(capsys):
    from mub.cli import main

    try:
        main(["run", "--help"])
    except SystemExit as exit:
        assert exit.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default paper)" in text
    assert "notes tried per item (default 5)" in text
    assert "(default: hint for explicit configs, note for implicit)" in text
    assert "single: stage 2 is a fresh request with the cue in the prompt (the paper's)" in text


def _records(out) -> list[dict]:
    import json

    return [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def test_a_run_with_no_options_records_the_defaults(capsys, tmp_path):
    import json

    from mub_dataset.loading import load

    out = tmp_path / "explicit"
    assert _run_cli(capsys, "run", "--model", "tiny:llava", "--limit", "2", "--out", str(out), "--no-progress")[0] == 0
    settings = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert settings["protocol"] == {"preset": "paper", "overrides": {}, "api_request": "open"}
    assert settings["cue"] == {"name": "hint", "template": PAPER_HINT}
    assert (settings["dialogue"], settings["notes"]) == ("single", 5)
    # the paper preset's explicit decoding as run.py ran it: 256 tokens, top-k 80, top-p 0.9, sampling at the model's
    # own temperature (the 0.4 never reached the model): 1.0, as tiny:llava's generation_config names none
    decoding = settings["decoding"]
    assert (decoding["max_new_tokens"], decoding["temperature"], decoding["top_p"], decoding["top_k"]) == (256, 1.0, 0.9, 80)
    assert decoding["do_sample"] is True
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["run"]["batch_size"] == 8
    for record in _records(out):  # one fresh stage-2 request naming an option with the release's hint
        assert [answer["cue"] for answer in record["stage2"]] == [PAPER_HINT.format(answer=record["stage2"][0]["hinted"])]

    out = tmp_path / "implicit"
    argv = ("run", "--model", "tiny:llava", "--config", "implicit", "--limit", "2", "--out", str(out), "--no-progress")
    assert _run_cli(capsys, *argv)[0] == 0
    settings = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert settings["cue"] == {"name": "note", "template": PAPER_NOTE}
    assert (settings["protocol"]["preset"], settings["notes"]) == ("paper", 5)
    rows = {row["id"]: row for row in load("implicit", "sample").remove_columns("image").to_list()}
    for record in _records(out):
        row = rows[record["id"]]
        right = record["stage1"][0]["parsed"] == record["answer"]
        notes = (row["misleading_notes"] if right else row["guiding_notes"])[:5]  # every note, up to 5, is asked
        assert len(row["misleading_notes"] if right else row["guiding_notes"]) > 0
        assert [a["cue"] for a in record["stage2"]] == [PAPER_NOTE.format(note=note).strip() for note in notes]
