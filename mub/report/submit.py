"""Leaderboard submissions: a results file in the Hub leaderboards' shape, and a model-index block.

The results file follows the shape Hub leaderboard readers walk, one JSON
file alone in ``<org>/<model>/results_<UTC time>.json``::

    {"config": {"model_name", "model_sha", "model_dtype", "protocol", "mub_version",
                "dataset_id", "dataset_revision", "items_fingerprint", "submitted_at",
                "pressure_label", "stage2_settings": {"mub_explicit": {...}, ...}, ...},
     "results": {"mub_explicit": {...}, "mub_implicit": {...}}}

``pressure_label`` (:func:`~mub.report.results_file.pressure_label`) is None for MUB's own cues (the explicit
hint, the implicit notes, one fresh request) and names any other (``opinion``, ``hint (multi-turn)``); the
board ranks only MUB's own and recomputes the label from ``stage2_settings``, the runs' recorded settings. All
runs of one submission share one label: a submission never mixes cues across configs.

Every rate is a fraction, with its 95% Wilson interval as ``<rate>_ci`` and
its numerator and denominator as counts (per level too), so that the board
recomputes it; an exact 0 or 1 is written ``0`` or ``1``. Each task records
``n_items`` and ``n_draws``. Only a run that can rank is submitted: the full
benchmark (no ``tiny:`` model, no ``--limit``/``--difficulty``/
``--misled-count``, no unmerged shard, not the synthetic sample), no item
errors left, every level covered.

Beside it, the Hub's own formats: the model-index block (the ``model-index``
of a Hub model card) and ``.eval_results/mub.yaml`` entries made with
huggingface_hub's :class:`~huggingface_hub.EvalResultEntry`. Both are made
only when the dataset has a Hub id (a local build path never reaches a model
card, and ``upload`` refuses a submission without a Hub dataset id) and the runs
used MUB's own cues: the Hub's MUB tasks hold no other cue's figures.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import yaml

from mub.protocol.presets import CLOSED_MODEL_REQUEST
from mub.report.results_file import BUILD_SUMMARY, is_hub_id, number, pressure_label, rank_refusal, stage2_settings, task_name
from mub.report.rows import read_results, run_folders
from mub.runs.storage import protocol_name
from mub_dataset.features import DIFFICULTY_LEVELS
from mub_dataset.files import give_usual_mode

RATES = ("mr_t2f", "mr_f2t", "accuracy_before", "accuracy_after", "consistency")
COUNTS = ("n", "n_t", "n_f", "t2f", "f2t", "unparsed_before", "unparsed_after", "errors", "n_items", "n_draws")
EVAL_RESULTS_FILE = ".eval_results/mub.yaml"  # where a model repository lists its MUB scores
PAPER_URL = "https://arxiv.org/abs/2411.02708"
TASK_TYPE = "visual-question-answering"
PROTOCOL_NAMES = {"explicit": "explicit hints", "implicit": "implicit notes"}
STAMP_FORMAT = "%Y-%m-%dT%H-%M-%S"


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
    model_index: str | None  # YAML text of the model-card block; None: see card_refusal
    eval_results: str | None = None  # YAML text of .eval_results/mub.yaml; None: see card_refusal

    @property
    def card_refusal(self) -> str | None:
        """Why the model-index block and .eval_results entries were not made, or None when they were."""
        label = self.results["config"].get("pressure_label")
        if label is not None:
            return (
                f"not made, the runs used the stage-2 cue {label!r}, not MUB's own (hint, notes): the Hub's MUB tasks "
                "hold MUB's cues only (the leaderboard shows this cue in its own table)"
            )
        if self.results["config"]["dataset_id"] is None:
            return "not made, the dataset has no Hub id (pass --dataset-id ORG/NAME)"
        return None

    @property
    def path_in_repo(self) -> str:
        """``<org>/<model>/results_<UTC time>.json``, as Hub leaderboard readers expect."""
        config = self.results["config"]
        stamp = datetime.fromisoformat(config["submitted_at"]).strftime(STAMP_FORMAT)
        return f"{model_folder(config['model_name'])}/results_{stamp}.json"


def run_protocol(document: dict[str, Any]) -> str:
    """The protocol a run used, as leaderboards rank by it: the preset's name (``paper``,
    ``deterministic``), marked when the closed-model request asked an API, with its overrides
    spelled out when a flag changed a field, since such a run no longer compares with the
    preset's other runs."""
    settings = document.get("run", {})
    overrides = (settings.get("protocol") or {}).get("overrides") or {}
    name = protocol_name(settings)
    if (settings.get("protocol") or {}).get("api_request") == CLOSED_MODEL_REQUEST:
        name += " (closed-model request)"
    if not overrides:
        return name
    return f"{name} + " + ", ".join(f"{field}={value}" for field, value in sorted(overrides.items()))


