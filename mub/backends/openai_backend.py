"""Backend for any OpenAI-compatible chat completions server.

Works with the OpenAI API itself and with servers that mimic it (vLLM's
``vllm serve``, TGI, ``transformers serve``, LiteLLM, ...). One request is one
``POST {base_url}/chat/completions``. Two request forms (``--api-request``):

* ``open`` (default): the user message holds the image file's own bytes as a
  base64 data URL (its own MIME type) followed by the prompt text, the same
  order the local backends give the chat template, with the preset's decoding.
  A field the preset leaves to the model's ``generation_config`` (the paper
  preset's temperature; every sampling field of its implicit runs) is not
  sent, so the server applies its own default: vLLM's server (``--generation-config
  auto``, its default) takes the model's ``generation_config.json`` values,
  1.0 for a temperature it names none; note that vLLM ignores ``do_sample``,
  so a model that decodes greedily under transformers is sampled there unless
  ``--temperature 0`` is given.
* ``closed``: the authors' request for API models (my_tool.py): the text,
  then the file's bytes as ``data:image/jpeg;base64,...`` with ``"detail":
  "high"``, ``max_tokens`` 2048 and no sampling field or seed.

The returned text is kept as the shared stopping rule keeps it
(:mod:`mub.backends.stopping`).

Why plain ``httpx`` and not the ``openai`` client: the client runs its own
retry loop (its own backoff formula, a capped ``Retry-After``) and validates
responses into objects, which hides the raw body of a malformed answer. Here
every retry decision and every error text is ours, and the only dependency is
``httpx`` (the ``[api]`` extra).

Concurrency: ``generate`` is synchronous (the runner calls it once per stage
of a group of ``--batch-size`` items), so requests go through a bounded thread
pool sharing one connection pool; the work is network-bound, threads are
enough and need no event loop (which would clash with callers already running
one, such as notebooks). At most ``concurrency`` requests of a call are in
flight, and a free thread takes the call's next request at once.

Draws (the paper preset asks an item once per release copy, up to 9 times):
each draw is its own request with its own ``seed`` (:func:`request_seed` of
the draw's key), and the runner puts an item's draws side by side in one
call, so they are in flight together (all of them with ``--concurrency`` at
least their number); a server with a prefix cache (vLLM's, on by default)
prefills their shared prompt once. The chat API's ``n`` is not used: the
``n`` choices of a request share its one seed (vLLM's server seeds them
``seed``, ``seed + 1``, ...; OpenAI's gives no per-choice seed), so a draw
would depend on the other draws of its request instead of its own key, and
servers that ignore ``n`` or ``seed`` would go unnoticed.

Bounds: a reply is read as a stream and decoded here (gzip or deflate, the
only encodings asked for), at most ``max_response_bytes`` decoded bytes
(default 1 MiB), so a compressed bomb never inflates in memory; ``timeout``
is a deadline for the whole request (from sending it to the last byte of the
reply), so a server that trickles its reply is cut at ``timeout``; and the
stored answer is at most ``max_output_chars`` characters (default 32000).
A breach is an item error, like any other failure below.

Failures: 429, 408, 5xx, timeouts, broken connections and unreadable bodies
(invalid JSON, no ``choices``) are retried with exponential backoff and
jitter (each wait at most ``backoff_max``), never sooner than the server's
``Retry-After`` asks, however much longer than ``backoff_max`` that is. A
server asking for more than ``max_retry_after`` seconds (default 300) is not
waited for: that request fails at once. What still fails, and any other
status, an empty answer, or an error raised while building the request
(such as h11's ``LocalProtocolError``), becomes ``Generation(error=...)``
with a short excerpt of the server's text (key redacted, at most
``SERVER_TEXT_LIMIT`` characters; a raw body is never kept): the runner counts
it as an error and ``--resume`` asks again.

The API key is read from the environment variable named by ``api_key_env``,
surrounding whitespace stripped (``export KEY=$(cat key.txt)`` and ``.env``
files often leave a trailing newline or carriage return); a key that still
holds characters other than visible ASCII cannot go into an HTTP header and
is refused when the backend is built, with a message that does not show the
key. The key goes only into the ``Authorization`` header: ``describe()`` names
the variable, never its value, and every error or log text, including that of
any exception raised while sending, and every answer of the model, passes
through :meth:`OpenAIBackend.redact`, which removes every run of 8 or more
consecutive key characters, in any case, width or escape, split by white space,
separators or format characters, reversed, or base64-, hex-, percent- or
HTML-entity-encoded, recursively (:mod:`mub.backends.redaction`). The base URL's
query string and fragment (``?api-key=...``) are never stored. Keys shorter than
``MIN_REDACTED_KEY`` characters are not redacted (that would mangle ordinary
words): a warning says so instead.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import socket as socket_module
import threading
import time
import zlib
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from mub.backends import common
from mub.backends.base import Generation, Request
from mub.backends.redaction import WINDOW, KeyRedactor
from mub.backends.stopping import kept_text
from mub.config import DecodingSettings
from mub.errors import MissingDependencyError, install_hint
from mub.protocol.presets import API_REQUESTS, CLOSED_MODEL_REQUEST, OPEN_MODEL_REQUEST

if TYPE_CHECKING:
    import httpx
    from PIL import Image

    from mub.config import RunConfig

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx
SERVER_TEXT_LIMIT = 300  # characters of a server's reply kept in an error (a few hundred at most: issue 22)
MIN_REDACTED_KEY = WINDOW  # shorter keys are not redacted: "e" would turn "expected" into "[REDACTED]xp[REDACTED]cted"
MAX_RESPONSE_BYTES = 1 << 20
MAX_OUTPUT_CHARS = 32_000
# Redaction scans about 0.5 MB/s: a text cut to N characters is redacted over its first N + this many only.
# The margin keeps whole any key form that starts before the cut (a form is at most ~8 characters per key character).
REDACT_MARGIN = 4096
CONTENT_ENCODINGS = "gzip, deflate"  # the only ones asked for, and decoded here under the size cap
CANCELLED = "cancelled (Ctrl-C)"


@dataclass(frozen=True)
class ApiSettings:
    """How to reach the server; ``backend_options`` of a RunConfig map onto these fields."""

    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 5
    timeout: float = 60.0  # seconds for a whole request: connect, send, and read the complete reply
    backoff_base: float = 0.5  # first retry waits 0.25-0.5 s, doubling each time
    backoff_max: float = 60.0  # no backoff wait is longer; a server's Retry-After may ask for more
    max_retry_after: float = 300.0  # a longer Retry-After is not waited for: the request fails at once
    image_format: str = "png"  # for a request without an image file only: "png" (lossless) or "jpeg"
    # top_k is no OpenAI chat parameter; vLLM's server (and some others) accept it, others reject the request.
    send_top_k: bool = False
    max_response_bytes: int = MAX_RESPONSE_BYTES  # decoded bytes of a reply; a longer one is an item error
    max_output_chars: int = MAX_OUTPUT_CHARS  # characters of an answer kept; a longer one is cut, and an item error

    def validate(self) -> None:
        if not self.base_url:
            raise ValueError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        if urlsplit(self.base_url).scheme not in ("http", "https"):
            raise ValueError(f"--base-url must start with http:// or https://, got {self.base_url!r}")
        if self.concurrency < 1 or self.max_retries < 0:
            raise ValueError("--concurrency must be at least 1 and --max-retries at least 0")
        if self.timeout <= 0 or min(self.backoff_base, self.backoff_max, self.max_retry_after) < 0:
            raise ValueError("--timeout must be positive and backoff times not negative")
        if self.max_response_bytes < 1 or self.max_output_chars < 1:
            raise ValueError("--max-response-bytes and --max-output-chars must be at least 1")
        common.check_image_format(self.image_format)


class RequestFailed(Exception):
    """One failed attempt: a message (server text included) and whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def server_text(text: str, limit: int = SERVER_TEXT_LIMIT, redact: Callable[[str], str] | None = None) -> str:
    """A server's reply for an error message: redacted, whitespace-collapsed, and cut to ``limit`` characters.

    Redaction comes before the cut at ``limit`` (cutting first could leave part
    of a key at the edge); only the first ``limit + REDACT_MARGIN`` characters
    are redacted, as the rest is dropped anyway.
    """
    unread = max(0, len(text) - limit - REDACT_MARGIN)
    text = text[: limit + REDACT_MARGIN]
    if redact is not None:
        text = redact(text)
    text = " ".join(text.split())
    if len(text) <= limit and not unread:
        return text
    return f"{text[:limit]}... [{len(text) - limit + unread} more characters]"


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


