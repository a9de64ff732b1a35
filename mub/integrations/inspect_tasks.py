"""MUB as an inspect_ai task: ``inspect eval mub/mub_explicit --model <provider/model>``.

Registered through inspect's entry point (``inspect_ai = mub = mub.integrations.inspect_tasks``
in setup.cfg), installed with the ``[inspect]`` extra. Nothing of mub's core imports it.

The task is mub's protocol, not a copy of it: the items are selected by the runner's
``select_items``, stage 1 is rendered by the preset, stage 2 is built from the model's
own parsed stage-1 answer by the runner's ``stage2_cues`` and ``stage2_request``, answers
are read by mub's parser, and the rates are ``mub_misleading_rate``'s. Each sample's
messages hold the whole exchange (stage 1, then every stage-2 request and reply), so
``inspect view`` shows it, and its score carries the item's mub prediction record.

Decoding follows the preset (``max_tokens``, ``temperature``, ``top_p``, ``top_k``) and
each request gets mub's per-request seed, derived from the run seed and the request's key.
"""

from __future__ import annotations

import base64
import io
import json
from functools import lru_cache
from typing import Any, Mapping, Sequence

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import (
    ChatMessage,
    ChatMessageAssistant,
    ChatMessageUser,
    Content,
    ContentImage,
    ContentText,
    GenerateConfig,
    ModelOutput,
    get_model,
)
from inspect_ai.scorer import Metric, SampleScore, Score, Scorer, Target, metric, scorer
from inspect_ai.solver import Generate, Solver, TaskState, solver
from PIL import Image

from mub.backends.base import Exchange, Generation, Request
from mub.backends.common import request_seed, sent_sampling_fields
from mub.config import RunConfig
from mub.protocol import stages
from mub.protocol.presets import setting_of
from mub.protocol.prompts import render
from mub.runs.predictions import ItemPrediction
from mub.runs.results import figure_at
from mub.runs.results import score as score_predictions
from mub.runs.runner import (
    answer_options,
    item_record,
    select_items,
    settle,
    stage2_cues,
    stage2_request,
    stage_answer,
)
from mub_dataset.files import cell_bytes, image_digest

PREDICTION = "mub_prediction"  # the Score metadata key holding the item's ItemPrediction record


def image_data_uri(data: bytes) -> str:
    """The image file's own bytes as a data URI (no re-encoding), its type read from the bytes."""
    with Image.open(io.BytesIO(data)) as image:
        mime = Image.MIME.get(image.format or "", "image/png")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def request_messages(request: Request, image_uri: str) -> list[ChatMessage]:
    """A mub request as inspect messages: the image opens the first user turn, earlier replies verbatim."""
    messages: list[ChatMessage] = []
    for number, (role, text) in enumerate(request.turns()):
        if role == "assistant":
            messages.append(ChatMessageAssistant(content=text))
            continue
        content: list[Content] = [ContentImage(image=image_uri)] if number == 0 else []
        messages.append(ChatMessageUser(content=[*content, ContentText(text=text)]))
    return messages


def generate_config(config: RunConfig, key: str) -> GenerateConfig:
    """The preset's decoding for one request, as an API backend sends it, with its mub seed.

    A field the preset leaves to the model is not set, so the provider applies the model's own.
    """
    decoding = config.decoding()
    return GenerateConfig(
        max_tokens=decoding.max_new_tokens,
        seed=None if decoding.greedy else request_seed(decoding.seed, key),
        **sent_sampling_fields(decoding, send_top_k=True),
    )


def generation_of(output: ModelOutput) -> Generation:
    """An inspect reply as mub's Generation: a failed call is an item error, never a wrong answer."""
    if output.error:
        return Generation(text="", error=f"model error: {output.error}")
    return Generation(text=output.completion)


