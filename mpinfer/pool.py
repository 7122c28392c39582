"""The parent side of a run: check, lock, repair, scan, feed the workers, supervise them, summarise.

The parent stays single-threaded (tqdm's monitor thread is off), so replacing a dead worker by fork is safe.
Each worker has its own pipe, and the parent knows exactly which tasks each one holds: when a worker dies,
the tasks it held are looked up in the output (it may have written some before dying) and the rest are
sent to the others. Nothing the parent counts is trusted over the output file: the workers write, the
parent only tallies what they report.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiprocess
import orjson
from filelock import FileLock, Timeout
from multiprocess.connection import wait
from tqdm import tqdm

from .config import RunConfig
from .errors import OutputError
from .logfile import create_log_file, setup_parent_logging
from .store import OutputPaths, RunLock, TailRepair, repair_tail, scan
from .tasks import FieldKeys, Task, check_input, iter_tasks
from .worker import EventKind, WorkerSettings, task_to_bytes, worker_main

log = logging.getLogger("mpinfer.pool")

POLL_S = 0.25
OLD_WORKERS_WAIT_S = 15.0
STOP_JOIN_S = 10.0
MAX_FAILURES_SHOWN = 5
DEFAULT_GRACE_S = 30.0


@dataclass
class RunSummary:
    """What one run did; the CLI prints it."""

    total: int
    already_done: int
    succeeded: int = 0
    failed: int = 0
    recovered: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    stopped: str | None = None
    log_file: Path | None = None
    repairs: list[TailRepair] = field(default_factory=list)
    bad_lines: int = 0
    unknown_ids: int = 0
    worker_deaths: int = 0
    failures_by_type: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> int:
        return self.already_done + self.succeeded + self.recovered

    @property
    def remaining(self) -> int:
        return self.total - self.done


@dataclass
class _Slot:
    """One worker process and the tasks it holds (sent, not yet reported)."""

    index: int
    process: Any
    conn: Any
    held: dict[str, Task] = field(default_factory=dict)
    open: bool = True
    stopped: bool = False


class _Supervisor:
    def __init__(self, config: RunConfig, paths: OutputPaths, tasks: Iterator[Task], summary: RunSummary,
                 log_file: Path | None, run_start: int, grace_s: float,
                 progress: bool) -> None:
        self.config = config
        self.paths = paths
        self.tasks = tasks
        self.summary = summary
        self.log_file = log_file
        self.run_start = run_start
        self.grace_s = grace_s
        self.ctx = multiprocess.get_context("fork")
        self.slots: list[_Slot] = []
        self.requeue: deque[Task] = deque()
        self.feeding = True
        self.stop_reason: str | None = None
        self.stop_deadline: float | None = None
        self.signals = 0
        self.max_held = max(2, 2 * config.concurrency)
        self.respawns_left = 3 * config.processes
        tqdm.monitor_interval = 0  # no monitor thread: the parent must stay single-threaded to fork safely
        self.bar = tqdm(total=summary.total, initial=summary.already_done, unit="task", dynamic_ncols=True,
                        smoothing=0.05, disable=not progress)
        self._postfix_at = 0.0

    # -- workers -----------------------------------------------------------------------------------

    def _spawn(self, index: int) -> _Slot:
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        settings = WorkerSettings(self.config, self.paths, str(self.log_file) if self.log_file else None,
                                  index, fsync=self.config.fsync)
        process = self.ctx.Process(target=worker_main, args=(settings, child_end), name=f"mpinfer-w{index}",
                                   daemon=True)
        process.start()
        child_end.close()
        return _Slot(index, process, parent_end)

    def start(self) -> None:
        gc.freeze()  # the forked children need not copy-on-write the parent's id set when they collect
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
            while self.feeding and slot.open and not slot.stopped and len(slot.held) < self.max_held:
                task = self.requeue.popleft() if self.requeue else next(self.tasks, None)
                if task is None:
                    self.feeding = False
                    break
                if not self._send(slot, task_to_bytes(task)):
                    self.requeue.append(task)
                    break
                slot.held[task.id] = task

    def _stop_all(self, reason: str | None) -> None:
        if reason and self.stop_reason is None:
            self.stop_reason = reason
        self.feeding = False
        for slot in self.slots:
            if slot.open and not slot.stopped:
                slot.stopped = True
                self._send(slot, b'{"stop":true}')

    # -- events ------------------------------------------------------------------------------------

    def _on_event(self, slot: _Slot, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        task_id = event.get("id")
        if kind == EventKind.DONE.value:
            slot.held.pop(task_id, None)
            self.summary.succeeded += 1
            self.summary.prompt_tokens += event.get("prompt_tokens") or 0
            self.summary.completion_tokens += event.get("completion_tokens") or 0
            self.bar.update(1)
        elif kind == EventKind.FAILED.value:
            slot.held.pop(task_id, None)
            self.summary.failed += 1
            error_type = str(event.get("error_type"))
            self.summary.failures_by_type[error_type] = self.summary.failures_by_type.get(error_type, 0) + 1
            if self.summary.failed <= MAX_FAILURES_SHOWN:
                more = " (further failures only in the log)" if self.summary.failed == MAX_FAILURES_SHOWN else ""
                log.warning("task %s failed: %s: %s%s", task_id, error_type, event.get("message"), more)
        elif kind == EventKind.ABORT.value:
            message = str(event.get("message"))
            log.error("stopping the run: %s", message)
            self._stop_all(f"aborted: {message}")
        elif kind == EventKind.FATAL.value:
            message = str(event.get("message"))
            log.error("stopping the run: %s", message)
            self._stop_all(f"fatal: {message}")
        elif kind == EventKind.EXIT.value:
            slot.stopped = True
        now = time.monotonic()
        if now - self._postfix_at > 0.5:
            self._postfix_at = now
            self.bar.set_postfix(failed=self.summary.failed,
                                 tokens=self.summary.prompt_tokens + self.summary.completion_tokens,
                                 refresh=False)

    def _drain(self, slot: _Slot) -> None:
        try:
            while slot.conn.poll():
                self._on_event(slot, orjson.loads(slot.conn.recv_bytes()))
        except (EOFError, OSError):
            slot.open = False

    def _on_death(self, slot: _Slot) -> None:
        """A worker is gone: recover what it held, and replace it if the run goes on."""
        slot.process.join(timeout=1)
        self._drain(slot)
        slot.open = False
        slot.conn.close()
        self.slots.remove(slot)
        code = slot.process.exitcode
        expected = slot.stopped and code == 0
        if slot.held:
            written = scan(self.paths.output, self.run_start).ids
            recovered = [t for t in slot.held.values() if t.id in written]
            lost = [t for t in slot.held.values() if t.id not in written]
            self.summary.recovered += len(recovered)
            self.bar.update(len(recovered))
            if self.feeding or self.stop_reason is None:
                self.requeue.extend(lost)
                self.feeding = self.feeding or bool(lost)
            if not expected:
                log.warning("worker %d (pid %s) died (exit code %s) holding %d tasks: %d were written, %d "
                            "sent again", slot.index, slot.process.pid, code, len(slot.held), len(recovered),
                            len(lost))
        if expected:
            return
        self.summary.worker_deaths += 1
        if self.stop_reason is not None:
            return
        if self.respawns_left <= 0:
            self._stop_all("fatal: workers keep dying; see the log")
            return
        self.respawns_left -= 1
        self.slots.append(self._spawn(slot.index))

    # -- the loop ----------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1

    def loop(self) -> None:
        handled = 0
        while self.slots:
            if self.signals > handled:
                handled = self.signals
                if handled == 1:
                    log.warning("stopping: finishing the requests in flight (up to %.0fs); "
                                "interrupt again to quit at once", self.grace_s)
                    self._stop_all("interrupted")
                    self.stop_deadline = time.monotonic() + self.grace_s
                else:
                    log.warning("quitting at once: requests in flight are dropped and sent again on rerun")
                    self._kill_all()
                    return
            if self.feeding:
                self._top_up()
            if not self.feeding and self.stop_reason is None and not any(s.held for s in self.slots):
                self._stop_all(None)  # all work is done
            if self.stop_deadline is None and any(s.stopped for s in self.slots):
                self.stop_deadline = time.monotonic() + max(self.grace_s, STOP_JOIN_S)
            if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
                log.warning("workers did not finish in time; stopping them")
                self._kill_all()
                return
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
        self.bar.close()


def _wait_for_old_workers(paths: OutputPaths) -> None:
    """Wait until workers of an earlier run on this output (orphans of a killed parent) are gone."""
    lock = FileLock(str(paths.workers_lock), thread_local=False)
    try:
        lock.acquire(timeout=OLD_WORKERS_WAIT_S)
    except Timeout:
        raise OutputError(f"workers of an earlier run on {paths.output} are still alive; stop them first "
                          f"(they hold {paths.workers_lock})") from None
    lock.release()


def run(config: RunConfig, *, progress: bool = True, grace_s: float = DEFAULT_GRACE_S) -> RunSummary:
    """Run every task of the input that is not in the output yet; rerun after any crash to resume."""
    started = time.monotonic()
    input_path, output = config.require_paths()
    config.require_api_key()
    keys = FieldKeys(config.id_key, config.prompt_key, config.images_key)
    index = check_input(input_path, keys)  # bad input fails here, before anything is spent
    paths = OutputPaths.of(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output.parent}: {exc.strerror or exc}") from None
    with RunLock(paths, config.model):
        _wait_for_old_workers(paths)
        repairs = [r for r in (repair_tail(paths.output, paths.corrupt),
                               repair_tail(paths.errors, paths.corrupt_of(paths.errors))) if r]
        found = scan(paths.output)
        done = found.ids & index.ids
        summary = RunSummary(total=index.total, already_done=len(done), repairs=repairs,
                             bad_lines=len(found.bad_lines), unknown_ids=len(found.ids - index.ids))
        log_file = create_log_file(config.log_dir, config.model)
        summary.log_file = log_file
        setup_parent_logging(log_file, config.verbose)
        log.info("run %s -> %s: %r", input_path, output, config)
        for repair in repairs:
            if repair.moved_to:
                log.warning("%s: moved a torn last line (%d bytes) to %s", repair.path, repair.moved_bytes,
                            repair.moved_to)
            else:
                log.info("%s: added the missing newline after the last record", repair.path)
        for bad in found.bad_lines[:MAX_FAILURES_SHOWN]:
            log.warning("%s:%d is not a valid record (left in place; its task runs again): %s", output,
                        bad.line, bad.snippet)
        if summary.unknown_ids:
            log.warning("%d ids in %s are not in the input (--validate lists them)", summary.unknown_ids, output)
        log.info("%d tasks, %d already done, %d to run", index.total, len(done), index.total - len(done))
        if summary.remaining == 0:
            summary.elapsed_s = time.monotonic() - started
            return summary
        supervisor = _Supervisor(config, paths, iter_tasks(input_path, keys, skip=done), summary, log_file,
                                 found.end_offset, grace_s, progress)
        del done, found, index
        previous = {sig: signal.signal(sig, supervisor._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            supervisor.start()
            supervisor.loop()
        finally:
            supervisor.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        summary.stopped = supervisor.stop_reason
        summary.elapsed_s = time.monotonic() - started
        log.info("run ended: %d written, %d failed, %d left, %.1fs%s", summary.succeeded + summary.recovered,
                 summary.failed, summary.remaining, summary.elapsed_s,
                 f", stopped: {summary.stopped}" if summary.stopped else "")
    return summary
