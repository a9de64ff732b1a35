"""Issue 22, failures 7-10, 13, 15 and 16: one bad item or file is one line or one item error, never a hang,
a traceback, a lost run or memory without bound."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pytest
from fifo_guard import guarded_fifo
from PIL import Image

from mub.cli import main
from mub.config import RunConfig
from mub.extend.importer import DatasetImportError, ImportConfig, answer_label, import_dataset
from mub.protocol.cues import check_template
from mub.runs.runner import run
from mub.testing.scripted import ScriptedBackend
from mub_dataset.features import FEATURES
from mub_dataset.files import NotARegularFileError, read_regular_file, staged_folder
from mub_dataset.limits import MAX_PIXELS, ImageTooLargeError, open_image

MAIN = "all_combined_items.jsonl"
ROOT = Path(__file__).resolve().parents[1]


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    err = "".join(line + "\n" for line in err.split("\n")[:-1] if "\r" not in line)  # datasets' progress bars
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def _png(colour: tuple[int, int, int] = (200, 10, 10), size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 13000 x 13000 1-bit PNG: a few hundred KB on disk, under Pillow's own bomb limit, 507 MB as RGB."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("1", (13000, 13000), 1).save(path, format="PNG")
    assert path.stat().st_size < 1_000_000 and 13000 * 13000 < 2 * Image.MAX_IMAGE_PIXELS
    return path


# ------------------------------------------------------------------ only regular files (9)


def test_read_regular_file_refuses_fifo_device_folder_and_oversized_file(tmp_path: Path) -> None:
    with guarded_fifo(tmp_path / "fifo") as fifo, pytest.raises(NotARegularFileError, match=r"image .*fifo is a FIFO, not a regular file"):
        read_regular_file(fifo, "image", 100)
    with pytest.raises(NotARegularFileError, match="/dev/zero is a device or socket"):
        read_regular_file("/dev/zero", "image", 100)
    with pytest.raises(NotARegularFileError, match="is a folder"):
        read_regular_file(tmp_path, "image", 100)
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(NotARegularFileError, match="is 101 bytes, over the limit of 100"):
        read_regular_file(tmp_path / "big", "image", 100)
    (tmp_path / "ok").write_bytes(b"x" * 100)
    assert read_regular_file(tmp_path / "ok", "image", 100) == b"x" * 100


def _release_copy(release_dir: Path, tmp_path: Path) -> tuple[Path, list[dict]]:
    release = tmp_path / "release"
    shutil.copytree(release_dir, release)
    return release, json.loads((release / MAIN).read_text(encoding="utf-8"))


def _edit_item(release: Path, records: list[dict], edit) -> dict:
    """Apply ``edit`` to every copy of the first item, in every record file (copies must agree); returns the
    edited first record."""
    key = (records[0]["new_id"], records[0]["question"])
    for path in [release / MAIN, *sorted((release / "implicit" / "mislead_output").glob("*.jsonl"))]:
        file_records = records if path == release / MAIN else json.loads(path.read_text(encoding="utf-8"))
        for record in file_records:
            if (record["new_id"], record["question"]) == key:
                edit(record)
        path.write_text(json.dumps(file_records), encoding="utf-8")
    return records[0]


def test_a_fifo_image_in_a_release_is_one_line_at_build(capsys, tmp_path: Path, release_dir: Path) -> None:
    release, records = _release_copy(release_dir, tmp_path)
    image = release / records[0]["new_id"]
    image.unlink()
    with guarded_fifo(image):
        code, err = _cli(capsys, "build", "--release", str(release), "--out", str(tmp_path / "out"))
    _one_line(code, err, f"new_id={records[0]['new_id']!r}", "is a FIFO, not a regular file")


def test_a_folder_at_an_image_path_is_one_line_at_build(capsys, tmp_path: Path, release_dir: Path) -> None:
    release, records = _release_copy(release_dir, tmp_path)
    image = release / records[0]["new_id"]
    image.unlink()
    image.mkdir()
    code, err = _cli(capsys, "build", "--release", str(release), "--out", str(tmp_path / "out"))
    _one_line(code, err, f"new_id={records[0]['new_id']!r}", "is a folder, not a regular file")


def test_a_fifo_cue_template_is_one_line(capsys, tmp_path: Path) -> None:
    with guarded_fifo(tmp_path / "template") as fifo:
        code, err = _cli(capsys, "run", "--model", "tiny:llava", "--cue-template", str(fifo), "--out", str(tmp_path / "run"), "--quiet")
    _one_line(code, err, "--cue-template", "is a FIFO, not a regular file")


def test_a_killed_build_leaves_a_staging_folder_that_the_next_build_removes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed = textwrap.dedent(
        f"""
        import os, signal
        from mub_dataset.files import staged_folder
        with staged_folder({str(out)!r}, "build") as staging:
            (staging / "part.parquet").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", killed], cwd=ROOT, timeout=120)
    assert result.returncode == -9
    left = list(tmp_path.glob(".out.partial-*"))
    assert len(left) == 1 and (left[0] / "part.parquet").exists()
    # A staging folder of a write still running (this process) is kept.
    alive = tmp_path / ".out.partial-alive"
    alive.mkdir()
    (alive / ".mub.staging").write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid()}))
    with staged_folder(out, "build") as staging:
        (staging / "done.txt").write_text("whole")
    assert not left[0].exists() and alive.exists()
    assert (out / "done.txt").read_text() == "whole" and not (out / ".mub.staging").exists()


