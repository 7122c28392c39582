"""Requests built ahead of their slot (api/http.py's SendGate).

-c is still the most on the wire per worker, waiting for a slot is not the server's time, and a stop
sends none of those still waiting (that a server stating a limit gets no more built ahead, and those
waiting go back to the limiter, is tests/test_finishes.py's: its 429s stay few).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from helpers import (
    Connection,
    Handler,
    keep_alive,
    read_jsonl,
    response,
    run_cli,
    start_cli,
    text_tasks,
    write_tasks,
)

from mpinfer.api.answer import Answer
from mpinfer.api.client import complete, make_client
from mpinfer.api.http import SendGate
from mpinfer.api.ticket import Ticket, Unsent
from mpinfer.backends.ahead import BuildAhead
from mpinfer.config import RunConfig
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


class _Noting(Ticket):
    """A ticket that notes each send and each answer's arrival in ``seen``."""

    def __init__(self, seconds: float, seen: list[str]) -> None:
        super().__init__(seconds)
        self.seen = seen

    async def leaving(self) -> None:
        self.seen.append("send")

    async def answered(self, status: int, headers: Any) -> None:
        self.seen.append(f"answer {status} limit {headers.get('X-RateLimit-Limit-Requests')}")


def test_an_answers_headers_are_seen_before_the_request_its_slot_frees_is_sent() -> None:
    # Given one slot, a server that states its limit on every answer, and tickets that note each
    # send and each answer's arrival, and each answer as the caller gets it
    seen: list[str] = []

    async def go() -> None:
        server = await asyncio.start_server(_answering_after(0.2, "x-ratelimit-limit-requests: 60"),
                                            "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = make_client(KEY, f"http://127.0.0.1:{port}/v1", 5.0, gate=SendGate(1))
        request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

        async def one() -> None:
            await complete(client, request, _Noting(5.0, seen))
            seen.append("returned")

        try:
            await asyncio.gather(one(), one())
        finally:
            await client.close()
            server.close()

    # When two requests go at once, the second waiting for the first's slot
    asyncio.run(go())
    # Then the first answer's limit was seen before the second request left (which the limiter can
    # then hold back), and each caller had its answer after its own was seen (the first, alone in
    # its turn of the loop, goes on before or after the second send: SendGate.pass_on)
    assert [event for event in seen if event != "returned"] == [
        "send", "answer 200 limit 60", "send", "answer 200 limit 60"], seen
    assert seen.count("returned") == 2 and seen[1] == "answer 200 limit 60", seen
    assert seen.index("returned") > 1 and seen[-1] == "returned", seen


def test_waiting_for_a_slot_does_not_count_against_the_request_timeout() -> None:
    # Given one slot, a 1 s request timeout, and a server that answers each request after 0.7 s
    serve = _answering_after(0.7)

    async def go() -> list[Answer | BaseException]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = make_client(KEY, f"http://127.0.0.1:{port}/v1", 1.0, gate=SendGate(1))
        request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        try:
            return await asyncio.gather(*(complete(client, request, Ticket(1.0)) for _ in range(2)),
                                        return_exceptions=True)
        finally:
            await client.close()
            server.close()

    # When two requests are sent at once (the second waits 0.7 s for the slot, then takes 0.7 s)
    started = time.monotonic()
    answers = asyncio.run(go())
    # Then both are answered: the second's 1 s began when it left, not when it was built
    assert len(answers) == 2
    assert all(isinstance(a, Answer) and a.content == "ok" for a in answers), answers
    assert time.monotonic() - started >= 1.3  # one after the other: the gate held the second


def test_a_closed_gate_turns_a_waiting_request_away_as_a_value() -> None:
    # Given one slot and a server that answers after 0.3 s
    heads: list[bytes] = []

    async def go() -> list[Answer | Unsent]:
        server = await asyncio.start_server(keep_alive(_answer_after(0.3), heads), "127.0.0.1", 0)
        gate = SendGate(1)
        client = make_client(KEY, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", 5.0,
                             gate=gate)
        request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        try:
            both = asyncio.gather(*(complete(client, request, Ticket(5.0)) for _ in range(2)))
            await asyncio.sleep(0.1)
            # When the gate is closed while the second waits for the first's slot
            gate.close()
            return list(await both)
        finally:
            await client.close()
            server.close()

    answers = asyncio.run(go())
    # Then the first is answered, and the second comes back as "stopping", never sent
    assert len(answers) == 2, answers
    assert isinstance(answers[0], Answer) and answers[1] is Unsent.STOPPING, answers
    assert len(heads) == 1


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



def test_a_request_granted_before_a_limit_was_in_play_is_stale_once_one_is() -> None:
    # Given a host that builds ahead, with no limit set, and another with --rpm set
    keys = ("sk-test",)
    free = BuildAhead(RunnerSettings.of(RunConfig(concurrency=2, api_keys=keys)), extra=2)
    limited = BuildAhead(RunnerSettings.of(RunConfig(concurrency=2, rpm=60, api_keys=keys)),
                         extra=2)
    granted_free = free.paced
    # Then the first builds ahead from the start, the second never does
    assert free.allowed.is_set() and not limited.allowed.is_set()
    assert not free.stale(granted_free)
    # When the first hears of a limit
    free.pace()
    # Then it stops building ahead, and what was granted before asks again; what is granted now
    # does not
    assert not free.allowed.is_set()
    assert free.stale(granted_free) and not free.stale(free.paced)
    # When it stops
    free.stop()
    # Then its gate turns away the requests still waiting, and its idle builders wake to end
    assert free.gate is not None and free.gate.closed and free.allowed.is_set()



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
