"""What a run sends to an OpenAI-compatible server, per protocol preset.

The server (tests/fault_server.py) records every request body. The
``deterministic`` preset is pinned to the requests mub sent before presets
existed: ``data/deterministic_requests.json`` was recorded from that code
(commit f155f6a, greedy decoding, 16 tokens, ``A. text`` options) and is
compared body for body, images left out. Its implicit entries were recorded
again when notes came to be split as the authors' ``seg_note`` splits them
(issue 21: one item's notes field, numbered lines without ``///``, is one
note there, where mub used to split it into several). Set MUB_RECORD_GOLDEN=1 to rewrite it (only when a
change of those requests is intended).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

import pytest
from fault_server import FaultServer

from mub.cli import main

GOLDEN = Path(__file__).parent / "data" / "deterministic_requests.json"
KEY_ENV = "MUB_TEST_API_KEY"
# (config, --limit): multiple choice, ConBench_CH with inline options, yes/no, implicit notes.
PINNED_RUNS = (("explicit", 10), ("conbench", 8), ("implicit", 4))


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


def _run(server: FaultServer, release: Path, out: Path, config: str, limit: int, *extra: str) -> list[dict]:
    server.reset_log()
    argv = [
        "run", "--backend", "openai", "--base-url", server.base_url, "--model", "recorder",
        "--api-key-env", KEY_ENV, "--dataset", str(release), "--config", config, "--limit", str(limit),
        "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return [received.body for received in server.received]


def _without_images(body: dict) -> dict:
    """The body with each image data URL left out: requests now carry the image file's own bytes where the golden's
    carried a PNG re-encoding (tests/test_closed_model_request.py checks the bytes sent)."""
    body = json.loads(json.dumps(body))
    for message in body["messages"]:
        for part in message["content"]:
            if part.get("type") == "image_url":
                part["image_url"]["url"] = "<image>"
    return body


_HINTED = re.compile(r"And the true answer is : \S+")


def _canonical(bodies: list[dict]) -> list[dict]:
    """Bodies without image data and without the option a hint names, in content order (requests go out concurrently).

    The named option is data, not protocol: issue 12 takes it from the release's own hint where the release
    names one (``misleading_answer_source``), for every preset; the golden file predates that.
    """
    bodies = [_without_images(body) for body in bodies]
    for body in bodies:
        for part in body["messages"][0]["content"]:
            if part.get("type") == "text":
                part["text"] = _HINTED.sub("And the true answer is : <option>", part["text"])
    return sorted(bodies, key=lambda body: json.dumps(body, sort_keys=True))


def test_deterministic_preset_sends_the_requests_mub_sent_before_presets(server, release_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    recorded = {
        f"{config}/{limit}": _canonical(_run(server, release_dir, tmp_path / config, config, limit, *DETERMINISTIC))
        for config, limit in PINNED_RUNS
    }
    if os.environ.get("MUB_RECORD_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(recorded, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    expected = {run: _canonical(bodies) for run, bodies in json.loads(GOLDEN.read_text(encoding="utf-8")).items()}
    assert list(recorded) == list(expected)
    for run, bodies in expected.items():
        assert len(recorded[run]) == len(bodies), run
        for got, want in zip(recorded[run], bodies):
            assert got == want, run


DETERMINISTIC = ("--protocol", "deterministic")
