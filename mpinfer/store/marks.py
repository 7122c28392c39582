"""Where a file was read up to, and how to tell later that it is still the same file there.

A ``FileMark`` holds the device, inode, mtime and offset of a read, with digests of the bytes at the
file's head and just before the offset. A file that is still the one read (same device and inode,
not shorter, the same bytes at both probes, and the same mtime when it did not grow) can be read on
from the mark; anything else is read again whole. The --status cache (reports/status_cache.py), the
resume's done index (store/done_index.py) and the input's id index (inputs/index_cache.py) trust
what they kept only on such a mark.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PROBE = 4096  # bytes compared at the head of a file and just before the mark
_CHECKSUM_BLOCK = 1 << 20


def file_checksum(path: Path) -> tuple[int, str]:
    """Size in bytes and sha256 (hex) of ``path``, read in 1 MiB blocks so any size fits in
    memory (the run manifest's record of its input); OSError when it cannot be read."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(_CHECKSUM_BLOCK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
            size += count
    return size, digest.hexdigest()


def _digest(fd: int, offset: int, size: int) -> str:
    return hashlib.blake2b(os.pread(fd, size, offset), digest_size=16).hexdigest()


@dataclass(frozen=True)
class FileMark:
    """How far a file was read, and what identifies it: device, inode, mtime, two byte probes."""

    dev: int
    ino: int
    offset: int
    mtime_ns: int
    head: str
    tail: str

    @classmethod
    def of(cls, path: Path, offset: int) -> FileMark | None:
        """The mark of ``path`` read up to ``offset``; None when there is no such file."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return cls.of_fd(fd, offset)
        finally:
            os.close(fd)

    @classmethod
    def whole(cls, path: Path) -> FileMark | None:
        """The mark of ``path`` over its whole length (an input the caches were made from); None
        when it cannot be read."""
        try:
            return cls.of(path, path.stat().st_size)
        except OSError:
            return None

    @classmethod
    def of_fd(cls, fd: int, offset: int) -> FileMark:
        """The mark of the open file ``fd`` read up to ``offset``."""
        info = os.fstat(fd)
        head = _digest(fd, 0, min(_PROBE, offset))
        tail = _digest(fd, max(0, offset - _PROBE), min(_PROBE, offset))
        return cls(info.st_dev, info.st_ino, offset, info.st_mtime_ns, head, tail)

    def resume_at(self, path: Path) -> int | None:
        """Where to read on in ``path``: the mark if it is the same file (maybe grown); or None."""
        again = FileMark.of(path, self.offset)
        if again is None or (again.dev, again.ino) != (self.dev, self.ino):
            return None
        size = path.stat().st_size
        if size < self.offset or (again.head, again.tail) != (self.head, self.tail):
            return None
        if size == self.offset and again.mtime_ns != self.mtime_ns:
            return None  # rewritten to the same length: trust nothing
        return self.offset

    def to_dict(self) -> dict[str, Any]:
        """The mark as JSON values, for the status cache."""
        return {"dev": self.dev, "ino": self.ino, "offset": self.offset, "mtime_ns": self.mtime_ns,
                "head": self.head, "tail": self.tail}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileMark:
        """The mark ``to_dict`` wrote."""
        return cls(int(data["dev"]), int(data["ino"]), int(data["offset"]), int(data["mtime_ns"]),
                   str(data["head"]), str(data["tail"]))
