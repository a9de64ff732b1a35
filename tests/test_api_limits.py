"""Bounded replies from an OpenAI-compatible server: decoded size, whole-request deadline, stored answer length.

Issue 13: a gzip reply inflating to 512 MB took 13 GB of RSS; a server sending
one byte a second held a ``--timeout 5`` run for 245 s; a 10 MB completion was
stored whole. Each breach is now an item error: counted, kept out of the rates,
and asked again by ``--resume``. Peak memory and wall time are measured by
``benchmarks/api_limits.py``; these tests check the behaviour.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest
from fault_server import FaultServer, healthy_answer
from PIL import Image

from mub.backends.base import Request
from mub.backends.openai_backend import (
    MAX_OUTPUT_CHARS,
    MAX_RESPONSE_BYTES,
    ApiSettings,
    OpenAIBackend,
)
from mub.cli import main
from mub.config import RunConfig
from mub.errors import EXIT_ITEM_ERRORS
from mub.protocol.prompts import render_prompt
from mub.runs.runner import select_items


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


def _backend(server: FaultServer, **settings) -> OpenAIBackend:
    settings = {"api_key_env": "MUB_TEST_NO_KEY", "backoff_base": 0.01, "timeout": 5.0, **settings}
    return OpenAIBackend("fault-model", ApiSettings(server.base_url, **settings))


def _request(number: int = 0) -> Request:
    return Request(f"item-{number}/stage1/0", Image.new("RGB", (8, 8)), f"Question {number}?\nA. x\nB. y", ("A", "B"))


def test_a_gzip_bomb_is_cut_at_the_decoded_size_cap_and_not_asked_again(server):
    server.add("gzip_bomb", bomb_bytes=64 << 20)
    [generation] = _backend(server, max_retries=3).generate([_request()])
    assert generation.error == f"reply larger than {MAX_RESPONSE_BYTES} bytes once decoded (--max-response-bytes); not read further (after 1 attempt)"
    assert generation.text == "" and len(server.received) == 1  # the same request would get the same bomb


def test_a_compressed_reply_under_the_cap_is_decoded(server):
    request = _request()
    server.add("gzip_bomb", bomb_bytes=4096, times=2)  # valid gzip, but zeros are no JSON: proves the body was inflated
    [generation] = _backend(server, max_retries=0, max_response_bytes=8192).generate([request])
    assert generation.error.startswith("malformed response (not JSON): \x00")
    [generation] = _backend(server, max_retries=0, max_response_bytes=4095).generate([request])
    assert generation.error.startswith("reply larger than 4095 bytes")
    [generation] = _backend(server).generate([request])  # healthy reply, sent plain
    assert generation.error is None and generation.text == healthy_answer(request.prompt)


def test_a_trickling_reply_is_cut_at_the_request_deadline(server):
    request = _request()
    body_length = len(json.dumps({"id": "chatcmpl-fault-server"}))  # far fewer bytes than the whole reply
    server.add("trickle", stall=0.25)
    start = time.monotonic()
    [generation] = _backend(server, timeout=1.0, max_retries=0).generate([request])
    elapsed = time.monotonic() - start
    assert generation.error.startswith("timed out") and "1s" in generation.error, generation.error
    assert elapsed >= 1.0  # it waited for the whole deadline, not one read timeout
    deadline = time.monotonic() + 30
    while not server.trickled and time.monotonic() < deadline:
        time.sleep(0.05)  # the server notices the closed connection at its next byte
    # Each read got a byte well within --timeout; only a deadline for the whole request cuts it.
    [sent] = server.trickled
    assert sent < body_length, sent


def test_a_long_answer_is_cut_and_counted_as_an_error(server):
    answer = "B " + "x" * (2 * MAX_OUTPUT_CHARS)
    server.add("answer", body=answer)
    [generation] = _backend(server).generate([_request()])
    assert generation.text == answer[:MAX_OUTPUT_CHARS]
    assert generation.error.startswith(f"output cut: the answer has {len(answer)} characters")
    server.add("answer", body="A " + "y" * 40)
    [generation] = _backend(server, max_output_chars=10).generate([_request()])
    assert generation.text == "A " + "y" * 8 and "more than max_output_chars=10" in generation.error


def test_breaches_are_item_errors_kept_out_of_the_rates_and_resumed(server, tmp_path: Path, capsys):
    rows = select_items(RunConfig(model="m", limit=6, protocol="deterministic")).rows
    prompts = ["\n".join(render_prompt(row).split("\n")[1:3]) for row in rows]  # question and first option
    assert len(set(prompts)) == len(prompts)
    server.add("gzip_bomb", match=prompts[0], times=None)
    server.add("trickle", match=prompts[1], times=None, stall=0.3)
    server.add("answer", match=prompts[2], times=None, body="C " + "z" * 5000)

    def run(out: Path, *extra: str, exit_code: int = 0) -> dict:
        argv = [
            "run", "--backend", "openai", "--base-url", server.base_url, "--model", "fault-model",
            "--api-key-env", "MUB_TEST_NO_KEY", "--max-retries", "0", "--timeout", "1", "--max-output-chars", "1000",
            "--limit", "6", "--batch-size", "6", "--out", str(out), "--no-progress", "--protocol", "deterministic", *extra,
        ]  # fmt: skip
        assert main(argv) == exit_code
        return json.loads((out / "results.json").read_text())

    faulty = run(tmp_path / "run", exit_code=EXIT_ITEM_ERRORS)
    figures = faulty["results"]["explicit"]
    assert (figures["errors"], figures["n"]) == (3, 3)
    records = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()}
    errors = [records[row["id"]]["error"] for row in rows[:3]]
    assert errors[0].startswith("reply larger than") and errors[1].startswith("timed out") and errors[2].startswith("output cut")
    assert len(records[rows[2]["id"]]["stage1"][0]["output"]) == 1000

    server.heal()
    resumed = run(tmp_path / "run", "--resume")
    clean = run(tmp_path / "clean")
    assert resumed["results"] == clean["results"] and resumed["results"]["explicit"]["errors"] == 0