# ------------------------------------------------------------------ caps at build (7, 8, 10)


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (lambda r: r.update(question=r["question"] + " <image>"), ["question holds '<image>'", "reword it"]),
        (lambda r: r.update(question=r["question"] + " <|image_pad|>"), ["question holds '<|image_pad|>'"]),
        (lambda r: r.update(question="Q" * 20_001), ["question is 20001 characters long, over the limit of 20000"]),
        (
            lambda r: r.update(choices={chr(ord("A") + i): f"option {i}" for i in range(27)}, question_type_CHorYN="CH", answer="A"),
            ["it has 27 options, more than the 26 letters A-Z"],
        ),
    ],
    ids=["image-token", "qwen-token", "long-question", "27-options"],
)
def test_an_item_that_cannot_be_asked_is_refused_at_build_naming_it(capsys, tmp_path, release_dir, edit, fragments) -> None:
    release, records = _release_copy(release_dir, tmp_path)
    record = _edit_item(release, records, edit)
    code, err = _cli(capsys, "build", "--release", str(release), "--out", str(tmp_path / "out"))
    _one_line(code, err, f"new_id={record['new_id']!r}", *fragments)


def test_an_image_over_the_pixel_cap_is_refused_at_build(capsys, tmp_path, release_dir, huge_png) -> None:
    release, records = _release_copy(release_dir, tmp_path)
    shutil.copyfile(huge_png, release / records[0]["new_id"])
    code, err = _cli(capsys, "build", "--release", str(release), "--out", str(tmp_path / "out"))
    _one_line(code, err, f"new_id={records[0]['new_id']!r}", "13000 x 13000 = 169000000 pixels, over the limit of 40000000")


def test_the_pixel_cap_is_read_from_the_header_before_decoding(huge_png: Path) -> None:
    data = huge_png.read_bytes()
    with pytest.raises(ImageTooLargeError, match="169000000 pixels"):
        open_image(data)
    with open_image(data, max_pixels=13000 * 13000) as image:  # at the cap: allowed, and still lazy
        assert image.size == (13000, 13000) and image.tile  # tiles still to decode: nothing decoded yet
    assert MAX_PIXELS == 40_000_000


# ------------------------------------------------------------------ templates (10, 16)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{answer:>300000000}", r"has the field \{answer:>300000000\}"),
        ("{answer.__class__.__mro__[1].__subclasses__}", r"has the field \{answer.__class__"),
        ("{answer!r}", r"has the field \{answer!r\}"),
        ("{answer[0]}", r"has the field \{answer\[0\]\}"),
        ("x" * 9_993 + "{answer}", "10001 characters long, over the limit of 10000"),
    ],
)
def test_a_template_field_with_a_format_attribute_or_a_huge_template_is_refused(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_template("hint", template)
    check_template("hint", "The answer is {answer}, {{literally}}.")


def test_a_huge_or_bad_utf8_cue_template_file_is_one_line(capsys, tmp_path: Path) -> None:
    huge = tmp_path / "huge.txt"
    huge.write_text("{answer}" + "x" * 4_800_000)
    code, err = _cli(capsys, "run", "--model", "tiny:llava", "--cue-template", str(huge), "--out", str(tmp_path / "a"), "--quiet")
    _one_line(code, err, "--cue-template", "over the limit of 1048576")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"The answer is {answer} \xff\xfe")
    code, err = _cli(capsys, "run", "--model", "tiny:llava", "--cue-template", str(bad), "--out", str(tmp_path / "b"), "--quiet")
    _one_line(code, err, f"--cue-template {bad}: byte 23 is not UTF-8")


