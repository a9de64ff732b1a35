"""Two-stage bookkeeping (mub.protocol.stages): which stage-2 answer an implicit item records."""

from __future__ import annotations

import pytest

from mub.protocol.stages import combine_note_answers, notes_for

ITEM = {"answer": "A", "misleading_notes": ["m1", "m2", "m3"], "guiding_notes": ["g1", "g2"]}


@pytest.mark.parametrize(
    ("stage1_correct", "note_answers", "expected"),
    [
        # after a correct stage 1, the first note whose answer is not correct flips the item
        (True, ["A", "C", "B"], ("C", 1)),
        (True, ["A", None, "B"], (None, 1)),  # an unparsed answer is not correct: it flips
        (True, ["B"], ("B", 0)),
        # after a wrong stage 1, the first note whose answer is correct flips it
        (False, ["B", "C", "A"], ("A", 2)),
        (False, ["a "], ("a ", 0)),  # compared case-insensitively after trimming
        # no flip: the FIRST note's answer is the recorded one, whatever the later notes answered
        (False, ["B", None, "C"], ("B", None)),
        (False, [None, "C", "D"], (None, None)),
        (True, ["A", "a", " A"], ("A", None)),
        (True, [], (None, None)),
    ],
)
def test_combine_note_answers(stage1_correct, note_answers, expected):
    assert combine_note_answers(ITEM, stage1_correct, note_answers) == expected


def test_notes_for_picks_the_notes_of_the_stage1_outcome():
    assert notes_for(ITEM, True, 2) == ["m1", "m2"]
    assert notes_for(ITEM, False, 5) == ["g1", "g2"]
