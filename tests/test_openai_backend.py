"""The OpenAI-compatible API backend: requests, retries, errors, resume, key hygiene, and a real server.

Two servers, both on loopback: ``tests/fault_server.py`` (stdlib, injects
429 / 500 / stalls / broken connections / malformed bodies on demand) and
``transformers serve`` (``tests/served_model.py``) serving a tiny random model built offline.
"""

from __future__ import annotations

import base64
import io
import json
import random
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import httpx
import pytest
from fault_server import FaultServer, healthy_answer
from PIL import Image

from mub.backends import openai_backend
from mub.backends.base import Request
from mub.backends.openai_backend import (
    SERVER_TEXT_LIMIT,
    ApiSettings,
    OpenAIBackend,
    completion_text,
    from_run_config,
    retry_after_seconds,
    retry_delay,
)
from mub.cli import main
from mub.config import DecodingSettings, RunConfig
from mub.errors import EXIT_ITEM_ERRORS
from mub.protocol.prompts import question_text, render_prompt
from mub.runs.runner import select_items

KEY_ENV = "MUB_TEST_API_KEY"
SECRET = "sk-mub-test-" + "".join(random.Random(20261207).choices("0123456789abcdef", k=24))


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as fault_server:
        yield fault_server


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def _backend(server: FaultServer, decoding: DecodingSettings = DecodingSettings(), **settings) -> OpenAIBackend:
    settings = {"api_key_env": KEY_ENV, "backoff_base": 0.01, "timeout": 5.0, **settings}
    return OpenAIBackend("fault-model", ApiSettings(server.base_url, **settings), decoding)


def _requests(count: int) -> list[Request]:
    return [
        Request(f"item-{i}/stage1/0", Image.new("RGB", (8, 8), (30 * i % 256, 0, 0)), f"Question {i}?\nA. x\nB. y\nC. z", ("A", "B", "C"))
        for i in range(count)
    ]


# ------------------------------------------------------------------ requests


def test_request_carries_image_prompt_decoding_and_key(server, api_key):
    image = Image.new("RGB", (5, 3), (10, 200, 30))
    image.putpixel((1, 2), (255, 0, 255))
    decoding = DecodingSettings(max_new_tokens=7, temperature=0.7, top_p=0.9, seed=3)
    request = Request("item-1/stage2/0", image, "Which?\nA. x\nB. y", ("A", "B"))
    [generation] = _backend(server, decoding).generate([request])

    assert generation.error is None and generation.text == healthy_answer(request.prompt)
    [received] = server.received
    assert received.headers["Authorization"] == f"Bearer {SECRET}"
    body = received.body
    assert body["model"] == "fault-model"
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (7, 0.7, 0.9)
    assert isinstance(body["seed"], int) and 0 <= body["seed"] < 2**31
    image_part, text_part = body["messages"][0]["content"]  # image first, as the local backends' chat template
    assert text_part == {"type": "text", "text": request.prompt}
    prefix, data = image_part["image_url"]["url"].split(",", 1)
    assert prefix == "data:image/png;base64"
    sent = Image.open(io.BytesIO(base64.b64decode(data)))
    assert sent.format == "PNG" and sent.convert("RGB").tobytes() == image.tobytes()


def test_jpeg_images_greedy_default_and_per_request_seeds(server):
    backend = _backend(server, image_format="jpeg")
    backend.generate(_requests(2))
    bodies = [r.body for r in server.received]
    assert all(b["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,") for b in bodies)
    assert all(b["temperature"] == 0.0 and b["max_tokens"] == 16 for b in bodies)
    assert bodies[0]["seed"] != bodies[1]["seed"]  # derived from each request's key
    assert "Authorization" not in server.received[0].headers  # no key in the environment: none sent


# ------------------------------------------------------------------ retries and errors


def test_transient_faults_are_retried_until_answered(server):
    server.add("429", retry_after="1")
    for kind in ("500", "stall", "drop", "malformed", "no_choices"):
        server.add(kind, stall=3.0)
    requests = _requests(6)
    generations = _backend(server, timeout=0.5, concurrency=1, max_retries=6).generate(requests)

    assert [g.error for g in generations] == [None] * 6
    assert [g.text for g in generations] == [healthy_answer(r.prompt) for r in requests]
    faults = [r.fault for r in server.received]
    assert faults[:6] == ["429", "500", "stall", "drop", "malformed", "no_choices"] and faults[6:] == [None] * 6
    # With one request in flight, the retry after the 429 is the next request: not sooner than Retry-After.
    assert server.received[1].time - server.received[0].time >= 1.0
    assert generations[0].extra["attempts"] == 7


