"""The input check, and what a run's options select: all a run knows of its input before spending.

The input is read twice and never held: ``check_input`` reads every line before any
API call, so bad input fails fast with file and line and costs nothing, and keeps only
an index of the ids (store/idset.py: 16 bytes an id); ``readers.iter_tasks`` then
streams the tasks that are not done yet.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError, InputError
from ..store.idset import HashFn, IdIndex, IdSubset, Resolver
from ..store.output import OutputPaths, iter_lines, run_outputs, scan
from ..store.parts import Parts
from ..store.records import is_answer, record_id
from .blocks import MAX_PROBLEMS_SHOWN, Block, take_rows
from .check_parts import INPUT_PARTS, check_jsonl
from .locate import IdReader, JsonIdReader, line_numbers
from .parquet import ParquetIdReader
from .readers import detect_format, iter_selected, placed_rows
from .tasks import FieldKeys, InputFormat, InputIndex, Selection, Task, parse_batch_task, parse_task
from .template import prompt_forms, template_fields

MODELS_NAMED = 3  # in the name of a run of a Batch file whose bodies name several models
MAX_DUPLICATES_SHOWN = 5


def check_input(path: Path, keys: FieldKeys = FieldKeys(), selection: Selection = Selection(),
                hash_fn: HashFn | None = None, parts: Parts = INPUT_PARTS) -> InputIndex:
    """Read every row and check it; the selected ids, or one InputError listing the first problems.

    Every row is checked, selected or not: a broken file is broken, and a trial run with --limit
    should say so before the real run does. The ids are kept in an IdIndex (16 bytes each, whatever
    their length); ``hash_fn`` is its hash, a parameter so tests can force collisions. A big
    JSONL input of plain rows is read in ``parts`` over the cores (check_parts.py), with the same
    findings.
    """
    fmt = detect_format(path)
    if fmt is InputFormat.BATCH and keys.templated is not None:
        raise ConfigError(f"{path} is a Batch API file, whose bodies are sent as they are: "
                          "--template, --system-template and --variants do not apply")
    by_row = _ids_by_row(keys, fmt)
    index = IdIndex(id_resolver(path, keys, fmt), hash_fn)
    if fmt in _BY_BLOCK:
        taken, checksum = check_jsonl(path, keys, fmt, index, by_row, parts)
    else:
        taken, checksum = take_rows(_row_blocks(path, keys, fmt), index, by_row), None
    problems = taken.problems
    if problems:
        more = " (and maybe more: stopped looking)" if len(problems) >= MAX_PROBLEMS_SHOWN else ""
        if len(problems) == 1:
            raise problems[0]
        listing = "\n".join(f"  {p}" for p in problems)
        raise InputError(f"{len(problems)} bad lines{more}:\n{listing}", str(path))
    duplicates = index.freeze()
    if duplicates:
        raise _duplicates_error(path, duplicates)
    if not len(index):
        raise InputError("no tasks in the input", str(path))
    ids = selected_ids(path, keys, selection, fmt, index)
    return InputIndex(path=path, ids=ids, total=len(ids), format=fmt,
                      body_models=taken.body_models, checksum=checksum)


_BY_BLOCK = (InputFormat.JSONL, InputFormat.BATCH)  # read by blocks.py; the rest row by row


def _row_blocks(path: Path, keys: FieldKeys, fmt: InputFormat) -> Iterator[Block]:
    """The rows of a CSV, Parquet or JSON input, a block each: read no further than the check
    looks (it stops at the tenth bad row)."""
    for _, offset, _, item in placed_rows(path, keys, fmt):
        yield Block(rows=[(offset, item)])


def selected_ids(path: Path, keys: FieldKeys, selection: Selection, fmt: InputFormat,
                 index: IdIndex) -> IdSubset:
    """The ids of a checked input that ``selection`` admits (all of them when it narrows nothing:
    no read)."""
    if not selection.narrows():
        return IdSubset(index, everything=True)
    ids = IdSubset(index)
    for _, _, item in iter_selected(path, keys, selection, fmt):
        slot = index.find(item.id, member=True) if isinstance(item, Task) else None
        if slot is not None:
            ids.add_slot(slot)
    return ids


def settle_models(config: RunConfig, index: InputIndex) -> RunConfig:
    """The run's model, for a Batch file run without --model: the one its bodies name.

    Its bodies go as they are, so the log name, the summary's per-model counts, the manifest,
    the rate limits and the cost are those of that model, not of the --model default no task
    asked for. Bodies that name several models make a run named by them
    (``gpt-4o+gpt-4o-mini``) into one output, each body still sent, priced and checked as its
    own model; they then share each key's limits.
    """
    if index.format is not InputFormat.BATCH or config.model_named or not index.body_models:
        return config
    names = index.body_models
    label = "+".join(names[:MODELS_NAMED]) + (f"+{len(names) - MODELS_NAMED}-more"
                                              if len(names) > MODELS_NAMED else "")
    return dataclasses.replace(config, model=label)


def asked_models(config: RunConfig, index: InputIndex) -> tuple[str, ...]:
    """The models requests will name: a Batch file's bodies' (without --model), else the run's."""
    if index.format is InputFormat.BATCH and not config.model_named and index.body_models:
        return index.body_models
    return config.models


