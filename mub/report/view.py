"""``mub view``: an item-by-item browser of runs, and ``mub export``: the same records as a table.

Both join a run's records with its dataset by item id, and rebuild what each request
said with the run's own settings (preset, cue, dialogue, notes) through the runner's
request builders: the prompts shown are the ones that were sent (stage 2 as asked after stage 1 as it was read
then, even where ``mub rescore`` reads it otherwise since). A run folder plus its
dataset is all a view needs; the items fingerprint the run recorded is checked against
the dataset's, so a view of a run on changed items is refused.

Verdicts, per draw: ``error`` (a call failed), ``unparsed`` (no answer read at stage
1), ``held`` (correct, then correct), ``flipped`` (correct, then not: the misleading
rate's numerator), ``corrected`` (not correct, then correct) and ``stayed wrong``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import datasets
import PIL
from PIL import Image

import mub_dataset
from mub.backends.base import Exchange, Request
from mub.protocol import stages
from mub.protocol.cues import Cue
from mub.protocol.presets import PromptFormat, level_of, protocol_named, setting_of
from mub.protocol.prompts import render
from mub.protocol.typographic import cue_in_prompt, png_bytes, render_cue, style_of
from mub.report.rows import run_folders
from mub.runs.predictions import ItemPrediction, StageAnswer
from mub.runs.runner import recorded_pressure_requests, stage2_cues, stage2_request
from mub.runs.storage import RunFolder, cue_name, protocol_name
from mub_dataset.files import cell_bytes, image_digest, staged_folder
from mub_dataset.fingerprint import items_fingerprint
from mub_dataset.limits import MAX_PIXELS, open_image

VERDICTS = ("held", "flipped", "corrected", "stayed wrong", "unparsed", "error")
THUMBNAIL_PIXELS = 192  # longest side of a thumbnail
EXPORT_FORMATS = ("csv", "jsonl", "parquet")


@dataclass
class LoadedRun:
    """A finished run folder with the dataset rows it ran on."""

    path: Path
    settings: dict[str, Any]
    predictions: list[ItemPrediction]
    rows: dict[str, dict[str, Any]]  # item id -> dataset row (no image)
    images: dict[str, bytes]  # item id -> the image file's bytes
    label: str

    @property
    def config(self) -> str:
        return str(self.settings.get("config", "explicit"))


def verdict(prediction: ItemPrediction) -> str:
    """What happened to one draw (see the module docstring)."""
    if prediction.error is not None:
        return "error"
    if prediction.original_prediction is None:
        return "unparsed"
    before = stages.same_answer(prediction.original_prediction, prediction.answer)
    after = stages.same_answer(prediction.prediction, prediction.answer)
    return {(True, True): "held", (True, False): "flipped", (False, True): "corrected"}.get((before, after), "stayed wrong")


def load_run(path: str | Path, dataset: datasets.Dataset | None = None) -> LoadedRun:
    """A run folder and its dataset's rows; refused when the dataset's items are not the ones the run answered."""
    folder = RunFolder(path)
    settings = folder.read_settings()
    predictions = list(folder.load_predictions().values())
    config = str(settings.get("config", "explicit"))
    if dataset is None:
        dataset = mub_dataset.load(config, str(settings["dataset"]))
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    rows = dataset.remove_columns("image").to_list()
    by_id = {row["id"]: index for index, row in enumerate(rows)}
    wanted = [p.id for p in predictions]
    missing = [item for item in wanted if item not in by_id]
    if missing:
        raise ValueError(
            f"{folder.path}: item {missing[0]} is not in dataset {settings['dataset']} (config {config}); "
            "view the run with the dataset it ran on"
        )
    indices = sorted({by_id[item] for item in wanted})
    chosen = [rows[i] for i in indices]
    recorded = settings.get("items_fingerprint")
    if recorded is not None and not settings.get("shard") and items_fingerprint(_ordered(rows, chosen, settings)) != recorded:
        raise ValueError(
            f"{folder.path}: dataset {settings['dataset']} holds other items than the run answered (items fingerprint "
            f"differs from the run's {recorded}); view the run with the dataset it ran on"
        )
    cells = dataset.select_columns(["image"])[indices]["image"]
    images = {rows[i]["id"]: cell_bytes(cell) for i, cell in zip(indices, cells)}
    label = str(settings.get("model", folder.path.name))
    return LoadedRun(folder.path, settings, predictions, {row["id"]: row for row in chosen}, images, label)


def _ordered(rows: Sequence[dict], chosen: Sequence[dict], settings: Mapping[str, Any]) -> list[dict]:
    """The rows as the runner fingerprinted them: in dataset order, levelled by the run's preset."""
    levels = protocol_named(str((settings.get("protocol") or {}).get("preset", "paper"))).levels
    return [{**row, "difficulty": level_of(levels, row["misled_count"])} for row in chosen]


