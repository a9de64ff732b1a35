"""A run scores only what it ran (issue 22, failures 1-5).

1. ``--resume`` and ``mub merge`` refuse a changed release, naming the first changed item and field;
2. a replaced image is not served from the datasets cache;
3. only the predictions files mub wrote are read, and ``--overwrite`` deletes no other file;
4. a success is never replaced by an error, whatever the order of the files;
5. references come from the dataset: an edited ``answer`` in a predictions file is refused.

Expectations are computed here from the files (hashlib, the records as written), not by mub's code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import datasets
import dist_helpers
import pytest
from conftest import copy_release_with_placeholder_images
from PIL import Image

import mub_dataset
from mub.cli import main
from mub.config import RunConfig
from mub.runs.runner import run
from mub.testing.scripted import ScriptedBackend

LIMIT = 8


@pytest.fixture(autouse=True)
def _scripted_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dist_helpers.BACKENDS, dist_helpers.SCRIPTED, "dist_helpers:scripted_backend")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def _run_args(out: Path, dataset: Path | str = "sample", *extra: str) -> list[str]:
    return [
        "run", "--model", "scripted", "--backend", dist_helpers.SCRIPTED, "--dataset", str(dataset),
        "--limit", str(LIMIT), "--batch-size", "2", "--out", str(out), "--no-progress", "--protocol", "deterministic", *extra,
    ]  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_lines(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def _figures(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text(encoding="utf-8"))["results"]


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _solid_jpeg(path: Path, colour: tuple[int, int, int], size: int | None = None) -> None:
    """A 16x16 JPEG of one colour; padded after its end marker (which decoders ignore) to ``size`` bytes if given."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="JPEG")
    data = buffer.getvalue()
    assert size is None or len(data) <= size, "the replacement must not be larger than the file it replaces"
    path.write_bytes(data + b"\0" * ((size or len(data)) - len(data)))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the sample (read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(dist_helpers.BACKENDS, dist_helpers.SCRIPTED, "dist_helpers:scripted_backend")
        assert main(_run_args(out)) == 0
    return out


def _copy(run: Path, target: Path) -> Path:
    shutil.copytree(run, target)
    return target


# ----------------------------------------------------------- 1. every input is fingerprinted


def _edit_release(release: Path, edit: str) -> None:
    """The issue's edits: every option text, every ``num`` set to 12, every image replaced."""
    for record_file in [release / "all_combined_items.jsonl", *(release / "implicit" / "mislead_output").glob("*.jsonl")]:
        records = json.loads(record_file.read_text(encoding="utf-8"))
        for record in records:
            if edit in ("choices", "all") and record.get("choices"):
                record["choices"] = {letter: f"{text} (edited)" for letter, text in record["choices"].items()}
            if edit in ("num", "all"):
                record["num"] = 12
        record_file.write_text(json.dumps(records), encoding="utf-8")
    if edit in ("images", "all"):
        for image in (release / "extract_img_all").iterdir():
            _solid_jpeg(image, (10, 200, 90))


def _expected_difference(answered: list[dict], edit: str) -> tuple[str, str]:
    """The first answered item an edit touches, and the first touched field in name order."""
    for record in answered:
        touched = []
        if edit in ("choices", "all") and record["question_type"] == "multiple_choice":
            touched.append("choices")
        if edit in ("images", "all"):
            touched.append("image_sha256")
        if edit in ("num", "all") and record["misled_count"] != 12:
            touched.append("misled_count")
        if touched:
            return record["id"], sorted(touched)[0]
    raise AssertionError("the edit touches no answered item")


@pytest.mark.parametrize("edit", ["choices", "num", "images", "all"])
def test_resume_refuses_an_edited_release_naming_the_item_and_field(tmp_path: Path, edit: str, capsys) -> None:
    release = copy_release_with_placeholder_images(tmp_path / "release")
    out = tmp_path / "run"
    assert main(_run_args(out, release)) == 0
    # Killed after 4 items: the others are still to do.
    predictions = out / "predictions.jsonl"
    answered = _lines(predictions)[:4]
    _write_lines(predictions, answered)
    (out / "results.json").unlink()
    before = predictions.read_bytes()
    capsys.readouterr()

    _edit_release(release, edit)
    assert main(_run_args(out, release, "--resume")) == 2
    error = _one_line_error(capsys)
    item, field = _expected_difference(answered, edit)
    assert f"item {item}: field {field} differs" in error, error
    assert str(out) in error and "--overwrite" in error
    assert predictions.read_bytes() == before and not (out / "results.json").exists()


def test_merge_refuses_an_edited_release_naming_the_item_and_field(tmp_path: Path, capsys) -> None:
    release = copy_release_with_placeholder_images(tmp_path / "release")
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for index, folder in enumerate(shards):
        assert main(_run_args(folder, release, "--shard", f"{index}/2")) == 0
    first = _lines(shards[0] / "predictions.jsonl")[0]
    capsys.readouterr()

    _edit_release(release, "num")
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "merged")]) == 2
    error = _one_line_error(capsys)
    assert f"item {first['id']}: field misled_count differs" in error and str(shards[0]) in error, error
    assert not (tmp_path / "merged").exists()


