"""Tests of the `mub_misleading_rate` evaluate metric (issue 3): hand-computed figures, intervals,
the McNemar test, breakdowns, the bootstrap, add_batch, the consistency config, bad inputs and the
metric card's examples."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import random
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

# Loading a local module folder needs no network; make sure nothing tries.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import mub_metric  # noqa: E402

CARD = Path(mub_metric.PATH) / "README.md"
SCRIPT = Path(mub_metric.PATH) / "mub_misleading_rate.py"
Z = 1.959963984540054  # 97.5% standard-normal quantile


def _load_script() -> Any:
    """The module script imported directly, to test its pure functions without evaluate."""
    spec = importlib.util.spec_from_file_location("mub_misleading_rate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mm = _load_script()


@pytest.fixture(scope="module")
def metric():
    return mub_metric.load()


@pytest.fixture()
def fresh():
    """A metric with nothing added, for tests that add batches or leave bad state behind."""
    return mub_metric.load()


@pytest.fixture(scope="module")
def consistency():
    return mub_metric.load("consistency")


def wilson_reference(k: int, m: int) -> list[float]:
    """Wilson interval in its other algebraic form, (2k + z² ± z√(z² + 4k(m−k)/m)) / (2(m + z²))."""
    root = Z * math.sqrt(Z * Z + 4 * k * (m - k) / m)
    return [(2 * k + Z * Z - root) / (2 * (m + Z * Z)), (2 * k + Z * Z + root) / (2 * (m + Z * Z))]


def assert_plain_json(value: Any) -> None:
    """Only int/float/str/bool/None/list/dict, no NaN: what json.dumps(allow_nan=False) accepts unchanged."""
    json.dumps(value, allow_nan=False)
    if isinstance(value, dict):
        for item in value.values():
            assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item)
    else:
        assert value is None or type(value) in (int, float, str, bool), type(value)


# ------------------------------------------------------------------ a hand-computed example

# (stage-1 answer, stage-2 answer, reference, difficulty)
ROWS = [
    ("A", "A", "A", "low"),  # T, kept, consistent
    (" a", "B", "A", "low"),  # T (trim + case), t2f
    ("A", None, "A", "medium"),  # T, t2f, unparsed after
    ("A", "", "A", "medium"),  # T, t2f, unparsed after (empty)
    ("yes", " YES", "Yes", "high"),  # T, kept, consistent
    ("Yes", "No", "yes", "high"),  # T, t2f
    ("B", "b ", "A", "low"),  # F, still wrong, consistent
    (None, "C", "A", "medium"),  # F, unparsed before
    ("", "", "A", "high"),  # F, unparsed both: not consistent
    ("No", "no", "Yes", "high"),  # F, consistent
]
ORIGINALS, PREDICTIONS, REFERENCES, DIFFICULTY = (list(column) for column in zip(*ROWS))

EXPECTED_COUNTS = {"n": 10, "n_t": 6, "n_f": 4, "t2f": 4, "f2t": 0, "unparsed_before": 2, "unparsed_after": 3}
# rate -> (numerator, denominator), by hand from the comments above
EXPECTED_RATES = {
    "mr_t2f": (4, 6),
    "mr_f2t": (0, 4),
    "accuracy_before": (6, 10),
    "accuracy_after": (2, 10),
    "consistency": (4, 10),
}


def compute_rows(metric, **extra):
    return metric.compute(predictions=PREDICTIONS, original_predictions=ORIGINALS, references=REFERENCES, **extra)


def test_hand_computed_counts_rates_and_intervals(metric):
    result = compute_rows(metric)
    assert list(result) == [
        "n", "n_t", "n_f", "t2f", "f2t", "unparsed_before", "unparsed_after",
        "mr_t2f", "mr_t2f_ci", "mr_f2t", "mr_f2t_ci", "accuracy_before", "accuracy_before_ci",
        "accuracy_after", "accuracy_after_ci", "consistency", "consistency_ci", "mcnemar_p",
    ]  # fmt: skip
    assert {key: result[key] for key in EXPECTED_COUNTS} == EXPECTED_COUNTS
    for name, (k, m) in EXPECTED_RATES.items():
        assert result[name] == k / m
        assert result[f"{name}_ci"] == pytest.approx(wilson_reference(k, m), abs=1e-12)
    # McNemar on (t2f, f2t) = (4, 0): 2 * P(X <= 0), X ~ Bin(4, 1/2) = 2/16.
    assert result["mcnemar_p"] == 0.125
    assert_plain_json(result)


def test_empty_denominator_gives_none_not_nan(metric):
    result = metric.compute(predictions=["A", "B"], original_predictions=["A", "A"], references=["A", "A"])
    assert (result["n_f"], result["mr_f2t"], result["mr_f2t_ci"]) == (0, None, None)
    assert result["mr_t2f"] == 0.5
    assert_plain_json(result)


@pytest.mark.parametrize(
    "k, m, expected",
    [
        (8, 10, (0.4902, 0.9433)),
        (5, 10, (0.2366, 0.7634)),
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (1, 2, (0.0945, 0.9055)),
    ],
)
def test_wilson_known_values(k, m, expected):
    assert mm.wilson_interval(k, m) == pytest.approx(expected, abs=5e-5)


def test_wilson_edges_and_errors():
    assert mm.wilson_interval(0, 0) is None
    low, high = mm.wilson_interval(0, 7)
    assert low == 0.0 and 0 < high < 1
    with pytest.raises(ValueError, match="successes"):
        mm.wilson_interval(3, 2)


@pytest.mark.parametrize(
    "b, c, p",
    [
        (1, 8, 0.0390625),  # 2 * (1 + 9) / 512
        (8, 1, 0.0390625),
        (0, 0, 1.0),
        (4, 0, 0.125),
        (0, 10, 0.001953125),  # 2 / 1024
        (2, 8, 0.109375),  # 2 * (1 + 10 + 45) / 1024
        (5, 5, 1.0),
        (3, 2, 1.0),
    ],
)
def test_mcnemar_exact_hand_values(b, c, p):
    assert mm.mcnemar_exact_p(b, c) == p


def exact_two_sided(b: int, c: int) -> float:
    n, k = b + c, min(b, c)
    return float(min(Fraction(1), 2 * Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)))


@pytest.mark.parametrize("b, c", [(600, 500), (700, 650), (2000, 1900), (5000, 100)])
def test_mcnemar_large_counts_match_exact_big_integers(b, c):
    assert b + c > mm.EXACT_BINOMIAL_LIMIT  # these take the floating-point path
    assert mm.mcnemar_exact_p(b, c) == pytest.approx(exact_two_sided(b, c), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("k, n", [(0, 1), (3, 9), (40, 100), (450, 1000), (500, 1000)])
def test_log_space_tail_matches_exact_tail(k, n):
    exact = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)
    assert mm.binomial_half_lower_tail(k, n) == pytest.approx(float(exact), rel=1e-10)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="discordant"):
        mm.mcnemar_exact_p(-1, 2)


# ------------------------------------------------------------------ breakdowns


def test_breakdowns_and_levels_mean(metric):
    source = ["MMMU", "MME", "MMMU", "MME", "MMMU", "MME", "MMMU", "MME", "MMMU", "MME"]
    question_type = ["CH"] * 4 + ["YN"] * 2 + ["CH"] * 3 + ["YN"]
    result = compute_rows(metric, difficulty=DIFFICULTY, source=source, question_type=question_type)
    by_difficulty = result["by_difficulty"]
    assert list(by_difficulty) == ["low", "medium", "high"]
    # low: rows 1, 2, 7; medium: rows 3, 4, 8; high: rows 5, 6, 9, 10
    expected = {
        "low": {"n": 3, "n_t": 2, "n_f": 1, "t2f": 1, "f2t": 0, "unparsed_before": 0, "unparsed_after": 0},
        "medium": {"n": 3, "n_t": 2, "n_f": 1, "t2f": 2, "f2t": 0, "unparsed_before": 1, "unparsed_after": 2},
        "high": {"n": 4, "n_t": 2, "n_f": 2, "t2f": 1, "f2t": 0, "unparsed_before": 1, "unparsed_after": 1},
    }
    for level, counts in expected.items():
        figures = by_difficulty[level]
        assert {key: figures[key] for key in counts} == counts
        assert figures["mr_t2f"] == counts["t2f"] / counts["n_t"]
        assert figures["mr_t2f_ci"] == pytest.approx(wilson_reference(counts["t2f"], counts["n_t"]), abs=1e-12)
        assert set(figures).isdisjoint({"by_difficulty", "by_source", "by_question_type", "mr_t2f_levels_mean"})
    assert by_difficulty["high"]["consistency"] == 2 / 4  # rows 5 and 10
    assert result["mr_t2f_levels_mean"] == (1 / 2 + 2 / 2 + 1 / 2) / 3
    assert list(result["by_source"]) == ["MME", "MMMU"]
    # MMMU: rows 1, 3, 5, 7, 9 -> T rows 1, 3, 5, of which row 3 flips
    assert (result["by_source"]["MMMU"]["n_t"], result["by_source"]["MMMU"]["t2f"]) == (3, 1)
    # YN: rows 5, 6, 10 -> T rows 5, 6, of which row 6 flips; row 10 is F and stays wrong
    yes_no = result["by_question_type"]["YN"]
    assert (yes_no["n"], yes_no["n_t"], yes_no["t2f"], yes_no["mr_f2t"]) == (3, 2, 1, 0.0)
    # The overall figures are unchanged by asking for breakdowns.
    assert {key: result[key] for key in EXPECTED_COUNTS} == EXPECTED_COUNTS
    assert_plain_json(result)


def test_levels_mean_skips_levels_without_t_items_in_level_order(metric):
    result = metric.compute(
        predictions=["B", "A", "A", "A"],
        original_predictions=["A", "A", "B", "A"],
        references=["A", "A", "A", "A"],
        difficulty=["high", "low", "high", "medium"],
    )
    assert list(result["by_difficulty"]) == ["low", "medium", "high"]
    assert result["by_difficulty"]["high"]["mr_t2f"] == 1.0  # row 2 is an F item: not in the rate
    assert result["mr_t2f_levels_mean"] == (0.0 + 0.0 + 1.0) / 3
    result = metric.compute(predictions=["A", "A"], original_predictions=["A", "B"], references=["A", "A"], difficulty=["low", "high"])
    assert result["by_difficulty"]["high"]["mr_t2f"] is None  # its only row is an F item
    assert result["mr_t2f_levels_mean"] == 0.0  # low only
    only_f = metric.compute(predictions=["A"], original_predictions=["B"], references=["A"], difficulty=["low"])
    assert only_f["mr_t2f_levels_mean"] is None


def test_no_breakdown_keys_without_labels(metric):
    result = compute_rows(metric)
    assert not {"by_difficulty", "by_source", "by_question_type", "mr_t2f_levels_mean"} & set(result)


def test_vectorised_counts_match_a_plain_loop(metric):
    rng = random.Random(7)
    answers = ["A", "b", " B", "c", "", None, "yes", "YES"]
    n = 3000
    rows = [
        (rng.choice(answers), rng.choice(answers), rng.choice(["A", "B", "yes"]), rng.choice("xyz")) for _ in range(n)
    ]
    originals, predictions, references, sources = (list(column) for column in zip(*rows))
    result = metric.compute(
        predictions=predictions, original_predictions=originals, references=references, source=sources
    )

    def key(answer):
        return answer.strip().lower() if answer and answer.strip() else None

    for label in "xyz":
        picked = [row for row in rows if row[3] == label]
        before_ok = [key(o) == key(r) for o, p, r, _ in picked]
        after_ok = [key(p) == key(r) for o, p, r, _ in picked]
        figures = result["by_source"][label]
        assert figures["n_t"] == sum(before_ok)
        assert figures["t2f"] == sum(b and not a for b, a in zip(before_ok, after_ok))
        assert figures["f2t"] == sum(a and not b for b, a in zip(before_ok, after_ok))
        assert figures["unparsed_after"] == sum(key(p) is None for _, p, _, _ in picked)
        same = sum(key(p) is not None and key(p) == key(o) for o, p, _, _ in picked)
        assert figures["consistency"] == same / len(picked)


# ------------------------------------------------------------------ confidences


def test_confidence_figures_overall_and_per_group(metric):
    before = [0.9, 0.8, 0.7, 0.6, 0.95, 0.5, 0.4, 0.3, 0.2, 0.65]
    after = [0.85, 0.1, 0.2, 0.3, 0.9, 0.2, 0.4, 0.1, 0.2, 0.6]
    result = compute_rows(metric, original_confidence=before, confidence_on_original_after=after, difficulty=DIFFICULTY)
    assert result["confidence_before"] == pytest.approx(sum(before) / 10)
    assert result["confidence_after_on_original"] == pytest.approx(sum(after) / 10)
    assert result["confidence_drop"] == pytest.approx((sum(before) - sum(after)) / 10)
    low = result["by_difficulty"]["low"]  # rows 1, 2, 7
    assert low["confidence_before"] == pytest.approx((0.9 + 0.8 + 0.4) / 3)
    assert low["confidence_drop"] == pytest.approx((0.9 + 0.8 + 0.4 - 0.85 - 0.1 - 0.4) / 3)
    assert_plain_json(result)


def test_confidences_all_missing_means_not_given(metric):
    result = compute_rows(metric, original_confidence=[None] * 10, confidence_on_original_after=[float("nan")] * 10)
    assert "confidence_before" not in result


def test_confidence_numpy_input(metric):
    result = compute_rows(metric, original_confidence=np.full(10, 0.5), confidence_on_original_after=np.zeros(10))
    assert (result["confidence_before"], result["confidence_drop"]) == (0.5, 0.5)


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_deterministic_with_seed(metric):
    groups = ["g1", "g1", "g2", "g2", "g3", "g3", "g4", "g4", "g5", "g5"]
    first = compute_rows(metric, group_id=groups, difficulty=DIFFICULTY, bootstrap=500, seed=3)
    again = compute_rows(metric, group_id=groups, difficulty=DIFFICULTY, bootstrap=500, seed=3)
    assert first == again
    for name in EXPECTED_RATES:
        low, high = first[f"{name}_bootstrap_ci"]
        assert 0.0 <= low <= first[name] <= high <= 1.0
        assert f"{name}_bootstrap_ci" in first["by_difficulty"]["low"]
    assert first["mr_f2t_bootstrap_ci"] == [0.0, 0.0]  # f2t = 0 in every resample
    assert_plain_json(first)


def test_cluster_bootstrap_is_wider_than_row_bootstrap_for_correlated_clusters(metric):
    # Two images: every T item of img1 flips, no T item of img2 does. Resampling images gives
    # mr_t2f in {0, 0.5, 1}; resampling rows averages 20 roughly independent flips.
    n = 20
    kwargs = dict(predictions=["B"] * 10 + ["A"] * 10, original_predictions=["A"] * n, references=["A"] * n)
    clustered = metric.compute(**kwargs, group_id=["img1"] * 10 + ["img2"] * 10, bootstrap=2000, seed=0)
    rows = metric.compute(**kwargs, bootstrap=2000, seed=0)
    assert clustered["mr_t2f_bootstrap_ci"] == [0.0, 1.0]
    low, high = rows["mr_t2f_bootstrap_ci"]
    assert 0.2 <= low < 0.5 < high <= 0.8


def test_bootstrap_undefined_rate_is_none(metric):
    result = metric.compute(
        predictions=["A", "B"], original_predictions=["A", "A"], references=["A", "A"], bootstrap=50, seed=1
    )
    assert result["mr_f2t_bootstrap_ci"] is None


def test_multinomial_bootstrap_matches_naive_cluster_resampling():
    rng = np.random.default_rng(11)
    clusters = rng.integers(0, 4, size=(60, len(mm.COUNT_FIELDS)))
    clusters[:, mm.FIELD_INDEX["n"]] += 4  # denominators well above 0
    fast = mm.cluster_bootstrap_intervals(clusters, 20000, np.random.default_rng(1))
    picks = np.random.default_rng(2).integers(0, 60, size=(20000, 60))
    totals = clusters[picks].sum(axis=1)
    slow = np.percentile(totals[:, mm.FIELD_INDEX["correct_after"]] / totals[:, mm.FIELD_INDEX["n"]], [2.5, 97.5])
    assert fast["accuracy_after"] == pytest.approx(slow, abs=0.01)


def test_unique_rows_both_paths():
    matrix = np.array([[1, 0], [0, 2], [1, 0], [3, 3]])
    rows, counts = mm.unique_rows(matrix)
    assert rows.tolist() == [[0, 2], [1, 0], [3, 3]] and counts.tolist() == [1, 2, 1]
    huge = np.array([[2**40, 1, 2**30], [0, 0, 0], [2**40, 1, 2**30]])  # radix product overflows int64
    rows, counts = mm.unique_rows(huge)
    assert rows.tolist() == [[0, 0, 0], [2**40, 1, 2**30]] and counts.tolist() == [1, 2]


# ------------------------------------------------------------------ add_batch / add


def test_add_batch_matches_compute(fresh, metric):
    for start in range(0, 10, 4):
        part = slice(start, start + 4)
        fresh.add_batch(
            predictions=PREDICTIONS[part],
            original_predictions=ORIGINALS[part],
            references=REFERENCES[part],
            difficulty=DIFFICULTY[part],
        )
    assert fresh.compute() == compute_rows(metric, difficulty=DIFFICULTY)


def test_add_single_rows(fresh, metric):
    for original, prediction, reference, level in ROWS:
        fresh.add(prediction=prediction, original_predictions=original, reference=reference, difficulty=level)
    assert fresh.compute() == compute_rows(metric, difficulty=DIFFICULTY)


def test_add_batch_with_confidences_and_bootstrap_in_compute(fresh):
    fresh.add_batch(
        predictions=["A", "B"], original_predictions=["A", "A"], references=["A", "A"],
        original_confidence=[0.8, 0.6], confidence_on_original_after=[0.7, 0.1],
    )  # fmt: skip
    result = fresh.compute(bootstrap=1000, seed=0)
    assert result["confidence_drop"] == pytest.approx(0.3)
    # Two items right in stage 1, one flipped: a resample of the two rows has a rate of 0, 1/2 or 1, and each
    # of 0 and 1 has probability 1/4, so the central 95% of 1000 resamples runs from 0 to 1.
    assert result["mr_t2f"] == 0.5 and result["mr_t2f_bootstrap_ci"] == [0.0, 1.0]
    assert result["mr_f2t_bootstrap_ci"] is None  # no item wrong in stage 1


def test_label_given_in_some_batches_only_is_an_error(fresh):
    fresh.add_batch(predictions=["A"], original_predictions=["A"], references=["A"], source=["MMMU"])
    fresh.add_batch(predictions=["B"], original_predictions=["A"], references=["A"])
    with pytest.raises(ValueError, match=r"source is missing .* for 1 of 2 rows"):
        fresh.compute()


def test_metric_is_reusable_after_compute(fresh):
    fresh.add_batch(predictions=["B"], original_predictions=["A"], references=["A"])
    assert fresh.compute()["t2f"] == 1
    fresh.add_batch(predictions=["A"], original_predictions=["A"], references=["A"])
    assert fresh.compute()["t2f"] == 0


# ------------------------------------------------------------------ consistency config


def test_consistency_config_hand_computed(consistency):
    result = consistency.compute(
        samples=[["A", "a", " A"], ["B", "C", "B"], [None, "D", "D"], ["E", ""]],
        references=["A", "C", "D", "e"],
    )
    two_to_one = -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    assert {k: result[k] for k in ("n", "k_min", "k_max")} == {"n": 4, "k_min": 2, "k_max": 3}
    assert result["consistency_rate"] == 1 / 4
    assert result["consistency_rate_ci"] == pytest.approx(wilson_reference(1, 4), abs=1e-12)
    assert result["mean_agreement"] == pytest.approx((1 + 2 / 3 + 2 / 3 + 1 / 2) / 4)
    assert result["modal_accuracy"] == 3 / 4
    assert result["modal_accuracy_ci"] == pytest.approx(wilson_reference(3, 4), abs=1e-12)
    assert result["mean_entropy"] == pytest.approx((0 + two_to_one + two_to_one + math.log(2)) / 4)
    assert_plain_json(result)


def test_consistency_ties_and_unparsed(consistency):
    result = consistency.compute(samples=[["B", "A"], [None, None]], references=["A", "A"])
    assert result["modal_accuracy"] == 0.0  # tie B/A goes to B, met first; no parsed answer is never correct
    assert result["consistency_rate"] == 0.0  # two unparsed samples do not agree
    assert result["mean_agreement"] == (0.5 + 0.0) / 2
    assert result["mean_entropy"] == pytest.approx(math.log(2))


def test_consistency_add_batch(consistency):
    consistency.add_batch(samples=[["A", "A"]], references=["A"])
    consistency.add_batch(samples=[("B", "C", "B")], references=["B"])
    result = consistency.compute()
    assert (result["n"], result["k_min"], result["k_max"], result["consistency_rate"]) == (2, 2, 3, 0.5)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(predictions=["A", "B"], original_predictions=["A"], references=["A", "B"]), "differ in length"),
        (dict(predictions=["A"], original_predictions=["A"], references=["A"], difficulty=["low", "high"]), "differ in length"),
        (dict(predictions=[], original_predictions=[], references=[]), "empty input"),
        (dict(predictions=[1], original_predictions=["A"], references=["A"]), r"predictions\[0\] is int"),
        (dict(predictions=["A"], original_predictions=[True], references=["A"]), r"original_predictions\[0\] is bool"),
        (dict(predictions=["A"], original_predictions=["A"], references=[None]), r"references\[0\] is NoneType"),
        (dict(predictions=["A", "A"], original_predictions=["A", "A"], references=["A", " "]), r"references\[1\] is ' '"),
        (dict(predictions="AB", original_predictions="AB", references="AB"), "must be a list"),
        (dict(predictions=["A"], references=["A"]), r"missing input\(s\) \['original_predictions'\]"),
        (dict(predictions=["A"], original_predictions=["A"], references=["A"], difficulty=[3]), r"difficulty\[0\] is int"),
        (dict(predictions=["A", "B"], original_predictions=["A", "A"], references=["A", "A"], source=["x", None]), "source is missing"),
        (dict(predictions=["A"], original_predictions=["A"], references=["A"], original_confidence=[0.5]), "confidence_on_original_after is missing"),
        (dict(predictions=["A"], original_predictions=["A"], references=["A"], original_confidence=[1.5], confidence_on_original_after=[0.5]), r"not a probability"),
        (dict(predictions=["A"], original_predictions=["A"], references=["A"], original_confidence=["0.5"], confidence_on_original_after=[0.5]), r"original_confidence\[0\] is str"),
        (dict(predictions=["A", "A"], original_predictions=["A", "A"], references=["A", "A"], original_confidence=[0.5, None], confidence_on_original_after=[0.5, 0.5]), "original_confidence is missing"),
        (dict(predictions=["A"], original_predictions=["A"], references=["A"], bootstrap=0), "bootstrap must be a positive int"),
        (dict(predictions=["A"], original_predictions=["A"], references=["A"], bootstrap=10, seed=-1), "seed must be"),
        (dict(predictions=["A"], original_predictions=["A"], references=["A"], difficulti=["low"]), r"unknown argument\(s\) \['difficulti'\]"),
    ],
)  # fmt: skip
def test_bad_input_raises_value_error(fresh, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fresh.compute(**kwargs)


def test_empty_compute_and_bad_add_batch(fresh):
    with pytest.raises(ValueError, match="empty input"):
        fresh.compute()
    with pytest.raises(ValueError, match="differ in length"):
        fresh.add_batch(predictions=["A"], original_predictions=["A", "B"], references=["A"])
    with pytest.raises(ValueError, match=r"unknown input\(s\) \['samples'\]"):
        fresh.add_batch(predictions=["A"], original_predictions=["A"], references=["A"], samples=[["A", "B"]])
    # A rejected batch writes nothing.
    with pytest.raises(ValueError, match="empty input"):
        fresh.compute()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(samples=[["A"]], references=["A"]), r"samples\[0\] has k=1 answers; .* k >= 2"),
        (dict(samples=[["A", "B"], []], references=["A", "B"]), r"samples\[1\] has k=0"),
        (dict(samples=[["A", "B"]], references=["A", "B"]), "differ in length"),
        (dict(samples=[], references=[]), "empty input"),
        (dict(samples=[["A", 2]], references=["A"]), r"samples\[0\]\[1\] is int"),
        (dict(samples=["AB"], references=["A"]), r"samples\[0\] must be a list"),
        (dict(samples=[["A", "B"]], references=[""]), r"references\[0\] is ''"),
        (dict(samples=[["A", "B"]], references=["A"], predictions=["A"]), r"unknown argument\(s\) \['predictions'\]"),
        (dict(samples=[["A", "B"]], references=["A"], bootstrap=10), "unknown argument"),
    ],
)
def test_consistency_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mub_metric.load("consistency").compute(**kwargs)


def test_unknown_config():
    with pytest.raises(ValueError, match=r"unknown config 'nope'; choose one of \['consistency', 'default'\]"):
        mub_metric.load("nope")


def test_pure_report_rejects_empty_and_mismatched_input():
    with pytest.raises(ValueError, match="empty input"):
        mm.misleading_rate_report([], [], [])
    with pytest.raises(ValueError, match="differ in length"):
        mm.misleading_rate_report(["A"], ["A", "B"], ["A"])
    with pytest.raises(ValueError, match="difficulty has 2"):
        mm.misleading_rate_report(["A"], ["A"], ["A"], groups={"difficulty": ["low", "high"]})
    with pytest.raises(ValueError, match="empty input"):
        mm.sample_consistency([], [])


# ------------------------------------------------------------------ package and card


def test_package_path_and_load():
    import evaluate

    assert Path(mub_metric.PATH).is_dir() and SCRIPT.is_file()
    loaded = evaluate.load(mub_metric.PATH)
    assert loaded.name == "mub_misleading_rate" and loaded.config_name == "default"
    assert mub_metric.load("consistency").config_name == "consistency"


def test_script_imports_one_per_line_and_only_allowed_libraries():
    stdlib = {"__future__", "collections", "fractions", "itertools", "math", "re", "statistics", "typing", "unicodedata"}
    allowed = stdlib | {"datasets", "evaluate", "numpy"}
    imports = re.findall(r"^(?:import|from)\s+([\w\.]+)", SCRIPT.read_text(), flags=re.MULTILINE)
    assert set(imports) <= allowed
    assert not re.search(r"^import\s+\w+\s*,", SCRIPT.read_text(), flags=re.MULTILINE)


def card_examples() -> list[tuple[str, str | None]]:
    """(python code, expected stdout or None) for each ```python block of the card; the expected
    output is the ```text block that directly follows, when there is one."""
    blocks = re.findall(r"```(\w+)\n(.*?)```", CARD.read_text(encoding="utf-8"), flags=re.DOTALL)
    examples = []
    for i, (language, body) in enumerate(blocks):
        if language == "python":
            follows = blocks[i + 1] if i + 1 < len(blocks) else None
            examples.append((body, follows[1] if follows and follows[0] == "text" else None))
    return examples


def test_card_header():
    header = CARD.read_text(encoding="utf-8").split("---")[1]
    fields = ["title:", "emoji:", "colorFrom:", "colorTo:", "sdk: gradio", "sdk_version:", "app_file: app.py"]
    fields += ["pinned: false", "- evaluate", "- metric", "description:"]
    for field in fields:
        assert field in header


@pytest.mark.parametrize("index", range(5))
def test_card_examples_run_and_print_what_the_card_says(index):
    examples = card_examples()
    assert len(examples) == 5
    code, expected = examples[index]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(code, f"{CARD.name} example {index + 1}", "exec"), {"__name__": "__card__"})
    assert expected is not None, "each card example is followed by its output"
    assert stdout.getvalue().strip() == expected.strip()


def test_rows_on_no_level_count_overall_and_by_misled_count_but_not_by_difficulty(fresh):
    # counts 6 (low), 7 (on no level), 9 (medium): the 7 rows flip, the others do not
    rows = [("6", "low", "A"), ("6", "low", "A"), ("7", None, "B"), ("7", None, "B"), ("9", "medium", "A")]
    result = fresh.compute(
        predictions=[answer for _, _, answer in rows],
        original_predictions=["A"] * len(rows),
        references=["A"] * len(rows),
        difficulty=[level for _, level, _ in rows],
        misled_count=[count for count, _, _ in rows],
    )
    assert (result["n"], result["t2f"]) == (5, 2)
    assert list(result["by_difficulty"]) == ["low", "medium"]
    assert result["by_difficulty"]["low"]["n"] == 2 and result["by_difficulty"]["low"]["mr_t2f"] == 0.0
    assert list(result["by_misled_count"]) == ["6", "7", "9"]
    assert result["by_misled_count"]["7"]["mr_t2f"] == 1.0 and result["by_misled_count"]["7"]["n"] == 2
    assert result["mr_t2f_levels_mean"] == 0.0  # only the levels enter the headline


def test_counts_are_ordered_as_numbers(fresh):
    counts = ["12", "6", "10", "9"]
    result = fresh.compute(
        predictions=["A"] * 4, original_predictions=["A"] * 4, references=["A"] * 4, misled_count=counts
    )
    assert list(result["by_misled_count"]) == ["6", "9", "10", "12"]


# ------------------------------------------------------------------ large inputs


def test_over_100000_rows_in_arrow_batches_with_a_chunked_bootstrap(fresh):
    """250,000 rows added in uneven batches (the cache file holds 100,000-row Arrow batches),
    clustered so that the bootstrap's distinct cluster rows force several chunks; every count
    and rate, overall and per source, against a naive recount, and the bootstrap interval
    against an unchunked computation and against naive cluster resampling."""
    n, n_boot, seed = 250_000, 1100, 4
    rng = np.random.default_rng(21)
    answers = np.array(["A", "B", "c", "", "yes"], dtype=object)
    originals = answers[rng.choice(5, n, p=[0.5, 0.2, 0.1, 0.1, 0.1])].tolist()
    predictions = answers[rng.choice(5, n, p=[0.3, 0.4, 0.1, 0.1, 0.1])].tolist()
    references = np.array(["A", "B", "C"], dtype=object)[rng.choice(3, n, p=[0.6, 0.2, 0.2])].tolist()
    sources = np.array(["x", "y", "z"], dtype=object)[rng.integers(0, 3, n)].tolist()
    cluster_of = np.repeat(np.arange(n), rng.integers(1, 60, n))[:n]  # clusters of 1-59 consecutive rows
    group_id = [f"img{c}" for c in cluster_of]
    for start, stop in ((0, 70_000), (70_000, 190_000), (190_000, n)):
        fresh.add_batch(
            predictions=predictions[start:stop], original_predictions=originals[start:stop],
            references=references[start:stop], group_id=group_id[start:stop],
        )  # fmt: skip
    result = fresh.compute(bootstrap=n_boot, seed=seed)  # the bootstrap of the overall figures only
    for start, stop in ((0, 130_000), (130_000, n)):
        fresh.add_batch(
            predictions=predictions[start:stop], original_predictions=originals[start:stop],
            references=references[start:stop], source=sources[start:stop],
        )  # fmt: skip
    by_source = fresh.compute()["by_source"]

    def key(answer):
        return answer.strip().casefold() if answer and answer.strip() else None

    def row_counts(i):
        """The row's 0/1 contribution to each of mm.COUNT_FIELDS, by hand."""
        before, after, ref = key(originals[i]), key(predictions[i]), key(references[i])
        right_before, right_after = before == ref, after == ref
        c = {
            "n": 1, "n_t": right_before, "n_f": not right_before, "t2f": right_before and not right_after,
            "f2t": right_after and not right_before, "unparsed_before": before is None, "unparsed_after": after is None,
            "correct_after": right_after, "consistent": after is not None and after == before,
        }  # fmt: skip
        return [int(c[name]) for name in mm.COUNT_FIELDS]

    rows = [row_counts(i) for i in range(n)]

    def check(figures, picked):
        c = dict(zip(mm.COUNT_FIELDS, (sum(column) for column in zip(*picked))))
        assert {name: figures[name] for name in mm.REPORTED_COUNTS} == {name: c[name] for name in mm.REPORTED_COUNTS}
        for name, (top, bottom) in mm.RATES.items():
            assert figures[name] == c[top] / c[bottom], name

    check(result, rows)
    for label in "xyz":
        check(by_source[label], [row for row, source in zip(rows, sources) if source == label])

    # Per-cluster count rows, by hand; the bootstrap works on their distinct values.
    per_cluster: dict[int, list[int]] = {}
    for cluster, row in zip(cluster_of.tolist(), rows):
        totals = per_cluster.setdefault(cluster, [0] * len(row))
        for j, value in enumerate(row):
            totals[j] += value
    matrix = np.array(list(per_cluster.values()), dtype=np.int64)
    distinct, multiplicity = np.unique(matrix, axis=0, return_counts=True)
    assert n_boot > mm.BOOTSTRAP_CHUNK_CELLS // len(distinct)  # more than one chunk
    drawn = np.random.default_rng(seed).multinomial(len(matrix), multiplicity / len(matrix), size=n_boot) @ distinct
    top, bottom = mm.RATES["mr_t2f"]
    rates = drawn[:, mm.FIELD_INDEX[top]] / drawn[:, mm.FIELD_INDEX[bottom]]
    assert result["mr_t2f_bootstrap_ci"] == pytest.approx(np.percentile(rates, [2.5, 97.5]).tolist(), rel=1e-12)

    # Naive cluster resampling: draw clusters with replacement, add up their rows.
    picks = np.random.default_rng(8).integers(0, len(matrix), size=(400, len(matrix)))
    naive = np.array([matrix[row].sum(axis=0) for row in picks])
    naive_rates = naive[:, mm.FIELD_INDEX[top]] / naive[:, mm.FIELD_INDEX[bottom]]
    low, high = np.percentile(naive_rates, [2.5, 97.5])
    width = high - low
    assert result["mr_t2f_bootstrap_ci"] == pytest.approx([low, high], abs=0.25 * width)
