"""Finding a row of the input again from its byte offset: the id index's resolver, and line numbers.

The id index (store/idset.py) keeps a 64-bit hash and a byte offset for each input row instead of
the id itself; whenever a hash alone could mislead (two ids sharing it, an id from the output), the
full id is read again here, from the file the input check has already checked.
"""

from __future__ import annotations

import csv
import mmap
import os
import re
import weakref
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

import orjson

BOM = b"\xef\xbb\xbf"
_BLOCK = 1 << 20
_UNMAP_EVERY = 1 << 16  # byte compares between two drops of the input's pages from the map
# An id JSON writes as it is: printable ASCII but for the quote and the backslash.
_PLAIN_ID = rb'"([ !#-\[\]-~]+)"'
# JSON's whitespace within a line (a newline ends the row): json.dumps writes ``{"id": "x", ``.
_WS = rb"[ \t\r]*"


def _unit_escape(unit: int) -> bytes:
    """A regex of the JSON escape of a UTF-16 code unit after its backslash: u and four hex
    digits, each letter in either case."""
    return b"u" + b"".join(b"[%s%s]" % (h.encode(), h.upper().encode()) if h.isalpha()
                           else h.encode() for h in f"{unit:04x}")


class KeyForm:
    """How a row of a JSONL input can name the id key in its bytes, for the readers that tell a
    row's id from them: the row's start (``{"id":`` with JSON's whitespace anywhere in it, as
    json.dumps writes ``{"id": "x"``), and what may name the key elsewhere (the key before a colon
    or whitespace, or an escape that writes one of its characters: ``"\\u0069d"`` is "id" too).
    A row's id is told by its bytes only where the key is named nowhere but at its rows' start."""

    def __init__(self, id_key: str) -> None:
        key = orjson.dumps(id_key)
        self.key = key
        #: whether ids can be told from bytes at all: not for a key JSON writes with an escape
        #: (the escape would be taken for one naming the key), nor one ending in what may stand
        #: before a key's opening quote (the counts below would miss a key overlapping another)
        self.usable = b"\\" not in key and not id_key.endswith(("{", ",", " ", "\t", "\r"))
        #: the compact start, compared as bytes first (the common case, the cheapest)
        self.prefix = b"{" + key + b":"
        head = _WS + rb"\{" + _WS + re.escape(key) + _WS + b":" + _WS
        self.head = re.compile(head)
        #: a row's start with a plain id: the id in group 1
        self.first = re.compile(head + _PLAIN_ID)
        #: one match a newline: the id of the row after it, or b""
        self.after = re.compile(rb"\n(?:" + head + _PLAIN_ID + rb")?")
        self._heads = re.compile(rb"\n" + head)
        self._names = [key + end for end in (b":", b" ", b"\t", b"\r")]
        # Each character of the key as JSON may write it: itself, or escaped (\uXXXX; one beyond
        # them as two escapes; "/" as \/ too).
        escapes: set[bytes] = set()  # after the backslash
        forms: list[bytes] = []
        for char in id_key:
            code = ord(char)
            units = ([code] if code <= 0xFFFF else
                     [0xD800 + ((code - 0x10000) >> 10), 0xDC00 + (code & 0x3FF)])
            escapes.add(_unit_escape(units[0]))
            ways = [re.escape(char.encode()), b"".join(rb"\\" + _unit_escape(u) for u in units)]
            if char == "/":  # the one character of a usable key with a short escape
                escapes.add(b"/")
                ways.append(rb"\\/")
            forms.append(rb"(?:" + b"|".join(ways) + rb")")
        #: an escape that may write one of the key's characters (rare: json.dumps never does)
        self._spelled = re.compile(rb"\\(?:" + b"|".join(sorted(escapes)) + rb")")
        #: the key, as JSON may write it, before its colon
        self._written = re.compile(b'"' + b"".join(forms) + b'"' + _WS + b":")

    def named(self, data: bytes | mmap.mmap, low: int, high: int) -> bool:
        """Whether ``data[low:high]`` may name the key (more often than it does, never less)."""
        if data.find(self.key, low, high) >= 0:
            if any(data.find(name, low, high) >= 0 for name in self._names):
                return True
        return self._escaped(data, low, high)

    def _escaped(self, data: bytes | mmap.mmap, low: int, high: int) -> bool:
        """Whether ``data[low:high]`` may name the key with an escape."""
        return (data.find(b"\\", low, high) >= 0  # no backslash, no escape (found at C speed)
                and self._spelled.search(data, low, high) is not None
                and any(b"\\" in key for key in self._written.findall(data, low, high)))

    def only_first(self, data: bytes, cut: int) -> bool:
        """Whether ``data[:cut]`` (whole lines) names the key only as its rows' first key: then
        no row names it twice, and a row whose start has a plain id has that id."""
        if self._escaped(data, 0, cut):
            return False
        # The places that may name the key ("id" anywhere, then only before a colon or a space)
        # against the rows' starts (compact ones, then spaced any way), each count tighter and
        # dearer than the one before: the starts are among those places, so equal counts say
        # that each place is a row's start.
        starts = data.count(b"\n" + self.prefix, 0, cut) + data.startswith(self.prefix)
        named = data.count(self.key, 0, cut)
        if named == starts:
            return True
        named = sum(data.count(name, 0, cut) for name in self._names)
        if named == starts:
            return True
        starts = len(self._heads.findall(data, 0, cut)) + (self.head.match(data, 0, cut)
                                                             is not None)
        return named == starts


