"""``mub import``: a user's Hugging Face dataset of image questions becomes a MUB release folder.

Why a command of its own rather than ``mub build --from-dataset``: ``mub
build`` writes a Hub-ready export (Parquet per config), while an imported
dataset first needs notes; ``mub import`` writes a *release folder*, the input
of ``mub notes`` and ``mub build --release``. One command, one kind of output::

    mub import --from-dataset my/dataset --split test --column question=question \\
        --column image=image --column answer=answer --column choices=options --misled-count 9 --out my_release
    mub notes --dataset my_release --backend openai --model gpt-4o --out my_release_notes
    mub build --release my_release_notes --out my_mub

Columns (``--column FIELD=COLUMN``): ``question``, ``image`` and ``answer``
are required; ``choices`` is a list column or several columns joined by
commas (``choices=A,B,C,D``, trailing empty ones dropped, as in MMBench);
``category`` and ``misled_count`` are optional. An item with no choices (or
choices that are exactly yes/no) is a yes/no item, whose answer must be yes
or no. A multiple-choice answer may be a letter (``B``, ``(B)``), a 0-based
index, or an option's text (``--answer-format`` forces one reading).

Difficulty: MUB's ``num`` is how many of 12 reference models an item misled,
which a user's items do not have. The release format needs a value from 6
to 12, so ``--misled-count N`` is required unless a ``misled_count`` column
holds real counts. N is a placeholder, written in the release README and in
``import_summary.json``: with it every item lands in one difficulty level and
the per-difficulty figures of ``mub run`` say nothing.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import datasets
import huggingface_hub

from mub.extend.release_writer import (
    hashed_image_path,
    release_record,
    write_release,
)
from mub.runs.storage import write_json_atomic
from mub_dataset.features import MULTIPLE_CHOICE, YES_NO, difficulty_for
from mub_dataset.files import MAX_IMAGE_BYTES, cell_bytes, check_output_folder, read_regular_file, staged_folder
from mub_dataset.hub import check_hub_name, require_hub
from mub_dataset.limits import check_image
from mub_dataset.records import (
    item_id,
    letters,
    misleading_answer_for,
    normalise_record,
)

REQUIRED_COLUMNS = ("question", "image", "answer")
OPTIONAL_COLUMNS = ("choices", "category", "misled_count")
ANSWER_FORMATS = ("auto", "letter", "index", "text")
SUMMARY_FILE = "import_summary.json"
_BRACKETED_LETTER = re.compile(r"^[(\[]?\s*([A-Za-z])\s*[)\].:]?$")


class DatasetImportError(ValueError):
    """A user dataset that cannot become MUB items as mapped."""


@dataclass
class ImportConfig:
    dataset: str
    out: str
    columns: dict[str, str]  # MUB field -> column (choices: "col" or "c1,c2,...")
    config_name: str | None = None
    split: str | None = None
    source: str | None = None
    misled_count: int | None = None
    answer_format: str = "auto"
    limit: int | None = None
    overwrite: bool = False

    def validate(self) -> None:
        missing = [name for name in REQUIRED_COLUMNS if name not in self.columns]
        unknown = [name for name in self.columns if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if missing or unknown:
            raise DatasetImportError(
                (f"--column needs {', '.join(f'{m}=COLUMN' for m in missing)}; " if missing else "")
                + (f"unknown field(s) {', '.join(unknown)}; " if unknown else "")
                + f"fields: {', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}"
            )
        if self.misled_count is None and "misled_count" not in self.columns:
            raise DatasetImportError(
                "your items have no count of misled reference models: pass --misled-count N (6-12; a placeholder, "
                "written in the release README) or map a column of real counts with --column misled_count=COLUMN"
            )
        if self.misled_count is not None:
            _check_count(self.misled_count, "--misled-count")
        if self.answer_format not in ANSWER_FORMATS:
            raise DatasetImportError(f"--answer-format must be one of {', '.join(ANSWER_FORMATS)}")

    def source_name(self) -> str:
        return self.source or Path(self.dataset.rstrip("/")).name or "imported"


def parse_column_mappings(pairs: Sequence[str]) -> dict[str, str]:
    """``["question=q", "choices=A,B"]`` -> ``{"question": "q", "choices": "A,B"}``."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise DatasetImportError(f"--column takes FIELD=COLUMN, got {pair!r}")
        mapping[name.strip()] = column.strip()
    return mapping


