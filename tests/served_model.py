"""``transformers serve`` for a local model folder on a free loopback port, as a context manager.

The one start/wait/stop of a served model for the tests: each test module
serves a model of its choice (``test_openai_backend.served_tiny_model`` pins
one that only answers option letters; ``test_notes.served_note_model`` one
that writes words).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

SERVE_START_SECONDS = 180
# transformers serve binds the port itself, so a free port found here can be taken by another
# process before the server binds it; the server is then started again on a new port.
PORT_ATTEMPTS = 3


class _PortTaken(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(process: subprocess.Popen, url: str, model: str, log: Path) -> None:
    """Poll ``/health`` then ``/v1/models`` until the model is listed, for a bounded time."""
    import httpx

    deadline = time.monotonic() + SERVE_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if "address already in use" in log.read_text().lower():
                raise _PortTaken
            pytest.fail(f"transformers serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                listed = httpx.get(f"{url}/v1/models", timeout=2).json()["data"]
                if any(entry["id"] == model for entry in listed):
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"transformers serve not ready after {SERVE_START_SECONDS}s:\n{log.read_text()[-3000:]}")


@contextmanager
def serving(model: Path) -> Iterator[str]:
    """Yield the server's base URL (up to ``/v1``) while ``transformers serve`` serves ``model`` on the CPU."""
    pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving]")
    pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving]")
    executable = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if executable is None:
        pytest.skip("the transformers CLI is not installed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    log = model.parent / "serve.log"
    for attempt in range(PORT_ATTEMPTS):
        port = _free_port()
        command = [executable, "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
        with log.open("w") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            try:
                _wait_until_serving(process, f"http://127.0.0.1:{port}", str(model), log)
            except _PortTaken:
                if attempt + 1 == PORT_ATTEMPTS:
                    pytest.fail(f"transformers serve found its port taken {PORT_ATTEMPTS} times:\n{log.read_text()[-3000:]}")
                continue
            yield f"http://127.0.0.1:{port}/v1"
            return
        finally:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)
