"""`mub notes` (validation, regeneration, report, resume, templates), `mub import`, and the whole path
import -> notes -> build -> run, with a scripted backend and against `transformers serve`."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Iterator

import datasets
import pytest
from PIL import Image

import mub_dataset
from mub.backends.base import Generation, Request
from mub.cli import main
from mub.config import RunConfig
from mub.extend.importer import (
    DatasetImportError,
    ImportConfig,
    answer_label,
    choices_of,
    import_dataset,
)
from mub.extend.note_prompts import (
    GUIDING_STRATEGIES,
    TemplateError,
    load_templates,
    strategy_for,
)
from mub.extend.note_validation import (
    PROBLEMS,
    clean_note,
    count_sentences,
    named_option_letters,
    note_problems,
)
from mub.extend.notes import NotesConfig, generate_notes
from mub.runs.runner import run
from mub.runs.storage import RunFolderError
from mub.testing.scripted import ScriptedBackend

MC = {"question": "How many red circles are there?", "choices": ["3", "4", "5"], "answer": "B", "question_type": "multiple_choice"}
YN = {"question": "Is there a cat?", "choices": ["Yes", "No"], "answer": "No", "question_type": "yes_no"}
# The true option's text ("red") is part of the question, so a note may say it.
MC_ANSWER_IN_QUESTION = {
    "question": "Which shape is red?", "choices": ["the circle", "red", "the square"], "answer": "B",
    "question_type": "multiple_choice",
}  # fmt: skip
ORDINALS = ("first", "second", "third", "fourth", "fifth")


# ------------------------------------------------------------------ validation rules (pure)


@pytest.mark.parametrize(
    "note, kind, item, problems",
    [
        ("Count the circles hiding behind the square as well.", "misleading", MC, []),
        ("A red circle hides behind the square.", "guiding", MC, []),  # the article, not option A
        ("Look at the 14 shapes; each is about 4.5 cm wide.", "guiding", MC, []),  # 4 is not in 14 or 4.5
        ("There is no cat here, only a dog.", "misleading", YN, []),  # "no" as a word is fine
        ("   ", "misleading", MC, ["empty"]),
        ("One. Two. Three. Four.", "misleading", MC, ["too_many_sentences"]),
        ("E.g. this one. And 3.5 that. Fine!", "guiding", MC, []),  # abbreviations and decimals
        ("Option C looks right to me.", "misleading", MC, ["names_option_letter"]),
        ("Consider choice c carefully.", "misleading", MC, ["names_option_letter"]),
        ("Clearly (D) is the better fit.", "misleading", MC, ["names_option_letter"]),
        ("The picture suggests C. Look again.", "misleading", MC, ["names_option_letter"]),
        ("A is the one that fits.", "misleading", MC, ["names_option_letter"]),
        ("There are 4 circles in total.", "misleading", MC, ["copies_answer"]),
        ("There are 4 circles in total.", "guiding", MC, ["states_answer"]),
        ("Pick B.", "guiding", MC, ["names_option_letter", "states_answer"]),
        ("No, the cat is missing.", "guiding", YN, ["states_answer"]),
        ("The answer is no.", "misleading", YN, ["copies_answer"]),
        ("See the corner /// then the middle.", "guiding", MC, ["breaks_format"]),
        ("2. See the corner.", "guiding", MC, ["breaks_format"]),
        # Exempt: repeating the question's own words gives nothing away ...
        ("Compare the red shapes with the circle.", "misleading", MC_ANSWER_IN_QUESTION, []),
        ("Compare the red shapes with the circle.", "guiding", MC_ANSWER_IN_QUESTION, []),
        # ... but the same answer text for an item whose question lacks it does.
        ("Compare the red shapes with the circle.", "misleading", {**MC_ANSWER_IN_QUESTION, "question": "Which colour?"}, ["copies_answer"]),
    ],
)
def test_note_rules(note, kind, item, problems):
    assert note_problems(note, kind, item) == problems
    assert all(code in PROBLEMS for code in problems)


def test_duplicate_and_cleaning_rules():
    assert note_problems("Look at the LEFT side!", "guiding", MC, earlier=["look at the left side"]) == ["duplicate"]
    assert clean_note('  "Note: 2. Look at the\n left side."  ') == "Look at the left side."
    assert clean_note("1) Count again.") == "Count again."
    assert count_sentences("这是第一句。这是第二句。") == 2
    assert named_option_letters("Options A and B differ; (c) too.", MC) == ["A", "B", "C"]


# ------------------------------------------------------------------ templates


def test_guiding_strategies_rotate_over_an_items_notes():
    assert {strategy_for("item", slot) for slot in range(4)} == set(GUIDING_STRATEGIES)
    assert [strategy_for("item", slot) for slot in range(4)] == [strategy_for("item", slot) for slot in range(4, 8)]


def test_templates_are_files_that_a_folder_overrides(tmp_path):
    defaults = load_templates()
    assert set(defaults.texts) == {"misleading", *GUIDING_STRATEGIES, "retry"}
    (tmp_path / "misleading_notes.txt").write_text("Mislead towards {target_text}: {question}")
    custom = load_templates(tmp_path)
    assert custom.texts["misleading"].startswith("Mislead towards")
    assert custom.texts["fit"] == defaults.texts["fit"]
    assert custom.digests() != defaults.digests()

    (tmp_path / "misleading_notes.txt").write_text("Bad {field}")
    with pytest.raises(TemplateError, match=r"unknown field\(s\) \{field\}"):
        load_templates(tmp_path)
    (tmp_path / "misleading_notes.txt").unlink()
    (tmp_path / "guiding_fits.txt").write_text("typo in the name")
    with pytest.raises(TemplateError, match="unknown template file"):
        load_templates(tmp_path)


# ------------------------------------------------------------------ generation with a scripted backend


def _parse_key(key: str) -> tuple[str, str, int, int]:
    item_id, _, kind, slot, attempt = key.split("/")
    return item_id, kind, int(slot), int(attempt.removeprefix("attempt"))


def _valid_note(kind: str, slot: int, attempt: int) -> str:
    return f"Valid {kind} note, {ORDINALS[slot]} of its kind, {ORDINALS[attempt - 1]} try: look closely at the picture."


def _always_valid(request: Request) -> str:
    _, kind, slot, attempt = _parse_key(request.key)
    return _valid_note(kind, slot, attempt)


def _sample_rows(n: int) -> list[dict]:
    return mub_dataset.load("explicit", "sample").select(range(n)).remove_columns("image").to_list()


def _answer_text(row: dict) -> str:
    return row["answer"] if row["question_type"] == "yes_no" else row["choices"][ord(row["answer"]) - ord("A")]


def _config(out: Path, **overrides) -> NotesConfig:
    settings = {"dataset": "sample", "out": str(out), "model": "scripted", "k": 4, "limit": 2, "batch_size": 2, "progress": False}
    return NotesConfig(**{**settings, **overrides})


def test_each_broken_rule_is_rejected_reported_and_regenerated(tmp_path):
    first, second = _sample_rows(2)
    answer = _answer_text(first)
    broken = {  # item 0, first attempt: one rule broken per slot
        ("misleading", 0): "",
        ("misleading", 1): "One. Two. Three. Four.",
        ("misleading", 2): "Option C looks right to me.",
        ("misleading", 3): f"The answer is {answer}.",
        ("guiding", 0): f"The answer is {answer}.",
        ("guiding", 1): "Look at the corner /// then the middle.",
        ("guiding", 2): "A note that two slots write.",
        ("guiding", 3): "A note that two slots write.",  # accepted for slot 2 just before: a duplicate
    }

    def rule(request: Request) -> str:
        item_id, kind, slot, attempt = _parse_key(request.key)
        if item_id == second["id"] and kind == "misleading":
            return "Clearly (B) is the one."  # never valid: the slots stay empty
        if item_id == first["id"] and attempt == 1:
            return broken[(kind, slot)]
        return _valid_note(kind, slot, attempt)

    backend = ScriptedBackend(rule)
    out = tmp_path / "notes"
    summary = generate_notes(_config(out, max_attempts=3), backend=backend)

    records = {json.loads(line)["id"]: json.loads(line) for line in (out / "notes.jsonl").read_text().splitlines()}
    done = records[first["id"]]
    assert done["misleading_notes"] == [_valid_note("misleading", slot, 2) for slot in range(4)]
    assert done["guiding_notes"] == [_valid_note("guiding", s, 2) for s in (0, 1)] + [
        "A note that two slots write.", _valid_note("guiding", 3, 2)]  # fmt: skip
    assert done["guiding_strategies"] == [strategy_for(first["id"], slot) for slot in range(4)]
    expected_problems = ["empty", "too_many_sentences", "names_option_letter", "copies_answer",
                         "states_answer", "breaks_format", "duplicate"]  # fmt: skip
    assert [problem for r in done["rejected"] for problem in r["problems"]] == expected_problems
    assert all(r["attempt"] == 1 for r in done["rejected"])

    # The retry prompt says what was wrong, so even greedy decoding gives another note.
    [retry] = [r for batch in backend.calls for r in batch if r.key == f"{first['id']}/notes/misleading/2/attempt2"]
    assert f"it {PROBLEMS['names_option_letter']}" in retry.prompt and "Option C looks right" in retry.prompt

    failed = records[second["id"]]
    assert failed["misleading_notes"] == [] and len(failed["guiding_notes"]) == 4
    assert failed["unfilled"] == [f"misleading/{slot}" for slot in range(4)]
    assert len(failed["rejected"]) == 4 * 3  # every attempt of every misleading slot

    report = json.loads((out / "notes_report.json").read_text())
    assert report["summary"] == summary
    assert summary["rejected_by_problem"]["names_option_letter"] == 1 + 12
    assert (summary["items_with_notes"], summary["items_lacking_a_kind_of_note"], summary["unfilled_slots"]) == (1, 1, 4)
    assert {item["id"] for item in report["items"]} == {first["id"], second["id"]}

    # The release: both items in the main file, only the complete one with notes.
    explicit = mub_dataset.load("explicit", str(out))
    implicit = mub_dataset.load("implicit", str(out))
    assert explicit["id"] == [first["id"], second["id"]]  # ids kept from the source release
    assert implicit["id"] == [first["id"]]
    assert implicit[0]["misleading_notes"] == done["misleading_notes"]
    assert implicit[0]["guiding_notes"] == done["guiding_notes"]


def _release_files(out: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(out)): path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name not in ("notes.jsonl", "notes_report.json", "README.md")
    }


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_without_redoing_items_and_matches_an_uninterrupted_run(tmp_path):
    rows = _sample_rows(6)
    clean = tmp_path / "clean"
    generate_notes(_config(clean, k=2, limit=6), backend=ScriptedBackend(_always_valid))

    def dies_at_item_four(request: Request) -> str:
        if request.key.startswith(rows[4]["id"]):
            raise _Killed()
        return _always_valid(request)

    out = tmp_path / "killed"
    with pytest.raises(_Killed):
        generate_notes(_config(out, k=2, limit=6), backend=ScriptedBackend(dies_at_item_four))
    assert len((out / "notes.jsonl").read_text().splitlines()) == 4  # two groups of two were appended

    with pytest.raises(RunFolderError, match="already holds a run"):
        generate_notes(_config(out, k=2, limit=6), backend=ScriptedBackend(_always_valid))
    with pytest.raises(RunFolderError, match="other settings.*notes_per_item"):
        generate_notes(_config(out, k=3, limit=6, resume=True), backend=ScriptedBackend(_always_valid))

    resumed = ScriptedBackend(_always_valid)
    generate_notes(_config(out, k=2, limit=6, resume=True), backend=resumed)
    asked = {request.key.split("/")[0] for batch in resumed.calls for request in batch}
    assert asked == {rows[4]["id"], rows[5]["id"]}
    assert _release_files(out) == _release_files(clean)


def test_backend_errors_fail_the_item_and_resume_retries_only_it(tmp_path):
    rows = _sample_rows(3)

    def server_down_for_item_one(request: Request) -> str | Generation:
        if request.key.startswith(rows[1]["id"]) and request.key.endswith("guiding/1/attempt1"):
            return Generation(text="", error="HTTP 503: overloaded")
        return _always_valid(request)

    out = tmp_path / "notes"
    summary = generate_notes(_config(out, k=2, limit=3), backend=ScriptedBackend(server_down_for_item_one))
    assert summary["items_with_errors"] == 1 and summary["items_with_notes"] == 2
    assert mub_dataset.load("implicit", str(out))["id"] == [rows[0]["id"], rows[2]["id"]]

    retry = ScriptedBackend(_always_valid)
    summary = generate_notes(_config(out, k=2, limit=3, resume=True), backend=retry)
    assert {r.key.split("/")[0] for batch in retry.calls for r in batch} == {rows[1]["id"]}
    assert summary["items_with_errors"] == 0 and summary["items_with_notes"] == 3


def test_custom_templates_reach_the_backend(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "misleading_notes.txt").write_text("CUSTOM mislead towards {target_text}. {question}")
    backend = ScriptedBackend(_always_valid)
    generate_notes(_config(tmp_path / "out", k=1, limit=1, templates=str(templates)), backend=backend)
    prompts = {_parse_key(r.key)[1]: r.prompt for batch in backend.calls for r in batch}
    assert prompts["misleading"].startswith("CUSTOM mislead towards")
    assert not prompts["guiding"].startswith("CUSTOM")


def test_refuses_to_write_into_its_input_or_a_foreign_release(tmp_path, release_dir):
    with pytest.raises(ValueError, match="is the input release"):
        generate_notes(NotesConfig(dataset=str(release_dir), out=str(release_dir), model="m", progress=False),
                       backend=ScriptedBackend(_always_valid))  # fmt: skip
    foreign = tmp_path / "foreign"
    shutil.copytree(release_dir, foreign)
    with pytest.raises(ValueError, match="did not write"):
        generate_notes(_config(foreign), backend=ScriptedBackend(_always_valid))


# ------------------------------------------------------------------ mub import


def _png(colour: tuple[int, int, int]) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _user_dataset(folder: Path) -> Path:
    """A user's dataset as a Parquet data folder: multiple choice with letter, index and text answers, and yes/no."""
    features = datasets.Features({
        "q": datasets.Value("string"), "img": datasets.Image(), "opts": datasets.List(datasets.Value("string")),
        "ans": datasets.Value("string"), "topic": datasets.Value("string"),
    })  # fmt: skip
    rows = {
        "q": ["What colour is the square?", "Is the square red?", "How many squares are there?", "What shape is shown?",
              "What colour is the square?"],
        "img": [_png((255, 0, 0)), _png((255, 0, 0)), _png((0, 0, 255)), _png((0, 255, 0)), _png((255, 0, 0))],
        "opts": [["red", "blue", "green"], [], ["1", "2", "3", "4"], ["circle", "square"], ["red", "blue", "green"]],
        "ans": ["A", "yes", "3", "(B)", "A"],  # the last row repeats the first exactly
        "topic": ["colour", "colour", "count", "shape", "colour"],
    }  # fmt: skip
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    return folder


