"""Read-only integrity check of an output against its input: problems returned, never raised."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..inputs import checked_input, input_index_path, reading, selection
from ..store.blocks import LineReader, decode
from ..store.idset import IdSubset
from ..store.output import OutputPaths, run_outputs
from ..store.parts import ONE_A_CORE, Parts, read_in_parts
from ..store.records import (
    JUDGE_MODEL_FIELD,
    TRUNCATED,
    Mismatches,
    RecordView,
    answer_id,
    is_filtered,
    is_refusal,
    missing_batch_fields,
    missing_fields,
    view,
)
from ..store.row_match import RowSlots

EXAMPLES_KEPT = 5


class ProblemKind(StrEnum):
    """The kinds of problem ``--validate`` counts (its exit code is 1 if there is any)."""

    CORRUPT_LINE = "corrupt_line"
    MISSING_FIELDS = "missing_fields"
    DUPLICATE_ID = "duplicate_id"
    UNKNOWN_ID = "unknown_id"
    MISSING_ID = "missing_id"
    EMPTY_ANSWER = "empty_answer"
    MODEL_MISMATCH = "model_mismatch"


@dataclass(frozen=True)
class Problem:
    """One problem found, with the output line and the task id where they are known."""

    kind: ProblemKind
    message: str
    line: int | None = None
    id: str | None = None


@dataclass
class ValidationReport:
    """Counts of each kind of problem, with the first few examples of each."""

    output: str
    lines: int = 0
    records: int = 0
    # Not problems: a refusal is an answer (for a safety benchmark, the measured one), and a
    # truncated answer is what max_tokens asked for; both are counted so that the user sees them.
    refusals: int = 0
    truncated: int = 0
    filtered: int = 0  # stopped by a content filter (like a refusal, the measured answer)
    counts: dict[ProblemKind, int] = field(default_factory=dict)
    examples: dict[ProblemKind, list[Problem]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not any(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON values (``--validate --json``)."""
        return {"output": self.output, "ok": self.ok, "lines": self.lines,
                "records": self.records, "refusals": self.refusals, "truncated": self.truncated,
                "counts": {kind.value: count for kind, count in self.counts.items()},
                "examples": {kind.value: [{"line": p.line, "id": p.id, "message": p.message}
                                          for p in kept]
                             for kind, kept in self.examples.items()}}

    def add(self, problem: Problem) -> None:
        """Count ``problem``, keeping the first few of each kind as examples."""
        self.counts[problem.kind] = self.counts.get(problem.kind, 0) + 1
        kept = self.examples.setdefault(problem.kind, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append(problem)


def validate(config: RunConfig) -> list[ValidationReport]:
    """One report for each output of the run (one per variant and model)."""
    input_path, output = config.require_paths()
    # the input's id index a run kept beside the output, when the input is unchanged
    index = checked_input(input_path, reading(config), selection(config), input_index_path(output))
    return [validate_output(out.path, index.ids)
            for out in run_outputs(output, config.variant_names, config.models)]


def validate_output(output: Path, input_ids: IdSubset,
                    parts: Parts = ONE_A_CORE) -> ValidationReport:
    """Check one output file against the ids of its input (a big one in ``parts`` over the
    cores, store/parts.py)."""
    checked = read_in_parts(OutputPaths.of(output).output, 0,
                            lambda reader: _Checker(input_ids).read(reader), parts)
    return _merge(str(output), input_ids, checked)


@dataclass(frozen=True)
class CheckedPart:
    """What one part of an output's lines holds, its line numbers counted from the part's start
    (a big output is read in parts, store/parts.py). Ids seen twice are told at the merge: an id
    may be on a line of each of two parts."""

    numbered: int  # lines of any kind, blank ones too: the next part's numbers follow on
    report: ValidationReport  # the problems found on a line alone, and the line counts
    seen: bytes  # the selected ids found, a bitmap over the input's slots
    first: array[int]  # each slot's first line in the part (0: not seen)
    repeats: list[tuple[int, int, str]]  # (line, slot, id) of a selected id seen before
    others: list[tuple[int, str]]  # (line, id) of each id that is not a selected one


# The order a line is checked in: the order of its problems, and so of each kind's first.
_CHECKS = (ProblemKind.CORRUPT_LINE, ProblemKind.MISSING_FIELDS, ProblemKind.DUPLICATE_ID,
           ProblemKind.UNKNOWN_ID, ProblemKind.EMPTY_ANSWER, ProblemKind.MODEL_MISMATCH,
           ProblemKind.MISSING_ID)


class _Checker:
    """Checks one part of an output's lines (``read``), then gives them as a CheckedPart."""

    def __init__(self, input_ids: IdSubset) -> None:
        self.input_ids = input_ids
        self.report = ValidationReport(output="")
        self.found = input_ids.empty()
        self.first = array("I", bytes(4 * len(input_ids.index)))
        self.repeats: list[tuple[int, int, str]] = []
        self.others: list[tuple[int, str]] = []
        self.mismatch = Mismatches()
        self.order = RowSlots.over(input_ids.index)

    def read(self, reader: LineReader) -> CheckedPart:
        """Check the lines ``reader`` gives, and a torn last line too."""
        number = 0
        for block in reader.blocks():
            ids: list[tuple[int, str]] = []
            for line in block:
                number += 1
                if line.strip() and (task_id := self._check(number, line)) is not None:
                    ids.append((number, task_id))
            self._take_ids(ids)
        if reader.torn:
            number += 1
            if (task_id := self._check(number, reader.rest)) is not None:
                self._take_ids([(number, task_id)])
        return CheckedPart(number, self.report, self.found.to_bytes(), self.first, self.repeats,
                           self.others)

    def _check(self, number: int, line: bytes) -> str | None:
        """Check what one line shows alone; its id when it is an answer record."""
        report = self.report
        report.lines += 1
        obj = decode(line)
        task_id = answer_id(obj)
        if task_id is None:
            snippet = line[:80].decode("utf-8", "replace").rstrip()
            report.add(Problem(ProblemKind.CORRUPT_LINE,
                               f"not an answer record (id, answer, model, usage): {snippet}",
                               number))
            return None
        report.records += 1
        if "custom_id" in obj or (JUDGE_MODEL_FIELD in obj and "answer" not in obj):
            record = view(obj)
            assert record is not None  # an answer (answer_id)
            self._check_view(number, obj, record)
            return task_id
        missing = missing_fields(obj)
        if missing:
            report.add(Problem(ProblemKind.MISSING_FIELDS, f"missing {', '.join(missing)}",
                               number, task_id))
        # A line of mpinfer's own form, its fields read as records.view reads them, without a
        # RecordView for each of a million lines (tests/test_status_fast.py holds them equal).
        get = obj.get
        answer, model, requested = get("answer"), get("model"), get("requested_model")
        filtered = get("filtered")
        if filtered is not None and not is_filtered(filtered):
            filtered = None
        if get("finish_reason") == TRUNCATED:
            report.truncated += 1
        refusal = get("refusal")
        if refusal is not None and is_refusal(refusal, answer):
            report.refusals += 1
        elif filtered is not None:
            report.filtered += 1
        elif not isinstance(answer, str) or not answer.strip():
            report.add(Problem(ProblemKind.EMPTY_ANSWER, f"answer is {answer!r}", number,
                               task_id))
        if self.mismatch(requested, model, filtered):
            report.add(Problem(ProblemKind.MODEL_MISMATCH,
                               f"requested {requested!r}, answered by {model!r}", number,
                               task_id))
        return task_id

    def _check_view(self, number: int, obj: dict[str, Any], record: RecordView) -> None:
        """Check an answer line of another form (a Batch API line, a judge's) by its view."""
        report, rid = self.report, record.id
        missing = missing_batch_fields(obj) if record.batch else missing_fields(obj)
        if missing:
            report.add(Problem(ProblemKind.MISSING_FIELDS, f"missing {', '.join(missing)}", number,
                               rid))
        report.truncated += record.truncated
        if record.refused:
            report.refusals += 1
        elif record.filtered:
            report.filtered += 1
        elif not record.embedding and (not isinstance(record.answer, str)
                                       or not record.answer.strip()):
            report.add(Problem(ProblemKind.EMPTY_ANSWER, f"answer is {record.answer!r}", number,
                               rid))
        if record.mismatch:
            report.add(
                Problem(ProblemKind.MODEL_MISMATCH,
                        f"requested {record.requested_model!r}, answered by {record.model!r}",
                        number, rid))

    def _take_ids(self, ids: list[tuple[int, str]]) -> None:
        """Place a block's answer ids in the input, found all at once beside the input's rows in
        order (exact: ``RowSlots``)."""
        selected, first, add = self.input_ids.has_slot, self.first, self.found.add_slot
        slots = self.order.slots([task_id.encode() for _, task_id in ids])
        for (number, task_id), slot in zip(ids, slots, strict=True):
            if slot is None or not selected(slot):
                self.others.append((number, task_id))
            elif first[slot]:
                self.repeats.append((number, slot, task_id))
            else:
                first[slot] = number
                add(slot)


def _merge(output: str, input_ids: IdSubset, parts: list[CheckedPart]) -> ValidationReport:
    """One report from the parts' checks, in file order: each part's problems at its lines, and
    the ids seen twice, in one part or across two."""
    report = ValidationReport(output=output)
    problems: dict[ProblemKind, list[Problem]] = {}
    counts: dict[ProblemKind, int] = {}
    offsets = [0]
    for part in parts:
        offsets.append(offsets[-1] + part.numbered)
    found = input_ids.empty()  # the selected ids of the parts before
    first_other: dict[str, int] = {}  # an id not selected -> its first line
    for part, offset in zip(parts, offsets, strict=False):
        mine = part.report
        report.lines += mine.lines
        report.records += mine.records
        report.refusals += mine.refusals
        report.truncated += mine.truncated
        report.filtered += mine.filtered
        for kind, count in mine.counts.items():
            counts[kind] = counts.get(kind, 0) + count
            problems.setdefault(kind, []).extend(
                replace(p, line=None if p.line is None else p.line + offset)
                for p in mine.examples[kind])
        seen = input_ids.empty()
        seen.load_bytes(part.seen)
        again = seen.both(found)  # seen in a part before: their first line is there
        events: list[tuple[int, str, int]] = []  # (line, id, first line) of each id seen again
        for slot in again.slots() if len(again) else ():
            events.append((part.first[slot] + offset, input_ids.index.id_at(slot),
                           _first_line(parts, offsets, slot)))
        for number, slot, task_id in part.repeats:
            first = (_first_line(parts, offsets, slot) if again.has_slot(slot)
                     else part.first[slot] + offset)
            events.append((number + offset, task_id, first))
        for number, task_id in part.others:
            first = first_other.setdefault(task_id, number + offset)
            if first != number + offset:
                events.append((number + offset, task_id, first))
            _add(counts, problems, Problem(ProblemKind.UNKNOWN_ID, "not in the input",
                                           number + offset, task_id))
        for number, task_id, first in sorted(events):
            _add(counts, problems, Problem(ProblemKind.DUPLICATE_ID, f"also on line {first}",
                                           number, task_id))
        found = found.either(seen)
    # in the order one read meets them: by the line of each kind's first, then as a line is checked
    for kind in sorted(counts, key=lambda k: (problems[k][0].line or 0, _CHECKS.index(k))):
        report.counts[kind] = counts[kind]
        report.examples[kind] = problems[kind][:EXAMPLES_KEPT]
    for rid in sorted(input_ids.minus(found)):
        report.add(Problem(ProblemKind.MISSING_ID, "in the input, not in the output", None, rid))
    return report


def _add(counts: dict[ProblemKind, int], problems: dict[ProblemKind, list[Problem]],
         problem: Problem) -> None:
    counts[problem.kind] = counts.get(problem.kind, 0) + 1
    kept = problems.setdefault(problem.kind, [])
    if len(kept) < EXAMPLES_KEPT:
        kept.append(problem)


def _first_line(parts: list[CheckedPart], offsets: list[int], slot: int) -> int:
    """The first line of the output that holds the id in ``slot``."""
    return next(part.first[slot] + offset for part, offset in zip(parts, offsets, strict=False)
                if part.first[slot])
