"""The resume scan's blocks: the ids of a block of answer lines in mpinfer's form, found at a few
passes of C over it, and a big output's second half read so by a forked child (store/parts.py)
while the scan reads the first (two cores, half the time).

The child only reads: it finds each block's ids (or that the block must be read line by line);
the parent takes them in the file's order once it has read its own half, exactly as it would have
read them itself (store/done_index.py). A child that fails, or a process that cannot fork safely,
means the parent reads that half itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from .parts import Child, line_bounds

HEAD = b'{"id":"'
# A plain id: printable ASCII but for the quote and the backslash (what JSON writes as it is).
_ID = rb'\{"id":"([ !#-\[\]-~]+)","input_prompt":'
_FIRST = re.compile(_ID)
# One entry for each newline: the id of the line after it when that line is mpinfer's and the
# record before it is closed, else b"" (one pass over the block finds both).
_AFTER = re.compile(rb"\n(?:(?<=\}\n)" + _ID + rb")?")

#: An output read from its start is read by two processes from this size on.
SPLIT_FROM = 64 << 20


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
    (None without a newline after it)."""
    bounds = line_bounds(fd, 0, size, 2)
    return bounds[1] if len(bounds) == 2 else None


# A block's offsets and its ids joined by newlines (None: to read line by line): what the child
# sends back, a few large bytes objects rather than a million small ones to pickle.
_Found = tuple[int, int, bytes | None]


class SecondHalf:
    """The whole lines of an open output from a line start to its end, read by a forked child
    while the caller reads the first half; ``blocks()`` once it has, ``close()`` always."""

    def __init__(self, child: Child[list[_Found]]) -> None:
        self._child = child

    @classmethod
    def fork(cls, fd: int, start: int, block: int) -> SecondHalf | None:
        """The child started, reading ``fd`` from ``start`` a ``block`` of bytes at a time; None
        when this process cannot fork safely."""
        child = Child.start(lambda: _read_half(fd, start, block), keep=(fd,))
        return cls(child) if child is not None else None

    def blocks(self) -> Iterator[HalfBlock] | None:
        """The child's blocks in the file's order, once it has ended; None when it failed (the
        caller reads that half itself)."""
        found = self._child.result()
        if found is None:
            return None
        return _split(found)

    def close(self) -> None:
        """End the child (stopped when its blocks were not asked for): none is left behind."""
        self._child.stop()


def _split(found: list[_Found]) -> Iterator[HalfBlock]:
    """The blocks, each one's ids split as it is taken (not all of them held at once)."""
    found.reverse()
    while found:
        start, end, ids = found.pop()
        yield HalfBlock(start, end, ids.split(b"\n") if ids is not None else None)


def _read_half(fd: int, start: int, block: int) -> list[_Found]:
    """The child's work: the ids of each ``block`` bytes from ``start`` to the file's end."""
    found: list[_Found] = []
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
            found.append((offset, offset + cut, b"\n".join(ids) if ids is not None else None))
            offset += cut
            buffer[:size - cut] = buffer[cut:size]
            held = size - cut
        else:
            held = size
    return found
