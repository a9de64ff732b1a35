"""Read a MUB release folder into normalised rows.

A release folder holds ``all_combined_items.jsonl`` (one JSON array, despite
the name), optional ``implicit/mislead_output/allmislead_gpt*_all.jsonl``
files with implicit notes, and the images the records' ``new_id`` point to.
Records repeat (4-9 identical copies of an item); an item is identified by
(``new_id``, ``question``). Each item becomes one row, which records how many
copies each file holds (``copies``: the main file, ``implicit_copies``: the
implicit files), since the authors' scripts run and score every copy. Every
problem raises :class:`ReleaseError` naming the file, the item and the fix;
nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .features import CONFIGS
from .files import MAX_DOCUMENT_BYTES, MAX_IMAGE_BYTES, NotARegularFileError, read_regular_file
from .limits import check_image
from .records import RecordError, item_key, normalise_record

MAIN_FILE = "all_combined_items.jsonl"
IMPLICIT_DIR = Path("implicit") / "mislead_output"
IMPLICIT_PATTERN = "allmislead_gpt*_all.jsonl"
# Fields that define the question itself: copies of an item must agree on them.
ITEM_FIELDS = ("question", "choices", "answer", "question_type_CHorYN", "dataset", "num", "new_id")
# A boundary between two top-level records ("},\n  {"): records nest at most
# one object (choices), which is never followed by another object.
_RECORD_BOUNDARY = re.compile(r"}\s*,\s*{")


class ReleaseError(ValueError):
    """A release folder that cannot be read as it is."""


@dataclass
class FileReport:
    """What was read from one release file."""

    path: str
    records: int
    truncated_at_byte: int | None = None  # set when the file ends mid-record

    @property
    def records_lost(self) -> int:
        return 0 if self.truncated_at_byte is None else 1


@dataclass
class Release:
    """A release read into rows (no images yet) plus what reading found."""

    root: Path
    rows: list[dict[str, Any]]
    image_files: dict[str, Path]  # row id -> image file
    item_descriptions: dict[str, str] = field(default_factory=dict)  # row id -> file and item, for messages
    files: list[FileReport] = field(default_factory=list)
    records_read: int = 0
    duplicates_removed: int = 0
    reference_conflicts: int = 0

    def summary(self) -> dict[str, Any]:
        """Counts for the build summary (also written next to exports)."""
        return {
            "release": str(self.root),
            "records_read": self.records_read,
            "duplicates_removed": self.duplicates_removed,
            # The paper preset draws an item once per copy: these are its draws per setting.
            "copies": sum(row["copies"] for row in self.rows),
            "implicit_copies": sum(row["implicit_copies"] for row in self.rows),
            "records_lost_to_truncation": sum(f.records_lost for f in self.files),
            "copies_with_differing_reference_fields": self.reference_conflicts,
            "items": len(self.rows),
            "items_per_config": {
                spec.name: count
                for spec in CONFIGS
                if (count := sum(1 for row in self.rows if spec.includes(row)))
            },
            "items_per_source": dict(sorted(Counter(row["source"] for row in self.rows).items())),
            "items_per_question_type": dict(sorted(Counter(row["question_type"] for row in self.rows).items())),
            # Items whose misled count is on no level (7, 8, 10, 11) are counted under "none".
            "items_per_difficulty": dict(sorted(Counter(row["difficulty"] or "none" for row in self.rows).items())),
        }


def read_record_array(path: Path, allow_truncated: bool = False) -> tuple[list[dict[str, Any]], FileReport]:
    """All records of one release file (a JSON array of objects)."""
    try:
        text = read_regular_file(path, "release file", MAX_DOCUMENT_BYTES).decode("utf-8")
    except NotARegularFileError as exc:
        raise ReleaseError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{path}: cannot read the file ({exc})") from exc
    start = text.find("[")
    if start < 0 or text[:start].strip():
        raise ReleaseError(f"{path}: expected one JSON array of records ('[' first), found {text[:40]!r}")
    decoder = json.JSONDecoder(parse_int=_whole_number, parse_constant=_no_constant)
    records: list[dict[str, Any]] = []
    pos = start + 1
    while True:
        pos = _skip_separators(text, pos, first=not records)
        if pos >= len(text):
            return _truncated(path, records, len(text.encode("utf-8")), allow_truncated)
        if text[pos] == "]":
            if text[pos + 1 :].strip():
                raise ReleaseError(f"{path}: unexpected text after the closing ']' of the record array")
            return records, FileReport(str(path), len(records))
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            if _ends_inside(text, pos) and not _RECORD_BOUNDARY.search(text, pos):
                return _truncated(path, records, len(text[:pos].encode("utf-8")), allow_truncated, text[pos:])
            boundary = _RECORD_BOUNDARY.search(text, exc.pos)
            item = _partial_item(text[pos : boundary.start() if boundary else None])
            raise ReleaseError(
                f"{path}: malformed JSON in record {len(records) + 1}{item} at line {exc.lineno}, "
                f"column {exc.colno}: {exc.msg}; fix the record or restore the file from the release"
            ) from None
        except ValueRefused as exc:
            boundary = _RECORD_BOUNDARY.search(text, pos)
            item = _partial_item(text[pos : boundary.start() if boundary else None])
            raise ReleaseError(f"{path}: record {len(records) + 1}{item}: {exc}; fix the record") from None
        except RecursionError:
            raise ReleaseError(
                f"{path}: record {len(records) + 1} is nested too deeply to be a record; "
                "fix the record or restore the file from the release"
            ) from None
        if not isinstance(record, dict):
            raise ReleaseError(f"{path}: record {len(records) + 1} is a {type(record).__name__}, expected an object")
        records.append(record)
        pos = end


class ValueRefused(ValueError):
    """A JSON value a release record may not hold (raised while decoding, so its record is named)."""


MAX_NUMBER_DIGITS = 18  # every count of a release fits; Python refuses to convert past 4,300 digits, naming nothing


def _whole_number(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueRefused(f"a number has {len(digits.lstrip('-'))} digits, more than the {MAX_NUMBER_DIGITS} any field may hold")
    return int(digits)


def _no_constant(name: str) -> float:
    raise ValueRefused(f"{name} is not a number that JSON allows (write a whole number)")


def _ends_inside(text: str, pos: int) -> bool:
    """Whether the text ends before the value starting at ``pos`` closes (inside a string or a bracket).

    That is a file cut off mid-record; a record that closes but does not
    decode is malformed instead.
    """
    depth = 0
    in_string = escaped = False
    for char in text[pos:]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return False
    return True


def _skip_separators(text: str, pos: int, first: bool) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    if not first and pos < len(text) and text[pos] == ",":
        pos += 1
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
    return pos


def _partial_item(record_text: str) -> str:
    """" (new_id=..., question=...)" as far as a broken record's text still shows them."""
    found = []
    for name in ("new_id", "question"):
        match = re.search(rf'"{name}"\s*:\s*"((?:[^"\\]|\\.)*)"', record_text)
        if match:
            try:
                value = json.loads(f'"{match.group(1)}"')
            except json.JSONDecodeError:
                value = match.group(1)
            found.append(f"{name}={value if len(value) <= 60 else value[:57] + '...'!r}")
    return f" ({', '.join(found)})" if found else ""


