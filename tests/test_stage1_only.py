"""``--stages 1``: stage 1 only, accuracy only, its own protocol label, never submittable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mub.backends.base import Request
from mub.config import RunConfig
from mub.report.submit import read_runs, run_protocol
from mub.runs.merge import config_from_settings
from mub.runs.runner import run
from mub.testing.scripted import ScriptedBackend
from tests.test_runner import _dataset, _item, _item_number

# Stage-1 answers per item: right, wrong, right, unreadable; a stage 2 (if asked) would always answer C.
STAGE1 = {1: "A", 2: "B", 3: "A", 4: "no idea"}


def _rule(asked: list[str]):
    def rule(request: Request) -> str:
        asked.append(request.key)
        return STAGE1[_item_number(request)] if "/stage1/" in request.key else "C"

    return rule


def _run(tmp_path: Path, name: str, **settings: object) -> tuple[dict, list[str]]:
    asked: list[str] = []
    config = RunConfig(
        model="scripted", backend="scripted", out=str(tmp_path / name), progress=False, protocol="deterministic", **settings
    )
    items = [_item(n, difficulty=level) for n, level in zip(STAGE1, ("low", "low", "high", "high"))]
    return run(config, backend=ScriptedBackend(_rule(asked)), dataset=_dataset(items)), asked


def _keys(figures: object) -> set[str]:
    if not isinstance(figures, dict):
        return set()
    return set(figures) | {key for value in figures.values() for key in _keys(value)}


def test_stage1_only_asks_stage1_and_reports_accuracy_only(tmp_path: Path) -> None:
    results, asked = _run(tmp_path, "one", stages=1)
    assert asked and all("/stage1/" in key for key in asked) and len(asked) == 4
    figures = results["results"]["explicit"]
    # 2 of 4 right, 1 unreadable; per level: low 1 of 2, high 1 of 2.
    assert figures["n"] == 4 and figures["accuracy_before"] == pytest.approx(0.5) and figures["unparsed_before"] == 1
    assert figures["by_difficulty"]["low"]["accuracy_before"] == pytest.approx(0.5)
    assert not {"mr_t2f", "mr_f2t", "accuracy_after", "unparsed_after", "consistency"} & _keys(figures)
    predictions = [json.loads(line) for line in (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()]
    assert all(p["stage2"] == [] and p["prediction"] == p["original_prediction"] for p in predictions)

    settings = json.loads((tmp_path / "one" / "run.json").read_text())
    assert settings["stages"] == 1  # the marker submit refuses on
    assert run_protocol(results) == "deterministic + stages=1"
    with pytest.raises(ValueError, match="stage-1-only run"):
        read_runs([tmp_path / "one"])

    # Rescoring and merging read the run's settings back as a stage-1-only run.
    assert config_from_settings(settings, None).stages == 1


def test_two_stage_run_is_unchanged_and_submittable(tmp_path: Path) -> None:
    results, asked = _run(tmp_path, "two")
    assert sum("/stage2/" in key for key in asked) == 4  # every item got its cue
    assert results["run"]["stages"] == 2 and run_protocol(results) == "deterministic"
    assert "mr_t2f" in results["results"]["explicit"]
    # Refused for what it ran on (the synthetic sample), not for its stages: a stage-1-only run is refused first.
    with pytest.raises(ValueError, match="synthetic sample"):
        read_runs([tmp_path / "two"])