def test_lasting_failure_is_an_error_keeping_the_server_text(server):
    body = "upstream exploded: " + "x" * 5000
    server.add("500", match="Question 1?", times=None, body=body)
    generations = _backend(server, max_retries=2).generate(_requests(3))

    assert [g.error is None for g in generations] == [True, False, True]
    failed = generations[1]
    assert failed.text == "" and failed.extra["attempts"] == 3
    assert failed.error.startswith("HTTP 500: upstream exploded: xxx") and "after 3 attempts" in failed.error
    # A short excerpt, never the raw body.
    assert f"[{len(body) - SERVER_TEXT_LIMIT} more characters]" in failed.error
    assert len(failed.error) < SERVER_TEXT_LIMIT + 100
    assert sum(r.fault == "500" for r in server.received) == 3


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("status", "HTTP 400: bad image"),  # a client error: asking again cannot help
        ("empty", "malformed response (empty content)"),  # a greedy model would say nothing again
    ],
)
def test_client_errors_and_empty_answers_fail_at_once(server, kind, expected):
    server.add(kind, status=400, body="bad image", times=None)
    [generation] = _backend(server).generate(_requests(1))
    assert generation.error.startswith(expected) and "after 1 attempt" in generation.error
    assert len(server.received) == 1


def test_completion_text_reads_answers_refusals_and_content_parts():
    answer = {"choices": [{"message": {"content": "B"}, "finish_reason": "stop"}]}
    assert completion_text(json.dumps(answer)) == ("B", {"finish_reason": "stop"})
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "Answer: "}, {"type": "text", "text": "C"}]}}]}
    assert completion_text(json.dumps(parts))[0] == "Answer: C"
    refusal = {"choices": [{"message": {"content": None, "refusal": "I can't help with that."}}]}
    assert completion_text(json.dumps(refusal))[0] == "I can't help with that."  # an answer; the parser says unparsed


def test_retry_after_in_seconds_milliseconds_and_http_dates():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "0.5"}) == 0.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": format_datetime(now + timedelta(seconds=7), usegmt=True)}, now) == 7.0
    assert retry_after_seconds({"retry-after": format_datetime(now - timedelta(seconds=7), usegmt=True)}, now) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_retry_delay_is_exponential_jittered_and_capped():
    rng = random.Random(0)
    for attempt in range(6):
        delays = [retry_delay(attempt, None, 0.5, 10.0, rng) for _ in range(200)]
        ceiling = min(10.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert len(set(delays)) > 100  # jittered, so concurrent retries spread out
    assert all(2.0 <= retry_delay(0, 2.0, 0.5, 10.0, rng) <= 2.5 for _ in range(100))  # Retry-After is a floor
    assert 500.0 <= retry_delay(0, 500.0, 0.5, 10.0, rng) <= 510.0  # the cap bounds backoff, not Retry-After


def test_concurrency_is_bounded():
    with FaultServer(latency=0.2) as slow:
        start = time.perf_counter()
        generations = _backend(slow, concurrency=3).generate(_requests(9))
        elapsed = time.perf_counter() - start
    assert all(g.error is None for g in generations)
    assert slow.max_in_flight == 3
    assert elapsed >= 0.6  # at most three at a time: at least three rounds of 0.2 s


def test_draws_of_an_item_are_in_flight_together_each_with_its_own_seed(tmp_path):
    """The paper preset draws an item once per release copy: its draws go to the server at once, as
    concurrent requests (not one after the other), each with the seed of its own key; no request asks
    for ``n`` completions, which would share one seed."""
    import hashlib

    from test_draws import _small_dataset  # items with 1, 3 and 2 copies

    from mub.runs.runner import run

    with FaultServer(latency=0.3) as slow:
        options = {"base_url": slow.base_url, "concurrency": 9, "api_key_env": KEY_ENV}
        config = RunConfig(model="fault-model", backend="openai", protocol="paper", seed=7, batch_size=1,
                           backend_options=options, out=str(tmp_path / "r"), progress=False)  # fmt: skip
        results = run(config, dataset=_small_dataset())
    assert results["results"]["explicit"]["n_draws"] == 6
    assert slow.max_in_flight == 3  # one item per call (--batch-size 1): item-2's three draws at once

    def documented_seed(key: str) -> int:  # sha256 of "<run seed>:<key>", first 63 bits, then within 31 bits
        return (int.from_bytes(hashlib.sha256(f"7:{key}".encode()).digest()[:8], "big") & (2**63 - 1)) % 2**31

    keys = ["item-1", "item-2", "item-2/d1", "item-2/d2", "item-3", "item-3/d1"]
    seed_of = {documented_seed(f"{k}/stage{stage}/0"): (k, stage) for k in keys for stage in (1, 2)}
    bodies = [r.body for r in slow.received]
    assert sorted(b["seed"] for b in bodies) == sorted(seed_of) and len(seed_of) == 12
    assert not any("n" in b for b in bodies)
    prompt_of_draw = {seed_of[b["seed"]]: b["messages"][-1]["content"][-1]["text"] for b in bodies}
    assert prompt_of_draw[("item-2", 1)] == prompt_of_draw[("item-2/d1", 1)] == prompt_of_draw[("item-2/d2", 1)]
    assert prompt_of_draw[("item-2", 1)] != prompt_of_draw[("item-3", 1)]


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backend's waits between attempts, recorded instead of slept (a fake clock)."""
    waited: list[float] = []
    monkeypatch.setattr(openai_backend, "pause", lambda cancelled, seconds: waited.append(seconds))
    return waited


def test_retry_after_is_honoured_above_backoff_max(server, sleeps):
    server.add("429", retry_after="1")
    [generation] = _backend(server, backoff_max=0.01, max_retries=1).generate(_requests(1))
    assert generation.error is None and generation.extra["attempts"] == 2
    # Retry-After is a floor; the jitter on top is at most min(backoff_base, backoff_max).
    assert len(sleeps) == 1 and 1.0 <= sleeps[0] <= 1.0 + 0.01


def test_retry_after_beyond_max_retry_after_is_an_error_not_a_wait(server, sleeps):
    server.add("429", retry_after="3600")
    [generation] = _backend(server, max_retries=5).generate(_requests(1))
    assert sleeps == [] and len(server.received) == 1
    assert generation.error.startswith('HTTP 429: {"error": {"message": "rate limited"}}')
    assert "retry after 3600s, more than max_retry_after=300s" in generation.error
    assert generation.extra["attempts"] == 1


# ------------------------------------------------------------------ the API key


def _pieces(secret: str, size: int = 6) -> set[str]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def test_surrounding_whitespace_of_the_key_is_stripped(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, f" {SECRET}\r\n")
    [generation] = _backend(server).generate(_requests(1))
    assert generation.error is None
    assert server.received[0].headers["Authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize("illegal, kind", [("\n", "a control character"), ("\x7f", "a control character"),
                                           (" ", "a space"), ("é", "a non-ASCII character")])  # fmt: skip
