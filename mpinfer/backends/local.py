"""The local backend: worker processes forked on this machine, one pipe each, a shared-memory limiter.

The parent stays single-threaded (tqdm's monitor thread is off), so replacing a dead worker by fork is safe.
Each worker has its own pipe, and the parent knows exactly which tasks each one holds: when a worker dies,
the tasks it held are looked up in the output (it may have written some before dying) and the rest are
sent to the others. Workers write the output lines themselves, under the store's lock.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiprocess
from multiprocess.connection import wait

from ..api.client import warm_up
from ..api.prices import PriceTable
from ..api.ratelimit import SharedLimiter
from ..driver import RunState, WorkItem
from ..events import Stopped, StopReason, StopWork, Work, WorkerExit, decode_event, encode
from ..inputs.tasks import Task
from ..store.output import OutputPaths, scan
from .worker import WorkerSettings, worker_main

log = logging.getLogger("mpinfer.run")

POLL_S = 0.25
STOP_JOIN_S = 10.0


@dataclass
class _Slot:
    """One worker process and the work it holds (sent, not yet reported)."""

    index: int
    process: Any
    conn: Any
    held: dict[tuple[str, int], Task] = field(default_factory=dict)
    open: bool = True
    stopped: bool = False


class LocalBackend:
    """Runs the tasks in ``processes`` forked workers with ``concurrency`` requests in flight each."""

    def __init__(self, state: RunState, outputs: list[OutputPaths], run_starts: list[int], log_file: Path | None,
                 prices: PriceTable, grace_s: float) -> None:
        self.state = state
        self.config = state.config
        self.outputs = outputs
        self.run_starts = run_starts
        self.log_file = log_file
        self.prices = prices
        self.grace_s = grace_s
        self.ctx = multiprocess.get_context("fork")
        config = self.config
        self.limiter = SharedLimiter.create(self.ctx, len(config.require_api_keys()), len(config.models),
                                            config.rpm, config.tpm, config.rate_window,
                                            max_in_flight=config.processes * config.concurrency,
                                            holders=config.processes, burst_s=config.burst)
        state.lanes = self._lanes
        self.slots: list[_Slot] = []
        self.stop_deadline: float | None = None
        self.max_held = max(2, 2 * config.concurrency)
        self.respawns_left = 3 * config.processes
        self.unfreeze = False  # whether close() undoes start()'s gc.freeze()

    def _lanes(self) -> tuple[list[Any], list[bool]]:
        keys = range(self.limiter.n_keys)
        return self.limiter.lane_stats(time.monotonic()), [self.limiter.key_disabled(k) for k in keys]

    # -- workers -----------------------------------------------------------------------------------

    def _spawn(self, index: int) -> _Slot:
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        settings = WorkerSettings(self.config, tuple(self.outputs), str(self.log_file) if self.log_file else None,
                                  index, self.prices)
        process = self.ctx.Process(target=worker_main, args=(settings, child_end, self.limiter),
                                   name=f"mpinfer-w{index}", daemon=True)
        process.start()
        child_end.close()
        return _Slot(index, process, parent_end)

    def start(self) -> None:
        warm_up()  # once here rather than once in every forked worker
        self.unfreeze = gc.get_freeze_count() == 0  # a Python caller's own gc.freeze() is theirs to undo
        gc.freeze()  # the forked children need not copy-on-write the parent's id sets when they collect
        for index in range(self.config.processes):
            self.slots.append(self._spawn(index))
        log.info("started %d workers, %d requests in flight each", self.config.processes,
                 self.config.concurrency)

    def _send(self, slot: _Slot, message: bytes) -> bool:
        try:
            slot.conn.send_bytes(message)
            return True
        except OSError:
            slot.open = False
            return False

    def _top_up(self) -> None:
        for slot in sorted(self.slots, key=lambda s: len(s.held)):
            while slot.open and not slot.stopped and len(slot.held) < self.max_held:
                item = self.state.next_item(sum(len(s.held) for s in self.slots))
                if item is None:
                    return
                task, model = item
                if not self._send(slot, encode(Work(task, model))):
                    self.state.give_back([item])
                    break
                slot.held[(task.id, model)] = task

    def _stop_all(self, reason: Stopped | None) -> None:
        self.state.stop(reason)
        for slot in self.slots:
            if slot.open and not slot.stopped:
                slot.stopped = True
                self._send(slot, encode(StopWork()))

    # -- events ------------------------------------------------------------------------------------

    def _drain(self, slot: _Slot) -> None:
        try:
            while slot.conn.poll():
                event = decode_event(slot.conn.recv_bytes())
                if isinstance(event, WorkerExit):
                    slot.stopped = True
                    continue
                settled = self.state.on_event(event)
                if settled is not None:
                    slot.held.pop(settled, None)
        except (EOFError, OSError):
            slot.open = False

    def _written_since_start(self, held: dict[tuple[str, int], Task]) -> set[tuple[str, int]]:
        models = {model for _, model in held}
        return {(task_id, m) for m in models for task_id in scan(self.outputs[m].output, self.run_starts[m]).ids}

    def _on_death(self, slot: _Slot) -> None:
        """A worker is gone: recover what it held, and replace it if the run goes on."""
        slot.process.join(timeout=1)
        self._drain(slot)
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
            written = self._written_since_start(slot.held)
            lost: list[WorkItem] = [(task, m) for (task_id, m), task in slot.held.items()
                                    if (task_id, m) not in written]
            self.state.recovered(len(slot.held) - len(lost))
            self.state.give_back(lost)
            if not expected:
                log.warning("worker %d (pid %s) died (exit code %s) holding %d tasks: %d were written, %d "
                            "sent again", slot.index, slot.process.pid, code, len(slot.held),
                            len(slot.held) - len(lost), len(lost))
        if expected:
            return
        self.state.summary.worker_deaths += 1
        if self.state.stop_reason is not None:
            return
        if self.respawns_left <= 0:
            self._stop_all(Stopped(StopReason.WORKERS_DYING, "workers keep dying; see the log"))
            return
        self.respawns_left -= 1
        self.slots.append(self._spawn(slot.index))

    # -- the loop ----------------------------------------------------------------------------------

    def loop(self) -> None:
        handled = 0
        state = self.state
        while self.slots:
            if state.signals > handled:
                handled = state.signals
                if handled == 1:
                    log.warning("stopping: finishing the requests in flight (up to %.0fs); "
                                "interrupt again to quit at once", self.grace_s)
                    self._stop_all(Stopped(StopReason.INTERRUPTED))
                    self.stop_deadline = time.monotonic() + self.grace_s
                else:
                    log.warning("quitting at once: requests in flight are dropped and sent again on rerun")
                    self._kill_all()
                    return
            if state.feeding:
                self._top_up()
            if not state.feeding and not any(s.held for s in self.slots):
                self._stop_all(None)  # all work is done, or all the budget allows
            if state.stop_reason is not None and not state.feeding:
                self._stop_all(None)
            if self.stop_deadline is None and any(s.stopped for s in self.slots):
                self.stop_deadline = time.monotonic() + max(self.grace_s, STOP_JOIN_S)
            now = time.monotonic()
            if self.stop_deadline is not None and now > self.stop_deadline:
                log.warning("workers did not finish in time; stopping them")
                self._kill_all()
                return
            state.save_summary(live=True, now=now)
            waitables: list[Any] = [s.conn for s in self.slots if s.open]
            waitables += [s.process.sentinel for s in self.slots]
            ready = set(wait(waitables, timeout=POLL_S))
            for slot in list(self.slots):
                if slot.open and slot.conn in ready:
                    self._drain(slot)
                if slot.process.sentinel in ready:
                    self._on_death(slot)

    def _kill_all(self) -> None:
        for slot in self.slots:
            if slot.process.is_alive():
                slot.process.kill()
        for slot in self.slots:
            slot.process.join(timeout=5)
            self._drain(slot)
            slot.conn.close()
        self.slots.clear()

    def close(self) -> None:
        self._kill_all()
        if self.unfreeze:
            gc.unfreeze()  # the workers are gone: the caller's objects (a notebook's) are collectable again
