"""Small file helpers shared by every writer and reader of MUB data.

Output folders: a command writes only into a folder that is new, empty, or
marked (a ``.mub`` file naming the command) as one that the same command
made earlier; replacing a marked folder needs ``--overwrite``. A folder mub
did not make is never written into or deleted, not even with
``--overwrite``: it may be a source tree or someone's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

MARKER_FILE = ".mub"


class OutputFolderError(ValueError):
    """An output folder that mub may not write into as asked."""


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, racing with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_usual_mode(path: str | Path) -> None:
    """The mode a plain ``open``/``mkdir`` would give: ``mkstemp``/``mkdtemp`` make private ones (0600/0700).

    Results and exports are meant to be shared, so they get the user's umask like any other file.
    """
    path = Path(path)
    base = 0o777 if path.is_dir() else 0o666
    path.chmod(base & ~current_umask())


def folder_marker(out: str | Path) -> str | None:
    """The command named by ``out``'s marker, or ``None`` when ``out`` has no (readable) marker."""
    try:
        return str(json.loads((Path(out) / MARKER_FILE).read_text(encoding="utf-8"))["command"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_output_folder(out: str | Path, command: str, *, overwrite: bool = False, reuse: bool = False) -> None:
    """Refuse, in one line, to write into ``out`` unless it is new, empty, or ``command``'s own folder.

    A folder marked by ``command`` needs ``overwrite`` (replace it) or ``reuse``
    (the command continues its own earlier work, such as ``--resume``).
    """
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder; choose a new or empty folder")
    # Files of mub's own bookkeeping (marker, run lock, rank sync) do not make a folder someone's.
    entries = sorted(entry.name for entry in out.iterdir() if not entry.name.startswith(MARKER_FILE))
    if not entries:
        return
    maker = folder_marker(out)
    if maker is None:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise OutputFolderError(
            f"--out {out} holds files that mub did not write ({shown}); mub never writes into or deletes such a "
            "folder, even with --overwrite: choose a new or empty folder"
        )
    if maker != command:
        raise OutputFolderError(
            f"--out {out} was written by `mub {maker}`, not `mub {command}`; choose a new or empty folder"
        )
    if not (overwrite or reuse):
        raise OutputFolderError(f"--out {out} holds an earlier `mub {command}` output; pass --overwrite to replace it")


def mark_folder(out: str | Path, command: str) -> None:
    """Make ``out`` (if needed) and mark it as ``command``'s output."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER_FILE
    if folder_marker(out) != command:
        marker.write_text(json.dumps({"command": command}) + "\n", encoding="utf-8")


@contextmanager
def staged_folder(out: str | Path, command: str, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``out`` that replaces ``out`` when the block completes.

    ``out`` is checked (:func:`check_output_folder`) before the block and again
    before it is replaced, so a folder that changed hands meanwhile is kept. A
    killed or failed write leaves ``out`` as it was, never half written.
    """
    out = Path(out)
    check_output_folder(out, command, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        give_usual_mode(staging)
        mark_folder(staging, command)
        yield staging
        check_output_folder(out, command, overwrite=overwrite)
        if out.exists():
            # Move the old folder aside first: a kill between the two renames leaves both, never neither.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def image_sha256(data: bytes) -> str:
    """The sha256 of an image's bytes as the dataset stores them: the ``image_sha256`` column."""
    return hashlib.sha256(data).hexdigest()


def image_digest(data: bytes) -> str:
    """An image's content hash (sha256, first 16 hex digits): the runner's ``group_id``."""
    return image_sha256(data)[:16]


def cell_bytes(cell: Mapping[str, Any]) -> bytes:
    """The bytes of an undecoded ``datasets.Image`` cell (embedded bytes or a file path)."""
    if cell.get("bytes") is not None:
        return cell["bytes"]
    return Path(cell["path"]).read_bytes()
