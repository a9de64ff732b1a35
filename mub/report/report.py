"""Comparison reports over several run folders: tables, plots, markdown and HTML.

Assembly is pure: :func:`build_report` reads run folders into
:class:`RunSummary` records, groups them into one :class:`ModelRow` per model
(its explicit and implicit runs side by side, as in the paper's table) and
lays out a :class:`Report` of tables and figure specifications. The writers
(:func:`write_report`) then draw the PNGs and render ``report.md`` and a
self-contained ``report.html``.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

from mub.protocol.cues import TYPOGRAPHIC
from mub.protocol.stages import same_answer
from mub.report import plots
from mub.report import power
from mub.report.compare import (
    DEFAULT_BOOTSTRAP,
    ItemOutcomes,
    PairedBootstrap,
    check_bootstrap,
    match_items,
    outcomes,
    paired_bootstrap,
)
from mub.report.paper import PAPER_AVERAGE, PAPER_CITATION, PAPER_RESULTS
from mub.report.plots import levels_mean
from mub.report.rows import KINDS, STATES, ModelRow, RunSummary, read_results, run_folders
from mub.report.view import VERDICTS, write_typographic_example, write_view
from mub.runs.predictions import ItemPrediction
from mub.runs.storage import (
    RunFolder,
    cue_name,
    dialogue_form,
    protocol_name,
)
from mub_dataset.features import DIFFICULTY_LEVELS
from mub_dataset.files import staged_folder

VIEW_DIR = "view"  # the report's item view (mub view), beside report.html
MISSING = "–"


@dataclass(frozen=True)
class Estimate:
    """A table cell holding a rate with its interval and denominator (all as fractions)."""

    value: float | None
    ci: tuple[float, float] | None
    n: int

    def text(self) -> str:
        """``45.24 [38.10, 52.40] n=84``; a rate with an empty denominator reads ``– n=0``."""
        if self.value is None or self.ci is None:
            return f"{MISSING} n={self.n}"
        return f"{percent(self.value)} [{percent(self.ci[0])}, {percent(self.ci[1])}] n={self.n}"


Cell = str | Estimate


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    caption: str = ""


@dataclass
class FigureSpec:
    """A PNG to draw: ``draw(path)`` writes it."""

    filename: str
    title: str
    caption: str
    draw: Callable[[Path], None]
    # The items behind the figure: (label, `mub view` filter as a URL fragment), linked when the report has a view.
    links: tuple[tuple[str, str], ...] = ()


Block = Table | FigureSpec


@dataclass
class Report:
    title: str
    intro: str
    blocks: list[Block]
    run_dirs: tuple[Path, ...] = ()  # for the item view written beside the report


# ------------------------------------------------------------------ reading


def load_run(path: str | Path) -> RunSummary:
    """Read a finished run folder (``results.json`` and ``predictions.jsonl``)."""
    folder = RunFolder(path)
    document, config = read_results(path)
    return RunSummary(
        path=folder.path,
        model=document["model"],
        config=config,
        figures=document["results"][config],
        dataset=document.get("dataset", {}),
        predictions=list(folder.load_predictions().values()),
        protocol=protocol_name(document.get("run", {})),
        parser=document.get("run", {}).get("parser", "mub"),
        cue=cue_name({"config": config, **document.get("run", {})}),
        dialogue=dialogue_form(document.get("run", {})),
        pressure=document.get("run", {}).get("pressure"),
    )


def assign_labels(runs: Sequence[RunSummary]) -> None:
    """Label runs by model; a source config is named; runs that would collide get their folder name."""
    base = {id(run): run.model if run.config in KINDS else f"{run.model} [{run.config}]" for run in runs}
    for run in runs:
        if run.parser != "mub":  # a rescored run sits beside its original: name how it was read
            base[id(run)] += f" [{run.parser} parser]"
        if run.variant:  # a cue or dialogue form other than MUB's own: name it
            base[id(run)] += f" ({run.variant})"
    seen: dict[tuple[str, str], int] = {}
    for run in runs:
        key = (base[id(run)], run.kind)
        seen[key] = seen.get(key, 0) + 1
    clashing = {label for (label, _), count in seen.items() if count > 1}
    for run in runs:
        label = base[id(run)]
        run.label = f"{label} ({run.path.name})" if label in clashing else label


def group_by_model(runs: Sequence[RunSummary]) -> list[ModelRow]:
    """One row per label, in the order the runs were given."""
    rows: dict[str, ModelRow] = {}
    for run in runs:
        rows.setdefault(run.label, ModelRow(run.label)).runs[run.kind] = run
    return list(rows.values())


def transition_counts(predictions: Sequence[ItemPrediction]) -> list[list[int]]:
    """3x3 counts of (stage-1 state, stage-2 state) over correct / wrong / unparsed; errors left out."""
    counts = [[0] * len(STATES) for _ in STATES]
    for p in predictions:
        if p.error is None:
            counts[STATES.index(_state(p.original_prediction, p.answer))][
                STATES.index(_state(p.prediction, p.answer))
            ] += 1
    return counts


def _state(answer: str | None, reference: str) -> str:
    if not answer:
        return "unparsed"
    return "correct" if same_answer(answer, reference) else "wrong"


# ------------------------------------------------------------ formatting


def percent(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.2f}"


def rate_cell(figures: dict[str, Any] | None, rate: str, denominator: str) -> Cell:
    """The rate, its 95% interval and its denominator; a plain dash when the run or subset is missing."""
    if not figures:
        return MISSING
    ci = figures.get(f"{rate}_ci")
    return Estimate(figures.get(rate), tuple(ci) if ci else None, int(figures.get(denominator, 0)))


def level_figures(run: RunSummary | None, level: str) -> dict[str, Any] | None:
    if run is None:
        return None
    return run.figures.get("by_difficulty", {}).get(level)


# ---------------------------------------------------------------- tables


def main_table(rows: Sequence[ModelRow]) -> Table:
    """The paper's layout: Acc, then explicit L/M/H, then implicit L/M/H misleading rates."""
    headers = ["Model", "Acc"] + [f"{kind.capitalize()} {level}" for kind in KINDS for level in DIFFICULTY_LEVELS]
    body = []
    for row in rows:
        cells = [row.label, rate_cell(row.accuracy_run().figures, "accuracy_before", "n")]
        cells += [
            rate_cell(level_figures(row.runs.get(kind), level), "mr_t2f", "n_t")
            for kind in KINDS
            for level in DIFFICULTY_LEVELS
        ]
        body.append(cells)
    caption = (
        "Percentages with 95% Wilson intervals. Acc: stage-1 accuracy (of the explicit run when there is one), "
        "n = draws (one per item, or one per release copy under paper). Level columns: misleading rate (correct "
        "answers abandoned after the cue), n = draws answered correctly in stage 1, the rate's denominator."
    )
    return Table("Misleading rate by difficulty (paper layout)", headers, body, caption)


