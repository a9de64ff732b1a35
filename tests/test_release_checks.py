"""Records of the wrong type and images that do not decode: a clear error at build, an item error at run time.

Issue 13: ``mub build`` accepted a truncated JPEG (``verify()`` reads headers
only), then ``mub run`` died at that batch with ``OSError: image file is
truncated``, naming no item, and ``--resume`` died at the same place; a null
question became "None", a list its repr, ``num`` 7.9 became 7, 1e400 raised
``OverflowError`` and a one-option item ``ZeroDivisionError``.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import datasets
import pytest
from conftest import shared
from PIL import Image
from test_dataset import plain_id, raw_items
from test_release_reader import (
    MAIN,
    assert_names,
    first_of,
    sample_records,
    write_release,
)

from mub.cli import main as cli_main
from mub.config import RunConfig
from mub.runs.runner import run
from mub.testing.scripted import ScriptedBackend
from mub_dataset.features import FEATURES
from mub_dataset.release import ReleaseError, read_release


def noise_jpeg(seed: int = 0) -> bytes:
    rng = random.Random(seed)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (64, 64), bytes(rng.randrange(256) for _ in range(64 * 64 * 3))).save(buffer, format="JPEG")
    return buffer.getvalue()


def truncated_jpeg(seed: int = 0) -> bytes:
    """A JPEG cut off mid-scan: ``Image.verify()`` accepts it, decoding it fails."""
    data = noise_jpeg(seed)[: len(noise_jpeg(seed)) * 7 // 10]
    Image.open(io.BytesIO(data)).verify()  # what the build used to check: passes
    with pytest.raises(OSError, match="truncated"):
        Image.open(io.BytesIO(data)).load()
    return data


@pytest.fixture(scope="module")
def mmmu() -> dict:
    return first_of(sample_records(shared() / MAIN), "MMMU")


# ---------------------------------------------------------------- records

CASES = {
    "null question": ({"question": None}, "question is null"),
    "list question": ({"question": ["What is shown?", "A) x"]}, "question is a list"),
    "fractional num": ({"num": 7.9}, "num is a number (7.9)"),
    "overflowing num": ({"num": "__1e400__"}, "num is a number (inf)"),
    "num out of range": ({"num": 13}, "num is 13"),
    "num as text": ({"num": "9"}, 'num is a string ("9")'),
    "one option": ({"choices": {"A": "the only one"}, "answer": "A"}, "needs at least two"),
    "null option": ({"choices": {"A": "x", "B": None}, "answer": "A"}, "choices['B'] is null"),
    "answer as number": ({"answer": 1}, "answer is a whole number (1)"),
    "notes as list": ({"closed_model_response_F": ["a", "b"]}, "closed_model_response_F is a list"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_field_of_the_wrong_type_names_file_item_and_fix(case: str, tmp_path: Path, mmmu: dict) -> None:
    change, message = CASES[case]
    release = write_release(tmp_path / "release", [{**mmmu, **change}])
    main = release / MAIN
    main.write_text(main.read_text(encoding="utf-8").replace('"__1e400__"', "1e400"), encoding="utf-8")
    with pytest.raises(ReleaseError) as error:
        read_release(release)
    text = str(error.value)
    assert message in text and MAIN in text and mmmu["new_id"] in text, text
    assert any(fix in text for fix in ("correct the record", "give it as", "add the others", "must be")), text


def test_the_cli_refuses_a_wrong_type_in_one_line(tmp_path: Path, mmmu: dict, capsys) -> None:
    release = write_release(tmp_path / "release", [{**mmmu, "num": 7.9}])
    assert cli_main(["build", "--release", str(release), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "num is a number (7.9)" in error and not (tmp_path / "out").exists()


def test_the_real_release_sample_passes_the_type_checks() -> None:
    # every field of every real record has its type: each distinct item of the raw files is read
    items, _ = raw_items(shared())
    assert sorted(row["id"] for row in read_release(shared()).rows) == sorted(plain_id(*key) for key in items)


# ---------------------------------------------------------------- images


def test_build_decodes_every_image_and_names_a_truncated_one(tmp_path: Path, mmmu: dict, capsys) -> None:
    release = write_release(tmp_path / "release", [mmmu])
    (release / mmmu["new_id"]).write_bytes(truncated_jpeg())
    assert cli_main(["build", "--release", str(release), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert_names(error, MAIN, mmmu, "image file is truncated", "replace the file", str(release / mmmu["new_id"]))
    assert not (tmp_path / "out").exists()


def _item(number: int, image: bytes) -> dict:
    return {
        "id": f"item-{number}", "image": {"bytes": image, "path": f"img/{number}.jpg"}, "image_sha256": hashlib.sha256(image).hexdigest(),
        "question": f"Question {number}?", "choices": ["red", "green"], "answer": "A",
        "question_type": "multiple_choice", "source": "S", "category": "", "misled_count": 6, "difficulty": "low",
        "misleading_answer": "B", "misleading_answer_source": "seeded", "misleading_notes": [], "guiding_notes": [], "reference_model": "",
        "reference_hint": "", "reference_response": "", "reference_outcome": "", "copies": 1, "implicit_copies": 1,
    }  # fmt: skip


def test_an_undecodable_image_at_run_time_is_an_item_error_and_the_run_goes_on(tmp_path: Path) -> None:
    images = [noise_jpeg(n) for n in range(5)]
    broken = datasets.Dataset.from_list(
        [_item(n, truncated_jpeg(n) if n == 2 else images[n]) for n in range(5)], features=FEATURES
    )
    backend = ScriptedBackend(lambda request: "A")
    config = RunConfig(model="scripted", batch_size=4, out=str(tmp_path / "run"), progress=False)
    results = run(config, backend=backend, dataset=broken)
    figures = results["results"]["explicit"]
    assert (figures["errors"], figures["n"]) == (1, 4)
    records = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()}
    error = records["item-2"]["error"]
    assert error.startswith("item item-2: the image (img/2.jpg) cannot be decoded") and "truncated" in error, error
    assert all(records[f"item-{n}"]["error"] is None for n in (0, 1, 3, 4))
    asked = [request.key.split("/")[0] for call in backend.calls for request in call]
    assert "item-2" not in asked and set(asked) == {"item-0", "item-1", "item-3", "item-4"}

    # --resume asks again for the failed item only; with the image fixed, the run is complete.
    fixed = datasets.Dataset.from_list([_item(n, images[n]) for n in range(5)], features=FEATURES)
    backend.calls.clear()
    resumed = run(RunConfig(**{**config.__dict__, "resume": True}), backend=backend, dataset=fixed)
    assert resumed["results"]["explicit"]["errors"] == 0 and resumed["results"]["explicit"]["n"] == 5
    assert {request.key.split("/")[0] for call in backend.calls for request in call} == {"item-2"}
