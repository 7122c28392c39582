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

``RowSlots`` is the same idea for --status and --validate, which need each id's slot (a part of
the output read from any line): an id equal as bytes to one of the input's ids near its place is
found by its hash alone, as a member; every other by the exact lookup. A part reads the input's
ids from a little before the row of its first ids (found by the exact lookup, its line number
counted), not from the input's start.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
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


#: Rows either side of where a block of the output's ids is expected that count as near it
#: (answers written a little out of order across a block's edge).
SLACK = 256
#: How far ahead of where it is expected a block's first ids are looked for among the input's
#: rows (a task that failed leaves no line: the output runs ahead of its place in the input).
REACH = 1 << 16
_TRIED = 8  # a block's first ids looked for (one may be a stranger, or far from its row)
#: Ids looked up by hash alone before the input is read in order: a short read (the lines
#: appended since a refresh, a small output) never pays for reading the input near its place.
EXACT_FIRST = 1 << 15


class RowSlots:
    """The slots of an output's ids (all of it or a part, read from any line), a block at a time,
    as ``IdIndex.find_raws`` gives them, at less than half its cost when the output is in about
    the input's order: an id equal, as bytes, to one of the input's ids near its place (read from
    the input in order beside the output) is one of the input's, found by its hash alone
    (``IdIndex.find_members``); every other id goes to the exact lookup (``find_raws``)."""

    def __init__(self, index: IdIndex, rows: Iterator[list[bytes]] | None,
                 exact_first: int = EXACT_FIRST, seek: bool = True) -> None:
        self._index = index
        self._exact_left = exact_first  # ids still to look up by hash before reading in order
        self._rows = rows  # the input's ids not read yet (None: none can be read in order)
        self._seek_near = seek  # whether the first place is still to be sought near its row
        self._held: list[bytes] = []  # the input's ids read and still near
        self._base = 0  # the input's row (line) of ``_held[0]``
        self._covered = bytearray()  # 1 for each row of the input an id was found equal to
        self._at = 0  # where in ``_held`` the next block of the output is expected
        self._placed = False  # whether a block was placed in the input yet
        #: whether ``cover`` met an id twice among those it marked (in one block, or a row
        #: marked before): --validate then names each repeat's lines by an exact read
        self.again = False

    @classmethod
    def over(cls, index: IdIndex, exact_first: int = EXACT_FIRST, seek: bool = True) -> RowSlots:
        """Slots found beside the input of ``index`` once ``exact_first`` ids were looked up by
        hash (by hash alone when its ids cannot be read in order). ``seek``: the input is read
        from a little before the row of one of the first block's ids (``_seek``), else from its
        start up to them."""
        return cls(index, index.rows_in_order(), exact_first, seek)

    def slots(self, ids: list[bytes]) -> list[int | None]:
        """The slot of each id (None: not the input's), in their order."""
        index = self._index
        if self._exact_left > 0:
            self._exact_left -= len(ids)
            return index.find_raws(ids)
        at = self._place(ids) if self._rows is not None or self._held else None
        if at is None:
            return index.find_raws(ids)
        end = at + len(ids)
        self._fill(end + SLACK)
        held = self._held
        self._at = min(end, len(held))
        if held[at:end] == ids and b"" not in ids:  # the input's next rows, in order
            return index.find_members(ids)
        near = set(held[max(at - SLACK, 0):end + SLACK])
        near.discard(b"")  # a row whose id cannot be told from its bytes
        known = [raw in near for raw in ids]
        members = index.find_members([raw for raw, yes in zip(ids, known, strict=True) if yes])
        others = index.find_raws([raw for raw, yes in zip(ids, known, strict=True) if not yes])
        members.reverse()
        others.reverse()
        return [members.pop() if yes else others.pop() for yes in known]

    def cover(self, ids: list[bytes]) -> list[bytes]:
        """Mark the input's rows near their place that ids of ``ids`` equal (as bytes: those ids
        are the input's, each at that row); the ids left, to look up exactly (``find_raws``).
        For a count of the ids done that needs no slot for each: ``covered_slots`` after."""
        if self._exact_left > 0:
            self._exact_left -= len(ids)
            return ids
        at = self._place(ids) if self._rows is not None or self._held else None
        if at is None:
            return ids
        end = at + len(ids)
        self._fill(end + SLACK)
        held = self._held
        self._at = min(end, len(held))
        low = max(at - SLACK, 0)
        near = held[low:end + SLACK]
        distinct = set(ids)
        named = distinct.intersection(near)
        named.discard(b"")  # a row whose id cannot be told from its bytes
        if not named:
            return ids
        if len(distinct) < len(ids):
            self.again = True  # an id twice in the block
        start = self._base + low
        marks = int.from_bytes(bytes(map(named.__contains__, near)), "little")
        size = len(near)
        covered = self._covered
        if len(covered) < start + size:
            covered.extend(bytes(start + size - len(covered)))
        before = int.from_bytes(covered[start:start + size], "little")
        if before & marks:
            self.again = True  # a row marked by a block before: its id seen again
        # a byte of 0 or 1 a row: "or" marks the block's rows beside those marked before
        covered[start:start + size] = (before | marks).to_bytes(size, "little")
        return [raw for raw in ids if raw not in named] if len(named) < len(ids) else []

    def covered(self) -> bytes:
        """The rows marked by ``cover``: a byte each, from the input's first row."""
        return bytes(self._covered)

    def _place(self, ids: list[bytes]) -> int | None:
        """Where in ``_held`` the block of ``ids`` starts, found by one of its first ids (None:
        none is near, nor ahead: the block is looked up by hash)."""
        if not self._placed:
            return self._seek(ids)
        held = self._held
        if self._at > 2 * REACH:  # let go of rows long passed
            drop = self._at - SLACK
            del held[:drop]
            self._base += drop
            self._at -= drop
        self._fill(self._at + REACH)
        low, high = max(self._at - SLACK, 0), min(self._at + REACH, len(held))
        for nth, raw in enumerate(ids[:_TRIED]):
            try:
                return max(held.index(raw, low, high) - nth, 0)
            except ValueError:
                continue
        return None

    def _seek(self, ids: list[bytes]) -> int | None:
        """The first block's place: the input's ids read up to one of the block's first ids (a
        part of the output may start anywhere). They are read from a little before the earliest
        row of those ids that the exact lookup finds (``IdIndex.rows_from``: its line number
        counted, not the input's ids read from its start), and no further than ``REACH`` rows
        past it (none of those ids told by its bytes there: an input spaced otherwise); when
        none is the input's, none is read: the next block tries. Else (or when the input cannot
        be read from a row), from the input's start. The place is told, as from the start, by
        the ids read there: what the lookup found only says where to start reading."""
        tried = ids[:_TRIED]
        last: int | None = None  # the last row read after a seek
        if self._seek_near and self._rows is not None:
            index = self._index
            found = [slot for slot in index.find_raws([raw for raw in tried if raw])
                     if slot is not None]
            if not found:
                return None
            self._seek_near = False
            # the earliest: reading from there on meets the others (as from the start)
            near = index.rows_from(min(found, key=index.locator), SLACK + _TRIED)
            if near is not None:
                self._base, self._rows = near
                last = self._base + SLACK + _TRIED + REACH
        while self._rows is not None:
            if last is not None and self._base + len(self._held) > last:
                self._rows = None  # no place: every block goes to the exact lookup
                self._held.clear()
                break
            block = next(self._rows, None)
            if block is None:
                self._rows = None
                break
            self._held.extend(block)
            starts = [self._held.index(raw) - nth for nth, raw in enumerate(tried)
                      if raw and raw in self._held]
            if starts:
                self._placed = True
                start = max(min(starts), 0)
                drop = max(start - SLACK, 0)
                del self._held[:drop]
                self._base += drop
                return start - drop
            drop = max(len(self._held) - SLACK, 0)
            del self._held[:drop]
            self._base += drop
        return None

    def _fill(self, size: int) -> None:
        while len(self._held) < size and self._rows is not None:
            block = next(self._rows, None)
            if block is None:
                self._rows = None
                break
            self._held.extend(block)