def summary_table(runs: Sequence[RunSummary]) -> Table:
    headers = [
        "Model",
        "Config",
        "Items",
        "Draws",
        "Errors",
        "Acc before",
        "Acc after",
        "MR T→F",
        "MR levels mean",
        "MR F→T",
        "Consistency",
        "McNemar p",
    ]
    body = []
    for run in runs:
        f = run.figures
        body.append(
            [
                run.label,
                run.config,
                str(f.get("n_items", f.get("n", 0))),
                str(f.get("n_draws", f.get("n_items", f.get("n", 0)))),  # runs made before draws: one per item
                str(f.get("errors", 0)),
                rate_cell(f, "accuracy_before", "n"),
                percent(f.get("accuracy_after")),
                rate_cell(f, "mr_t2f", "n_t"),
                percent(levels_mean(f)),
                rate_cell(f, "mr_f2t", "n_f"),
                percent(f.get("consistency")),
                MISSING if f.get("mcnemar_p") is None else f"{f['mcnemar_p']:.3g}",
            ]
        )
    caption = (
        "All items of each run. MR T→F: misleading rate; MR F→T: wrong or unparsed stage-1 answers that became "
        "correct after the cue; McNemar p: exact test of T→F against F→T flips. Rates are over draws (Draws: one "
        "per item, or one per release copy under paper); draws with errors are not scored."
    )
    return Table("All figures per run", headers, body, caption)