def row_has_values(row: dict[Any, Any]) -> bool:
    """A CSV row with a non-blank cell (rows of empty cells are skipped, as blank lines are)."""
    return any(v for v in row.values() if isinstance(v, str) and v.strip())


class CountedLines:
    """The decoded lines of a binary file for the csv module, counting the bytes taken so far.

    csv asks for one line at a time and reads no further than the row it is building, so the count
    before a row is asked for is that row's byte offset.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.offset = handle.tell()

    def __iter__(self) -> CountedLines:
        return self

    def __next__(self) -> str:
        raw = self._handle.readline()
        if not raw:
            raise StopIteration
        if self.offset == 0 and raw.startswith(BOM):
            raw_text = raw[len(BOM):].decode("utf-8")
        else:
            raw_text = raw.decode("utf-8")
        self.offset += len(raw)
        return raw_text


class IdReader:
    """Reads the id of the row at a byte offset of a checked input (JSONL, Batch API or CSV)."""

    def __init__(self, path: Path, id_key: str, fmt: Enum) -> None:
        _READERS.add(self)
        self.path = path
        self.id_key = id_key
        self.fmt = str(fmt.value)
        self._handle: BinaryIO | None = None
        self._header: list[str] | None = None
        self._map: mmap.mmap | None = None
        self._form = KeyForm(id_key)
        self._compares = 0
        self._compared = 0  # ids compared by ``same_many`` so far
        self._plain: bool | None = None  # every row names the id key once, first (_plain_rows)

    def same_many(self, offsets: list[int], raws: list[bytes]) -> list[bool | None]:
        """Whether the row at each offset has the id in ``raws`` (its UTF-8 bytes), told by
        comparing bytes: True when the row starts ``{"<id key>":"<raw>"`` (or spaced so, as
        json.dumps writes ``{"<id key>": "<raw>"``: ``KeyForm``) and names that key nowhere else
        on its line (so that value is the one parsing it gives); None when the row is not that
        plain, or differs: the caller then reads it whole (a hash is never taken for an id)."""
        form = self._form
        data = self._mapped() if self.fmt == "jsonl" and raws and form.usable else None
        if data is None:
            return [None] * len(raws)
        self._compares += len(raws)
        self._compared += len(raws)
        if self._compares >= _UNMAP_EVERY:
            # The pages read stay in the page cache; dropping them from this map keeps the
            # parent's resident size to its own data on a big input.
            self._compares = 0
            data.madvise(mmap.MADV_DONTNEED)
        prefix = form.prefix + b'"'
        # Counting the key over the whole file (``_plain_rows``) spares a look along each row's
        # line, and costs about that look for an id every 256 bytes of the file: it is taken
        # once that many were compared (a few ids never pay for a read of the whole file; many
        # pay at most twice what the better way costs).
        plain = (self._plain_rows() if self._plain is not None or self._compared >= len(data) >> 8
                 else False)
        verdicts: list[bool | None] = []
        for offset, raw in zip(offsets, raws, strict=True):
            end = offset + len(prefix) + len(raw) + 1
            if data[offset:end] != prefix + raw + b'"' or b"\\" in raw or b'"' in raw:
                # spaced as json.dumps writes it, or another id (an id with a quote or an
                # escape, whose bytes could run past the row's id, never matches: a plain id
                # has neither)
                found = form.first.match(data, offset)
                if found is None or found.group(1) != raw:
                    verdicts.append(None)
                    continue
                end = found.end()
            if plain:
                verdicts.append(True)
                continue
            line_end = data.find(b"\n", end)
            verdicts.append(not form.named(data, end, line_end if line_end >= 0 else len(data))
                            or None)
        return verdicts

    def plain_ids(self, start: int = 0) -> Iterator[list[bytes]] | None:
        """The id of each line of a JSONL input, in order, a list a block of lines: the bytes of a
        row that starts ``{"<id key>":"<id>"`` (JSON's whitespace allowed around each token, as
        json.dumps writes ``{"<id key>": "<id>"``: ``KeyForm``) with a plain id and names the key
        nowhere else in its block (then its bytes are what parsing it gives, as in
        ``same_many``), else ``b""`` (a blank line, a row whose first key is another, an id with
        an escape, a block that names the key elsewhere). From the line at byte ``start`` (a
        line's start: 0, a row's offset or one from ``lines_back``). None when the file is not
        JSONL, or its id key is not one told from bytes (``KeyForm.usable``)."""
        if self.fmt != "jsonl" or not self._form.usable:
            return None
        return self._plain_ids(start)

    def lines_back(self, offset: int, count: int) -> tuple[int, int]:
        """The start of the line ``count`` lines before the line at byte ``offset`` (a line's
        start), or of the first line when there are fewer, and its number from 0 (the newlines
        before it, counted over the file up to it): where ``plain_ids`` may start a little before
        a row, and the row it starts at."""
        data = self._mapped()
        if data is None:  # an empty file
            return 0, 0
        at = min(offset, len(data))
        for _ in range(count):
            if at <= 0:
                break
            at = data.rfind(b"\n", 0, at - 1) + 1  # data[at - 1] ends the line before
        return at, (line_numbers(self.path, {at})[at] - 1 if at else 0)

    def _plain_ids(self, start: int) -> Iterator[list[bytes]]:
        form = self._form
        for data, cut in self._blocks(start, _BLOCK):
            if form.only_first(data, cut):  # no row names the key twice
                found = form.first.match(data, 0, cut)
                ids: list[bytes] = form.after.findall(data, 0, cut - 1)
                ids.insert(0, found.group(1) if found is not None else b"")
            else:
                ids = [b""] * (data.count(b"\n", 0, cut - 1) + 1)
            yield ids

    def _blocks(self, start: int, size: int) -> Iterator[tuple[bytes, int]]:
        """The file from byte ``start`` (a line's start) in blocks of about ``size`` bytes, each
        ``data[:cut]`` whole lines (the last may lack its newline). Every block starts at a
        line's start (the first row's after a BOM, which reading it again skips too): the key
        at a block's start is at a line's start."""
        held = b""  # the start of a line cut by the block's end
        with self.path.open("rb") as handle:
            handle.seek(start)
            if not start and handle.read(len(BOM)) != BOM:
                handle.seek(0)
            while True:
                chunk = handle.read(size)
                data = held + chunk
                cut = data.rfind(b"\n") + 1 if chunk else len(data)
                if not cut:
                    if not chunk:
                        return
                    held = data
                    continue
                yield data, cut
                if not chunk:
                    return
                held = data[cut:]

    def _plain_rows(self) -> bool:
        """Whether the file names the id key only at the start of rows (counted once over it):
        then no row names it twice, and a row that starts with a plain id has that id."""
        if self._plain is None:
            self._plain = all(self._form.only_first(data, cut)
                              for data, cut in self._blocks(0, _BLOCK * 8))
        return self._plain

    def _mapped(self) -> mmap.mmap | None:
        if self._map is None:
            try:
                self._map = mmap.mmap(self._file().fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                return None
        return self._map

    def forget_file(self) -> None:
        """Let go of the open input (a forked process's: it opens its own at its next read)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _file(self) -> BinaryIO:
        if self._handle is None:
            self._handle = self.path.open("rb")
        return self._handle

    def __call__(self, offset: int) -> str:
        handle = self._file()
        if self.fmt == "csv":
            return self._csv_id(handle, offset)
        handle.seek(offset)
        raw = handle.readline()
        if offset == 0 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        obj = orjson.loads(raw)
        return str(obj["custom_id"] if self.fmt == "batch" else obj[self.id_key])

    def _csv_id(self, handle: BinaryIO, offset: int) -> str:
        if self._header is None:
            handle.seek(0)
            self._header = next(csv.reader(CountedLines(handle)), [])
        handle.seek(offset)
        for cells in csv.reader(CountedLines(handle)):
            row = dict(zip(self._header, cells, strict=False))
            if cells and row_has_values(row):
                return str(row[self.id_key])
        raise LookupError(f"{self.path}: no row at byte {offset}")

    def __getstate__(self) -> dict[str, Any]:
        # An open file does not cross processes; the copy opens its own when first asked.
        return {**self.__dict__, "_handle": None, "_map": None}


# Every reader, so that a forked process (status and validate read a big output in parts) opens
# the input again: a file open before the fork has one offset for both processes, and their
# seek-then-read would mix (a row read from where the other one moved it).
_READERS: weakref.WeakSet[IdReader] = weakref.WeakSet()


def _forget_files() -> None:
    for reader in list(_READERS):
        reader.forget_file()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_files)


class JsonIdReader:
    """Reads the id of the task at a position of a JSON task list (read once, its ids kept)."""

    def __init__(self, path: Path, id_key: str) -> None:
        self.path = path
        self.id_key = id_key
        self._ids: list[str] | None = None

    def __call__(self, position: int) -> str:
        if self._ids is None:
            data = orjson.loads(self.path.read_bytes().removeprefix(BOM))
            tasks = data["tasks"] if isinstance(data, dict) else data
            self._ids = [str(t.get(self.id_key)) if isinstance(t, dict) else "" for t in tasks]
        return self._ids[position]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ids": None}


def line_numbers(path: Path, offsets: set[int]) -> dict[int, int]:
    """The line number (from 1) of each byte offset, counted in one pass over the file."""
    wanted = sorted(offsets)
    found: dict[int, int] = {}
    lines_before = 0
    position = 0
    with path.open("rb") as handle:
        for target in wanted:
            while position < target:
                block = handle.read(min(_BLOCK, target - position))
                if not block:
                    break
                lines_before += block.count(b"\n")
                position += len(block)
            found[target] = lines_before + 1
    return found
