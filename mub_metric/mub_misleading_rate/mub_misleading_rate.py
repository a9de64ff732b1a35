# Copyright 2025 The mub authors. Licensed under the Apache License, Version 2.0.
"""MUB misleading rate: how often a vision-language model abandons a correct answer after a misleading cue.

Two-stage protocol (Dang et al., arXiv 2411.02708): stage 1 asks the question plainly, stage 2 asks
it again with a misleading instruction. This module turns the two answers per item into the
misleading rate and its companions, with Wilson and cluster-bootstrap intervals, an exact McNemar
test and per-group breakdowns. The "consistency" config scores k repeated answers per item.

The maths lives in plain functions (wilson_interval, mcnemar_exact_p, cluster_bootstrap_intervals,
summarise_groups, sample_consistency, ...) so it can be tested without evaluate; the metric class
only validates inputs, stores them and calls those functions.
"""

import itertools
import math
import re
import statistics
import unicodedata
from collections import Counter
from fractions import Fraction
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{dang2025exploring,
  title     = {Exploring Response Uncertainty in {MLLMs}: An Empirical Evaluation under Misleading Scenarios},
  author    = {Dang, Yunkai and Gao, Mengxi and Yan, Yibo and Zou, Xin and Gu, Yanggan and Li, Jungang and Wang, Jingyu and Jiang, Peijie and Liu, Aiwei and Liu, Jia and Hu, Xuming},
  booktitle = {Proceedings of the 2025 Conference on Empirical Methods in Natural Language Processing (EMNLP)},
  year      = {2025},
  eprint    = {2411.02708},
  archivePrefix = {arXiv},
}
"""

_DESCRIPTION = """\
Misleading rate for the MUB two-stage protocol. T = items whose stage-1 answer is correct,
F = the rest (wrong or unparsed). mr_t2f = |T answered wrongly at stage 2| / |T| (the paper's
misleading rate); mr_f2t = |F answered correctly at stage 2| / |F|. Also accuracy before and after,
consistency between the two stages, 95% Wilson intervals, an exact McNemar test on (t2f, f2t),
optional cluster-bootstrap intervals and per-difficulty/source/question-type breakdowns.
Config "consistency" scores k >= 2 repeated answers per item instead.
Answers compare after NFKC normalisation (full-width "Ａ" is "A"), with Unicode format characters (zero-width,
RTL/LTR marks, ...) removed, outer whitespace and trailing punctuation trimmed, a bracketed lone letter unwrapped
and case folded ("\u200bA", "a", "A.", "A)" and "(A)" equal "A"; Cyrillic "А" does not); None, a
pandas NaN or an empty answer is unparsed and never correct. Any other value is a ValueError naming its row.
"""

_KWARGS_DESCRIPTION = """
Args (config "default"):
    predictions (list of str or None): stage-2 answers, given the misleading instruction.
    original_predictions (list of str or None): stage-1 answers, no misleading instruction.
    references (list of str): the correct answers (never None or empty).
    difficulty, misled_count, source, question_type (list of str, optional): per-row labels; each one
        given adds by_difficulty / by_misled_count / by_source / by_question_type. Give a label for every
        row or leave the input out; only difficulty may be None on some rows (items on no level: they
        count in every figure but by_difficulty). A difficulty label is exactly low, medium or high. misled_count
        labels are counts as strings ("6").
    group_id (list of str, optional): cluster of the row (e.g. the image, which holds every draw of an
        item); given, the <rate>_ci are Wilson intervals at the design-effect-adjusted sample size and the
        bootstrap resamples clusters.
    original_confidence (list of float in [0, 1], optional): probability the model put on its stage-1
        answer at stage 1.
    confidence_on_original_after (list of float in [0, 1], optional): probability it still puts on
        that same answer at stage 2. Give both or neither.
    bootstrap (int, optional): number of cluster-bootstrap resamples (at most 100,000); adds <rate>_bootstrap_ci.
    seed (int, optional): seed of the bootstrap's random generator.
    pressure_turns (int, optional): N of a run that pushed each row for up to N turns; read with
        turn_of_flip (list of int in 1..N or None = held), turns_asked (list of int, optional: a row that held
        through fewer turns is censored there) and flips (list of int, optional: answer changes); adds pressure.
Args (config "consistency"):
    samples (list of list of str or None): k >= 2 answers per item, drawn without misleading.
    references (list of str): the correct answers.
Returns (config "default"):
    n, n_t, n_f, t2f, f2t, unparsed_before, unparsed_after (int);
    mr_t2f, mr_f2t, accuracy_before, accuracy_after, consistency (float, None when the denominator is 0),
    each with <rate>_ci = [low, high] (95% Wilson; with group_id, at n / design effect) and, with
    bootstrap, <rate>_bootstrap_ci;
    mcnemar_p (float); with confidences: confidence_before, confidence_after_on_original, confidence_drop;
    by_difficulty / by_misled_count / by_source / by_question_type (dict label -> the same figures);
    mr_t2f_levels_mean (unweighted mean of the per-difficulty mr_t2f);
    with pressure_turns, pressure (overall and per group): per-turn at_risk and flipped of the stage-1-correct
    rows, the Kaplan-Meier survival (+ survival_ci), mean_turn_of_flip (restricted mean up to N+1, never-flipped
    rows counting N+1; + mean_turn_of_flip_ci, cluster bootstrap, 2,000 resamples and seed 0 unless given),
    never_flipped, flips, mean_flips.
Returns (config "consistency"):
    n, k_min, k_max, consistency_rate (+ _ci), mean_agreement, modal_accuracy (+ _ci), mean_entropy (nats).
Examples:
    >>> import evaluate
    >>> metric = evaluate.load("ORG/mub_misleading_rate")  # or mub_metric.load(), or evaluate.load(<folder path>)
    >>> r = metric.compute(predictions=["B", "A", "A"], original_predictions=["A", "A", "B"],
    ...                    references=["A", "A", "A"])
    >>> r["mr_t2f"], r["mr_f2t"]
    (0.5, 1.0)
