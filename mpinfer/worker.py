"""The child side: one process, one event loop, up to ``concurrency`` requests in flight.

A worker receives tasks from the parent over its own pipe, sends each to the API, appends a Result or a
Failure line through the store, and only then tells the parent. It builds its own client, store handle and
random generator: nothing live crosses the process boundary, only plain data.

Messages on the pipe are orjson bytes. Parent -> worker: a task object, or ``{"stop": true}`` (finish what
is in flight, take nothing new). Worker -> parent: ``{"kind": ..., "id": ...}`` events (see Event).
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from .client import Answer, Verdict, backoff_s, classify, complete, make_client
from .config import RunConfig
from .errors import ImageError, OutputError
from .logfile import setup_worker_logging
from .messages import ImageEncoder, build_request
from .records import Failure, Result, Usage
from .store import Appender, OutputPaths
from .tasks import Task

_PR_SET_PDEATHSIG = 1
log = logging.getLogger("mpinfer.worker")


class EventKind(str, Enum):
    DONE = "done"          # the Result line is on disk
    FAILED = "failed"      # the Failure line is in the errors file; a rerun tries again
    ABORT = "abort"        # no task can succeed (bad key, no quota): the run must stop
    FATAL = "fatal"        # this worker cannot write (full disk): the run must stop
    EXIT = "exit"          # the worker finished and is about to exit


@dataclass(frozen=True)
class WorkerSettings:
    """Plain data a worker starts from."""

    config: RunConfig
    paths: OutputPaths
    log_file: str | None
    index: int
    fsync: bool = False


def task_to_bytes(task: Task) -> bytes:
    return orjson.dumps(task)


def task_from_dict(data: dict[str, Any]) -> Task:
    data["images"] = tuple(data.get("images") or ())
    return Task(**data)


def _die_with_parent() -> None:
    """Ask the kernel to kill this process when the parent dies, so a killed run leaves no orphan writers."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent or parent == 1:
        os._exit(1)


