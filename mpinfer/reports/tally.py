"""What --status counts in an output and its errors file, kept so a later read adds only the new.

An ``OutputTally`` reads its files from where it stopped; ``FileMark`` says where that was
and how to tell that the file there is still the one read (same device and inode, not
shorter, the same bytes at its head and just before the mark). A file that is not (rewritten
by --validate --repair, replaced by a copy, cut short) is read again whole, so the tally is
always what a fresh full read would give.

A big output is read in parts over the cores (store/parts.py), each counted by a ``_Counter``
into a ``TallyPart`` that the tally adds up in file order: the same counts as one read.
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass, field
from functools import reduce
from itertools import chain
from operator import add, itemgetter
from pathlib import Path
from typing import Any

import orjson

from ..store.blocks import LineReader, decode
from ..store.done_index import kept_done
from ..store.idset import IdSubset
from ..store.marks import FileMark as FileMark  # re-exported: groups and by_group read it here
from ..store.parts import ONE_A_CORE, Parts, read_in_parts
from ..store.records import (
    JUDGE_MODEL_FIELD,
    TRUNCATED,
    Mismatches,
    RecordView,
    answer_id,
    failure_view,
    is_filtered,
    is_refusal,
    number,
    view,
)
from ..store.row_match import EXACT_FIRST, RowSlots, covered_slots, join_marks

RECENT_RECORDS = 500
# a part's latencies are sorted in runs of about this many (a sort holds them as Python floats),
# and its costs kept in arrays of as many: each made whole, never one grown to millions
RUN = 1 << 18
# runs shorter than RUN (a refresh's few lines) a tally keeps before it merges them into one:
# percentiles are found by bisection in every run, at a cost that grows as the square of their count
MANY_RUNS = 16
# the fields of the usual answer counted in the loop (a line missing any is counted otherwise)
_USUAL = itemgetter("id", "usage", "model", "requested_model", "finish_reason", "latency_s",
                    "processed_at", "cost")
_TOKENS = itemgetter("prompt_tokens", "completion_tokens")


__all__ = ["FileMark", "LineReader", "OutputTally", "decode_line"]  # groups reads them here


def decode_line(raw: bytes) -> Any:
    """A line decoded, or None when it is not JSON."""
    return decode(raw)


@dataclass(frozen=True)
class TallyPart:
    """What one part of an output's lines counts (a big output is read in parts over the cores,
    store/parts.py): added to a tally in file order. The sums of floats come as the values, so
    that adding them up in order gives, to the last bit, what one read would."""

    done: bytes  # a bitmap over the input's slots (IdSubset.to_bytes)
    covered: bytes  # the input's rows found done beside it in order (RowSlots.cover), no slot yet
    unknown: set[str]
    bad: int
    prompt: int
    completion: int
    unpriced: int
    unpriced_models: set[str]
    mismatches: int
    refusals: int
    truncated: int
    filtered: int
    no_usage: int
    costs: list[array[float]]  # in file order
    # in runs of about RUN, each in order of size (only their percentiles are asked): a run
    # pickled and taken at a time, never all of a big part's at once
    latencies: list[array[float]]
    waits: array[float]
    times: array[float]  # processed_at, the last RECENT_RECORDS of them
    last: float | None
    end: int  # where the part's whole lines end
    torn: bool
    mark: FileMark | None
    cost: float | None = None  # the first part's: the tally's cost, its own added (no costs)


class _Counter:
    """Counts one part of an output's lines (``read``), then gives them as a TallyPart."""

    def __init__(self, within: IdSubset, exact_first: int = EXACT_FIRST,
                 match: bool = True, cost_from: float | None = None) -> None:
        self.within = within
        # the first part adds the costs up as it reads, from the tally's cost (the sum one read
        # makes): no array of them kept; every other part keeps them, to be added in order
        self.cost_from = cost_from
        self.done = within.empty()
        self.unknown: set[str] = set()
        self.unpriced_models: set[str] = set()
        self.bad = self.prompt = self.completion = self.unpriced = self.mismatches = 0
        self.refusals = self.truncated = self.filtered = self.no_usage = 0
        self.costs, self.latencies, self.waits = array("d"), array("d"), array("d")
        self.full_costs: list[array[float]] = []  # costs of RUN or more each, in file order
        self.runs: list[array[float]] = []  # latencies of RUN or more each, sorted
        self.times: deque[float] = deque(maxlen=RECENT_RECORDS)
        self.last: float | None = None
        self.mismatch = Mismatches()
        # None: the ids are not looked up (the output's done index holds them)
        self.order = RowSlots.over(within.index, exact_first) if match else None

    def read(self, reader: LineReader) -> TallyPart:
        """Count the lines ``reader`` gives."""
        # The usual answer (mpinfer's own form, every field of its usual type, no filter,
        # refusal or wait) is counted here in the loop, its fields taken in one call and its
        # sums kept in locals: no call, no attribute for each of a million lines. Any other
        # line goes to ``_count_other`` (tests/test_status_fast.py holds the two to the same
        # counts as a line-by-line read). The float values go to the same arrays as the other
        # lines', in file order.
        loads, other = orjson.loads, self._count_other
        fields, tokens = _USUAL, _TOKENS
        add_cost, add_latency = self.costs.append, self.latencies.append
        add_time = self.times.append
        known, mismatch = self.mismatch.known, self.mismatch
        prompt = completion = mismatches = truncated = 0
        top, timed = 0.0, False
        for block in reader.blocks():
            ids: list[str] = []
            for line in block:
                try:
                    obj = loads(line)
                except ValueError:  # not JSON
                    self.bad += bool(line.strip())
                    continue
                try:
                    task_id, usage, model, requested, finish, latency, at, cost = fields(obj)
                    used, made = tokens(usage)
                except (KeyError, TypeError):  # not the usual answer
                    if (task_id := other(obj)) is not None:
                        ids.append(task_id)
                    continue
                if (task_id.__class__ is not str or not task_id or used.__class__ is not int
                        or made.__class__ is not int or cost.__class__ is not float
                        or latency.__class__ is not float or at.__class__ is not float
                        or model.__class__ is not str or requested.__class__ is not str
                        or "answer" not in obj or "custom_id" in obj or "filtered" in obj
                        or "refusal" in obj or "waited_s" in obj):
                    if (task_id := other(obj)) is not None:
                        ids.append(task_id)
                    continue
                ids.append(task_id)
                prompt += used
                completion += made
                add_cost(cost)
                add_latency(latency)
                add_time(at)
                if at > top:
                    top = at
                timed = True
                if finish == TRUNCATED:
                    truncated += 1
                wrong = known.get((requested, model))
                if wrong is None:
                    wrong = mismatch(requested, model)
                mismatches += wrong
            if self.order is not None:
                self._take_ids(list(map(str.encode, ids)))
            if self.cost_from is not None:
                self.cost_from = _add_up(self.cost_from, self.costs)
                del self.costs[:]
            elif len(self.costs) >= RUN:
                self.full_costs.append(self.costs)
                self.costs = array("d")
                add_cost = self.costs.append
            if len(self.latencies) >= RUN:
                # sorted here, each part on its core, in runs: the percentiles are then found by
                # bisection, and no sort holds more than a run's as Python floats (32 bytes each)
                self.runs.append(array("d", sorted(self.latencies)))
                self.latencies = array("d")
                add_latency = self.latencies.append
        self.prompt += prompt
        self.completion += completion
        self.mismatches += mismatches
        self.truncated += truncated
        if timed:  # the largest time, as ``count_own`` takes it line by line
            self.last = max(self.last or 0.0, top)
        if self.latencies:
            self.runs.append(array("d", sorted(self.latencies)))
        if self.costs:
            self.full_costs.append(self.costs)
        return TallyPart(
            self.done.to_bytes(), self.order.covered() if self.order is not None else b"",
            self.unknown, self.bad, self.prompt,
            self.completion, self.unpriced, self.unpriced_models, self.mismatches, self.refusals,
            self.truncated, self.filtered, self.no_usage, self.full_costs, self.runs, self.waits,
            array("d", self.times), self.last, reader.end, reader.torn, reader.mark,
            self.cost_from)

    def _count_other(self, obj: Any) -> str | None:
        """Count a line that is not the usual answer: its id when it is an answer."""
        task_id = answer_id(obj)
        if task_id is None:
            self.bad += 1
        elif "custom_id" in obj or (JUDGE_MODEL_FIELD in obj and "answer" not in obj):
            record = view(obj)
            assert record is not None  # an answer (answer_id)
            self.count_view(record)
        else:
            self.count_own(obj)
        return task_id

    def _take_ids(self, ids: list[bytes]) -> None:
        """Count the ids of one block's answers: those equal to the input's rows near their
        place marked there (their slots found once, for all parts), the rest looked up all at
        once (exact: ``find_raws``)."""
        assert self.order is not None
        _mark_found(self.order.cover(ids), self.within, self.done, self.unknown)

    def count_own(self, obj: dict[str, Any]) -> None:
        """Count an answer line in mpinfer's own form from its decoded fields, read as
        ``records.view`` reads them (without building a RecordView for each of a million lines;
        tests/test_status_fast.py holds the two to the same counts)."""
        get = obj.get
        usage, model, requested = get("usage"), get("model"), get("requested_model")
        filtered = get("filtered")
        if filtered is not None and not is_filtered(filtered):
            filtered = None
        if usage is None:
            self.no_usage += 1
        else:
            self.prompt += int(usage.get("prompt_tokens") or 0)
            self.completion += int(usage.get("completion_tokens") or 0)
            cost = get("cost")
            if cost.__class__ is not float:
                cost = number(cost)
            if cost is None:
                self.unpriced += 1
                self.unpriced_models.add(model or requested or "?")
            else:
                self.costs.append(cost)
        self.mismatches += self.mismatch(requested, model, filtered)
        refusal = get("refusal")
        if refusal is not None and is_refusal(refusal, get("answer")):
            self.refusals += 1
        if filtered is not None:
            self.filtered += 1
        if get("finish_reason") == TRUNCATED:
            self.truncated += 1
        latency, waited, at = get("latency_s"), get("waited_s"), get("processed_at")
        if latency is not None and (latency.__class__ is float
                                    or (latency := number(latency)) is not None):
            self.latencies.append(latency)
        if waited is not None and (waited.__class__ is float
                                   or (waited := number(waited)) is not None):
            self.waits.append(waited)
        if at is not None and (at.__class__ is float or (at := number(at)) is not None):
            self.times.append(at)
            self.last = max(self.last or 0.0, at)

    def count_view(self, record: RecordView) -> None:
        """Count an answer line of another form (a Batch API line, a judge's) from its view."""
        self.prompt += record.usage.prompt_tokens
        self.completion += record.usage.completion_tokens
        if record.no_usage:
            self.no_usage += 1
        elif record.cost is None:
            self.unpriced += 1
            self.unpriced_models.add(record.model or record.requested_model or "?")
        else:
            self.costs.append(record.cost)
        self.mismatches += record.mismatch
        self.refusals += record.refused
        self.filtered += record.filtered
        self.truncated += record.truncated
        if record.latency_s is not None:
            self.latencies.append(record.latency_s)
        if record.waited_s is not None:
            self.waits.append(record.waited_s)
        if record.processed_at is not None:
            self.times.append(record.processed_at)
            self.last = max(self.last or 0.0, record.processed_at)


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
    # on the wire, in runs (only their percentiles are asked): each part's sorted as it was read,
    # taken as they are (ten million of them are never copied into one array)
    latencies: list[array[float]] = field(default_factory=list)
    in_order: bool = True  # each run in order of size (not so as the status cache keeps them)
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

    def refresh(self, output: Path, errors: Path, parts: Parts = ONE_A_CORE,
                kept: dict[str, Any] | None = None) -> int:
        """Read what was appended to both files since the last refresh; the bytes read (a big
        output in ``parts`` over the cores). ``kept``: the input index's key, to take the ids
        done from the output's done index when it is current (``_read_output``)."""
        start = self.output_mark.resume_at(output) if self.output_mark else 0
        errors_start = self.errors_mark.resume_at(errors) if self.errors_mark else 0
        if start is None or errors_start is None:
            fresh = OutputTally.empty(self.within)
            self.__dict__.update(fresh.__dict__)
            self.restarted = True
            start = errors_start = 0
        else:
            self.restarted = False
        read = (self._read_output(output, start, parts, kept)
                + self._read_errors(errors, errors_start))
        return read

    def _read_output(self, path: Path, start: int, parts: Parts,
                     kept: dict[str, Any] | None = None) -> int:
        # An output read whole in parts marks ids from its first line: a part reads the input's
        # ids near its place in any case, and with every row marked the done set is the whole
        # input, no row read again (a short read looks its first ids up instead).
        try:
            big = start == 0 and path.stat().st_size >= 2 * parts.least
        except OSError:
            big = False
        exact_first = 0 if big else EXACT_FIRST
        # A whole read of an output whose done index a run (or a rerun's scan) kept current
        # takes the ids done from it, as the next rerun will (store/done_index.py: each found
        # equal to the input's), and reads the lines for the other counts only; the ids of lines
        # appended since are looked up here.
        known = kept_done(path, self.within.index, kept) if start == 0 else None
        match = known is None
        counted = read_in_parts(
            path, start, lambda reader: _Counter(
                self.within, exact_first, match,
                self.cost if reader.end == start else None).read(reader),
            parts)
        end = counted[-1].end
        if known is not None and not known.holds(path, counted[-1].mark):
            return self._read_output(path, start, parts)  # changed meanwhile: read its ids too
        marks = [part.covered for part in counted]
        counted.reverse()
        while counted:  # each part let go once added: on ten million lines, arrays of millions
            self.add(counted.pop())
        if known is not None:
            self.done = self.done.either(known.done.both(self.within))
            self.unknown |= known.unknown
            if end > known.mark.offset:
                ids = [task_id.encode() for line in LineReader(path, known.mark.offset, end).lines()
                       if (task_id := answer_id(decode(line))) is not None]
                _mark_found(ids, self.within, self.done, self.unknown)
        covered = join_marks(marks)[0]
        del marks[:]
        if covered:
            slots, but = covered_slots(self.within.index, covered)
            found = self.within.empty()
            found.add_slots(slots)
            if but:  # every id of the input but ``slots``: those not found otherwise are not done
                self.done = self.within.minus(found.minus(self.done))
            else:
                self.done = self.done.either(found.both(self.within))
        return end - start

    def add(self, part: TallyPart) -> None:
        """Take the counts of the next part of the output (``TallyPart``), its mark if it ends
        the file. The part is used up: its costs and runs of latencies let go as they are taken
        (on ten million lines, arrays of millions)."""
        if part.done.count(0) != len(part.done):
            mine, theirs = self.done.to_bytes(), part.done
            self.done.load_bytes((int.from_bytes(mine, "little") | int.from_bytes(theirs, "little"))
                                 .to_bytes(len(mine), "little"))
        self.unknown |= part.unknown
        self.unpriced_models |= part.unpriced_models
        for name in ("bad", "prompt", "completion", "unpriced", "mismatches", "refusals",
                     "truncated", "filtered", "no_usage"):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        if part.cost is not None:
            self.cost = part.cost
        costs = part.costs
        costs.reverse()
        while costs:
            self.cost = _add_up(self.cost, costs.pop())
        self.waited = _add_up(self.waited, part.waits)
        self.waits += len(part.waits)
        self.latencies += part.latencies
        part.latencies.clear()
        small = [run for run in self.latencies if len(run) < RUN]
        if len(small) > MANY_RUNS:  # --watch adds a run at every redraw: a few of them kept
            merged = array("d", chain.from_iterable(small))
            if self.in_order:
                merged = array("d", sorted(merged))
            self.latencies = [run for run in self.latencies if len(run) >= RUN] + [merged]
        self.recent.extend(part.times)
        if part.last is not None:
            self.last = max(self.last or 0.0, part.last)
        self.output_mark, self.torn = part.mark, part.torn

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

    def latency_count(self) -> int:
        """How many latencies there are."""
        return sum(map(len, self.latencies))

    def latency_runs(self) -> list[array[float]] | None:
        """The latencies as runs each in order of size (a run of each part read, or a few for a
        big part); None when their order is not known."""
        return self.latencies if self.in_order else None

    def failures_by_type(self) -> dict[str, int]:
        """The last failure of each id that is still not done: what a rerun will retry, by type."""
        by_type: dict[str, int] = {}
        for slot, error_type in self.failures.items():
            if not self.done.has_slot(slot):
                by_type[error_type] = by_type.get(error_type, 0) + 1
        return dict(sorted(by_type.items()))



def _mark_found(ids: list[bytes], within: IdSubset, done: IdSubset, unknown: set[str]) -> None:
    """Look ``ids`` up exactly (``find_raws``): those of ``within`` marked in ``done``, those not
    of the input added to ``unknown``."""
    selected, add_slot = within.has_slot, done.add_slot
    for raw, slot in zip(ids, within.index.find_raws(ids), strict=True):
        if slot is None:
            unknown.add(raw.decode())
        elif selected(slot):
            add_slot(slot)


def _add_up(total: float, values: array[float]) -> float:
    """``total`` plus each value in turn, as one read adds them (not ``sum``, which compensates
    from Python 3.12: parts added up would differ from one read in the last bits); folded in C."""
    return reduce(add, values, total)
