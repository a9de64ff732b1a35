"""Implicit rates had only the first k notes been tried (results.rates_by_notes), at every k."""

from __future__ import annotations

from recount import rates_by_notes as rates_by_hand

from mub.runs.predictions import ItemPrediction, StageAnswer
from mub.runs.results import rates_by_notes

NOTES = 5


def _item(name: str, stage1: str, flip: int | None, error: str | None = None) -> ItemPrediction:
    """An item whose answer is A; stage 1 answered ``stage1``; note ``flip`` (0-based) flipped it."""
    right = stage1 == "A"
    kept, flipped = ("A", "B") if right else ("B", "A")
    stage2 = [StageAnswer(cue=f"note {i}", output="", parsed=flipped if i == flip else kept) for i in range(NOTES)]
    if flip is not None:
        stage2 = stage2[: flip + 1]  # notes stop at the flip
    return ItemPrediction(
        id=name, answer="A", source="s", difficulty=None, misled_count=7, question_type="multiple_choice",
        group_id=name, stage1=[StageAnswer(cue="", output=stage1, parsed=stage1)], stage2=stage2,
        original_prediction=stage1, prediction=flipped if flip is not None else kept, flipped_by_note=flip, error=error,
    )  # fmt: skip


PREDICTIONS = [
    _item("t1", "A", 0),
    _item("t2", "A", 1),
    _item("t3", "A", 2),
    _item("t4", "A", 4),
    _item("t5", "A", None),
    _item("f1", "B", 1),
    _item("f2", "B", None),
    _item("failed", "A", 0, error="timeout"),  # not scored: in no denominator
]
# By hand (each rate is a quotient of two small counts, computed the same way: compared exactly):
# 5 scored items right in stage 1, flipped by notes 0, 1, 2 and 4 (0-based); 2 wrong, one flipped by note 1.
EXPECTED = {
    "mr_t2f_by_notes": {"1": 1 / 5, "2": 2 / 5, "3": 3 / 5, "4": 3 / 5, "5": 4 / 5},
    "mr_f2t_by_notes": {"1": 0 / 2, "2": 1 / 2, "3": 1 / 2, "4": 1 / 2, "5": 1 / 2},
}


def test_rates_by_notes_at_every_k():
    assert rates_by_notes(PREDICTIONS, NOTES) == EXPECTED


def test_fewer_notes_than_tried_and_no_items():
    assert rates_by_notes(PREDICTIONS, 2) == (
        {key: {k: v for k, v in rates.items() if int(k) <= 2} for key, rates in EXPECTED.items()}
    )
    assert rates_by_notes([_item("t", "A", None)], 1) == {"mr_t2f_by_notes": {"1": 0.0}, "mr_f2t_by_notes": {"1": None}}


def test_the_recount_helper_agrees_with_the_hand_figures():
    # tests/recount.py rebuilds the same figures from predictions records: it is checked here once,
    # so that the run-level tests that use it compare against a checked recount.
    assert rates_by_hand([p.to_json() for p in PREDICTIONS], NOTES) == EXPECTED
