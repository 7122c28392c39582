"""Requests built ahead of their slot (backends/ahead.py's SendGate, the runner's ``_send``).

-c is still the most on the wire per worker, a request takes its grant from the limiter only once
it has its slot (so an answer's stated limit is heard before the next grant, and a worker holds no
more grants than slots), waiting for a slot is not the server's time, and a stop sends none of
those still waiting.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import orjson
from helpers import (
    Connection,
    Handler,
    keep_alive,
    read_jsonl,
    response,
    run_at_once,
    run_cli,
    start_cli,
    text_tasks,
    write_tasks,
)

from mpinfer.api.prices import load_prices
from mpinfer.backends.ahead import SendGate
from mpinfer.backends.runner import Outcome, TaskRunner
from mpinfer.config import RunConfig
from mpinfer.limits import Ending, Grant, Hints, LimiterSettings, LocalLimiter, SharedLimiter, Wait
from mpinfer.mockserver import MockServerProcess
from mpinfer.slices import RunnerSettings

KEY = "sk-test-0000000000000000fake7gt3"
WAIT_S = 60.0
ANSWER = {"id": "c", "object": "chat.completion", "model": "gpt-4o-mini",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def test_minus_c_is_still_the_most_requests_on_the_wire_of_a_worker(
    tmp_path: Path, mock: MockServerProcess,
) -> None:
    # Given 60 tasks, two workers with -c 3 (each builds 3 more ahead), answers after 150 ms
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(60))
    mock.configure(latency_ms=150)
    # When the run goes
    done = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "-p", "2", "-c", "3", "--base-url",
                   mock.base_url, cwd=tmp_path)
    # Then every task is answered once, and the server never had more than 2 x 3 in flight (and had
    # that many)
    assert done.returncode == 0, done.stderr
    ids = Counter(r["id"] for r in read_jsonl(tmp_path / "out.jsonl"))
    assert ids == Counter(f"t{i}" for i in range(60))
    stats = mock.stats()
    assert stats["max_in_flight"] == 6 and stats["requests"] == 60, stats


def _answer_after(delay_s: float, *headers: str) -> Handler:
    """A handler that answers a request after ``delay_s``."""
    async def answer(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay_s)
        writer.write(response(orjson.dumps(ANSWER), *headers))
        await writer.drain()
    return answer


def _answering_after(delay_s: float, *headers: str) -> Connection:
    """A keep-alive server's connection handler that answers each request after ``delay_s`` (at
    most 10)."""
    return keep_alive(_answer_after(delay_s, *headers))


class _Noting(LocalLimiter):
    """The real limiter, noting each grant and each limit heard in ``seen``, and the most grants
    held at once."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__(SharedLimiter(LimiterSettings(1, 1)))
        self.seen = seen
        self.held = self.most_held = 0

    async def try_acquire(self, model_index: int, charge: int) -> Grant | Wait:
        got = await super().try_acquire(model_index, charge)
        if isinstance(got, Grant):
            self.seen.append("grant")
            self.held += 1
            self.most_held = max(self.most_held, self.held)
        return got

    async def observe(self, lane: int, hints: Hints) -> None:
        self.seen.append("limit heard")
        await super().observe(lane, hints)

    async def release(self, grant: Grant, ending: Ending = Ending.OK, *, charged: int | None = None,
                      used: int = 0) -> bool:
        self.held -= 1
        return await super().release(grant, ending, charged=charged, used=used)


def _run_ahead(handler: Connection, tasks: int, slots: int, *, timeout: float = 5.0,
               stop_after_s: float | None = None) -> tuple[list[Outcome | None], _Noting, float]:
    """``tasks`` tasks at once through a runner with ``slots`` slots and as many built ahead,
    against a server answering with ``handler``: their outcomes, the limiter, the seconds taken."""
    seen: list[str] = []
    limiter = _Noting(seen)

    async def go() -> list[Outcome | None]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        config = RunConfig(base_url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1",
                           api_keys=(KEY,), concurrency=slots, timeout=timeout)
        runner = TaskRunner(RunnerSettings.of(config), load_prices(), limiter, build_ahead=slots)
        try:
            return await run_at_once(runner, tasks, stop_after_s, WAIT_S)
        finally:
            server.close()

    started = time.monotonic()
    outcomes = asyncio.run(go())
    return outcomes, limiter, time.monotonic() - started


def _answered(outcome: Outcome | None) -> bool:
    return outcome is not None and type(outcome.events[0]).__name__ == "TaskDone"


def test_a_request_built_ahead_takes_its_grant_after_the_answer_that_frees_its_slot_is_heard(
) -> None:
    # Given one slot and one request built ahead, and a server that states its limit on every
    # answer (60 a minute)
    # When two tasks go at once
    outcomes, limiter, _ = _run_ahead(_answering_after(0.2, "x-ratelimit-limit-requests: 60"), 2, 1)
    # Then both are answered, and the second took its grant only after the first answer's limit
    # was heard (so the limiter paces it under that limit), never holding a grant while it waited
    assert all(_answered(o) for o in outcomes), outcomes
    assert limiter.seen == ["grant", "limit heard", "grant", "limit heard"], limiter.seen


