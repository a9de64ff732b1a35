"""Backend for any OpenAI-compatible chat completions server.

Works with the OpenAI API itself and with servers that mimic it (vLLM's
``vllm serve``, TGI, ``transformers serve``, LiteLLM, ...). One request is one
``POST {base_url}/chat/completions`` whose user message holds the image as a
base64 data URL followed by the prompt text, the same order the local
backends give the chat template.

Why plain ``httpx`` and not the ``openai`` client: the client runs its own
retry loop (its own backoff formula, a capped ``Retry-After``) and validates
responses into objects, which hides the raw body of a malformed answer. Here
every retry decision and every error text is ours, and the only dependency is
``httpx`` (``pip install 'mub[api]'``).

Concurrency: ``generate`` is synchronous (the runner calls it once per stage
of a group of ``--batch-size`` items), so requests go through a bounded thread
pool sharing one connection pool; the work is network-bound, threads are
enough and need no event loop (which would clash with callers already running
one, such as notebooks). At most ``concurrency`` requests of a call are in
flight, and a free thread takes the call's next request at once.

Failures: 429, 408, 5xx, timeouts, broken connections and unreadable bodies
(invalid JSON, no ``choices``) are retried with exponential backoff and
jitter (each wait at most ``backoff_max``), never sooner than the server's
``Retry-After`` asks, however much longer than ``backoff_max`` that is. A
server asking for more than ``max_retry_after`` seconds (default 300) is not
waited for: that request fails at once. What still fails, and any other
status, an empty answer, or an error raised while building the request
(such as h11's ``LocalProtocolError``), becomes ``Generation(error=...)``
with the server's text kept (key redacted, then truncated): the runner counts
it as an error and ``--resume`` asks again.

The API key is read from the environment variable named by ``api_key_env``,
surrounding whitespace stripped (``export KEY=$(cat key.txt)`` and ``.env``
files often leave a trailing newline or carriage return); a key that still
holds characters other than visible ASCII cannot go into an HTTP header and
is refused when the backend is built, with a message that does not show the
key. The key goes only into the ``Authorization`` header: ``describe()`` names
the variable, never its value, and every error or log text, including that of
any exception raised while sending, passes through
:meth:`OpenAIBackend.redact`, which also catches the key's escaped forms
(Python ``repr``, bytes ``repr``, JSON, percent-encoding).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence
from urllib.parse import quote, urlsplit, urlunsplit

from mub.backends import common
from mub.backends.base import Generation, Request
from mub.config import DecodingSettings

if TYPE_CHECKING:
    import httpx

    from mub.config import RunConfig

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx
SERVER_TEXT_LIMIT = 1000  # characters of a server's reply kept in an error
REDACTED = "[REDACTED]"


@dataclass(frozen=True)
class ApiSettings:
    """How to reach the server; ``backend_options`` of a RunConfig map onto these fields."""

    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 5
    timeout: float = 60.0  # seconds for each of connect, write, and every read
    backoff_base: float = 0.5  # first retry waits 0.25-0.5 s, doubling each time
    backoff_max: float = 60.0  # no backoff wait is longer; a server's Retry-After may ask for more
    max_retry_after: float = 300.0  # a longer Retry-After is not waited for: the request fails at once
    image_format: str = "png"  # "png" (lossless) or "jpeg" (smaller for photographs)
    # top_k is no OpenAI chat parameter; vLLM's server (and some others) accept it, others reject the request.
    send_top_k: bool = False

    def validate(self) -> None:
        if not self.base_url:
            raise ValueError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        if urlsplit(self.base_url).scheme not in ("http", "https"):
            raise ValueError(f"--base-url must start with http:// or https://, got {self.base_url!r}")
        if self.concurrency < 1 or self.max_retries < 0:
            raise ValueError("--concurrency must be at least 1 and --max-retries at least 0")
        if self.timeout <= 0 or min(self.backoff_base, self.backoff_max, self.max_retry_after) < 0:
            raise ValueError("--timeout must be positive and backoff times not negative")
        common.check_image_format(self.image_format)


class RequestFailed(Exception):
    """One failed attempt: a message (server text included) and whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def server_text(text: str, limit: int = SERVER_TEXT_LIMIT, redact: Callable[[str], str] | None = None) -> str:
    """A server's reply for an error message: redacted, whitespace-collapsed, and cut to ``limit`` characters.

    Redaction comes first: cutting first could leave part of a key at the edge.
    """
    if redact is not None:
        text = redact(text)
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, ``Retry-After`` in seconds or as an HTTP date."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def retry_delay(attempt: int, retry_after: float | None, base: float, cap: float, rng: random.Random) -> float:
    """Wait before retry number ``attempt`` (0-based).

    Exponential with "equal jitter" (a random point in the upper half of
    ``base * 2**attempt``, at most ``cap``) so that concurrent requests failing
    together do not come back together. A server's ``Retry-After`` is a floor,
    honoured in full even above ``cap`` (callers refuse absurd ones, see
    ``max_retry_after``), plus a little jitter for the same reason.
    """
    ceiling = min(cap, base * 2**attempt)
    delay = rng.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after + rng.uniform(0, min(base, cap)))
    return delay