# ----------------------------------------------------------------- answer normalisation (issue 14)


@pytest.mark.parametrize(
    "variant",
    ["Ａ", "\u200bA", "A.", "a", " A ", "A\ufeff", "A。", "A!",
     # issue 22: bracketed letters, bidi marks and every other format character (category Cf)
     "A)", "(A)", "[A]", "( a )", "（Ａ）", "A).", "\u200fA", "A\u200e", "\u202bA\u202c", "\u2066A\u2069", "A\u00ad",
     "\U000e0041A", "\u061cA", "\u180eA"],
)
def test_answer_variants_equal_the_plain_letter(metric, variant):
    # Stage 1 right and stage 2 the same letter written differently: no flip, and consistent.
    result = metric.compute(predictions=[variant], original_predictions=["A"], references=["A"])
    assert (result["mr_t2f"], result["accuracy_after"], result["consistency"]) == (0.0, 1.0, 1.0)
    result = metric.compute(predictions=["B"], original_predictions=["B"], references=[variant])
    assert result["accuracy_before"] == 0.0 and result["n_t"] == 0  # the variant is a reference "A", not "B"
    result = metric.compute(predictions=["A"], original_predictions=["A"], references=[variant])
    assert result["accuracy_before"] == 1.0


def test_other_strings_stay_distinct(metric):
    # Only trailing punctuation and a bracketed lone letter go: "(A" is not "A"; "A.B" is not "AB";
    # "(AB)" is not "AB"; look-alike letters of other scripts (Cyrillic А, Greek Α) are not Latin "A".
    for other in ("(A", "A B", "AB", "A.B", "(AB)", "A(", "\u0410", "\u0391", "(\u0410)"):
        result = metric.compute(predictions=[other], original_predictions=["A"], references=["A"])
        assert result["mr_t2f"] == 1.0, other


