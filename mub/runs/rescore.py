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
from mub.protocol.presets import setting_of
from mub.protocol.reference_reading import reference_answer
from mub.runs.merge import config_from_settings
from mub.runs.predictions import ItemPrediction, StageAnswer, draw_name
from mub.runs.runner import check_references, finish_run, select_items, settle
from mub.runs.storage import RUN_SETTINGS_FIELDS, RunFolder

# (output, row, implicit) -> the answer read; implicit: the run is an implicit one (the authors' A-H reader)
Reader = Callable[[str, Mapping[str, Any], bool], "str | None"]
READERS: dict[str, Reader] = {
    "mub": lambda output, row, implicit: parse_answer(output, row["choices"], row["question_type"]),
    "reference": lambda output, row, implicit: reference_answer(output, row, implicit=implicit),
}


def reader_named(name: str) -> Reader:
    try:
        return READERS[name]
    except KeyError:
        raise ValueError(f"unknown --parser {name!r}; choose one of {', '.join(READERS)}") from None


def reread(
    prediction: ItemPrediction, row: Mapping[str, Any], read: Callable[[str, Mapping[str, Any]], "str | None"], *, implicit: bool
) -> ItemPrediction:
    """The prediction with every stage's output parsed by ``read`` and stage 2 settled again."""

    def again(answer: StageAnswer) -> StageAnswer:
        return replace(answer, parsed=None if answer.error else read(answer.output, row))

    record = replace(prediction, stage1=[again(a) for a in prediction.stage1], stage2=[again(a) for a in prediction.stage2])
    record.original_prediction = record.stage1[0].parsed if record.stage1 else None
    if record.error is None:
        settle(record, row, implicit=implicit, pressure=prediction.flips is not None)
    return record


def rescore_run(run_dir: str | Path, parser: str, out: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write ``out``: the run in ``run_dir`` scored with ``parser``; returns its results document."""
    reader = reader_named(parser)
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
    if selection.info["fingerprint"] != settings.get("items_fingerprint"):
        source.check_items(selection.digests, "rescore")  # names the first changed item, where items.json exists
        raise ValueError(
            f"cannot rescore {source.path}: the dataset {settings['dataset']!r} gives other items than the run covered "
            "(items fingerprint differs); rescore against the dataset as it was"
        )
    rows = {row["id"]: row for row in selection.rows}
    check_references(source, selection.rows)
    predictions = source.load_predictions()
    expected = selection.draw_keys()
    missing = [draw_name(key) for key in expected if key not in predictions]
    if missing:  # refused before --out is touched: rescoring must not leave a half-written run there
        raise ValueError(
            f"{source.path} lacks predictions for {len(missing)} of its {len(expected)} draws (first: {', '.join(missing[:3])}), "
            "so it is not a complete run; finish it in its own folder (the same `mub run` command with --resume), "
            "then rescore it"
        )
    implicit = config.cue_spec().uses_notes  # flipped_by_note is recorded only for notes
    implicit_setting = setting_of(config.config) == "implicit"  # the implicit scripts read A-H

    def read(output: str, row: Mapping[str, Any]) -> str | None:
        return reader(output, row, implicit_setting)

    rescored = [reread(predictions[key], rows[key[0]], read, implicit=implicit) for key in expected]
    new_settings = {**settings, "parser": parser, "rescored_from": str(source.path)}
    folder = RunFolder(out)
    folder.prepare(new_settings, resume=False, overwrite=overwrite, items=selection.digests)
    folder.append(rescored)
    backend_info = source.read_results().get("run", {}).get("backend_info", {})
    return finish_run(config, new_settings, selection, backend_info, folder)
