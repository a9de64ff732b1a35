"""What a run sends to an OpenAI-compatible server, per protocol preset.

The server (tests/fault_server.py) records every request body. The
``deterministic`` preset is pinned to the requests mub sent before presets
existed: ``data/deterministic_requests.json`` was recorded from that code
(commit f155f6a, greedy decoding, 16 tokens, ``A. text`` options) and is
compared body for body. Set MUB_RECORD_GOLDEN=1 to rewrite it (only when a
change of those requests is intended).
"""

from __future__ import annotations

import json
import os
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
    """The body with each image data URL replaced by its length (the pixels are the placeholder's)."""
    body = json.loads(json.dumps(body))
    for message in body["messages"]:
        for part in message["content"]:
            if part.get("type") == "image_url":
                part["image_url"]["url"] = f"<{len(part['image_url']['url'])} characters>"
    return body


def _canonical(bodies: list[dict]) -> list[dict]:
    # Requests go out concurrently: order by content.
    return sorted((_without_images(body) for body in bodies), key=lambda body: json.dumps(body, sort_keys=True))


def test_deterministic_preset_sends_the_requests_mub_sent_before_presets(server, release_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    recorded = {
        f"{config}/{limit}": _canonical(_run(server, release_dir, tmp_path / config, config, limit, *DETERMINISTIC))
        for config, limit in PINNED_RUNS
    }
    if os.environ.get("MUB_RECORD_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(recorded, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert list(recorded) == list(expected)
    for run, bodies in expected.items():
        assert len(recorded[run]) == len(bodies), run
        for got, want in zip(recorded[run], bodies):
            assert got == want, run


DETERMINISTIC = ("--protocol", "deterministic")
