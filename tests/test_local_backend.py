"""The local backend's side of a worker's death: what the dead worker wrote is read from files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import multiprocess

from mpinfer.api.prices import load_prices
from mpinfer.backends.base import Returned, WorkerDied
from mpinfer.backends.local import LocalBackend, _Slot
from mpinfer.config import RunConfig
from mpinfer.events import TaskFailed
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
