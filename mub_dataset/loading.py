"""Load MUB as a `datasets.Dataset`: the embedded sample, a release folder, an export or a Hub id."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import datasets

from .features import DEFAULT_CONFIG, config_spec
from .hub import check_hub_name, hub_offline_reason, offline_advice, offline_mode_variable
from .release import IMPLICIT_DIR, IMPLICIT_PATTERN, MAIN_FILE

SAMPLE = "sample"
SAMPLE_VERSION = "v1"


def cache_root() -> Path:
    """Where mub keeps generated files: ``$MUB_CACHE`` or ``~/.cache/mub``."""
    return Path(os.environ.get("MUB_CACHE", Path.home() / ".cache" / "mub"))


def sample_release_dir() -> Path:
    """The embedded synthetic sample as a release folder, generated on first use."""
    from .synthetic import write_synthetic_release

    target = cache_root() / f"synthetic-sample-{SAMPLE_VERSION}"
    if not (target / MAIN_FILE).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".synthetic-partial-", dir=target.parent))
        try:
            write_synthetic_release(staging)
            try:
                staging.rename(target)
            except OSError:  # another process finished first; its copy is identical
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def release_fingerprint(release_dir: str | Path) -> str:
    """A digest of every file in the release folder (records and images), so an edited release is rebuilt.

    It is a cheap key: each file's path, size, and modification and change times
    (a file replaced in place gets a new change time, even when ``cp -p`` or
    ``touch`` keeps its modification time), never its bytes. The bytes of each
    image are hashed once, by the build, into the ``image_sha256`` column.
    """
    root = Path(release_dir)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():  # not a FIFO or device: stat only, nothing is opened
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}\n".encode())
    return digest.hexdigest()[:16]


def build_from_release(
    release_dir: str | Path,
    config: str = DEFAULT_CONFIG,
    *,
    cache_dir: str | None = None,
    allow_truncated: bool = False,
) -> datasets.Dataset:
    """Run the `datasets` builder on a release folder and return the test split."""
    from builders import Mub

    config_spec(config)  # a clear error for an unknown config name
    builder = Mub(
        config_name=config,
        data_dir=str(Path(release_dir).resolve()),
        cache_dir=cache_dir,
        allow_truncated=allow_truncated,
        release_fingerprint=release_fingerprint(release_dir),
    )
    builder.download_and_prepare()
    return builder.as_dataset(split="test")


def is_release_dir(path: str | Path) -> bool:
    return (Path(path) / MAIN_FILE).is_file()


def load(
    config: str = DEFAULT_CONFIG,
    dataset: str | Path = SAMPLE,
    *,
    cache_dir: str | None = None,
    allow_truncated: bool = False,
) -> datasets.Dataset:
    """MUB's test split for a config.

    ``dataset`` is ``"sample"`` (the embedded synthetic set, the default), a
    release folder, a folder written by ``mub build``, or a Hub dataset id.
    """
    if str(dataset) == SAMPLE:
        return build_from_release(sample_release_dir(), config, cache_dir=cache_dir)
    if is_release_dir(dataset):
        return build_from_release(dataset, config, cache_dir=cache_dir, allow_truncated=allow_truncated)
    config_spec(config)
    local = Path(dataset).expanduser()
    if not local.is_dir():
        check_hub_name("dataset", f"dataset {dataset}", str(dataset))
    offline = None if local.is_dir() else hub_offline_reason()
    if offline and not offline_mode_variable():  # unreachable: datasets would retry for many seconds
        raise ValueError(f"dataset {dataset}: this machine is offline ({offline}); {offline_advice('dataset', str(dataset))}")
    try:
        return datasets.load_dataset(str(local) if local.is_dir() else str(dataset), config, split="test", cache_dir=cache_dir)
    except (OSError, ValueError) as exc:  # ConnectionError and FileNotFoundError are OSErrors
        if offline:
            raise ValueError(
                f"dataset {dataset}: cannot load config {config!r}: this machine is offline ({offline}) and the "
                f"datasets cache has no copy ({exc}); {offline_advice('dataset', str(dataset))}"
            ) from None
        raise ValueError(
            f"dataset {dataset}: cannot load config {config!r} ({exc}); give 'sample', a release folder "
            f"(with {MAIN_FILE}), a folder written by `mub build`, or a Hub dataset id (needs network)"
        ) from None