def _check_count(value: Any, what: str) -> int:
    try:
        count = int(value)
        difficulty_for(count)
    except (TypeError, ValueError):
        raise DatasetImportError(f"{what} must be a count from 6 to 12 (MUB's difficulty scale), got {value!r}") from None
    return count


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def choices_of(example: Mapping[str, Any], spec: str | None) -> list[str]:
    """Option texts of an example: one list column, or one column per option (trailing empty ones dropped)."""
    if spec is None:
        return []
    columns = [c.strip() for c in spec.split(",")]
    if len(columns) == 1:
        value = example[columns[0]]
        if _missing(value):
            return []
        if not isinstance(value, (list, tuple)):
            raise DatasetImportError(f"choices column {columns[0]!r} holds {type(value).__name__}, expected a list of options")
        values = list(value)
    else:
        values = [example[c] for c in columns]
    while values and _missing(values[-1]):
        values.pop()
    if any(_missing(v) for v in values):
        raise DatasetImportError(f"an option in the middle is empty ({values!r}); option letters would shift")
    return [str(v).strip() for v in values]


def is_yes_no(choices: Sequence[str]) -> bool:
    return not choices or sorted(c.casefold() for c in choices) == ["no", "yes"]


def answer_label(raw: Any, choices: Sequence[str], answer_format: str) -> str:
    """The answer as MUB writes it: an option letter, or Yes/No for a yes/no item."""
    if is_yes_no(choices):
        text = str(raw).strip().casefold()
        if text not in ("yes", "no"):
            raise DatasetImportError(f"answer {raw!r} of a yes/no item must be yes or no")
        return text.capitalize()
    labels = letters(len(choices))
    if answer_format in ("auto", "index") and isinstance(raw, int) and not isinstance(raw, bool):
        if 0 <= raw < len(choices):
            return labels[raw]
        raise DatasetImportError(f"answer index {raw} is outside the {len(choices)} options (indices are 0-based)")
    if answer_format == "index":
        raise DatasetImportError(f"answer {raw!r} is not an integer index")
    text = str(raw).strip()
    match = _BRACKETED_LETTER.match(text)
    if answer_format in ("auto", "letter") and match and match.group(1).upper() in labels:
        return match.group(1).upper()
    if answer_format in ("auto", "text"):
        same = [label for label, choice in zip(labels, choices) if choice.casefold() == text.casefold()]
        if len(same) == 1:
            return same[0]
        if len(same) > 1:
            raise DatasetImportError(
                f"answer {raw!r} is ambiguous: options {' and '.join(same)} both read as it (case is ignored); "
                "give the answer as a letter or an index"
            )
    raise DatasetImportError(
        f"answer {raw!r} is not {'an option letter' if answer_format == 'letter' else 'an option letter, index or text'} "
        f"of the options {list(choices)!r}"
    )


def image_roots(dataset_dir: Path | None) -> list[Path]:
    """The folders an image path may lie in: the dataset's own folder and the Hugging Face caches it came from."""
    roots = [Path(datasets.config.HF_DATASETS_CACHE), Path(huggingface_hub.constants.HF_HUB_CACHE)]
    return [root.resolve() for root in ([dataset_dir] if dataset_dir is not None else []) + roots]


def image_path(value: str, dataset_dir: Path | None, roots: Sequence[Path]) -> Path:
    """The file an image path names, refused unless it lies inside ``roots`` once resolved (``..``, symlinks).

    ``mub import`` copies each image into the release folder the user will publish: a path such as
    ``/home/u/private_photo.png`` or ``../../.ssh/id_rsa`` must not bring another file along.
    """
    path = Path(value)
    if not path.is_absolute():
        if dataset_dir is None:
            raise DatasetImportError(f"image path {value!r} is relative, but the dataset is no local folder to resolve it in")
        path = dataset_dir / path
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise DatasetImportError(
            f"image path {value!r} lies outside the dataset's folder{f' {dataset_dir}' if dataset_dir else ''} and the "
            "Hugging Face cache; mub import reads only the dataset's own files: move the image into the dataset's "
            "folder and give its path relative to it"
        )
    return resolved