def test_a_key_unfit_for_a_header_is_refused_without_showing_it(server, monkeypatch, tmp_path, capfd, caplog, illegal, kind):
    secret = SECRET[:15] + illegal + SECRET[15:]
    monkeypatch.setenv(KEY_ENV, secret)
    with pytest.raises(ValueError, match=f"API key in \\${KEY_ENV} holds {kind} at position 16 of {len(secret)}"):
        _backend(server)
    argv = ["run", "--backend", "openai", "--base-url", server.base_url, "--model", "fault-model",
            "--api-key-env", KEY_ENV, "--limit", "2", "--out", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    captured = capfd.readouterr()
    assert "holds" in captured.err and not server.received
    texts = [captured.out, captured.err, caplog.text] + [p.read_text() for p in tmp_path.rglob("*") if p.is_file()]
    assert not [piece for piece in _pieces(secret) | _pieces(repr(secret)) for text in texts if piece in text]


def test_a_key_echoed_at_the_truncation_edge_leaves_no_piece(server, api_key):
    backend = _backend(server)
    for offset in range(SERVER_TEXT_LIMIT - 40, SERVER_TEXT_LIMIT + 1, 5):  # the key straddles the cut of the kept text
        server.add("status", status=401, body="x" * offset + f"{SECRET} invalid credentials: Bearer {SECRET}")
        [generation] = backend.generate(_requests(1))
        assert generation.error.startswith("HTTP 401: xxx") and "more characters]" in generation.error
        assert not [piece for piece in _pieces(SECRET) if piece in generation.error], offset


def test_exception_texts_are_redacted_in_every_escaped_form_and_local_errors_not_retried(server, monkeypatch):
    secret = SECRET + '\\"\'/+=~'  # escaped differently by repr, JSON and URL quoting
    monkeypatch.setenv(KEY_ENV, secret)
    backend = _backend(server, max_retries=3)
    for form in (secret, repr(secret), repr(secret.encode()), json.dumps(secret), quote(secret, safe="")):
        assert backend.redact(f"<{form}>") in ("<[REDACTED]>", "<'[REDACTED]'>", "<b'[REDACTED]'>", '<"[REDACTED]">'), form

    def failing_post(method, url, **kwargs):
        calls.append(url)
        raise error
    monkeypatch.setattr(backend._client, "stream", failing_post)
    for error, expected in [
        (httpx.LocalProtocolError(f"Illegal header value {('Bearer ' + secret).encode()!r}"), "invalid request (LocalProtocolError"),
        (RuntimeError(json.dumps({"auth": secret})), "request failed (RuntimeError"),
    ]:
        calls = []
        [generation] = backend.generate(_requests(1))
        assert generation.error.startswith(expected) and "[REDACTED]" in generation.error
        assert len(calls) == 1 and generation.extra["attempts"] == 1  # asking again cannot help
        assert not [piece for piece in _pieces(SECRET) if piece in generation.error]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"backend_options": {}}, "needs --base-url"),
        ({"backend_options": {"base_url": "127.0.0.1:8000"}}, "must start with http"),
        ({"backend_options": {"base_url": "http://h/v1", "concurrency": 0}}, "--concurrency"),
        ({"scoring": "logprob"}, "--scoring generate only"),
        ({"top_k": 5}, "--top-k"),
        ({"chat_template": "t.jinja"}, "--chat-template"),
    ],
)
def test_invalid_settings_are_refused(overrides, message):
    settings = {"model": "m", "backend": "openai", "backend_options": {"base_url": "http://h/v1"}, **overrides}
    with pytest.raises(ValueError, match=message):
        from_run_config(RunConfig(**settings))


