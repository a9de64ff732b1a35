"""Copies and draws (issue 21): the paper preset draws every item once per release copy and scores every draw.

Expectations are computed here, independently of mub: copies are counted straight from the release's JSON
files, item ids follow the documented rule (sha256 of image path, NUL, question), and rates over draws are
hand counts of what the scripted backend was told to answer.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import datasets
import pytest
from PIL import Image

from mub.backends.base import Request
from mub.config import RunConfig
from mub.errors import RunInterrupted
from mub.report.submit import run_protocol
from mub.runs.merge import merge_runs
from mub.runs.rescore import rescore_run
from mub.runs.runner import run
from mub.testing.scripted import ScriptedBackend
from mub_dataset.features import FEATURES

IMPLICIT_FILES = ("allmislead_gpt6_all.jsonl", "allmislead_gpt9_all.jsonl", "allmislead_gpt12_all.jsonl")


def _id(new_id: str, question: str) -> str:
    return "mub-" + hashlib.sha256(f"{new_id}\0{question}".encode("utf-8")).hexdigest()[:16]


def _records(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def main_copies(release: Path) -> Counter:
    """Records per item id in all_combined_items.jsonl (what the authors' explicit run.py reads)."""
    return Counter(_id(r["new_id"], r["question"]) for r in _records(release / "all_combined_items.jsonl"))


def implicit_copies(release: Path) -> Counter:
    """Records per item id in the implicit files (what the authors' implicit run.py reads)."""
    folder = release / "implicit" / "mislead_output"
    return Counter(_id(r["new_id"], r["question"]) for name in IMPLICIT_FILES for r in _records(folder / name))


def _stage1_item(request: Request) -> str:
    return request.key.split("/")[0]


def _stage(request: Request) -> str:
    return "stage1" if "/stage1/" in request.key else "stage2"


def _paper(release: Path, out: Path, **fields) -> RunConfig:
    return RunConfig(model="scripted", backend="scripted", dataset=str(release), protocol="paper", out=str(out),
                     progress=False, **fields)  # fmt: skip


def _lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- the dataset records copies


def test_the_dataset_records_each_items_copies_counted_in_the_files_the_authors_scripts_read(release_dir):
    import mub_dataset

    main, implicit = main_copies(release_dir), implicit_copies(release_dir)
    assert set(main.values()) >= {4, 5, 6, 7} and 9 in implicit.values()  # the sample really repeats records
    explicit = mub_dataset.load("explicit", str(release_dir)).remove_columns("image").to_list()
    assert {row["id"]: row["copies"] for row in explicit} == {item: main.get(item, 0) for item in main | implicit}
    assert {row["id"]: row["implicit_copies"] for row in explicit} == {item: implicit.get(item, 0) for item in main | implicit}
    notes = mub_dataset.load("implicit", str(release_dir)).remove_columns("image").to_list()
    assert {row["id"]: row["implicit_copies"] for row in notes} == dict(implicit)


def test_synthetic_items_have_one_copy_in_each_file():
    import mub_dataset

    rows = mub_dataset.load("explicit", "sample").remove_columns("image").to_list()
    assert {(row["copies"], row["implicit_copies"]) for row in rows} == {(1, 1)}


# ---------------------------------------------------------------- one request per copy


@pytest.mark.parametrize("config_name, counted", [("explicit", main_copies), ("implicit", implicit_copies)])
def test_a_paper_run_asks_every_item_once_per_copy_with_its_own_stage_2(release_dir, tmp_path, config_name, counted):
    expected = counted(release_dir)
    backend = ScriptedBackend(lambda request: "A")
    results = run(_paper(release_dir, tmp_path / "run", config=config_name, limit=25), backend=backend)
    requests = [request for call in backend.calls for request in call]
    stage1 = Counter(_stage1_item(r) for r in requests if _stage(r) == "stage1")
    assert len(stage1) == 25 and stage1 == {item: expected[item] for item in stage1}
    keys = [r.key for r in requests]
    assert len(keys) == len(set(keys))  # every draw its own key, so its own seed
    # Draw 0 keeps the keys of a single-draw run; later draws are <id>/d<k>/...
    some = next(item for item in stage1 if expected[item] > 1)
    assert f"{some}/stage1/0" in keys and f"{some}/d{expected[some] - 1}/stage1/0" in keys
    # Each draw's stage 2 follows its own stage 1 (explicit: one hint per draw).
    if config_name == "explicit":
        stage2 = Counter(_stage1_item(r) for r in requests if _stage(r) == "stage2")
        assert stage2 == stage1
    figures = results["results"][config_name]
    assert (figures["n_items"], figures["n_draws"], figures["n"]) == (25, sum(stage1.values()), sum(stage1.values()))
    assert results["dataset"]["n_draws"] == sum(stage1.values())
    lines = _lines(tmp_path / "run")
    assert Counter(line["id"] for line in lines) == stage1
    assert all(sorted(l["draw"] for l in lines if l["id"] == item) == list(range(n)) for item, n in stage1.items())


def test_draws_once_asks_each_item_once_and_marks_the_protocol(release_dir, tmp_path):
    backend = ScriptedBackend(lambda request: "A")
    results = run(_paper(release_dir, tmp_path / "run", limit=10, draws="once"), backend=backend)
    stage1 = Counter(_stage1_item(r) for call in backend.calls for r in call if _stage(r) == "stage1")
    assert set(stage1.values()) == {1} and len(stage1) == 10
    assert results["run"]["draws"] == "once"
    assert run_protocol(results) == "paper + draws=once"
    settings = json.loads((tmp_path / "run" / "run.json").read_text())
    assert settings["draws"] == "once" and settings["protocol"]["overrides"] == {"draws": "once"}


def test_the_deterministic_preset_draws_once_and_the_paper_preset_records_copies(release_dir, tmp_path):
    backend = ScriptedBackend(lambda request: "A")
    config = replace(_paper(release_dir, tmp_path / "det", limit=5), protocol="deterministic")
    assert run(config, backend=backend)["run"]["draws"] == "once"
    assert len([r for call in backend.calls for r in call if _stage(r) == "stage1"]) == 5
    paper = run(_paper(release_dir, tmp_path / "paper", limit=5), backend=ScriptedBackend(lambda request: "A"))
    assert paper["run"]["draws"] == "copies" and run_protocol(paper) == "paper"


def test_items_the_settings_file_lacks_are_not_drawn_and_are_counted(release_dir, tmp_path):
    # The sample's medium and high items are in the implicit files only: the explicit script never reads them.
    main = main_copies(release_dir)
    with pytest.raises(ValueError, match="has a copy in the release file"):
        run(_paper(release_dir, tmp_path / "high", difficulty="high"), backend=ScriptedBackend(lambda r: "A"))
    results = run(_paper(release_dir, tmp_path / "all"), backend=ScriptedBackend(lambda r: "A"))
    everything = main | implicit_copies(release_dir)
    assert results["dataset"]["items_without_copies"] == sum(1 for item in everything if item not in main)
    assert results["results"]["explicit"]["n_draws"] == sum(main.values()) == 2594


# ---------------------------------------------------------------- rates over draws


def _png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def _item(number: int, copies: int) -> dict:
    image = _png(number * 30)
    return {
        "id": f"item-{number}", "image": {"bytes": image, "path": f"{number}.png"},
        "image_sha256": hashlib.sha256(image).hexdigest(),
        "question": f"Question {number}?", "choices": ["red", "green", "blue"], "answer": "A",
        "question_type": "multiple_choice", "source": "Synthetic-Count" if number % 2 else "Synthetic-Color",
        "category": "", "misled_count": 6, "difficulty": "low", "misleading_answer": "B",
        "misleading_answer_source": "seeded", "misleading_notes": ["m"], "guiding_notes": ["g"],
        "reference_model": "", "reference_hint": "", "reference_response": "", "reference_outcome": "",
        "copies": copies, "implicit_copies": 1,
    }  # fmt: skip


# Per (item, draw): (stage-1 answer, stage-2 answer). The reference answer is A everywhere.
SCRIPT = {
    ("item-1", 0): ("A", "B"),  # T, flipped
    ("item-2", 0): ("A", "B"),  # T, flipped
    ("item-2", 1): ("A", "B"),  # T, flipped
    ("item-2", 2): ("C", "A"),  # F, corrected
    ("item-3", 0): ("A", "A"),  # T, kept
    ("item-3", 1): ("A", "A"),  # T, kept
}


def _draw_of(request: Request) -> tuple[str, int]:
    parts = request.key.split("/")
    return parts[0], int(parts[1][1:]) if parts[1].startswith("d") else 0


def scripted(request: Request) -> str:
    stage1, stage2 = SCRIPT[_draw_of(request)]
    return stage1 if _stage(request) == "stage1" else stage2


def _wilson(successes: float, total: float, z: float = 1.959963984540054) -> list[float]:
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [centre - half, centre + half]


def _small_dataset() -> datasets.Dataset:
    return datasets.Dataset.from_list([_item(1, 1), _item(2, 3), _item(3, 2)], features=FEATURES)


def test_rates_are_over_draws_and_intervals_are_clustered_by_item(tmp_path):
    config = RunConfig(model="scripted", backend="scripted", protocol="paper", out=str(tmp_path / "run"), progress=False)
    results = run(config, backend=ScriptedBackend(scripted), dataset=_small_dataset())
    f = results["results"]["explicit"]
    # Hand count over the six draws: T = 5 (t2f 3), F = 1 (f2t 1).
    assert (f["n_items"], f["n_draws"], f["n"], f["n_t"], f["t2f"], f["n_f"], f["f2t"]) == (3, 6, 6, 5, 3, 1, 1)
    assert f["mr_t2f"] == pytest.approx(3 / 5) and f["accuracy_before"] == pytest.approx(5 / 6)
    # Clustered by item: per item (flips, T draws) = (1, 1), (2, 2), (0, 2); Kish's design effect of the ratio.
    p = 3 / 5
    deff = ((1 - p * 1) ** 2 + (2 - p * 2) ** 2 + (0 - p * 2) ** 2) / (5 * p * (1 - p))
    assert deff > 1.5
    assert f["mr_t2f_ci"] == pytest.approx(_wilson(p * 5 / deff, 5 / deff))
    # The breakdowns are over draws too, with their items and draws counted.
    by_source = f["by_source"]
    assert (by_source["Synthetic-Color"]["n_items"], by_source["Synthetic-Color"]["n_draws"]) == (1, 3)
    assert (by_source["Synthetic-Count"]["n_t"], by_source["Synthetic-Count"]["t2f"]) == (3, 1)
    assert f["by_difficulty"]["low"]["n_draws"] == 6 and f["by_difficulty"]["low"]["n_items"] == 3


# ---------------------------------------------------------------- resume, shards, merge, rescore


def test_a_run_killed_mid_draws_resumes_exactly_the_missing_draws(tmp_path):
    config = RunConfig(model="scripted", backend="scripted", protocol="paper", out=str(tmp_path / "run"),
                       progress=False, batch_size=1)  # fmt: skip
    asked: list[str] = []

    def killed_at_item_3(request: Request) -> str:
        if request.key.startswith("item-3"):
            raise KeyboardInterrupt
        asked.append(request.key)
        return scripted(request)

    with pytest.raises(RunInterrupted) as stopped:
        run(config, backend=ScriptedBackend(killed_at_item_3), dataset=_small_dataset())
    assert (stopped.value.saved, stopped.value.total) == (4, 6)
    # Also lose one draw in the middle of item 2 and leave half a line, as a kill during a write would.
    run_dir = tmp_path / "run"
    lines = (run_dir / "predictions.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)["draw"] != 1]
    assert len(kept) == 3
    (run_dir / "predictions.jsonl").write_text("".join(kept) + lines[0][:40])

    backend = ScriptedBackend(scripted)
    results = run(replace(config, resume=True), backend=backend, dataset=_small_dataset())
    resumed = {_draw_of(r) for call in backend.calls for r in call if _stage(r) == "stage1"}
    assert resumed == {("item-2", 1), ("item-3", 0), ("item-3", 1)}
    f = results["results"]["explicit"]
    assert (f["n_draws"], f["n_t"], f["t2f"]) == (6, 5, 3)
    assert Counter((line["id"], line["draw"]) for line in _lines(run_dir)) == Counter(list(SCRIPT))


def _key_rule(request: Request) -> str:
    """A deterministic answer that differs between draws of one item, so a lost or repeated draw shows."""
    digest = hashlib.sha256(request.key.encode()).digest()[0]
    return "ABCD"[digest % 4] if request.options and request.options[0] == "A" else ("Yes" if digest % 2 else "No")


def test_shards_merged_equal_a_single_run_and_rescoring_keeps_every_draw(release_dir, tmp_path):
    single = run(_paper(release_dir, tmp_path / "single", limit=12), backend=ScriptedBackend(_key_rule))
    for index in range(3):
        run(_paper(release_dir, tmp_path / f"shard{index}", limit=12, shard=(index, 3)), backend=ScriptedBackend(_key_rule))
    merged = merge_runs([tmp_path / f"shard{i}" for i in range(3)], out=tmp_path / "merged", progress=False)
    assert merged["results"] == single["results"]
    assert _lines(tmp_path / "merged") == _lines(tmp_path / "single")
    assert single["results"]["explicit"]["n_draws"] == sum(main_copies(release_dir)[l["id"]] for l in _lines(tmp_path / "single") if l["draw"] == 0)

    rescored = rescore_run(tmp_path / "single", "mub", tmp_path / "rescored", progress=False)
    assert rescored["results"]["explicit"]["n_draws"] == single["results"]["explicit"]["n_draws"]
    assert [(l["id"], l["draw"]) for l in _lines(tmp_path / "rescored")] == [(l["id"], l["draw"]) for l in _lines(tmp_path / "single")]


def test_merge_refuses_a_shard_that_lost_a_draw(release_dir, tmp_path):
    from mub.runs.merge import MergeError

    for index in range(2):
        run(_paper(release_dir, tmp_path / f"shard{index}", limit=6, shard=(index, 2)), backend=ScriptedBackend(_key_rule))
    predictions = tmp_path / "shard1" / "predictions.jsonl"
    lines = predictions.read_text().splitlines(keepends=True)
    lost = next(json.loads(line) for line in lines if json.loads(line)["draw"] == 2)
    predictions.write_text("".join(line for line in lines if json.loads(line) != lost))
    with pytest.raises(MergeError, match=f"lacks 1 of its .* draws \\({lost['id']}/d2\\)"):
        merge_runs([tmp_path / "shard0", tmp_path / "shard1"], out=tmp_path / "merged", progress=False)


def test_report_pairs_two_runs_draw_by_draw_and_resamples_items(tmp_path):
    from mub.report.compare import compare_predictions
    from mub.runs.storage import RunFolder

    def steady(request: Request) -> str:
        return "A"  # every draw correct and kept

    config = RunConfig(model="scripted", backend="scripted", protocol="paper", out=str(tmp_path / "a"), progress=False)
    run(config, backend=ScriptedBackend(scripted), dataset=_small_dataset())
    run(replace(config, out=str(tmp_path / "b")), backend=ScriptedBackend(steady), dataset=_small_dataset())
    a, b = (list(RunFolder(tmp_path / name).load_predictions().values()) for name in "ab")
    result = compare_predictions(a, b, n_boot=500, seed=1)
    # Over the six shared draws: a flips 3 of its 5 T draws, b none of its 6; three items are resampled.
    assert (result.n_items, result.mr_t2f_a, result.mr_t2f_b) == (3, pytest.approx(3 / 5), 0.0)
    assert result.ci is not None and result.ci[0] <= -3 / 5 <= result.ci[1]
