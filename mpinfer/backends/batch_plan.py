"""The batch plan: which rows went into which request file,
upload and batch, kept beside the output.

The plan is the memory that makes a crash cost nothing. It lives in ``<output>.batches.json`` (the
request files, until uploaded, in ``<output>.batches/``) and is rewritten atomically (temp file,
fsync, rename, fsync of the folder) at each step, before the step's effect can matter:
- a chunk (one request file, one model, one endpoint) is recorded PLANNED, its file on disk,
  before any upload;
- its ``file_id`` once uploaded; CREATING before ``batches.create`` is called, its ``batch_id`` once
  created (a rerun that finds a chunk CREATING looks for a batch made from its file before it
  creates one);
- MERGED once its answers are in the output, in the same write that records the chunks resubmitting
  its transient failures.
A rerun loads the plan and goes on from each chunk's state; rows in the plan are never planned again
while it is open, so no row is sent in two batches except to resubmit what came back unanswered.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from ..errors import OutputError
from ..store.atomic import atomic_write
from ..store.output import companion

#: 2: a chunk names its model by ``model_index``; version 1's ``model`` (the same index) is
#: still read, so a batch job started before the rename is collected after it. A chunk names its
#: ``endpoint`` (a name, never a key) when the run has an endpoints table; a chunk without one
#: went to the run's one endpoint
PLAN_VERSION = 2


class ChunkState(StrEnum):
    """Where one chunk is, on our side."""

    PLANNED = "planned"    # its request file is written; not uploaded
    UPLOADED = "uploaded"  # the file is at the server (file_id); no batch yet
    CREATING = "creating"  # batches.create was called; its answer may have been lost in a crash
    CREATED = "created"    # a batch runs it (batch_id): poll it
    MERGED = "merged"      # the batch ended and its answers are in the output


FINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
"""Batch statuses after which nothing changes at the server."""


@dataclass
class Chunk:
    """One request file for one model, and the batch that runs it."""

    name: str
    model_index: int
    attempt: int
    ids: list[str]
    bytes: int
    state: ChunkState = ChunkState.PLANNED
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # the batch's status as last polled
    completed: int = 0
    failed: int = 0
    created_at: float | None = None  # the batch's, as the server gave it
    ended_at: float | None = None  # the batch's end (completed, expired, ...) as the server gave it
    finished_at: float | None = None  # when this side merged it
    waiting: str | None = None  # why its batch is not created yet (the enqueued-token limit)
    resubmitted: int = 0
    error: str | None = None  # a failed batch's errors, as the server gave them
    # Rows left unanswered by a cancel: a rerun plans them
    released: list[str] = field(default_factory=list)
    # Where its batch goes: its endpoint's name (batch_targets.Target.name; never its key), None
    # for the run's one endpoint
    endpoint: str | None = None
    tokens: int = 0  # the prompt tokens its requests enqueue, as estimated

    @property
    def lines(self) -> int:
        """How many rows (request lines) the chunk holds."""
        return len(self.ids)

    @property
    def open(self) -> bool:
        """Whether the chunk still has work: anything but MERGED."""
        return self.state is not ChunkState.MERGED

    def to_dict(self) -> dict[str, Any]:
        """The chunk as the plan file stores it."""
        # Not asdict(): it deep-copies the ids (50,000 of them),
        # and the plan is saved at every step.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunk:
        """A chunk read back from the plan file (fields it does not know are dropped); a plan of
        version 1 named the model's index ``model``."""
        if "model_index" not in data and "model" in data:
            data = {**data, "model_index": data["model"]}
        values: dict[str, Any] = {f.name: data[f.name] for f in dataclasses.fields(cls)
                                  if f.name in data}
        values["state"] = ChunkState(str(values.get("state", ChunkState.PLANNED)))
        return cls(**values)


