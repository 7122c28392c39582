"""A big file read in parts over the machine's cores by forked children of this process: the one
place that forks to read (the resume scan's second half, --status and --validate's parts, the
input check's: inputs/check_parts.py).

``Child`` runs one part's work in a forked process and brings its result back pickled through a
pipe. It forks only when that is safe (``os.fork`` exists, no other thread runs: a thread's lock
held at the fork would never be released in the child). The child closes every descriptor it
inherited but the ones its work reads (and stdio), so a lock the parent holds (the run's, an
output's) goes with the parent, whatever kills it. A child that fails, is killed, or could not be
forked gives no result: the caller reads that part itself. A child whose result is no longer
wanted (the parent failed or was interrupted) is killed; every child is waited for, so none is
left behind as a zombie.

``read_in_parts`` splits a file at line boundaries and reads each part but the last in a child
(the parent's id index is shared by the fork, not copied), the last in this process; all parts
read the one file this process opened, so a file put in its place meanwhile cannot lend its
identity to counts read from the old one. The results come back in file order.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import signal
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import IO, Generic, TypeVar

from ..errors import OutputError
from .blocks import LineReader

#: the least a part read in a process of its own is worth (below it: one process)
PART_BYTES = 64 << 20

T = TypeVar("T")


@dataclass(frozen=True)
class Parts:
    """How a big file is read in parts: each of at least ``least`` bytes, at most ``most`` of them
    (None: one a core)."""

    least: int = PART_BYTES
    most: int | None = None


ONE_A_CORE = Parts()  # the default: parts of PART_BYTES or more, one a core


def can_fork() -> bool:
    """Whether this process may fork a reader: it can, and runs no other thread."""
    return hasattr(os, "fork") and threading.active_count() == 1


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def line_bounds(fd: int, start: int, size: int, parts: int) -> list[int]:
    """Where each of at most ``parts`` parts of the bytes ``start`` to ``size`` starts: just after
    a newline near each equal share (fewer parts when there is no newline to split at)."""
    bounds = [start]
    for number in range(1, parts):
        at = start + (size - start) * number // parts
        while at < size:
            chunk = os.pread(fd, 1 << 16, at)
            if not chunk:
                at = size
                break
            newline = chunk.find(b"\n")
            if newline >= 0:
                at += newline + 1
                break
            at += len(chunk)
        if bounds[-1] < at < size:
            bounds.append(at)
    return bounds


class Child(Generic[T]):
    """A forked child doing one part's work; ``result()`` once the caller wants it, ``stop()``
    always (in a ``finally``)."""

    def __init__(self, pid: int, source: IO[bytes]) -> None:
        self._pid = pid
        self._source: IO[bytes] | None = source  # the pipe its pickled result comes through
        self._status: int | None = None  # its wait status, once it has ended

    @classmethod
    def start(cls, work: Callable[[], T], keep: Collection[int] = ()) -> Child[T] | None:
        """A child doing ``work`` with only the descriptors ``keep`` (and stdio) left open; None
        when this process cannot fork safely, or the fork failed (the caller does the work)."""
        if not can_fork():
            return None
        try:
            out, into = os.pipe()
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            os.close(out)
            os.close(into)
            return None
        if pid == 0:  # the child: work, send, leave without running the parent's exit code
            code = 1
            try:
                _close_all_but({*keep, into})
                data = io.BytesIO()
                pickler = pickle.Pickler(data, protocol=pickle.HIGHEST_PROTOCOL)
                # No memo: an unpickler keeps every object it memoized until its load ends, so
                # the bytes each array is rebuilt from (a part's runs of latencies) would be
                # held beside the arrays, a big result twice in the parent. A result is plain
                # values, no cycle (which this mode refuses).
                pickler.fast = True
                pickler.dump(work())
                with os.fdopen(into, "wb") as sink:
                    sink.write(data.getbuffer())
                code = 0
            finally:
                os._exit(code)
        os.close(into)
        return cls(pid, os.fdopen(out, "rb"))

    def result(self) -> T | None:
        """The child's result once it has ended; None when it gave none (it failed, or was
        killed): the caller does its work itself."""
        source = self._source
        if source is None:
            return None
        # Unpickled as it comes: a big result (a part's ids) is never held twice, as bytes and
        # as values. A child that ended before its result was whole leaves a pickle that cannot
        # load, whatever the error: its exit status tells that from a result that does not load.
        try:
            with source:
                result: T = pickle.load(source)
        except Exception:
            self._source = None  # closed: a child still writing stops (a broken pipe)
            if self._wait() == 0:
                raise
            return None
        self._source = None
        return result if self._wait() == 0 else None

    def stop(self) -> None:
        """End the child if it still runs (its result not taken: the caller failed or was
        interrupted), and wait for it: no child outlives this call, none is left a zombie."""
        if self._source is not None:
            if self._status is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, signal.SIGKILL)
            self._source.close()
            self._source = None
        self._wait()

    def _wait(self) -> int:
        if self._status is None:
            self._status = os.waitpid(self._pid, 0)[1]
        return self._status


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor above stdio but those in ``keep``: the child holds none of the
    parent's files (and none of its locks) beyond what its work reads."""
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def read_in_parts(path: Path, start: int, read: Callable[[LineReader], T],
                  parts: Parts = ONE_A_CORE) -> list[T]:
    """``read`` over the lines of ``path`` from ``start``, in ``parts``: each part but the last
    read in a forked child, the last (up to the file's end, with its torn line and mark) in this
    process; the results in file order. One part when the file is small, there is one core, or
    this process cannot fork safely."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return [read(LineReader(path, start))]
    except OSError as exc:
        raise OutputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        size = os.fstat(fd).st_size
        count = min(parts.most or cores(), (size - start) // max(parts.least, 1))
        if count < 2 or not can_fork():
            return [read(LineReader(path, start, fd=fd))]
        bounds = line_bounds(fd, start, size, count)
        ranges = list(pairwise(bounds))
        children: list[Child[T] | None] = []
        try:
            for lo, hi in ranges:
                children.append(Child.start(partial(read, LineReader(path, lo, hi, fd)),
                                            keep=(fd,)))
            last = read(LineReader(path, bounds[-1], fd=fd))
            results: list[T] = []
            for child, (lo, hi) in zip(children, ranges, strict=True):
                got = child.result() if child is not None else None
                # a part its child did not give is read here (which raises what it met, if any)
                results.append(got if got is not None else read(LineReader(path, lo, hi, fd)))
        finally:
            for child in children:
                if child is not None:
                    child.stop()
        return [*results, last]
    finally:
        os.close(fd)
