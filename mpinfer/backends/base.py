"""What a backend is to the driver, and what every backend shares:
writing an outcome or stopping the run.

A backend moves tasks to where they run and their events back. ``driver.supervise`` runs the one
loop all of them share (hand out work, counts, budget, signals, the stop deadline, replacing dead
workers); a backend implements only the moves:

- ``start()``: bring the workers up.
- ``room()``: how many more tasks it would take now (0 when full or stopping); ``in_flight()``: how
  many it holds, sent but not settled.
- ``submit(item)``: hand one task to a worker; False when it could not (the driver keeps the task).
- ``poll(timeout_s)``: wait up to ``timeout_s`` for news; returns what came, in order: the events of
  events.py, and two notes of its own: ``Returned`` (tasks it held that will not be done: the driver
  sends them again) and ``WorkerDied`` (a worker is gone; the driver decides whether to ``replace``
  it).
- ``replace(worker)``: start a new worker in place of the dead one ``WorkerDied`` named.
- ``stop()``: finish what is in flight, take nothing new (called again on every turn while stopping:
  it must be idempotent, and reach workers started since); ``idle()``: once stopping, whether
  nothing is left to wait for.
- ``kill()``: drop everything at once (a second Ctrl-C, or the stop deadline passed); returns the
  events that arrived meanwhile.
- ``lane_stats()``: the limiter's counters for the summary;
  ``close()``: release everything (always called).

A backend never decides when the run stops: a worker's Abort or Fatal event, a signal or the budget
do, in the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import OutputError
from ..events import Event, Fatal, WorkItem
from ..limits import LaneStats
from ..store.output import Appender, OutputPaths

# The runner loads the openai SDK, which the driver (and --status) must not pay for
if TYPE_CHECKING:
    from .runner import Outcome

log = logging.getLogger("mpinfer.backends")


@dataclass(frozen=True)
class Returned:
    """Tasks a worker held that are not done and will not be;
    ``recovered`` more it had written unreported."""

    items: tuple[WorkItem, ...]
    recovered: int = 0


@dataclass(frozen=True)
class WorkerDied:
    """A worker is gone.

    ``expected``: it was told to stop and exited cleanly (no replacement is due)."""

    worker: int
    expected: bool = False


Note = Event | Returned | WorkerDied


class Backend(Protocol):
    """Where tasks run (see the module docstring for what each method promises)."""

    def start(self) -> None:
        """Bring the workers up."""

    def room(self) -> int:
        """How many more tasks it would take now (0 when full or stopping)."""

    def in_flight(self) -> int:
        """How many tasks it holds, sent but not settled."""

    def submit(self, item: WorkItem) -> bool:
        """Hand one task to a worker; False when it could not (the driver keeps the task)."""

    def poll(self, timeout_s: float) -> list[Note]:
        """Wait up to ``timeout_s`` for news; the events and notes that came, in order."""

    def replace(self, worker: int) -> None:
        """Start a new worker in place of the dead one ``WorkerDied`` named."""

    def stop(self) -> None:
        """Finish what is in flight and take nothing new;
        idempotent, called on every turn while stopping."""

    def idle(self) -> bool:
        """Once stopping, whether nothing is left to wait for."""

    def kill(self) -> list[Note]:
        """Drop everything at once; the events that arrived meanwhile."""

    def lane_stats(self) -> tuple[list[LaneStats], list[bool]]:
        """The limiter's counters for the summary, and which keys were disabled."""

    def close(self) -> None:
        """Release everything (always called, also after ``kill``)."""


class OutcomeWriter:
    """Appends an outcome's line to its output's (a variant's and a model's) output or errors file,
    and says what to report.

    Used where the lines are written: in each local worker, and in the driver for Ray. A line that
    cannot be written (full disk) turns the outcome into a Fatal event: the run must stop, and the
    task, unwritten, is not done.
    """

    def __init__(self, outputs: tuple[OutputPaths, ...], fsync: bool) -> None:
        self.outputs = outputs
        self.appenders = [Appender(paths, fsync=fsync) for paths in outputs]

    def write(self, task_id: str, output_index: int, outcome: Outcome) -> tuple[Event, ...]:
        """The events to report once ``outcome`` is written; a single Fatal when it could not be."""
        return tuple(self.write_many([(task_id, output_index, outcome)]))

    def write_many(self, outcomes: Sequence[tuple[str, int, Outcome]]) -> list[Event]:
        """The events to report once ``outcomes`` (task id, output index, outcome) are written, in
        their order. Their lines go together: one write under one lock for each file; the
        outcomes of a file that could not be written report a single Fatal each instead."""
        lines: dict[tuple[int, bool], list[bytes]] = {}
        for _, output_index, outcome in outcomes:
            if outcome.line is not None:
                lines.setdefault((output_index, outcome.to_errors), []).append(outcome.line)
        failed: dict[tuple[int, bool], str] = {}
        for (output_index, to_errors), group in lines.items():
            paths = self.outputs[output_index]
            target: Path = paths.errors if to_errors else paths.output
            try:
                self.appenders[output_index].append(target, b"".join(group))
            except OutputError as exc:
                log.error("cannot write: %s", exc)
                failed[(output_index, to_errors)] = str(exc)
        events: list[Event] = []
        for task_id, output_index, outcome in outcomes:
            problem = None
            if outcome.line is not None and failed:
                problem = failed.get((output_index, outcome.to_errors))
            if problem is None:
                events.extend(outcome.events)
            else:
                events.append(Fatal(problem, task_id, output_index))
        return events

    def close(self) -> None:
        """Close every model's appender."""
        for appender in self.appenders:
            appender.close()