"""

# 97.5% standard-normal quantile (1.959963984540054), from the stdlib so no scipy is needed.
Z_95 = statistics.NormalDist().inv_cdf(0.975)

ANSWER_INPUTS = ("predictions", "original_predictions", "references")
GROUP_INPUTS = {
    "difficulty": "by_difficulty",
    "misled_count": "by_misled_count",
    "source": "by_source",
    "question_type": "by_question_type",
}
# Group inputs where a row may carry no label: it counts overall but in no group of that breakdown
# (an item misled by 7 of the 12 reference models is on none of the paper's levels).
PARTIAL_GROUP_INPUTS = ("difficulty",)
CLUSTER_INPUT = "group_id"
CONFIDENCE_INPUTS = ("original_confidence", "confidence_on_original_after")
# --pressure runs: the 1-based turn of each row's first flip (None: held), the turns it was asked, its answer changes.
PRESSURE_INPUTS = ("turn_of_flip", "turns_asked", "flips")
MAX_PRESSURE_TURNS = 1000
# Bootstrap resamples of the pressure intervals when compute() is given no `bootstrap` (seed 0 when none given).
PRESSURE_RESAMPLES = 2000
LEVEL_ORDER = ("low", "medium", "high")
COMPUTE_OPTIONS = {"default": ("bootstrap", "seed", "pressure_turns"), "consistency": ()}
REQUIRED_INPUTS = {"default": ANSWER_INPUTS, "consistency": ("samples", "references")}

# Per-row 0/1 indicators; every reported count is the sum of one of them over a set of rows.
COUNT_FIELDS = (
    "n",
    "n_t",
    "n_f",
    "t2f",
    "f2t",
    "unparsed_before",
    "unparsed_after",
    "correct_after",
    "consistent",
)
REPORTED_COUNTS = COUNT_FIELDS[:7]
FIELD_INDEX = {name: i for i, name in enumerate(COUNT_FIELDS)}
# rate name -> (numerator field, denominator field)
RATES = {
    "mr_t2f": ("t2f", "n_t"),
    "mr_f2t": ("f2t", "n_f"),
    "accuracy_before": ("n_t", "n"),
    "accuracy_after": ("correct_after", "n"),
    "consistency": ("consistent", "n"),
}

# Above this many discordant pairs the exact big-integer binomial sum gets slow; switch to log space.
EXACT_BINOMIAL_LIMIT = 1000
# Bound on resamples x distinct-cluster cells held at once by the bootstrap.
BOOTSTRAP_CHUNK_CELLS = 4_000_000
# design_effects bins (group, cluster) cells densely up to this many cells per row, and sorts beyond.
DENSE_CELL_FACTOR = 4
# Most bootstrap resamples: each keeps a row of counts (72 bytes) per group, and 1e5 already puts the
# percentile interval's Monte Carlo error far below its width; 1e12 was OOM-killed at 22.8 GB.
MAX_BOOTSTRAP = 100_000
# Rows per Arrow record batch in the cache file. evaluate leaves writer_batch_size unset, so datasets
# falls back to 1,000-row batches and 1e6 rows come back as 1,000 chunks (~0.4 s extra, profiled).
WRITER_BATCH_ROWS = 100_000


# ----------------------------------------------------------------------------- interval and test maths


def rate(numerator: int, denominator: int) -> Optional[float]:
    """numerator / denominator, or None when the denominator is 0 (undefined, not 0)."""
    return None if denominator == 0 else numerator / denominator


def wilson_interval(successes: int, total: int, z: float = Z_95) -> Optional[List[float]]:
    """Wilson score interval [low, high] for a binomial proportion; None when total is 0."""
    if total == 0:
        return None
    if not 0 <= successes <= total:
        raise ValueError(f"successes must lie in [0, total], got {successes} of {total}")
    p = successes / total
    z2 = z * z
    denominator = 1.0 + z2 / total
    centre = (p + z2 / (2 * total)) / denominator
    half_width = z * math.sqrt(p * (1.0 - p) / total + z2 / (4 * total * total)) / denominator
    # At 0/n the exact low bound is 0 and at n/n the high bound is 1; centre - half_width
    # leaves rounding noise there (2.8e-17), so those edges are written exactly.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == total else min(1.0, centre + half_width)
    return [low, high]


def clustered_wilson_interval(successes: int, total: int, deff: float) -> Optional[List[float]]:
    """The Wilson interval at the effective sample size total / deff (see design_effects): rows of one
    cluster (the draws of one item, items on one image) are not independent, so count for less."""
    if total == 0:
        return None
    n_effective = total / deff
    return wilson_interval(successes / total * n_effective, n_effective)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for discordant counts b (t2f) and c (f2t).

    p = min(1, 2 P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2); 1.0 when b + c = 0, since
    there are no discordant pairs and so no evidence that accuracy changed.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    if n <= EXACT_BINOMIAL_LIMIT:
        tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)
        return float(min(Fraction(1), 2 * tail))
    return min(1.0, 2.0 * binomial_half_lower_tail(k, n))


def binomial_half_lower_tail(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2) and k <= n / 2, in floating point for large n.

    The top term pmf(k) comes from lgamma; the lower terms follow as running products of
    pmf(i - 1) / pmf(i) = i / (n - i + 1) < 1, so they shrink and underflow harmlessly.
    """
    if not 0 <= k <= n / 2:
        raise ValueError(f"need 0 <= k <= n / 2, got k={k}, n={n}")
    log_top = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2.0)
    i = np.arange(k, 0, -1, dtype=np.float64)
    lower_over_top = np.cumprod(i / (n - i + 1.0))
    return math.exp(log_top) * (1.0 + float(lower_over_top.sum()))


