"""The run folder: settings, appended predictions, final results.

- ``run.json``: the settings that determine the results; a resumed run must
  match them.
- ``predictions.jsonl``: one line per finished draw of an item, appended and flushed to
  disk as batches finish, so a kill loses at most the batch in flight.
  Processes of a data-parallel launch each append to their own file
  (``predictions.rank{r}-of-{n}.jsonl``, see :mod:`mub.runs.distributed`); the
  folder's predictions are the union of the files its ``.mub`` marker lists
  (``files``): the ones mub made. Any other file (a backup
  ``predictions.orig.jsonl``) is never read, and ``--overwrite`` never deletes it.
- ``items.json``: a short digest of every field of every item the run covers, so a
  ``--resume`` on a changed dataset is refused naming the first item and field
  that differ (see :class:`mub_dataset.fingerprint.ItemDigests`).
- ``results.json``: written once at the end, atomically (temporary file, then
  rename), so a half-written results file never exists.
- ``.mub``: the marker naming the command that made the folder (see
  :func:`mub_dataset.files.check_output_folder`): a run never writes into a
  folder that mub did not make.
- ``.mub-lock``: one writer per run. The process that runs (rank 0 of a
  launch) holds an exclusive ``flock`` on it from ``prepare`` to the end; a
  second run on the folder is refused with the holder's pid, host and start
  time. The OS drops the lock when its holder dies, however it dies, so a
  killed run never blocks ``--resume``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Sequence

from mub.runs.predictions import DrawKey, ItemPrediction
from mub_dataset.files import (
    MARKER_FILE,
    MAX_DOCUMENT_BYTES,
    check_output_folder,
    give_usual_mode,
    mark_folder,
    read_regular_file,
)
from mub_dataset.fingerprint import ItemDigests, first_difference

SETTINGS_FILE = "run.json"
PREDICTIONS_FILE = "predictions.jsonl"
# The names mub gives predictions files; only these may be listed in the marker.
PREDICTIONS_NAME = re.compile(r"predictions(\.rank\d+-of-\d+)?\.jsonl")
RESULTS_FILE = "results.json"
ITEMS_FILE = "items.json"
LOCK_FILE = ".mub-lock"


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked."""


def protocol_name(settings: dict[str, Any]) -> str:
    """The protocol preset recorded in run settings; runs made before presets used today's ``deterministic``."""
    return (settings.get("protocol") or {}).get("preset", "deterministic")


def cue_name(settings: dict[str, Any]) -> str:
    """The stage-2 cue recorded in run settings; runs made before the cue library used their config's default."""
    recorded = (settings.get("cue") or {}).get("name")
    return recorded or ("note" if settings.get("config") == "implicit" else "hint")


def dialogue_form(settings: dict[str, Any]) -> str:
    """``single`` or ``multi``; runs made before dialogue forms were single."""
    return settings.get("dialogue") or "single"


# What a resumed run must share with the earlier one, checked one by one for a message that names the flag.
_RESUME_CHECKS = (("--protocol", protocol_name), ("--cue", cue_name), ("--dialogue", dialogue_form))


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        give_usual_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# The parts of a model run's run.json that rescore and merge rely on, and their types.
RUN_SETTINGS_FIELDS: dict[str, type] = {"model": str, "dataset": str, "config": str, "backend": str}
# The parts of results.json every reader relies on, and their types.
RESULTS_FIELDS: dict[str, type] = {"model": str, "dataset": dict, "run": dict, "results": dict}