def sent(run: LoadedRun, prediction: ItemPrediction) -> dict[str, Any]:
    """What each request of one draw said, rebuilt with the run's settings through the runner's builders."""
    row = run.rows[prediction.id]
    preset = protocol_named(str((run.settings.get("protocol") or {}).get("preset", "paper")))
    prompts = preset.prompts[setting_of(run.config)]
    stage1_prompt = render(row, prompts)
    stage2 = []
    if prediction.error is None or prediction.stage2:
        history = None
        if run.settings.get("dialogue") == "multi":
            history = Exchange(stage1_prompt, prediction.stage1[0].output if prediction.stage1 else "")
        for (request, text, hinted), answer in zip(_stage2_as_sent(run, row, prompts, history, prediction), prediction.stage2):
            stage2.append({"cue": text.strip(), "turns": request.turns(), "hinted": hinted, "output": answer.output,
                           "parsed": answer.parsed, "error": answer.error})  # fmt: skip
    first = prediction.stage1[0] if prediction.stage1 else None
    return {
        "stage1": {"prompt": stage1_prompt, "output": first.output if first else "", "parsed": prediction.original_prediction},
        "stage2": stage2,
    }


def _stage2_as_sent(
    run: LoadedRun, row: Mapping[str, Any], prompts: PromptFormat, history: Exchange | None, prediction: ItemPrediction
) -> list[tuple[Request, str, str | None]]:
    """The stage-2 requests one draw was sent, with their cue texts and named options.

    Stage 2 was built from the stage-1 correctness as it was read when the run asked it; ``mub rescore`` may read
    stage 1 otherwise since. So both correctness values are tried, the current reading first, and the one whose cue
    texts are those each stage-2 answer recorded is kept (the current one when none are recorded)."""
    current = stages.is_correct(prediction.original_prediction, row)
    recorded = [answer.cue.strip() for answer in prediction.stage2]
    as_read = _stage2_requests(run, row, prompts, current, history, prediction.stage2)
    if [text.strip() for _, text, _ in as_read] == recorded:
        return as_read
    as_asked = _stage2_requests(run, row, prompts, not current, history, prediction.stage2)  # only after a rescore
    return as_asked if [text.strip() for _, text, _ in as_asked] == recorded else as_read


def _stage2_requests(
    run: LoadedRun, row: Mapping[str, Any], prompts: PromptFormat, stage1_correct: bool, history: Exchange | None,
    answers: Sequence[StageAnswer],
) -> list[tuple[Request, str, str | None]]:
    """The stage-2 requests the runner builds after a stage 1 read as ``stage1_correct``, one per recorded answer."""
    if run.settings.get("pressure"):  # --pressure: one request per turn asked, each after the turns before it
        return recorded_pressure_requests(run.settings["pressure"], row, prompts, stage1_correct, history, answers)
    cue = Cue(cue_name(run.settings), (run.settings.get("cue") or {}).get("template", ""))
    with_text = cue_in_prompt(run.settings.get("typographic"))
    cues = stage2_cues(cue, row, stage1_correct, int(run.settings.get("notes", 5)))
    return [
        (stage2_request(f"{row['id']}/stage2/{number}", row, None, prompts, text if with_text else "", history), text, hinted)  # type: ignore[arg-type]
        for number, ((text, hinted), _) in enumerate(zip(cues, answers))
    ]