def unique_rows(matrix: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a non-negative integer matrix and how often each occurs.

    np.unique(axis=0) sorts row tuples and takes ~1.5 s for 1e6 x 6; packing each row into one
    int64 (mixed radix) and sorting those is ~20x faster, so do that whenever the radix fits.
    """
    if matrix.shape[0] == 0:
        return matrix.reshape(0, matrix.shape[1]), np.zeros(0, dtype=np.int64)
    radix = matrix.max(axis=0).astype(np.int64) + 1
    if float(np.prod(radix.astype(np.float64))) < 2.0**62:
        keys, counts = np.unique(np.ravel_multi_index(tuple(matrix.T), tuple(radix)), return_counts=True)
        return np.stack(np.unravel_index(keys, tuple(radix)), axis=1).astype(np.int64), counts
    rows, counts = np.unique(matrix, axis=0, return_counts=True)
    return rows.astype(np.int64), counts


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> Optional[List[float]]:
    """Central percentile interval of the finite values (NaN = replicate where the rate is undefined)."""
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return [float(low), float(high)]


def bootstrap_totals(cluster_counts: np.ndarray, n_resamples: int, rng: np.random.Generator) -> Optional[np.ndarray]:
    """Column sums of cluster_counts over n_resamples resamples of whole clusters (resamples x columns); None
    without clusters.

    Drawing G clusters uniformly with replacement only matters through how often each distinct count row is
    drawn, which is Multinomial(G, multiplicity / G); sampling that keeps the work at resamples x distinct
    rows rather than resamples x clusters.
    """
    distinct, multiplicity = unique_rows(cluster_counts)
    n_clusters = int(multiplicity.sum())
    if n_clusters == 0:
        return None
    probabilities = multiplicity / n_clusters
    chunk = max(1, BOOTSTRAP_CHUNK_CELLS // len(distinct))
    return np.concatenate(
        [
            rng.multinomial(n_clusters, probabilities, size=min(chunk, n_resamples - start)) @ distinct
            for start in range(0, n_resamples, chunk)
        ]
    )


def cluster_bootstrap_intervals(
    cluster_counts: np.ndarray,
    n_resamples: int,
    rng: np.random.Generator,
    confidence: float = 0.95,
) -> Dict[str, Optional[List[float]]]:
    """Percentile bootstrap interval of every rate in RATES, resampling whole clusters.

    cluster_counts has one row per cluster and one column per COUNT_FIELDS entry (sums over the
    cluster's rows), resampled by bootstrap_totals. Replicates in which a rate's denominator is 0 are
    left out of that rate's percentiles (the rate is undefined there).
    """
    totals = bootstrap_totals(cluster_counts, n_resamples, rng)
    if totals is None:
        return {name: None for name in RATES}
    intervals = {}
    for name, (numerator, denominator) in RATES.items():
        top = totals[:, FIELD_INDEX[numerator]].astype(np.float64)
        bottom = totals[:, FIELD_INDEX[denominator]].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(bottom > 0, top / bottom, np.nan)
        intervals[name] = percentile_interval(values, confidence)
    return intervals


# ----------------------------------------------------------------------------- answers and outcomes


# Punctuation that may close an answer without changing it ("A.", "Yes!", "是。").
_TRAILING_PUNCTUATION = ".,;:!?\u3002\uff0c\uff1b\uff1a\uff01\uff1f\u3001\u2026"
# A lone option letter written with brackets: "A)", "(A)", "[A]", "A]" all mean "A". Only a single
# letter is unwrapped: a longer answer's brackets may be part of it ("f(x)").
_BRACKETED_LETTER = re.compile(r"\(\s*(\w)\s*\)|\[\s*(\w)\s*\]|(\w)\s*[)\]]")


def _without_format_characters(text: str) -> str:
    """``text`` without Unicode format characters (category Cf): zero-width spaces and joiners, RTL/LTR
    marks and embeddings, the BOM, soft hyphens, ... -- invisible, and never part of an answer."""
    if text.isascii():
        return text
    return "".join(char for char in text if unicodedata.category(char) != "Cf")


def normalise_answer(answer: Optional[str]) -> Optional[str]:
    """Comparison key of an answer: NFKC, no format characters, trimmed of whitespace and trailing
    punctuation, a bracketed lone letter unwrapped, case-folded; None when unparsed (None or blank).

    Look-alike letters of other scripts (Cyrillic "А", Greek "Β") are not folded to Latin: NFKC keeps
    them apart, so they compare as themselves and never equal an option letter (see the card).
    """
    if answer is None:
        return None
    key = _without_format_characters(unicodedata.normalize("NFKC", answer)).strip()
    key = key.rstrip(_TRAILING_PUNCTUATION).rstrip()
    bracketed = _BRACKETED_LETTER.fullmatch(key)
    if bracketed:
        key = next(group for group in bracketed.groups() if group)
    return key.casefold() or None


def encode_answers(*columns: Sequence[Optional[str]]) -> List[np.ndarray]:
    """One int64 code per answer, shared across columns: equal codes <=> equal keys; -1 = unparsed.

    Each distinct string is normalised once and the per-row lookup runs as map() over a dict
    method, so 1e6 rows cost tens of milliseconds rather than a Python loop per row.
    """
    key_codes: Dict[str, int] = {}
    code_of: Dict[Optional[str], int] = {}
    for raw in dict.fromkeys(itertools.chain.from_iterable(columns)):
        key = normalise_answer(raw)
        code_of[raw] = -1 if key is None else key_codes.setdefault(key, len(key_codes))
    return [np.fromiter(map(code_of.__getitem__, column), dtype=np.int64, count=len(column)) for column in columns]


def outcome_indicators(predictions: np.ndarray, originals: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Boolean matrix (len(COUNT_FIELDS) x n) of per-row outcomes from answer codes (-1 = unparsed)."""
    before_ok = (originals == references) & (originals >= 0)
    after_ok = (predictions == references) & (predictions >= 0)
    rows = {
        "n": np.ones(len(predictions), dtype=bool),
        "n_t": before_ok,
        "n_f": ~before_ok,
        "t2f": before_ok & ~after_ok,
        "f2t": ~before_ok & after_ok,
        "unparsed_before": originals < 0,
        "unparsed_after": predictions < 0,
        "correct_after": after_ok,
        # An unparsed answer matches nothing, not even another unparsed one.
        "consistent": (predictions == originals) & (predictions >= 0),
    }
    return np.stack([rows[name] for name in COUNT_FIELDS])


def encode_labels(values: Sequence[Optional[str]]) -> Tuple[np.ndarray, List[Optional[str]]]:
    """Codes 0..G-1 per row and the G distinct values in first-seen order."""
    labels = list(dict.fromkeys(values))
    index = {label: i for i, label in enumerate(labels)}
    return np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=len(values)), labels


def group_sums(weights: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Matrix (n_groups x len(weights)): each row of weights summed within each group code."""
    return np.stack([np.bincount(codes, weights=row, minlength=n_groups) for row in weights], axis=1)


def group_counts(indicators: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Integer version of group_sums for 0/1 indicators (bincount sums in float64, exact here)."""
    return np.rint(group_sums(indicators, codes, n_groups)).astype(np.int64)


def cluster_counts(indicators: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Per-cluster count rows for the bootstrap; cluster codes may be any integers."""
    _, compact = np.unique(clusters, return_inverse=True)
    return group_counts(indicators, compact.ravel(), int(compact.max()) + 1 if compact.size else 0)


def rows_by_group(codes: np.ndarray, n_groups: int) -> List[np.ndarray]:
    """Row indices of each group, from one stable sort instead of one mask per group."""
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.cumsum(np.bincount(codes, minlength=n_groups))[:-1])


def design_effects(indicators: np.ndarray, codes: np.ndarray, n_groups: int, clusters: np.ndarray) -> np.ndarray:
    """Kish's design effect of every RATES entry in every group (n_groups x len(RATES)), clustered by clusters.

    For a ratio p = sum(y) / sum(m) over clusters c (y_c, m_c: the cluster's numerator and denominator
    counts within the group), deff = sum_c (y_c - p m_c)^2 / (m p (1 - p)): the linearised variance of
    the ratio over the binomial one. Clusters of one row give 1. Floored at 1, so that clustering never
    narrows an interval, and 1 where p is 0 or 1 (no spread to measure). Each (group, cluster) cell is
    a bin: dense while groups x clusters stays within DENSE_CELL_FACTOR x rows, else one sort of the
    rows finds the cells present; memory stays linear in the rows.
    """
    n_rows = indicators.shape[1]
    n_clusters = int(clusters.max()) + 1 if clusters.size else 0
    cell = codes.astype(np.int64) * n_clusters + clusters
    if n_groups * n_clusters <= DENSE_CELL_FACTOR * max(n_rows, 1):
        n_cells, cell_of_row = n_groups * n_clusters, cell
        group_of_cell = np.repeat(np.arange(n_groups), n_clusters)
    else:
        cells, cell_of_row = np.unique(cell, return_inverse=True)
        n_cells, cell_of_row, group_of_cell = len(cells), cell_of_row.ravel(), cells // n_clusters
    needed = sorted({FIELD_INDEX[name] for pair in RATES.values() for name in pair})
    sums = {f: np.bincount(cell_of_row, weights=indicators[f].astype(np.float64), minlength=n_cells) for f in needed}
    out = np.ones((n_groups, len(RATES)))
    for j, (numerator, denominator) in enumerate(RATES.values()):
        y, m = sums[FIELD_INDEX[numerator]], sums[FIELD_INDEX[denominator]]
        n = np.bincount(group_of_cell, weights=m, minlength=n_groups)
        p = np.divide(np.bincount(group_of_cell, weights=y, minlength=n_groups), n, out=np.zeros(n_groups), where=n > 0)
        between = np.bincount(group_of_cell, weights=np.square(y - p[group_of_cell] * m), minlength=n_groups)
        binomial = n * p * (1.0 - p)
        deff = np.divide(between, binomial, out=np.ones(n_groups), where=binomial > 0)
        out[:, j] = np.maximum(1.0, deff)
    return out


def ordered_labels(labels: Sequence[str], preferred: Sequence[str] = ()) -> List[str]:
    """Preferred labels first (in their order, when present), then the rest sorted."""
    present = set(labels)
    first = [label for label in preferred if label in present]
    return first + sorted(present.difference(first))


# ----------------------------------------------------------------------------- figures


def figures(
    counts: Sequence[int],
    confidence_sums: Optional[Sequence[float]] = None,
    bootstrap_cis: Optional[Mapping[str, Optional[List[float]]]] = None,
    deffs: Optional[Sequence[float]] = None,
) -> Dict[str, Any]:
    """All reported figures of one set of rows from its COUNT_FIELDS sums (plain Python types).

    With deffs (one per RATES entry, from design_effects()) the intervals are clustered_wilson_interval()s.
    """
    c = dict(zip(COUNT_FIELDS, (int(x) for x in counts)))
    out: Dict[str, Any] = {name: c[name] for name in REPORTED_COUNTS}
    for j, (name, (numerator, denominator)) in enumerate(RATES.items()):
        out[name] = rate(c[numerator], c[denominator])
        if deffs is None:
            out[f"{name}_ci"] = wilson_interval(c[numerator], c[denominator])
        else:
            out[f"{name}_ci"] = clustered_wilson_interval(c[numerator], c[denominator], float(deffs[j]))
        if bootstrap_cis is not None:
            out[f"{name}_bootstrap_ci"] = bootstrap_cis[name]
    out["mcnemar_p"] = mcnemar_exact_p(c["t2f"], c["f2t"])
    if confidence_sums is not None:
        before, after = (float(total) / c["n"] for total in confidence_sums)
        out["confidence_before"] = before
        out["confidence_after_on_original"] = after
        out["confidence_drop"] = before - after
    return out


def summarise_groups(
    indicators: np.ndarray,
    codes: np.ndarray,
    labels: Sequence[str],
    confidences: Optional[np.ndarray] = None,
    clusters: Optional[np.ndarray] = None,
    n_resamples: Optional[int] = None,
    rng: Optional[np.random.Generator] = None,
    preferred_order: Sequence[str] = (),
) -> Dict[str, Dict[str, Any]]:
    """Figures per group label (codes index labels); the overall figures are the one-group case.

    indicators: outcome_indicators() matrix; confidences: (2 x n) or None; clusters: per-row
    cluster codes for the intervals and the bootstrap (None: one cluster per row, plain Wilson
    intervals); n_resamples: None = no bootstrap.
    """
    n_groups = len(labels)
    counts = group_counts(indicators, codes, n_groups)
    conf_sums = None if confidences is None else group_sums(confidences, codes, n_groups)
    deffs = None if clusters is None else design_effects(indicators, codes, n_groups, clusters)
    members = rows_by_group(codes, n_groups) if n_resamples else None
    if clusters is None:
        clusters = np.arange(indicators.shape[1])
    index = {label: i for i, label in enumerate(labels)}
    out = {}
    for label in ordered_labels(labels, preferred_order):
        g = index[label]
        boot = None
        if members is not None:
            rows = members[g]
            boot = cluster_bootstrap_intervals(cluster_counts(indicators[:, rows], clusters[rows]), n_resamples, rng)
        out[label] = figures(counts[g], None if conf_sums is None else conf_sums[g], boot, None if deffs is None else deffs[g])
    return out


def levels_mean(by_difficulty: Mapping[str, Mapping[str, Any]]) -> Optional[float]:
    """Unweighted mean of per-level mr_t2f in dict order (low, medium, high first), the paper's
    headline convention; levels without T items (mr_t2f None) have no rate and are left out."""
    values = [group["mr_t2f"] for group in by_difficulty.values() if group["mr_t2f"] is not None]
    return sum(values) / len(values) if values else None


def answer_outcomes(
    predictions: Sequence[Optional[str]],
    original_predictions: Sequence[Optional[str]],
    references: Sequence[str],
) -> np.ndarray:
    """outcome_indicators() of raw answer columns; every reference must be a non-empty answer."""
    pred, orig, ref = encode_answers(predictions, original_predictions, references)
    if (ref < 0).any():
        row = int(np.argmax(ref < 0))
        raise ValueError(f"references[{row}] is {references[row]!r}: every item needs a non-empty reference answer")
    return outcome_indicators(pred, orig, ref)


def check_levels(difficulty: Optional[Sequence[Optional[str]]]) -> None:
    """Refuse a difficulty label other than exactly "low", "medium" or "high" (None/"" = on no level), naming
    its row: "Low", " low" or "extreme" would otherwise become groups of their own in mr_t2f_levels_mean."""
    if difficulty is None:
        return
    bad = {label for label in set(difficulty) if not _is_missing_label(label) and label not in LEVEL_ORDER}
    if bad:
        row = next(i for i, label in enumerate(difficulty) if label in bad)
        raise ValueError(
            f"difficulty[{row}] is {difficulty[row]!r}; a difficulty label is exactly 'low', 'medium' or 'high' "
            "(lower case, no spaces), or None for an item on no level"
        )


def cluster_codes(group_id: Optional[Sequence[Optional[str]]]) -> Optional[np.ndarray]:
    """Per-row cluster codes from group_id, or None (one cluster per row) when it is not given."""
    encoded = optional_labels(CLUSTER_INPUT, group_id)
    return None if encoded is None else encoded[0]


def misleading_rate_report(
    predictions: Sequence[Optional[str]],
    original_predictions: Sequence[Optional[str]],
    references: Sequence[str],
    groups: Optional[Mapping[str, Optional[Sequence[Optional[str]]]]] = None,
    group_id: Optional[Sequence[Optional[str]]] = None,
    confidences: Tuple[Optional[Sequence[Optional[float]]], Optional[Sequence[Optional[float]]]] = (None, None),
    n_resamples: Optional[int] = None,
    seed: Optional[int] = None,
    pressure: Optional[Mapping[str, Optional[Sequence[Any]]]] = None,
    pressure_turns: Optional[int] = None,
) -> Dict[str, Any]:
    """The default config's result from plain columns (what _compute calls).

    groups maps "difficulty"/"source"/"question_type" to per-row labels; confidences is
    (original_confidence, confidence_on_original_after); pressure maps PRESSURE_INPUTS to per-row values,
    read with pressure_turns (adds "pressure" to the figures and to every group's); None anywhere means
    "not given".
    """
    answers = {"predictions": predictions, "original_predictions": original_predictions, "references": references}
    optional = {**(groups or {}), CLUSTER_INPUT: group_id, **dict(zip(CONFIDENCE_INPUTS, confidences)), **(pressure or {})}
    n = check_lengths({**answers, **{name: values for name, values in optional.items() if values is not None}})
    if n == 0:
        raise ValueError("empty input: predictions, original_predictions and references have no rows")
    if n_resamples is not None:
        check_bootstrap_options(n_resamples, seed)
    check_levels((groups or {}).get("difficulty"))
    indicators = answer_outcomes(predictions, original_predictions, references)
    common = {
        "confidences": confidence_matrix(*confidences),
        "clusters": cluster_codes(group_id),
        "n_resamples": n_resamples,
        "rng": np.random.default_rng(seed) if n_resamples else None,
    }
    result = summarise_groups(indicators, np.zeros(n, dtype=np.int64), ["all"], **common)["all"]
    pushed = pressure_rows(
        pressure or {}, pressure_turns, indicators[FIELD_INDEX["n_t"]], indicators[FIELD_INDEX["correct_after"]],
        common["clusters"], n_resamples, seed,
    )  # fmt: skip
    if pushed is not None:
        result["pressure"] = pushed.figures(np.arange(n))
    for name, key in GROUP_INPUTS.items():
        values = (groups or {}).get(name)
        rows = None
        if name in PARTIAL_GROUP_INPUTS:
            found = labelled_rows(values)
            rows, encoded = (None, None) if found is None else (found[0], found[1:])
        else:
            encoded = optional_labels(name, values)
        if encoded is None:
            continue
        preferred = LEVEL_ORDER if name == "difficulty" else count_order(encoded[1]) if name == "misled_count" else ()
        if rows is None:
            result[key] = summarise_groups(indicators, *encoded, preferred_order=preferred, **common)
        else:
            subset = {
                **common,
                "confidences": None if common["confidences"] is None else common["confidences"][:, rows],
                "clusters": None if common["clusters"] is None else common["clusters"][rows],
            }
            result[key] = summarise_groups(indicators[:, rows], *encoded, preferred_order=preferred, **subset)
        if pushed is not None:
            in_breakdown = np.arange(n) if rows is None else rows
            for label, members in zip(encoded[1], rows_by_group(encoded[0], len(encoded[1]))):
                result[key][label]["pressure"] = pushed.figures(in_breakdown[members])
    if "by_difficulty" in result:
        result["mr_t2f_levels_mean"] = levels_mean(result["by_difficulty"])
    return result


# ----------------------------------------------------------------------------- pressure: turn of flip


def whole_numbers(name: str, values: Optional[Sequence[Any]], low: int, high: int) -> Optional[np.ndarray]:
    """The column as floats (NaN where not given), or None when no row has a value; ValueError naming the
    first row whose value is not a whole number in [low, high]."""
    if values is None:
        return None
    array = np.asarray([np.nan if value is None else value for value in values], dtype=np.float64)
    given = ~np.isnan(array)
    if not given.any():
        return None
    bad = given & ((array != np.floor(array)) | (array < low) | (array > high))
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{name}[{row}] = {array[row]:g}; {name} holds whole numbers from {low} to {high}, or None")
    return array


def pressure_times(
    turn_of_flip: Optional[Sequence[Any]], turns_asked: Optional[Sequence[Any]], horizon: int, n: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Each row's last turn observed and whether it flipped there: its turn of flip, else (held) the turns it
    was asked (turns_asked; horizon when not given), i.e. censored there."""
    flip = whole_numbers("turn_of_flip", turn_of_flip, 1, horizon)
    asked = whole_numbers("turns_asked", turns_asked, 1, horizon)
    flip = np.full(n, np.nan) if flip is None else flip
    asked = np.full(n, float(horizon)) if asked is None else np.where(np.isnan(asked), horizon, asked)
    late = flip > asked  # NaN compares False
    if late.any():
        row = int(np.argmax(late))
        raise ValueError(f"turn_of_flip[{row}] = {flip[row]:g} is after turns_asked[{row}] = {asked[row]:g}; a flip is on a turn asked")
    events = ~np.isnan(flip)
    return np.where(events, flip, asked).astype(np.int64), events


def survival_counts(times: np.ndarray, events: np.ndarray, horizon: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per turn k = 1..horizon: rows at risk (last turn observed >= k) and rows flipping at k."""
    last = np.bincount(times, minlength=horizon + 1)[1:]
    at_risk = np.cumsum(last[::-1])[::-1]
    return at_risk, np.bincount(times[events], minlength=horizon + 1)[1:]


def kaplan_meier(at_risk: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """Kaplan-Meier share still holding after each turn (last axis: turns; any leading axes: replicates).

    S(k) = prod_{j <= k} (1 - flipped_j / at_risk_j). Where no row is at risk any more, S stays 0 if every
    row had flipped, and is undefined (NaN) if rows left unflipped (censored before the horizon).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        hazard = np.where(at_risk > 0, flipped / np.maximum(at_risk, 1), 0.0)
    survival = np.cumprod(1.0 - hazard, axis=-1)
    return np.where((at_risk == 0) & (survival > 0), np.nan, survival)


def restricted_mean(survival: np.ndarray) -> np.ndarray:
    """Restricted mean turn of flip up to N+1 (N: the turns asked): the area under S from turn 0 to N+1,
    1 + S(1) + ... + S(N) = E[min(turn of flip, N+1)], a row that never flips counting N+1. Restricting to N
    would score a row that never flips like one flipping at turn N (and every model 1.0 at N = 1).
    NaN where the curve is undefined by turn N."""
    return 1.0 + survival.sum(axis=-1)


def _value(x: float) -> Optional[float]:
    return None if math.isnan(x) else float(x)


def pressure_figures(
    times: np.ndarray,
    events: np.ndarray,
    stage1_correct: np.ndarray,
    flips: Optional[np.ndarray],
    clusters: np.ndarray,
    horizon: int,
    n_resamples: int,
    seed: int,
) -> Dict[str, Any]:
    """Survival of the stage-1-correct rows (T) under pressure, their restricted mean turn of flip with a
    cluster-bootstrap percentile interval (the same resamples give each turn's survival_ci), and flips."""
    t_times, t_events = times[stage1_correct], events[stage1_correct]
    at_risk, flipped = survival_counts(t_times, t_events, horizon)
    survival = kaplan_meier(at_risk, flipped)
    out: Dict[str, Any] = {
        "turns": horizon,
        "n_t": int(stage1_correct.sum()),
        "at_risk": at_risk.tolist(),
        "flipped": flipped.tolist(),
        "never_flipped": int((~t_events).sum()),
        "survival": [_value(x) for x in survival],
        "survival_ci": [None] * horizon,
        "mean_turn_of_flip": None,
        "mean_turn_of_flip_ci": None,
    }
    if t_times.size:
        out["mean_turn_of_flip"] = _value(float(restricted_mean(survival)))
        # One column per (outcome, turn): flipped at k, or last observed unflipped at k.
        cells = np.zeros((2 * horizon, t_times.size), dtype=bool)
        cells[np.where(t_events, t_times - 1, horizon + t_times - 1), np.arange(t_times.size)] = True
        totals = bootstrap_totals(cluster_counts(cells, clusters[stage1_correct]), n_resamples, np.random.default_rng(seed))
        boot_flipped = totals[:, :horizon]
        boot_at_risk = np.cumsum((boot_flipped + totals[:, horizon:])[:, ::-1], axis=1)[:, ::-1]
        boot_survival = kaplan_meier(boot_at_risk, boot_flipped)
        out["mean_turn_of_flip_ci"] = percentile_interval(restricted_mean(boot_survival))
        out["survival_ci"] = [percentile_interval(boot_survival[:, k]) for k in range(horizon)]
    n = int(times.size)
    out["flips"] = None if flips is None else int(np.nansum(flips))
    out["mean_flips"] = None if flips is None or n == 0 else float(np.nansum(flips)) / n
    return out


class PressureRows(NamedTuple):
    """Every row's pressure outcome, for the figures of any subset of rows (overall, per group)."""

    times: np.ndarray
    events: np.ndarray
    stage1_correct: np.ndarray
    flips: Optional[np.ndarray]
    clusters: np.ndarray
    horizon: int
    n_resamples: int
    seed: int

    def figures(self, rows: np.ndarray) -> Dict[str, Any]:
        flips = None if self.flips is None else self.flips[rows]
        return pressure_figures(
            self.times[rows], self.events[rows], self.stage1_correct[rows], flips, self.clusters[rows],
            self.horizon, self.n_resamples, self.seed,
        )  # fmt: skip


def check_flips_match_answers(events: np.ndarray, stage1_correct: np.ndarray, correct_after: np.ndarray) -> None:
    """Refuse a row whose turn of flip disagrees with its answers: a row flips (turn_of_flip given) exactly when
    its prediction's correctness differs from its original prediction's (wrong after a correct stage 1, correct
    after a wrong one), since the prediction is the answer at the flip, else the last turn's."""
    bad = events != (stage1_correct != correct_after)
    if bad.any():
        row = int(np.argmax(bad))
        before, after = ("correct" if ok else "wrong" for ok in (stage1_correct[row], correct_after[row]))
        flip = "a turn_of_flip" if events[row] else "no turn_of_flip"
        raise ValueError(
            f"row {row} has {flip} but its original prediction is {before} and its prediction {after}; "
            "give turn_of_flip exactly for the rows whose prediction (the answer at the flip) changed correctness"
        )


def pressure_rows(
    inputs: Mapping[str, Optional[Sequence[Any]]],
    horizon: Optional[int],
    stage1_correct: np.ndarray,
    correct_after: np.ndarray,
    clusters: Optional[np.ndarray],
    n_resamples: Optional[int],
    seed: Optional[int],
) -> Optional[PressureRows]:
    """The rows' pressure outcomes from PRESSURE_INPUTS and pressure_turns; None for a run without pressure.
    turn_of_flip must be given (None where a row held): left out, every row would silently read as held."""
    n = stage1_correct.size
    if horizon is None:
        given = [name for name in PRESSURE_INPUTS if whole_numbers(name, inputs.get(name), 0, 2**62) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} given without pressure_turns: pass pressure_turns=N, the turns each row could be pushed")
        return None
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or not 1 <= horizon <= MAX_PRESSURE_TURNS:
        raise ValueError(f"pressure_turns must be an int from 1 to {MAX_PRESSURE_TURNS}, got {horizon!r}")
    if inputs.get("turn_of_flip") is None:
        raise ValueError(
            "pressure_turns given without turn_of_flip: pass turn_of_flip (each row's 1-based turn of its first "
            "flip, None where it held) with every batch, or leave out pressure_turns"
        )
    times, events = pressure_times(inputs.get("turn_of_flip"), inputs.get("turns_asked"), int(horizon), n)
    check_flips_match_answers(events, stage1_correct, correct_after)
    flips = whole_numbers("flips", inputs.get("flips"), 0, 2**62)
    if flips is not None and np.isnan(flips).any():
        raise partly_missing("flips", "None or NaN", int(np.isnan(flips).sum()), n)
    return PressureRows(
        times, events, stage1_correct, flips, np.arange(n) if clusters is None else clusters, int(horizon),
        n_resamples or PRESSURE_RESAMPLES, 0 if seed is None else int(seed),
    )  # fmt: skip


# ----------------------------------------------------------------------------- consistency config


def sample_consistency(samples: Sequence[Sequence[Optional[str]]], references: Sequence[str]) -> Dict[str, Any]:
    """Figures of k >= 2 repeated answers per item.

    The modal answer is the most common parsed answer (ties: the one met first). An unparsed
    sample matches nothing, so it breaks agreement and counts as its own outcome in the entropy
    (natural log, nats).
    """
    if len(samples) == 0:
        raise ValueError("empty input: samples and references have no rows")
    check_lengths({"samples": samples, "references": references})
    all_agree = modal_correct = 0
    agreement_total = entropy_total = 0.0
    ks = []
    for row, (answers, reference) in enumerate(zip(samples, references)):
        k = len(answers)
        if k < 2:
            raise ValueError(f"samples[{row}] has k={k} answers; the consistency config needs k >= 2 per item")
        reference_key = normalise_answer(reference)
        if reference_key is None:
            raise ValueError(f"references[{row}] is {reference!r}: every item needs a non-empty reference answer")
        keys = [normalise_answer(answer) for answer in answers]
        tally = Counter(key for key in keys if key is not None)
        n_unparsed = k - sum(tally.values())
        modal, modal_count = tally.most_common(1)[0] if tally else (None, 0)
        ks.append(k)
        all_agree += modal_count == k
        modal_correct += modal is not None and modal == reference_key
        agreement_total += modal_count / k
        probabilities = [count / k for count in tally.values()] + [1.0 / k] * n_unparsed
        entropy_total += sum(-p * math.log(p) for p in probabilities)
    n = len(samples)
    return {
        "n": n,
        "k_min": min(ks),
        "k_max": max(ks),
        "consistency_rate": all_agree / n,
        "consistency_rate_ci": wilson_interval(all_agree, n),
        "mean_agreement": agreement_total / n,
        "modal_accuracy": modal_correct / n,
        "modal_accuracy_ci": wilson_interval(modal_correct, n),
        "mean_entropy": entropy_total / n,
    }


# ----------------------------------------------------------------------------- input validation


def check_lengths(columns: Mapping[str, Sequence[Any]]) -> int:
    """Common length of the columns; ValueError naming each length when they differ."""
    lengths = {name: len(column) for name, column in columns.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} has {length}" for name, length in lengths.items())
        raise ValueError(f"inputs differ in length: {listed} rows")
    return next(iter(lengths.values()), 0)


def partly_missing(name: str, marker: str, n_missing: int, n_rows: int) -> ValueError:
    """The error for an optional input given on some rows only (marker: what counted as missing)."""
    return ValueError(
        f"{name} is missing ({marker}) for {n_missing} of {n_rows} rows; give it for every row or leave it out"
    )


def _is_missing_label(value: Optional[str]) -> bool:
    return value is None or not value.strip()


def optional_labels(name: str, values: Optional[Sequence[Optional[str]]]) -> Optional[Tuple[np.ndarray, List[str]]]:
    """Codes and labels of an optional per-row label column; None when no row carries a label.

    A label on some rows but not others is an error: splitting those rows off silently would
    change every figure of the breakdown.
    """
    if values is None:
        return None
    codes, labels = encode_labels(values)
    missing = [i for i, label in enumerate(labels) if _is_missing_label(label)]
    if not missing:
        return codes, labels
    n_missing = int(np.isin(codes, missing).sum())
    if n_missing == len(values):
        return None
    raise partly_missing(name, "None or empty", n_missing, len(values))


def labelled_rows(values: Optional[Sequence[Optional[str]]]) -> Optional[Tuple[np.ndarray, np.ndarray, List[str]]]:
    """The rows that carry a label, their codes among the labels, and the labels; None when no row does.

    For PARTIAL_GROUP_INPUTS: rows without a label are in no group of the breakdown.
    """
    if values is None:
        return None
    codes, labels = encode_labels(values)
    labelled = np.array([not _is_missing_label(label) for label in labels], dtype=bool)
    if not labelled.any():
        return None
    rows = np.flatnonzero(labelled[codes])
    new_codes = (np.cumsum(labelled) - 1)[codes[rows]]
    return rows, new_codes, [label for label, kept in zip(labels, labelled) if kept]


def count_order(labels: Sequence[str]) -> List[str]:
    """Count labels ("6", "12") in numeric order."""
    return sorted(labels, key=lambda label: (len(label.strip()), label.strip()))


def confidence_matrix(
    original_confidence: Optional[Sequence[Optional[float]]],
    confidence_on_original_after: Optional[Sequence[Optional[float]]],
) -> Optional[np.ndarray]:
    """(2 x n) float array of the two confidence inputs, or None when neither is given.

    None and NaN both mean "not given"; both inputs must be given for every row or for none.
    """
    columns = {}
    for name, values in zip(CONFIDENCE_INPUTS, (original_confidence, confidence_on_original_after)):
        array = np.asarray([] if values is None else values, dtype=np.float64)
        missing = int(np.isnan(array).sum())
        if values is None or missing == len(array):
            continue
        if missing:
            raise partly_missing(name, "None or NaN", missing, len(array))
        if ((array < 0.0) | (array > 1.0)).any():
            row = int(np.argmax((array < 0.0) | (array > 1.0)))
            raise ValueError(f"{name}[{row}] = {array[row]!r} is not a probability in [0, 1]")
        columns[name] = array
    if not columns:
        return None
    if len(columns) == 1:
        absent = next(name for name in CONFIDENCE_INPUTS if name not in columns)
        raise ValueError(f"{absent} is missing: give both {' and '.join(CONFIDENCE_INPUTS)}, or neither")
    return np.stack([columns[name] for name in CONFIDENCE_INPUTS])


def check_bootstrap_options(n_resamples: Any, seed: Any) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"bootstrap must be a positive int (number of resamples), got {n_resamples!r}")
    if n_resamples > MAX_BOOTSTRAP:
        raise ValueError(f"bootstrap is {n_resamples}; at most {MAX_BOOTSTRAP} resamples are allowed (memory and time)")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")


def as_column(name: str, values: Any) -> list:
    """A batch input as a list: a sequence, NumPy array or pandas Series. A bare string or scalar, a mapping
    (whose keys would be read as the rows) or a set (no row order) is an error, not a column."""
    is_series = type(values).__name__ == "Series" and hasattr(values, "tolist")
    if isinstance(values, (str, bytes)) or not (isinstance(values, (Sequence, np.ndarray)) or is_series):
        raise ValueError(f"{name} must be a list of per-row values, got {type(values).__name__}")
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {values.shape}")
        return values.tolist()
    return list(values)


def _first_bad(
    name: str, values: Sequence[Any], ok_types: Tuple[type, ...], expected: str, types: Optional[Set[type]] = None
) -> None:
    """Raise naming the first value whose type is not allowed; checks the set of types first (fast), or ``types``
    where the caller has that set already."""
    types = set(map(type, values)) if types is None else types
    bad_types = {t for t in types if not issubclass(t, ok_types) or issubclass(t, bool)}
    if bad_types:
        row = next(i for i, value in enumerate(values) if type(value) in bad_types)
        raise ValueError(f"{name}[{row}] is {type(values[row]).__name__} {values[row]!r}; {name} must hold {expected}")


def is_missing_marker(value: Any) -> bool:
    """A pandas/NumPy missing value (NaN, pd.NA, NaT) standing for None in a column of strings."""
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")


def _missing_as_none(values: list) -> Tuple[list, Set[type]]:
    """The column with pandas' missing values (a DataFrame column of answers with gaps) read as None, and the
    set of its values' types (for _first_bad)."""
    # The common case, strings with or without None (unparsed answers), is found from the set of the
    # column's types (one C-level pass): a Python call per row costs ~1 s per 1e6 rows (profiled).
    types = set(map(type, values))
    if types <= {str, type(None)}:
        return values, types
    values = [None if is_missing_marker(value) else value for value in values]
    return values, set(map(type, values))


def check_column(name: str, feature: Any, values: list) -> list:
    """Validate one batch column against its feature; returns the column ready for Arrow."""
    if name == "references":
        _first_bad(name, values, (str,), "answer strings")
    elif isinstance(feature, datasets.Value) and feature.dtype == "string":
        values, types = _missing_as_none(values)
        _first_bad(name, values, (str, type(None)), "strings (None or '' where missing/unparsed)", types)
    elif isinstance(feature, datasets.Value):
        _first_bad(name, values, (int, float, np.integer, np.floating, type(None)), "numbers in [0, 1] or None")
    else:  # the consistency config's samples: a list of answers per row
        for row, answers in enumerate(values):
            answers, types = _missing_as_none(as_column(f"{name}[{row}]", answers))
            _first_bad(f"{name}[{row}]", answers, (str, type(None)), "answer strings or None", types)
            values[row] = answers
    return values


def missing_column(feature: Any, n_rows: int) -> Any:
    """Stand-in for an optional input left out: '' for labels, NaN for numbers (both read as missing).

    Not None: datasets scans an all-None list row by row for a first value before converting it
    (~0.2 s per 1e6-row column, profiled), while '' and a float array convert at once.
    """
    if isinstance(feature, datasets.Value) and feature.dtype == "string":
        return [""] * n_rows
    return np.full(n_rows, np.nan)


def prepare_batch(config_name: str, features: datasets.Features, given: Mapping[str, Any]) -> Dict[str, Any]:
    """Validated batch with a column for every feature; optional inputs left out become missing_column()."""
    unknown = sorted(name for name, value in given.items() if name not in features and value is not None)
    if unknown:
        raise ValueError(f"unknown input(s) {unknown} for config {config_name!r}; its inputs are {list(features)}")
    missing = [name for name in REQUIRED_INPUTS[config_name] if given.get(name) is None]
    if missing:
        raise ValueError(f"missing input(s) {missing} for config {config_name!r}")
    columns = {name: as_column(name, value) for name, value in given.items() if name in features and value is not None}
    n_rows = check_lengths(columns)
    return {
        name: check_column(name, feature, columns[name]) if name in columns else missing_column(feature, n_rows)
        for name, feature in features.items()
    }


# ----------------------------------------------------------------------------- the evaluate module

_STRING = datasets.Value("string")
_FLOAT = datasets.Value("float64")

# One full feature set per config. evaluate 0.4.x takes the input names from features[0] even
# when features is a list, so a list cannot express optional inputs; instead every optional input
# is a nullable column and leaving it out stores a "missing" value (see missing_column).
CONFIG_FEATURES = {
    "default": datasets.Features(
        {
            **{name: _STRING for name in ANSWER_INPUTS},
            **{name: _STRING for name in (*GROUP_INPUTS, CLUSTER_INPUT)},
            **{name: _FLOAT for name in (*CONFIDENCE_INPUTS, *PRESSURE_INPUTS)},
        }
    ),
    "consistency": datasets.Features({"samples": datasets.List(_STRING), "references": _STRING}),
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MubMisleadingRate(evaluate.Metric):
    """Misleading rate, intervals and breakdowns for MUB's two-stage protocol (see module docstring)."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in CONFIG_FEATURES:
            raise ValueError(f"unknown config {self.config_name!r}; choose one of {sorted(CONFIG_FEATURES)}")
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=CONFIG_FEATURES[self.config_name],
            homepage="https://github.com/Yunkaidang/uncertainty",
            reference_urls=["https://arxiv.org/abs/2411.02708"],
        )

    # True while compute() reads the stored columns: see _feature_names.
    _reading_every_column = False
    # The inputs every add_batch() since the last compute() gave (see add_batch).
    _given_in_every_batch: frozenset = frozenset()

    def _feature_names(self) -> List[str]:
        """The required inputs only, except while compute() reads the stored columns.

        evaluate.combine's add/add_batch pick each module's inputs out of the caller's arguments
        by these names, so an optional input the caller left out (difficulty, ...) must not be one
        of them; compute() needs every stored column, optional ones included.
        """
        names = list(self.features)
        if self._reading_every_column:
            return names
        return [name for name in names if name in REQUIRED_INPUTS[self.config_name]]

    def compute(self, *, predictions=None, references=None, **kwargs) -> Optional[dict]:
        """Compute the figures; optional per-row inputs may be left out (see missing_column)."""
        names = list(self.features)
        unknown = sorted(set(kwargs) - set(names) - set(COMPUTE_OPTIONS[self.config_name]))
        if predictions is not None and "predictions" not in names:
            unknown.append("predictions")
        if unknown:
            allowed = [*names, *COMPUTE_OPTIONS[self.config_name]]
            raise ValueError(f"unknown argument(s) {unknown} for config {self.config_name!r}; it takes {allowed}")
        # evaluate's compute insists on every feature name; None here means "left out".
        for name in names:
            if name not in ("predictions", "references"):
                kwargs.setdefault(name, None)
        inputs_given = any(value is not None for name, value in kwargs.items() if name in names)
        if self.writer is None and predictions is None and references is None and not inputs_given:
            raise ValueError("empty input: pass the inputs to compute() or call add_batch() first")
        self._reading_every_column = True
        try:
            return super().compute(predictions=predictions, references=references, **kwargs)
        finally:
            self._reading_every_column = False

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """Add a batch of rows; optional per-row inputs may be left out (see missing_column)."""
        given = {"predictions": predictions, "references": references, **kwargs}
        batch = prepare_batch(self.config_name, self.features, given)
        # A left-out column is stored as missing values, like rows given None; _compute must tell the two apart
        # for turn_of_flip (None: held), so it is read as given only if every batch gave it.
        named = {name for name, value in given.items() if value is not None}
        self._given_in_every_batch = named if self.writer is None else self._given_in_every_batch & named
        if self.writer is None:
            # The first-batch set-up of evaluate's own add_batch.
            self.selected_feature_format = self.features
            self.writer_batch_size = self.writer_batch_size or WRITER_BATCH_ROWS
            self._init_writer()
        # evaluate's add_batch would run Features.encode_batch, one Python call per cell
        # (~0.5 s per 1e6-row string column, profiled); the columns are validated above, so hand
        # them straight to the ArrowWriter, which converts whole lists in C.
        self.writer.write_batch(batch)

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """Add one row (as a batch of one); other inputs use their batch names, e.g. original_predictions."""
        row = {"references": [reference]}
        if prediction is not None or "predictions" in self.features:  # None = an unparsed answer here
            row["predictions"] = [prediction]
        # evaluate.combine's add passes the plural names; as in evaluate's own add, they win.
        row.update({name: [value] for name, value in kwargs.items()})
        self.add_batch(**row)

    def _compute(
        self,
        predictions=None,
        original_predictions=None,
        references=None,
        samples=None,
        bootstrap=None,
        seed=None,
        pressure_turns=None,
        **optional,
    ) -> Dict[str, Any]:
        if self.config_name == "consistency":
            return sample_consistency(samples, references)
        return misleading_rate_report(
            predictions,
            original_predictions,
            references,
            groups={name: optional[name] for name in GROUP_INPUTS},
            group_id=optional[CLUSTER_INPUT],
            confidences=(optional[CONFIDENCE_INPUTS[0]], optional[CONFIDENCE_INPUTS[1]]),
            n_resamples=bootstrap,
            seed=seed,
            pressure={name: optional[name] if name in self._given_in_every_batch else None for name in PRESSURE_INPUTS},
            pressure_turns=pressure_turns,
        )
