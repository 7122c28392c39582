"""Export: the whole job as one table, input fields beside answers, for a spreadsheet.

One row per selected input task (per task, variant and model in a run of several models or
variants: ``variant`` and ``run_model`` columns), in input order, with the input record's fields,
then the answer and its accounting, and a ``status`` column: ``ok``, ``failed`` (with the last
error message) or ``missing`` (never answered nor failed). The tasks that are missing are also
written, as their input records, to ``<output>.missing.jsonl``, ready to be fed again.

Memory: the answers of the output files are held keyed by id (one entry per answered task, the
answer text included), and the last error message of each failed id; the input is streamed.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import orjson

from ..config import RunConfig
from ..errors import ConfigError
from ..inputs import (
    FieldKeys,
    InputFormat,
    Selection,
    Task,
    check_input,
    detect_format,
    iter_selected,
    reading,
    selection,
)
from ..store.atomic import atomic_write
from ..store.output import (
    OutputPaths,
    RunOutput,
    companion,
    iter_lines,
    judge_output,
    run_outputs,
    scan,
)
from ..store.records import RecordView, failure_view, record_id, view
from .groups import label_of
from .parquet import ParquetTable, require_pyarrow

# the answer's label and structured answer (JSON text), and the judge's verdict on it
LABEL_COLUMNS: tuple[str, ...] = ("label", "parsed", "judge_label", "judge_text", "judge_model")
ANSWER_COLUMNS: tuple[str, ...] = (
    "answer", "refusal", "filtered", "model", "requested_model", "prompt_tokens",
    "completion_tokens", "total_tokens",
    "cost", "finish_reason", "status", "error", *LABEL_COLUMNS,
)
RUN_MODEL_COLUMN = "run_model"
RUN_VARIANT_COLUMN = "variant"
EXTRA_CELLS = "extra_cells"
# an input field named like an answer column (a task's own "model") is renamed so
INPUT_PREFIX = "input_"
UTF8_BOM = "\ufeff"  # what --excel writes first: Excel then reads the CSV as UTF-8


class ExportFormat(StrEnum):
    """The file format of ``--export``, chosen by the file's suffix."""

    CSV = "csv"
    JSONL = "jsonl"
    PARQUET = "parquet"

    @classmethod
    def of(cls, dest: Path) -> ExportFormat:
        """The format ``dest``'s suffix names, or a ConfigError for any other suffix."""
        suffix = dest.suffix.lower()
        if suffix == ".csv":
            return cls.CSV
        if suffix in (".jsonl", ".json"):
            return cls.JSONL
        if suffix == ".parquet":
            return cls.PARQUET
        raise ConfigError(f"--export {dest}: name the file .csv, .jsonl or "
                          ".parquet (that chooses the format)")


class RowStatus(StrEnum):
    """What became of one input row: the ``status`` column of the export."""

    OK = "ok"
    REFUSED = "refused"  # answered with a refusal (its text in the refusal column): done
    FILTERED = "filtered"  # stopped by a content filter (its verdict in the filtered column): done
    FAILED = "failed"
    MISSING = "missing"


@dataclass
class ExportReport:
    """What an export wrote: the rows by status, and the files."""

    dest: Path
    format: ExportFormat
    missing_file: Path
    rows: int = 0
    counts: dict[RowStatus, int] = field(default_factory=lambda: dict.fromkeys(RowStatus, 0))
    # input records in the missing file (a task missing for several models: once)
    missing_tasks: int = 0

    @property
    def ok(self) -> int:
        """Rows answered."""
        return self.counts[RowStatus.OK]

    @property
    def refused(self) -> int:
        """Rows answered with a refusal."""
        return self.counts[RowStatus.REFUSED]

    @property
    def filtered(self) -> int:
        """Rows stopped by a content filter."""
        return self.counts[RowStatus.FILTERED]

    @property
    def failed(self) -> int:
        """Rows whose task failed."""
        return self.counts[RowStatus.FAILED]

    @property
    def missing(self) -> int:
        """Rows neither answered nor failed (not run yet)."""
        return self.counts[RowStatus.MISSING]


