"""The two-stage MUB run: dataset -> prompts -> backend -> parsed answers -> predictions.

``run(RunConfig(model=...))`` is the Python API behind ``mub run``; it returns
the same document it writes to ``results.json``.
"""

from __future__ import annotations

import hashlib
import io
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import datasets
from PIL import Image
from tqdm.auto import tqdm

import mub_dataset
from mub_dataset.files import cell_bytes, image_digest

from mub.config import RunConfig
from mub.protocol import stages
from mub.runs import distributed
from mub.backends import Backend, create_backend, run_decoding
from mub.config import DecodingSettings
from mub.backends.base import Generation, Request
from mub.backends.common import chunks
from mub.protocol.parsing import option_labels, parse_answer
from mub.runs.predictions import ItemPrediction, StageAnswer
from mub.protocol.presets import level_of, setting_of
from mub.protocol.prompts import explicit_cue, implicit_cue, render
from mub.runs.results import build_results, format_table
from mub.runs.storage import RunFolder, RunFolderError


@dataclass
class Selection:
    """The items a run covers: metadata rows and the dataset they index (images undecoded)."""

    dataset: datasets.Dataset
    indices: list[int]
    rows: list[dict[str, Any]]
    info: dict[str, Any]


def select_items(config: RunConfig, dataset: datasets.Dataset | None = None) -> Selection:
    """Load the config's items and apply the difficulty, count, limit and shard filters."""
    if dataset is None:
        dataset = mub_dataset.load(config.config, config.dataset)
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    all_rows = dataset.remove_columns("image").to_list()
    levels = config.preset().levels
    for row in all_rows:
        # The preset defines the levels, so a build made under another definition is read the same way.
        row["difficulty"] = level_of(levels, row["misled_count"])
    indices = [
        i
        for i, row in enumerate(all_rows)
        if (config.difficulty is None or row["difficulty"] == config.difficulty)
        and (config.misled_count is None or row["misled_count"] == config.misled_count)
    ]
    if config.limit is not None:
        indices = indices[: config.limit]
    if config.shard is not None:
        index, count = config.shard
        indices = indices[index::count]
    rows = [all_rows[i] for i in indices]
    if config.config == "implicit":
        _check_notes(rows)
    digest = hashlib.sha256()
    for row in rows:
        digest.update(
            repr((row["id"], row["answer"], row["misleading_answer"], row["misleading_notes"], row["guiding_notes"])).encode()
        )
    info = {"name": str(config.dataset), "config": config.config, "n_items": len(rows), "fingerprint": digest.hexdigest()[:16]}
    return Selection(dataset, indices, rows, info)


def _check_notes(rows: Sequence[Mapping[str, Any]]) -> None:
    for row in rows:
        if not row["misleading_notes"] or not row["guiding_notes"]:
            raise ValueError(
                f"item {row['id']} ({row['source']}) lacks misleading or guiding notes, which the implicit "
                "protocol needs for either stage-1 outcome; add notes (mub notes) or drop the item"
            )


def load_images(dataset: datasets.Dataset, indices: Sequence[int]) -> list[tuple[Image.Image, str]]:
    """Decoded RGB images and their content hash (the ``group_id`` for clustered intervals)."""
    loaded = []
    for cell in dataset.select_columns(["image"])[list(indices)]["image"]:
        data = cell_bytes(cell)
        image = Image.open(io.BytesIO(data))
        image.load()
        loaded.append((image.convert("RGB"), image_digest(data)))
    return loaded


def _answer(generation: Generation, cue: str, row: Mapping[str, Any]) -> StageAnswer:
    parsed = None
    if generation.error is None:
        parsed = parse_answer(generation.text, row["choices"], row["question_type"])
    return StageAnswer(
        cue=cue,
        output=generation.text,
        parsed=parsed,
        seconds=round(generation.seconds, 6),
        error=generation.error,
        option_probs=generation.option_probs,
        incomplete_probs=bool(generation.extra.get("incomplete_probs")),
    )


