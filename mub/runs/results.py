"""From predictions to ``results.json``: metric inputs, the metric call, the printed table."""

from __future__ import annotations

import platform
from collections import Counter
from importlib import metadata
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import mub_metric
from mub.protocol import stages
from mub.runs.predictions import ItemPrediction

if TYPE_CHECKING:
    from mub.config import RunConfig

VERSIONED_PACKAGES = ("mub", "transformers", "torch", "datasets", "evaluate", "huggingface_hub", "vllm", "openai")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def _metric(config_name: str = "default"):
    # In memory: evaluate's on-disk cache takes a file lock shared by every
    # process scoring at the same time (torchrun ranks, parallel runs).
    return mub_metric.load(config_name, keep_in_memory=True)


def _chosen_stage2_probs(prediction: ItemPrediction) -> dict[str, float] | None:
    if not prediction.stage2:
        return None
    return prediction.stage2[prediction.scored_stage2].option_probs


def metric_inputs(predictions: Sequence[ItemPrediction]) -> dict[str, list]:
    """The metric's per-row inputs for the scored items (those without errors)."""
    scored = [p for p in predictions if p.error is None]
    inputs: dict[str, list] = {
        "predictions": [p.prediction for p in scored],
        "original_predictions": [p.original_prediction for p in scored],
        "references": [p.answer for p in scored],
        "difficulty": [p.difficulty for p in scored],  # None: on no level (in by_misled_count only)
        "misled_count": [str(p.misled_count) for p in scored],
        "source": [p.source for p in scored],
        "question_type": [p.question_type for p in scored],
        "group_id": [p.group_id for p in scored],
    }
    if scored and all(p.flips is not None for p in scored):  # --pressure: the turns of each conversation
        inputs["turn_of_flip"] = [p.turn_of_flip for p in scored]
        inputs["turns_asked"] = [len(p.stage2) for p in scored]
        inputs["flips"] = [p.flips for p in scored]
    before = [p.stage1[0].option_probs for p in scored]
    after = [_chosen_stage2_probs(p) for p in scored]
    if scored and all(before) and all(after):
        inputs["original_confidence"] = [
            probs.get(p.original_prediction or "", 0.0) for p, probs in zip(scored, before)
        ]
        inputs["confidence_on_original_after"] = [
            probs.get(p.original_prediction or "", 0.0) for p, probs in zip(scored, after)
        ]
    return inputs


def draw_counts(predictions: Sequence[ItemPrediction]) -> dict[str, int]:
    """``n_items`` (distinct items) and ``n_draws`` (records: draws, failed ones included) of ``predictions``."""
    return {"n_items": len({p.id for p in predictions}), "n_draws": len(predictions)}


# Breakdowns of the metric's output that get n_items and n_draws per group, by the record field that groups.
COUNTED_BREAKDOWNS = {"by_difficulty": "difficulty", "by_source": "source"}


def score(
    predictions: Sequence[ItemPrediction], *, bootstrap: int = 0, seed: int = 0, pressure_turns: int | None = None
) -> dict[str, Any]:
    """The mub_misleading_rate output over draws plus error and item/draw counts for a list of draw records.

    Every draw is a row (an item drawn k times counts k times, as in the paper); rows share the item's
    ``group_id`` (its image), so the metric's intervals are clustered by item. ``n`` counts scored draws.
    ``pressure_turns`` (``--pressure N``) adds the survival figures of the records' turns of flip.
    """
    if pressure_turns is not None:
        unpushed = next((p for p in predictions if p.error is None and p.flips is None), None)
        if unpushed is not None:
            raise ValueError(
                f"item {unpushed.id} has no pressure turns (no flips) in a --pressure {pressure_turns} run; "
                "redo it with --resume, or score the run without pressure"
            )
    inputs = metric_inputs(predictions)
    if pressure_turns is None:
        for name in ("turn_of_flip", "turns_asked", "flips"):
            inputs.pop(name, None)
    failed = [p for p in predictions if p.error is not None]
    # Items on no level (difficulty None) count in "errors" only, as they count in no level's figures.
    by_level = Counter(p.difficulty for p in failed if p.difficulty is not None)
    errors = {"errors": len(failed), "errors_by_difficulty": dict(by_level)}
    if not inputs["references"]:
        return {"n": 0, **errors, **draw_counts(predictions)}
    kwargs: dict[str, Any] = {"bootstrap": bootstrap, "seed": seed} if bootstrap else {}
    if pressure_turns is not None:
        kwargs["pressure_turns"] = pressure_turns
    result = _metric().compute(**inputs, **kwargs)
    for breakdown, field_name in COUNTED_BREAKDOWNS.items():
        for label, figures in result.get(breakdown, {}).items():
            figures.update(draw_counts([p for p in predictions if getattr(p, field_name) == label]))
    return {**result, **errors, **draw_counts(predictions)}