# ----------------------------------------------------------- 2. no stale image from the cache


def _group_ids(folder: Path) -> dict[str, str]:
    return {record["id"]: record["group_id"] for record in _lines(folder / "predictions.jsonl")}


def test_a_replaced_image_is_not_served_from_the_cache(tmp_path: Path) -> None:
    release = copy_release_with_placeholder_images(tmp_path / "release")
    image = release / "extract_img_all" / "1.jpg"
    # The golden id of the release's item on extract_img_all/1.jpg (tests/test_dataset.py), first in the release.
    item = "mub-9698e5f07adb145f"
    out = tmp_path / "run"
    assert main(_run_args(out, release)) == 0
    assert _group_ids(out)[item] == hashlib.sha256(image.read_bytes()).hexdigest()[:16]

    # Other pixels in a file of the same size, with the modification time put back as `cp -p` would.
    stat = image.stat()
    _solid_jpeg(image, (10, 200, 90), size=stat.st_size)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    new_digest = hashlib.sha256(image.read_bytes()).hexdigest()[:16]
    assert main(_run_args(out, release, "--overwrite")) == 0
    assert _group_ids(out)[item] == new_digest
    dataset = mub_dataset.load("explicit", release)
    row = next(row for row in dataset.select_columns(["id", "image_sha256"]) if row["id"] == item)
    assert row["image_sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()


# ----------------------------------------------------------- 3. only mub's own files


def _flipped(records: list[dict]) -> list[dict]:
    """The same records with every stage-2 answer set to the reference: a stray file that would move the rates."""
    return [{**record, "prediction": record["answer"], "original_prediction": record["answer"]} for record in records]


def test_a_stray_predictions_file_is_never_read_and_survives_overwrite(finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path / "run")
    expected = _figures(finished)
    backup = out / "predictions.orig.jsonl"
    _write_lines(backup, _flipped(_lines(out / "predictions.jsonl")))
    kept = backup.read_bytes()
    (out / "results.json").unlink()

    assert main(_run_args(out, "sample", "--resume")) == 0
    assert _figures(out) == expected
    assert main(_run_args(out, "sample", "--overwrite")) == 0
    assert _figures(out) == expected
    assert backup.read_bytes() == kept


def test_a_stray_file_in_a_shard_folder_changes_nothing_in_merge(tmp_path: Path) -> None:
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for index, folder in enumerate(shards):
        assert main(_run_args(folder, "sample", "--shard", f"{index}/2")) == 0
    clean = tmp_path / "clean"
    assert main(["merge", *map(str, shards), "--out", str(clean), "--no-progress"]) == 0
    # A stray file with altered records of this shard's items, and one with the other shard's.
    _write_lines(shards[1] / "predictions.extra.jsonl", _flipped(_lines(shards[1] / "predictions.jsonl")))
    _write_lines(shards[1] / "predictions.rank0-of-9.jsonl", _lines(shards[0] / "predictions.jsonl"))
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, shards), "--out", str(merged), "--no-progress"]) == 0
    assert _figures(merged) == _figures(clean)
    assert (merged / "predictions.jsonl").read_bytes() == (clean / "predictions.jsonl").read_bytes()


# ----------------------------------------------------------- 4. a success is never replaced by an error


def _list_files(folder: Path, names: list[str]) -> None:
    """The run record of a folder whose launches wrote ``names`` (a 2-process launch, then a resume)."""
    marker = json.loads((folder / ".mub").read_text(encoding="utf-8"))
    (folder / ".mub").write_text(json.dumps({**marker, "files": names}), encoding="utf-8")


