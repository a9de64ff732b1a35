"""`mub run` end to end on the default (answering) tiny model of every architecture, through the command line.

The tiny models answer every prompt with one answer token (see
``mub.testing.tiny_models._bias_towards_answers``), so these runs go through
parsed answers, flips and defined misleading rates. Each run's figures are
recounted here from its own predictions file, item by item.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mub.cli import main as cli_main
from mub.protocol.parsing import parse_answer
from mub.testing.tiny_models import ANSWER_LABELS, TINY_ARCHITECTURES, build_tiny_model
from mub_dataset.loading import load

ITEMS = 12


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e-models")
    return {arch: build_tiny_model(arch, root / arch) for arch in TINY_ARCHITECTURES}


def _run(model: Path, out: Path, *extra: str) -> dict:
    code = cli_main(
        ["run", "--model", str(model), "--dataset", "sample", "--limit", str(ITEMS), "--out", str(out), "--no-progress", *extra]
    )
    assert code == 0
    return json.loads((out / "results.json").read_text())


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _stage_outputs(out: Path) -> list[tuple]:
    return [
        (r["id"], [(a["output"], a["parsed"]) for a in r["stage1"]], [(a["cue"], a["output"], a["parsed"]) for a in r["stage2"]])
        for r in _records(out)
    ]


@pytest.fixture(scope="module")
def sample_choices() -> dict[str, list[str]]:
    return {row["id"]: row["choices"] for row in load("explicit", "sample").remove_columns("image")}


def _recount(records: list[dict], choices: dict[str, list[str]]) -> dict:
    """n, n_t, t2f, f2t, unparsed counts and the rates, re-parsed from the records' raw outputs."""
    def parsed(answer: dict, record: dict) -> str | None:
        return parse_answer(answer["output"], choices[record["id"]], record["question_type"])

    before = [parsed(r["stage1"][0], r) for r in records]
    after = [parsed(r["stage2"][0], r) for r in records]
    right_before = [b == r["answer"] for b, r in zip(before, records)]
    right_after = [a == r["answer"] for a, r in zip(after, records)]
    n_t = sum(right_before)
    t2f = sum(b and not a for b, a in zip(right_before, right_after))
    f2t = sum(a and not b for b, a in zip(right_before, right_after))
    return {
        "n": len(records),
        "n_t": n_t,
        "n_f": len(records) - n_t,
        "t2f": t2f,
        "f2t": f2t,
        "unparsed_before": before.count(None),
        "unparsed_after": after.count(None),
        "mr_t2f": t2f / n_t if n_t else None,
        "mr_f2t": f2t / (len(records) - n_t) if len(records) > n_t else None,
    }


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_mub_run_end_to_end_and_batched_equals_one_at_a_time(tiny_models, sample_choices, tmp_path, arch):
    batched = _run(tiny_models[arch], tmp_path / "batched", "--batch-size", "3")
    single = _run(tiny_models[arch], tmp_path / "single", "--batch-size", "1")

    figures = batched["results"]["explicit"]
    assert figures["errors"] == 0
    assert batched["run"]["backend_info"]["plumbing_check"]["answers"]
    expected = _recount(_records(tmp_path / "batched"), sample_choices)
    assert {key: figures[key] for key in expected} == expected
    # The model answers: every output is one answer label, some of them parse.
    labels = {" " + label for label in ANSWER_LABELS}
    outputs = [a["output"] for r in _records(tmp_path / "batched") for a in r["stage1"] + r["stage2"]]
    assert set(outputs) <= labels
    assert figures["unparsed_before"] < figures["n"]
    assert figures["n_t"] > 0 and figures["mr_t2f"] is not None
    # levels are exact counts (6, 9, 12): recounted from the records, and absent when no item is on one
    records = _records(tmp_path / "batched")
    on_level = Counter({6: "low", 9: "medium", 12: "high"}.get(r["misled_count"]) for r in records)
    on_level.pop(None, None)
    assert on_level, "the first items of the sample should include one on a level"
    assert {level: f["n"] for level, f in figures.get("by_difficulty", {}).items()} == dict(on_level)
    assert _stage_outputs(tmp_path / "batched") == _stage_outputs(tmp_path / "single")
    assert batched["results"] == single["results"]
    for _, stage1, stage2 in _stage_outputs(tmp_path / "batched"):
        assert len(stage1) == 1 and len(stage2) == 1
        assert stage2[0][0].startswith("And the true answer is : ")


def test_readme_first_command_gives_answers_flips_and_rates(sample_choices, tmp_path, monkeypatch):
    """README's first command, `mub run --model tiny:llava --protocol deterministic` on the whole sample."""
    monkeypatch.chdir(tmp_path)
    assert cli_main(["run", "--model", "tiny:llava", "--protocol", "deterministic", "--no-progress"]) == 0
    (out,) = (tmp_path / "runs").iterdir()
    figures = json.loads((out / "results.json").read_text())["results"]["explicit"]
    expected = _recount(_records(out), sample_choices)
    assert {key: figures[key] for key in expected} == expected
    assert figures["n"] == len(sample_choices)
    assert figures["unparsed_before"] < figures["n"] / 2  # most items get a stage-1 answer
    assert figures["t2f"] > 0 and figures["mr_t2f"] is not None


def test_implicit_run_asks_one_request_per_note(tiny_models, tmp_path):
    # 16 new tokens: this checks one request per note, not the paper preset's 256-token budget
    results = _run(
        tiny_models["llava"], tmp_path / "implicit", "--config", "implicit", "--notes", "3", "--batch-size", "4",
        "--max-new-tokens", "16",
    )  # fmt: skip
    assert results["results"]["implicit"]["n"] == ITEMS
    for _, _, stage2 in _stage_outputs(tmp_path / "implicit"):
        assert len(stage2) == 3
        assert all(cue.startswith("Please pay attention to this instruction: ") for cue, _, _ in stage2)
