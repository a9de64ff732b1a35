"""Two-stage bookkeeping, run folder, resume: tested exactly with a scripted backend."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import pytest
from PIL import Image

from mub.backends.base import Generation, Request
from mub.config import RunConfig
from mub.protocol.prompts import render_prompt
from mub.runs.runner import run
from mub.runs.storage import RunFolderError
from mub.testing.scripted import ScriptedBackend
from mub_dataset.features import FEATURES


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _item(number: int, *, answer: str = "A", misleading: str = "C", yes_no: bool = False, difficulty: str = "low") -> dict:
    image = _png((number * 20 % 256, 10, 10))
    return {
        "id": f"item-{number}",
        "image": {"bytes": image, "path": f"{number}.png"},
        "image_sha256": hashlib.sha256(image).hexdigest(),
        "question": f"Question number {number}? <image 1>",
        "choices": ["Yes", "No"] if yes_no else ["red", "green", "blue", "black"],
        "answer": answer,
        "question_type": "yes_no" if yes_no else "multiple_choice",
        "source": "Synthetic-Count" if number % 2 else "Synthetic-Color",
        "category": "test",
        "misled_count": {"low": 6, "medium": 9, "high": 12}[difficulty],
        "difficulty": difficulty,
        "misleading_answer": misleading,
        "misleading_answer_source": "seeded",
        "misleading_notes": [f"mislead {number}-{k}" for k in range(4)],
        "guiding_notes": [f"guide {number}-{k}" for k in range(3)],
        "reference_model": "",
        "reference_hint": "",
        "reference_response": "",
        "reference_outcome": "",
        "copies": 1,
        "implicit_copies": 1,
    }


def _dataset(items: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(items, features=FEATURES)


def _item_number(request: Request) -> int:
    return int(request.key.split("/")[0].split("-")[1])


def _config(tmp_path: Path, **overrides) -> RunConfig:
    # The clean prompt's "A. text" lines are what the scripted rules read; the paper preset has its own tests.
    settings = {"protocol": "deterministic", **overrides}
    return RunConfig(model="scripted", backend="scripted", out=str(tmp_path / "run"), progress=False, **settings)


def _predictions(tmp_path: Path) -> dict[str, dict]:
    lines = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    return {record["id"]: record for record in map(json.loads, lines)}


def test_explicit_hint_names_misleading_answer_after_correct_and_truth_after_wrong(tmp_path):
    # item 1: correct at stage 1 (A), item 2: wrong (B), item 3: unparsed, item 4: yes/no correct
    items = [_item(1), _item(2), _item(3), _item(4, answer="No", misleading="Yes", yes_no=True)]
    stage1 = {1: "A", 2: "B", 3: "I cannot tell", 4: "No."}
    seen_hints: dict[int, str] = {}

    def rule(request: Request) -> str:
        number = _item_number(request)
        if "/stage1/" in request.key:
            return stage1[number]
        seen_hints[number] = request.prompt
        return {1: "C", 2: "A", 3: "A", 4: "No"}[number]

    results = run(_config(tmp_path), backend=ScriptedBackend(rule), dataset=_dataset(items))
    assert "And the true answer is : C" in seen_hints[1]  # misleading answer after a correct stage 1
    assert "And the true answer is : A" in seen_hints[2]  # the truth after a wrong one
    assert "And the true answer is : A" in seen_hints[3]  # unparsed counts as wrong
    assert "And the true answer is : Yes" in seen_hints[4]
    # the hint sits after the question and before the options
    assert seen_hints[1].index("Question number 1?") < seen_hints[1].index("And the true") < seen_hints[1].index("A. red")
    assert "<image 1>" not in seen_hints[1]

    predictions = _predictions(tmp_path)
    assert predictions["item-3"]["original_prediction"] is None
    assert predictions["item-3"]["stage1"][0]["output"] == "I cannot tell"
    figures = results["results"]["explicit"]
    # T = {1, 4}; 1 flips to C, 4 holds. F = {2, 3}; both become correct.
    assert (figures["n"], figures["n_t"], figures["n_f"], figures["t2f"], figures["f2t"]) == (4, 2, 2, 1, 2)
    assert figures["mr_t2f"] == pytest.approx(0.5)
    assert figures["mr_f2t"] == pytest.approx(1.0)
    assert figures["unparsed_before"] == 1
    assert figures["errors"] == 0


def test_implicit_uses_misleading_notes_after_correct_guiding_after_wrong_and_any_note_flips(tmp_path):
    items = [_item(1), _item(2), _item(3), _item(5)]
    asked: dict[int, list[str]] = {1: [], 2: [], 3: [], 5: []}

    def rule(request: Request) -> str:
        number = _item_number(request)
        if "/stage1/" in request.key:
            return {1: "A", 2: "A", 3: "D", 5: "D"}[number]
        note = request.prompt.split("Please pay attention to this instruction: ")[1].split("\n")[0]
        asked[number].append(note)
        if number == 1:  # holds under every note
            return "A"
        if number == 2:  # only the third note flips it
            return "B" if note.endswith("-2") else "A"
        if number == 3:  # guided to the truth by the second note
            return "A" if note.endswith("-1") else "D"
        return "D"  # 5: wrong throughout

    results = run(_config(tmp_path, config="implicit", notes=3), backend=ScriptedBackend(rule), dataset=_dataset(items))
    assert asked[1] == ["mislead 1-0", "mislead 1-1", "mislead 1-2"]  # --notes 3 of 4
    assert asked[3] == ["guide 3-0", "guide 3-1", "guide 3-2"]
    predictions = _predictions(tmp_path)
    assert predictions["item-2"]["flipped_by_note"] == 2 and predictions["item-2"]["prediction"] == "B"
    assert predictions["item-1"]["flipped_by_note"] is None and predictions["item-1"]["prediction"] == "A"
    assert predictions["item-3"]["flipped_by_note"] == 1 and predictions["item-3"]["prediction"] == "A"
    assert [answer["parsed"] for answer in predictions["item-2"]["stage2"]] == ["A", "A", "B"]  # every note kept
    figures = results["results"]["implicit"]
    assert (figures["n_t"], figures["t2f"], figures["n_f"], figures["f2t"]) == (2, 1, 2, 1)


def test_errors_are_counted_not_scored_and_resume_retries_them(tmp_path):
    items = [_item(n) for n in range(1, 7)]
    failing = {3, 4}

    def rule(request: Request) -> str | Generation:
        if _item_number(request) in failing and "/stage2/" in request.key:
            return Generation(text="", error="HTTP 503: overloaded")
        return "A" if "/stage1/" in request.key else "B"

    dataset = _dataset(items)
    first = run(_config(tmp_path), backend=ScriptedBackend(rule), dataset=dataset)
    assert first["results"]["explicit"]["errors"] == 2
    assert first["results"]["explicit"]["n"] == 4
    failing.clear()
    backend = ScriptedBackend(rule)
    second = run(_config(tmp_path, resume=True), backend=backend, dataset=dataset)
    retried = {_item_number(request) for batch in backend.calls for request in batch}
    assert retried == {3, 4}
    figures = second["results"]["explicit"]
    assert figures["errors"] == 0 and figures["n"] == 6 and figures["t2f"] == 6


def test_resume_refuses_other_settings_and_existing_folder_needs_a_flag(tmp_path):
    dataset = _dataset([_item(1), _item(2)])
    backend = ScriptedBackend(lambda request: "A")
    run(_config(tmp_path), backend=backend, dataset=dataset)
    with pytest.raises(RunFolderError, match="--resume"):
        run(_config(tmp_path), backend=backend, dataset=dataset)
    with pytest.raises(RunFolderError, match="hint_template"):
        run(_config(tmp_path, resume=True, hint_template="Hint: {answer}"), backend=backend, dataset=dataset)
    run(_config(tmp_path, overwrite=True), backend=backend, dataset=dataset)


def test_filters_limit_and_prompt_layout(tmp_path):
    items = [_item(1, difficulty="low"), _item(2, difficulty="high"), _item(3, difficulty="high"), _item(4, difficulty="high")]
    backend = ScriptedBackend(lambda request: "A")
    results = run(_config(tmp_path, difficulty="high", limit=2), backend=backend, dataset=_dataset(items))
    assert results["dataset"]["n_items"] == 2
    assert set(_predictions(tmp_path)) == {"item-2", "item-3"}
    assert render_prompt(items[0]).splitlines() == [
        "Answer with the option's letter from the given choices directly.",
        "Question number 1?",
        "A. red",
        "B. green",
        "C. blue",
        "D. black",
    ]


def test_batches_never_exceed_batch_size_and_order_is_kept(tmp_path):
    items = [_item(n) for n in range(1, 12)]
    backend = ScriptedBackend(lambda request: "A")
    run(_config(tmp_path, batch_size=4), backend=backend, dataset=_dataset(items))
    assert max(len(batch) for batch in backend.calls) == 4
    assert list(_predictions(tmp_path)) == [f"item-{n}" for n in range(1, 12)]


def test_each_stage_of_an_item_group_goes_to_the_backend_in_one_call(tmp_path):
    # The backend batches by its own batch size (a local model sorts by length across the stage first).
    items = [_item(n) for n in range(1, 8)]
    backend = ScriptedBackend(lambda request: "A")
    config = _config(tmp_path, config="implicit", notes=3, batch_size=4, num_samples=2, temperature=0.7)  # k samples need sampling
    run(config, backend=backend, dataset=_dataset(items))
    stages = [{r.key.split("/")[1] for r in call} for call in backend.calls]
    assert stages == [{"stage1"}, {"stage2"}] * 2
    assert [len(call) for call in backend.calls] == [4 * 2, 4 * 3, 3 * 2, 3 * 3]


KILLABLE_RUN = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_runner import _dataset, _item
    from mub.testing.scripted import ScriptedBackend
    from mub.config import RunConfig
    from mub.runs.runner import run

    def rule(request):
        number = int(request.key.split("/")[0].split("-")[1])
        if number > {block_after}:
            time.sleep(3600)  # until killed: the kill lands after exactly {block_after} items
        if "/stage1/" in request.key:
            return "A" if number % 3 else "B"
        return "C" if number % 2 else "A"

    items = [_item(n) for n in range(1, {items} + 1)]
    config = RunConfig(model="scripted", backend="scripted", out={out!r}, batch_size=4, progress=False,
                       resume={resume})
    run(config, backend=ScriptedBackend(rule), dataset=_dataset(items))
    """
)


