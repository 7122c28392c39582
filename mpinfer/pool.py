"""The parent side of a run: check, lock, repair, scan, feed the workers, supervise them, summarise.

The parent stays single-threaded (tqdm's monitor thread is off), so replacing a dead worker by fork is safe.
Each worker has its own pipe, and the parent knows exactly which tasks each one holds: when a worker dies,
the tasks it held are looked up in the output (it may have written some before dying) and the rest are
sent to the others. The parent trusts the output files over its own counts: workers write, it tallies.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiprocess
import orjson
from filelock import FileLock, Timeout
from multiprocess.connection import wait
from tqdm import tqdm

from .config import RunConfig
from .errors import ConfigError, OutputError
from .logfile import create_log_file, setup_parent_logging
from .manifest import (append_record, check_fingerprints, end_record, manifest_path, output_fingerprints,
                       start_record, summary_counts)
from .prices import PriceTable, load_prices
from .ratelimit import SharedLimiter
from .store import OutputPaths, RunLock, companion, model_outputs, repair_tail, scan
from .summary import RunSummary, Tally, write_summary
from .tasks import Task, check_input, iter_tasks, reading, selection
from .redact import key_hint
from .runner import EventKind
from .worker import WorkerSettings, work_message, worker_main

log = logging.getLogger("mpinfer.pool")

POLL_S = 0.25
SUMMARY_EVERY_S = 2.0
OLD_WORKERS_WAIT_S = 15.0
STOP_JOIN_S = 10.0
MAX_FAILURES_SHOWN = 5
DEFAULT_GRACE_S = 30.0

__all__ = ["DEFAULT_GRACE_S", "RunSummary", "run"]

WorkItem = tuple[Task, int]  # a task and the index of the model it is for


@dataclass
class _Slot:
    """One worker process and the work it holds (sent, not yet reported)."""

    index: int
    process: Any
    conn: Any
    held: dict[tuple[str, int], Task] = field(default_factory=dict)
    open: bool = True
    stopped: bool = False


def _work_items(tasks: Iterator[Task], done: list[set[str]]) -> Iterator[WorkItem]:
    """Each task once for each model whose output does not have it yet."""
    for task in tasks:
        for model, ids in enumerate(done):
            if task.id not in ids:
                yield task, model


class _Supervisor:
    def __init__(self, config: RunConfig, outputs: list[OutputPaths], items: Iterator[WorkItem],
                 summary: RunSummary, log_file: Path | None, run_starts: list[int], grace_s: float,
                 progress: bool, summary_path: Path, prices: PriceTable, priced_before: int) -> None:
        self.config = config
        self.prices = prices
        self.priced_before = priced_before
        self.outputs = outputs
        self.items = items
        self.summary = summary
        self.log_file = log_file
        self.run_starts = run_starts
        self.grace_s = grace_s
        self.summary_path = summary_path
        self.ctx = multiprocess.get_context("fork")
        keys = config.require_api_keys()
        self.key_names = [key_hint(key, i) for i, key in enumerate(keys)]
        self.limiter = SharedLimiter.create(self.ctx, len(keys), len(config.models), config.rpm, config.tpm,
                                            config.rate_window,
                                            max_in_flight=config.processes * config.concurrency)
        self.slots: list[_Slot] = []
        self.requeue: deque[WorkItem] = deque()
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
        self._summary_at = 0.0

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

    def _within_budget(self) -> bool:
        """Whether one more task fits in --max-cost, counting what is in flight at the average cost so far.

        Until the first answer gives an average, only one task per worker goes out, as a probe.
        """
        budget = self.config.max_cost
        if budget is None:
            return True
        outstanding = sum(len(s.held) for s in self.slots)
        spent = self.summary.cost_before + self.summary.cost
        answers = self.priced_before + self.summary.succeeded - self.summary.unpriced
        if answers <= 0:
            return outstanding < self.config.processes
        each = spent / answers
        if spent + (outstanding + 1) * each <= budget:
            return True
        if self.stop_reason is None:
            self.stop_reason = (f"budget: ${budget:.4f} would be passed (spent ${spent:.4f}, about ${each:.5f} "
                                f"a task, {outstanding} in flight)")
            log.warning("stopping: %s; finishing what is in flight", self.stop_reason)
        self.feeding = False
        return False

    def _top_up(self) -> None:
        for slot in sorted(self.slots, key=lambda s: len(s.held)):
            while self.feeding and slot.open and not slot.stopped and len(slot.held) < self.max_held:
                if not self._within_budget():
                    return
                item = self.requeue.popleft() if self.requeue else next(self.items, None)
                if item is None:
                    self.feeding = False
                    break
                task, model = item
                if not self._send(slot, work_message(task, model)):
                    self.requeue.append(item)
                    break
                slot.held[(task.id, model)] = task

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
        model = event.get("m") or 0
        tally = self.summary.per_model[self.config.models[model]]
        if kind == EventKind.DONE.value:
            slot.held.pop((task_id, model), None)
            self.summary.count_answer(event)
            tally.succeeded += 1
            self.bar.update(1)
        elif kind == EventKind.FAILED.value:
            slot.held.pop((task_id, model), None)
            error_type = str(event.get("error_type"))
            self.summary.count_failure(error_type)
            tally.failed += 1
            if self.summary.failed <= MAX_FAILURES_SHOWN:
                more = " (further failures only in the log)" if self.summary.failed == MAX_FAILURES_SHOWN else ""
                log.warning("task %s failed: %s: %s%s", task_id, error_type, event.get("message"), more)
        elif kind == EventKind.KEY_DISABLED.value:
            log.warning("API key %s rejected (%s): disabled for this run", event.get("key"), event.get("message"))
        elif kind in (EventKind.ABORT.value, EventKind.FATAL.value):
            message = str(event.get("message"))
            if self.stop_reason is None:
                log.error("stopping the run: %s", message)
            else:
                log.info("also: %s", message)
            self._stop_all(f"{'aborted' if kind == EventKind.ABORT.value else 'fatal'}: {message}")
        elif kind == EventKind.EXIT.value:
            slot.stopped = True
        now = time.monotonic()
        if now - self._postfix_at > 0.5:
            self._postfix_at = now
            self.bar.set_postfix(failed=self.summary.failed,
                                 tokens=self.summary.prompt_tokens + self.summary.completion_tokens,
                                 cost=f"${self.summary.cost:.4f}", refresh=False)

    def _drain(self, slot: _Slot) -> None:
        try:
            while slot.conn.poll():
                self._on_event(slot, orjson.loads(slot.conn.recv_bytes()))
        except (EOFError, OSError):
            slot.open = False

    def _written_since_start(self, held: dict[tuple[str, int], Task]) -> set[tuple[str, int]]:
        models = {model for _, model in held}
        return {(task_id, m) for m in models
                for task_id in scan(self.outputs[m].output, self.run_starts[m]).ids}

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
            written = self._written_since_start(slot.held)
            lost = [(task, m) for (task_id, m), task in slot.held.items() if (task_id, m) not in written]
            recovered = len(slot.held) - len(lost)
            self.summary.recovered += recovered
            self.bar.update(recovered)
            if self.stop_reason is None:
                self.requeue.extend(lost)
                self.feeding = self.feeding or bool(lost)
            if not expected:
                log.warning("worker %d (pid %s) died (exit code %s) holding %d tasks: %d were written, %d "
                            "sent again", slot.index, slot.process.pid, code, len(slot.held), recovered,
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

    def on_signal(self, _signum: int, _frame: Any) -> None:
        self.signals += 1

    def save_summary(self, live: bool) -> None:
        keys = range(self.limiter.n_keys)
        self.summary.take_lane_stats(self.limiter.lane_stats(time.monotonic()), self.config.models,
                                     self.key_names, [self.limiter.key_disabled(k) for k in keys])
        write_summary(self.summary_path, self.summary, live)

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
            if not self.feeding and not any(s.held for s in self.slots):
                self._stop_all(None)  # all work is done, or all the budget allows
            if self.stop_deadline is None and any(s.stopped for s in self.slots):
                self.stop_deadline = time.monotonic() + max(self.grace_s, STOP_JOIN_S)
            now = time.monotonic()
            if self.stop_deadline is not None and now > self.stop_deadline:
                log.warning("workers did not finish in time; stopping them")
                self._kill_all()
                return
            if now - self._summary_at > SUMMARY_EVERY_S:
                self._summary_at = now
                self.save_summary(live=True)
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


def _prepare(paths: OutputPaths, summary: RunSummary) -> None:
    for path in (paths.output, paths.errors):
        repair = repair_tail(path, paths.corrupt_of(path))
        if repair is None:
            continue
        summary.repaired += 1
        if repair.moved_to:
            log.warning("%s: moved a torn last line (%d bytes) to %s", path, repair.moved_bytes, repair.moved_to)
        else:
            log.info("%s: added the missing newline after the last record", path)


def run(config: RunConfig, *, progress: bool = True, grace_s: float = DEFAULT_GRACE_S,
        argv: Sequence[str] = ()) -> RunSummary:
    """Run every task of the input that is not in the output yet; rerun after any crash to resume.

    ``argv`` is the command line to record in the run manifest (secrets removed there).
    """
    started = time.monotonic()
    input_path, output = config.require_paths()
    config.require_api_keys()
    prices = load_prices(config.prices, config.price_input, config.price_output)
    unpriced = [m for m in config.models if prices.find(m) is None]
    if config.max_cost is not None and unpriced:
        raise ConfigError(f"--max-cost needs a price for {', '.join(unpriced)}: give --prices FILE or "
                          "--price-input and --price-output")
    keys = reading(config)
    chosen = selection(config)
    index = check_input(input_path, keys, chosen)  # bad input fails here, before anything is spent
    models = config.models
    outputs = [OutputPaths.of(path) for path in model_outputs(output, models)]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output.parent}: {exc.strerror or exc}") from None
    with ExitStack() as locks:
        for paths in outputs:
            locks.enter_context(RunLock(paths, config.model))
        for paths in outputs:
            _wait_for_old_workers(paths)
        log_file = create_log_file(config.log_dir, config.model)
        setup_parent_logging(log_file, config.verbose, config.api_keys)
        summary = RunSummary(total=index.total * len(models), already_done=0, log_file=log_file)
        done: list[set[str]] = []
        run_starts: list[int] = []
        written: list[str] = []
        priced_before = 0
        for model, paths in zip(models, outputs):
            _prepare(paths, summary)
            found = scan(paths.output)
            for bad in found.bad_lines[:MAX_FAILURES_SHOWN]:
                log.warning("%s:%d is not a valid record (left in place; its task runs again): %s", paths.output,
                            bad.line, bad.snippet)
            unknown = len(found.ids - index.ids)
            if unknown:
                log.warning("%d ids in %s are not in the input (--validate lists them)", unknown, paths.output)
            done.append(found.ids & index.ids)
            if found.lines:
                written.append(paths.output.name)
            run_starts.append(found.end_offset)
            summary.bad_lines += len(found.bad_lines)
            summary.unknown_ids += unknown
            summary.cost_before += found.cost
            priced_before += len(found.ids)
            summary.per_model[model] = Tally()
        summary.already_done = sum(len(ids) for ids in done)
        manifest = manifest_path(output)
        for change in check_fingerprints(manifest, output_fingerprints(config), written, config.allow_mixed):
            log.warning("--allow-mixed: %s", change)
        start = start_record(config, argv)
        append_record(manifest, start)
        log.info("run %s -> %s: %r", input_path, ", ".join(str(p.output) for p in outputs), config)
        log.info("%d tasks x %d models, %d already done, %d to run", index.total, len(models),
                 summary.already_done, summary.remaining)
        summary_path = companion(output, ".summary.json")
        if summary.remaining == 0:
            summary.elapsed_s = time.monotonic() - started
            append_record(manifest, end_record(start, summary_counts(summary, summary.cost)))
            return summary
        items = _work_items(iter_tasks(input_path, keys, selection=chosen), done)
        supervisor = _Supervisor(config, outputs, items, summary, log_file, run_starts, grace_s, progress,
                                 summary_path, prices, priced_before)
        del index
        previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            supervisor.start()
            supervisor.loop()
        finally:
            supervisor.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            summary.stopped = supervisor.stop_reason
            summary.elapsed_s = time.monotonic() - started
            supervisor.save_summary(live=False)
            append_record(manifest, end_record(start, summary_counts(summary, summary.cost)))
        log.info("run ended: %d written, %d failed, %d left, %.1fs%s", summary.succeeded + summary.recovered,
                 summary.failed, summary.remaining, summary.elapsed_s,
                 f", stopped: {summary.stopped}" if summary.stopped else "")
    return summary
