"""Leaderboard submissions: a results file in the Hub leaderboards' shape and a model-index snippet.

The results file follows the shape Hub leaderboards read::

    {"config": {"model_name", "model_sha", "model_dtype", ...},
     "results": {"mub_explicit": {...}, "mub_implicit": {...}}}

with every rate as a fraction, its 95% Wilson interval as ``<rate>_ci`` and its
denominator as a count. The model-index snippet is the ``model-index`` block of
a Hub model card (task / dataset / metrics entries), in percentages as the
paper reports them. ``upload`` sends both files to a Hub dataset repository.
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
from mub.runs.storage import protocol_name
from mub_dataset.features import DIFFICULTY_LEVELS
from mub_dataset.files import check_output_file

RATES = ("mr_t2f", "mr_f2t", "accuracy_before", "accuracy_after", "consistency")
COUNTS = ("n", "n_t", "n_f", "t2f", "f2t", "unparsed_before", "unparsed_after", "errors", "n_items")
PAPER_URL = "https://arxiv.org/abs/2411.02708"
TASK_TYPE = "visual-question-answering"
PROTOCOL_NAMES = {"explicit": "explicit hints", "implicit": "implicit notes"}
# A Hub model id: "name" or "owner/name", letters, digits, "-", "_" and ".", not starting with "." or "-".
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


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
    model_index: str  # YAML text of the model-card block


def task_name(config: str) -> str:
    return f"mub_{config}"


def read_runs(run_dirs: Sequence[str | Path]) -> list[RunResults]:
    """The runs of one model, at most one per config."""
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
    protocols = {run.path.name: protocol_name(run.document.get("run", {})) for run in runs}
    if len(set(protocols.values())) > 1:
        listed = ", ".join(f"{name} --protocol {protocol}" for name, protocol in protocols.items())
        raise ValueError(f"a submission's runs must share one protocol, these differ ({listed}); rerun one of them")
    return runs


def model_config(runs: Sequence[RunResults]) -> dict[str, Any]:
    """The ``config`` block: model identity and what the figures were computed on."""
    first = runs[0].document
    backend = first.get("run", {}).get("backend_info", {})
    return {
        "model_name": first["model"],
        "model_sha": backend.get("revision"),
        "model_dtype": backend.get("dtype") or first.get("run", {}).get("dtype"),
        "backend": backend.get("backend"),
        # The preset and any overrides: figures compare with the paper's under "paper" only.
        "protocol": first.get("run", {}).get("protocol") or {"preset": protocol_name(first.get("run", {})), "overrides": {}},
        "dataset": first.get("dataset", {}).get("name"),
        "items_fingerprint": {
            task_name(run.config): run.document.get("dataset", {}).get("fingerprint") for run in runs
        },
        "mub_version": _mub_version(),
    }


def _mub_version() -> str | None:
    try:
        return metadata.version("mub")
    except metadata.PackageNotFoundError:
        return None


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
    return flat


def leaderboard_results(runs: Sequence[RunResults]) -> dict[str, Any]:
    return {
        "config": model_config(runs),
        "results": {task_name(run.config): task_results(run.figures) for run in runs},
    }


def _metric(kind: str, label: str, figures: dict[str, Any], rate: str, denominator: str) -> dict[str, Any] | None:
    value = figures.get(rate)
    if value is None:
        return None
    name = f"{label} (%)"
    ci = figures.get(f"{rate}_ci")
    if ci:
        name += f", 95% CI [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"
    if denominator in figures:
        name += f", n={figures[denominator]}"
    return {"type": kind, "value": round(100 * value, 2), "name": name, "verified": False}


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


def model_index(runs: Sequence[RunResults]) -> dict[str, Any]:
    """The model card's ``model-index`` block: one result entry per config."""
    results = []
    for run in runs:
        protocol = PROTOCOL_NAMES.get(run.config, f"explicit hints, {run.config} items")
        dataset = run.document.get("dataset", {})
        results.append(
            {
                "task": {"type": TASK_TYPE, "name": f"Misleading-instruction robustness ({protocol})"},
                "dataset": {
                    "name": f"MUB ({dataset.get('name', 'mub')})",
                    "type": str(dataset.get("name", "mub")),
                    "config": run.config,
                    "split": "test",
                },
                "metrics": _metrics(run.figures),
                "source": {"name": "MUB (Dang et al., 2025)", "url": PAPER_URL},
            }
        )
    return {"model-index": [{"name": runs[0].document["model"], "results": results}]}


def build_submission(run_dirs: Sequence[str | Path]) -> Submission:
    runs = read_runs(run_dirs)
    snippet = yaml.safe_dump(model_index(runs), sort_keys=False, allow_unicode=True, width=120)
    return Submission(leaderboard_results(runs), snippet)


def model_index_path(results_path: Path) -> Path:
    return results_path.with_name(results_path.stem + ".model-index.yaml")


def _is_submission(path: Path) -> bool:
    if path.suffix == ".yaml":
        text = path.read_text(encoding="utf-8", errors="replace")
        return text.startswith("model-index:")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and set(document) == {"config", "results"}


def write_submission(submission: Submission, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Write the results file to ``out`` and the model-index snippet beside it.

    An existing file is replaced only with ``overwrite``, and only if it is an earlier submission.
    """
    out = Path(out)
    for path in (out, model_index_path(out)):
        check_output_file(path, "submit", overwrite=overwrite, made_by_mub=_is_submission)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(submission.results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    snippet = model_index_path(out)
    snippet.write_text(submission.model_index, encoding="utf-8")
    return [out, snippet]


def hub_model_name(model: str, model_name: str | None = None) -> str:
    """The model's name in repository paths: ``model_name`` if given, else ``model`` if it is a Hub id.

    A local path (``../fav``, ``/models/x``, an existing folder) or ``tiny:<arch>`` would put the
    user's file system, or nonsense, into a public repository: ``ValueError`` asking for ``--model-name``.
    """
    name = model_name if model_name is not None else model
    flag = "--model-name" if model_name is not None else "the runs' model"
    if not _HUB_ID.fullmatch(name) or ".." in name.split("/"):
        raise ValueError(f"{flag} {name!r} is not a Hub model id (owner/name); pass --model-name OWNER/NAME")
    if model_name is None and Path(model).exists():
        raise ValueError(f"the runs' model {model!r} is a local path; pass --model-name OWNER/NAME to name it on the Hub")
    return name


def upload_paths(submission: Submission, now: datetime | None = None, model_name: str | None = None) -> tuple[str, str]:
    """Repository paths of the results file and the snippet, laid out as leaderboards do:
    ``<model>/results_<UTC time>.json``, the model named by :func:`hub_model_name`."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H-%M-%S")
    base = f"{hub_model_name(submission.results['config']['model_name'], model_name)}/results_{stamp}"
    return f"{base}.json", f"{base}.model-index.yaml"


def upload(submission: Submission, files: Sequence[Path], repo_id: str, targets: Sequence[str]) -> Sequence[str]:
    """Upload the written files (results, snippet) to ``targets`` in a Hub dataset repository; needs a write token."""
    from huggingface_hub import HfApi

    api = HfApi()
    model = submission.results["config"]["model_name"]
    for file, target in zip(files, targets):
        api.upload_file(
            path_or_fileobj=str(file),
            path_in_repo=target,
            repo_id=repo_id,
            repo_type="dataset",
            commit_message=f"MUB results for {model}",
        )
    return targets
