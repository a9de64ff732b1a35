"""``mub merge``: score the shard folders of one run (``mub run --shard I/N``) as one run.

The shards' items are re-derived from the dataset and the run's settings,
exactly as ``mub run`` selects them, so the merge can check that the folders
together hold every draw of every item once (shards split by item, so an
item's draws are in one folder), detect a dataset that changed since a shard
ran, and order the predictions as a single-process run would. The merged
folder (``run.json``, ``predictions.jsonl``, ``results.json``) is then the
folder that single-process run would have written; ``mub run --resume`` on
it only rescores.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from mub.config import RunConfig
from mub.protocol.presets import DRAW_ONCE
from mub.runs.predictions import DrawKey, ItemPrediction, draw_name
from mub.runs.runner import Selection, check_references, finish_run, select_items
from mub.runs.storage import (
    RUN_SETTINGS_FIELDS,
    RunFolder,
    RunFolderError,
    cue_name,
    dialogue_form,
    protocol_name,
    settings_diff,
)

# Settings that legitimately differ between the shards of one run.
PER_SHARD_SETTINGS = ("shard", "items_fingerprint")
# How many item ids a refusal names before it only counts.
SHOWN_IDS = 5


class MergeError(ValueError):
    """Folders that cannot be merged into one run."""


def _read_settings(folder: RunFolder) -> dict[str, Any]:
    if not folder.settings_path.is_file():
        raise MergeError(f"{folder.path} is not a run folder (no {folder.settings_path.name})")
    return folder.read_settings(RUN_SETTINGS_FIELDS)


def _check_same_run(folders: Sequence[RunFolder], settings: Sequence[Mapping[str, Any]]) -> None:
    reference = settings[0]
    for folder, other in zip(folders[1:], settings[1:]):
        differing = settings_diff(reference, other, ignore=PER_SHARD_SETTINGS)
        if differing:
            details = "; ".join(f"{key}: {reference.get(key)!r} vs {other.get(key)!r}" for key in differing)
            raise MergeError(
                f"{folder.path} was run with other settings than {folders[0].path} ({details}); "
                "only the shard may differ between the folders of one run"
            )


def _label(shard: Sequence[int] | None) -> str:
    return "the whole run" if shard is None else f"shard {shard[0]}/{shard[1]}"


def _shown(keys: Sequence[DrawKey]) -> str:
    more = f" and {len(keys) - SHOWN_IDS} more" if len(keys) > SHOWN_IDS else ""
    return ", ".join(map(draw_name, keys[:SHOWN_IDS])) + more


def config_from_settings(settings: Mapping[str, Any], out: str | Path | None) -> RunConfig:
    """The RunConfig fields that select the items and head the results (batch size etc. do not)."""
    return RunConfig(
        model=settings["model"],
        dataset=settings["dataset"],
        config=settings["config"],
        backend=settings["backend"],
        difficulty=settings["difficulty"],
        misled_count=settings["misled_count"],
        limit=settings["limit"],
        protocol=protocol_name(settings),  # the levels and the rates by notes depend on it
        cue=cue_name(settings),  # whether stage 2 tried notes
        dialogue=dialogue_form(settings),
        pressure=(settings.get("pressure") or {}).get("turns"),  # the turns its survival figures run to
        notes=settings.get("notes", RunConfig.notes),
        draws=settings.get("draws", DRAW_ONCE),  # runs made before draws drew each item once
        stages=settings.get("stages", RunConfig.stages),
        out=str(out) if out is not None else None,
        progress=False,
    )


def _check_shard_items(folder: RunFolder, settings: Mapping[str, Any], config: RunConfig, full: Selection) -> list[DrawKey]:
    """The draws this folder must hold; refuses a folder run on other items than the dataset now gives."""
    shard = settings.get("shard")
    selection = full if shard is None else select_items(replace(config, shard=tuple(shard)), full.dataset)
    if selection.info["fingerprint"] != settings.get("items_fingerprint"):
        try:
            folder.check_items(selection.digests, "merge")
        except RunFolderError as exc:
            raise MergeError(str(exc)) from None
        raise MergeError(
            f"{folder.path} ({_label(shard)}) was run on other items than the dataset {settings['dataset']!r} "
            "gives for it now (items fingerprint differs): the dataset changed since; rerun that shard"
        )
    return selection.draw_keys()


def collect(
    folders: Sequence[RunFolder], settings: Sequence[Mapping[str, Any]], config: RunConfig, full: Selection
) -> dict[DrawKey, ItemPrediction]:
    """Every selected draw's record, each from the one folder that holds it."""
    found: dict[DrawKey, ItemPrediction] = {}
    holder: dict[DrawKey, Path] = {}
    missing: list[str] = []
    for folder, folder_settings in zip(folders, settings):
        expected = _check_shard_items(folder, folder_settings, config, full)
        check_references(folder, full.rows)
        records = folder.load_predictions()
        duplicated = [key for key in records if key in found]
        if duplicated:
            raise MergeError(
                f"draws {_shown(duplicated)} are in both {holder[duplicated[0]]} and {folder.path}: "
                "each shard may be given once"
            )
        outside = sorted(set(records) - set(expected))
        if outside:
            raise MergeError(f"{folder.path} holds draws outside its {_label(folder_settings.get('shard'))}: {_shown(outside)}")
        missing_here = [key for key in expected if key not in records]
        if missing_here:
            missing.append(
                f"{folder.path} ({_label(folder_settings.get('shard'))}) lacks {len(missing_here)} of its "
                f"{len(expected)} draws ({_shown(missing_here)}); finish it with mub run ... --resume"
            )
        for key in records:
            holder[key] = folder.path
        found.update(records)
    if missing:
        raise MergeError("; ".join(missing))
    expected_all = full.draw_keys()
    absent = [key for key in expected_all if key not in found]
    if absent:
        shards = sorted({tuple(s["shard"]) for s in settings if s.get("shard")})
        raise MergeError(
            f"{len(absent)} of the run's {len(expected_all)} draws are in none of the folders ({_shown(absent)}); "
            f"shards given: {', '.join(f'{i}/{n}' for i, n in shards) or 'none'}. Add the missing shard folders"
        )
    return found


