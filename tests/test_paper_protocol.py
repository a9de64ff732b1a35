"""The ``paper`` preset sends what the authors' released code sends.

Expectations are built the way the authors' functions build them. Their code
is quoted below from github Yunkaidang/uncertainty (commit e5a4bbd), each
piece with its file; ``test_quoted_code_is_the_shared_reference`` checks the
quotes against ../shared/reference_protocol.md.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
from authors_code import seg_note
from conftest import shared
from fault_server import FaultServer, prompt_of
from recount import rates_by_notes as rates_by_hand

from mub.cli import main
from mub.config import RunConfig
from mub.protocol.presets import PAPER, level_of
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


def test_mub_renders_what_the_shared_reference_code_builds():
    """The authors' code as quoted in ../shared/reference_protocol.md, executed, against mub's paper preset
    (and against this file's copies of it, which the other tests use)."""
    blocks = _reference_blocks()
    explicit, implicit = blocks.split("def  select_random_choice")[0], blocks.split("def extract_option")[1]
    reference: dict = {}
    exec(explicit.split("if question_type_CHorYN")[0], reference)  # noqa: S102 - the authors' quoted definitions
    implicit_reference: dict = {"dictionary_to_text": dictionary_to_text}
    exec(implicit[implicit.index("SYSTEM_MSG_MC ="):], implicit_reference)  # noqa: S102
    assert (reference["SYSTEM_MSG_MC"], reference["SYSTEM_MSG_YN"]) == (SYSTEM_MSG_MC, SYSTEM_MSG_YN)
    assert (implicit_reference["SYSTEM_MSG_MC"], implicit_reference["SYSTEM_MSG_YN"]) == (IMPLICIT_SYSTEM_MSG_MC, IMPLICIT_SYSTEM_MSG_YN)
    choices = {"B": "two", "A": "one", "C": "three"}
    assert reference["construct_query_base_MC"]("Q?", choices) == construct_query_base_MC("Q?", choices)
    assert implicit_reference["construct_query_base_MC"]("Q?", " h", choices) == implicit_construct_query_base_MC("Q?", " h", choices)

    mc = {"question": "Q? <image 1>", "choices": ["one", "two", "three"], "question_type": "multiple_choice", "source": "MMMU"}
    yn = {"question": "Is it red?", "choices": ["Yes", "No"], "question_type": "yes_no", "source": "MME"}
    inline = {**mc, "question": "Q? A) one B) two", "source": "ConBench_CH"}
    explicit_prompts, implicit_prompts = PAPER.prompts["explicit"], PAPER.prompts["implicit"]
    note = "Look at the left."
    assert render(mc, explicit_prompts) == reference["construct_query_base_MC"](mc["question"], choices)
    assert render(yn, explicit_prompts) == reference["SYSTEM_MSG_YN"] + yn["question"]
    assert render(inline, explicit_prompts) == reference["SYSTEM_MSG_MC"] + inline["question"]
    assert render(mc, implicit_prompts) == implicit_reference["SYSTEM_MSG_MC"] + mc["question"] + dictionary_to_text(choices)
    assert render(mc, implicit_prompts, implicit_cue(note, PAPER.note_template)) == implicit_reference[
        "construct_query_base_MC"
    ](mc["question"], " Please pay attention to this instruction: " + note, choices)
    assert render(yn, implicit_prompts, implicit_cue(note, PAPER.note_template)) == (
        implicit_reference["SYSTEM_MSG_YN"] + yn["question"] + " Please pay attention to this instruction: " + note
    )


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
    # run.py: the model's generation_config with sampling, top-k 80, top-p 0.9, 256 tokens; its temperature
    # never reached the model (tests/test_decoding_as_it_ran.py resolves "model" against a tiny model).
    explicit = RunConfig(model="m").decoding()
    assert (explicit.do_sample, explicit.temperature, explicit.top_k, explicit.top_p, explicit.max_new_tokens) == (
        True, "model", 80, 0.9, 256)  # fmt: skip
    implicit = RunConfig(model="m", config="implicit").decoding()
    assert (implicit.do_sample, implicit.temperature, implicit.top_k, implicit.top_p, implicit.max_new_tokens) == (
        "model", "model", "model", "model", 256)  # fmt: skip
    assert explicit.stop == implicit.stop == "eos"  # the authors read the whole response
    # MR_test.sh: nums=(6 9 12), '=': exact counts, every count in between on no level
    assert [level_of(PAPER.levels, count) for count in range(6, 13)] == ["low", None, None, "medium", None, None, "high"]
    one = RunConfig(model="m", max_new_tokens=32)
    assert (one.decoding().max_new_tokens, one.decoding().temperature) == (32, "model")
    assert one.settings({"name": "d", "fingerprint": "f"})["protocol"] == {
        "preset": "paper", "overrides": {"max_new_tokens": 32}, "api_request": "open"}  # fmt: skip
    greedy = RunConfig(model="m", protocol="deterministic").decoding()
    assert (greedy.temperature, greedy.max_new_tokens, greedy.top_k, greedy.stop) == (0.0, 16, 0, "answer_line")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"protocol": "paperz"}, r"^unknown --protocol 'paperz'; choose one of paper, deterministic$"),
        ({"scoring": "logprob"}, r"--protocol paper samples at temperature model; use --protocol deterministic"),
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
    # One stage-1 and one stage-2 request per copy: the records of the item in the main file (run.py runs each).
    main_file = json.loads((shared() / "all_combined_items.jsonl").read_text(encoding="utf-8"))
    copies = Counter(item_id(r["new_id"], r["question"]) for r in main_file)
    drawn = {json.loads(line)["id"] for line in (tmp_path / "explicit" / "predictions.jsonl").read_text().splitlines()}
    assert len(drawn) == 60 and len(stage1) == len(stage2) == sum(copies[i] for i in drawn) > 60
    assert all(prompt_of(b) in records_by_prompt for b in stage1)
    for body in stage1 + stage2:
        # No temperature: the server applies the model's own, as ms-swift left the model's own.
        assert (body["top_p"], body["max_tokens"]) == (0.9, 256) and "temperature" not in body
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
    assert results["run"]["protocol"] == {"preset": "paper", "overrides": {}, "api_request": "open"}
    assert json.loads((tmp_path / "explicit" / "run.json").read_text())["protocol"]["preset"] == "paper"


