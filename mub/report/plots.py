"""The report's four plots, drawn with matplotlib's Agg backend (no display needed).

Figures are built with the object-oriented API on an Agg canvas, never through
pyplot: importing this module leaves the user's matplotlib backend alone (a
notebook keeps its inline plots) and keeps no global figure state.

Every plot sizes itself from the number of models so that one model and twenty
both stay readable: models sit on the y axis (long Hub ids read horizontally
instead of as rotated labels), the figure grows with the rows, and legends go
below the axes. Colours are the Okabe-Ito palette, distinguishable with the
common colour-vision deficiencies; models beyond eight also differ by marker.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from mub.report.paper import PAPER_RESULTS
from mub.report.rows import KINDS, STATES, ModelRow, RunSummary
from mub_dataset.features import DIFFICULTY_LEVELS

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LEVEL_COLOURS = {"low": "#56B4E9", "medium": "#E69F00", "high": "#D55E00"}
SEQUENTIAL = "viridis"  # perceptually uniform and colour-blind safe
DPI = 110
LABEL_WIDTH = 30  # characters per line of a model label


def wrap(label: str, width: int = LABEL_WIDTH) -> str:
    """Wrap a long model id over lines, preferring to break after '/' and '-'."""
    if len(label) <= width:
        return label
    spaced = label.replace("/", "/ ").replace("-", "- ")
    lines = textwrap.wrap(spaced, width=width, break_long_words=True, break_on_hyphens=False)
    return "\n".join(line.replace("/ ", "/").replace("- ", "-") for line in lines)


def model_style(index: int) -> dict[str, str]:
    """Colour and marker of the index-th model: colours cycle first, then markers change."""
    return {"color": OKABE_ITO[index % len(OKABE_ITO)], "marker": MARKERS[(index // len(OKABE_ITO)) % len(MARKERS)]}


def levels_mean(figures: dict) -> float | None:
    """The paper's headline: the metric's mean of per-level rates, else the pooled rate."""
    mean = figures.get("mr_t2f_levels_mean")
    return mean if mean is not None else figures.get("mr_t2f")


def present_kinds(rows: Sequence[ModelRow]) -> list[str]:
    return [kind for kind in KINDS if any(kind in row.runs for row in rows)]


def _figure(nrows: int, ncols: int, figsize: tuple[float, float], **subplots: object) -> tuple[Figure, np.ndarray]:
    """A figure on its own Agg canvas with a grid of axes (always 2-D)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **subplots)


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI, facecolor="white")


def _label_lines(labels: Sequence[str]) -> int:
    return max((wrap(label).count("\n") + 1 for label in labels), default=1)


# ------------------------------------------------------------ difficulty


def error_lengths(value: float, ci: Sequence[float]) -> tuple[float, float]:
    """Whisker lengths in percent; clipped at 0 because a Wilson bound can sit a rounding error inside the value."""
    return max(0.0, 100 * (value - ci[0])), max(0.0, 100 * (ci[1] - value))


def _rate_and_error(figures: dict | None) -> tuple[float, float, float] | None:
    if not figures or figures.get("mr_t2f") is None:
        return None
    rate = figures["mr_t2f"]
    below, above = error_lengths(rate, figures["mr_t2f_ci"])
    return 100 * rate, below, above