def _shard_results(folders: Sequence[RunFolder]) -> dict[str, Any]:
    """The first finished shard's results.json (for backend identity, batch size, device), if any."""
    for folder in folders:
        if folder.results_path.is_file():
            return folder.read_results()
    return {}


def merge_runs(
    run_dirs: Sequence[str | Path], out: str | Path | None = None, *, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Merge shard folders into one run folder at ``out`` and return its results document."""
    if not run_dirs:
        raise MergeError("give at least one run folder to merge")
    paths = [Path(d).resolve() for d in run_dirs]
    repeated = sorted({str(p) for p in paths if paths.count(p) > 1})
    if repeated:
        raise MergeError(f"folders given more than once: {', '.join(repeated)}")
    folders = [RunFolder(p) for p in paths]
    settings = [_read_settings(folder) for folder in folders]
    _check_same_run(folders, settings)

    config = config_from_settings(settings[0], out)
    target = config.out_dir()
    if target.resolve() in paths:
        raise MergeError(f"--out {target} is one of the folders being merged; choose another")
    full = select_items(config)
    records = collect(folders, settings, config, full)

    merged_settings = {**settings[0], "shard": None, "items_fingerprint": full.info["fingerprint"]}
    with RunFolder(target) as folder:
        try:
            folder.prepare(merged_settings, resume=False, overwrite=overwrite, items=full.digests)
        except RunFolderError as exc:
            raise MergeError(f"{exc} (mub merge: pass --overwrite to replace it)") from None
        folder.append(records[key] for key in full.draw_keys())

        shard_results = _shard_results(folders)
        run_info = shard_results.get("run", {})
        config = replace(
            config,
            batch_size=run_info.get("batch_size", config.batch_size),
            device=run_info.get("device", config.device),
            progress=progress,
        )
        results = finish_run(config, merged_settings, full, run_info.get("backend_info", {}), folder)
        # Provenance beside, not inside, "run": the figures and settings stay those of a single run.
        results["merged_from"] = [str(p) for p in paths]
        folder.write_results(results)
        return results
