"""Whole-file replacement: a reader (or a rerun after a crash)
sees the old file or the new one, never half.

Every file mpinfer rewrites beside an output goes through here: the repaired output, exports and the
missing list, the report, the Batch plan, the run summary and the status cache.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from ..errors import OutputError


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable: the folder's entry is data too."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems cannot open folders; the rename itself is already atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # likewise: not every filesystem can fsync a folder
    finally:
        os.close(fd)


@contextmanager
def atomic_write(dest: Path, text: bool = False, mode_from: Path | None = None,
                 durable: bool = True) -> Iterator[IO[Any]]:
    """Write ``dest`` whole or not at all:
    yield a temporary file beside it, then fsync and rename it over.

    On any exception the temporary file is removed and ``dest`` is untouched. ``mode_from`` gives
    the new file the permissions of another (the file it replaces). ``durable=False`` skips the two
    fsyncs: the rename alone keeps readers from a half-written file, and a report rewritten every
    few seconds need not reach the disk each time.
    """
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        handle: IO[Any] = tmp.open("w", encoding="utf-8", newline="") if text else tmp.open("wb")
    except OSError as exc:
        raise OutputError(f"{tmp}: cannot create: {exc.strerror or exc}") from None
    try:
        with handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if mode_from is not None:
            shutil.copymode(mode_from, tmp)
        os.replace(tmp, dest)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{dest}: cannot write: {exc.strerror or exc}") from None
        raise
    if durable:
        fsync_dir(dest.parent)


def replace_quietly(dest: Path, data: bytes) -> bool:
    """Replace ``dest`` by ``data`` as atomic_write does (without the fsyncs),
    or leave it as it was; whether it was written.

    For files that only report (the run summary, the status cache): a full disk must not take a run
    or a --status down over them; the output files are the truth.
    """
    with suppress(OutputError):
        with atomic_write(dest, durable=False) as handle:
            handle.write(data)
        return True
    return False