# ------------------------------------------------------------------ runs through the CLI


def _run_cli(server: FaultServer, out: Path, *extra: str, status: int = 0) -> dict:
    argv = [
        "run", "--backend", "openai", "--base-url", server.base_url, "--model", "fault-model",
        "--api-key-env", KEY_ENV, "--concurrency", "4", "--max-retries", "2", "--timeout", "0.5",
        "--limit", "8", "--batch-size", "4", "--out", str(out),
        "--protocol", "deterministic", *extra,  # the faults below match the clean prompt
    ]  # fmt: skip
    assert main(argv) == status
    return json.loads((out / "results.json").read_text())


def _predictions(out: Path) -> dict[str, dict]:
    """The last record per item (a resumed run appends retried items), timings dropped."""
    records = {}
    for line in (out / "predictions.jsonl").read_text().splitlines():
        record = json.loads(line)
        for answer in record["stage1"] + record["stage2"]:
            answer.pop("seconds")
        records[record["id"]] = record
    return records


def test_failures_are_counted_resumed_to_the_clean_result_and_the_key_never_leaks(
    server, api_key, tmp_path, capfd, caplog
):
    clean = _run_cli(server, tmp_path / "clean")
    assert clean["results"]["explicit"]["errors"] == 0 and clean["results"]["explicit"]["n"] == 8

    rows = select_items(RunConfig(model="m", limit=8, protocol="deterministic")).rows
    server.add("429", retry_after="1")
    server.add("500")
    server.add("stall", stall=2.0)
    server.add("drop")
    server.add("malformed")
    server.add("500", match=render_prompt(rows[1]), times=None, body="stage 1 keeps failing")
    server.add("500", match=question_text(rows[0]["question"]) + " And the true answer is", times=None, body="stage 2 down")
    server.add("echo_auth", match=render_prompt(rows[2]), times=None)
    faulty = _run_cli(server, tmp_path / "faulty", status=EXIT_ITEM_ERRORS)  # failed items: exit 3

    figures = faulty["results"]["explicit"]
    assert (figures["errors"], figures["n"], figures["n_items"]) == (3, 5, 8)
    predictions = _predictions(tmp_path / "faulty")
    failed = {item_id: p["error"] for item_id, p in predictions.items() if p["error"]}
    assert set(failed) == {rows[0]["id"], rows[1]["id"], rows[2]["id"]}
    assert failed[rows[1]["id"]] == "HTTP 500: stage 1 keeps failing (after 3 attempts)"
    assert failed[rows[0]["id"]] == "HTTP 500: stage 2 down (after 3 attempts)"
    assert "Bearer [REDACTED]" in failed[rows[2]["id"]]
    assert predictions[rows[0]["id"]]["stage1"][0]["output"]  # stage 1 answered before stage 2 failed
    assert all(p == _predictions(tmp_path / "clean")[i] for i, p in predictions.items() if i not in failed)
    assert faulty["run"]["backend_info"] == {
        "backend": "openai", "model": "fault-model", "api_request": "open", "base_url": server.base_url, "api_key_env": KEY_ENV,
        "concurrency": 4, "max_retries": 2, "timeout": 0.5, "backoff_base": 0.5, "backoff_max": 60.0,
        "max_retry_after": 300.0, "image_format": "png", "send_top_k": False, "max_response_bytes": 1 << 20,
        "max_output_chars": 32000, "api_key_set": True,
    }  # fmt: skip

    assert {"429", "500", "stall", "drop", "malformed", "echo_auth"} <= {r.fault for r in server.received}
    server.heal()
    server.reset_log()
    resumed = _run_cli(server, tmp_path / "faulty", "--resume")
    assert len(server.received) == 6  # only the three failed items, both stages
    assert resumed["results"] == clean["results"]
    assert _predictions(tmp_path / "faulty") == _predictions(tmp_path / "clean")

    # The key was sent, and appears nowhere: not in the run folders, the output, or the logs.
    assert server.received[0].headers["Authorization"] == f"Bearer {SECRET}"
    captured = capfd.readouterr()
    assert "retrying in" in caplog.text and "mub explicit" in captured.err  # the checks below see real output
    for text in (captured.out, captured.err, caplog.text):
        assert SECRET not in text
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert {p.name for p in files} >= {"run.json", "predictions.jsonl", "results.json"}
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------ a real server: transformers serve

