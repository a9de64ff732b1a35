"""Whether the Hugging Face Hub can be used now, decided in seconds.

Without a network, ``from_pretrained`` and ``load_dataset`` retry for minutes
before they fail. ``hub_offline_reason`` answers at once when offline mode is
set (``HF_HUB_OFFLINE=1``) and otherwise tries one TCP connection to the Hub
with a short timeout, so that a Hub id fails fast with a message that says
how to work offline (a local folder, or the cache).
"""

from __future__ import annotations

import difflib
import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
CONNECT_TIMEOUT_S = 3.0


def offline_mode_variable() -> str | None:
    """The offline variable that is set (``HF_HUB_OFFLINE=1`` ...), if any."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return None


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _reachable(host: str, port: int, timeout: float) -> bool:
    """One TCP connection, name lookup included, in at most ``timeout`` seconds (a thread bounds the lookup)."""
    outcome: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(outcome and outcome[0])


# endpoint -> (when it was tried, whether it answered): one wait per command, however many checks ask.
_TRIED: dict[str, tuple[float, bool]] = {}
REMEMBER_S = 30.0


def hub_offline_reason(timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why the Hub cannot be used now (offline mode, or no connection), or None when it can."""
    variable = offline_mode_variable()
    if variable:
        return f"{variable}=1 is set"
    endpoint = hub_endpoint()
    tried = _TRIED.get(endpoint)
    if tried is None or time.monotonic() - tried[0] > REMEMBER_S:
        parts = urlsplit(endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        tried = (time.monotonic(), bool(parts.hostname) and _reachable(parts.hostname or "", port, timeout))
        _TRIED[endpoint] = tried
    if not tried[1]:
        return f"{endpoint} cannot be reached (no connection within {timeout:g}s)"
    return None


class HubUnreachable(ConnectionError):
    """The Hub cannot be reached now; the message says what needed it and why."""


def require_hub(what: str) -> None:
    """Before a Hub request outside offline mode: a ``ConnectionError`` in seconds when the Hub cannot be reached
    (huggingface_hub would retry for many seconds, printing each retry)."""
    reason = None if offline_mode_variable() else hub_offline_reason()
    if reason:
        raise HubUnreachable(f"{what}: the Hub could not be reached ({reason}); check the network or HF_ENDPOINT")


def describe_hub_failure(exc: BaseException) -> str | None:
    """One plain line for an error of a Hub request (the Hub unreachable, no such repository, refused), or None
    when ``exc`` and the errors it came from are not Hub errors."""
    import sys

    from huggingface_hub import errors

    transports = tuple(
        module.TransportError for module in (sys.modules.get("httpx"), sys.modules.get("httpx2")) if module is not None
    )  # whichever HTTP client huggingface_hub runs on: connection refused, name lookup failed, timeouts
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, HubUnreachable):
            return str(seen)
        if isinstance(seen, errors.GatedRepoError):
            return "the Hub repository is gated: accept its conditions on its page, with HF_TOKEN set to that account's token"
        if isinstance(seen, errors.RepositoryNotFoundError):
            return "the Hub has no such repository (or it is private and HF_TOKEN gives no access to it); check the name"
        if isinstance(seen, (errors.RevisionNotFoundError, errors.EntryNotFoundError)):
            return f"the Hub repository has no such revision or file ({_first_line(seen)})"
        if isinstance(seen, errors.OfflineModeIsEnabled):
            return f"the Hub cannot be asked: {offline_mode_variable() or 'HF_HUB_OFFLINE'}=1 is set and the cache has no copy"
        if isinstance(seen, (ConnectionError, *transports)) and not isinstance(seen, errors.HfHubHTTPError) and _to_hub(seen):
            return f"the Hub could not be reached ({hub_endpoint()}: {_first_line(seen)}); check the network or HF_ENDPOINT"
        if isinstance(seen, errors.HfHubHTTPError):
            status = seen.response.status_code if getattr(seen, "response", None) is not None else "?"
            return f"the Hub refused the request (HTTP {status}: {_first_line(seen)})"
        # `raise ... from None` (a message of mub's own that already says it all) ends the search
        seen = seen.__cause__ if seen.__cause__ is not None else None if seen.__suppress_context__ else seen.__context__
    return None


def _to_hub(exc: BaseException) -> bool:
    """Whether a failed request went to the Hub (another server, e.g. an OpenAI-compatible one, is not the Hub)."""
    try:
        host = exc.request.url.host  # type: ignore[attr-defined]  # httpx's errors name their request
    except (AttributeError, RuntimeError):  # no request recorded: the Hub client's own error
        return True
    return host == urlsplit(hub_endpoint()).hostname


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def check_hub_name(kind: str, flag: str, name: str) -> None:
    """Before ``name`` (not a folder here) is tried as a Hub id: a ``ValueError`` "no such folder" when it looks
    like a path, is no valid Hub id, or names no folder while one of a close name is beside it (a typo)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
        hub_id = name.count("/") <= 1 and not name.startswith((".", "~"))
    except HFValidationError:
        hub_id = False
    path = Path(name).expanduser()
    siblings = [entry.name for entry in path.parent.iterdir() if entry.is_dir()] if path.parent.is_dir() else []
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.75)
    if hub_id and not close:
        return
    guess = f"; did you mean {path.parent / close[0]}?" if close else ""
    hub = f" (as a Hub {kind} id, {name} is tried only when no folder of a close name is there)" if hub_id else ""
    raise ValueError(f"{flag}: no such folder{guess}{hub}")


def offline_advice(kind: str, repo_id: str) -> str:
    """How to use ``repo_id`` (a ``kind``: model or dataset) without a network."""
    from huggingface_hub import constants

    download = f"hf download {'--repo-type dataset ' if kind == 'dataset' else ''}{repo_id} --local-dir DIR"
    return (
        f"give a local {kind} folder instead (`{download}` on a machine with a network, then copy DIR here), "
        f"or copy that machine's Hugging Face cache to {constants.HF_HUB_CACHE} and set HF_HUB_OFFLINE=1"
    )