IMPORT_COLUMNS = ["--column", "question=q", "--column", "image=img", "--column", "answer=ans",
                  "--column", "choices=opts", "--column", "category=topic"]  # fmt: skip


def test_import_writes_a_release_with_a_documented_placeholder_difficulty(tmp_path, capsys):
    user = _user_dataset(tmp_path / "user")
    out = tmp_path / "imported"
    assert main(["import", "--from-dataset", str(user), *IMPORT_COLUMNS, "--out", str(out)]) == 2
    assert "--misled-count N" in capsys.readouterr().err  # no silent difficulty

    assert main(["import", "--from-dataset", str(user), *IMPORT_COLUMNS, "--misled-count", "9",
                 "--source", "MyBench", "--out", str(out)]) == 0  # fmt: skip
    items = mub_dataset.load("explicit", str(out))
    assert len(items) == 4  # the exact repeat is dropped
    assert items["answer"] == ["A", "Yes", "C", "B"]
    assert items["question_type"] == ["multiple_choice", "yes_no", "multiple_choice", "multiple_choice"]
    assert set(items["misled_count"]) == {9} and set(items["difficulty"]) == {"medium"}
    assert set(items["source"]) == {"MyBench"} and items["category"][2] == "count"
    assert set(items["reference_model"]) == {""}
    assert "`num` is a placeholder" in (out / "README.md").read_text()
    assert json.loads((out / "import_summary.json").read_text())["misled_count_placeholder"] == 9


