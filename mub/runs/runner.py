"""The two-stage MUB run: dataset -> prompts -> backend -> parsed answers -> predictions.

``run(RunConfig(model=...))`` is the Python API behind ``mub run``; it returns
the same document it writes to ``results.json``.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import datasets
from PIL import Image
from tqdm.auto import tqdm

import mub_dataset
from mub.backends import Backend, create_backend, run_decoding
from mub.backends.base import Exchange, Generation, Request
from mub.backends.common import chunks
from mub.config import RunConfig
from mub.errors import RunInterrupted
from mub.protocol import stages
from mub.protocol.cues import Cue, followup
from mub.protocol.parsing import option_labels, parse_answer
from mub.protocol.presets import PromptFormat, level_of, setting_of
from mub.protocol.prompts import item_kind, render
from mub.runs import distributed
from mub.runs.predictions import ItemPrediction, StageAnswer
from mub.runs.results import build_results
from mub.runs.storage import RunFolder, RunFolderError
from mub_dataset.files import cell_bytes, image_digest
from mub_dataset.fingerprint import items_fingerprint


@dataclass
class Selection:
    """The items a run covers: metadata rows and the dataset they index (images undecoded)."""

    dataset: datasets.Dataset
    indices: list[int]
    rows: list[dict[str, Any]]
    info: dict[str, Any]


def _load_quietly(config: RunConfig) -> datasets.Dataset:
    """``mub_dataset.load`` without the `datasets` builder's progress bars (``--no-progress``, ``--quiet``)."""
    already_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        return mub_dataset.load(config.config, config.dataset)
    finally:
        if not already_off:
            datasets.enable_progress_bars()


def select_items(config: RunConfig, dataset: datasets.Dataset | None = None) -> Selection:
    """Load the config's items and apply the difficulty, count, limit and shard filters."""
    if dataset is None:
        dataset = _load_quietly(config) if not config.progress else mub_dataset.load(config.config, config.dataset)
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
    if not rows:
        raise ValueError(_no_items_message(config, all_rows))
    if config.cue_spec().uses_notes:
        _check_notes(rows)
    info = {"name": str(config.dataset), "config": config.config, "n_items": len(rows), "fingerprint": items_fingerprint(rows)}
    return Selection(dataset, indices, rows, info)


def _no_items_message(config: RunConfig, all_rows: Sequence[Mapping[str, Any]]) -> str:
    """Which filter left no items, and the values the dataset does have."""
    where = f"dataset {config.dataset} (config {config.config}, {len(all_rows)} items)"
    if not all_rows:
        return f"{where} holds no items; check the release or export folder"
    filters = []
    if config.difficulty is not None:
        levels = sorted({row["difficulty"] for row in all_rows})
        filters.append(f"--difficulty {config.difficulty} (levels present: {', '.join(levels)})")
    if config.misled_count is not None:
        counts = sorted({row["misled_count"] for row in all_rows})
        filters.append(f"--misled-count {config.misled_count} (counts present: {', '.join(map(str, counts))})")
    if config.shard is not None:
        filters.append(f"--shard {config.shard[0]}/{config.shard[1]} (more shards than items)")
    return f"no items of {where} match {' and '.join(filters)}; change the filter"


def _check_notes(rows: Sequence[Mapping[str, Any]]) -> None:
    for row in rows:
        if not row["misleading_notes"] or not row["guiding_notes"]:
            raise ValueError(
                f"item {row['id']} ({row['source']}) lacks misleading or guiding notes, which the implicit "
                "protocol needs for either stage-1 outcome; add notes (mub notes) or drop the item"
            )


@dataclass(frozen=True)
class LoadedImage:
    """An item's decoded RGB image and content hash (the ``group_id``), or why it could not be decoded."""

    image: Image.Image | None
    group_id: str
    error: str | None = None