def read_runs(run_dirs: Sequence[str | Path]) -> list[RunResults]:
    """The runs of one model, at most one per config, all under one protocol."""
    if not run_dirs:
        raise ValueError("mub submit needs a run folder")
    runs = [
        RunResults(Path(path), config, document)
        for path in run_folders(run_dirs) for document, config in [read_results(path)]
    ]  # fmt: skip
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
    labels = {str(run.path): pressure_label(run.document.get("run", {})) for run in runs}
    if len(set(labels.values())) > 1:
        listed = ", ".join(f"{path}: {label or 'MUB cue'}" for path, label in labels.items())
        raise ValueError(
            f"a submission is for one stage-2 cue; these runs differ ({listed}): submit MUB's own (hint explicit, notes "
            "implicit) together and each other cue's runs in a submission of their own"
        )
    for run in runs:
        check_rankable(run)
    return runs


def check_rankable(run: RunResults) -> None:
    """Refuse, naming the run and the fix, a run that cannot rank: only the full benchmark ranks."""
    reason = rank_refusal(run.document, run.config)
    if reason is not None:
        raise ValueError(f"{run.path}: {reason}")


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


def dataset_revision(runs: Sequence[RunResults], given: str | None = None) -> str | None:
    """The dataset's Hub revision: ``--dataset-revision``, else what the runs or their build recorded."""
    if given is not None:
        return given
    found = set()
    for run in runs:
        dataset = run.document.get("dataset", {})
        summary = Path(str(dataset.get("name", ""))) / BUILD_SUMMARY
        recorded = dataset.get("revision")
        if recorded is None and summary.is_file():
            recorded = json.loads(summary.read_text(encoding="utf-8")).get("revision")
        found.add(recorded)
    return found.pop() if len(found) == 1 else None


def model_config(runs: Sequence[RunResults], hub_dataset: str | None, now: datetime, revision: str | None = None) -> dict[str, Any]:
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
        "dataset_revision": revision,
        "items_fingerprint": {
            task_name(run.config): run.document.get("dataset", {}).get("fingerprint") for run in runs
        },
        "submitted_at": now.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "pressure_label": pressure_label(first.get("run", {})),  # read_runs: the same for every run
        "stage2_settings": {task_name(run.config): stage2_settings(run.document.get("run", {})) for run in runs},
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
    flat["n_draws"] = figures.get("n_draws", figures.get("n_items"))  # one draw per item where not recorded
    flat["mr_t2f_levels_mean"] = figures.get("mr_t2f_levels_mean")
    flat["mcnemar_p"] = figures.get("mcnemar_p")
    for level in DIFFICULTY_LEVELS:
        subset = figures.get("by_difficulty", {}).get(level, {})
        flat[f"mr_t2f_{level}"] = subset.get("mr_t2f")
        flat[f"mr_t2f_{level}_ci"] = subset.get("mr_t2f_ci")
        flat[f"t2f_{level}"] = subset.get("t2f")
        flat[f"n_t_{level}"] = subset.get("n_t")
        flat[f"n_{level}"] = subset.get("n")
    return {key: number(value) for key, value in flat.items()}


def leaderboard_results(
    runs: Sequence[RunResults], hub_dataset: str | None, now: datetime, revision: str | None = None
) -> dict[str, Any]:
    return {
        "config": model_config(runs, hub_dataset, now, revision),
        "results": {task_name(run.config): task_results(run.figures) for run in runs},
    }


def _metric(kind: str, label: str, figures: dict[str, Any], rate: str, denominator: str) -> dict[str, Any] | None:
    value = figures.get(rate)
    if value is None:
        return None
    name = f"{label} (fraction{', lower is better' if kind.startswith('misleading_rate') else ''})"
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


def model_index(runs: Sequence[RunResults], hub_dataset: str, model_name: str, revision: str | None = None) -> dict[str, Any]:
    """The model card's ``model-index`` block: one result entry per config, on the Hub dataset ``hub_dataset``.

    ``model_name`` is the name on the board (``--model-name``), never the runs' local path or ``tiny:`` name.
    """
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
                    **({"revision": revision} if revision else {}),
                },
                "metrics": _metrics(run.figures),
                "source": {"name": "MUB (Dang et al., 2025)", "url": PAPER_URL},
            }
        )
    return {"model-index": [{"name": model_name, "results": results}]}


def _level_note(level: str, protocol: str) -> str:
    return (
        f"misleading rate T->F on the {level} difficulty level (as the protocol defines levels): "
        f"the share of correct stage-1 answers abandoned after a misleading cue; a fraction, lower is better; "
        f"protocol {protocol}"
    )