def export_rows(run: LoadedRun) -> Iterable[dict[str, Any]]:
    """One row per item and draw: the item, both stages as sent and answered, the verdict and the error."""
    for prediction in run.predictions:
        row = run.rows[prediction.id]
        requests = sent(run, prediction)
        yield {
            "run": str(run.path),
            "model": run.label,
            "config": run.config,
            "id": prediction.id,
            "draw": getattr(prediction, "draw", 0),
            "source": row["source"],
            "level": prediction.difficulty,
            "misled_count": row["misled_count"],
            "question": row["question"],
            "options": json.dumps(list(row["choices"]), ensure_ascii=False),
            "answer": row["answer"],
            "misleading_answer": row["misleading_answer"],
            "stage1_prompt": requests["stage1"]["prompt"],
            "stage1_output": requests["stage1"]["output"],
            "stage1_answer": prediction.original_prediction,
            "cues": json.dumps([s["cue"] for s in requests["stage2"]], ensure_ascii=False),
            "stage2_prompts": json.dumps([s["turns"][-1][1] for s in requests["stage2"]], ensure_ascii=False),
            "hinted": json.dumps([s["hinted"] for s in requests["stage2"]]),
            "stage2_outputs": json.dumps([s["output"] for s in requests["stage2"]], ensure_ascii=False),
            "stage2_answers": json.dumps([s["parsed"] for s in requests["stage2"]]),
            "stage2_answer": prediction.prediction,
            "flipped_by_note": prediction.flipped_by_note,
            "verdict": verdict(prediction),
            "error": prediction.error,
        }


def export_run(path: str | Path, out: str | Path, fmt: str) -> int:
    """Write ``mub export``'s table; returns the rows written. Written beside, then moved: never a partial file."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown --format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.exists():
        raise ValueError(f"--out {out} exists; mub export never replaces a file: choose a new name")
    rows = list(export_rows(load_run(path)))
    partial = out.with_name(f".{out.name}.partial")
    if fmt == "jsonl":
        partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "csv":
        import csv

        with partial.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["id"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(partial))
    partial.replace(out)
    return len(rows)


# ------------------------------------------------------------------ the page


class Strings:
    """A table of distinct texts: the page refers to each by its index (prompts and answers repeat a lot)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, text: str | None) -> int | None:
        if text is None:
            return None
        found = self._index.get(text)
        if found is None:
            found = self._index[text] = len(self.texts)
            self.texts.append(text)
        return found