def test_import_answer_and_choice_readings():
    assert answer_label(2, ["a", "b", "c"], "auto") == "C"  # 0-based index
    assert answer_label("Paris", ["Rome", "Paris"], "auto") == "B"  # option text
    assert answer_label("b", ["x", "y"], "letter") == "B"
    assert answer_label("YES", ["Yes", "No"], "auto") == "Yes"
    with pytest.raises(DatasetImportError, match="not an option letter"):
        answer_label("0", ["1", "2"], "auto")  # a digit string is read as text, never silently as an index
    with pytest.raises(DatasetImportError, match="yes or no"):
        answer_label("maybe", [], "auto")
    example = {"A": "cat", "B": "dog", "C": None, "D": float("nan")}
    assert choices_of(example, "A,B,C,D") == ["cat", "dog"]  # MMBench-style option columns
    with pytest.raises(DatasetImportError, match="in the middle"):
        choices_of({"A": "cat", "B": None, "C": "cow"}, "A,B,C")


def test_import_refuses_bad_rows_with_the_row_named(tmp_path):
    user = _user_dataset(tmp_path / "user")
    config = ImportConfig(dataset=str(user), out=str(tmp_path / "out"), misled_count=9,
                          columns={"question": "q", "image": "img", "answer": "topic", "choices": "opts"})  # fmt: skip
    with pytest.raises(DatasetImportError, match="row 0: answer 'colour'"):
        import_dataset(config)
    with pytest.raises(DatasetImportError, match="no column"):
        import_dataset(ImportConfig(dataset=str(user), out=str(tmp_path / "out"), misled_count=9,
                                    columns={"question": "q", "image": "picture", "answer": "ans"}))  # fmt: skip
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ import -> notes -> build -> run