def read_json_object(path: Path, fields: dict[str, type] | None = None, *, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``, with ``fields`` of the given types; else RunFolderError naming the file and ``fix``."""
    try:
        data = json.loads(read_regular_file(path, "run file", MAX_DOCUMENT_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{path} is not valid JSON ({exc}); {fix}") from None
    except RecursionError:
        raise RunFolderError(f"{path} is nested too deeply to be a run file; {fix}") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} holds a JSON {type(data).__name__}, not an object; {fix}")
    for name, kind in (fields or {}).items():
        if not isinstance(data.get(name), kind):
            found = "missing" if name not in data else f"a {type(data[name]).__name__}"
            raise RunFolderError(f"{path}: field {name!r} is {found}, not a {kind.__name__}; {fix}")
    return data


def settings_diff(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """The settings keys whose values differ between two runs."""
    keys = (set(a) | set(b)) - set(ignore)
    return sorted(key for key in keys if a.get(key) != b.get(key))


class RunLock:
    """An exclusive ``flock`` on a folder's lock file, with the holder's pid, host and start time in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, folder: Path) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise RunFolderError(
                f"{folder} is in use by another mub process ({holder}); wait for it to finish or stop it, "
                "or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            holder = json.loads(os.pread(fd, 4096, 0))
            return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
        except (ValueError, KeyError, TypeError, OSError):
            return "holder unknown: it is starting right now"

    def release(self) -> None:
        if self._fd is not None:
            # Emptied, not deleted: deleting a lock file lets a waiting process lock the old file
            # while a new one locks a new file. Closing the descriptor drops the flock.
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


class RunFolder:
    """A run folder; ``predictions_file`` is the file this process appends to.

    ``command`` names the mub command whose folder this is (its marker).
    ``launch_files`` are the predictions files every process of this launch
    appends to (all ranks'; by default only ``predictions_file``).
    """

    def __init__(
        self,
        path: str | Path,
        predictions_file: str = PREDICTIONS_FILE,
        command: str = "run",
        launch_files: Sequence[str] = (),
    ):
        self.path = Path(path)
        self.command = command
        self.settings_path = self.path / SETTINGS_FILE
        self.predictions_path = self.path / predictions_file
        self.results_path = self.path / RESULTS_FILE
        self.items_path = self.path / ITEMS_FILE
        self.launch_files = tuple(launch_files) or (predictions_file,)
        self._lock = RunLock(self.path / LOCK_FILE)
        self._created = self._was_empty = False  # set by prepare: the folder was absent / absent or empty

    def _marker(self) -> dict[str, Any]:
        try:
            marker = json.loads((self.path / MARKER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return marker if isinstance(marker, dict) else {}

    def _recorded_names(self) -> list[str]:
        """The predictions files the marker lists; for a folder made before the list, the files with mub's names."""
        listed = self._marker().get("files")
        if isinstance(listed, list):
            return [name for name in listed if isinstance(name, str) and PREDICTIONS_NAME.fullmatch(name)]
        if not self.path.is_dir():
            return []
        return sorted(entry.name for entry in self.path.iterdir() if PREDICTIONS_NAME.fullmatch(entry.name))

    def _record_names(self, names: Iterable[str]) -> None:
        """List ``names`` in the marker before any is written, so a kill never leaves an unlisted file of mub's."""
        write_json_atomic(self.path / MARKER_FILE, {**self._marker(), "command": self.command, "files": list(dict.fromkeys(names))})

    def prediction_files(self) -> list[Path]:
        """The predictions files mub wrote here (this process's and other ranks' or launches'), in the order made.

        A listed name that exists but is no regular file (a FIFO put in its place) is kept, so that reading it
        refuses it in one line instead of taking the run for one without those predictions.
        """
        return [path for path in (self.path / name for name in self._recorded_names()) if os.path.lexists(path)]

    def prepare(
        self,
        settings: dict[str, Any],
        *,
        resume: bool,
        overwrite: bool,
        lock: bool = True,
        items: ItemDigests | None = None,
    ) -> None:
        """Start a run here, or check that resuming matches the earlier settings.

        With ``lock`` (the default; the other ranks of a launch pass False) the
        folder's lock is taken first and held until :meth:`unlock`, and this
        launch's predictions files are listed in the marker. ``items``, the
        digests of the items the run covers, are recorded, or compared on resume.
        """
        if lock:
            self._created = not self.path.exists()
            self._was_empty = self._created or (self.path.is_dir() and not any(self.path.iterdir()))
            try:
                check_output_folder(self.path, self.command, overwrite=overwrite, reuse=True)
                mark_folder(self.path, self.command)
            except OSError as exc:
                raise self._unwritable(exc) from None
            self._lock.acquire(self.path)
        # Only predictions are work to protect: a folder holding just run.json
        # (a run that failed before its first batch, e.g. a model that did not
        # load) is started again without --overwrite.
        has_predictions = bool(self.prediction_files())
        if resume and (has_predictions or self.settings_path.is_file()):
            items_changed = self._check_settings(settings, items)
            self._drop_partial_last_line()
            if lock:
                self._record_names([*self._recorded_names(), *self.launch_files])
                if items is not None and (items_changed or not self.items_path.is_file()):
                    # Only unanswered items changed (say, a broken image fixed): the run goes on with the new
                    # record. A folder made before items.json existed gets one.
                    write_json_atomic(self.items_path, items.to_json())
                    write_json_atomic(self.settings_path, settings)
            return
        if has_predictions and not overwrite:
            raise RunFolderError(
                f"{self.path} already holds a run; pass --resume to continue it, --overwrite to start again, "
                "or choose another --out"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            for stale in (*self.prediction_files(), self.results_path, self.items_path):
                stale.unlink(missing_ok=True)
            if lock:
                self._record_names(self.launch_files)
            if items is not None:
                write_json_atomic(self.items_path, items.to_json())
            write_json_atomic(self.settings_path, settings)
        except OSError as exc:
            raise self._unwritable(exc) from None

    def _unwritable(self, exc: OSError) -> RunFolderError:
        """/proc/..., a path under a file, a read-only or full disk: one line naming the folder."""
        return RunFolderError(
            f"--out {self.path}: cannot write the run folder there ({exc.strerror or exc}"
            f"{': ' + str(exc.filename) if exc.filename else ''}); choose a writable folder"
        )

    def unlock(self) -> None:
        self._lock.release()

    def discard_if_created(self) -> None:
        """Undo :meth:`prepare` in a folder that was absent or empty, while no item is in it: a failed
        pre-flight (a model that does not load, a missing device) leaves nothing behind."""
        if not self._was_empty or self.prediction_files():
            return
        for name in (SETTINGS_FILE, ITEMS_FILE, MARKER_FILE, LOCK_FILE):  # the lock file goes while its lock is held
            (self.path / name).unlink(missing_ok=True)
        self.unlock()
        if self._created:
            try:
                self.path.rmdir()
            except OSError:  # something else appeared in it: it stays
                pass

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    def _check_settings(self, settings: dict[str, Any], items: ItemDigests | None = None) -> bool:
        """Refuse other settings or changed answered items; True when only items without an answer changed."""
        if not self.settings_path.is_file():
            raise RunFolderError(f"{self.path}: predictions without {SETTINGS_FILE}; cannot check what made them")
        earlier = self.read_settings()
        items_changed = items is not None and earlier.get("items_fingerprint") != settings.get("items_fingerprint")
        if items_changed:
            answered = {record.id for record in self.load_predictions().values() if record.error is None}
            items_changed = self.check_items(items, "resume", only=answered)
        for flag, read in _RESUME_CHECKS:
            before, now = read(earlier), read(settings)
            if before != now:
                raise RunFolderError(
                    f"cannot resume {self.path}: it was made under {flag} {before}, not {now}; "
                    f"resume with {flag} {before} or start another --out"
                )
        differing = settings_diff(earlier, settings, ignore=("items_fingerprint",) if items_changed else ())
        if differing:
            details = "; ".join(f"{key}: was {earlier.get(key)!r}, now {settings.get(key)!r}" for key in differing)
            raise RunFolderError(
                f"cannot resume {self.path}: it was made with other settings ({details}); "
                "use the same settings or another --out"
            )
        return items_changed

    def check_items(self, items: ItemDigests, action: str, only: Collection[str] | None = None) -> bool:
        """Refuse, naming the first item and field that differ, items other than those ``items.json`` records.

        With ``only`` (the items the run has answered), only those must be
        unchanged. True when the comparison passed; False for a folder made
        before ``items.json`` existed, left to the comparison of fingerprints.
        """
        if not self.items_path.is_file():
            return False
        try:
            recorded = ItemDigests.from_json(read_json_object(self.items_path, fix="restore it"))
        except (ValueError, KeyError, TypeError) as exc:
            raise RunFolderError(f"{self.items_path} is not an items record ({exc}); restore it, or run again with --overwrite") from None
        difference = first_difference(recorded, items, only)
        if difference is not None:
            raise RunFolderError(
                f"cannot {action} {self.path}: the dataset changed since the run ({difference}; recorded in "
                f"{self.items_path}); use the dataset as it was, or run again with --overwrite or another --out"
            )
        return True

    def read_settings(self, fields: dict[str, type] | None = None) -> dict[str, Any]:
        """The folder's settings file; with ``fields`` (e.g. RUN_SETTINGS_FIELDS), each of its type or one line."""
        return read_json_object(self.settings_path, fields, fix="restore it, or start the run again with --overwrite")

    def read_results(self) -> dict[str, Any]:
        return read_json_object(
            self.results_path,
            RESULTS_FIELDS,
            fix="delete it and score the run again: the same `mub run` command with --resume",
        )

    def _drop_partial_last_line(self) -> None:
        """A kill during a write can leave half a line at the end: cut it, its item is redone."""
        if not self.predictions_path.is_file():
            return
        data = read_regular_file(self.predictions_path, "predictions file", MAX_DOCUMENT_BYTES)
        if data and not data.endswith(b"\n"):
            with self.predictions_path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def load_predictions(self) -> dict[DrawKey, ItemPrediction]:
        """Finished draws by (item id, draw), over all predictions files.

        A later record for a draw (a retried error) replaces an earlier one,
        except that a record with an error never replaces one without: that
        keeps the rule independent of the order in which files are read.
        """
        predictions: dict[DrawKey, ItemPrediction] = {}
        for _, record in self.records():
            keep_record(predictions, record, record.draw_key)
        return predictions

    def records(self) -> Iterator[tuple[Path, ItemPrediction]]:
        """Every record of the folder's predictions files, with the file it is in."""
        for path in self.prediction_files():
            for record in _read_records(path):
                yield path, record

    def append(self, predictions: Iterable[ItemPrediction]) -> None:
        lines = "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in predictions)
        with self.predictions_path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def write_results(self, results: dict[str, Any]) -> None:
        write_json_atomic(self.results_path, results)


def keep_record(records: dict[Any, Any], record: Any, key: Any = None) -> None:
    """Put ``record`` (anything with ``.id`` and ``.error``) under ``key`` (default: its id), unless it failed
    and the one there did not."""
    key = record.id if key is None else key
    earlier = records.get(key)
    if earlier is None or earlier.error is not None or record.error is None:
        records[key] = record


def _read_records(path: Path) -> list[ItemPrediction]:
    """The records of one predictions file.

    Lines are split as bytes and decoded one by one, so that half a line at
    the end (left by a kill, or being written by another rank right now),
    even one cut inside a multi-byte character, is skipped: its item is redone.
    """
    records = []
    lines = read_regular_file(path, "predictions file", MAX_DOCUMENT_BYTES).split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(ItemPrediction.from_json(json.loads(line.decode("utf-8"))))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:  # ValueError: JSON, dict()
            if number == len(lines):
                break
            raise RunFolderError(f"{path}: line {number} is not a prediction record ({exc})") from exc
    return records