def eval_result_entries(results: dict[str, Any], revision: str | None) -> list[Any]:
    """``.eval_results`` entries (huggingface_hub's EvalResultEntry): per config, its ranking figure (the
    unweighted mean of the three levels' misleading rates) first, then each level; task ids are the
    configs, as ``mub build`` declares them in the dataset's eval.yaml."""
    from huggingface_hub import EvalResultEntry

    config = results["config"]
    protocol = config["protocol"]
    version = config.get("mub_version") or "unknown"
    common = {
        "dataset_id": config["dataset_id"],
        "dataset_revision": revision,
        "date": config["submitted_at"],
        "source_url": PAPER_URL,
        "source_name": f"mub {version} (mub submit)",
    }
    entries = []
    for task, figures in results["results"].items():
        config_name = task.removeprefix("mub_")
        n_note = f"n_items {figures.get('n_items')}, n_draws {figures.get('n_draws')}"
        entries.append(EvalResultEntry(
            task_id=config_name, value=figures["mr_t2f_levels_mean"], **common,
            notes=f"mr_t2f_levels_mean: unweighted mean of the low, medium and high misleading rates T->F (the "
            f"leaderboard's key for this config); a fraction, lower is better; protocol {protocol}; {n_note}",
        ))  # fmt: skip
        entries += [
            EvalResultEntry(task_id=config_name, value=figures[f"mr_t2f_{level}"], **common, notes=_level_note(level, protocol))
            for level in DIFFICULTY_LEVELS
        ]
    return entries


def eval_results_yaml(results: dict[str, Any], revision: str | None) -> str:
    from huggingface_hub import eval_result_entries_to_yaml

    entries = eval_result_entries_to_yaml(eval_result_entries(results, revision))
    return yaml.safe_dump(entries, sort_keys=False, allow_unicode=True, width=120)


def build_submission(
    run_dirs: Sequence[str | Path],
    *,
    dataset: str | None = None,
    model_name: str | None = None,
    revision: str | None = None,
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
    revision = dataset_revision(runs, revision)
    now = now or datetime.now(timezone.utc).replace(microsecond=0)
    results = leaderboard_results(runs, hub_dataset, now, revision)
    if model_name is not None:
        results["config"]["model_name"] = model_name
    if hub_dataset is None or results["config"]["pressure_label"] is not None:
        return Submission(results, None)
    index = model_index(runs, hub_dataset, results["config"]["model_name"], revision)
    snippet = yaml.safe_dump(index, sort_keys=False, allow_unicode=True, width=120)
    return Submission(results, snippet, eval_results_yaml(results, revision))


def write_submission(submission: Submission, out: str | Path) -> Path:
    """Write the results file, alone, to ``out/<org>/<model>/results_<time>.json``."""
    out = Path(out)
    if out.suffix == ".json":
        raise ValueError(f"--out {out} names a file; it is the folder the results go under (<org>/<model>/results_<time>.json)")
    path = out / submission.path_in_repo
    create_exclusively(path, json.dumps(submission.results, indent=2, ensure_ascii=False) + "\n")
    return path


def create_exclusively(path: Path, text: str) -> None:
    """Write ``text`` to a new file ``path``, whole or not at all: a temporary file, then a hard link to the
    name, which fails if the name exists. Two writers racing for one name: one wins, the other is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        give_usual_mode(staging)
        os.link(staging, path)
    except FileExistsError:
        raise ValueError(f"{path} already exists; a submission never replaces a file (submit again for a new time stamp)") from None
    finally:
        os.unlink(staging)


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


def eval_results_path(submission: Submission, out: str | Path) -> Path:
    """``out/.eval_results/<org>/<model>/mub_<time>.yaml``: hidden, so a results repository's readers skip it."""
    stamp = Path(submission.path_in_repo).stem.removeprefix("results_")
    return Path(out) / ".eval_results" / model_folder(submission.results["config"]["model_name"]) / f"mub_{stamp}.yaml"


def write_eval_results(submission: Submission, out: str | Path) -> Path:
    """Write the ``.eval_results`` entries (a new file, as the results file) for the model repository."""
    if submission.eval_results is None:
        raise ValueError("no .eval_results entries: the dataset has no Hub id (pass --dataset-id ORG/NAME)")
    path = eval_results_path(submission, out)
    create_exclusively(path, submission.eval_results)
    return path


def upload_eval_results(submission: Submission, eval_file: Path, model_repo: str) -> str:
    """Open a pull request adding ``.eval_results/mub.yaml`` to a Hub model repository; returns its URL."""
    check_uploadable(submission)
    from huggingface_hub import HfApi

    info = HfApi().upload_file(
        path_or_fileobj=str(eval_file),
        path_in_repo=EVAL_RESULTS_FILE,
        repo_id=model_repo,
        repo_type="model",
        create_pr=True,
        commit_message=f"MUB results ({submission.results['config']['protocol']} protocol)",
    )
    return str(getattr(info, "pr_url", None) or info)