def test_implicit_run_sends_the_authors_notes_split_by_seg_note(server, release_dir, tmp_path, monkeypatch):
    """Every implicit item: stage 2 sends, per note of the first 5 that seg_note gives (empty pieces included),
    the authors' request; misleading notes after a correct stage 1, guiding ones after a wrong one."""
    monkeypatch.setenv(KEY_ENV, "sk-test")
    implicit = {}
    for path in sorted((shared() / "implicit" / "mislead_output").glob("*.jsonl")):
        for record in json.loads(path.read_text(encoding="utf-8")):
            implicit.setdefault(item_id(record["new_id"], record["question"]), record)
    _cli(server, release_dir, tmp_path / "implicit", "--config", "implicit")
    stage1, stage2 = _stages(server)
    # One stage-1 request per copy of each item in the implicit files (the authors' implicit run.py runs each).
    implicit_files = sorted((shared() / "implicit" / "mislead_output").glob("*.jsonl"))
    copies = Counter(item_id(r["new_id"], r["question"]) for f in implicit_files for r in json.loads(f.read_text(encoding="utf-8")))
    drawn = {json.loads(line)["id"] for line in (tmp_path / "implicit" / "predictions.jsonl").read_text().splitlines()}
    assert drawn == set(implicit) and len(stage1) == sum(copies[i] for i in drawn) > len(implicit)
    for body in stage1 + stage2:  # the model's own generation_config decides everything but the 256 tokens
        assert body["max_tokens"] == 256 and not {"temperature", "top_p", "top_k"} & set(body)
    sent = [prompt_of(b) for b in stage2]
    expected = []
    with_empty = 0
    for line in (tmp_path / "implicit" / "predictions.jsonl").read_text().splitlines():
        prediction = json.loads(line)
        record = implicit[prediction["id"]]
        correct = prediction["original_prediction"] == prediction["answer"]
        notes = seg_note(record["closed_model_response_F" if correct else "closed_model_response_T"])[:5]
        with_empty += "" in notes
        expected += [implicit_stage2(record, note) for note in notes]
    assert sorted(sent) == sorted(expected)
    assert with_empty >= 3  # items whose requests include one ending in "Please pay attention to this instruction: "
    assert any(p.endswith("Please pay attention to this instruction: ") or "instruction: \n" in p for p in sent)
    results = json.loads((tmp_path / "implicit" / "results.json").read_text())["results"]["implicit"]
    records = [json.loads(line) for line in (tmp_path / "implicit" / "predictions.jsonl").read_text().splitlines()]
    recounted = rates_by_hand(records, 5)  # --notes 5 by default: k = 1..5, from the records' note answers
    assert {key: results[key] for key in recounted} == recounted
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
