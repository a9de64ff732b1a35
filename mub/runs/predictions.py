"""Per-item records of a run: what was asked, what came back, what it parsed to.

One :class:`ItemPrediction` is one line of ``predictions.jsonl``: one draw of
one item. A run that draws an item several times (the paper preset: once per
release copy) writes one line per draw, told apart by ``draw`` (0, 1, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DrawKey = tuple[str, int]  # (item id, draw): what identifies a line of predictions.jsonl


def draw_name(key: DrawKey) -> str:
    """A draw as messages name it: the item id, then ``/d<draw>`` after the first draw."""
    item_id, draw = key
    return item_id if draw == 0 else f"{item_id}/d{draw}"


@dataclass
class StageAnswer:
    """One model call: its cue (what stage 2 said; empty in stage 1), raw output and parse.

    ``hinted`` is the option the cue named (hint, opinion, authority); ``None``
    in stage 1 and for cues that name none (notes, challenge).
    """

    cue: str
    output: str
    parsed: str | None
    seconds: float = 0.0
    error: str | None = None
    option_probs: dict[str, float] | None = None
    hinted: str | None = None
    incomplete_probs: bool = False  # some option had no probability from the backend (vLLM's top-20 fallback)


@dataclass
class ItemPrediction:
    """Both stages of one draw of one item (``draw``: 0 for the first; runs made before draws hold 0).

    ``original_prediction`` is the stage-1 answer (the first sample when
    several were drawn); ``prediction`` is the stage-2 answer (for implicit
    items, the answer of the note that flipped it, else of the first note).
    Under ``--pressure`` ``stage2`` holds the turns asked and ``prediction`` is the answer at the flip (or the
    last turn's). ``error`` is set when a call failed: the item is then left out of the
    rates, counted as an error, and retried by ``--resume``.
    """

    id: str
    answer: str
    source: str
    difficulty: str | None  # None: the misled count is on no level
    misled_count: int
    question_type: str
    group_id: str
    stage1: list[StageAnswer]
    stage2: list[StageAnswer] = field(default_factory=list)
    original_prediction: str | None = None
    prediction: str | None = None
    flipped_by_note: int | None = None
    error: str | None = None
    draw: int = 0
    # --pressure: the 1-based turn of the first flip (None: held through every turn) and the answer changes
    # over the turns asked (stage 2 holds the turns); both None in runs without pressure.
    turn_of_flip: int | None = None
    flips: int | None = None

    @property
    def draw_key(self) -> DrawKey:
        return (self.id, self.draw)

    @property
    def scored_stage2(self) -> int:
        """The index in ``stage2`` of the answer scored as the stage-2 answer: under ``--pressure`` the turn of the
        flip, else the last turn asked; otherwise the note that flipped the item, else the first."""
        if self.flips is not None:
            return (self.turn_of_flip or len(self.stage2)) - 1
        return self.flipped_by_note or 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ItemPrediction":
        data = dict(data)
        data["stage1"] = [StageAnswer(**answer) for answer in data["stage1"]]
        data["stage2"] = [StageAnswer(**answer) for answer in data.get("stage2", [])]
        return cls(**data)
