"""Task ids held compactly: 16 bytes an id for the input, one bit an id for any subset of it.

Ten million ids as Python strings cost about a gigabyte; here the input's ids are 64-bit hashes,
sorted in 1,024 buckets by their top bits, each beside its locator (where the id can be read again:
a byte offset into the input, or the row number when the ids are row numbers), and every set of ids
a run needs (the selection, the ids already done) is a bitmap over that index's slots.

Nothing may be lost to a hash collision, so a hash is never taken for an id:
- ids that share a hash within the input are found when the index is frozen (equal neighbours once
  sorted) and told apart by their full ids, read again through the resolver; equal full ids are
  duplicates, which ``freeze`` returns for the input check to report;
- an id from elsewhere (a record of the output) is an input id only if the full id read at its
  locator equals it (``IdIndex.find``): one read per id found, none for an id whose hash is absent;
- an id known to be one of the input's (a task read from that input) needs no read (``find(id,
  member=True)``): when its hash is unique in the input, its slot is the one holding that hash.

The hash function is a parameter so that tests can force collisions through the real paths.
"""

from __future__ import annotations

import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import repeat
from operator import lshift, or_

HashFn = Callable[[str], int]  # an id's 64-bit hash (an unsigned int below 2**64)
Resolver = Callable[[int], str]  # the full id stored at a locator

# Ids are gathered in 1,024 buckets by their top bits, so freezing sorts small pieces
_BUCKET_BITS = 10
BUCKETS = 1 << _BUCKET_BITS


def id_hash(task_id: str) -> int:
    """A 64-bit hash that is the same in every process (the status cache keeps slots across runs).

    CRC-32 above Adler-32 of the UTF-8 bytes: cheaper than an 8-byte BLAKE2b (bench/README.md),
    which counts ten million times over. Neither resists a crafted collision, and need not: a
    collision costs a read of the input, never a wrong answer (the top bits, CRC-32's, pick the
    bucket and spread evenly).
    """
    data = task_id.encode()
    return zlib.crc32(data) << 32 | zlib.adler32(data)


_CRC_ADLER = id_hash  # this very function, though a test puts another in ``id_hash``'s place


_PACK = 40  # locators below 2**40 (a terabyte of input) sort packed below their hash in one int


def _sort_together(hashes: array[int], locators: array[int]) -> bool:
    """Sort a bucket by hash, then locator, in place: by its hashes alone when none is shared (the
    common case), else packed ints, which sort faster than pairs; whether a hash is shared."""
    by_hash = dict(zip(hashes, locators, strict=True))
    if len(by_hash) == len(hashes):  # no hash shared in the bucket: its hashes alone sort it
        order = sorted(by_hash)
        hashes[:] = array("Q", order)
        locators[:] = array("Q", map(by_hash.__getitem__, order))
        return False
    if max(locators) >> _PACK:
        pairs = sorted(zip(hashes, locators, strict=True))
        hashes[:] = array("Q", [pair[0] for pair in pairs])
        locators[:] = array("Q", [pair[1] for pair in pairs])
        return True
    mask = (1 << _PACK) - 1
    packed = sorted([value << _PACK | locator
                     for value, locator in zip(hashes, locators, strict=True)])
    hashes[:] = array("Q", [value >> _PACK for value in packed])
    locators[:] = array("Q", [value & mask for value in packed])
    return True


@dataclass(frozen=True)
class Buckets:
    """Buckets of an index in one buffer, to send to another process (pickled as one object,
    with no second copy): ``counts``, the ids in each bucket from number ``first`` on, and
    ``data``, their hashes bucket after bucket, then their locators; ``shared``, when sorted,
    the numbers of those where a hash is shared."""

    first: int
    counts: array[int]
    data: bytearray
    shared: frozenset[int] | None = None  # None: not sorted

    @classmethod
    def of(cls, buckets: list[tuple[array[int], array[int]]], first: int,
           shared: frozenset[int] | None = None) -> Buckets:
        """These buckets (numbered from ``first``) in one buffer."""
        data = bytearray()
        for hashes, _ in buckets:
            data += hashes
        for _, locators in buckets:
            data += locators
        return cls(first, array("Q", [len(hashes) for hashes, _ in buckets]), data, shared)

    def pieces(self) -> Iterator[tuple[memoryview, memoryview]]:
        """Each bucket's hashes and locators, as views of the buffer (8 bytes each)."""
        view = memoryview(self.data)
        at, half = 0, len(view) // 2
        for count in self.counts:
            yield view[at:at + 8 * count], view[half + at:half + at + 8 * count]
            at += 8 * count


