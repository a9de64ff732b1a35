"""`mub run` end to end on tiny random models of every architecture, through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mub.cli import main as cli_main
from mub.testing.tiny_models import TINY_ARCHITECTURES, build_tiny_model

# Tokens the tiny models are pushed towards (option letters and the newline
# that ends an answer), so outputs look like answers and stop early; the exact
# two-stage bookkeeping is tested with the scripted backend in test_runner.py.
FAVOURED = (" A", " B", " C", "\n")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e-models")
    return {arch: build_tiny_model(arch, root / arch, favour=FAVOURED) for arch in TINY_ARCHITECTURES}


def _run(model: Path, out: Path, *extra: str) -> dict:
    code = cli_main(
        ["run", "--model", str(model), "--dataset", "sample", "--limit", "6", "--out", str(out), "--no-progress", *extra]
    )
    assert code == 0
    return json.loads((out / "results.json").read_text())


def _stage_outputs(out: Path) -> list[tuple]:
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return [
        (r["id"], [(a["output"], a["parsed"]) for a in r["stage1"]], [(a["cue"], a["output"], a["parsed"]) for a in r["stage2"]])
        for r in records
    ]


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_mub_run_end_to_end_and_batched_equals_one_at_a_time(tiny_models, tmp_path, arch):
    batched = _run(tiny_models[arch], tmp_path / "batched", "--batch-size", "3")
    single = _run(tiny_models[arch], tmp_path / "single", "--batch-size", "1")

    figures = batched["results"]["explicit"]
    assert figures["n"] == 6 and figures["errors"] == 0
    assert batched["run"]["backend_info"]["plumbing_check"]
    assert set(figures.get("by_difficulty", {})) <= {"low", "medium", "high"}  # absent when no item is on a level
    assert _stage_outputs(tmp_path / "batched") == _stage_outputs(tmp_path / "single")
    assert batched["results"] == single["results"]
    for _, stage1, stage2 in _stage_outputs(tmp_path / "batched"):
        assert len(stage1) == 1 and len(stage2) == 1
        assert stage2[0][0].startswith("And the true answer is : ")


def test_implicit_run_asks_one_request_per_note(tiny_models, tmp_path):
    # 16 new tokens: this checks one request per note, not the paper preset's 256-token budget
    results = _run(
        tiny_models["llava"], tmp_path / "implicit", "--config", "implicit", "--notes", "3", "--batch-size", "4",
        "--max-new-tokens", "16",
    )  # fmt: skip
    assert results["results"]["implicit"]["n"] == 6
    for _, _, stage2 in _stage_outputs(tmp_path / "implicit"):
        assert len(stage2) == 3
        assert all(cue.startswith("Please pay attention to this instruction: ") for cue, _, _ in stage2)