@pytest.mark.parametrize("order", ["success first", "error first"])
def test_a_success_is_never_replaced_by_an_error_whatever_the_file_order(finished: Path, tmp_path: Path, order: str) -> None:
    out = _copy(finished, tmp_path / "run")
    expected = _figures(finished)
    records = _lines(out / "predictions.jsonl")
    # Rank 1 of a 2-process launch failed on an item answered in predictions.jsonl.
    failed = {**records[1], "error": "rank 1: connection reset", "prediction": None}
    _write_lines(out / "predictions.rank1-of-2.jsonl", [failed])
    names = ["predictions.jsonl", "predictions.rank1-of-2.jsonl"]
    _list_files(out, names if order == "success first" else names[::-1])
    (out / "results.json").unlink()

    assert main(_run_args(out, "sample", "--resume")) == 0
    assert _figures(out) == expected  # the item is scored, not counted as an error
    assert len(_lines(out / "predictions.jsonl")) == len(records)  # and it is not asked again


# ----------------------------------------------------------- 5. references from the dataset


def test_an_edited_reference_is_refused_by_resume_and_rescore(finished: Path, tmp_path: Path, capsys) -> None:
    out = _copy(finished, tmp_path / "run")
    predictions = out / "predictions.jsonl"
    records = _lines(predictions)
    # The repro: answers edited to what the model said at stage 1, which would raise the accuracy.
    edited = [
        {**record, "answer": record["original_prediction"]}
        if record["original_prediction"] and record["original_prediction"] != record["answer"]
        else record
        for record in records
    ]
    first = next(new["id"] for old, new in zip(records, edited) if old != new)
    _write_lines(predictions, edited)
    capsys.readouterr()

    assert main(["rescore", str(out), "--parser", "mub", "--out", str(tmp_path / "rescored"), "--no-progress"]) == 2
    error = _one_line_error(capsys)
    assert str(predictions) in error and f"item {first} records answer" in error, error
    assert not (tmp_path / "rescored").exists()

    (out / "results.json").unlink()
    assert main(_run_args(out, "sample", "--resume")) == 2
    error = _one_line_error(capsys)
    assert str(predictions) in error and f"item {first} records answer" in error, error
    assert not (out / "results.json").exists()


def test_levels_come_from_the_dataset_not_the_predictions_file(finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path / "run")
    _write_lines(out / "predictions.jsonl", [{**record, "difficulty": "high"} for record in _lines(out / "predictions.jsonl")])
    (out / "results.json").unlink()
    assert main(_run_args(out, "sample", "--resume")) == 0
    assert _figures(out) == _figures(finished)


def test_rescore_refuses_a_changed_release_naming_the_item_and_field(tmp_path: Path, capsys) -> None:
    release = copy_release_with_placeholder_images(tmp_path / "release")
    out = tmp_path / "run"
    assert main(_run_args(out, release)) == 0
    first = _lines(out / "predictions.jsonl")[0]["id"]
    capsys.readouterr()
    _edit_release(release, "images")
    assert main(["rescore", str(out), "--parser", "mub", "--out", str(tmp_path / "rescored"), "--no-progress"]) == 2
    error = _one_line_error(capsys)
    assert f"item {first}: field image_sha256 differs" in error and "cannot rescore" in error, error
    assert not (tmp_path / "rescored").exists()


def test_a_dataset_built_without_the_hash_column_is_hashed_at_run_time(tmp_path: Path) -> None:
    """An export made before ``image_sha256`` existed: its fingerprint still covers the image bytes."""
    built = mub_dataset.load("explicit", "sample").select(range(LIMIT))
    older = built.remove_columns("image_sha256")
    config = RunConfig(model="scripted", backend="scripted", limit=LIMIT, progress=False, protocol="deterministic")

    def fingerprint(dataset, name: str) -> str:
        run(replace(config, out=str(tmp_path / name)), backend=ScriptedBackend(lambda request: "A"), dataset=dataset)
        return json.loads((tmp_path / name / "run.json").read_text(encoding="utf-8"))["items_fingerprint"]

    assert fingerprint(older, "older") == fingerprint(built, "built")
    # ... and the images count: one item's image replaced changes it.
    cells = older.cast_column("image", datasets.Image(decode=False))["image"]
    other = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(other, format="PNG")
    swapped = older.cast_column("image", datasets.Image(decode=False)).map(
        lambda row, index: {"image": {"bytes": other.getvalue(), "path": "x.png"} if index == 3 else cells[index]},
        with_indices=True,
    )
    assert fingerprint(swapped, "swapped") != fingerprint(built, "built2")