def pause(cancelled: threading.Event, seconds: float) -> None:
    """The one wait between attempts; Ctrl-C (``cancelled`` set) ends it at once."""
    cancelled.wait(seconds)


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


def _image_part(url: str) -> dict[str, Any]:
    """An OpenAI chat content part showing the image at ``url`` (a data URL)."""
    return {"type": "image_url", "image_url": {"url": url}}


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


def _public_url(url: str) -> str:
    """``url`` without user:password, query string and fragment (Azure-style gateways take the key as
    ``?api-key=...``), for ``describe()``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc, query="", fragment=""))


def endpoint_url(base_url: str) -> str:
    """``{base_url}/chat/completions``, the base URL's query string kept after the path (``/v1?api-key=K``)."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/chat/completions", fragment=""))


class OpenAIBackend:
    def __init__(
        self,
        model: str,
        settings: ApiSettings,
        decoding: DecodingSettings = DecodingSettings(),
        api_request: str = OPEN_MODEL_REQUEST,
    ) -> None:
        settings.validate()
        if decoding.scoring != "generate":
            raise ValueError("--backend openai supports --scoring generate only (chat APIs return no option scores)")
        if api_request not in API_REQUESTS:
            raise ValueError(f"--api-request must be {' or '.join(API_REQUESTS)}, got {api_request!r}")
        self.model = model
        self.settings = settings
        self.decoding = decoding
        self.api_request = api_request
        self._rng = random.Random()  # jitter only: unseeded on purpose, so clients spread out
        self._api_key = read_api_key(settings.api_key_env)
        self._redactor = KeyRedactor.for_key(self._api_key)
        if self._api_key and self._redactor is None:
            logger.warning(
                "the API key in $%s has fewer than %d characters: it is not redacted from errors and answers "
                "(redacting so short a string would mangle ordinary text)",
                settings.api_key_env,
                MIN_REDACTED_KEY,
            )
        self._endpoint = endpoint_url(settings.base_url)
        self._client = self._make_client()
        self._pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="mub-openai")
        self._cancelled = threading.Event()  # set by Ctrl-C: no new attempt, no retry wait
        # Stage 1 and stage 2 (and every implicit note) send the same image: encode it once.
        self._image_urls = common.ImageUrls(settings.image_format)

    def _make_client(self) -> "httpx.Client":
        try:
            import httpx
        except ImportError:
            raise MissingDependencyError(f"--backend openai needs httpx: {install_hint('api')}") from None
        headers = {"Accept-Encoding": CONTENT_ENCODINGS}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        connections = self.settings.concurrency
        return httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.settings.timeout),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    def redact(self, text: str) -> str:
        """``text`` with every piece of the API key, in any of its forms (:mod:`mub.backends.redaction`), replaced:
        for anything logged or recorded."""
        if self._redactor is None:
            return text
        return self._redactor.redact(text)

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        # Encoding here, in the caller's thread, keeps the image cache single-threaded.
        bodies = [self._body(request, *self._image_urls_of(request)) for request in requests]
        futures = [self._pool.submit(self._complete, body) for body in bodies]
        try:
            generations = [self._result(future) for future in futures]
        except KeyboardInterrupt:
            self.cancel()
            raise
        for request, generation in zip(requests, generations):  # the one stopping rule every backend follows
            generation.text = kept_text(generation.text, request.options, self.decoding.stop)
        return generations

    def _image_urls_of(self, request: Request) -> tuple[str, str | None]:
        """The data URLs of the request's image and of its ``last_image`` (``None`` without one)."""
        last = None if request.last_image is None else self._image_url(request.last_image, request.last_image_bytes)
        return self._image_url(request.image, request.image_bytes), last

    def _image_url(self, image: "Image.Image", data: bytes | None) -> str:
        """The image file's own bytes as a data URL (labelled JPEG under the closed-model request, as the
        authors sent every file); an image without a file gets its pixels encoded losslessly."""
        if data is None:
            return self._image_urls(image)
        mime = "image/jpeg" if self.api_request == CLOSED_MODEL_REQUEST else common.image_mime_type(data)
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    @staticmethod
    def _result(future: "Future[Generation]") -> Generation:
        try:
            return future.result()
        except CancelledError:  # dropped by cancel() before it was sent
            return Generation(text="", seconds=0.0, error=CANCELLED)

    def cancel(self) -> None:
        """Stop at once (Ctrl-C): pending requests are dropped, retry waits end, open connections are closed.

        Every unfinished request of a ``generate`` call then ends as ``Generation(error=CANCELLED)``;
        the backend takes no further calls. The runner keeps the items finished so far; ``--resume``
        asks for the rest.
        """
        self._cancelled.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()  # in-flight requests fail now instead of waiting for their reply

    def describe(self) -> dict[str, Any]:
        info = {key: value for key, value in asdict(self.settings).items() if key != "base_url"}
        return {
            "backend": "openai",
            "model": self.model,
            "api_request": self.api_request,
            "base_url": _public_url(self.settings.base_url),
            **info,
            "api_key_set": bool(self._api_key),
        }

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def _body(self, request: Request, image_url: str, last_image_url: str | None = None) -> dict[str, Any]:
        """The request's JSON body. A decoding field left to the model (:data:`FROM_MODEL`) is not sent, so the
        server applies the model's own generation_config (vLLM's server does by default) or its own default."""
        decoding = self.decoding
        if self.api_request == CLOSED_MODEL_REQUEST:
            # my_tool.py, get_eval_plain_use_gpt4v: one user turn, the text, then the image with detail high.
            image = {"type": "image_url", "image_url": {"url": image_url, "detail": "high"}}
            messages = [{"role": "user", "content": [{"type": "text", "text": request.prompt}, image]}]
        else:
            last_part = None if last_image_url is None else _image_part(last_image_url)
            messages = common.chat_messages(request, _image_part(image_url), last_part)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": decoding.max_new_tokens}
        body.update(common.sent_sampling_fields(decoding, send_top_k=self.settings.send_top_k))
        if self.api_request != CLOSED_MODEL_REQUEST:
            body["seed"] = request_seed(decoding.seed, request.key)
        return body

    def _complete(self, body: dict[str, Any]) -> Generation:
        """One request with retries; failures end as ``Generation(error=...)``, never as an exception."""
        start = time.perf_counter()
        attempts = self.settings.max_retries + 1
        for attempt in range(1, attempts + 1):
            if self._cancelled.is_set():
                return Generation(text="", seconds=time.perf_counter() - start, error=CANCELLED)
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
            return self._answer(text, time.perf_counter() - start, {**extra, "attempts": attempt})
        raise AssertionError("unreachable: the last attempt returns")

    def _answer(self, text: str, seconds: float, extra: dict[str, Any]) -> Generation:
        """The model's answer as stored: key redacted, at most ``max_output_chars`` (a longer one is an item error)."""
        limit = self.settings.max_output_chars
        length = len(text)
        text = self.redact(text[: limit + REDACT_MARGIN])  # redacted before the cut; see server_text
        if len(text) <= limit and length <= limit + REDACT_MARGIN:
            return Generation(text=text, seconds=seconds, extra=extra)
        error = (
            f"output cut: the answer has {length} characters, more than max_output_chars={limit} "
            f"(--max-output-chars); the stored output is its first {limit}"
        )
        return Generation(text=text[:limit], seconds=seconds, error=error, extra={**extra, "output_chars": length})

    def _describe(self, exc: BaseException) -> str:
        """An exception for an error record: redacted and cut like a server's text (SERVER_TEXT_LIMIT)."""
        return f"{type(exc).__name__}: {server_text(str(exc), redact=self.redact)}"

    def _wait_before_retry(self, attempt: int, attempts: int, retry_after: float | None, reason: str) -> None:
        settings = self.settings
        delay = retry_delay(attempt - 1, retry_after, settings.backoff_base, settings.backoff_max, self._rng)
        logger.warning("retrying in %.2fs (attempt %d of %d): %s", delay, attempt + 1, attempts, server_text(reason, 200))
        pause(self._cancelled, delay)

    def _attempt(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        import httpx

        timeout = self.settings.timeout
        deadline = time.monotonic() + timeout
        try:
            with self._client.stream("POST", self._endpoint, json=body) as response:
                with _Deadline(response, deadline):
                    data = read_body(response, self.settings.max_response_bytes, deadline, timeout)
        except httpx.TimeoutException as exc:
            raise RequestFailed(f"timed out after {timeout:g}s ({type(exc).__name__})", retryable=True) from None
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol) as exc:  # our request is wrong: again is the same
            raise RequestFailed(f"invalid request ({self._describe(exc)})", retryable=False) from None
        except (httpx.RequestError, OSError, ValueError, zlib.error) as exc:  # refused, reset, cut off, cut at the deadline
            if time.monotonic() >= deadline:
                raise RequestFailed(f"timed out: no complete reply within {timeout:g}s (--timeout)", retryable=True) from None
            raise RequestFailed(f"connection failed ({self._describe(exc)})", retryable=True) from None
        text = data.decode(response.charset_encoding or "utf-8", errors="replace")
        status = response.status_code
        if 200 <= status < 300:
            return completion_text(text, redact=self.redact)
        retryable = status in RETRYABLE_STATUS or status >= 500
        raise RequestFailed(
            f"HTTP {status}: {server_text(text, redact=self.redact)}",
            retryable=retryable,
            retry_after=retry_after_seconds(response.headers) if retryable else None,
        )


