"""``--api-request closed`` sends the authors' request for API models; every request sends the file's own bytes.

The expected JSON body is built here from the authors' code as
../shared/reference_protocol.md quotes it (implicit/misleading_generate/my_tool.py,
``get_eval_plain_use_gpt4v`` with ``plain_use=True``), around the prompt the
authors' ``test_dataset.py`` builds, and compared with what a loopback
server received.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Iterator

import pytest
from fault_server import FaultServer, prompt_of
from test_paper_protocol import KEY_ENV, _release_records, authors_stage1

from mub.cli import main
from mub.config import RunConfig

TWO_LINES = "Looking at the image, the building is round.\nThe answer is A."


def encode_image(image_path):
    # my_tool.py: base64 of the file's bytes (as text, as the data URL needs)
    return base64.b64encode(open(image_path, "rb").read()).decode("utf-8")


def authors_closed_request(model: str, content: str, image_path: str, max_tokens: int = 2048) -> dict:
    """my_tool.py's messages with plain_use=True: client.chat.completions.create(model, messages, max_tokens)."""
    base64_image = encode_image(image_path)
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": content},
                {
                    "type": "image_url",
                    "image_url" : {
                        "url": f"data:image/jpeg;base64,{base64_image}",
                        "detail":"high"
                    },
                },
            ],
        }
    ]
    return {"model": model, "messages": messages, "max_tokens": max_tokens}  # fmt: skip


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(answer=lambda prompt: TWO_LINES) as fault_server:
        yield fault_server


def _run(server: FaultServer, release: Path, out: Path, *extra: str) -> None:
    # One draw per item: these tests pin each request's body; how many copies are drawn is tests/test_draws.py's.
    argv = ["run", "--backend", "openai", "--base-url", server.base_url, "--model", "gpt-4o", "--api-key-env", KEY_ENV,
            "--dataset", str(release), "--out", str(out), "--no-progress", "--draws", "once", *extra]  # fmt: skip
    assert main(argv) == 0


def _stage1_with_records(server: FaultServer) -> list[tuple[dict, dict]]:
    """Each stage-1 body with the release record whose authors' prompt it carries."""
    records: dict[str, dict] = {}
    for record in _release_records():
        records.setdefault(authors_stage1(record), record)
    return [(r.body, records[prompt_of(r.body)]) for r in server.received if "And the true answer is" not in prompt_of(r.body)]


def _stage1_outputs(out: Path) -> list[tuple[str, str | None, str]]:
    """(output, parsed, question type) of every item's stage 1."""
    lines = (out / "predictions.jsonl").read_text().splitlines()
    return [(p["stage1"][0]["output"], p["stage1"][0]["parsed"], p["question_type"]) for p in map(json.loads, lines)]


def test_closed_model_request_is_the_authors_body(server, release_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    _run(server, release_dir, tmp_path / "closed", "--api-request", "closed", "--limit", "12")
    stage1 = _stage1_with_records(server)
    assert len(stage1) == 12
    for body, record in stage1:
        assert body == authors_closed_request("gpt-4o", authors_stage1(record), str(release_dir / record["new_id"]))
    run = json.loads((tmp_path / "closed" / "run.json").read_text())
    assert run["protocol"]["api_request"] == "closed"
    assert run["decoding"]["max_new_tokens"] == 2048 and run["decoding"]["temperature"] == "model"
    results = json.loads((tmp_path / "closed" / "results.json").read_text())
    from mub.report.submit import run_protocol

    assert run_protocol(results) == "paper (closed-model request) + draws=once"  # --draws once is a marked override
    # The whole two-line answer is kept and read as A.
    outputs = _stage1_outputs(tmp_path / "closed")
    assert {output for output, _, _ in outputs} == {TWO_LINES}
    assert {parsed for _, parsed, kind in outputs if kind == "multiple_choice"} == {"A"}


@pytest.mark.parametrize("stop", ["eos", "answer_line"])
def test_open_model_request_sends_the_files_own_bytes_and_a_two_line_answer_is_read_whole(
    server, release_dir, tmp_path, monkeypatch, stop
):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    _run(server, release_dir, tmp_path / "open", "--limit", "6", "--stop", stop)
    stage1 = _stage1_with_records(server)
    assert len(stage1) == 6
    for body, record in stage1:
        image, _ = body["messages"][0]["content"]
        path = release_dir / record["new_id"]
        mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
        assert image["image_url"] == {"url": f"data:{mime};base64,{encode_image(str(path))}"}
    outputs = _stage1_outputs(tmp_path / "open")
    assert {output for output, _, _ in outputs} == {TWO_LINES}
    assert {parsed for _, parsed, kind in outputs if kind == "multiple_choice"} == {"A"}
    assert json.loads((tmp_path / "open" / "run.json").read_text())["decoding"]["stop"] == stop


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"api_request": "closed"}, r"needs --backend openai and --dialogue single \(got --backend transformers"),
        ({"api_request": "closed", "backend": "openai", "dialogue": "multi"}, r"--dialogue multi"),
        ({"api_request": "half"}, r"--api-request must be open or closed"),
        ({"api_request": "closed", "backend": "openai", "cue": "typographic"}, r"run --cue typographic with --api-request open"),
    ],
)
def test_closed_request_refuses_what_it_cannot_send(settings, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(model="m", **settings).validate()
