"""The limiter as a worker's runner reaches it: one protocol, LimiterClient, and its two adapters.

- ``LocalLimiter``: the shared-memory limiter of one machine, in the worker's own process.
- ``RayLimiter``: calls to the ``LimiterActor`` of each endpoint of a Ray cluster: one named actor
  per (key, base URL), known by a keyed hash (``limiter_name``), that every job on the cluster
  sending there shares, with a lane per model inside (SharedLimiters in the actor's memory, on its
  clock). ``ray.remote(LimiterActor)`` makes it an actor; nothing here imports Ray.

Every part says the same things by the same names: ``try_acquire``, ``sent``, ``release``,
``rate_limited``, ``observe``, ``disable_key``, ``key_disabled``, and on the owner's side
``reclaim`` (a dead holder's grants back) and ``lane_stats``. A holder is the worker slot grants
count against: a local worker's index, or a Ray worker actor's number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..api.endpoints import Endpoint
from ..errors import NoKeysLeft
from .grants import Ending, Grant, Wait
from .hints import Hints
from .lanes import LaneStats
from .limiter import SharedLimiter
from .settings import LaneLimits, LimiterSettings

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


# -- a Ray cluster: one limiter actor per endpoint, shared by every job on the cluster -------------

#: The Ray namespace of the limiter actors: every job on a cluster finds them there, whatever its
#: own namespace (a named actor is seen only in its namespace).
NAMESPACE = "mpinfer"
#: Holder slots in each lane of an endpoint's actor, for the worker actors of every job using it.
HOLDERS = 1024
#: A job not heard of for this long is gone (its driver was killed): its grants are given back.
JOB_SILENT_S = 600.0
#: Part of an actor's name: jobs of another protocol never share an actor with this one.
_PROTOCOL = "v1"
_SALT = b"mpinfer limiter actor"


def limiter_name(endpoint: Endpoint) -> str:
    """The name of an endpoint's limiter actor on a cluster: a truncated keyed hash (HMAC-SHA256)
    of its key and where it sends (base URL, deployment), never the key itself; every job on the
    same key and place finds the same actor by it."""
    place = f"{endpoint.api_key}\0{endpoint.base_url or ''}\0{endpoint.deployment or ''}"
    digest = hmac.new(_SALT, place.encode(), hashlib.sha256).hexdigest()
    return f"mpinfer-limiter-{_PROTOCOL}-{digest[:24]}"


@dataclass(frozen=True)
class ModelLimits:
    """One model's lane on an endpoint as a job asks for it: its own paced limits (None: none)."""

    model: str
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None


@dataclass(frozen=True)
class EndpointLanes:
    """What a job brings to one endpoint's limiter actor: the actor's name, the lanes of the models
    it sends there, and the run's limiter settings (--rpm/--tpm as one number, counted in windows;
    pacing; how many requests the job may have in flight)."""

    name: str
    models: tuple[ModelLimits, ...]
    rpm: int | None
    tpm: int | None
    window_s: float
    burst_s: float
    margin_s: float | None
    max_in_flight: int

    def settings(self, limits: ModelLimits) -> LimiterSettings:
        """The settings of one model's lane (a limiter of one lane) when it is made."""
        own = ((LaneLimits(0, 0, limits.rpm, limits.tpm, limits.max_in_flight),)
               if limits.rpm or limits.tpm or limits.max_in_flight else ())
        # The lane lives in the actor's memory (share None): lane files are one machine's, and
        # Ray reuses an actor's process.
        return LimiterSettings(n_keys=1, n_models=1, rpm=self.rpm, tpm=self.tpm,
                               window_s=self.window_s, burst_s=self.burst_s,
                               margin_s=self.margin_s, max_in_flight=self.max_in_flight,
                               holders=HOLDERS, lanes=own)

    def request_limit(self, limits: ModelLimits) -> int | None:
        """The request limit this job tells the model's lane (its own, else --rpm)."""
        return limits.rpm or self.rpm

    def token_limit(self, limits: ModelLimits) -> int | None:
        """The token limit this job tells the model's lane (its own, else --tpm)."""
        return limits.tpm or self.tpm


