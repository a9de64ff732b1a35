"""The two-stage MUB run: dataset -> prompts -> backend -> parsed answers -> predictions.

``run(RunConfig(model=...))`` is the Python API behind ``mub run``; it returns
the same document it writes to ``results.json``.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping, Sequence

import datasets
from PIL import Image
from tqdm.auto import tqdm

import mub_dataset
from mub.backends import Backend, check_installed, create_backend, run_decoding
from mub.backends.base import Exchange, Generation, Request
from mub.backends.common import chunks
from mub.config import RunConfig
from mub.errors import RunInterrupted
from mub.protocol import stages
from mub.protocol.cues import Cue, followup
from mub.protocol.pressure import Pressure, count_flips, turn_of_flip
from mub.protocol.parsing import option_labels, parse_answer
from mub.protocol.presets import DRAW_COPIES, PromptFormat, draws_of, level_of, setting_of
from mub.protocol.prompts import item_kind, render
from mub.protocol.typographic import CueDoesNotFit, cue_in_prompt, png_bytes, render_cue, style_of
from mub.runs import distributed
from mub.runs.predictions import DrawKey, ItemPrediction, StageAnswer, draw_name
from mub.runs.results import build_results
from mub.runs.storage import RunFolder, RunFolderError
from mub_dataset.features import IMAGE_HASH_COLUMN
from mub_dataset.files import NotARegularFileError, cell_bytes, image_digest, image_sha256
from mub_dataset.fingerprint import ItemDigests, field_digests, items_fingerprint
from mub_dataset.limits import MAX_PIXELS, ImageTooLargeError, item_problem, open_image


@dataclass
class Selection:
    """The items a run covers: metadata rows, the dataset they index (images undecoded) and each item's draws."""

    dataset: datasets.Dataset
    indices: list[int]
    rows: list[dict[str, Any]]
    info: dict[str, Any]
    digests: ItemDigests  # per item and field, recorded in the run folder to name what changed
    draws: list[int]  # per row: how many times the run draws it (0: the setting's release file lacks it)

    def draw_keys(self) -> list[DrawKey]:
        """Every draw the run makes, item by item, in selection order."""
        return [(row["id"], draw) for row, count in zip(self.rows, self.draws) for draw in range(count)]


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
    if IMAGE_HASH_COLUMN not in dataset.column_names:
        # Built before the column existed (an older export or Hub copy): hash the images here, one at a time.
        hashes = [image_sha256(cell_bytes(row["image"])) for row in dataset.select_columns(["image"])]
        dataset = dataset.add_column(IMAGE_HASH_COLUMN, hashes)
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
    draws = _draws(config, rows)
    if not any(draws):
        raise ValueError(
            f"none of the {len(rows)} selected items of dataset {config.dataset} (config {config.config}) has a copy in "
            f"the release file the authors' {setting_of(config.config)} script reads, so --draws {DRAW_COPIES} draws "
            "nothing; select other items, or pass --draws once"
        )
    info = {
        "name": str(config.dataset),
        "config": config.config,
        "n_items": len(rows),
        "n_draws": sum(draws),
        "items_without_copies": draws.count(0),
        "fingerprint": items_fingerprint(rows),
    }
    return Selection(dataset, indices, rows, info, field_digests(rows), draws)