def load_images(dataset: datasets.Dataset, indices: Sequence[int]) -> list[LoadedImage]:
    """The items' images, fully decoded; one that cannot be decoded (truncated, not an image) carries the reason."""
    loaded = []
    for index, cell in zip(indices, dataset.select_columns(["image"])[list(indices)]["image"]):
        data = cell_bytes(cell)
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                loaded.append(LoadedImage(image.convert("RGB"), image_digest(data)))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # what Pillow raises for bad data
            error = f"the image ({cell.get('path') or 'embedded'}) cannot be decoded ({type(exc).__name__}: {exc})"
            loaded.append(LoadedImage(None, image_digest(data), error))
    return loaded


def item_record(row: Mapping[str, Any], group_id: str, stage1: list[StageAnswer]) -> ItemPrediction:
    """An item's record after stage 1; its error is the first failed answer's."""
    return ItemPrediction(
        id=row["id"],
        answer=row["answer"],
        source=row["source"],
        difficulty=row["difficulty"],
        misled_count=row["misled_count"],
        question_type=row["question_type"],
        group_id=group_id,
        stage1=stage1,
        original_prediction=stage1[0].parsed,
        error=next((a.error for a in stage1 if a.error), None),
    )


def image_error_record(row: Mapping[str, Any], loaded: LoadedImage) -> ItemPrediction:
    """The record of an item whose image could not be decoded: an item error, retried by ``--resume``."""
    error = f"item {row['id']}: {loaded.error}; fix or replace the image in the dataset"
    return item_record(row, loaded.group_id, [StageAnswer(cue="", output="", parsed=None, error=error)])


def predict_group(
    rows: Sequence[Mapping[str, Any]], images: Sequence[LoadedImage], backend: Backend, config: RunConfig
) -> list[ItemPrediction]:
    """:func:`run_batch` for the items whose image decoded, an item error for each other one; in item order."""
    decoded = [(row, loaded) for row, loaded in zip(rows, images) if loaded.error is None]
    answered = iter(
        run_batch([row for row, _ in decoded], [(loaded.image, loaded.group_id) for _, loaded in decoded], backend, config)
        if decoded
        else []
    )
    return [next(answered) if loaded.error is None else image_error_record(row, loaded) for row, loaded in zip(rows, images)]


def _answer(generation: Generation, cue: str, row: Mapping[str, Any], hinted: str | None = None) -> StageAnswer:
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
        hinted=hinted,
        incomplete_probs=bool(generation.extra.get("incomplete_probs")),
    )


