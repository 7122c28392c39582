"""One task from start to finish:
build the request, wait on the limiter, call, retry, and say what to write.

A TaskRunner knows nothing of pipes, processes or files: it returns an Outcome holding the line to
append and the event to report, and the host that runs it (a local worker process, or a Ray actor)
writes the line and forwards the event. The limiter is reached through the async LimiterClient
interface, so the same runner works with the shared-memory limiter of one machine and with a limiter
actor of a cluster. Each request goes down to the HTTP client with its ticket (``_GrantTicket``,
api/ticket.py's protocol); the host stops the runner with ``stop``, whatever the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..api.answer import Answer, filtered_answer
from ..api.endpoints import Provider
from ..api.failures import CallError, Kind, Verdict, classify
from ..api.messages import ImageEncoder, Request, task_request
from ..api.prices import PriceTable
from ..api.responses import ApiPath
from ..api.retry import Attempts, decide, patience_spent
from ..api.structured import Mismatch, Parsed, check
from ..api.ticket import Ticket
from ..api.wire import ApiClient, WireClient
from ..config import Transport
from ..errors import BadAnswer, ImageError, NoKeysLeft
from ..events import Abort, Event, KeyDisabled, ModelUnknown, TaskDone, TaskFailed
from ..inputs import Task
from ..limits import Ending, Grant, LimiterClient, Wait, WaitReason, read_hints
from ..redact import redact
from ..slices import RunnerSettings
from ..store.answers import answered, wrong_model
from ..store.judged import Judged, judge_line
from ..store.output import unit_of
from ..store.records import LABEL_FIELD, Paid, Usage, failure_line, is_refusal
from .ahead import BuildAhead

log = logging.getLogger("mpinfer.backends.worker")


@dataclass(frozen=True)
class Outcome:
    """What became of one task: the line to append (to the output, or to the errors file), then the
    events to report once it is written (a failure that stops the run reports both)."""

    events: tuple[Event, ...]
    line: bytes | None = None
    to_errors: bool = False


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]
# How a failed attempt ended, for the limiter: timeouts slow a lane down as 429s do.
_ENDINGS = {Kind.RATE_LIMIT: Ending.OVERLOADED, Kind.TIMEOUT: Ending.OVERLOADED,
            Kind.CONNECTION: Ending.UNREACHABLE}


class _GrantTicket(Ticket):
    """A runner's request in flight (api/ticket.py's protocol), with its grant: stamped sent by the
    limiter as it leaves; as its answer arrives, the limiter learns the limits it states, before
    the request's slot goes to the next one."""

    def __init__(self, seconds: float, grant: Grant, limiter: LimiterClient,
                 clock: Clock) -> None:
        super().__init__(seconds, clock)
        self.grant = grant
        self.limiter = limiter

    async def leaving(self) -> None:
        await self.limiter.sent(self.grant)
        await super().leaving()  # stamped after the limiter: its wait is not latency

    async def answered(self, status: int, headers: Any) -> None:
        hints = read_hints(headers)  # read once, here: the limiter is given what they say
        if not hints.empty:  # (most answers state nothing: no call, no Ray message)
            await self.limiter.observe(self.grant.lane, hints)


@dataclass
class _Sent:
    """One attempt that went on the wire, the limiter told how it ended: its grant, its time on the
    wire, its answer or the failure it came to, and whether its lane is in an outage."""

    grant: Grant
    latency: float
    answer: Answer | CallError
    outage: bool = False


def _judged(task: Task) -> Judged:
    """What a judging run's task judges (an answer, unless its row says otherwise)."""
    try:
        return Judged(task.of or Judged.ANSWER)
    except ValueError:
        return Judged.ANSWER


class _SendAgain:
    """The attempt failed and the task goes on: send it again (a typed sentinel, not a string)."""


_SEND_AGAIN = _SendAgain()


