"""`mub power`: items needed for a paired comparison of misleading rates.

Expectations come from outside mub.report.power: Connor's (1987) closed form for
McNemar's test, written out here, and a simulation of the test itself.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from mub.cli import main
from mub.report import power
from mub.report.compare import ItemOutcomes

# (p_a, p_b, corr): MUB-like rates on the items both models answer correctly; differences of 2 to 7 points,
# where a comparison needs hundreds to thousands of items. (At 10 points, about 180 items, Connor's formula
# asks for 2.5% more than the exact power does; the simulation below sides with the exact figure.)
REALISTIC = [(0.30, 0.37, 0.5), (0.60, 0.65, 0.3), (0.70, 0.72, 0.6), (0.45, 0.38, 0.2), (0.80, 0.85, 0.4)]


def _cells(p_a: float, p_b: float, corr: float) -> tuple[float, float]:
    """P(only A flips), P(only B flips) for two correlated Bernoulli flips."""
    both = p_a * p_b + corr * math.sqrt(p_a * (1 - p_a) * p_b * (1 - p_b))
    return p_a - both, p_b - both


def _connor(p_a: float, p_b: float, corr: float, alpha: float = 0.05, target: float = 0.8) -> float:
    only_a, only_b = _cells(p_a, p_b, corr)
    psi, delta = only_a + only_b, only_b - only_a
    z_a, z_b = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(target)
    return (z_a * math.sqrt(psi) + z_b * math.sqrt(psi - delta**2)) ** 2 / delta**2


def _simulated_power(p_a: float, p_b: float, corr: float, n: int, trials: int = 20000, seed: int = 0) -> float:
    """Share of simulated studies of n shared items in which McNemar's asymptotic test rejects at 0.05."""
    only_a, only_b = _cells(p_a, p_b, corr)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [only_a, only_b, 1 - only_a - only_b], size=trials)
    n10, n01 = counts[:, 0], counts[:, 1]
    discordant = n10 + n01
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.abs(n01 - n10) / np.sqrt(discordant)
    return float(np.mean(np.nan_to_num(statistic) >= NormalDist().inv_cdf(0.975)))


@pytest.mark.parametrize(("p_a", "p_b", "corr"), REALISTIC)
def test_items_needed_agree_with_connors_closed_form_within_two_percent(p_a: float, p_b: float, corr: float) -> None:
    needed = power.shared_items_needed(power.PairedFlips(p_a, p_b, corr))
    expected = _connor(p_a, p_b, corr)
    assert abs(needed - expected) <= 0.02 * expected, (needed, expected)


@pytest.mark.parametrize(("p_a", "p_b", "corr"), [(0.30, 0.40, 0.5), *REALISTIC[:2]])
def test_items_needed_reach_the_power_in_a_simulation_and_fewer_do_not(p_a: float, p_b: float, corr: float) -> None:
    needed = power.shared_items_needed(power.PairedFlips(p_a, p_b, corr))
    # 20,000 simulated studies: the standard error of a power near 0.8 is 0.003.
    assert abs(_simulated_power(p_a, p_b, corr, needed) - 0.8) < 0.015
    assert _simulated_power(p_a, p_b, corr, int(needed * 0.8), seed=1) < 0.77


def test_exact_power_equals_the_simulated_power_at_small_n() -> None:
    flips = power.PairedFlips(0.3, 0.45, 0.1)
    for n in (20, 60, 150):
        assert abs(power.mcnemar_power(flips, n) - _simulated_power(0.3, 0.45, 0.1, n, seed=n)) < 0.012


def test_the_share_of_items_both_answer_correctly_scales_the_items_needed() -> None:
    full = power.answer(power.PairedFlips(0.3, 0.4, 0.5))
    half = power.answer(power.PairedFlips(0.3, 0.4, 0.5, shared_share=0.4))
    assert half.shared_items_needed == full.shared_items_needed
    assert half.items_needed == math.ceil(full.shared_items_needed / 0.4)


def test_equal_rates_need_no_finite_number_of_items() -> None:
    result = power.answer(power.PairedFlips(0.5, 0.5, 0.3))
    assert result.items_needed is None and result.shared_items_needed is None


def test_minimal_detectable_difference_inverts_the_items_needed() -> None:
    for p_a, p_b, corr in REALISTIC:
        if p_b < p_a:
            continue
        needed = power.shared_items_needed(power.PairedFlips(p_a, p_b, corr))
        detectable = power.minimal_detectable_difference(p_a, corr, needed)
        # At exactly the items needed for p_b - p_a, that difference is (just) detectable.
        assert detectable <= p_b - p_a + 1e-9
        assert detectable > p_b - p_a - 0.01
        assert power.mcnemar_power(power.PairedFlips(p_a, p_a + detectable, corr), needed) >= 0.8


def test_pilot_estimates_are_the_counts_of_the_shared_items() -> None:
    # 10 items. Both correct at stage 1 on items 0-7; A flips 0, 1, 2; B flips 1, 2, 3, 4.
    before_a = np.array([True] * 8 + [True, False])
    before_b = np.array([True] * 8 + [False, True])
    after_a = np.array([False, False, False] + [True] * 7)
    after_b = np.array([True, False, False, False, False] + [True] * 5)
    ids = tuple(str(i) for i in range(10))
    flips, n_shared = power.pilot_flips(ItemOutcomes(ids, before_a, after_a), ItemOutcomes(ids, before_b, after_b))
    assert n_shared == 8 and flips.shared_share == 0.8
    assert flips.p_a == 3 / 8 and flips.p_b == 4 / 8
    # phi from the 2x2 table: both 2, only A 1, only B 2, neither 3
    phi = (2 * 3 - 1 * 2) / math.sqrt(3 * 5 * 4 * 4)
    assert flips.corr == pytest.approx(phi)
    assert flips.both == pytest.approx(2 / 8)


def test_stated_rates_out_of_range_are_refused_in_one_line(capsys) -> None:
    assert main(["power", "--rates", "0.3", "1.3"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


def test_cli_prints_the_items_needed(capsys) -> None:
    assert main(["power", "--rates", "0.3", "0.4", "--corr", "0.5", "--shared-share", "0.5"]) == 0
    out = capsys.readouterr().out
    shared = power.shared_items_needed(power.PairedFlips(0.3, 0.4, 0.5))
    assert f"items needed: {math.ceil(shared / 0.5):,} ({shared:,} answered correctly by both)" in out