def test_a_worker_holds_no_more_grants_than_slots_however_many_are_built_ahead() -> None:
    # Given two slots and two requests built ahead, and a server answering after 0.1 s
    # When eight tasks go at once
    outcomes, limiter, _ = _run_ahead(_answering_after(0.1), 8, 2)
    # Then all are answered, and at most two grants were held at once (all eight were, while a
    # request took its grant before its slot: those waiting at the gate held theirs)
    assert all(_answered(o) for o in outcomes), outcomes
    assert limiter.most_held == 2 and limiter.held == 0, (limiter.most_held, limiter.held)


def test_waiting_for_a_slot_does_not_count_against_the_request_timeout() -> None:
    # Given one slot, a 1 s request timeout, and a server that answers each request after 0.7 s
    # When two tasks go at once (the second waits 0.7 s for the slot, then takes 0.7 s)
    outcomes, _, took = _run_ahead(_answering_after(0.7), 2, 1, timeout=1.0)
    # Then both are answered: the second's 1 s began when it left, not when it was built
    assert all(_answered(o) for o in outcomes), outcomes
    assert took >= 1.3  # one after the other: the gate held the second


def test_a_stop_turns_away_a_request_waiting_for_its_slot_unsent() -> None:
    # Given one slot, a request built ahead, and a server that answers after 0.3 s
    heads: list[bytes] = []
    # When the runner stops while the second waits for the first's slot
    outcomes, limiter, _ = _run_ahead(keep_alive(_answer_after(0.3), heads), 2, 1,
                                      stop_after_s=0.1)
    # Then the first is answered, and the second is left for the rerun, never sent nor granted
    assert _answered(outcomes[0]) and outcomes[1] is None, outcomes
    assert len(heads) == 1 and limiter.seen == ["grant"], limiter.seen


def test_a_stop_sends_none_of_the_requests_waiting_for_a_slot(tmp_path: Path,
                                                              mock: MockServerProcess) -> None:
    # Given one worker with -c 2 and answers that take 1.5 s and state no limit: the lane opens
    # with one request, then two (slow start), then four: two on the wire and two built ahead,
    # waiting for a slot
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(20))
    mock.configure(latency_ms=1500)
    args = ("-i", "tasks.jsonl", "-o", "out.jsonl", "-p", "1", "-c", "2", "--base-url",
            mock.base_url)
    proc = start_cli(*args, cwd=tmp_path)
    deadline = time.monotonic() + WAIT_S
    while mock.stats()["requests"] < 5 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert mock.stats()["requests"] == 5 and mock.stats()["in_flight"] == 2, mock.stats()
    time.sleep(0.3)  # the two built ahead are waiting at the gate by now
    # When Ctrl-C stops the run while the second two are on the wire
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=WAIT_S)
    # Then those are answered and written, and nothing else was sent
    assert proc.returncode == 130, stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 5
    assert mock.stats()["requests"] == 5, mock.stats()
    # And the rerun does the rest, each id once
    mock.configure(latency_ms=0)
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    ids = Counter(r["id"] for r in read_jsonl(tmp_path / "out.jsonl"))
    assert ids == Counter(f"t{i}" for i in range(20))



def test_the_gate_hands_freed_slots_first_come_first_served_skipping_a_cancelled_waiter() -> None:
    # Given a gate of two slots, both taken, and four requests waiting, the second then cancelled
    order: list[int] = []

    async def go() -> tuple[bool, bool]:
        gate = SendGate(2)
        assert await gate.take() and await gate.take()

        async def wait(n: int) -> None:
            if await gate.take():
                order.append(n)

        waiting = [asyncio.create_task(wait(n)) for n in range(4)]
        await asyncio.sleep(0)
        waiting[1].cancel()
        # When the two slots are freed together, and then the first waiter's
        for _ in range(3):
            gate.give_back()
        await asyncio.gather(*waiting, return_exceptions=True)
        # (the last two waiters hold the two slots: once they give them back, two may go)
        gate.give_back()
        gate.give_back()
        two = await gate.take() and await gate.take()
        try:
            await asyncio.wait_for(gate.take(), 0.05)
            third = True
        except TimeoutError:
            third = False
        return two, third

    two, third = asyncio.run(go())
    # Then the waiters got them in the order they came, the cancelled one none, and the gate still
    # has exactly its two slots
    assert order == [0, 2, 3]
    assert two and not third



def test_answers_that_come_together_let_the_requests_they_wake_go_first_and_one_alone_goes_on(
) -> None:
    # Given a gate, and what happens in the event loop noted as it goes
    together: list[str] = []
    alone: list[str] = []

    async def go() -> None:
        gate = SendGate(1)

        async def woken(seen: list[str]) -> None:
            seen.append("the woken request leaves")

        # When a first answer of a turn of the loop passes its slot on, then a second of the same
        # turn, which woke a request
        await gate.pass_on()
        together.append("the first answer goes on")
        waiting = asyncio.ensure_future(woken(together))
        await gate.pass_on()
        together.append("the second answer goes on")
        await waiting
        # And in a later turn an answer alone passes its slot on, a request woken by it
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(woken(alone))
        await gate.pass_on()
        alone.append("an answer alone goes on")
        await waiting

    asyncio.run(go())
    # Then the first went on at once, the second only after the request it woke had left; and the
    # one alone in its turn went on at once, before the request it woke
    assert together == ["the first answer goes on", "the woken request leaves",
                        "the second answer goes on"], together
    assert alone == ["an answer alone goes on", "the woken request leaves"], alone