def _options(row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(option_labels(row["choices"], row["question_type"]))


def run_batch(
    rows: Sequence[Mapping[str, Any]],
    images: Sequence[tuple[Image.Image, str]],
    backend: Backend,
    config: RunConfig,
) -> list[ItemPrediction]:
    """Both stages for a batch of items; each item's decoded image serves both stages.

    Each stage's requests go to the backend in one call, which batches them
    by its own batch size (a local model sorts them by length first).
    """
    preset = config.preset()
    prompts = preset.prompts[setting_of(config.config)]
    stage1_requests = [
        Request(f"{row['id']}/stage1/{sample}", image, render(row, prompts), _options(row))
        for row, (image, _) in zip(rows, images)
        for sample in range(config.num_samples)
    ]
    stage1 = backend.generate(stage1_requests)
    records: list[ItemPrediction] = []
    stage2_requests: list[Request] = []
    stage2_cues: list[list[str]] = []
    for position, (row, (image, group_id)) in enumerate(zip(rows, images)):
        samples = stage1[position * config.num_samples : (position + 1) * config.num_samples]
        answers = [_answer(generation, "", row) for generation in samples]
        record = ItemPrediction(
            id=row["id"],
            answer=row["answer"],
            source=row["source"],
            difficulty=row["difficulty"],
            misled_count=row["misled_count"],
            question_type=row["question_type"],
            group_id=group_id,
            stage1=answers,
            original_prediction=answers[0].parsed,
            error=next((a.error for a in answers if a.error), None),
        )
        records.append(record)
        cues: list[str] = []
        if record.error is None:
            correct = stages.is_correct(record.original_prediction, row)
            if config.config == "implicit":
                cues = [implicit_cue(note, preset.note_template) for note in stages.notes_for(row, correct, config.notes)]
            else:
                cues = [explicit_cue(stages.hinted_answer(row, correct), config.hint())]
        stage2_cues.append(cues)
        for number, cue in enumerate(cues):
            stage2_requests.append(Request(f"{row['id']}/stage2/{number}", image, render(row, prompts, cue), _options(row)))
    stage2 = iter(backend.generate(stage2_requests))
    for record, row, cues in zip(records, rows, stage2_cues):
        record.stage2 = [_answer(next(stage2), cue.strip(), row) for cue in cues]
        if record.error is not None:
            continue
        record.error = next((a.error for a in record.stage2 if a.error), None)
        correct = stages.is_correct(record.original_prediction, row)
        record.prediction, record.flipped_by_note = stages.combine_note_answers(
            row, correct, [a.parsed for a in record.stage2]
        )
        if config.config != "implicit":
            record.flipped_by_note = None
    return records


def run(config: RunConfig, backend: Backend | None = None, dataset: datasets.Dataset | None = None) -> dict[str, Any]:
    """Evaluate a model on MUB; writes the run folder and returns the results document.

    Under torchrun / accelerate launch, each process evaluates its share of
    the items and rank 0 scores them all (see :mod:`mub.runs.distributed`).
    """
    config.validate()
    placement = distributed.placement_for(config)
    selection = select_items(config, dataset)
    folder = RunFolder(config.out_dir(), predictions_file=placement.predictions_file)
    settings = config.settings(selection.info, run_decoding(config))
    placement.prepare(folder, settings, resume=config.resume, overwrite=config.overwrite)
    with placement.working():
        done = {item_id for item_id, p in folder.load_predictions().items() if p.error is None}
        mine = placement.share(list(zip(selection.indices, selection.rows)))
        todo = [(i, row) for i, row in mine if row["id"] not in done]
        if backend is None:
            backend = create_backend(placement.backend_config(config))

        # Items are processed in groups of batch_size; the next group's images are
        # decoded on a worker thread while the model answers the current one.
        groups = list(chunks(range(len(todo)), config.batch_size))
        with ThreadPoolExecutor(max_workers=1) as pool, tqdm(
            total=len(todo), unit="item", desc=f"mub {config.config}", disable=not config.progress
        ) as progress:
            pending = pool.submit(load_images, selection.dataset, [todo[i][0] for i in groups[0]]) if groups else None
            for number, group in enumerate(groups):
                images = pending.result()
                if number + 1 < len(groups):
                    pending = pool.submit(load_images, selection.dataset, [todo[i][0] for i in groups[number + 1]])
                folder.append(run_batch([todo[i][1] for i in group], images, backend, config))
                progress.update(len(group))

    backend_info = backend.describe()
    return placement.finish(folder, lambda: finish_run(config, settings, selection, backend_info, folder))


def finish_run(
    config: RunConfig,
    settings: Mapping[str, Any],
    selection: Selection,
    backend_info: Mapping[str, Any],
    folder: RunFolder,
) -> dict[str, Any]:
    """Score the folder's predictions of the selected items, in selection order, and write results.json."""
    predictions = folder.load_predictions()
    missing = [row["id"] for row in selection.rows if row["id"] not in predictions]
    if missing:
        # Never score a partial run as if it were complete (e.g. a rank that has not finished).
        raise RunFolderError(
            f"{folder.path}: {len(missing)} of {len(selection.rows)} selected items have no prediction "
            f"(first: {', '.join(missing[:3])}); finish them with --resume before scoring"
        )
    ordered = [predictions[row["id"]] for row in selection.rows]
    results = build_results(config, settings, selection.info, backend_info, ordered)
    folder.write_results(results)
    if config.progress:
        print(format_table(results))
    return results
