"""``mub rescore``: read a finished run's raw outputs again, with the authors' reading or mub's parser.

No model is asked anything: each stage's recorded output is parsed again, the
stage-2 answer (and the flipping note) settled again, and the run scored into
a new folder whose ``run.json`` records the parser. ``mub report`` over both
folders compares them item by item.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

from mub.protocol.parsing import parse_answer
from mub.protocol.reference_reading import reference_answer
from mub.runs.merge import config_from_settings
from mub.runs.predictions import ItemPrediction, StageAnswer
from mub.runs.runner import finish_run, select_items, settle
from mub.runs.storage import RUN_SETTINGS_FIELDS, RunFolder

Reader = Callable[[str, Mapping[str, Any]], "str | None"]
READERS: dict[str, Reader] = {
    "mub": lambda output, row: parse_answer(output, row["choices"], row["question_type"]),
    "reference": reference_answer,
}


def reader_named(name: str) -> Reader:
    try:
        return READERS[name]
    except KeyError:
        raise ValueError(f"unknown --parser {name!r}; choose one of {', '.join(READERS)}") from None


def reread(prediction: ItemPrediction, row: Mapping[str, Any], read: Reader, *, implicit: bool) -> ItemPrediction:
    """The prediction with every stage's output parsed by ``read`` and stage 2 settled again."""

    def again(answer: StageAnswer) -> StageAnswer:
        return replace(answer, parsed=None if answer.error else read(answer.output, row))

    record = replace(prediction, stage1=[again(a) for a in prediction.stage1], stage2=[again(a) for a in prediction.stage2])
    record.original_prediction = record.stage1[0].parsed if record.stage1 else None
    if record.error is None:
        settle(record, row, implicit=implicit)
    return record


def rescore_run(run_dir: str | Path, parser: str, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write ``out``: the run in ``run_dir`` scored with ``parser``; returns its results document."""
    read = reader_named(parser)
    source = RunFolder(run_dir)
    if not source.results_path.is_file():
        raise ValueError(f"{source.path} is not a finished run (no results.json); finish it with mub run ... --resume")
    settings = source.read_settings(RUN_SETTINGS_FIELDS)
    if settings.get("shard"):
        raise ValueError(f"{source.path} is one shard of a run; rescore the merged run (mub merge) instead")
    if Path(out).resolve() == source.path.resolve():
        raise ValueError(f"--out {out} is the run being rescored; choose another folder")
    config = replace(config_from_settings(settings, out), progress=progress)
    selection = select_items(config)
    rows = {row["id"]: row for row in selection.rows}
    predictions = source.load_predictions()
    missing = [item_id for item_id in rows if item_id not in predictions]
    if missing:  # refused before --out is touched: rescoring must not leave a half-written run there
        raise ValueError(
            f"{source.path} lacks predictions for {len(missing)} of {len(rows)} items (first: {', '.join(missing[:3])}), "
            "so it is not a complete run; finish it in its own folder (the same `mub run` command with --resume), "
            "then rescore it"
        )
    implicit = config.cue_spec().uses_notes  # flipped_by_note is recorded only for notes
    rescored = [reread(predictions[item_id], rows[item_id], read, implicit=implicit) for item_id in rows if item_id in predictions]
    new_settings = {**settings, "parser": parser, "rescored_from": str(source.path)}
    folder = RunFolder(out)
    folder.prepare(new_settings, resume=False, overwrite=overwrite)
    folder.append(rescored)
    backend_info = source.read_results().get("run", {}).get("backend_info", {})
    return finish_run(config, new_settings, selection, backend_info, folder)
