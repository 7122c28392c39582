"""An output read a block of whole lines at a time, and a big one in parts over the machine's cores:
what --status and --validate read a million lines with.

``LineReader`` gives the whole lines of a file from an offset (8 MB at a time, split by C), and the
mark of where they end, taken from the same open file. ``read_in_parts`` splits a big file at line
boundaries and reads each part but the last in a forked process (os.fork: the parent's id index is
shared, not copied), the last in this one; all parts read the one file this process opened, so a
file put in its place meanwhile cannot lend its identity to counts read from the old one. Each
part's result comes back pickled, and the caller adds them up in file order.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ..errors import OutputError
from .marks import FileMark

BLOCK = 1 << 23  # bytes read at a time
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


class LineReader:
    """The whole lines of a file from ``start`` (up to ``stop``, a line boundary, or to its end),
    then its mark, read from one open file (``fd``, or the file at ``path`` opened here)."""

    def __init__(self, path: Path, start: int, stop: int | None = None,
                 fd: int | None = None) -> None:
        self.path = path
        self.end = start
        self.stop = stop
        self.fd = fd
        self.torn = False  # a last line without its newline: being written, or torn by a crash
        self.rest = b""  # that line's bytes
        self.mark: FileMark | None = None

    def lines(self) -> Iterator[bytes]:
        """The whole lines after ``end``, each with its newline; a torn last line is left to be
        read again next time."""
        for block in self.blocks():
            for line in block:
                yield line + b"\n"

    def blocks(self) -> Iterator[list[bytes]]:
        """The whole lines after ``end``, a block at a time, without their newlines."""
        if self.fd is not None:
            yield from self._blocks(self.fd)
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        try:
            yield from self._blocks(fd)
        finally:
            os.close(fd)

    def _blocks(self, fd: int) -> Iterator[list[bytes]]:
        offset, rest = self.end, b""
        while self.stop is None or offset < self.stop:
            want = BLOCK if self.stop is None else min(BLOCK, self.stop - offset)
            try:
                data = os.pread(fd, want, offset)
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
            if not data:
                break
            offset += len(data)
            pieces = data.split(b"\n")
            if rest:
                pieces[0] = rest + pieces[0]
            rest = pieces.pop()  # after the last newline: the start of the next line
            if pieces:
                self.end = offset - len(rest)
                yield pieces
        self.torn, self.rest = bool(rest.strip()), rest  # not consumed: read again next time
        self.mark = FileMark.of_fd(fd, self.end)


def decode(line: bytes) -> Any:
    """A line decoded, or None when it is not JSON."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _bounds(fd: int, start: int, size: int, parts: int) -> list[int]:
    """Where each part starts: just after a newline near each equal share of the bytes."""
    bounds = [start]
    for number in range(1, parts):
        at = start + (size - start) * number // parts
        while at < size:
            chunk = os.pread(fd, 1 << 16, at)
            newline = chunk.find(b"\n")
            if newline >= 0:
                at += newline + 1
                break
            at += len(chunk)
        if bounds[-1] < at < size:
            bounds.append(at)
    return bounds


def read_in_parts(path: Path, start: int, read: Callable[[LineReader], T],
                  parts: Parts = ONE_A_CORE) -> list[T]:
    """``read`` over the lines of ``path`` from ``start``, in ``parts``: each part but the last
    read in a forked process, the last (up to the file's end, with its torn line and mark) in this
    one; the results in file order. One part when the file is small, there is one core, or this
    process runs other threads (forking them is unsafe)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return [read(LineReader(path, start))]
    except OSError as exc:
        raise OutputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        size = os.fstat(fd).st_size
        count = min(parts.most or _cores(), (size - start) // max(parts.least, 1))
        if count < 2 or not hasattr(os, "fork") or threading.active_count() > 1:
            return [read(LineReader(path, start, fd=fd))]
        bounds = _bounds(fd, start, size, count)
        children = [_fork(read, LineReader(path, lo, hi, fd)) for lo, hi in pairwise(bounds)]
        try:
            last = read(LineReader(path, bounds[-1], fd=fd))
        except BaseException:
            for child in children:
                _abandon(child)
            raise
        results = [_collect(child, read, LineReader(path, lo, hi, fd))
                   for child, lo, hi in zip(children, bounds, bounds[1:], strict=False)]
        return [*results, last]
    finally:
        os.close(fd)


def _fork(read: Callable[[LineReader], T], reader: LineReader) -> tuple[int, int] | None:
    """A child reading one part, and the pipe its pickled result comes through; None when no
    process could be forked (the parent reads that part itself)."""
    try:
        out, into = os.pipe()
        pid = os.fork()
    except OSError:
        return None
    if pid == 0:  # the child: read, send, leave without running the parent's exit handlers
        code = 1
        try:
            os.close(out)
            data = pickle.dumps(read(reader), protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(into, "wb") as sink:
                sink.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(into)
    return pid, out


def _collect(child: tuple[int, int] | None, read: Callable[[LineReader], T],
             reader: LineReader) -> T:
    """A child's result; a child that could not give one (it failed, or was killed) has its part
    read here, which raises what it met, if anything."""
    if child is None:
        return read(reader)
    pid, out = child
    with os.fdopen(out, "rb") as source:
        data = source.read()
    _, status = os.waitpid(pid, 0)
    if status == 0 and data:
        result: T = pickle.loads(data)
        return result
    return read(reader)


def _abandon(child: tuple[int, int] | None) -> None:
    """Stop a child whose result is no longer wanted (the parent's own part failed)."""
    if child is not None:
        pid, out = child
        os.close(out)  # its write then fails, and it leaves
        os.waitpid(pid, 0)