@dataclass(frozen=True)
class Comparison:
    config: str
    reference: RunSummary
    other: RunSummary
    result: PairedBootstrap
    detectable: float | None = None  # smallest rise in mr_t2f these shared items detect (mub.report.power)


def paired_comparisons(
    runs: Sequence[RunSummary], *, n_boot: int, seed: int, group: Callable[[RunSummary], tuple] | None = None
) -> list[Comparison]:
    """Each run against the first run given in its group, on the items both scored.

    The default group is the config and the way stage 2 asked (cue, dialogue):
    models compared under the same cue. :func:`cue_comparisons` groups by model
    and config instead: cues compared on one model.
    """
    group = group or (lambda run: (run.config, run.cue, run.dialogue))
    first: dict[tuple, RunSummary] = {}
    found = []
    for run in runs:
        reference = first.setdefault(group(run), run)
        if reference is not run:
            matched = match_items(outcomes(reference.predictions), outcomes(run.predictions))
            result = paired_bootstrap(*matched, n_boot=n_boot, seed=seed)
            found.append(Comparison(run.config, reference, run, result, detectable_difference(*matched)))
    order = list(first)
    return sorted(found, key=lambda c: order.index(group(c.reference)))  # grouped, stable within a group


def under_several_cues(runs: Sequence[RunSummary]) -> list[RunSummary]:
    """The runs of each model and config that was run under more than one cue or dialogue form."""
    variants: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for run in runs:
        variants.setdefault((run.model, run.config), set()).add((run.cue, run.dialogue))
    return [run for run in runs if len(variants[(run.model, run.config)]) > 1]


def cue_comparisons(runs: Sequence[RunSummary], *, n_boot: int, seed: int) -> list[Comparison]:
    """A model's runs of one config under other cues or dialogue forms, each against the first given."""
    return paired_comparisons(under_several_cues(runs), n_boot=n_boot, seed=seed, group=lambda run: (run.model, run.config))


def cue_table(runs: Sequence[RunSummary]) -> Table | None:
    """Cue families and dialogue forms side by side, for models run on one config under more than one."""
    compared = under_several_cues(runs)
    if not compared:
        return None
    headers = ["Model", "Config", "Cue", "Dialogue", "Acc before", "MR T→F", "MR F→T", "Acc after"]
    body: list[list[Cell]] = [
        [
            run.model,
            run.config,
            run.cue,
            run.dialogue,
            rate_cell(run.figures, "accuracy_before", "n"),
            rate_cell(run.figures, "mr_t2f", "n_t"),
            rate_cell(run.figures, "mr_f2t", "n_f"),
            percent(run.figures.get("accuracy_after")),
        ]
        for run in sorted(compared, key=lambda run: (run.model, run.config))
    ]
    caption = (
        "One model's runs of one config under different stage-2 cues (hint, note, opinion, authority, challenge) "
        "and dialogue forms (single: a fresh request with the cue; multi: the cue follows the model's own stage-1 "
        "answer), scored by the same metric. Percentages with 95% Wilson intervals; n: the rate's denominator."
    )
    return Table("Cue families and dialogue forms", headers, body, caption)


def detectable_difference(a: ItemOutcomes, b: ItemOutcomes) -> float | None:
    """The minimal mr_t2f difference the shared items detect (McNemar, alpha 0.05, power 0.8); None if none."""
    try:
        flips, n_shared = power.pilot_flips(a, b)
    except ValueError:  # no item answered correctly by both
        return None
    return power.minimal_detectable_difference(flips.p_a, flips.corr, n_shared)


# Below this rate in both directions a model neither gives in nor takes a correction: it ignores the user.
IGNORES_USER_BELOW = 0.10
# The MR F→T cell of a cue that names no option (challenge): no correction is offered, so none can be taken.
NO_CORRECTIVE_DIRECTION = "no corrective direction (the cue names no option)"