# ------------------------------------------------------------------ one bad item is one item error at run time (7, 8, 9, 10)


def _row(number: int, **changes) -> dict:
    row = {
        "id": f"item-{number}",
        "image": {"bytes": _png((number * 30 % 256, 10, 10)), "path": f"{number}.png"},
        "question": f"What colour is square {number}?",
        "choices": ["red", "green", "blue", "black"],
        "answer": "A",
        "question_type": "multiple_choice",
        "source": "Synthetic",
        "category": "test",
        "misled_count": 6,
        "difficulty": "low",
        "misleading_answer": "C",
        "misleading_answer_source": "seeded",
        "misleading_notes": [f"mislead {number}"],
        "guiding_notes": [f"guide {number}"],
        "reference_model": "",
        "reference_hint": "",
        "reference_response": "",
        "reference_outcome": "",
        "copies": 1,
        "implicit_copies": 1,
    }
    row.update(changes)
    data = row["image"]["bytes"]
    row["image_sha256"] = hashlib.sha256(data).hexdigest() if data else ""  # a path-only image is hashed at run time
    return row


def _poisoned_rows(tmp_path: Path, huge_png: Path) -> list[dict]:
    truncated = _png()[:40]
    return [
        _row(1),
        _row(2, question="Look at the <image> and answer: what colour?"),
        _row(3, image={"bytes": None, "path": str(tmp_path / "fifo.png")}),
        _row(4, image={"bytes": None, "path": str(huge_png)}),
        _row(5),
        _row(6, choices=[f"option {i}" for i in range(27)]),
        _row(7, question="Q" * 5_000_000),
        _row(8, image={"bytes": truncated, "path": "cut.png"}),
        # /dev/zero is refused by the same check (test_read_regular_file_...); not here, where a regression
        # would read it until the machine runs out of memory.
        _row(10, guiding_notes=["see <image> again"], misleading_notes=["<image>"]),
        _row(11),
    ]


EXPECTED_ERRORS = {
    "item-2": "question holds '<image>'",
    "item-3": "is a FIFO, not a regular file",
    "item-4": "13000 x 13000 = 169000000 pixels, over the limit of 40000000",
    "item-6": "it has 27 options, more than the 26 letters A-Z",
    "item-7": "question is 5000000 characters long",
    "item-8": "cannot be decoded",
}


def test_each_poisoned_item_is_an_item_error_and_resume_does_not_die(tmp_path: Path, huge_png: Path) -> None:
    with guarded_fifo(tmp_path / "fifo.png"):
        dataset = datasets.Dataset.from_list(_poisoned_rows(tmp_path, huge_png), features=FEATURES)
        config = RunConfig(model="scripted", backend="scripted", out=str(tmp_path / "run"), progress=False,
                           protocol="deterministic", config="implicit", batch_size=4)  # fmt: skip
        asked: list[str] = []

        def rule(request) -> str:
            asked.append(request.key.split("/")[0])
            return "A"

        first = run(config, backend=ScriptedBackend(rule), dataset=dataset)
        records = {r["id"]: r for r in map(json.loads, (tmp_path / "run" / "predictions.jsonl").read_text().splitlines())}
        expected = {**EXPECTED_ERRORS, "item-10": "misleading_notes[0] holds '<image>'"}
        for item, fragment in expected.items():
            assert records[item]["error"].startswith(f"item {item}: ") and fragment in records[item]["error"], records[item]["error"]
        assert set(asked) == {"item-1", "item-5", "item-11"}  # nothing of a poisoned item reaches the backend
        figures = first["results"]["implicit"]
        assert figures["errors"] == len(expected) and figures["n"] == 3
        asked.clear()
        config.resume = True
        second = run(config, backend=ScriptedBackend(rule), dataset=dataset)
        assert second["results"]["implicit"]["errors"] == len(expected) and not asked