@dataclass(frozen=True)
class _Outcomes:
    """One output's answers (each id's first line) and the last failure of the ids not done;
    the label columns of the ids whose lines have any (the answer's, then its judge's)."""

    answers: dict[str, RecordView]
    errors: dict[str, str]
    labels: dict[str, dict[str, Any]]


def _label_cells(answer: Any, judged: Any) -> dict[str, Any]:
    """The label columns of an answer line and its judge line (either may be None)."""
    parsed = answer.get("parsed") if isinstance(answer, dict) else None
    judged = judged if isinstance(judged, dict) else {}
    text = judged.get("text")
    model = judged.get("judge_model")
    return {"label": label_of(answer), "parsed": None if parsed is None
            else orjson.dumps(parsed).decode(),
            "judge_label": label_of(judged) if judged else None,
            "judge_text": text if isinstance(text, str) else None,
            "judge_model": model if isinstance(model, str) else None}


def _outcomes(output: Path) -> _Outcomes:
    paths = OutputPaths.of(output)
    answers: dict[str, RecordView] = {}
    judged: dict[str, Any] = {}
    for _, _, obj in iter_lines(judge_output(output)):
        task_id = record_id(obj)
        if task_id is not None:
            judged.setdefault(task_id, obj)  # the first verdict on an id stands
    labels: dict[str, dict[str, Any]] = {}
    for _, _, obj in iter_lines(paths.output):
        record = view(obj)
        if record is not None and record.id not in answers:
            # the first stays, as --validate --repair keeps it
            answers[record.id] = record
            cells = _label_cells(obj, judged.get(record.id))
            if any(value is not None for value in cells.values()):
                labels[record.id] = cells
    errors: dict[str, str] = {}
    for _, _, obj in iter_lines(paths.errors):
        failure = failure_view(obj)
        if failure is not None and failure.id not in answers:
            errors[failure.id] = failure.message
    return _Outcomes(answers, errors, labels)


def _settled_ids(output: Path) -> set[str]:
    """The ids answered in ``output`` or failed in its errors file: what is not missing."""
    paths = OutputPaths.of(output)
    settled = scan(paths.output).ids
    settled.update(
        rid for _, _, obj in iter_lines(paths.errors) if (rid := record_id(obj)) is not None)
    return settled


def write_missing(config: RunConfig) -> tuple[Path, int]:
    """Rewrite ``<output>.missing.jsonl`` (atomically) with the selected input records that some
    model's output has neither answered nor failed; returns the file and how many records it holds.

    The end of a run calls it when tasks are left, so that a stopped run always says what is left;
    it holds only ids (one set per model), not answers, and streams the input, which the run has
    checked already.
    """
    input_path, output = config.require_paths()
    keys = reading(config)
    fmt = detect_format(input_path)
    settled = [_settled_ids(out.path) for out in _outputs(config, output)]
    missing_file = companion(output, ".missing.jsonl")
    count = 0
    with atomic_write(missing_file) as missing:
        for raw, task in _selected_rows(input_path, keys, selection(config), fmt):
            if any(task.id not in ids for ids in settled):
                missing.write(orjson.dumps(_feedable(raw, task, fmt, keys),
                                           option=orjson.OPT_APPEND_NEWLINE))
                count += 1
    return missing_file, count


def _selected_rows(path: Path, keys: FieldKeys, chosen: Selection, fmt: InputFormat,
                   ) -> Iterator[tuple[dict[str, Any], Task]]:
    """(input record, task) of each selected row, in input order; the input was checked before."""
    for _, raw, item in iter_selected(path, keys, chosen, fmt):
        if isinstance(item, Task) and raw is not None:
            yield raw, item