def stance(figures: dict[str, Any], corrective: bool = True) -> str:
    """How a run answers pressure, read from its two rates (see :func:`correction_table`); a cue without a
    corrective direction (``corrective`` False) is read from MR T→F alone."""
    t2f, f2t = figures.get("mr_t2f"), figures.get("mr_f2t")
    if not corrective:
        if t2f is None:
            return MISSING
        return "holds its answer" if t2f < IGNORES_USER_BELOW else "gives in to the push"
    if t2f is None or f2t is None:
        return MISSING
    if t2f < IGNORES_USER_BELOW and f2t < IGNORES_USER_BELOW:
        return "ignores the user"
    if t2f >= 0.5 and f2t >= 0.5:
        return "follows the user"
    return "misled more than corrected" if t2f > f2t else "corrected more than misled"


def correction_table(runs: Sequence[RunSummary]) -> Table:
    """Susceptibility (MR T→F) against receptiveness (MR F→T) per run: one axis alone can flatter a model."""
    headers = ["Model", "Config", "Cue", "Dialogue", "MR T→F (misled)", "MR F→T (corrected)", "Reading"]
    body: list[list[Cell]] = []
    for run in runs:
        corrective = run.corrective
        received = rate_cell(run.figures, "mr_f2t", "n_f") if corrective else NO_CORRECTIVE_DIRECTION
        cue = run.stage2_cue + (f", pressure ×{run.pressure['turns']}" if run.pressure else "")
        body.append([run.label, run.config, cue, run.dialogue, rate_cell(run.figures, "mr_t2f", "n_t"), received,
                     stance(run.figures, corrective)])  # fmt: skip
    caption = (
        "Every cue that names an option names the misleading one after a correct stage 1 and the true one after a "
        "wrong stage 1 (notes: misleading or guiding notes), so each run measures both directions: how readily the "
        "model is misled (MR T→F, susceptibility) and how readily it takes a correction (MR F→T, receptiveness). A "
        "low MR T→F alone can mean a model that ignores every user; Reading names it so when both rates are below "
        f"{IGNORES_USER_BELOW:.0%}, and a model that follows the user when both are at least 50%. The challenge cue "
        "names no option, so it offers no correction: its MR F→T cell reads \"no corrective direction\" (a wrong "
        "answer changed under it is the model correcting itself, not a correction taken, and is not a receptiveness "
        f"of 0), and its Reading comes from MR T→F alone: \"holds its answer\" below {IGNORES_USER_BELOW:.0%}, "
        "\"gives in to the push\" otherwise. So does --pressure whose templates never name {answer} (e.g. only "
        "\"Are you sure?\"): its pushes name no option."
    )
    return Table("Susceptibility and receptiveness", headers, body, caption)


def bootstrap_p(result: PairedBootstrap) -> str:
    if result.p_value is None:
        return MISSING
    # No resample crossed zero: the p-value is below the bootstrap's resolution, not zero.
    return f"< {1 / result.n_boot:.1g}" if result.p_value == 0 else f"{result.p_value:.3g}"


def comparison_table(
    comparisons: Sequence[Comparison],
    title: str = "Paired comparisons",
    against: str = "the first run given with the same config and the same cue and dialogue",
) -> Table:
    headers = [
        "Config",
        "Reference (A)",
        "Compared (B)",
        "Shared items",
        "MR A",
        "MR B",
        "B − A [95% CI]",
        "p",
        "Significant at 95%",
        "Detectable (80% power)",
    ]
    body = []
    for c in comparisons:
        r = c.result
        difference = MISSING if r.difference is None else f"{100 * r.difference:+.2f}"
        if r.ci is not None:
            difference += f" [{100 * r.ci[0]:+.2f}, {100 * r.ci[1]:+.2f}]"
        body.append(
            [
                c.config,
                c.reference.label,
                c.other.label,
                str(r.n_items),
                percent(r.mr_t2f_a),
                percent(r.mr_t2f_b),
                difference,
                bootstrap_p(r),
                MISSING if r.difference is None else ("yes" if r.significant else "no"),
                MISSING if c.detectable is None else f"{100 * c.detectable:.2f}",
            ]
        )
    n_boot, seed = (comparisons[0].result.n_boot, comparisons[0].result.seed) if comparisons else (0, 0)
    caption = (
        f"Misleading rate (T→F) of each run against {against}, on the items both "
        f"scored (matched by item id and draw). Paired bootstrap over items, each with all its draws ({n_boot} "
        f"resamples, seed {seed}): the interval is "
        "the 2.5–97.5 percentile of the difference; significant when it excludes 0. Detectable: the smallest rise in "
        "MR over A's that McNemar's test on the draws both answered correctly at stage 1 detects with 80% power at "
        "alpha 0.05 (`mub power`; draws of one item counted as independent pairs)."
    )
    return Table(title, headers, body, caption)


