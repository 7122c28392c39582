"""What crosses processes and hosts: a worker's events, its work, and why a run stops.

Every event is a frozen dataclass. A local worker sends them over its pipe as orjson bytes, ``[kind,
fields]`` (``encode`` / ``decode``: decoding gives back an equal dataclass); a Ray actor returns the
dataclasses themselves. The driver (``RunState.on_event``) dispatches on their types.

A run that ends before its work is done carries a ``Stopped``: a ``StopReason`` (which knows the
exit code the command line ends with) and a detail message for the summary and the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import orjson

from .inputs import Task

# -- events: worker -> driver ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskDone:
    """The task's Result line is on disk (local), or is handed to the driver to write (Ray)."""

    kind: ClassVar[str] = "done"
    id: str
    output_index: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float | None = None  # the answering request's time on the wire
    cost: float | None = None
    mismatch: bool = False  # answered by another model than the one requested
    attempts: int = 1
    refused: bool = False  # the answer is a refusal (kept in the line's "refusal", answer null)
    truncated: bool = False  # cut off at max_tokens (finish_reason "length")
    retries: dict[str, int] = field(default_factory=dict)  # by the error type of the failed attempt
    filtered: bool = False  # a content filter stopped it (kept in the line's "filtered")
    no_usage: bool = False  # the server sent no usage: ``cost`` is None, its estimate below
    estimated_cost: float | None = None  # an answer without usage, priced at its estimate
    key: int | None = None  # the key (endpoint) that answered, for the per-key counts
    waited_s: float | None = None  # off the wire before its answering request left
    batch: bool = False  # answered in a batch: ``latency_s`` is the batch's own duration
    # where an answer by another model came from (Endpoint.place), for the summary's warning
    endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """The task's Failure line is in the errors file; a rerun tries it again."""

    kind: ClassVar[str] = "failed"
    id: str
    output_index: int
    error_type: str
    status: int | None
    message: str
    attempts: int
    retries: dict[str, int] = field(default_factory=dict)
    key: int | None = None  # the key (endpoint) that answered last; None: no request was sent
    # Answers it got and paid for, though it failed (a bad_answer): their tokens and cost
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None


@dataclass(frozen=True, slots=True)
class KeyDisabled:
    """An API key was rejected (401/403); the other keys go on. ``key`` is its
    hint, never the key."""

    kind: ClassVar[str] = "key_disabled"
    key: str
    message: str


@dataclass(frozen=True, slots=True)
class Abort:
    """No task can succeed (every key rejected, no quota): the run must stop."""

    kind: ClassVar[str] = "abort"
    message: str
    id: str | None = None
    output_index: int = 0


@dataclass(frozen=True, slots=True)
class ModelUnknown:
    """The server does not know the model (or the Azure deployment): none of its tasks can succeed,
    so the driver sends no more of them (and stops the run when no other model is left)."""

    kind: ClassVar[str] = "model_unknown"
    message: str
    model_index: int = 0


@dataclass(frozen=True, slots=True)
class Fatal:
    """The run cannot go on: the output cannot be written (a full disk), or a worker hit a bug."""

    kind: ClassVar[str] = "fatal"
    message: str
    id: str | None = None
    output_index: int = 0


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """The worker finished what it held and is about to exit: its death is expected."""

    kind: ClassVar[str] = "exit"


Event = TaskDone | TaskFailed | KeyDisabled | Abort | ModelUnknown | Fatal | WorkerExit

# -- work: driver -> local worker ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Work:
    """One task to run for the run's output at ``output_index`` (its place in
    store/output.run_outputs: a variant's and a model's), as that variant sends it."""

    kind: ClassVar[str] = "work"
    task: Task
    output_index: int


@dataclass(frozen=True, slots=True)
class StopWork:
    """Finish what is in flight, take nothing new, then exit."""

    kind: ClassVar[str] = "stop"


Message = Event | Work | StopWork
# a task and the index of the output it is for (a variant's and a model's), as the driver hands it
# out
WorkItem = tuple[Task, int]

_KINDS: dict[str, type[Any]] = {cls.kind: cls
                                for cls in (TaskDone, TaskFailed, KeyDisabled, Abort, ModelUnknown,
                                            Fatal, WorkerExit, Work, StopWork)}


def encode(*messages: Message) -> bytes:
    """The bytes one or more messages travel as on a local pipe, in one write.

    A worker sends the events of a whole turn of its event loop at once, and the parent the tasks of
    a whole turn of its loop: one write, one wake-up and one read for many messages (what that saved
    is in bench/README.md)."""
    return orjson.dumps([[message.kind, message] for message in messages])


def decode(raw: bytes) -> list[Message]:
    """The messages ``encode`` made, in order; ValueError for bytes that are not such."""
    try:
        return [_message(kind, fields) for kind, fields in orjson.loads(raw)]
    except (orjson.JSONDecodeError, ValueError, TypeError, KeyError):
        raise ValueError(f"not mpinfer messages: {raw[:80]!r}") from None


def _message(kind: str, fields: dict[str, Any]) -> Message:
    cls = _KINDS[kind]
    if cls is Work:
        task = fields["task"]
        task["images"] = tuple(task.get("images") or ())
        return Work(Task(**task), int(fields["output_index"]))
    return cls(**fields)  # type: ignore[no-any-return]


def decode_events(raw: bytes) -> list[Event]:
    """The events ``encode`` made (what a worker sends); ValueError for anything else."""
    events: list[Event] = []
    for message in decode(raw):
        if isinstance(message, (Work, StopWork)):
            raise ValueError(f"not an event: {message.kind}")
        events.append(message)
    return events


# -- why a run stops -------------------------------------------------------------------------------


class StopReason(StrEnum):
    """Why a run ended before its work was done; ``exit_code`` is what the command line exits with.

    ``label`` is how the summary names it (two reasons may share one: the user need not tell a dying
    worker pool from a full disk to know the run stopped on a fault).
    """

    exit_code: int
    label: str

    def __new__(cls, value: str, exit_code: int, label: str | None = None) -> StopReason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.exit_code = exit_code
        member.label = label or value
        return member

    INTERRUPTED = ("interrupted", 130)       # Ctrl-C or SIGTERM
    # --max-cost would be passed; a rerun with more budget goes on
    BUDGET = ("budget", 1)
    ABORTED = ("aborted", 5)                 # no task can succeed: every key rejected, no quota
    # the output cannot be written, or a worker crashed on a bug
    FATAL = ("fatal", 5)
    # workers kept dying: the respawn allowance is used up
    WORKERS_DYING = ("workers_dying", 5, "fatal")


@dataclass(frozen=True, slots=True)
class Stopped:
    """A stop reason and what happened, as the summary and log show it (``"aborted: ..."``)."""

    reason: StopReason
    detail: str = ""

    @property
    def exit_code(self) -> int:
        """The process's exit code for this stop."""
        return self.reason.exit_code

    def __str__(self) -> str:
        return f"{self.reason.label}: {self.detail}" if self.detail else self.reason.label
