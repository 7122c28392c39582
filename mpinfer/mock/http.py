"""HTTP/1.1 for the mock server: the request parser, the response writer, the connection.

A small parser written directly on ``asyncio`` protocols (keep-alive, ``Content-Length`` and chunked
request bodies, pipelining, ``Connection: close``) rather than a framework, so that thousands of
concurrent connections and well over 2,000 simple completions per second fit on a single core.
Every response, errors included, is written by ``http_response``; ``error_body`` is OpenAI's JSON
error envelope, which protocol errors use too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .config import MockConfig

# Named as when this code was mpinfer/mockserver.py, so logging set-ups that name it keep working.
log = logging.getLogger("mpinfer.mockserver")

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


def error_body(message: str, type_: str, param: str | None = None,
               code: str | None = None) -> bytes:
    """Encode an OpenAI error envelope."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param,
                                 "code": code}}).encode()


def http_response(
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
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    query: str = ""  # what followed "?" in the target (the Batch API's list takes limit and after)


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


class ConnectionHost(Protocol):
    """What a connection needs from the server that accepted it; declared here so this module need
    not import the server (which imports it)."""

    @property
    def connections(self) -> set[Connection]:
        """The open connections, closed at shutdown; each connection adds and removes itself."""

    @property
    def config(self) -> MockConfig:
        """The current configuration, read per request because it can change at run time."""

    def dispatch(self, conn: Connection, request: Request) -> None:
        """Answer one parsed request on ``conn``."""


class Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them strictly in order.

    Requests that can be answered immediately are handled synchronously inside
    ``data_received`` (the fast path that gives the throughput); ones that must
    wait (latency, hang) run as a task, and the connection parses nothing else
    until that task is done so pipelined responses stay in request order.
    """

    def __init__(self, host: ConnectionHost) -> None:
        self._host = host
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
        self._host.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel any pending answer (e.g. a hang) so nothing leaks after a disconnect."""
        self._closed = True
        self._host.connections.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._buf.clear()

    def data_received(self, data: bytes) -> None:
        """Buffer bytes and answer every complete request, unless one is pending."""
        self._buf += data
        if not self._busy:
            self._process()
        elif (len(self._buf) > _PAUSE_BUFFER_BYTES and not self._paused
              and self._transport is not None):
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
                self.send(http_response(exc.status,
                                        error_body(exc.message, "invalid_request_error"), False),
                          False)
                return
            if request is None:
                if self._paused:
                    self._paused = False
                    transport.resume_reading()
                return
            try:
                self._host.dispatch(self, request)
            except Exception:  # a handler bug must not kill the connection loop
                log.exception("mock handler failed")
                self.send(http_response(500, error_body("mock server bug", "server_error"), False),
                          False)
                return

    def _parse_one(self) -> Request | None:
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
        limit = self._host.config.max_body_bytes
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
        path, _, query = target.partition("?")
        return Request(method, path, headers, body, keep_alive, query)

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
        if length > self._host.config.max_body_bytes:
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
