"""Merging a finished batch: its output and error lines become result lines,
failures, or rows to resubmit.

Every answer becomes the same line an online answer would (store/records.py builds both), priced at
the Batch API's price, and is written once: ids already in the output are skipped, so a merge that a
crash interrupted is simply done again. The rest is classified by the table of ``api.failures``
(``classify_line``), as online failures are:
- transient (a RETRY or WAIT verdict: 5xx, 408/409/429, ``batch_expired``, ``batch_cancelled``,
  ``request_timeout``, and rows that are in neither file, as when a batch failed): resubmitted in a
  new batch while ``--max-retries`` allows, then a failure line;
- permanent (400, 401, 404, ...): a failure line in the errors file, as online.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..api.answer import answer_of
from ..api.failures import CallError, Kind, Verdict, of_status
from ..api.prices import PriceTable
from ..config import RequestSettings
from ..errors import MalformedResponse
from ..events import TaskDone, TaskFailed
from ..inputs import Task
from ..redact import redact
from ..slices import RetryPolicy
from ..store.answers import answered, wrong_model
from ..store.records import failure_line
from .batch_plan import Chunk

log = logging.getLogger("mpinfer.run")
@dataclass
class Merged:
    """What one merge produced: lines to append,
    events for the driver, and the ids to send again."""

    results: list[bytes] = field(default_factory=list)
    failures: list[bytes] = field(default_factory=list)
    events: list[TaskDone | TaskFailed] = field(default_factory=list)
    retry: list[str] = field(default_factory=list)
    # Unanswered rows of a cancelled job: for a later run
    released: list[str] = field(default_factory=list)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def classify_line(record: dict[str, Any]) -> CallError:
    """Classify an error-file line (``response`` with a status, or ``error`` with a code)."""
    response = _object(record.get("response"))
    error = _object(record.get("error"))
    status = response.get("status_code") if isinstance(response.get("status_code"), int) else None
    body_error = _object(_object(response.get("body")).get("error"))
    code = str(error.get("code") or body_error.get("code") or "")
    message = str(error.get("message") or body_error.get("message") or "no message")[:500]
    return of_status(status, code, message)


def records(data: bytes) -> Iterator[dict[str, Any]]:
    """The lines of a Batch API output or error file that parse
    and carry a ``custom_id``; anything else is skipped."""
    for raw in data.splitlines():
        if raw.strip():
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
                yield obj


class Merger:
    """Turns a finished chunk's files into lines and events for one run: ``request`` says which
    model each row asked for, ``policy`` how often a transient failure is resubmitted, ``keys``
    what a message must not show, and ``strict_model`` whether an answer by another model fails."""

    def __init__(self, request: RequestSettings, policy: RetryPolicy, keys: tuple[str, ...],
                 prices: PriceTable, strict_model: bool = False) -> None:
        self.request = request
        self.strict_model = strict_model  # an answer by another model fails as wrong_model
        self.policy = policy
        self.prices = prices
        self.tasks: dict[str, Task] = {}  # the input tasks of the chunk being merged
        self.keys = keys

    def task(self, custom_id: str) -> Task:
        """The input task of an answer; one that left the input since (it is paid: it is still
        written) gets a stand-in with no prompt."""
        task = self.tasks.get(custom_id)
        if task is None:
            log.warning("%s: answered by a batch but no longer in the input; "
                        "written without its prompt", custom_id)
            task = self.tasks[custom_id] = Task(custom_id, "")
        return task

    def requested(self, task: Task, model_index: int) -> str:
        """The model name a task asked for, as an online run records it (the one rule:
        ``RequestSettings.requested``)."""
        return self.request.requested(task.model, task.body is not None, model_index)

    def merge(self, chunk: Chunk, tasks: dict[str, Task], output: bytes, errors: bytes,
              done: set[str], failed_before: set[str], resubmit: bool,
              latency_s: float | None) -> Merged:
        """Merge the chunk's files (``tasks``: its rows' input tasks); ``done`` (this model's ids in
        the output) gains every id written.

        ``failed_before`` holds the ids this plan already wrote failure lines for (a repeated merge
        writes none again); ``resubmit`` False (the job was cancelled) leaves transient rows
        unrecorded for a rerun.
        """
        self.tasks = tasks
        merged = Merged()
        wanted = set(chunk.ids)
        seen: set[str] = set()
        for record in records(output):
            custom_id = record["custom_id"]
            response = _object(record.get("response"))
            if custom_id not in wanted or custom_id in seen:
                continue
            if response.get("status_code") != 200:
                self._failed(chunk, custom_id, classify_line(record), done, failed_before, resubmit,
                             merged)
            elif custom_id not in done:
                failure = self._answer(chunk, custom_id, response, latency_s, merged)
                if failure is not None:
                    self._failed(chunk, custom_id, failure, done, failed_before, resubmit, merged)
                    seen.add(custom_id)
                    continue
                done.add(custom_id)
            seen.add(custom_id)
        for record in records(errors):
            custom_id = record["custom_id"]
            if custom_id in wanted and custom_id not in seen:
                seen.add(custom_id)
                self._failed(chunk, custom_id, classify_line(record), done, failed_before, resubmit,
                             merged)
        reason = chunk.error or f"the batch ended {chunk.status} without an answer for this request"
        for custom_id in chunk.ids:
            if custom_id not in seen:
                error = CallError(Kind.UNANSWERED, None, reason[:500], Verdict.RETRY,
                                  name="batch_" + (chunk.status or "error"))
                self._failed(chunk, custom_id, error, done, failed_before, resubmit, merged)
        return merged

    def _answer(self, chunk: Chunk, custom_id: str, response: dict[str, Any],
                latency_s: float | None, merged: Merged) -> CallError | None:
        """Add the answer's line and event; else the failure to record instead: a body that is
        not a chat completion (sent again), or under --strict-model an answer by another model."""
        task = self.task(custom_id)
        try:
            answer = answer_of(response.get("body"),
                               {"x-request-id": str(response.get("request_id") or "")})
        except MalformedResponse:
            return CallError(Kind.MALFORMED_RESPONSE, 200, "the answer is not a chat completion",
                             Verdict.RETRY)
        requested = self.requested(task, chunk.model_index)
        if self.strict_model:
            wrong = wrong_model(requested, answer, f"in batch {chunk.batch_id}")
            if wrong is not None:
                return wrong
        line, done = answered(task, chunk.model_index, requested, answer, chunk.attempt,
                              latency_s, self.prices, batch_id=chunk.batch_id or "")
        merged.results.append(line)
        merged.events.append(done)
        return None

    def _failed(self, chunk: Chunk, custom_id: str, error: CallError, done: set[str],
                failed_before: set[str], resubmit: bool, merged: Merged) -> None:
        if custom_id in done:
            return
        transient = error.verdict.transient
        if transient and not resubmit:
            merged.released.append(custom_id)  # cancelled: a later run sends it again
            return
        if transient and chunk.attempt <= self.policy.max_retries:
            merged.retry.append(custom_id)
            return
        if custom_id in failed_before:
            return
        failed_before.add(custom_id)
        # A server may quote the request back, key included: nothing leaves unredacted.
        error = dataclasses.replace(error, message=redact(error.message, self.keys))
        line = failure_line(custom_id, self.task(custom_id).body is not None, error.error_type,
                            error.status, error.message, chunk.attempt, batch_id=chunk.batch_id)
        merged.failures.append(line)
        merged.events.append(TaskFailed(custom_id, chunk.model_index, error.error_type,
                                        error.status, error.message, chunk.attempt))