def _draws(config: RunConfig, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Each item's number of draws under the run's draw mode (``--draws``)."""
    setting, mode = setting_of(config.config), config.draw_mode()
    try:
        return [draws_of(row, setting, mode) for row in rows]
    except KeyError as exc:
        raise ValueError(
            f"dataset {config.dataset} has no {exc.args[0]!r} column (built before mub recorded release copies), "
            f"which --draws {DRAW_COPIES} needs; rebuild it with `mub build`, or pass --draws once"
        ) from None


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
    """An item's decoded RGB image, its file's bytes and content hash (the ``group_id``), or why it could not be decoded."""

    image: Image.Image | None
    group_id: str
    error: str | None = None
    data: bytes | None = field(default=None, repr=False)  # the file as stored: what an API is sent


def load_images(dataset: datasets.Dataset, indices: Sequence[int], max_pixels: int = MAX_PIXELS) -> list[LoadedImage]:
    """The items' images, fully decoded; one that cannot be read (not a regular file, too large) or decoded
    (truncated, not an image, over ``max_pixels``, found before decoding) carries the reason."""
    loaded = []
    for index, cell in zip(indices, dataset.select_columns(["image"])[list(indices)]["image"]):
        where = cell.get("path") or "embedded"
        try:
            data = cell_bytes(cell)
        except OSError as exc:  # missing, no permission; no bytes, so no content hash for its group_id
            loaded.append(LoadedImage(None, "", f"the image ({where}) cannot be read ({exc.strerror or exc})"))
            continue
        except NotARegularFileError as exc:  # a FIFO, device or folder, or over MAX_IMAGE_BYTES: named in the message
            loaded.append(LoadedImage(None, "", str(exc)))
            continue
        try:
            with open_image(data, max_pixels) as image:
                image.load()
                loaded.append(LoadedImage(image.convert("RGB"), image_digest(data), data=data))
        except ImageTooLargeError as exc:
            loaded.append(LoadedImage(None, image_digest(data), f"the image ({where}) is not decoded: {exc} (or raise --max-pixels)"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # what Pillow raises for bad data
            error = f"the image ({where}) cannot be decoded ({type(exc).__name__}: {exc})"
            loaded.append(LoadedImage(None, image_digest(data), error))
    return loaded


def item_record(row: Mapping[str, Any], group_id: str, stage1: list[StageAnswer], draw: int = 0) -> ItemPrediction:
    """A draw's record after stage 1; its error is the first failed answer's."""
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
        draw=draw,
    )


def item_error_record(row: Mapping[str, Any], group_id: str, error: str, draw: int = 0) -> ItemPrediction:
    """The record of a draw that cannot be asked (its image, its text): an item error, retried by ``--resume``."""
    return item_record(row, group_id, [StageAnswer(cue="", output="", parsed=None, error=f"item {row['id']}: {error}")], draw)


def item_error(row: Mapping[str, Any], loaded: LoadedImage) -> str | None:
    """Why the item cannot be asked, or None: its image (unreadable, too large) or its text (see item_problem)."""
    if loaded.error is not None:
        return f"{loaded.error}; fix or replace the image in the dataset"
    problem = item_problem(row)
    return None if problem is None else f"{problem} in the dataset"


def predict_group(
    rows: Sequence[Mapping[str, Any]],
    images: Sequence[LoadedImage],
    backend: Backend,
    config: RunConfig,
    draws: Sequence[Sequence[int]] | None = None,
) -> list[ItemPrediction]:
    """:func:`run_batch` for the draws (``draws[i]``: row i's, default its first) of the items that can be asked,
    an item error for each draw of every other one; item by item, draws in the order given."""
    draws = draws if draws is not None else [[0]] * len(rows)
    units = [
        (row, loaded, draw, error)
        for row, loaded, wanted in zip(rows, images, draws)
        for error in [item_error(row, loaded)]
        for draw in wanted
    ]
    asked = [(row, loaded, draw) for row, loaded, draw, error in units if error is None]
    answered = iter(
        run_batch(
            [row for row, _, _ in asked],
            [(loaded.image, loaded.group_id, loaded.data) for _, loaded, _ in asked],
            backend,
            config,
            [draw for _, _, draw in asked],
        )
        if asked
        else []
    )
    return [
        next(answered) if error is None else item_error_record(row, loaded.group_id, error, draw)
        for row, loaded, draw, error in units
    ]


def stage_answer(generation: Generation, cue: str, row: Mapping[str, Any], hinted: str | None = None) -> StageAnswer:
    """One model call's record: its output read by mub's parser (``None`` after a failed call, never a guess)."""
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


def answer_options(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The labels a valid answer to ``row`` can take (its option letters, or Yes and No)."""
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
    key: str, row: Mapping[str, Any], image: Image.Image, prompts: PromptFormat, cue_text: str, stage1: Exchange | None,
    image_bytes: bytes | None = None, drawn: Image.Image | None = None, drawn_bytes: bytes | None = None,
    earlier: tuple[Exchange, ...] = (),
) -> Request:
    """Stage 2 as a fresh request with the cue in the prompt, or (``stage1`` given) as the conversation's next turn,
    after the ``earlier`` stage-2 exchanges (``--pressure``'s turns so far).

    ``drawn`` (``--cue typographic``, with its PNG bytes) is the image with the cue drawn in: a fresh request shows
    it instead of ``image``; a conversation replays stage 1 with ``image`` and shows it in the follow-up turn.
    """
    if stage1 is None:
        if drawn is not None:
            image, image_bytes = drawn, drawn_bytes
        return Request(key, image, render(row, prompts, cue_text), answer_options(row), image_bytes=image_bytes)
    return Request(
        key, image, followup(cue_text, item_kind(row, prompts)), answer_options(row), history=(stage1, *earlier),
        image_bytes=image_bytes, last_image=drawn, last_image_bytes=drawn_bytes,
    )


def run_batch(
    rows: Sequence[Mapping[str, Any]],
    images: Sequence[tuple[Image.Image, str, bytes | None]],
    backend: Backend,
    config: RunConfig,
    draws: Sequence[int] | None = None,
) -> list[ItemPrediction]:
    """Both stages for a batch of draws (``rows[i]`` drawn as draw ``draws[i]``, default 0); each decoded
    image (and its file's bytes) serves both stages.

    Every draw is its own stage-1 request and its own stage 2, built from that
    draw's stage-1 answer; request keys start with :func:`draw_name` (the item id
    for draw 0, as before draws existed, ``<id>/d<k>`` after), so each draw has
    its own sampling seed and a single-draw run keeps its seeds.

    Each stage's requests go to the backend in one call, which batches them
    by its own batch size (a local model sorts them by length first). With
    ``--dialogue multi`` stage 2 continues the conversation of the item's
    first stage-1 sample, its reply verbatim.
    """
    prompts = config.preset().prompts[setting_of(config.config)]
    cue = config.cue_spec()
    pressure = config.pressure_spec()
    draws = draws if draws is not None else [0] * len(rows)
    prefixes = [draw_name((row["id"], draw)) for row, draw in zip(rows, draws)]
    stage1_requests = [
        Request(f"{prefix}/stage1/{sample}", image, render(row, prompts), answer_options(row), image_bytes=data)
        for row, prefix, (image, _, data) in zip(rows, prefixes, images)
        for sample in range(config.num_samples)
    ]
    stage1 = backend.generate(stage1_requests)
    # --cue typographic: stage 2 shows the image with the cue drawn in (multi: in the follow-up turn, after stage 1
    # replayed with the item's own image); the prompt holds the cue only under --cue-both.
    drawn = config.typographic()
    style, with_text = style_of(drawn), cue_in_prompt(drawn)
    records: list[ItemPrediction] = []
    stage2_requests: list[Request] = []
    asked: list[list[tuple[str, str | None]]] = []
    stage1_turns: list[Exchange | None] = []
    for position, (row, draw, prefix, (image, group_id, data)) in enumerate(zip(rows, draws, prefixes, images)):
        samples = stage1[position * config.num_samples : (position + 1) * config.num_samples]
        answers = [stage_answer(generation, "", row) for generation in samples]
        record = item_record(row, group_id, answers, draw)
        records.append(record)
        cues: list[tuple[str, str | None]] = []
        if record.error is None and config.stages == 2 and pressure is None:
            cues = stage2_cues(cue, row, stages.is_correct(record.original_prediction, row), config.notes)
        drawn_image, drawn_bytes = None, None
        if style is not None and cues:  # one cue: the named option's sentence
            try:
                drawn_image = render_cue(image, cues[0][0].strip(), style)
                drawn_bytes = png_bytes(drawn_image)
            except CueDoesNotFit as exc:  # an item error, never a cut-off cue
                record.error, cues = f"item {row['id']}: {exc}", []
        asked.append(cues)
        first = stage1_requests[position * config.num_samples]
        stage1_turn = Exchange(first.prompt, samples[0].text) if config.dialogue == "multi" else None
        stage1_turns.append(stage1_turn)
        for number, (text, _) in enumerate(cues):
            stage2_requests.append(
                stage2_request(
                    f"{prefix}/stage2/{number}", row, image, prompts, text if with_text else "", stage1_turn, data,
                    drawn_image, drawn_bytes,
                )
            )
    if pressure is not None:
        press(pressure, records, rows, images, prefixes, stage1_turns, backend, prompts)
        return records
    stage2 = iter(backend.generate(stage2_requests) if stage2_requests else [])
    for record, row, cues in zip(records, rows, asked):
        record.stage2 = [stage_answer(next(stage2), text.strip(), row, hinted) for text, hinted in cues]
        if record.error is not None:
            continue
        record.error = next((a.error for a in record.stage2 if a.error), None)
        settle(record, row, implicit=cue.uses_notes)
    return records


def pressure_request(
    pressure: Pressure, turn: int, prefix: str, row: Mapping[str, Any], image: Image.Image, prompts: PromptFormat,
    stage1_correct: bool, stage1: Exchange | None, earlier: Sequence[Exchange], image_bytes: bytes | None = None,
) -> tuple[Request, str, str | None]:
    """Turn ``turn`` (1-based) of ``--pressure``: its request after the ``earlier`` turns, its push and the option
    that names (the hint's: misleading after a correct stage 1, true after a wrong one)."""
    text, hinted = pressure.text(turn, stages.hinted_answer(row, stage1_correct))
    key = f"{prefix}/stage2/{turn - 1}"  # turn 1's key is the one-cue stage 2's: the same sampling seed
    return stage2_request(key, row, image, prompts, text, stage1, image_bytes, earlier=tuple(earlier)), text, hinted


def recorded_pressure_requests(
    recorded: Mapping[str, Any], row: Mapping[str, Any], prompts: PromptFormat, stage1_correct: bool,
    stage1: Exchange | None, answers: Sequence[StageAnswer],
) -> list[tuple[Request, str, str | None]]:
    """The requests of a recorded ``--pressure`` draw's turns (run.json's ``"pressure"``, its stage-2 answers),
    rebuilt as :func:`press` sent them, without the image (``mub view``)."""
    pressure = Pressure(int(recorded["turns"]), tuple(recorded["templates"]))
    earlier: list[Exchange] = []
    asked = []
    for turn, answer in enumerate(answers, 1):
        request, text, hinted = pressure_request(pressure, turn, str(row["id"]), row, None, prompts, stage1_correct, stage1, earlier)  # type: ignore[arg-type]
        asked.append((request, text, hinted))
        earlier.append(Exchange(request.prompt, answer.output))
    return asked


def press(
    pressure: Pressure,
    records: Sequence[ItemPrediction],
    rows: Sequence[Mapping[str, Any]],
    images: Sequence[tuple[Image.Image, str, bytes | None]],
    prefixes: Sequence[str],
    stage1_turns: Sequence[Exchange | None],
    backend: Backend,
    prompts: PromptFormat,
) -> None:
    """``--pressure``: push every asked draw through all N turns, all draws' turn k in one backend call (a draw
    stops only at an error); each turn continues the conversation with the model's replies verbatim. Scoring
    stops at the first flip (:func:`settle`); the flips count the answer changes of the whole conversation."""
    pushed = [i for i, record in enumerate(records) if record.error is None]
    earlier: dict[int, list[Exchange]] = {i: [] for i in pushed}
    for turn in range(1, pressure.turns + 1):
        asked = []
        for i in pushed:
            row, (image, _, data) = rows[i], images[i]
            correct = stages.is_correct(records[i].original_prediction, row)
            request, text, hinted = pressure_request(pressure, turn, prefixes[i], row, image, prompts, correct, stage1_turns[i], earlier[i], data)
            asked.append((i, request, text, hinted))
        generations = backend.generate([request for _, request, _, _ in asked]) if asked else []
        pushed = []
        for (i, request, text, hinted), generation in zip(asked, generations):
            record, row = records[i], rows[i]
            answer = stage_answer(generation, text, row, hinted)
            record.stage2.append(answer)
            earlier[i].append(Exchange(request.prompt, generation.text))
            if answer.error is not None:
                record.error = answer.error  # the draw is redone whole by --resume
            else:
                pushed.append(i)
    for record, row in zip(records, rows):
        if record.error is None:
            settle(record, row, implicit=False, pressure=True)


def settle(record: ItemPrediction, row: Mapping[str, Any], *, implicit: bool, pressure: bool = False) -> None:
    """Set the stage-2 answer (and, implicit, the flipping note; ``pressure``, the turn of flip and the flips)
    from the stages' parsed answers.

    A stage-1-only run (``--stages 1``) asks no stage 2: its answer stays the stage-1 answer. Under pressure
    the answer is the one at the first flip, else the last turn's; the flips are the changes over every turn.
    """
    if pressure:
        correct = stages.is_correct(record.original_prediction, row)
        turns = [answer.parsed for answer in record.stage2]
        record.turn_of_flip = turn_of_flip(correct, [stages.is_correct(answer, row) for answer in turns])
        record.flips = count_flips(record.original_prediction, turns)
        record.prediction = turns[record.scored_stage2]
        record.flipped_by_note = None
        return
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
    check_installed(config)
    with library_progress_bars(config.progress):
        return _run(config, backend, dataset)


@contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    """Without progress (--quiet, --no-progress) the libraries' bars are off too: transformers' "Loading weights",
    huggingface_hub's downloads, datasets' map; as they were afterwards."""
    if enabled:
        yield
        return
    import huggingface_hub.utils as hub

    was = (hub.are_progress_bars_disabled(), datasets.is_progress_bar_enabled())
    hub.disable_progress_bars()  # transformers imported later starts with the Hub's setting
    datasets.disable_progress_bars()
    transformers_logging = sys.modules.get("transformers.utils.logging")
    transformers_was = transformers_logging.is_progress_bar_enabled() if transformers_logging else None
    if transformers_logging:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was[0]:
            hub.enable_progress_bars()
        if was[1]:
            datasets.enable_progress_bars()
        if transformers_logging and transformers_was:
            transformers_logging.enable_progress_bar()


def _run(config: RunConfig, backend: Backend | None, dataset: datasets.Dataset | None) -> dict[str, Any]:
    placement = distributed.placement_for(config)
    selection = select_items(config, dataset)
    with RunFolder(config.out_dir(), predictions_file=placement.predictions_file, launch_files=placement.launch_files) as folder:
        settings = config.settings(selection.info, run_decoding(config))
        placement.prepare(folder, settings, resume=config.resume, overwrite=config.overwrite, items=selection.digests)
        with placement.working():
            done = {key for key, p in folder.load_predictions().items() if p.error is None}
            mine = placement.share(list(zip(selection.indices, selection.rows, selection.draws)))
            # Each item with the draws it still lacks: a resumed run makes exactly the missing ones.
            todo = [
                (i, row, missing)
                for i, row, count in mine
                if (missing := [draw for draw in range(count) if (row["id"], draw) not in done])
            ]
            if backend is None:
                try:
                    backend = create_backend(placement.backend_config(config))
                except BaseException:
                    folder.discard_if_created()
                    raise

            # Items are processed in groups of batch_size, all their missing draws together (an item's image is
            # decoded once); the next group's images are decoded on a worker thread while the model answers.
            groups = list(chunks(range(len(todo)), config.batch_size))
            try:
                with ThreadPoolExecutor(max_workers=1) as pool, tqdm(
                    total=sum(len(missing) for _, _, missing in todo), unit="draw", desc=f"mub {config.config}",
                    disable=not config.progress,
                ) as progress:
                    pending = pool.submit(load_images, selection.dataset, [todo[i][0] for i in groups[0]], config.max_pixels) if groups else None
                    for number, group in enumerate(groups):
                        images = pending.result()
                        if number + 1 < len(groups):
                            pending = pool.submit(
                                load_images, selection.dataset, [todo[i][0] for i in groups[number + 1]], config.max_pixels
                            )
                        draws = [todo[i][2] for i in group]
                        folder.append(predict_group([todo[i][1] for i in group], images, backend, config, draws))
                        progress.update(sum(map(len, draws)))
            except KeyboardInterrupt:
                # Finished groups are on disk (appended and synced); the group in flight is redone by --resume.
                saved = folder.load_predictions()
                mine_keys = [(row["id"], draw) for _, row, count in mine for draw in range(count)]
                raise RunInterrupted(sum(1 for k in mine_keys if k in saved and saved[k].error is None), len(mine_keys)) from None

        backend_info = backend.describe()
        return placement.finish(folder, lambda: finish_run(config, settings, selection, backend_info, folder))


# What a prediction record stores of its item's references; each must equal the dataset's.
REFERENCE_FIELDS = ("answer", "question_type", "source", "misled_count")


def check_references(folder: RunFolder, rows: Sequence[Mapping[str, Any]]) -> None:
    """Refuse, naming the file and the item, a record whose stored reference is not the dataset's.

    Scores are computed against the dataset: an edited ``answer`` in a predictions
    file must not move them, and must not pass silently either.
    """
    by_id = {row["id"]: row for row in rows}
    for path, record in folder.records():
        row = by_id.get(record.id)
        if row is None:
            continue
        for name in REFERENCE_FIELDS:
            if getattr(record, name) != row[name]:
                raise RunFolderError(
                    f"{path}: item {record.id} records {name} {getattr(record, name)!r}, but the dataset gives "
                    f"{row[name]!r}; runs are scored against the dataset: restore the file as mub wrote it, "
                    "or run again with --overwrite"
                )


def finish_run(
    config: RunConfig,
    settings: Mapping[str, Any],
    selection: Selection,
    backend_info: Mapping[str, Any],
    folder: RunFolder,
) -> dict[str, Any]:
    """Score the folder's predictions of the selected items' draws, in selection order, and write results.json.

    The references come from the dataset: a record whose stored reference differs
    is refused, and each item's level is the one the dataset's misled count gives.
    """
    check_references(folder, selection.rows)
    predictions = folder.load_predictions()
    expected = selection.draw_keys()
    missing = [draw_name(key) for key in expected if key not in predictions]
    if missing:
        # Never score a partial run as if it were complete (e.g. a rank that has not finished).
        raise RunFolderError(
            f"{folder.path}: {len(missing)} of the {len(expected)} draws of the {len(selection.rows)} selected items "
            f"have no prediction (first: {', '.join(missing[:3])}); finish them with --resume before scoring"
        )
    levels = {row["id"]: row["difficulty"] for row in selection.rows}
    ordered = [replace(predictions[key], difficulty=levels[key[0]]) for key in expected]
    results = build_results(config, settings, selection.info, backend_info, ordered)
    folder.write_results(results)
    return results
