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


# The optional modules mub imports, by the extra of setup.cfg that installs each.
EXTRA_OF_MODULE = {"torch": "torch", "matplotlib": "report", "httpx": "api", "vllm": "vllm", "trl": "trl", "gradio": "space"}


def install_hint(extra: str) -> str:
    """How to add an extra today: mub is not on PyPI, so from the clone, or the package the extra holds."""
    return f'pip install -e ".[{extra}]" in the mub clone, or pip install "{_extra_requirement(extra)}"'


def _extra_requirement(extra: str) -> str:
    """The extra's requirement as installed mub declares it (``matplotlib>=3.8``), read from its metadata."""
    from importlib import metadata

    try:
        declared = metadata.requires("mub") or []
    except metadata.PackageNotFoundError:
        declared = []
    marker = f'extra == "{extra}"'
    found = [line.split(";")[0].strip() for line in declared if line.endswith(marker)]
    return found[0] if len(found) == 1 else next(m for m, e in EXTRA_OF_MODULE.items() if e == extra)


def missing_extra(exc: ModuleNotFoundError, needed_by: str) -> MissingDependencyError | None:
    """One line naming the extra to install, when ``exc`` is an optional module of mub missing; else None."""
    module = (exc.name or "").split(".")[0]
    return extra_needed(module, needed_by) if module in EXTRA_OF_MODULE else None


def extra_needed(module: str, needed_by: str) -> MissingDependencyError:
    """``needed_by`` cannot run without ``module``, an optional module of mub (a key of EXTRA_OF_MODULE)."""
    extra = EXTRA_OF_MODULE[module]
    return MissingDependencyError(
        f"{needed_by} needs {module}, from mub's [{extra}] extra, which is not installed: {install_hint(extra)}"
    )


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
