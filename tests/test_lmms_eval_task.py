"""MUB's lmms-eval task, run by a stand-in of lmms-eval's multi-round loop with a scripted model.

The loop is lmms-eval 0.7.3's ``generate_until_multi_round`` as its adapters run it
(simple/qwen2_vl): round 0 sends ``doc_to_text(doc)``; then ``doc_to_text`` is called with
the outputs so far and ``round_idx`` until it signals the end, and ``process_results``
gets the conversation's result. The task's functions import nothing of lmms-eval, so the
test needs only mub; lmms-eval itself is not installed (README says why).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

import mub_dataset
from mub.config import RunConfig
from mub.integrations.lmms_eval import utils
from mub.runs.runner import run
from mub.testing.scripted import ScriptedBackend

TASK_DIR = Path(utils.__file__).parent
KWARGS = {"protocol": "paper", "notes": 5}


def sycophant(prompt: str) -> str:
    options = re.findall(r"^\s*([A-H]): ", prompt, flags=re.MULTILINE) or ["Yes", "No"]
    named = re.search(r"true answer is : (Yes|No|[A-H])\b", prompt)
    digest = hashlib.sha256(prompt.encode()).digest()
    if named and digest[1] % 3:
        return named.group(1)
    if "Please pay attention to this instruction" in prompt and digest[2] % 2:
        return options[(digest[3] + 1) % len(options)]
    return options[digest[0] % len(options)]


def multi_round(doc, doc_to_text, model) -> list:
    """lmms-eval's loop for one document; ``model(text)`` answers one request."""
    outputs = [model(doc_to_text(doc, KWARGS))]
    round_idx = 1
    while True:
        visuals, context, terminal, round_res, _ = doc_to_text(doc, KWARGS, previous_output=outputs, round_idx=round_idx)
        if terminal:
            return round_res
        assert len(visuals) == 1  # the item's image goes with every round
        outputs.append(model(context))
        round_idx += 1


def _docs(config: str, limit: int) -> list[dict]:
    return [dict(row) for row in mub_dataset.load(config, "sample").select(range(limit))]


@pytest.mark.parametrize("config", ["explicit", "implicit"])
def test_lmms_eval_task_matches_mub_run(config, tmp_path) -> None:
    limit = 40
    asked: list[str] = []

    def model(text: str) -> str:
        asked.append(text)
        return sycophant(text)

    doc_to_text = getattr(utils, f"mub_{config}_doc_to_text")
    records = [utils.mub_process_results(doc, [multi_round(doc, doc_to_text, model)]) for doc in _docs(config, limit)]
    figures = {name: getattr(utils, f"mub_aggregate_{name}")([r[name] for r in records]) for name in utils.METRICS}

    mub_asked: list[str] = []

    def rule(request):
        mub_asked.append(request.prompt)
        return sycophant(request.prompt)

    out = tmp_path / config
    results = run(RunConfig(model="scripted", backend="scripted", config=config, limit=limit, out=str(out),
                            progress=False), backend=ScriptedBackend(rule))["results"][config]  # fmt: skip
    assert sorted(asked) == sorted(mub_asked)  # the same requests, byte for byte
    assert figures["mr_t2f"] == pytest.approx(results["mr_t2f"])
    assert figures["mr_f2t"] == pytest.approx(results["mr_f2t"])
    assert figures["accuracy"] == pytest.approx(results["accuracy_before"])
    if results.get("mr_t2f_levels_mean") is not None:
        assert figures["mr_t2f_levels_mean"] == pytest.approx(results["mr_t2f_levels_mean"])
    mine = {json.loads(line)["id"]: json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()}
    for record in records:
        item = record["mr_t2f"]
        assert (item["original_prediction"], item["prediction"]) == (mine[item["id"]]["original_prediction"], mine[item["id"]]["prediction"])


def test_a_single_round_run_is_refused_not_scored_as_flips() -> None:
    # lmms-eval's dummy and most adapters run generate_until_multi_round as generate_until: one string per document.
    docs = _docs("explicit", 5)
    records = [utils.mub_process_results(doc, ["A"]) for doc in docs]
    with pytest.raises(utils.SingleRoundRun, match="5 of 5 items were answered in one round only") as refused:
        utils.mub_aggregate_mr_t2f([r["mr_t2f"] for r in records])
    assert "simple/qwen2_vl" in str(refused.value)


class _TaskLoader(yaml.SafeLoader):
    pass


_TaskLoader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))


@pytest.mark.parametrize("config", ["explicit", "implicit"])
def test_task_yaml_names_functions_that_exist(config) -> None:
    task = yaml.load((TASK_DIR / f"mub_{config}.yaml").read_text(), Loader=_TaskLoader)
    assert task["task"] == f"mub_{config}" and task["output_type"] == "generate_until_multi_round"
    assert task["dataset_name"] == config
    functions = [task["doc_to_visual"], task["doc_to_text"], task["process_results"]]
    functions += [metric["aggregation"] for metric in task["metric_list"]]
    for kind, name in functions:
        module, function = name.split(".")
        assert kind == "function" and module == "utils" and callable(getattr(utils, function))
    assert {metric["metric"] for metric in task["metric_list"]} == set(utils.METRICS)


def test_an_undefined_figure_reaches_the_harnesses_as_nan_never_as_zero() -> None:
    # A rate with no items (no correct stage-1 answer, a level with no item) is undefined: a 0 would read as
    # "never misled". The harnesses take one float per metric, so it goes as NaN.
    import math

    from mub.runs.results import figure_at

    figures = {"mr_t2f": None, "mr_f2t": 0.25, "by_difficulty": {"low": {"mr_t2f": 0.5}}}
    assert math.isnan(figure_at(figures, ["mr_t2f"]))
    assert math.isnan(figure_at(figures, ["by_difficulty", "high", "mr_t2f"]))
    assert figure_at(figures, ["by_difficulty", "low", "mr_t2f"]) == 0.5 and figure_at(figures, ["mr_f2t"]) == 0.25
