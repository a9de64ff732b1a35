"""The records a report is made of: one :class:`RunSummary` per run folder, one :class:`ModelRow` per model.

Both the report's tables (:mod:`mub.report.report`) and its figures
(:mod:`mub.report.plots`) read them, so they live below both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mub.protocol.cues import DEFAULT_CUES, corrects
from mub.protocol.pressure import offers_correction
from mub.runs.predictions import ItemPrediction
from mub.runs.storage import RESULTS_FILE, RunFolder
from mub_dataset.files import folder_marker

KINDS = ("explicit", "implicit")
STATES = ("correct", "wrong", "unparsed")  # rows/columns of the transition matrix
NON_METRIC_RESULTS = ("stage1_sampling",)  # results.json entries that are not a config's figures
RUN_COMMANDS = ("run", "merge", "rescore")  # the commands whose folders are run folders


def run_folders(paths: Sequence[str | Path]) -> list[Path]:
    """The run folders ``paths`` name: each path itself, or for a parent folder of runs (``mub run --config
    explicit,implicit`` writes one run per config into it) every run folder in it, finished or not, by name."""
    found: list[Path] = []
    for path in map(Path, paths):
        is_run = (path / RESULTS_FILE).is_file() or folder_marker(path) is not None
        runs = [] if is_run or not path.is_dir() else sorted(
            child for child in path.iterdir() if child.is_dir() and folder_marker(child) in RUN_COMMANDS
        )  # fmt: skip
        found.extend(runs or [path])  # a folder of no runs: read as a run, which says what it lacks
    return found


def read_results(path: str | Path) -> tuple[dict[str, Any], str]:
    """A finished run's ``results.json`` and the config it evaluated."""
    folder = RunFolder(path)
    if not folder.results_path.is_file():
        raise ValueError(
            f"{folder.path} has no {RESULTS_FILE}: not a finished run (finish it with `mub run ... --resume`)"
        )
    document = folder.read_results()
    configs = [name for name in document["results"] if name not in NON_METRIC_RESULTS]
    return document, document.get("run", {}).get("config") or configs[0]


@dataclass
class RunSummary:
    """One finished run folder: its config's figures and its per-item predictions."""

    path: Path
    model: str
    config: str  # "explicit", "implicit" or a source config (explicit hints on one source)
    figures: dict[str, Any]
    dataset: dict[str, Any]
    predictions: list[ItemPrediction]
    protocol: str = "paper"  # the preset it ran under (mub.protocol.presets)
    parser: str = "mub"  # how its outputs were read: "mub", or "reference" after mub rescore
    label: str = ""  # the model as shown in tables and plots; set by assign_labels
    cue: str = ""  # the stage-2 cue (mub.protocol.cues); "": the config's default
    dialogue: str = "single"  # single or multi
    pressure: dict[str, Any] | None = None  # run.json's "pressure" ({"turns", "templates"}); None: one cue

    @property
    def kind(self) -> str:
        """Source configs use the explicit hint, so they sit in the explicit columns."""
        return "implicit" if self.config == "implicit" else "explicit"

    @property
    def default_cue(self) -> str:
        """The config's own cue: note implicit, hint otherwise (:data:`mub.protocol.cues.DEFAULT_CUES`)."""
        return DEFAULT_CUES[self.kind]

    @property
    def stage2_cue(self) -> str:
        """The cue stage 2 asked with: the recorded one, or the config's default."""
        return self.cue or self.default_cue

    @property
    def corrective(self) -> bool:
        """Whether stage 2 offered a correction after a wrong stage 1: under pressure, some push names
        ``{answer}``; otherwise the cue names an option (:func:`mub.protocol.cues.corrects`)."""
        if self.pressure:
            return offers_correction(self.pressure["templates"])
        return corrects(self.stage2_cue)

    @property
    def variant(self) -> str:
        """How stage 2 asked: ``"<cue>, <dialogue>"``, or ``""`` for MUB's own form (the config's cue, single turn)."""
        if self.pressure:
            return f"pressure ×{self.pressure['turns']}, {self.dialogue}"
        if self.stage2_cue == self.default_cue and self.dialogue == "single":
            return ""
        return f"{self.stage2_cue}, {self.dialogue}"


@dataclass
class ModelRow:
    """A model's row: its explicit and implicit runs (either may be missing)."""

    label: str
    runs: dict[str, RunSummary] = field(default_factory=dict)  # kind -> run

    def accuracy_run(self) -> RunSummary:
        """Stage 1 asks the same question in both settings; the explicit run's figure is shown."""
        return self.runs.get("explicit") or self.runs["implicit"]