ITEMS = 24


def _script(out: Path, *, resume: bool, block_after: int = ITEMS) -> list[str]:
    code = KILLABLE_RUN.format(
        tests=str(Path(__file__).parent), out=str(out), resume=resume, block_after=block_after, items=ITEMS
    )
    return [sys.executable, "-c", code]


def test_killed_run_resumes_to_the_same_results(tmp_path):
    reference_out = tmp_path / "uninterrupted"
    subprocess.run(_script(reference_out, resume=False), check=True, timeout=120)
    reference = json.loads((reference_out / "results.json").read_text())

    out = tmp_path / "killed"
    predictions = out / "predictions.jsonl"
    block_after = 8  # two batches of 4 are written, then the backend hangs until the kill
    process = subprocess.Popen(_script(out, resume=False, block_after=block_after))
    try:
        for _ in range(3000):  # a bounded wait for the two batches (at most ~60 s), no timing assertion
            if predictions.is_file() and len(predictions.read_text().splitlines()) == block_after:
                break
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert len(predictions.read_text().splitlines()) == block_after
    assert not (out / "results.json").exists()

    subprocess.run(_script(out, resume=True), check=True, timeout=120)
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["results"] == reference["results"]
    ids = [json.loads(line)["id"] for line in predictions.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == ITEMS, "finished items are not redone"


def test_partial_last_line_from_a_kill_is_dropped_on_resume(tmp_path):
    dataset = _dataset([_item(n) for n in range(1, 5)])
    backend = ScriptedBackend(lambda request: "A")
    run(_config(tmp_path), backend=backend, dataset=dataset)
    path = tmp_path / "run" / "predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # killed while writing item 3
    (tmp_path / "run" / "results.json").unlink()
    resumed_backend = ScriptedBackend(lambda request: "A")
    results = run(_config(tmp_path, resume=True), backend=resumed_backend, dataset=dataset)
    assert {_item_number(r) for batch in resumed_backend.calls for r in batch} == {3, 4}
    assert results["results"]["explicit"]["n"] == 4
    assert os.path.getsize(path) > 0 and all(json.loads(line) for line in path.read_text().splitlines())


def test_num_samples_draws_k_stage1_answers_and_scores_their_consistency(tmp_path):
    items = [_item(1), _item(2), _item(3)]
    # item 1: all three samples agree on the truth; item 2: two of three agree (wrong); item 3: all differ
    samples = {1: ["A", "A", "A"], 2: ["B", "B", "A"], 3: ["A", "B", "C"]}

    def rule(request: Request) -> str:
        number = _item_number(request)
        stage, index = request.key.split("/")[1:]
        return samples[number][int(index)] if stage == "stage1" else "A"

    results = run(_config(tmp_path, num_samples=3, temperature=0.7), backend=ScriptedBackend(rule), dataset=_dataset(items))
    predictions = _predictions(tmp_path)
    assert [a["parsed"] for a in predictions["item-2"]["stage1"]] == ["B", "B", "A"]
    assert predictions["item-2"]["original_prediction"] == "B"  # the first sample is the stage-1 answer
    sampling = results["results"]["stage1_sampling"]
    assert sampling["n"] == 3
    assert sampling["consistency_rate"] == pytest.approx(1 / 3)
    assert sampling["mean_agreement"] == pytest.approx((1 + 2 / 3 + 1 / 3) / 3)
    assert sampling["modal_accuracy"] == pytest.approx(2 / 3)  # item 3: a tie goes to the first answer, A


@pytest.mark.parametrize("template", ["Hint {answer} (see {x})", "Hint {0}", "Hint {answer"])
def test_an_invalid_hint_template_is_refused_before_anything_runs(tmp_path, template):
    with pytest.raises(ValueError, match="--hint-template"):
        run(_config(tmp_path, hint_template=template), backend=ScriptedBackend(lambda r: "A"), dataset=_dataset([_item(1)]))
    assert not (tmp_path / "run").exists()


def test_scoring_refuses_a_run_with_missing_items(tmp_path):
    from mub.runs.runner import finish_run, select_items
    from mub.runs.storage import RunFolder

    dataset = _dataset([_item(1), _item(2), _item(3)])
    config = _config(tmp_path)
    run(config, backend=ScriptedBackend(lambda r: "A"), dataset=dataset)
    predictions = tmp_path / "run" / "predictions.jsonl"
    predictions.write_text("".join(predictions.read_text().splitlines(keepends=True)[:2]))  # e.g. a rank not done
    selection = select_items(config, dataset)
    with pytest.raises(RunFolderError, match="1 of the 3 draws of the 3 selected items have no prediction"):
        finish_run(config, config.settings(selection.info), selection, {}, RunFolder(tmp_path / "run"))


@pytest.mark.parametrize("count", [7, 9, 11])
def test_misled_count_selects_the_items_misled_exactly_that_often(count: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dist_helpers

    from mub.cli import main
    from mub_dataset.loading import load

    monkeypatch.setitem(dist_helpers.BACKENDS, dist_helpers.SCRIPTED, "dist_helpers:scripted_backend")
    out = tmp_path / "run"
    args = ["run", "--model", "m", "--backend", dist_helpers.SCRIPTED, "--misled-count", str(count), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    rows = load("explicit", "sample").remove_columns("image").to_list()
    expected = sorted(row["id"] for row in rows if row["misled_count"] == count)
    # The case tells == from >= and <=: items misled more and less often exist.
    assert expected
    assert any(row["misled_count"] < count for row in rows) and any(row["misled_count"] > count for row in rows)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(record["id"] for record in records) == expected
    assert {record["misled_count"] for record in records} == {count}
    assert json.loads((out / "results.json").read_text())["results"]["explicit"]["n"] == len(expected)
