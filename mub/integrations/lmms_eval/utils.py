"""MUB as an lmms-eval task (``mub_explicit``, ``mub_implicit``; ``--include_path`` this folder).

lmms-eval's ``generate_until_multi_round`` asks round 0 (stage 1), then calls
:func:`mub_doc_to_text` with the outputs so far: round 1 builds the stage-2 request from
the model's own parsed stage-1 answer with mub's cue code (the runner's ``stage2_cues``
and ``stage2_request``), implicit items take one round per note, and the last call ends
the conversation. :func:`mub_process_results` reads the rounds with mub's parser and the
aggregations are ``mub_misleading_rate``'s, as in ``mub run``.

Only adapters that implement multi-round generation run stage 2 (lmms-eval 0.7.3:
``chat/vllm``, ``simple/qwen2_vl``, ``simple/qwen2_5_vl``, ``simple/llava_onevision``);
others answer round 0 alone. Such an item is refused, never scored as a flip.
Each round is a fresh request (lmms-eval sends no history), so only ``--dialogue single``
(MUB's own form) is expressible here.

This module imports nothing of lmms-eval: its functions are plain and tested on their own.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from mub.backends.base import Generation
from mub.config import RunConfig
from mub.protocol import stages
from mub.protocol.presets import level_of, setting_of
from mub.protocol.prompts import render
from mub.runs.predictions import ItemPrediction
from mub.runs.results import figure_at, score
from mub.runs.runner import item_record, settle, stage2_cues, stage2_request, stage_answer

SETTINGS_MARK = "mub-settings:"  # the last element of a finished conversation: the settings it ran under
MULTI_ROUND_ADAPTERS = ("chat/vllm", "simple/qwen2_vl", "simple/qwen2_5_vl", "simple/llava_onevision")


class SingleRoundRun(ValueError):
    """The model adapter answered stage 1 only: nothing can be scored."""


def run_config(config: str, kwargs: Mapping[str, Any] | None) -> RunConfig:
    """The mub settings of the task (``lmms_eval_specific_kwargs``: protocol, cue, notes)."""
    kwargs = dict(kwargs or {})
    settings = RunConfig(
        model="lmms-eval", config=config, protocol=kwargs.get("protocol", "paper"), cue=kwargs.get("cue"),
        notes=int(kwargs.get("notes", 5)), backend="lmms-eval",
    )  # fmt: skip
    settings.validate()
    if settings.typographic() is not None:  # the task's stage 2 resends the item's own image
        raise ValueError("cue typographic draws the cue into the image, which the lmms-eval task does not send; use mub run")
    return settings


def item_row(doc: Mapping[str, Any], settings: RunConfig) -> dict[str, Any]:
    """The item as the runner sees it: the dataset row without its image, levelled by the preset."""
    row = {key: value for key, value in doc.items() if key != "image"}
    row["difficulty"] = level_of(settings.preset().levels, row["misled_count"])
    return row


def mub_doc_to_visual(doc: Mapping[str, Any]) -> list[Any]:
    return [doc["image"].convert("RGB")]


def _stage2(row: Mapping[str, Any], settings: RunConfig, stage1_text: str) -> list[tuple[str, str | None]]:
    answer = stage_answer(Generation(text=stage1_text), "", row)
    return stage2_cues(settings.cue_spec(), row, stages.is_correct(answer.parsed, row), settings.notes)


def doc_to_text(
    config: str, doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, Any] | None = None,
    previous_output: Sequence[str] | None = None, round_idx: int | None = None, previous_round_info: Any = None,
) -> Any:
    """Round 0 (``round_idx`` None): the stage-1 prompt. Round k: the k-th stage-2 request, or the end."""
    settings = run_config(config, lmms_eval_specific_kwargs)
    row = item_row(doc, settings)
    prompts = settings.preset().prompts[setting_of(config)]
    if round_idx is None:
        return render(row, prompts)
    outputs = list(previous_output or [])
    cues = _stage2(row, settings, outputs[0])
    if round_idx > len(cues):  # every cue asked: the conversation's result is its outputs and its settings
        marker = SETTINGS_MARK + json.dumps({"config": config, **dict(lmms_eval_specific_kwargs or {})})
        return None, None, True, [*outputs, marker], None
    text, _ = cues[round_idx - 1]
    request = stage2_request(f"{row['id']}/stage2/{round_idx - 1}", row, None, prompts, text, None)  # type: ignore[arg-type]
    return mub_doc_to_visual(doc), request.prompt, False, outputs, None


def mub_explicit_doc_to_text(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None, previous_round_info=None):
    return doc_to_text("explicit", doc, lmms_eval_specific_kwargs, previous_output, round_idx, previous_round_info)


def mub_implicit_doc_to_text(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None, previous_round_info=None):
    return doc_to_text("implicit", doc, lmms_eval_specific_kwargs, previous_output, round_idx, previous_round_info)


def mub_process_results(doc: Mapping[str, Any], results: Sequence[Any]) -> dict[str, Any]:
    """The item's mub record from its rounds (stage 1, then each stage-2 reply), under every metric's key.

    An item answered in one round (an adapter without multi-round generation) is
    recorded as such and refused by the aggregations.
    """
    rounds = results[0]
    if isinstance(rounds, str) or not rounds or not str(rounds[-1]).startswith(SETTINGS_MARK):
        record = {"single_round": True, "id": doc["id"]}
        return {name: record for name in METRICS}
    kwargs = json.loads(str(rounds[-1])[len(SETTINGS_MARK) :])
    config = kwargs.pop("config")
    settings = run_config(config, kwargs)
    row = item_row(doc, settings)
    outputs = [str(text) for text in rounds[:-1]]
    prediction = item_record(row, "", [stage_answer(Generation(text=outputs[0]), "", row)])
    cues = _stage2(row, settings, outputs[0])
    prediction.stage2 = [
        stage_answer(Generation(text=text), cue.strip(), row, hinted) for (cue, hinted), text in zip(cues, outputs[1:])
    ]
    settle(prediction, row, implicit=settings.cue_spec().uses_notes)
    return {name: prediction.to_json() for name in METRICS}


def figures(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """mub_misleading_rate over the items; refuses a run in which stage 2 did not happen."""
    single = [r["id"] for r in records if r.get("single_round")]
    if single:
        raise SingleRoundRun(
            f"{len(single)} of {len(records)} items were answered in one round only (first: {single[0]}): the model "
            "adapter does not implement generate_until_multi_round, so stage 2 never happened and no misleading rate "
            f"exists; use an adapter that does ({', '.join(MULTI_ROUND_ADAPTERS)}) or `mub run`"
        )
    return score([ItemPrediction.from_json(dict(r)) for r in records])


def _aggregate(path: Sequence[str]):
    def aggregate(records: Sequence[Mapping[str, Any]]) -> float:
        return figure_at(figures(records), path)

    return aggregate


METRICS = {
    "mr_t2f": ("mr_t2f",),
    "mr_f2t": ("mr_f2t",),
    "accuracy": ("accuracy_before",),
    "mr_t2f_levels_mean": ("mr_t2f_levels_mean",),
}
mub_aggregate_mr_t2f = _aggregate(METRICS["mr_t2f"])
mub_aggregate_mr_f2t = _aggregate(METRICS["mr_f2t"])
mub_aggregate_accuracy = _aggregate(METRICS["accuracy"])
mub_aggregate_mr_t2f_levels_mean = _aggregate(METRICS["mr_t2f_levels_mean"])
