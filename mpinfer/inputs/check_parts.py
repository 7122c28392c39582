"""The check of a JSONL or Batch API input, and of a big plain one in parts over the cores.

A million plain rows checked in one process cost about a second and a half of Python (parsed,
checked, their ids hashed into the id index); most of a rerun that finds nothing to do when no
index was kept. A JSONL input whose rows can be checked in bulk (``PlainRows``) is split at line
boundaries, and each part but the last is checked by a forked child (store/parts.py's ``Child``,
the one place that forks to read), while this process checks the last: every part reads the one
file this process opened. A child sends back what it found (its first bad rows, its ids' hashes
and byte offsets gathered by bucket), which this process joins in file order, so the check says
exactly what one pass says: the same first bad rows with their file and line (each part counts
the lines before it), the same duplicates (the buckets are joined before the index is frozen), the
same sha256 (this process hashes the bytes before its part as it counts their lines). A part whose
child failed, or could not be forked, is checked here. The index's buckets are then sorted ahead of
its freeze, half of them by another child (the freeze's sort is a quarter of the one-process check).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path

from ..errors import InputError
from ..store.idset import BUCKETS, Buckets, IdIndex
from ..store.parts import Child, Parts, can_fork, cores, line_bounds
from .blocks import JsonlBlocks, PlainRows, Span, Taken, take_rows
from .tasks import FieldKeys, InputFormat

#: the least part of an input checked in a process of its own: a smaller input, one process
INPUT_PARTS = Parts(least=8 << 20)
#: ids a round of the index's sort in two halves takes (its child's half: 16 MB at most)
SORT_ROUND = 1 << 21

Checksum = tuple[int, str] | None


@dataclass(frozen=True)
class PartChecked:
    """What a child found in its part: its bad rows and models, and its ids by bucket."""

    taken: Taken
    buckets: Buckets


def check_jsonl(path: Path, keys: FieldKeys, fmt: InputFormat, index: IdIndex, by_row: bool,
                parts: Parts = INPUT_PARTS) -> tuple[Taken, Checksum]:
    """The rows of a JSONL or Batch API input taken into ``index`` (empty), a block at a time, and
    the file's size and sha256 (None when the check stopped at a bad row): a big input of plain
    rows in ``parts`` over the cores, else in this process."""
    if len(index):
        raise ValueError("check_jsonl takes the rows into an empty index")
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot open input: {exc.strerror or exc}", str(path)) from None
    with handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        count = min(parts.most or cores(), size // max(parts.least, 1))
        if count < 2 or PlainRows.of(keys, fmt) is None or not can_fork():
            blocks = JsonlBlocks(path, keys, fmt, Span(fd))
            return take_rows(blocks, index, by_row), blocks.checksum
        bounds = line_bounds(fd, 0, size, count)
        spans = [Span(fd, lo, hi, hashed=False) for lo, hi in pairwise(bounds)]
        children: list[Child[PartChecked] | None] = []
        try:
            # forked before this process takes any id: each child's index starts empty
            for span in spans:
                children.append(Child.start(partial(_check_part, path, keys, fmt, span, index),
                                            keep=(fd,)))
            last = JsonlBlocks(path, keys, fmt, Span(fd, bounds[-1]))
            taken_last = take_rows(last, index, by_row)
            taken: list[Taken] = []
            for child, span in zip(children, spans, strict=True):
                got = child.result() if child is not None else None
                if got is None:  # a part its child did not give is checked here
                    taken.append(take_rows(JsonlBlocks(path, keys, fmt, span), index, by_row))
                else:
                    index.add_gathered(got.buckets)
                    taken.append(got.taken)
                del got  # its buffer (16 bytes an id of its part) goes now, not at the return
        finally:
            for child in children:
                if child is not None:
                    child.stop()
        found = Taken.joined([*taken, taken_last])
        if found.problems:
            return found, None
        _sort_in_two(index)
        return found, last.checksum


def _sort_in_two(index: IdIndex) -> None:
    """Sort the index's buckets ahead of its freeze, in rounds of about SORT_ROUND ids: the first
    half of a round's buckets in a forked child, the rest here. This process holds the child's
    sorted half beside its own until it takes them (the child may fail: then the freeze sorts
    them), so a round's size bounds what the sort adds to its peak."""
    rounds = max(1, -(-len(index) // SORT_ROUND))  # an input of blank lines: no id, one round
    step = -(-BUCKETS // rounds)
    for first in range(0, BUCKETS, step):
        middle, end = min(first + step // 2, BUCKETS), min(first + step, BUCKETS)
        child = Child.start(partial(index.sort_buckets, range(first, middle)))
        try:
            index.sort_buckets(range(middle, end))
            got = child.result() if child is not None else None
            if got is not None:
                index.take_sorted(got)
        finally:
            if child is not None:
                child.stop()


def _check_part(path: Path, keys: FieldKeys, fmt: InputFormat, span: Span,
                index: IdIndex) -> PartChecked:
    """A child's work: the rows of its part taken into its copy of the (empty) index."""
    taken = take_rows(JsonlBlocks(path, keys, fmt, span), index, by_row=False)  # plain: never
    return PartChecked(taken, index.gathered())
