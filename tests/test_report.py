"""Reports, plots, paired comparisons and leaderboard submissions, from real run folders.

Runs are made with the scripted backend (controlled behaviour: one model that
never lets go of a correct answer, one that often does) and, when the tiny
transformers models are available, one plumbing-check run of ``tiny:llava``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from built_runs import BUILD_REPO_ID, scripted_rule, scripted_run
from conftest import shared
from leaderboard_files import PUBLISHED, submission_file
from matplotlib.collections import PathCollection
from recount import rates_by_notes as rates_by_hand
from PIL import Image

from mub.cli import main
from mub.config import RunConfig
from mub.report import power
from mub.report.compare import ItemOutcomes, compare_predictions, paired_bootstrap
from mub.report.paper import PAPER_AVERAGE, PAPER_RESULTS
from mub.report.report import (
    Estimate,
    assign_labels,
    build_report,
    load_run,
    transition_counts,
    write_report,
)
from mub.report.submit import build_submission
from mub.runs.predictions import ItemPrediction, StageAnswer
from mub.runs.runner import run

FIGURES = (
    "misleading_by_difficulty.png", "transitions.png", "misleading_by_source.png", "accuracy_vs_misleading.png",
    "susceptibility_vs_receptiveness.png",
)  # fmt: skip
CELL = re.compile(r"^(?P<value>\d+\.\d{2}) \[(?P<low>\d+\.\d{2}), (?P<high>\d+\.\d{2})\] n=(?P<n>\d+)$")


def _scripted_run(
    root: Path, model: str, config: str, flip_share: int, limit: int | None = None, protocol: str = "paper",
    dataset: str = "sample",
) -> Path:
    out = root / f"{model.replace('/', '_')}__{config}{'' if protocol == 'paper' else '__' + protocol}"
    return scripted_run(out, model, config, dataset, flip_share, limit=limit, protocol=protocol)


def _tiny_run(root: Path) -> Path | None:
    try:
        import mub.backends.transformers_backend  # noqa: F401
        import mub.testing.tiny_models  # noqa: F401
    except ImportError:
        return None
    out = root / "tiny_llava__explicit"
    # 16 new tokens: a random model seldom ends an answer, and the paper preset allows 256
    run(RunConfig(model="tiny:llava", out=str(out), limit=16, device="cpu", progress=False, max_new_tokens=16))
    return out


@pytest.fixture(scope="module")


def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    made = {
        "steady_explicit": _scripted_run(root, "scripted/steady", "explicit", 0),
        "steady_implicit": _scripted_run(root, "scripted/steady", "implicit", 0),
        "fickle_explicit": _scripted_run(root, "scripted/fickle", "explicit", 6),
        "fickle_implicit": _scripted_run(root, "scripted/fickle", "implicit", 9),
    }
    tiny = _tiny_run(root)
    if tiny is not None:
        made["tiny_explicit"] = tiny
    return made


@pytest.fixture(scope="module")


def report_dir(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["report", *map(str, runs.values()), "--out", str(out), "--paper", "--bootstrap", "500"]) == 0
    return out


def _results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text(encoding="utf-8"))


def _markdown_table(markdown: str, title: str) -> list[list[str]]:
    """Rows (as cell lists) of the markdown table under the heading `## title`."""
    section = markdown.split(f"## {title}\n", 1)[1]
    lines = [line for line in section.strip().split("\n\n", 1)[0].splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def _check_cell(cell: str, figures: dict | None, rate: str, denominator: str) -> None:
    if figures is None:
        assert cell == "–"
        return
    if figures[rate] is None:
        assert cell == f"– n={figures[denominator]}"
        return
    match = CELL.match(cell)
    assert match, cell
    low, high = figures[f"{rate}_ci"]
    for text, expected in ((match["value"], figures[rate]), (match["low"], low), (match["high"], high)):
        assert float(text) == pytest.approx(100 * expected, abs=0.005)
    assert int(match["n"]) == figures[denominator]


# ---------------------------------------------------------------- report


def test_every_plot_is_a_png_of_a_readable_size(report_dir: Path) -> None:
    for name in FIGURES:
        with Image.open(report_dir / name) as image:
            image.load()
            assert image.format == "PNG"
            width, height = image.size
            assert 300 <= width <= 4000 and 250 <= height <= 6000, (name, image.size)


def _draw(folders: list[Path], out: Path, **options):
    """write_report's result and its matplotlib figures by file name, as they were saved."""
    from mub.report import plots

    figures: dict[str, object] = {}
    save = plots._save

    def keep(fig, path: Path) -> None:
        figures[Path(path).name] = fig
        save(fig, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "_save", keep)
        written = write_report(build_report(folders, **options), out)
    assert set(figures) == set(FIGURES)
    return written, figures


@pytest.fixture(scope="module")


