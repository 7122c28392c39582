"""The --status cache: a hidden file beside the output, so the next --status reads only the new.

It holds the input's id index (as the input check built it), the selection, and each output's tally
with the marks of where its files were read up to. It is used only for the same input file (device,
inode, size, mtime and the bytes at its head and end unchanged), read the same way (id and field
keys, selection, models); each output's marks (``store.marks.FileMark``) then decide what is read
again. Anything that does not match, or a file that cannot be read, means no cache: status reads
everything, as it would without one. The cache is a plain file of JSON and arrays, never pickle:
loading it runs no code.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..inputs import FieldKeys, InputFormat, InputIndex, Selection, id_resolver
from ..store import blobfile

if TYPE_CHECKING:
    from ..store.blobfile import Buffer
from ..store.idset import IdIndex, IdSubset
from ..store.marks import FileMark
from .tally import RECENT_RECORDS, OutputTally

_MAGIC = b"mpinfer status cache 2\n"  # 2: the index's starts first


def cache_path(output: Path) -> Path:
    """Where ``--status`` keeps its cache for ``output``: a hidden file beside it."""
    return output.with_name(f".{output.name}.status-cache")


def cache_key(input_path: Path, keys: FieldKeys, chosen: Selection,
              outputs: tuple[Path, ...]) -> dict[str, Any]:
    """What the cached counts depend on besides the files themselves."""
    ids = None
    if chosen.ids is not None:
        ids = hashlib.blake2b("\n".join(sorted(chosen.ids)).encode(), digest_size=16).hexdigest()
    return {"input": str(input_path.resolve()), "keys": asdict(keys),
            "selection": [chosen.start, chosen.end, chosen.limit, ids],
            "outputs": [str(p.resolve()) for p in outputs], "hash": "crc32-adler32"}


def usable(only_failed: bool) -> bool:
    """--only-failed selects from the errors files, which change under a run: no cache for it."""
    return not only_failed


# the percentiles, and how many latencies they were taken over
Latency = tuple[int, dict[str, float | None]]


@dataclass
class CachedStatus:
    """What a cache gives back: the input's ids, each output's tally, the latency percentiles."""

    index: InputIndex
    tallies: list[OutputTally]
    latency: Latency


def load(path: Path, key: dict[str, Any], input_path: Path, keys: FieldKeys) -> CachedStatus | None:
    """The cached index and tallies; None without a cache, or with one for another input or key."""
    try:
        return _decode(path, key, input_path, keys)
    except (OSError, ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError):
        return None


def _index_path(path: Path) -> Path:
    """The input's id index is kept apart: it is written once, the tallies at every change."""
    return path.with_name(path.name + "-index")


def current(header: dict[str, Any], key: dict[str, Any], mark: FileMark | None) -> bool:
    """Whether a cache file's ``header`` was written for ``key`` over the input at ``mark``."""
    return (header["key"] == key and mark is not None
            and FileMark.from_dict(header["input_mark"]) == mark)


def _decode(path: Path, key: dict[str, Any], input_path: Path,
            keys: FieldKeys) -> CachedStatus | None:
    mark = FileMark.whole(input_path)
    # The arrays are read from the files straight into their places: a cache of ten million ids
    # and latencies (240 MB) is never held twice, as bytes and as arrays.
    with blobfile.BlobReader(path, _MAGIC) as reader:
        header = reader.header
        if not current(header, key, mark):
            return None
        with blobfile.BlobReader(_index_path(path), _MAGIC) as index_reader:
            if not current(index_reader.header, key, mark):
                return None
            fmt = InputFormat(header["format"])
            index = IdIndex.from_parts(id_resolver(input_path, keys, fmt),
                                       index_reader.take("starts"),
                                       index_reader.header["shared"], index_reader.into)
        selected = IdSubset(index)
        selected.load_bytes(reader.take("selected"))
        tallies = [_tally(item, selected, reader, number)
                   for number, item in enumerate(header["tallies"])]
    index_read = InputIndex(path=input_path, ids=selected, total=len(selected), format=fmt,
                            body_models=tuple(str(m) for m in header["body_models"]))
    count, values = header["latency"]
    latency = (int(count), {str(k): None if v is None else float(v) for k, v in values.items()})
    return CachedStatus(index_read, tallies, latency)


