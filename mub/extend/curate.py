"""Build a MUB of your own: run a panel of models, count who is misled by each item, grade and keep items.

This is the paper's method (Dang et al., Section 3): a panel of reference
models answers every item (stage 1) and is then given the explicit false hint
(stage 2); an item's *misled count* is how many panel models it misleads, and
the count grades it (the paper: low/medium/high = 6/9/12 of 12 models).

- **Misled** (``--misled-rule``): ``t2f`` (default, the paper's) counts a model
  that answered correctly at stage 1 and not correctly after the hint (wrong or
  unreadable). A model wrong at stage 1 had no correct answer to abandon and is
  not counted. ``wrong-after`` counts every model that is not correct after the
  hint, whatever its stage 1.
- **Levels** scale with the panel of N models: exactly ceil(N/2), ceil(3N/4)
  and N models (6/9/12 of 12); ``--levels L,M,H`` sets other counts. Where two
  levels fall on one count (panels of 2 or 3), the higher level takes it.
- **Selection**: items misled by at least ``--min-count`` models (default: the
  low level's count) are kept, as the paper kept its uncertainty-prone items.
- **Output**: a release folder (``mub build`` reads it). MUB's levels are defined
  on its 12-model scale (``num`` 6, 9, 12), so an item's ``num`` is its count
  mapped onto that scale: the low, medium and high counts become 6, 9 and 12,
  counts between two levels 7-8 or 10-11 (on no level, as in the paper); each
  record keeps the raw count (``panel_misled_count``) and the panel size
  (``panel_size``). ``curation.json`` and the card record the panel, the
  protocol, each model's run fingerprint, the count distribution and the rule.

Each model's run is an ordinary ``mub run`` folder under ``OUT/runs/``: a killed
curate resumes each run where it stopped, finished runs are reused, and a run
with item errors stops the curation (exit 3) until ``mub curate`` is run again.
``--only NAME`` runs one panel model (array jobs share the panel out); a final
``mub curate`` without it assembles the release from the finished runs.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from mub.backend_flags import API_FLAGS, VLLM_FLAGS
from mub.config import RunConfig
from mub.protocol.presets import DRAW_ONCE
from mub.extend.notes import SourceItems, load_source
from mub.extend.release_writer import release_record, write_release
from mub.protocol.stages import same_answer
from mub.runs.predictions import ItemPrediction
from mub.runs.runner import run
from mub.runs.storage import RunFolder, write_json_atomic
from mub_dataset.files import cell_bytes, check_output_folder, mark_folder

COMMAND = "curate"
CURATION_FILE = "curation.json"
RUNS_DIR = "runs"
MISLED_RULES = {
    "t2f": "correct at stage 1 and not correct after the hint (the paper's)",
    "wrong-after": "not correct after the hint, whatever the stage-1 answer",
}
DEFAULT_RULE = "t2f"
LEVEL_NAMES = ("low", "medium", "high")
PAPER_SCALE = (6, 9, 12)  # MUB's low, medium and high misled counts, of 12 reference models
# RunConfig fields a panel entry may set; the dataset, config, output and resume are curate's.
PANEL_RUN_FIELDS = frozenset(f.name for f in fields(RunConfig)) - {
    "dataset", "config", "out", "resume", "overwrite", "shard", "backend_options", "progress", "protocol",
    "difficulty", "misled_count", "limit", "cue", "cue_template", "dialogue", "draws",
}  # fmt: skip
PANEL_BACKEND_FIELDS = frozenset(API_FLAGS + VLLM_FLAGS)


class CurationIncomplete(RuntimeError):
    """Some panel runs have item errors: their counts are unknown until the runs are finished."""

    def __init__(self, unfinished: Mapping[str, int]) -> None:
        self.unfinished = dict(unfinished)
        shown = ", ".join(f"{name} ({n} items)" for name, n in unfinished.items())
        super().__init__(f"panel runs with failed items: {shown}")


@dataclass(frozen=True)
class PanelModel:
    """One reference model and the settings of its run."""

    name: str  # its folder under runs/ and its label in the card
    settings: Mapping[str, Any]  # RunConfig fields (model, backend, batch_size, ...)
    backend_options: Mapping[str, Any]  # base_url, concurrency, ...


@dataclass(frozen=True)
class Panel:
    models: tuple[PanelModel, ...]
    protocol: str = "paper"


def read_panel(path: str | Path) -> Panel:
    """A panel file: ``protocol`` and a list of ``models``, each a mapping of run settings; one line per problem."""
    where = f"--panel {path}"
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: cannot read it ({exc}); give a YAML file listing the panel's models") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(document, dict) or not isinstance(document.get("models"), list) or not document["models"]:
        raise ValueError(f"{where}: expected a mapping with a non-empty list 'models' (and optionally 'protocol')")
    unknown_top = sorted(set(document) - {"models", "protocol"})
    if unknown_top:
        raise ValueError(f"{where}: unknown keys {unknown_top}; a panel file has 'models' and 'protocol'")
    models: list[PanelModel] = []
    for number, entry in enumerate(document["models"], start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str) or not entry["model"]:
            raise ValueError(f"{where}: model {number} needs a 'model' (a Hub id, a folder or a served model's name)")
        entry = dict(entry)
        name = str(entry.pop("name", None) or entry["model"])
        unknown = sorted(set(entry) - PANEL_RUN_FIELDS - PANEL_BACKEND_FIELDS)
        if unknown:
            raise ValueError(
                f"{where}: model {number} ({name}): unknown settings {unknown}; allowed: "
                f"{', '.join(sorted(PANEL_RUN_FIELDS | PANEL_BACKEND_FIELDS))}"
            )
        settings = {k: v for k, v in entry.items() if k in PANEL_RUN_FIELDS}
        options = {k: v for k, v in entry.items() if k in PANEL_BACKEND_FIELDS}
        models.append(PanelModel(name, settings, options))
    folders = Counter(folder_name(model.name) for model in models)
    repeated = sorted(name for name, n in folders.items() if n > 1)
    if repeated:
        raise ValueError(f"{where}: two models share the name {repeated[0]!r}; give each a distinct 'name'")
    return Panel(tuple(models), str(document.get("protocol", "paper")))


def folder_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")).strip("_") or "model"


def scaled_levels(panel_size: int) -> tuple[int, int, int]:
    """The paper's 6/9/12 of 12 for a panel of ``panel_size``: ceil(N/2), ceil(3N/4), N."""
    levels = (math.ceil(panel_size / 2), math.ceil(3 * panel_size / 4), panel_size)
    check_levels(levels, panel_size)
    return levels


