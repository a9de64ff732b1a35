"""How many items a paired comparison of two models' misleading rates needs.

Two models answer the same items. An item enters the comparison when both
answered it correctly at stage 1 (it is in both models' mr_t2f denominator);
on those items each model either holds or flips under the cue, so the pair of
flip indicators is a 2x2 table and the comparison is McNemar's test on the
discordant items (A flips and B holds, or the reverse):

    p_a, p_b   each model's flip rate on the shared items (mr_t2f there)
    r          the correlation (phi) between the two flip indicators
    q          the share of all items both models answer correctly at stage 1

Power is computed exactly for the two-sided asymptotic McNemar test
(|n01 - n10| / sqrt(n01 + n10) >= z): the number of discordant items is
Binomial(n, psi) with psi = p10 + p01, and given it, n01 is Binomial(d, p01/psi);
power sums the rejection probability over both. The items needed are the
smallest n of shared items reaching the power, divided by q. The closed form of
Connor (1987) approximates the same quantity; tests/test_power.py checks the two
against each other and against a simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from mub.report.compare import ItemOutcomes

DEFAULT_ALPHA = 0.05
DEFAULT_POWER = 0.8
MAX_ITEMS = 10_000_000  # beyond this a difference is, for MUB's purposes, undetectable
_TAIL_SDS = 9.0  # binomial mass beyond this many standard deviations is below 1e-18


@dataclass(frozen=True)
class PairedFlips:
    """The joint distribution of two models' flip indicators on the items both answered correctly at stage 1."""

    p_a: float
    p_b: float
    corr: float
    shared_share: float = 1.0  # q: share of all items in the comparison

    def __post_init__(self) -> None:
        for name in ("p_a", "p_b"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a rate between 0 and 1, got {value}")
        if not -1.0 <= self.corr <= 1.0:
            raise ValueError(f"the correlation must be between -1 and 1, got {self.corr}")
        if not 0.0 < self.shared_share <= 1.0:
            raise ValueError(f"the share of items both models answer correctly must be in (0, 1], got {self.shared_share}")

    @property
    def both(self) -> float:
        """P(both flip), clipped to what the two rates allow (a stated correlation may be out of reach)."""
        spread = math.sqrt(self.p_a * (1 - self.p_a) * self.p_b * (1 - self.p_b))
        joint = self.p_a * self.p_b + self.corr * spread
        return min(max(joint, max(0.0, self.p_a + self.p_b - 1.0)), min(self.p_a, self.p_b))

    @property
    def only_a(self) -> float:
        return self.p_a - self.both

    @property
    def only_b(self) -> float:
        return self.p_b - self.both

    @property
    def discordant(self) -> float:
        return self.only_a + self.only_b


def _log_factorials(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def _binomial_window(n: int, p: float) -> tuple[int, int]:
    """The counts of Binomial(n, p) that carry all but a negligible mass."""
    spread = _TAIL_SDS * math.sqrt(n * p * (1 - p)) + 1
    return max(0, int(n * p - spread)), min(n, int(math.ceil(n * p + spread)))


def _binomial_pmf(counts: np.ndarray, n: int | np.ndarray, p: float, log_fact: np.ndarray) -> np.ndarray:
    if p <= 0.0:
        return (counts == 0).astype(np.float64)
    if p >= 1.0:
        return (counts == n).astype(np.float64)
    log_pmf = log_fact[n] - log_fact[counts] - log_fact[n - counts] + counts * math.log(p) + (n - counts) * math.log1p(-p)
    return np.exp(log_pmf)


def mcnemar_power(flips: PairedFlips, n_shared: int, alpha: float = DEFAULT_ALPHA) -> float:
    """Power of the two-sided asymptotic McNemar test at level ``alpha`` on ``n_shared`` shared items."""
    psi = flips.discordant
    if n_shared <= 0 or psi <= 0.0:
        return 0.0
    z = NormalDist().inv_cdf(1 - alpha / 2)
    share_b = flips.only_b / psi
    log_fact = _log_factorials(n_shared)
    low, high = _binomial_window(n_shared, psi)
    discordant = np.arange(max(low, 1), high + 1)
    weights = _binomial_pmf(discordant, n_shared, psi, log_fact)
    power = 0.0
    for d, weight in zip(discordant.tolist(), weights.tolist()):
        if weight < 1e-18:
            continue
        # Reject when |2 n01 - d| >= z sqrt(d): n01 at or beyond these bounds.
        upper = math.ceil((d + z * math.sqrt(d)) / 2 - 1e-12)
        lower = math.floor((d - z * math.sqrt(d)) / 2 + 1e-12)
        w_low, w_high = _binomial_window(d, share_b)
        counts = np.arange(w_low, w_high + 1)
        pmf = _binomial_pmf(counts, d, share_b, log_fact)
        power += weight * float(pmf[(counts >= upper) | (counts <= lower)].sum())
    return min(power, 1.0)


def connor_items(flips: PairedFlips, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER) -> float:
    """Connor's (1987) closed-form number of shared items for McNemar's test (not rounded)."""
    psi, delta = flips.discordant, flips.only_b - flips.only_a
    if delta == 0.0:
        return math.inf
    z_alpha, z_beta = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    return (z_alpha * math.sqrt(psi) + z_beta * math.sqrt(psi - delta**2)) ** 2 / delta**2


@dataclass(frozen=True)
class PowerAnswer:
    """Items needed for a paired comparison, and what the current items can detect."""

    flips: PairedFlips
    alpha: float
    power: float
    shared_items_needed: int | None  # None: the difference is 0 or beyond MAX_ITEMS
    items_needed: int | None  # shared_items_needed / shared_share, rounded up
    n_items: int | None  # the items a pilot has (None for stated rates)
    power_now: float | None  # power at the pilot's shared items
    minimal_detectable_difference: float | None  # at the pilot's shared items, for p_b above p_a


def shared_items_needed(flips: PairedFlips, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER) -> int | None:
    """The smallest number of shared items at which the test reaches ``power`` (None if never, within MAX_ITEMS)."""
    if flips.only_a == flips.only_b:
        return None
    high = 2
    while mcnemar_power(flips, high, alpha) < power:
        high *= 2
        if high > MAX_ITEMS:
            return None
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        if mcnemar_power(flips, middle, alpha) >= power:
            high = middle
        else:
            low = middle
    return high


def minimal_detectable_difference(
    p_a: float, corr: float, n_shared: int, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER
) -> float | None:
    """The smallest rise of p_b over p_a that ``n_shared`` items detect with ``power`` (None: not even at 1)."""
    if n_shared <= 0 or mcnemar_power(PairedFlips(p_a, 1.0, corr), n_shared, alpha) < power:
        return None
    low, high = p_a, 1.0
    for _ in range(40):  # bisection to about 1e-12
        middle = (low + high) / 2
        if mcnemar_power(PairedFlips(p_a, middle, corr), n_shared, alpha) >= power:
            high = middle
        else:
            low = middle
    return high - p_a


def pilot_flips(a: ItemOutcomes, b: ItemOutcomes) -> tuple[PairedFlips, int]:
    """Rates, correlation and shared share estimated from two runs on the same items (see ``match_items``).

    Returns the estimate and the number of shared items (both correct at stage 1).
    """
    shared = a.correct_before & b.correct_before
    n_shared = int(shared.sum())
    if n_shared == 0:
        raise ValueError("no item was answered correctly at stage 1 by both runs: nothing to compare")
    flip_a = (~a.correct_after[shared]).astype(np.float64)
    flip_b = (~b.correct_after[shared]).astype(np.float64)
    p_a, p_b = float(flip_a.mean()), float(flip_b.mean())
    spread = math.sqrt(p_a * (1 - p_a) * p_b * (1 - p_b))
    corr = 0.0 if spread == 0 else float(((flip_a * flip_b).mean() - p_a * p_b) / spread)
    return PairedFlips(p_a, p_b, max(-1.0, min(1.0, corr)), n_shared / len(shared)), n_shared


def answer(
    flips: PairedFlips, *, alpha: float = DEFAULT_ALPHA, power: float = DEFAULT_POWER, n_shared: int | None = None,
    n_items: int | None = None,
) -> PowerAnswer:
    """Items needed for ``flips``; with a pilot's ``n_shared``, also its power and minimal detectable difference."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be between 0 and 1 (exclusive), got {alpha} and {power}")
    shared = shared_items_needed(flips, alpha, power)
    total = None if shared is None else math.ceil(shared / flips.shared_share)
    power_now = mdd = None
    if n_shared is not None:
        power_now = mcnemar_power(flips, n_shared, alpha)
        mdd = minimal_detectable_difference(flips.p_a, flips.corr, n_shared, alpha, power)
    return PowerAnswer(flips, alpha, power, shared, total, n_items, power_now, mdd)


def format_answer(result: PowerAnswer) -> str:
    """The lines `mub power` prints."""
    f = result.flips
    lines = [
        f"mr_t2f on items both models answer correctly at stage 1: A {f.p_a:.4f}, B {f.p_b:.4f} "
        f"(difference {f.p_b - f.p_a:+.4f}); flip correlation {f.corr:.3f}; "
        f"share of items both answer correctly {f.shared_share:.3f}",
        f"paired test: McNemar, two-sided, alpha {result.alpha:g}, power {result.power:g}",
    ]
    if result.items_needed is None:
        lines.append("items needed: none suffice (the two rates are equal, or the difference needs more than "
                     f"{MAX_ITEMS:,} items)")
    else:
        lines.append(f"items needed: {result.items_needed:,} ({result.shared_items_needed:,} answered correctly by both)")
    if result.n_items is not None:
        lines.append(f"power with the pilot's {result.n_items:,} items: {result.power_now:.3f}")
        mdd = result.minimal_detectable_difference
        lines.append(
            "minimal detectable difference at these items: "
            + ("none (too few shared items)" if mdd is None else f"{mdd:.4f} in mr_t2f above A's {f.p_a:.4f}")
        )
    return "\n".join(lines)
