"""What a run sends to an OpenAI-compatible server under the ``deterministic`` preset, body for body.

The server (tests/fault_server.py) records every request body. The expected bodies are written
here by hand from the preset's documented format (README: a one-line instruction, the question
without ``<image N>`` placeholders or inline options, ``A. text`` options, greedy decoding with 16
new tokens) and from the items' own fields: the hint names the item's ``misleading_answer`` after
a correct stage 1 (the server's reply, recomputed here) and its answer otherwise; implicit items get
one request per note. Each request's image is identified by its bytes, the file's own (every placeholder image is
different, tests/conftest.py), so an item sent with another item's image fails. The seed is the
documented sha256 rule, computed here. Nothing is masked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Iterator

import pytest
from fault_server import FaultServer, healthy_answer
from test_dataset import plain_id, raw_items

import mub_dataset
from mub.cli import main

KEY_ENV = "MUB_TEST_API_KEY"
# (config, --limit): multiple choice, ConBench_CH with inline options, yes/no, implicit notes.
PINNED_RUNS = (("explicit", 10), ("conbench", 8), ("implicit", 4))
INSTRUCTION = {"multiple_choice": "Answer with the option's letter from the given choices directly.", "yes_no": "Answer with Yes or No only."}
HINT = " And the true answer is : {}"
NOTE = " Please pay attention to this instruction: {}"


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


def _run(server: FaultServer, release: Path, out: Path, config: str, limit: int) -> list[dict]:
    server.reset_log()
    argv = [
        "run", "--backend", "openai", "--base-url", server.base_url, "--model", "recorder",
        "--api-key-env", KEY_ENV, "--dataset", str(release), "--config", config, "--limit", str(limit),
        "--out", str(out), "--no-progress", "--protocol", "deterministic",
    ]  # fmt: skip
    assert main(argv) == 0
    return [received.body for received in server.received]


def _clean_question(question: str, source: str) -> str:
    if source == "ConBench_CH":  # "stem?   A) x  B) y ... Please choose ...": the options are listed below instead
        question = re.split(r"\s+A\) ", question)[0]
    return re.sub(r"\s*<image \d+>\s*", " ", question).strip()


def _prompt(row: dict, cue: str = "") -> str:
    text = INSTRUCTION[row["question_type"]] + "\n" + _clean_question(row["question"], row["source"]) + cue
    if row["question_type"] == "multiple_choice":
        text += "\n" + "\n".join(f"{chr(65 + i)}. {choice}" for i, choice in enumerate(row["choices"]))
    return text


def _body(key: str, image_path: str, prompt: str) -> dict:
    seed = int(hashlib.sha256(f"0:{key}".encode()).hexdigest()[:16], 16) % 2**63 % 2**31
    content = [{"type": "image_url", "image_url": {"url": f"<{image_path}>"}}, {"type": "text", "text": prompt}]
    return {"model": "recorder", "messages": [{"role": "user", "content": content}],
            "max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "seed": seed}  # fmt: skip


def _expected(rows: list[dict], image_paths: dict[str, str], config: str) -> list[dict]:
    bodies = []
    for row in rows:
        path = image_paths[row["id"]]
        stage1 = _prompt(row)
        bodies.append(_body(f"{row['id']}/stage1/0", path, stage1))
        correct = healthy_answer(stage1).lower() == row["answer"].lower()  # what the server answers to it
        if config == "implicit":
            notes = (row["misleading_notes"] if correct else row["guiding_notes"])[:5]
            assert notes
            for number, note in enumerate(notes):
                bodies.append(_body(f"{row['id']}/stage2/{number}", path, _prompt(row, NOTE.format(note))))
        else:
            hinted = row["misleading_answer"] if correct else row["answer"]
            bodies.append(_body(f"{row['id']}/stage2/0", path, _prompt(row, HINT.format(hinted))))
    return sorted(bodies, key=lambda body: json.dumps(body, sort_keys=True))


def _named_images(bodies: list[dict], path_by_bytes: dict[bytes, str]) -> list[dict]:
    """Each body with its image data URL replaced by the release path of the file with those bytes."""
    bodies = json.loads(json.dumps(bodies))
    for body in bodies:
        for part in body["messages"][0]["content"]:
            if part.get("type") == "image_url":
                prefix, data = part["image_url"]["url"].split(",", 1)
                assert prefix == "data:image/jpeg;base64"  # the file's own bytes, labelled with its type: no re-encoding
                part["image_url"]["url"] = f"<{path_by_bytes.get(base64.b64decode(data), 'no file of the release')}>"
    return sorted(bodies, key=lambda body: json.dumps(body, sort_keys=True))


def test_deterministic_preset_sends_the_documented_requests(server, release_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    items, _ = raw_items(release_dir)
    image_paths = {plain_id(new_id, question): new_id for new_id, question in items}
    path_by_bytes = {(release_dir / path).read_bytes(): path for path in set(image_paths.values())}
    assert len(path_by_bytes) == len(set(image_paths.values()))  # every placeholder is its own picture
    for config, limit in PINNED_RUNS:
        rows = mub_dataset.load(config, release_dir).remove_columns("image").to_list()[:limit]
        received = _named_images(_run(server, release_dir, tmp_path / config, config, limit), path_by_bytes)
        expected = _expected(rows, image_paths, config)
        assert len(received) == len(expected), config
        for got, want in zip(received, expected):
            assert got == want, config
