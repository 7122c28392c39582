"""The limiter as a worker's runner reaches it: one protocol, LimiterClient, and its two adapters.

- ``LocalLimiter``: the shared-memory limiter of one machine, in the worker's own process.
- ``RayLimiter``: calls to ``LimiterActor``, the one limiter of a Ray cluster (a SharedLimiter in
  the actor's memory, on the actor's clock). ``ray.remote(LimiterActor)`` makes it an actor; nothing
  here imports Ray.

Every part says the same things by the same names: ``try_acquire``, ``sent``, ``release``,
``rate_limited``, ``observe``, ``disable_key``, ``key_disabled``, and on the owner's side
``reclaim`` (a dead holder's grants back) and ``lane_stats``. A holder is the worker slot grants
count against: a local worker's index, or a Ray worker actor's number.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import NoKeysLeft
from .grants import Ending, Grant, Wait
from .hints import Hints
from .lanes import LaneStats
from .limiter import SharedLimiter
from .settings import LimiterSettings

Clock = Callable[[], float]


class LimiterClient(Protocol):
    """The limiter as a runner sees it; each host supplies its own (shared memory, or an actor)."""

    async def try_acquire(self, model_index: int, charge: int) -> Grant | Wait:
        """A grant for a request charged ``charge`` tokens, or how long to wait; NoKeysLeft when
        every key of ``model_index`` is disabled."""
        ...

    async def sent(self, grant: Grant) -> None:
        """The granted request is leaving now."""
        ...

    async def release(self, grant: Grant, ending: Ending = Ending.OK, *, charged: int | None = None,
                      used: int = 0) -> bool:
        """The request ended; whether its lane is in an outage."""
        ...

    async def rate_limited(self, lane: int, retry_after: float | None) -> None:
        """A 429 on ``lane``, with the wait it asked for (None: no hint)."""
        ...

    async def observe(self, lane: int, hints: Hints) -> None:
        """What an answer on ``lane`` said of the limits."""
        ...

    async def disable_key(self, key: int) -> bool:
        """Stop using ``key``; whether any key is left."""
        ...

    async def key_disabled(self, key: int) -> bool:
        """Whether ``key`` has been disabled."""
        ...


class LocalLimiter:
    """The shared-memory limiter of one machine, for worker slot ``holder``, read with this
    machine's clock (or the one passed in)."""

    def __init__(self, shared: SharedLimiter, holder: int = 0,
                 clock: Clock = time.monotonic) -> None:
        self.shared = shared
        self.holder = holder
        self.clock = clock

    async def try_acquire(self, model_index: int, charge: int) -> Grant | Wait:
        """See LimiterClient."""
        return self.shared.try_acquire(model_index, charge, self.clock(), self.holder)

    async def sent(self, grant: Grant) -> None:
        """See LimiterClient."""
        self.shared.sent(grant, self.clock())

    async def release(self, grant: Grant, ending: Ending = Ending.OK, *, charged: int | None = None,
                      used: int = 0) -> bool:
        """See LimiterClient."""
        return self.shared.release(grant, self.clock(), ending, charged=charged, used=used)

    async def rate_limited(self, lane: int, retry_after: float | None) -> None:
        """See LimiterClient."""
        self.shared.rate_limited(lane, self.clock(), retry_after)

    async def observe(self, lane: int, hints: Hints) -> None:
        """See LimiterClient."""
        self.shared.observe(lane, hints, self.clock())

    async def disable_key(self, key: int) -> bool:
        """See LimiterClient."""
        return self.shared.disable_key(key)

    async def key_disabled(self, key: int) -> bool:
        """See LimiterClient."""
        return self.shared.key_disabled(key)


