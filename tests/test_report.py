"""Reports, plots, paired comparisons and leaderboard submissions, from real run folders.

Runs are made with the scripted backend (controlled behaviour: one model that
never lets go of a correct answer, one that often does) and, when the tiny
transformers models are available, one plumbing-check run of ``tiny:llava``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from conftest import SHARED
from PIL import Image

import mub_dataset
from mub.backends.base import Request
from mub.cli import main
from mub.config import RunConfig
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
from mub.report.submit import build_submission, upload_paths
from mub.runs.predictions import ItemPrediction, StageAnswer
from mub.runs.runner import run
from mub.testing.scripted import ScriptedBackend

FIGURES = ("misleading_by_difficulty.png", "transitions.png", "misleading_by_source.png", "accuracy_vs_misleading.png")
CELL = re.compile(r"^(?P<value>\d+\.\d{2}) \[(?P<low>\d+\.\d{2}), (?P<high>\d+\.\d{2})\] n=(?P<n>\d+)$")


def _bucket(text: str, modulo: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % modulo


def _rule(items: dict[str, dict], flip_share: int) -> Callable[[Request], str]:
    """Stage 1: mostly correct, some wrong, some unparsed. Stage 2: a correct answer is
    abandoned for the misleading one on `flip_share` in 10 items; wrong ones are kept."""

    def answer(request: Request) -> str:
        item_id, stage, _ = request.key.split("/")
        item = items[item_id]
        bucket = _bucket(item_id, 10)
        if bucket == 0:
            return "I cannot tell from this image."  # unparsed in stage 1 and stage 2
        stage1_correct = bucket >= 3
        if stage == "stage1":
            return item["answer"] if stage1_correct else item["misleading_answer"]
        if stage1_correct:
            return item["misleading_answer"] if _bucket(item_id + "/flip", 10) < flip_share else item["answer"]
        return item["misleading_answer"]

    return answer


def _scripted_run(
    root: Path, model: str, config: str, flip_share: int, limit: int | None = None, protocol: str = "paper"
) -> Path:
    dataset = mub_dataset.load(config, "sample")
    items = {row["id"]: row for row in dataset.remove_columns("image").to_list()}
    out = root / f"{model.replace('/', '_')}__{config}{'' if protocol == 'paper' else '__' + protocol}"
    run(
        RunConfig(
            model=model, config=config, backend="scripted", out=str(out), limit=limit, progress=False, protocol=protocol
        ),
        backend=ScriptedBackend(_rule(items, flip_share), name=model),
        dataset=dataset,
    )
    return out


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


def test_every_plot_is_a_readable_png(report_dir: Path) -> None:
    for name in FIGURES:
        with Image.open(report_dir / name) as image:
            image.load()
            assert image.format == "PNG"
            width, height = image.size
            assert 300 <= width <= 4000 and 250 <= height <= 6000, (name, image.size)
            low, high = image.convert("L").getextrema()
            assert high - low > 100, f"{name} looks blank"


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
    assert len(rows) == len(runs)
    steady = _results(runs["steady_explicit"])["results"]["explicit"]
    row = next(r for r in rows if r[0] == "scripted/steady" and r[1] == "explicit")
    _check_cell(row[6], steady, "mr_t2f", "n_t")
    _check_cell(row[8], steady, "mr_f2t", "n_f")


def test_html_is_self_contained_and_embeds_every_plot(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r"<img [^>]*src='([^']+)'", page)
    assert len(sources) == len(FIGURES)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
            assert image.size[0] > 300
    assert "<script" not in page and "<link" not in page and "http" not in page.replace("https://arxiv.org", ""), (
        "the page must not load anything from elsewhere"
    )
    assert "scripted/fickle" in page and "Published results" in page


def test_paired_comparison_in_report_says_fickle_differs_significantly(report_dir: Path) -> None:
    rows = _markdown_table((report_dir / "report.md").read_text(), "Paired comparisons")
    explicit = next(r for r in rows if r[0] == "explicit" and r[2] == "scripted/fickle")
    assert explicit[1] == "scripted/steady" and explicit[-1] == "yes"
    assert float(explicit[4]) == 0.0 and float(explicit[5]) > 40


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
    large = write_report(build_report(folders, paper=True), tmp_path / "large")
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
    source = SHARED / "paper_results.md"
    if not source.is_file():
        pytest.skip(f"{source} is missing")
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


def test_submission_schema_and_values(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sub" / "results.json"
    code = main(
        [
            "submit",
            str(runs["fickle_explicit"]),
            str(runs["fickle_implicit"]),
            "--to",
            "someone/leaderboard-results",
            "--dry-run",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    document = json.loads(out.read_text())
    assert {"model_name", "model_sha", "model_dtype"} <= set(document["config"])
    assert document["config"]["model_name"] == "scripted/fickle"
    assert set(document["results"]) == {"mub_explicit", "mub_implicit"}
    for config in ("explicit", "implicit"):
        submitted = document["results"][f"mub_{config}"]
        source = _results(runs[f"fickle_{config}"])["results"][config]
        for rate in ("mr_t2f", "mr_f2t", "accuracy_before", "accuracy_after", "consistency"):
            assert submitted[rate] == source[rate]
            low, high = submitted[f"{rate}_ci"]
            assert 0 <= low <= submitted[rate] + 1e-9 and submitted[rate] - 1e-9 <= high <= 1
        for count in ("n", "n_t", "n_f", "t2f", "f2t"):
            assert isinstance(submitted[count], int) and submitted[count] == source[count]
        for level in ("low", "medium", "high"):
            assert submitted[f"mr_t2f_{level}"] == source["by_difficulty"][level]["mr_t2f"]
            assert submitted[f"n_t_{level}"] == source["by_difficulty"][level]["n_t"]
            assert len(submitted[f"mr_t2f_{level}_ci"]) == 2


def test_model_index_snippet_parses_as_a_model_card_block(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sub.json"
    assert (
        main(["submit", str(runs["steady_explicit"]), str(runs["steady_implicit"]), "--dry-run", "--out", str(out)])
        == 0
    )
    card = yaml.safe_load((tmp_path / "sub.model-index.yaml").read_text())
    (entry,) = card["model-index"]
    assert entry["name"] == "scripted/steady"
    assert [r["dataset"]["config"] for r in entry["results"]] == ["explicit", "implicit"]
    explicit = _results(runs["steady_explicit"])["results"]["explicit"]
    for result in entry["results"]:
        assert result["task"]["type"] and result["dataset"]["name"] and result["dataset"]["type"]
        assert all({"type", "value", "name"} <= set(metric) for metric in result["metrics"])
    metrics = {m["type"]: m for m in entry["results"][0]["metrics"]}
    assert metrics["accuracy"]["value"] == round(100 * explicit["accuracy_before"], 2)
    assert f"n={explicit['n_t']}" in metrics["misleading_rate"]["name"]


def test_submission_refuses_mixed_models_and_repeated_configs(runs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="one model"):
        build_submission([runs["steady_explicit"], runs["fickle_explicit"]])
    with pytest.raises(ValueError, match="more than one run"):
        build_submission([runs["steady_explicit"], runs["steady_explicit"]])


def test_upload_paths_follow_the_leaderboard_layout(runs: dict[str, Path]) -> None:
    from datetime import datetime, timezone

    submission = build_submission([runs["steady_explicit"]])
    stamp = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert upload_paths(submission, stamp) == (
        "scripted/steady/results_2025-01-02T03-04-05.json",
        "scripted/steady/results_2025-01-02T03-04-05.model-index.yaml",
    )


def test_tiny_model_run_goes_into_the_report(runs: dict[str, Path], report_dir: Path) -> None:
    if "tiny_explicit" not in runs:
        pytest.skip("tiny transformers models are not available")
    rows = _markdown_table((report_dir / "report.md").read_text(), "All figures per run")
    assert any(row[0] == "tiny:llava" for row in rows)


def test_implicit_rates_by_notes_are_shown_for_3_and_5(runs, report_dir) -> None:
    rows = _markdown_table((report_dir / "report.md").read_text(encoding="utf-8"), "Implicit misleading rate by notes tried")
    implicit = [_results(runs[name])["results"]["implicit"] for name in ("steady_implicit", "fickle_implicit")]
    assert len(rows) == 2
    for row, figures in zip(rows, implicit):
        expected = [figures[key][k] for key in ("mr_t2f_by_notes", "mr_f2t_by_notes") for k in ("3", "5")]
        assert [float(cell) for cell in row[1:]] == pytest.approx([100 * value for value in expected], abs=0.005)
        assert figures["mr_t2f_by_notes"]["5"] == figures["mr_t2f"]  # --notes 5: the run's own rate
        by_k = [figures["mr_t2f_by_notes"][str(k)] for k in range(1, 6)]
        assert by_k == sorted(by_k)  # more notes can only flip more items


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


def test_submission_records_the_protocol_and_refuses_mixed_ones(runs, tmp_path) -> None:
    from mub.report.submit import build_submission

    submission = build_submission([runs["steady_explicit"], runs["steady_implicit"]])
    assert submission.results["config"]["protocol"] == {"preset": "paper", "overrides": {}}
    clean = _scripted_run(tmp_path, "scripted/steady", "implicit", 0, limit=8, protocol="deterministic")
    with pytest.raises(ValueError, match="must share one protocol.*--protocol deterministic"):
        build_submission([runs["steady_explicit"], clean])
