"""Reading an input row by row: JSONL, OpenAI Batch API JSONL, CSV and Parquet, streamed, never
held; and a JSON file holding a list of tasks.

The format is told by the file: ``.csv`` is CSV; ``.parquet`` (or a folder of such shards) is
Parquet (inputs/parquet.py); ``.json`` is a list of tasks (or ``{"tasks": [...]}``); a JSONL file
whose first line has ``custom_id`` and ``body`` is a Batch API file, whose bodies are sent as they
are. Each row comes with its line number and byte offset (where the id index finds it again; a
Parquet or JSON row's place is its position) and its Task or the InputError that says what is
wrong.
"""

from __future__ import annotations

import csv
from collections.abc import Container, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ..errors import InputError
from .locate import BOM, CountedLines, row_has_values
from .parquet import is_parquet
from .tasks import FieldKeys, InputFormat, Selection, Task, parse_batch_task, parse_task


def detect_format(path: Path) -> InputFormat:
    """The input's format: CSV by suffix, else Batch API lines if the first line is one, else
    JSONL."""
    if path.suffix.lower() == ".csv":
        return InputFormat.CSV
    if is_parquet(path):
        return InputFormat.PARQUET
    if path.suffix.lower() == ".json" and _is_task_list(path):
        return InputFormat.JSON
    for _, raw in _lines(path):
        try:
            first = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return InputFormat.JSONL
        is_batch = isinstance(first, dict) and "custom_id" in first and "body" in first
        return InputFormat.BATCH if is_batch else InputFormat.JSONL
    return InputFormat.JSONL


def _is_task_list(path: Path) -> bool:
    """Whether a .json file is one JSON document (a list, or an object over several lines or with
    ``tasks``) rather than JSON lines under a .json name, which read as JSONL as they always did."""
    for _, raw in _lines(path):
        if raw.lstrip().startswith(b"["):
            return True
        try:
            first = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return True  # an object written over several lines
        return isinstance(first, dict) and isinstance(first.get("tasks"), list)
    return False


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot open input: {exc.strerror or exc}", str(path)) from None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered non-blank lines, streamed; a UTF-8 byte-order mark on the first line is dropped."""
    for number, _, raw in _placed_lines(path):
        yield number, raw


def _placed_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(number, byte offset, line) of each non-blank line; the id index finds it again by offset."""
    with _open(path) as handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            at = offset
            offset += len(raw)
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if raw.strip():
                yield number, at, raw


def _csv_rows(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(line number, byte offset, row) for each data row of a CSV file with a header."""
    with _open(path) as handle:
        lines = CountedLines(handle)
        reader = csv.DictReader(lines)
        try:
            _ = reader.fieldnames  # the header is read here, so the first row's offset is past it
            while True:
                at = lines.offset
                row = next(reader, None)
                if row is None:
                    return
                if row_has_values(row):
                    yield reader.line_num, at, row
        except csv.Error as exc:
            raise InputError(f"invalid CSV: {exc}", str(path), reader.line_num) from None
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8 text: {exc}", str(path)) from None


def _csv_task(row: dict[str, Any], keys: FieldKeys, line: int) -> Task:
    """A CSV row as a JSON task: empty cells are absent (but a column a template names, which
    renders empty); an images cell may hold several paths."""
    obj: dict[str, Any] = {
        k: v for k, v in row.items()
        if k is not None and isinstance(v, str) and (v.strip() or k in (keys.templated or ()))
    }
    chat = obj.get(keys.messages)
    if chat is not None:
        try:
            obj[keys.messages] = orjson.loads(chat)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{keys.messages!r} cell is not JSON: {exc}") from None
    cell = obj.get(keys.images)
    if cell is not None:
        obj[keys.images] = [part.strip() for part in cell.split(keys.images_sep) if part.strip()]
    for name, cast in (("temperature", float), ("max_tokens", int)):
        if name in obj:
            try:
                obj[name] = cast(obj[name])
            except ValueError:
                raise ValueError(f"{name} must be a number, got {obj[name]!r}") from None
    return parse_task(obj, keys, line)


def iter_raw(path: Path, keys: FieldKeys = FieldKeys(), fmt: InputFormat | None = None,
             ) -> Iterator[tuple[int, dict[str, Any] | None, Task | InputError]]:
    """(line, the record as read, its Task or the InputError saying what is wrong) for every row."""
    for line, _, row, item in placed_rows(path, keys, fmt or detect_format(path)):
        yield line, row, item


