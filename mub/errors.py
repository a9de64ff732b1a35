"""The errors a user can fix, and the exit status of each outcome of a command.

``mub`` prints one line for each of these (what happened and the fix) and no
traceback unless ``--debug`` is given; any other exception is a bug and keeps
its traceback. Nothing heavy is imported here.
"""

from __future__ import annotations

import shlex
from typing import Sequence

# Exit statuses, documented in README ("Exit status").
EXIT_OK = 0
EXIT_BUG = 1  # an unexpected exception (Python's own status for a traceback)
EXIT_USER_ERROR = 2  # bad input, flags, files or environment: the message says the fix
EXIT_ITEM_ERRORS = 3  # the run finished, but some items failed; --resume asks for them again
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, the shell convention)


class MissingDependencyError(ImportError):
    """An optional extra is not installed; the message names the ``pip install`` that adds it."""


class RunInterrupted(Exception):
    """Ctrl-C stopped a run; the finished draws (one per item unless the run draws copies) are saved in its folder."""

    def __init__(self, saved: int, total: int) -> None:
        super().__init__(f"{saved} of {total} draws saved")
        self.saved = saved
        self.total = total


def resume_command(argv: Sequence[str]) -> str:
    """The command line that continues what ``mub <argv>`` started: the same flags, with --resume.

    A ``--base-url`` query string or fragment (where gateways take the key: ``?api-key=...``) is shown as
    ``[REDACTED]``: the key is never printed, and the user puts it back.
    """
    kept = [arg for arg in argv if arg not in ("--resume", "--overwrite")]
    shown = [
        _without_query(arg) if before == "--base-url" or arg.startswith("--base-url=") else arg
        for before, arg in zip(["", *kept], kept)
    ]
    return shlex.join(["mub", *shown, "--resume"])


def _without_query(url: str) -> str:
    """``url`` with whatever follows its first ``?`` or ``#`` replaced by ``[REDACTED]``."""
    cut = min((position for position in (url.find("?"), url.find("#")) if position >= 0), default=-1)
    return url if cut < 0 else url[: cut + 1] + "[REDACTED]"
