"""Raw HTTP/1.1 servers on 127.0.0.1 for the tests of mpinfer's client (tests/test_http.py,
tests/test_send_gate.py): they give what the mock does not (a compressed answer, a redirect, a connection
closed without an answer, an answer at a chosen moment) and see exactly the bytes that arrived."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

# Answers one request: given its head and body, writes to the connection (or closes it, or says nothing).
Handler = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[None]]
Connection = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
READ_S = 10.0  # a request that has not arrived whole by then is not coming


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The head (through its blank line) and the body of the next request on the connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_S)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await asyncio.wait_for(reader.readexactly(length), READ_S)
    return head, body


def response(body: bytes, *headers: str) -> bytes:
    """A 200 answer with a JSON ``body`` and any more header lines ("Name: value")."""
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def keep_alive(handler: Handler, heads: list[bytes] | None = None, limit: int = 10) -> Connection:
    """A connection handler for ``asyncio.start_server`` that takes requests one after another, as a keep-alive
    server does, answering each with ``handler``, until the client closes the connection or the handler does
    (at most ``limit``); each request's head is appended to ``heads``."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(limit):
                try:
                    head, body = await read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    return
                if heads is not None:
                    heads.append(head)
                await handler(head, body, writer)
                if writer.is_closing():
                    return
        finally:
            writer.close()
    return serve
