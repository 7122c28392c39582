"""Building requests ahead of their slots: one host's gate (``SendGate``) and its state
(``BuildAhead``).

A local worker on the aiohttp transport runs twice -c requests (``RunnerSettings.built_ahead``):
a request built while all -c slots are taken waits at the gate, so that an answer's freed slot is
taken at once by a request that is ready instead of after the answer's handling and the next
request's building. A request takes its slot first and its grant from the limiter only then
(backends/runner.py): no grant is held while it waits, so requests that waited together still leave
at the limiter's pace, and building ahead goes on under any limit. When the host stops (``stop``),
the requests still waiting for a slot are turned away unsent, for the rerun. What it gained at 1,200
in flight is in bench/README.md.
"""

from __future__ import annotations

import asyncio
from collections import deque


class SendGate:
    """At most ``slots`` requests past it at once, however many are built; ``close`` turns away
    those still waiting (the run is stopping: they are left for the rerun, unsent).

    First come, first served, as asyncio.Semaphore; but a freed slot goes straight to the first
    request waiting, in constant time. (Python 3.11's Semaphore scans its waiters on every acquire
    and on every release past those woken and not yet run: when a round's hundreds of answers arrive
    together, each freed slot walked hundreds of them, bench/README.md.)
    """

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: deque[asyncio.Future[None]] = deque()
        self.closed = False
        self._freed_this_turn = 0  # slots given back in this turn of the event loop

    async def pass_on(self) -> None:
        """After ``give_back``: when other slots were given back in this turn of the event loop
        too (answers that arrived together, handled one after another in one turn), yield twice,
        so that the requests woken by the freed slots go out before the rest of this answer's
        handling; an answer that came alone goes on at once (the yields cost a turn each)."""
        self._freed_this_turn += 1
        if self._freed_this_turn == 1:
            asyncio.get_running_loop().call_soon(self._next_turn)
            return
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def _next_turn(self) -> None:
        self._freed_this_turn = 0

    async def take(self) -> bool:
        """Wait for a slot: True with it,
        False when the gate was closed meanwhile (no slot held)."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(handed)
            try:
                await handed  # set when a slot is handed over (give_back skips one cancelled)
            except asyncio.CancelledError:
                if handed.done() and not handed.cancelled():
                    self.give_back()  # handed a slot, then cancelled before it ran: pass it on
                raise
        if self.closed:
            self.give_back()  # to the next one waiting, which is turned away too
            return False
        return True

    def give_back(self) -> None:
        """Free the slot of a request whose answer came back (or that failed), for the next one."""
        while self._waiting:
            handed = self._waiting.popleft()
            if not handed.done():  # (a waiter cancelled meanwhile is skipped)
                handed.set_result(None)
                return
        self._free += 1

    def close(self) -> None:
        """Turn away the requests still waiting and those to come: the run is stopping."""
        self.closed = True


class BuildAhead:
    """One host's build-ahead: its extra requests (``extra``, 0 for none) and their ``gate``
    (None without any)."""

    def __init__(self, slots: int, extra: int = 0) -> None:
        self.extra = extra
        self.gate = SendGate(slots) if extra else None

    def stop(self) -> None:
        """The host takes nothing new: turn away the requests waiting for a slot."""
        if self.gate is not None:
            self.gate.close()