def _image_bytes(value: Any, dataset_dir: Path | None, roots: Sequence[Path]) -> bytes:
    """The image's bytes (embedded, or a regular file inside ``roots``), checked to decode within the pixel cap."""
    if isinstance(value, Mapping) and value.get("bytes") is not None:
        data = value["bytes"]
    elif isinstance(value, Mapping) and isinstance(value.get("path"), str):
        data = read_regular_file(image_path(value["path"], dataset_dir, roots), "image file", MAX_IMAGE_BYTES)
    elif isinstance(value, str):
        data = read_regular_file(image_path(value, dataset_dir, roots), "image file", MAX_IMAGE_BYTES)
    else:
        raise DatasetImportError(f"image cell of type {type(value).__name__}; expected an Image column or a file path")
    check_image(data)
    return data


def to_row(example: Mapping[str, Any], config: ImportConfig, new_id: str) -> dict[str, Any]:
    """A MUB row (as ``mub_dataset.records.normalise_record`` makes them) from one user example."""
    columns = config.columns
    choices = choices_of(example, columns.get("choices"))
    question_type = YES_NO if is_yes_no(choices) else MULTIPLE_CHOICE
    answer = answer_label(example[columns["answer"]], choices, config.answer_format)
    count = (
        _check_count(example[columns["misled_count"]], f"column {columns['misled_count']!r}")
        if "misled_count" in columns
        else config.misled_count
    )
    raw_question = example[columns["question"]]
    if not isinstance(raw_question, str) or not raw_question.strip():
        raise DatasetImportError(f"question is {raw_question!r}; every item needs a question text")
    question = raw_question.strip()
    row_id = item_id(new_id, question)
    labels = ["Yes", "No"] if question_type == YES_NO else letters(len(choices))
    return {
        "id": row_id,
        "question": question,
        "choices": ["Yes", "No"] if question_type == YES_NO else choices,
        "answer": answer,
        "question_type": question_type,
        "source": config.source_name(),
        "category": "" if "category" not in columns or _missing(example[columns["category"]]) else str(example[columns["category"]]),
        "misled_count": count,
        "difficulty": difficulty_for(count),
        "misleading_answer": misleading_answer_for(row_id, answer, labels),
        "misleading_answer_source": "seeded",  # an import has no released hint to take it from
    }


def load_user_dataset(config: ImportConfig) -> tuple[datasets.Dataset, str | None]:
    """The user's split and its name: from a ``save_to_disk`` folder, a local data folder, or a Hub id."""
    path = Path(config.dataset)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded: Any = datasets.load_from_disk(str(path))
    else:
        if not path.is_dir():  # a Hub id: a mistyped folder is "no such folder", an unreachable Hub said at once
            check_hub_name("dataset", f"--from-dataset {config.dataset}", config.dataset)
            require_hub(f"--from-dataset {config.dataset}")
        loaded = datasets.load_dataset(config.dataset, config.config_name, split=config.split)
    if not isinstance(loaded, datasets.DatasetDict):
        return loaded, config.split
    if config.split is None and len(loaded) == 1:
        return next(iter(loaded.values())), next(iter(loaded))
    if config.split not in loaded:
        raise DatasetImportError(f"{config.dataset} has splits {', '.join(loaded)}; choose one with --split")
    return loaded[config.split], config.split


@dataclass
class ImportResult:
    items: int
    exact_duplicates_dropped: int
    per_question_type: dict[str, int] = field(default_factory=dict)
    per_difficulty: dict[str, int] = field(default_factory=dict)


def _level_name(count: int) -> str:
    level = difficulty_for(count)
    return f"level `{level}`" if level else "no level (levels are misled counts 6, 9 and 12 exactly)"