def test_a_poisoned_run_with_a_real_processor_finishes_the_other_items_in_bounded_memory(tmp_path: Path, huge_png: Path) -> None:
    """The Done-when run: an image-token question, a FIFO image and a 13000 x 13000 image among good items, on
    tiny:llava (whose processor fails on a stray <image>); peak RSS measured in the subprocess."""
    script = textwrap.dedent(
        f"""
        import json, resource, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import datasets
        from test_hostile_items import _row
        from mub.config import RunConfig
        from mub.runs.runner import run
        from mub_dataset.features import FEATURES

        rows = [_row(1), _row(2, question="Look at the <image> and answer: what colour?"),
                _row(3, image={{"bytes": None, "path": {str(tmp_path / "fifo.png")!r}}}),
                _row(4, image={{"bytes": None, "path": {str(huge_png)!r}}}), _row(5), _row(6)]
        config = RunConfig(model="tiny:llava", out={str(tmp_path / "run")!r}, progress=False, max_new_tokens=1, batch_size=8)
        results = run(config, dataset=datasets.Dataset.from_list(rows, features=FEATURES))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({{"peak_rss": peak, "figures": results["results"]["explicit"]}}))
        """
    )
    with guarded_fifo(tmp_path / "fifo.png"):
        result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"poisoned tiny:llava run: peak RSS {report['peak_rss'] / 2**20:.0f} MiB")
    assert report["figures"]["errors"] == 3 and report["figures"]["n"] == 3
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "run" / "predictions.jsonl").read_text().splitlines())}
    assert all(records[f"item-{n}"]["error"] is None for n in (1, 5, 6))
    assert report["peak_rss"] < 1.5 * 2**30


# ------------------------------------------------------------------ import (7, 8, 13, 15, 16)


def _user_dataset(folder: Path, rows: dict, image_feature=None) -> Path:
    features = datasets.Features({
        "q": datasets.Value("string"), "img": image_feature or datasets.Image(),
        "opts": datasets.List(datasets.Value("string")), "ans": datasets.Value("string"),
    })  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder / "saved"))
    return folder / "saved"


def _import(dataset: Path, tmp_path: Path) -> None:
    import_dataset(ImportConfig(dataset=str(dataset), out=str(tmp_path / "imported"), misled_count=9,
                                columns={"question": "q", "image": "img", "answer": "ans", "choices": "opts"}))  # fmt: skip


