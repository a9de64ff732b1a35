"""Issue 22 (14): no 8-character piece of the API key reaches a file, stdout or stderr, in any form a server echoes.

The leak search here is written apart from mub.backends.redaction: it decodes the whole text at once
(html.unescape, unquote, unicode escapes) rather than token by token, and tries base64 and hex on every run
that may be one, recursively; then it looks for every 8-character piece of the key, as written and reversed,
in each decoded text after NFKC, case-folding and removing everything but letters, digits, "-" and "_".
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import random
import re
import string
import unicodedata
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

import pytest
from fault_server import FaultServer
from PIL import Image

from mub.backends.base import Request
from mub.backends.openai_backend import ApiSettings, OpenAIBackend
from mub.backends.redaction import KeyRedactor
from mub.cli import main
from mub.config import RunConfig
from mub.protocol.prompts import render_prompt
from mub.runs.runner import select_items

KEY_ENV = "MUB_TEST_PIECES_KEY"
# A fixed key: the same on every run. (An unseeded one was flaky: where the 3 characters a form leaves out began
# with an "i", the " indeed" after it continued the key once spaces are removed, and was redacted with it.)
KEY = "sk-proj-" + "".join(random.Random(20261205).choices(string.ascii_letters + string.digits, k=40))
PIECE = 8


def _normalised(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(char for char in text if char.isalnum() or char in "-_")


def _decoded_variants(text: str, depth: int = 0) -> list[str]:
    variants = [text, html.unescape(text), unquote(text), re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)]
    if depth < 3:
        for run in re.findall(r"[A-Za-z0-9+/_=-]{12,}", text):
            core = run.rstrip("=")
            for skip in range(4):
                part = core[skip:]
                for alt in (None, b"-_"):
                    try:
                        decoded = base64.b64decode(part + "=" * (-len(part) % 4), altchars=alt, validate=True)
                    except (binascii.Error, ValueError):
                        continue
                    variants += _decoded_variants(decoded.decode("latin-1"), depth + 1)
            if re.fullmatch(r"[0-9a-fA-F]+", core):
                for skip in (0, 1):
                    part = core[skip:]
                    variants += _decoded_variants(bytes.fromhex(part[: len(part) // 2 * 2]).decode("latin-1"), depth + 1)
    return variants


def leaked(text: str, key: str = KEY) -> list[str]:
    """Every 8-character piece of ``key`` (as written or reversed) found in ``text`` under the transforms above."""
    folded_key = _normalised(key)
    pieces = {folded_key[i : i + PIECE] for i in range(len(folded_key) - PIECE + 1)}
    pieces |= {piece[::-1] for piece in pieces}
    haystacks = {_normalised(variant) for variant in _decoded_variants(text)}
    return sorted({piece for piece in pieces for haystack in haystacks if piece in haystack})


def _full_width(text: str) -> str:
    return "".join(chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char for char in text)


def echoed_forms(key: str) -> dict[str, str]:
    """The forms of issue 22 in which an echoing server got the key stored."""
    third = len(key) // 3
    return {
        "reversed": key[::-1],
        "hex": key.encode().hex(),
        "html entities": "".join(f"&#{ord(char)};" for char in key),
        "html hex entities": "".join(f"&#x{ord(char):x};" for char in key),
        "full-width": _full_width(key),
        "zero-width spaces": "\u200b".join(key),
        "base64 of base64": base64.b64encode(base64.b64encode(key.encode())).decode(),
        "json array pieces": json.dumps([key[:third], key[third : 2 * third], key[2 * third :]]),
        "sse chunks": f"data: {key[:third]}\n\ndata: {key[third:2 * third]}\n\ndata: {key[2 * third:]}\n\n",
        "tool-call fields": json.dumps({"tool_calls": [{"function": {"name": key[:third], "arguments": key[third:]}}]}),
        "pipes": " | ".join([key[:third], key[third : 2 * third], key[2 * third :]]),
        "dots": ".".join([key[:third], key[third:]]),
        "minus last 3": key[:-3],
        "look-alike letter": key[:20] + "\u0430" + key[21:],  # Cyrillic а for the 21st character
        "percent": "".join(f"%{ord(char):02x}" for char in key),
        "rtl marks": "\u200f".join(key[i : i + 5] for i in range(0, len(key), 5)),
    }


def test_the_leak_search_finds_every_form_and_nothing_in_plain_text() -> None:
    for name, form in echoed_forms(KEY).items():
        assert leaked(f"the server said: {form}."), name
    assert not leaked("B, because the image shows a red square. [REDACTED] | [REDACTED]")


@pytest.mark.parametrize("name", list(echoed_forms(KEY)))
def test_each_form_is_redacted_whole(name: str) -> None:
    form = echoed_forms(KEY)[name]
    redacted = KeyRedactor(KEY).redact(f"B. The key is {form} indeed")
    assert redacted.startswith("B. The key is ") and redacted.endswith(" indeed") and "[REDACTED]" in redacted
    assert not leaked(redacted), (name, redacted)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


def test_a_run_against_an_echoing_server_leaves_no_piece_of_the_key_anywhere(server, monkeypatch, tmp_path: Path, capfd) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    forms = echoed_forms(KEY)
    rows = select_items(RunConfig(model="m", limit=len(forms) + 1, protocol="deterministic")).rows
    questions = ["\n".join(render_prompt(row).split("\n")[1:3]) for row in rows]
    for question, form in zip(questions, forms.values()):
        server.add("answer", match=question, times=None, body=f"B. By the way: {form}")
    server.add("status", match=questions[-1], times=None, status=401, body="bad key: " + " ; ".join(forms.values()))
    base_url = f"{server.base_url}?api-key={KEY}#{KEY}"  # an Azure-style gateway: the key in the query string
    argv = [
        "run", "--backend", "openai", "--base-url", base_url, "--model", "fault-model", "--api-key-env", KEY_ENV,
        "--max-retries", "0", "--limit", str(len(forms) + 1), "--batch-size", "4", "--out", str(tmp_path / "run"),
        "--protocol", "deterministic",
    ]  # fmt: skip
    assert main(argv) == 3  # the 401 item is an item error
    captured = capfd.readouterr()
    written = {str(path): path.read_text(encoding="utf-8", errors="replace") for path in (tmp_path / "run").rglob("*") if path.is_file()}
    results = json.loads(written[str(tmp_path / "run" / "results.json")])
    assert results["run"]["backend_info"]["base_url"] == server.base_url  # no query string, no fragment
    records = [json.loads(line) for line in written[str(tmp_path / "run" / "predictions.jsonl")].splitlines()]
    assert sum("[REDACTED]" in json.dumps(record) for record in records) == len(forms) + 1
    assert max(len(record["error"] or "") for record in records) <= 500  # an error keeps a short excerpt only
    for where, text in {**written, "stdout": captured.out, "stderr": captured.err}.items():
        assert not leaked(text), where


def test_the_query_string_reaches_the_server_but_is_never_described(server, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = OpenAIBackend("fault-model", ApiSettings(f"{server.base_url}/?api-key={KEY}", api_key_env=KEY_ENV))
    [generation] = backend.generate([Request("item/stage1/0", Image.new("RGB", (4, 4)), "Q?\nA. x\nB. y", ("A", "B"))])
    assert generation.error is None
    assert not leaked(json.dumps(backend.describe()))


def test_an_exception_text_is_cut_to_a_short_redacted_excerpt(server, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    backend = OpenAIBackend("fault-model", ApiSettings(server.base_url, api_key_env=KEY_ENV, max_retries=0))

    def failing(*args, **kwargs):
        raise RuntimeError("x" * 100_000 + f" then the key {KEY[::-1]}")

    monkeypatch.setattr(backend._client, "stream", failing)
    [generation] = backend.generate([Request("item/stage1/0", Image.new("RGB", (4, 4)), "Q?\nA. x\nB. y", ("A", "B"))])
    assert generation.error.startswith("request failed (RuntimeError: xxx") and len(generation.error) < 500
    assert not leaked(generation.error)