def _readme(config: ImportConfig, split: str | None, result: ImportResult) -> str:
    if config.misled_count is not None:
        num = (
            f"**`num` is a placeholder.** These items have no count of misled reference models; every item was "
            f"given `num` = {config.misled_count} (`--misled-count`), so all are on "
            f"{_level_name(config.misled_count)} and per-difficulty figures mean nothing. The reference-model fields are empty."
        )
    else:
        num = f"`num` comes from the dataset's column `{config.columns['misled_count']}`."
    mapping = ", ".join(f"{k} = `{v}`" for k, v in config.columns.items())
    return (
        f"# MUB-format release imported from `{config.dataset}`\n\n"
        f"Written by `mub import`: {result.items} items from split `{split}`, "
        f"source name `{config.source_name()}`; columns: {mapping}.\n\n{num}\n\n"
        "There are no implicit notes yet: add them with `mub notes --dataset THIS_FOLDER --out ...`.\n"
    )


def import_dataset(config: ImportConfig) -> ImportResult:
    """Write the release folder ``config.out``; returns what was imported."""
    config.validate()
    out = Path(config.out)
    check_output_folder(out, "import", overwrite=config.overwrite)
    dataset, split = load_user_dataset(config)
    missing = sorted({c.strip() for spec in config.columns.values() for c in spec.split(",")} - set(dataset.column_names))
    if missing:
        raise DatasetImportError(f"{config.dataset} has no column(s) {', '.join(missing)}; columns: {', '.join(dataset.column_names)}")
    image_column = config.columns["image"]
    if isinstance(dataset.features[image_column], datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    if config.limit is not None:
        dataset = dataset.select(range(min(config.limit, len(dataset))))
    dataset_dir = Path(config.dataset) if Path(config.dataset).is_dir() else None
    roots = image_roots(dataset_dir)

    records: dict[tuple[str, str], dict[str, Any]] = {}
    images: dict[str, bytes] = {}
    duplicates = 0
    for index, example in enumerate(dataset):
        where = f"{config.dataset} row {index}"
        try:
            data = _image_bytes(example[image_column], dataset_dir, roots)
            new_id = hashed_image_path(data)  # identical images share one file
            row = to_row(example, config, new_id)
            record = release_record(row, new_id)
            normalise_record(record, None)  # the release reader must accept what we write
        except (ValueError, OSError) as exc:  # DatasetImportError, RecordError, a refused file or image
            raise DatasetImportError(f"{where}: {exc}") from None
        key = (new_id, row["question"])
        if key in records:
            if records[key] != record:
                raise DatasetImportError(f"{where}: same image and question as an earlier row but another answer or options")
            duplicates += 1
            continue
        records[key] = record
        images[new_id] = data

    rows = list(records.values())
    result = ImportResult(
        items=len(rows),
        exact_duplicates_dropped=duplicates,
        per_question_type=dict(Counter("yes_no" if r["question_type_CHorYN"] == "YN" else "multiple_choice" for r in rows)),
        per_difficulty=dict(Counter(difficulty_for(r["num"]) or "none" for r in rows)),
    )
    with staged_folder(out, "import", overwrite=config.overwrite) as staging:
        write_release(staging, rows, images.items(), _readme(config, split, result))
        write_json_atomic(
            staging / SUMMARY_FILE,
            {"dataset": config.dataset, "split": split, "columns": config.columns, "source": config.source_name(),
             "misled_count_placeholder": config.misled_count, **result.__dict__},  # fmt: skip
        )
    return result


def format_import_summary(result: ImportResult, out: str) -> str:
    return "\n".join(
        [
            f"items: {result.items} (exact duplicates dropped: {result.exact_duplicates_dropped})",
            "per question type: " + ", ".join(f"{k} {v}" for k, v in sorted(result.per_question_type.items())),
            "per difficulty: " + ", ".join(f"{k} {v}" for k, v in sorted(result.per_difficulty.items())),
            f"release written to {out}; add notes with: mub notes --dataset {out} --out {out}_notes ...",
        ]
    )
