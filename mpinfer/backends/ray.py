"""The Ray backend: the same tasks run by actors spread over a Ray cluster (``--backend ray``).

What holds as in the local backend, and how:
- The driver (this process) reads the output, sends only what is not done, and is the only writer of the
  output files: an actor returns the line to write and the driver appends it under the store's lock. A
  node that dies can lose nothing that was written, and the tasks its actors held are sent again.
- The rate limits hold for the cluster as a whole: one limiter actor, on the driver's node, owns the
  windows (the same SharedLimiter code, with its own clock) and every worker actor asks it before each
  request.
- Lines have the same format, so status, validate, export and resume do not care which backend wrote them.

Each worker actor is a TaskRunner with ``concurrency`` requests in flight; the driver keeps exactly that
many tasks outstanding on each. Actors take half a CPU each for placement: they mostly wait on the network.
On a real cluster every node needs mpinfer installed (``pip install mpinfer[ray]``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, cast

from ..api.hints import RATE_HEADERS
from ..api.prices import PriceTable
from ..api.ratelimit import Ending, Grant, LaneStats, SharedLimiter, Wait
from ..driver import RunState, WorkItem
from ..errors import ConfigError, NoKeysLeft, OutputError
from ..events import Event, Fatal, Stopped, StopReason
from ..inputs.tasks import Task
from ..store.output import Appender, OutputPaths
from .runner import TaskRunner

try:
    import ray
    from ray.exceptions import RayActorError, RayTaskError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError:  # pragma: no cover - the message is the point
    raise ConfigError("--backend ray needs Ray: pip install 'mpinfer[ray]' (on every node of the cluster)") from None

log = logging.getLogger("mpinfer.run")

POLL_S = 0.25
STOP_JOIN_S = 10.0
ACTOR_CPUS = 0.5


class _Limiter:
    """The cluster's one limiter: a SharedLimiter in this actor's memory, on this actor's clock."""

    def __init__(self, n_keys: int, n_models: int, rpm: int | None, tpm: int | None, window_s: float,
                 max_in_flight: int) -> None:
        import multiprocess

        self.shared = SharedLimiter.create(multiprocess.get_context("fork"), n_keys, n_models, rpm, tpm,
                                           window_s, max_in_flight=max_in_flight)

    def try_acquire(self, model: int, charge: int) -> Grant | Wait | None:
        try:
            return self.shared.try_acquire(model, charge, time.monotonic())
        except NoKeysLeft:
            return None

    def sent(self, grant: Grant) -> None:
        self.shared.sent(grant, time.monotonic())

    def release(self, grant: Grant, ending: Ending, charged: int | None, used: int) -> bool:
        return self.shared.release(grant, time.monotonic(), ending, charged=charged, used=used)

    def rate_limited(self, lane: int, retry_after: float | None) -> None:
        self.shared.rate_limited(lane, time.monotonic(), retry_after)

    def observe_headers(self, lane: int, headers: dict[str, str]) -> None:
        self.shared.observe_headers(lane, headers, time.monotonic())

    def disable_key(self, key: int) -> bool:
        return self.shared.disable_key(key)

    def key_disabled(self, key: int) -> bool:
        return self.shared.key_disabled(key)

    def lanes(self) -> tuple[list[LaneStats], list[bool]]:
        keys = range(self.shared.n_keys)
        return self.shared.lane_stats(time.monotonic()), [self.shared.key_disabled(k) for k in keys]


class RayLimiter:
    """The LimiterClient of a worker actor: calls to the limiter actor.

    Calls whose answer is not needed go without waiting: Ray runs one caller's calls to an actor in the
    order they were made, so a release still comes before that worker's next acquire.
    """

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def try_acquire(self, model: int, charge: int) -> Grant | Wait:
        got: Grant | Wait | None = await self.handle.try_acquire.remote(model, charge)
        if got is None:
            raise NoKeysLeft()
        return got

    async def sent(self, grant: Grant) -> None:
        # Not awaited: the request need not wait for it, and the limiter stamps it on arrival, a little
        # after the send, which errs on the safe side.
        self.handle.sent.remote(grant)

    async def release(self, grant: Grant, ending: Ending = Ending.OK, *, charged: int | None = None,
                      used: int = 0) -> bool:
        if ending is not Ending.UNREACHABLE:
            self.handle.release.remote(grant, ending, charged, used)
            return False
        in_outage: bool = await self.handle.release.remote(grant, ending, charged, used)  # the retry needs it
        return in_outage

    async def rate_limited(self, lane: int, retry_after: float | None) -> None:
        self.handle.rate_limited.remote(lane, retry_after)

    async def observe_headers(self, lane: int, headers: Any) -> None:
        if headers is None:
            return
        found = {name: headers.get(name) for name in RATE_HEADERS if headers.get(name) is not None}
        if found:
            self.handle.observe_headers.remote(lane, found)

    async def disable_key(self, key: int) -> bool:
        left: bool = await self.handle.disable_key.remote(key)
        return left

    async def key_disabled(self, key: int) -> bool:
        disabled: bool = await self.handle.key_disabled.remote(key)
        return disabled


class _Worker:
    """A worker actor: a TaskRunner whose outcomes go back to the driver instead of into files."""

    def __init__(self, config: Any, prices: PriceTable, limiter: Any) -> None:
        self.runner = TaskRunner(config, prices, RayLimiter(limiter))

    async def process(self, task: Task, model: int) -> tuple[list[Event], Any, Any, bool]:
        outcome = await self.runner.run(task, model)
        notices = self.runner.take_notices()
        if outcome is None:
            return notices, None, None, False
        return notices, outcome.events, outcome.line, outcome.to_errors

    async def stop(self) -> None:
        self.runner.stopping = True

    async def close(self) -> None:
        await self.runner.close()