_FLIP = bytes.maketrans(b"\0\1", b"\1\0")


def join_marks(marks: list[bytes], chunk: int = 1 << 20) -> tuple[bytearray, bool]:
    """The parts' row marks (``RowSlots.covered``: a byte of 0 or 1 a row) joined by "or", and
    whether a row was marked by two of them; a MB of rows at a time, as ints (no int of all ten
    million rows, nor copies of it, held at once)."""
    size = max(map(len, marks), default=0)
    joined, twice = bytearray(size), False
    for at in range(0, size, chunk):
        end = min(at + chunk, size)
        either = 0
        for mark in marks:
            piece = int.from_bytes(mark[at:end], "little")
            twice = twice or bool(either & piece)
            either |= piece
        joined[at:end] = either.to_bytes(end - at, "little")
    return joined, twice


def covered_slots(index: IdIndex, covered: bytes | bytearray) -> tuple[list[int], bool]:
    """The slots of the input's rows marked in ``covered`` (``RowSlots.cover``; parts' marks
    joined by "or"), each found as a member's; or, when fewer rows are left unmarked, the slots of
    those: (slots, True) means every slot but these. ``([], True)``: every row is marked, the
    whole input with no lookup at all."""
    marked = covered.count(1)
    if marked == len(index):  # distinct rows have distinct ids: every one of them
        return [], True
    if 2 * marked > len(index):
        unmarked: list[bytes] = []
        for block, at in _starts(_rows(index)):
            flags = covered[at:at + len(block)].translate(_FLIP).ljust(len(block), b"\1")
            unmarked += compress(block, flags)
        if b"" not in unmarked:  # each unmarked row's id told by its bytes
            return [slot for slot in index.find_members(unmarked) if slot is not None], True
    slots: list[int] = []
    for block, at in _starts(_rows(index)):
        if at >= len(covered):
            break
        named = list(compress(block, covered[at:at + len(block)]))
        slots += [slot for slot in index.find_members(named) if slot is not None]
    return slots, False


def _rows(index: IdIndex) -> Iterator[list[bytes]]:
    rows = index.rows_in_order()
    if rows is None:
        raise RuntimeError("an input that was read in order cannot be read again")
    return rows


def _starts(blocks: Iterable[list[bytes]]) -> Iterator[tuple[list[bytes], int]]:
    """Each block of rows with the row it starts at."""
    at = 0
    for block in blocks:
        yield block, at
        at += len(block)