def thumbnail(data: bytes) -> bytes:
    """A JPEG of at most THUMBNAIL_PIXELS on its longest side."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))  # JPEG: decode at a reduced size
        small = image.convert("RGB")
        small.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def image_extension(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return {"jpeg": "jpg"}.get((image.format or "png").lower(), (image.format or "png").lower())


def drawn_image(run: LoadedRun, item_id: str, cue_text: str) -> bytes | None:
    """A typographic run's stage-2 image as PNG, drawn again from the item's image and the run's recorded style
    (deterministic, so the run folder need not store one image per draw); None for other cues."""
    style = style_of(run.settings.get("typographic"))
    if style is None:
        return None
    with open_image(run.images[item_id], MAX_PIXELS) as image:
        return png_bytes(render_cue(image, cue_text, style))


def write_typographic_example(path: str | Path, out: Path) -> None:
    """The stage-2 image of a typographic run's first draw that asked stage 2, drawn again, as the PNG ``out``
    (the report's example); refused in one line when the run has none."""
    loaded = load_run(path)
    for prediction in loaded.predictions:
        if prediction.error is None and prediction.stage2:
            png = drawn_image(loaded, prediction.id, prediction.stage2[0].cue)
            if png is not None:
                out.write_bytes(png)
                return
    raise ValueError(f"{path}: no draw of this typographic run asked stage 2 without an error; nothing to show")


def cue_label(settings: Mapping[str, Any], config: str) -> str:
    """The run's cue as the page names it; a typographic run says its mode, and the Pillow that drew it if not this one."""
    name = cue_name({**settings, "config": config})
    drawn = settings.get("typographic")
    if drawn is None:
        return name
    redrawn = ""
    if drawn.get("pillow") != PIL.__version__:
        redrawn = f", drawn again with Pillow {PIL.__version__}, the run's {drawn.get('pillow')}"
    return f"{name} ({drawn['mode']}{redrawn})"


def view_data(runs: Sequence[LoadedRun], strings: Strings) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The page's data (texts as indices into ``strings``) and the images it shows, by content hash; a typographic
    run's stage-2 images too."""
    items: dict[str, dict[str, Any]] = {}
    images: dict[str, bytes] = {}
    run_entries = []
    for number, run in enumerate(runs):
        settings = run.settings
        run_entries.append(
            {
                "label": run.label, "path": str(run.path), "config": run.config, "protocol": protocol_name(settings),
                "cue": cue_label(settings, run.config),
                "dialogue": settings.get("dialogue", "single"),
                "stage2_part": "turn" if settings.get("pressure") else "note",  # what each of several stage-2 answers is
            }
        )  # fmt: skip
        for prediction in run.predictions:
            row = run.rows[prediction.id]
            digest = image_digest(run.images[prediction.id])
            images.setdefault(digest, run.images[prediction.id])
            item = items.setdefault(
                prediction.id,
                {
                    "id": prediction.id, "source": row["source"], "level": prediction.difficulty or "none",
                    "misled_count": row["misled_count"], "question": strings(row["question"]),
                    "options": [strings(choice) for choice in row["choices"]], "answer": row["answer"],
                    "image": digest, "runs": {},
                },
            )  # fmt: skip
            requests = sent(run, prediction)
            stage2_images = []
            for s in requests["stage2"]:
                png = drawn_image(run, prediction.id, s["cue"])
                stage2_images.append(None if png is None else image_digest(png))
                if png is not None:
                    images.setdefault(stage2_images[-1], png)
            item["runs"].setdefault(str(number), []).append(
                {
                    "draw": getattr(prediction, "draw", 0),
                    "verdict": verdict(prediction),
                    "error": strings(prediction.error),
                    "s1": [strings(requests["stage1"]["prompt"]), strings(requests["stage1"]["output"]),
                           requests["stage1"]["parsed"]],
                    "s2": [
                        [[strings(text) for _, text in s["turns"]], s["hinted"], strings(s["output"]), s["parsed"], drawn]
                        for s, drawn in zip(requests["stage2"], stage2_images)
                    ],
                    "final": prediction.prediction,
                }
            )  # fmt: skip
    data = {"runs": run_entries, "items": list(items.values()), "verdicts": list(VERDICTS)}
    return data, images


def write_view(run_dirs: Sequence[str | Path], out: str | Path, *, overwrite: bool = False) -> Path:
    """``index.html``, ``data.js``, thumbnails and images: a page that opens from disk, no server needed."""
    return write_view_of([load_run(path) for path in run_folders(run_dirs)], out, overwrite=overwrite)


def write_view_of(runs: Sequence[LoadedRun], out: str | Path, *, overwrite: bool = False) -> Path:
    """:func:`write_view` for runs already loaded."""
    strings = Strings()
    data, images = view_data(runs, strings)
    data["strings"] = strings.texts
    with staged_folder(out, "view", overwrite=overwrite) as staging:
        (staging / "thumbs").mkdir()
        (staging / "images").mkdir()
        for digest, content in images.items():
            (staging / "thumbs" / f"{digest}.jpg").write_bytes(thumbnail(content))
            (staging / "images" / f"{digest}.{image_extension(content)}").write_bytes(content)
        data["image_files"] = {digest: f"images/{digest}.{image_extension(content)}" for digest, content in images.items()}
        # JSON in a script of its own, loaded by <script src>: a page opened from disk may not fetch() files.
        # ensure_ascii and escaped "<": no text of the data can end the script or open a tag.
        payload = json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")
        (staging / "data.js").write_text(f"window.MUB_VIEW_DATA = {payload};\n", encoding="utf-8")
        (staging / "index.html").write_text(page_html(), encoding="utf-8")
    return Path(out)


def page_html() -> str:
    from mub.report.view_page import PAGE

    return PAGE
