"""A JSONL or Batch API input read a block of lines at a time: the input check's one pass.

The check (check.py) reads every row before anything is spent; a million rows parsed and checked one
by one cost seconds of Python. Here 1 MiB of lines is read at once and, when every line of it is one
flat JSON object of the common shape (an id, a prompt, maybe images: ``PlainRows``), parsed in one
orjson call and checked a field at a time over the whole block. A block that is not so plain, or
holds a row those checks do not admit, is read line by line as it always was
(``readers.jsonl_row``: ``parse_task``, the one place that says what a row must hold), so a bad row
is reported exactly as before, with its file and line. The same pass takes the file's sha256 (the
run manifest's checksum of its input), so a first run reads its input once.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate, chain, islice
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError
from .locate import BOM
from .readers import jsonl_row
from .tasks import FieldKeys, InputFormat, Task

BLOCK = 1 << 20
# A row's own settings, which parse_task checks: a block with any of them is read row by row
_SETTINGS = ("system", "temperature", "max_tokens")
_NONE = type(None)


@dataclass(frozen=True)
class Block:
    """The rows of a block of lines: the plain rows' ids and byte offsets, checked in bulk; or
    each row's byte offset and its Task or InputError, read one by one."""

    ids: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    rows: list[tuple[int, Task | InputError]] = field(default_factory=list)


class PlainRows:
    """The bulk check of a block whose lines are all flat JSON objects of the common shape.

    It admits only rows ``parse_task`` accepts, with the id it gives: an object with a non-empty
    string or integer id, a string prompt that is not blank, images absent or null, a non-empty
    string or a list of them, and none of the fields that make a row more than that (a chat, a
    row's own settings or model). Anything else (or a block that is not one object a line)
    returns None, and the block is read row by row.
    """

    def __init__(self, keys: FieldKeys) -> None:
        self._id, self._prompt, self._images = keys.id, keys.prompt, keys.images
        self._others = {keys.messages, *_SETTINGS, *([keys.model] if keys.model else [])}

    @classmethod
    def of(cls, keys: FieldKeys, fmt: InputFormat) -> PlainRows | None:
        """The bulk check for an input read with ``keys``; None when its rows are never plain
        (a Batch file, templates, ids from row numbers, a judging run, one field named twice)."""
        named = {keys.id, keys.prompt, keys.images}
        if (fmt is not InputFormat.JSONL or keys.id_from_row or keys.templated is not None
                or keys.judged or len(named) < 3):
            return None
        plain = cls(keys)
        return None if named & plain._others else plain

    def take(self, block: bytes, offset: int) -> tuple[list[str], list[int]] | None:
        """The ids of the rows of ``block`` (whole lines, each ending in a newline) and the byte
        offset of each (the block starts at ``offset``), or None when they are not all plain."""
        lengths = list(map(len, block.split(b"\n")))
        count = len(lengths) - 1
        if b"\r" in block:  # Windows line ends: "\r" is JSON's whitespace, each line means the same
            block = block.replace(b"\r\n", b"\n")
        if not count or block.count(b"}\n") != count or block.count(b"}") != count:
            return None
        # One array of the lines. Each line ends with "}", its only one, so n objects parsed are
        # the n lines each on its own: each object (and any object nested in one) is closed by a
        # "}" of its own outside a string, so n objects take all n, one at each line's end, and
        # the next starts after the comma that was that line's end. No "{" count is needed.
        text = bytearray(b"[")
        text += block.replace(b"\n", b",")
        text[-1] = ord("]")
        try:
            rows = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if len(rows) != count or set(map(type, rows)) != {dict}:
            return None
        ids = self._checked(rows)
        if ids is None:
            return None
        # each row's offset: the block's, plus the lines before it, each with its newline
        return ids, list(islice(accumulate(map((1).__add__, lengths), initial=offset), count))

    def _checked(self, rows: list[dict[str, Any]]) -> list[str] | None:
        names: set[str] = set().union(*rows)
        if names & self._others:
            return None
        try:
            ids = list(map(itemgetter(self._id), rows))
            prompts = list(map(itemgetter(self._prompt), rows))
        except KeyError:
            return None
        kinds = set(map(type, ids))
        if not kinds <= {str, int} or "" in ids:
            return None
        if set(map(type, prompts)) != {str} or not all(map(str.strip, prompts)):
            return None
        if self._images in names and not _plain_images([r.get(self._images) for r in rows]):
            return None
        return list(map(str, ids)) if int in kinds else ids


def _plain_images(values: list[Any]) -> bool:
    """Whether every row's images are absent, a non-empty string or a list of them."""
    kinds = set(map(type, values))
    if not kinds <= {_NONE, str, list} or "" in values:
        return False
    if list not in kinds:
        return True
    items = list(chain.from_iterable(v for v in values if type(v) is list))
    return set(map(type, items)) <= {str} and "" not in items


class JsonlBlocks:
    """The rows of a JSONL or Batch API input, a block at a time; ``checksum`` (its size and
    sha256) once it has been read to the end."""

    def __init__(self, path: Path, keys: FieldKeys, fmt: InputFormat) -> None:
        self.path, self.keys, self.fmt = path, keys, fmt
        self.checksum: tuple[int, str] | None = None
        self._plain = PlainRows.of(keys, fmt)
        self._position = 0  # rows so far (the id of a row with --id-from-row)

    def __iter__(self) -> Iterator[Block]:
        digest = hashlib.sha256()
        offset = size = lines = 0  # where the next block starts, bytes read, lines before it
        held = b""  # the start of a line cut by the end of the last read
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise InputError(f"cannot open input: {exc.strerror or exc}", str(self.path)) from None
        with handle:
            while True:
                chunk = handle.read(BLOCK)
                digest.update(chunk)
                size += len(chunk)
                data = held + chunk if held else chunk
                cut = data.rfind(b"\n") + 1 if chunk else len(data)
                if cut:
                    block, held = data[:cut], data[cut:]
                    yield self._block(block, offset, lines)
                    offset += len(block)
                    lines += block.count(b"\n")
                else:
                    held = data
                if not chunk:
                    break
        self.checksum = (size, digest.hexdigest())

    def _block(self, block: bytes, offset: int, lines: int) -> Block:
        if self._plain is not None and not (lines == 0 and block.startswith(BOM)):
            whole = block if block.endswith(b"\n") else block + b"\n"  # the file's last line
            plain = self._plain.take(whole, offset)
            if plain is not None:
                self._position += len(plain[0])
                return Block(*plain)
        rows: list[tuple[int, Task | InputError]] = []
        for number, raw in enumerate(io.BytesIO(block), start=lines + 1):
            at = offset
            offset += len(raw)
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if raw.strip():
                _, item = jsonl_row(self.path, self.keys, self.fmt, raw, number, self._position)
                rows.append((at, item))
                self._position += 1
        return Block(rows=rows)
