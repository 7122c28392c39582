"""One task from start to finish: build the request, wait on the limiter, call, retry, and say what to write.

A TaskRunner knows nothing of pipes, processes or files: it returns an Outcome holding the line to append
and the event to report, and the host that runs it (a local worker process, or a Ray actor) writes the
line and forwards the event. The limiter is reached through the async LimiterClient interface, so the
same runner works with the shared-memory limiter of one machine and with a limiter actor of a cluster.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol

import openai

from ..api.client import Answer, CallError, Transport, Verdict, backoff_s, classify, complete, make_client
from ..api.messages import ImageEncoder, Request, build_body_request, build_request
from ..api.prices import PriceTable
from ..api.ratelimit import Grant, SharedLimiter
from ..config import RunConfig
from ..errors import ImageError, NoKeysLeft
from ..events import Abort, Event, KeyDisabled, TaskDone, TaskFailed
from ..inputs.tasks import Task
from ..redact import key_hint, redact
from ..store.records import TRUNCATED, Failure, Result, Usage, batch_error_line, batch_result_line, same_model

_KEY_ERRORS = frozenset({"authentication", "permission_denied"})
_OVERLOAD_ERRORS = frozenset({"rate_limit", "timeout"})
# The grant of the request this asyncio task is sending, for the client's on-send hook.
_SENDING: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("mpinfer_sending", default=None)
log = logging.getLogger("mpinfer.backends.worker")


@dataclass(frozen=True)
class Outcome:
    """What became of one task: the line to append (to the output, or to the errors file), then the events
    to report once it is written (a failure that stops the run reports both)."""

    events: tuple[Event, ...]
    line: bytes | None = None
    to_errors: bool = False


def task_request(config: RunConfig, encoder: ImageEncoder, task: Task, model: int) -> Request:
    """The request for ``task`` and the run's model number ``model``, online or in a Batch API file alike."""
    models = config.models
    if task.body is not None:
        # A Batch API body goes as it is; only a model the user chose (or one of several) replaces its own.
        chosen = models[model] if len(models) > 1 or "model" in config.explicit else None
        return build_body_request(task.body, chosen)
    if len(models) > 1:
        task = dataclasses.replace(task, model=None)  # each of the run's models, whatever the task says
    return build_request(task, encoder, model=models[model], system_prompt=config.system_prompt,
                         temperature=config.temperature, max_tokens=config.max_tokens,
                         extra_body=config.extra_body)


class LimiterClient(Protocol):
    """The limiter as a runner sees it; each host supplies its own (shared memory, or a remote actor)."""

    async def try_acquire(self, model: int, charge: int) -> Grant | float: ...
    async def sent(self, grant: Grant) -> None: ...
    async def release(self, grant: Grant, *, ok: bool, overloaded: bool = False, charged: int | None = None,
                      used: int = 0) -> None: ...
    async def rate_limited(self, lane: int, retry_after: float | None) -> None: ...
    async def observe_headers(self, lane: int, headers: Any) -> None: ...
    async def disable_key(self, key: int) -> bool: ...
    async def key_disabled(self, key: int) -> bool: ...


class LocalLimiter:
    """The shared-memory limiter of one machine, with this machine's clock."""

    def __init__(self, shared: SharedLimiter) -> None:
        self.shared = shared

    async def try_acquire(self, model: int, charge: int) -> Grant | float:
        return self.shared.try_acquire(model, charge, time.monotonic())

    async def sent(self, grant: Grant) -> None:
        self.shared.sent(grant, time.monotonic())

    async def release(self, grant: Grant, *, ok: bool, overloaded: bool = False, charged: int | None = None,
                      used: int = 0) -> None:
        self.shared.release(grant, time.monotonic(), ok=ok, overloaded=overloaded, charged=charged, used=used)

    async def rate_limited(self, lane: int, retry_after: float | None) -> None:
        self.shared.rate_limited(lane, time.monotonic(), retry_after)

    async def observe_headers(self, lane: int, headers: Any) -> None:
        self.shared.observe_headers(lane, headers, time.monotonic())

    async def disable_key(self, key: int) -> bool:
        return self.shared.disable_key(key)

    async def key_disabled(self, key: int) -> bool:
        return self.shared.key_disabled(key)