def test_pandas_missing_answers_read_as_unparsed(metric):
    import pandas as pd

    frame = pd.DataFrame({"stage2": ["A", None, "B"], "stage1": ["A", "A", None], "reference": ["A", "A", "A"]})
    assert math.isnan(frame["stage2"].tolist()[1])  # pandas hands the gap over as NaN
    result = metric.compute(
        predictions=frame["stage2"].tolist(),
        original_predictions=frame["stage1"].tolist(),
        references=frame["reference"].tolist(),
    )
    expected = metric.compute(predictions=["A", None, "B"], original_predictions=["A", "A", None], references=["A"] * 3)
    assert result == expected
    assert (result["unparsed_after"], result["unparsed_before"]) == (1, 1)
    with_na = metric.compute(predictions=["A", pd.NA], original_predictions=["A", "A"], references=["A", "A"])
    assert with_na["unparsed_after"] == 1


@pytest.mark.parametrize(("bad", "row"), [(5, 1), (["A"], 1), (b"A", 1), (1.5, 1)])
def test_a_value_that_cannot_be_an_answer_names_its_row(metric, bad, row):
    with pytest.raises(ValueError, match=rf"predictions\[{row}\] is .*; predictions must hold strings"):
        metric.compute(predictions=["A", bad], original_predictions=["A", "A"], references=["A", "A"])


