"""``GroupReader``: results by group (groups.py) read as --status reads, and kept beside the output.

The cache (``.<output>.by-<field>.status-cache``) holds each selected task's group and, per output,
its ``GroupTally`` with the marks of where its answers and judge files were read up to. It is used
only for the same input file (its whole-file FileMark), read the same way (the status cache's key,
the field, the outputs); each output's marks then decide what is read again. Anything that does not
match, or does not read, means no cache: the groups are counted from the files, as without one. A
plain file of JSON and arrays (store/blobfile.py), never pickle.
"""

from __future__ import annotations

import re
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..config import RunConfig
from ..inputs import InputIndex, Selection, reading
from ..store import blobfile
from . import status_cache
from .groups import (
    Counts,
    GroupRow,
    GroupTally,
    GroupValues,
    group_outputs,
    group_rows,
    read_values,
)
from .tally import FileMark, OutputTally

if TYPE_CHECKING:
    from ..store.blobfile import Buffer

_MAGIC = b"mpinfer groups cache 1\n"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def cache_path(output: Path, by: str) -> Path:
    """Where ``--status --by FIELD`` keeps its counts for ``output``: a hidden file beside it."""
    return output.with_name(f".{output.name}.by-{_UNSAFE.sub('_', by)[:80]}.status-cache")


class GroupReader:
    """The groups of a run, read from where the last read stopped (and from the cache)."""

    def __init__(self, config: RunConfig, by: str, chosen: Selection, key: dict[str, Any],
                 use_cache: bool) -> None:
        self.input_path, output = config.require_paths()
        self.by = by
        self.keys = reading(config)
        self.chosen = chosen
        self.outputs = group_outputs(config)
        self.path = cache_path(output, by)
        self.key = {**key, "by": by,
                    "groups": [[str(o.path), o.variant, o.model] for o in self.outputs]}
        self.use_cache = use_cache
        self.values: GroupValues | None = None
        self.tallies: list[GroupTally] = []
        self.from_cache = False
        self._unsaved = False

    def read(self, index: InputIndex, status: dict[Path, OutputTally]) -> list[GroupRow]:
        """The groups as the files stand now; ``status``: the status tally of each output (its
        failures), by path."""
        if self.values is None:
            size = len(index.ids.index)
            cached = self._load(size) if self.use_cache else None
            self.from_cache = cached is not None
            if cached is None:
                self.values = read_values(self.input_path, self.keys, self.chosen, index.format,
                                          index.ids.index, self.by)
                self.tallies = [GroupTally(size, o.variant) for o in self.outputs]
                self._unsaved = True
            else:
                self.values, self.tallies = cached
        for output, tally in zip(self.outputs, self.tallies, strict=True):
            self._unsaved = tally.refresh(output.path, self.values, index.ids) or self._unsaved
        return group_rows(self.values, self.outputs, self.tallies,
                          [status[output.path] for output in self.outputs])

    @property
    def unsaved(self) -> bool:
        """Whether the counts changed since they were read or written."""
        return self._unsaved

    def save(self) -> None:
        """Write the counts, when they changed since they were read or written."""
        if not self.use_cache or not self._unsaved or self.values is None:
            return
        mark = FileMark.whole(self.input_path)
        if mark is None:
            return
        values = self.values
        # the arrays themselves, not copies: at ten million ids, 17 bytes an id an output
        blobs: list[tuple[str, list[Buffer]]] = [("groups", [values.slot_group])]
        items = []
        for number, tally in enumerate(self.tallies):
            blobs += [(f"outcome{number}", [tally.outcome]),
                      (f"answer{number}", [tally.answer_label]),
                      (f"judge{number}", [tally.judge_label]),
                      (f"variant{number}", [tally.variant])]
            items.append({
                "variants": tally.variants, "labels": tally.labels,
                "counts": [[g, v, *c.to_list()] for (g, v), c in tally.counts.items()],
                "answers_mark": tally.answers_mark.to_dict() if tally.answers_mark else None,
                "judge_mark": tally.judge_mark.to_dict() if tally.judge_mark else None,
            })
        header = {"key": self.key, "input_mark": mark.to_dict(), "texts": values.texts,
                  "tasks": values.tasks, "outputs": items}
        blobfile.write_blobs(self.path, _MAGIC, header, blobs)
        self._unsaved = False

    def _load(self, size: int) -> tuple[GroupValues, list[GroupTally]] | None:
        try:
            return self._decode(size)
        except (OSError, ValueError, KeyError, TypeError, IndexError, orjson.JSONDecodeError):
            return None

    def _decode(self, size: int) -> tuple[GroupValues, list[GroupTally]] | None:
        mark = FileMark.whole(self.input_path)
        # each array read from the file straight into its place: none held twice
        with blobfile.BlobReader(self.path, _MAGIC) as reader:
            header = reader.header
            if (not status_cache.current(header, self.key, mark)
                    or len(header["outputs"]) != len(self.outputs)):
                return None
            values = GroupValues(self.by, [str(t) for t in header["texts"]],
                                 _ints(reader, "groups", size),
                                 [int(n) for n in header["tasks"]])
            tallies = []
            for number, (item, output) in enumerate(zip(header["outputs"], self.outputs,
                                                        strict=True)):
                tally = GroupTally(size, output.variant)
                tally.outcome = bytearray(reader.take(f"outcome{number}"))
                if len(tally.outcome) != size:
                    raise ValueError("a groups cache of another size")
                tally.answer_label = _ints(reader, f"answer{number}", size)
                tally.judge_label = _ints(reader, f"judge{number}", size)
                tally.variant = _ints(reader, f"variant{number}", size)
                tally.variants = [None if v is None else str(v) for v in item["variants"]]
                tally.set_labels([str(label) for label in item["labels"]])
                tally.counts = {(int(g), int(v)): Counts.from_list(rest)
                                for g, v, *rest in item["counts"]}
                for name in ("answers_mark", "judge_mark"):
                    setattr(tally, name, FileMark.from_dict(item[name]) if item[name] else None)
                tallies.append(tally)
        return values, tallies


def _ints(reader: blobfile.BlobReader, name: str, size: int) -> array[int]:
    values: array[int] = reader.array_of(name, "i")
    if len(values) != size:
        raise ValueError("a groups cache of another size")
    return values
