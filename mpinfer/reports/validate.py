"""Read-only integrity check of an output against its input: problems returned, never raised."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from ..config import RunConfig
from ..inputs import checked_input, input_index_path, reading, selection
from ..store.blocks import LineReader, decode
from ..store.idset import IdSubset
from ..store.output import OutputPaths, run_outputs
from ..store.parts import ONE_A_CORE, Parts, read_in_parts
from ..store.records import (
    JUDGE_MODEL_FIELD,
    RESULT_KEYS,
    TRUNCATED,
    USAGE_KEYS,
    Mismatches,
    RecordView,
    answer_id,
    is_filtered,
    is_refusal,
    missing_batch_fields,
    missing_fields,
    view,
)
from ..store.row_match import EXACT_FIRST, RowSlots, covered_slots, join_marks

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
    path = OutputPaths.of(output).output
    # Every id selected (the common case): the ids are only marked at their rows, and slots are
    # looked up for the few left; an id seen twice is named with its lines by the exact read.
    quick = len(input_ids) == len(input_ids.index)
    checked = read_in_parts(path, 0, lambda reader: _Checker(input_ids, quick).read(reader),
                            parts)
    if quick:
        found = _found_once(input_ids, checked)
        if found is not None:
            return _merge(str(output), input_ids, checked, found)
        checked = read_in_parts(path, 0, lambda reader: _Checker(input_ids).read(reader), parts)
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
    # A quick read's (every id selected): ``seen`` holds only the slots looked up; the input's
    # rows found beside their place are marked here instead (RowSlots.cover), and ``again``
    # says an id was met twice (its lines are then found by the exact read).
    covered: bytes = b""
    again: bool = False


# The order a line is checked in: the order of its problems, and so of each kind's first.
_CHECKS = (ProblemKind.CORRUPT_LINE, ProblemKind.MISSING_FIELDS, ProblemKind.DUPLICATE_ID,
           ProblemKind.UNKNOWN_ID, ProblemKind.EMPTY_ANSWER, ProblemKind.MODEL_MISMATCH,
           ProblemKind.MISSING_ID)


class _Checker:
    """Checks one part of an output's lines (``read``), then gives them as a CheckedPart."""

    def __init__(self, input_ids: IdSubset, quick: bool = False) -> None:
        self.input_ids = input_ids
        self.quick = quick  # every id selected: ids marked at their rows (``_cover_ids``)
        self.again = False
        self.report = ValidationReport(output="")
        self.found = input_ids.empty()
        self.first = array("I", b"" if quick else bytes(4 * len(input_ids.index)))
        self.repeats: list[tuple[int, int, str]] = []
        self.others: list[tuple[int, str]] = []
        self.mismatch = Mismatches()
        # A quick read marks ids from its first (a part reads the input's ids near its place
        # in any case, and a lookup costs more than a mark).
        self.order = RowSlots.over(input_ids.index, 0 if quick else EXACT_FIRST)

    def read(self, reader: LineReader) -> CheckedPart:
        """Check the lines ``reader`` gives, and a torn last line too."""
        # The common line (mpinfer's own form, every field there) is checked here in the loop,
        # its fields read as ``_check`` reads them (tests/test_status_fast.py holds them equal):
        # a call less for each of a million lines. Every other line goes to ``_check``.
        loads, not_json, check, take = orjson.loads, orjson.JSONDecodeError, self._check, (
            self._cover_ids if self.quick else self._take_ids)
        report, add, mismatch = self.report, self.report.add, self.mismatch
        known = mismatch.known  # each pair of models seen without a filter
        number = lines = records = truncated = refusals = filtered_count = 0
        for block in reader.blocks():
            numbers: list[int] = []
            ids: list[bytes] = []
            for line in block:
                number += 1
                try:
                    obj = loads(line)
                except not_json:
                    if not line.strip():
                        continue  # a blank line: numbered, not counted
                    obj = None
                if (obj.__class__ is not dict or "answer" not in obj or "model" not in obj
                        or "custom_id" in obj):
                    task_id = check(number, line, obj)
                    if task_id is not None:
                        numbers.append(number)
                        ids.append(task_id.encode())
                    continue
                get = obj.get
                task_id, usage = get("id"), get("usage")
                if not (task_id.__class__ is str and task_id
                        and (usage.__class__ is dict or (usage is None and "usage" in obj))):
                    task_id = check(number, line, obj)
                    if task_id is not None:
                        numbers.append(number)
                        ids.append(task_id.encode())
                    continue
                lines += 1
                records += 1
                if not (obj.keys() >= RESULT_KEYS
                        and (usage is None or usage.keys() >= USAGE_KEYS)):
                    add(Problem(ProblemKind.MISSING_FIELDS,
                                f"missing {', '.join(missing_fields(obj))}", number, task_id))
                answer, model, requested = obj["answer"], obj["model"], get("requested_model")
                filtered = get("filtered")
                if filtered is not None and not is_filtered(filtered):
                    filtered = None
                if get("finish_reason") == TRUNCATED:
                    truncated += 1
                refusal = get("refusal")
                if refusal is not None and is_refusal(refusal, answer):
                    refusals += 1
                elif filtered is not None:
                    filtered_count += 1
                elif answer.__class__ is not str or not answer.strip():
                    add(Problem(ProblemKind.EMPTY_ANSWER, f"answer is {answer!r}", number,
                                task_id))
                if filtered is None and requested.__class__ is str and model.__class__ is str:
                    pair = (requested, model)
                    wrong = known.get(pair)
                    if wrong is None:
                        wrong = mismatch(requested, model)
                else:
                    wrong = mismatch(requested, model, filtered)
                if wrong:
                    add(Problem(ProblemKind.MODEL_MISMATCH,
                                f"requested {requested!r}, answered by {model!r}", number,
                                task_id))
                numbers.append(number)
                ids.append(task_id.encode())
            take(numbers, ids)
        report.lines += lines
        report.records += records
        report.truncated += truncated
        report.refusals += refusals
        report.filtered += filtered_count
        if reader.torn:
            number += 1
            if (task_id := check(number, reader.rest, decode(reader.rest))) is not None:
                take([number], [task_id.encode()])
        return CheckedPart(number, report, self.found.to_bytes(), self.first, self.repeats,
                           self.others, self.order.covered(), self.again or self.order.again)

    def _check(self, number: int, line: bytes, obj: Any) -> str | None:
        """Check what one line (decoded: ``obj``, None when it is not JSON) shows alone; its id
        when it is an answer record."""
        report = self.report
        report.lines += 1
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

    def _take_ids(self, numbers: list[int], ids: list[bytes]) -> None:
        """Place a block's answer ids (on lines ``numbers``) in the input, found all at once
        beside the input's rows in order (exact: ``RowSlots``)."""
        selected, first, add = self.input_ids.has_slot, self.first, self.found.add_slot
        slots = self.order.slots(ids)
        for number, raw, slot in zip(numbers, ids, slots, strict=True):
            if slot is None or not selected(slot):
                self.others.append((number, raw.decode()))
            elif first[slot]:
                self.repeats.append((number, slot, raw.decode()))
            else:
                first[slot] = number
                add(slot)

    def _cover_ids(self, numbers: list[int], ids: list[bytes]) -> None:
        """Mark a block's answer ids at the input's rows near their place (``RowSlots.cover``);
        look up the slots of the rest (exact: ``find_raws``), the ids not in the input kept with
        their lines. An id met twice sets ``again``."""
        left = self.order.cover(ids)
        if not left:
            return
        if len(left) < len(ids):
            wanted = set(left)
            pairs = [(n, raw) for n, raw in zip(numbers, ids, strict=True) if raw in wanted]
        else:
            pairs = list(zip(numbers, ids, strict=True))
        add = self.found.add_slot
        slots = self.input_ids.index.find_raws([raw for _, raw in pairs])
        for (number, raw), slot in zip(pairs, slots, strict=True):
            if slot is None:
                self.others.append((number, raw.decode()))
            elif not add(slot):
                self.again = True