@pytest.mark.parametrize("label", ["Low", "HIGH", " low", "low ", "extreme", "Medium"])
def test_a_difficulty_label_other_than_low_medium_high_is_refused_naming_its_row(metric, label):
    with pytest.raises(ValueError, match=rf"difficulty\[2\] is {re.escape(repr(label))}; a difficulty label is exactly"):
        metric.compute(
            predictions=["A", "A", "B"], original_predictions=["A"] * 3, references=["A"] * 3, difficulty=["low", None, label]
        )


@pytest.mark.parametrize(
    "columns",
    [{"A": 1, "B": 2}, {"A"}, frozenset({"A"}), {"A": 1}.keys(), {"k": "A"}.values()],
    ids=["dict", "set", "frozenset", "keys", "values"],
)
def test_a_mapping_or_other_non_sequence_is_refused(metric, columns):
    for name in ("predictions", "original_predictions", "references"):
        given = {"predictions": ["A"], "original_predictions": ["A"], "references": ["A"], name: columns}
        with pytest.raises(ValueError, match=rf"{name} must be a list of per-row values"):
            metric.compute(**given)


def test_a_pandas_series_is_a_column(metric):
    import pandas as pd

    result = metric.compute(predictions=pd.Series(["B", "A"]), original_predictions=pd.Series(["A", "A"]), references=["A", "A"])
    assert (result["t2f"], result["n_t"]) == (1, 2)


