"""An OpenAI-compatible mock chat-completions server, plus a subprocess helper.

The package ships this server so that ``--demo``, the test suite and the
benchmarks can exercise the real HTTP path (connection pooling, retries,
timeouts, rate limiting) without touching a paid API. It therefore has to be
fast and faithful rather than feature complete:

* It is written directly on ``asyncio`` protocols with a small HTTP/1.1 parser
  (keep-alive, ``Content-Length`` and chunked request bodies, pipelining,
  ``Connection: close``) so that thousands of concurrent connections and well
  over 2,000 simple completions per second fit on a single core.
* Faults (429, quota, 500, hang, connection reset, malformed JSON) are drawn
  from one seeded ``random.Random`` per server, and can also be scripted per
  task key so that tests are deterministic.
* Sliding-window ``rpm``/``tpm`` limits and their statistics let tests check a
  client-side rate limiter from the server's point of view. The window is
  ``window_s`` long (60 s, as OpenAI's per-minute limits, unless shortened so
  that a test can watch several windows pass in a few seconds); the stats
  count ``window_violations``, arrivals that a client respecting the limit
  would never have sent.

Only the standard library is used here, so the server starts in any
environment the package itself runs in.

Run it with ``python -m mpinfer.mockserver --port 0``; it prints exactly one
line ``MOCK_READY http://127.0.0.1:PORT/v1`` once it is listening.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import collections
import dataclasses
import json
import logging
import math
import os
import queue
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, NoReturn, Self

__all__ = [
    "OUTCOMES",
    "READY_PREFIX",
    "RECORDED_BODIES_MAX",
    "SCRIPTABLE_OUTCOMES",
    "MockConfig",
    "MockServer",
    "MockServerProcess",
    "build_arg_parser",
    "config_from_args",
    "format_duration",
    "main",
    "serve",
]

log = logging.getLogger("mpinfer.mockserver")

READY_PREFIX = "MOCK_READY"
"""First word of the single line the server prints to stdout once it listens."""

OUTCOMES: tuple[str, ...] = ("ok", "429", "quota", "500", "hang", "reset", "malformed", "400", "401", "limit")
"""Keys of ``stats()["outcomes"]``; ``limit`` counts rpm/tpm rejections."""

SCRIPTABLE_OUTCOMES: frozenset[str] = frozenset({"ok", "429", "quota", "500", "hang", "reset", "malformed"})
"""Outcomes that may appear in a per-task-key ``script`` queue."""

WINDOW_S = 60.0
"""Default length of the sliding rate-limit window (``MockConfig.window_s``), as OpenAI's per-minute limits."""

# Fields of MockConfig that POST /_mock/config may change at runtime. host,
# port and backlog are fixed once listening; keys are secrets and are only
# ever narrowed (revoked), never replaced or echoed back.
_RUNTIME_FIELDS = frozenset(
    {
        "latency_ms",
        "jitter_ms",
        "seed",
        "p429",
        "p500",
        "phang",
        "preset",
        "pmalformed",
        "pquota",
        "retry_after",
        "hang_s",
        "model_map",
        "rpm",
        "tpm",
        "window_s",
        "record_bodies",
    }
)

_BASE_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "mock-vision-1")
_VALID_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_VALID_DETAILS = frozenset({"auto", "low", "high"})
_TOKENS_PER_IMAGE = 85
RECORDED_BODIES_MAX = 1000
"""Most task keys whose last request body ``record_bodies`` keeps; the oldest key is forgotten first."""


