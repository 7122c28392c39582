"""The --status cache: a hidden file beside the output, so the next --status reads only the new.

It holds the selection and each output's tally with the marks of where its files were read up to,
counted over the slots of the input's id index that a run (or the first --status) keeps beside the
output (inputs/index_cache.py): that index, found current and the same, is the cache's index. It is
used only for the same input file (device, inode, size, mtime and the bytes at its head and end
unchanged), read the same way (id and field keys, selection, models); each output's marks
(``store.marks.FileMark``) then decide what is read again. Anything that does not match, or a file
that cannot be read, means no cache: status reads everything, as it would without one. The cache is
a plain file of JSON and arrays, never pickle: loading it runs no code.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..inputs import FieldKeys, InputFormat, InputIndex, Selection, kept_index
from ..store import blobfile

if TYPE_CHECKING:
    from ..store.blobfile import Buffer
from ..store.idset import IdIndex, IdSubset
from ..store.marks import FileMark
from .tally import RECENT_RECORDS, OutputTally

_MAGIC = b"mpinfer status cache 3\n"  # 3: no index of its own (the input index's)


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


def load(path: Path, key: dict[str, Any], input_path: Path, keys: FieldKeys,
         kept: Path) -> CachedStatus | None:
    """The cached tallies over the input's index kept at ``kept``; None without a cache, with one
    for another input or key, or without that index as the cache was counted over."""
    try:
        return _decode(path, key, input_path, keys, kept)
    except (OSError, ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError):
        return None


def _old_index_path(path: Path) -> Path:
    """Where caches before version 3 kept a copy of the input's id index (removed when seen)."""
    return path.with_name(path.name + "-index")


def _index_digest(index: IdIndex) -> str:
    """What tells the index a cache was counted over from another of the same input: its
    buckets' sizes (the order within them is the input index's version, in its magic)."""
    return hashlib.blake2b(memoryview(index.parts()[2]), digest_size=16).hexdigest()


def current(header: dict[str, Any], key: dict[str, Any], mark: FileMark | None) -> bool:
    """Whether a cache file's ``header`` was written for ``key`` over the input at ``mark``."""
    return (header["key"] == key and mark is not None
            and FileMark.from_dict(header["input_mark"]) == mark)


def _decode(path: Path, key: dict[str, Any], input_path: Path, keys: FieldKeys,
            kept: Path) -> CachedStatus | None:
    mark = FileMark.whole(input_path)
    # The arrays are read from the files straight into their places: the index and the latencies
    # of ten million lines (240 MB) are never held twice, as bytes and as arrays.
    with blobfile.BlobReader(path, _MAGIC) as reader:
        header = reader.header
        if not current(header, key, mark):
            return None
        index = kept_index(kept, input_path, keys)
        if index is None or _index_digest(index) != header["index"]:
            return None
        fmt = InputFormat(header["format"])
        selected = IdSubset(index)
        selected.load_bytes(reader.take("selected"))
        tallies = [_tally(item, selected, reader, number)
                   for number, item in enumerate(header["tallies"])]
    index_read = InputIndex(path=input_path, ids=selected, total=len(selected), format=fmt,
                            body_models=tuple(str(m) for m in header["body_models"]))
    count, values = header["latency"]
    latency = (int(count), {str(k): None if v is None else float(v) for k, v in values.items()})
    return CachedStatus(index_read, tallies, latency)


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
    with suppress(OSError):
        _old_index_path(path).unlink(missing_ok=True)
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
           {"key": key, "input_mark": mark.to_dict(), "index": _index_digest(index.ids.index),
            "format": index.format.value,
            "body_models": list(index.body_models), "latency": [latency[0], latency[1]],
            "tallies": items}, blobs)


def _write(path: Path, header: dict[str, Any], blobs: Sequence[tuple[str, Sequence[Buffer]]],
           ) -> None:
    blobfile.write_blobs(path, _MAGIC, header, blobs)
