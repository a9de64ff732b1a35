"""`python benchmarks/run.py --check` judges figures by README's performance table (the benchmark itself is not run here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _targets_module():
    spec = importlib.util.spec_from_file_location("benchmark_targets", BENCHMARKS / "targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


targets = _targets_module()


def test_every_readme_target_is_a_figure_that_run_py_reports():
    found = targets.readme_targets()
    assert found  # the table has targets
    source = (BENCHMARKS / "run.py").read_text(encoding="utf-8")
    for name in found:
        assert f'"{name}": ' in source, name


@pytest.mark.parametrize("name", sorted(targets.readme_targets()))
def test_a_figure_is_judged_by_its_own_target(name):
    all_targets = targets.readme_targets()
    op, bound = all_targets[name]
    at_bound = {other: value for other, (_, value) in all_targets.items()}  # every figure exactly on its bound
    assert targets.misses(at_bound, all_targets) == []
    outside = bound * 1.01 + 0.01 if op == "<=" else bound * 0.99 - 0.01
    missed = targets.misses({**at_bound, name: outside}, all_targets)
    assert len(missed) == 1 and missed[0].startswith(f"{name}: ")
    assert targets.misses({**at_bound, name: None}, all_targets) == [f"{name}: not measured (target {op} {bound:g})"]