def check_levels(levels: Sequence[int], panel_size: int) -> None:
    """Levels rise within the panel; two may share a count (small panels), then the higher level takes it."""
    low, medium, high = levels
    if not 1 <= low <= medium <= high <= panel_size or low == high:
        raise ValueError(
            f"levels {low},{medium},{high} must rise within 1..{panel_size} (the panel's size), the low below the "
            f"high; give --levels LOW,MEDIUM,HIGH that do, or use more models"
        )


def is_misled(prediction: ItemPrediction, rule: str) -> bool:
    """Whether one model's prediction counts as misled under ``rule`` (see MISLED_RULES)."""
    held = same_answer(prediction.prediction, prediction.answer)
    if rule == "t2f":
        return same_answer(prediction.original_prediction, prediction.answer) and not held
    if rule == "wrong-after":
        return not held
    raise ValueError(f"unknown --misled-rule {rule!r}; choose one of {', '.join(MISLED_RULES)}")


def misled_counts(misled_by: Mapping[str, set[str]], item_ids: Sequence[str]) -> dict[str, int]:
    """Per item, how many models it misleads (``misled_by``: model -> the items it is misled by)."""
    return {item: sum(item in items for items in misled_by.values()) for item in item_ids}


def paper_scale(count: int, levels: Sequence[int]) -> int | None:
    """A count's place on MUB's 12-model scale: the levels become 6/9/12, counts between them 7-8 or 10-11.

    ``None`` below the low level (such an item is not on MUB's scale). Where two
    levels share a count, the higher one takes it.
    """
    low, medium, high = levels
    if count < low:
        return None
    if count >= high:
        return PAPER_SCALE[2]
    start, end, (on_level, below_next) = (medium, high, PAPER_SCALE[1:]) if count >= medium else (low, medium, PAPER_SCALE[:2])
    if count == start:
        return on_level
    # Strictly between two levels: the lower or upper of the two counts between them (7/8, 10/11).
    return on_level + 1 if (count - start) / (end - start) < 0.5 else below_next - 1


@dataclass
class CurateConfig:
    panel: str
    dataset: str
    out: str
    misled_rule: str = DEFAULT_RULE
    levels: tuple[int, int, int] | None = None
    min_count: int | None = None
    limit: int | None = None
    progress: bool = True
    only: tuple[str, ...] = ()  # run just these panel models (an array job's share); no release is written


