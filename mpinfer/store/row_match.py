"""The output's ids matched with the input's rows in the input's order: the resume scan's cheap way
to tell that an id of the output is one of the input's.

An output is written in about the input's order (the workers answer the tasks as they are fed, a
few dozen in flight). So rather than look each id up by its hash (a read of the input at a random
place each), the scan reads the input's ids in order beside the output's (``IdReader.plain_ids``)
and compares them as bytes, a block of ids at a time: one list compare when a block of the output
holds the next rows of the input, else sets of the ids on each side not yet matched. An id is
taken only when its bytes equal a row's id (no hash is taken for an id); every other id of the
output (one far from its row, a repeat, one not in the input) goes to the exact lookup by hash
(``IdIndex.find_raws``). When every row is matched, the done set is the whole input, with no
lookup at all; else each matched row's slot is found as a member's (its id was read from the input).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from itertools import compress

from .idset import IdIndex, IdSubset

#: Ids each side may hold while waiting for their match: beyond, the oldest go the exact lookup
#: by hash (an output's ids), or are dropped (the input's: an id of theirs still found that way).
HELD = 1 << 16


class RowMatch:
    """Matches the ids of an output, read from its start, with its input's rows in order."""

    def __init__(self, index: IdIndex, rows: Iterator[list[bytes]], held: int = HELD) -> None:
        self._index = index
        self._rows = rows
        self._held = held
        self._ahead: list[bytes] = []  # the input's next ids, not yet compared
        self._next = 0  # the position in the input (its line) of ``_ahead[0]``
        self._waiting: dict[bytes, int] = {}  # ids of rows passed and not yet seen: their positions
        self._unseen: set[bytes] = set()  # the output's ids not matched yet
        self._passed: list[tuple[int, int]] = []  # the positions compared, a block at a time
        self._missed = array("Q")  # positions passed and never matched (b"" lines among them)
        self._matched = 0

    @classmethod
    def over(cls, index: IdIndex, held: int = HELD) -> RowMatch | None:
        """A matcher over the input of ``index``, or None when its ids cannot be read in order."""
        rows = index.rows_in_order()
        return cls(index, rows, held) if rows is not None else None

    def take(self, ids: list[bytes]) -> list[bytes]:
        """Match a block of the output's ids; the ids to look up by hash now (held too long)."""
        ahead = self._fill(len(ids))
        window = ahead[:len(ids)]
        del ahead[:len(ids)]
        base = self._next
        self._next += len(window)
        self._passed.append((base, self._next))
        if window == ids:  # the next rows, in order
            self._matched += len(ids)
            return []
        # A few dozen answers in flight write them a little out of order: match by sets. What is
        # on one side only (a window's rows, and the ids seen, apart) is what is left to match.
        rows = set(window)
        unseen = self._unseen
        unseen.update(ids)
        apart = rows ^ unseen
        self._matched += (len(rows) + len(unseen) - len(apart)) // 2
        rows &= apart
        unseen = self._unseen = apart - rows
        waiting = self._waiting
        if waiting and unseen:
            earlier = unseen & waiting.keys()
            for raw in earlier:
                del waiting[raw]
            unseen -= earlier
            self._matched += len(earlier)
        if rows:  # rows to wait for their answers, by position: most near the window's end
            if b"" in rows:  # lines without a plain id: never matched
                rows.discard(b"")
                self._missed.extend(base + at for at, raw in enumerate(window) if not raw)
            left = len(rows)
            for at in range(len(window) - 1, -1, -1):
                if left and window[at] in rows:
                    waiting[window[at]] = base + at
                    left -= 1
                elif not left:
                    break
        if len(waiting) > self._held:
            for stale in list(waiting)[:len(waiting) - self._held]:
                self._missed.append(waiting.pop(stale))
        return [unseen.pop() for _ in range(len(unseen) - self._held)]

    def _fill(self, size: int) -> list[bytes]:
        while len(self._ahead) < size:
            block = next(self._rows, None)
            if block is None:
                break
            self._ahead.extend(block)
        return self._ahead

    def finish(self, done: IdSubset) -> list[bytes]:
        """Add the rows matched to ``done``; the output's ids never matched (to look up by hash)."""
        index = self._index
        if self._matched == len(index):
            # every row, each once (an input's ids are distinct): the whole input, no lookup
            done.add_all()
        elif self._matched:
            done.add_slots(self._slots(index))
        return list(self._unseen)

    def _slots(self, index: IdIndex) -> list[int]:
        """The slots of the rows matched: their ids read again in order, each found as a member."""
        rows = index.rows_in_order()
        if rows is None:
            raise RuntimeError("an input that was read in order cannot be read again")
        chosen = bytearray(self._next)
        for start, end in self._passed:
            chosen[start:end] = b"\x01" * (end - start)
        for at in (*self._missed, *self._waiting.values()):
            chosen[at] = 0
        slots: list[int] = []
        at = 0
        for block in rows:
            if at >= len(chosen):
                break
            for raw in compress(block, chosen[at:at + len(block)]):
                slot = index.find(raw.decode(), member=True) if raw else None
                if slot is not None:
                    slots.append(slot)
            at += len(block)
        return slots
