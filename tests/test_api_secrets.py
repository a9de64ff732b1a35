"""The API key appears in no file and no output, in any encoding a server or a model may echo it in.

Issue 13: a 401 body echoing the ``Authorization`` header put the key into
``predictions.jsonl`` base64-encoded (alone or as ``Bearer <key>``),
upper-cased, split by a newline and ``\\u``-escaped; a model answer repeating
the key was stored as it was; a one-character key turned "expected" into
"e[REDACTED]pected".
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import string
from pathlib import Path
from typing import Iterator

import pytest
from fault_server import FaultServer
from PIL import Image

from mub.backends.base import Request
from mub.backends.openai_backend import MIN_REDACTED_KEY, ApiSettings, OpenAIBackend
from mub.cli import main
from mub.config import RunConfig
from mub.errors import EXIT_ITEM_ERRORS
from mub.protocol.prompts import render_prompt
from mub.runs.runner import select_items

KEY_ENV = "MUB_TEST_SECRET_KEY"
SECRET = "sk-" + "".join(random.Random(20261206).choices(string.ascii_letters + string.digits, k=40))


def encodings(key: str) -> dict[str, str]:
    """The forms issue 13 found stored, as a server or a model may write them."""
    middle = len(key) // 2
    return {
        "raw": key,
        "base64": base64.b64encode(key.encode()).decode(),
        "base64 bearer": base64.b64encode(f"Bearer {key}".encode()).decode(),
        "upper": key.upper(),
        "split": f"{key[:middle]}\n{key[middle:]}",
        "u-escaped": "".join(f"\\u{ord(char):04x}" for char in key),
    }


def leaked(text: str, key: str, size: int = 6) -> list[str]:
    """Every ``size``-character piece of the key found in ``text``, raw (any case), ``\\u``-escaped or base64.

    White space and escaped line breaks are removed from the text first, so a
    key split across lines is found too. A piece's base64 form is the part of
    its encoding that depends on the piece alone, at each of the 3 byte offsets.
    """
    squeezed = re.sub(r"\s|\\[nrt]", "", text)
    found = []
    for start in range(len(key) - size + 1):
        piece = key[start : start + size]
        plain = [piece.lower(), "".join(f"\\u{ord(c):04x}" for c in piece)]
        encoded = []
        for offset in range(3):
            text64 = base64.b64encode(b"\0" * offset + piece.encode()).decode()
            encoded.append(text64[-(-offset * 8 // 6) : (offset + size) * 8 // 6])
        for haystack in (text, squeezed):
            found += [needle for needle in plain if needle in haystack.lower()]
            found += [needle for needle in encoded if needle in haystack]
    return found


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


def test_the_leak_search_finds_every_encoding() -> None:
    """The search below is only worth something if it finds each form it looks for."""
    for name, form in encodings(SECRET).items():
        assert leaked(f"x {form} y", SECRET), name
    assert not leaked("nothing secret here: Bearer [REDACTED]", SECRET)


@pytest.mark.parametrize("name", list(encodings(SECRET)))
def test_each_encoding_is_redacted_from_errors_and_answers(server, monkeypatch, name) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    settings = ApiSettings(server.base_url, api_key_env=KEY_ENV, max_retries=0, concurrency=1)  # faults taken in order
    backend = OpenAIBackend("fault-model", settings)
    form = encodings(SECRET)[name]
    request = Request("item/stage1/0", Image.new("RGB", (4, 4)), "Q?\nA. x\nB. y", ("A", "B"))
    server.add("status", status=401, body=json.dumps({"error": f"invalid key: {form}"}))
    server.add("answer", body=f"A, and the key is {form}.")
    error, answer = backend.generate([request, request])
    assert error.error.startswith("HTTP 401") and "[REDACTED]" in error.error
    assert answer.error is None and answer.text.startswith("A, and the key is ") and "[REDACTED]" in answer.text
    assert not leaked(error.error, SECRET) and not leaked(answer.text, SECRET)


def test_a_run_stores_and_prints_the_key_in_no_form(server, monkeypatch, tmp_path: Path, capfd, caplog) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.INFO)
    forms = " | ".join(encodings(SECRET).values())
    rows = select_items(RunConfig(model="m", limit=4, protocol="deterministic")).rows
    questions = ["\n".join(render_prompt(row).split("\n")[1:3]) for row in rows]
    server.add("echo_auth", match=questions[0], times=1)  # retried: its text goes to the log too
    server.add("status", match=questions[1], times=None, status=401, body=f"bad credentials {forms}")
    server.add("500", match=questions[2], times=2, body=f"upstream saw: {forms}")
    server.add("answer", match=questions[3], times=None, body=f"B. Also: {forms}")
    argv = [
        "run", "--backend", "openai", "--base-url", server.base_url, "--model", "fault-model", "--api-key-env", KEY_ENV,
        "--max-retries", "2", "--limit", "4", "--batch-size", "4", "--out", str(tmp_path / "run"),
        "--protocol", "deterministic",  # the faults below match the clean prompt
    ]  # fmt: skip
    assert main(argv) == EXIT_ITEM_ERRORS  # the 401 item

    assert server.received[0].headers["Authorization"] == f"Bearer {SECRET}"  # the key was sent
    captured = capfd.readouterr()
    written = {str(path): path.read_text(encoding="utf-8", errors="replace") for path in (tmp_path / "run").rglob("*") if path.is_file()}
    assert set(written) >= {str(tmp_path / "run" / name) for name in ("run.json", "predictions.jsonl", "results.json")}
    records = [json.loads(line) for line in written[str(tmp_path / "run" / "predictions.jsonl")].splitlines()]
    assert sum("[REDACTED]" in json.dumps(record) for record in records) == 2  # the 401 and the answer
    assert "retrying in" in caplog.text and "mub explicit" in captured.err  # the checks below see real output
    for where, text in {**written, "stdout": captured.out, "stderr": captured.err, "log": caplog.text}.items():
        assert not leaked(text, SECRET), where


def test_a_short_key_is_not_redacted_but_warned_about(server, monkeypatch, caplog) -> None:
    monkeypatch.setenv(KEY_ENV, "e")
    request = Request("item/stage1/0", Image.new("RGB", (4, 4)), "Q?\nA. x\nB. y", ("A", "B"))
    server.add("answer", body="B, as expected")
    with caplog.at_level(logging.WARNING):
        backend = OpenAIBackend("fault-model", ApiSettings(server.base_url, api_key_env=KEY_ENV))
    [generation] = backend.generate([request])
    assert generation.text == "B, as expected"
    assert f"fewer than {MIN_REDACTED_KEY} characters" in caplog.text and f"${KEY_ENV}" in caplog.text

    eight = "k3y-8chr"
    monkeypatch.setenv(KEY_ENV, eight)
    backend = OpenAIBackend("fault-model", ApiSettings(server.base_url, api_key_env=KEY_ENV))
    assert backend.redact(f"x {eight} {eight.upper()} y") == "x [REDACTED] [REDACTED] y"
