"""An output read a block of whole lines at a time: what --status and --validate read a million
lines with (a big one in parts over the cores: store/parts.py).

``LineReader`` gives the whole lines of a file from an offset (a MB at a time, split by C), or of
a part of it, and the mark of where they end, taken from the same open file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ..errors import OutputError
from .marks import FileMark

BLOCK = 1 << 20  # bytes read at a time: a block's lines, and what they leave behind, stay small


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
