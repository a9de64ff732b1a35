"""The leaderboard: submission files in, one ranked table per protocol out (pure: no I/O).

:func:`build_leaderboard` takes the text of each submission (``mub submit``'s
results files) and what the dataset publishes about its items
(:class:`PublishedItems`: per task, the items fingerprint and the item count,
read from the dataset's card by :mod:`mub.report.leaderboard_files`), and
returns a :class:`Leaderboard`: the valid submissions as rows, ranked apart
per protocol, the paper's 17 models as reference rows, and every file that
was left out with the reason. Nothing a file states is believed:

- size and nesting are capped before anything is read; an oversized integer,
  NaN or a non-object is refused;
- every rate is recomputed from its counts and every interval from its n; a
  level mean and the ranking key are computed from the levels, and a stated
  value that differs skips the file;
- the items fingerprint and item count of each task must equal the
  dataset's: a subset, another build or a partial run is left out;
- ``model_name`` must be the file's ``<org>/<model>/`` folder, and
  ``submitted_at`` must parse, equal the ``results_<time>`` stamp of its name
  and not lie in the future;
- names and protocol labels are compared normalised (NFKC, format characters
  removed, case-folded), so look-alikes are one model; the newest submission
  per model, protocol and cue counts;
- the stage-2 cue is recomputed from the run settings each task records
  (``config.stage2_settings``, :func:`~mub.report.results_file.pressure_label`):
  only MUB's own cues (the explicit hint, the implicit notes, one fresh request)
  rank in the main table (:attr:`Leaderboard.rows`); every other cue has a table
  of its own (:attr:`Leaderboard.other_cues`, by label), never mixed into the
  MUB rank nor merged with another cue. A stated ``pressure_label`` that its
  settings contradict, or tasks under different cues, skip the file; a file
  without recorded settings (before mub recorded them) goes to the
  :data:`CUE_NOT_RECORDED` table, unranked against MUB.

Every problem skips that one file with its reason; the board never fails.
:mod:`mub.report.leaderboard_files` reads sources and writes
``leaderboard.json`` and ``index.html``; ``spaces/leaderboard/app.py`` shows
the same rows.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import Any, Mapping, Sequence

from mub.protocol.cues import MAX_TEMPLATE_CHARS
from mub.protocol.pressure import MAX_TEMPLATES, MAX_TURNS, check_templates
from mub.protocol.typographic import check_record
from mub.report.paper import PAPER_CITATION, PAPER_RESULTS
from mub.report.results_file import STAGE2_KEYS, UNKNOWN_PROTOCOL, number, pressure_label, task_name
from mub.report.rows import KINDS
from mub_metric.mub_misleading_rate.mub_misleading_rate import wilson_interval

LEVELS = ("low", "medium", "high")  # mub_dataset.features.DIFFICULTY_LEVELS, without importing datasets
TASKS = {kind: task_name(kind) for kind in KINDS}
PAPER_PROTOCOL = "paper"  # the paper's decoding and prompts (issue 12's preset name)
PAPER_SOURCE = f"paper: {PAPER_CITATION}"
STAMP = re.compile(r"results_(\d{4}-\d{2}-\d{2})T(\d{2})-(\d{2})-(\d{2})\.json$")
# A results file is about 6 KB; anything far larger is not one (and would be copied into every page).
MAX_SUBMISSION_CHARS = 200_000
MAX_NESTING = 8  # a results file nests 4 levels deep (config.items_fingerprint, an interval in a task)
MAX_INT_DIGITS = 18  # counts; a 5,000-digit integer is refused before Python converts it
MAX_NAME_CHARS = 200
TOLERANCE = 1e-9  # figures are written rounded to 12 decimals
CLOCK_SKEW = timedelta(minutes=5)  # a submission "from the future" by less is a clock difference
# Where several draws per item make the interval clustered by item, it is not the Wilson interval of the
# draws; it must still contain its rate and be no narrower than half that interval, and no wider than it
# times sqrt(draws per item) (the widest a cluster of m identical draws makes it) with 25% slack.
CLUSTERED_NARROWEST, CLUSTERED_SLACK = 0.5, 1.25


# The table of submissions made before mub recorded their stage-2 settings: their cue cannot be recomputed.
CUE_NOT_RECORDED = "stage-2 cue not recorded (submitted before mub recorded it)"
SETTING_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")  # a cue, dialogue or preset name as mub writes it
MAX_NOTES = 100  # a submission's --notes: more than any item holds (each shows all of its notes)


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
class PublishedItems:
    """What the dataset publishes (``mub build`` writes it into the card and eval.yaml), per task."""

    source: str  # the dataset it was read from: a build folder or a Hub id
    fingerprints: dict[str, str]  # task (mub_explicit) -> items fingerprint
    n_items: dict[str, int]  # task -> number of items


@dataclass(frozen=True)
class Rate:
    """A fraction with its 95% interval and denominator (both unknown for the paper's rows)."""

    value: float | None
    ci: tuple[float, float] | None = None
    n: int | None = None


@dataclass(frozen=True)
class KindFigures:
    """One protocol kind (explicit or implicit): misleading rate per level and the mean of the three.

    ``mean`` is None unless all three levels have a rate: the page says "mean of the three levels".
    """

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
    cue: str | None = None  # the stage-2 cue's label (pressure_label); None: MUB's own cues

    @property
    def overall(self) -> float | None:
        """Mean of the explicit and implicit level means: the ranking key (lower holds answers better)."""
        means = [self.kinds[kind].mean for kind in KINDS if kind in self.kinds]
        if len(means) < len(KINDS) or any(mean is None for mean in means):
            return None
        return sum(means) / len(means)


@dataclass(frozen=True)
class Leaderboard:
    rows: list[BoardRow]  # MUB's own cues, per protocol: ranked submissions, then unranked ones; the paper's rows after all
    skipped: list[Skipped]
    fingerprints: dict[str, str]  # task -> the dataset's published items fingerprint
    # Every other stage-2 cue, by label: its own rows, ranked among themselves as ``rows`` are, never with MUB's.
    other_cues: dict[str, list[BoardRow]] = field(default_factory=dict)

    @property
    def protocols(self) -> list[str]:
        return list(dict.fromkeys(row.protocol for row in self.rows))


# ------------------------------------------------------------------ normalising submitted text


def clean_text(text: str) -> str:
    """``text`` as shown: NFKC, format characters (zero-width, direction marks) and control characters removed."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc")).strip()


def comparison_key(text: str) -> str:
    """The form two names are compared in: :func:`clean_text`, case-folded, inner white space collapsed."""
    return " ".join(clean_text(text).casefold().split())


# ------------------------------------------------------------------ reading a file safely


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidSubmission(f"holds an integer of {len(text)} digits; counts have at most {MAX_INT_DIGITS}")
    return int(text)


def _no_constant(text: str) -> None:
    raise InvalidSubmission(f"holds {text}, which is not a number in a results file")


def _nesting(document: Any) -> int:
    """How deep ``document`` nests (iteratively: a hostile depth cannot exhaust the stack)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            break
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def read_document(text: str) -> dict[str, Any]:
    """The JSON object of a submission, within the size, nesting and number caps."""
    if len(text) > MAX_SUBMISSION_CHARS:
        raise InvalidSubmission(f"{len(text)} characters, over the {MAX_SUBMISSION_CHARS:,} a results file may hold")
    try:
        document = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except InvalidSubmission:
        raise
    except RecursionError:
        raise InvalidSubmission(f"nested deeper than {MAX_NESTING} levels") from None
    except ValueError as exc:
        raise InvalidSubmission(f"not JSON ({str(exc)[:120]})") from None
    if _nesting(document) > MAX_NESTING:
        raise InvalidSubmission(f"nested deeper than {MAX_NESTING} levels")
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict) or not isinstance(document.get("results"), dict):
        raise InvalidSubmission("not a results file: needs a 'config' object and a 'results' object (mub submit writes them)")
    return document


