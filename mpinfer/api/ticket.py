"""A request's ticket: what one request in flight carries down to the HTTP client, and what the
HTTP client tells it.

The protocol (``api.client.complete`` makes the call; ``api.http`` holds both transports):

1. The caller makes a ``Ticket`` for each request (the runner's subclass holds its rate-limit
   grant) and passes it to ``complete``, which starts the request's deadline (``deadline``) and
   hands the ticket to the SDK as the request's ``timeout`` option. The SDK gives that option,
   untouched, to the HTTP client's ``build_request``: a Ticket is an ``httpx2.Timeout`` of its
   ``seconds``, so any client reads it as the timeout it is, and ours also keep it in the request's
   ``extensions`` under ``KEY``. None of it is sent to the server. (The SDK offers no other way
   down: it passes neither extensions nor options of its own, and a header would have to be
   stripped again before sending.)
2. With a ``SendGate``, the request waits for a slot; a gate closed meanwhile turns it away, and
   the client records ``Unsent.STOPPING``. A request given its slot has its deadline started again
   (``restart``): waiting for a slot is not the server's time.
3. ``await ticket.leaving()``, once, as the request is about to go on the wire: None to send it,
   or the reason it goes back unsent (``Unsent.STALE``), which the client records. A request sent
   has its ``left_at`` stamped (the ticket's clock): its latency counts from there, not from the
   wait for the limiter or a slot before it.
4. ``await ticket.answered(status, headers)``, once, as soon as the answer's status and headers
   are read, before its slot goes to the next request.
5. A request turned away (2 or 3) reaches no server: the client returns an empty 204 that the SDK
   passes back, and ``complete`` returns ``ticket.unsent`` instead of an Answer.

The hooks do nothing here; the runner's ticket (backends/runner.py) stamps the send with the
limiter and has it learn the limits an answer states.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import httpx2

KEY = "mpinfer.ticket"  # the request extension that holds the ticket


class Unsent(StrEnum):
    """Why a request was not sent (``complete`` returns it): nothing reached the server."""

    STALE = "stale"        # granted before a limit was known: back to the limiter for a grant
    STOPPING = "stopping"  # built ahead, the run stopped while it waited for a slot: for the rerun


class Ticket(httpx2.Timeout):
    """One request in flight: its deadline, and the hooks the HTTP client calls (see the module)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        # Not super().__init__(): one length for every phase, set directly (a request at a time).
        self.connect = self.read = self.write = self.pool = seconds
        self.seconds = seconds
        self.deadline: asyncio.Timeout | None = None  # complete's, on the whole request
        self.unsent: Unsent | None = None  # set by the client when it turns the request away
        self.clock = clock
        self.left_at: float | None = None  # when it went on the wire (``clock``), once sent

    def restart(self) -> None:
        """The request has its slot: its ``seconds`` count from now."""
        if self.deadline is not None:
            self.deadline.reschedule(asyncio.get_running_loop().time() + self.seconds)

    async def leaving(self) -> Unsent | None:
        """The request is about to be sent: None to send it (its ``left_at`` stamped), or why it
        goes back unsent."""
        self.left_at = self.clock()
        return None

    async def answered(self, status: int, headers: Any) -> None:
        """The answer's status and headers (a case-insensitive mapping) have arrived."""
