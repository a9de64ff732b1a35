"""README's performance targets, read from its table, and the check of a benchmark's figures against them.

A row of the table in README's "Performance" section names its figure first (`` `batched_vs_naive`: ...``)
and its target last (``>= 2``, ``<= 0.10``; empty: no target). ``python benchmarks/run.py --check`` exits
non-zero when a figure misses its target, so the targets live in one place, README.
"""

from __future__ import annotations

import operator
import re
from pathlib import Path
from typing import Any, Callable, Mapping

README = Path(__file__).resolve().parents[1] / "README.md"
_ROW = re.compile(r"^\|\s*`(?P<name>\w+)`[^|]*\|[^|]*\|\s*(?P<op>>=|<=)\s*(?P<value>[0-9.]+)\s*\|\s*$")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


def readme_targets(readme: Path = README) -> dict[str, tuple[str, float]]:
    """Figure name -> (``">="`` or ``"<="``, bound), from the rows of README's performance table."""
    targets = {}
    for line in readme.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line.strip())
        if match:
            targets[match["name"]] = (match["op"], float(match["value"]))
    return targets


def misses(figures: Mapping[str, Any], targets: Mapping[str, tuple[str, float]]) -> list[str]:
    """One line per target the figures miss; a figure that was not measured (absent or None) is a miss too."""
    problems = []
    for name, (op, bound) in targets.items():
        value = figures.get(name)
        if value is None:
            problems.append(f"{name}: not measured (target {op} {bound:g})")
        elif not _OPERATORS[op](value, bound):
            problems.append(f"{name}: {value:g} misses the target {op} {bound:g}")
    return problems