def test_bootstrap_has_an_upper_bound(metric):
    args = dict(predictions=["A", "B"], original_predictions=["A", "A"], references=["A", "A"])
    with pytest.raises(ValueError, match=r"bootstrap is 1000000000000; at most 100000 resamples"):
        metric.compute(**args, bootstrap=10**12)
    assert metric.compute(**args, bootstrap=mm.MAX_BOOTSTRAP, seed=0)["mr_t2f_bootstrap_ci"] is not None


def test_a_missing_reference_is_still_an_error(metric):
    with pytest.raises(ValueError, match=r"references\[0\]"):
        metric.compute(predictions=["A"], original_predictions=["A"], references=[float("nan")])
# ------------------------------------------------------------------ evaluate.combine


def test_exact_edges_of_the_wilson_interval_carry_no_rounding_noise():
    for total in range(1, 300):
        assert mm.wilson_interval(0, total)[0] == 0.0
        assert mm.wilson_interval(total, total)[1] == 1.0


def test_combine_add_batch_and_compute_with_the_required_inputs_alone(metric):
    """evaluate.combine picks each module's inputs by name: the optional ones, left out, must not be asked for."""
    import evaluate

    expected = compute_rows(metric)
    combined = evaluate.combine([mub_metric.load()])
    for start in range(0, 10, 4):
        part = slice(start, start + 4)
        combined.add_batch(predictions=PREDICTIONS[part], references=REFERENCES[part], original_predictions=ORIGINALS[part])
    assert combined.compute() == expected
    assert evaluate.combine([mub_metric.load()]).compute(
        predictions=PREDICTIONS, references=REFERENCES, original_predictions=ORIGINALS
    ) == expected
    single = evaluate.combine([mub_metric.load()])
    for original, prediction, reference in zip(ORIGINALS, PREDICTIONS, REFERENCES):
        single.add(prediction=prediction, reference=reference, original_predictions=original)
    assert single.compute() == expected
    # Optional inputs still reach the module through the combination's compute.
    by_level = evaluate.combine([mub_metric.load()]).compute(
        predictions=PREDICTIONS, references=REFERENCES, original_predictions=ORIGINALS, difficulty=DIFFICULTY
    )
    assert by_level == compute_rows(metric, difficulty=DIFFICULTY) and "by_difficulty" in by_level