def cluster_lanes(settings: LimiterSettings, endpoints: Sequence[Endpoint],
                  models: Sequence[str]) -> tuple[EndpointLanes, ...]:
    """A run's limiter settings split into its endpoints' actors (by key index), each with the
    lanes of the models it serves."""
    own = {(lane.key, lane.model_index): lane for lane in settings.lanes}
    split = []
    for key, endpoint in enumerate(endpoints):
        lanes = []
        for model_index, model in enumerate(models):
            if settings.serves is not None and key not in settings.serves[model_index]:
                continue
            given = own.get((key, model_index))
            lanes.append(ModelLimits(model) if given is None else
                         ModelLimits(model, given.rpm, given.tpm, given.max_in_flight))
        split.append(EndpointLanes(limiter_name(endpoint), tuple(lanes), settings.rpm,
                                   settings.tpm, settings.window_s, settings.burst_s,
                                   settings.margin_s, settings.max_in_flight))
    return tuple(split)


def _lowest(*limits: int | None) -> int | None:
    given = [limit for limit in limits if limit]
    return min(given) if given else None


class LimiterActor:
    """The limiter of one endpoint (a key at a base URL) on a Ray cluster, shared by every job that
    sends there: a named actor (``limiter_name``) each job finds, or starts, by that name.

    Inside, a lane per model name (a SharedLimiter of one lane, on this actor's clock), made when a
    job first names the model; a job that tells a lower limit lowers it (the lowest holds), and each
    job adds its requests in flight to the lane's concurrency. Grants count against a holder slot
    per (job, worker actor number): a dead actor's are given back by ``reclaim``, a finished job's
    by ``leave``, and a late call from either changes nothing; the last job to leave ends the actor
    (it outlives the job that started it while others use it). Each job's own requests, 429s and
    tokens are counted apart, so its summary is its own. One caller at a time (a synchronous
    actor); ``ray.remote(LimiterActor)`` makes it an actor, nothing here imports Ray.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.lanes: dict[str, SharedLimiter] = {}
        self.requests: dict[str, int | None] = {}  # per model: the request limit in force
        self.tokens: dict[str, int | None] = {}
        self.capacity: dict[str, int] = {}  # per model: the joined jobs' requests in flight
        self.joined: set[tuple[str, str]] = set()  # (job, model)
        self.slots: dict[tuple[str, int], int] = {}  # (job, worker number) -> holder slot
        self.dead: set[tuple[str, int]] = set()
        self.counts: dict[tuple[str, str], list[int]] = {}  # (job, model): requests, 429s, tokens
        self.seen: dict[str, float] = {}  # the jobs using the actor: when each was last heard of
        self.disabled = False

    def join(self, job: str, lanes: EndpointLanes) -> list[str]:
        """Job ``job`` sends to this endpoint: make or tighten its models' lanes; the jobs using the
        actor now (this one included). A job silent for JOB_SILENT_S (its driver killed before it
        could leave) is left for it first."""
        now = self.clock()
        for silent in [other for other, seen in self.seen.items() if now - seen > JOB_SILENT_S]:
            self.leave(silent)
        self.seen[job] = now
        for limits in lanes.models:
            model = limits.model
            self.counts.setdefault((job, model), [0, 0, 0])
            rpm, tpm = lanes.request_limit(limits), lanes.token_limit(limits)
            shared = self.lanes.get(model)
            if shared is None:
                self.lanes[model] = SharedLimiter(lanes.settings(limits))
                self.requests[model], self.tokens[model] = rpm, tpm
                self.capacity[model] = limits.max_in_flight or lanes.max_in_flight
                self.joined.add((job, model))
                continue
            lower_rpm = _lowest(rpm, self.requests[model])
            lower_tpm = _lowest(tpm, self.tokens[model])
            in_flight = None
            if (job, model) not in self.joined:
                self.joined.add((job, model))
                self.capacity[model] = _lowest(limits.max_in_flight,
                                               self.capacity[model] + lanes.max_in_flight) or 1
                in_flight = self.capacity[model]
            shared.limit_lane(0, 0, lower_rpm if lower_rpm != self.requests[model] else None,
                              lower_tpm if lower_tpm != self.tokens[model] else None, in_flight)
            self.requests[model], self.tokens[model] = lower_rpm, lower_tpm
        return sorted(self.seen)

    def _slot(self, job: str, number: int) -> int:
        slot = self.slots.get((job, number))
        if slot is None:
            slot = self.slots[(job, number)] = len(self.slots) % HOLDERS
        return slot

    def try_acquire(self, job: str, number: int, model: str, charge: int) -> Grant | Wait | None:
        """A grant on the model's lane for worker ``number`` of ``job``, or how long to wait; None
        once the endpoint's key is disabled."""
        if self.disabled:
            return None
        now = self.clock()
        self.seen[job] = now
        got = self.lanes[model].try_acquire(0, charge, now, self._slot(job, number))
        if isinstance(got, Grant):
            self.counts[(job, model)][0] += 1
        return got

    def sent(self, model: str, grant: Grant) -> None:
        """See SharedLimiter.sent."""
        self.lanes[model].sent(grant, self.clock())

    def release(self, job: str, number: int, model: str, grant: Grant, ending: Ending,
                charged: int | None, used: int) -> bool:
        """See SharedLimiter.release; a late call from a holder reclaimed changes nothing."""
        if (job, number) in self.dead:
            return False
        counts = self.counts[(job, model)]
        counts[2] += used
        return self.lanes[model].release(grant, self.clock(), ending, charged=charged, used=used)

    def reclaim(self, job: str, number: int) -> int:
        """Worker actor ``number`` of ``job`` died: give back the grants it held; how many."""
        slot = self.slots.get((job, number))
        self.dead.add((job, number))
        if slot is None:
            return 0
        return sum(shared.reclaim(slot) for shared in self.lanes.values())

    def leave(self, job: str) -> int:
        """Job ``job`` ended: give back what its workers still held; how many jobs still use the
        actor (none: the caller ends it)."""
        for known, number in list(self.slots):
            if known == job:
                self.reclaim(job, number)
        self.seen.pop(job, None)
        return len(self.seen)

    def rate_limited(self, job: str, model: str, retry_after: float | None) -> None:
        """See SharedLimiter.rate_limited."""
        self.counts[(job, model)][1] += 1
        self.lanes[model].rate_limited(0, self.clock(), retry_after)

    def observe(self, model: str, hints: Hints) -> None:
        """See SharedLimiter.observe."""
        self.lanes[model].observe(0, hints, self.clock())

    def disable_key(self) -> None:
        """The endpoint's key was rejected: no grant from now on, for any job."""
        self.disabled = True

    def key_disabled(self) -> bool:
        """Whether the endpoint's key has been disabled."""
        return self.disabled

    def lane_stats(self, job: str) -> tuple[list[tuple[str, LaneStats]], bool]:
        """The lanes ``job`` uses, each with the limits in force and ``job``'s own counts (key 0,
        model 0: the caller places them), and whether the key is disabled."""
        now = self.clock()
        self.seen[job] = now
        stats = []
        for model, shared in self.lanes.items():
            counts = self.counts.get((job, model))
            if counts is None:
                continue
            [lane], _ = shared.lane_stats(now)
            stats.append((model, dataclasses.replace(lane, requests=counts[0],
                                                     rate_limited=counts[1], tokens=counts[2])))
        return stats, self.disabled


