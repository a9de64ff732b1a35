"""Small file helpers shared by every writer and reader of MUB data.

Output folders: a command writes only into a folder that is new, empty, or
marked (a ``.mub`` file naming the command) as one that the same command
made earlier; replacing a marked folder needs ``--overwrite``. A folder mub
did not make is never written into or deleted, not even with
``--overwrite``: it may be a source tree or someone's files.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

MARKER_FILE = ".mub"
STAGING_OWNER_FILE = ".mub.staging"  # in a staging folder: the host and pid writing it
# Largest file of each kind mub reads (bytes). A FIFO, device or folder is refused whatever its size.
MAX_IMAGE_BYTES = 64 * 2**20
MAX_TEMPLATE_BYTES = 1 * 2**20  # a --cue-template or --chat-template file
MAX_DOCUMENT_BYTES = 1 * 2**30  # a release's records, results, predictions, submissions


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
    remove_abandoned_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        give_usual_mode(staging)
        mark_folder(staging, command)
        (staging / STAGING_OWNER_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}) + "\n")
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
        (out / STAGING_OWNER_FILE).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def image_sha256(data: bytes) -> str:
    """The sha256 of an image's bytes as the dataset stores them: the ``image_sha256`` column."""
    return hashlib.sha256(data).hexdigest()


def _owner_is_gone(owner_file: Path) -> bool:
    """Whether the process that wrote ``owner_file`` (a staging folder's) has ended: same host, no such pid."""
    try:
        owner = json.loads(owner_file.read_text(encoding="utf-8"))
        host, pid = owner["host"], int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not ours to judge: keep it
    if host != socket.gethostname():
        return False  # another machine's (a shared file system): it may still be writing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def remove_abandoned_staging(out: Path) -> None:
    """Remove ``out``'s staging folders (``.OUT.partial-*``) left by a killed write, whose process has ended.

    Only folders holding mub's owner file are removed, and only when that process is gone on this host: a
    staging folder of a write still running (another process) is kept.
    """
    for staging in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        if staging.is_dir() and not staging.is_symlink() and _owner_is_gone(staging / STAGING_OWNER_FILE):
            shutil.rmtree(staging, ignore_errors=True)


class NotARegularFileError(ValueError):
    """A path mub would read that is not a regular file within its size cap."""


def read_regular_file(path: str | Path, what: str, max_bytes: int) -> bytes:
    """The bytes of ``path``, refused in one line unless it is a regular file of at most ``max_bytes``.

    The file is opened without blocking (a FIFO's open would wait for a writer forever) and checked on the
    open descriptor, so the file checked is the file read; at most ``max_bytes + 1`` bytes are read, so a
    file that grows meanwhile cannot take more memory than that. ``what`` names the file in the message
    ("image of item X", "--cue-template"). ``OSError`` (missing, no permission) passes through.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
            raise NotARegularFileError(f"{what} {path} is {kind}, not a regular file; give a file")
        if info.st_size > max_bytes:
            raise NotARegularFileError(f"{what} {path} is {info.st_size} bytes, over the limit of {max_bytes}; give a smaller file")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise NotARegularFileError(f"{what} {path} grew past the limit of {max_bytes} bytes while it was read; give a smaller file")
    return data


def image_digest(data: bytes) -> str:
    """An image's content hash (sha256, first 16 hex digits): the runner's ``group_id``."""
    return image_sha256(data)[:16]


def cell_bytes(cell: Mapping[str, Any]) -> bytes:
    """The bytes of an undecoded ``datasets.Image`` cell (embedded bytes or a regular file within MAX_IMAGE_BYTES)."""
    if cell.get("bytes") is not None:
        return cell["bytes"]
    return read_regular_file(cell["path"], "image file", MAX_IMAGE_BYTES)
