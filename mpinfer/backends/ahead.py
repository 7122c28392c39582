"""Building requests ahead of their slots, and when that stops: one host's state (``BuildAhead``).

A local worker on the aiohttp transport runs twice -c requests (``RunnerSettings.built_ahead``):
a request built while all -c slots are on the wire waits at the gate (api/pool.py's ``SendGate``),
so that an answer's freed slot is taken at once by a request that is ready. Building ahead holds a
grant while it waits for a slot, and requests that waited leave together, so it is done only while
no limit is in play: from the start, unless a limit is set, and never again once the server states
a limit or refuses a request (``pace``). A request granted before then is stale when it leaves
(``stale``): it goes back to the limiter for a new grant, under the limit (the runner's ticket,
backends/runner.py). When the host stops (``stop``), the requests still waiting for a slot are
turned away unsent, for the rerun.
"""

from __future__ import annotations

import asyncio

from ..api.pool import SendGate
from ..slices import RunnerSettings


class BuildAhead:
    """One host's build-ahead: its extra requests (``extra``, 0 for none), their ``gate``,
    and whether a limit is in play (``paced``);
    ``allowed`` is set while the extra requests may be built."""

    def __init__(self, settings: RunnerSettings, extra: int = 0) -> None:
        self.extra = extra
        self.gate = SendGate(settings.concurrency) if extra else None
        self.paced = settings.paced
        self.allowed = asyncio.Event()
        if not self.paced:
            self.allowed.set()

    def stale(self, granted_paced: bool) -> bool:
        """Whether a request granted with ``paced`` as it was then must ask the limiter again."""
        return self.paced and not granted_paced

    def pace(self) -> None:
        """A limit is in play: no more building ahead in this run."""
        if not self.paced:
            self.paced = True
            self.allowed.clear()

    def stop(self) -> None:
        """The host takes nothing new: turn away the requests waiting for a slot, and wake the idle
        builders (they find the host stopping and end)."""
        if self.gate is not None:
            self.gate.close()
        self.allowed.set()
