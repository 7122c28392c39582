"""Read-only integrity check of an output against its input: problems returned, never raised."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..inputs import checked_input, input_index_path, reading, selection
from ..store.idset import IdSubset
from ..store.output import OutputPaths, iter_lines, run_outputs
from ..store.records import missing_batch_fields, missing_fields, view

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


def validate_output(output: Path, input_ids: IdSubset) -> ValidationReport:
    """Check one output file against the ids of its input."""
    paths = OutputPaths.of(output)
    report = ValidationReport(output=str(output))
    first_line: dict[str, int] = {}
    found = input_ids.empty()
    for number, raw, obj in iter_lines(paths.output):
        report.lines += 1
        record = view(obj)
        if record is None:
            snippet = raw[:80].decode("utf-8", "replace").rstrip()
            report.add(Problem(ProblemKind.CORRUPT_LINE,
                               f"not an answer record (id, answer, model, usage): {snippet}",
                               number))
            continue
        rid = record.id
        report.records += 1
        missing = missing_batch_fields(obj) if record.batch else missing_fields(obj)
        if missing:
            report.add(Problem(ProblemKind.MISSING_FIELDS, f"missing {', '.join(missing)}", number,
                               rid))
        seen = first_line.setdefault(rid, number)
        if seen != number:
            report.add(Problem(ProblemKind.DUPLICATE_ID, f"also on line {seen}", number, rid))
        slot = input_ids.find(rid)
        if slot is None:
            report.add(Problem(ProblemKind.UNKNOWN_ID, "not in the input", number, rid))
        else:
            found.add_slot(slot)
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
    for rid in sorted(input_ids.minus(found)):
        report.add(Problem(ProblemKind.MISSING_ID, "in the input, not in the output", None, rid))
    return report