@dataclass
class Curation:
    """What a curation found: per-item counts and what was kept."""

    panel_size: int
    levels: tuple[int, int, int]
    min_count: int
    counts: dict[str, int]
    kept: list[str]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> run folder, fingerprint, ...
    misled_by: dict[str, set[str]] = field(default_factory=dict)  # model name -> the items it is misled by
    sources: dict[str, str] = field(default_factory=dict)  # item -> source benchmark

    def agreement(self) -> dict[str, dict[str, float | None]]:
        """Per pair of models, the Jaccard overlap of the items they are misled by (1: the same items)."""
        def jaccard(a: set[str], b: set[str]) -> float | None:
            return None if not a | b else round(len(a & b) / len(a | b), 4)

        return {m: {o: jaccard(items, other) for o, other in self.misled_by.items()} for m, items in self.misled_by.items()}

    def summary(self) -> dict[str, Any]:
        distribution = Counter(self.counts.values())
        return {
            "items": len(self.counts),
            "kept": len(self.kept),
            "panel_size": self.panel_size,
            "levels": dict(zip(LEVEL_NAMES, self.levels)),
            "min_count": self.min_count,
            "count_distribution": {str(c): distribution.get(c, 0) for c in range(self.panel_size + 1)},
            "items_per_level": {
                level: sum(1 for item in self.kept if paper_scale(self.counts[item], self.levels) == scale)
                for level, scale in zip(LEVEL_NAMES, PAPER_SCALE)
            },
            "kept_per_source": dict(sorted(Counter(self.sources[item] for item in self.kept).items())),
            "misled_share_per_model": {
                model: round(len(items) / len(self.counts), 4) if self.counts else None
                for model, items in self.misled_by.items()
            },
        }


RunFunction = Callable[[RunConfig], Any]


def curate(config: CurateConfig, run_model: RunFunction = run) -> Curation | None:
    """Run the panel (resuming and reusing its runs), count, grade, select, and write the release.

    With ``config.only``, run just those panel models and return ``None``: array jobs each run a share of the
    panel into the same folder, and a last ``mub curate`` without it reuses their runs and writes the release.
    """
    if config.misled_rule not in MISLED_RULES:
        raise ValueError(f"unknown --misled-rule {config.misled_rule!r}; choose one of {', '.join(MISLED_RULES)}")
    panel = read_panel(config.panel)
    levels = tuple(config.levels) if config.levels else scaled_levels(len(panel.models))
    check_levels(levels, len(panel.models))
    min_count = levels[0] if config.min_count is None else config.min_count
    if not 1 <= min_count <= len(panel.models):
        raise ValueError(f"--min-count must be between 1 and {len(panel.models)} (the panel's size), got {min_count}")
    out = Path(config.out)
    check_output_folder(out, COMMAND, reuse=True)  # curate continues its own folder: that is how it resumes
    source = load_source(config.dataset, config.limit)
    mark_folder(out, COMMAND)

    unknown = sorted(set(config.only) - {model.name for model in panel.models})
    if unknown:
        raise ValueError(f"--only {unknown[0]}: no panel model of that name; the panel has {', '.join(m.name for m in panel.models)}")
    runs: list[Mapping[str, ItemPrediction]] = []
    run_records: dict[str, dict[str, Any]] = {}
    unfinished: dict[str, int] = {}
    for model in panel.models:
        if config.only and model.name not in config.only:
            continue
        folder = out / RUNS_DIR / folder_name(model.name)
        predictions, record = _panel_run(model, panel.protocol, config, folder, run_model)
        failed = sum(1 for p in predictions.values() if p.error is not None)
        if failed:
            unfinished[model.name] = failed
        runs.append(predictions)
        run_records[model.name] = record
    if unfinished:
        raise CurationIncomplete(unfinished)
    if config.only:
        return None

    item_ids = [row["id"] for row in source.rows]
    misled_by = {
        model.name: {item for item in item_ids if is_misled(predictions[item], config.misled_rule)}
        for model, predictions in zip(panel.models, runs)
    }
    counts = misled_counts(misled_by, item_ids)
    kept = [item for item in item_ids if counts[item] >= min_count]
    sources = {row["id"]: row["source"] for row in source.rows}
    curation = Curation(len(panel.models), levels, min_count, counts, kept, run_records, misled_by, sources)
    _write(out, source, curation, panel, config)
    return curation