def placed_rows(path: Path, keys: FieldKeys, fmt: InputFormat,
          ) -> Iterator[tuple[int, int, dict[str, Any] | None, Task | InputError]]:
    """iter_raw with each row's byte offset."""
    if fmt is InputFormat.PARQUET:
        yield from _parquet_rows(path, keys)
        return
    if fmt is InputFormat.JSON:
        yield from _json_rows(path, keys)
        return
    position = 0
    if fmt is InputFormat.CSV:
        for line, offset, row in _csv_rows(path):
            if keys.id_from_row:
                row = {**row, keys.id: str(position)}
            try:
                yield line, offset, row, _csv_task(row, keys, line)
            except ValueError as exc:
                yield line, offset, row, InputError(f"row {position + 1}: {exc}", str(path), line)
            position += 1
        return
    for line, offset, raw in _placed_lines(path):
        yield line, offset, *jsonl_row(path, keys, fmt, raw, line, position)
        position += 1


def jsonl_row(path: Path, keys: FieldKeys, fmt: InputFormat, raw: bytes, line: int,
              position: int) -> tuple[dict[str, Any] | None, Task | InputError]:
    """One line of a JSONL or Batch API input (``position``: its place among the rows): the
    record as read, and its Task or the InputError naming its file and line."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, InputError(f"invalid JSON: {exc}", str(path), line)
    if keys.id_from_row and isinstance(obj, dict) and fmt is InputFormat.JSONL:
        obj = {**obj, keys.id: str(position)}
    try:
        task = (parse_batch_task(obj, line) if fmt is InputFormat.BATCH
                else parse_task(obj, keys, line))
    except ValueError as exc:
        return obj if isinstance(obj, dict) else None, InputError(str(exc), str(path), line)
    return obj, task


def _parquet_rows(path: Path, keys: FieldKeys,
                  ) -> Iterator[tuple[int, int, dict[str, Any] | None, Task | InputError]]:
    """Each row of a Parquet input, placed by its position (its line: the position + 1)."""
    from .parquet import rows

    needed = () if keys.id_from_row else (keys.id,)
    for position, (file, row, obj) in enumerate(rows(path, keys.images, needed)):
        if keys.id_from_row:
            obj[keys.id] = str(position)
        try:
            yield position + 1, position, obj, parse_task(obj, keys, position + 1)
        except ValueError as exc:
            yield position + 1, position, obj, InputError(f"row {row}: {exc}", str(file))


def _json_rows(path: Path, keys: FieldKeys,
               ) -> Iterator[tuple[int, int, dict[str, Any] | None, Task | InputError]]:
    """Each task of a JSON file holding a list of them (or ``{"tasks": [...]}``), by position."""
    for position, obj in enumerate(json_tasks(path)):
        if keys.id_from_row and isinstance(obj, dict):
            obj = {**obj, keys.id: str(position)}
        try:
            yield position + 1, position, obj, parse_task(obj, keys, position + 1)
        except ValueError as exc:
            yield (position + 1, position, obj if isinstance(obj, dict) else None,
                   InputError(f"task {position}: {exc}", str(path)))


def json_tasks(path: Path) -> list[Any]:
    """The task objects of a JSON file: a list of them, or an object whose ``tasks`` is one."""
    with _open(path) as handle:
        raw = handle.read()
    try:
        data = orjson.loads(raw[len(BOM):] if raw.startswith(BOM) else raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc}", str(path)) from None
    if isinstance(data, dict) and isinstance(data.get("tasks"), list):
        return list(data["tasks"])
    if isinstance(data, list):
        return data
    raise InputError('a .json input holds a list of tasks, or {"tasks": [...]}', str(path))


def iter_selected(path: Path, keys: FieldKeys, selection: Selection, fmt: InputFormat | None = None,
              ) -> Iterator[tuple[int, dict[str, Any] | None, Task | InputError]]:
    """The rows the selection admits, in input order (every row counts for --start/--end)."""
    taken = 0
    for position, (line, raw, item) in enumerate(iter_raw(path, keys, fmt)):
        if isinstance(item, Task) and not selection.admits(position, item.id):
            continue
        if selection.limit is not None and taken >= selection.limit:
            return
        taken += 1
        yield line, raw, item


def iter_tasks(path: Path, keys: FieldKeys = FieldKeys(), skip: Container[str] = frozenset(),
               selection: Selection = Selection()) -> Iterator[Task]:
    """Stream the selected tasks of a checked input, leaving out the ids in ``skip`` (done)."""
    for _, _, item in iter_selected(path, keys, selection):
        if isinstance(item, InputError):
            raise item
        if item.id not in skip:
            yield item
