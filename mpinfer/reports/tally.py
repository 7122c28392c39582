"""What --status counts in an output and its errors file, kept so a later read adds only the new.

An ``OutputTally`` reads its files from where it stopped; ``FileMark`` says where that was
and how to tell that the file there is still the one read (same device and inode, not
shorter, the same bytes at its head and just before the mark). A file that is not (rewritten
by --validate --repair, replaced by a copy, cut short) is read again whole, so the tally is
always what a fresh full read would give.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import OutputError
from ..store.idset import IdSubset
from ..store.marks import FileMark as FileMark  # re-exported: groups and by_group read it here
from ..store.records import failure_view, view

RECENT_RECORDS = 500


class LineReader:
    """The whole lines of a file from an offset, then its mark, taken from the same open file: a
    file put in its place meanwhile cannot lend its identity to counts read from the old one."""

    def __init__(self, path: Path, start: int) -> None:
        self.path = path
        self.end = start
        self.torn = False  # a last line without its newline: being written, or torn by a crash
        self.mark: FileMark | None = None

    def lines(self) -> Iterator[bytes]:
        """The whole lines after ``end``; a torn last line is left to be read again next time."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        with handle:
            handle.seek(self.end)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    self.torn = bool(raw.strip())  # not consumed: read again next time
                    break
                self.end += len(raw)
                yield raw
            self.mark = FileMark.of_fd(handle.fileno(), self.end)


def decode_line(raw: bytes) -> Any:
    """A line decoded, or None when it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


@dataclass
class OutputTally:
    """The counts of one output (one model) over the selected ids ``within``."""

    within: IdSubset
    done: IdSubset
    unknown: set[str] = field(default_factory=set)
    bad: int = 0
    prompt: int = 0
    completion: int = 0
    unpriced: int = 0
    unpriced_models: set[str] = field(default_factory=set)  # the models those answers name
    mismatches: int = 0
    refusals: int = 0
    truncated: int = 0
    filtered: int = 0  # stopped by a content filter: done, like a refusal
    no_usage: int = 0  # answers that came without usage: their cost unknown
    cost: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))  # on the wire
    waited: float = 0.0  # off the wire before leaving, summed over ``waits`` answers
    waits: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_RECORDS))
    last: float | None = None
    failures: dict[int, str] = field(default_factory=dict)  # slot -> type of its last failure
    output_mark: FileMark | None = None
    errors_mark: FileMark | None = None
    torn: bool = False  # the output ends in a line without its newline (counted bad, not consumed)
    restarted: bool = False  # the last refresh found a file changed and counted everything again

    @classmethod
    def empty(cls, within: IdSubset) -> OutputTally:
        """A tally of nothing read yet, over the ids ``within``."""
        return cls(within=within, done=within.empty())

    def refresh(self, output: Path, errors: Path) -> int:
        """Read what was appended to both files since the last refresh; the bytes read."""
        start = self.output_mark.resume_at(output) if self.output_mark else 0
        errors_start = self.errors_mark.resume_at(errors) if self.errors_mark else 0
        if start is None or errors_start is None:
            fresh = OutputTally.empty(self.within)
            self.__dict__.update(fresh.__dict__)
            self.restarted = True
            start = errors_start = 0
        else:
            self.restarted = False
        read = self._read_output(output, start) + self._read_errors(errors, errors_start)
        return read

    def _read_output(self, path: Path, start: int) -> int:
        reader = LineReader(path, start)
        for raw in reader.lines():
            if not raw.strip():
                continue
            record = view(decode_line(raw))
            if record is None:
                self.bad += 1
                continue
            slot = self.within.index.find(record.id)
            if slot is None:
                self.unknown.add(record.id)
            elif self.within.has_slot(slot):
                self.done.add_slot(slot)
            self.prompt += record.usage.prompt_tokens
            self.completion += record.usage.completion_tokens
            if record.no_usage:
                self.no_usage += 1
            elif record.cost is None:
                self.unpriced += 1
                self.unpriced_models.add(record.model or record.requested_model or "?")
            else:
                self.cost += record.cost
            if record.mismatch:
                self.mismatches += 1
            self.refusals += record.refused
            self.filtered += record.filtered
            self.truncated += record.truncated
            if record.latency_s is not None:
                self.latencies.append(record.latency_s)
            if record.waited_s is not None:
                self.waited += record.waited_s
                self.waits += 1
            if record.processed_at is not None:
                self.recent.append(record.processed_at)
                self.last = max(self.last or 0.0, record.processed_at)
        self.output_mark, self.torn = reader.mark, reader.torn
        return reader.end - start

    def _read_errors(self, path: Path, start: int) -> int:
        reader = LineReader(path, start)
        for raw in reader.lines():
            obj = decode_line(raw) if raw.strip() else None
            failure = failure_view(obj)
            if failure is not None and (slot := self.within.find(failure.id)) is not None:
                self.failures[slot] = failure.error_type
            if failure is not None and failure.paid is not None:  # billed though it failed
                self.prompt += failure.paid.usage.prompt_tokens
                self.completion += failure.paid.usage.completion_tokens
                self.cost += failure.paid.cost or 0.0
        self.errors_mark = reader.mark
        return reader.end - start

    def failures_by_type(self) -> dict[str, int]:
        """The last failure of each id that is still not done: what a rerun will retry, by type."""
        by_type: dict[str, int] = {}
        for slot, error_type in self.failures.items():
            if not self.done.has_slot(slot):
                by_type[error_type] = by_type.get(error_type, 0) + 1
        return dict(sorted(by_type.items()))
