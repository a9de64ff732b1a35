"""README's test command on a plain clone: tests needing ../shared skip under one summary line (and fail
where CI sets MUB_REQUIRE_SHARED=1), and the random order's seed is printed under ``-q``.

Each check runs pytest in a subprocess on a throwaway tree: this suite's conftest.py and two small tests
that need ../shared (one through a fixture, one in its body), with no ../shared beside the tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, REQUIRE_SHARED_VARIABLE

NEEDS_SHARED = '''
import pytest
from conftest import shared


@pytest.fixture
def release():
    return shared()


def test_through_a_fixture(release):
    assert release.is_dir()


def test_in_its_body():
    assert shared("reference_protocol.md").is_file()


def test_without_shared():
    assert True
'''


def _pytest(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clone = tmp_path / "clone"
    (clone / "tests").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "tests" / "conftest.py", clone / "tests" / "conftest.py")
    (clone / "tests" / "test_needs_shared.py").write_text(NEEDS_SHARED, encoding="utf-8")
    assert not (clone.parent / "shared").exists()
    base = {k: v for k, v in os.environ.items() if k != REQUIRE_SHARED_VARIABLE}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", *flags, "tests"],
        cwd=clone, env={**base, **(env or {})}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_tests_needing_shared_skip_on_a_plain_clone_with_one_summary_line(tmp_path):
    done = _pytest(tmp_path, "-q", "-p", "no:randomly")
    assert done.returncode == 0, done.stdout + done.stderr
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, done.stdout
    assert skipped[0].startswith("SKIPPED [2] ") and "shared/ beside the repository" in skipped[0]
    assert "mub_release_sample" in skipped[0] and "github.com/Yunkaidang/uncertainty" in skipped[0]
    assert "1 passed, 2 skipped" in done.stdout


def test_ci_variable_turns_the_skip_into_a_failure(tmp_path):
    done = _pytest(tmp_path, "-q", "-p", "no:randomly", env={REQUIRE_SHARED_VARIABLE: "1"})
    assert done.returncode == 1
    assert "1 failed, 1 passed, 1 error" in done.stdout, done.stdout
    assert "MUB_REQUIRE_SHARED=1 forbids skipping" in done.stdout


def test_the_random_seed_is_printed_under_quiet(tmp_path):
    done = _pytest(tmp_path, "-q", "-p", "randomly", "--randomly-seed=4242")
    assert re.search(r"^test order: --randomly-seed=4242 repeats it", done.stdout, flags=re.MULTILINE), done.stdout
    without = _pytest(tmp_path, "-q", "-p", "no:randomly")
    assert "--randomly-seed" not in without.stdout
