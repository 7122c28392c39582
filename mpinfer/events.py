"""What crosses processes and hosts: the events a worker reports to the driver.

An event is a plain mapping (it travels as orjson bytes over a pipe, or as a Ray return value) whose
``kind`` is one of EventKind.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class EventKind(str, Enum):
    DONE = "done"                  # the Result line is on disk
    FAILED = "failed"              # the Failure line is in the errors file; a rerun tries again
    KEY_DISABLED = "key_disabled"  # a key was rejected; the others go on
    ABORT = "abort"                # no task can succeed (no key left, no quota): the run must stop
    FATAL = "fatal"                # the output cannot be written (full disk): the run must stop
    EXIT = "exit"                  # the worker finished and is about to exit


def event(kind: EventKind, task_id: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"kind": kind.value, "id": task_id, **fields}
