"""``mub notes``: generate implicit notes for a dataset's items and write them as a release.

For every item a generator model (any backend of ``mub run``; it sees the
item's image) writes ``k`` misleading notes, steering towards the item's
``misleading_answer`` (the wrong option the explicit hint also names), and
``k`` guiding notes, one of the paper's four strategies each (see
:mod:`mub.extend.note_prompts`). Each note is checked by :mod:`mub.extend.note_validation`;
a rejected note is asked for again, with the reason, up to ``max_attempts``
times. Rejections are kept in ``notes_report.json``.

The output folder is a release folder (see :mod:`mub.extend.release_writer`), so
``mub build --release OUT`` and ``mub_dataset.load("implicit", OUT)`` read it.
Beside the release files it holds the run's own files:

- ``notes_run.json``: the settings; ``--resume`` refuses other settings;
- ``notes.jsonl``: one line per finished item, appended and flushed as each
  group of items finishes, so a kill loses at most the group in flight;
- ``notes_report.json``: summary, and every rejected note with its problems.

An item gets into the implicit files only with at least one note of each
kind, since the implicit protocol shows misleading notes after a correct
first answer and guiding notes after a wrong one.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import datasets
from PIL import Image
from tqdm.auto import tqdm

from mub.backends import Backend, create_backend
from mub.backends.base import Request
from mub.backends.common import chunks
from mub.config import RunConfig
from mub.extend.note_prompts import Templates, load_templates, note_prompt, strategy_for
from mub.extend.note_validation import GUIDING, MISLEADING, clean_note, note_problems
from mub.extend.release_writer import (
    hashed_image_path,
    load_items,
    release_record,
    write_release,
)
from mub.runs.runner import LoadedImage, library_progress_bars, load_images
from mub.runs.storage import RunFolder, RunFolderError, keep_record, write_json_atomic
from mub_dataset.files import cell_bytes
from mub_dataset.loading import SAMPLE, is_release_dir, sample_release_dir
from mub_dataset.release import MAIN_FILE, read_release

SETTINGS_FILE = "notes_run.json"
NOTES_FILE = "notes.jsonl"
REPORT_FILE = "notes_report.json"
KINDS = (MISLEADING, GUIDING)


@dataclass
class NotesConfig:
    """Everything that defines a notes run; the CLI flags map one to one."""

    dataset: str
    out: str
    model: str
    backend: str = "transformers"
    k: int = 5
    max_attempts: int = 3
    templates: str | None = None
    limit: int | None = None
    batch_size: int = 8
    # Notes are sentences, not letters: more tokens than `mub run`'s 16, and
    # sampling by default so that an item's k notes differ.
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    chat_template: str | None = None
    resume: bool = False
    overwrite: bool = False
    backend_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def validate(self) -> None:
        if self.k < 1 or self.max_attempts < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("--k, --max-attempts, --batch-size and --max-new-tokens must be at least 1")

    def run_config(self) -> RunConfig:
        """The generator's settings in the form every backend is built from."""
        return RunConfig(
            model=self.model,
            backend=self.backend,
            batch_size=self.batch_size,
            dtype=self.dtype,
            device=self.device,
            trust_remote_code=self.trust_remote_code,
            chat_template=self.chat_template,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            backend_options=dict(self.backend_options),
            progress=False,
        )

    def settings(self, dataset_info: Mapping[str, Any], templates: Templates) -> dict[str, Any]:
        """What determines the notes; a resumed run must match it exactly."""
        run_settings = self.run_config().settings({"name": self.dataset, "fingerprint": dataset_info["fingerprint"]})
        keep = ("model", "backend", "dataset", "items_fingerprint", "dtype", "chat_template_sha256", "decoding", "trust_remote_code")
        return {
            **{key: run_settings[key] for key in keep},
            "limit": self.limit,
            "notes_per_item": self.k,
            "max_attempts": self.max_attempts,
            "templates": templates.digests(),
        }


