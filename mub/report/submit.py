"""Leaderboard submissions: a results file in the Hub leaderboards' shape, and a model-index block.

The results file follows the shape Hub leaderboard readers walk, one JSON
file alone in ``<org>/<model>/results_<UTC time>.json``::

    {"config": {"model_name", "model_sha", "model_dtype", "protocol", "mub_version",
                "dataset_id", "items_fingerprint", "submitted_at", ...},
     "results": {"mub_explicit": {...}, "mub_implicit": {...}}}

Every rate is a fraction, with its 95% Wilson interval as ``<rate>_ci`` and
its denominator as a count; an exact 0 or 1 is written ``0`` or ``1``. The
model-index block (the ``model-index`` of a Hub model card) uses the same
fractions, and is made only when the dataset has a Hub id: a local build
path never reaches a model card, and ``upload`` refuses a submission without
a Hub dataset id.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import yaml

from mub.report.report import read_results
from mub.report.results_file import number, task_name
from mub.runs.storage import protocol_name
from mub_dataset.features import DIFFICULTY_LEVELS

RATES = ("mr_t2f", "mr_f2t", "accuracy_before", "accuracy_after", "consistency")
COUNTS = ("n", "n_t", "n_f", "t2f", "f2t", "unparsed_before", "unparsed_after", "errors", "n_items")
PAPER_URL = "https://arxiv.org/abs/2411.02708"
TASK_TYPE = "visual-question-answering"
PROTOCOL_NAMES = {"explicit": "explicit hints", "implicit": "implicit notes"}
BUILD_SUMMARY = "build_summary.json"  # written by `mub build`; holds the Hub id given with --repo-id
STAMP_FORMAT = "%Y-%m-%dT%H-%M-%S"
# A Hub repository id: one optional namespace and a name, no path syntax.
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


@dataclass(frozen=True)
class RunResults:
    """One run folder's results document and the config it evaluated."""

    path: Path
    config: str
    document: dict[str, Any]

    @property
    def figures(self) -> dict[str, Any]:
        return self.document["results"][self.config]


@dataclass(frozen=True)
class Submission:
    results: dict[str, Any]  # the leaderboard results file
    model_index: str | None  # YAML text of the model-card block; None without a Hub dataset id

    @property
    def path_in_repo(self) -> str:
        """``<org>/<model>/results_<UTC time>.json``, as Hub leaderboard readers expect."""
        config = self.results["config"]
        stamp = datetime.fromisoformat(config["submitted_at"]).strftime(STAMP_FORMAT)
        return f"{model_folder(config['model_name'])}/results_{stamp}.json"


def run_protocol(document: dict[str, Any]) -> str:
    """The protocol a run used, as leaderboards rank by it: the preset's name (``paper``,
    ``deterministic``), with its overrides spelled out when a flag changed a field, since
    such a run no longer compares with the preset's other runs."""
    settings = document.get("run", {})
    overrides = (settings.get("protocol") or {}).get("overrides") or {}
    name = protocol_name(settings)
    if not overrides:
        return name
    return f"{name} + " + ", ".join(f"{field}={value}" for field, value in sorted(overrides.items()))


def read_runs(run_dirs: Sequence[str | Path]) -> list[RunResults]:
    """The runs of one model, at most one per config, all under one protocol."""
    if not run_dirs:
        raise ValueError("mub submit needs a run folder")
    runs = [RunResults(Path(path), config, document) for path in run_dirs for document, config in [read_results(path)]]
    models = sorted({run.document["model"] for run in runs})
    if len(models) > 1:
        raise ValueError(f"a submission is for one model; these runs are of {', '.join(models)}")
    configs = [run.config for run in runs]
    repeated = sorted({config for config in configs if configs.count(config) > 1})
    if repeated:
        raise ValueError(f"more than one run for config {', '.join(repeated)}; submit one run per config")
    stage1_only = [str(run.path) for run in runs if run.document.get("run", {}).get("stages") == 1]
    if stage1_only:
        raise ValueError(
            f"{stage1_only[0]} is a stage-1-only run (--stages 1): it measures accuracy, not how often a cue misleads "
            "the model, so it cannot be submitted; run both stages (leave out --stages) to submit"
        )
    protocols = {str(run.path): run_protocol(run.document) for run in runs}
    if len(set(protocols.values())) > 1:
        listed = ", ".join(f"{path}: {protocol}" for path, protocol in protocols.items())
        raise ValueError(f"a submission is for one protocol; these runs differ ({listed})")
    return runs


