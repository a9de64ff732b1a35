"""MUB inside inspect_ai: the same requests and the same numbers as `mub run`, offline with mockllm.

One scripted "model" answers both harnesses: a function of the conversation's turns
(texts only). `mub run` calls it through ScriptedBackend, inspect through mockllm's
custom outputs (which carry their own usage, so mockllm counts no tokens with tiktoken,
whose encoding it would download).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

inspect_ai = pytest.importorskip("inspect_ai", reason="the [inspect] extra: pip install -e '.[inspect]'")

from inspect_ai import eval as inspect_eval  # noqa: E402
from inspect_ai.model import ChatMessageAssistant, ContentImage, ContentText, ModelOutput, ModelUsage  # noqa: E402

from mub.config import RunConfig  # noqa: E402
from mub.integrations.inspect_tasks import PREDICTION, mub_explicit, mub_implicit  # noqa: E402
from mub.runs.runner import run  # noqa: E402
from mub.testing.scripted import ScriptedBackend  # noqa: E402


def sycophant(turns: list[tuple[str, str]]) -> str:
    """Answers from the last user turn: stage 1 by a hash of the prompt; gives in to a named option two times in three."""
    prompt = turns[-1][1]
    options = re.findall(r"^([A-H])[.:] ", prompt, flags=re.MULTILINE) or ["Yes", "No"]
    named = re.search(r"(?:true answer is : |answer is )(Yes|No|[A-H])\b", prompt)
    digest = hashlib.sha256("\n".join(text for _, text in turns).encode()).digest()
    if named and digest[1] % 3:
        return named.group(1)
    if "Please pay attention to this instruction" in prompt and digest[2] % 2:
        return options[(digest[3] + 1) % len(options)]
    return options[digest[0] % len(options)]


def _turns_of(messages) -> list[tuple[str, str]]:
    turns = []
    for message in messages:
        if isinstance(message.content, str):
            turns.append((message.role, message.content))
        else:
            turns.append((message.role, "".join(p.text for p in message.content if isinstance(p, ContentText))))
    return turns


class Recorder:
    """mockllm's custom outputs: the sycophant's answer, each request's turns recorded."""

    def __init__(self) -> None:
        self.requests: list[list[tuple[str, str]]] = []
        self.images: list[int] = []

    def __call__(self, messages, tools, tool_choice, config) -> ModelOutput:
        turns = _turns_of(messages)
        self.requests.append(turns)
        first = messages[0].content
        self.images.append(sum(isinstance(p, ContentImage) for p in first) if not isinstance(first, str) else 0)
        output = ModelOutput.from_content(model="mockllm", content=sycophant(turns))
        output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
        return output


def _mub_run(tmp_path: Path, config: str, **settings) -> tuple[dict, list[list[tuple[str, str]]], dict[str, dict]]:
    seen: list[list[tuple[str, str]]] = []

    def rule(request):
        seen.append(request.turns())
        return sycophant(request.turns())

    out = tmp_path / f"mub_{config}"
    results = run(
        RunConfig(model="scripted", backend="scripted", config=config, out=str(out), progress=False, **settings),
        backend=ScriptedBackend(rule),
    )
    records = {json.loads(line)["id"]: json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()}
    return results["results"][config], seen, records


def _inspect(tmp_path: Path, task, **task_args):
    recorder = Recorder()
    [log] = inspect_eval(
        task(**task_args), model="mockllm/model", model_args={"custom_outputs": recorder}, log_dir=str(tmp_path / "logs"),
        display="none", max_connections=1,
    )  # fmt: skip
    assert log.status == "success", log.error
    return log, recorder


@pytest.mark.parametrize(
    ("task", "config", "settings"),
    [
        (mub_explicit, "explicit", {"limit": 60}),
        (mub_explicit, "explicit", {"limit": 30, "protocol": "deterministic", "cue": "opinion", "dialogue": "multi"}),
        (mub_implicit, "implicit", {"limit": 30}),
    ],
)
def test_inspect_task_asks_and_scores_exactly_as_mub_run(task, config, settings, tmp_path) -> None:
    expected, mub_requests, mub_records = _mub_run(tmp_path, config, **settings)
    log, recorder = _inspect(tmp_path, task, **settings)
    # The same requests, byte for byte (order aside: inspect runs samples concurrently).
    assert sorted(map(tuple, recorder.requests)) == sorted(map(tuple, mub_requests))
    assert set(recorder.images) == {1}  # every request opens with the item's image
    # The same per-item answers.
    for sample in log.samples:
        record = sample.scores["mub_scorer"].metadata[PREDICTION]
        mine = mub_records[sample.id]
        assert (record["original_prediction"], record["prediction"]) == (mine["original_prediction"], mine["prediction"])
    # The same rates.
    metrics = {name: m.value for name, m in log.results.scores[0].metrics.items()}
    assert metrics["mr_t2f"] == pytest.approx(expected["mr_t2f"])
    assert metrics["mr_f2t"] == pytest.approx(expected["mr_f2t"])
    assert metrics["accuracy"] == pytest.approx(expected["accuracy_before"])
    for level in ("low", "medium", "high"):
        rate = expected["by_difficulty"].get(level, {}).get("mr_t2f")
        if rate is not None:
            assert metrics[f"mr_t2f_{level}"] == pytest.approx(rate)
    # The log holds the whole exchange: stage 1's reply and every stage-2 turn.
    sample = log.samples[0]
    replies = [m for m in sample.messages if isinstance(m, ChatMessageAssistant)]
    record = sample.scores["mub_scorer"].metadata[PREDICTION]
    assert len(replies) == 1 + len(record["stage2"])
    assert replies[0].text == record["stage1"][0]["output"]


def test_inspect_finds_the_tasks_through_the_entry_point(tmp_path) -> None:
    # From outside the checkout, as a user runs it: at the repository root the build's mub.egg-info shadows the
    # installed distribution, and inspect then registers the task without its "mub/" namespace.
    code = """
import sys
from inspect_ai import eval
from inspect_ai.model import ModelOutput, ModelUsage
def answer(messages, tools, tool_choice, config):
    output = ModelOutput.from_content(model="mockllm", content="A")
    output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return output
[log] = eval("mub/mub_explicit", task_args={"limit": 4}, model="mockllm/model", model_args={"custom_outputs": answer},
             log_dir=sys.argv[1], display="none")
print(log.status, len(log.samples), sorted(log.results.scores[0].metrics))
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "logs")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[:2] == ["success", "4"] and "mr_t2f" in done.stdout
