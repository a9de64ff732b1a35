"""mub: run the MUB response-uncertainty benchmark on vision-language models.

``from mub import RunConfig, run`` is the Python API of ``mub run``; they are
imported on first use so that ``import mub`` (and the ``mub`` command's
start-up) stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["RunConfig", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'mub' has no attribute {name!r}")