def _one_row(**changes) -> dict:
    row = {"q": ["What colour?"], "img": [{"bytes": _png(), "path": None}], "opts": [["red", "blue"]], "ans": ["A"]}
    row.update({key: [value] for key, value in changes.items()})
    return row


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"opts": [f"o{i}" for i in range(30)]}, "row 0: it has 30 options, more than the 26 letters A-Z"),
        ({"q": "What is in the <image>?"}, "row 0: question holds '<image>'"),
        ({"q": None}, "row 0: question is None; every item needs a question text"),
        ({"opts": ["red"]}, "row 0: it has 1 option; a multiple-choice item needs at least two"),
        ({"opts": ["red", "Red", "blue"], "ans": "red"}, "row 0: answer 'red' is ambiguous: options A and B"),
    ],
    ids=["30-options", "image-token", "question-none", "one-option", "ambiguous"],
)
def test_import_refuses_an_item_that_cannot_be_asked_naming_the_row(tmp_path: Path, changes: dict, message: str) -> None:
    dataset = _user_dataset(tmp_path / "user", _one_row(**changes))
    with pytest.raises(DatasetImportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _import(dataset, tmp_path)
    assert not (tmp_path / "imported").exists()


def test_import_answer_red_among_red_and_Red_is_ambiguous() -> None:
    with pytest.raises(DatasetImportError, match="ambiguous"):
        answer_label("red", ["red", "Red"], "auto")
    assert answer_label("Red", ["red", "blue"], "auto") == "A"


def test_import_decompression_bomb_is_one_line(capsys, tmp_path: Path, huge_png: Path) -> None:
    dataset = _user_dataset(tmp_path / "user", _one_row(img={"bytes": huge_png.read_bytes(), "path": None}))
    capsys.readouterr()  # save_to_disk's progress bar
    code, err = _cli(capsys, "import", "--from-dataset", str(dataset), "--column", "question=q", "--column", "image=img",
                     "--column", "answer=ans", "--column", "choices=opts", "--misled-count", "9", "--out", str(tmp_path / "o"))  # fmt: skip
    _one_line(code, err, "row 0:", "169000000 pixels, over the limit of 40000000")


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "dev-zero", "fifo"])
def test_import_image_paths_stay_inside_the_dataset_folder(tmp_path: Path, kind: str) -> None:
    private = tmp_path / "private_photo.png"
    private.write_bytes(_png((1, 2, 3)))
    user = tmp_path / "user"  # a save_to_disk folder whose image column holds paths
    value = {"absolute": str(private), "dotdot": "../private_photo.png", "symlink": "images/link.png",
             "dev-zero": "/dev/zero", "fifo": "images/fifo.png"}[kind]  # fmt: skip
    rows = {"q": ["What colour?", "And here?"], "img": ["images/ok.png", value], "opts": [["red", "blue"]] * 2, "ans": ["A", "B"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(user))
    (user / "images").mkdir()
    (user / "images" / "ok.png").write_bytes(_png())
    if kind == "symlink":
        (user / "images" / "link.png").symlink_to(private)

    def attempt() -> None:
        import_dataset(ImportConfig(dataset=str(user), out=str(tmp_path / "imported"), misled_count=9,
                                    columns={"question": "q", "image": "img", "answer": "ans", "choices": "opts"}))  # fmt: skip

    expected = "is a FIFO, not a regular file" if kind == "fifo" else "lies outside the dataset's folder"
    if kind == "fifo":
        with guarded_fifo(user / "images" / "fifo.png"), pytest.raises(DatasetImportError, match=f"row 1: .*{expected}"):
            attempt()
    else:
        with pytest.raises(DatasetImportError, match=f"row 1: image path .*{expected}"):
            attempt()
    assert not (tmp_path / "imported").exists()


def test_a_fifo_in_place_of_a_run_file_is_one_line(capsys, tmp_path: Path) -> None:
    # A run on a dataset rescore can load again (the sample), so that rescore gets as far as the run's files.
    config = RunConfig(model="scripted", backend="scripted", out=str(tmp_path / "run"), progress=False,
                       protocol="deterministic", limit=2)  # fmt: skip
    run(config, backend=ScriptedBackend(lambda request: "A"))
    for name in ("results.json", "predictions.jsonl"):
        target = tmp_path / "run" / name
        kept = target.read_bytes()
        target.unlink()
        with guarded_fifo(target):
            code, err = _cli(capsys, "report", str(tmp_path / "run"), "--out", str(tmp_path / f"report-{name}"))
            if name == "predictions.jsonl":
                code, err = _cli(capsys, "rescore", str(tmp_path / "run"), "--parser", "mub", "--out", str(tmp_path / "rescored"))
        # Never a hang: refused in one line (a FIFO results.json is "no results.json", checked before reading).
        _one_line(code, err, f"{target} is a FIFO, not a regular file" if name == "predictions.jsonl" else "has no results.json")
        target.unlink()
        target.write_bytes(kept)


def _finished_run(tmp_path: Path, n: int = 3) -> Path:
    dataset = datasets.Dataset.from_list([_row(i) for i in range(1, n + 1)], features=FEATURES)
    config = RunConfig(model="scripted", backend="scripted", out=str(tmp_path / "run"), progress=False, protocol="deterministic")
    run(config, backend=ScriptedBackend(lambda request: "A"), dataset=dataset)
    return tmp_path / "run"


def test_rescore_of_a_run_json_without_model_is_one_line(capsys, tmp_path: Path) -> None:
    folder = _finished_run(tmp_path)
    settings = json.loads((folder / "run.json").read_text())
    del settings["model"]
    (folder / "run.json").write_text(json.dumps(settings))
    code, err = _cli(capsys, "rescore", str(folder), "--parser", "mub", "--out", str(tmp_path / "rescored"))
    _one_line(code, err, f"{folder / 'run.json'}: field 'model' is missing, not a str")
    assert not (tmp_path / "rescored").exists()


def test_rescore_of_a_run_lacking_an_item_writes_nothing_and_advises_no_refused_resume(capsys, tmp_path: Path, release_dir: Path) -> None:
    # A run on the sample's first items, with one item's record removed from its predictions.
    folder = tmp_path / "run"
    config = RunConfig(model="scripted", backend="scripted", out=str(folder), progress=False, protocol="deterministic", limit=3)
    run(config, backend=ScriptedBackend(lambda request: "A"))
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    (folder / "predictions.jsonl").write_text("\n".join(lines[1:]) + "\n")
    missing = json.loads(lines[0])["id"]
    code, err = _cli(capsys, "rescore", str(folder), "--parser", "mub", "--out", str(tmp_path / "rescored"))
    _one_line(code, err, f"lacks predictions for 1 of its 3 draws (first: {missing})", "finish it in its own folder")
    assert not (tmp_path / "rescored").exists()


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("5000 digits", ["record 1 (new_id=", "a number has 5000 digits, more than the 18"]),
        ("NaN", ["record 1 (new_id=", "NaN is not a number that JSON allows"]),
        ("lone surrogate", ["item new_id=", "question holds a lone surrogate (U+D800) at character 0"]),
    ],
)
def test_a_release_value_python_cannot_take_names_the_file_and_item(capsys, tmp_path, release_dir, case, fragments) -> None:
    release, records = _release_copy(release_dir, tmp_path)
    text = (release / MAIN).read_text(encoding="utf-8")
    first = text.index('"num": ')  # the first record's
    if case == "lone surrogate":
        text = text.replace('"question": "', '"question": "\\ud800', 1)
    else:
        end = text.index(",", first)
        text = text[:first] + '"num": ' + ("7" * 5000 if case == "5000 digits" else "NaN") + text[end:]
    (release / MAIN).write_text(text, encoding="utf-8")
    code, err = _cli(capsys, "build", "--release", str(release), "--out", str(tmp_path / "out"))
    _one_line(code, err, f"{release / MAIN}", *fragments)


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed once the block ends: connections are refused


