"""A request's ticket: what one request in flight carries down to the HTTP client, and what the
HTTP client tells it.

The protocol (``WireClient.complete`` in api/wire.py makes the call on the default transport, and
``api.client.complete`` through the openai SDK, over either of api/http.py's clients):

1. The caller makes a ``Ticket`` for each request (the runner's subclass holds its rate-limit
   grant) and passes it to ``complete``, which starts the request's deadline (``deadline``). Through
   the SDK, the ticket goes down as the request's ``timeout`` option, wrapped in an
   ``httpx2.Timeout`` of its ``seconds`` (``api.http.TicketTimeout``), which the SDK gives,
   untouched, to the HTTP client's ``build_request``; our clients keep the ticket in the request's
   ``extensions`` under ``KEY``. None of it is sent to the server. (The SDK offers no other way
   down: it passes neither extensions nor options of its own, and a header would have to be
   stripped again before sending.)
2. ``await ticket.leaving()``, once, as the request is about to go on the wire: its ``left_at`` is
   stamped (the ticket's clock), and its latency counts from there, not from the wait for the
   limiter or a slot before it.
3. ``await ticket.answered(status, headers)``, once, as soon as the answer's status and headers
   are read, before the caller gets the answer (and gives its slot to the next request).

The hooks do nothing here; the runner's ticket (backends/runner.py) stamps the send with the
limiter and has it learn the limits an answer states.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

KEY = "mpinfer.ticket"  # the request extension that holds the ticket


class Ticket:
    """One request in flight: its deadline, and the hooks the HTTP client calls (see the module)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.deadline: asyncio.Timeout | None = None  # complete's, on the whole request
        self.clock = clock
        self.left_at: float | None = None  # when it went on the wire (``clock``), once sent

    async def leaving(self) -> None:
        """The request is about to be sent: its ``left_at`` stamped."""
        self.left_at = self.clock()

    async def answered(self, status: int, headers: Any) -> None:
        """The answer's status and headers (a case-insensitive mapping) have arrived."""