def _header(path: Path) -> dict[str, Any]:
    with blobfile.BlobReader(path, _MAGIC) as reader:
        return reader.header


def _tally(item: dict[str, Any], selected: IdSubset, reader: blobfile.BlobReader,
           number: int) -> OutputTally:
    tally = OutputTally.empty(selected)
    tally.done.load_bytes(reader.take(f"done{number}"))
    # each run in order of size as it was read, when the cache names them (else one array, in no
    # known order: its percentiles would take a sort of them all)
    runs = item.get("runs")
    tally.in_order = isinstance(runs, list)
    tally.latencies = reader.arrays_of(f"latencies{number}", "d",
                                       [int(n) for n in runs] if isinstance(runs, list) else None)
    for name in ("bad", "prompt", "completion", "unpriced", "mismatches", "refusals", "truncated",
                 "filtered", "no_usage"):
        setattr(tally, name, int(item[name]))
    tally.cost = float(item["cost"])
    tally.waited, tally.waits = float(item["waited"]), int(item["waits"])
    tally.last = None if item["last"] is None else float(item["last"])
    tally.recent = deque((float(v) for v in item["recent"]), maxlen=RECENT_RECORDS)
    tally.unknown = {str(v) for v in item["unknown"]}
    tally.unpriced_models = {str(v) for v in item["unpriced_models"]}
    tally.failures = {int(k): str(v) for k, v in item["failures"].items()}
    tally.output_mark = FileMark.from_dict(item["output_mark"]) if item["output_mark"] else None
    tally.errors_mark = FileMark.from_dict(item["errors_mark"]) if item["errors_mark"] else None
    return tally


def save(path: Path, key: dict[str, Any], index: InputIndex, tallies: list[OutputTally],
         latency: Latency) -> None:
    """Write the cache atomically; a directory that cannot take it just means no cache next time."""
    mark = FileMark.whole(index.path)
    if mark is None:
        return
    try:
        index_current = current(_header(_index_path(path)), key, mark)
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        index_current = False
    if not index_current:
        # the buckets' arrays written one after another (what ``IdIndex.from_parts`` reads),
        # with no joined copy of a big index
        hashes, locators, bases, shared = index.ids.index.parts()
        _write(_index_path(path), {"key": key, "input_mark": mark.to_dict(), "shared": shared},
               [("starts", [bases]), ("hashes", hashes), ("locators", locators)])
    blobs: list[tuple[str, Sequence[Buffer]]] = [("selected", [index.ids.to_bytes()])]
    items = []
    for number, tally in enumerate(tallies):
        blobs.append((f"done{number}", [tally.done.to_bytes()]))
        blobs.append((f"latencies{number}", tally.latencies))  # the runs one after another
        items.append({
            "bad": tally.bad, "prompt": tally.prompt, "completion": tally.completion,
            "unpriced": tally.unpriced, "unpriced_models": sorted(tally.unpriced_models),
            "mismatches": tally.mismatches, "refusals": tally.refusals,
            "truncated": tally.truncated, "filtered": tally.filtered, "no_usage": tally.no_usage,
            "cost": tally.cost, "waited": tally.waited, "waits": tally.waits,
            "runs": list(map(len, tally.latencies)) if tally.in_order else None,
            "last": tally.last, "recent": list(tally.recent),
            "unknown": sorted(tally.unknown),
            "failures": {str(k): v for k, v in tally.failures.items()},
            "output_mark": tally.output_mark.to_dict() if tally.output_mark else None,
            "errors_mark": tally.errors_mark.to_dict() if tally.errors_mark else None,
        })
    _write(path,
           {"key": key, "input_mark": mark.to_dict(), "format": index.format.value,
            "body_models": list(index.body_models), "latency": [latency[0], latency[1]],
            "tallies": items}, blobs)


def _write(path: Path, header: dict[str, Any], blobs: Sequence[tuple[str, Sequence[Buffer]]],
           ) -> None:
    blobfile.write_blobs(path, _MAGIC, header, blobs)