def samples(config: RunConfig) -> list[Sample]:
    """The run's items as inspect samples: the stage-1 request, the item's row in the metadata."""
    selection = select_items(config)
    prompts = config.preset().prompts[setting_of(config.config)]
    cells = selection.dataset.select_columns(["image"])[selection.indices]["image"]
    found = []
    for row, cell in zip(selection.rows, cells):
        data = cell_bytes(cell)
        request = Request(f"{row['id']}/stage1/0", None, render(row, prompts), answer_options(row))  # type: ignore[arg-type]
        found.append(
            Sample(
                id=row["id"],
                input=request_messages(request, image_data_uri(data)),
                target=row["answer"],
                metadata={"row": row, "group_id": image_digest(data)},
            )
        )
    return found


@solver
def two_stages(config: RunConfig) -> Solver:
    """Stage 1, then stage 2 built from the model's own parsed stage-1 answer, as ``mub run`` asks them."""
    prompts = config.preset().prompts[setting_of(config.config)]
    cue = config.cue_spec()

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        row: Mapping[str, Any] = state.metadata["row"]
        model = get_model()
        stage1_key = f"{row['id']}/stage1/0"
        stage1_output = await model.generate(state.messages, config=generate_config(config, stage1_key))
        stage1_generation = generation_of(stage1_output)
        record = item_record(row, state.metadata["group_id"], [stage_answer(stage1_generation, "", row)])
        image_uri = _image_of(state.messages)
        stage1_turn = Exchange(render(row, prompts), stage1_generation.text) if config.dialogue == "multi" else None
        conversation = [*state.messages, ChatMessageAssistant(content=stage1_generation.text)]
        cues = [] if record.error else stage2_cues(cue, row, stages.is_correct(record.original_prediction, row), config.notes)
        answers = []
        for number, (text, hinted) in enumerate(cues):
            key = f"{row['id']}/stage2/{number}"
            request = stage2_request(key, row, None, prompts, text, stage1_turn)  # type: ignore[arg-type]
            messages = request_messages(request, image_uri)
            output = await model.generate(messages, config=generate_config(config, key))
            generation = generation_of(output)
            answers.append(stage_answer(generation, text.strip(), row, hinted))
            conversation += [messages[-1], ChatMessageAssistant(content=generation.text)]
        record.stage2 = answers
        if record.error is None:
            record.error = next((a.error for a in answers if a.error), None)
            settle(record, row, implicit=cue.uses_notes)
        state.messages = conversation
        state.output = stage1_output if not answers else output
        state.metadata[PREDICTION] = record.to_json()
        return state

    return solve


def _image_of(messages: Sequence[ChatMessage]) -> str:
    first = messages[0]
    return next(part.image for part in first.content if isinstance(part, ContentImage))  # type: ignore[union-attr]


@scorer(metrics=[])
def mub_scorer() -> Scorer:
    """The item's stage-1 and stage-2 answers, read by mub's parser; the rates come from mub's metric."""

    async def score(state: TaskState, target: Target) -> Score:
        record = ItemPrediction.from_json(state.metadata[PREDICTION])
        before, after = record.original_prediction, record.prediction
        return Score(
            value={
                "correct_before": stages.same_answer(before, record.answer),
                "correct_after": stages.same_answer(after, record.answer),
            },
            answer=f"{before} -> {after}",
            explanation=record.error or "",
            metadata={PREDICTION: record.to_json()},
        )

    return score


def _predictions(scores: Sequence[SampleScore]) -> list[ItemPrediction]:
    return [ItemPrediction.from_json(s.score.metadata[PREDICTION]) for s in scores if s.score.metadata]


@lru_cache(maxsize=8)
def _figures(records: tuple[str, ...]) -> dict[str, Any]:
    """mub_misleading_rate's output for the items; cached: every metric below reads the same figures."""
    return score_predictions([ItemPrediction.from_json(json.loads(r)) for r in records])


def figures(scores: Sequence[SampleScore]) -> dict[str, Any]:
    return _figures(tuple(json.dumps(p.to_json(), sort_keys=True) for p in _predictions(scores)))


