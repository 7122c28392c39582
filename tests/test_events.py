"""The run protocol: events cross the pipe as the same dataclasses; stop reasons have exit codes."""

from __future__ import annotations

import pytest

from mpinfer.cli import EXIT_INCOMPLETE, EXIT_OK, run_exit_code
from mpinfer.events import (
    Abort,
    Fatal,
    KeyDisabled,
    Stopped,
    StopReason,
    StopWork,
    TaskDone,
    TaskFailed,
    Work,
    WorkerExit,
    decode,
    decode_events,
    encode,
)
from mpinfer.inputs.tasks import Task
from mpinfer.reports.summary import RunSummary

MESSAGES = [TaskDone("t1", 0, prompt_tokens=12, completion_tokens=3, latency_s=0.25, cost=None,
                     mismatch=True, attempts=2),
            TaskFailed("t2", 1, "server_error", 500, "boom", 4),
            KeyDisabled("sk-...abcd", "401 authentication"),
            Abort("every API key was rejected", "t3", 0), Fatal("No space left on device", "t4", 1),
            Fatal("worker crashed: RuntimeError: bug"), WorkerExit(),
            Work(Task("t5", "what is this?", ("a.png", "b.png"), system="be brief", temperature=0.2,
                      line=7), 1),
            Work(Task("t6", "",
                      body={"model": "m", "messages": [{"role": "user", "content": "hi"}]}), 0),
            StopWork()]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_a_message_decodes_to_the_same_dataclass_it_was_encoded_from(message: object) -> None:
    # Given a message a worker or the driver sends over a local pipe
    # When it is encoded to bytes and decoded again
    [copy] = decode(encode(message))  # type: ignore[arg-type]
    # Then it is an equal value of the same class
    assert type(copy) is type(message) and copy == message


def test_many_messages_in_one_write_decode_in_their_order() -> None:
    # Given a turn's worth of messages sent in one write
    # When they are decoded
    copies = decode(encode(*MESSAGES))  # type: ignore[arg-type]
    # Then each comes back, equal and in its place
    assert copies == MESSAGES and [type(c) for c in copies] == [type(m) for m in MESSAGES]


def test_bytes_that_are_not_a_message_or_not_an_event_are_refused() -> None:
    # Given garbage, an unknown kind, and a work message where an event is expected
    # Then each is a ValueError, never a half-built event
    for raw in (b"{", b'[["nonsense",{}]]', b'["done",{}]', b'{"kind":"done"}',
                b'[["done",{"id":"t"}]]'):
        with pytest.raises(ValueError):
            decode(raw)
    with pytest.raises(ValueError):
        decode_events(encode(TaskDone("t1", 0, 1, 1, 0.1, None, False, 1), StopWork()))


def test_each_stop_reason_carries_its_exit_code_and_reads_as_the_summary_shows_it() -> None:
    # Given the reasons a run can stop for
    # Then their exit codes are the documented ones, and the text is "<label>: <detail>"
    codes = {reason: reason.exit_code for reason in StopReason}
    assert codes == {StopReason.INTERRUPTED: 130, StopReason.BUDGET: 1, StopReason.ABORTED: 5,
                     StopReason.FATAL: 5, StopReason.WORKERS_DYING: 5}
    assert str(Stopped(StopReason.INTERRUPTED)) == "interrupted"
    assert str(Stopped(StopReason.WORKERS_DYING,
                       "workers keep dying")) == "fatal: workers keep dying"
    assert (str(Stopped(StopReason.BUDGET, "$1.0000 would be passed"))
            == "budget: $1.0000 would be passed")


@pytest.mark.parametrize(("stopped", "remaining", "code"), [
    (None, 0, EXIT_OK),
    (None, 3, EXIT_INCOMPLETE),
    (Stopped(StopReason.BUDGET, "x"), 3, EXIT_INCOMPLETE),
    (Stopped(StopReason.BUDGET, "x"), 0, EXIT_OK),
    (Stopped(StopReason.INTERRUPTED), 0, 130),
    (Stopped(StopReason.ABORTED, "no key"), 3, 5),
    (Stopped(StopReason.FATAL, "disk full"), 3, 5),
    (Stopped(StopReason.WORKERS_DYING, "dying"), 3, 5),
])
def test_a_runs_end_maps_to_one_exit_code(stopped: Stopped | None, remaining: int,
                                          code: int) -> None:
    # Given a run's summary that stopped (or not) with some work left
    summary = RunSummary(total=10, already_done=10 - remaining, stopped=stopped)
    # When the command line picks its exit code
    # Then it is the stop reason's, or whether work is left
    assert run_exit_code(summary) == code


def test_the_summary_file_and_the_manifest_show_the_stop_as_text() -> None:
    # Given a summary stopped on a fault
    summary = RunSummary(total=2, already_done=0,
                         stopped=Stopped(StopReason.FATAL, "No space left on device"))
    # Then its JSON form holds the same text the summary prints
    assert summary.to_dict(live=False)["stopped"] == "fatal: No space left on device"