def _stage_answers(request: Request) -> str:
    """Answers stage 1 with the first option and follows a note only if it is a misleading one."""
    if "/stage1/" in request.key:
        return request.options[0]
    return request.options[1] if "Valid misleading" in request.prompt else request.options[0]


def test_imported_dataset_gets_notes_builds_and_evaluates(tmp_path):
    user = _user_dataset(tmp_path / "user")
    imported, with_notes, export = tmp_path / "imported", tmp_path / "with_notes", tmp_path / "export"
    assert main(["import", "--from-dataset", str(user), *IMPORT_COLUMNS, "--misled-count", "12", "--out", str(imported)]) == 0
    config = NotesConfig(dataset=str(imported), out=str(with_notes), model="scripted", k=2, progress=False)
    assert generate_notes(config, backend=ScriptedBackend(_always_valid))["items_with_notes"] == 4

    assert mub_dataset.load("explicit", str(with_notes))["id"] == mub_dataset.load("explicit", str(imported))["id"]
    assert "`num` is a placeholder" in (with_notes / "README.md").read_text()  # carried over
    assert main(["build", "--release", str(with_notes), "--out", str(export)]) == 0
    assert datasets.load_dataset(str(export), "implicit", split="test").num_rows == 4

    results = run(
        RunConfig(model="scripted", dataset=str(export), config="implicit", notes=2, out=str(tmp_path / "run"), progress=False),
        backend=ScriptedBackend(_stage_answers),
    )
    figures = results["results"]["implicit"]
    assert (figures["n"], figures["errors"]) == (4, 0)