def _options(row: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(option_labels(row["choices"], row["question_type"]))


def stage2_cues(cue: Cue, row: Mapping[str, Any], stage1_correct: bool, max_notes: int) -> list[tuple[str, str | None]]:
    """The cue texts stage 2 asks an item with (one per note for notes), each with the option it names."""
    if cue.uses_notes:
        return [(cue.text(note=note), None) for note in stages.notes_for(row, stage1_correct, max_notes)]
    if cue.names_answer:
        hinted = stages.hinted_answer(row, stage1_correct)
        return [(cue.text(answer=hinted), hinted)]
    return [(cue.text(), None)]


def stage2_request(
    key: str, row: Mapping[str, Any], image: Image.Image, prompts: PromptFormat, cue_text: str, stage1: Exchange | None
) -> Request:
    """Stage 2 as a fresh request with the cue in the prompt, or (``stage1`` given) as the conversation's next turn."""
    if stage1 is None:
        return Request(key, image, render(row, prompts, cue_text), _options(row))
    return Request(key, image, followup(cue_text, item_kind(row, prompts)), _options(row), history=(stage1,))


def run_batch(
    rows: Sequence[Mapping[str, Any]],
    images: Sequence[tuple[Image.Image, str]],
    backend: Backend,
    config: RunConfig,
) -> list[ItemPrediction]:
    """Both stages for a batch of items; each item's decoded image serves both stages.

    Each stage's requests go to the backend in one call, which batches them
    by its own batch size (a local model sorts them by length first). With
    ``--dialogue multi`` stage 2 continues the conversation of the item's
    first stage-1 sample, its reply verbatim.
    """
    prompts = config.preset().prompts[setting_of(config.config)]
    cue = config.cue_spec()
    stage1_requests = [
        Request(f"{row['id']}/stage1/{sample}", image, render(row, prompts), _options(row))
        for row, (image, _) in zip(rows, images)
        for sample in range(config.num_samples)
    ]
    stage1 = backend.generate(stage1_requests)
    records: list[ItemPrediction] = []
    stage2_requests: list[Request] = []
    asked: list[list[tuple[str, str | None]]] = []
    for position, (row, (image, group_id)) in enumerate(zip(rows, images)):
        samples = stage1[position * config.num_samples : (position + 1) * config.num_samples]
        answers = [_answer(generation, "", row) for generation in samples]
        record = item_record(row, group_id, answers)
        records.append(record)
        cues: list[tuple[str, str | None]] = []
        if record.error is None and config.stages == 2:
            cues = stage2_cues(cue, row, stages.is_correct(record.original_prediction, row), config.notes)
        asked.append(cues)
        first = stage1_requests[position * config.num_samples]
        stage1_turn = Exchange(first.prompt, samples[0].text) if config.dialogue == "multi" else None
        for number, (text, _) in enumerate(cues):
            stage2_requests.append(stage2_request(f"{row['id']}/stage2/{number}", row, image, prompts, text, stage1_turn))
    stage2 = iter(backend.generate(stage2_requests) if stage2_requests else [])
    for record, row, cues in zip(records, rows, asked):
        record.stage2 = [_answer(next(stage2), text.strip(), row, hinted) for text, hinted in cues]
        if record.error is not None:
            continue
        record.error = next((a.error for a in record.stage2 if a.error), None)
        settle(record, row, implicit=cue.uses_notes)
    return records


def settle(record: ItemPrediction, row: Mapping[str, Any], *, implicit: bool) -> None:
    """Set the stage-2 answer (and, implicit, the flipping note) from the stages' parsed answers.

    A stage-1-only run (``--stages 1``) asks no stage 2: its answer stays the stage-1 answer.
    """
    if not record.stage2:
        record.prediction, record.flipped_by_note = record.original_prediction, None
        return
    correct = stages.is_correct(record.original_prediction, row)
    record.prediction, record.flipped_by_note = stages.combine_note_answers(row, correct, [a.parsed for a in record.stage2])
    if not implicit:
        record.flipped_by_note = None


def run(config: RunConfig, backend: Backend | None = None, dataset: datasets.Dataset | None = None) -> dict[str, Any]:
    """Evaluate a model on MUB; writes the run folder and returns the results document.

    Under torchrun / accelerate launch, each process evaluates its share of
    the items and rank 0 scores them all (see :mod:`mub.runs.distributed`).
    """
    config.validate()
    placement = distributed.placement_for(config)
    selection = select_items(config, dataset)
    with RunFolder(config.out_dir(), predictions_file=placement.predictions_file) as folder:
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
            try:
                with ThreadPoolExecutor(max_workers=1) as pool, tqdm(
                    total=len(todo), unit="item", desc=f"mub {config.config}", disable=not config.progress
                ) as progress:
                    pending = pool.submit(load_images, selection.dataset, [todo[i][0] for i in groups[0]]) if groups else None
                    for number, group in enumerate(groups):
                        images = pending.result()
                        if number + 1 < len(groups):
                            pending = pool.submit(load_images, selection.dataset, [todo[i][0] for i in groups[number + 1]])
                        folder.append(predict_group([todo[i][1] for i in group], images, backend, config))
                        progress.update(len(group))
            except KeyboardInterrupt:
                # Finished groups are on disk (appended and synced); the group in flight is redone by --resume.
                saved = folder.load_predictions()
                mine_ids = [row["id"] for _, row in mine]
                raise RunInterrupted(sum(1 for i in mine_ids if i in saved and saved[i].error is None), len(mine_ids)) from None

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
    return results
