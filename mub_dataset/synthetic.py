"""Embedded synthetic sample in the MUB release format.

THIS IS NOT MUB DATA. It is a synthetic, project-generated stand-in for the
MUB release (Dang et al., arXiv 2411.02708) so that the builder, the metric
and the tests work offline without the real release. Every question, image,
note and "reference model" field below is produced by this module from fixed
seeds; no vision-language model was run and no real benchmark item is used.

``write_synthetic_release(out_dir, n_items=160)`` writes a folder laid out
exactly like a release folder, so the normal release reader ingests it
unchanged::

    README.md                      says the folder is synthetic
    all_combined_items.jsonl       one JSON array with every item, once
    extract_img_all/synthetic_0000.png ...
    implicit/mislead_output/allmislead_gpt{6,9,12}_all.jsonl

Sources (the ``dataset`` field, see ``SYNTHETIC_SOURCES``):

- ``Synthetic-Count``: how many shapes of one colour and kind (multiple choice
  over counts; yes/no "are there exactly k ...?").
- ``Synthetic-Color``: the colour of the only shape of its kind.
- ``Synthetic-Position``: which part of the image (left/right/top/bottom) holds
  a shape; yes/no questions ask about the relative position of two shapes.
- ``Synthetic-Chart``: a bar chart without text; which bar (named by its
  colour) is tallest or shortest; yes/no "is bar X taller/shorter than bar Y?".

Items cycle through the sources (``i % 4``); in every group of twelve items
each source gets two multiple-choice items (2 to 5 options) and one yes/no
item, so about two thirds are multiple choice.

Synthetic difficulty
--------------------
In the real release ``num`` is how many of 12 reference models were misled.
Here ``num`` is synthetic: every item gets a task-hardness score ``h`` in
[0, 1], a weighted sum of normalised factors, and

    num = min(12, 6 + floor(9 * h))

so ``h < 1/3`` gives 6-8, ``1/3 <= h < 2/3`` gives 9-11 and ``h >= 2/3``
gives 12, like the release's spread of counts; as there, only the counts 6,
9 and 12 are on a level (low, medium, high). The factors, each clamped to [0, 1]:

- Count: ``0.45*(n-2)/7 + 0.25*d/10 + 0.15*sim + 0.15*(k-2)/3`` with n the
  true count (2..9), d the number of distractor shapes (0..10), sim the
  closeness of the nearest distractor colour to the target colour and k the
  number of options (2 for yes/no).
- Color: ``0.5*sim + 0.2*d/6 + 0.15*(k-2)/3 + 0.15*(15-s)/8`` with sim the
  closeness of the nearest competing colour (other options, the colour named
  in a yes/no question, distractor shapes), d distractors (0..6), k options
  and s the shape's half-size in pixels (7..15).
- Position, multiple choice: ``0.55*(90-off)/66 + 0.25*d/6 + 0.2*(k-2)/2``
  with off the distance in pixels of the shape's centre from the image's
  middle along the deciding axis (24..90), d distractors, k options (2..4).
  Yes/no (relative position): ``0.55*(150-sep)/130 + 0.25*d/6 + 0.2*p/100``
  with sep the centre distance along the asked axis (20..150) and p the
  offset along the other axis (at most sep, so the asked axis dominates).
- Chart: ``0.65*tight + 0.35*(b-2)/3`` with b bars (2..5) and
  ``tight = 1 - clamp((r - 0.02) / 0.28)``, r the height difference of the
  deciding pair of bars relative to the taller of the two.

Colour closeness is ``clamp((240 - dist) / 160)`` for the Euclidean RGB
distance between two ``PALETTE`` colours. Difficulty levels are assigned in
turn (``(i // 12) % 3``) and each item's parameters are drawn until its score
falls in its level, so all three levels are well represented.

Reference fields: ``model`` is ``synthetic-reference``. Its stage-1 answer is
correct with probability ``0.9 - 0.4*h``; when correct, ``guide`` names the
wrong option it "fell for" and it keeps the true answer with probability
``(12 - num) / 12``; when wrong, ``guide`` names the true answer and it follows
it with probability 0.8. ``question_correction`` is stage-1 correct (T/F)
followed by stage-2 correct (T/F); ``response`` is the stage-2 answer.

Implicit notes: every item gets 3 to 5 misleading notes
(``closed_model_response_F``, steering towards one wrong option without naming
an option letter or the true answer) and 3 to 5 guiding notes
(``closed_model_response_T``, pointing towards the true answer without stating
it), joined by `` /// ``; about half of the items outside Synthetic-Count
number their notes ``1. ...`` (count answers are numbers, so count notes are
never numbered).

Determinism: each item draws from ``random.Random`` seeded with a SHA-256 of
``GENERATOR_VERSION`` and the item index, through helpers that only use
``Random.random()``; images are rasterised with integer numpy arithmetic (not Pillow's drawing
code, whose anti-aliasing may change between versions) and saved as PNG by
Pillow. The same ``n_items`` gives identical record files and identical image
pixels on every machine (PNG bytes may differ between zlib builds; nothing
downstream depends on them), and the first items do not depend on ``n_items``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .features import SYNTHETIC_SOURCES

__all__ = [
    "SYNTHETIC_SOURCES",
    "PALETTE",
    "GENERATOR_VERSION",
    "REFERENCE_MODEL",
    "hardness_to_num",
    "write_synthetic_release",
]

GENERATOR_VERSION = "mub-synthetic/v1"
REFERENCE_MODEL = "synthetic-reference"

IMAGE_SIZE = 224
GRIDLINE = (225, 225, 225)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (235, 205, 30),
    "green": (40, 155, 60),
    "blue": (35, 85, 215),
    "purple": (135, 55, 185),
    "pink": (240, 120, 185),
    "brown": (135, 85, 35),
    "gray": (130, 130, 130),
    "black": (25, 25, 25),
}
_COLOR_NAMES = tuple(PALETTE)
_COLOR_FAMILY = {
    "red": "warm", "orange": "warm", "yellow": "warm", "pink": "warm", "brown": "warm",
    "green": "cool", "blue": "cool", "purple": "cool", "gray": "neutral", "black": "neutral",
}
_SHAPES = ("circle", "square", "triangle")
_LETTERS = "ABCDE"
_YN_SUFFIX = " Please answer yes or no."

# Chart geometry: bars stand on a black baseline; light gridlines every 25 px.
CHART_BASELINE = 200
_CHART_LEFT, _CHART_RIGHT = 16, 208

# Distractor shapes go into a 6x6 grid of 37 px cells, at most one per cell and
# at least 2 px inside it, so shapes never touch (each shape is its own blob).
_CELL, _GRID, _ORIGIN = 37, 6, 1


# --------------------------------------------------------------------------
# Deterministic randomness


def _item_rng(index: int) -> random.Random:
    digest = hashlib.sha256(f"{GENERATOR_VERSION}/item/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class _Draw:
    """Random helpers built only on ``Random.random()`` (stable across Python versions)."""

    def __init__(self, rng: random.Random):
        self._rng = rng

    def random(self) -> float:
        return self._rng.random()

    def randint(self, lo: int, hi: int) -> int:
        return lo + min(hi - lo, int(self._rng.random() * (hi - lo + 1)))

    def chance(self, p: float) -> bool:
        return self._rng.random() < p

    def choice(self, seq):
        return seq[self.randint(0, len(seq) - 1)]

    def sample(self, seq, k: int) -> list:
        pool = list(seq)
        for i in range(k):
            j = self.randint(i, len(pool) - 1)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    def shuffled(self, seq) -> list:
        return self.sample(seq, len(seq))


# --------------------------------------------------------------------------
# Difficulty


def _clamp(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def hardness_to_num(h: float) -> int:
    """Synthetic ``num`` (6..12) for a hardness score h in [0, 1]."""
    return min(12, 6 + int(9 * _clamp(h)))


def _level(h: float) -> int:
    num = hardness_to_num(h)
    return 0 if num <= 8 else 1 if num <= 11 else 2


def _closeness(a: str, b: str) -> float:
    dist = math.sqrt(sum((x - y) ** 2 for x, y in zip(PALETTE[a], PALETTE[b])))  # correctly rounded
    return _clamp((240.0 - dist) / 160.0)


def _nearest(color: str, others) -> float:
    return max((_closeness(color, o) for o in others), default=0.0)


# --------------------------------------------------------------------------
# Drawing (integer arithmetic only)


def _canvas() -> np.ndarray:
    return np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, dtype=np.uint8)


def _draw_shape(img: np.ndarray, kind: str, cx: int, cy: int, s: int, color: str) -> None:
    """Fill a shape of half-size s centred at (cx, cy); bounding box is 2s+1 px."""
    yy, xx = np.mgrid[cy - s: cy + s + 1, cx - s: cx + s + 1]
    if kind == "square":
        mask = np.ones(yy.shape, dtype=bool)
    elif kind == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= s * s + s
    else:  # triangle with its apex up
        mask = 2 * np.abs(xx - cx) <= yy - (cy - s)
    img[cy - s: cy + s + 1, cx - s: cx + s + 1][mask] = PALETTE[color]


def _box(cx: int, cy: int, s: int, gap: int = 0) -> tuple[int, int, int, int]:
    return (cx - s - gap, cy - s - gap, cx + s + gap, cy + s + gap)


def _overlaps(a, b) -> bool:
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def _free_cells(blocked) -> list[tuple[int, int]]:
    cells = []
    for r in range(_GRID):
        for c in range(_GRID):
            x0, y0 = _ORIGIN + c * _CELL, _ORIGIN + r * _CELL
            cell = (x0, y0, x0 + _CELL - 1, y0 + _CELL - 1)
            if not any(_overlaps(cell, b) for b in blocked):
                cells.append((x0, y0))
    return cells


def _scatter(d: _Draw, img, n: int, kinds, colors, blocked=()) -> list[tuple[str, str]]:
    """Draw n shapes in distinct free grid cells; kinds/colors are callables."""
    cells = d.sample(_free_cells(blocked), n)
    drawn = []
    for x0, y0 in cells:
        s = d.randint(8, 15)
        cx = d.randint(x0 + 2 + s, x0 + _CELL - 3 - s)
        cy = d.randint(y0 + 2 + s, y0 + _CELL - 3 - s)
        kind, color = kinds(), colors()
        _draw_shape(img, kind, cx, cy, s, color)
        drawn.append((kind, color))
    return drawn


def _yes_no(holds: bool) -> tuple[str, str]:
    """(answer, lure) of a yes/no question: the lure is the other answer."""
    return ("Yes", "No") if holds else ("No", "Yes")


def _plural(kind: str, k: int = 2) -> str:
    return kind if k == 1 else kind + "s"


# --------------------------------------------------------------------------
# Tasks. Each returns a _Task or None (parameters rejected); notes are pools
# from which 3 to 5 are drawn.


@dataclass
class _Task:
    question: str
    options: list[str] | None  # option texts in letter order; None for yes/no
    answer: str  # option text, or "Yes"/"No"
    lure: str  # the wrong option the notes (and a misled reference) steer to
    category: str
    hardness: float
    image: np.ndarray
    misleading: list[str]
    guiding: list[str]


def _count_task(d: _Draw, yn: bool) -> _Task:
    img = _canvas()
    color, kind = d.choice(_COLOR_NAMES), d.choice(_SHAPES)
    n = d.randint(2, 9)
    n_distract = d.randint(0, 10)
    others = [c for c in _COLOR_NAMES if c != color]
    cells = d.sample(_free_cells(()), n + n_distract)
    distract_colors = []
    for idx, (x0, y0) in enumerate(cells):
        s = d.randint(8, 15)
        cx = d.randint(x0 + 2 + s, x0 + _CELL - 3 - s)
        cy = d.randint(y0 + 2 + s, y0 + _CELL - 3 - s)
        if idx < n:
            _draw_shape(img, kind, cx, cy, s, color)
        else:
            c = d.choice(others)
            distract_colors.append(c)
            _draw_shape(img, d.choice(_SHAPES), cx, cy, s, c)
    target, one = f"{color} {_plural(kind)}", f"{color} {kind}"
    sim = _nearest(color, distract_colors)
    if yn:
        k_opts = 2
        asked = n if d.chance(0.5) else max(1, n + d.choice((-1, 1)))
        question = (f"Are there exactly {asked} {color} {_plural(kind, asked)} in the image?"
                    + _YN_SUFFIX)
        answer, lure = _yes_no(asked == n)
        if answer == "Yes":
            misleading = [
                f"Looking closely, there is one more {one} near the border than a quick count "
                f"suggests, so the total differs from {asked}.",
                f"One of the shapes that seems to be a {one} is drawn in a slightly different "
                f"shade. Leaving it out, the total is not {asked}.",
                f"Counted carefully, row by row, the total does not land on {asked} {target}; "
                f"the number in the question is off by one.",
                f"Two of the {target} sit so close together that they read as one shape, which "
                f"makes {asked} the wrong total.",
                f"Counting every {one}, including the small ones, gives a total other than "
                f"{asked}.",
            ]
            verdict = "Counted carefully, the total agrees with the number given in the question."
        else:
            misleading = [
                f"Counting each {one} once, row by row, the total comes to exactly {asked}.",
                f"The number of {target} matches the number in the question once the small one "
                f"near the border is taken into account.",
                f"There are {asked} {target} in the picture; the other shapes are distractors "
                f"and do not change that.",
                f"Some shapes only look like {target} at first glance. The genuine ones number "
                f"{asked}, as the question says.",
                f"Scanning the picture from the upper edge down, the {target} add up to {asked}.",
            ]
            verdict = (f"Counted carefully, the total is {'fewer' if n < asked else 'more'} than {asked} "
                       f"{_plural(kind, asked)}.")
        guiding = [
            f"Count only shapes that are both {color} and {kind}-shaped; shapes of other "
            f"colors or forms are distractors.",
            f"None of the {target} overlap, so each one is a separate shape that counts once.",
            f"Scan the image in horizontal strips and tick off each {one}, so that none is "
            f"counted twice.",
            verdict,
            f"Compare your count directly with {asked}; a difference of even one shape decides "
            f"the question.",
        ]
        options = None
    else:
        k_opts = d.randint(2, 5)
        pool = [v for v in range(max(1, n - 3), n + 4) if v != n]
        values = sorted([n] + d.sample(pool, k_opts - 1))
        options = [str(v) for v in values]
        answer = str(n)
        m = d.choice([v for v in values if v != n])
        lure = str(m)
        question = d.choice((f"How many {target} are there in the image?",
                             f"Count the {target} in the image. How many are there?"))
        misleading = [
            f"Counted carefully, the {target} come to {m}; shapes of other colors should not "
            f"distract from that total.",
            f"Counting the {target} row by row, from the upper edge of the image down, gives a "
            f"total of {m}.",
            f"The total of {target} in the picture is {m}, once every shape of that kind has "
            f"been checked.",
        ]
        if m > n:
            misleading += [
                f"One {one} sits against the border and is easy to overlook. Including it, "
                f"there are {m}.",
                f"Some of the {target} are small and easy to skip at a glance; the full count "
                f"is {m}.",
            ]
        else:
            misleading += [
                f"Shapes of a similar shade are mixed in and should not be counted as {target}. "
                f"Leaving them out, the count is {m}.",
                f"It is easy to count one of the {target} twice when scanning the image. Counted "
                f"once each, they total {m}.",
            ]
        guiding = [
            f"Count only shapes that are both {color} and {kind}-shaped; shapes of other "
            f"colors or forms are distractors.",
            f"None of the {target} overlap, so every one of them is a separate, complete shape "
            f"that counts once.",
            f"Scan the image in horizontal strips and tick off each {one} as you go, so that "
            f"none is counted twice.",
            f"The number of {target} is {'smaller' if n < m else 'larger'} than {m}.",
            f"Do not forget the {target} near the edges of the picture; they count just as much "
            f"as the central ones.",
        ]
    h = (0.45 * (n - 2) / 7 + 0.25 * n_distract / 10 + 0.15 * sim
         + 0.15 * (k_opts - 2) / 3)
    return _Task(question, options, answer, lure, "object_counting", h, img,
                 misleading, guiding)


def _color_task(d: _Draw, yn: bool) -> _Task:
    img = _canvas()
    kind, true = d.choice(_SHAPES), d.choice(_COLOR_NAMES)
    others = [c for c in _COLOR_NAMES if c != true]
    s = d.randint(7, 15)
    n_distract = d.randint(0, 6)
    if yn:
        k_opts = 2
        asked = true if d.chance(0.5) else d.choice(others)
        lure_color = d.choice(others) if asked == true else asked
        competing = [] if asked == true else [asked]
    else:
        k_opts = d.randint(2, 5)
        options = d.shuffled([true] + d.sample(others, k_opts - 1))
        lure_color = d.choice([c for c in options if c != true])
        competing = [c for c in options if c != true]
    # The target is the only shape of its kind; distractors use other kinds and
    # other colours (half the time the lure colour shows up among them).
    x0, y0 = d.choice(_free_cells(()))
    cx = d.randint(x0 + 2 + s, x0 + _CELL - 3 - s)
    cy = d.randint(y0 + 2 + s, y0 + _CELL - 3 - s)
    _draw_shape(img, kind, cx, cy, s, true)
    other_kinds = [k for k in _SHAPES if k != kind]
    drawn = _scatter(d, img, n_distract, kinds=lambda: d.choice(other_kinds),
                     colors=lambda: lure_color if d.chance(0.5) else d.choice(others),
                     blocked=[_box(cx, cy, s, 4)])
    competing += [c for _, c in drawn]
    sim = _nearest(true, competing)
    h = 0.5 * sim + 0.2 * n_distract / 6 + 0.15 * (k_opts - 2) / 3 + 0.15 * (15 - s) / 8
    family = _COLOR_FAMILY[true]
    if yn:
        question = f"Is the {kind} in the image {asked}?" + _YN_SUFFIX
        answer, lure = _yes_no(asked == true)
        if answer == "Yes":
            misleading = [
                f"The {kind}'s fill leans toward {lure_color}, which is a different color from "
                f"the one named in the question.",
                f"Seen against the white background, the {kind} looks {lure_color} rather than "
                f"the color the question names.",
                f"The {kind} only resembles the named color at a glance; its actual fill is "
                f"{lure_color}.",
                f"Compared with the other shapes, the {kind}'s tone is closer to {lure_color} "
                f"than to the color in the question.",
                f"Flat fills can be deceiving, but the {kind} is really {lure_color}.",
            ]
            verdict = (f"The {kind}'s fill is exactly the shade the question names; without "
                       f"shading or gradient.")
        else:
            misleading = [
                f"The {kind}'s fill is {asked}, just as the question describes.",
                f"Seen against the white background, the {kind} clearly shows the {asked} tone "
                f"named in the question.",
                f"The {kind}'s fill matches {asked}; the neighbouring shapes only make it look a "
                f"little different.",
                f"Looking at the centre of the {kind}, the color there is {asked}.",
                f"Among the shapes in the image, the {kind} is the one drawn in {asked}.",
            ]
            verdict = f"The {kind} has a {family} color; compare it with the one named."
        guiding = [
            f"Look only at the {kind}; the other shapes are distractors.",
            f"Check the centre of the {kind}, away from its edges, and compare it with the "
            f"color named in the question.",
            verdict,
            f"The image uses flat, uniform colors, so one look at the {kind}'s interior settles "
            f"the question.",
        ]
        return _Task(question, None, answer, lure, "color_recognition", h, img,
                     misleading, guiding)
    question = d.choice((f"What color is the {kind}?",
                         f"Which color is the {kind} in the image?"))
    misleading = [
        f"The {kind} is filled with {lure_color}; the surrounding shapes make it look slightly "
        f"different at first glance.",
        f"Judged against the white background, the {kind}'s fill is a clear {lure_color}.",
        f"Screens shift colors a little, but the {kind}'s fill is still closest to {lure_color} "
        f"among the listed colors.",
        f"Look at the middle of the {kind} rather than its outline: the fill there is "
        f"{lure_color}.",
        f"Among the listed colors, {lure_color} is the closest match for the {kind}, and the "
        f"others can be ruled out.",
    ]
    guiding = [
        f"Look only at the {kind}; the other shapes have different colors and are there to "
        f"distract.",
        f"Look at the centre of the {kind}, away from its edges, and compare that fill with each "
        f"listed color.",
        f"The {kind} is not {lure_color}, even though that color is among the choices.",
        f"The {kind} has a {family} color.",
        f"The image is drawn in flat, uniform colors, so the {kind}'s fill is exactly one of the "
        f"listed colors, without any shading.",
    ]
    return _Task(question, options, true, lure_color, "color_recognition", h, img,
                 misleading, guiding)


_REGIONS = ("left", "right", "top", "bottom")
_RELATIONS = {  # relation -> (axis, sign of (a - b) along the axis, inverse)
    "to the left of": ("x", -1, "to the right of"),
    "to the right of": ("x", 1, "to the left of"),
    "above": ("y", -1, "below"),
    "below": ("y", 1, "above"),
}


def _position_task(d: _Draw, yn: bool) -> _Task | None:
    img = _canvas()
    mid = IMAGE_SIZE // 2
    lo_c, hi_c = 0, IMAGE_SIZE - 1
    if not yn:
        color, kind = d.choice(_COLOR_NAMES), d.choice(_SHAPES)
        s = d.randint(8, 15)
        true = d.choice(_REGIONS)
        off = d.randint(max(24, s + 10), 90)
        along = mid - off if true in ("left", "top") else mid + off
        across = mid + d.randint(-(off // 2), off // 2)
        cx, cy = (along, across) if true in ("left", "right") else (across, along)
        if not (lo_c + s + 2 <= min(cx, cy) and max(cx, cy) <= hi_c - s - 2):
            return None
        _draw_shape(img, kind, cx, cy, s, color)
        k_opts = d.randint(2, 4)
        options = d.shuffled([true] + d.sample([r for r in _REGIONS if r != true], k_opts - 1))
        lure = d.choice([r for r in options if r != true])
        n_distract = d.randint(0, 6)
        others = [c for c in _COLOR_NAMES if c != color]
        _scatter(d, img, n_distract, kinds=lambda: d.choice(_SHAPES),
                 colors=lambda: d.choice(others), blocked=[_box(cx, cy, s, 4)])
        h = 0.55 * (90 - off) / 66 + 0.25 * n_distract / 6 + 0.2 * (k_opts - 2) / 2
        target = f"{color} {kind}"
        axis = "horizontally" if true in ("left", "right") else "vertically"
        question = d.choice((f"In which part of the image is the {target}?",
                             f"Where is the {target} located in the image?"))
        misleading = [
            f"The {target} sits closer to the {lure} edge of the picture than it first appears.",
            f"Measured from the middle of the image, the {target} is displaced toward the {lure}.",
            f"The other shapes crowd the view, but the {target} itself lies in the {lure} part of "
            f"the image.",
            f"If the image is split in half, the {target} falls on the {lure} side.",
            f"The centre of the {target} is nearer the {lure} border than any other border.",
        ]
        guiding = [
            f"Imagine a vertical and a horizontal line through the middle of the image and check "
            f"which region holds the {target}.",
            f"Judge the position by the centre of the {target}, not by its size or by the other "
            f"shapes.",
            f"The {target} is not in the {lure} part of the image.",
            f"The {target} is displaced {axis} from the middle of the picture.",
            f"Ignore the distractor shapes; only the {target} matters for this question.",
        ]
        return _Task(question, options, true, lure, "absolute_position", h, img,
                     misleading, guiding)

    ca, cb = d.sample(_COLOR_NAMES, 2)
    ka, kb = d.choice(_SHAPES), d.choice(_SHAPES)
    sa, sb = d.randint(8, 15), d.randint(8, 15)
    relation = d.choice(tuple(_RELATIONS))
    axis, sign, _ = _RELATIONS[relation]
    holds = d.chance(0.5)
    sep = d.randint(20, 150)
    # the asked axis dominates, so the relation is plain to see
    perp = d.randint(-min(100, sep), min(100, sep))
    # positions along the asked axis (u) and across it (v)
    u_a = d.randint(sa + 2, hi_c - sa - 2)
    u_b = u_a - sign * sep if holds else u_a + sign * sep
    v_a = d.randint(sa + 2, hi_c - sa - 2)
    v_b = v_a + perp
    if not (sb + 2 <= u_b <= hi_c - sb - 2 and sb + 2 <= v_b <= hi_c - sb - 2):
        return None
    (ax, ay), (bx, by) = ((u_a, v_a), (u_b, v_b)) if axis == "x" else ((v_a, u_a), (v_b, u_b))
    box_a, box_b = _box(ax, ay, sa, 4), _box(bx, by, sb, 4)
    if _overlaps(box_a, box_b):
        return None
    _draw_shape(img, ka, ax, ay, sa, ca)
    _draw_shape(img, kb, bx, by, sb, cb)
    n_distract = d.randint(0, 6)
    others = [c for c in _COLOR_NAMES if c not in (ca, cb)]
    _scatter(d, img, n_distract, kinds=lambda: d.choice(_SHAPES),
             colors=lambda: d.choice(others), blocked=[box_a, box_b])
    h = 0.55 * (150 - sep) / 130 + 0.25 * n_distract / 6 + 0.2 * abs(perp) / 100
    a, b = f"{ca} {ka}", f"{cb} {kb}"
    true_rel = relation if holds else _RELATIONS[relation][2]
    claim = _RELATIONS[true_rel][2]  # what the misleading notes claim about a vs b
    direction = "horizontal" if axis == "x" else "vertical"
    answer, lure = _yes_no(holds)
    misleading = [
        f"Comparing their centres, the {a} lies {claim} the {b}.",
        f"Differences in size can be deceiving; the centre of the {a} is in fact {claim} "
        f"the {b}.",
        f"Tracing a line between the two shapes shows the {b} lying "
        f"{_RELATIONS[claim][2]} the {a}.",
        f"Several shapes distract the eye, but the {a} is still {claim} the {b}.",
        f"Measured along the {direction} direction, the {a} is {claim} the {b}.",
    ]
    guiding = [
        f"Compare the centres of the two shapes along the {direction} direction only; the other "
        f"direction does not matter here.",
        f"Ignore the distractor shapes; only the {a} and the {b} matter.",
        "Shape size is irrelevant: what counts is where each shape's centre lies.",
        f"The {b} lies {_RELATIONS[true_rel][2]} the {a}.",
        f"The gap between the two shapes along that direction is "
        f"{'small, so check carefully' if sep < 50 else 'clear'}.",
    ]
    return _Task(f"Is the {a} {relation} the {b}?" + _YN_SUFFIX, None, answer, lure,
                 "relative_position", h, img, misleading, guiding)


def _chart_task(d: _Draw, yn: bool) -> _Task:
    img = _canvas()
    n_bars = d.randint(2, 5)
    colors = d.sample([c for c in _COLOR_NAMES if c != "black"], n_bars)
    gap = d.randint(3, 70)
    heights: list[int]
    if yn:
        hi = d.randint(max(60, gap + 25), 185)
        pair = [hi, hi - gap]
        rest = [d.randint(25, 185) for _ in range(n_bars - 2)]
        heights = pair + rest
        order = d.shuffled(range(n_bars))
        heights = [heights[order.index(i)] for i in range(n_bars)]  # pair lands at random slots
        i1, i2 = order[0], order[1]  # bars holding pair[0] (taller) and pair[1]
        if d.chance(0.5):
            i1, i2 = i2, i1
        comp = d.choice(("taller", "shorter"))
        c1, c2 = colors[i1], colors[i2]
        c1_taller = heights[i1] > heights[i2]
        holds = c1_taller == (comp == "taller")
        r = gap / hi
    else:
        superl = d.choice(("tallest", "shortest"))
        if superl == "tallest":
            top = d.randint(100, 185)
            heights = [top, top - gap] + [d.randint(25, top - gap - 3) for _ in range(n_bars - 2)]
            r = gap / top
        else:
            low = d.randint(25, 80)
            heights = [low, low + gap] + [d.randint(low + gap + 3, 185) for _ in range(n_bars - 2)]
            r = gap / (low + gap)
        perm = d.shuffled(range(n_bars))
        heights = [heights[perm.index(i)] for i in range(n_bars)]
        true = colors[perm[0]]
    # draw: gridlines, bars, baseline
    for y in range(CHART_BASELINE - 25, 0, -25):
        img[y, _CHART_LEFT - 4: _CHART_RIGHT + 4] = GRIDLINE
    slot = (_CHART_RIGHT - _CHART_LEFT) // n_bars
    width = slot * 3 // 5
    for i, (c, hgt) in enumerate(zip(colors, heights)):
        x0 = _CHART_LEFT + i * slot + (slot - width) // 2
        img[CHART_BASELINE - hgt: CHART_BASELINE, x0: x0 + width] = PALETTE[c]
    img[CHART_BASELINE: CHART_BASELINE + 2, _CHART_LEFT - 4: _CHART_RIGHT + 4] = PALETTE["black"]
    tight = 1.0 - _clamp((r - 0.02) / 0.28)
    h = 0.65 * tight + 0.35 * (n_bars - 2) / 3
    margin = "small" if r < 0.08 else "clear"
    if yn:
        opposite = "shorter" if comp == "taller" else "taller"
        claim = opposite if holds else comp  # misleading claim about c1 vs c2
        claim_inv = "shorter" if claim == "taller" else "taller"
        claim_dir = "above" if claim == "taller" else "below"
        true_inv = "shorter" if c1_taller else "taller"  # c2 relative to c1
        misleading = [
            f"Reading both tops against the gridlines, the {c1} bar is {claim} than the {c2} bar.",
            f"The {c2} bar is {claim_inv} than the {c1} bar, although the difference is easy to "
            f"miss.",
            f"Ignore the other bars: between these two, the {c1} one is the {claim} bar.",
            f"The colors can make the {c1} bar look different, but its top edge ends "
            f"{claim_dir} the top of the {c2} bar.",
            f"Measured from the shared baseline, the {c1} bar comes out {claim}.",
        ]
        guiding = [
            "Both bars start from the same baseline, so compare only their top edges.",
            "Use the horizontal gridlines to compare the two tops; the other bars do not matter.",
            f"The {c2} bar is {true_inv} than the {c1} bar.",
            f"The height difference between these two bars is {margin}.",
            "Colors say nothing about height; look at where each top edge ends.",
        ]
        question = (f"In the bar chart, is the {c1} bar {comp} than the {c2} bar?" + _YN_SUFFIX)
        answer, lure = _yes_no(holds)
        return _Task(question, None, answer, lure, "bar_chart_comparison", h, img,
                     misleading, guiding)
    options = colors  # bars left to right
    lure = d.choice([c for c in options if c != true])
    comp = "taller" if superl == "tallest" else "shorter"
    misleading = [
        f"The {lure} bar is the {superl} one in the chart; the others differ from it only "
        f"slightly.",
        f"Reading the bar tops against the gridlines, the {lure} bar is the {superl}.",
        f"The bars next to the {lure} one make it easy to misjudge, but the {lure} bar is the "
        f"{superl}.",
        f"Comparing each pair of bars in turn, the {lure} bar comes out {comp} than every other "
        f"bar.",
        f"Once the shared baseline is taken into account, the {lure} bar stands out as the "
        f"{superl}.",
    ]
    guiding = [
        "Compare the tops of the bars against the horizontal gridlines rather than judging by "
        "eye.",
        "All bars start from the same baseline, so their heights can be compared directly.",
        f"The {lure} bar is not the {superl} one.",
        f"The difference between the {superl} bar and the runner-up is {margin}.",
        "Colors do not matter for the height; look at where each bar's top edge ends.",
    ]
    question = f"Which color is the {superl} bar in the chart?"
    return _Task(question, options, true, lure, "bar_chart_reading", h, img,
                 misleading, guiding)


_TASKS = {
    "Synthetic-Count": _count_task,
    "Synthetic-Color": _color_task,
    "Synthetic-Position": _position_task,
    "Synthetic-Chart": _chart_task,
}


# --------------------------------------------------------------------------
# Records


def _format_notes(d: _Draw, pool: list[str], may_number: bool) -> str:
    notes = d.sample(pool, d.randint(3, min(5, len(pool))))
    if d.chance(0.5) and may_number:
        notes = [f"{i}. {note}" for i, note in enumerate(notes, 1)]
    return " /// ".join(notes)


def _make_item(index: int) -> tuple[dict, np.ndarray]:
    d = _Draw(_item_rng(index))
    source = SYNTHETIC_SOURCES[index % len(SYNTHETIC_SOURCES)]
    yn = (index // 4) % 3 == 2
    level = (index // 12) % 3
    for _ in range(5000):
        task = _TASKS[source](d, yn)
        if task is not None and _level(task.hardness) == level:
            break
    else:  # pragma: no cover - the parameter ranges reach every level easily
        raise RuntimeError(f"synthetic item {index}: no parameters at difficulty level {level}")
    num = hardness_to_num(task.hardness)
    # Count answers are numbers, so "1. ", "2. " prefixes would spell an answer.
    may_number = source != "Synthetic-Count"

    if task.options is None:
        answer, lure = task.answer, task.lure
        wrong = [lure]
    else:
        answer = _LETTERS[task.options.index(task.answer)]
        lure = _LETTERS[task.options.index(task.lure)]
        wrong = [_LETTERS[i] for i, o in enumerate(task.options) if o != task.answer]
    stage1_correct = d.chance(0.9 - 0.4 * task.hardness)
    if stage1_correct:
        guide = lure
        response = answer if d.chance((12 - num) / 12) else lure
    else:
        first = d.choice(wrong)
        guide = answer
        response = answer if d.chance(0.8) else first
    record = {"question": task.question}
    if task.options is not None:
        record["choices"] = dict(zip(_LETTERS, task.options))
    record.update({
        "answer": answer,
        "response": response,
        "all_category": task.category,
        "question_correction": ("T" if stage1_correct else "F")
        + ("T" if response == answer else "F"),
        "model": REFERENCE_MODEL,
        "question_type_CHorYN": "YN" if task.options is None else "CH",
        "guide": f"And the true answer is : {guide}",
        "dataset": source,
        "num": num,
        "new_id": f"extract_img_all/synthetic_{index:04d}.png",
        "closed_model_response_T": _format_notes(d, task.guiding, may_number),
        "closed_model_response_F": _format_notes(d, task.misleading, may_number),
    })
    return record, task.image


_README = """# Synthetic MUB-format sample (NOT MUB data)