def _hold_workers_lock(paths: OutputPaths) -> int:
    """A shared lock held for the worker's life: a new run waits on it until every old worker is gone."""
    fd = os.open(paths.workers_lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


class Worker:
    """The state of one worker process's event loop."""

    def __init__(self, settings: WorkerSettings, conn: Any) -> None:
        self.settings = settings
        self.config = settings.config
        self.conn = conn
        self.rng = random.Random(os.urandom(16))
        self.appender = Appender(settings.paths, fsync=settings.fsync)
        self.encoder = ImageEncoder(self.config.resolved_image_root)
        self.stopping = False

    def send(self, kind: EventKind, task_id: str | None = None, **fields: Any) -> None:
        self.conn.send_bytes(orjson.dumps({"kind": kind.value, "id": task_id, **fields}))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Task | None] = asyncio.Queue()
        concurrency = self.config.concurrency

        def on_message(data: dict[str, Any] | None) -> None:
            if data is None or data.get("stop"):
                self.stopping = True
                # Tasks still waiting in the inbox are dropped: they were never sent, and the parent
                # counts them as not done.
                while not inbox.empty():
                    inbox.get_nowait()
                for _ in range(concurrency):
                    inbox.put_nowait(None)
            else:
                inbox.put_nowait(task_from_dict(data))

        def read_pipe() -> None:
            while True:
                try:
                    raw = self.conn.recv_bytes()
                except (EOFError, OSError):
                    loop.call_soon_threadsafe(on_message, None)
                    return
                data = orjson.loads(raw)
                loop.call_soon_threadsafe(on_message, data)
                if data.get("stop"):
                    return

        threading.Thread(target=read_pipe, name="mpinfer-reader", daemon=True).start()
        self.client = make_client(self.config.require_api_key(), self.config.base_url, self.config.timeout)
        try:
            await asyncio.gather(*(self._runner(inbox) for _ in range(concurrency)))
        finally:
            await self.client.close()
            self.appender.close()

    async def _runner(self, inbox: asyncio.Queue[Task | None]) -> None:
        while True:
            task = await inbox.get()
            if task is None or self.stopping:
                return
            try:
                await self._process(task)
            except OutputError as exc:
                log.error("cannot write: %s", exc)
                self.send(EventKind.FATAL, task.id, message=str(exc))
                self.stopping = True
                return

    async def _process(self, task: Task) -> None:
        config = self.config
        started = time.monotonic()
        attempts = 0
        try:
            request = build_request(
                task, self.encoder, model=config.model, system_prompt=config.system_prompt,
                temperature=config.temperature, max_tokens=config.max_tokens, extra_body=config.extra_body,
            )
        except ImageError as exc:
            self._fail(task, classify(exc).error_type, None, str(exc), attempts)
            return
        while True:
            attempts += 1
            try:
                answer = await complete(self.client, request, config.timeout)
            except Exception as exc:  # classify decides; nothing escapes unrecorded
                error = classify(exc)
                if error.verdict is Verdict.RETRY and self.stopping:
                    # Interrupted, not failed: leave no failure line; the rerun sends it again.
                    return
                if error.verdict is Verdict.RETRY and attempts <= config.max_retries:
                    delay = backoff_s(attempts, config.retry_backoff, self.rng, error.retry_after)
                    log.info("task %s attempt %d: %s (%s); retry in %.2fs", task.id, attempts,
                             error.error_type, error.message, delay)
                    await asyncio.sleep(delay)
                    if self.stopping:
                        return
                    continue
                self._fail(task, error.error_type, error.status, error.message, attempts)
                if error.verdict is Verdict.ABORT:
                    self.send(EventKind.ABORT, task.id, message=f"{error.error_type}: {error.message}")
                    self.stopping = True
                return
            self._succeed(task, request["model"], answer, attempts, time.monotonic() - started)
            return

    def _succeed(self, task: Task, requested: str, answer: Answer, attempts: int, latency: float) -> None:
        result = Result(
            id=task.id,
            input_prompt=task.prompt,
            images=list(task.images),
            answer=answer.content,
            model=answer.model,
            requested_model=requested,
            usage=Usage(answer.prompt_tokens, answer.completion_tokens, answer.total_tokens),
            finish_reason=answer.finish_reason,
            latency_s=round(latency, 4),
            attempts=attempts,
            processed_at=time.time(),
        )
        self.appender.append(self.settings.paths.output, result.to_line())
        self.send(EventKind.DONE, task.id, prompt_tokens=answer.prompt_tokens,
                  completion_tokens=answer.completion_tokens, latency_s=result.latency_s,
                  model=answer.model, attempts=attempts)

    def _fail(self, task: Task, error_type: str, status: int | None, message: str, attempts: int) -> None:
        failure = Failure(task.id, error_type, status, message, attempts, time.time())
        self.appender.append(self.settings.paths.errors, failure.to_line())
        log.warning("task %s failed after %d attempts: %s: %s", task.id, attempts, error_type, message)
        self.send(EventKind.FAILED, task.id, error_type=error_type, status=status, message=message)


def worker_main(settings: WorkerSettings, conn: Any) -> None:
    """Entry point of a worker process (module level, so any start method can find it)."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the parent alone decides how the run stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lock_fd = _hold_workers_lock(settings.paths)
    setup_worker_logging(settings.log_file, settings.config.verbose, f"w{settings.index}")
    worker = Worker(settings, conn)
    try:
        asyncio.run(worker.run())
    except Exception as exc:  # a bug must reach the parent, not vanish with the process
        log.exception("worker %d crashed", settings.index)
        try:
            worker.send(EventKind.FATAL, None, message=f"worker crashed: {type(exc).__name__}: {exc}")
        except OSError:
            pass
    finally:
        try:
            worker.send(EventKind.EXIT)
        except OSError:
            pass
        os.close(lock_fd)