def runs_table(runs: Sequence[RunSummary]) -> Table:
    headers = ["Model", "Config", "Protocol", "Parser", "Run folder", "Dataset", "Items fingerprint"]
    body = [
        [
            run.label,
            run.config,
            run.protocol,
            run.parser,
            str(run.path),
            str(run.dataset.get("name", MISSING)),
            str(run.dataset.get("fingerprint", MISSING)),
        ]
        for run in runs
    ]
    caption = (
        "Runs with the same items fingerprint answered the same items; paired comparisons use the items they share. "
        "Parser: how outputs were read (reference: the authors' extraction, via mub rescore); a rescored run "
        "compared with its original shows what the choice of parser moves."
    )
    return Table("Runs", headers, body, caption)


def paper_table(rows: Sequence[ModelRow], left_out: Sequence[RunSummary]) -> Table:
    """The published rows, then the given models' rows (runs under the ``paper`` protocol only)."""
    headers = ["#", "Model", "Acc"] + [f"{kind.capitalize()} {level}" for kind in KINDS for level in DIFFICULTY_LEVELS]
    numbers = [str(number) for number in range(1, len(PAPER_RESULTS) + 1)] + [""]  # as in the scatter plot
    body: list[list[Cell]] = [
        [number, row.model, f"{row.acc:.2f}", *(f"{rate:.2f}" for rate in (*row.explicit, *row.implicit))]
        for number, row in zip(numbers, (*PAPER_RESULTS, PAPER_AVERAGE))
    ]
    for row in rows:
        cells: list[Cell] = ["run", row.label, percent(row.accuracy_run().figures.get("accuracy_before"))]
        cells += [percent((level_figures(row.runs.get(kind), level) or {}).get("mr_t2f")) for kind in KINDS for level in DIFFICULTY_LEVELS]
        body.append(cells)
    caption = f"{PAPER_CITATION}, main table; percentages. Rows marked 'run': the runs given, under --protocol paper."
    if left_out:
        caption += (
            " Not placed beside the paper's models, since their prompts and decoding are not the paper's: "
            + ", ".join(f"{run.label} ({run.config}, --protocol {run.protocol})" for run in left_out)
            + "."
        )
    return Table("Published results (reference)", headers, body, caption)


def by_notes_table(runs: Sequence[RunSummary]) -> Table | None:
    """Implicit rates had up to 3 or up to 5 notes been tried (the paper runs both), from one run."""
    implicit = [run for run in runs if "mr_t2f_by_notes" in run.figures]
    if not implicit:
        return None
    headers = ["Model", "MR T→F, ≤3 notes", "MR T→F, ≤5 notes", "MR F→T, ≤3 notes", "MR F→T, ≤5 notes"]
    body = [
        [run.label, *(percent(run.figures[key].get(k)) for key in ("mr_t2f_by_notes", "mr_f2t_by_notes") for k in ("3", "5"))]
        for run in implicit
    ]
    caption = (
        "An item counts as flipped within k notes when one of its first k notes flipped it; both columns come "
        "from the same requests (the first 3 notes' requests are those of a 3-note run)."
    )
    return Table("Implicit misleading rate by notes tried", headers, body, caption)