class ReplyTooLarge(RequestFailed):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"reply larger than {limit} bytes once decoded (--max-response-bytes); not read further", retryable=False
        )


def _decoder(encoding: str) -> "zlib._Decompress | None":
    """A streaming decoder for a ``Content-Encoding`` (``None``: identity)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(32 + zlib.MAX_WBITS)  # zlib-wrapped, as RFC 9110 says (header detected)
    raise RequestFailed(f"reply in Content-Encoding {encoding!r}, which was not asked for", retryable=False)


def read_body(response: "httpx.Response", limit: int, deadline: float, timeout: float) -> bytes:
    """The decoded body, read and inflated piecewise: never more than ``limit`` (+1) decoded bytes in memory.

    ``ReplyTooLarge`` past ``limit``; ``RequestFailed`` (retryable) past ``deadline`` (``timeout`` seconds after the
    request was sent: the message names it, whichever check sees the deadline first).
    """
    decoder = _decoder(response.headers.get("content-encoding", ""))
    body = bytearray()
    for raw in response.iter_raw():
        pending = raw
        while pending:
            if decoder is None:
                body += pending
                pending = b""
            else:
                body += decoder.decompress(pending, limit + 1 - len(body))
                pending = decoder.unconsumed_tail
            if len(body) > limit:
                raise ReplyTooLarge(limit)
        if time.monotonic() >= deadline:
            raise RequestFailed(
                f"timed out: the reply was still arriving at the deadline, {timeout:g}s (--timeout)", retryable=True
            )
    if decoder is not None:
        body += decoder.flush()
        if len(body) > limit:
            raise ReplyTooLarge(limit)
    return bytes(body)


class _Deadline:
    """Shut the reply's socket down at ``deadline``, so a read blocked on a trickling server returns then.

    Each read also has the whole ``--timeout`` as its own timeout, which bounds
    connecting, sending and waiting for the headers.
    """

    def __init__(self, response: "httpx.Response", deadline: float) -> None:
        stream = response.extensions.get("network_stream")
        self._socket = stream.get_extra_info("socket") if stream is not None else None
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._cut)
        self._timer.daemon = True

    def _cut(self) -> None:
        try:
            self._socket.shutdown(socket_module.SHUT_RDWR)
        except (OSError, AttributeError):
            pass  # already closed

    def __enter__(self) -> "_Deadline":
        if self._socket is not None:
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


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
    return OpenAIBackend(config.model, ApiSettings(**options), config.decoding(), config.api_request)