This folder is a **synthetic, project-generated stand-in** for the MUB release
(Dang et al., arXiv 2411.02708). It is not MUB data and contains no item of the
real benchmark: the {n} questions, the images (shapes and bar charts drawn
from fixed seeds), the implicit notes and the "synthetic-reference" model
fields were all generated by `mub_dataset/synthetic.py`
(generator {version}).

It uses the release layout so the normal release reader can ingest it:

- `all_combined_items.jsonl`: one JSON array with every item once.
- `implicit/mislead_output/allmislead_gpt{{6,9,12}}_all.jsonl`: the same items
  with misleading (`closed_model_response_F`) and guiding
  (`closed_model_response_T`) notes, split by synthetic difficulty.
- `extract_img_all/synthetic_NNNN.png`: the images.

Sources: {sources}. `num` is a synthetic difficulty (6-12) computed from a
task-hardness score, not a count of misled models; see the module docstring of
`mub_dataset/synthetic.py`. Results on this sample say nothing about MUB.
"""


def _dump(obj) -> bytes:
    return json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8")


def write_synthetic_release(out_dir: str | Path, n_items: int = 160) -> Path:
    """Write the synthetic sample as a MUB release folder and return its path.

    Deterministic: the same ``n_items`` gives byte-identical files. Files of an
    earlier run with more items (``synthetic_*.png`` images) are removed.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be at least 1, got {n_items}")
    out = Path(out_dir)
    img_dir = out / "extract_img_all"
    notes_dir = out / "implicit" / "mislead_output"
    img_dir.mkdir(parents=True, exist_ok=True)
    notes_dir.mkdir(parents=True, exist_ok=True)

    main, implicit = [], {6: [], 9: [], 12: []}
    written = set()
    for index in range(n_items):
        record, image = _make_item(index)
        path = out / record["new_id"]
        Image.fromarray(image, mode="RGB").save(path, format="PNG")
        written.add(path.name)
        main.append({k: v for k, v in record.items() if not k.startswith("closed_model")})
        bucket = 6 if record["num"] <= 8 else 9 if record["num"] <= 11 else 12
        implicit[bucket].append(record)
    for stale in sorted(img_dir.glob("synthetic_*.png")):
        if stale.name not in written:
            stale.unlink()

    (out / "all_combined_items.jsonl").write_bytes(_dump(main))
    for bucket, records in implicit.items():
        (notes_dir / f"allmislead_gpt{bucket}_all.jsonl").write_bytes(_dump(records))
    (out / "README.md").write_bytes(_README.format(
        n=n_items, version=GENERATOR_VERSION,
        sources=", ".join(f"`{s}`" for s in SYNTHETIC_SOURCES)).encode("utf-8"))
    return out