class RayBackend:
    """Runs the tasks on ``processes`` worker actors of a Ray cluster; this process writes every line."""

    def __init__(self, state: RunState, outputs: list[OutputPaths], prices: PriceTable, grace_s: float) -> None:
        self.state = state
        self.config = config = state.config
        self.outputs = outputs
        self.prices = prices
        self.grace_s = grace_s
        self.appenders = [Appender(paths, fsync=config.fsync) for paths in outputs]
        ray.init(address=config.ray_address or None, ignore_reinit_error=True, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        # The limiter lives on the driver's own node: a worker node may die, and the run goes on without it.
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
        # .options() rather than ray.remote(**options): Ray types only the latter's function options.
        self.limiter: Any = ray.remote(_Limiter).options(num_cpus=0, scheduling_strategy=here).remote(
            len(config.require_api_keys()), len(config.models), config.rpm, config.tpm, config.rate_window,
            config.processes * config.concurrency)
        self.worker_class = ray.remote(_Worker).options(num_cpus=ACTOR_CPUS, max_concurrency=config.concurrency + 4)
        self.actors: dict[int, Any] = {}
        self.outstanding: dict[int, int] = {}
        self.pending: dict[Any, tuple[int, WorkItem]] = {}
        self.respawns_left = 3 * config.processes
        self.stop_deadline: float | None = None
        state.lanes = lambda: ray.get(self.limiter.lanes.remote(), timeout=10)

    def _spawn(self, index: int) -> None:
        self.actors[index] = self.worker_class.remote(self.config, self.prices, self.limiter)
        self.outstanding[index] = 0

    def start(self) -> None:
        for index in range(self.config.processes):
            self._spawn(index)
        listed = cast("Callable[[], list[dict[str, Any]]]", ray.nodes)()  # ray.nodes has no annotations
        nodes = sum(1 for node in listed if node.get("Alive"))
        log.info("ray: %d worker actors, %d requests in flight each, on a cluster of %d nodes",
                 self.config.processes, self.config.concurrency, nodes)

    def _top_up(self) -> None:
        for index, actor in list(self.actors.items()):
            while self.outstanding[index] < self.config.concurrency:
                item = self.state.next_item(len(self.pending))
                if item is None:
                    return
                task, model = item
                self.pending[actor.process.remote(task, model)] = (index, item)
                self.outstanding[index] += 1

    def _stop_all(self, reason: Stopped | None) -> None:
        self.state.stop(reason)
        for actor in self.actors.values():
            actor.stop.remote()

    def _on_ready(self, ref: Any) -> None:
        index, item = self.pending.pop(ref)
        self.outstanding[index] = max(0, self.outstanding.get(index, 0) - 1)
        try:
            notices, events, line, to_errors = ray.get(ref)
        except RayActorError:
            self._on_death(index, item)
            return
        except RayTaskError as exc:  # a bug in the runner: stop rather than lose track
            log.error("a worker actor failed: %s", exc)
            self.state.fail_run(Stopped(StopReason.FATAL, f"worker actor failed: {type(exc).__name__}"))
            self._stop_all(None)
            return
        for notice in notices:
            self.state.on_event(notice)
        if events is None:
            return
        if line is not None:
            task, model = item
            paths = self.outputs[model]
            try:
                self.appenders[model].append(paths.errors if to_errors else paths.output, line)
            except OutputError as exc:
                self.state.on_event(Fatal(str(exc), task.id, model))
                self._stop_all(None)
                return
        for event in events:
            self.state.on_event(event)

    def _on_death(self, index: int, item: WorkItem) -> None:
        """An actor (or its node) is gone: its unanswered tasks go again; nothing it did was written."""
        self.state.give_back([item])
        if index not in self.actors:
            return
        del self.actors[index]
        self.state.summary.worker_deaths += 1
        log.warning("ray worker actor %d died (its node may be gone); its tasks are sent again", index)
        if self.state.stop_reason is None and self.respawns_left > 0:
            self.respawns_left -= 1
            self._spawn(index)

    def loop(self) -> None:
        handled = 0
        state = self.state
        while True:
            if state.signals > handled:
                handled = state.signals
                if handled > 1:
                    log.warning("quitting at once: requests in flight are dropped and sent again on rerun")
                    return
                log.warning("stopping: finishing the requests in flight (up to %.0fs); interrupt again to "
                            "quit at once", self.grace_s)
                self._stop_all(Stopped(StopReason.INTERRUPTED))
                self.stop_deadline = time.monotonic() + self.grace_s
            if state.feeding:
                self._top_up()
            if state.stop_reason is not None and self.stop_deadline is None:
                self._stop_all(None)
                self.stop_deadline = time.monotonic() + max(self.grace_s, STOP_JOIN_S)
            if not self.pending and (not state.feeding or not self.actors):
                return
            now = time.monotonic()
            if self.stop_deadline is not None and now > self.stop_deadline:
                log.warning("worker actors did not finish in time; leaving them")
                return
            state.save_summary(live=True, now=now)
            refs = list(self.pending)
            ready, rest = ray.wait(refs, num_returns=1, timeout=POLL_S)
            if rest and ready:
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                ready += more
            for ref in ready:
                self._on_ready(ref)

    def close(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor)
        ray.kill(self.limiter)
        for appender in self.appenders:
            appender.close()
        ray.shutdown()
