"""The resume scan's blocks: the ids of a block of answer lines in mpinfer's form, found at a few
passes of C over it, and a big output's second half read so by a forked process while the scan
reads the first (two cores, half the time).

The child only reads: it finds each block's ids (or that the block must be read line by line) and
writes them to a temporary file; the parent takes them in the file's order once it has read its
own half, exactly as it would have read them itself (store/done_index.py). A child that fails, or
a process that cannot fork safely (no ``fork``, other threads running), means the parent reads
that half itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import struct
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

HEAD = b'{"id":"'
# A plain id: printable ASCII but for the quote and the backslash (what JSON writes as it is).
_ID = rb'\{"id":"([ !#-\[\]-~]+)","input_prompt":'
_FIRST = re.compile(_ID)
# One entry for each newline: the id of the line after it when that line is mpinfer's and the
# record before it is closed, else b"" (one pass over the block finds both).
_AFTER = re.compile(rb"\n(?:(?<=\}\n)" + _ID + rb")?")

#: An output read from its start is read by two processes from this size on.
SPLIT_FROM = 64 << 20

# A block's start and end offsets, and the size of its ids (joined by newlines; -1: a block to
# read line by line; -2: the end, the child's work all written)
_RECORD = struct.Struct("<QQq")
_SLOW, _END = -1, -2


def fast_ids(buffer: bytearray, end: int) -> list[bytes] | None:
    """The ids of the whole lines of ``buffer[:end]`` in their order, when every line is in
    mpinfer's form (its id plain, its record closed) and none holds a second record's start (a
    torn line with another glued on); else None (the block is read line by line)."""
    if not buffer.endswith(b"}\n", 0, end):
        return None
    first = _FIRST.match(buffer, 0, end)
    if first is None:
        return None
    ids: list[bytes] = _AFTER.findall(buffer, 0, end)
    ids.pop()  # the block's last newline: no line after it here
    if not all(ids) or buffer.count(HEAD, 0, end) != len(ids) + 1:
        return None
    ids.insert(0, first.group(1))
    return ids


@dataclass(frozen=True)
class HalfBlock:
    """A block of whole lines of the second half: its offsets, and its ids (None: read it line by
    line)."""

    start: int
    end: int
    ids: list[bytes] | None


def half_point(fd: int, size: int) -> int | None:
    """Where the second half of a file of ``size`` bytes starts: the line start after its middle
    (None without a newline in the megabyte there)."""
    middle = size // 2
    cut = os.pread(fd, 1 << 20, middle).find(b"\n")
    if cut < 0 or middle + cut + 1 >= size:
        return None
    return middle + cut + 1


class SecondHalf:
    """The whole lines of an open output from ``start`` to its end, read by a forked child while the
    caller reads the first half; ``blocks()`` once it has."""

    def __init__(self, records: IO[bytes], pid: int) -> None:
        self._records, self._pid = records, pid
        self._status: int | None = None  # the child's, once it has ended
        self._wanted = False  # whether its blocks were asked for

    @classmethod
    def fork(cls, fd: int, start: int, block: int) -> SecondHalf | None:
        """The child started, or None when this process cannot fork safely."""
        if not hasattr(os, "fork") or threading.active_count() > 1:
            return None
        try:
            records = tempfile.TemporaryFile()
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            records.close()
            return None
        if pid == 0:  # the child: read, write, and leave without running the parent's exit code
            code = 1
            try:
                # its copies of the parent's files closed: a lock the parent holds (the run's)
                # goes with the parent, whatever kills it
                low = 3
                for keep in sorted({fd, records.fileno()}):
                    os.closerange(low, keep)
                    low = keep + 1
                os.closerange(low, os.sysconf("SC_OPEN_MAX"))
                _read_half(fd, start, block, records)
                code = 0
            finally:
                os._exit(code)
        return cls(records, pid)

    def blocks(self) -> Iterator[HalfBlock] | None:
        """The child's blocks in the file's order, once it has ended; None when it failed (the
        caller reads that half itself)."""
        self._wanted = True
        status = self._wait()
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            self._records.close()
            return None
        self._records.seek(0)
        return self._read_records()

    def _read_records(self) -> Iterator[HalfBlock]:
        with self._records as records:
            while True:
                start, end, size = _RECORD.unpack(records.read(_RECORD.size))
                if size == _END:
                    return
                ids = records.read(size).split(b"\n") if size != _SLOW else None
                yield HalfBlock(start, end, ids)

    def _wait(self) -> int:
        if self._status is None:
            self._status = os.waitpid(self._pid, 0)[1]
        return self._status

    def close(self) -> None:
        """End the child: waited for once its blocks were asked for, else stopped (the caller
        failed on its own half, or was interrupted); none is left behind."""
        if not self._wanted and self._status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        self._wait()
        if not self._wanted:
            self._records.close()


def _read_half(fd: int, start: int, block: int, out: IO[bytes]) -> None:
    """The child's work: the ids of each ``block`` bytes from ``start`` to the file's end, written
    to ``out``."""
    buffer = bytearray(block)
    offset, held = start, 0
    while True:
        if held == len(buffer):  # a line longer than the block: room for more of it
            buffer.extend(bytes(len(buffer)))
        with memoryview(buffer) as view, view[held:] as free:
            got = os.preadv(fd, [free], offset + held)
        if not got:
            break
        size = held + got
        cut = buffer.rfind(b"\n", 0, size) + 1
        if cut:
            ids = fast_ids(buffer, cut)
            payload = b"\n".join(ids) if ids is not None else b""
            out.write(_RECORD.pack(offset, offset + cut, len(payload) if ids is not None
                                   else _SLOW))
            out.write(payload)
            offset += cut
            buffer[:size - cut] = buffer[cut:size]
            held = size - cut
        else:
            held = size
    out.write(_RECORD.pack(offset, offset, _END))
    out.flush()
