"""The output file and its companions: locked appends, the done-id scan, torn-tail repair.

Invariants that make "nothing lost, nothing done twice" hold:
- A record is one line appended under the append lock (write_whole: ``os.write`` until the whole
  line is out, a short write being continued), so two writers never interleave and a crash can tear
  at most the last line.
- A line that could not be written whole (full disk) is cut off again before the lock is released.
- Before a run appends anything, a torn last line is moved to ``<output>.corrupt`` and cut off, so
  the next record never lands glued onto it.

The locks themselves (append, run, workers) are in locks.py.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import OutputError
from .idset import IdSubset
from .locks import AppendLock
from .records import answer_id, record_id

_BLOCK = 1 << 16
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_SNIPPET = 120
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def companion(output: Path, suffix: str) -> Path:
    """A file that belongs to an output: ``results.jsonl`` -> ``results.jsonl.errors.jsonl``."""
    return output.with_name(output.name + suffix)


def size_of(path: Path) -> int:
    """The file's size, 0 when it does not exist yet
    (where an errors file ends before a run writes to it)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass(frozen=True)
class RunOutput:
    """One output of a run: where the answers of one (variant, model) go.

    ``variant`` is None outside a variant run (--variants)."""

    path: Path
    variant: str | None
    model: str | None


def run_outputs(output: Path, variants: tuple[str, ...],
                models: tuple[str, ...]) -> tuple[RunOutput, ...]:
    """Every output of a run, variant by variant and, within one, model by model (the order
    ``unit_of`` reads an output's place in): without variants the output itself for one model,
    ``<stem>.<model><suffix>`` for several; with them ``<stem>.<variant><suffix>`` for one model,
    ``<stem>.<variant>.<model><suffix>`` for several. ``variants`` empty: no variants."""
    several = len(models) > 1
    found: list[RunOutput] = []
    for variant in variants or (None,):
        for model in models:
            parts = [p for p in (variant, _SAFE_NAME.sub("_", model) if several else None) if p]
            path = (output.with_name(f"{output.stem}.{'.'.join(parts)}{output.suffix}") if parts
                    else output)
            found.append(RunOutput(path, variant, model))
    return tuple(found)


def unit_of(output_index: int, models: int) -> tuple[int, int]:
    """(variant index, model index) of the output at ``output_index`` of ``run_outputs`` for a
    run of ``models`` models (the variant index is 0 without variants)."""
    return divmod(output_index, models)


def judge_output(answers: Path) -> Path:
    """Where a judge's verdicts on an answers output go:
    ``results.jsonl`` -> ``results.judge.jsonl`` (an output of its own, with its own companions,
    one line per judged id)."""
    return answers.with_name(f"{answers.stem}.judge{answers.suffix}")


def _hidden(output: Path, suffix: str) -> Path:
    """Lock files are dot-files beside the output: needed, but nothing a user has to look at."""
    return output.with_name("." + output.name + suffix)


@dataclass(frozen=True)
class OutputPaths:
    """Every file mpinfer keeps for one output."""

    output: Path
    errors: Path
    corrupt: Path
    run_lock: Path
    write_lock: Path
    workers_lock: Path
    run_info: Path

    def corrupt_of(self, path: Path) -> Path:
        """Where torn lines of ``path`` (the output or the errors file) are moved."""
        return self.corrupt if path == self.output else companion(path, ".corrupt")

    @classmethod
    def of(cls, output: Path) -> OutputPaths:
        """The files that go with ``output``:
        its errors file, corrupt lines, locks and run record."""
        return cls(
            output=output,
            errors=companion(output, ".errors.jsonl"),
            corrupt=companion(output, ".corrupt"),
            run_lock=_hidden(output, ".lock"),
            write_lock=_hidden(output, ".write.lock"),
            workers_lock=_hidden(output, ".workers.lock"),
            run_info=_hidden(output, ".run.json"),
        )


@dataclass(frozen=True)
class TailRepair:
    """What repair_tail did to one file: the torn bytes it moved out, or the newline it added."""

    path: Path
    moved_bytes: int
    moved_to: Path | None
    newline_added: bool


@dataclass(frozen=True)
class BadLine:
    """A line that is not an answer record (records.is_answer); left in place and reported."""

    line: int
    snippet: str

    @classmethod
    def of(cls, number: int, raw: bytes) -> BadLine:
        """Line ``number``, its first bytes as text."""
        return cls(number, raw[:_SNIPPET].decode("utf-8", "replace").rstrip())


@dataclass
class Scan:
    """What one read of an output found: the ids on disk, bad lines, and where the file ended.

    Read ``within`` an input's ids, the ids done are ``done`` (a bitmap over the input's id index)
    and ``unknown`` the other ids (not in the input file): ``ids`` stays empty.
    """

    ids: set[str] = field(default_factory=set)
    done: IdSubset | None = None
    unknown: set[str] = field(default_factory=set)
    bad_lines: list[BadLine] = field(default_factory=list)
    bad: int = 0  # bad lines, all counted (``bad_lines`` may keep only the first)
    lines: int = 0
    end_offset: int = 0
    cost: float = 0.0  # what the answers cost; one without usage at its estimate