def _truncated(
    path: Path, records: list, at_byte: int, allow_truncated: bool, rest: str = ""
) -> tuple[list, FileReport]:
    if not allow_truncated:
        raise ReleaseError(
            f"{path}: the file is cut off mid-record after {len(records)} complete records (byte {at_byte})"
            f"{'; the cut-off record' + _partial_item(rest) if _partial_item(rest) else ''}; "
            "restore the complete file, or pass --allow-truncated to keep the complete records"
        )
    return records, FileReport(str(path), len(records), truncated_at_byte=at_byte)


def resolve_image(root: Path, image_path: str) -> Path:
    """The image file of an item; refuses paths that leave the release folder."""
    if "\0" in image_path:
        raise ReleaseError(f"image path {image_path!r} holds a NUL byte (\\0), which no file name can contain; fix the path")
    relative = Path(image_path)
    root = root.resolve()
    candidate = (root / relative).resolve()
    if relative.is_absolute() or not candidate.is_relative_to(root):
        raise ReleaseError(f"image path {image_path!r} escapes the release folder {root}; image paths must be relative")
    return candidate


def read_image_bytes(path: Path, item: str) -> bytes:
    """The image file's bytes, after checking that Pillow decodes all of it (within the pixel cap)."""
    try:
        data = read_regular_file(path, "image", MAX_IMAGE_BYTES)
    except FileNotFoundError:
        raise ReleaseError(f"{item}: image {path} is missing; put the image file there") from None
    except NotARegularFileError as exc:
        raise ReleaseError(f"{item}: {exc}") from None
    except OSError as exc:
        raise ReleaseError(f"{item}: image {path} cannot be read ({exc})") from exc
    try:
        check_image(data)
    except ValueError as exc:
        raise ReleaseError(f"{item}: image {path}: {exc}") from None
    return data