# What a stage-1-only run measures, at every level of the metric's output.
STAGE1_FIGURES = ("n", "unparsed_before", "accuracy_before", "accuracy_before_ci")


def stage1_figures(figures: Mapping[str, Any]) -> dict[str, Any]:
    """The metric's output cut to stage-1 figures (``--stages 1``): no misleading rates where no cue was given.

    Breakdowns (``by_difficulty`` ...) are cut alike; error counts are kept.
    """
    kept: dict[str, Any] = {}
    for name, value in figures.items():
        if name.startswith("by_") and isinstance(value, Mapping):
            kept[name] = {group: stage1_figures(inner) for group, inner in value.items()}
        elif name in STAGE1_FIGURES or name.startswith(("errors", "n_items")):
            kept[name] = value
    return kept


def rates_by_notes(predictions: Sequence[ItemPrediction], max_notes: int) -> dict[str, dict[str, float | None]]:
    """Implicit rates over draws had only the first k notes been tried, k = 1..max_notes (``--notes``).

    An item counts as flipped within k notes when the note that flipped it
    (``flipped_by_note``, 0-based) is among its first k; the paper's runs with up
    to 3 and up to 5 notes are k = 3 and k = 5 of one run (the first k notes'
    requests are the same in both). ``None`` where no item is in the denominator.
    """
    scored = [p for p in predictions if p.error is None]
    correct = [stages.same_answer(p.original_prediction, p.answer) for p in scored]
    out: dict[str, dict[str, float | None]] = {"mr_t2f_by_notes": {}, "mr_f2t_by_notes": {}}
    for k in range(1, max_notes + 1):
        for key, wanted in (("mr_t2f_by_notes", True), ("mr_f2t_by_notes", False)):
            group = [p for p, right in zip(scored, correct) if right is wanted]
            flipped = sum(1 for p in group if p.flipped_by_note is not None and p.flipped_by_note < k)
            out[key][str(k)] = flipped / len(group) if group else None
    return out


def score_sampling_consistency(predictions: Sequence[ItemPrediction]) -> dict[str, Any] | None:
    """The metric's `consistency` config over repeated stage-1 samples, when there are several."""
    scored = [p for p in predictions if p.error is None and len(p.stage1) >= 2]
    if not scored:
        return None
    return _metric("consistency").compute(
        samples=[[answer.parsed for answer in p.stage1] for p in scored],
        references=[p.answer for p in scored],
    )


def count_incomplete_probs(predictions: Sequence[ItemPrediction]) -> dict[str, int]:
    """How many answers (and items) came with probabilities for only some options (vLLM's top-20 fallback)."""
    flagged = [sum(a.incomplete_probs for a in p.stage1 + p.stage2) for p in predictions]
    return {"answers": sum(flagged), "items": sum(1 for n in flagged if n)}


def build_results(
    config: "RunConfig",
    settings: Mapping[str, Any],
    dataset_info: Mapping[str, Any],
    backend_info: Mapping[str, Any],
    predictions: Sequence[ItemPrediction],
) -> dict[str, Any]:
    results: dict[str, Any] = {config.config: score(predictions, pressure_turns=config.pressure)}
    if config.stages == 1:
        results[config.config] = stage1_figures(results[config.config])
    elif config.config == "implicit":
        results[config.config].update(rates_by_notes(predictions, config.notes))
    sampling = score_sampling_consistency(predictions)
    if sampling is not None:
        results["stage1_sampling"] = sampling
    incomplete = count_incomplete_probs(predictions)
    if incomplete["answers"]:
        results["incomplete_option_probs"] = incomplete
    return {
        "model": config.model,
        "dataset": dict(dataset_info),
        "run": {**settings, "batch_size": config.batch_size, "device": config.device, "backend_info": dict(backend_info)},
        "versions": versions(),
        "results": results,
    }


