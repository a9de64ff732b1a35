"""Write MUB rows back out as a release folder, the format ``mub build`` and ``mub_dataset.load`` read.

Used by ``mub import`` (a user's dataset becomes a release) and ``mub notes``
(a release with generated notes). Layout, as in the public release::

    all_combined_items.jsonl                      one JSON array, every item once
    implicit/mislead_output/allmislead_gpt{6,9,12}_all.jsonl   items with notes
    <new_id>                                      each item's image
    README.md

An item's ``id`` is derived from its image path (``new_id``) and question, so
writing a row back with its original ``new_id`` keeps its id.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import datasets
from PIL import Image

import mub_dataset
from mub.runs.storage import write_json_atomic
from mub_dataset.features import YES_NO
from mub_dataset.files import image_digest
from mub_dataset.records import letters
from mub_dataset.release import IMPLICIT_DIR, MAIN_FILE, resolve_image

NOTE_SEPARATOR = " /// "  # what the release's implicit files use between notes
IMAGE_DIR = "images"


def load_items(name: str, flag: str) -> datasets.Dataset:
    """Every item of a MUB dataset (anything ``mub_dataset.load`` takes), images left undecoded.

    A name that is no dataset gets a message naming the flag, not a traceback from inside ``datasets``.
    """
    try:
        dataset = mub_dataset.load("explicit", name)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"{flag} {name}: not a MUB dataset (release folder, export folder, Hub id or 'sample'): {exc}") from None
    return dataset.cast_column("image", datasets.Image(decode=False))


def hashed_image_path(data: bytes) -> str:
    """``images/<digest>.<ext>``: a stable release path for an image that has no path of its own."""
    with Image.open(io.BytesIO(data)) as image:
        image_format = (image.format or "png").lower()
    extension = {"jpeg": "jpg", "tiff": "tif"}.get(image_format, image_format)
    return f"{IMAGE_DIR}/{image_digest(data)}.{extension}"


def implicit_bucket(misled_count: int) -> int:
    """The release groups implicit records by difficulty into files gpt6, gpt9 and gpt12."""
    return 6 if misled_count <= 8 else 9 if misled_count <= 11 else 12


def release_record(
    row: Mapping[str, Any],
    new_id: str,
    misleading_notes: Sequence[str] = (),
    guiding_notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The release record of a MUB row (see ``mub_dataset.features``); notes only when given."""
    record: dict[str, Any] = {"question": row["question"]}
    if row["question_type"] != YES_NO:
        record["choices"] = dict(zip(letters(len(row["choices"])), row["choices"]))
    record.update(
        {
            "answer": row["answer"],
            "all_category": row.get("category", ""),
            "question_type_CHorYN": "YN" if row["question_type"] == YES_NO else "CH",
            "dataset": row["source"],
            "num": int(row["misled_count"]),
            "new_id": new_id,
        }
    )
    # Reference-model fields only where the source had them: an imported item has none.
    for name, field in (("model", "reference_model"), ("guide", "reference_hint"),
                        ("response", "reference_response"), ("question_correction", "reference_outcome")):  # fmt: skip
        if row.get(field):
            record[name] = row[field]
    if misleading_notes or guiding_notes:
        record["closed_model_response_F"] = NOTE_SEPARATOR.join(misleading_notes)
        record["closed_model_response_T"] = NOTE_SEPARATOR.join(guiding_notes)
    return record


def write_release(
    out: str | Path,
    records: Sequence[Mapping[str, Any]],
    images: Iterable[tuple[str, bytes]],
    readme: str,
) -> Path:
    """Write a release folder: images first, then the implicit files, the main file last.

    Records carrying notes (``closed_model_response_*``) go to the implicit
    files as well; the main file holds every record without notes, as in
    the public release. Each file is written atomically, and the main file
    (which makes the folder a release) comes last, so a killed write never
    leaves a folder that reads as complete but lacks files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for new_id, data in images:
        target = resolve_image(out, new_id)  # refuses paths that would leave the folder
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    buckets: dict[int, list[Mapping[str, Any]]] = {6: [], 9: [], 12: []}
    for record in records:
        if "closed_model_response_F" in record:
            buckets[implicit_bucket(record["num"])].append(record)
    for bucket, bucket_records in buckets.items():
        path = out / IMPLICIT_DIR / f"allmislead_gpt{bucket}_all.jsonl"
        if bucket_records:
            write_json_atomic(path, list(bucket_records))
        else:
            path.unlink(missing_ok=True)  # a stale file from an earlier write would add items
    main = [{k: v for k, v in record.items() if not k.startswith("closed_model_response")} for record in records]
    (out / "README.md").write_text(readme, encoding="utf-8")
    write_json_atomic(out / MAIN_FILE, main)
    return out