def completion_text(body: str, redact: Callable[[str], str] | None = None) -> tuple[str, dict[str, Any]]:
    """The answer text of a chat completion body, and its finish reason; ``RequestFailed`` if malformed.

    Invalid JSON or a body without choices is retryable (typically a proxy
    or an overloaded server cut the reply); an empty answer is not, since a
    greedy model would give it again. A refusal is an answer (the parser marks
    it unparsed), not an error. Error messages quote ``body`` through ``redact``.
    """
    try:
        data = json.loads(body)
    except ValueError:
        raise RequestFailed(f"malformed response (not JSON): {server_text(body, redact=redact)}", retryable=True) from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise RequestFailed(f"malformed response (no choices): {server_text(body, redact=redact)}", retryable=True)
    message = choices[0].get("message")
    message = message if isinstance(message, dict) else {}
    content = message.get("content")
    if isinstance(content, list):  # some servers return content parts
        content = "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    if not content:
        content = message.get("refusal")
    if not isinstance(content, str) or not content:
        raise RequestFailed(f"malformed response (empty content): {server_text(body, redact=redact)}", retryable=False)
    return content, {"finish_reason": choices[0].get("finish_reason")}


def request_seed(seed: int, key: str) -> int:
    """Per-request seed (as the local backends derive it), within 31 bits for every server.

    Sampled answers then depend on the request, not on which thread sent it
    first, where the server honours ``seed``.
    """
    return common.request_seed(seed, key) % 2**31


def read_api_key(variable: str) -> str:
    """The key in environment variable ``variable`` ("" if unset), surrounding whitespace stripped.

    A key that still holds anything but visible ASCII (a control character, a
    space, a non-ASCII letter) cannot go into an HTTP header: ``ValueError``
    naming the variable and the position, never the key.
    """
    key = os.environ.get(variable, "").strip()
    for position, char in enumerate(key, start=1):
        if not "\x21" <= char <= "\x7e":
            kind = "a non-ASCII character" if not char.isascii() else "a space" if char == " " else "a control character"
            raise ValueError(
                f"the API key in ${variable} holds {kind} at position {position} of {len(key)}: an HTTP header "
                "takes visible ASCII only; check how the variable was set (the key is not shown)"
            )
    return key


def key_forms(key: str) -> list[str]:
    """``key`` as it may appear in a text: raw, and escaped by ``repr``, bytes ``repr``, JSON, or URL quoting.

    Longest first, so that replacing them in order leaves no piece of a longer form behind.
    """
    if not key:
        return []
    forms = {
        key,
        repr(key)[1:-1],
        repr(key.encode("utf-8", "backslashreplace"))[2:-1],
        json.dumps(key)[1:-1],
        json.dumps(key, ensure_ascii=False)[1:-1],
        quote(key, safe=""),
    }
    return sorted(forms, key=len, reverse=True)