def is_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def dataset_id(runs: Sequence[RunResults], given: str | None = None) -> str | None:
    """The Hub id of the dataset the runs evaluated, or None when only a local path is known.

    ``given`` (``mub submit --dataset-id``) wins; otherwise a build folder made
    with ``mub build --repo-id`` names its id in build_summary.json, and a run
    on a Hub dataset recorded its id as the dataset name.
    """
    if given is not None:
        if not is_hub_id(given):
            raise ValueError(f"--dataset-id {given!r} is not a Hub dataset id (ORG/NAME); a local path cannot be one")
        return given
    found = set()
    for run in runs:
        name = str(run.document.get("dataset", {}).get("name", ""))
        summary = Path(name) / BUILD_SUMMARY
        if summary.is_file():
            found.add(json.loads(summary.read_text(encoding="utf-8")).get("repo_id"))
        elif "/" in name and is_hub_id(name):
            found.add(name)
        else:
            found.add(None)
    return found.pop() if len(found) == 1 else None


def model_dtype(document: dict[str, Any]) -> str | None:
    """The weights' dtype in torch's naming (``torch.bfloat16``); None when the backend does not say."""
    run = document.get("run", {})
    dtype = run.get("backend_info", {}).get("dtype") or run.get("dtype")
    if not dtype or dtype == "auto":
        return None
    return dtype if dtype.startswith("torch.") else f"torch.{dtype}"


def model_config(runs: Sequence[RunResults], hub_dataset: str | None, now: datetime) -> dict[str, Any]:
    """The ``config`` block: model identity, protocol, and what the figures were computed on."""
    first = runs[0].document
    backend = first.get("run", {}).get("backend_info", {})
    return {
        "model_name": first["model"],
        "model_sha": backend.get("revision"),
        "model_dtype": model_dtype(first),
        "backend": backend.get("backend"),
        "protocol": run_protocol(first),
        "mub_version": _mub_version(),
        "dataset_id": hub_dataset,
        "items_fingerprint": {
            task_name(run.config): run.document.get("dataset", {}).get("fingerprint") for run in runs
        },
        "submitted_at": now.astimezone(timezone.utc).isoformat(timespec="seconds"),
    }


def _mub_version() -> str | None:
    try:
        return metadata.version("mub")
    except metadata.PackageNotFoundError:
        return None


def model_folder(model_name: str) -> str:
    """The model's folder in a results repository; a name that would leave it (``..``, ``/abs``) is refused."""
    parts = model_name.split("/")
    if model_name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(
            f"model {model_name!r} cannot name a results folder (absolute, empty or '..' parts); "
            "evaluate the model under its Hub id (ORG/NAME) or a relative folder name"
        )
    return model_name


def task_results(figures: dict[str, Any]) -> dict[str, Any]:
    """One config's figures, flat: rates with ``_ci``, counts, and per-difficulty misleading rates."""
    flat: dict[str, Any] = {}
    for rate in RATES:
        flat[rate] = figures.get(rate)
        flat[f"{rate}_ci"] = figures.get(f"{rate}_ci")
    for count in COUNTS:
        flat[count] = figures.get(count)
    flat["mr_t2f_levels_mean"] = figures.get("mr_t2f_levels_mean")
    flat["mcnemar_p"] = figures.get("mcnemar_p")
    for level in DIFFICULTY_LEVELS:
        subset = figures.get("by_difficulty", {}).get(level, {})
        flat[f"mr_t2f_{level}"] = subset.get("mr_t2f")
        flat[f"mr_t2f_{level}_ci"] = subset.get("mr_t2f_ci")
        flat[f"n_t_{level}"] = subset.get("n_t")
        flat[f"n_{level}"] = subset.get("n")
    return {key: number(value) for key, value in flat.items()}


def leaderboard_results(runs: Sequence[RunResults], hub_dataset: str | None, now: datetime) -> dict[str, Any]:
    return {
        "config": model_config(runs, hub_dataset, now),
        "results": {task_name(run.config): task_results(run.figures) for run in runs},
    }


def _metric(kind: str, label: str, figures: dict[str, Any], rate: str, denominator: str) -> dict[str, Any] | None:
    value = figures.get(rate)
    if value is None:
        return None
    name = f"{label} (fraction)"
    ci = figures.get(f"{rate}_ci")
    if ci:
        name += f", 95% CI [{ci[0]:.4f}, {ci[1]:.4f}]"
    if denominator in figures:
        name += f", n={figures[denominator]}"
    return {"type": kind, "value": number(round(value, 4)), "name": name, "verified": False}


