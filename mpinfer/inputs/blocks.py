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
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, chain, islice
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputError
from ..store.idset import IdIndex
from .locate import BOM
from .readers import jsonl_row
from .tasks import FieldKeys, InputFormat, Task

BLOCK = 1 << 20
MAX_PROBLEMS_SHOWN = 10  # bad rows: the check stops looking at the tenth
MAX_BODY_MODELS = 100  # distinct models kept from a Batch file's bodies
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


@dataclass(frozen=True)
class Taken:
    """What the check found reading rows into the id index: the first bad rows in line order (at
    most MAX_PROBLEMS_SHOWN: then it stopped looking), and the first distinct models named by the
    rows' bodies (a Batch file's)."""

    problems: list[InputError]
    body_models: tuple[str, ...] = ()

    @classmethod
    def joined(cls, parts: list[Taken]) -> Taken:
        """What the parts of one input found, in their order: as if read in one pass (each part
        keeps the first ones it met, so the first of all are among them)."""
        problems = [problem for part in parts for problem in part.problems]
        models = dict.fromkeys(model for part in parts for model in part.body_models)
        return cls(problems[:MAX_PROBLEMS_SHOWN], tuple(models)[:MAX_BODY_MODELS])


def take_rows(blocks: Iterable[Block], index: IdIndex, by_row: bool) -> Taken:
    """Take the ids of the rows of ``blocks`` into ``index`` (each at its byte offset, or its
    position among them when ``by_row``) up to the tenth bad row; what they held besides."""
    problems: list[InputError] = []
    body_models: dict[str, None] = {}
    position = 0
    for block in blocks:
        index.add_many(block.ids, block.offsets)
        position += len(block.ids)
        for offset, item in block.rows:
            if isinstance(item, InputError):
                problems.append(item)
                if len(problems) >= MAX_PROBLEMS_SHOWN:
                    return Taken(problems, tuple(body_models))
                continue
            index.add(item.id, position if by_row else offset)
            position += 1
            if item.body is not None and len(body_models) < MAX_BODY_MODELS:
                body_models.setdefault(str(item.model))
    return Taken(problems, tuple(body_models))


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


@dataclass(frozen=True)
class Span:
    """A part of an input read from a file this process opened (``fd``): its lines from byte
    ``start`` to ``stop`` (line boundaries; None: to the end). The bytes before ``start`` are read
    too, for the line numbers (and, when ``hashed``, for the sha256 of the file from its start)."""

    fd: int
    start: int = 0
    stop: int | None = None
    hashed: bool = True


class JsonlBlocks:
    """The rows of a JSONL or Batch API input, a block at a time (of its ``span`` only, when
    given); ``checksum`` (its size and sha256) once it has been read to the end, hashed.

    A part read alone counts its rows from 0: a row's position is right only for a whole input
    (it is the id only with --id-from-row, whose rows are never read in parts)."""

    def __init__(self, path: Path, keys: FieldKeys, fmt: InputFormat,
                 span: Span | None = None) -> None:
        self.path, self.keys, self.fmt, self.span = path, keys, fmt, span
        self.checksum: tuple[int, str] | None = None
        self._plain = PlainRows.of(keys, fmt)
        self._position = 0  # rows so far (the id of a row with --id-from-row)

    def __iter__(self) -> Iterator[Block]:
        if self.span is not None:
            yield from self._read(self.span)
            return
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise InputError(f"cannot open input: {exc.strerror or exc}", str(self.path)) from None
        with handle:
            yield from self._read(Span(handle.fileno()))

    def _read(self, span: Span) -> Iterator[Block]:
        digest = hashlib.sha256() if span.hashed else None
        lines = size = 0  # lines before the next block, bytes read
        while size < span.start:  # the bytes before the part: their lines (and sha256)
            chunk = os.pread(span.fd, min(BLOCK, span.start - size), size)
            if not chunk:
                break
            lines += chunk.count(b"\n")
            if digest is not None:
                digest.update(chunk)
            size += len(chunk)
        offset = size  # where the next block starts
        held = b""  # the start of a line cut by the end of the last read
        while True:
            want = BLOCK if span.stop is None else min(BLOCK, span.stop - size)
            chunk = os.pread(span.fd, want, size) if want > 0 else b""
            if digest is not None:
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
        if digest is not None and span.stop is None:
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
