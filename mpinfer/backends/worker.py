"""The child side: one process, one event loop, up to ``concurrency`` requests in flight.

A worker receives tasks from the parent over its own pipe, has a TaskRunner do each (request, shared
rate limiter, retries), appends the line it gets back through the store (the lines ready in one turn
of its event loop in one write, at the end of that turn), and only then tells the parent (in one
write for many answers while it has enough tasks queued). It builds its own clients, store handles
and random generator: nothing live crosses the process boundary but the limiter's shared memory,
which it inherits.

Messages on the pipe are events.encode bytes. Parent -> worker: ``Work`` (a task and its model
index), or ``StopWork`` (finish what is in flight, take nothing new). Worker -> parent: the events
of events.py.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from ..api.prices import PriceTable
from ..events import (
    Fatal,
    Message,
    StopWork,
    TaskDone,
    TaskFailed,
    Work,
    WorkerExit,
    decode,
    encode,
)
from ..inputs import Task
from ..limits import LocalLimiter, SharedLimiter
from ..logfile import setup_worker_logging
from ..slices import RunnerSettings
from ..store.locks import hold_workers_lock
from ..store.output import OutputPaths
from .base import OutcomeWriter
from .runner import Outcome, TaskRunner

_PR_SET_PDEATHSIG = 1
# gen0 allocations, then gen1 and gen2 collections (Python: 700, 10, 10)
WORKER_GC_THRESHOLDS = (50_000, 50, 100)
#: Seconds the event of a task written may wait to share one write to the parent with the events
#: of other tasks, while the worker has plenty of tasks queued (its answer is on disk already).
EVENTS_WAIT_S = 0.05
log = logging.getLogger("mpinfer.backends.worker")


@dataclass(frozen=True)
class WorkerSettings:
    """Plain data a worker starts from: ``outputs[m]`` is where model ``m``'s lines go; ``fsync``
    after every line; ``verbose`` logs every attempt."""

    runner: RunnerSettings
    outputs: tuple[OutputPaths, ...]
    log_file: str | None
    index: int
    prices: PriceTable
    fsync: bool = False
    verbose: bool = False


def _die_with_parent() -> None:
    """Ask the kernel to kill this process when the parent dies,
    so a killed run leaves no orphan writers."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent or parent == 1:
        os._exit(1)


