"""Shared test fixtures. No test reaches the network: the Hub is offline for all of them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
# CI sets it (.ci/run): there a missing ../shared is a failure, never a skip.
REQUIRE_SHARED_VARIABLE = "MUB_REQUIRE_SHARED"


SHARED_MISSING = (
    f"needs {SHARED}/ beside the repository (mub_release_sample/: real records of the MUB release, "
    "github.com/Yunkaidang/uncertainty; reference_protocol.md and paper_results.md: the authors' code and table)"
)


def shared(name: str = "mub_release_sample") -> Path:
    """``../shared/<name>`` (read in place): the public MUB release sample, the authors' protocol or table.

    A plain clone has no ``../shared``: the tests that need it skip, all under SHARED_MISSING (one line in
    pytest's summary, with their count); with ``MUB_REQUIRE_SHARED=1`` they fail instead.
    """
    path = SHARED / name
    if not path.exists():
        if os.environ.get(REQUIRE_SHARED_VARIABLE) == "1":
            pytest.fail(f"{SHARED_MISSING}; {REQUIRE_SHARED_VARIABLE}=1 forbids skipping", pytrace=False)
        pytest.skip(SHARED_MISSING)
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    """Every skip for a missing ../shared at one place, so that ``-ra`` folds them into one summary line
    (pytest reports a skip raised in a fixture at the test's own line)."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and report.longrepr[2].endswith(SHARED_MISSING):
        report.longrepr = (__file__, shared.__code__.co_firstlineno, report.longrepr[2])
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The random order's seed at the end, also under ``-q`` (which hides pytest-randomly's header line)."""
    seed = getattr(config.option, "randomly_seed", None)  # absent under -p no:randomly
    if isinstance(seed, int):
        terminalreporter.write_line(f"test order: --randomly-seed={seed} repeats it (-p no:randomly keeps file order)")


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Generated files (synthetic sample, tiny models, datasets cache) go to a per-session folder."""
    root = tmp_path_factory.mktemp("caches")
    os.environ["MUB_CACHE"] = str(root / "mub")
    os.environ["HF_DATASETS_CACHE"] = str(root / "datasets")


# Set by pytest itself, or by a library the first time it is imported or used (torch's compiler,
# gradio turning off the Hub's telemetry), not by tests.
_NOT_TESTS_BUSINESS = {"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "HF_HUB_DISABLE_TELEMETRY"}


@pytest.fixture(autouse=True)
def _environment_unchanged(_isolated_caches: None) -> Iterator[None]:
    """A test changes environment variables through monkeypatch only, so nothing leaks into later tests."""
    before = {k: v for k, v in os.environ.items() if k not in _NOT_TESTS_BUSINESS}
    yield
    after = {k: v for k, v in os.environ.items() if k not in _NOT_TESTS_BUSINESS}
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the test left environment variables changed: {changed}; use monkeypatch.setenv/delenv"


def release_image_paths(release: Path) -> set[str]:
    """Every image path named by the release's record files."""
    files = [release / "all_combined_items.jsonl", *sorted((release / "implicit" / "mislead_output").glob("*.jsonl"))]
    return {record["new_id"] for path in files for record in json.loads(path.read_text(encoding="utf-8"))}


def placeholder_image(image_path: str) -> "Image.Image":
    """A 16x16 image whose pixels are drawn from sha256 of its release path: each path its own picture,
    so a test can tell one item's image from another's (an item given another item's image is caught)."""
    from PIL import Image

    pixels = b"".join(hashlib.sha256(f"{image_path}#{block}".encode()).digest() for block in range(24))
    return Image.frombytes("RGB", (16, 16), pixels[: 16 * 16 * 3])


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_release_with_placeholder_images(target: Path) -> Path:
    """A writable copy of the shared release sample with a small placeholder image at every referenced path,
    each image different from every other (checked here: no two image files have the same bytes)."""
    shutil.copytree(shared(), target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    target.chmod(0o755)
    image_paths = release_image_paths(target)
    for image_path in image_paths:
        destination = target / image_path
        destination.parent.mkdir(parents=True, exist_ok=True)
        placeholder_image(image_path).save(destination)
    digests = {file_sha256(target / image_path) for image_path in image_paths}
    assert len(digests) == len(image_paths), "two placeholder images have the same bytes"
    return target


@pytest.fixture(scope="session")
def release_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared release sample with placeholder images (read-only use: copy before changing it)."""
    return copy_release_with_placeholder_images(tmp_path_factory.mktemp("release") / "mub_release")


@pytest.fixture(scope="session")
def rankable_runs(tmp_path_factory: pytest.TempPathFactory, release_dir: Path) -> dict[str, Path]:
    """Full scripted runs on a `mub build` of the release sample, which `mub submit` accepts (tests/built_runs.py)."""
    from built_runs import make_rankable_runs

    return make_rankable_runs(tmp_path_factory.mktemp("rankable"), release_dir)