def id_resolver(path: Path, keys: FieldKeys, fmt: InputFormat) -> Resolver:
    """How the id index reads an id again: the row number, or the id of the row at a byte offset."""
    if _ids_by_row(keys, fmt):
        return str
    if fmt is InputFormat.PARQUET:
        return ParquetIdReader(path, keys.id)
    if fmt is InputFormat.JSON:
        return JsonIdReader(path, keys.id)
    return IdReader(path, keys.id, fmt)


def _ids_by_row(keys: FieldKeys, fmt: InputFormat) -> bool:
    # the id is the row number: nothing to read
    return keys.id_from_row and fmt is not InputFormat.BATCH


def _duplicates_error(path: Path, duplicates: list[tuple[str, list[int]]]) -> InputError:
    """The error listing repeated ids, each with the lines of its first row and of the repeat."""
    pairs = [(task_id, rows[0], again) for task_id, rows in duplicates for again in rows[1:]]
    shown = pairs[:MAX_DUPLICATES_SHOWN]
    offsets = {offset for _, first, again in shown for offset in (first, again)}
    # a Parquet or JSON row is placed by its position (0-based), as --start counts
    by_position = detect_format(path).by_position
    lines = {o: o for o in offsets} if by_position else line_numbers(path, offsets)
    word = "rows" if by_position else "lines"
    listing = ", ".join(f"{i!r} ({word} {lines[a]} and {lines[b]})" for i, a, b in shown)
    more = (f" and {len(pairs) - MAX_DUPLICATES_SHOWN} more"
            if len(pairs) > MAX_DUPLICATES_SHOWN else "")
    return InputError(f"{len(pairs)} duplicate ids: {listing}{more}", str(path))


LINES_SNIFFED = 5


def refuse_input_as_output(input_path: Path, outputs: Sequence[Path], keys: FieldKeys) -> None:
    """A ConfigError when an output is the input itself, or holds task lines and no answers.

    Appending answers to the input would corrupt it, and a resume scan of task lines would find
    nothing done (or, in older versions, everything): either way a typo in -o must stop the run
    before any request.
    """
    for output in outputs:
        if output.resolve() == input_path.resolve() or (output.exists()
                                                        and os.path.samefile(output, input_path)):
            raise ConfigError(f"the output {output} is the input file; write the "
                              "results to another file (-o)")
        for number, _, obj in islice(iter_lines(output), LINES_SNIFFED):
            if is_answer(obj):
                break
            if _is_task(obj, keys):
                raise ConfigError(f"the output {output} looks like task input (line {number} is a "
                                  "task, not an answer); write the results to another file (-o)")


def _is_task(obj: Any, keys: FieldKeys) -> bool:
    try:
        if isinstance(obj, dict) and "custom_id" in obj and "body" in obj:
            parse_batch_task(obj, 0)
        else:
            parse_task(obj, keys, 0)
    except ValueError:
        return False
    return True


def read_ids_file(path: Path) -> frozenset[str]:
    """Ids to run, one a line (blank lines and # comments ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the ids file: {exc}", str(path)) from None
    return frozenset(line.strip() for line in io.StringIO(text) if line.strip()
                     and not line.startswith("#"))


def reading(config: RunConfig) -> FieldKeys:
    """How the run's input is read."""
    return FieldKeys(config.id_key, config.prompt_key, config.images_key, config.images_sep,
                     config.id_from_row, config.messages_key, config.model_key,
                     config.judging is not None,
                     template_fields(prompt_forms(config)))


def selection(config: RunConfig) -> Selection:
    """Which tasks the run's options select; --only-failed reads the errors files of the outputs."""
    ids = read_ids_file(config.ids) if config.ids is not None else None
    if config.only_failed:
        _, output = config.require_paths()
        failed: set[str] = set()
        for out in run_outputs(output, config.variant_names, config.models):
            paths = OutputPaths.of(out.path)
            failed |= {
                rid for _, _, obj in iter_lines(paths.errors) if (rid := record_id(obj)) is not None
            }
            failed -= scan(paths.output).ids
        ids = frozenset(failed) if ids is None else ids & failed
    return Selection(start=config.start or 0, end=config.end, limit=config.limit, ids=ids)
