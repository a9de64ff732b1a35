"""mub: run the MUB response-uncertainty benchmark on vision-language models.

``from mub import RunConfig, run`` is the Python API of ``mub run``; they are
imported on first use so that ``import mub`` (and the ``mub`` command's
start-up) stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["RunConfig", "run"]


def __getattr__(name: str) -> Any:
    if name == "RunConfig":
        from mub.config import RunConfig

        return RunConfig
    if name == "run":
        from mub.runs.runner import run

        return run
    raise AttributeError(f"module 'mub' has no attribute {name!r}")