class IdIndex:
    """Every id of one input, 16 bytes each: built by ``add``, then ``freeze``, then looked up."""

    def __init__(self, resolver: Resolver, hash_fn: HashFn | None = None) -> None:
        self._resolver = resolver
        self._hash = hash_fn or id_hash
        self._shift = 64 - _BUCKET_BITS
        # Each bucket: the hashes (sorted once frozen) and their locators, in step. They are never
        # copied into one array: that copy would double the peak on ten million ids.
        self._buckets: list[tuple[array[int], array[int]]] = [
            (array("Q"), array("Q")) for _ in range(BUCKETS)]
        self._bases = array("Q")  # the slot of each bucket's first entry; empty until frozen
        # Hashes shared by distinct ids of the input:
        # hash -> {full id: slot}. Found at freeze; rare.
        self._shared: dict[int, dict[str, int]] = {}
        # The buckets sorted ahead of the freeze (by ``sort_buckets`` or ``take_sorted``): each
        # one's number, and whether a hash is shared in it
        self._sorted: dict[int, bool] = {}

    def add(self, task_id: str, locator: int) -> None:
        """Take one id of the input and where it can be read again."""
        if self._bases or self._sorted:
            raise RuntimeError("IdIndex.add after freeze (or sort_buckets)")
        value = self._hash(task_id)
        hashes, locators = self._buckets[value >> self._shift]
        hashes.append(value)
        locators.append(locator)

    def add_many(self, task_ids: list[str], locators: list[int]) -> None:
        """``add`` for a block of ids (the input check's plain rows), each with its locator."""
        if self._hash is not _CRC_ADLER:
            for task_id, locator in zip(task_ids, locators, strict=True):
                self.add(task_id, locator)
            return
        if self._bases or self._sorted:
            raise RuntimeError("IdIndex.add after freeze (or sort_buckets)")
        raws = list(map(str.encode, task_ids))
        # id_hash over the block, in C: no Python call an id
        values = map(or_, map(lshift, map(zlib.crc32, raws), repeat(32)), map(zlib.adler32, raws))
        buckets, shift = self._buckets, self._shift
        for value, locator in zip(values, locators, strict=True):
            hashes, places = buckets[value >> shift]
            hashes.append(value)
            places.append(locator)

    def gathered(self) -> Buckets:
        """The ids taken so far, not frozen, as one buffer: what a part of the input checked in
        another process sends back, for ``add_gathered``."""
        if self._bases:
            raise RuntimeError("IdIndex.gathered after freeze")
        return Buckets.of(self._buckets, 0)

    def add_gathered(self, gathered: Buckets) -> None:
        """Take the ids another index of the same input and hash has ``gathered``. The order
        within a bucket is the freeze's to settle (it sorts them), so parts merge in any order."""
        if self._bases or self._sorted:
            raise RuntimeError("IdIndex.add after freeze (or sort_buckets)")
        if len(gathered.counts) != len(self._buckets):
            raise ValueError("ids gathered into another number of buckets")
        for (hashes, locators), (more_hashes, more_locators) in zip(
                self._buckets, gathered.pieces(), strict=True):
            hashes.frombytes(more_hashes)
            locators.frombytes(more_locators)

    def sort_buckets(self, numbers: range) -> Buckets:
        """Sort the buckets ``numbers`` as ``freeze`` does, ahead of it; them, sorted, as one
        buffer (what a forked copy of this index sends back for ``take_sorted``: a share of the
        freeze on another core)."""
        if self._bases:
            raise RuntimeError("IdIndex.sort_buckets after freeze")
        for number in numbers:
            hashes, locators = self._buckets[number]
            self._sorted[number] = len(hashes) > 1 and _sort_together(hashes, locators)
        return Buckets.of(self._buckets[numbers.start:numbers.stop], numbers.start,
                          frozenset(n for n in numbers if self._sorted[n]))

    def take_sorted(self, sorted_ones: Buckets) -> None:
        """Take the buckets ``sort_buckets`` gave (from a copy of this index holding the same
        ids) in place of these: the freeze leaves them as they are."""
        if self._bases:
            raise RuntimeError("IdIndex.take_sorted after freeze")
        if sorted_ones.shared is None:
            raise ValueError("buckets not sorted")
        for number, (hashes, locators) in enumerate(sorted_ones.pieces(),
                                                    start=sorted_ones.first):
            if len(hashes) != 8 * len(self._buckets[number][0]):
                raise ValueError("a bucket sorted from other ids")
            kept = array("Q"), array("Q")
            kept[0].frombytes(hashes)
            kept[1].frombytes(locators)
            self._buckets[number] = kept
            self._sorted[number] = number in sorted_ones.shared

    def freeze(self) -> list[tuple[str, list[int]]]:
        """Sort the index; the duplicate ids,
        each with the locators of all its rows, in locator order.

        Each bucket is sorted in place, so the peak stays the index's own size plus one bucket's
        sort.
        """
        if self._bases:
            raise RuntimeError("IdIndex.freeze twice")
        total = 0
        shared: list[int] = []  # the buckets where a hash is shared (rare): the sort tells
        for number, (hashes, locators) in enumerate(self._buckets):
            self._bases.append(total)
            total += len(hashes)
            shared_here = self._sorted.get(number)
            if shared_here is None:
                shared_here = len(hashes) > 1 and _sort_together(hashes, locators)
            if shared_here:
                shared.append(number)
        self._sorted = {}
        self._bases.append(total)
        return self._resolve_shared(shared)

    def _resolve_shared(self, numbers: list[int]) -> list[tuple[str, list[int]]]:
        """Tell apart the ids that share a hash in the buckets ``numbers``; the duplicates."""
        duplicates: list[tuple[str, list[int]]] = []
        for number in numbers:
            hashes, locators = self._buckets[number]
            base = self._bases[number]
            at = 1
            while at < len(hashes):
                if hashes[at] != hashes[at - 1]:
                    at += 1
                    continue
                first, end = at - 1, at + 1
                while end < len(hashes) and hashes[end] == hashes[first]:
                    end += 1
                by_id: dict[str, list[int]] = {}
                for each in range(first, end):
                    by_id.setdefault(self._resolver(locators[each]), []).append(each)
                self._shared[hashes[first]] = {task_id: base + rows[0]
                                               for task_id, rows in by_id.items()}
                for task_id, rows in by_id.items():
                    if len(rows) > 1:
                        duplicates.append((task_id, sorted(locators[r] for r in rows)))
                at = end + 1
        duplicates.sort(key=lambda item: item[1][0])
        return duplicates

    def __len__(self) -> int:
        return self._bases[-1] if self._bases else sum(len(h) for h, _ in self._buckets)

    def find(self, task_id: str, member: bool = False) -> int | None:
        """The slot of ``task_id`` if it is an id of the input, else None.

        Exact: the id is read to compare, unless it is a ``member`` (the caller read it from this
        same input, and its hash is no other's)."""
        value = self._hash(task_id)
        number = value >> self._shift
        hashes, locators = self._buckets[number]
        at = bisect_left(hashes, value)
        if at == len(hashes) or hashes[at] != value:
            return None
        if self._shared and value in self._shared:
            return self._shared[value].get(task_id)
        return (self._bases[number] + at if member or self._resolver(locators[at]) == task_id
                else None)

    @property
    def keepable(self) -> bool:
        """Whether this index may be kept on disk and its slots with it: only one made with the
        real hash is the same in every process (a test's forced hash is not)."""
        return self._hash is _CRC_ADLER

    def parts(self) -> tuple[list[array[int]], list[array[int]], array[int],
                             dict[str, dict[str, int]]]:
        """The frozen index as buffers: each bucket's hashes and locators, the bucket bases, and
        its shared hashes; kept on disk as they are (inputs/index_cache.py), never joined."""
        shared = {str(value): dict(ids) for value, ids in self._shared.items()}
        return ([h for h, _ in self._buckets], [loc for _, loc in self._buckets], self._bases,
                shared)

    @classmethod
    def from_parts(cls, resolver: Resolver, bases: bytes, shared: dict[str, dict[str, int]],
                   fill: Callable[[str, list[tuple[array[int], int]]], None]) -> IdIndex:
        """An index kept by ``parts`` (with the default hash): ``fill(name, [(array, count)])``
        reads the "hashes", then the "locators", straight into the bucket arrays."""
        index = cls(resolver, _CRC_ADLER)
        index._bases.frombytes(bases)
        if len(index._bases) != len(index._buckets) + 1:
            raise ValueError("a kept id index of the wrong shape")
        counts = [index._bases[n + 1] - index._bases[n] for n in range(len(index._buckets))]
        if min(counts, default=0) < 0:
            raise ValueError("a kept id index of the wrong shape")
        fill("hashes", [(h, count) for (h, _), count in zip(index._buckets, counts, strict=True)])
        fill("locators", [(loc, count)
                          for (_, loc), count in zip(index._buckets, counts, strict=True)])
        index._shared = {int(value): {str(k): int(v) for k, v in ids.items()}
                         for value, ids in shared.items()}
        return index

    def find_raws(self, raws: list[bytes]) -> list[int | None]:
        """``find`` for ids given as their UTF-8 bytes (the resume scan's, sliced out of lines it
        does not decode), a block at a time: exact as ``find`` is. The ids whose hash is in the
        input are compared with the input's, all at once where the resolver can (``same_many``:
        a byte compare of the rows), else one by one (``resolver``)."""
        if self._hash is not _CRC_ADLER:
            return [self.find(raw.decode()) for raw in raws]
        crc, adler, shift, buckets, bases = (zlib.crc32, zlib.adler32, self._shift, self._buckets,
                                             self._bases)
        shared = self._shared
        found: list[int | None] = []
        check: list[int] = []  # where in ``found`` a slot waits for its id to be compared
        locators_checked: list[int] = []
        for raw in raws:
            value = crc(raw) << 32 | adler(raw)
            number = value >> shift
            hashes, locators = buckets[number]
            at = bisect_left(hashes, value)
            if at == len(hashes) or hashes[at] != value:
                found.append(None)
            elif shared and value in shared:
                found.append(shared[value].get(raw.decode()))
            else:
                check.append(len(found))
                locators_checked.append(locators[at])
                found.append(bases[number] + at)
        same_many = getattr(self._resolver, "same_many", None)
        verdicts = (same_many(locators_checked, [raws[at] for at in check])
                    if same_many is not None else [None] * len(check))
        for at, locator, verdict in zip(check, locators_checked, verdicts, strict=True):
            if verdict is None:
                verdict = self._resolver(locator) == raws[at].decode()
            if not verdict:
                found[at] = None
        return found

    def find_members(self, raws: list[bytes]) -> list[int | None]:
        """``find(id, member=True)`` for ids given as their UTF-8 bytes, each known to be one of
        the input's (equal, byte for byte, to an id read from it: store/row_match.py), a block at
        a time: no id is read again to compare."""
        if self._hash is not _CRC_ADLER:
            return [self.find(raw.decode(), member=True) for raw in raws]
        crc, adler, shift, buckets, bases = (zlib.crc32, zlib.adler32, self._shift, self._buckets,
                                             self._bases)
        shared = self._shared
        found: list[int | None] = []
        append = found.append
        for raw in raws:
            value = crc(raw) << 32 | adler(raw)
            number = value >> shift
            hashes = buckets[number][0]
            at = bisect_left(hashes, value)
            if at == len(hashes) or hashes[at] != value:
                append(None)  # not the input's after all: never, for a member
            elif shared and value in shared:
                append(shared[value].get(raw.decode()))
            else:
                append(bases[number] + at)
        return found

    def rows_in_order(self) -> Iterator[list[bytes]] | None:
        """The input's ids as bytes, line by line in its order (``b""`` for a line whose id cannot
        be told from its bytes), a list a block, when the resolver can read them so
        (``IdReader.plain_ids``); else None."""
        plain_ids = getattr(self._resolver, "plain_ids", None)
        rows: Iterator[list[bytes]] | None = plain_ids() if plain_ids is not None else None
        return rows

    def rows_from(self, slot: int, before: int) -> tuple[int, Iterator[list[bytes]]] | None:
        """The input's ids as ``rows_in_order`` gives them, but from ``before`` lines before the
        row of ``slot`` (or from the first line), with the number of the line they start at
        (``IdReader.lines_back``): a part of an output read from any line starts reading the
        input near its place, not from the input's start. None when they cannot be read so."""
        plain_ids = getattr(self._resolver, "plain_ids", None)
        lines_back = getattr(self._resolver, "lines_back", None)
        if plain_ids is None or lines_back is None:
            return None
        offset, row = lines_back(self.locator(slot), before)
        rows: Iterator[list[bytes]] | None = plain_ids(offset)
        return (row, rows) if rows is not None else None

    def locator(self, slot: int) -> int:
        """Where the id in ``slot`` can be read again (its byte offset or row number)."""
        number = bisect_right(self._bases, slot) - 1
        return self._buckets[number][1][slot - self._bases[number]]

    def id_at(self, slot: int) -> str:
        """The full id in ``slot``, read again from the input."""
        return self._resolver(self.locator(slot))


