"""The local backend: worker processes forked on this machine,
one pipe each, a shared-memory limiter.

The parent stays single-threaded (tqdm's monitor thread is off), so replacing a dead worker by fork
is safe. Each worker has its own pipe, and the parent knows exactly which tasks each one holds: when
a worker dies, the tasks it held are looked up in the output and the errors file (it may have
written some before dying: an answer counts as done, a failure as failed, neither is sent again in
this run) and the rest are sent to the others. Workers write the output lines themselves, under the
store's lock.
"""

from __future__ import annotations

import gc
import logging
import select
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiprocess

from ..api.prices import PriceTable
from ..api.wire import warm_up
from ..config import RunConfig, Transport
from ..events import (
    Event,
    StopWork,
    TaskDone,
    TaskFailed,
    Work,
    WorkerExit,
    WorkItem,
    decode_events,
    encode,
)
from ..inputs import Task
from ..limits import LaneStats, LimiterSettings, SharedLimiter
from ..slices import RunnerSettings
from ..store.output import OutputPaths, iter_lines, scan, size_of
from ..store.records import failure_view
from .base import Note, Returned, WorkerDied
from .worker import WorkerSettings, worker_main

log = logging.getLogger("mpinfer.run")
# Tasks sent in one write at most: a turn of the driver's loop may hand out thousands, and a task
# given as a Batch API body may carry its images inline.
SEND_BATCH = 64
_READY = select.POLLIN | select.POLLPRI


@dataclass
class _Slot:
    """One worker process and the work it holds (sent, not yet reported)."""

    index: int
    process: Any
    conn: Any
    held: dict[tuple[str, int], Task] = field(default_factory=dict)
    pending: list[Work] = field(default_factory=list)  # held, to be sent at the next flush
    open: bool = True
    stopped: bool = False
    readable: Any = field(init=False, repr=False)  # a select.poll of the pipe alone

    def __post_init__(self) -> None:
        self.readable = select.poll()
        self.readable.register(self.conn.fileno(), _READY)

    def has_message(self) -> bool:
        """Whether the worker's pipe holds a message (or its end: a read then fails)."""
        return bool(self.readable.poll(0))