class _Turn:
    """A model's requests waiting on the limiter in one host, first come, first served (``lock``):
    the one whose turn it is asks again when its wait is over, or as soon as a request of the host
    gives its grant back (``wake``), whichever comes first."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self._woken: asyncio.Future[None] | None = None

    async def wait(self, seconds: float) -> None:
        """Wait ``seconds``, or until woken."""
        loop = asyncio.get_running_loop()
        woken = self._woken = loop.create_future()
        timer = loop.call_later(seconds, _settle, woken)
        try:
            await woken
        finally:
            timer.cancel()
            self._woken = None

    def wake(self) -> None:
        """Cut the wait short (none: nothing to do)."""
        if self._woken is not None:
            _settle(self._woken)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class TaskRunner:
    """Runs tasks for one host process: its clients, image cache, random jitter and the limiter.

    ``sleep`` and ``clock`` are parameters (real ones by default), so retry timing is tested without
    waiting. ``build_ahead``: how many requests the host builds ahead of its -c slots
    (backends/ahead.py). ``stop`` is the one way a host stops it, whatever the reason; ``stopping``
    says whether it has.
    """

    def __init__(self, settings: RunnerSettings, prices: PriceTable, limiter: LimiterClient, *,
                 sleep: Sleep = asyncio.sleep, clock: Clock = time.monotonic,
                 build_ahead: int = 0) -> None:
        self.settings = settings
        self.prices = prices
        self.limiter = limiter
        self.policy = settings.retry
        self.sleep = sleep
        self.clock = clock
        self.keys = settings.keys
        self.endpoints = settings.endpoints  # by key index: each key is one endpoint's
        self.models = settings.request.models
        self.rng = random.Random(os.urandom(16))  # forked siblings must not jitter alike
        self.encoder = ImageEncoder(settings.request.image_root)
        self.clients: dict[int, ApiClient] = {}
        self._stopping = False
        self.dropped: dict[int, str] = {}  # models the server does not know, with what it said
        self.notices: list[Event] = []
        self.ahead = BuildAhead(settings.concurrency, build_ahead)
        self._turns: dict[int, _Turn] = {}  # by model: the requests waiting on the limiter

    @property
    def stopping(self) -> bool:
        """Whether the host has stopped this runner: it takes nothing new."""
        return self._stopping

    def stop(self) -> None:
        """Take nothing new, and leave the requests built ahead and not sent for the rerun.

        Whatever the reason: a stop, the parent gone, an output that cannot be written, or no task
        able to succeed (``_abort``)."""
        self._stopping = True
        self.ahead.stop()

    def client(self, key: int) -> ApiClient:
        """The client of endpoint ``key``, made on first use and kept: mpinfer's own requests
        (api/wire.py), or the openai SDK's on ``--transport httpx`` (imported only then)."""
        if key not in self.clients:
            endpoint = self.endpoints[key]
            azure = None
            if endpoint.provider is Provider.AZURE:
                azure = (str(endpoint.deployment), str(endpoint.api_version))
            settings = self.settings
            made: ApiClient
            if settings.transport is Transport.HTTPX:
                from ..api.client import SdkClient

                made = SdkClient(endpoint.api_key, endpoint.base_url, settings.timeout,
                                 connections=settings.concurrency, azure=azure)
            else:
                made = WireClient(endpoint.api_key, endpoint.base_url, settings.timeout,
                                  connections=settings.concurrency, azure=azure)
            self.clients[key] = made
        return self.clients[key]

    async def close(self) -> None:
        """Close every client made (their connection pools)."""
        for client in self.clients.values():
            await client.close()

    def take_notices(self) -> list[Event]:
        """Events that belong to no task (a key was disabled), for the host to forward."""
        notices, self.notices = self.notices, []
        return notices

    def _request(self, task: Task, model_index: int) -> Request:
        return task_request(self.settings.request, self.encoder, task, model_index)

    async def _acquire(self, model_index: int, charge: int) -> Grant | Wait | None:
        """Wait for the limiter: a free key, room in its pace and window, no pause on its lane.

        Once the limiter has said wait, this host's requests for the model wait their turn (first
        come, first served, ``_Turn``): one asks the limiter at a time, again when its wait is over
        or when a request of the host gives a grant back, and a grant passes the turn on at once.
        A thousand requests held by the first round or a pace then cost one look at the limiter a
        wait instead of a thousand, which took a core of the two of bench/throughput.py for the
        first round's second. None when stopping; the Wait itself when the server has been down
        for longer than the patience."""
        turn = self._turns.get(model_index)
        if turn is None:
            turn = self._turns[model_index] = _Turn()
        if not turn.lock.locked():
            got = await self.limiter.try_acquire(model_index, charge)
            if isinstance(got, Grant):
                return got
        async with turn.lock:
            if self.stopping:  # (stopped while it waited its turn: left for the rerun)
                return None
            return await self._wait_turn(turn, model_index, charge)

    async def _wait_turn(self, turn: _Turn, model_index: int,
                         charge: int) -> Grant | Wait | None:
        """``_acquire`` for the request whose turn it is: ask until granted."""
        while True:
            got = await self.limiter.try_acquire(model_index, charge)
            if isinstance(got, Grant):
                return got
            if self.stopping:
                return None
            if got.reason is WaitReason.OUTAGE and patience_spent(got.outage_for_s, self.policy):
                return got
            # A little jitter: hosts that wait on the same moment do not all ask at once.
            await turn.wait(min(got.seconds, 0.5) * self.rng.uniform(1.0, 1.1))

    async def run(self, task: Task, output_index: int) -> Outcome | None:
        """Do one task for the run's output at ``output_index`` (a variant's and a model's: the
        task comes as its variant sends it): build its request, then take a grant and send it until
        it is answered or fails for good; the Outcome holds the line to write and the event to
        report.

        None when the run is stopping and the task is left for the rerun, unrecorded. Each turn
        of the loop is one attempt (``_send``: a slot, a grant, the request); a failed attempt
        goes to ``_failed_attempt``, which says whether to go again.
        """
        model_index = unit_of(output_index, len(self.models))[1]
        judging = self.settings.judging
        if judging is not None and (label := judging.unsent_label(_judged(task))) is not None:
            # A refusal or a filtered answer the judge file does not send: its label, no request
            line = judge_line(task.id, judging, _judged(task), text=None,
                              fields={LABEL_FIELD: label}, cost=0.0, sent=False)
            return Outcome((TaskDone(task.id, output_index, cost=0.0, attempts=0),), line)
        if model_index in self.dropped:  # the server does not know it: failed without a request
            error = CallError(Kind.UNKNOWN_MODEL, None, self.dropped[model_index], Verdict.FAIL)
            return self._fail(task, output_index, error, 0)
        try:
            request = self._request(task, model_index)
        except ImageError as exc:
            return self._fail(task, output_index, classify(exc), 0)
        tries = Attempts(waiting_since=self.clock())
        paid: Paid | None = None  # bad answers so far: billed, though not kept
        while True:
            try:
                sent = await self._send(request, model_index, tries)
            except NoKeysLeft:
                if await self._any_key_left():
                    # Every endpoint of this model was rejected,
                    # not every endpoint: the other models go on.
                    message = (f"every endpoint of {self.models[model_index]} was rejected "
                               "(401/403); see the log")
                    error = CallError(Kind.NO_ENDPOINT, None, message, Verdict.FAIL)
                    return self._fail(task, output_index, error, tries.count, tries.by_type)
                return self._abort(task, output_index,
                                   "every API key was rejected (401/403); see the log")
            if sent is None:
                return None
            if isinstance(sent, Wait):
                since = time.strftime("%H:%M:%S", time.localtime(sent.outage_wall))
                message = (f"the server has not answered since {since} ({sent.outage_for_s:.0f}s, "
                           f"more than the patience, --patience {self.policy.patience_s:g})")
                error = CallError(Kind.CONNECTION, None, message, Verdict.FAIL)
                return self._fail(task, output_index, error, tries.count, tries.by_type)
            tries.count += 1
            key = sent.grant.key
            if isinstance(sent.answer, CallError):
                error = sent.answer
                if error.verdict is Verdict.FILTERED:  # the content filter's answer: done
                    return self._succeed(task, output_index, request, filtered_answer(error.body),
                                         tries, sent.latency, key)
                outcome = await self._failed_attempt(task, output_index, sent, error, tries)
                if outcome is _SEND_AGAIN:
                    continue
                assert not isinstance(outcome, _SendAgain)
                return outcome
            answer = sent.answer
            checked = self._check(task, request, answer)
            if isinstance(checked, Mismatch):  # paid for, but not what was asked: ask again
                paid = self._paid(paid, request, answer)
                again = await self._bad_answer(task, output_index, checked, tries, key, paid)
                if again is _SEND_AGAIN:
                    continue
                assert not isinstance(again, _SendAgain)
                return again
            return self._succeed(task, output_index, request, answer, tries, sent.latency, key,
                                 checked)

    async def _send(self, request: Request, model_index: int,
                    tries: Attempts) -> _Sent | Wait | None:
        """One attempt: a slot at the gate (when the host builds ahead), then a grant, then the
        request, the limiter told how it ended before the slot goes to the next request (so that a
        429's pause is in force before that one asks for its grant).

        None when stopping (a request turned away at the gate is left for the rerun, unsent); the
        Wait when the server has been down for longer than the patience; raises NoKeysLeft."""
        gate = self.ahead.gate
        if gate is None:
            return await self._attempt(request, model_index, tries)
        if not await gate.take():
            return None
        try:
            sent = await self._attempt(request, model_index, tries)
        finally:
            gate.give_back()
        await gate.pass_on()
        return sent

    async def _attempt(self, request: Request, model_index: int,
                       tries: Attempts) -> _Sent | Wait | None:
        """``_send`` once it has its slot."""
        grant = await self._acquire(model_index, request.charge)
        if grant is None or isinstance(grant, Wait):
            return grant
        ticket = _GrantTicket(self.settings.timeout, grant, self.limiter, self.clock)
        try:
            answer = await self.client(grant.key).complete(request.kwargs, ticket, request.path)
        except Exception as exc:  # classify decides; nothing escapes unrecorded
            latency = self._attempt_ended(tries, ticket)
            error = classify(exc)
            if error.verdict is Verdict.FILTERED:
                await self._release(grant, model_index, Ending.ERROR)
                return _Sent(grant, latency, error)
            outage = await self._release(grant, model_index, _ENDINGS.get(error.kind, Ending.ERROR))
            if error.verdict is Verdict.WAIT:  # a 429: the lane's pause
                await self.limiter.rate_limited(grant.lane, error.retry_after)
            return _Sent(grant, latency, error, outage)
        latency = self._attempt_ended(tries, ticket)
        # What the server counted against the limit: the real prompt plus the answer it allowed.
        # (Without usage, the request's own estimate: the limiter still counts the tokens.)
        if answer.usage_known:
            charged = answer.prompt_tokens + (request.max_tokens or answer.completion_tokens)
            used = answer.total_tokens
        else:
            charged = used = request.charge
        await self._release(grant, model_index, Ending.OK, charged=charged, used=used)
        return _Sent(grant, latency, answer)

    async def _release(self, grant: Grant, model_index: int, ending: Ending, *,
                       charged: int | None = None, used: int = 0) -> bool:
        """Give the grant back (whether its lane is in an outage), and have the request whose turn
        it is for the model ask again at once: the in-flight room freed may be what it waits for."""
        outage = await self.limiter.release(grant, ending, charged=charged, used=used)
        turn = self._turns.get(model_index)
        if turn is not None:
            turn.wake()
        return outage

    def _check(self, task: Task, request: Request, answer: Answer) -> Parsed | Mismatch | None:
        """The answer against the run's --labels or --json-schema (None: no rule, or an answer no
        rule applies to: a refusal, a filtered answer, a Batch API body's own request)."""
        rule = self.settings.request.rule
        if (rule is None or task.body is not None or request.path is not ApiPath.CHAT
                or answer.filtered is not None or is_refusal(answer.refusal, answer.content)):
            return None
        return check(rule, answer.content)

    def _paid(self, paid: Paid | None, request: Request, answer: Answer) -> Paid:
        """``paid`` with one more bad answer's tokens and cost (its text the last)."""
        before = paid or Paid(None, Usage(), 0.0)
        usage = Usage(before.usage.prompt_tokens + answer.prompt_tokens,
                      before.usage.completion_tokens + answer.completion_tokens,
                      before.usage.total_tokens + answer.total_tokens,
                      before.usage.cached_tokens + answer.cached_tokens,
                      before.usage.reasoning_tokens + answer.reasoning_tokens)
        priced = answer.model if self.prices.find(answer.model) is not None else request.model
        cost = self.prices.cost(priced, answer.prompt_tokens, answer.completion_tokens,
                                answer.cached_tokens)
        total = None if cost is None or before.cost is None else round(before.cost + cost, 8)
        return Paid(answer.content, usage, total)

    async def _bad_answer(self, task: Task, output_index: int, mismatch: Mismatch,
                          tries: Attempts, key: int, paid: Paid) -> Outcome | _SendAgain | None:
        """An answer off the rule: asked again while --max-retries allows (a bad_answer retry),
        then failed with its text, tokens and cost kept (None: stopping)."""
        error = classify(BadAnswer(mismatch.reason))
        step = decide(error, tries, self.policy, self.rng, self.clock())
        if step.verdict is Verdict.RETRY:
            if self.stopping:
                return None
            tries.again(error, step)
            log.info("task %s attempt %d: %s (%s); asked again", task.id, tries.count,
                     error.error_type, error.message)
            if step.delay_s > 0:
                await self.sleep(step.delay_s)
            return None if self.stopping else _SEND_AGAIN
        return self._fail(task, output_index, error, tries.count, tries.by_type, key, paid)

    def _attempt_ended(self, tries: Attempts, ticket: Ticket) -> float:
        """Now the attempt has ended: add the wait before it left to ``tries`` (for a grant, a
        slot, the backoff before it), and start the next; its time on the wire, from leaving to
        now (0 when it never left)."""
        now = self.clock()
        left = now if ticket.left_at is None else ticket.left_at
        tries.waited_s += left - tries.waiting_since
        tries.waiting_since = now
        return now - left

    async def _failed_attempt(self, task: Task, output_index: int, sent: _Sent, error: CallError,
                              tries: Attempts) -> Outcome | _SendAgain | None:
        """After a failed attempt (the limiter told already), do what ``decide`` says:
        again, or the task's outcome (None: stopping)."""
        grant = sent.grant
        now = self.clock()
        if error.verdict is Verdict.WAIT:
            tries.waiting(now)
        step = decide(error, tries, self.policy, self.rng, now, outage=sent.outage)
        if step.verdict is Verdict.DISABLE_KEY:
            if await self._disable_key(grant.key, error):
                return _SEND_AGAIN
            return self._abort(task, output_index, "every API key was rejected (last: "
                               f"{error.status} {error.error_type}: {error.message})")
        if step.verdict is Verdict.RETRY:
            if self.stopping:
                return None
            tries.again(error, step)
            log.info("task %s attempt %d: %s (%s); again in %.2fs", task.id, tries.count,
                     error.error_type, error.message, step.delay_s)
            if step.delay_s > 0:
                await self.sleep(step.delay_s)
            return None if self.stopping else _SEND_AGAIN
        if step.verdict is Verdict.DROP_MODEL:  # (its message names the endpoint itself)
            return self._drop_model(task, output_index, grant.key, error, tries)
        failed = dataclasses.replace(error, message=step.message or error.message)
        if self.settings.named:  # which endpoint said so, by model and the key's last four
            failed = dataclasses.replace(failed,
                                         message=f"{self.endpoints[grant.key].label(grant.key)}: "
                                                         f"{failed.message}")
        if step.verdict is Verdict.ABORT:
            failure = self._fail(task, output_index, failed, tries.count, tries.by_type, grant.key)
            aborted = self._abort(task, output_index, f"{error.error_type}: {error.message}")
            return Outcome(failure.events + aborted.events, failure.line, to_errors=True)
        return self._fail(task, output_index, failed, tries.count, tries.by_type, grant.key)

    def _drop_model(self, task: Task, output_index: int, key: int, error: CallError,
                    tries: Attempts) -> Outcome:
        """The server does not know the model: fail the task, take no more of the model's, and tell
        the driver, which decides whether the run goes on (another model is left) or stops."""
        endpoint = self.endpoints[key]
        model_index = unit_of(output_index, len(self.models))[1]
        message = (f"model {self.models[model_index]} is unknown at {endpoint.place()}: "
                   f"{error.message}")
        self.dropped[model_index] = message
        line = f"{endpoint.label(key)}: {message}" if self.settings.named else message
        failure = self._fail(task, output_index, dataclasses.replace(error, message=line),
                             tries.count, tries.by_type, key)
        notice = ModelUnknown(redact(message, self.keys), model_index)
        return Outcome((*failure.events, notice), failure.line, to_errors=True)

    async def _any_key_left(self) -> bool:
        for key in range(len(self.keys)):
            if not await self.limiter.key_disabled(key):
                return True
        return False

    async def _disable_key(self, key: int, error: CallError) -> bool:
        """Stop using a rejected key; whether any key is left."""
        already = await self.limiter.key_disabled(key)
        left = await self.limiter.disable_key(key)
        if not already:
            hint = self.endpoints[key].label(key)
            log.warning("API key %s rejected (%s %s): disabled for the rest of the run", hint,
                        error.status, error.error_type)
            self.notices.append(KeyDisabled(hint, f"{error.status} {error.error_type}"))
        return left

    def _succeed(self, task: Task, output_index: int, request: Request, answer: Answer,
                 tries: Attempts, latency: float, key: int,
                 checked: Parsed | None = None) -> Outcome:
        """The answered task's line and event; ``latency``: the answering request's time on the
        wire (the waits before its requests left are ``tries.waited_s``). Under --strict-model an
        answer by another model than requested is a wrong_model failure instead (paid, but not
        done: a rerun asks again)."""
        place = self.endpoints[key].place()
        if self.settings.strict_model:
            wrong = wrong_model(request.model, answer, f"at {place}")
            if wrong is not None:
                return self._fail(task, output_index, wrong, tries.count, tries.by_type, key)
        # The prompt's estimate prices an answer that came without usage (the budget counts it).
        # The line names its endpoint only in a run with a table (else the manifest's base_url).
        line, done = answered(task, output_index, request.model, answer, tries.count, latency,
                              self.prices, retries=tries.by_type,
                              prompt_estimate=request.prompt_tokens, waited=tries.waited_s,
                              endpoint=place if self.settings.named else None,
                              parsed=checked, key=key, place=place)
        if self.settings.judging is not None:  # a judge's verdict: the judge line instead
            usage = None
            if answer.usage_known:
                usage = Usage(answer.prompt_tokens, answer.completion_tokens, answer.total_tokens,
                              answer.cached_tokens, answer.reasoning_tokens)
            text = answer.content if answer.content is not None else answer.refusal
            line = judge_line(task.id, self.settings.judging, _judged(task), text=text,
                              fields=checked.fields() if checked is not None else None,
                              usage=usage, cost=done.cost)
        return Outcome((done,), line)

    def _fail(self, task: Task, output_index: int, error: CallError, attempts: int,
              retries: dict[str, int] | None = None, key: int | None = None,
              paid: Paid | None = None) -> Outcome:
        """The task's failure line and event; ``key``: the key (endpoint) that answered last;
        ``paid``: the answers it got, billed though it failed."""
        # A server may quote the request back, key included: nothing leaves unredacted.
        message = redact(error.message, self.keys)
        retries = retries or {}
        if paid is not None and paid.text is not None:
            paid = dataclasses.replace(paid, text=redact(paid.text, self.keys))
        line = failure_line(task.id, task.body is not None, error.error_type, error.status, message,
                            attempts, retries, paid=paid)
        log.warning("task %s failed after %d attempts: %s: %s", task.id, attempts, error.error_type,
                    message)
        usage = paid.usage if paid is not None else Usage()
        failed = TaskFailed(task.id, output_index, error.error_type, error.status, message,
                            attempts, retries, key, usage.prompt_tokens, usage.completion_tokens,
                            paid.cost if paid is not None else None)
        return Outcome((failed,), line, to_errors=True)

    def _abort(self, task: Task, output_index: int, message: str) -> Outcome:
        """No task can succeed: tell the host, and take nothing new."""
        self.stop()
        return Outcome((Abort(redact(message, self.keys), task.id, output_index),))
