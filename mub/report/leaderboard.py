"""The leaderboard: submission files in, one ranked table per protocol out (pure: no I/O).

:func:`build_leaderboard` takes the text of each submission (``mub submit``'s
results files) and returns a :class:`Leaderboard`: the valid submissions as
rows, ranked apart per protocol, the paper's 17 models as reference rows, and
every file that was left out with the reason. A submission is left out when

- it is not a JSON object in the results-file schema (config, results, rates
  as fractions in [0, 1] with 95% intervals and counts);
- its items fingerprint for a task differs from the board's (the fingerprint
  most submissions of its protocol share): it answered other items (another
  build, a subset);
- another submission of the same model under the same protocol is newer.

:mod:`mub.report.leaderboard_files` reads sources and writes
``leaderboard.json`` and ``index.html``; ``spaces/leaderboard/app.py`` shows
the same rows.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from mub.report.paper import PAPER_CITATION, PAPER_RESULTS
from mub.report.results_file import UNKNOWN_PROTOCOL, number, task_name
from mub.report.rows import KINDS

LEVELS = ("low", "medium", "high")  # mub_dataset.features.DIFFICULTY_LEVELS, without importing datasets
TASKS = {kind: task_name(kind) for kind in KINDS}
PAPER_PROTOCOL = "paper"  # the paper's decoding and prompts (issue 12's preset name)
PAPER_SOURCE = f"paper: {PAPER_CITATION}"
STAMP = re.compile(r"results_(\d{4}-\d{2}-\d{2})T(\d{2})-(\d{2})-(\d{2})")


class InvalidSubmission(ValueError):
    """A submission that cannot go on the board; the message is the reason."""


@dataclass(frozen=True)
class SubmissionFile:
    source: str  # where it came from: a path, or ORG/REPO:path for a Hub repository
    text: str


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str


@dataclass(frozen=True)
class Rate:
    """A fraction with its 95% interval and denominator (both unknown for the paper's rows)."""

    value: float | None
    ci: tuple[float, float] | None = None
    n: int | None = None


@dataclass(frozen=True)
class KindFigures:
    """One protocol kind (explicit or implicit): misleading rate per level and their unweighted mean."""

    levels: dict[str, Rate]
    mean: float | None


@dataclass(frozen=True)
class BoardRow:
    model: str
    protocol: str
    reference: bool  # a row of the paper's table, not a submission
    acc: Rate
    kinds: dict[str, KindFigures]  # "explicit", "implicit"; a kind not submitted is absent
    submitted: str | None  # ISO date
    source: str
    dataset_id: str | None = None
    fingerprints: tuple[tuple[str, str], ...] = ()
    rank: int | None = None

    @property
    def overall(self) -> float | None:
        """Mean of the explicit and implicit level means: the ranking key (lower holds answers better)."""
        means = [self.kinds[kind].mean for kind in KINDS if kind in self.kinds]
        if len(means) < len(KINDS) or any(mean is None for mean in means):
            return None
        return sum(means) / len(means)


@dataclass(frozen=True)
class Leaderboard:
    rows: list[BoardRow]  # per protocol: ranked submissions, then reference rows in the paper's order
    skipped: list[Skipped]
    fingerprints: dict[str, dict[str, str]]  # protocol -> task -> the board's items fingerprint

    @property
    def protocols(self) -> list[str]:
        return list(dict.fromkeys(row.protocol for row in self.rows))


# ------------------------------------------------------------------ validation


def _fraction(where: str, value: Any, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidSubmission(f"{where} is {value!r}, not a number")
    if not 0 <= value <= 1:
        hint = " (a percentage? results files hold fractions)" if 1 < value <= 100 else ""
        raise InvalidSubmission(f"{where} is {value!r}, not a fraction in [0, 1]{hint}")
    return float(value)


def _interval(where: str, value: Any, rate: float | None) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidSubmission(f"{where} is {value!r}, not a [low, high] pair")
    low, high = (_fraction(f"{where}[{i}]", bound, allow_none=False) for i, bound in enumerate(value))
    if not low <= high or (rate is not None and not low - 1e-9 <= rate <= high + 1e-9):
        raise InvalidSubmission(f"{where} {value!r} does not contain its rate {rate!r}")
    return low, high


def _count(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidSubmission(f"{where} is {value!r}, not a count")
    return value


def _rate(task: str, figures: Mapping[str, Any], rate: str, denominator: str) -> Rate:
    value = _fraction(f"{task}.{rate}", figures.get(rate))
    return Rate(value, _interval(f"{task}.{rate}_ci", figures.get(f"{rate}_ci"), value), _count(f"{task}.{denominator}", figures.get(denominator)))


def _kind(task: str, figures: Any) -> KindFigures:
    if not isinstance(figures, dict):
        raise InvalidSubmission(f"results.{task} is not an object")
    levels = {level: _rate(task, figures, f"mr_t2f_{level}", f"n_t_{level}") for level in LEVELS}
    return KindFigures(levels, _fraction(f"{task}.mr_t2f_levels_mean", figures.get("mr_t2f_levels_mean")))


def submitted_date(config: Mapping[str, Any], source: str) -> str:
    """The submission's UTC time: ``config.submitted_at``, else the ``results_<time>`` file name."""
    value = config.get("submitted_at")
    if value is not None:
        try:
            when = datetime.fromisoformat(str(value))
        except ValueError:
            raise InvalidSubmission(f"config.submitted_at {value!r} is not an ISO date") from None
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds")
    match = STAMP.search(source)
    if not match:
        raise InvalidSubmission("no config.submitted_at and no results_<time>.json file name to date it")
    day, hour, minute, second = match.groups()
    return f"{day}T{hour}:{minute}:{second}+00:00"


def parse_submission(file: SubmissionFile) -> BoardRow:
    """One submission as a board row; :class:`InvalidSubmission` says why it cannot be one."""
    try:
        document = json.loads(file.text)
    except json.JSONDecodeError as exc:
        raise InvalidSubmission(f"not JSON ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict) or not isinstance(document.get("results"), dict):
        raise InvalidSubmission("not a results file: needs a 'config' object and a 'results' object (mub submit writes them)")
    config, results = document["config"], document["results"]
    model = config.get("model_name")
    if not isinstance(model, str) or not model.strip():
        raise InvalidSubmission("config.model_name is missing")
    protocol = config.get("protocol", UNKNOWN_PROTOCOL)
    if not isinstance(protocol, str) or not protocol.strip():
        raise InvalidSubmission(f"config.protocol is {protocol!r}, not a preset name")
    tasks = [kind for kind in KINDS if TASKS[kind] in results]
    if not tasks:
        raise InvalidSubmission(f"results has neither {' nor '.join(TASKS.values())}")
    fingerprints = config.get("items_fingerprint")
    if not isinstance(fingerprints, dict):
        raise InvalidSubmission("config.items_fingerprint is missing: the items a result was computed on are unknown")
    for kind in tasks:
        if not isinstance(fingerprints.get(TASKS[kind]), str) or not fingerprints[TASKS[kind]]:
            raise InvalidSubmission(f"config.items_fingerprint has no fingerprint for {TASKS[kind]}")
    dataset_id = config.get("dataset_id")
    if dataset_id is not None and not isinstance(dataset_id, str):
        raise InvalidSubmission(f"config.dataset_id is {dataset_id!r}, not a Hub id")
    acc_figures = results[TASKS[tasks[0]]]  # stage 1 is the same prompt in both: the explicit run's, if any
    kinds = {kind: _kind(TASKS[kind], results[TASKS[kind]]) for kind in tasks}
    return BoardRow(
        model=model.strip(),
        protocol=protocol,
        reference=False,
        acc=_rate(TASKS[tasks[0]], acc_figures, "accuracy_before", "n"),
        kinds=kinds,
        submitted=submitted_date(config, file.source),
        source=file.source,
        dataset_id=dataset_id,
        fingerprints=tuple((TASKS[kind], fingerprints[TASKS[kind]]) for kind in tasks),
    )


# ------------------------------------------------------------------ the board


def paper_rows() -> list[BoardRow]:
    """The paper's 17 models, as fractions, under the paper's protocol."""
    rows = []
    for paper in PAPER_RESULTS:
        kinds = {
            kind: KindFigures(
                {level: Rate(number(round(rate / 100, 6))) for level, rate in zip(LEVELS, rates)},
                number(round(sum(rates) / len(rates) / 100, 6)),
            )
            for kind, rates in (("explicit", paper.explicit), ("implicit", paper.implicit))
        }
        rows.append(BoardRow(paper.model, PAPER_PROTOCOL, True, Rate(number(round(paper.acc / 100, 6))), kinds, None, PAPER_SOURCE))
    return rows


def board_fingerprints(rows: Iterable[BoardRow]) -> dict[str, dict[str, str]]:
    """Per protocol and task, the fingerprint most submissions share; a tie goes to the earliest submission.

    Per protocol, because a protocol preset may select its own items (the paper's exact misled counts).
    """
    seen: dict[tuple[str, str], Counter[str]] = {}
    first: dict[tuple[str, str, str], str] = {}
    for row in rows:
        for task, fingerprint in row.fingerprints:
            seen.setdefault((row.protocol, task), Counter())[fingerprint] += 1
            key = (row.protocol, task, fingerprint)
            first[key] = min(first.get(key, row.submitted or ""), row.submitted or "")
    board: dict[str, dict[str, str]] = {}
    for (protocol, task), counts in sorted(seen.items()):
        board.setdefault(protocol, {})[task] = min(counts, key=lambda fp: (-counts[fp], first[protocol, task, fp], fp))
    return board


def _rank_key(row: BoardRow) -> tuple:
    overall = row.overall
    return (overall is None, overall if overall is not None else 0.0, row.model.lower())


def build_leaderboard(files: Sequence[SubmissionFile], *, skipped: Sequence[Skipped] = (), reference: bool = True) -> Leaderboard:
    """Validate every file, keep the newest submission per (model, protocol), rank per protocol."""
    left_out = list(skipped)
    parsed: list[BoardRow] = []
    for file in files:
        try:
            parsed.append(parse_submission(file))
        except InvalidSubmission as exc:
            left_out.append(Skipped(file.source, str(exc)))
    fingerprints = board_fingerprints(parsed)
    matching = []
    for row in parsed:
        expected = fingerprints[row.protocol]
        wrong = [f"{task} {fp} (board: {expected[task]})" for task, fp in row.fingerprints if fp != expected[task]]
        if wrong:
            left_out.append(Skipped(row.source, "items fingerprint differs, other items were answered: " + ", ".join(wrong)))
        else:
            matching.append(row)
    newest: dict[tuple[str, str], BoardRow] = {}
    for row in sorted(matching, key=lambda r: (r.submitted or "", r.source)):
        key = (row.model, row.protocol)
        if key in newest:
            older = newest[key]
            left_out.append(Skipped(older.source, f"{row.model} ({row.protocol}) is submitted again, newer: {row.source}"))
        newest[key] = row
    board: list[BoardRow] = []
    references = paper_rows() if reference else []
    protocols = sorted({row.protocol for row in newest.values()} | {row.protocol for row in references},
                       key=lambda p: (p != PAPER_PROTOCOL, p == UNKNOWN_PROTOCOL, p))
    for protocol in protocols:
        ranked = sorted((row for row in newest.values() if row.protocol == protocol), key=_rank_key)
        board += [_with_rank(row, rank) for rank, row in enumerate(ranked, 1)]
        board += [row for row in references if row.protocol == protocol]
    return Leaderboard(board, left_out, fingerprints)


def _with_rank(row: BoardRow, rank: int) -> BoardRow:
    return replace(row, rank=rank)


# ------------------------------------------------------------------ flat rows (leaderboard.json, the Space)


def columns() -> list[str]:
    """The flat row's keys, in display order."""
    names = ["rank", "model", "protocol", "acc", "acc_ci", "acc_n"]
    for kind in KINDS:
        for level in LEVELS:
            names += [f"{kind}_{level}", f"{kind}_{level}_ci", f"{kind}_{level}_n"]
        names.append(f"{kind}_mean")
    return names + ["overall", "submitted", "source", "reference", "dataset_id"]


def flat_row(row: BoardRow) -> dict[str, Any]:
    """A row as JSON-ready fractions; a figure not given is None."""
    flat: dict[str, Any] = {
        "rank": row.rank,
        "model": row.model,
        "protocol": row.protocol,
        "acc": row.acc.value,
        "acc_ci": list(row.acc.ci) if row.acc.ci else None,
        "acc_n": row.acc.n,
    }
    for kind in KINDS:
        figures = row.kinds.get(kind)
        for level in LEVELS:
            rate = figures.levels[level] if figures else Rate(None)
            flat[f"{kind}_{level}"] = rate.value
            flat[f"{kind}_{level}_ci"] = list(rate.ci) if rate.ci else None
            flat[f"{kind}_{level}_n"] = rate.n
        flat[f"{kind}_mean"] = figures.mean if figures else None
    overall = row.overall
    flat.update(
        overall=None if overall is None else number(round(overall, 12)),
        submitted=row.submitted,
        source=row.source,
        reference=row.reference,
        dataset_id=row.dataset_id,
    )
    return flat


def board_document(board: Leaderboard) -> dict[str, Any]:
    """leaderboard.json: the rows, what was skipped and why, and the board's items fingerprints."""
    return {
        "units": "fractions; *_ci: 95% Wilson interval; *_n: its denominator (items answered correctly in stage 1, "
        "or all items for acc); *_mean: unweighted mean of the low/medium/high levels; overall: mean of the "
        "explicit and implicit means, the ranking key (lower holds answers better)",
        "protocols": board.protocols,
        "items_fingerprint": board.fingerprints,
        "rows": [flat_row(row) for row in board.rows],
        "skipped": [{"source": s.source, "reason": s.reason} for s in board.skipped],
    }


# ------------------------------------------------------------------ display table (the Space)

VALUE_COLUMNS = ["Acc"] + [f"{kind.capitalize()} {label}" for kind in KINDS for label in (*LEVELS, "mean")] + ["Overall"]
DISPLAY_COLUMNS = ["Rank", "Model", "Protocol", *VALUE_COLUMNS, "Submitted", "Source"]
INTERVAL_COLUMNS = ["Model", "Protocol", "Acc"] + [f"{kind.capitalize()} {level}" for kind in KINDS for level in LEVELS]


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _values(row: BoardRow) -> list[float | None]:
    values = [row.acc.value]
    for kind in KINDS:
        figures = row.kinds.get(kind)
        values += [figures.levels[level].value if figures else None for level in LEVELS]
        values.append(figures.mean if figures else None)
    return [*values, row.overall]


def select_rows(board: Leaderboard, protocol: str | None = None, search: str = "") -> list[BoardRow]:
    """The rows of one protocol (None: all) whose model or source contains ``search`` (any case)."""
    needle = search.strip().lower()
    return [
        row
        for row in board.rows
        if (not protocol or row.protocol == protocol) and (needle in row.model.lower() or needle in row.source.lower())
    ]


def display_table(
    board: Leaderboard, *, protocol: str | None = None, search: str = "", sort_by: str = "Rank", descending: bool = False
) -> list[list[Any]]:
    """The board as :data:`DISPLAY_COLUMNS` rows, figures in percent; empty cells sort last either way."""
    rows = []
    for row in select_rows(board, protocol, search):
        model = f"{row.model} (paper)" if row.reference else row.model
        rows.append([row.rank, model, row.protocol, *map(_percent, _values(row)), row.submitted or "", row.source])
    column = DISPLAY_COLUMNS.index(sort_by)
    present = [r for r in rows if r[column] not in (None, "")]
    absent = [r for r in rows if r[column] in (None, "")]
    return sorted(present, key=lambda r: r[column], reverse=descending) + absent


def _interval_text(rate: Rate) -> str:
    if rate.ci is None:
        return "–" if rate.n is None else f"n={rate.n}"
    return f"[{100 * rate.ci[0]:.2f}, {100 * rate.ci[1]:.2f}] n={rate.n}"


def interval_table(board: Leaderboard, *, protocol: str | None = None, search: str = "") -> list[list[str]]:
    """:data:`INTERVAL_COLUMNS` rows: each figure's 95% interval (percent) and its n; submissions only."""
    rows = []
    for row in select_rows(board, protocol, search):
        if row.reference:
            continue
        cells = [row.model, row.protocol, _interval_text(row.acc)]
        for kind in KINDS:
            figures = row.kinds.get(kind)
            cells += [_interval_text(figures.levels[level]) if figures else "–" for level in LEVELS]
        rows.append(cells)
    return rows
