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
2. With a ``SendGate``, the request waits for a slot; a gate closed meanwhile turns it away, and
   the client records ``Unsent.STOPPING``. A request given its slot has its deadline started again
   (``restart``; ``WireClient`` starts it only then): waiting for a slot is not the server's time.
3. ``await ticket.leaving()``, once, as the request is about to go on the wire: None to send it,
   or the reason it goes back unsent (``Unsent.STALE``), which the client records. A request sent
   has its ``left_at`` stamped (the ticket's clock): its latency counts from there, not from the
   wait for the limiter or a slot before it.
4. ``await ticket.answered(status, headers)``, once, as soon as the answer's status and headers
   are read, before its slot goes to the next request.
5. A request turned away (2 or 3) reaches no server: ``complete`` returns ``ticket.unsent``
   instead of an Answer (through the SDK, the client answers it with an empty 204 that the SDK
   passes back).

The hooks do nothing here; the runner's ticket (backends/runner.py) stamps the send with the
limiter and has it learn the limits an answer states.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

KEY = "mpinfer.ticket"  # the request extension that holds the ticket


class Unsent(StrEnum):
    """Why a request was not sent (``complete`` returns it): nothing reached the server."""

    STALE = "stale"        # granted before a limit was known: back to the limiter for a grant
    STOPPING = "stopping"  # built ahead, the run stopped while it waited for a slot: for the rerun


class Ticket:
    """One request in flight: its deadline, and the hooks the HTTP client calls (see the module)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
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