def _figure_metric(name: str, path: Sequence[str]) -> Metric:
    def compute(scores: list[SampleScore]) -> float:
        return figure_at(figures(scores), path)

    compute.__name__ = name
    return compute


@metric(name="mr_t2f")
def mr_t2f() -> Metric:
    """Misleading rate: correct at stage 1, not after the cue (mub_misleading_rate)."""
    return _figure_metric("mr_t2f", ["mr_t2f"])


@metric(name="mr_f2t")
def mr_f2t() -> Metric:
    """Reverse shift: wrong at stage 1, correct after the cue."""
    return _figure_metric("mr_f2t", ["mr_f2t"])


@metric(name="accuracy")
def accuracy() -> Metric:
    """Stage-1 accuracy."""
    return _figure_metric("accuracy", ["accuracy_before"])


@metric(name="mr_t2f_levels_mean")
def mr_t2f_levels_mean() -> Metric:
    """The paper's headline: the mean of the low, medium and high levels' misleading rates."""
    return _figure_metric("mr_t2f_levels_mean", ["mr_t2f_levels_mean"])


def _level_metric(level: str) -> Metric:
    @metric(name=f"mr_t2f_{level}")
    def level_rate() -> Metric:
        return _figure_metric(f"mr_t2f_{level}", ["by_difficulty", level, "mr_t2f"])

    return level_rate()


def mub_task(
    config: str, *, dataset: str = "sample", protocol: str = "paper", cue: str | None = None, dialogue: str = "single",
    notes: int = 5, difficulty: str | None = None, misled_count: int | None = None, limit: int | None = None, seed: int = 0,
) -> Task:
    """The MUB task for one config with mub's run settings (see ``mub run --help``)."""
    run_config = RunConfig(
        model="inspect", dataset=dataset, config=config, protocol=protocol, cue=cue, dialogue=dialogue, notes=notes,
        difficulty=difficulty, misled_count=misled_count, limit=limit, seed=seed, progress=False, backend="inspect",
    )  # fmt: skip
    run_config.validate()
    if run_config.typographic() is not None:  # the solver's stage 2 resends the item's own image
        raise ValueError("cue typographic draws the cue into the image, which the inspect_ai task does not send; use mub run")
    return Task(
        dataset=MemoryDataset(samples(run_config), name=f"mub_{config}"),
        solver=two_stages(run_config),
        scorer=mub_scorer(),
        metrics=[accuracy(), mr_t2f(), mr_f2t(), mr_t2f_levels_mean(), *(_level_metric(l) for l in ("low", "medium", "high"))],
        metadata={"mub_protocol": protocol, "mub_cue": run_config.cue_name(), "mub_dialogue": dialogue},
    )


@task
def mub_explicit(
    dataset: str = "sample", protocol: str = "paper", cue: str | None = None, dialogue: str = "single",
    difficulty: str | None = None, misled_count: int | None = None, limit: int | None = None, seed: int = 0,
) -> Task:
    """MUB, explicit setting: a false hint after the stage-1 answer (the true one after a wrong answer)."""
    return mub_task("explicit", dataset=dataset, protocol=protocol, cue=cue, dialogue=dialogue, difficulty=difficulty,
                    misled_count=misled_count, limit=limit, seed=seed)  # fmt: skip


@task
def mub_implicit(
    dataset: str = "sample", protocol: str = "paper", dialogue: str = "single", notes: int = 5,
    difficulty: str | None = None, misled_count: int | None = None, limit: int | None = None, seed: int = 0,
) -> Task:
    """MUB, implicit setting: up to ``notes`` misleading (or guiding) notes, one request each."""
    return mub_task("implicit", dataset=dataset, protocol=protocol, dialogue=dialogue, notes=notes,
                    difficulty=difficulty, misled_count=misled_count, limit=limit, seed=seed)  # fmt: skip
