"""A file of one JSON header and named binary blobs: what mpinfer keeps beside an output to skip
work it did before (the input's id index, the resume's done index, the status and groups caches).

The layout is a magic line, the header's length (8 bytes, little-endian), the header (JSON, naming
each blob and its length) and the blobs one after another. It is plain data, never pickle: loading
one runs no code. It is written whole or not at all (store/atomic.py), and a file that is not one,
or is cut short, reads as ValueError: the caller then does the work again.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence
from contextlib import suppress
from io import BufferedReader
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import OutputError
from .atomic import atomic_write

if TYPE_CHECKING:
    from typing import TypeAlias

    Buffer: TypeAlias = bytes | bytearray | memoryview | array[Any]


def write_blobs(path: Path, magic: bytes, header: dict[str, Any],
                blobs: Sequence[tuple[str, Sequence[Buffer]]]) -> bool:
    """Write ``header`` and each blob (the concatenation of its buffers) to ``path``, atomically
    and without fsync: a cache lost to a crash is only work to do again. Whether it was written."""
    sizes = [[name, sum(len(memoryview(part).cast("B")) for part in parts)]
             for name, parts in blobs]
    encoded = orjson.dumps({**header, "blobs": sizes})
    with suppress(OutputError):
        with atomic_write(path, durable=False) as handle:
            handle.write(magic + len(encoded).to_bytes(8, "little") + encoded)
            for _, parts in blobs:
                for part in parts:  # buffer by buffer: no joined copy of a big index
                    handle.write(part)
        return True
    return False


class BlobReader:
    """An open blob file: its header, then its blobs read in order (``take``, ``into`` or
    ``arrays_of``)."""

    def __init__(self, path: Path, magic: bytes) -> None:
        self._handle: BufferedReader = path.open("rb")
        try:
            if self._handle.read(len(magic)) != magic:
                raise ValueError(f"{path}: not a {magic!r} file")
            size = int.from_bytes(self._handle.read(8), "little")
            file_size = os.fstat(self._handle.fileno()).st_size
            if size > file_size:
                raise ValueError(f"{path}: cut short")
            self.header: dict[str, Any] = orjson.loads(self._handle.read(size))
            self._sizes = [(str(name), int(length)) for name, length in self.header["blobs"]]
            if sum(length for _, length in self._sizes) > file_size:
                raise ValueError(f"{path}: cut short")
        except BaseException:
            self._handle.close()
            raise
        self._next = 0

    def _expect(self, name: str) -> int:
        if self._next >= len(self._sizes) or self._sizes[self._next][0] != name:
            raise ValueError(f"no blob {name!r} next")
        self._next += 1
        return self._sizes[self._next - 1][1]

    def take(self, name: str) -> bytes:
        """The next blob, which must be ``name``, as bytes."""
        length = self._expect(name)
        data = self._handle.read(length)
        if len(data) != length:
            raise ValueError(f"blob {name!r} cut short")
        return data

    def into(self, name: str, targets: Sequence[tuple[array[int], int]]) -> None:
        """Read the next blob, ``name``, straight into arrays: (array, how many items) each, in
        order; no copy of the whole blob is held (an index of ten million ids is 160 MB)."""
        length = self._expect(name)
        if sum(count * target.itemsize for target, count in targets) != length:
            raise ValueError(f"blob {name!r} of another size")
        for target, count in targets:
            try:
                target.fromfile(self._handle, count)
            except EOFError:
                raise ValueError(f"blob {name!r} cut short") from None

    def array_of(self, name: str, typecode: str) -> array[Any]:
        """The next blob, ``name``, as one array of ``typecode`` (``arrays_of``)."""
        return self.arrays_of(name, typecode)[0]

    def arrays_of(self, name: str, typecode: str, counts: Sequence[int] | None = None,
                  ) -> list[array[Any]]:
        """The next blob, ``name``, as arrays of ``typecode`` of ``counts`` items each, one after
        another (None: one array of all), each read straight into it (no copy as bytes: ten
        million latencies are 80 MB)."""
        length = self._expect(name)
        itemsize = array(typecode).itemsize
        if counts is None:
            counts = [length // itemsize]
        if min(counts, default=0) < 0 or sum(counts) * itemsize != length:
            raise ValueError(f"blob {name!r} of another size")
        made = []
        for count in counts:
            values = array(typecode, [0]) * count
            with memoryview(values) as view, view.cast("B") as raw:
                if self._handle.readinto(raw) != len(raw):
                    raise ValueError(f"blob {name!r} cut short")
            made.append(values)
        return made

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
