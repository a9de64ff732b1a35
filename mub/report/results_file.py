"""What the leaderboard results file's writer (:mod:`mub.report.submit`) and reader
(:mod:`mub.report.leaderboard`) share: task names, the protocol of older runs, the
way a figure is written, the stage-2 pressure a run applied. Kept light (stdlib and
mub's stdlib-only cue and preset tables) so the leaderboard Space can import it
without datasets or matplotlib.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

from mub.protocol.cues import FIELDS, NOTE, default_cue, standard_template
from mub.protocol.presets import protocol_named, setting_of

UNKNOWN_PROTOCOL = "unknown (pre-preset)"  # runs made before protocol presets were recorded
DECIMALS = 12  # drops floating-point noise (2.7e-17) without touching any real figure
# A Hub repository id: one optional namespace and a name, no path syntax.
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def is_hub_id(text: str) -> bool:
    """A Hub repository id, and not a path that exists here (a local folder named like one)."""
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def task_name(config: str) -> str:
    return f"mub_{config}"


def number(value: Any) -> Any:
    """A figure as written out: floats rounded to :data:`DECIMALS`; whole values as ints (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return [number(v) for v in value] if isinstance(value, (list, tuple)) else value
    value = round(value, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    return int(value) if value.is_integer() else value


BUILD_SUMMARY = "build_summary.json"  # written by `mub build`; holds the Hub id given with --repo-id
RUN_FILTERS = {"limit": "--limit", "difficulty": "--difficulty", "misled_count": "--misled-count", "shard": "--shard"}
LEVELS = ("low", "medium", "high")  # mub_dataset.features.DIFFICULTY_LEVELS


def is_synthetic(dataset: str) -> bool:
    """The embedded synthetic sample, or a `mub build` of it: stand-in data whose figures say nothing about MUB."""
    from mub_dataset.loading import SAMPLE, SAMPLE_VERSION, cache_root

    # The sample's release folder (mub_dataset.loading.sample_release_dir), named without generating it.
    sample_folder = (cache_root() / f"synthetic-sample-{SAMPLE_VERSION}").resolve()
    if dataset == SAMPLE or (dataset and Path(dataset).resolve() == sample_folder):
        return True
    summary = Path(dataset) / BUILD_SUMMARY
    return summary.is_file() and bool(json.loads(summary.read_text(encoding="utf-8")).get("synthetic"))


def rank_refusal(document: Mapping[str, Any], config: str) -> str | None:
    """Why a finished run (its results.json) cannot be submitted to the leaderboard, or None: only full runs of
    the benchmark rank (mub submit refuses the rest; the end of `mub run` says so)."""
    settings = document.get("run", {})
    model = str(document.get("model", ""))
    if model.startswith("tiny:"):
        return f"the model {model} is a random plumbing-check model, not a model to rank"
    used = [f"{flag} {settings[key]}" for key, flag in RUN_FILTERS.items() if settings.get(key) is not None]
    if used:
        return (
            f"the run covers part of the benchmark ({', '.join(used)}); only full runs rank: run without them, "
            "or merge the shards (mub merge) and submit the merged run"
        )
    if is_synthetic(str(document.get("dataset", {}).get("name", ""))):
        return "the run is on the synthetic sample, whose figures say nothing about MUB; run on a MUB build"
    figures = document.get("results", {}).get(config, {})
    if figures.get("errors"):
        return f"the run has {figures['errors']} item errors; finish them (mub run ... --resume), then submit"
    missing = [level for level in LEVELS if not figures.get("by_difficulty", {}).get(level, {}).get("n")]
    if missing:
        return f"the run has no items on level {', '.join(missing)}; a submission covers every level"
    return None


# The run settings (run.json) that decide the stage-2 pressure; a submission records them per task.
STAGE2_KEYS = ("config", "protocol", "cue", "dialogue", "typographic", "pressure", "notes")
PAPER_NOTES = 5  # the implicit notes the paper asks per item (--notes' default); fewer notes mislead less
DIGEST_CHARS = 8  # of a SHA-256: tells two wordings apart in a label
MUB_CUE = "MUB cue"  # a label's word for the config's own cue (hint explicit, note implicit)


def stage2_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings :func:`pressure_label` reads, as a submission records them (the protocol by its preset only)."""
    chosen = {key: settings.get(key) for key in STAGE2_KEYS}
    chosen["protocol"] = {"preset": (settings.get("protocol") or {}).get("preset", "deterministic")}
    return chosen


def _digest(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:DIGEST_CHARS]


def _standard_template(cue: str, preset: str) -> str | None:
    """The template a cue is worded with when no flag changes it: the preset's hint or note, the library's otherwise;
    None for a preset or cue this mub does not know (any recorded template then shows its digest)."""
    try:
        return standard_template(cue, protocol_named(preset))
    except (ValueError, KeyError):  # a preset or cue this mub does not know
        return None


def pressure_label(settings: Mapping[str, Any]) -> str | None:
    """The stage-2 pressure a run applied, short, or None for MUB's own: the config's cue (hint explicit, note
    implicit) in the preset's words, one fresh request (``--dialogue single``), no typographic cue, no ``--pressure``.

    Otherwise the cue's name (``MUB cue`` for the config's own, so that a multi-turn explicit and implicit pair
    shares one label), then what else it did: ``opinion``, ``MUB cue (multi-turn)``, ``typographic (rendering
    1a2b3c4d)``, ``challenge x5 turns (pushes 1a2b3c4d)``, ``opinion (template 1a2b3c4d)`` (a ``--cue-template``
    that changed the words; digests are of the recorded text, so two wordings never share a label), ``MUB cue (notes
    1)`` (the notes cue asking other than the paper's 5 notes; a cue without notes ignores ``notes``). Runs made before
    mub recorded a setting read as its default then: the config's cue, its preset's words, single turn, 5 notes.
    """
    config = str(settings.get("config") or "explicit")
    cue = settings.get("cue") or {}
    own = default_cue(setting_of(config))
    name = cue.get("name") or own
    preset = (settings.get("protocol") or {}).get("preset", "deterministic")
    typographic, pressure = settings.get("typographic"), settings.get("pressure")
    words, details = [MUB_CUE if name == own else name], []
    template = cue.get("template")
    if template is not None and template != _standard_template(name, preset):
        details.append(f"template {_digest(template)}")
    if typographic is not None:
        words += [] if name == "typographic" else ["typographic"]
        details.append(f"rendering {_digest(typographic)}")
    if pressure:
        words.append(f"x{pressure['turns']} turns")
        details.append(f"pushes {_digest(pressure.get('templates'))}")
    elif (settings.get("dialogue") or "single") != "single":
        details.append(f"{settings['dialogue']}-turn")
    notes = settings.get("notes")
    if FIELDS.get(name) == NOTE and notes is not None and notes != PAPER_NOTES:  # only notes read it; older runs asked 5
        details.append(f"notes {notes}")
    if words == [MUB_CUE] and not details:
        return None
    return " ".join(words) + (f" ({', '.join(details)})" if details else "")