def test_hub_uploads_without_network_are_one_line(tmp_path: Path, rankable_runs: dict[str, Path]) -> None:
    folders = [str(rankable_runs["steady_explicit"]), str(rankable_runs["steady_implicit"])]  # runs that can rank
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_TOKEN": "hf_dummy"}
    for argv in (["publish-metric", "--to", "someorg/mub_misleading_rate"],
                 ["submit", *folders, "--to", "someorg/results", "--yes", "--out", str(tmp_path / "sub")]):  # fmt: skip
        result = subprocess.run([sys.executable, "-m", "mub.cli", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        # huggingface_hub logs its own retries ("Retrying in 1s"); mub's answer is one last line, no traceback.
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"mub {argv[0]}: error: ") and "could not be reached" in last, result.stderr


@pytest.mark.parametrize(
    "variant",
    [
        lambda r: r.update(new_id=r["new_id"].replace("/", "/./", 1)),
        lambda r: r.update(new_id="./" + r["new_id"]),
        lambda r: r.update(question=r["question"].replace(" ", " \u200b", 1)),
    ],
    ids=["dot-segment", "leading-dot", "zero-width"],
)
def test_an_alias_of_an_items_path_or_question_is_the_same_item(tmp_path: Path, release_dir: Path, variant) -> None:
    from mub_dataset.release import read_release

    release, records = _release_copy(release_dir, tmp_path)
    before = read_release(release)
    alias = dict(records[0])
    variant(alias)
    (release / MAIN).write_text(json.dumps([*records, alias]), encoding="utf-8")
    after = read_release(release)
    assert [row["id"] for row in after.rows] == [row["id"] for row in before.rows]
    assert after.duplicates_removed == before.duplicates_removed + 1


def test_nfc_and_nfd_spellings_of_a_question_are_one_key() -> None:
    from mub_dataset.records import item_key

    assert item_key({"new_id": "img/./1.jpg", "question": "Caf\u00e9?"}) == item_key({"new_id": "img/1.jpg", "question": "Cafe\u0301?"})
    assert item_key({"new_id": "img/1.jpg", "question": "Cafe?"}) != item_key({"new_id": "img/1.jpg", "question": "Caf\u00e9?"})


def test_a_fifo_or_bad_utf8_notes_template_is_refused(tmp_path: Path) -> None:
    from mub.extend.note_prompts import TemplateError, load_templates

    with guarded_fifo(tmp_path / "misleading_notes.txt"), pytest.raises(ValueError, match="misleading_notes.txt is a FIFO, not a regular file"):
        load_templates(tmp_path)
    (tmp_path / "misleading_notes.txt").unlink()
    (tmp_path / "misleading_notes.txt").write_bytes(b"Mislead towards {target_text} \xff")
    with pytest.raises(TemplateError, match="byte 30 is not UTF-8"):
        load_templates(tmp_path)