class IdSubset:
    """A set of ids of one input (the selection, the ids done): one bit a slot of its IdIndex."""

    def __init__(self, index: IdIndex, everything: bool = False) -> None:
        self.index = index
        size = len(index)
        self._bits = bytearray((size + 7) // 8)
        self._count = 0
        if everything:
            self.add_all()

    def add_all(self) -> None:
        """Take every id of the input."""
        self._set_bits(((1 << len(self.index)) - 1).to_bytes(len(self._bits), "little"))

    def empty(self) -> IdSubset:
        """An empty subset of the same input."""
        return IdSubset(self.index)

    def __len__(self) -> int:
        return self._count

    def has_slot(self, slot: int) -> bool:
        """Whether the id in ``slot`` of the index is in this subset."""
        return bool(self._bits[slot >> 3] & (1 << (slot & 7)))

    def add_slot(self, slot: int) -> bool:
        """Take a slot; False when it was already in."""
        byte, bit = slot >> 3, 1 << (slot & 7)
        if self._bits[byte] & bit:
            return False
        self._bits[byte] |= bit
        self._count += 1
        return True

    def add_slots(self, slots: list[int]) -> None:
        """Take many slots at once (the resume scan's, a block at a time)."""
        bits, count = self._bits, self._count
        for slot in slots:
            byte, bit = slot >> 3, 1 << (slot & 7)
            if not bits[byte] & bit:
                bits[byte] |= bit
                count += 1
        self._count = count

    def find(self, task_id: str) -> int | None:
        """The slot of ``task_id`` if it is in this subset (exact, for an id from anywhere)."""
        slot = self.index.find(task_id)
        return slot if slot is not None and self.has_slot(slot) else None

    def __contains__(self, task_id: object) -> bool:
        """Exact membership of any id (one read of the input when its hash is there)."""
        return isinstance(task_id, str) and self.find(task_id) is not None

    def has_member(self, task_id: str) -> bool:
        """Membership of an id read from this subset's input
        (the feed's question): no read needed."""
        if not self._count:
            return False  # a fresh run's done set: no hashing at all
        slot = self.index.find(task_id, member=True)
        return slot is not None and self.has_slot(slot)

    def slots(self) -> Iterator[int]:
        """The slots in this subset, in order."""
        bits = self._bits
        for byte, value in enumerate(bits):
            if value:
                for bit in range(8):
                    if value & (1 << bit):
                        yield byte * 8 + bit

    def __iter__(self) -> Iterator[str]:
        """The full ids, read again from the input (for small sets and reports)."""
        for slot in self.slots():
            yield self.index.id_at(slot)

    def minus(self, other: IdSubset) -> IdSubset:
        """The ids in this subset and not in ``other`` (a subset of the same input)."""
        if other.index is not self.index:
            raise ValueError("subsets of different inputs")
        result = IdSubset(self.index)
        mine, theirs = int.from_bytes(self._bits, "little"), int.from_bytes(other._bits, "little")
        result._set_bits((mine & ~theirs).to_bytes(len(self._bits), "little"))
        return result

    def either(self, other: IdSubset) -> IdSubset:
        """The ids in this subset or in ``other`` (a subset of the same input)."""
        if other.index is not self.index:
            raise ValueError("subsets of different inputs")
        result = IdSubset(self.index)
        mine, theirs = int.from_bytes(self._bits, "little"), int.from_bytes(other._bits, "little")
        result._set_bits((mine | theirs).to_bytes(len(self._bits), "little"))
        return result

    def both(self, other: IdSubset) -> IdSubset:
        """The ids in this subset and in ``other`` (a subset of the same input)."""
        if other.index is not self.index:
            raise ValueError("subsets of different inputs")
        result = IdSubset(self.index)
        mine, theirs = int.from_bytes(self._bits, "little"), int.from_bytes(other._bits, "little")
        result._set_bits((mine & theirs).to_bytes(len(self._bits), "little"))
        return result

    def to_bytes(self) -> bytes:
        """The bitmap, to cache (the status cache keeps it across runs)."""
        return bytes(self._bits)

    def load_bytes(self, data: bytes) -> None:
        """Take the bits of a subset saved by ``to_bytes`` (the status cache)."""
        if len(data) != len(self._bits):
            raise ValueError("saved subset has another size")
        self._set_bits(data)

    def _set_bits(self, data: bytes) -> None:
        self._bits = bytearray(data)
        self._count = int.from_bytes(data, "little").bit_count()
