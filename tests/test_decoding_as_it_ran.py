"""The ``paper`` preset decodes as the authors' code ran, and no backend cuts an answer a reader needs.

Decoding: ``run.py`` set ``max_new_tokens=256, do_sample=True, top_k=80,
top_p=0.9`` on the model's own ``generation_config`` and passed a temperature
that ms-swift dropped (../shared/reference_protocol.md); the implicit
``run.py`` set only ``max_new_tokens=256``. Expectations below are that
recipe applied with transformers' own ``GenerationConfig`` (what
``model.generate`` would have used), never mub's resolution code.

Stopping: under ``eos`` nothing ends an answer but EOS or the token limit;
``answer_line`` ends it only at the newline after a bare answer. The oracle
here is written out independently of :mod:`mub.backends.stopping`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mub.backends import run_decoding
from mub.backends.base import Request
from mub.backends.stopping import answer_line_end, kept_text
from mub.config import RunConfig
from mub.protocol.parsing import parse_answer
from mub.testing.tiny_models import resolve_model_spec

TWO_LINES = "Looking at the image, the building is round.\nThe answer is A."


def _model(tmp_path: Path, **fields: Any) -> str:
    """A copy of the tiny llava whose generation_config.json also sets ``fields``."""
    folder = tmp_path / "model"
    shutil.copytree(resolve_model_spec("tiny:llava"), folder)
    path = folder / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}), encoding="utf-8")
    return str(folder)


def _as_it_ran(model: str, setting: str) -> dict[str, Any]:
    """What generate() used: the model's GenerationConfig with run.py's changes (temperature dropped by ms-swift)."""
    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(model)
    config.max_new_tokens = 256
    if setting == "explicit":
        config.do_sample, config.top_k, config.top_p = True, 80, 0.9
    # What generate() applies where the config leaves a field unset (transformers' own defaults).
    default = GenerationConfig._get_default_generation_params()
    used = {name: default[name] if getattr(config, name) is None else getattr(config, name)
            for name in ("do_sample", "temperature", "top_p", "top_k")}  # fmt: skip
    if not used["do_sample"]:
        return {"do_sample": False, "temperature": 0.0, "max_new_tokens": 256}
    return {**used, "max_new_tokens": 256}


def _resolved(model: str, setting: str, backend: str = "transformers", **flags: Any) -> dict[str, Any]:
    decoding = run_decoding(RunConfig(model=model, config=setting, backend=backend, **flags))
    if decoding.greedy:
        return {"do_sample": False, "temperature": decoding.temperature, "max_new_tokens": decoding.max_new_tokens}
    return {name: getattr(decoding, name) for name in ("do_sample", "temperature", "top_p", "top_k", "max_new_tokens")}


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 0.7},  # names a temperature, does not sample
        {},  # names none: transformers' 1.0
        {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.8},  # samples on its own
        {"do_sample": True},  # samples, transformers' defaults otherwise (top_k 50)
    ],
    ids=["temperature", "nothing", "sampling", "sampling-defaults"],
)
@pytest.mark.parametrize("setting", ["explicit", "implicit"])
def test_paper_decoding_is_the_models_generation_config_as_run_py_changed_it(tmp_path, fields, setting):
    model = _model(tmp_path, **fields)
    expected = _as_it_ran(model, setting)
    assert _resolved(model, setting) == _resolved(model, setting, backend="vllm") == expected


def test_the_explicit_temperature_is_the_models_own(tmp_path):
    assert _resolved(_model(tmp_path, temperature=0.7), "explicit")["temperature"] == 0.7
    shutil.rmtree(tmp_path / "model")
    assert _resolved(_model(tmp_path), "explicit")["temperature"] == 1.0
    shutil.rmtree(tmp_path / "model")
    assert _resolved(_model(tmp_path, temperature=0.7, do_sample=False), "implicit") == {
        "do_sample": False, "temperature": 0.0, "max_new_tokens": 256}  # fmt: skip


def test_a_flag_overrides_one_field_and_run_json_records_what_was_used(tmp_path):
    model = _model(tmp_path, do_sample=True, temperature=0.6, top_k=20, top_p=0.8)
    assert _resolved(model, "implicit", top_p=0.5) == {
        "do_sample": True, "temperature": 0.6, "top_p": 0.5, "top_k": 20, "max_new_tokens": 256}  # fmt: skip
    assert _resolved(model, "explicit", temperature=0.3)["temperature"] == 0.3
    assert _resolved(model, "implicit", temperature=0.0) == {"do_sample": False, "temperature": 0.0, "max_new_tokens": 256}
    # A greedy model sampled by --temperature: the model's (default) top-k and top-p come with it.
    greedy = _model(tmp_path / "g")
    assert _resolved(greedy, "implicit", temperature=0.5) == {
        "do_sample": True, "temperature": 0.5, "top_p": 1.0, "top_k": 50, "max_new_tokens": 256}  # fmt: skip


def test_a_transformers_run_records_the_resolved_decoding(tmp_path):
    from mub.runs.runner import run

    model = _model(tmp_path, temperature=0.7)
    config = RunConfig(model=model, limit=1, out=str(tmp_path / "run"), progress=False, max_new_tokens=4)
    run(config)
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["decoding"]
    assert (recorded["temperature"], recorded["top_k"], recorded["top_p"], recorded["do_sample"]) == (0.7, 80, 0.9, True)
    assert recorded["stop"] == "eos" and recorded["max_new_tokens"] == 4


# ---- the stopping rule ------------------------------------------------------------------------


def _oracle_cut(text: str, labels: tuple[str, ...]) -> str:
    """The answer_line rule written out: the first line with text, if it is one label alone, ends the answer."""
    lines = text.split("\n")
    consumed = 0
    for number, line in enumerate(lines):
        if line.strip():
            if number == len(lines) - 1:
                return text  # no newline after it yet
            core = line.strip().strip("*_`").strip().rstrip(".:").strip().lstrip("([").rstrip(")]").strip()
            bare = core in labels or core.lower() in {label.lower() for label in labels if len(label) > 1}
            return text[: consumed + len(line) + 1] if bare else text
        consumed += len(line) + 1
    return text


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        (TWO_LINES, ("A", "B", "C", "D")),
        ("B\nBecause the sky is blue.", ("A", "B", "C")),
        ("\n\n B.\nmore", ("A", "B")),
        ("(C)\n", ("A", "B", "C")),
        ("**B**\nThe roof", ("A", "B")),
        ("Yes\nThe dog is there.", ("Yes", "No")),
        ("no.\nIt is not.", ("Yes", "No")),
        ("A cat.\nSo B.", ("A", "B")),
        ("E\nsomething", ("A", "B", "C", "D")),  # no option of this item
        ("B. Paris\nC", ("A", "B", "C")),  # more than a label: the model goes on
        ("The answer is B", ("A", "B")),  # no newline yet
        ("", ("A", "B")),
        ("\n", ("A", "B")),
    ],
)
def test_the_stopping_rule(text, labels):
    assert kept_text(text, labels, "answer_line") == _oracle_cut(text, labels)
    assert kept_text(text, labels, "eos") == text
    assert answer_line_end(text, labels) in (None, len(_oracle_cut(text, labels)))


def test_a_two_line_answer_is_kept_whole_and_read_as_its_answer():
    for stop in ("eos", "answer_line"):
        kept = kept_text(TWO_LINES, ("A", "B", "C", "D"), stop)
        assert kept == TWO_LINES and parse_answer(kept, ["w", "x", "y", "z"], "multiple_choice") == "A"


def test_the_transformers_criterion_never_ends_a_two_line_answer_early():
    """Fed token by token, the criterion waits for EOS on the two-line answer and ends "B\\n..." at its newline."""
    import torch

    from mub.backends.transformers_backend import _answer_complete_criteria, _TokenClasses

    path = resolve_model_spec("tiny:llava")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    classes = _TokenClasses(tokenizer, [tokenizer.eos_token_id], len(tokenizer), "cpu")
    image = Image.new("RGB", (4, 4))
    requests = [Request("a", image, "q", ("A", "B", "C", "D")), Request("b", image, "q", ("A", "B", "C", "D"))]
    answers = [tokenizer.encode(TWO_LINES, add_special_tokens=False) + [tokenizer.eos_token_id],
               tokenizer.encode("B\nBecause it is.", add_special_tokens=False) + [tokenizer.eos_token_id]]  # fmt: skip
    width = max(map(len, answers))
    rows = [ids + [tokenizer.eos_token_id] * (width - len(ids)) for ids in answers]
    prompt = [[1, 2, 3]] * 2
    for stop, expected in (("eos", [len(answers[0]), len(answers[1])]),
                           ("answer_line", [len(answers[0]), 1 + _tokens_to_newline(tokenizer, answers[1])])):  # fmt: skip
        criterion = _answer_complete_criteria(classes, 3, requests, stop, tokenizer, "cpu")
        for step in range(1, width + 1):
            criterion(torch.tensor([p + r[:step] for p, r in zip(prompt, rows)]), None)
        assert criterion.lengths.tolist() == expected, stop


def _tokens_to_newline(tokenizer: Any, ids: list[int]) -> int:
    return next(i for i, token in enumerate(ids) if "\n" in tokenizer.decode([token]))


def test_tiny_model_answers_are_the_full_answers_cut_by_the_rule(tmp_path):
    """A model that writes letters, words and newlines: under eos every answer runs to the token limit, newlines
    and all; under answer_line each is that same greedy answer cut by the oracle; batching changes nothing."""
    from mub.backends.transformers_backend import TransformersBackend
    from mub.config import DecodingSettings
    from mub.testing.tiny_models import build_tiny_model

    path = str(build_tiny_model("llava", tmp_path / "newline", favour=(" A", " B", "\n", " the"), answers=False))
    image = Image.new("RGB", (8, 8), (30, 60, 90))
    requests = [Request(f"r{i}", image, f"Question {i}?" + " more" * i, ("A", "B")) for i in range(8)]
    full = TransformersBackend(path, decoding=DecodingSettings(max_new_tokens=12), batch_size=3).generate(requests)
    assert all(g.extra["new_tokens"] == 12 for g in full)
    assert any("\n" in g.text.strip() for g in full)  # newlines inside answers did not end them
    runs = [TransformersBackend(path, decoding=DecodingSettings(max_new_tokens=12, stop="answer_line"), batch_size=size)
            .generate(requests) for size in (3, 1)]  # fmt: skip
    assert [g.text for g in runs[0]] == [g.text for g in runs[1]] == [_oracle_cut(g.text, ("A", "B")) for g in full]
    assert any(g.extra["new_tokens"] < 12 for g in runs[0])  # some answers did end at a bare label's line