# The tiny model's every next token is one of these, so a one-token answer parses.
ANSWER_TOKENS = (" A", " B", " C", " D", " E", " Yes", " No")


@pytest.fixture(scope="module")
def served_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``transformers serve`` (:func:`served_model.serving`) pinned to a tiny llava built offline, on the CPU."""
    from served_model import serving

    from mub.testing.tiny_models import build_tiny_model

    model = build_tiny_model("llava", tmp_path_factory.mktemp("served") / "tiny-llava", favour=ANSWER_TOKENS, answers=False)
    with serving(model) as base_url:
        yield base_url, model


def test_mub_run_against_transformers_serve_matches_the_local_backend(served_tiny_model, tmp_path):
    from mub.backends.transformers_backend import TransformersBackend
    from mub.runs.runner import run

    base_url, model = served_tiny_model
    out = tmp_path / "served"
    argv = ["run", "--backend", "openai", "--base-url", base_url, "--model", str(model), "--limit", "4",
            "--max-new-tokens", "1", "--protocol", "deterministic", "--out", str(out), "--no-progress"]  # fmt: skip
    # deterministic: greedy decoding, so the server's and the local model's outputs must agree exactly
    assert main(argv) == 0

    results = json.loads((out / "results.json").read_text())
    figures = results["results"]["explicit"]
    assert (figures["n"], figures["errors"]) == (4, 0)
    assert results["run"]["backend_info"]["base_url"] == base_url
    served = _predictions(out)
    assert len(served) == 4
    for record in served.values():
        assert record["error"] is None and record["stage1"][0]["output"] in ANSWER_TOKENS
        assert len(record["stage2"]) == 1 and record["stage2"][0]["cue"].startswith("And the true answer is")
        assert record["stage2"][0]["output"] in ANSWER_TOKENS
    assert any(record["original_prediction"] for record in served.values())  # the parser got letters

    # The same model run locally gives the same raw outputs: image and prompt reach the model unchanged.
    local = RunConfig(
        model=str(model), limit=4, max_new_tokens=1, protocol="deterministic", out=str(tmp_path / "local"), progress=False
    )
    run(local, backend=TransformersBackend(str(model), decoding=local.decoding(), device="cpu"))
    assert served == _predictions(tmp_path / "local")


def test_multi_turn_run_against_transformers_serve_matches_the_local_backend(served_tiny_model, tmp_path):
    """--dialogue multi: the server renders the replayed stage-1 turn as the local backend does (greedy, so exactly)."""
    from mub.backends.transformers_backend import TransformersBackend
    from mub.runs.runner import run

    base_url, model = served_tiny_model
    flags = {"cue": "opinion", "dialogue": "multi", "limit": 4, "max_new_tokens": 1, "temperature": 0.0}
    out = tmp_path / "served"
    argv = ["run", "--backend", "openai", "--base-url", base_url, "--model", str(model), "--cue", "opinion",
            "--dialogue", "multi", "--limit", "4", "--max-new-tokens", "1", "--temperature", "0", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    served = _predictions(out)
    assert len(served) == 4 and all(record["error"] is None for record in served.values())
    for record in served.values():
        assert record["stage2"][0]["cue"].startswith("I think the answer is ") and record["stage2"][0]["output"] in ANSWER_TOKENS

    local = RunConfig(model=str(model), out=str(tmp_path / "local"), progress=False, **flags)
    run(local, backend=TransformersBackend(str(model), decoding=local.decoding(), device="cpu"))
    assert served == _predictions(tmp_path / "local")