class LocalBackend:
    """Runs the tasks in ``processes`` forked workers,
    with ``concurrency`` requests in flight each."""

    def __init__(self, config: RunConfig, outputs: list[OutputPaths], run_starts: list[int],
                 log_file: Path | None, prices: PriceTable) -> None:
        self.config = config
        self.outputs = outputs
        self.run_starts = run_starts
        # Where each errors file ends before any worker starts:
        # a failure past it was written in this run.
        self.error_starts = [size_of(paths.errors) for paths in outputs]
        self.log_file = log_file
        self.prices = prices
        self.ctx = multiprocess.get_context("fork")
        # A grant is taken once a request has its slot (those built ahead wait for one without),
        # so a worker holds at most -c; a worker replaced takes its predecessor's index, so there is
        # one holder per worker.
        self.runner_settings = RunnerSettings.of(config)  # what each worker's runner is built from
        ahead = self.runner_settings.built_ahead
        in_flight = config.processes * config.concurrency
        self.limiter = SharedLimiter(LimiterSettings.of(config, max_in_flight=in_flight,
                                                        holders=config.processes))
        self.slots: list[_Slot] = []
        # A worker's tasks, and as many queued.
        self.max_held = max(2, 2 * config.concurrency + ahead)
        # A worker takes more once it has room for half as many as it queues (up to SEND_BATCH):
        # tasks go in fewer, larger writes, and it never runs dry (it tells of its answers at once
        # when fewer are queued: backends/worker.py).
        self.refill = max(1, min(SEND_BATCH, config.concurrency // 2))
        self.unfreeze = False  # whether close() undoes start()'s gc.freeze()

    def lane_stats(self) -> tuple[list[LaneStats], list[bool]]:
        """The shared limiter's counters for every lane, read now."""
        return self.limiter.lane_stats(time.monotonic())

    # -- workers -----------------------------------------------------------------------------------

    def _spawn(self, index: int) -> _Slot:
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        settings = WorkerSettings(self.runner_settings, tuple(self.outputs),
                                  str(self.log_file) if self.log_file else None, index, self.prices,
                                  fsync=self.config.fsync, verbose=self.config.verbose)
        process = self.ctx.Process(target=worker_main, args=(settings, child_end, self.limiter),
                                   name=f"mpinfer-w{index}", daemon=True)
        process.start()
        child_end.close()
        return _Slot(index, process, parent_end)

    def start(self) -> None:
        """Fork the worker processes, after warming up and freezing what the parent holds."""
        # Once here rather than once in every forked worker; a CA bundle only for an https endpoint,
        # the SDK only for the transport that sends through it.
        warm_up(tls=any(not (e.base_url or "https:").startswith("http:")
                        for e in self.runner_settings.endpoints))
        if self.config.transport is Transport.HTTPX:
            from ..api.client import warm_up as sdk_warm_up

            sdk_warm_up()
        # A Python caller's own gc.freeze() is theirs to undo
        self.unfreeze = gc.get_freeze_count() == 0
        # The forked children need not copy-on-write the parent's id sets when they collect
        gc.freeze()
        for index in range(self.config.processes):
            self.slots.append(self._spawn(index))
        log.info("started %d workers, %d requests in flight each", self.config.processes,
                 self.config.concurrency)

    def replace(self, worker: int) -> None:
        """Fork a new worker process in slot ``worker`` of a dead one."""
        self.slots.append(self._spawn(worker))

    def _send(self, slot: _Slot, message: bytes) -> bool:
        try:
            slot.conn.send_bytes(message)
            return True
        except OSError:
            slot.open = False
            return False

    def _takers(self) -> list[_Slot]:
        # A worker being filled this turn (tasks pending) is filled up; one filled up takes more
        # once it has room for ``refill``.
        most = self.max_held - self.refill
        return [s for s in self.slots if s.open and not s.stopped and len(s.held) < self.max_held
                and (len(s.held) <= most or s.pending)]

    def room(self) -> int:
        """How many more tasks the workers taking work may hold."""
        return sum(self.max_held - len(s.held) for s in self._takers())

    def in_flight(self) -> int:
        """The tasks the workers hold, sent but not settled."""
        return sum(len(s.held) for s in self.slots)

    def submit(self, item: WorkItem) -> bool:
        """Give the task to the least busy worker taking work (sent with the next batch of
        messages); False when none takes any."""
        takers = self._takers()
        if not takers:
            return False
        slot = min(takers, key=lambda s: len(s.held))  # the least busy worker
        task, output_index = item
        slot.held[(task.id, output_index)] = task
        slot.pending.append(Work(task, output_index))
        if len(slot.pending) >= SEND_BATCH:
            self._flush(slot)
        return True

    def _flush(self, slot: _Slot) -> None:
        """Send the tasks submitted to ``slot`` since the last flush, in one write. If the worker is
        gone they stay held, and its death settles them with the rest of what it held."""
        if slot.pending:
            works, slot.pending = slot.pending, []
            if slot.open:
                self._send(slot, encode(*works))

    def stop(self) -> None:
        """Send what is pending, then StopWork to each worker not told yet."""
        for slot in self.slots:
            self._flush(slot)
            if slot.open and not slot.stopped:
                slot.stopped = True
                self._send(slot, encode(StopWork()))

    def idle(self) -> bool:
        """Whether every worker has exited."""
        return not self.slots

    # -- events ------------------------------------------------------------------------------------

    def _drain(self, slot: _Slot) -> list[Note]:
        notes: list[Note] = []
        try:
            while slot.has_message():
                for event in decode_events(slot.conn.recv_bytes()):
                    if isinstance(event, WorkerExit):
                        slot.stopped = True
                        continue
                    if isinstance(event, (TaskDone, TaskFailed)):
                        slot.held.pop((event.id, event.output_index), None)
                    notes.append(event)
        except (EOFError, OSError):
            slot.open = False
        return notes

    def poll(self, timeout_s: float) -> list[Note]:
        """Send what is pending, wait on the pipes and the process sentinels, and return the
        events of those ready and the notes of those that died."""
        for slot in self.slots:
            self._flush(slot)
        # (select.poll directly: multiprocess's wait builds a selector each time, once an answer)
        poller = select.poll()
        for slot in self.slots:
            if slot.open:
                poller.register(slot.conn.fileno(), _READY)
            poller.register(slot.process.sentinel, _READY)
        ready = {fd for fd, _ in poller.poll(max(0, round(timeout_s * 1000)))}
        notes: list[Note] = []
        for slot in list(self.slots):
            if slot.open and slot.conn.fileno() in ready:
                notes += self._drain(slot)
            if slot.process.sentinel in ready:
                notes += self._on_death(slot)
        return notes

    def _settled_unreported(
            self, held: dict[tuple[str, int], Task]) -> tuple[set[tuple[str, int]], list[Event]]:
        """Of the tasks a dead worker held, those it wrote before dying:
        answers, and failures (as events)."""
        written: set[tuple[str, int]] = set()
        failures: list[Event] = []
        for m in {output_index for _, output_index in held}:
            written |= {(task_id, m)
                        for task_id in scan(self.outputs[m].output, self.run_starts[m]).ids}
            for _, _, obj in iter_lines(self.outputs[m].errors, self.error_starts[m]):
                failure = failure_view(obj)
                if failure is None:
                    continue
                key = (failure.id, m)
                if key in held and key not in written:
                    written.add(key)
                    failures.append(TaskFailed(failure.id, m, failure.error_type, failure.status,
                                               failure.message, failure.attempts,
                                               failure.retries or {}))
        return written, failures

    def _on_death(self, slot: _Slot) -> list[Note]:
        """A worker is gone: what it held is settled from the files, or sent again."""
        slot.process.join(timeout=1)
        notes = self._drain(slot)
        slot.open = False
        slot.conn.close()
        self.slots.remove(slot)
        code = slot.process.exitcode
        expected = slot.stopped and code == 0
        # What it had in flight is given back to the limiter before its slot is used again.
        reclaimed = self.limiter.reclaim(slot.index)
        if reclaimed and not expected:
            log.info("worker %d held %d limiter slots: given back", slot.index, reclaimed)
        if slot.held:
            written, failures = self._settled_unreported(slot.held)
            lost: list[WorkItem] = [(task, key[1]) for key, task in slot.held.items()
                                    if key not in written]
            notes += failures
            notes.append(Returned(tuple(lost),
                                  recovered=len(slot.held) - len(lost) - len(failures)))
            if not expected:
                log.warning("worker %d (pid %s) died (exit code %s) holding %d tasks: "
                            "%d were written, %d sent again", slot.index, slot.process.pid, code,
                            len(slot.held), len(slot.held) - len(lost), len(lost))
        notes.append(WorkerDied(slot.index, expected))
        return notes

    def kill(self) -> list[Note]:
        """SIGKILL every worker, then read what their pipes still hold."""
        notes: list[Note] = []
        for slot in self.slots:
            if slot.process.is_alive():
                slot.process.kill()
        for slot in self.slots:
            slot.process.join(timeout=5)
            notes += self._drain(slot)
            slot.conn.close()
        self.slots.clear()
        return notes

    def close(self) -> None:
        """Kill what is left, leave the lanes shared with other runs, and undo the parent's
        gc.freeze() if this backend made it."""
        self.kill()
        self.limiter.close()
        if self.unfreeze:
            # The workers are gone: the caller's objects (a notebook's) are collectable again
            gc.unfreeze()
