"""The one retry decision (api.retry.decide) and the runner's waits, with sleep and clock passed in.

``decide`` is pure: every branch is checked with a seeded generator and a given clock. The runner is
then run against the real mock server with a sleep that records and returns at once, so its timing
is checked without waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from helpers import run_at_once

from mpinfer.api.failures import CallError, Kind, Verdict
from mpinfer.api.prices import load_prices
from mpinfer.api.retry import MAX_RATE_BACKOFF_S, Attempts, decide
from mpinfer.backends.runner import TaskRunner, _Turn
from mpinfer.config import RunConfig
from mpinfer.inputs.tasks import Task
from mpinfer.limits import LimiterSettings, LocalLimiter, SharedLimiter
from mpinfer.mockserver import MockServerProcess
from mpinfer.slices import RetryPolicy, RunnerSettings

POLICY = RetryPolicy(max_retries=2, backoff_s=1.0, patience_s=300.0)


def error(kind: Kind, verdict: Verdict, retry_after: float | None = None) -> CallError:
    return CallError(kind, 429 if kind is Kind.RATE_LIMIT else None, f"{kind} happened", verdict,
                     retry_after)


@pytest.mark.parametrize("verdict", [Verdict.FAIL, Verdict.ABORT, Verdict.DISABLE_KEY])
def test_what_waiting_cannot_fix_is_decided_at_once(verdict: Verdict) -> None:
    # Given a failure that is the task's, the run's or the key's fault
    # When it is decided
    step = decide(error(Kind.BAD_REQUEST, verdict), Attempts(), POLICY, random.Random(1), 0.0)
    # Then the verdict stands, with the error's message
    assert (step.verdict, step.message) == (verdict, "bad_request happened")


def test_a_transient_failure_is_retried_with_a_counted_backoff_until_the_retries_run_out() -> None:
    # Given a timeout, with two retries allowed
    rng = random.Random(2)
    # When it is decided after 0, 1 and 2 retries
    steps = [decide(error(Kind.TIMEOUT, Verdict.RETRY), Attempts(retries=n), POLICY, rng, 0.0)
             for n in range(3)]
    # Then the first two are counted retries after 0.5-1 s and 1-2 s, and the third fails the task
    assert [s.verdict for s in steps] == [Verdict.RETRY, Verdict.RETRY, Verdict.FAIL]
    assert steps[0].counted and steps[1].counted
    assert 0.5 <= steps[0].delay_s <= 1.0 and 1.0 <= steps[1].delay_s <= 2.0


def test_a_rate_limit_is_waited_without_a_counted_retry_until_the_patience_is_spent() -> None:
    # Given a task that has used all its retries and been rate limited since t=100
    tries = Attempts(retries=2, rate_limited=5, limited_since=100.0)
    rng = random.Random(3)
    # When 429s are decided, with and without a hint, before and after 300 s of patience
    hinted = decide(error(Kind.RATE_LIMIT, Verdict.WAIT, 2.0), tries, POLICY, rng, 150.0)
    bare = decide(error(Kind.RATE_LIMIT, Verdict.WAIT), tries, POLICY, rng, 150.0)
    spent = decide(error(Kind.RATE_LIMIT, Verdict.WAIT, 2.0), tries, POLICY, rng, 400.0)
    # Then the first two are retries that use up nothing (the limiter's pause holds a hinted one),
    # and the third fails the task saying why
    assert (hinted.verdict, hinted.counted) == (Verdict.RETRY, False) and hinted.delay_s <= 0.05
    assert (bare.verdict, bare.counted) == (Verdict.RETRY, False)
    assert bare.delay_s <= MAX_RATE_BACKOFF_S
    assert spent.verdict is Verdict.FAIL and "patience" in spent.message and "300s" in spent.message


def test_without_a_limiter_a_hinted_rate_limit_is_waited_by_the_step_within_the_patience() -> None:
    # Given a task rate limited since t=100, with no limiter to pause its lane (the Batch client)
    tries = Attempts(rate_limited=1, limited_since=100.0)
    rng = random.Random(5)
    # When 429s that ask for 2 s and for 100 s are decided at t=350 (50 s of the patience left)
    short, long = (decide(error(Kind.RATE_LIMIT, Verdict.WAIT, hint), tries, POLICY, rng, 350.0,
                          limiter=False) for hint in (2.0, 100.0))
    # Then the step waits the hint itself, uncounted, but never past the patience
    assert (short.verdict, short.counted) == (Verdict.RETRY, False) and 2.0 <= short.delay_s <= 3.0
    assert (long.verdict, long.counted, long.delay_s) == (Verdict.RETRY, False, 50.0)


def test_a_connection_error_during_an_outage_is_not_counted() -> None:
    # Given a task out of retries, and a connection error while the limiter says the server is down
    step = decide(error(Kind.CONNECTION, Verdict.RETRY), Attempts(retries=2), POLICY,
                  random.Random(4), 0.0, outage=True)
    # Then it goes again, uncounted: the limiter holds it until a probe gets through
    assert (step.verdict, step.counted, step.delay_s) == (Verdict.RETRY, False, 0.0)


def _runner(mock: MockServerProcess, sleeps: list[float], **settings: Any) -> TaskRunner:
    config = RunConfig(
        base_url=mock.base_url, api_keys=("sk-test-0000000000000000fake9zq7",), **settings)
    limiter = SharedLimiter(LimiterSettings(1, 1))

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)  # recorded, not waited

    return TaskRunner(RunnerSettings.of(config), load_prices(), LocalLimiter(limiter), sleep=sleep)


def _run(runner: TaskRunner, prompt: str) -> Any:
    async def go() -> Any:
        try:
            return await runner.run(Task(id="t1", prompt=prompt), 0)
        finally:
            await runner.close()

    return asyncio.run(go())


def test_the_runner_backs_off_between_server_errors_through_the_sleep_it_was_given(
    mock: MockServerProcess,
):
    # Given a server that fails a prompt twice with a 500, and a runner whose sleep only records
    mock.configure(script={"p500": ["500", "500", "ok"]})
    sleeps: list[float] = []
    runner = _runner(mock, sleeps, max_retries=3, retry_backoff=10.0)
    # When the task runs (backoffs of 5-10 s and 10-20 s, were they waited)
    outcome = _run(runner, "p500")
    # Then it is answered on the third attempt at once, having asked for exactly those two backoffs
    assert outcome is not None and type(outcome.events[0]).__name__ == "TaskDone"
    backoffs = [s for s in sleeps if s >= 1.0]
    assert len(backoffs) == 2 and 5.0 <= backoffs[0] <= 10.0 and 10.0 <= backoffs[1] <= 20.0


def test_the_runner_waits_out_429s_with_no_retries_allowed(mock: MockServerProcess):
    # Given a server that answers a prompt 429 four times (Retry-After 0.05 s), and no retries
    # allowed
    mock.configure(script={"p429": ["429"] * 4 + ["ok"]}, retry_after=0.05)
    sleeps: list[float] = []
    runner = _runner(mock, sleeps, max_retries=0)
    # When the task runs
    outcome = _run(runner, "p429")
    # Then it is answered on the fifth attempt: a rate limit used up no retry
    assert outcome is not None and type(outcome.events[0]).__name__ == "TaskDone"
    assert mock.stats()["received"]["p429"] == 5


class _CountingLimiter(LocalLimiter):
    """The real limiter, counting how often the runner asks it for a grant."""

    asked = 0

    async def try_acquire(self, model_index: int, charge: int) -> Any:
        self.asked += 1
        return await super().try_acquire(model_index, charge)


def _first_round(mock: MockServerProcess, tasks: int,
                 stop_after_s: float | None = None) -> tuple[list[Any], int]:
    """``tasks`` tasks run at once on a lane in its first round (one request until an answer),
    with real sleeps: their outcomes and how often the limiter was asked."""
    config = RunConfig(base_url=mock.base_url, api_keys=("sk-test-0000000000000000fake9zq7",))
    limiter = _CountingLimiter(SharedLimiter(LimiterSettings(1, 1, slow_start=True)))
    runner = TaskRunner(RunnerSettings.of(config), load_prices(), limiter)

    return asyncio.run(run_at_once(runner, tasks, stop_after_s)), limiter.asked


def test_requests_held_by_the_first_round_ask_the_limiter_in_turn_not_each_every_50ms(
    mock: MockServerProcess,
):
    # Given a server answering after 0.5 s, and 100 tasks at once on a lane in its first round
    mock.configure(latency_ms=500)
    # When they run
    outcomes, asked = _first_round(mock, 100)
    # Then all are answered, the first alone and the others after its answer opened the lane
    assert all(o is not None and type(o.events[0]).__name__ == "TaskDone" for o in outcomes)
    assert mock.stats()["max_in_flight"] == 99
    # and the 99 held asked the limiter in turn: about once a grant and once every 50 ms (each
    # asking every 50 ms through the first answer's 0.5 s was about a thousand looks)
    assert asked < 100 + 50


def test_requests_waiting_their_turn_end_unsent_when_the_runner_stops(mock: MockServerProcess):
    # Given a server answering after 2 s, and 50 tasks at once on a lane in its first round
    mock.configure(latency_ms=2000)
    # When the runner is stopped 0.3 s in, while 49 of them wait for the first answer
    outcomes, _ = _first_round(mock, 50, stop_after_s=0.3)
    # Then the waiting ones end unsent, left for the rerun (None), and only the first was sent
    assert sum(o is None for o in outcomes) == 49
    assert mock.stats()["requests"] == 1


def test_the_request_whose_turn_it_is_asks_again_as_soon_as_its_host_gives_a_grant_back() -> None:
    # Given the request whose turn it is, told by the limiter to wait 5 s
    async def go() -> tuple[float, float]:
        turn = _Turn()
        started = time.monotonic()
        waiting = asyncio.ensure_future(turn.wait(5.0))
        await asyncio.sleep(0.05)
        # When a request of its host gives its grant back (the room it waits for may be free)
        turn.wake()
        await waiting
        woken = time.monotonic() - started
        # (and a wait nobody cuts short lasts its time)
        started = time.monotonic()
        await turn.wait(0.1)
        return woken, time.monotonic() - started

    woken, full = asyncio.run(go())
    # Then it asks again at once, not 5 s later
    assert woken < 2.0 and full >= 0.09, (woken, full)