def pressure_table(runs: Sequence[RunSummary]) -> Table | None:
    """Runs under ``--pressure N``: the share of T items still holding after each turn, the restricted mean
    turn of flip and the answer changes, from the counts in results.json."""
    pushed = [run for run in runs if run.figures.get("pressure")]
    if not pushed:
        return None
    headers = ["Model", "Config", "Turns", "T items", "Holding after turn 1, 2, … (%)", "Mean turn of flip, to N+1 [95% CI]", "Mean flips"]
    body: list[list[Cell]] = []
    for run in pushed:
        figures = run.figures["pressure"]
        mean, ci = figures["mean_turn_of_flip"], figures["mean_turn_of_flip_ci"]
        shown = MISSING if mean is None else f"{mean:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        flips = MISSING if figures["mean_flips"] is None else f"{figures['mean_flips']:.2f}"
        holding = ", ".join(percent(share) for share in figures["survival"])
        body.append([run.label, run.config, str(figures["turns"]), str(figures["n_t"]), holding, shown, flips])
    caption = (
        "--pressure N pushes every item through N turns in one conversation; scoring stops at its first flip. "
        "Holding: the Kaplan-Meier share of the items answered correctly in stage 1 (T) still correct after each "
        "turn, from the per-turn counts at risk and flipped in results.json. Mean turn of flip: the restricted mean "
        "up to N+1 (an item that never flips counts N+1, so holding through N turns scores above flipping at turn "
        "N), with a 95% cluster-bootstrap interval over items. Mean flips: answer changes per item over all N turns "
        "(stage 1's answer first), all items."
    )
    return Table("Pressure over several turns: turn of flip", headers, body, caption)


# ---------------------------------------------------------------- report


def build_report(
    run_dirs: Sequence[str | Path], *, paper: bool = False, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
    view: bool = False,
) -> Report:
    """Read the run folders and lay out the report; nothing is written. ``view``: write `mub view` beside it."""
    if not run_dirs:
        raise ValueError("mub report needs at least one run folder")
    check_bootstrap(n_boot)
    runs = [load_run(path) for path in run_folders(run_dirs)]
    assign_labels(runs)
    rows = group_by_model(runs)
    # The paper's figures are comparable only with runs that asked and decoded as the paper did.
    beside_paper = paper and all(run.protocol == "paper" for run in runs)
    scatter_note = "; grey: the paper's models." if beside_paper else "."
    if paper and not beside_paper:
        scatter_note = "; the paper's models are not shown: not every run used --protocol paper."
    blocks: list[Block] = [
        main_table(rows),
        FigureSpec(
            "misleading_by_difficulty.png",
            "Misleading rate by difficulty, plotted",
            "Bars: misleading rate per difficulty level; whiskers: 95% Wilson intervals.",
            partial(plots.difficulty_bars, rows),
            tuple((f"flipped, {level}", view_filter(verdict="flipped", level=level)) for level in DIFFICULTY_LEVELS),
        ),
        summary_table(runs),
    ]
    comparisons = paired_comparisons(runs, n_boot=n_boot, seed=seed)
    if comparisons:
        blocks.append(comparison_table(comparisons))
    cues = cue_table(runs)
    if cues is not None:
        blocks.append(cues)
        against = "the same model's first run given on the same config (another cue or dialogue form)"
        blocks.append(comparison_table(cue_comparisons(runs, n_boot=n_boot, seed=seed), "Paired comparisons of cues", against))
    blocks += [
        FigureSpec(
            "transitions.png",
            "Stage 1 → stage 2 transitions",
            "Rows: stage-1 answer; columns: stage-2 answer after the cue. Cells: item count and share of the row.",
            partial(plots.transition_matrices, runs, [transition_counts(run.predictions) for run in runs]),
            tuple((verdict, view_filter(verdict=verdict)) for verdict in VERDICTS),
        ),
        FigureSpec(
            "misleading_by_source.png",
            "Misleading rate by source benchmark",
            "Misleading rate per source; grey cells: no run, or no item of that source answered correctly in stage 1.",
            partial(plots.source_heatmap, rows),
            tuple(
                (f"flipped, {source}", view_filter(source=source, verdict="flipped"))
                for source in sorted({p.source for run in runs for p in run.predictions})
            ),
        ),
        FigureSpec(
            "accuracy_vs_misleading.png",
            "Accuracy before misleading vs misleading rate",
            "x: stage-1 accuracy with its 95% interval; y: misleading rate, mean of the low/medium/high levels "
            "(the paper's headline convention)" + scatter_note,
            partial(plots.accuracy_scatter, rows, beside_paper),
        ),
        correction_table(runs),
        FigureSpec(
            "susceptibility_vs_receptiveness.png",
            "Misled or corrected: susceptibility against receptiveness",
            "x: MR F→T (a wrong stage-1 answer corrected by the cue); y: MR T→F (a correct answer abandoned); each "
            "run one point, with 95% intervals. Bottom left: ignores the user; top right: follows the user; above "
            "the diagonal: misled more often than corrected. A run under a cue that names no option (challenge) has "
            "no corrective direction, so no x: it is named above the plot, not placed.",
            partial(plots.susceptibility_scatter, runs),
        ),
    ]
    notes = by_notes_table(runs)
    if notes is not None:
        blocks.append(notes)
    pressure = pressure_table(runs)
    if pressure is not None:
        pushed = [run for run in runs if run.figures.get("pressure")]
        blocks += [
            pressure,
            FigureSpec(
                "pressure_survival.png",
                "Holding under pressure, turn by turn",
                "Share of the items answered correctly in stage 1 still holding after each push (Kaplan-Meier), "
                "one line per run; bands: 95% cluster-bootstrap intervals.",
                partial(plots.survival_curves, pushed),
            ),
        ]
    if paper:
        under_paper = [run for run in runs if run.protocol == "paper"]
        blocks.append(paper_table(group_by_model(under_paper), [run for run in runs if run.protocol != "paper"]))
    blocks += typographic_examples(runs)
    blocks.append(runs_table(runs))
    datasets = sorted({str(run.dataset.get("name", "?")) for run in runs})
    models = len({run.model for run in runs})  # one model under two cues is one model in two table rows
    intro = (
        f"{len(runs)} run(s) of {models} model(s), in {len(rows)} table row(s), on dataset {', '.join(datasets)}; "
        "run folders are listed at the end."
    )
    return Report("MUB report", intro, blocks, tuple(run.path for run in runs) if view else ())