class Worker:
    """A local worker process: reads tasks from its pipe,
    runs them, appends their lines, reports events."""

    def __init__(self, settings: WorkerSettings, conn: Any, limiter: SharedLimiter) -> None:
        self.settings = settings
        self.conn = conn
        self.runner = TaskRunner(settings.runner, settings.prices,
                                 LocalLimiter(limiter, settings.index),
                                 build_ahead=settings.runner.built_ahead)
        self.writer = OutcomeWriter(settings.outputs, settings.fsync)
        self.outbox: list[Message] = []  # events not yet sent
        # Outcomes of this turn of the event loop, their lines not yet written (``record``)
        self.unwritten: list[tuple[str, int, Outcome]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.inbox: asyncio.Queue[tuple[Task, int] | None] | None = None
        # While at least this many tasks wait in the inbox, the parent need not hear at once that
        # a slot is free: it sends more only once it may send half of -c together (backends/local).
        self.queued_enough = max(1, settings.runner.concurrency // 2)
        self._soon = False  # a flush is due at the end of this turn of the loop
        self._later: asyncio.TimerHandle | None = None  # a flush is due EVENTS_WAIT_S from then

    def send(self, message: Message) -> None:
        """Report ``message`` to the parent, in one write with the other events due by then.

        At once when no loop runs (a crash report, the exit). Else at the end of this turn of the
        event loop; but a task's event waits up to EVENTS_WAIT_S while enough tasks are queued, so
        that a busy worker wakes the parent a few times a second rather than for every answer."""
        self.outbox.append(message)
        if self.loop is None:
            self.flush()
            return
        if self._soon:
            return
        inbox = self.inbox
        if (isinstance(message, (TaskDone, TaskFailed)) and inbox is not None
                and inbox.qsize() >= self.queued_enough):
            if self._later is None:
                self._later = self.loop.call_later(EVENTS_WAIT_S, self.flush)
            return
        self._soon = True
        self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send the events due to the parent in one write; if the parent is gone, stop."""
        self._soon = False
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self.outbox:
            messages, self.outbox = self.outbox, []
            try:
                self.conn.send_bytes(encode(*messages))
            except OSError:
                # The parent is gone (the kernel kills this process too): take nothing more
                self.runner.stop()

    async def run(self) -> None:
        """Serve tasks until told to stop or the pipe closes, then flush and close everything.

        A reader thread turns the parent's messages into inbox items, so the parent's writes never
        wait on this loop. ``concurrency`` coroutines send and, when the runner builds ahead, a few
        more build requests ahead of a free slot; on StopWork (or a closed pipe) the inbox is
        emptied, the runner stopped, and each coroutine takes a None and ends."""
        loop = self.loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[Task, int] | None] = asyncio.Queue()
        self.inbox = inbox
        # On the wire, and built ahead waiting for a slot.
        tasks = self.settings.runner.concurrency + self.runner.ahead.extra

        def on_messages(messages: list[Message] | None) -> None:
            for message in [StopWork()] if messages is None else messages:  # None: the pipe is gone
                if isinstance(message, Work):
                    inbox.put_nowait((message.task, message.output_index))
                    continue
                self.runner.stop()  # (each coroutine takes its None below and ends)
                # Tasks still waiting in the inbox are dropped:
                # never sent, the parent counts them not done.
                while not inbox.empty():
                    inbox.get_nowait()
                for _ in range(tasks):
                    inbox.put_nowait(None)
                return

        def read_pipe() -> None:
            # A thread of its own, so that the parent's writes never wait on this loop (nor the
            # loop's on it).
            while True:
                try:
                    messages = decode(self.conn.recv_bytes())
                except (EOFError, OSError):
                    loop.call_soon_threadsafe(on_messages, None)
                    return
                loop.call_soon_threadsafe(on_messages, messages)
                if any(isinstance(m, StopWork) for m in messages):
                    return

        threading.Thread(target=read_pipe, name="mpinfer-reader", daemon=True).start()
        try:
            await asyncio.gather(*(self._serve(inbox) for _ in range(tasks)))
        finally:
            self.write_lines()
            self.loop = None
            self.flush()
            await self.runner.close()
            self.writer.close()

    async def _serve(self, inbox: asyncio.Queue[tuple[Task, int] | None]) -> None:
        """Run tasks from the inbox."""
        while True:
            item = await inbox.get()
            if item is None or self.runner.stopping:
                return
            task, output_index = item
            outcome = await self.runner.run(task, output_index)
            if self.runner.notices:
                for notice in self.runner.take_notices():
                    self.send(notice)
            if outcome is None:
                continue
            self.record(task.id, output_index, outcome)

    def record(self, task_id: str, output_index: int, outcome: Outcome) -> None:
        """Have the outcome's line written at the end of this turn of the event loop, together
        with the others of the turn (one write and one lock for each file), then its events sent;
        at once when no loop runs."""
        self.unwritten.append((task_id, output_index, outcome))
        if self.loop is None:
            self.write_lines()
        elif len(self.unwritten) == 1:
            self.loop.call_soon(self.write_lines)

    def write_lines(self) -> None:
        """Write the lines recorded and not yet written, then report their events; a file that
        cannot be written stops the runner (it takes nothing more)."""
        if not self.unwritten:
            return
        outcomes, self.unwritten = self.unwritten, []
        for message in self.writer.write_many(outcomes):
            self.send(message)
            if isinstance(message, Fatal):
                self.runner.stop()


def worker_main(settings: WorkerSettings, conn: Any, limiter: SharedLimiter) -> None:
    """Entry point of a worker process (module level, so any start method can find it)."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the parent alone decides how the run stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A new run waits on it until this worker is gone
    lock_fds = hold_workers_lock(settings.outputs)
    # Each request allocates a few hundred objects (the SDK's request, headers, response): at the
    # default threshold (700) the collector runs every few requests and walks the hundreds of
    # requests in flight. A higher threshold costs less worker CPU per request and keeps more
    # requests in flight (figures in bench/README.md).
    gc.set_threshold(*WORKER_GC_THRESHOLDS)
    setup_worker_logging(settings.log_file, settings.verbose, f"w{settings.index}",
                         settings.runner.keys)
    worker = Worker(settings, conn, limiter)
    try:
        asyncio.run(worker.run())
    except Exception as exc:  # a bug must reach the parent, not vanish with the process
        log.exception("worker %d crashed", settings.index)
        worker.send(Fatal(f"worker crashed: {type(exc).__name__}: {exc}"))
    finally:
        worker.send(WorkerExit())  # (a pipe already gone is no error: the parent is gone with it)
        for fd in lock_fds:
            os.close(fd)