def _input_fields(raw: dict[str, Any], fmt: InputFormat) -> dict[str, Any]:
    """A record's columns: a Batch API line gives its custom_id and its body as JSON text."""
    if fmt is InputFormat.BATCH:
        return {"custom_id": raw.get("custom_id"), "body": orjson.dumps(raw.get("body")).decode()}
    # csv.DictReader files the cells of a row longer than the header under None.
    return {(EXTRA_CELLS if name is None else str(name)): value for name, value in raw.items()}


def _feedable(raw: dict[str, Any], task: Task, fmt: InputFormat, keys: FieldKeys) -> dict[str, Any]:
    """The input record as a JSONL task line that reads back as the same task.

    JSONL and Batch API records are written as they were read. A CSV row is all text, so
    its empty cells are dropped and its typed cells (the images list, numbers) come from
    the parsed task: a rerun on the missing file then reads it as JSONL with the same
    --id-key, --prompt-key and --images-key.
    """
    if fmt is not InputFormat.CSV:
        return raw
    named = keys.templated or ()  # a column a template names is kept, empty or not
    record: dict[str, Any] = {name: value for name, value in raw.items()
                              if name is not None and isinstance(value, str)
                              and (value.strip() or name in named)}
    record[keys.id] = task.id
    if task.messages is not None:
        record[keys.messages] = task.messages
    elif task.images:
        record[keys.images] = list(task.images)
    for name in ("temperature", "max_tokens"):
        if getattr(task, name) is not None:
            record[name] = getattr(task, name)
    return record


def _column(name: str) -> str:
    run_columns = (RUN_MODEL_COLUMN, RUN_VARIANT_COLUMN)
    return INPUT_PREFIX + name if name in ANSWER_COLUMNS or name in run_columns else name


def _input_columns(path: Path, keys: FieldKeys, chosen: Selection, fmt: InputFormat) -> list[str]:
    """Every input field name, first seen first: a CSV header must be known before the first row."""
    names: dict[str, None] = {}
    for raw, _ in _selected_rows(path, keys, chosen, fmt):
        names.update(dict.fromkeys(_input_fields(raw, fmt)))
    return [_column(name) for name in names]


def _answer_fields(task_id: str, outcomes: _Outcomes) -> dict[str, Any]:
    record = outcomes.answers.get(task_id)
    if record is not None:
        usage = None if record.no_usage else record.usage  # unknown tokens: empty cells
        status = RowStatus.OK
        if record.refused:
            status = RowStatus.REFUSED
        elif record.filtered:
            status = RowStatus.FILTERED
        return {"answer": record.answer, "refusal": record.refusal, "filtered": record.filter,
                "model": record.model, "requested_model": record.requested_model,
                "prompt_tokens": usage and usage.prompt_tokens,
                "completion_tokens": usage and usage.completion_tokens,
                "total_tokens": usage and usage.total_tokens,
                "cost": record.cost, "finish_reason": record.finish_reason, "status": status.value,
                "error": None, **outcomes.labels.get(task_id, dict.fromkeys(LABEL_COLUMNS))}
    status = RowStatus.FAILED if task_id in outcomes.errors else RowStatus.MISSING
    return {**dict.fromkeys(ANSWER_COLUMNS), "status": status.value,
            "error": outcomes.errors.get(task_id)}


def _cell(value: Any) -> Any:
    """A CSV cell: lists and objects as JSON text, None as empty."""
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return value