@dataclass(frozen=True)
class MockConfig:
    """Every tunable of the mock server, with its default.

    One frozen value object keeps the command line, the subprocess helper and
    the runtime ``/_mock/config`` endpoint in agreement about names, types and
    defaults; runtime changes produce a new instance via ``dataclasses.replace``
    so validation in ``__post_init__`` always runs.
    """

    host: str = "127.0.0.1"
    """Address to bind. Only loopback is intended: this server has no real auth."""

    port: int = 0
    """TCP port; 0 lets the OS choose a free one (reported in the MOCK_READY line)."""

    latency_ms: float = 0.0
    """Base delay before every chat response, simulating model latency."""

    jitter_ms: float = 0.0
    """Uniform +/- jitter added to ``latency_ms`` (the result is clamped at 0)."""

    seed: int = 0
    """Seed of the per-server RNG that draws faults, so runs are reproducible."""

    p429: float = 0.0
    """Probability of a rate-limit 429 (with Retry-After) per chat request."""

    p500: float = 0.0
    """Probability of an internal-server-error 500 per chat request."""

    phang: float = 0.0
    """Probability that a request is read but never answered (until ``hang_s``)."""

    preset: float = 0.0
    """Probability that the connection is reset (RST) instead of answered."""

    pmalformed: float = 0.0
    """Probability of a 200 response whose JSON body is truncated."""

    pquota: float = 0.0
    """Probability of a 429 ``insufficient_quota`` error (not retryable by waiting)."""

    retry_after: float = 1.0
    """Seconds advertised in Retry-After / retry-after-ms on fault 429s."""

    hang_s: float = 3600.0
    """How long a hanging request is held before the server drops the connection."""

    model_map: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Requested model -> reported model, to simulate a server answering with another model."""

    keys: tuple[str, ...] = ()
    """Accepted API keys; empty means any non-empty bearer key is accepted."""

    rpm: int | None = None
    """Requests-per-minute limit over a sliding ``window_s`` window; None disables it."""

    tpm: int | None = None
    """Tokens-per-minute limit over a sliding ``window_s`` window; None disables it."""

    window_s: float = WINDOW_S
    """Length of the sliding window for ``rpm``/``tpm`` and for the window statistics.

    OpenAI's limits are per minute (60 s); a shorter window lets a test see a
    client-side limiter go through many windows in seconds. ``rpm``/``tpm``
    then mean "per ``window_s``". The stats keep their historical names
    (``max_requests_in_any_60s_window`` ...) but are measured over this window.
    """

    backlog: int = 4096
    """Listen backlog, large so that connection bursts are queued rather than refused."""

    max_body_bytes: int = 64 * 1024 * 1024
    """Largest accepted request body; larger ones get 413 (protects the benchmark host)."""

    record_bodies: bool = False
    """Keep the last JSON body of each task key in ``stats()["bodies"]``, so a test can check that a client
    sent every field as given (extra ones included). Off by default: bodies carry base64 images, and at
    most ``RECORDED_BODIES_MAX`` keys are kept."""

    def __post_init__(self) -> None:
        """Normalise container fields and reject impossible settings early."""
        # Copy containers so a caller mutating its dict/list later cannot
        # change a config that is supposed to be immutable.
        object.__setattr__(self, "model_map", dict(self.model_map))
        object.__setattr__(self, "keys", tuple(self.keys))
        for name in ("p429", "p500", "phang", "preset", "pmalformed", "pquota"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        total = self.p429 + self.p500 + self.phang + self.preset + self.pmalformed + self.pquota
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities sum to {total:.4f} > 1")
        for name in ("latency_ms", "jitter_ms", "retry_after", "hang_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"window_s must be a finite number > 0, got {self.window_s!r}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if any(not isinstance(k, str) or not k for k in self.keys):
            raise ValueError("keys must be non-empty strings")
        if any(not isinstance(k, str) or not isinstance(v, str) for k, v in self.model_map.items()):
            raise ValueError("model_map must map str to str")

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-able data without the API keys (which are secrets)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "keys"}
        data["model_map"] = dict(self.model_map)
        data["keys_configured"] = len(self.keys)
        return data


def format_duration(seconds: float) -> str:
    """Format seconds as a Go-style duration (``"6m0s"``, ``"1s"``, ``"12ms"``).

    OpenAI's ``x-ratelimit-reset-*`` headers use this format, so clients in
    this package must parse it; the mock emits the same shape. Rounding is
    upwards to the millisecond so a client that waits exactly this long is
    never early.
    """
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rem = divmod(ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    secs, frac = divmod(rem, 1000)
    sec_text = str(secs) + (f".{frac:03d}".rstrip("0") if frac else "")
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"


def _format_seconds(seconds: float) -> str:
    """Seconds for a Retry-After header: an integer when whole, else ms precision."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    505: "HTTP Version Not Supported",
}
_MAX_HEAD_BYTES = 64 * 1024
# While a request is being answered asynchronously, further pipelined bytes
# are buffered; beyond this we stop reading so one client cannot balloon RAM.
_PAUSE_BUFFER_BYTES = 4 * 1024 * 1024
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class _HttpError(Exception):
    """A protocol-level error: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ApiError(Exception):
    """An OpenAI-style API error to send back as ``{"error": {...}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        outcome: str = "400",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.outcome = outcome

    def body(self) -> bytes:
        """The JSON error body OpenAI clients know how to parse."""
        return _error_body(self.message, self.type, self.param, self.code)


def _error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    """Encode an OpenAI error envelope."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def _http_response(
    status: int,
    body: bytes,
    keep_alive: bool,
    headers: Sequence[tuple[str, str]] = (),
    content_type: str = "application/json",
) -> bytes:
    """Serialise one complete HTTP/1.1 response (head and body) into bytes."""
    parts = [
        (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
            f"content-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n"
            f"connection: {'keep-alive' if keep_alive else 'close'}\r\n"
            "server: mpinfer-mock\r\n"
        )
    ]
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1") + body


@dataclass(slots=True)
class _Request:
    """One parsed HTTP request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


def _parse_chunked(buf: bytearray, pos: int, limit: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``pos``; None if more bytes are needed.

    Returns the body and the offset just past the final CRLF. The parse is
    restarted from the beginning on every call, which is fine because it jumps
    from chunk header to chunk header rather than scanning the payload.
    """
    chunks: list[bytes] = []
    total = 0
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            if len(buf) - pos > 1024:
                raise _HttpError(400, "chunk size line too long")
            return None
        size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
        if not size_text or not all(c in _HEX_DIGITS for c in size_text):
            raise _HttpError(400, "invalid chunk size")
        size = int(size_text, 16)
        pos = line_end + 2
        if size == 0:
            # Skip optional trailer fields up to the terminating empty line.
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                if line_end == pos:
                    return b"".join(chunks), line_end + 2
                pos = line_end + 2
        total += size
        if total > limit:
            raise _HttpError(413, "request body too large")
        if len(buf) < pos + size + 2:
            return None
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise _HttpError(400, "chunk not terminated by CRLF")
        chunks.append(bytes(buf[pos : pos + size]))
        pos += size + 2


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them strictly in order.

    Requests that can be answered immediately are handled synchronously inside
    ``data_received`` (the fast path that gives the throughput); ones that must
    wait (latency, hang) run as a task, and the connection parses nothing else
    until that task is done so pipelined responses stay in request order.
    """

    def __init__(self, server: MockServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False
        self._closed = False
        self._paused = False
        self._task: asyncio.Task[None] | None = None
        # Parsed head of a request whose body is still arriving, so large
        # bodies are not re-parsed on every read.
        self._head: tuple[str, str, dict[str, str], bool, int] | None = None
        self._sent_continue = False

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the connection so shutdown can close it."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel any pending answer (e.g. a hang) so nothing leaks after a disconnect."""
        self._closed = True
        self._server._connections.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._buf.clear()

    def data_received(self, data: bytes) -> None:
        """Buffer bytes and answer every complete request, unless one is pending."""
        self._buf += data
        if not self._busy:
            self._process()
        elif len(self._buf) > _PAUSE_BUFFER_BYTES and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        """Treat EOF as the client leaving: answer what can be answered now, then close.

        HTTP clients do not half-close while awaiting an answer, so an EOF
        means the client gave up (e.g. its timeout fired). Returning False
        closes the transport, whose connection_lost cancels a pending slow
        answer or hang, like nginx's "client closed request".
        """
        if not self._busy:
            self._process()
        return False

    # -- request loop --------------------------------------------------------

    def _process(self) -> None:
        """Parse and dispatch buffered requests until one goes async or bytes run out."""
        while not self._busy and not self._closed:
            transport = self._transport
            if transport is None or transport.is_closing():
                return
            try:
                request = self._parse_one()
            except _HttpError as exc:
                self.send(_http_response(exc.status, _error_body(exc.message, "invalid_request_error"), False), False)
                return
            if request is None:
                if self._paused:
                    self._paused = False
                    transport.resume_reading()
                return
            try:
                self._server._dispatch(self, request)
            except Exception:  # a handler bug must not kill the connection loop
                log.exception("mock handler failed")
                self.send(_http_response(500, _error_body("mock server bug", "server_error"), False), False)
                return

    def _parse_one(self) -> _Request | None:
        """Take one complete request off the buffer, or return None if incomplete."""
        buf = self._buf
        if self._head is None:
            # Tolerate stray CRLFs between pipelined requests (RFC 9112 2.2).
            while buf[:2] == b"\r\n":
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD_BYTES:
                    raise _HttpError(431, "request head too large")
                return None
            if end > _MAX_HEAD_BYTES:
                raise _HttpError(431, "request head too large")
            self._head = self._parse_head(bytes(buf[:end]))
            self._sent_continue = False
            body_start = end + 4
            del buf[:body_start]
        method, target, headers, keep_alive, content_length = self._head
        limit = self._server._config.max_body_bytes
        if content_length < 0:  # chunked
            parsed = _parse_chunked(buf, 0, limit)
            if parsed is None:
                self._maybe_continue(headers)
                return None
            body, consumed = parsed
        else:
            if len(buf) < content_length:
                self._maybe_continue(headers)
                return None
            body = bytes(buf[:content_length])
            consumed = content_length
        del buf[:consumed]
        self._head = None
        path = target.split("?", 1)[0]
        return _Request(method, path, headers, body, keep_alive)

    def _parse_head(self, head: bytes) -> tuple[str, str, dict[str, str], bool, int]:
        """Parse request line and headers; content length -1 means chunked."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise _HttpError(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _HttpError(400, "malformed header line")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.1":
            keep_alive = "close" not in connection
        else:
            keep_alive = "keep-alive" in connection
        transfer_encoding = headers.get("transfer-encoding")
        if transfer_encoding is not None:
            if transfer_encoding.lower().split(",")[-1].strip() != "chunked":
                raise _HttpError(501, "unsupported transfer-encoding")
            # A body framed by chunking but also carrying Content-Length is a
            # request-smuggling pattern; refuse instead of guessing.
            if "content-length" in headers:
                raise _HttpError(400, "both Transfer-Encoding and Content-Length")
            return method, target, headers, keep_alive, -1
        raw_length = headers.get("content-length", "0")
        if not raw_length.isdigit():
            raise _HttpError(400, "invalid content-length")
        length = int(raw_length)
        if length > self._server._config.max_body_bytes:
            raise _HttpError(413, "request body too large")
        return method, target, headers, keep_alive, length

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        """Answer ``Expect: 100-continue`` once, so curl-like clients send the body now."""
        if not self._sent_continue and headers.get("expect", "").lower() == "100-continue":
            self._sent_continue = True
            if self._transport is not None:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- used by handlers ----------------------------------------------------

    @property
    def open(self) -> bool:
        """True while a response can still be delivered on this connection."""
        return not self._closed and self._transport is not None and not self._transport.is_closing()

    def send(self, payload: bytes, keep_alive: bool) -> bool:
        """Write a full response; close afterwards unless keep-alive. False if gone."""
        if not self.open:
            return False
        assert self._transport is not None
        self._transport.write(payload)
        if not keep_alive:
            self._transport.close()
        return True

    def reset(self) -> None:
        """Drop the connection with an RST (SO_LINGER 0) instead of a polite FIN."""
        transport = self._transport
        if transport is None or self._closed:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass  # already gone; abort() below is still correct
        transport.abort()

    def abort(self) -> None:
        """Close immediately, discarding anything buffered."""
        if self._transport is not None:
            self._transport.abort()

    def run_async(self, coro: Any) -> None:
        """Run a slow handler; pause request processing on this connection until done."""
        self._busy = True
        task = asyncio.get_running_loop().create_task(coro)
        self._task = task
        task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        self._busy = False
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("mock async handler failed", exc_info=exc)
            self.abort()
            return
        if self._buf or self._paused:
            self._process()


# --------------------------------------------------------------------------
# Chat request model
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Chat:
    """The parts of a validated chat request that the mock needs."""

    model: str
    task_key: str
    images_in_task: int
    images_total: int
    text_chars: int
    max_tokens: int | None


def _check_image_url(url: Any) -> str | None:
    """Return why ``url`` is not an acceptable image URL, or None if it is."""
    if not isinstance(url, str):
        return "must be a string"
    if url.startswith(("http://", "https://")):
        if len(url.split("://", 1)[1]) == 0:
            return "has no host"
        return None
    if not url.startswith("data:"):
        return "must be an http(s) URL or a base64 data URL"
    header, sep, data = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        return "data URL must be of the form data:<mime>;base64,<data>"
    mime = header[: -len(";base64")]
    major, slash, minor = mime.partition("/")
    if not slash or not major or not minor:
        return "data URL has no valid MIME type"
    if not data:
        return "data URL has no data"
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return "data URL payload is not valid base64"
    return None


def _parse_chat(body: bytes) -> _Chat:
    """Validate a chat.completions body the way OpenAI would, raising _ApiError."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            "using your HTTP library correctly.)",
        ) from None
    if not isinstance(data, dict):
        raise _ApiError(400, "The request body must be a JSON object.")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _ApiError(400, "you must provide a model parameter", param="model", code="missing_required_parameter")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _ApiError(
            400, "'messages' must be a non-empty array.", param="messages", code="missing_required_parameter"
        )
    if data.get("stream"):
        raise _ApiError(400, "The mock server does not support streaming.", param="stream", code="unsupported_value")

    text_chars = 0
    images_total = 0
    task_parts: list[str] = []
    images_in_task = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _ApiError(400, f"Invalid type for 'messages[{i}]': expected an object.", param=f"messages.[{i}]")
        role = message.get("role")
        if role not in _VALID_ROLES:
            raise _ApiError(
                400, f"Invalid value for 'messages[{i}].role': {role!r}.", param=f"messages.[{i}].role",
                code="invalid_value",
            )
        content = message.get("content")
        texts: list[str] = []
        images = 0
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                where = f"messages.[{i}].content.[{j}]"
                if not isinstance(part, dict):
                    raise _ApiError(400, f"Invalid type for '{where}': expected an object.", param=where)
                kind = part.get("type")
                if kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise _ApiError(400, f"Invalid type for '{where}.text': expected a string.",
                                        param=f"{where}.text", code="invalid_type")
                    texts.append(text)
                elif kind == "image_url":
                    image = part.get("image_url")
                    if not isinstance(image, dict):
                        raise _ApiError(400, f"Invalid type for '{where}.image_url': expected an object.",
                                        param=f"{where}.image_url", code="invalid_type")
                    problem = _check_image_url(image.get("url"))
                    if problem is not None:
                        raise _ApiError(400, f"Invalid '{where}.image_url.url': {problem}.",
                                        param=f"{where}.image_url.url", code="invalid_value")
                    detail = image.get("detail")
                    if detail is not None and detail not in _VALID_DETAILS:
                        raise _ApiError(400, f"Invalid value for '{where}.image_url.detail': {detail!r}.",
                                        param=f"{where}.image_url.detail", code="invalid_value")
                    images += 1
                else:
                    raise _ApiError(400, f"Invalid value for '{where}.type': {kind!r}.",
                                    param=f"{where}.type", code="invalid_value")
        elif content is None and role in ("assistant", "function"):
            pass  # assistant turns carrying only tool calls have null content
        else:
            raise _ApiError(400, f"Invalid type for 'messages[{i}].content'.", param=f"messages.[{i}].content",
                            code="invalid_type")
        for text in texts:
            text_chars += len(text)
        images_total += images
        if role == "user":
            task_parts = texts
            images_in_task = images

    max_tokens: int | None = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _ApiError(400, f"Invalid value for '{name}': expected an integer >= 1.", param=name,
                            code="invalid_value")
        max_tokens = value
        break  # max_completion_tokens is the newer name and wins, as on OpenAI
    return _Chat(model, "".join(task_parts), images_in_task, images_total, text_chars, max_tokens)


# --------------------------------------------------------------------------
# Counters and windows
# --------------------------------------------------------------------------


class _Stats:
    """All counters the server exposes; reset as a unit by ``/_mock/reset``."""

    def __init__(self) -> None:
        self.requests = 0
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.in_flight = 0
        self.max_in_flight = 0
        self.received: collections.Counter[str] = collections.Counter()
        self.answered: collections.Counter[str] = collections.Counter()
        self.per_key: collections.Counter[str] = collections.Counter()
        self.per_model: collections.Counter[str] = collections.Counter()
        self.first_request_at: float | None = None
        self.last_request_at: float | None = None
        # Arrivals (every chat request) and accepted requests (passed the
        # limiter) in the current window (MockConfig.window_s); deques so each
        # request costs amortised O(1) however long the run.
        self.arrivals: collections.deque[float] = collections.deque()
        self.max_arrivals_window = 0
        self.accepted_t: collections.deque[float] = collections.deque()
        self.accepted_tokens: collections.deque[int] = collections.deque()
        self.accepted_token_sum = 0
        self.max_accepted_window = 0
        self.max_tokens_window = 0
        # Arrivals that found the window already holding ``rpm`` or more
        # arrivals, and requests that would take the window's accepted tokens
        # over ``tpm``: what a client respecting the limits never sends.
        self.window_violations = 0
        self.token_window_violations = 0
        # The last request body per task key (MockConfig.record_bodies), oldest key first.
        self.bodies: dict[str, Any] = {}

    def record_body(self, task_key: str, body: bytes) -> None:
        """Keep ``body`` as the last one seen for ``task_key``, forgetting the oldest key beyond the bound."""
        self.bodies.pop(task_key, None)  # re-inserted below, so the dict stays ordered by last arrival
        if len(self.bodies) >= RECORDED_BODIES_MAX:
            del self.bodies[next(iter(self.bodies))]
        self.bodies[task_key] = json.loads(body)

    def evict(self, now: float, window_s: float) -> None:
        """Drop window entries that are ``window_s`` or more old."""
        horizon = now - window_s
        arrivals = self.arrivals
        while arrivals and arrivals[0] <= horizon:
            arrivals.popleft()
        times = self.accepted_t
        while times and times[0] <= horizon:
            times.popleft()
            self.accepted_token_sum -= self.accepted_tokens.popleft()


class MockServer:
    """The in-process mock server; use ``MockServerProcess`` for a subprocess.

    Running in-process is handy for benchmarks that want to avoid a second
    interpreter, but the test suite uses the subprocess so the client and
    server do not share an event loop or a GIL.
    """

    def __init__(self, config: MockConfig | None = None) -> None:
        """Create a server for ``config`` (defaults if None); call ``start()`` to listen."""
        self._config = config or MockConfig()
        self._stats = _Stats()
        self._scripts: dict[str, collections.deque[str]] = {}
        self._revoked: set[str] = set()
        self._rng = random.Random(self._config.seed)
        # Jitter has its own stream so turning jitter on does not shift the
        # fault sequence a given seed produces.
        self._jitter_rng = random.Random(f"jitter-{self._config.seed}")
        self._next_id = 0
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._port = 0

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Bind and start listening; afterwards ``port`` and ``base_url`` are valid."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host=self._config.host,
            port=self._config.port,
            backlog=self._config.backlog,
            reuse_address=True,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every open connection (pending answers are cancelled)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # Let connection_lost callbacks (which cancel pending tasks) run.
        await asyncio.sleep(0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The bound TCP port (0 before ``start()``)."""
        return self._port

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, ending in ``/v1``."""
        return f"http://{self._config.host}:{self._port}/v1"

    @property
    def config(self) -> MockConfig:
        """The current (possibly runtime-updated) configuration."""
        return self._config

    # -- control API -----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Snapshot of all counters as JSON-able data (the ``/_mock/stats`` body)."""
        st = self._stats
        now = time.monotonic()
        cfg = self._config
        st.evict(now, cfg.window_s)
        return {
            "requests": st.requests,
            "outcomes": dict(st.outcomes),
            "in_flight": st.in_flight,
            "max_in_flight": st.max_in_flight,
            "received": dict(st.received),
            "answered": dict(st.answered),
            "per_key": dict(st.per_key),
            "per_model": dict(st.per_model),
            "limit_rejections": st.outcomes["limit"],
            # Historical names: both are measured over window_s (60 s by default).
            "max_requests_in_any_60s_window": st.max_arrivals_window,
            "max_tokens_in_any_60s_window": st.max_tokens_window,
            "window_s": cfg.window_s,
            "window_violations": st.window_violations,
            "token_window_violations": st.token_window_violations,
            "accepted_in_last_window": len(st.accepted_t),
            "accepted_tokens_in_last_window": st.accepted_token_sum,
            "first_request_at": st.first_request_at,
            "last_request_at": st.last_request_at,
            "now": now,
            "rpm": {
                "limit": cfg.rpm,
                "window_requests": len(st.arrivals),
                "window_accepted": len(st.accepted_t),
                "max_requests_in_any_60s_window": st.max_arrivals_window,
                "max_accepted_in_any_60s_window": st.max_accepted_window,
            },
            "tpm": {
                "limit": cfg.tpm,
                "window_tokens": st.accepted_token_sum,
                "max_tokens_in_any_60s_window": st.max_tokens_window,
            },
            "connections": len(self._connections),
            "scripted_pending": sum(len(q) for q in self._scripts.values()),
            "bodies": dict(st.bodies),
        }

    def reset(self) -> None:
        """Zero counters, windows and scripts, and reseed, so a run can be repeated.

        Revoked keys and the configuration stay: they are settings, not counters.
        """
        in_flight = self._stats.in_flight
        self._stats = _Stats()
        self._stats.in_flight = in_flight
        self._stats.max_in_flight = in_flight
        self._scripts.clear()
        self._reseed()

    def update_config(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Apply runtime settings (as POST /_mock/config); return the public config.

        Besides the runtime MockConfig fields this accepts ``revoke_keys``,
        ``unrevoke_keys`` (lists of keys) and ``script`` ({task_key: [outcome,
        ...]}, which replaces that task key's queue). Raises ValueError on any
        unknown name or bad value (TypeError for a wrong type), and then
        changes nothing.
        """
        if not isinstance(settings, Mapping):
            raise TypeError("config body must be a JSON object")
        updates: dict[str, Any] = {}
        revoke: list[str] = []
        unrevoke: list[str] = []
        script: dict[str, list[str]] = {}
        for name, value in settings.items():
            if name == "revoke_keys":
                revoke = _str_list(name, value)
            elif name == "unrevoke_keys":
                unrevoke = _str_list(name, value)
            elif name == "script":
                if not isinstance(value, Mapping):
                    raise ValueError("script must map task keys to lists of outcomes")
                for task_key, outcomes in value.items():
                    items = _str_list(f"script[{task_key!r}]", outcomes)
                    bad = [o for o in items if o not in SCRIPTABLE_OUTCOMES]
                    if bad:
                        raise ValueError(f"unknown scripted outcomes {bad}; use {sorted(SCRIPTABLE_OUTCOMES)}")
                    script[str(task_key)] = items
            elif name in _RUNTIME_FIELDS:
                updates[name] = _coerce_field(name, value)
            else:
                raise ValueError(f"unknown or read-only setting: {name!r}")
        new_config = dataclasses.replace(self._config, **updates)  # validates
        reseed = "seed" in updates
        self._config = new_config
        if reseed:
            self._reseed()
        self._revoked.update(revoke)
        self._revoked.difference_update(unrevoke)
        for task_key, items in script.items():
            if items:
                self._scripts[task_key] = collections.deque(items)
            else:
                self._scripts.pop(task_key, None)
        return self._config.public_dict()

    def _reseed(self) -> None:
        self._rng = random.Random(self._config.seed)
        self._jitter_rng = random.Random(f"jitter-{self._config.seed}")

    # -- routing -------------------------------------------------------------

    def _dispatch(self, conn: _Connection, req: _Request) -> None:
        path = req.path
        method = req.method
        if path in ("/v1/chat/completions", "/chat/completions"):
            if method != "POST":
                self._send_json_error(conn, req, 405, "Method not allowed; use POST.")
                return
            self._handle_chat(conn, req)
        elif path in ("/v1/models", "/models"):
            if method != "GET":
                self._send_json_error(conn, req, 405, "Method not allowed; use GET.")
                return
            models = sorted(set(_BASE_MODELS) | set(self._config.model_map.values()))
            data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "mpinfer-mock"} for m in models]
            self._send_json(conn, req, 200, {"object": "list", "data": data})
        elif path == "/_mock/stats":
            self._send_json(conn, req, 200, self.stats())
        elif path == "/_mock/config":
            if method == "GET":
                self._send_json(conn, req, 200, self._config.public_dict())
                return
            if method != "POST":
                self._send_json_error(conn, req, 405, "Method not allowed; use GET or POST.")
                return
            try:
                settings = json.loads(req.body or b"{}")
                result = self.update_config(settings)
            except (ValueError, TypeError) as exc:
                self._send_json_error(conn, req, 400, str(exc))
                return
            self._send_json(conn, req, 200, result)
        elif path == "/_mock/reset":
            if method != "POST":
                self._send_json_error(conn, req, 405, "Method not allowed; use POST.")
                return
            self.reset()
            self._send_json(conn, req, 200, {"ok": True})
        elif path == "/_mock/health":
            self._send_json(conn, req, 200, {"ok": True})
        else:
            self._send_json_error(conn, req, 404, f"Unknown URL: {method} {path}", code="unknown_url")

    def _send_json(self, conn: _Connection, req: _Request, status: int, payload: Any) -> None:
        conn.send(_http_response(status, json.dumps(payload).encode(), req.keep_alive), req.keep_alive)

    def _send_json_error(
        self, conn: _Connection, req: _Request, status: int, message: str, code: str | None = None
    ) -> None:
        body = _error_body(message, "invalid_request_error", None, code)
        conn.send(_http_response(status, body, req.keep_alive), req.keep_alive)

    # -- chat completions ----------------------------------------------------

    def _handle_chat(self, conn: _Connection, req: _Request) -> None:
        """Decide the outcome of one chat request and answer now or after a delay.

        Everything is decided synchronously at arrival (auth, validation, rate
        limits, fault draw) so ordering and RNG consumption follow arrival
        order; only the waiting happens asynchronously.
        """
        st = self._stats
        cfg = self._config
        now = time.monotonic()
        st.requests += 1
        if st.first_request_at is None:
            st.first_request_at = now
        st.last_request_at = now
        st.evict(now, cfg.window_s)
        if cfg.rpm is not None and len(st.arrivals) >= cfg.rpm:
            st.window_violations += 1
        st.arrivals.append(now)
        st.max_arrivals_window = max(st.max_arrivals_window, len(st.arrivals))
        self._next_id += 1
        n = self._next_id
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)

        headers: list[tuple[str, str]] = [("x-request-id", f"req_mock_{n}")]
        try:
            outcome, status, body, task_key = self._decide(req, cfg, now, n, headers)
            st.outcomes[outcome] += 1
            self._add_ratelimit_headers(cfg, now, headers)
            payload = b"" if outcome in ("hang", "reset") else _http_response(status, body, req.keep_alive, headers)
        except BaseException:
            st.in_flight -= 1  # a bug above must not leave a phantom request in flight
            raise

        if outcome == "hang":
            conn.run_async(self._hang(conn, cfg.hang_s, st))
            return
        delay = cfg.latency_ms
        if cfg.jitter_ms:
            delay += self._jitter_rng.uniform(-cfg.jitter_ms, cfg.jitter_ms)
        if delay > 0:
            conn.run_async(self._answer_later(conn, delay / 1000.0, outcome, payload, req.keep_alive, task_key, st))
            return
        try:
            self._deliver(conn, outcome, payload, req.keep_alive, task_key)
        finally:
            st.in_flight -= 1

    def _decide(
        self, req: _Request, cfg: MockConfig, now: float, n: int, headers: list[tuple[str, str]]
    ) -> tuple[str, int, bytes, str | None]:
        """Return (outcome, status, body, task key) and add outcome-specific headers."""
        st = self._stats
        auth = req.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return "401", 401, _error_body(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            ), None
        # Only the tail of a key is ever stored, so stats can be shared freely.
        st.per_key[key[-4:]] += 1
        if (cfg.keys and key not in cfg.keys) or key in self._revoked:
            return "401", 401, _error_body(
                f"Incorrect API key provided: ...{key[-4:]}.", "invalid_request_error", None, "invalid_api_key"
            ), None
        try:
            chat = _parse_chat(req.body)
        except _ApiError as exc:
            return exc.outcome, exc.status, exc.body(), None
        task_key = chat.task_key
        if cfg.record_bodies:
            st.record_body(task_key, req.body)
        st.per_model[chat.model] += 1
        st.received[task_key] += 1

        content = f"Mock answer to: {task_key[:80]} (images: {chat.images_in_task})"
        prompt_tokens = -(-chat.text_chars // 4) + _TOKENS_PER_IMAGE * chat.images_total
        completion_tokens = -(-len(content) // 4)
        finish_reason = "stop"
        if chat.max_tokens is not None and completion_tokens > chat.max_tokens:
            content = content[: chat.max_tokens * 4]
            completion_tokens = -(-len(content) // 4)
            finish_reason = "length"
        budget = prompt_tokens + (chat.max_tokens if chat.max_tokens is not None else completion_tokens)
        if cfg.tpm is not None and st.accepted_token_sum + budget > cfg.tpm:
            st.token_window_violations += 1

        rejection = self._check_limits(cfg, now, budget)
        if rejection is not None:
            kind, limit, used, retry_s = rejection
            headers.append(("retry-after", _format_seconds(math.ceil(retry_s * 1000) / 1000)))
            headers.append(("retry-after-ms", str(math.ceil(retry_s * 1000))))
            message = (
                f"Rate limit reached for {chat.model} (mock) on {kind} per min (RPM/TPM): Limit {limit}, "
                f"Used {used}, Requested {1 if kind == 'requests' else budget}. "
                f"Please try again in {format_duration(retry_s)}."
            )
            return "limit", 429, _error_body(message, kind, None, "rate_limit_exceeded"), task_key
        # Accepted by the limiter: record it in the sliding token window.
        st.accepted_t.append(now)
        st.accepted_tokens.append(budget)
        st.accepted_token_sum += budget
        st.max_accepted_window = max(st.max_accepted_window, len(st.accepted_t))
        st.max_tokens_window = max(st.max_tokens_window, st.accepted_token_sum)

        outcome = self._draw_outcome(cfg, task_key)
        if outcome == "ok":
            response = {
                "id": f"chatcmpl-mock-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": cfg.model_map.get(chat.model, chat.model),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "system_fingerprint": "fp_mock",
            }
            return "ok", 200, json.dumps(response).encode(), task_key
        if outcome == "429":
            headers.append(("retry-after", _format_seconds(cfg.retry_after)))
            headers.append(("retry-after-ms", str(math.ceil(cfg.retry_after * 1000))))
            return "429", 429, _error_body(
                f"Rate limit reached for {chat.model} (mock fault). Please try again in "
                f"{format_duration(cfg.retry_after)}.",
                "requests",
                None,
                "rate_limit_exceeded",
            ), task_key
        if outcome == "quota":
            return "quota", 429, _error_body(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                None,
                "insufficient_quota",
            ), task_key
        if outcome == "500":
            return "500", 500, _error_body(
                "The server had an error while processing your request. Sorry about that! (mock fault)",
                "server_error",
            ), task_key
        if outcome == "malformed":
            return "malformed", 200, b'{"id": "chatcmpl-broken", "choices": [', task_key
        return outcome, 0, b"", task_key  # hang / reset: nothing is sent

    def _draw_outcome(self, cfg: MockConfig, task_key: str) -> str:
        """Scripted outcome for this task key if queued, else one seeded draw."""
        queued = self._scripts.get(task_key)
        if queued:
            outcome = queued.popleft()
            if not queued:
                del self._scripts[task_key]
            return outcome
        r = self._rng.random()
        for name, p in (
            ("quota", cfg.pquota),
            ("429", cfg.p429),
            ("500", cfg.p500),
            ("hang", cfg.phang),
            ("reset", cfg.preset),
            ("malformed", cfg.pmalformed),
        ):
            if r < p:
                return name
            r -= p
        return "ok"

    def _check_limits(self, cfg: MockConfig, now: float, budget: int) -> tuple[str, int, int, float] | None:
        """(kind, limit, used, retry seconds) if this request breaks rpm/tpm, else None."""
        st = self._stats
        if cfg.rpm is not None and len(st.accepted_t) + 1 > cfg.rpm:
            # The earliest moment a slot frees is when the oldest entry expires;
            # rpm >= 1 guarantees the deque is non-empty here.
            return "requests", cfg.rpm, len(st.accepted_t), st.accepted_t[0] + cfg.window_s - now
        if cfg.tpm is not None and st.accepted_token_sum + budget > cfg.tpm:
            if budget > cfg.tpm:
                # Can never fit; OpenAI also answers such requests with a 429.
                return "tokens", cfg.tpm, st.accepted_token_sum, cfg.window_s
            # Walk from the oldest entry until enough tokens would have expired;
            # only done on rejection and bounded by the window's length.
            need = st.accepted_token_sum + budget - cfg.tpm
            freed = 0
            for t, tokens in zip(st.accepted_t, st.accepted_tokens):
                freed += tokens
                if freed >= need:
                    return "tokens", cfg.tpm, st.accepted_token_sum, t + cfg.window_s - now
            return "tokens", cfg.tpm, st.accepted_token_sum, cfg.window_s
        return None

    def _add_ratelimit_headers(self, cfg: MockConfig, now: float, headers: list[tuple[str, str]]) -> None:
        """OpenAI's x-ratelimit-* headers for each configured limit.

        ``reset`` is the time until the oldest accepted request leaves the
        window, i.e. when ``remaining`` next increases.
        """
        st = self._stats
        if cfg.rpm is None and cfg.tpm is None:
            return
        reset = format_duration(st.accepted_t[0] + cfg.window_s - now) if st.accepted_t else "0s"
        if cfg.rpm is not None:
            headers.append(("x-ratelimit-limit-requests", str(cfg.rpm)))
            headers.append(("x-ratelimit-remaining-requests", str(max(0, cfg.rpm - len(st.accepted_t)))))
            headers.append(("x-ratelimit-reset-requests", reset))
        if cfg.tpm is not None:
            headers.append(("x-ratelimit-limit-tokens", str(cfg.tpm)))
            headers.append(("x-ratelimit-remaining-tokens", str(max(0, cfg.tpm - st.accepted_token_sum))))
            headers.append(("x-ratelimit-reset-tokens", reset))

    def _deliver(self, conn: _Connection, outcome: str, payload: bytes, keep_alive: bool, task_key: str | None) -> None:
        """Send the decided response; count ``answered`` only for real completions."""
        if outcome == "reset":
            conn.reset()
            return
        delivered = conn.send(payload, keep_alive)
        if delivered and outcome == "ok" and task_key is not None:
            self._stats.answered[task_key] += 1

    async def _answer_later(
        self,
        conn: _Connection,
        delay_s: float,
        outcome: str,
        payload: bytes,
        keep_alive: bool,
        task_key: str | None,
        st: _Stats,
    ) -> None:
        # ``st`` is the _Stats object current at arrival: a reset in between
        # must neither count this answer nor drive in_flight negative.
        try:
            await asyncio.sleep(delay_s)
            if st is self._stats:
                self._deliver(conn, outcome, payload, keep_alive, task_key)
            else:
                self._deliver(conn, outcome, payload, keep_alive, None)
        finally:
            self._leave(st)

    async def _hang(self, conn: _Connection, hang_s: float, st: _Stats) -> None:
        try:
            # Cancelled by connection_lost when the client gives up, so a hang
            # holds no resources beyond the client's own patience.
            await asyncio.sleep(hang_s)
            conn.abort()
        finally:
            self._leave(st)

    def _leave(self, st: _Stats) -> None:
        st.in_flight -= 1
        if st is not self._stats:
            self._stats.in_flight = max(0, self._stats.in_flight - 1)


def _str_list(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of strings")
    return list(value)


def _coerce_field(name: str, value: Any) -> Any:
    """Convert a JSON value for a runtime MockConfig field to its declared type."""
    if name == "model_map":
        if not isinstance(value, Mapping):
            raise ValueError("model_map must be an object mapping model names")
        return dict(value)
    if name in ("rpm", "tpm"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{name} must be an integer or null")
        return int(value)
    if name == "seed":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("seed must be an integer")
        return value
    if name == "record_bodies":
        if not isinstance(value, bool):
            raise TypeError("record_bodies must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number")
    return float(value)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def build_arg_parser() -> argparse.ArgumentParser:
    """The ``python -m mpinfer.mockserver`` argument parser (defaults from MockConfig)."""
    d = MockConfig()
    p = argparse.ArgumentParser(prog="python -m mpinfer.mockserver", description=__doc__.split("\n", 1)[0])
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--latency-ms", type=float, default=d.latency_ms)
    p.add_argument("--jitter-ms", type=float, default=d.jitter_ms)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--p429", type=float, default=d.p429)
    p.add_argument("--p500", type=float, default=d.p500)
    p.add_argument("--phang", type=float, default=d.phang)
    p.add_argument("--preset", type=float, default=d.preset)
    p.add_argument("--pmalformed", type=float, default=d.pmalformed)
    p.add_argument("--pquota", type=float, default=d.pquota)
    p.add_argument("--retry-after", type=float, default=d.retry_after)
    p.add_argument("--hang-s", type=float, default=d.hang_s)
    p.add_argument("--model-map", nargs="+", action="extend", default=[], metavar="SRC=DST")
    p.add_argument("--keys", default="", help="comma-separated accepted API keys")
    p.add_argument("--rpm", type=int, default=d.rpm)
    p.add_argument("--tpm", type=int, default=d.tpm)
    p.add_argument(
        "--window-s",
        type=float,
        default=d.window_s,
        help="length of the sliding rpm/tpm window and of the window stats, in seconds (default: 60)",
    )
    p.add_argument("--backlog", type=int, default=d.backlog)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--record-bodies", action="store_true", help="keep the last request body per task key in stats")
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="exit when stdin reaches EOF (used by MockServerProcess so a crashed test run leaves no server)",
    )
    return p


def config_from_args(ns: argparse.Namespace) -> MockConfig:
    """Turn parsed arguments into a validated MockConfig (ValueError on bad input)."""
    model_map: dict[str, str] = {}
    for item in ns.model_map:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise ValueError(f"--model-map expects SRC=DST, got {item!r}")
        model_map[src] = dst
    keys = tuple(k.strip() for k in ns.keys.split(",") if k.strip())
    return MockConfig(
        host=ns.host,
        port=ns.port,
        latency_ms=ns.latency_ms,
        jitter_ms=ns.jitter_ms,
        seed=ns.seed,
        p429=ns.p429,
        p500=ns.p500,
        phang=ns.phang,
        preset=ns.preset,
        pmalformed=ns.pmalformed,
        pquota=ns.pquota,
        retry_after=ns.retry_after,
        hang_s=ns.hang_s,
        model_map=model_map,
        keys=keys,
        rpm=ns.rpm,
        tpm=ns.tpm,
        window_s=ns.window_s,
        backlog=ns.backlog,
        max_body_bytes=ns.max_body_bytes,
        record_bodies=ns.record_bodies,
    )


def _raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one: each connection is an fd."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # best effort; the server still works with fewer connections


async def serve(config: MockConfig, *, ready_stream: IO[str] | None = None, exit_with_parent: bool = False) -> None:
    """Run a server until SIGTERM/SIGINT (or stdin EOF with ``exit_with_parent``).

    Prints the MOCK_READY line to ``ready_stream`` (stdout by default) once
    listening, because that line is how launchers learn the chosen port.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server = MockServer(config)
    await server.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass  # e.g. Windows or a non-main thread; rely on the caller
    if exit_with_parent:

        def watch_stdin() -> None:
            # Blocks until the parent closes the pipe or dies. Raw os.read, not
            # sys.stdin: a daemon thread parked inside a buffered reader makes
            # interpreter shutdown abort with "could not acquire lock".
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # loop already closed: we are exiting anyway

        threading.Thread(target=watch_stdin, name="mock-parent-watch", daemon=True).start()
    stream = ready_stream if ready_stream is not None else sys.stdout
    stream.write(f"{READY_PREFIX} {server.base_url}\n")
    stream.flush()
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = build_arg_parser()
    ns = parser.parse_args(argv)
    try:
        config = config_from_args(ns)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="mockserver: %(levelname)s %(message)s")
    _raise_fd_limit()
    try:
        asyncio.run(serve(config, exit_with_parent=ns.exit_with_parent))
    except OSError as exc:
        print(f"mockserver: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


# --------------------------------------------------------------------------
# Subprocess helper
# --------------------------------------------------------------------------


class MockServerProcess:
    """Run the mock server in a subprocess, for tests, ``--demo`` and benchmarks.

    A separate process keeps the server off the client's event loop and GIL,
    so measurements and timeouts behave as they would against a real API.

    Usage::

        with MockServerProcess().start(latency_ms=20, p500=0.1) as mock:
            client = openai.OpenAI(base_url=mock.base_url, api_key="test")
            ...
            print(mock.stats()["outcomes"])
    """

    def __init__(self, *, ready_timeout_s: float = 15.0, control_timeout_s: float = 10.0) -> None:
        """Prepare (but do not start) a server process; timeouts bound every wait."""
        self.ready_timeout_s = ready_timeout_s
        self.control_timeout_s = control_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._base_url: str | None = None
        self._port: int | None = None
        self._last_stderr = ""
        # Control calls must never go through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- lifecycle -------------------------------------------------------------

    def start(self, **config_overrides: Any) -> Self:
        """Spawn the server with MockConfig overrides and wait for MOCK_READY.

        Calling it on a running helper stops that server and starts a new one
        (new port) with the given overrides. Raises TypeError for unknown option names, ValueError for invalid
        values, and RuntimeError (including the server's stderr) when it does
        not come up within ``ready_timeout_s``.
        """
        names = {f.name for f in dataclasses.fields(MockConfig)}
        unknown = sorted(set(config_overrides) - names)
        if unknown:
            raise TypeError(f"unknown mock server options: {unknown}")
        config = MockConfig(**config_overrides)  # validate before spawning
        if config.host != "127.0.0.1":
            raise ValueError("the mock server helper only binds to 127.0.0.1")
        if any("," in key for key in config.keys):
            raise ValueError("keys cannot contain ',' (they are passed comma-separated)")
        if self._proc is not None:
            # Both `with MockServerProcess() as s: s.start(...)` and
            # `with MockServerProcess().start(...) as s:` are natural; in the
            # first, __enter__ already started a default server, so replace it.
            self.stop()
            self._proc = None
            self._base_url = None
            self._port = None
        cmd = [sys.executable, *_server_entry(), "--exit-with-parent", *_config_to_argv(config)]
        env = dict(os.environ)
        # Make the package importable in the child even when it is not
        # installed (tests run from a checkout) for the ``-m`` fallback.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        # Kept open for the process lifetime (closed in stop()), so no `with`.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env, close_fds=True
        )
        line = self._read_ready_line()
        prefix = f"{READY_PREFIX} "
        if line is None or not line.startswith(prefix):
            reason = "timed out" if line is None else f"unexpected first line {line!r}"
            self._fail(reason)
        url = line[len(prefix):].strip()
        self._base_url = url
        self._port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        return self

    def _read_ready_line(self) -> str | None:
        """First stdout line, or None on timeout/EOF; a thread keeps this portable."""
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        lines: queue.Queue[bytes] = queue.Queue(maxsize=1)
        threading.Thread(target=lambda: lines.put(stdout.readline()), name="mock-ready", daemon=True).start()
        try:
            raw = lines.get(timeout=self.ready_timeout_s)
        except queue.Empty:
            return None
        return raw.decode("utf-8", "replace").strip() if raw else None

    def _fail(self, reason: str) -> NoReturn:
        exit_code = self._proc.poll() if self._proc is not None else None
        self.stop()
        stderr = self._read_stderr()
        raise RuntimeError(
            f"mock server failed to start ({reason}; exit code {exit_code}). stderr:\n{stderr or '<empty>'}"
        )

    def _read_stderr(self) -> str:
        if self._stderr is None or self._stderr.closed:
            return self._last_stderr
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate (then kill after ``timeout_s``) and reap the server; idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
        if self._stderr is not None and not self._stderr.closed:
            self._last_stderr = self._read_stderr()
            self._stderr.close()

    def __enter__(self) -> Self:
        """Start a default server unless ``start()`` was already called."""
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- properties ------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """OpenAI base URL of the running server, e.g. ``http://127.0.0.1:PORT/v1``."""
        if self._base_url is None:
            raise RuntimeError("mock server not started")
        return self._base_url

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (for the ``/_mock/*`` control endpoints)."""
        return self.base_url[: -len("/v1")]

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("mock server not started")
        return self._port

    @property
    def pid(self) -> int:
        """Process id of the server."""
        if self._proc is None:
            raise RuntimeError("mock server not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once stopped, else None."""
        return None if self._proc is None else self._proc.poll()

    @property
    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far (diagnostics for failing tests)."""
        return self._read_stderr()

    # -- control API -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """GET /_mock/stats."""
        return self._call("GET", "/_mock/stats")

    def configure(self, **settings: Any) -> dict[str, Any]:
        """POST /_mock/config with ``settings``; returns the new public config."""
        return self._call("POST", "/_mock/config", settings)

    def reset(self) -> None:
        """POST /_mock/reset: zero counters, windows and scripts."""
        self._call("POST", "/_mock/reset", {})

    def _call(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.root_url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with self._opener.open(request, timeout=self.control_timeout_s) as response:
                result: dict[str, Any] = json.loads(response.read())
                return result
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise RuntimeError(f"mock control call {method} {path} failed: {exc.code} {detail}") from None


def _server_entry() -> list[str]:
    """Interpreter arguments that run this module's ``main``.

    ``-m mpinfer.mockserver`` would first import the package ``__init__``,
    which pulls in the openai client and costs ~0.5 s per start; the test
    suite starts dozens of servers. This module is stdlib-only, so running
    the file itself is equivalent; ``-P`` keeps the package directory off
    ``sys.path`` so sibling modules cannot shadow stdlib ones.
    """
    path = os.path.abspath(__file__)
    if os.path.isfile(path) and path.endswith(".py"):
        return ["-P", path]
    return ["-m", "mpinfer.mockserver"]  # e.g. running from a zip: fall back to the package


def _config_to_argv(config: MockConfig) -> list[str]:
    """Command-line arguments reproducing ``config`` (only non-default values)."""
    default = MockConfig()
    argv: list[str] = []
    for f in dataclasses.fields(MockConfig):
        value = getattr(config, f.name)
        if value == getattr(default, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "model_map":
            argv.append(flag)
            argv.extend(f"{src}={dst}" for src, dst in value.items())
        elif f.name == "keys":
            argv += [flag, ",".join(value)]
        elif isinstance(value, bool):
            argv.append(flag)  # a store_true switch: only ever differs from its default by being on
        else:
            argv += [flag, str(value)]
    return argv


if __name__ == "__main__":
    sys.exit(main())