def drawn(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The figures of a report on the four scripted runs."""
    names = ("steady_explicit", "steady_implicit", "fickle_explicit", "fickle_implicit")
    return _draw([runs[name] for name in names], tmp_path_factory.mktemp("drawn"))[1]


def _figures_by_model(runs: dict[str, Path]) -> dict[str, dict[str, dict]]:
    """results.json figures: model -> config -> figures, for the scripted runs."""
    out: dict[str, dict[str, dict]] = {}
    for name in ("steady_explicit", "steady_implicit", "fickle_explicit", "fickle_implicit"):
        document = _results(runs[name])
        config = name.split("_")[1]
        out.setdefault(document["model"], {})[config] = document["results"][config]
    return out


def _row_labels(ax) -> list[str]:
    return [label.get_text().replace("\n", "") for label in ax.get_yticklabels()]


def test_difficulty_bars_are_the_level_rates(drawn, runs) -> None:
    by_model = _figures_by_model(runs)
    axes = [ax for ax in drawn["misleading_by_difficulty.png"].axes if ax.patches]
    assert [ax.get_title() for ax in axes] == ["explicit hints", "implicit notes"]
    models = _row_labels(axes[0])
    assert sorted(models) == sorted(by_model)
    for ax, config in zip(axes, ("explicit", "implicit")):
        bars = sorted((round(p.get_y() + p.get_height() / 2, 6), p.get_width()) for p in ax.patches)
        expected = []
        for y, model in enumerate(models):
            levels = by_model[model][config]["by_difficulty"]
            for offset, level in zip((-0.26, 0.0, 0.26), ("low", "medium", "high")):
                if levels.get(level, {}).get("mr_t2f") is not None:
                    expected.append((round(y + offset, 6), 100 * levels[level]["mr_t2f"]))
        assert len(bars) == len(expected) > 0, config
        for (y, width), (want_y, want_width) in zip(bars, sorted(expected)):
            assert y == want_y and width == pytest.approx(want_width), config


def test_source_heatmap_cells_are_the_source_rates(drawn, runs) -> None:
    by_model = _figures_by_model(runs)
    axes = [ax for ax in drawn["misleading_by_source.png"].axes if ax.get_title()]
    models = _row_labels(axes[0])
    for ax, config in zip(axes, ("explicit", "implicit")):
        sources = [label.get_text() for label in ax.get_xticklabels()]
        assert sources == sorted({s for m in by_model.values() for f in m.values() for s in f["by_source"]})
        cells = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
        for i, model in enumerate(models):
            for j, source in enumerate(sources):
                rate = by_model[model][config]["by_source"].get(source, {}).get("mr_t2f")
                if rate is None:
                    assert np.isnan(cells[i, j]), (config, model, source)
                else:
                    assert cells[i, j] == pytest.approx(100 * rate), (config, model, source)


def test_transition_panels_show_the_counts_of_the_records(drawn, runs) -> None:
    panels = [ax for ax in drawn["transitions.png"].axes if ax.images and ax.get_visible()]
    names = ("steady_explicit", "steady_implicit", "fickle_explicit", "fickle_implicit")
    assert len(panels) == len(names)
    states = ("correct", "wrong", "unparsed")

    def state(answer, reference):
        return "unparsed" if not answer else "correct" if answer.lower() == reference.lower() else "wrong"

    found = {}
    for ax in panels:
        counts = np.zeros((3, 3), dtype=int)
        for text in ax.texts:
            x, y = text.get_position()
            counts[int(y), int(x)] = int(text.get_text().split("\n")[0])
        found[ax.get_title()] = counts
    for name in names:
        counts = np.zeros((3, 3), dtype=int)
        for line in (runs[name] / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["error"] is None:
                counts[states.index(state(record["original_prediction"], record["answer"])),
                       states.index(state(record["prediction"], record["answer"]))] += 1  # fmt: skip
        matching = [title for title, drawn_counts in found.items() if name.split("_")[1] in title and (drawn_counts == counts).all()]
        assert matching, (name, counts, found)
        shares = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
        (ax,) = [ax for ax in panels if ax.get_title() == matching[0]]
        assert np.allclose(ax.images[0].get_array(), shares)


def test_scatter_points_are_accuracy_and_levels_mean(drawn, runs) -> None:
    by_model = _figures_by_model(runs)
    axes = [ax for ax in drawn["accuracy_vs_misleading.png"].axes if ax.collections]
    for ax, config in zip(axes, ("explicit", "implicit")):
        # the run's points: one-point scatters (errorbars are line collections)
        points = sorted(
            tuple(map(float, c.get_offsets()[0])) for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets()) == 1
        )
        expected = []
        for figures in (by_model[model][config] for model in by_model):
            rates = [figures["by_difficulty"][level]["mr_t2f"] for level in ("low", "medium", "high")]
            if None not in rates and figures["accuracy_before"] is not None:  # the paper's headline: mean of the levels
                expected.append((100 * figures["accuracy_before"], 100 * sum(rates) / 3))
        assert len(points) == len(expected) > 0, config
        assert np.allclose(points, sorted(expected)), (config, points, expected)


def test_markdown_table_numbers_equal_results_json(report_dir: Path, runs: dict[str, Path]) -> None:
    rows = {
        row[0]: row
        for row in _markdown_table(
            (report_dir / "report.md").read_text(), "Misleading rate by difficulty (paper layout)"
        )
    }
    by_model: dict[str, dict[str, dict]] = {}
    for path in runs.values():
        document = _results(path)
        config = document["run"]["config"]
        by_model.setdefault(document["model"], {})[config] = document["results"][config]
    assert set(rows) == set(by_model)
    for model, configs in by_model.items():
        row = rows[model]
        _check_cell(row[1], configs.get("explicit") or configs["implicit"], "accuracy_before", "n")
        cells = iter(row[2:])
        for kind in ("explicit", "implicit"):
            for level in ("low", "medium", "high"):
                figures = configs[kind]["by_difficulty"].get(level) if kind in configs else None
                _check_cell(next(cells), figures, "mr_t2f", "n_t")


def test_summary_table_covers_every_run(report_dir: Path, runs: dict[str, Path]) -> None:
    rows = _markdown_table((report_dir / "report.md").read_text(), "All figures per run")
    # One row per model and config of the run folders, as their results.json name them.
    expected = sorted((_results(run)["model"], config) for run in runs.values() for config in _results(run)["results"])
    assert sorted((row[0], row[1]) for row in rows) == expected
    steady = _results(runs["steady_explicit"])["results"]["explicit"]
    row = next(r for r in rows if r[0] == "scripted/steady" and r[1] == "explicit")
    assert (row[2], row[3]) == (str(steady["n_items"]), str(steady["n_draws"]))  # Items, Draws
    _check_cell(row[7], steady, "mr_t2f", "n_t")
    _check_cell(row[9], steady, "mr_f2t", "n_f")


def test_html_is_self_contained_and_embeds_every_plot(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r"<img [^>]*src='([^']+)'", page)
    assert len(sources) == len(FIGURES)
    embedded = []
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        embedded.append(base64.b64decode(source.split(",", 1)[1]))
    assert sorted(embedded) == sorted((report_dir / name).read_bytes() for name in FIGURES)  # each figure, as written
    assert "<script" not in page and "<link" not in page and "http" not in page.replace("https://arxiv.org", ""), (
        "the page must not load anything from elsewhere"
    )
    assert "scripted/fickle" in page and "Published results" in page


def test_paired_comparison_in_report_says_fickle_differs_significantly(report_dir: Path) -> None:
    rows = _markdown_table((report_dir / "report.md").read_text(), "Paired comparisons")
    explicit = next(r for r in rows if r[0] == "explicit" and r[2] == "scripted/fickle")
    assert explicit[1] == "scripted/steady" and explicit[8] == "yes"
    assert float(explicit[4]) == 0.0 and float(explicit[5]) > 40


def test_paired_comparison_states_the_difference_its_items_can_detect(report_dir: Path, runs: dict[str, Path]) -> None:
    rows = _markdown_table((report_dir / "report.md").read_text(), "Paired comparisons")
    explicit = next(r for r in rows if r[0] == "explicit" and r[2] == "scripted/fickle")

    def outcomes(run: Path) -> dict[str, tuple[bool, bool]]:
        records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
        return {r["id"]: (r["original_prediction"] == r["answer"], r["prediction"] == r["answer"]) for r in records}

    steady, fickle = outcomes(runs["steady_explicit"]), outcomes(runs["fickle_explicit"])
    shared = [i for i in steady if i in fickle and steady[i][0] and fickle[i][0]]
    # The steady model never flips, so the flips are uncorrelated (phi 0) and A's rate is 0.
    assert not any(not steady[i][1] for i in shared)
    expected = power.minimal_detectable_difference(0.0, 0.0, len(shared))
    assert explicit[9] == f"{100 * expected:.2f}"


def test_report_for_twenty_models_grows_with_the_models(runs: dict[str, Path], tmp_path: Path) -> None:
    folders = []
    for number in range(20):
        # Implicit runs for a few models only: the others' empty cells must read as "no data".
        for kind in ("explicit", "implicit") if number < 3 else ("explicit",):
            copy = tmp_path / "runs" / f"m{number:02d}_{kind}"
            shutil.copytree(runs[f"fickle_{kind}"], copy)
            document = _results(copy)
            document["model"] = f"some-organisation/a-rather-long-model-name-{number:02d}-instruct"
            (copy / "results.json").write_text(json.dumps(document))
            folders.append(copy)
    small = write_report(build_report(folders[:2]), tmp_path / "small")
    large, drawn = _draw(folders, tmp_path / "large", paper=True)
    models = sorted(f"some-organisation/a-rather-long-model-name-{number:02d}-instruct" for number in range(20))
    fickle = _results(runs["fickle_explicit"])["results"]["explicit"]["by_difficulty"]
    explicit_panel = drawn["misleading_by_difficulty.png"].axes[0]
    assert sorted(_row_labels(explicit_panel)) == models  # every model has its row, its full name readable
    assert sorted(p.get_width() for p in explicit_panel.patches) == pytest.approx(
        sorted(100 * fickle[level]["mr_t2f"] for level in ("low", "medium", "high") for _ in range(20))
    )
    heatmap = next(ax for ax in drawn["misleading_by_source.png"].axes if ax.get_title() == "implicit notes")
    cells = np.ma.filled(heatmap.images[0].get_array().astype(float), np.nan)
    assert cells.shape[0] == 20 and int(np.isnan(cells).all(axis=1).sum()) == 17  # no implicit run: no data
    for small_png, large_png in zip(small.images, large.images):
        with Image.open(small_png) as a, Image.open(large_png) as b:
            assert b.size[1] > a.size[1], large_png.name
            assert b.size[0] <= 2500 and b.size[1] <= 6000, (large_png.name, b.size)


def test_runs_of_one_model_and_config_get_distinct_labels(runs: dict[str, Path]) -> None:
    summaries = [
        load_run(runs["steady_explicit"]),
        load_run(runs["steady_explicit"]),
        load_run(runs["steady_implicit"]),
    ]
    summaries[1].path = summaries[1].path.with_name("second")
    assign_labels(summaries)
    # Which explicit run would pair with the implicit one is ambiguous: every run of the model is named by folder.
    assert [s.label for s in summaries] == [
        "scripted/steady (scripted_steady__explicit)",
        "scripted/steady (second)",
        "scripted/steady (scripted_steady__implicit)",
    ]


def test_transition_counts_follow_the_scripted_behaviour(runs: dict[str, Path]) -> None:
    steady, fickle = (load_run(runs[f"{name}_explicit"]) for name in ("steady", "fickle"))
    counts = transition_counts(steady.predictions)
    assert sum(map(sum, counts)) == steady.figures["n"]
    assert counts[0][1] == 0 and counts[0][0] == steady.figures["n_t"]  # steady never abandons a correct answer
    assert transition_counts(fickle.predictions)[0][1] == fickle.figures["t2f"]
    assert counts[2][2] == steady.figures["unparsed_after"]


def test_missing_results_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a finished run"):
        build_report([tmp_path])


def test_estimate_cells_read_as_in_the_paper() -> None:
    assert Estimate(0.4524, (0.381, 0.524), 84).text() == "45.24 [38.10, 52.40] n=84"
    assert Estimate(None, None, 0).text() == "– n=0"


def test_paper_table_is_transcribed() -> None:
    source = shared("paper_results.md")
    published = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in source.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ") and not line.startswith("| Model")
    ]
    shipped = [
        [row.model, *(f"{x:.2f}" for x in (row.acc, *row.explicit, *row.implicit))]
        for row in (*PAPER_RESULTS, PAPER_AVERAGE)
    ]
    assert shipped == published


def test_paper_explicit_average_is_the_mean_of_its_rows() -> None:
    # Only the explicit columns: the published implicit and Acc averages are not the
    # mean of the 17 listed models (e.g. implicit low 73.56 vs 73.89), in the paper itself.
    for level in range(3):
        mean = np.mean([row.explicit[level] for row in PAPER_RESULTS])
        assert mean == pytest.approx(PAPER_AVERAGE.explicit[level], abs=0.01)


# ---------------------------------------------------------------- paired bootstrap


def _outcomes(before: list[bool], after: list[bool]) -> ItemOutcomes:
    ids = tuple(f"item{i}" for i in range(len(before)))
    return ItemOutcomes(ids, np.array(before), np.array(after))


def test_identical_runs_do_not_differ() -> None:
    rng = np.random.default_rng(1)
    before, after = list(rng.random(200) < 0.7), list(rng.random(200) < 0.5)
    result = paired_bootstrap(_outcomes(before, after), _outcomes(before, after), n_boot=1000, seed=3)
    assert result.difference == 0.0 and result.ci == (0.0, 0.0)
    assert not result.significant and result.p_value == 1.0


def test_flipping_everything_differs_from_flipping_nothing() -> None:
    before = [True] * 60 + [False] * 20
    steady = _outcomes(before, before)
    fickle = _outcomes(before, [False] * 80)
    result = paired_bootstrap(steady, fickle, n_boot=1000, seed=0)
    assert (result.mr_t2f_a, result.mr_t2f_b, result.difference) == (0.0, 1.0, 1.0)
    assert result.significant and result.ci == (1.0, 1.0) and result.p_value == 0.0


def test_bootstrap_is_seeded_and_a_small_difference_is_not_significant() -> None:
    rng = np.random.default_rng(7)
    before = rng.random(150) < 0.8
    after_a = before & (rng.random(150) < 0.6)
    after_b = after_a.copy()
    after_b[np.flatnonzero(before & ~after_a)[:2]] = True  # two fewer flips
    a, b = _outcomes(list(before), list(after_a)), _outcomes(list(before), list(after_b))
    first, second = paired_bootstrap(a, b, n_boot=800, seed=11), paired_bootstrap(a, b, n_boot=800, seed=11)
    assert first == second
    assert first.difference < 0 and not first.significant


def _binomial_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def _binomial_quantile(q: float, n: int, p: float) -> int:
    """The smallest k with P(X <= k) >= q.

    Asserts that q is more than 0.005 from the CDF's steps on both sides, over four
    standard errors of a 20,000-draw bootstrap's empirical quantile: a clear-cut case.
    """
    k = next(k for k in range(n + 1) if _binomial_cdf(k, n, p) >= q)
    assert abs(_binomial_cdf(k, n, p) - q) > 0.005 and (k == 0 or abs(_binomial_cdf(k - 1, n, p) - q) > 0.005)
    return k


def _steady_and_k_flips(n: int, k: int) -> tuple[ItemOutcomes, ItemOutcomes]:
    """Every item correct in stage 1; run a keeps them all, run b drops k of n.

    On a resample of n items, a's rate is 0 and b's is X/n with X ~ Binomial(n, k/n)
    (X counts the drawn flipped items): the bootstrap distribution of the difference
    is known exactly.
    """
    before = [True] * n
    return _outcomes(before, before), _outcomes(before, [False] * k + [True] * (n - k))


def test_bootstrap_p_value_is_two_sided() -> None:
    n, k = 20, 2
    a, b = _steady_and_k_flips(n, k)
    result = paired_bootstrap(a, b, n_boot=20000, seed=5)
    # The difference is never negative, and 0 exactly when no flipped item is drawn:
    # two-sided p = 2 * min(P(d <= 0), P(d >= 0)) = 2 * (1 - k/n)^n.
    expected = 2 * (1 - k / n) ** n
    assert result.p_value == pytest.approx(expected, abs=0.015)
    assert result.difference == k / n


def test_bootstrap_interval_is_the_central_95_percent() -> None:
    n, k = 30, 7
    a, b = _steady_and_k_flips(n, k)
    result = paired_bootstrap(a, b, n_boot=20000, seed=2)
    expected = (_binomial_quantile(0.025, n, k / n) / n, _binomial_quantile(0.975, n, k / n) / n)
    assert result.ci == pytest.approx(expected, abs=1e-9)
    assert result.significant == (expected[0] > 0)


def test_bootstrap_leaves_out_items_with_errors() -> None:
    steady = [_prediction(f"i{n}", "A", "A") for n in range(30)]
    failed = [replace(_prediction(f"e{n}", "A", "B"), error="timeout") for n in range(10)]
    result = compare_predictions(steady + failed, steady + failed, n_boot=200)
    # The failed items would be flips in both runs; left out, neither run flips.
    assert result.n_items == 30 and (result.mr_t2f_a, result.mr_t2f_b) == (0.0, 0.0)
    only_b_failed = compare_predictions(steady + [replace(f, error=None) for f in failed], steady + failed, n_boot=200)
    assert only_b_failed.n_items == 30 and only_b_failed.mr_t2f_a == 0.0


def _prediction(item_id: str, before: str | None, after: str | None, answer: str = "A") -> ItemPrediction:
    return ItemPrediction(
        id=item_id,
        answer=answer,
        source="s",
        difficulty="low",
        misled_count=6,
        question_type="multiple_choice",
        group_id=item_id,
        stage1=[StageAnswer("", before or "", before)],
        original_prediction=before,
        prediction=after,
    )


def test_predictions_are_matched_by_item_id() -> None:
    a = [_prediction(f"i{n}", "A", "A") for n in range(30)]
    b = [_prediction(f"i{n}", "A", "B") for n in reversed(range(30))] + [_prediction("extra", "A", "A")]
    result = compare_predictions(a, b, n_boot=200)
    assert result.n_items == 30 and result.difference == 1.0 and result.significant


# ---------------------------------------------------------------- submission


def _submit(runs: list[Path], out: Path, *extra: str) -> dict:
    assert main(["submit", *map(str, runs), "--out", str(out), *extra]) == 0
    (path,) = [p for p in out.rglob("*.json") if ".eval_results" not in p.parts]
    return json.loads(path.read_text())


def test_submission_schema_and_values(rankable_runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    runs = rankable_runs
    out = tmp_path / "sub"
    argv = ["submit", str(runs["fickle_explicit"]), str(runs["fickle_implicit"]), "--to", "someone/leaderboard-results",
            "--dataset-id", "someone/mub", "--dataset-revision", "abc123", "--dry-run", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    # The results file alone in <org>/<model>/, as leaderboard readers walk a results repository.
    (path,) = [p for p in out.rglob("*") if p.is_file() and ".eval_results" not in p.parts]
    assert re.fullmatch(r"scripted/fickle/results_\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.json", path.relative_to(out).as_posix())
    assert f"-> {path.relative_to(out).as_posix()}" in capsys.readouterr().out  # the dry run names the repository path
    document = json.loads(path.read_text())
    config = document["config"]
    assert config["model_name"] == "scripted/fickle" and config["dataset_id"] == "someone/mub"
    assert config["dataset_revision"] == "abc123"
    assert _results(runs["fickle_explicit"])["run"]["protocol"]["preset"] == "paper"
    assert config["protocol"] == "paper + draws=once"  # the label: a full draw of the sample covers one level only
    assert config["model_sha"] is None and config["model_dtype"] is None  # the scripted backend has no weights
    assert config["items_fingerprint"] == {
        f"mub_{c}": _results(runs[f"fickle_{c}"])["dataset"]["fingerprint"] for c in ("explicit", "implicit")
    }
    assert config["mub_version"] and path.name == f"results_{config['submitted_at'][:19].replace(':', '-')}.json"
    assert set(document["results"]) == {"mub_explicit", "mub_implicit"}
    for config_name in ("explicit", "implicit"):
        submitted = document["results"][f"mub_{config_name}"]
        source = _results(runs[f"fickle_{config_name}"])["results"][config_name]
        for rate in ("mr_t2f", "mr_f2t", "accuracy_before", "accuracy_after", "consistency"):
            assert submitted[rate] == pytest.approx(source[rate], abs=1e-12)
            low, high = submitted[f"{rate}_ci"]
            assert 0 <= low <= submitted[rate] + 1e-9 and submitted[rate] - 1e-9 <= high <= 1
        for count in ("n", "n_t", "n_f", "t2f", "f2t", "n_items"):
            assert isinstance(submitted[count], int) and submitted[count] == source[count]
        assert submitted["n_draws"] == source.get("n_draws", source["n_items"])
        for level in ("low", "medium", "high"):
            by_level = source["by_difficulty"][level]
            assert submitted[f"mr_t2f_{level}"] == pytest.approx(by_level["mr_t2f"], abs=1e-12)
            assert (submitted[f"t2f_{level}"], submitted[f"n_t_{level}"]) == (by_level["t2f"], by_level["n_t"])
            assert len(submitted[f"mr_t2f_{level}_ci"]) == 2


def test_an_exact_zero_is_written_zero(rankable_runs: dict[str, Path], tmp_path: Path) -> None:
    """The steady model never lets go: its misleading rates and their low bounds are exactly 0."""
    document = _submit([rankable_runs["steady_explicit"]], tmp_path / "sub")
    text = next((tmp_path / "sub").glob("*/*/*.json")).read_text()
    figures = document["results"]["mub_explicit"]
    assert figures["mr_t2f"] == 0 and figures["mr_t2f_ci"][0] == 0
    assert type(figures["mr_t2f"]) is int and re.search(r'"mr_t2f": 0,', text)
    assert not re.search(r"\de-\d", text)  # no 2.77e-17 anywhere


def test_model_index_names_the_hub_dataset_in_fractions(rankable_runs: dict[str, Path], tmp_path: Path) -> None:
    index = tmp_path / "card.yaml"
    runs = [rankable_runs["steady_explicit"], rankable_runs["steady_implicit"]]
    document = _submit(runs, tmp_path / "sub", "--dataset-id", "org/mub", "--model-index", str(index), "--model-name", "real-org/steady-7b")
    assert not list((tmp_path / "sub").glob("*/*/*.yaml"))  # the snippet is never beside the results file
    card = yaml.safe_load(index.read_text())
    (entry,) = card["model-index"]
    assert entry["name"] == "real-org/steady-7b"  # the name on the board, not the runs' model
    assert [r["dataset"]["config"] for r in entry["results"]] == ["explicit", "implicit"]
    for result in entry["results"]:
        assert result["task"]["type"] and result["dataset"]["type"] == "org/mub"
        assert all({"type", "value", "name"} <= set(metric) for metric in result["metrics"])
    metrics = {m["type"]: m for m in entry["results"][0]["metrics"]}
    explicit = document["results"]["mub_explicit"]
    assert metrics["accuracy"]["value"] == round(explicit["accuracy_before"], 4)  # fractions, as the JSON
    assert metrics["misleading_rate"]["value"] == 0 and f"n={explicit['n_t']}" in metrics["misleading_rate"]["name"]
    assert "lower is better" in metrics["misleading_rate"]["name"]


def test_no_local_path_reaches_a_model_index(rankable_runs: dict[str, Path], tmp_path: Path, release_dir: Path, capsys) -> None:
    # A run on a local build made without --repo-id: no Hub id is known, so no model-index and no upload.
    built = tmp_path / "built"
    assert main(["build", "--release", str(release_dir), "--out", str(built)]) == 0
    local = scripted_run(tmp_path / "local", "scripted/local", "explicit", str(built), 3, draws="once")
    capsys.readouterr()
    document = _submit([local], tmp_path / "sub")
    printed = capsys.readouterr().out
    assert document["config"]["dataset_id"] is None and str(built) not in json.dumps(document)
    assert "model-index and .eval_results: not made" in printed and str(built) not in printed
    assert main(["submit", str(local), "--to", "org/results", "--out", str(tmp_path / "refused")]) == 2
    assert "upload refused" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    assert main(["submit", str(local), "--dataset-id", str(built), "--out", str(tmp_path / "x")]) == 2
    assert "not a Hub dataset id" in capsys.readouterr().err
    # The build made with --repo-id: its Hub id goes into the model-index, the path never.
    document = _submit([rankable_runs["steady_explicit"]], tmp_path / "out2")
    printed = capsys.readouterr().out
    assert document["config"]["dataset_id"] == BUILD_REPO_ID
    block = yaml.safe_load(printed.split("model-index block for the model card's YAML header:\n", 1)[1])
    assert block["model-index"][0]["results"][0]["dataset"]["type"] == BUILD_REPO_ID
    assert str(rankable_runs["build"]) not in printed


def test_submission_refuses_mixed_models_and_repeated_configs(rankable_runs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="one model"):
        build_submission([rankable_runs["steady_explicit"], rankable_runs["fickle_explicit"]])
    with pytest.raises(ValueError, match="more than one run"):
        build_submission([rankable_runs["steady_explicit"], rankable_runs["steady_explicit"]])


def test_submission_refuses_runs_of_different_protocols(rankable_runs: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "implicit_copy"
    shutil.copytree(rankable_runs["steady_implicit"], copy)
    document = _results(copy)
    document["run"]["protocol"] = {"preset": "deterministic", "overrides": {}}
    (copy / "results.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="one protocol.*: deterministic"):
        build_submission([rankable_runs["steady_explicit"], copy])


def test_upload_path_follows_the_leaderboard_layout(rankable_runs: dict[str, Path]) -> None:
    from datetime import datetime, timezone

    stamp = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    submission = build_submission([rankable_runs["steady_explicit"]], now=stamp)
    assert submission.path_in_repo == "scripted/steady/results_2025-01-02T03-04-05.json"
    assert submission.results["config"]["submitted_at"] == "2025-01-02T03:04:05+00:00"
    assert submission.results["config"]["protocol"] == "paper + draws=once"


def test_tiny_model_run_goes_into_the_report(runs: dict[str, Path], report_dir: Path) -> None:
    if "tiny_explicit" not in runs:
        pytest.skip("tiny transformers models are not available")
    rows = _markdown_table((report_dir / "report.md").read_text(), "All figures per run")
    (row,) = [row for row in rows if row[0] == "tiny:llava"]
    tiny = _results(runs["tiny_explicit"])["results"]["explicit"]
    assert row[1] == "explicit"
    _check_cell(row[7], tiny, "mr_t2f", "n_t")
    _check_cell(row[9], tiny, "mr_f2t", "n_f")


def test_implicit_rates_by_notes_are_shown_for_3_and_5(runs, report_dir) -> None:
    rows = _markdown_table((report_dir / "report.md").read_text(encoding="utf-8"), "Implicit misleading rate by notes tried")
    implicit = [_results(runs[name])["results"]["implicit"] for name in ("steady_implicit", "fickle_implicit")]
    assert len(rows) == 2
    for row, figures in zip(rows, implicit):
        expected = [figures[key][k] for key in ("mr_t2f_by_notes", "mr_f2t_by_notes") for k in ("3", "5")]
        assert [float(cell) for cell in row[1:]] == pytest.approx([100 * value for value in expected], abs=0.005)
        assert figures["mr_t2f_by_notes"]["5"] == figures["mr_t2f"]  # --notes 5: the run's own rate
    for name, figures in zip(("steady_implicit", "fickle_implicit"), implicit):
        records = [json.loads(line) for line in (runs[name] / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
        recounted = rates_by_hand(records, 5)
        assert {key: figures[key] for key in recounted} == recounted  # every k, from the records' note answers


def test_paper_comparison_takes_only_runs_under_the_paper_protocol(runs, tmp_path) -> None:
    deterministic = _scripted_run(tmp_path, "scripted/clean", "explicit", 3, limit=12, protocol="deterministic")
    out = tmp_path / "report"
    assert main(["report", str(runs["steady_explicit"]), str(deterministic), "--out", str(out), "--paper", "--bootstrap", "50"]) == 0
    markdown = (out / "report.md").read_text(encoding="utf-8")
    published = _markdown_table(markdown, "Published results (reference)")
    assert [row[1] for row in published if row[0] == "run"] == ["scripted/steady"]
    assert "Not placed beside the paper's models" in markdown and "scripted/clean (explicit, --protocol deterministic)" in markdown
    assert "the paper's models are not shown: not every run used --protocol paper" in markdown
    protocols = {row[0]: row[2] for row in _markdown_table(markdown, "Runs")}
    assert protocols == {"scripted/steady": "paper", "scripted/clean": "deterministic"}


# ---------------------------------------------------------------- leaderboard


@pytest.fixture(scope="module")


def results_repo(rankable_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results repository as `mub submit` fills it: two models, plus one malformed file."""
    repo = tmp_path_factory.mktemp("results_repo")
    for model in ("steady", "fickle"):
        runs = [str(rankable_runs[f"{model}_explicit"]), str(rankable_runs[f"{model}_implicit"])]
        assert main(["submit", *runs, "--out", str(repo)]) == 0
    broken = repo / "someone" / "broken" / "results_2025-01-01T00-00-00.json"
    broken.parent.mkdir(parents=True)
    broken.write_text('{"config": {"model_name": "someone/broken"}, "results": {"mub_explicit": ', encoding="utf-8")
    return repo


def test_leaderboard_from_two_submissions_and_a_malformed_file(results_repo: Path, rankable_runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "board"
    assert main(["leaderboard", str(results_repo), "--dataset", str(rankable_runs["build"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"skipped .*someone/broken/results_2025-01-01T00-00-00\.json: not JSON", printed)
    document = json.loads((out / "leaderboard.json").read_text())
    submitted = [row for row in document["rows"] if not row["reference"]]
    assert sorted(row["model"] for row in submitted) == ["scripted/fickle", "scripted/steady"]
    assert [s["source"].rsplit("/", 3)[-3:] for s in document["skipped"]] == [["someone", "broken", "results_2025-01-01T00-00-00.json"]]
    references = [row for row in document["rows"] if row["reference"]]
    assert [row["model"] for row in references] == [paper.model for paper in PAPER_RESULTS]
    assert all(row["source"].startswith("paper:") and row["rank"] is None for row in references)
    assert references[0]["explicit_low"] == pytest.approx(PAPER_RESULTS[0].explicit[0] / 100)
    # Every figure is the run's own, as a fraction; the steady model holds every answer, so it ranks first.
    assert all(row["protocol"] == "paper + draws=once" for row in submitted)
    steady, fickle = sorted(submitted, key=lambda row: row["rank"])
    assert (steady["model"], steady["rank"], fickle["rank"]) == ("scripted/steady", 1, 2)
    for row in submitted:
        model = row["model"].split("/")[1]
        for kind in ("explicit", "implicit"):
            figures = _results(rankable_runs[f"{model}_{kind}"])["results"][kind]
            levels = [figures["by_difficulty"][level]["t2f"] / figures["by_difficulty"][level]["n_t"] for level in ("low", "medium", "high")]
            assert row[f"{kind}_mean"] == pytest.approx(sum(levels) / 3)
            for level in ("low", "medium", "high"):
                by_level = figures["by_difficulty"][level]
                assert row[f"{kind}_{level}"] == pytest.approx(by_level["t2f"] / by_level["n_t"])
                assert row[f"{kind}_{level}_n"] == by_level["n_t"]
                assert row[f"{kind}_{level}_ci"] == pytest.approx(by_level["mr_t2f_ci"])
        assert row["acc"] == pytest.approx(_results(rankable_runs[f"{model}_explicit"])["results"]["explicit"]["accuracy_before"])
        assert row["submitted"] and row["dataset_id"] == BUILD_REPO_ID
        assert row["overall"] == pytest.approx((row["explicit_mean"] + row["implicit_mean"]) / 2)
    page = (out / "index.html").read_text()
    assert "scripted/fickle" in page and "GPT-4o" in page and "someone/broken" in page
    assert "<script src" not in page and "<link" not in page  # self-contained


def test_leaderboard_out_follows_the_folder_rule(results_repo: Path, rankable_runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    """Issue 22, item 12: a folder mub did not make (a user's site, a run folder) is never written into."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("my own page\n")
    argv = ["leaderboard", str(results_repo), "--dataset", str(rankable_runs["build"])]
    assert main([*argv, "--out", str(site), "--overwrite"]) == 2
    assert "mub did not write" in capsys.readouterr().err and (site / "index.html").read_text() == "my own page\n"
    assert sorted(p.name for p in site.iterdir()) == ["index.html"]
    run_folder = rankable_runs["steady_explicit"]
    before = sorted(p.name for p in run_folder.iterdir())
    assert main([*argv, "--out", str(run_folder)]) == 2 and sorted(p.name for p in run_folder.iterdir()) == before
    board = tmp_path / "board"
    assert main([*argv, "--out", str(board)]) == 0
    assert main([*argv, "--out", str(board)]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--out", str(board), "--overwrite"]) == 0


def test_leaderboard_validation_ranking_and_protocols_apart() -> None:
    from mub.report.leaderboard import build_leaderboard

    files = [
        submission_file("org/a", rate=0.4),
        submission_file("org/b", rate=0.2, when="2025-01-02T00:00:00+00:00"),
        submission_file("org/b", rate=0.9, when="2024-06-01T00:00:00+00:00"),  # superseded by the newer one
        submission_file("org/c", rate=0.1, fingerprint="other"),  # answered other items
        submission_file("org/e", rate=0.3, protocol="deterministic"),
        submission_file("org/a", rate=0.7, protocol="deterministic", when="2025-01-03T00:00:00+00:00"),  # other protocol: kept
    ]
    board = build_leaderboard(files, PUBLISHED)
    reasons = {s.source: s.reason for s in board.skipped}
    assert set(reasons) == {"org/b/results_2024-06-01T00-00-00.json", "org/c/results_2025-01-01T00-00-00.json"}
    assert "newer: org/b/results_2025-01-02T00-00-00.json" in reasons["org/b/results_2024-06-01T00-00-00.json"]
    assert "fingerprint" in reasons["org/c/results_2025-01-01T00-00-00.json"] and "other" in reasons["org/c/results_2025-01-01T00-00-00.json"]
    ranked = {(row.protocol, row.model): row.rank for row in board.rows if not row.reference}
    assert ranked == {("paper", "org/b"): 1, ("paper", "org/a"): 2, ("deterministic", "org/e"): 1, ("deterministic", "org/a"): 2}
    assert board.protocols == ["paper", "deterministic"]
    assert board.fingerprints == PUBLISHED.fingerprints
    assert sum(row.reference for row in board.rows) == len(PAPER_RESULTS)
    assert all(row.reference for row in board.rows[-len(PAPER_RESULTS):])  # the paper's rows after every submission


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[]", "not a results file"),
        ('{"config": {}, "results": {}}', "model_name is missing"),
        ('{"config": {"model_name": "x/m"}, "results": {"mub_mmmu": {}}}', "neither mub_explicit nor mub_implicit"),
        ('{"config": {"model_name": "x/m", "submitted_at": "2025-01-01"}, "results": {"mub_explicit": {}}}', "items_fingerprint is missing"),
        ('{"config": {"model_name": "x/m", "protocol": 3}, "results": {"mub_explicit": {}}}', "not a preset name"),
    ],
)


def test_each_malformed_submission_is_skipped_with_its_reason(text: str, reason: str) -> None:
    from mub.report.leaderboard import SubmissionFile, build_leaderboard

    board = build_leaderboard([SubmissionFile("x/m/results_2025-01-01T00-00-00.json", text), submission_file("org/ok")], PUBLISHED)
    assert [s.source for s in board.skipped] == ["x/m/results_2025-01-01T00-00-00.json"] and reason in board.skipped[0].reason
    assert [row.model for row in board.rows if not row.reference] == ["org/ok"]


@pytest.mark.parametrize("name", ["../escape", "/abs/model", "org//model", "org/./model"])


def test_a_model_name_cannot_lead_the_results_file_out_of_its_folder(name: str) -> None:
    from mub.report.submit import model_folder

    with pytest.raises(ValueError, match="cannot name a results folder"):
        model_folder(name)
    assert model_folder("org/model-1.5") == "org/model-1.5"


def test_power_from_pilot_runs_uses_the_items_both_answered_correctly(runs: dict[str, Path], capsys) -> None:
    def outcomes(run: Path) -> dict[str, tuple[bool, bool]]:
        records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
        return {r["id"]: (r["original_prediction"] == r["answer"], r["prediction"] == r["answer"]) for r in records}

    steady, fickle = outcomes(runs["steady_explicit"]), outcomes(runs["fickle_explicit"])
    shared = [i for i in steady if steady[i][0] and fickle[i][0]]
    flips_b = sum(not fickle[i][1] for i in shared)
    assert main(["power", "--pilot", str(runs["steady_explicit"]), str(runs["fickle_explicit"])]) == 0
    out = capsys.readouterr().out
    assert f"A 0.0000, B {flips_b / len(shared):.4f}" in out
    assert f"share of items both answer correctly {len(shared) / len(steady):.3f}" in out
    needed = power.shared_items_needed(power.PairedFlips(0.0, flips_b / len(shared), 0.0))
    assert f"({needed:,} answered correctly by both)" in out
    assert f"power with the pilot's {len(steady):,} items:" in out


def test_susceptibility_and_receptiveness_are_set_against_each_other(report_dir: Path, runs: dict[str, Path]) -> None:
    rows = _markdown_table((report_dir / "report.md").read_text(), "Susceptibility and receptiveness")
    for name in ("steady_explicit", "fickle_explicit"):
        records = [json.loads(line) for line in (runs[name] / "predictions.jsonl").read_text().splitlines()]
        scored = [r for r in records if r["error"] is None]
        correct = [r for r in scored if r["original_prediction"] == r["answer"]]
        wrong = [r for r in scored if r["original_prediction"] != r["answer"]]
        t2f = sum(r["prediction"] != r["answer"] for r in correct) / len(correct)
        f2t = sum(r["prediction"] == r["answer"] for r in wrong) / len(wrong)
        model = "scripted/" + name.split("_")[0]
        row = next(r for r in rows if r[0] == model and r[1] == "explicit")
        assert row[4].startswith(f"{100 * t2f:.2f} [") and row[4].endswith(f"n={len(correct)}")
        assert row[5].startswith(f"{100 * f2t:.2f} [") and row[5].endswith(f"n={len(wrong)}")
    # The steady model never gives in and, scripted to keep a wrong answer, is never corrected: it ignores the user.
    steady = next(r for r in rows if r[0] == "scripted/steady" and r[1] == "explicit")
    assert steady[6] == "ignores the user"
    fickle = next(r for r in rows if r[0] == "scripted/fickle" and r[1] == "explicit")
    assert fickle[6] == "misled more than corrected"


def test_susceptibility_scatter_places_each_run_at_its_two_rates(runs: dict[str, Path], tmp_path: Path) -> None:
    from mub.report.plots import susceptibility_scatter
    from mub.report.report import load_run

    loaded = [load_run(runs[name]) for name in ("steady_explicit", "fickle_explicit")]
    for run in loaded:
        run.label = run.model
    figure = susceptibility_scatter(loaded, tmp_path / "s.png")
    points = [tuple(c.get_offsets()[0]) for c in figure.axes[0].collections if type(c) is PathCollection]
    expected = [(100 * run.figures["mr_f2t"], 100 * run.figures["mr_t2f"]) for run in loaded]
    assert [tuple(round(v, 6) for v in p) for p in points] == [tuple(round(v, 6) for v in e) for e in expected]


@pytest.mark.parametrize("n_boot", ["1000000000", "0", "-5"])


def test_report_bootstrap_outside_its_bound_is_one_line(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], n_boot: str
) -> None:
    # Issue 22 (10): `mub report --bootstrap 1e9` ran for minutes with no bound.
    out = tmp_path / "report"
    assert main(["report", *map(str, runs.values()), "--out", str(out), "--bootstrap", n_boot]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--bootstrap is {n_boot}; give 1 to 100000 resamples" in err
    assert not out.exists()
    a = ItemOutcomes(("x", "y"), np.array([True, True]), np.array([False, True]))
    with pytest.raises(ValueError, match="--bootstrap is 100001"):
        paired_bootstrap(a, a, n_boot=100_001)
