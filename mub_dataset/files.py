"""Small file helpers shared by every writer and reader of MUB data."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping


@contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that replaces ``out`` when the block completes.

    A killed or failed write leaves ``out`` as it was, never half written.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def image_digest(data: bytes) -> str:
    """An image's content hash (sha256, first 16 hex digits): the runner's ``group_id``."""
    return hashlib.sha256(data).hexdigest()[:16]


def cell_bytes(cell: Mapping[str, Any]) -> bytes:
    """The bytes of an undecoded ``datasets.Image`` cell (embedded bytes or a file path)."""
    if cell.get("bytes") is not None:
        return cell["bytes"]
    return Path(cell["path"]).read_bytes()
