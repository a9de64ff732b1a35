"""`mub` with a scripted test backend registered, for tests that start mub in other processes.

Run as a script (``python dist_helpers.py run ...`` or under torchrun) it
behaves like the ``mub`` command with one more backend, ``test-scripted``,
whose answers depend only on the prompt, so every process, batch and launch
answers a request the same way.
"""

from __future__ import annotations

import hashlib
import sys

from mub.backends import BACKENDS
from mub.backends.base import Request
from mub.cli import main
from mub.testing.scripted import ScriptedBackend

SCRIPTED = "test-scripted"


def answer(request: Request) -> str:
    """An option picked by the prompt's hash: stage 2 sees another prompt, so some answers flip."""
    digest = int(hashlib.sha256(request.prompt.encode("utf-8")).hexdigest(), 16)
    return request.options[digest % len(request.options)]


def scripted_backend(config) -> ScriptedBackend:
    return ScriptedBackend(answer, config.decoding(), name=config.model)


def register(module: str = __name__) -> None:
    BACKENDS[SCRIPTED] = f"{module}:scripted_backend"


if __name__ == "__main__":
    register("__main__")
    sys.exit(main(sys.argv[1:]))