def _panel_run(
    model: PanelModel, protocol: str, config: CurateConfig, folder: Path, run_model: RunFunction
) -> tuple[dict[str, ItemPrediction], dict[str, Any]]:
    """One model's explicit run: reused when finished with these settings, resumed when partial."""
    settings = dict(model.settings)
    run_config = RunConfig(
        **settings, dataset=config.dataset, config="explicit", protocol=protocol, out=str(folder),
        limit=config.limit, backend_options=dict(model.backend_options), progress=config.progress,
        resume=folder.exists(), draws=DRAW_ONCE,  # a panel model answers each item once: one verdict per model
    )  # fmt: skip
    run_folder = RunFolder(folder)
    predictions = run_folder.load_predictions() if run_folder.results_path.is_file() else {}
    if not predictions or any(p.error is not None for p in predictions.values()):
        run_model(run_config)  # resume=True continues a killed run; its settings must match (else one line)
        predictions = run_folder.load_predictions()
    document = run_folder.read_results()
    record = {
        "model": document["model"],
        "run": str(Path(RUNS_DIR) / folder.name),
        "items_fingerprint": document.get("run", {}).get("items_fingerprint"),
        "protocol": protocol,
        "revision": (document.get("run", {}).get("backend_info") or {}).get("model_sha"),
    }
    return {p.id: p for p in predictions.values()}, record  # one draw per item


def _write(out: Path, source: SourceItems, curation: Curation, panel: Panel, config: CurateConfig) -> None:
    kept = set(curation.kept)
    records, images, seen = [], [], set()
    for index, (row, new_id) in enumerate(zip(source.rows, source.new_ids)):
        if row["id"] not in kept:
            continue
        count = curation.counts[row["id"]]
        scaled = paper_scale(count, curation.levels)
        if scaled is None:  # kept below the low level (--min-count lower than it): on no level, below MUB's 6
            raise ValueError(
                f"--min-count {curation.min_count} keeps items below the low level ({curation.levels[0]} models), "
                "which MUB's 6-12 scale cannot hold; raise --min-count or lower --levels"
            )
        record = release_record({**row, "misled_count": scaled}, new_id, row["misleading_notes"], row["guiding_notes"])
        record.update(panel_misled_count=count, panel_size=curation.panel_size)
        records.append(record)
        if new_id not in seen:
            seen.add(new_id)
            images.append((new_id, cell_bytes(source.dataset[index]["image"])))
    document = {
        "summary": curation.summary(),
        "misled_rule": {"name": config.misled_rule, "meaning": MISLED_RULES[config.misled_rule]},
        "protocol": panel.protocol,
        "dataset": {"name": config.dataset, "fingerprint": source.info["fingerprint"], "limit": config.limit},
        "panel": curation.runs,
        "agreement": curation.agreement(),
        "counts": curation.counts,
    }
    write_json_atomic(out / CURATION_FILE, document)
    write_release(out, records, images, curation_card(document))


def curation_card(document: Mapping[str, Any]) -> str:
    """The release's README: how its items were chosen and graded."""
    summary = document["summary"]
    levels = summary["levels"]
    rows = "\n".join(
        f"| {name} | {run['model']} | {run.get('revision') or 'unknown'} | `{run['items_fingerprint']}` | {run['run']} |"
        for name, run in document["panel"].items()
    )
    distribution = ", ".join(f"{count}: {n}" for count, n in summary["count_distribution"].items())
    return f"""# A MUB set curated with `mub curate`

Items of `{document['dataset']['name']}` (items fingerprint `{document['dataset']['fingerprint']}`), graded by a panel of
{summary['panel_size']} models under the `{document['protocol']}` protocol, explicit hint.

- **Misled**: {document['misled_rule']['name']}: {document['misled_rule']['meaning']}.
- **Levels**: low, medium and high are items misled by exactly {levels['low']}, {levels['medium']} and {levels['high']} of the
  {summary['panel_size']} models; `num` holds the count on MUB's 12-model scale (6, 9, 12; 7-8 and 10-11 between
  levels, on no level) and `panel_misled_count` the raw count.
- **Selection**: items misled by at least {summary['min_count']} models: {summary['kept']} of {summary['items']} kept
  (per level: {', '.join(f"{k} {v}" for k, v in summary['items_per_level'].items())}).
- **Misled counts** (models: items): {distribution}.

| name | model | revision | run items fingerprint | run folder |
|---|---|---|---|---|
{rows}

Build it with `mub build --release THIS_FOLDER --out DATASET`; add implicit notes first with `mub notes`.
"""


def format_curation(curation: Curation, out: str | Path) -> str:
    """The lines `mub curate` prints."""
    summary = curation.summary()
    levels = summary["levels"]
    return "\n".join(
        [
            f"panel: {summary['panel_size']} models; levels: low {levels['low']}, medium {levels['medium']}, high {levels['high']} misled",
            "misled counts (models: items): " + ", ".join(f"{c}: {n}" for c, n in summary["count_distribution"].items()),
            f"kept: {summary['kept']} of {summary['items']} items (misled by at least {summary['min_count']}); per level: "
            + ", ".join(f"{k} {v}" for k, v in summary["items_per_level"].items()),
            f"release written to {out} (details in {Path(out) / CURATION_FILE}); next: mub build --release {out} --out DATASET",
        ]
    )