class _Writer:
    """Rows to a CSV, JSONL or Parquet file, the same columns in the same order in each."""

    def __init__(self, handle: IO[Any], fmt: ExportFormat, columns: list[str],
                 excel: bool = False) -> None:
        self.handle = handle
        self.columns = columns
        self.csv = csv.writer(handle) if fmt is ExportFormat.CSV else None
        if self.csv is not None:
            if excel:  # Excel reads a CSV as the system's code page unless a BOM says UTF-8
                handle.write(UTF8_BOM)
            self.csv.writerow(columns)
        self.parquet = (ParquetTable(columns, frozenset(ANSWER_COLUMNS) | {RUN_MODEL_COLUMN})
                        if fmt is ExportFormat.PARQUET else None)

    def finish(self) -> None:
        """Write what is held back to the end: the Parquet table."""
        if self.parquet is not None:
            self.parquet.finish(self.handle)

    def write(self, row: dict[str, Any]) -> None:
        """Write one row in the chosen format (Parquet rows are held until ``finish``)."""
        if self.parquet is not None:
            self.parquet.write(row)
        elif self.csv is not None:
            self.csv.writerow([_cell(row.get(name)) for name in self.columns])
        else:
            self.handle.write(orjson.dumps({name: row.get(name) for name in self.columns},
                                           option=orjson.OPT_APPEND_NEWLINE))


def _outputs(config: RunConfig, output: Path) -> tuple[RunOutput, ...]:
    return run_outputs(output, config.variant_names, config.models)


def _refuse_own_files(dest: Path, input_path: Path, output: Path,
                      outputs: tuple[RunOutput, ...]) -> None:
    """Refuse to export over the input or a results file: the one mistake that loses answers."""
    own = [input_path, companion(output, ".missing.jsonl")]
    for out in outputs:
        paths = OutputPaths.of(out.path)
        own += [paths.output, paths.errors]
    target = dest.resolve()
    if any(target == path.resolve() for path in own):
        raise ConfigError(f"--export {dest} would overwrite a file of the "
                          "run; export to another file")


def export(config: RunConfig, dest: Path, excel: bool = False) -> ExportReport:
    """Write the job as one table to ``dest`` (CSV, JSONL or Parquet), the missing tasks beside it.
    ``excel``: a CSV starts with a UTF-8 byte-order mark, for Excel (others ignore it or show it).

    Both files are written atomically. The input is checked first, as a run would: a broken input
    stops the export with the same InputError.
    """
    fmt = ExportFormat.of(dest)
    if fmt is ExportFormat.PARQUET:
        require_pyarrow()  # before the input is read, not after
    input_path, output = config.require_paths()
    runs = _outputs(config, output)
    _refuse_own_files(dest, input_path, output, runs)
    keys = reading(config)
    chosen = selection(config)
    input_format = check_input(input_path, keys, chosen).format
    several = len(config.models) > 1
    varied = bool(config.variant_table)
    outcomes = [_outcomes(out.path) for out in runs]
    columns = _input_columns(input_path, keys, chosen, input_format)
    columns += (([RUN_VARIANT_COLUMN] if varied else []) + ([RUN_MODEL_COLUMN] if several else [])
                + list(ANSWER_COLUMNS))
    report = ExportReport(dest=dest, format=fmt, missing_file=companion(output, ".missing.jsonl"))
    with atomic_write(dest, text=fmt is ExportFormat.CSV) as table, \
            atomic_write(report.missing_file) as missing:
        writer = _Writer(table, fmt, columns, excel=excel)
        for raw, task in _selected_rows(input_path, keys, chosen, input_format):
            fields = {
                _column(name): value for name, value in _input_fields(raw, input_format).items()
            }
            is_missing = False
            for out, outcome in zip(runs, outcomes, strict=True):
                row = {**fields, **_answer_fields(task.id, outcome)}
                if varied:
                    row[RUN_VARIANT_COLUMN] = out.variant
                if several:
                    row[RUN_MODEL_COLUMN] = out.model
                writer.write(row)
                status = RowStatus(row["status"])
                report.counts[status] += 1
                report.rows += 1
                is_missing = is_missing or status is RowStatus.MISSING
            if is_missing:
                missing.write(orjson.dumps(_feedable(raw, task, input_format, keys),
                                           option=orjson.OPT_APPEND_NEWLINE))
                report.missing_tasks += 1
        writer.finish()
    return report
