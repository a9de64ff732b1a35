"""Ctrl-C stops a run within seconds, keeps the finished items, and says how to continue (exit 130)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_server import FaultServer

from mub.errors import EXIT_INTERRUPTED

N_ITEMS = 8
BATCH = 2
# Bounds that keep a broken test from hanging; no test asserts a duration.
WAIT_S = 120


def _lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("fault", ["stall", "500"])
def test_ctrl_c_stops_an_api_run_keeps_finished_items_and_prints_the_resume_command(tmp_path, fault):
    out = tmp_path / "run"
    argv = ["run", "--backend", "openai", "--model", "fault-model", "--limit", str(N_ITEMS),
            "--batch-size", str(BATCH), "--max-retries", "1000", "--out", str(out), "--no-progress"]  # fmt: skip
    with FaultServer() as server:
        argv[3:3] = ["--base-url", server.base_url]
        # The first group's requests (stage 1 and 2 of BATCH items) are answered; every later one stalls (no
        # reply until the server stops) or fails with a retryable 500: without Ctrl-C handling the run would
        # wait or retry (1000 times) for far longer than the bounds below. Queued before the run starts, so a
        # fast run cannot finish before the fault is in place.
        first_group = 2 * BATCH
        server.add("stall", stall=0, times=first_group)
        server.add(fault, times=None, stall=10 * WAIT_S)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mub.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            _wait_for(lambda: len(_lines(out / "predictions.jsonl")) >= BATCH, "the first group")
            _wait_for(lambda: len(server.received) > first_group, "a request of the next group")
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        saved = _lines(out / "predictions.jsonl")
        assert proc.returncode == EXIT_INTERRUPTED, err
        assert "Traceback" not in err
        resume = shlex.join(["mub", *argv, "--resume"])
        ok = [record for record in saved if record["error"] is None]
        assert f"interrupted: {len(ok)} of {N_ITEMS} draws saved; continue with: {resume}" in err
        assert len(ok) >= BATCH

        # The printed command finishes the run: only the missing items are asked for.
        server.heal()
        server.reset_log()
        done = subprocess.run([sys.executable, "-m", "mub.cli", *shlex.split(resume)[1:]], capture_output=True,
                              text=True, timeout=WAIT_S)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads((out / "results.json").read_text())["results"]["explicit"]["n"] == N_ITEMS
        assert len(server.received) == 2 * (N_ITEMS - len(ok))  # stage 1 and stage 2 of each missing item


def test_cancel_ends_retry_waits_and_drops_pending_requests():
    """The Python API's side of Ctrl-C: OpenAIBackend.cancel() stops a call that would retry for hours."""
    import threading

    from PIL import Image

    from mub.backends.base import Request
    from mub.backends.openai_backend import ApiSettings, OpenAIBackend

    with FaultServer() as server:
        server.add("500", times=None)
        settings = ApiSettings(base_url=server.base_url, concurrency=2, max_retries=1000, backoff_base=3600, backoff_max=3600)
        backend = OpenAIBackend("fault-model", settings)
        image = Image.new("RGB", (8, 8))
        requests = [Request(f"item{i}/stage1/0", image, "Question? A. x B. y", ("A", "B")) for i in range(6)]
        results: list = []
        worker = threading.Thread(target=lambda: results.extend(backend.generate(requests)), daemon=True)
        worker.start()
        _wait_for(lambda: len(server.received) >= 2, "the first attempts")
        backend.cancel()
        worker.join(WAIT_S)
        assert not worker.is_alive()
        assert len(server.received) == 2  # no retry, and the 4 pending requests were never sent
        assert [g.error for g in results] == ["cancelled (Ctrl-C)"] * 6