# ------------------------------------------------------------------ checking figures against their counts


def _count(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidSubmission(f"{where} is {value!r}, not a count (submit again with this mub: it writes every count)")
    return value


def _stated_fraction(where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidSubmission(f"{where} is {value!r}, not a number")
    if not 0 <= value <= 1:
        hint = " (a percentage? results files hold fractions)" if 1 < value <= 100 else ""
        raise InvalidSubmission(f"{where} is {value!r}, not a fraction in [0, 1]{hint}")
    return float(value)


def _differs(stated: float | None, computed: float | None) -> bool:
    return (stated is None) != (computed is None) or (computed is not None and abs(stated - computed) > TOLERANCE)


def _checked_interval(where: str, value: Any, successes: int, total: int, draws_per_item: float) -> tuple[float, float] | None:
    """The stated interval, if it is the Wilson interval of successes/total (or, over several draws per
    item, a clustered interval around the same rate of a plausible width)."""
    wilson = wilson_interval(successes, total)
    if value is None and wilson is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or wilson is None:
        raise InvalidSubmission(f"{where} is {value!r}; the 95% interval of {successes}/{total} is {wilson}")
    low, high = (_stated_fraction(f"{where}[{i}]", bound) for i, bound in enumerate(value))
    if low is None or high is None:
        raise InvalidSubmission(f"{where} is {value!r}, not a [low, high] pair")
    if draws_per_item == 1:
        if abs(low - wilson[0]) > 1e-6 or abs(high - wilson[1]) > 1e-6:
            raise InvalidSubmission(
                f"{where} {value!r} is not the 95% Wilson interval of {successes}/{total} "
                f"[{wilson[0]:.6f}, {wilson[1]:.6f}]"
            )
        return low, high
    rate = successes / total
    width, expected = high - low, wilson[1] - wilson[0]
    widest = CLUSTERED_SLACK * math.sqrt(draws_per_item) * expected
    if not (low - TOLERANCE <= rate <= high + TOLERANCE) or not (
        CLUSTERED_NARROWEST * expected - TOLERANCE <= width <= widest + TOLERANCE
    ):
        raise InvalidSubmission(f"{where} {value!r} does not fit the rate {successes}/{total} (Wilson width {expected:.4f})")
    return low, high


def _checked_rate(
    where: str, figures: Mapping[str, Any], rate: str, numerator: str, denominator: str, draws_per_item: float
) -> Rate:
    """``figures[rate]`` recomputed as numerator/denominator; a stated value that differs is refused."""
    successes = _count(f"{where}.{numerator}", figures.get(numerator))
    total = _count(f"{where}.{denominator}", figures.get(denominator))
    if successes > total:
        raise InvalidSubmission(f"{where}.{numerator} = {successes} exceeds {where}.{denominator} = {total}")
    computed = successes / total if total else None
    stated = _stated_fraction(f"{where}.{rate}", figures.get(rate))
    if _differs(stated, computed):
        raise InvalidSubmission(f"{where}.{rate} is {stated!r}, but {numerator}/{denominator} = {successes}/{total} gives {computed!r}")
    ci = _checked_interval(f"{where}.{rate}_ci", figures.get(f"{rate}_ci"), successes, total, draws_per_item)
    return Rate(None if computed is None else number(computed), ci, total)


def _kind(task: str, figures: Any, published: PublishedItems) -> tuple[KindFigures, Rate]:
    """One task's level rates and mean, and its stage-1 accuracy, all recomputed from the counts."""
    if not isinstance(figures, dict):
        raise InvalidSubmission(f"results.{task} is not an object")
    n_items = _count(f"{task}.n_items", figures.get("n_items"))
    if n_items != published.n_items[task]:
        raise InvalidSubmission(
            f"{task} answered {n_items} items, the dataset's {task} has {published.n_items[task]}: "
            "only full runs of the benchmark rank (no --limit, filters or unmerged shards)"
        )
    n_draws = _count(f"{task}.n_draws", figures.get("n_draws", n_items))
    errors = _count(f"{task}.errors", figures.get("errors"))
    n = _count(f"{task}.n", figures.get("n"))
    if errors:
        raise InvalidSubmission(f"{task} has {errors} item errors: finish them (mub run --resume) before submitting")
    if n_draws < n_items or n + errors != n_draws:
        raise InvalidSubmission(f"{task}: n = {n} scored of {n_draws} draws of {n_items} items do not add up")
    draws_per_item = n_draws / n_items if n_items else 1.0
    _checked_rate(task, figures, "mr_t2f", "t2f", "n_t", draws_per_item)
    _checked_rate(task, figures, "mr_f2t", "f2t", "n_f", draws_per_item)
    acc = _checked_rate(task, figures, "accuracy_before", "n_t", "n", draws_per_item)
    levels = {}
    for level in LEVELS:
        level_n = _count(f"{task}.n_{level}", figures.get(f"n_{level}"))
        rate = _checked_rate(task, figures, f"mr_t2f_{level}", f"t2f_{level}", f"n_t_{level}", draws_per_item)
        if rate.n > level_n:
            raise InvalidSubmission(f"{task}.n_t_{level} = {rate.n} exceeds {task}.n_{level} = {level_n}")
        levels[level] = rate
    for count in ("n", "n_t", "t2f"):  # the levels are disjoint subsets of the items
        in_levels = sum(figures[f"{count}_{level}"] for level in LEVELS)
        if in_levels > figures[count]:
            raise InvalidSubmission(f"{task}: the levels hold {in_levels} for {count}, more than the {figures[count]} in all")
    rates = [rate.value for rate in levels.values() if rate.value is not None]
    # The run's own mean (the metric's levels_mean) is over the levels that have a rate.
    computed = sum(rates) / len(rates) if rates else None
    stated = _stated_fraction(f"{task}.mr_t2f_levels_mean", figures.get("mr_t2f_levels_mean"))
    if _differs(stated, computed):
        raise InvalidSubmission(f"{task}.mr_t2f_levels_mean is {stated!r}, but its levels give {computed!r}")
    mean = number(computed) if len(rates) == len(LEVELS) else None
    return KindFigures(levels, mean), acc


# ------------------------------------------------------------------ identity and date


def _model_name(config: Mapping[str, Any], source: str) -> str:
    model = config.get("model_name")
    if not isinstance(model, str) or not clean_text(model) or len(model) > MAX_NAME_CHARS:
        raise InvalidSubmission("config.model_name is missing (or not a name)")
    shown = clean_text(model)
    folder = PurePosixPath(source).parent.parts
    parts = shown.split("/")
    if [comparison_key(part) for part in folder[-len(parts):]] != [comparison_key(part) for part in parts]:
        raise InvalidSubmission(
            f"config.model_name {shown!r} is not the file's folder {'/'.join(folder[-2:])!r}: a submission lives "
            "in <org>/<model>/results_<time>.json of its own model"
        )
    return shown


def submitted_date(config: Mapping[str, Any], source: str, now: datetime) -> str:
    """``config.submitted_at`` in UTC, checked against the ``results_<time>.json`` stamp and the clock."""
    match = STAMP.search(source)
    if not match:
        raise InvalidSubmission("the file name is not results_<YYYY-MM-DDTHH-MM-SS>.json, as mub submit writes it")
    day, hour, minute, second = match.groups()
    value = config.get("submitted_at")
    if not isinstance(value, str) or len(value) > 40:
        raise InvalidSubmission("config.submitted_at is missing (or not a date)")
    try:
        when = datetime.fromisoformat(value)
        when = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
        stamped = datetime.fromisoformat(f"{day}T{hour}:{minute}:{second}+00:00")
    except (ValueError, OverflowError):
        raise InvalidSubmission("config.submitted_at is not an ISO date (or out of range)") from None
    if when.replace(microsecond=0) != stamped:
        raise InvalidSubmission(f"config.submitted_at {when.isoformat()} is not the file name's time {stamped.isoformat()}")
    if when > now + CLOCK_SKEW:
        raise InvalidSubmission(f"config.submitted_at {when.isoformat()} lies in the future")
    return when.isoformat(timespec="seconds")


def _setting_name(where: str, value: Any) -> None:
    """A recorded name (absent, or as mub writes one): a label never carries submitted markup or prose."""
    if value is None or (isinstance(value, str) and SETTING_NAME.match(value)):
        return
    raise InvalidSubmission(f"{where} is {str(value)[:40]!r}, not a setting name as mub writes it")


def _task_settings(task: str, settings: Any) -> Mapping[str, Any]:
    """One task's recorded stage-2 settings, checked for the types :func:`pressure_label` reads."""
    where = f"config.stage2_settings.{task}"
    if not isinstance(settings, dict) or set(settings) - set(STAGE2_KEYS):
        raise InvalidSubmission(f"{where} is not the run settings mub submit records ({', '.join(STAGE2_KEYS)})")
    if settings.get("config") != task.removeprefix("mub_"):
        raise InvalidSubmission(f"{where}.config is {str(settings.get('config'))[:40]!r}, not this task's config")
    protocol, cue = settings.get("protocol") or {}, settings.get("cue") or {}
    if not isinstance(protocol, dict) or not isinstance(cue, dict):
        raise InvalidSubmission(f"{where}: protocol and cue are objects")
    _setting_name(f"{where}.protocol.preset", protocol.get("preset"))
    _setting_name(f"{where}.cue.name", cue.get("name"))
    _setting_name(f"{where}.dialogue", settings.get("dialogue"))
    template = cue.get("template")
    if template is not None and (not isinstance(template, str) or len(template) > MAX_TEMPLATE_CHARS):
        raise InvalidSubmission(f"{where}.cue.template is not a cue template")
    if settings.get("typographic") is not None:
        try:
            check_record(settings["typographic"])
        except ValueError as exc:
            raise InvalidSubmission(f"{where}.typographic: {exc}") from None
    pressure = settings.get("pressure")
    if pressure is not None and not (
        isinstance(pressure, dict) and set(pressure) == {"turns", "templates"} and _within(pressure["turns"], MAX_TURNS)
    ):  # fmt: skip
        raise InvalidSubmission(f"{where}.pressure is not {{turns: 1 to {MAX_TURNS}, templates: [...]}}")
    if pressure is not None:
        try:
            check_templates(pressure["templates"], f"{where}.pressure.templates")
        except ValueError:  # its message quotes the template: a submission's text stays off the board
            raise InvalidSubmission(
                f"{where}.pressure.templates are not pushes mub --pressure takes (1 to {MAX_TEMPLATES} non-empty strings "
                f"of at most {MAX_TEMPLATE_CHARS} characters, each filling {{answer}} or no field)"
            ) from None
    if settings.get("notes") is not None and not _within(settings["notes"], MAX_NOTES):
        raise InvalidSubmission(f"{where}.notes is not a count of notes, 1 to {MAX_NOTES}")
    return settings


def _within(value: Any, most: int) -> bool:
    """Whether ``value`` is a whole number from 1 to ``most`` (a JSON true is no number)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= most


def stage2_cue(config: Mapping[str, Any], tasks: Sequence[str]) -> str | None:
    """The submission's stage-2 cue label, recomputed from each task's recorded run settings (never the stated
    ``pressure_label``, which must agree); None for MUB's own, :data:`CUE_NOT_RECORDED` without settings."""
    recorded = config.get("stage2_settings")
    if recorded is None:
        return CUE_NOT_RECORDED
    if not isinstance(recorded, dict) or not set(tasks) <= set(recorded):
        raise InvalidSubmission(f"config.stage2_settings lacks the run settings of a task it ranks ({', '.join(tasks)})")
    labels = {task: pressure_label(_task_settings(task, recorded[task])) for task in tasks}
    if len(set(labels.values())) > 1:
        listed = ", ".join(f"{task}: {label or 'MUB cue'}" for task, label in labels.items())
        raise InvalidSubmission(
            f"its tasks ran under different stage-2 cues ({listed}); submit MUB's own cues together and each other cue "
            "in a file of its own (mub submit refuses the mix)"
        )
    label = labels[tasks[0]]
    if "pressure_label" in config and config["pressure_label"] != label:
        stated = config["pressure_label"]
        raise InvalidSubmission(
            f"config.pressure_label says {'MUB cue' if stated is None else repr(str(stated)[:60])}, but its run "
            f"settings give {label or 'MUB cue'!r}: the board places a file by its settings; submit again with mub submit"
        )
    return label


def parse_submission(file: SubmissionFile, published: PublishedItems, now: datetime | None = None) -> BoardRow:
    """One submission as a board row; :class:`InvalidSubmission` says why it cannot be one."""
    now = now or datetime.now(timezone.utc)
    document = read_document(file.text)
    config, results = document["config"], document["results"]
    model = _model_name(config, file.source)
    protocol = config.get("protocol", UNKNOWN_PROTOCOL)
    if not isinstance(protocol, str) or not comparison_key(protocol) or len(protocol) > MAX_NAME_CHARS:
        raise InvalidSubmission("config.protocol is not a preset name")
    tasks = [kind for kind in KINDS if TASKS[kind] in results]
    if not tasks:
        raise InvalidSubmission(f"results has neither {' nor '.join(TASKS.values())}")
    fingerprints = config.get("items_fingerprint")
    if not isinstance(fingerprints, dict):
        raise InvalidSubmission("config.items_fingerprint is missing: the items a result was computed on are unknown")
    for kind in tasks:
        task = TASKS[kind]
        if task not in published.fingerprints:
            raise InvalidSubmission(f"the dataset {published.source} publishes no {task}")
        if fingerprints.get(task) != published.fingerprints[task]:
            raise InvalidSubmission(
                f"{task} items fingerprint {str(fingerprints.get(task))[:40]!r} is not the dataset's "
                f"{published.fingerprints[task]!r}: other items were answered (another build or a subset)"
            )
    dataset_id = config.get("dataset_id")
    if dataset_id is not None and (not isinstance(dataset_id, str) or len(dataset_id) > MAX_NAME_CHARS):
        raise InvalidSubmission("config.dataset_id is not a Hub id")
    submitted = submitted_date(config, file.source, now)
    cue = stage2_cue(config, [TASKS[kind] for kind in tasks])
    checked = {kind: _kind(TASKS[kind], results[TASKS[kind]], published) for kind in tasks}
    return BoardRow(
        model=model,
        protocol=comparison_key(protocol),
        reference=False,
        acc=checked[tasks[0]][1],  # stage 1 is the same prompt in both: the explicit run's, if any
        kinds={kind: figures for kind, (figures, _) in checked.items()},
        submitted=submitted,
        source=file.source,
        dataset_id=None if dataset_id is None else clean_text(dataset_id),
        fingerprints=tuple((TASKS[kind], fingerprints[TASKS[kind]]) for kind in tasks),
        cue=cue,
    )


def _checked(file: SubmissionFile, published: PublishedItems, now: datetime) -> BoardRow | Skipped:
    """The file's row, or why it is skipped: whatever is wrong with one file stays with that file."""
    try:
        return parse_submission(file, published, now)
    except InvalidSubmission as exc:
        return Skipped(file.source, str(exc))
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:  # never the whole board
        return Skipped(file.source, f"unreadable ({type(exc).__name__})")


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


def _rank_key(row: BoardRow) -> tuple:
    overall = row.overall
    return (overall is None, overall if overall is not None else 0.0, comparison_key(row.model))


def build_leaderboard(
    files: Sequence[SubmissionFile],
    published: PublishedItems,
    *,
    skipped: Sequence[Skipped] = (),
    reference: bool = True,
    now: datetime | None = None,
) -> Leaderboard:
    """Check every file, keep the newest submission per (model, protocol, cue), rank per protocol within each cue.

    A row ranks when it has both kinds with all three levels; others are listed unranked after the ranked. MUB's
    own cues make :attr:`Leaderboard.rows` (with the paper's rows); each other cue its own list, ranked apart.
    """
    now = now or datetime.now(timezone.utc)
    left_out = list(skipped)
    parsed: list[BoardRow] = []
    for file in files:
        outcome = _checked(file, published, now)
        (left_out if isinstance(outcome, Skipped) else parsed).append(outcome)
    newest: dict[tuple[str, str, str | None], BoardRow] = {}
    for row in sorted(parsed, key=lambda r: (r.submitted or "", r.source)):
        key = (comparison_key(row.model), row.protocol, row.cue)
        if key in newest:
            older = newest[key]
            under = row.protocol + (f", cue {row.cue}" if row.cue else "")
            left_out.append(Skipped(older.source, f"{row.model} ({under}) is submitted again, newer: {row.source}"))
        newest[key] = row
    cues = sorted({row.cue for row in newest.values() if row.cue is not None}, key=lambda c: (c == CUE_NOT_RECORDED, c))
    other_cues = {cue: _ranked([row for row in newest.values() if row.cue == cue]) for cue in cues}
    board = _ranked([row for row in newest.values() if row.cue is None]) + (paper_rows() if reference else [])
    return Leaderboard(board, left_out, dict(published.fingerprints), other_cues)


def _ranked(rows: Sequence[BoardRow]) -> list[BoardRow]:
    """``rows`` ranked apart per protocol (the paper's first): ranked rows, then those without a rank."""
    board: list[BoardRow] = []
    protocols = sorted({row.protocol for row in rows}, key=lambda p: (p != PAPER_PROTOCOL, p == UNKNOWN_PROTOCOL, p))
    for protocol in protocols:
        ordered = sorted((row for row in rows if row.protocol == protocol), key=_rank_key)
        ranked = [row for row in ordered if row.overall is not None]
        board += [replace(row, rank=rank) for rank, row in enumerate(ranked, 1)]
        board += [row for row in ordered if row.overall is None]
    return board


# ------------------------------------------------------------------ flat rows (leaderboard.json, the Space)


def columns() -> list[str]:
    """The flat row's keys, in display order."""
    names = ["rank", "model", "protocol", "acc", "acc_ci", "acc_n"]
    for kind in KINDS:
        for level in LEVELS:
            names += [f"{kind}_{level}", f"{kind}_{level}_ci", f"{kind}_{level}_n"]
        names.append(f"{kind}_mean")
    return names + ["overall", "submitted", "source", "reference", "dataset_id", "cue"]


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
        cue=row.cue,
    )
    return flat


def board_document(board: Leaderboard) -> dict[str, Any]:
    """leaderboard.json: the rows (MUB's own cues), each other cue's rows apart, what was skipped and why, and
    the board's items fingerprints."""
    return {
        "units": "fractions, lower is better for every misleading rate; *_ci: 95% Wilson interval; *_n: its "
        "denominator (items answered correctly in stage 1, or all items for acc); *_mean: unweighted mean of the "
        "low/medium/high levels (null unless all three have a rate); overall: mean of the explicit and implicit "
        "means, the ranking key; every figure of a submission was recomputed from its counts; rows: MUB's own "
        "cues (explicit hint, implicit notes, one fresh request); other_cues: every other stage-2 cue by its label, "
        "recomputed from the run settings the submission records, ranked apart and never with MUB's",
        "protocols": board.protocols,
        "items_fingerprint": board.fingerprints,
        "rows": [flat_row(row) for row in board.rows],
        "other_cues": {cue: [flat_row(row) for row in rows] for cue, rows in board.other_cues.items()},
        "skipped": [{"source": s.source, "reason": s.reason} for s in board.skipped],
    }


# ------------------------------------------------------------------ display table (the Space)

# Short headers ("Exp. med.") so that narrow columns break between words, never inside one.
KIND_ABBREVIATIONS = {"explicit": "Exp.", "implicit": "Imp."}
LEVEL_ABBREVIATIONS = {"low": "low", "medium": "med.", "high": "high", "mean": "mean"}
VALUE_COLUMNS = (
    ["Acc"]
    + [f"{KIND_ABBREVIATIONS[kind]} {LEVEL_ABBREVIATIONS[label]}" for kind in KINDS for label in (*LEVELS, "mean")]
    + ["Overall"]
)
# The main table's columns; each submission's source is in the interval table, to keep the main one narrow.
DISPLAY_COLUMNS = ["Rank", "Model", "Protocol", *VALUE_COLUMNS, "Submitted"]
INTERVAL_COLUMNS = (
    ["Model", "Protocol", "Acc"]
    + [f"{KIND_ABBREVIATIONS[kind]} {LEVEL_ABBREVIATIONS[level]}" for kind in KINDS for level in LEVELS]
    + ["Source"]
)


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _values(row: BoardRow) -> list[float | None]:
    values = [row.acc.value]
    for kind in KINDS:
        figures = row.kinds.get(kind)
        values += [figures.levels[level].value if figures else None for level in LEVELS]
        values.append(figures.mean if figures else None)
    return [*values, row.overall]


def select_rows(board: Leaderboard, protocol: str | None = None, search: str = "", cue: str | None = None) -> list[BoardRow]:
    """The rows of one protocol (None: all) whose model or source contains ``search`` (any case): MUB's own cues,
    or (``cue``) the rows of that other cue's table."""
    needle = comparison_key(search)
    return [
        row
        for row in (board.rows if cue is None else board.other_cues.get(cue, []))
        if (not protocol or row.protocol == protocol)
        and (needle in comparison_key(row.model) or needle in comparison_key(row.source))
    ]


def display_table(
    board: Leaderboard, *, protocol: str | None = None, search: str = "", sort_by: str = "Rank", descending: bool = False,
    cue: str | None = None,
) -> list[list[Any]]:
    """The board as :data:`DISPLAY_COLUMNS` rows, figures in percent, submissions first and the paper's
    rows after them whatever the sort (they are not ranked against submissions); empty cells sort last.
    ``cue``: that other cue's table instead of MUB's."""
    column = DISPLAY_COLUMNS.index(sort_by)

    def ordered(rows: list[list[Any]]) -> list[list[Any]]:
        present = [r for r in rows if r[column] not in (None, "")]
        absent = [r for r in rows if r[column] in (None, "")]
        return sorted(present, key=lambda r: r[column], reverse=descending) + absent

    submitted, published = [], []
    for row in select_rows(board, protocol, search, cue):
        model = f"{row.model} (paper)" if row.reference else row.model
        cells = [row.rank, model, row.protocol, *map(_percent, _values(row)), (row.submitted or "")[:10]]
        (published if row.reference else submitted).append(cells)
    return ordered(submitted) + ordered(published)


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
        rows.append([*cells, row.source])
    return rows