def _public_url(url: str) -> str:
    """``url`` without user:password, for ``describe()``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


class OpenAIBackend:
    def __init__(
        self,
        model: str,
        settings: ApiSettings,
        decoding: DecodingSettings = DecodingSettings(),
    ) -> None:
        settings.validate()
        if decoding.scoring != "generate":
            raise ValueError("--backend openai supports --scoring generate only (chat APIs return no option scores)")
        self.model = model
        self.settings = settings
        self.decoding = decoding
        self._rng = random.Random()  # jitter only: unseeded on purpose, so clients spread out
        self._api_key = read_api_key(settings.api_key_env)
        self._key_forms = key_forms(self._api_key)
        self._endpoint = settings.base_url.rstrip("/") + "/chat/completions"
        self._client = self._make_client()
        self._pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="mub-openai")
        # Stage 1 and stage 2 (and every implicit note) send the same image: encode it once.
        self._image_urls = common.ImageUrls(settings.image_format)

    def _make_client(self) -> "httpx.Client":
        try:
            import httpx
        except ImportError:
            raise ImportError("--backend openai needs httpx: pip install 'mub[api]'") from None
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        connections = self.settings.concurrency
        return httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.settings.timeout),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    def redact(self, text: str) -> str:
        """``text`` with the API key, raw or escaped, replaced: for anything that is logged or recorded."""
        for form in self._key_forms:
            text = text.replace(form, REDACTED)
        return text

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        # Encoding here, in the caller's thread, keeps the image cache single-threaded.
        bodies = [self._body(request, self._image_urls(request.image)) for request in requests]
        return list(self._pool.map(self._complete, bodies))

    def describe(self) -> dict[str, Any]:
        info = {key: value for key, value in asdict(self.settings).items() if key != "base_url"}
        return {
            "backend": "openai",
            "model": self.model,
            "base_url": _public_url(self.settings.base_url),
            **info,
            "api_key_set": bool(self._api_key),
        }

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def _body(self, request: Request, image_url: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": common.chat_messages(request, {"type": "image_url", "image_url": {"url": image_url}}),
            "max_tokens": self.decoding.max_new_tokens,
            "temperature": max(self.decoding.temperature, 0.0),
            "top_p": self.decoding.top_p,
            "seed": request_seed(self.decoding.seed, request.key),
            **({"top_k": self.decoding.top_k} if self.settings.send_top_k and self.decoding.top_k > 0 else {}),
        }

    def _complete(self, body: dict[str, Any]) -> Generation:
        """One request with retries; failures end as ``Generation(error=...)``, never as an exception."""
        start = time.perf_counter()
        attempts = self.settings.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                text, extra = self._attempt(body)
            except Exception as exc:  # noqa: BLE001 - whatever it is, its text is redacted before it goes anywhere
                if isinstance(exc, RequestFailed):
                    failure = exc
                else:  # a surprise (a bug, a client library error): recorded, not raised through the run
                    failure = RequestFailed(f"request failed ({self._describe(exc)})", retryable=False)
                reason = self.redact(str(failure))
                limit = self.settings.max_retry_after
                if failure.retry_after is not None and failure.retry_after > limit:  # not worth hours of waiting
                    reason += f" (the server asks to retry after {failure.retry_after:g}s, more than max_retry_after={limit:g}s)"
                elif failure.retryable and attempt < attempts:
                    self._wait_before_retry(attempt, attempts, failure.retry_after, reason)
                    continue
                error = f"{reason} (after {attempt} attempt{'s' if attempt > 1 else ''})"
                return Generation(text="", seconds=time.perf_counter() - start, error=error, extra={"attempts": attempt})
            return Generation(text=text, seconds=time.perf_counter() - start, extra={**extra, "attempts": attempt})
        raise AssertionError("unreachable: the last attempt returns")

    def _describe(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {self.redact(str(exc))}"

    def _wait_before_retry(self, attempt: int, attempts: int, retry_after: float | None, reason: str) -> None:
        settings = self.settings
        delay = retry_delay(attempt - 1, retry_after, settings.backoff_base, settings.backoff_max, self._rng)
        logger.warning("retrying in %.2fs (attempt %d of %d): %s", delay, attempt + 1, attempts, server_text(reason, 200))
        time.sleep(delay)

    def _attempt(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        import httpx

        try:
            response = self._client.post(self._endpoint, json=body)
        except httpx.TimeoutException as exc:
            raise RequestFailed(f"timed out after {self.settings.timeout:g}s ({type(exc).__name__})", retryable=True) from None
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol) as exc:  # our request is wrong: again is the same
            raise RequestFailed(f"invalid request ({self._describe(exc)})", retryable=False) from None
        except httpx.RequestError as exc:  # refused, reset, cut off mid-reply, undecodable body
            raise RequestFailed(f"connection failed ({self._describe(exc)})", retryable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return completion_text(response.text, redact=self.redact)
        retryable = status in RETRYABLE_STATUS or status >= 500
        raise RequestFailed(
            f"HTTP {status}: {server_text(response.text, redact=self.redact)}",
            retryable=retryable,
            retry_after=retry_after_seconds(response.headers) if retryable else None,
        )


def from_run_config(config: "RunConfig") -> OpenAIBackend:
    """Build the backend from ``--base-url`` etc., which the CLI puts into ``config.backend_options``."""
    if config.chat_template:
        raise ValueError("--chat-template applies to local backends; an API server uses its own template")
    # backend_options may also hold other backends' settings (one flag namespace): take ours.
    known = {f.name for f in fields(ApiSettings)}
    options = {key: value for key, value in config.backend_options.items() if key in known}
    options.setdefault("base_url", "")
    if config.top_k and not options.get("send_top_k"):
        raise ValueError(
            "--top-k reaches an OpenAI-compatible server only with --send-top-k (vLLM's server accepts it; "
            "the OpenAI API rejects it); add --send-top-k or drop --top-k"
        )
    return OpenAIBackend(config.model, ApiSettings(**options), config.decoding())