@dataclass
class Plan:
    """Every chunk of one batch job on an output (all its models), and the file it is kept in."""

    path: Path
    plan_id: str
    created_at: float
    chunks: list[Chunk] = field(default_factory=list)
    # Where each model's errors file ended at start
    errors_offsets: list[int] = field(default_factory=list)
    cancelled: bool = False
    # The run's models: a chunk's ``model_index`` indexes this list
    models: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        """Where the request files wait until they are uploaded."""
        return self.path.with_suffix("")  # <output>.batches.json -> <output>.batches

    def request_file(self, chunk: Chunk) -> Path:
        """The request file of ``chunk``, in the plan's folder."""
        return self.folder / f"{chunk.name}.jsonl"

    @property
    def open_chunks(self) -> list[Chunk]:
        """The chunks not merged yet, in plan order."""
        return [c for c in self.chunks if c.open]

    @property
    def finished(self) -> bool:
        """Whether the plan has chunks and all are merged (a new run starts a new plan)."""
        return bool(self.chunks) and not self.open_chunks

    def covered(self, model_index: int) -> set[str]:
        """The ids of ``model_index`` the plan holds: never planned again while the plan is open."""
        return {i for c in self.chunks if c.model_index == model_index for i in c.ids} - {
            i for c in self.chunks if c.model_index == model_index for i in c.released}

    def new_chunk(self, model_index: int, attempt: int, ids: list[str], size: int) -> Chunk:
        """Add a PLANNED chunk of ``ids`` for the run's model at ``model_index`` and return it (the
        caller saves)."""
        chunk = Chunk(f"{self.plan_id}-{len(self.chunks) + 1:04d}", model_index, attempt, ids, size)
        self.chunks.append(chunk)
        return chunk

    def save(self) -> None:
        """Write the plan whole, or leave the old one: a reader never sees half a plan."""
        data = {"version": PLAN_VERSION, "plan_id": self.plan_id, "created_at": self.created_at,
                "cancelled": self.cancelled, "errors_offsets": self.errors_offsets,
                "models": self.models, "chunks": [c.to_dict() for c in self.chunks]}
        with atomic_write(self.path) as handle:
            handle.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))

    @classmethod
    def new(cls, output: Path, errors_offsets: list[int], models: list[str]) -> Plan:
        """An empty plan for ``output``, named by the time and a random suffix; not saved yet."""
        plan_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        return cls(plan_path(output), plan_id, time.time(), errors_offsets=errors_offsets,
                   models=models)

    @classmethod
    def load(cls, output: Path) -> Plan | None:
        """The plan kept beside ``output``, or None when there is none;
        OutputError when it is unreadable."""
        path = plan_path(output)
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise OutputError(f"{path}: cannot read the batch plan ({exc}); it records batches "
                              "you may have paid for: fix or move it, never delete it "
                              "blindly") from None
        try:
            return cls(path, str(data["plan_id"]), float(data["created_at"]),
                       [Chunk.from_dict(c) for c in data["chunks"]],
                       list(data.get("errors_offsets") or []), bool(data.get("cancelled")),
                       [str(m) for m in data.get("models") or []])
        except (KeyError, TypeError, ValueError) as exc:
            raise OutputError(f"{path}: not a batch plan ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class BatchStatus:
    """One chunk as --status shows it:
    from the plan, as last polled (status reads, it never calls the API)."""

    name: str
    model_index: int
    batch_id: str | None
    state: str
    status: str | None
    rows: int
    completed: int
    failed: int
    attempt: int
    age_s: float | None  # since its batch was created; an ended batch's: its duration
    waiting: str | None
    resubmitted: int
    endpoint: str | None = None  # its endpoint's name (a run with an endpoints table)


def plan_report(output: Path, now: float | None = None) -> list[BatchStatus]:
    """Every chunk of the output's batch plan (empty when there is none)."""
    plan = Plan.load(output)
    if plan is None:
        return []
    now = time.time() if now is None else now
    return [BatchStatus(c.name, c.model_index, c.batch_id, c.state.value, c.status, c.lines,
                        c.completed, c.failed, c.attempt, _age(c, now), c.waiting,
                        c.resubmitted, c.endpoint) for c in plan.chunks]


def _age(chunk: Chunk, now: float) -> float | None:
    """Since the chunk's batch was created, frozen when it ended (its duration)."""
    if not chunk.created_at:
        return None
    ended = chunk.ended_at or chunk.finished_at
    return round(max(0.0, (ended or now) - chunk.created_at), 1)


def plan_path(output: Path) -> Path:
    """Where the batch plan of ``output`` is kept."""
    return companion(output, ".batches.json")