def iter_lines(path: Path, start: int = 0) -> Iterator[tuple[int, bytes, Any]]:
    """(line number, raw bytes, decoded object or None when it does not parse)
    for each non-blank line."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with handle:
        handle.seek(start)
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                obj = None
            yield number, raw, obj


def scan(path: Path, start: int = 0, within: IdSubset | None = None) -> Scan:
    """Collect the ids answered in ``path`` from byte ``start`` on;
    other lines are listed, never dropped.

    With ``within`` (the selected ids of the input), only the ids done among them are kept, one bit
    each.
    """
    result = Scan(done=within.empty() if within is not None else None)
    try:
        result.end_offset = path.stat().st_size
    except FileNotFoundError:
        return result
    take = (result.ids.add if within is None or result.done is None
            else _taker(result, within, result.done))
    for number, raw, obj in iter_lines(path, start):
        result.lines += 1
        rid = answer_id(obj)
        if rid is None:
            result.bad_lines.append(BadLine.of(number, raw))
            result.bad += 1
            continue
        take(rid)
        result.cost += answer_cost(obj)
    return result


def answer_cost(obj: Any) -> float:
    """What an answer record cost: ``cost``, or ``cost_estimate`` when the cost is null (an answer
    without usage counts at its estimate, for --max-cost); 0.0 without either."""
    cost = obj.get("cost")
    if cost is None:
        cost = obj.get("cost_estimate")
    return float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else 0.0


def _taker(result: Scan, within: IdSubset, done: IdSubset) -> Callable[[str], object]:
    """Count one id of the output against the input:
    done if selected, unknown if not in the input."""
    find, selected, add, unknown = (within.index.find, within.has_slot, done.add_slot,
                                    result.unknown.add)

    def take(rid: str) -> object:
        slot = find(rid)  # exact: the id is read again from the input to compare
        if slot is None:
            return unknown(rid)
        return add(slot) if selected(slot) else None

    return take


def _last_newline(fd: int, size: int) -> int:
    """Offset just past the last newline in the file, or 0 when it has none."""
    end = size
    while end > 0:
        start = max(0, end - _BLOCK)
        block = os.pread(fd, end - start, start)
        at = block.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def repair_tail(path: Path, corrupt: Path) -> TailRepair | None:
    """Make ``path`` end with a newline: a torn last line goes to ``corrupt`` and is cut off.

    A last line that lacks only its newline but parses as a record is kept and given the newline: it
    is an answer, and losing it would cost a second request.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        return _repair_fd(fd, path, corrupt)
    finally:
        os.close(fd)


def _repair_fd(fd: int, path: Path, corrupt: Path) -> TailRepair | None:
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return None
        keep = _last_newline(fd, size)
        tail = os.pread(fd, size - keep, keep)
        try:
            complete = record_id(orjson.loads(tail)) is not None
        except orjson.JSONDecodeError:
            complete = False
        if complete:
            os.pwrite(fd, b"\n", size)
            os.fsync(fd)
            return TailRepair(path, 0, None, True)
        with corrupt.open("ab") as sink:
            sink.write(tail + b"\n")
            sink.flush()
            os.fsync(sink.fileno())
        os.ftruncate(fd, keep)
        os.fsync(fd)
        return TailRepair(path, len(tail), corrupt, False)
    except OSError as exc:
        raise OutputError(f"{path}: cannot repair the torn last line: "
                          f"{exc.strerror or exc}") from None


def write_whole(fd: int, path: Path, data: bytes, before: int, fsync: bool = False) -> None:
    """Write ``data`` at the end of ``fd``
    (opened O_APPEND, ``before`` bytes long), whole or not at all.

    A partial write (a full disk) is cut off again: the next line must never be glued onto a torn
    one.
    """
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, before)
        except OSError:
            pass
        if exc.errno in _DISK_ERRNOS:
            raise OutputError(f"{path}: disk full ({exc.strerror}); "
                              "free space and rerun to resume") from None
        raise OutputError(f"{path}: write failed: {exc.strerror or exc}") from None


class Appender:
    """A worker's handle on the output and errors files: one locked, whole-line append at a time."""

    def __init__(self, paths: OutputPaths, fsync: bool = False) -> None:
        self.paths = paths
        self.fsync = fsync
        self._lock = AppendLock(paths.write_lock)
        self._fds: dict[Path, int] = {}
        # Where each file ended after this appender's last write: found there again, nobody wrote
        # since, and it ends with that line's newline.
        self._ends: dict[int, int] = {}

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"{path}: cannot open for appending: "
                                  f"{exc.strerror or exc}") from None
            self._fds[path] = fd
        return fd

    def append(self, path: Path, line: bytes) -> None:
        """Append one whole line (or several, each ending in a newline) to ``path`` in one write;
        on failure the file is left exactly as it was."""
        fd = self._fd(path)
        with self._lock:
            before = os.fstat(fd).st_size
            if (before and self._ends.get(fd) != before
                    and os.pread(fd, 1, before - 1) != b"\n"):
                # Another worker was killed in the middle of its write: move its torn line out of
                # the way rather than glue this record onto it.
                _repair_fd(fd, path, self.paths.corrupt_of(path))
                before = os.fstat(fd).st_size
            self._ends.pop(fd, None)  # (a write that fails is cut off again: no end known)
            write_whole(fd, path, line, before, self.fsync)
            self._ends[fd] = before + len(line)

    def close(self) -> None:
        """Close every file opened for appending, and the lock."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._ends.clear()
        self._lock.close()