def describe_item(path: Path | str, record: dict[str, Any]) -> str:
    question = str(record.get("question", ""))
    short = question if len(question) <= 60 else question[:57] + "..."
    return f"{path}: item new_id={record.get('new_id')!r} question={short!r}"


def read_release(root: str | Path, allow_truncated: bool = False) -> Release:
    """Read, deduplicate and normalise every item of a release folder."""
    root = Path(root)
    main_path = root / MAIN_FILE
    if not main_path.is_file():
        raise ReleaseError(f"{root}: no {MAIN_FILE}; point --release at a MUB release folder")
    release = Release(root=root, rows=[], image_files={})

    main_records, report = read_record_array(main_path, allow_truncated)
    release.files.append(report)
    implicit_records: dict[tuple[str, str], tuple[Path, dict]] = {}
    implicit_order: list[tuple[str, str]] = []
    implicit_copies: Counter[tuple[str, str]] = Counter()
    for path in sorted((root / IMPLICIT_DIR).glob(IMPLICIT_PATTERN)):
        records, report = read_record_array(path, allow_truncated)
        release.files.append(report)
        for record in records:
            key = _checked_key(path, record)
            implicit_copies[key] += 1
            if key not in implicit_records:
                implicit_records[key] = (path, record)
                implicit_order.append(key)
            else:
                _check_same_item(implicit_records[key], (path, record), notes=True)
    release.records_read = sum(f.records for f in release.files)

    main_items: dict[tuple[str, str], tuple[Path, dict]] = {}
    main_copies: Counter[tuple[str, str]] = Counter()
    for record in main_records:
        key = _checked_key(main_path, record)
        main_copies[key] += 1
        if key in main_items:
            release.reference_conflicts += _check_same_item(main_items[key], (main_path, record), notes=False)
        else:
            main_items[key] = (main_path, record)

    order = list(main_items) + [key for key in implicit_order if key not in main_items]
    release.duplicates_removed = release.records_read - len(order)
    for key in order:
        path, record = main_items.get(key) or implicit_records[key]
        notes = implicit_records.get(key)
        if notes is not None:
            _check_same_item((path, record), notes, notes=False, reference=False)
        try:
            row = normalise_record(record, notes[1] if notes else None)
        except RecordError as exc:
            raise ReleaseError(f"{describe_item(path, record)}: {exc}") from None
        row["copies"], row["implicit_copies"] = main_copies[key], implicit_copies[key]
        try:
            release.image_files[row["id"]] = resolve_image(root, key[0])
        except ReleaseError as exc:
            raise ReleaseError(f"{describe_item(path, record)}: {exc}") from None
        release.item_descriptions[row["id"]] = describe_item(path, record)
        release.rows.append(row)
    return release


def _checked_key(path: Path, record: dict[str, Any]) -> tuple[str, str]:
    if "new_id" not in record or "question" not in record:
        raise ReleaseError(f"{describe_item(path, record)}: record lacks 'new_id' or 'question'")
    return item_key(record)


def _check_same_item(first: tuple[Path, dict], other: tuple[Path, dict], *, notes: bool, reference: bool = True) -> int:
    """Refuse copies of one item that disagree on the question; count reference-field differences."""
    (first_path, a), (other_path, b) = first, other
    fields = ITEM_FIELDS + (("closed_model_response_F", "closed_model_response_T") if notes else ())
    # new_id and question compare in the key's spelling (item_key): aliases of one path or question agree.
    differing = [name for name in fields if name not in ("new_id", "question") and a.get(name) != b.get(name)]
    if differing:
        raise ReleaseError(
            f"{describe_item(other_path, b)}: this copy differs from the copy in {first_path} in {differing}; "
            "copies of one item must agree, fix or remove one of them"
        )
    if not reference:
        return 0
    return int(any(a.get(name) != b.get(name) for name in ("model", "guide", "response", "question_correction")))
