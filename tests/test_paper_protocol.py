"""The ``paper`` preset sends what the authors' released code sends.

Expectations are built the way the authors' functions build them. Their code
is quoted below from github Yunkaidang/uncertainty (commit e5a4bbd), each
piece with its file; ``test_quoted_code_is_the_shared_reference`` checks the
quotes against ../shared/reference_protocol.md.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pytest
from conftest import shared
from fault_server import FaultServer, prompt_of

from mub.cli import main
from mub.config import RunConfig
from mub.protocol.presets import PAPER
from mub.protocol.prompts import explicit_cue, implicit_cue, render
from mub_dataset.records import item_id

KEY_ENV = "MUB_TEST_API_KEY"

# ---- the authors' code, quoted -------------------------------------------------------------

# utils.py
SYSTEM_MSG_MC = '''
    You are an AI assistant who will help me to answer the question based on the given picture.
    Your output answer must be strictly one of the following: A, B or other capital letter given in the options.
    We hope you strictly follow the following format: only output \"A\" or \"B\" or \"Other letter\".
'''

# utils.py
SYSTEM_MSG_YN = '''
    You are an AI assistant who will help me to answer the question based on the given picture.
    The answer options are only Yes or No. 
    We hope you strictly follow the following format: only output \"Yes\" or \"No\"".
'''


# utils.py
def construct_query_base_MC(question, choices):
    prompt = f'''
    {SYSTEM_MSG_MC}
    {question}
    {dictionary_to_text(choices)}
    '''
    return prompt


# utils.py
def dictionary_to_text(dictionary):
    # 按字母顺序输出字典
    sorted_keys = sorted(dictionary.keys())
    lines = []
    for key in sorted_keys:
        lines.append(f"{key}: {dictionary[key]}")
    return "\n".join(lines)


# implicit/Implicit_MR_test/utils.py (named IMPLICIT_* here; the authors' names are SYSTEM_MSG_MC/YN)
IMPLICIT_SYSTEM_MSG_MC = '''
    You are an AI assistant who will help me to answer the question based on the given picture and instructions after the question.
    Your output answer must be strictly one of the following: A, B or other capital letter given in the options,  don’t give any other words.
    We hope you strictly follow the following format: only output \"A\" or \"B\" or other capital letter given in the options.
'''

# implicit/Implicit_MR_test/utils.py
IMPLICIT_SYSTEM_MSG_YN = '''
    You are an AI assistant who will help me to answer the question based on the given picture and instructions after the question.
    The answer options are only Yes or No ,  don’t give any other words. 
    We hope you strictly follow the following format: only output \"Yes\" or \"No\"".
'''


# implicit/Implicit_MR_test/utils.py, construct_query_base_MC(question, hint, choices)
def implicit_construct_query_base_MC(question, hint, choices):
    prompt = f'''
    {IMPLICIT_SYSTEM_MSG_MC}
    {question}
    {hint}
    {dictionary_to_text(choices)}
    '''
    return prompt


def authors_stage1(record: dict) -> str:
    """test_dataset.py: the stage-1 query of a released record."""
    question = record["question"]
    if record["question_type_CHorYN"] == "CH":
        if record["dataset"] == "ConBench_CH":
            return SYSTEM_MSG_MC + question
        return construct_query_base_MC(question, record["choices"])
    return SYSTEM_MSG_YN + question


def explicit_stage2(record: dict, hinted: str) -> str:
    """The released script never inserts the hint; mub places it after the question (the paper's Figure 1)."""
    hint = " And the true answer is : " + hinted
    if record["question_type_CHorYN"] == "CH" and record["dataset"] != "ConBench_CH":
        return construct_query_base_MC(record["question"] + hint, record["choices"])
    return authors_stage1(record) + hint


def implicit_stage1(record: dict) -> str:
    """implicit/Implicit_MR_test/test_dataset2.py"""
    question = record["question"]
    if record["question_type_CHorYN"] == "CH":
        if record["dataset"] == "ConBench_CH":
            return IMPLICIT_SYSTEM_MSG_MC + question
        return IMPLICIT_SYSTEM_MSG_MC + question + dictionary_to_text(record["choices"])
    return IMPLICIT_SYSTEM_MSG_YN + question


def implicit_stage2(record: dict, note: str) -> str:
    """implicit/Implicit_MR_test/test_dataset2.py: note=' Please pay attention to this instruction: '+note"""
    note = " Please pay attention to this instruction: " + note
    question = record["question"]
    if record["question_type_CHorYN"] == "CH":
        if record["dataset"] == "ConBench_CH":
            return IMPLICIT_SYSTEM_MSG_MC + question + note
        return implicit_construct_query_base_MC(question, note, record["choices"])
    return IMPLICIT_SYSTEM_MSG_YN + question + note


# ---- checks --------------------------------------------------------------------------------


def _reference_blocks() -> str:
    text = shared("reference_protocol.md").read_text(encoding="utf-8")
    return "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL))


def test_quoted_code_is_the_shared_reference():
    blocks = _reference_blocks()
    explicit, implicit = blocks.split("def  select_random_choice")[0], blocks.split("def extract_option")[1]
    reference: dict = {}
    exec(explicit.split("if question_type_CHorYN")[0], reference)  # noqa: S102 - the authors' quoted definitions
    assert reference["SYSTEM_MSG_MC"] == SYSTEM_MSG_MC and reference["SYSTEM_MSG_YN"] == SYSTEM_MSG_YN
    choices = {"B": "two", "A": "one"}
    assert reference["construct_query_base_MC"]("Q?", choices) == construct_query_base_MC("Q?", choices)
    implicit_reference: dict = {"dictionary_to_text": dictionary_to_text}
    exec(implicit[implicit.index("SYSTEM_MSG_MC ="):], implicit_reference)  # noqa: S102
    assert implicit_reference["SYSTEM_MSG_MC"] == IMPLICIT_SYSTEM_MSG_MC
    assert implicit_reference["SYSTEM_MSG_YN"] == IMPLICIT_SYSTEM_MSG_YN
    assert implicit_reference["construct_query_base_MC"]("Q?", " h", choices) == implicit_construct_query_base_MC("Q?", " h", choices)


def _row(record: dict) -> dict:
    """The MUB row fields a prompt uses, from a released record."""
    yes_no = record["question_type_CHorYN"] == "YN"
    choices = ["Yes", "No"] if yes_no else [record["choices"][k] for k in sorted(record["choices"])] if record.get("choices") else ["x", "y"]
    return {
        "question": record["question"],
        "choices": choices,
        "question_type": "yes_no" if yes_no else "multiple_choice",
        "source": record["dataset"],
    }


def _release_records() -> list[dict]:
    """Every released record: the main file's, then the implicit files' (which carry the notes)."""
    release = shared()
    files = [release / "all_combined_items.jsonl", *sorted((release / "implicit" / "mislead_output").glob("*.jsonl"))]
    return [record for path in files for record in json.loads(path.read_text(encoding="utf-8"))]


def test_every_released_item_renders_as_the_authors_build_it():
    records = _release_records()
    kinds = {(r["dataset"] == "ConBench_CH", r["question_type_CHorYN"]) for r in records}
    assert {(True, "CH"), (False, "CH"), (False, "YN")} <= kinds
    explicit, implicit = PAPER.prompts["explicit"], PAPER.prompts["implicit"]
    for record in records:
        row = _row(record)
        assert render(row, explicit) == authors_stage1(record)
        assert render(row, explicit, explicit_cue("C", PAPER.hint_template)) == explicit_stage2(record, "C")
        assert render(row, implicit) == implicit_stage1(record)
        note = "Look again at the left side."
        assert render(row, implicit, implicit_cue(note, PAPER.note_template)) == implicit_stage2(record, note)


def test_paper_decoding_levels_and_overrides():
    explicit = RunConfig(model="m").decoding()
    assert (explicit.temperature, explicit.top_k, explicit.top_p, explicit.max_new_tokens) == (0.4, 80, 0.9, 256)
    implicit = RunConfig(model="m", config="implicit").decoding()
    assert (implicit.temperature, implicit.max_new_tokens) == (0.1, 256)
    assert dict(PAPER.levels) == {"low": (6,), "medium": (9,), "high": (12,)}  # MR_test.sh: nums=(6 9 12), '='
    one = RunConfig(model="m", max_new_tokens=32)
    assert (one.decoding().max_new_tokens, one.decoding().temperature) == (32, 0.4)
    assert one.settings({"name": "d", "fingerprint": "f"})["protocol"] == {"preset": "paper", "overrides": {"max_new_tokens": 32}}
    greedy = RunConfig(model="m", protocol="deterministic").decoding()
    assert (greedy.temperature, greedy.max_new_tokens, greedy.top_k) == (0.0, 16, 0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"protocol": "paperz"}, r"^unknown --protocol 'paperz'; choose one of paper, deterministic$"),
        ({"scoring": "logprob"}, r"--protocol paper samples at temperature 0.4; use --protocol deterministic"),
        ({"scoring": "logprob", "protocol": "deterministic", "temperature": 0.7}, r"--temperature samples"),
    ],
)
def test_bad_protocol_choices_get_one_line(settings, message):
    with pytest.raises(ValueError, match=message) as caught:
        RunConfig(model="m", **settings).validate()
    assert "\n" not in str(caught.value)


