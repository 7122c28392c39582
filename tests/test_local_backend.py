"""The local backend: what a dead worker wrote is read from files; tasks go to a worker in batches;
the lines of a worker's turn go in one write, each outcome's events after it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import multiprocess
import orjson

from mpinfer.api.prices import load_prices
from mpinfer.backends.base import OutcomeWriter, Returned, WorkerDied
from mpinfer.backends.local import LocalBackend, _Slot
from mpinfer.backends.runner import Outcome
from mpinfer.config import RunConfig
from mpinfer.events import Abort, Fatal, TaskDone, TaskFailed, WorkItem
from mpinfer.inputs.tasks import Task
from mpinfer.store.output import Appender, OutputPaths
from mpinfer.store.records import Failure, Result, Usage


def _answer(task_id: str) -> bytes:
    return Result(id=task_id, input_prompt="p", images=[], answer="yes", model="gpt-4o-mini",
                  requested_model="gpt-4o-mini", usage=Usage(3, 1, 4, 0), finish_reason="stop",
                  latency_s=0.1, attempts=1, processed_at=time.time(), cost=None).to_line()


def test_a_failure_a_dead_worker_wrote_but_never_reported_is_not_sent_again(tmp_path: Path) -> None:
    # Given an output whose errors file holds a failure of t1 from an earlier run
    paths = OutputPaths.of(tmp_path / "out.jsonl")
    appender = Appender(paths)
    appender.append(paths.errors,
                    Failure("t1", "server_error", 500, "earlier run", 4, 0.0).to_line())
    config = RunConfig(input=tmp_path / "tasks.jsonl", output=paths.output, api_keys=("sk-test",),
                       processes=1)
    backend = LocalBackend(config, [paths], [0], None, load_prices())
    # And a worker holding t1, t2 and t3 that wrote t2's answer and t3's failure, then died before
    # saying so
    appender.append(paths.output, _answer("t2"))
    appender.append(paths.errors,
                    Failure("t3", "bad_request", 400, "no such model", 1, time.time()).to_line())
    appender.close()
    ctx = multiprocess.get_context("fork")
    process = ctx.Process(target=os._exit, args=(9,))
    process.start()
    parent_end, child_end = ctx.Pipe(duplex=True)
    child_end.close()
    held = {(t.id, 0): t for t in (Task("t1", "a"), Task("t2", "b"), Task("t3", "c"))}
    backend.slots.append(_Slot(0, process, parent_end, held=held))
    try:
        # When the backend sees the worker die
        notes: list[object] = []
        deadline = time.monotonic() + 10
        while not any(isinstance(n, WorkerDied) for n in notes) and time.monotonic() < deadline:
            notes += backend.poll(0.2)
    finally:
        backend.close()
    # Then t3 counts as failed (the worker's own line), t2 as written, and only t1 is sent again
    assert [n for n in notes if isinstance(n, TaskFailed)] == [
        TaskFailed("t3", 0, "bad_request", 400, "no such model", 1)]
    returned = [n for n in notes if isinstance(n, Returned)]
    assert [[task.id for task, _ in r.items] for r in returned] == [["t1"]]
    assert returned[0].recovered == 1
    assert WorkerDied(0, expected=False) in notes


def test_a_worker_filled_up_takes_more_only_once_it_has_room_for_half_of_minus_c(
        tmp_path: Path) -> None:
    # Given a backend of one worker at -c 8 (24 tasks held: 8 on the wire, 8 built ahead, 8 queued)
    paths = OutputPaths.of(tmp_path / "out.jsonl")
    config = RunConfig(input=tmp_path / "tasks.jsonl", output=paths.output, api_keys=("sk-test",),
                       processes=1, concurrency=8)
    backend = LocalBackend(config, [paths], [0], None, load_prices())
    ctx = multiprocess.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=True)
    process = ctx.Process(target=os._exit, args=(0,))
    process.start()
    process.join()
    slot = _Slot(0, process, parent_end)
    backend.slots.append(slot)
    items: list[WorkItem] = [(Task(f"t{n}", "p"), 0) for n in range(40)]
    try:
        # When the driver fills it up
        taken = 0
        while backend.room() > 0 and backend.submit(items[taken]):
            taken += 1
        backend._flush(slot)
        full = backend.room()
        # And the worker reports 3 done, then a fourth
        for n in range(3):
            slot.held.pop((f"t{n}", 0))
        after_three = backend.room()
        slot.held.pop(("t3", 0))
        after_four = backend.room()
    finally:
        child_end.close()
        backend.close()
    # Then it took all 24, then none until 4 (half of -c) were done, in one batch
    assert (taken, full, after_three, after_four) == (24, 0, 0, 4)


def _ids(path: Path) -> list[str]:
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


def _done(task_id: str, line: bytes | None, to_errors: bool = False) -> Outcome:
    return Outcome((TaskDone(task_id, 0),), line, to_errors)


def test_the_lines_of_a_turn_go_in_one_write_each_file_and_report_in_their_order(
        tmp_path: Path) -> None:
    # Given a writer over two outputs
    first, second = OutputPaths.of(tmp_path / "a.jsonl"), OutputPaths.of(tmp_path / "b.jsonl")
    writer = OutcomeWriter((first, second), fsync=False)
    failure = Failure("t2", "bad_request", 400, "no", 1, 0.0).to_line()
    abort = Outcome((Abort("no key left", "t4", 0),))
    try:
        # When a turn's outcomes are written: answers to both outputs, a failure, one with no line
        events = writer.write_many([("t1", 0, _done("t1", _answer("t1"))),
                                    ("t2", 0, Outcome((TaskFailed("t2", 0, "bad_request", 400,
                                                                  "no", 1),), failure, True)),
                                    ("t3", 1, _done("t3", _answer("t3"))),
                                    ("t4", 0, abort),
                                    ("t5", 0, _done("t5", _answer("t5")))])
    finally:
        writer.close()
    # Then each file holds its lines whole, in order, and the events come in the outcomes' order
    assert _ids(first.output) == ["t1", "t5"] and _ids(second.output) == ["t3"]
    assert first.errors.read_bytes() == failure
    assert [getattr(e, "id", None) for e in events] == ["t1", "t2", "t3", "t4", "t5"]
    assert [type(e) for e in events] == [TaskDone, TaskFailed, TaskDone, Abort, TaskDone]


def test_a_file_that_cannot_be_written_fails_only_the_outcomes_bound_for_it(
        tmp_path: Path) -> None:
    # Given a writer over two outputs, the first of which cannot be opened (a folder in its place)
    first, second = OutputPaths.of(tmp_path / "a.jsonl"), OutputPaths.of(tmp_path / "b.jsonl")
    first.output.mkdir()
    writer = OutcomeWriter((first, second), fsync=False)
    try:
        # When a turn's answers to both are written
        events = writer.write_many([("t1", 0, _done("t1", _answer("t1"))),
                                    ("t2", 1, _done("t2", _answer("t2"))),
                                    ("t3", 0, _done("t3", _answer("t3")))])
    finally:
        writer.close()
    # Then the first's answers report a Fatal each (not done), the second's is written and done
    assert [(type(e), e.id) for e in events] == [(Fatal, "t1"), (TaskDone, "t2"), (Fatal, "t3")]
    assert _ids(second.output) == ["t2"]
