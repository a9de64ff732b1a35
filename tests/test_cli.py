"""The `mub` command's own behaviour: fast start-up, flags that map onto the Python API."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

from mub.runner import RunConfig


def test_building_the_parser_imports_no_heavy_library():
    code = "import sys, mub.cli; mub.cli.make_parser(); print(sorted({'datasets', 'torch', 'transformers'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_run_config_field_is_a_run_flag_or_set_by_the_command():
    from mub.cli import make_parser

    args = make_parser().parse_args(["run", "--model", "m"])
    set_by_command = {"backend_options", "progress"}
    assert {field.name for field in fields(RunConfig)} - set(vars(args)) == set_by_command