def _found_once(input_ids: IdSubset, parts: list[CheckedPart]) -> IdSubset | None:
    """The ids a quick read marked at their rows (``CheckedPart.covered``), when no id of the
    input was met twice, in a part or across parts (the slots looked up, ``seen``, included);
    None when one was (or may have been): the exact read then names the lines."""
    if any(part.again for part in parts):
        return None
    covered, twice = join_marks([part.covered for part in parts])
    if twice:
        return None
    looked_up = input_ids.empty()
    for part in parts:
        seen = input_ids.empty()
        seen.load_bytes(part.seen)
        if len(seen.both(looked_up)):
            return None
        looked_up = looked_up.either(seen)
    found = input_ids.empty()
    if covered:
        slots, but = covered_slots(input_ids.index, covered)
        found.add_slots(slots)
        if but:  # every id of the input but ``slots``
            found = input_ids.minus(found)
    return None if len(found.both(looked_up)) else found


def _merge(output: str, input_ids: IdSubset, parts: list[CheckedPart],
           marked: IdSubset | None = None) -> ValidationReport:
    """One report from the parts' checks, in file order: each part's problems at its lines, and
    the ids seen twice, in one part or across two (``marked``: the ids a quick read found at
    their rows, each once and apart from those the parts looked up)."""
    report = ValidationReport(output=output)
    problems: dict[ProblemKind, list[Problem]] = {}
    counts: dict[ProblemKind, int] = {}
    offsets = [0]
    for part in parts:
        offsets.append(offsets[-1] + part.numbered)
    found = marked or input_ids.empty()  # the selected ids of the parts before
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