def test_publish_metric_dry_run_lists_the_space_files(capsys):
    from mub.cli import main

    assert main(["publish-metric", "--to", "my-org/mub_misleading_rate", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    listed = printed.split("my-org/mub_misleading_rate: ", 1)[1].splitlines()[0].split(", ")
    assert {"mub_misleading_rate.py", "README.md", "app.py", "requirements.txt"} <= set(listed)
    assert all((Path(mub_metric.PATH) / name).is_file() for name in listed)
    assert 'evaluate.load("my-org/mub_misleading_rate")' in printed
    assert main(["publish-metric", "--to", "my-org/other_name", "--dry-run"]) == 2
    assert "must be ORG/mub_misleading_rate" in capsys.readouterr().err


def test_group_id_of_one_row_each_leaves_the_wilson_interval_and_repeated_rows_widen_it():
    import mub_metric

    metric = mub_metric.load()
    rows = dict(original_predictions=["A"] * 8, predictions=["B", "B", "A", "A", "A", "B", "A", "A"], references=["A"] * 8)
    plain = metric.compute(**rows)
    singletons = metric.compute(**rows, group_id=[f"img{i}" for i in range(8)])
    assert singletons["mr_t2f_ci"] == pytest.approx(plain["mr_t2f_ci"])
    # The same 8 rows as 2 items drawn 4 times, flips (2 of 4) and (1 of 4): deff by hand, Wilson at n / deff.
    clustered = metric.compute(**rows, group_id=["a"] * 4 + ["b"] * 4)
    p = 3 / 8
    deff = ((2 - 4 * p) ** 2 + (1 - 4 * p) ** 2) / (8 * p * (1 - p))
    assert deff < 1 and clustered["mr_t2f_ci"] == pytest.approx(plain["mr_t2f_ci"])  # floored: never narrower
    spread = metric.compute(**{**rows, "predictions": ["B"] * 4 + ["A"] * 4}, group_id=["a"] * 4 + ["b"] * 4)
    deff = ((4 - 4 * 0.5) ** 2 + (0 - 4 * 0.5) ** 2) / (8 * 0.25)
    z = 1.959963984540054
    n = 8 / deff
    centre = (0.5 + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(0.25 / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert deff == 4 and spread["mr_t2f_ci"] == pytest.approx([centre - half, centre + half])


def test_design_effects_are_the_same_from_dense_and_sorted_cells(monkeypatch):
    rng = np.random.default_rng(4)
    indicators = (rng.random((len(mm.COUNT_FIELDS), 3000)) < 0.4).astype(np.int64)
    codes = rng.integers(0, 5, 3000)
    clusters = rng.integers(0, 700, 3000)
    dense = mm.design_effects(indicators, codes, 5, clusters)
    monkeypatch.setattr(mm, "DENSE_CELL_FACTOR", 0)  # every cell found by sorting instead
    assert np.allclose(mm.design_effects(indicators, codes, 5, clusters), dense) and (dense > 1).any()
