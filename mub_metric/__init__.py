"""The `mub_misleading_rate` evaluate metric, shipped as a Hub-style module folder.

`PATH` names that folder, so `evaluate.load(mub_metric.PATH)` works offline;
`load()` is the same call with this package's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PATH: str = str(Path(__file__).resolve().parent / "mub_misleading_rate")


def load(config_name: str = "default", **kwargs: Any) -> Any:
    """Return `evaluate.load(PATH, config_name, **kwargs)`: configs "default" and "consistency"."""
    # Imported here so that importing the package (e.g. for PATH) stays cheap.
    import evaluate

    return evaluate.load(PATH, config_name, **kwargs)


__all__ = ["PATH", "load"]
