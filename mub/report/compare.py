"""Paired comparison of two runs on the same items: a bootstrap over items.

Runs that draw items several times (the paper preset: once per release copy)
are paired draw by draw, on the draws both made, and resampled by item: an
item's draws stay together, as the metric's intervals cluster them.

Two models answered the same items, so their misleading rates are correlated
(an item that is hard for one tends to be hard for the other). Resampling
items, and recomputing both rates on each resample, keeps that pairing; the
interval of the difference is then narrower and more honest than comparing two
independent Wilson intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from mub.protocol.stages import same_answer
from mub.runs.predictions import DrawKey, ItemPrediction

DEFAULT_BOOTSTRAP = 2000
_CHUNK = 256  # resamples per matrix product: bounds memory to _CHUNK x n_items
# Most resamples: each is kept (8 bytes) and costs a pass over the items; 1e5 puts the percentile
# interval's Monte Carlo error far below its width, while 1e9 ran for minutes with no bound.
MAX_BOOTSTRAP = 100_000


@dataclass(frozen=True)
class ItemOutcomes:
    """Per-draw stage-1 and stage-2 correctness of one run, aligned with ``item_ids`` (an item's id once per
    draw: the bootstrap resamples items, each with all its draws)."""

    item_ids: tuple[str, ...]
    correct_before: np.ndarray  # bool
    correct_after: np.ndarray  # bool


@dataclass(frozen=True)
class PairedBootstrap:
    """Difference ``mr_t2f(b) - mr_t2f(a)`` on the items both runs scored."""

    n_items: int
    mr_t2f_a: float | None
    mr_t2f_b: float | None
    difference: float | None
    ci: tuple[float, float] | None  # 95% percentile interval of the difference
    p_value: float | None  # two-sided, from the bootstrap distribution
    significant: bool  # the 95% interval excludes zero
    n_boot: int
    seed: int


def outcomes(predictions: Sequence[ItemPrediction]) -> dict[DrawKey, tuple[bool, bool]]:
    """(item id, draw) -> (stage 1 correct, stage 2 correct); draws with errors are left out, as in the metric."""
    return {
        p.draw_key: (same_answer(p.original_prediction, p.answer), same_answer(p.prediction, p.answer))
        for p in predictions
        if p.error is None
    }


def match_items(
    a: Mapping[DrawKey, tuple[bool, bool]], b: Mapping[DrawKey, tuple[bool, bool]]
) -> tuple[ItemOutcomes, ItemOutcomes]:
    """Both runs restricted to the draws they share, in one order."""
    common = tuple(sorted(set(a) & set(b)))
    item_ids = tuple(item for item, _ in common)

    def aligned(run: Mapping[DrawKey, tuple[bool, bool]]) -> ItemOutcomes:
        pairs = np.array([run[key] for key in common], dtype=bool).reshape(len(common), 2)
        return ItemOutcomes(item_ids, pairs[:, 0], pairs[:, 1])

    return aligned(a), aligned(b)


def _rate(flips: np.ndarray, base: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return flips / base


def _mr_t2f(run: ItemOutcomes) -> float | None:
    n_t = int(run.correct_before.sum())
    return None if n_t == 0 else float((run.correct_before & ~run.correct_after).sum() / n_t)


def check_bootstrap(n_boot: int) -> None:
    """Refuse a number of resamples outside 1 to MAX_BOOTSTRAP (``mub report --bootstrap``)."""
    if not 1 <= n_boot <= MAX_BOOTSTRAP:
        raise ValueError(f"--bootstrap is {n_boot}; give 1 to {MAX_BOOTSTRAP} resamples (memory and time grow with it)")


def paired_bootstrap(
    a: ItemOutcomes, b: ItemOutcomes, *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> PairedBootstrap:
    """Bootstrap the difference in misleading rate, resampling items jointly for both runs.

    Resamples in which either run has no correct stage-1 item (rate undefined)
    are dropped. Significance at 95% means the percentile interval excludes 0.
    """
    check_bootstrap(n_boot)
    if a.item_ids != b.item_ids:
        raise ValueError("paired_bootstrap needs both runs on the same items in the same order (use match_items)")
    code = {item: number for number, item in enumerate(dict.fromkeys(a.item_ids))}  # in order of appearance
    item_codes = np.array([code[item] for item in a.item_ids], dtype=np.int64)
    n = len(code)  # items; each resample draws n of them, each with all its draws
    mr_a, mr_b = _mr_t2f(a), _mr_t2f(b)
    if n == 0 or mr_a is None or mr_b is None:
        return PairedBootstrap(n, mr_a, mr_b, None, None, None, False, n_boot, seed)
    per_draw = np.stack(
        [a.correct_before, a.correct_before & ~a.correct_after, b.correct_before, b.correct_before & ~b.correct_after],
        axis=1,
    ).astype(np.float64)
    columns = np.zeros((n, per_draw.shape[1]))
    np.add.at(columns, item_codes, per_draw)  # per item: its draws' counts
    rng = np.random.default_rng(seed)
    differences = []
    for start in range(0, n_boot, _CHUNK):
        # Multinomial counts are the same as drawing n items with replacement.
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=min(_CHUNK, n_boot - start))
        t_a, f_a, t_b, f_b = (weights @ columns).T
        differences.append(_rate(f_b, t_b) - _rate(f_a, t_a))
    diffs = np.concatenate(differences)
    diffs = diffs[np.isfinite(diffs)]
    low, high = (float(x) for x in np.percentile(diffs, [2.5, 97.5]))
    p_value = min(1.0, 2.0 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return PairedBootstrap(n, mr_a, mr_b, mr_b - mr_a, (low, high), p_value, low > 0 or high < 0, n_boot, seed)


def compare_predictions(
    a: Sequence[ItemPrediction], b: Sequence[ItemPrediction], *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> PairedBootstrap:
    """Paired bootstrap of two runs' predictions, matched by (item id, draw), resampled by item."""
    return paired_bootstrap(*match_items(outcomes(a), outcomes(b)), n_boot=n_boot, seed=seed)