# ---- against a recording OpenAI-compatible server -------------------------------------------


@pytest.fixture
def records_by_prompt() -> dict[str, dict]:
    """Each released record by its authors' stage-1 prompt (explicit and implicit wordings)."""
    found: dict[str, dict] = {}
    for record in _release_records():
        for prompt in (authors_stage1(record), implicit_stage1(record)):
            found.setdefault(prompt, record)
    return found


@pytest.fixture
def server(records_by_prompt) -> Iterator[FaultServer]:
    """Answers stage 1 correctly, so that explicit stage 2 names the misleading option."""

    def answer(prompt: str) -> str:
        record = records_by_prompt.get(prompt)
        return str(record["answer"]).capitalize() if record else "No idea"

    with FaultServer(answer=answer) as fault_server:
        yield fault_server


def _cli(server: FaultServer, release: Path, out: Path, *extra: str) -> None:
    argv = [
        "run", "--backend", "openai", "--base-url", server.base_url, "--model", "recorder", "--api-key-env", KEY_ENV,
        "--dataset", str(release), "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip
    assert main(argv) == 0


def _stages(server: FaultServer) -> tuple[list[dict], list[dict]]:
    bodies = [r.body for r in server.received]
    first = [b for b in bodies if prompt_of(b).count("And the true answer is") == 0 and "Please pay attention" not in prompt_of(b)]
    return first, [b for b in bodies if b not in first]


def test_a_default_run_sends_the_authors_requests(server, release_dir, records_by_prompt, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    records = {item_id(r["new_id"], r["question"]): r for r in reversed(_release_records())}  # first copy wins
    _cli(server, release_dir, tmp_path / "explicit", "--limit", "60")
    stage1, stage2 = _stages(server)
    assert len(stage1) == len(stage2) == 60
    assert all(prompt_of(b) in records_by_prompt for b in stage1)
    for body in stage1 + stage2:
        assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.4, 0.9, 256)
        assert "top_k" not in body  # not an OpenAI chat parameter: only with --send-top-k
    stage2_prompts = {prompt_of(b) for b in stage2}
    from_release = 0
    for line in (tmp_path / "explicit" / "predictions.jsonl").read_text().splitlines():
        prediction = json.loads(line)
        record = records[prediction["id"]]
        assert prediction["stage1"][0]["parsed"] is not None
        correct = prediction["original_prediction"] == prediction["answer"]
        guide = record["guide"].rsplit(":", 1)[1].strip()
        if correct and guide.lower() != str(record["answer"]).lower():
            hinted = guide  # the release's own wrong option
            from_release += 1
        elif not correct:
            hinted = prediction["answer"]
        else:
            continue  # a seeded wrong option (tests/test_dataset.py checks the rule)
        assert explicit_stage2(record, hinted.capitalize() if record["question_type_CHorYN"] == "YN" else hinted) in stage2_prompts
    assert from_release > 10

    results = json.loads((tmp_path / "explicit" / "results.json").read_text())
    assert results["run"]["protocol"] == {"preset": "paper", "overrides": {}}
    assert json.loads((tmp_path / "explicit" / "run.json").read_text())["protocol"]["preset"] == "paper"


def test_implicit_run_sends_the_authors_notes_at_temperature_0_1(server, release_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    records = {item_id(r["new_id"], r["question"]): r for r in reversed(_release_records())}  # first copy wins
    _cli(server, release_dir, tmp_path / "implicit", "--config", "implicit", "--limit", "6")
    stage1, stage2 = _stages(server)
    assert len(stage1) == 6 and stage2
    for body in stage1 + stage2:
        assert (body["temperature"], body["max_tokens"], body["top_p"]) == (0.1, 256, 1.0)
    stage2_prompts = {prompt_of(b) for b in stage2}
    expected = set()
    for line in (tmp_path / "implicit" / "predictions.jsonl").read_text().splitlines():
        prediction = json.loads(line)
        assert prediction["stage1"][0]["parsed"] is not None
        for answer in prediction["stage2"]:
            note = answer["cue"].removeprefix("Please pay attention to this instruction: ")
            expected.add(implicit_stage2(records[prediction["id"]], note))
    assert expected == stage2_prompts
    results = json.loads((tmp_path / "implicit" / "results.json").read_text())["results"]["implicit"]
    assert set(results["mr_t2f_by_notes"]) == {"1", "2", "3", "4", "5"}
    assert results["mr_t2f_by_notes"]["5"] == results["mr_t2f"]


def test_send_top_k_adds_the_presets_top_k_and_an_explicit_top_k_needs_it(server, release_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    _cli(server, release_dir, tmp_path / "topk", "--limit", "2", "--send-top-k")
    assert {b["top_k"] for b in (r.body for r in server.received)} == {80}
    argv = ["run", "--backend", "openai", "--base-url", server.base_url, "--model", "m", "--api-key-env", KEY_ENV,
            "--dataset", str(release_dir), "--limit", "2", "--top-k", "40", "--out", str(tmp_path / "k40")]  # fmt: skip
    assert main(argv) == 2
    assert "--send-top-k" in capsys.readouterr().err


def test_resume_refuses_another_protocol(server, release_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    _cli(server, release_dir, tmp_path / "run", "--limit", "2")
    argv = ["run", "--backend", "openai", "--base-url", server.base_url, "--model", "recorder", "--api-key-env", KEY_ENV,
            "--dataset", str(release_dir), "--limit", "2", "--out", str(tmp_path / "run"), "--resume",
            "--protocol", "deterministic"]  # fmt: skip
    assert main(argv) == 2
    # stderr may also hold the datasets builder's progress bar (when this test builds the release first)
    error = capsys.readouterr().err
    lines = [line for line in error.splitlines() if line.startswith("mub")]
    assert len(lines) == 1 and "Traceback" not in error
    assert "made under --protocol paper, not deterministic; resume with --protocol paper" in lines[0]