def figure_at(figures: Mapping[str, Any], path: Sequence[str]) -> float:
    """One figure of a results entry by its keys (``["by_difficulty", "low", "mr_t2f"]``); NaN where it is absent or
    undefined (a rate with no items), as harnesses that take one float per metric expect."""
    value: Any = figures
    for part in path:
        value = (value or {}).get(part)
    return float("nan") if value is None else float(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:5.1f}"


def _interval(ci: Sequence[float] | None) -> str:
    return "" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def format_table(results: Mapping[str, Any]) -> str:
    """A plain-text table of the headline figures, overall and per difficulty.

    ``n`` counts the scored items; ``unparsed`` the answers read as none (stage 1/stage 2); ``errors`` the
    items whose requests failed (not scored; ``--resume`` asks again).
    """
    lines = [f"model: {results['model']}   dataset: {results['dataset']['name']}"]
    if results["run"].get("backend_info", {}).get("plumbing_check"):
        lines.append("plumbing check: a tiny randomly initialised model; these rates mean nothing")
    header = (
        f"{'config':<10} {'subset':<8} {'n':>5} {'unparsed':>9} {'errors':>6} {'acc':>6} {'mr_t2f':>7} "
        f"{'95% CI':<15} {'mr_f2t':>7} {'consist':>7}"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for config_name, figures in results["results"].items():
        if not isinstance(figures, Mapping) or "errors" not in figures:
            continue  # not a config's figures (stage1_sampling)
        errors = figures.get("errors_by_difficulty", {})
        levels = figures.get("by_difficulty", {})
        subsets = [("all", figures, figures["errors"])]
        for level in [*levels, *(level for level in errors if level not in levels)]:
            subsets.append((level, levels.get(level, {"n": 0}), errors.get(level, 0)))
        for subset, f, n_errors in subsets:
            unparsed = f"{f['unparsed_before']}/{f.get('unparsed_after', '-')}" if "unparsed_before" in f else "-"
            lines.append(
                f"{config_name:<10} {subset:<8} {f['n']:>5} {unparsed:>9} {n_errors:>6} "
                f"{_percent(f.get('accuracy_before')):>6} {_percent(f.get('mr_t2f')):>7} "
                f"{_interval(f.get('mr_t2f_ci')):<15} {_percent(f.get('mr_f2t')):>7} {_percent(f.get('consistency')):>7}"
            )
        # The levels are exact counts (6/9/12 of 12 models): the items between them count in `all` only.
        off_level = figures["n"] - sum(f["n"] for f in levels.values())
        off_errors = figures["errors"] - sum(errors.values())
        lines.append(f"{config_name:<10} {'no level':<8} {off_level:>5} {'-':>9} {off_errors:>6}")
    for config_name, figures in results["results"].items():
        pressure = figures.get("pressure") if isinstance(figures, Mapping) else None
        if pressure:
            holding = " ".join(_percent(share).strip() for share in pressure["survival"])
            mean, ci = pressure["mean_turn_of_flip"], pressure["mean_turn_of_flip_ci"]
            shown = "-" if mean is None else f"{mean:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
            lines.append(
                f"{config_name:<10} pressure: % of T holding after turns 1..{pressure['turns']}: {holding}; "
                f"mean turn of flip (restricted to N+1 = {pressure['turns'] + 1}): {shown}; flips: {pressure['flips']}"
            )
    lines.append("n: draws scored; unparsed: answers read as none, stage 1/stage 2; errors: failed draws, not scored")
    lines.append("no level: items misled by 7, 8, 10 or 11 of the 12 reference models, counted in `all` only")
    dataset = results["dataset"]
    drawn = dataset.get("n_items", 0) - dataset.get("items_without_copies", 0)
    if dataset.get("n_draws", drawn) != drawn:
        lines.append(f"draws: {dataset['n_draws']} of {drawn} items, once per release copy (rates over draws)")
    if dataset.get("items_without_copies"):
        lines.append(
            f"not drawn: {dataset['items_without_copies']} items have no copy in the release file this setting reads"
        )
    incomplete = results["results"].get("incomplete_option_probs")
    if incomplete:
        lines.append(
            f"incomplete option probabilities: {incomplete['answers']} answers of {incomplete['items']} items "
            "(an option outside vLLM's top 20 counted as 0; a vLLM with logprob_token_ids gives exact ones)"
        )
    return "\n".join(lines)