class LimiterActor:
    """The cluster's one limiter: a SharedLimiter in this actor's memory, on this actor's clock.

    Each worker actor's grants are counted against its own holder (its number: numbers are never
    reused, and there is one holder for every actor a run may start). A dead actor never releases
    what it held: ``reclaim`` gives it back, or the run would lose that much concurrency with each
    death, and stall. One caller at a time (a synchronous actor).
    """

    def __init__(self, settings: LimiterSettings, clock: Clock = time.monotonic) -> None:
        # The cluster shares this actor; lane files are one machine's, and Ray reuses an actor's
        # process for the next, which would keep a finished run alive in them.
        self.shared = SharedLimiter(dataclasses.replace(settings, share=None))
        self.clock = clock
        self.dead: set[int] = set()

    def try_acquire(self, holder: int, model_index: int, charge: int) -> Grant | Wait | None:
        """SharedLimiter.try_acquire for ``holder``; None for NoKeysLeft (the caller raises it)."""
        try:
            return self.shared.try_acquire(model_index, charge, self.clock(), holder)
        except NoKeysLeft:
            return None

    def sent(self, grant: Grant) -> None:
        """See SharedLimiter.sent."""
        self.shared.sent(grant, self.clock())

    def release(self, holder: int, grant: Grant, ending: Ending, charged: int | None,
                used: int) -> bool:
        """See SharedLimiter.release; a late call from a holder reclaimed changes nothing."""
        if holder in self.dead:
            return False
        return self.shared.release(grant, self.clock(), ending, charged=charged, used=used)

    def reclaim(self, holder: int) -> int:
        """A worker actor died: give back the grants it held; how many there were."""
        self.dead.add(holder)
        return self.shared.reclaim(holder)

    def rate_limited(self, lane: int, retry_after: float | None) -> None:
        """See SharedLimiter.rate_limited."""
        self.shared.rate_limited(lane, self.clock(), retry_after)

    def observe(self, lane: int, hints: Hints) -> None:
        """See SharedLimiter.observe."""
        self.shared.observe(lane, hints, self.clock())

    def disable_key(self, key: int) -> bool:
        """See SharedLimiter.disable_key."""
        return self.shared.disable_key(key)

    def key_disabled(self, key: int) -> bool:
        """See SharedLimiter.key_disabled."""
        return self.shared.key_disabled(key)

    def lane_stats(self) -> tuple[list[LaneStats], list[bool]]:
        """See SharedLimiter.lane_stats."""
        return self.shared.lane_stats(self.clock())


class RayLimiter:
    """The LimiterClient of a Ray worker actor (holder ``holder``): calls to the LimiterActor.

    Calls whose answer is not needed go without waiting: Ray runs one caller's calls to an actor in
    the order they were made, so a release still comes before that worker's next acquire.
    """

    def __init__(self, handle: Any, holder: int) -> None:
        self.handle = handle
        self.holder = holder

    async def try_acquire(self, model_index: int, charge: int) -> Grant | Wait:
        """See LimiterClient."""
        got: Grant | Wait | None = await self.handle.try_acquire.remote(self.holder, model_index,
                                                                        charge)
        if got is None:
            raise NoKeysLeft()
        return got

    async def sent(self, grant: Grant) -> None:
        """See LimiterClient. Not awaited: the request need not wait for it, and the limiter stamps
        it on arrival, a little after the send, which errs on the safe side."""
        self.handle.sent.remote(grant)

    async def release(self, grant: Grant, ending: Ending = Ending.OK, *, charged: int | None = None,
                      used: int = 0) -> bool:
        """See LimiterClient; waited for only when the answer matters
        (the retry needs to know of an outage)."""
        if ending is not Ending.UNREACHABLE:
            self.handle.release.remote(self.holder, grant, ending, charged, used)
            return False
        call = self.handle.release.remote(self.holder, grant, ending, charged, used)
        in_outage: bool = await call
        return in_outage

    async def rate_limited(self, lane: int, retry_after: float | None) -> None:
        """See LimiterClient."""
        self.handle.rate_limited.remote(lane, retry_after)

    async def observe(self, lane: int, hints: Hints) -> None:
        """See LimiterClient (read where the answer arrived: a reset counts from then)."""
        self.handle.observe.remote(lane, hints)

    async def disable_key(self, key: int) -> bool:
        """See LimiterClient."""
        left: bool = await self.handle.disable_key.remote(key)
        return left

    async def key_disabled(self, key: int) -> bool:
        """See LimiterClient."""
        disabled: bool = await self.handle.key_disabled.remote(key)
        return disabled