def typographic_examples(runs: Sequence[RunSummary]) -> list[FigureSpec]:
    """One stage-2 image of each typographic run, the cue drawn in as the model saw it (see mub.report.view)."""
    return [
        FigureSpec(
            f"typographic_example_{number}.png",
            f"The typographic cue as {run.label} saw it ({run.config})",
            f"The first item of {run.path.name} that was asked stage 2, its cue drawn in with the run's recorded style "
            "(drawn again: the rendering is deterministic); every item's is in mub view.",
            partial(write_typographic_example, run.path),
        )
        for number, run in enumerate(runs)
        if run.cue == TYPOGRAPHIC
    ]


# ---------------------------------------------------------------- writers


def cell_text(cell: Cell) -> str:
    return cell.text() if isinstance(cell, Estimate) else cell


def markdown_table(table: Table) -> str:
    def line(cells: Sequence[Cell]) -> str:
        return "| " + " | ".join(cell_text(cell).replace("|", "\\|") for cell in cells) + " |"

    lines = [f"## {table.title}", "", line(table.headers), line(["---"] * len(table.headers))]
    lines += [line(row) for row in table.rows]
    if table.caption:
        lines += ["", table.caption]
    return "\n".join(lines)


def view_filter(**filters: str) -> str:
    """A `mub view` URL fragment selecting items (see mub.report.view_page)."""
    return urlencode(filters)


def render_markdown(report: Report, view: str | None = None) -> str:
    parts = [f"# {report.title}", report.intro]
    for block in report.blocks:
        if isinstance(block, Table):
            parts.append(markdown_table(block))
        else:
            text = f"## {block.title}\n\n![{block.title}]({block.filename})\n\n{block.caption}"
            if view and block.links:
                text += "\n\nThe items behind it: " + ", ".join(f"[{label}]({view}#{f})" for label, f in block.links)
            parts.append(text)
    return "\n\n".join(parts) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; white-space: nowrap; vertical-align: top; }