@dataclass
class _Attempts:
    count: int = 0
    retries: int = 0


class TaskRunner:
    """Runs tasks for one host process: its clients, image cache, random jitter and the limiter."""

    def __init__(self, config: RunConfig, prices: PriceTable, limiter: LimiterClient) -> None:
        self.config = config
        self.prices = prices
        self.limiter = limiter
        self.keys = config.require_api_keys()
        self.models = config.models
        self.rng = random.Random(os.urandom(16))  # forked siblings must not jitter alike
        self.encoder = ImageEncoder(config.resolved_image_root)
        self.clients: dict[int, openai.AsyncOpenAI] = {}
        self.stopping = False
        self.notices: list[Event] = []

    def client(self, key: int) -> openai.AsyncOpenAI:
        if key not in self.clients:
            self.clients[key] = make_client(self.keys[key], self.config.base_url, self.config.timeout,
                                            on_send=self._on_send, transport=Transport(self.config.transport),
                                            connections=self.config.concurrency)
        return self.clients[key]

    async def _on_send(self) -> None:
        grant = _SENDING.get()
        if grant is not None:
            await self.limiter.sent(grant)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

    def take_notices(self) -> list[Event]:
        """Events that belong to no task (a key was disabled), for the host to forward."""
        notices, self.notices = self.notices, []
        return notices

    def _request(self, task: Task, model: int) -> Request:
        return task_request(self.config, self.encoder, task, model)

    async def _acquire(self, model: int, charge: int) -> Grant | None:
        """Wait for the limiter: a free key, room in its window, no pause on its lane; None when stopping."""
        while True:
            got = await self.limiter.try_acquire(model, charge)
            if isinstance(got, Grant):
                return got
            if self.stopping:
                return None
            await asyncio.sleep(min(got, 0.5))

    async def run(self, task: Task, model: int) -> Outcome | None:
        """Do one task; None when the run is stopping and the task is left for the rerun, unrecorded."""
        started = time.monotonic()
        try:
            request = self._request(task, model)
        except ImageError as exc:
            return self._fail(task, model, classify(exc), 0)
        tries = _Attempts()
        while True:
            try:
                grant = await self._acquire(model, request.charge)
            except NoKeysLeft:
                return self._abort(task, model, "every API key was rejected (401/403); see the log")
            if grant is None:
                return None
            tries.count += 1
            _SENDING.set(grant)
            try:
                answer = await complete(self.client(grant.key), request.kwargs, self.config.timeout)
            except Exception as exc:  # classify decides; nothing escapes unrecorded
                outcome = await self._failed_attempt(task, model, grant, classify(exc), exc, tries)
                if outcome == "again":
                    continue
                return outcome
            await self.limiter.observe_headers(grant.lane, answer.headers)
            # What the server counted against the limit: the real prompt plus the answer it allowed.
            charged = answer.prompt_tokens + (request.max_tokens or answer.completion_tokens)
            await self.limiter.release(grant, ok=True, charged=charged, used=answer.total_tokens)
            return self._succeed(task, model, request.model, answer, tries.count, time.monotonic() - started)

    async def _failed_attempt(self, task: Task, model: int, grant: Grant, error: CallError, exc: Exception,
                              tries: _Attempts) -> Outcome | str | None:
        """After a failed attempt: "again" to retry, or the task's outcome (None: stopping, unrecorded)."""
        response = getattr(exc, "response", None)
        await self.limiter.observe_headers(grant.lane, getattr(response, "headers", None))
        await self.limiter.release(grant, ok=False, overloaded=error.error_type in _OVERLOAD_ERRORS)
        if error.error_type == "rate_limit":
            await self.limiter.rate_limited(grant.lane, error.retry_after)
        if error.error_type in _KEY_ERRORS:
            # The key's fault, not the task's: no failure line; the task goes on with another key.
            if await self._disable_key(grant.key, error):
                return "again"
            return self._abort(task, model, f"every API key was rejected (last: {error.status} "
                               f"{error.error_type}: {error.message})")
        if error.verdict is Verdict.RETRY and self.stopping:
            return None
        if error.verdict is Verdict.RETRY and tries.retries < self.config.max_retries:
            tries.retries += 1
            delay = backoff_s(tries.retries, self.config.retry_backoff, self.rng, error.retry_after)
            log.info("task %s attempt %d: %s (%s); retry in %.2fs", task.id, tries.count, error.error_type,
                     error.message, delay)
            await asyncio.sleep(delay)
            return None if self.stopping else "again"
        if error.verdict is Verdict.ABORT:
            failure = self._fail(task, model, error, tries.count)
            aborted = self._abort(task, model, f"{error.error_type}: {error.message}")
            return Outcome(failure.events + aborted.events, failure.line, to_errors=True)
        return self._fail(task, model, error, tries.count)

    async def _disable_key(self, key: int, error: CallError) -> bool:
        """Stop using a rejected key; whether any key is left."""
        already = await self.limiter.key_disabled(key)
        left = await self.limiter.disable_key(key)
        if not already:
            hint = key_hint(self.keys[key], key)
            log.warning("API key %s rejected (%s %s): disabled for the rest of the run", hint, error.status,
                        error.error_type)
            self.notices.append(KeyDisabled(hint, f"{error.status} {error.error_type}"))
        return left

    def _succeed(self, task: Task, model: int, requested: str, answer: Answer, attempts: int,
                 latency: float) -> Outcome:
        # Billed as the model that answered; its price when known, else the requested model's.
        priced_as = answer.model if self.prices.find(answer.model) is not None else requested
        cost = self.prices.cost(priced_as, answer.prompt_tokens, answer.completion_tokens, answer.cached_tokens)
        cost = round(cost, 8) if cost is not None else None
        latency = round(latency, 4)
        if task.body is not None:
            meta = {"requested_model": requested, "latency_s": latency, "attempts": attempts,
                    "processed_at": time.time(), "cost": cost}
            line = batch_result_line(task.id, answer.headers.get("x-request-id"), answer.body or {}, meta)
        else:
            line = Result(
                id=task.id, input_prompt=task.prompt, images=list(task.images), answer=answer.content,
                model=answer.model, requested_model=requested,
                usage=Usage(answer.prompt_tokens, answer.completion_tokens, answer.total_tokens,
                            answer.cached_tokens, answer.reasoning_tokens),
                finish_reason=answer.finish_reason, latency_s=latency, attempts=attempts,
                processed_at=time.time(), cost=cost, refusal=answer.refusal, reasoning_content=answer.reasoning,
            ).to_line()
        return Outcome((TaskDone(task.id, model, answer.prompt_tokens, answer.completion_tokens, latency, cost,
                                 not same_model(requested, answer.model), attempts,
                                 refused=answer.refusal is not None and not answer.content,
                                 truncated=answer.finish_reason == TRUNCATED),), line)

    def _fail(self, task: Task, model: int, error: CallError, attempts: int) -> Outcome:
        # A server may quote the request back, key included: nothing leaves unredacted.
        message = redact(error.message, self.keys)
        if task.body is not None:
            line = batch_error_line(task.id, error.status, error.error_type, message,
                                    {"attempts": attempts, "processed_at": time.time()})
        else:
            line = Failure(task.id, error.error_type, error.status, message, attempts, time.time()).to_line()
        log.warning("task %s failed after %d attempts: %s: %s", task.id, attempts, error.error_type, message)
        return Outcome((TaskFailed(task.id, model, error.error_type, error.status, message, attempts),), line,
                       to_errors=True)

    def _abort(self, task: Task, model: int, message: str) -> Outcome:
        """No task can succeed: tell the host, and take nothing new."""
        self.stopping = True
        return Outcome((Abort(redact(message, self.keys), task.id, model),))
