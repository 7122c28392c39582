"""The Ray backend: the same tasks run by actors spread over a Ray cluster (``--backend ray``).

What holds as in the local backend, and how:
- The driver (this process) reads the output, sends only what is not done, and is the only writer of
  the output files: an actor returns the line to write and the driver appends it under the store's
  lock. A node that dies can lose nothing that was written, and the tasks its actors held are sent
  again.
- The rate limits hold for the cluster as a whole, and for every job on it: each endpoint (a key at
  a base URL) has one named limiter actor (mpinfer.limits' LimiterActor: a lane per model, each the
  same SharedLimiter, on its own clock), found by its name or started on the driver's node; every
  worker actor asks its model's endpoints before each request, as a local worker asks the shared
  limiter (the endpoints table and per-model --rpm/--tpm included). The actor is detached: it
  outlives the job that started it while others use it, and the last job to leave ends it (a job
  that finds it gone starts it again).
- Lines have the same format, so status, validate, export and resume do not care which backend
  wrote them.

Each worker actor is a TaskRunner with ``concurrency`` requests in flight; the driver keeps exactly
that many tasks outstanding on each. Actors take half a CPU each for placement: they mostly wait on
the network. On a real cluster every node needs mpinfer installed (``pip install mpinfer[ray]``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from ..api.endpoints import endpoints_of
from ..api.prices import PriceTable
from ..config import RunConfig
from ..errors import ConfigError
from ..events import Event, Fatal, WorkItem
from ..inputs import Task
from ..limits import (
    NAMESPACE,
    ClusterLimits,
    EndpointLanes,
    LaneStats,
    LimiterActor,
    LimiterSettings,
    RayLimiter,
    cluster_lanes,
)
from ..slices import RunnerSettings
from ..store.output import OutputPaths
from .base import Note, OutcomeWriter, Returned, WorkerDied
from .runner import Outcome, TaskRunner

try:
    import ray
    from ray.exceptions import RayActorError, RayTaskError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError:  # pragma: no cover - the message is the point
    raise ConfigError("--backend ray needs Ray: pip install 'mpinfer[ray]' "
                      "(on every node of the cluster)") from None

log = logging.getLogger("mpinfer.run")

ACTOR_CPUS = 0.5
LANES_WAIT_S = 1.0


def limiter_actor(lanes: EndpointLanes, here: Any = None) -> Any:
    """The handle of an endpoint's limiter actor: the one of that name on the cluster, or a new one
    (placed ``here`` if given). Detached: it outlives the job that started it while other jobs use
    it, and the last job to leave ends it."""
    options: dict[str, Any] = {"name": lanes.name, "namespace": NAMESPACE, "get_if_exists": True,
                               "lifetime": "detached", "num_cpus": 0}
    if here is not None:
        options["scheduling_strategy"] = here
    # .options() rather than ray.remote(**options): Ray types only the latter's function options.
    return ray.remote(LimiterActor).options(**options).remote()


class _Worker:
    """A worker actor: a TaskRunner whose outcomes go back to the driver instead of into files."""

    def __init__(self, settings: RunnerSettings, prices: PriceTable, limits: ClusterLimits,
                 number: int) -> None:
        limiter = RayLimiter(limits, number, limiter_actor, (RayActorError,))
        self.runner = TaskRunner(settings, prices, limiter)

    async def process(self, task: Task, output_index: int) -> tuple[list[Event], Outcome | None]:
        outcome = await self.runner.run(task, output_index)
        return self.runner.take_notices(), outcome

    async def stop(self) -> None:
        self.runner.stop()

    async def close(self) -> None:
        await self.runner.close()


class RayBackend:
    """Runs the tasks on ``processes`` worker actors of a Ray cluster;
    this process writes every line.

    Actors are known by a number of their own, never reused: a dead actor's calls fail one by one,
    and each must be told from a call to its replacement (one death, one replacement, its tasks sent
    again once).
    """

    def __init__(self, config: RunConfig, outputs: list[OutputPaths], prices: PriceTable) -> None:
        self.config = config
        self.prices = prices
        self.runner_settings = RunnerSettings.of(config)  # what each actor's runner is built from
        self.writer = OutcomeWriter(tuple(outputs), config.fsync)
        # A session the caller (a notebook) began is theirs to end
        self.owns_ray = not ray.is_initialized()
        ray.init(address=config.ray_address or None, ignore_reinit_error=True,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
        # A limiter actor this job starts lives on the driver's own node:
        # a worker node may die, and the run goes on without it.
        self.here = NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=True)
        # The run's limiter settings, split into its endpoints' actors; the job's name keeps its
        # holders and counts apart from other jobs' in an actor they share.
        settings = LimiterSettings.of(config, max_in_flight=config.processes * config.concurrency,
                                      holders=1)
        self.job = uuid.uuid4().hex[:12]
        lanes = cluster_lanes(settings, endpoints_of(config), config.models)
        self.limits = ClusterLimits(self.job, tuple(config.models), lanes, ())
        try:
            joined = self._connect()
        except RayActorError:  # the last job using an actor ended it as this one joined
            joined = self._connect()
        shared = sorted({job for jobs in joined for job in jobs} - {self.job})
        if shared:
            log.info("ray: the limiters are shared with %d other job(s) on this cluster",
                     len(shared))
        self.worker_class = ray.remote(_Worker).options(num_cpus=ACTOR_CPUS,
                                                        max_concurrency=config.concurrency + 4)
        self.actors: dict[int, Any] = {}       # live actors by number
        self.outstanding: dict[int, int] = {}  # calls in flight on each live actor
        self.stopped: set[int] = set()         # live actors told to stop
        self.pending: dict[Any, tuple[int, WorkItem]] = {}  # call -> (actor number, task)
        self.numbers = itertools.count()
        self._lanes: tuple[list[LaneStats], list[bool]] = ([], [False] * len(lanes))
        self._lanes_refs: list[Any] | None = None
        self._carried: dict[tuple[int, int], LaneStats] = {}  # counts of actors gone, per lane

    def lane_stats(self) -> tuple[list[LaneStats], list[bool]]:
        """This job's counters on its endpoints' limiter actors (its own requests, 429s and tokens;
        the limits in force, shared), or the last ones while an actor is slow to answer.

        A report must not hold up the run, nor end it: on a loaded machine an actor may take
        seconds to start."""
        refs = self._lanes_refs or [h.lane_stats.remote(self.job) for h in self.limits.handles]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=LANES_WAIT_S)
        if len(ready) < len(refs):
            self._lanes_refs = refs
            return self._lanes
        self._lanes_refs = None
        try:
            answers = ray.get(refs)
        except RayActorError:  # an actor's job ended: this job starts (or finds) it again
            self._reconnect()
            return self._lanes
        where = {model: index for index, model in reversed(list(enumerate(self.config.models)))}
        lanes = []
        for key, (stats, _) in enumerate(answers):
            for model, lane in stats:
                before = self._carried.get((key, where[model]))
                if before is not None:  # counted by an actor since gone
                    lane = dataclasses.replace(lane, requests=lane.requests + before.requests,
                                               rate_limited=lane.rate_limited + before.rate_limited,
                                               tokens=lane.tokens + before.tokens)
                lanes.append(dataclasses.replace(lane, key=key, model_index=where[model]))
        self._lanes = (lanes, [disabled for _, disabled in answers])
        return self._lanes

    def _connect(self) -> list[list[str]]:
        """Find or start every endpoint's limiter actor and join it; the jobs using each."""
        handles = [limiter_actor(lanes, self.here) for lanes in self.limits.lanes]
        joined: list[list[str]] = ray.get([h.join.remote(self.job, lanes) for h, lanes
                                           in zip(handles, self.limits.lanes, strict=True)])
        self.limits = dataclasses.replace(self.limits, handles=tuple(handles))
        return joined

    def _reconnect(self) -> None:
        """An actor is gone: connect again, for the worker actors started from now on and the
        counters, which keep what the actors gone had counted (a summary never goes back)."""
        self._carried = {(lane.key, lane.model_index): lane for lane in self._lanes[0]}
        self._connect()

    def _spawn(self) -> None:
        number = next(self.numbers)
        self.actors[number] = self.worker_class.remote(self.runner_settings, self.prices,
                                                       self.limits, number)
        self.outstanding[number] = 0

    def start(self) -> None:
        """Start the worker actors, and log the cluster's size."""
        for _ in range(self.config.processes):
            self._spawn()
        # ray.nodes has no annotations
        listed = cast("Callable[[], list[dict[str, Any]]]", ray.nodes)()
        nodes = sum(1 for node in listed if node.get("Alive"))
        log.info("ray: %d worker actors, %d requests in flight each, on a cluster of %d nodes",
                 self.config.processes, self.config.concurrency, nodes)

    def replace(self, worker: int) -> None:
        """Start a new actor (actor numbers are never reused)."""
        self._spawn()

    def _takers(self) -> list[int]:
        return [n for n in self.actors
                if n not in self.stopped and self.outstanding[n] < self.config.concurrency]

    def room(self) -> int:
        """How many more calls the actors taking work may hold (``concurrency`` each)."""
        return sum(self.config.concurrency - self.outstanding[n] for n in self._takers())

    def in_flight(self) -> int:
        """The calls made and not answered yet."""
        return len(self.pending)

    def submit(self, item: WorkItem) -> bool:
        """Call the least busy actor taking work; False when none takes any."""
        takers = self._takers()
        if not takers:
            return False
        number = min(takers, key=self.outstanding.__getitem__)
        task, output_index = item
        self.pending[self.actors[number].process.remote(task, output_index)] = (number, item)
        self.outstanding[number] += 1
        return True

    def stop(self) -> None:
        """Tell each actor not told yet to stop (its calls in flight still answer)."""
        for number, actor in self.actors.items():
            if number not in self.stopped:
                self.stopped.add(number)
                actor.stop.remote()

    def idle(self) -> bool:
        """Whether every call has been answered."""
        return not self.pending

    def poll(self, timeout_s: float) -> list[Note]:
        """Wait up to ``timeout_s`` for answers; write their lines and return their events."""
        if not self.pending:
            time.sleep(timeout_s)
            return []
        refs = list(self.pending)
        ready, rest = ray.wait(refs, num_returns=1, timeout=timeout_s)
        if rest and ready:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        notes: list[Note] = []
        for ref in ready:
            notes += self._on_ready(ref)
        return notes

    def _on_ready(self, ref: Any) -> list[Note]:
        number, item = self.pending.pop(ref)
        if number in self.outstanding:
            self.outstanding[number] -= 1
        try:
            notices, outcome = ray.get(ref)
        except RayActorError:
            return self._on_death(number, item)
        except RayTaskError as exc:  # a bug in the runner: stop rather than lose track
            log.error("a worker actor failed: %s", exc)
            return [Fatal(f"worker actor failed: {type(exc).__name__}")]
        notes: list[Note] = list(notices)
        if outcome is not None:
            task, output_index = item
            notes += self.writer.write(task.id, output_index, outcome)
        return notes

    def _on_death(self, number: int, item: WorkItem) -> list[Note]:
        """A call failed because its actor (or its node) is gone:
        the task goes again; nothing was written.

        Every call in flight on a dead actor fails; only the first reports the death.
        """
        notes: list[Note] = [Returned((item,))]
        if number in self.actors:
            del self.actors[number], self.outstanding[number]
            self.stopped.discard(number)
            for handle in self.limits.handles:
                handle.reclaim.remote(self.job, number)
            log.warning("ray worker actor %d died (its node may be gone); its tasks are sent again",
                        number)
            notes.append(WorkerDied(number))
        return notes

    def kill(self) -> list[Note]:
        """Kill every actor; calls in flight are dropped and their tasks are not done."""
        for actor in self.actors.values():
            ray.kill(actor)
        self.actors.clear()
        self.pending.clear()
        return []

    def close(self) -> None:
        """Kill the actors, leave the limiter actors (other jobs may share them: they live as long
        as the job that started them), close the writer, and shut Ray down if this backend
        started it."""
        self.kill()
        left = [h.leave.remote(self.job) for h in self.limits.handles]
        ready, _ = ray.wait(left, num_returns=len(left), timeout=LANES_WAIT_S)
        for handle, ref in zip(self.limits.handles, left, strict=True):
            try:
                if ref in ready and ray.get(ref) == 0:  # no other job uses it: end it
                    ray.kill(handle)
            except RayActorError:
                pass  # gone already
        self.writer.close()
        if self.owns_ray:
            ray.shutdown()
