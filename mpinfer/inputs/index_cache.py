"""The input's id index, kept beside the output so that a rerun on an unchanged input skips the
input check.

The check (check.py) reads and checks every row and keeps the ids' index (16 bytes an id). A run
keeps that index in a hidden file beside its output (``.results.jsonl.input-index``); the next run
takes it instead of checking again when the input is the same file, unchanged: same path, device,
inode, size and mtime, the same bytes at its head and end (store/marks.py), read with the same keys.
Anything else, or a file that cannot be read, means the check runs as it would without one. The
input was checked whole when the index was made; an unchanged file needs no second check.
"""

from __future__ import annotations

import dataclasses
from array import array
from pathlib import Path
from typing import Any

import orjson

from ..store.blobfile import BlobReader, write_blobs
from ..store.idset import IdIndex
from ..store.marks import FileMark, file_checksum
from .check import check_input, id_resolver, selected_ids
from .tasks import FieldKeys, InputFormat, InputIndex, Selection

# changed with the layout, or with the order of the slots (a status cache counts over them)
_MAGIC = b"mpinfer input index 1\n"


def input_index_path(output: Path) -> Path:
    """Where a run keeps its input's id index: a hidden file beside the output."""
    return output.with_name(f".{output.name}.input-index")


def input_key(path: Path, keys: FieldKeys) -> dict[str, Any] | None:
    """What a kept index of ``path`` must match: the file's identity and mark, and the keys."""
    mark = FileMark.whole(path)
    if mark is None:
        return None
    return {"input": str(path.resolve()), "mark": mark.to_dict(), "keys": dataclasses.asdict(keys),
            "hash": "crc32-adler32"}


def checked_input(path: Path, keys: FieldKeys, chosen: Selection,
                  kept: Path | None) -> InputIndex:
    """``check_input``, or the index kept at ``kept`` when the input is unchanged since it was
    checked (``kept`` None: neither read nor written)."""
    key = input_key(path, keys) if kept is not None else None
    if kept is not None and key is not None:
        loaded = _load(kept, key, path, keys, chosen)
        if loaded is not None:
            return loaded
    index = check_input(path, keys, chosen)
    # only an index made with the real hash is kept (its slots are the same in every process)
    index = dataclasses.replace(index, kept=key if index.ids.index.keepable else None)
    if kept is not None and kept.parent.is_dir():
        index = keep_input_index(kept, index)
    return index


def kept_index(kept: Path, path: Path, keys: FieldKeys) -> IdIndex | None:
    """The id index kept at ``kept`` when it is of the input at ``path`` as it is now, read with
    ``keys`` (the status cache's counts are over its slots); None otherwise."""
    key = input_key(path, keys)
    read = _read(kept, key, path, keys) if key is not None else None
    return read[0] if read is not None else None


def _read(kept: Path, key: dict[str, Any], path: Path,
          keys: FieldKeys) -> tuple[IdIndex, InputFormat, dict[str, Any]] | None:
    """The index kept at ``kept``, the input's format and the file's header, when its key is
    ``key``."""
    try:
        with BlobReader(kept, _MAGIC) as reader:
            header = reader.header
            if header["key"] != key:
                return None
            fmt = InputFormat(header["format"])
            return IdIndex.from_parts(id_resolver(path, keys, fmt), reader.take("bases"),
                                      header["shared"], reader.into), fmt, header
    except (OSError, ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError):
        return None


def _load(kept: Path, key: dict[str, Any], path: Path, keys: FieldKeys,
          chosen: Selection) -> InputIndex | None:
    read = _read(kept, key, path, keys)
    if read is None:
        return None
    index, fmt, header = read
    try:
        models = tuple(str(m) for m in header["body_models"])
        size, sha256 = header["checksum"] or (0, "")
    except (KeyError, TypeError, ValueError):
        return None
    ids = selected_ids(path, keys, chosen, fmt, index)
    return InputIndex(path=path, ids=ids, total=len(ids), format=fmt, body_models=models,
                      kept=key, checksum=(int(size), str(sha256)) if sha256 else None)


def keep_input_index(kept: Path, index: InputIndex) -> InputIndex:
    """Keep ``index`` (checked, with its ``kept`` key) at ``kept``, with the input's checksum (the
    run manifest's: an unchanged input need not be read for it again; read now unless the check
    took it); the index with that checksum. A folder that cannot take it only means a check next
    time."""
    if index.kept is None:
        return index
    # a Parquet input's is taken over its footers; a JSONL input's in the check's own pass
    if index.format is not InputFormat.PARQUET and index.checksum is None:
        try:
            index = dataclasses.replace(index, checksum=file_checksum(index.path))
        except OSError:
            return index
    hashes, locators, bases, shared = index.ids.index.parts()
    header = {"key": index.kept, "format": index.format.value,
              "body_models": list(index.body_models), "shared": shared,
              "checksum": list(index.checksum or ())}
    blobs: list[tuple[str, list[array[int]]]] = [("bases", [bases]), ("hashes", hashes),
                                                 ("locators", locators)]
    write_blobs(kept, _MAGIC, header, blobs)
    return index
