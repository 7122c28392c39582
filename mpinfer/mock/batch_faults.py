"""How the mock's Batch API misbehaves on request: the fault settings of ``POST /_mock/batches``.

Kept apart from MockConfig (the chat endpoint's settings) so that the two can change independently.
Each fault reproduces something OpenAI documents: a batch that expires inside its window (the
requests it did not reach come back in its error file with code ``batch_expired``), requests that
fail with a 5xx in the error file, a batch that fails validation (``status: "failed"`` with
``errors``), the per-model enqueued-token limit (a batch that would pass it fails validation with
``token_limit_exceeded``), a limit on batch creations per window (429), slow processing, and file
deletes that fail.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LINE_OUTCOMES = frozenset({"ok", "500", "400", "timeout"})
"""What a scripted request of a batch may do: answer, fail with 500 or 400, or
time out (``request_timeout``)."""


@dataclass(frozen=True)
class BatchFaults:
    """The Batch API's timing and faults; every default is a well-behaved, fast server."""

    step_s: float = 0.05
    """Seconds spent in each of validating and finalizing (and cancelling)."""

    request_s: float = 0.0
    """Seconds spent on each request while in_progress (slow processing)."""

    expire_next: int = 0
    """How many of the next batches expire part way."""

    expire_after: int = 0
    """An expiring batch answers this many requests, then expires."""

    fail_next: int = 0
    """How many of the next batches fail validation (``failed`` with ``errors``)."""

    p500: float = 0.0
    """Probability that a request of a batch fails with 500 (it lands in the error file)."""

    token_limit: int | None = None
    """Enqueued prompt tokens allowed per model over all unfinished batches; None: no limit."""

    max_creates: int | None = None
    """Batch creations allowed per ``create_window_s``; more get 429. None: no limit."""

    create_window_s: float = 3600.0
    """The window ``max_creates`` counts over (OpenAI: about 2,000 an hour)."""

    create_wait_s: float = 0.0
    """Seconds ``POST /v1/batches`` waits before the batch exists (a slow
    create: a crash loses nothing)."""

    create_reply_wait_s: float = 0.0
    """Seconds ``POST /v1/batches`` waits after the batch exists, before
    answering (a crash here loses the id)."""

    delete_status: int | None = None
    """HTTP status every ``DELETE /v1/files/{id}`` fails with (the file stays);
    None: deletes work."""

    seed: int = 0
    """Seed of the draw behind ``p500``."""

    def __post_init__(self) -> None:
        for name in ("step_s", "request_s", "create_wait_s", "create_reply_wait_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0")
        for name in ("expire_next", "expire_after", "fail_next"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not 0.0 <= self.p500 <= 1.0:
            raise ValueError("p500 must be within [0, 1]")
        for name in ("token_limit", "max_creates"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null")
        if self.delete_status is not None and not 400 <= self.delete_status <= 599:
            raise ValueError("delete_status must be an HTTP error status (400 to 599) or null")
        if not self.create_window_s > 0:
            raise ValueError("create_window_s must be > 0")


_INTEGERS = frozenset({"expire_next", "expire_after", "fail_next", "seed"})
_OPTIONAL_INTEGERS = frozenset({"token_limit", "max_creates", "delete_status"})


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"{name} must be a whole number")
    return int(value)


def updated(
    faults: BatchFaults, settings: Mapping[str, Any]
) -> tuple[BatchFaults, dict[str, list[str]]]:
    """Apply the JSON settings of ``POST /_mock/batches``: the new faults and per-request scripts.

    ``script`` maps a request's ``custom_id`` to the outcomes of its next executions, one per batch
    that holds it (see LINE_OUTCOMES). Raises ValueError (TypeError for a wrong type) and then
    changes nothing.
    """
    if not isinstance(settings, Mapping):
        raise TypeError("settings must be a JSON object")
    fields = {f.name for f in dataclasses.fields(BatchFaults)}
    changes: dict[str, Any] = {}
    scripts: dict[str, list[str]] = {}
    for name, value in settings.items():
        if name == "script":
            if not isinstance(value, Mapping):
                raise ValueError("script must map custom_ids to lists of outcomes")
            for custom_id, outcomes in value.items():
                if not isinstance(outcomes, list) or any(o not in LINE_OUTCOMES for o in outcomes):
                    raise ValueError(f"script[{custom_id!r}] must be a list of "
                                     f"{sorted(LINE_OUTCOMES)}")
                scripts[str(custom_id)] = list(outcomes)
        elif name not in fields:
            raise ValueError(f"unknown batch setting {name!r}; known: script, "
                             f"{', '.join(sorted(fields))}")
        elif name in _OPTIONAL_INTEGERS:
            changes[name] = None if value is None else _whole(name, value)
        elif name in _INTEGERS:
            changes[name] = _whole(name, value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number")
        else:
            changes[name] = float(value)
    return dataclasses.replace(faults, **changes), scripts