@dataclass(frozen=True)
class ClusterLimits:
    """What a worker actor reaches the cluster's limiters with: the job, the run's models, and per
    endpoint (by key index) its lanes and its actor's handle."""

    job: str
    models: tuple[str, ...]
    lanes: tuple[EndpointLanes, ...]
    handles: tuple[Any, ...]

    def serving(self, model_index: int) -> list[int]:
        """The endpoints (by key index) with a lane for ``model_index``."""
        model = self.models[model_index]
        return [key for key, lanes in enumerate(self.lanes)
                if any(limits.model == model for limits in lanes.models)]


Reconnect = Callable[[EndpointLanes], Any]


class RayLimiter:
    """The LimiterClient of a Ray worker actor (worker ``holder`` of its job): calls to the limiter
    actors of its model's endpoints.

    An endpoint is chosen as the local limiter chooses a key: of those serving the model and not
    disabled, the least loaded (here: by this worker's requests on it) that grants; else the
    shortest wait of all. A grant is handed to the runner with the run's key index and a lane of
    the run's (key * models + model_index), so the runner uses the endpoint's client as it does
    locally. An actor that is gone (the job that started it ended) is found or started again with
    ``reconnect``, given by the backend with the exceptions that mean it (``lost``); a grant of the
    actor gone is not released to the new one.

    Calls whose answer is not needed go without waiting: Ray runs one caller's calls to an actor in
    the order they were made, so a release still comes before that worker's next acquire.
    """

    def __init__(self, limits: ClusterLimits, holder: int, reconnect: Reconnect,
                 lost: tuple[type[BaseException], ...] = ()) -> None:
        self.limits = limits
        self.holder = holder
        self.reconnect = reconnect
        self.lost = lost
        self.handles = list(limits.handles)
        self.epochs = [0] * len(self.handles)
        self.load = [0] * len(self.handles)
        self.disabled: set[int] = set()
        self.serving = [limits.serving(m) for m in range(len(limits.models))]
        # id(the runner's grant) -> (that grant, the actor's own grant, the actor's epoch)
        self.issued: dict[int, tuple[Grant, Grant, int]] = {}

    async def _call(self, key: int, method: str, *args: Any) -> Any:
        """Call an endpoint's actor and wait for the answer; once more after a reconnect if the
        actor was gone."""
        try:
            return await getattr(self.handles[key], method).remote(*args)
        except self.lost:
            handle = self.reconnect(self.limits.lanes[key])
            await handle.join.remote(self.limits.job, self.limits.lanes[key])
            self.handles[key] = handle
            self.epochs[key] += 1
            self.load[key] = 0
            return await getattr(handle, method).remote(*args)

    def _place(self, lane: int) -> tuple[int, str]:
        """The endpoint (key) and the model name of a lane of the run's."""
        key, model_index = divmod(lane, len(self.limits.models))
        return key, self.limits.models[model_index]

    async def try_acquire(self, model_index: int, charge: int) -> Grant | Wait:
        """See LimiterClient."""
        keys = [key for key in self.serving[model_index] if key not in self.disabled]
        keys.sort(key=self.load.__getitem__)
        model = self.limits.models[model_index]
        best: Wait | None = None
        for key in keys:
            got = await self._call(key, "try_acquire", self.limits.job, self.holder, model, charge)
            if got is None:
                self.disabled.add(key)
            elif isinstance(got, Grant):
                self.load[key] += 1
                mine = dataclasses.replace(got, key=key,
                                           lane=key * len(self.limits.models) + model_index)
                self.issued[id(mine)] = (mine, got, self.epochs[key])
                return mine
            elif best is None or got.seconds < best.seconds:
                best = got
        if best is None:
            raise NoKeysLeft()
        return best

    async def sent(self, grant: Grant) -> None:
        """See LimiterClient. Not awaited: the request need not wait for it, and the limiter stamps
        it on arrival, a little after the send, which errs on the safe side."""
        issued = self.issued.get(id(grant))
        if issued is not None and issued[2] == self.epochs[grant.key]:
            key, model = self._place(grant.lane)
            self.handles[key].sent.remote(model, issued[1])

    async def release(self, grant: Grant, ending: Ending = Ending.OK, *, charged: int | None = None,
                      used: int = 0) -> bool:
        """See LimiterClient; waited for only when the answer matters
        (the retry needs to know of an outage)."""
        issued = self.issued.pop(id(grant), None)
        key, model = self._place(grant.lane)
        if issued is None or issued[2] != self.epochs[key]:
            return False  # granted by an actor since gone: the new one never counted it
        self.load[key] -= 1
        args = (self.limits.job, self.holder, model, issued[1], ending, charged, used)
        if ending is not Ending.UNREACHABLE:
            self.handles[key].release.remote(*args)
            return False
        in_outage: bool = await self._call(key, "release", *args)
        return in_outage

    async def rate_limited(self, lane: int, retry_after: float | None) -> None:
        """See LimiterClient."""
        key, model = self._place(lane)
        self.handles[key].rate_limited.remote(self.limits.job, model, retry_after)

    async def observe(self, lane: int, hints: Hints) -> None:
        """See LimiterClient (read where the answer arrived: a reset counts from then)."""
        key, model = self._place(lane)
        self.handles[key].observe.remote(model, hints)

    async def disable_key(self, key: int) -> bool:
        """See LimiterClient."""
        await self._call(key, "disable_key")
        self.disabled.add(key)
        for other in range(len(self.handles)):
            if not await self.key_disabled(other):
                return True
        return False

    async def key_disabled(self, key: int) -> bool:
        """See LimiterClient."""
        if key not in self.disabled and await self._call(key, "key_disabled"):
            self.disabled.add(key)
        return key in self.disabled