def _difficulty_panel(ax: Axes, rows: Sequence[ModelRow], kind: str) -> None:
    bar = 0.26
    for y, row in enumerate(rows):
        if kind not in row.runs:  # say so once, rather than leave a gap that reads as 0%
            ax.text(1, y, f"no {kind} run", va="center", fontsize=8, color="#666")
    for offset, level in zip((-bar, 0.0, bar), DIFFICULTY_LEVELS):
        for y, row in enumerate(rows):
            run = row.runs.get(kind)
            if run is None:
                continue
            found = _rate_and_error(run.figures.get("by_difficulty", {}).get(level))
            if found is None:  # no item of this level answered correctly in stage 1
                ax.text(1, y + offset, "n/a (n=0)", va="center", fontsize=7, color="#666")
                continue
            rate, below, above = found
            ax.barh(y + offset, rate, height=bar, color=LEVEL_COLOURS[level], edgecolor="white", linewidth=0.4)
            ax.errorbar(rate, y + offset, xerr=[[below], [above]], fmt="none", ecolor="#333", elinewidth=0.9, capsize=2)
    ax.set_title(f"{kind} hints" if kind == "explicit" else "implicit notes", fontsize=11)
    ax.set_xlim(0, 100)
    ax.set_xlabel("misleading rate (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def difficulty_bars(rows: Sequence[ModelRow], path: Path) -> None:
    """Grouped horizontal bars: one group per model, one bar per difficulty, one panel per protocol."""
    kinds = present_kinds(rows)
    height = 1.8 + 0.62 * len(rows) * max(1, _label_lines([r.label for r in rows]) / 2)
    fig, axes = _figure(1, len(kinds), (2.6 + 4.6 * len(kinds), height), sharey=True)
    for ax, kind in zip(axes[0], kinds):
        _difficulty_panel(ax, rows, kind)
    first = axes[0][0]
    first.set_yticks(range(len(rows)), [wrap(row.label) for row in rows], fontsize=9)
    first.set_ylim(len(rows) - 0.5, -0.5)  # first model at the top, as in the table
    handles = [Rectangle((0, 0), 1, 1, color=LEVEL_COLOURS[level]) for level in DIFFICULTY_LEVELS]
    fig.legend(
        handles,
        [f"{level} difficulty" for level in DIFFICULTY_LEVELS],
        loc="outside lower center",
        ncol=3,
        frameon=False,
        title="bars: misleading rate; whiskers: 95% interval",
        title_fontsize=9,
    )
    _save(fig, path)


# ------------------------------------------------------------ transitions


def _transition_panel(ax: Axes, counts: Sequence[Sequence[int]], title: str) -> AxesImage:
    matrix = np.asarray(counts, dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    image = ax.imshow(share, cmap=SEQUENTIAL, vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        colour = "black" if share[i, j] > 0.6 else "white"  # viridis is light at the top
        ax.text(j, i, f"{int(count)}\n{100 * share[i, j]:.0f}%", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(STATES)), STATES, fontsize=8)
    ax.set_yticks(range(len(STATES)), STATES, fontsize=8)
    ax.set_xlabel("stage 2 (after cue)", fontsize=8)
    ax.set_ylabel("stage 1", fontsize=8)
    ax.set_title(title, fontsize=9)
    return image


def transition_matrices(runs: Sequence[RunSummary], counts: Sequence[Sequence[Sequence[int]]], path: Path) -> None:
    """One 3x3 matrix per run (correct / wrong / unparsed, stage 1 by stage 2), in a grid."""
    # At most four columns: the figure grows downwards, so that the HTML page (about
    # 1400 px wide) shows it at full size instead of shrinking the cell text.
    ncols = min(len(runs), 4)
    nrows = math.ceil(len(runs) / ncols)
    title_lines = _label_lines([run.label for run in runs]) + 1
    fig, axes = _figure(nrows, ncols, (3.0 * ncols + 0.6, (2.7 + 0.17 * title_lines) * nrows + 1.0))
    fig.get_layout_engine().set(hspace=0.06)  # room between a row's x labels and the next row's titles
    image = None
    for ax, run, matrix in zip(axes.flat, runs, counts):
        image = _transition_panel(ax, matrix, f"{wrap(run.label)}\n{run.config}")
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_visible(False)
    if image is not None:
        # Above the first row only: a bar beside the grid would stretch over every row.
        fig.colorbar(
            image,
            ax=axes[0, :],
            location="top",
            shrink=0.5 if ncols > 2 else 0.9,
            aspect=30,
            fraction=0.08,
            label="share of the stage-1 row",
        )
    _save(fig, path)


# ------------------------------------------------------------ sources


def _sources(rows: Sequence[ModelRow]) -> list[str]:
    return sorted({source for row in rows for run in row.runs.values() for source in run.figures.get("by_source", {})})


def _source_matrix(rows: Sequence[ModelRow], kind: str, sources: Sequence[str]) -> np.ndarray:
    matrix = np.full((len(rows), len(sources)), np.nan)
    for i, row in enumerate(rows):
        by_source = row.runs[kind].figures.get("by_source", {}) if kind in row.runs else {}
        for j, source in enumerate(sources):
            rate = by_source.get(source, {}).get("mr_t2f")
            if rate is not None:
                matrix[i, j] = 100 * rate
    return matrix


def source_heatmap(rows: Sequence[ModelRow], path: Path) -> None:
    """Models x sources heatmap of the misleading rate, one panel per protocol; blank = no rate."""
    kinds, sources = present_kinds(rows), _sources(rows)
    width = 2.6 + len(kinds) * (0.75 * max(len(sources), 2) + 0.6) + 1.0
    source_lines = max((len(s) for s in sources), default=8) * 0.07
    height = 0.9 + source_lines + 0.42 * len(rows) * max(1, _label_lines([r.label for r in rows]) / 2)
    fig, axes = _figure(1, len(kinds), (width, height), sharey=True)
    cmap = colormaps[SEQUENTIAL].with_extremes(bad="#eeeeee")
    image = None
    for ax, kind in zip(axes[0], kinds):
        matrix = _source_matrix(rows, kind, sources)
        image = ax.imshow(matrix, cmap=cmap, vmin=0, vmax=100, aspect="auto")
        for (i, j), value in np.ndenumerate(matrix):
            text, colour = ("–", "#666") if np.isnan(value) else (f"{value:.0f}", "black" if value > 60 else "white")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
        ax.set_xticks(range(len(sources)), sources, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{kind} hints" if kind == "explicit" else "implicit notes", fontsize=11)
    axes[0][0].set_yticks(range(len(rows)), [wrap(row.label) for row in rows], fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, label="misleading rate (%)", shrink=0.9)
    _save(fig, path)


# ------------------------------------------------------------ scatter


def _paper_points(ax: Axes, kind: str) -> None:
    xs = [row.acc for row in PAPER_RESULTS]
    ys = [row.levels_mean(kind) for row in PAPER_RESULTS]
    ax.scatter(xs, ys, s=22, facecolors="none", edgecolors="#888", linewidths=0.9, zorder=1)
    # Numbers, not names: the paper's models crowd together and names overlap;
    # the report's published-results table carries the same numbers.
    for number, (x, y) in enumerate(zip(xs, ys), start=1):
        ax.annotate(str(number), (x, y), xytext=(3, 2), textcoords="offset points", fontsize=6.5, color="#666")


def accuracy_scatter(rows: Sequence[ModelRow], paper: bool, path: Path) -> None:
    """Stage-1 accuracy vs the misleading rate (mean of levels); optional paper models in grey."""
    kinds = present_kinds(rows)
    legend_columns = min(len(rows), 3)
    legend_rows = math.ceil(len(rows) / legend_columns) * max(1, _label_lines([r.label for r in rows]) // 2 + 1)
    fig, axes = _figure(1, len(kinds), (0.6 + 5.4 * len(kinds), 5.2 + 0.22 * legend_rows))
    handles = {}
    for ax, kind in zip(axes[0], kinds):
        if paper:
            _paper_points(ax, kind)
        unplaced = []
        for index, row in enumerate(rows):
            run = row.runs.get(kind)
            if run is None:
                continue
            mean = levels_mean(run.figures)
            if mean is None or run.figures.get("accuracy_before") is None:
                unplaced.append(row.label)
                continue
            acc = run.figures["accuracy_before"]
            below, above = error_lengths(acc, run.figures["accuracy_before_ci"])
            style = model_style(index)
            ax.errorbar(
                100 * acc,
                100 * mean,
                xerr=[[below], [above]],
                fmt="none",
                ecolor=style["color"],
                elinewidth=1,
                alpha=0.7,
                zorder=2,
            )
            handles[row.label] = ax.scatter(
                100 * acc, 100 * mean, s=55, edgecolors="black", linewidths=0.6, zorder=3, **style
            )
        if unplaced:  # a run without a rate has no point; say so instead of dropping it silently
            ax.text(
                0.01,
                0.01,
                "no rate (no correct stage-1 answer): " + ", ".join(unplaced),
                transform=ax.transAxes,
                fontsize=7,
                color="#555",
                wrap=True,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85},
            )
        ax.set_xlim(-2, 102)  # padded so that markers at 0% or 100% are not cut in half
        ax.set_ylim(-2, 102)
        ax.set_xlabel("accuracy before misleading (%)")
        ax.set_ylabel("misleading rate, mean of levels (%)")
        ax.set_title(f"{kind} hints" if kind == "explicit" else "implicit notes", fontsize=11)
        ax.grid(alpha=0.3)
    labels = list(handles)
    if paper:
        labels.append("paper (Dang et al.), numbered as in its table")
        handles[labels[-1]] = Line2D(
            [], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="#888"
        )
    fig.legend(
        [handles[label] for label in labels],
        [wrap(label, 48) for label in labels],
        loc="outside lower center",
        ncol=legend_columns,
        frameon=False,
        fontsize=8,
    )
    _save(fig, path)


# ------------------------------------------------------------ curation (mub curate)


def curation_figure(curation: Mapping, path: Path) -> Figure:
    """``mub curate``'s picture: items per misled count (coloured by level, grey where not kept) and how alike
    the panel models fail (Jaccard overlap of the items that mislead each pair). ``curation`` is curation.json."""
    summary = curation["summary"]
    names = list(curation["agreement"])
    fig, axes = _figure(1, 2, (11, 4.2 + 0.15 * len(names)))
    counts_ax, agreement_ax = axes[0]
    level_of_count = {count: level for level, count in summary["levels"].items()}  # higher level wins a shared count
    distribution = summary["count_distribution"]
    colours = [
        LEVEL_COLOURS.get(level_of_count.get(int(c), ""), "#999999" if int(c) < summary["min_count"] else "#BBBBBB")
        for c in distribution
    ]
    counts_ax.bar([int(c) for c in distribution], list(distribution.values()), color=colours)
    counts_ax.set_xlabel(f"misled count (of {summary['panel_size']} panel models)")
    counts_ax.set_ylabel("items")
    counts_ax.set_title(f"{summary['kept']} of {summary['items']} items kept (misled by >= {summary['min_count']})")
    counts_ax.set_xticks(range(summary["panel_size"] + 1))
    matrix = np.array([[np.nan if v is None else v for v in curation["agreement"][a].values()] for a in names], dtype=float)
    image = agreement_ax.imshow(matrix, cmap=SEQUENTIAL, vmin=0, vmax=1)
    agreement_ax.set_xticks(range(len(names)), [wrap(n, 18) for n in names], rotation=45, ha="right", fontsize=7)
    agreement_ax.set_yticks(range(len(names)), [wrap(n, 18) for n in names], fontsize=7)
    agreement_ax.set_title("items that mislead both / either (Jaccard)")
    fig.colorbar(image, ax=agreement_ax, shrink=0.8)
    _save(fig, path)
    return fig


# ------------------------------------------------------------ pressure: survival over turns


def survival_curves(runs: Sequence[RunSummary], path: Path) -> Figure:
    """Each --pressure run's share of T items still holding after turn 0 (stage 1: all), 1, ..., N, as steps,
    with its bootstrap band; undefined turns (no item at risk) are left out of the line. The last step runs on
    to N+1 so that S(N) shows as a step like the others, and the area under each curve is its mean turn of flip
    (restricted to N+1)."""
    fig, axes = _figure(1, 1, (7.5, 5.0 + 0.22 * len(runs)))
    ax = axes[0][0]
    horizon = 1
    for index, run in enumerate(runs):
        figures = run.figures["pressure"]
        horizon = max(horizon, figures["turns"])
        turns = np.arange(figures["turns"] + 2)  # 0..N, then N+1 closing the last step
        shares = np.array([1.0, *(np.nan if s is None else s for s in figures["survival"])]) * 100
        bands = [[1.0, 1.0], *(ci or [np.nan, np.nan] for ci in figures["survival_ci"])]
        low, high = (np.array([band[i] for band in bands], dtype=float) * 100 for i in (0, 1))
        shares, low, high = (np.append(values, values[-1]) for values in (shares, low, high))
        style = model_style(index)
        ax.step(turns, shares, where="post", color=style["color"], linewidth=1.6,
                label=wrap(f"{run.label} {run.config} (n T = {figures['n_t']})"))  # fmt: skip
        ax.scatter(turns[:-1], shares[:-1], s=22, zorder=3, **style)
        ax.fill_between(turns, low, high, step="post", color=style["color"], alpha=0.15, linewidth=0)
    ax.set_xlim(-0.1, horizon + 1)
    ax.set_xticks(range(horizon + 1))
    ax.set_ylim(0, 102)
    ax.set_xlabel("turn of pressure (0: stage 1)")
    ax.set_ylabel("T items still holding (%)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7, ncol=2, frameon=False)
    _save(fig, path)
    return fig


# ------------------------------------------------------------ susceptibility vs receptiveness


def susceptibility_scatter(runs: Sequence[RunSummary], path: Path) -> Figure:
    """Each run's MR F→T (x) against its MR T→F (y), with 95% intervals; runs without both rates, and runs under a
    cue with no corrective direction (challenge: no x to place them at), are named above the plot."""
    fig, axes = _figure(1, 1, (7.5, 6.2 + 0.22 * len(runs)))
    ax = axes[0][0]
    ax.plot([0, 100], [0, 100], color="#bbb", linewidth=0.8, zorder=1)
    ax.axhspan(0, 10, xmin=0, xmax=0.1, color="#eee", zorder=0)
    unplaced, undirected = [], []
    for index, run in enumerate(runs):
        figures = run.figures
        if not run.corrective:
            undirected.append(f"{run.label} {run.config}")  # the label names the cue (assign_labels)
            continue
        if figures.get("mr_t2f") is None or figures.get("mr_f2t") is None:
            unplaced.append(run.label)
            continue
        style = model_style(index)
        x_err = error_lengths(figures["mr_f2t"], figures["mr_f2t_ci"])
        y_err = error_lengths(figures["mr_t2f"], figures["mr_t2f_ci"])
        x, y = 100 * figures["mr_f2t"], 100 * figures["mr_t2f"]
        ax.errorbar(x, y, xerr=[[x_err[0]], [x_err[1]]], yerr=[[y_err[0]], [y_err[1]]], fmt="none",
                    ecolor=style["color"], elinewidth=1, alpha=0.7, zorder=2)  # fmt: skip
        ax.scatter(x, y, s=55, edgecolors="black", linewidths=0.6, zorder=3, label=wrap(f"{run.label} {run.config}"),
                   **style)  # fmt: skip
    notes = [f"no point (a rate without items): {', '.join(unplaced)}"] if unplaced else []
    if undirected:
        notes.append(f"no corrective direction (the cue names no option): {', '.join(undirected)}")
    if notes:
        ax.text(0.01, 0.99, "\n".join(notes), transform=ax.transAxes, va="top", fontsize=7, color="#666")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("MR F→T: wrong answers corrected by the cue (%)")
    ax.set_ylabel("MR T→F: correct answers abandoned under the cue (%)")
    ax.text(5, 3, "ignores the user", fontsize=7, color="#666", ha="center")
    if len(ax.collections):
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7, ncol=2, frameon=False)
    _save(fig, path)
    return fig
