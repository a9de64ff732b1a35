"""A loopback OpenAI-style chat completions server that injects faults on demand.

Standard library only (``http.server``), bound to 127.0.0.1 on a free port,
one thread per connection. A healthy reply answers deterministically from
the prompt (a hash picks one of the prompt's options), so two runs against a
healthy server give identical predictions whatever the request order.

Faults are queued with :meth:`FaultServer.add`; each request takes the first
queued fault whose ``match`` is in its prompt (any request when ``match`` is
empty) and uses up one of its ``times`` (``times=None``: lasts until
:meth:`FaultServer.heal`). Kinds:

- ``"429"``: Too Many Requests with ``Retry-After: <retry_after>``
- ``"500"``: Internal Server Error with ``body`` as text
- ``"stall"``: no reply for ``stall`` seconds (past the client's timeout), then a healthy one
- ``"drop"``: the connection is closed without any reply
- ``"malformed"``: 200 with a body that is not JSON
- ``"no_choices"``: 200 with JSON that has no ``choices``
- ``"empty"``: 200 with an empty answer
- ``"echo_auth"``: 500 whose body repeats the request's ``Authorization`` header
  (a server that leaks the key back: the client must redact it)
- ``"status"``: ``status`` with ``body``
- ``"answer"``: 200 whose answer is ``body`` (a huge one, or one repeating the key)
- ``"gzip_bomb"``: 200 with ``Content-Encoding: gzip`` whose body inflates to ``bomb_bytes`` zero bytes
- ``"trickle"``: 200 whose healthy body is sent one byte every ``stall`` seconds;
  ``trickled`` counts the bytes sent before the client went away
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Fault:
    kind: str
    match: str = ""
    times: int | None = 1
    retry_after: str = "1"
    status: int = 500
    body: str = "internal error"
    stall: float = 2.0
    bomb_bytes: int = 64 << 20


@dataclass
class Received:
    """One request as the server saw it."""

    time: float
    headers: dict[str, str]
    body: dict[str, Any]
    fault: str | None

    @property
    def prompt(self) -> str:
        return prompt_of(self.body)


def prompt_of(body: dict[str, Any]) -> str:
    content = body["messages"][-1]["content"]
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def healthy_answer(prompt: str) -> str:
    """One of the prompt's options, picked by a hash of the prompt: deterministic, varied."""
    options = re.findall(r"^([A-Z])\. ", prompt, flags=re.MULTILINE) or ["Yes", "No"]
    return options[hashlib.sha256(prompt.encode()).digest()[0] % len(options)]


@lru_cache(maxsize=2)
def gzip_bomb(size: int) -> bytes:
    """A gzip stream of ``size`` zero bytes (about 1/1000 of that), compressed piecewise."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk[: min(len(chunk), size - done)]) for done in range(0, size, len(chunk))]
    return b"".join(parts) + compressor.flush()


def completion(content: str | None, model: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    return {
        "id": "chatcmpl-fault-server",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


class _QuietHTTPServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return  # a client that gave up on a reply (a cut bomb, a deadline): expected here
        super().handle_error(request, client_address)


class FaultServer:
    """Start with :meth:`start` (or ``with``), stop with :meth:`stop`; ``base_url`` ends in ``/v1``."""

    def __init__(self, latency: float = 0.0, answer: Callable[[str], str] | None = None) -> None:
        self.latency = latency  # seconds added to every reply
        self.answer = answer or healthy_answer  # the healthy reply to a prompt
        self.received: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.trickled: list[int] = []  # bytes each trickled reply sent before it ended
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _QuietHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True  # a stalled handler never blocks stop()
        # A short poll interval makes stop() prompt.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-server", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FaultServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes stalled handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add(self, kind: str, **settings: Any) -> None:
        with self._lock:
            self._faults.append(Fault(kind, **settings))

    def heal(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_log(self) -> None:
        with self._lock:
            self.received.clear()
            self.max_in_flight = 0

    def wait(self, seconds: float) -> None:
        """Sleep that ends early when the server stops."""
        self._stopping.wait(seconds)

    def _take_fault(self, prompt: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.match in prompt and fault.times != 0:
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _record(self, headers: dict[str, str], body: dict[str, Any], fault: Fault | None) -> None:
        with self._lock:
            self.received.append(Received(time.monotonic(), headers, body, fault.kind if fault else None))

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


def _handler_for(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm
        # and the client's delayed ACK add ~40 ms to every reply.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests capture stderr
            pass

        def do_POST(self) -> None:
            server._enter()
            try:
                self._serve_completion()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): nothing to answer
            finally:
                server._leave()

        def _serve_completion(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.loads(raw)
            fault = server._take_fault(prompt_of(body))
            server._record(dict(self.headers), body, fault)
            if server.latency:
                server.wait(server.latency)
            kind = fault.kind if fault else None
            if kind == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if kind == "stall":
                server.wait(fault.stall)
            if kind == "429":
                self._send(429, '{"error": {"message": "rate limited"}}', {"Retry-After": fault.retry_after})
            elif kind == "500":
                self._send(500, fault.body)
            elif kind == "status":
                self._send(fault.status, fault.body)
            elif kind == "echo_auth":
                self._send(500, f"rejected request with Authorization: {self.headers.get('Authorization')}")
            elif kind == "malformed":
                self._send(200, '{"choices": [{"message": {"content": "B"')
            elif kind == "no_choices":
                self._send(200, json.dumps({"object": "chat.completion", "choices": []}))
            elif kind == "empty":
                self._send(200, json.dumps(completion("", body["model"])))
            elif kind == "answer":
                self._send(200, json.dumps(completion(fault.body, body["model"])))
            elif kind == "gzip_bomb":
                self._send_bytes(200, gzip_bomb(fault.bomb_bytes), {"Content-Encoding": "gzip"})
            elif kind == "trickle":
                self._trickle(json.dumps(completion(healthy_answer(prompt_of(body)), body["model"])).encode(), fault.stall)
            else:
                self._send(200, json.dumps(completion(server.answer(prompt_of(body)), body["model"])))

        def _send(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
            self._send_bytes(status, text.encode(), headers)

        def _trickle(self, data: bytes, interval: float) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            sent = 0
            try:
                for byte in data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    sent += 1
                    server.wait(interval)
                    if server._stopping.is_set():
                        break
            finally:
                with server._lock:
                    server.trickled.append(sent)

        def _send_bytes(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler
