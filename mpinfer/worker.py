"""The child side: one process, one event loop, up to ``concurrency`` requests in flight.

A worker receives tasks from the parent over its own pipe, waits on the shared rate limiter, sends each to
the API, appends a Result or a Failure line through the store, and only then tells the parent. It builds
its own clients, store handles and random generator: nothing live crosses the process boundary but the
limiter's shared memory, which it inherits.

Messages on the pipe are orjson bytes. Parent -> worker: ``{"task": {...}, "m": model index}``, or
``{"stop": true}`` (finish what is in flight, take nothing new). Worker -> parent: events
``{"kind": ..., "id": ..., "m": ...}`` (see EventKind).
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import dataclasses
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

import openai
import orjson

from .client import Answer, CallError, Transport, Verdict, backoff_s, classify, complete, make_client
from .config import RunConfig
from .errors import ImageError, OutputError
from .logfile import setup_worker_logging
from .messages import ImageEncoder, Request, build_body_request, build_request
from .ratelimit import Grant, NoKeysLeft, SharedLimiter
from .redact import key_hint, redact
from .prices import PriceTable
from .records import Failure, Result, Usage, batch_error_line, batch_result_line, same_model
from .store import Appender, OutputPaths
from .tasks import Task

_PR_SET_PDEATHSIG = 1
# The grant of the request this asyncio task is sending, for the client's on-send hook.
_SENDING: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("mpinfer_sending", default=None)
_KEY_ERRORS = frozenset({"authentication", "permission_denied"})
_OVERLOAD_ERRORS = frozenset({"rate_limit", "timeout"})
log = logging.getLogger("mpinfer.worker")


class EventKind(str, Enum):
    DONE = "done"                  # the Result line is on disk
    FAILED = "failed"              # the Failure line is in the errors file; a rerun tries again
    KEY_DISABLED = "key_disabled"  # a key was rejected; the others go on
    ABORT = "abort"                # no task can succeed (no key left, no quota): the run must stop
    FATAL = "fatal"                # this worker cannot write (full disk): the run must stop
    EXIT = "exit"                  # the worker finished and is about to exit


@dataclass(frozen=True)
class WorkerSettings:
    """Plain data a worker starts from: ``outputs[m]`` is where model ``m``'s lines go."""

    config: RunConfig
    outputs: tuple[OutputPaths, ...]
    log_file: str | None
    index: int
    prices: PriceTable


def work_message(task: Task, model: int) -> bytes:
    return orjson.dumps({"task": task, "m": model})


def _task_from_dict(data: dict[str, Any]) -> Task:
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


def _hold_workers_locks(outputs: tuple[OutputPaths, ...]) -> list[int]:
    """Shared locks held for the worker's life: a new run waits on them until every old worker is gone."""
    fds = []
    for paths in outputs:
        fd = os.open(paths.workers_lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        fds.append(fd)
    return fds


class _Stopping(Exception):
    """The run is stopping: leave the task undone and unrecorded; the rerun sends it."""


class Worker:
    """The state of one worker process's event loop."""

    def __init__(self, settings: WorkerSettings, conn: Any, limiter: SharedLimiter) -> None:
        self.settings = settings
        self.config = settings.config
        self.conn = conn
        self.limiter = limiter
        self.keys = self.config.require_api_keys()
        self.models = self.config.models
        self.rng = random.Random(os.urandom(16))  # forked siblings must not jitter alike
        self.appenders = [Appender(paths, fsync=self.config.fsync) for paths in settings.outputs]
        self.encoder = ImageEncoder(self.config.resolved_image_root)
        self.clients: dict[int, openai.AsyncOpenAI] = {}
        self.stopping = False

    def send(self, kind: EventKind, task_id: str | None = None, **fields: Any) -> None:
        self.conn.send_bytes(orjson.dumps({"kind": kind.value, "id": task_id, **fields}))

    def client(self, key: int) -> openai.AsyncOpenAI:
        if key not in self.clients:
            self.clients[key] = make_client(self.keys[key], self.config.base_url, self.config.timeout,
                                            on_send=self._on_send, transport=Transport(self.config.transport),
                                            connections=self.config.concurrency)
        return self.clients[key]

    def _on_send(self) -> None:
        grant = _SENDING.get()
        if grant is not None:
            self.limiter.sent(grant, time.monotonic())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[tuple[Task, int] | None] = asyncio.Queue()
        concurrency = self.config.concurrency

        def on_message(data: dict[str, Any] | None) -> None:
            if data is None or data.get("stop"):
                self.stopping = True
                # Tasks still waiting in the inbox are dropped: never sent, the parent counts them not done.
                while not inbox.empty():
                    inbox.get_nowait()
                for _ in range(concurrency):
                    inbox.put_nowait(None)
            else:
                inbox.put_nowait((_task_from_dict(data["task"]), int(data["m"])))

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
        try:
            await asyncio.gather(*(self._runner(inbox) for _ in range(concurrency)))
        finally:
            for client in self.clients.values():
                await client.close()
            for appender in self.appenders:
                appender.close()

    async def _runner(self, inbox: asyncio.Queue[tuple[Task, int] | None]) -> None:
        while True:
            item = await inbox.get()
            if item is None or self.stopping:
                return
            task, model = item
            try:
                await self._process(task, model)
            except _Stopping:
                continue
            except OutputError as exc:
                log.error("cannot write: %s", exc)
                self.send(EventKind.FATAL, task.id, m=model, message=str(exc))
                self.stopping = True
                return

    def _request(self, task: Task, model: int) -> Request:
        config = self.config
        if task.body is not None:
            # A Batch API body goes as it is; only a model the user chose (or one of several) replaces its own.
            chosen = self.models[model] if len(self.models) > 1 or "model" in config.explicit else None
            return build_body_request(task.body, chosen)
        if len(self.models) > 1:
            task = dataclasses.replace(task, model=None)  # each of the run's models, whatever the task says
        return build_request(task, self.encoder, model=self.models[model], system_prompt=config.system_prompt,
                             temperature=config.temperature, max_tokens=config.max_tokens,
                             extra_body=config.extra_body)

    async def _acquire(self, model: int, charge: int) -> Grant:
        """Wait for the shared limiter: a free key, room in its window, no pause on its lane."""
        while True:
            got = self.limiter.try_acquire(model, charge, time.monotonic())
            if isinstance(got, Grant):
                return got
            if self.stopping:
                raise _Stopping()
            await asyncio.sleep(min(got, 0.5))

    async def _process(self, task: Task, model: int) -> None:
        started = time.monotonic()
        try:
            request = self._request(task, model)
        except ImageError as exc:
            self._fail(task, model, classify(exc), 0)
            return
        attempts = retries = 0
        while True:
            try:
                grant = await self._acquire(model, request.charge)
            except NoKeysLeft:
                self._abort(task, model, "every API key was rejected (401/403); see the log", attempts)
                return
            attempts += 1
            _SENDING.set(grant)
            try:
                answer = await complete(self.client(grant.key), request.kwargs, self.config.timeout)
            except Exception as exc:  # classify decides; nothing escapes unrecorded
                error = classify(exc)
                now = time.monotonic()
                response = getattr(exc, "response", None)
                self.limiter.observe_headers(grant.lane, getattr(response, "headers", None), now)
                self.limiter.release(grant, now, ok=False, overloaded=error.error_type in _OVERLOAD_ERRORS)
                if error.error_type == "rate_limit":
                    self.limiter.rate_limited(grant.lane, now, error.retry_after)
                if error.error_type in _KEY_ERRORS:
                    # The key's fault, not the task's: no failure line; the task goes on with another key.
                    if self._disable_key(grant.key, error):
                        continue
                    self._abort(task, model, f"every API key was rejected (last: {error.status} "
                                f"{error.error_type}: {error.message})", attempts)
                    return
                if error.verdict is Verdict.RETRY and self.stopping:
                    raise _Stopping() from None
                if error.verdict is Verdict.RETRY and retries < self.config.max_retries:
                    retries += 1
                    delay = backoff_s(retries, self.config.retry_backoff, self.rng, error.retry_after)
                    log.info("task %s attempt %d: %s (%s); retry in %.2fs", task.id, attempts,
                             error.error_type, error.message, delay)
                    await asyncio.sleep(delay)
                    if self.stopping:
                        raise _Stopping() from None
                    continue
                if error.verdict is Verdict.ABORT:
                    self._abort(task, model, f"{error.error_type}: {error.message}", attempts, error)
                    return
                self._fail(task, model, error, attempts)
                return
            now = time.monotonic()
            self.limiter.observe_headers(grant.lane, answer.headers, now)
            # What the server counted against the limit: the real prompt plus the answer it allowed.
            charged = answer.prompt_tokens + (request.max_tokens or answer.completion_tokens)
            self.limiter.release(grant, now, ok=True, charged=charged, used=answer.total_tokens)
            self._succeed(task, model, request.model, answer, attempts, now - started)
            return

    def _disable_key(self, key: int, error: CallError) -> bool:
        """Stop using a rejected key; whether any key is left."""
        already = self.limiter.key_disabled(key)
        left = self.limiter.disable_key(key)
        if not already:
            hint = key_hint(self.keys[key], key)
            log.warning("API key %s rejected (%s %s): disabled for the rest of the run", hint, error.status,
                        error.error_type)
            self.send(EventKind.KEY_DISABLED, None, key=hint, message=f"{error.status} {error.error_type}")
        return left

    def _succeed(self, task: Task, model: int, requested: str, answer: Answer, attempts: int,
                 latency: float) -> None:
        prices = self.settings.prices
        # Billed as the model that answered; its price when known, else the requested model's.
        priced_as = answer.model if prices.find(answer.model) is not None else requested
        cost = prices.cost(priced_as, answer.prompt_tokens, answer.completion_tokens, answer.cached_tokens)
        cost = round(cost, 8) if cost is not None else None
        latency = round(latency, 4)
        if task.body is not None:
            meta = {"requested_model": requested, "latency_s": latency, "attempts": attempts,
                    "processed_at": time.time(), "cost": cost}
            line = batch_result_line(task.id, answer.headers.get("x-request-id"), answer.body or {}, meta)
        else:
            line = self._result_line(task, requested, answer, attempts, latency, cost)
        self.appenders[model].append(self.settings.outputs[model].output, line)
        self.send(EventKind.DONE, task.id, m=model, prompt_tokens=answer.prompt_tokens,
                  completion_tokens=answer.completion_tokens, latency_s=latency, cost=cost,
                  mismatch=not same_model(requested, answer.model), attempts=attempts)

    @staticmethod
    def _result_line(task: Task, requested: str, answer: Answer, attempts: int, latency: float,
                     cost: float | None) -> bytes:
        return Result(
            id=task.id,
            input_prompt=task.prompt,
            images=list(task.images),
            answer=answer.content,
            model=answer.model,
            requested_model=requested,
            usage=Usage(answer.prompt_tokens, answer.completion_tokens, answer.total_tokens, answer.cached_tokens),
            finish_reason=answer.finish_reason,
            latency_s=latency,
            attempts=attempts,
            processed_at=time.time(),
            cost=cost,
        ).to_line()

    def _fail(self, task: Task, model: int, error: CallError, attempts: int) -> None:
        # A server may quote the request back, key included: nothing leaves unredacted.
        message = redact(error.message, self.keys)
        if task.body is not None:
            line = batch_error_line(task.id, error.status, error.error_type, message,
                                    {"attempts": attempts, "processed_at": time.time()})
        else:
            line = Failure(task.id, error.error_type, error.status, message, attempts, time.time()).to_line()
        self.appenders[model].append(self.settings.outputs[model].errors, line)
        log.warning("task %s failed after %d attempts: %s: %s", task.id, attempts, error.error_type,
                    error.message)
        self.send(EventKind.FAILED, task.id, m=model, error_type=error.error_type, status=error.status,
                  message=message, attempts=attempts)

    def _abort(self, task: Task, model: int, message: str, attempts: int, error: CallError | None = None) -> None:
        """No task can succeed: record this one's failure, tell the parent, take nothing new."""
        if error is not None:
            self._fail(task, model, error, attempts)
        self.send(EventKind.ABORT, task.id, m=model, message=redact(message, self.keys))
        self.stopping = True


def worker_main(settings: WorkerSettings, conn: Any, limiter: SharedLimiter) -> None:
    """Entry point of a worker process (module level, so any start method can find it)."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the parent alone decides how the run stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lock_fds = _hold_workers_locks(settings.outputs)
    setup_worker_logging(settings.log_file, settings.config.verbose, f"w{settings.index}",
                         settings.config.api_keys)
    worker = Worker(settings, conn, limiter)
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
        for fd in lock_fds:
            os.close(fd)