@dataclass
class ItemNotes:
    """One line of ``notes.jsonl``: an item's accepted notes and what was rejected on the way."""

    id: str
    misleading_notes: list[str] = field(default_factory=list)
    guiding_notes: list[str] = field(default_factory=list)
    guiding_strategies: list[str] = field(default_factory=list)  # one per guiding note
    rejected: list[dict[str, Any]] = field(default_factory=list)  # kind, slot, attempt, note, problems
    unfilled: list[str] = field(default_factory=list)  # "guiding/3": slots that used up their attempts
    requests: int = 0
    error: str | None = None  # a backend failure: the item is redone by --resume

    @property
    def complete(self) -> bool:
        """Usable by the implicit protocol: notes of both kinds."""
        return self.error is None and bool(self.misleading_notes) and bool(self.guiding_notes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class NotesFolder(RunFolder):
    """The run files of ``mub notes`` inside the output release: settings and appended item notes."""

    def __init__(self, path: str | Path):
        super().__init__(path, predictions_file=NOTES_FILE, command="notes")
        self.settings_path = self.path / SETTINGS_FILE

    def prediction_files(self) -> list[Path]:
        return [self.predictions_path] if self.predictions_path.is_file() else []

    def load_notes(self) -> dict[str, ItemNotes]:
        """Finished items by id; a later line replaces an earlier one unless it failed and the earlier did not."""
        notes: dict[str, ItemNotes] = {}
        if not self.predictions_path.is_file():
            return notes
        for number, line in enumerate(self.predictions_path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = ItemNotes(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as exc:
                raise RunFolderError(f"{self.predictions_path}: line {number} is not a notes record ({exc})") from exc
            keep_record(notes, record)
        return notes

    def append_notes(self, records: Sequence[ItemNotes]) -> None:
        self.append(records)  # type: ignore[arg-type]  # RunFolder.append needs only .to_json()


# ---------------------------------------------------------------- the items


@dataclass
class SourceItems:
    """The items to write notes for: rows, their undecoded images, and their release image paths."""

    dataset: datasets.Dataset
    rows: list[dict[str, Any]]
    new_ids: list[str]
    info: dict[str, Any]
    readme: str  # the source release's README, carried over (it documents e.g. placeholder difficulty)


def _release_root(name: str) -> Path | None:
    if name == SAMPLE:
        return sample_release_dir()
    return Path(name) if is_release_dir(name) else None


def load_source(name: str, limit: int | None = None) -> SourceItems:
    """Every item of ``name`` (anything ``mub_dataset.load`` takes), the first ``limit`` if given.

    Items of a release folder keep their image paths, hence their ids. Items
    of an export or Hub dataset have lost the original paths (the Parquet
    keeps file names only), so their images are stored as
    ``images/<content hash>.<ext>``, which gives them new, stable ids.
    """
    dataset = load_items(name, "--dataset")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    rows = dataset.remove_columns("image").to_list()
    root = _release_root(name)
    if root is not None:
        release = read_release(root)
        base = root.resolve()
        new_ids = [release.image_files[row["id"]].relative_to(base).as_posix() for row in rows]
        readme_path = root / "README.md"
        readme = readme_path.read_text(encoding="utf-8") if readme_path.is_file() else ""
    else:
        new_ids = [hashed_image_path(cell_bytes(cell)) for cell in dataset["image"]]
        readme = ""
    digest = hashlib.sha256()
    for row, new_id in zip(rows, new_ids):
        digest.update(repr((row["id"], new_id, row["answer"], row["misleading_answer"], row["choices"])).encode())
    info = {"name": name, "n_items": len(rows), "fingerprint": digest.hexdigest()[:16]}
    return SourceItems(dataset, rows, new_ids, info, readme)


# ---------------------------------------------------------------- generation


@dataclass(frozen=True)
class Slot:
    """One note to obtain: item position in the group, kind and number."""

    item: int
    kind: str
    number: int


def request_key(item_id: str, slot: Slot, attempt: int) -> str:
    # The attempt is part of the key: backends derive per-request sampling seeds from it.
    return f"{item_id}/notes/{slot.kind}/{slot.number}/attempt{attempt}"


def notes_for_items(
    rows: Sequence[Mapping[str, Any]],
    images: Sequence[Image.Image],
    backend: Backend,
    config: NotesConfig,
    templates: Templates,
) -> list[ItemNotes]:
    """Generate, validate and regenerate the notes of a group of items; one record per item."""
    records = [ItemNotes(id=row["id"]) for row in rows]
    accepted: dict[Slot, str] = {}
    accepted_by_item: list[list[str]] = [[] for _ in rows]  # for the duplicate rule, in acceptance order
    last_rejection: dict[Slot, tuple[list[str], str]] = {}
    pending = [Slot(i, kind, n) for i in range(len(rows)) for kind in KINDS for n in range(config.k)]
    for attempt in range(1, config.max_attempts + 1):
        pending = [slot for slot in pending if records[slot.item].error is None]
        if not pending:
            break
        requests = [
            Request(
                request_key(rows[slot.item]["id"], slot, attempt),
                images[slot.item],
                note_prompt(templates, rows[slot.item], slot.kind, slot.number, config.k, last_rejection.get(slot)),
                (),
            )
            for slot in pending
        ]
        still_pending = []
        for slot, generation in zip(pending, backend.generate(requests)):
            record = records[slot.item]
            record.requests += 1
            if generation.error is not None:
                record.error = record.error or f"{slot.kind} note {slot.number + 1}, attempt {attempt}: {generation.error}"
                continue
            note = clean_note(generation.text)
            problems = note_problems(note, slot.kind, rows[slot.item], accepted_by_item[slot.item])
            if problems:
                record.rejected.append(
                    {"kind": slot.kind, "slot": slot.number, "attempt": attempt, "note": generation.text, "problems": problems}
                )
                last_rejection[slot] = (problems, note or generation.text)
                still_pending.append(slot)
            else:
                accepted[slot] = note
                accepted_by_item[slot.item].append(note)
        pending = still_pending
    for position, (row, record) in enumerate(zip(rows, records)):
        if record.error is not None:
            continue  # notes of a failed item are discarded: --resume redoes the whole item
        record.unfilled = [f"{slot.kind}/{slot.number}" for slot in pending if slot.item == position]
        numbers = range(config.k)
        record.misleading_notes = [accepted[s] for n in numbers if (s := Slot(position, MISLEADING, n)) in accepted]
        guiding = [n for n in numbers if Slot(position, GUIDING, n) in accepted]
        record.guiding_notes = [accepted[Slot(position, GUIDING, n)] for n in guiding]
        record.guiding_strategies = [strategy_for(row["id"], n) for n in guiding]
    return records


def _decoded(loaded: LoadedImage, row: Mapping[str, Any]) -> Image.Image:
    if loaded.image is None:
        raise ValueError(f"item {row['id']}: {loaded.error}; fix or replace the image in the dataset")
    return loaded.image


def _check_out_dir(config: NotesConfig) -> None:
    out = Path(config.out)
    root = _release_root(config.dataset)
    if root is not None and out.resolve() == root.resolve():
        raise ValueError(f"--out {out} is the input release; write the notes to another folder")
    if (out / MAIN_FILE).is_file() and not (out / SETTINGS_FILE).is_file():
        raise ValueError(f"--out {out} holds a release that `mub notes` did not write; choose another folder")


def generate_notes(config: NotesConfig, backend: Backend | None = None) -> dict[str, Any]:
    """Run ``mub notes``: returns the summary also written to ``notes_report.json``."""
    with library_progress_bars(config.progress):
        return _generate_notes(config, backend)


def _generate_notes(config: NotesConfig, backend: Backend | None) -> dict[str, Any]:
    config.validate()
    templates = load_templates(config.templates)
    source = load_source(config.dataset, config.limit)
    settings = config.settings(source.info, templates)
    _check_out_dir(config)
    with NotesFolder(config.out) as folder:
        folder.prepare(settings, resume=config.resume, overwrite=config.overwrite)

        done = {item_id for item_id, record in folder.load_notes().items() if record.error is None}
        todo = [i for i, row in enumerate(source.rows) if row["id"] not in done]
        if todo and backend is None:
            backend = create_backend(config.run_config())
        with tqdm(total=len(todo), unit="item", desc="mub notes", disable=not config.progress) as progress:
            for group in chunks(todo, config.batch_size):
                rows = [source.rows[i] for i in group]
                images = [_decoded(loaded, row) for loaded, row in zip(load_images(source.dataset, group), rows)]
                folder.append_notes(notes_for_items(rows, images, backend, config, templates))
                progress.update(len(group))

        backend_info = backend.describe() if backend is not None else None
        return finish_notes(config, source, folder.load_notes(), settings, templates, backend_info)


# ---------------------------------------------------------------- output


def notes_summary(records: Mapping[str, ItemNotes], n_items: int) -> dict[str, Any]:
    finished = list(records.values())
    return {
        "items": n_items,
        "items_with_notes": sum(r.complete for r in finished),
        "items_lacking_a_kind_of_note": sum(r.error is None and not r.complete for r in finished),
        "items_with_errors": sum(r.error is not None for r in finished),
        "notes": {
            MISLEADING: sum(len(r.misleading_notes) for r in finished),
            GUIDING: sum(len(r.guiding_notes) for r in finished),
        },
        "guiding_strategies": dict(sorted(Counter(s for r in finished for s in r.guiding_strategies).items())),
        "requests": sum(r.requests for r in finished),
        "rejected_notes": sum(len(r.rejected) for r in finished),
        # A note can have several problems: per problem the counts overlap; per set of problems they add up.
        "rejected_by_problem": dict(sorted(Counter(p for r in finished for x in r.rejected for p in x["problems"]).items())),
        "rejected_by_problems": dict(
            sorted(Counter(" + ".join(sorted(x["problems"])) for r in finished for x in r.rejected).items())
        ),
        "unfilled_slots": sum(len(r.unfilled) for r in finished),
    }


def _release_readme(config: NotesConfig, summary: Mapping[str, Any], templates: Templates, source: SourceItems) -> str:
    lines = [
        "# MUB-format release with generated implicit notes",
        "",
        f"Items of `{config.dataset}` with notes written by `mub notes`: generator `{config.model}` "
        f"(backend `{config.backend}`), {config.k} misleading and {config.k} guiding notes asked for per item, "
        f"up to {config.max_attempts} attempts per note.",
        "",
        f"- items: {summary['items']}; with notes of both kinds (the implicit files): {summary['items_with_notes']}",
        f"- notes kept: {summary['notes'][MISLEADING]} misleading, {summary['notes'][GUIDING]} guiding "
        f"(strategies: {', '.join(f'{k} {v}' for k, v in summary['guiding_strategies'].items()) or 'none'})",
        f"- rejected notes: {summary['rejected_notes']}; see `{REPORT_FILE}`",
        "- templates: " + ", ".join(f"`{origin}`" for origin in templates.origins.values()),
        "",
        "`num` (difficulty) and the reference-model fields are carried over from the source unchanged.",
    ]
    if source.readme.strip():
        lines += ["", "## README of the source release", "", source.readme.strip()]
    return "\n".join(lines) + "\n"


def finish_notes(
    config: NotesConfig,
    source: SourceItems,
    records: Mapping[str, ItemNotes],
    settings: Mapping[str, Any],
    templates: Templates,
    backend_info: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Write the release files and the report from every finished item."""
    release_records = []
    for row, new_id in zip(source.rows, source.new_ids):
        record = records.get(row["id"])
        notes = (record.misleading_notes, record.guiding_notes) if record is not None and record.complete else ((), ())
        release_records.append(release_record(row, new_id, *notes))
    summary = notes_summary(records, len(source.rows))

    def images() -> Iterator[tuple[str, bytes]]:
        seen: set[str] = set()
        for index, new_id in enumerate(source.new_ids):
            if new_id not in seen:
                seen.add(new_id)
                yield new_id, cell_bytes(source.dataset[index]["image"])

    write_release(config.out, release_records, images(), _release_readme(config, summary, templates, source))
    reported = [
        {"id": r.id, "rejected": r.rejected, "unfilled": r.unfilled, "error": r.error}
        for r in records.values()
        if r.rejected or r.unfilled or r.error
    ]
    report = {"summary": summary, "settings": dict(settings), "backend": backend_info, "items": reported}
    write_json_atomic(Path(config.out) / REPORT_FILE, report)
    return summary


def format_notes_summary(summary: Mapping[str, Any], out: str | Path) -> str:
    problems = ", ".join(f"{codes} {n}" for codes, n in summary["rejected_by_problems"].items()) or "none"
    lines = [
        f"items: {summary['items']}, with notes of both kinds: {summary['items_with_notes']}, "
        f"lacking a kind: {summary['items_lacking_a_kind_of_note']}, failed (rerun with --resume): {summary['items_with_errors']}",
        f"notes kept: {summary['notes'][MISLEADING]} misleading, {summary['notes'][GUIDING]} guiding; "
        f"requests: {summary['requests']}",
        f"rejected notes: {summary['rejected_notes']} (by their problems: {problems}); "
        f"slots left empty: {summary['unfilled_slots']}",
        f"release written to {out} (details in {Path(out) / REPORT_FILE})",
    ]
    return "\n".join(lines)
