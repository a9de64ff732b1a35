"""``mub rescore --parser reference`` reads as the authors' code read, on realistic outputs.

The oracle is the authors' ``extract_option`` (explicit: A-D; implicit: A-H)
and their correctness test, copied verbatim into tests/authors_code.py,
called as they called it: on the raw released question. Items are records of
the release sample.
"""

from __future__ import annotations

import inspect
import json

import pytest
from authors_code import authors_correct, extract_option_explicit, extract_option_implicit, seg_note
from conftest import shared

from mub.protocol.reference_reading import extracted
from mub.runs.rescore import READERS
from mub_dataset.records import normalise_record

OUTPUTS = [
    "A", "B", "C", "D", "E", "F", "H", "(B)", "B.", "b", "**A**",
    "The answer is C.",
    "Looking at the image, the building is round.\nThe answer is A.",
    "D, not Ring bells to summon the faithful to church, as in a bell tower",
    "B\nBecause the roof is flat.",
    "\n\nC\n",
    "Answer: E", "E. Aphids", "G", "Option H", "C or D",
    "I think the answer is not B but C",
    "It is the Netherlands.", "the United States", "Nectar pollen and honeydew",
    "A) Renaissance", "Certainly! Option C: Impressionism",
    "Yes", "No", "no", "yes.", "Yes, there is no dog", "There is nothing here.", "Noon is when it happens, yes",
    "I cannot tell from the image.", "unknown", "-1\n<no_response>",
    "blue", "I would say red, not blue", "2/4", "0/4 because both parents are dominant",
    "The state is Idaho", "A cat is sitting on the sofa.",
]  # fmt: skip


def _records() -> list[dict]:
    """Release records of every kind: 2-5 options, inline options (ConBench_CH), yes/no, non-Latin text."""
    records = json.loads((shared() / "all_combined_items.jsonl").read_text(encoding="utf-8"))
    chosen, kinds = [], set()
    for record in records:
        kind = (record["question_type_CHorYN"], record["dataset"], len(record.get("choices") or {}))
        if kind not in kinds:
            kinds.add(kind)
            chosen.append(record)
    # A question that holds "X: text" options, so the authors' option-text step fires too.
    synthetic = dict(chosen[0], question="Which colour is the car? A: red, B: blue", choices={"A": "red", "B": "blue"}, answer="B")
    return chosen + [synthetic]


def test_the_oracle_is_the_shared_reference():
    reference = shared("reference_protocol.md").read_text(encoding="utf-8")
    for function in (extract_option_explicit, extract_option_implicit, seg_note):
        assert inspect.getsource(function).split("\n", 1)[1] in reference, function.__name__


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_reference_reading_gives_the_authors_verdict_on_every_output(implicit):
    extract = extract_option_implicit if implicit else extract_option_explicit
    read = READERS["reference"]
    records = _records()
    assert len(records) >= 10 and len(OUTPUTS) >= 40
    checked = correct = 0
    for record in records:
        row = normalise_record(record, None)
        yes_no = record["question_type_CHorYN"] == "YN"
        for output in OUTPUTS:
            expected = authors_correct(extract(output, record["question"]), str(record["answer"]), yes_no)
            assert extracted(output, row["question"], implicit=implicit) == extract(output, record["question"]), output
            assert (read(output, row, implicit) == row["answer"]) == expected, (record["question"][:60], output)
            checked += 1
            correct += expected
    assert checked >= 400 and 0 < correct < checked


def test_the_cases_the_issue_names():
    record = next(r for r in _records() if r["question"].startswith("The building on the left"))
    row = normalise_record(record, None)
    # Read on the raw question: the standalone letter D, not an option text (the rendered prompt gave A).
    assert READERS["reference"]("D, not Ring bells to summon the faithful to church, as in a bell tower", row, False) == "D"
    assert READERS["reference"]("Looking at the image, the building is round.\nThe answer is A.", row, False) == "A"
    five = next(r for r in _records() if len(r.get("choices") or {}) == 5)
    five_row = normalise_record(five, None)
    assert READERS["reference"]("E", five_row, True) == "E" and READERS["reference"]("E", five_row, False) is None
