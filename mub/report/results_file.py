"""What the leaderboard results file's writer (:mod:`mub.report.submit`) and reader
(:mod:`mub.report.leaderboard`) share: task names, the protocol of older runs, the
way a figure is written. Kept light (stdlib only) so the leaderboard Space can
import it without datasets or matplotlib.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

UNKNOWN_PROTOCOL = "unknown (pre-preset)"  # runs made before protocol presets were recorded
DECIMALS = 12  # drops floating-point noise (2.7e-17) without touching any real figure
# A Hub repository id: one optional namespace and a name, no path syntax.
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def is_hub_id(text: str) -> bool:
    """A Hub repository id, and not a path that exists here (a local folder named like one)."""
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def task_name(config: str) -> str:
    return f"mub_{config}"


def number(value: Any) -> Any:
    """A figure as written out: floats rounded to :data:`DECIMALS`; whole values as ints (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, float):
        return [number(v) for v in value] if isinstance(value, (list, tuple)) else value
    value = round(value, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    return int(value) if value.is_integer() else value