th { background: #f2f2f2; } .num { text-align: right; } small { color: #666; }
.scroll { overflow-x: auto; } .caption { color: #555; font-size: 13px; max-width: 60em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


_NUMBER = re.compile(r"^([-+<–]|\d)")


def _numeric_columns(table: Table) -> list[bool]:
    """Columns whose every cell is a number (right-aligned); text columns align left."""
    columns = list(zip(*table.rows)) or [() for _ in table.headers]
    return [all(isinstance(c, Estimate) or _NUMBER.match(c) for c in column) for column in columns]


def html_cell(cell: Cell, numeric: bool) -> str:
    css = " class='num'" if numeric else ""
    if isinstance(cell, Estimate) and cell.value is not None and cell.ci is not None:
        # Value on top, interval and n below in small type: keeps the wide paper layout on screen.
        detail = f"[{percent(cell.ci[0])}, {percent(cell.ci[1])}] n={cell.n}"
        return f"<td{css}>{percent(cell.value)}<br><small>{detail}</small></td>"
    return f"<td{css}>{html.escape(cell_text(cell))}</td>"


def html_table(table: Table) -> str:
    numeric = _numeric_columns(table)
    head = "".join(f"<th{' class=num' if num else ''}>{html.escape(h)}</th>" for h, num in zip(table.headers, numeric))
    body = "".join(
        "<tr>" + "".join(html_cell(cell, num) for cell, num in zip(row, numeric)) + "</tr>" for row in table.rows
    )
    return (
        f"<h2>{html.escape(table.title)}</h2><div class='scroll'><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div><p class='caption'>{html.escape(table.caption)}</p>"
    )


def html_figure(figure: FigureSpec, png: bytes, view: str | None = None) -> str:
    # Embedded as a data URL so the HTML file is self-contained (mail it, attach it, open it offline).
    data = base64.b64encode(png).decode("ascii")
    links = ""
    if view and figure.links:
        anchors = ", ".join(
            f"<a href='{html.escape(view)}#{html.escape(f)}'>{html.escape(label)}</a>" for label, f in figure.links
        )
        links = f"<p class='caption'>The items behind it: {anchors}</p>"
    return (
        f"<h2>{html.escape(figure.title)}</h2>"
        f"<img alt='{html.escape(figure.title)}' src='data:image/png;base64,{data}'>"
        f"<p class='caption'>{html.escape(figure.caption)}</p>{links}"
    )


def render_html(report: Report, images: dict[str, bytes], view: str | None = None) -> str:
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(report.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1><p>{html.escape(report.intro)}</p>",
    ]
    for block in report.blocks:
        parts.append(html_table(block) if isinstance(block, Table) else html_figure(block, images[block.filename], view))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    images: list[Path]


def write_report(report: Report, out: str | Path, overwrite: bool = False) -> ReportFiles:
    """Draw the PNGs, then write report.md and report.html next to them.

    ``out`` must be new, empty, or an earlier report (replaced only with ``overwrite``); it is
    written under a temporary name and renamed when complete.
    """
    out = Path(out)
    figures = [block for block in report.blocks if isinstance(block, FigureSpec)]
    images = {}
    with staged_folder(out, "report", overwrite=overwrite) as staging:
        for figure in figures:
            figure.draw(staging / figure.filename)
            images[figure.filename] = (staging / figure.filename).read_bytes()
        view = None
        if report.run_dirs:
            write_view(report.run_dirs, staging / VIEW_DIR)  # the items behind each figure, a click away
            view = f"{VIEW_DIR}/index.html"
        (staging / "report.md").write_text(render_markdown(report, view), encoding="utf-8")
        (staging / "report.html").write_text(render_html(report, images, view), encoding="utf-8")
    return ReportFiles(out / "report.md", out / "report.html", [out / figure.filename for figure in figures])