def _metrics(figures: dict[str, Any]) -> list[dict[str, Any]]:
    entries = [
        _metric("misleading_rate", "Misleading rate T→F", figures, "mr_t2f", "n_t"),
        _metric(
            "misleading_rate_levels_mean",
            "Misleading rate, mean of difficulty levels",
            figures,
            "mr_t2f_levels_mean",
            "",
        ),
    ]
    for level in DIFFICULTY_LEVELS:
        subset = figures.get("by_difficulty", {}).get(level, {})
        entries.append(
            _metric(f"misleading_rate_{level}", f"Misleading rate, {level} difficulty", subset, "mr_t2f", "n_t")
        )
    entries += [
        _metric("accuracy", "Accuracy before misleading", figures, "accuracy_before", "n"),
        _metric("reverse_rate", "Wrong-to-correct rate F→T", figures, "mr_f2t", "n_f"),
        _metric("consistency", "Consistency across stages", figures, "consistency", "n"),
    ]
    return [entry for entry in entries if entry is not None]


def model_index(runs: Sequence[RunResults], hub_dataset: str) -> dict[str, Any]:
    """The model card's ``model-index`` block: one result entry per config, on the Hub dataset ``hub_dataset``."""
    if not is_hub_id(hub_dataset):
        raise ValueError(f"model-index needs a Hub dataset id, not {hub_dataset!r}")
    results = []
    for run in runs:
        protocol = PROTOCOL_NAMES.get(run.config, f"explicit hints, {run.config} items")
        results.append(
            {
                "task": {"type": TASK_TYPE, "name": f"Misleading-instruction robustness ({protocol})"},
                "dataset": {
                    "name": f"MUB ({hub_dataset})",
                    "type": hub_dataset,
                    "config": run.config,
                    "split": "test",
                },
                "metrics": _metrics(run.figures),
                "source": {"name": "MUB (Dang et al., 2025)", "url": PAPER_URL},
            }
        )
    return {"model-index": [{"name": runs[0].document["model"], "results": results}]}


def build_submission(
    run_dirs: Sequence[str | Path],
    *,
    dataset: str | None = None,
    model_name: str | None = None,
    now: datetime | None = None,
) -> Submission:
    """The results file and, when the dataset's Hub id is known, the model-index block.

    ``model_name`` (``mub submit --model-name``) names the model on the board
    in place of the runs' ``--model``, e.g. the Hub id of a model run from a
    local folder.
    """
    runs = read_runs(run_dirs)
    if model_name is not None and not is_hub_id(model_name):
        raise ValueError(f"--model-name {model_name!r} is not a Hub model id (OWNER/NAME)")
    hub_dataset = dataset_id(runs, dataset)
    now = now or datetime.now(timezone.utc).replace(microsecond=0)
    results = leaderboard_results(runs, hub_dataset, now)
    if model_name is not None:
        results["config"]["model_name"] = model_name
    snippet = None
    if hub_dataset is not None:
        snippet = yaml.safe_dump(model_index(runs, hub_dataset), sort_keys=False, allow_unicode=True, width=120)
    return Submission(results, snippet)


def write_submission(submission: Submission, out: str | Path) -> Path:
    """Write the results file, alone, to ``out/<org>/<model>/results_<time>.json``."""
    out = Path(out)
    if out.suffix == ".json":
        raise ValueError(f"--out {out} names a file; it is the folder the results go under (<org>/<model>/results_<time>.json)")
    path = out / submission.path_in_repo
    if path.exists():
        raise ValueError(f"{path} already exists; a submission never replaces a file (submit again for a new time stamp)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(submission.results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def check_uploadable(submission: Submission) -> None:
    """Refuse what must not reach a public repository: a local model path, or a dataset without a Hub id."""
    model = submission.results["config"]["model_name"]
    if not is_hub_id(model):
        raise ValueError(
            f"upload refused: the runs' model {model!r} is not a Hub id (a local path or tiny:<arch>), and would "
            "name the repository path; pass --model-name OWNER/NAME"
        )
    if submission.results["config"]["dataset_id"] is None:
        raise ValueError(
            "upload refused: the runs' dataset has no Hub id (a local folder or the synthetic sample); "
            "pass --dataset-id ORG/NAME naming the Hub copy of the build they ran on (mub build --repo-id)"
        )


def upload(submission: Submission, results_file: Path, repo_id: str) -> str:
    """Upload the results file to a Hub dataset repository (needs a write token); returns its path there."""
    check_uploadable(submission)
    from huggingface_hub import HfApi

    target = submission.path_in_repo
    HfApi().upload_file(
        path_or_fileobj=str(results_file),
        path_in_repo=target,
        repo_id=repo_id,
        repo_type="dataset",
        commit_message=f"MUB results for {submission.results['config']['model_name']}",
    )
    return target
