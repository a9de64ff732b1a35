"""``mub rescore``: the authors' reading against mub's parser, on a run's recorded outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mub_dataset
from mub.backends.base import Request
from mub.cli import main
from mub.config import RunConfig
from mub.protocol.reference_reading import extracted, reference_answer
from mub.runs.runner import run
from mub.testing.scripted import ScriptedBackend


@pytest.mark.parametrize(
    ("response", "question", "expected"),
    [
        ("The answer is C or D", "Q?", "C"),  # the first standalone letter
        ("I think it is red", "Q? A: blue, B: red", "B"),  # an option text found in the response wins
        ("Yes, there is no dog", "Q?", "yes,thereisnodog"),  # no letter: the text, no spaces, lower case
        ("An apple", "Q?", "anapple"),  # "An" is no standalone letter
    ],
)
def test_extraction_follows_the_authors_rule(response, question, expected):
    assert extracted(response, question) == expected


def test_yes_and_no_in_one_answer_count_as_correct_whatever_the_truth():
    for truth in ("Yes", "No"):
        item = {"question": "Is there a dog?", "choices": ["Yes", "No"], "answer": truth, "question_type": "yes_no", "source": "MME"}
        assert reference_answer("Yes, there is no dog", item) == truth
    item = {"question": "Colour?", "choices": ["red", "blue", "green"], "answer": "B", "question_type": "multiple_choice", "source": "X"}
    assert reference_answer("A or B", item) == "A"  # first standalone letter, the truth not among it
    # The raw question holds no "X: text" options, so an option named by its text is not found: no letter
    # either, so the answer is unread.
    assert reference_answer("blue, surely", item) is None
    assert reference_answer("no idea", item) is None


def _hedging_rule(items: dict[str, dict]):
    """Stage 1: the true answer (yes/no items: 'Yes, there is no ...'); stage 2: a hedge naming two options."""

    def answer(request: Request) -> str:
        item = items[request.key.split("/")[0]]
        if item["question_type"] == "yes_no":
            return "Yes, there is no doubt." if "stage1" in request.key else "No."
        if "stage1" in request.key:
            return item["answer"]
        return f"{item['misleading_answer']} or {item['answer']}"

    return answer


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    dataset = mub_dataset.load("explicit", "sample")
    items = {row["id"]: row for row in dataset.remove_columns("image").to_list()}
    out = tmp_path_factory.mktemp("runs") / "original"
    run(RunConfig(model="scripted/hedging", backend="scripted", out=str(out), limit=40, progress=False),
        backend=ScriptedBackend(_hedging_rule(items), name="scripted/hedging"), dataset=dataset)  # fmt: skip
    return out


def _lines(folder: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (folder / "predictions.jsonl").read_text().splitlines())}


def test_rescoring_with_mub_reproduces_the_run(original, tmp_path):
    assert main(["rescore", str(original), "--parser", "mub", "--out", str(tmp_path / "mub"), "--no-progress"]) == 0
    before = json.loads((original / "results.json").read_text())
    after = json.loads((tmp_path / "mub" / "results.json").read_text())
    assert after["results"] == before["results"]
    assert after["run"]["parser"] == "mub" and after["run"]["protocol"] == before["run"]["protocol"]


def test_rescoring_with_the_reference_reads_every_output_the_authors_way(original, tmp_path):
    out = tmp_path / "reference"
    assert main(["rescore", str(original), "--parser", "reference", "--out", str(out), "--no-progress"]) == 0
    rows = {row["id"]: row for row in mub_dataset.load("explicit", "sample").remove_columns("image").to_list()}
    rescored, before = _lines(out), _lines(original)
    assert set(rescored) == set(before)
    for item_id, record in rescored.items():
        row = rows[item_id]
        for stage in ("stage1", "stage2"):
            assert [a["output"] for a in record[stage]] == [a["output"] for a in before[item_id][stage]]
            assert [a["parsed"] for a in record[stage]] == [reference_answer(a["output"], row) for a in record[stage]]
    figures = json.loads((out / "results.json").read_text())["results"]["explicit"]
    yes_no = [r for r in rescored.values() if r["question_type"] == "yes_no"]
    multiple = [r for r in rescored.values() if r["question_type"] != "yes_no"]
    # yes/no: "Yes, there is no doubt." is correct whatever the truth, and "No." flips the "Yes" items;
    # multiple choice: the hedge's first standalone letter (the misleading option) is read, so the item
    # flips, unless that option is E: the authors' letters run A-D only, and the true one is read instead
    assert all(r["original_prediction"] == r["answer"] for r in yes_no)
    flips = sum(1 for r in multiple if rows[r["id"]]["misleading_answer"] in "ABCD")
    assert 0 < flips < len(multiple)
    assert figures["t2f"] == flips + sum(1 for r in yes_no if r["answer"] == "Yes")
    original_figures = json.loads((original / "results.json").read_text())["results"]["explicit"]
    assert figures["n_t"] > original_figures["n_t"]  # mub leaves the yes-and-no answers unread

    report = tmp_path / "report"
    assert main(["report", str(original), str(out), "--out", str(report), "--bootstrap", "50"]) == 0
    markdown = (report / "report.md").read_text(encoding="utf-8")
    assert "scripted/hedging [reference parser]" in markdown.split("## Paired comparisons", 1)[1].split("##")[0]


def test_bad_rescore_requests_get_one_line(original, tmp_path, capsys):
    assert main(["rescore", str(tmp_path / "nothing"), "--parser", "mub", "--out", str(tmp_path / "x")]) == 2
    assert main(["rescore", str(original), "--parser", "mub", "--out", str(original)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "not a finished run" in errors[0] and "is the run being rescored" in errors[1]


def test_an_implicit_run_is_read_with_the_implicit_scripts_letters_a_to_h(tmp_path):
    """The implicit scripts' extract_option reads letters A-H: an implicit run's "E" is E, an explicit run's is not."""
    dataset = mub_dataset.load("implicit", "sample")
    out = tmp_path / "implicit"
    run(RunConfig(model="scripted/e", backend="scripted", config="implicit", out=str(out), limit=40, progress=False),
        backend=ScriptedBackend(lambda request: "E", name="scripted/e"), dataset=dataset)  # fmt: skip
    assert main(["rescore", str(out), "--parser", "reference", "--out", str(tmp_path / "reference"), "--no-progress"]) == 0
    rows = {row["id"]: row for row in dataset.remove_columns("image").to_list()}
    rescored = _lines(tmp_path / "reference")
    read_as_e = 0
    for item_id, record in rescored.items():
        parsed = [a["parsed"] for a in record["stage1"]]
        assert parsed == [reference_answer("E", rows[item_id], implicit=True)]
        read_as_e += parsed == ["E"] and reference_answer("E", rows[item_id], implicit=False) is None
    assert read_as_e > 0