# ------------------------------------------------------------------ against transformers serve


# Tokens the served tiny model is made to favour: words that break no note rule, so
# notes pass validation (apart from duplicates, which the retry prompt resolves).
NOTE_WORDS = (" look", " at", " the", " picture", " carefully", " more", " object", " scene", " background", " image")


@pytest.fixture(scope="module")
def served_note_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``transformers serve`` with a tiny llava that writes words, not option letters.

    The openai-backend tests' ``served_tiny_model`` pins a model that only
    ever answers option letters, so every note it wrote would be rejected.
    """
    from served_model import serving

    from mub.testing.tiny_models import build_tiny_model

    model = build_tiny_model("llava", tmp_path_factory.mktemp("served-notes") / "tiny-llava-words", favour=NOTE_WORDS, answers=False)
    with serving(model) as base_url:
        yield base_url, model


def test_mub_notes_against_transformers_serve_then_build_and_run(served_note_model, tmp_path):
    base_url, model = served_note_model
    out, export, run_dir = tmp_path / "notes", tmp_path / "export", tmp_path / "run"
    notes_argv = ["notes", "--dataset", "sample", "--backend", "openai", "--base-url", base_url, "--model", str(model),
                  "--k", "2", "--limit", "3", "--temperature", "0", "--max-new-tokens", "12", "--out", str(out),
                  "--no-progress"]  # fmt: skip
    code = main(notes_argv)
    report = json.loads((out / "notes_report.json").read_text())
    summary = report["summary"]
    assert summary["items_with_errors"] == 0
    # Every item is accounted for: with notes of both kinds, or reported with its unfilled slots.
    assert summary["items_with_notes"] + summary["items_lacking_a_kind_of_note"] == summary["items"] == 3
    lacking = {item["id"] for item in report["items"] if item["unfilled"]}
    assert len(lacking) == summary["items_lacking_a_kind_of_note"]
    assert code == (3 if lacking else 0)  # an item without notes is missing from the implicit config: exit 3
    assert report["backend"]["base_url"] == base_url
    notes = mub_dataset.load("implicit", str(out))
    assert len(notes) == summary["items_with_notes"] > 0 and not lacking & set(notes["id"])
    stored = {"misleading": sum(map(len, notes["misleading_notes"])), "guiding": sum(map(len, notes["guiding_notes"]))}
    assert stored == summary["notes"]
    for row in notes:  # the served model's words, as validated and stored
        assert row["misleading_notes"] and row["guiding_notes"]
        assert not any(named_option_letters(note, row) for note in row["misleading_notes"] + row["guiding_notes"])

    assert main(["build", "--release", str(out), "--out", str(export)]) == 0
    run_argv = ["run", "--backend", "openai", "--base-url", base_url, "--model", str(model), "--dataset", str(export),
                "--config", "implicit", "--notes", "2", "--max-new-tokens", "1", "--out", str(run_dir), "--no-progress"]  # fmt: skip
    assert main(run_argv) == 0
    figures = json.loads((run_dir / "results.json").read_text())["results"]["implicit"]
    assert (figures["n"], figures["errors"]) == (summary["items_with_notes"], 0)


def test_the_summary_counts_of_rejected_notes_add_up():
    from mub.extend.notes import ItemNotes, format_notes_summary, notes_summary

    def rejected(*problems: str) -> dict:
        return {"kind": "misleading", "slot": 0, "attempt": 1, "note": "...", "problems": list(problems)}

    records = {
        "a": ItemNotes("a", ["m"], ["g"], ["s"], rejected=[rejected("names_option_letter")] * 5, requests=7),
        "b": ItemNotes("b", ["m"], ["g"], ["s"], rejected=[rejected("too_many_sentences", "names_option_letter")], requests=3),
    }
    summary = notes_summary(records, 2)
    assert summary["rejected_notes"] == 6 == sum(summary["rejected_by_problems"].values())
    assert summary["rejected_by_problems"] == {"names_option_letter": 5, "names_option_letter + too_many_sentences": 1}
    assert summary["rejected_by_problem"] == {"names_option_letter": 6, "too_many_sentences": 1}  # overlapping
    text = format_notes_summary(summary, "out")
    assert "rejected notes: 6 (by their problems: names_option_letter 5, names_option_letter + too_many_sentences 1)" in text
