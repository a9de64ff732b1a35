"""``transformers serve`` for a local model folder on a free loopback port, as a context manager.

The waiting and port helpers are the openai-backend tests' own; this adds the
start and stop around them so that any test module can serve a model of its
choice (``test_openai_backend.served_tiny_model`` pins one that only answers
option letters).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from test_openai_backend import _free_port, _wait_until_serving


@contextmanager
def serving(model: Path) -> Iterator[str]:
    """Yield the server's base URL (up to ``/v1``) while ``transformers serve`` serves ``model`` on the CPU."""
    pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving]")
    pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving]")
    executable = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if executable is None:
        pytest.skip("the transformers CLI is not installed")
    port = _free_port()
    command = [executable, "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    log = model.parent / "serve.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_until_serving(process, f"http://127.0.0.1:{port}", str(model), log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
