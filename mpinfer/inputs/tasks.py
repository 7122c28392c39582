"""Task and the input readers: JSONL, OpenAI Batch API JSONL, and CSV; and the selection of what runs.

The input is read twice and never held: ``check_input`` reads every line before any API call, so bad input
fails fast with file and line and costs nothing, and keeps only an index of the ids (store/idset.py: 16
bytes an id); ``iter_tasks`` then streams the tasks that are not done yet.

The format is told by the file: ``.csv`` is CSV; a JSONL file whose first line has ``custom_id`` and
``body`` is a Batch API file, whose bodies are sent as they are.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ..config import RunConfig
from ..errors import ConfigError, InputError
from ..store.idset import HashFn, IdIndex, IdSubset, Resolver
from ..store.output import OutputPaths, iter_lines, model_outputs, record_id, scan
from ..store.records import is_answer
from .chat import Conversation, check_messages
from .locate import BOM, CountedLines, IdReader, line_numbers, row_has_values

MAX_PROBLEMS_SHOWN = 10
BATCH_URLS = frozenset({"/v1/chat/completions", "/chat/completions", "/v1/responses", "/responses",
                        "/v1/embeddings", "/embeddings"})
MAX_BODY_MODELS = 100  # distinct models kept from a Batch file's bodies
MAX_DUPLICATES_SHOWN = 5


@dataclass(frozen=True)
class FieldKeys:
    """Which input fields hold the id, the prompt and the images (data sets name them differently)."""

    id: str = "id"
    prompt: str = "prompt"
    images: str = "images"
    images_sep: str = ";"  # CSV: several images in one cell
    id_from_row: bool = False  # the task's id is its row number (0-based), for files that have none
    messages: str = "messages"  # a whole conversation, sent as it is (its local images encoded)


class InputFormat(StrEnum):
    JSONL = "jsonl"
    BATCH = "batch"  # OpenAI Batch API request lines: {"custom_id", "method", "url", "body"}
    CSV = "csv"


@dataclass(frozen=True)
class Selection:
    """Which tasks of the input run: a row range (0-based, end exclusive), the first N, given ids."""

    start: int = 0
    end: int | None = None
    limit: int | None = None
    ids: frozenset[str] | None = None

    def admits(self, position: int, task_id: str) -> bool:
        if position < self.start or (self.end is not None and position >= self.end):
            return False
        return self.ids is None or task_id in self.ids

    def narrows(self) -> bool:
        return bool(self.start or self.end is not None or self.limit is not None or self.ids is not None)


@dataclass(slots=True)
class Task:
    """One prompt to send: the unit of work, of resume and of the output.

    Not frozen, for speed (the input check builds a million of them); nothing changes one once built.
    """

    id: str
    prompt: str
    images: tuple[str, ...] = ()
    system: str | None = None
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    line: int = 0
    body: dict[str, Any] | None = None  # a Batch API request body, sent as it is
    # A chat row's conversation, sent as it is but for its local images; ``prompt`` is then its last user
    # text and ``images`` the image references in it, for the result line.
    messages: list[dict[str, Any]] | None = None
    url: str | None = None  # a Batch API line's url: which API its body goes to


@dataclass(frozen=True)
class InputIndex:
    """What the checking pass keeps: the selected ids (a subset of the input's id index), and how many."""

    path: Path
    ids: IdSubset
    total: int
    format: InputFormat = InputFormat.JSONL
    body_models: tuple[str, ...] = ()  # a Batch file's models, as its bodies name them, first seen first


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_task(obj: Any, keys: FieldKeys, line: int) -> Task:
    """Build a Task from one decoded input line; raises ValueError with a message naming the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    raw_id = obj.get(keys.id)
    if raw_id is None or raw_id == "":
        raise ValueError(f"missing id (field {keys.id!r}; set --id-key if it has another name)")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise ValueError(f"id must be a string or an integer, got {type(raw_id).__name__}")
    conversation = obj.get(keys.messages)
    if conversation is not None:
        return _chat_task(obj, str(raw_id), check_messages(conversation, keys.messages), line)
    prompt = obj.get(keys.prompt)
    if prompt is None:
        raise ValueError(f"missing prompt (field {keys.prompt!r}, or a chat in {keys.messages!r}; set "
                         "--prompt-key or --messages-key if it has another name)")
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    images = obj.get(keys.images)
    if images is None:
        images = []
    elif isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise ValueError(f"{keys.images!r} must be an image path or URL, or a list of them")
    if not prompt.strip() and not images:
        raise ValueError("empty prompt and no images: nothing to ask")
    system, model, temperature, max_tokens = _task_settings(obj)
    return Task(id=str(raw_id), prompt=prompt, images=tuple(images), system=system, model=model,
                temperature=temperature, max_tokens=max_tokens, line=line)


def _chat_task(obj: dict[str, Any], task_id: str, conversation: Conversation, line: int) -> Task:
    system, model, temperature, max_tokens = _task_settings(obj)
    return Task(id=task_id, prompt=conversation.last_user_text, images=conversation.images, system=system,
                model=model, temperature=temperature, max_tokens=max_tokens, line=line,
                messages=conversation.messages)


def _task_settings(obj: dict[str, Any]) -> tuple[str | None, str | None, float | None, int | None]:
    """A row's own system, model, temperature and max_tokens, checked."""
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError("system must be a string")
    model = obj.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ValueError("model must be a non-empty string")
    temperature = obj.get("temperature")
    if temperature is not None and not _number(temperature):
        raise ValueError("temperature must be a number")
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                   or max_tokens < 1):
        raise ValueError("max_tokens must be a positive integer")
    return system, model, float(temperature) if temperature is not None else None, max_tokens


def parse_batch_task(obj: Any, line: int) -> Task:
    """A Task from one Batch API request line; its body goes to the API unchanged."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise ValueError("missing custom_id")
    if obj.get("method", "POST") != "POST":
        raise ValueError(f"method {obj.get('method')!r}: only POST requests can run")
    url = obj.get("url", "/v1/chat/completions")
    if url not in BATCH_URLS:
        raise ValueError(f"url {url!r}: only /v1/chat/completions, /v1/responses and /v1/embeddings requests "
                         "can run")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise ValueError(f"body must be a request object, got {type(body).__name__}")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ValueError("body has no model")
    if not url.endswith("/chat/completions"):
        return Task(id=custom_id, prompt=_input_text(body.get("input")), model=body["model"], line=line, body=body,
                    url=url)
    conversation = check_messages(body.get("messages"), "body.messages")
    for ref in conversation.images:
        if not ref[:8].lower().startswith(("http://", "https://", "data:")):
            raise ValueError(f"body image {ref[:60]!r}: a Batch body is sent as it is, so its images must be "
                             "http(s) or data: URLs, not file paths")
    return Task(id=custom_id, prompt=conversation.last_user_text, images=conversation.images, model=body["model"],
                line=line, body=body, url=url)


def _input_text(value: Any) -> str:
    """The text of a Responses or embeddings body's ``input`` (a string, or its last text item); raises
    ValueError when there is none."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value:
        for item in reversed(value):
            if isinstance(item, str):
                return item
            content = item.get("content") if isinstance(item, dict) else None
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(str(p.get("text", "")) for p in content
                               if isinstance(p, dict) and p.get("type") in ("input_text", "text"))
        return ""
    raise ValueError("body.input must be a non-empty string or list")


def detect_format(path: Path) -> InputFormat:
    if path.suffix.lower() == ".csv":
        return InputFormat.CSV
    for _, raw in _lines(path):
        try:
            first = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return InputFormat.JSONL
        is_batch = isinstance(first, dict) and "custom_id" in first and "body" in first
        return InputFormat.BATCH if is_batch else InputFormat.JSONL
    return InputFormat.JSONL


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
    """(number, byte offset, line) for each non-blank line; the offset is where the id index finds it again."""
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
    """A CSV row as a JSON task: empty cells are absent; an images cell may hold several paths."""
    obj: dict[str, Any] = {k: v for k, v in row.items() if k is not None and isinstance(v, str) and v.strip()}
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
    """(line, the record as read, its Task or the InputError that says what is wrong), for every row."""
    for line, _, row, item in _rows(path, keys, fmt or detect_format(path)):
        yield line, row, item


def _rows(path: Path, keys: FieldKeys, fmt: InputFormat,
          ) -> Iterator[tuple[int, int, dict[str, Any] | None, Task | InputError]]:
    """iter_raw with each row's byte offset."""
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
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield line, offset, None, InputError(f"invalid JSON: {exc}", str(path), line)
            position += 1
            continue
        if keys.id_from_row and isinstance(obj, dict) and fmt is InputFormat.JSONL:
            obj = {**obj, keys.id: str(position)}
        try:
            task = parse_batch_task(obj, line) if fmt is InputFormat.BATCH else parse_task(obj, keys, line)
        except ValueError as exc:
            yield line, offset, obj if isinstance(obj, dict) else None, InputError(str(exc), str(path), line)
        else:
            yield line, offset, obj, task
        position += 1


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


def check_input(path: Path, keys: FieldKeys = FieldKeys(), selection: Selection = Selection(),
                hash_fn: HashFn | None = None) -> InputIndex:
    """Read every row and check it; the selected ids, or one InputError listing the first problems.

    Every row is checked, selected or not: a broken file is broken, and a trial run with --limit should
    say so before the real run does. The ids are kept in an IdIndex (16 bytes each, whatever their length);
    ``hash_fn`` is its hash, a parameter so tests can force collisions.
    """
    fmt = detect_format(path)
    problems: list[InputError] = []
    by_row = _ids_by_row(keys, fmt)
    index = IdIndex(id_resolver(path, keys, fmt), hash_fn)
    body_models: dict[str, None] = {}
    position = 0
    for _, offset, _, item in _rows(path, keys, fmt):
        if isinstance(item, InputError):
            problems.append(item)
            if len(problems) >= MAX_PROBLEMS_SHOWN:
                break
            continue
        index.add(item.id, position if by_row else offset)
        position += 1
        if item.body is not None and len(body_models) < MAX_BODY_MODELS:
            body_models.setdefault(str(item.model))
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
    if selection.narrows():
        ids = IdSubset(index)
        for _, _, item in iter_selected(path, keys, selection, fmt):
            slot = index.find_member(item.id) if isinstance(item, Task) else None
            if slot is not None:
                ids.add_slot(slot)
    else:
        ids = IdSubset(index, everything=True)
    return InputIndex(path=path, ids=ids, total=len(ids), format=fmt, body_models=tuple(body_models))


def settle_models(config: RunConfig, index: InputIndex) -> RunConfig:
    """The run's model, for a Batch file run without --model: the one its bodies name.

    Its bodies go as they are, so the log name, the summary's per-model counts, the manifest, the rate
    limits and the cost are those of that model, not of the --model default no task asked for.
    """
    if index.format is not InputFormat.BATCH or "model" in config.explicit or len(index.body_models) != 1:
        return config
    return dataclasses.replace(config, model=index.body_models[0])


def id_resolver(path: Path, keys: FieldKeys, fmt: InputFormat) -> Resolver:
    """How the id index reads an id again: the row number itself, or the id of the row at a byte offset."""
    return str if _ids_by_row(keys, fmt) else IdReader(path, keys.id, fmt)


def _ids_by_row(keys: FieldKeys, fmt: InputFormat) -> bool:
    return keys.id_from_row and fmt is not InputFormat.BATCH  # the id is the row number: nothing to read


def _duplicates_error(path: Path, duplicates: list[tuple[str, list[int]]]) -> InputError:
    """Each repeat of an id with the line of its first row and its own (as ``(id, first, again)``)."""
    pairs = [(task_id, rows[0], again) for task_id, rows in duplicates for again in rows[1:]]
    shown = pairs[:MAX_DUPLICATES_SHOWN]
    lines = line_numbers(path, {offset for _, first, again in shown for offset in (first, again)})
    listing = ", ".join(f"{i!r} (lines {lines[a]} and {lines[b]})" for i, a, b in shown)
    more = f" and {len(pairs) - MAX_DUPLICATES_SHOWN} more" if len(pairs) > MAX_DUPLICATES_SHOWN else ""
    return InputError(f"{len(pairs)} duplicate ids: {listing}{more}", str(path))


def iter_tasks(path: Path, keys: FieldKeys = FieldKeys(), skip: Container[str] = frozenset(),
               selection: Selection = Selection()) -> Iterator[Task]:
    """Stream the selected tasks of a checked input, leaving out the ids in ``skip`` (those already done)."""
    for _, _, item in iter_selected(path, keys, selection):
        if isinstance(item, InputError):
            raise item
        if item.id not in skip:
            yield item


LINES_SNIFFED = 5


def refuse_input_as_output(input_path: Path, outputs: Sequence[Path], keys: FieldKeys) -> None:
    """A ConfigError when an output is the input itself, or holds task lines and no answers.

    Appending answers to the input would corrupt it, and a resume scan of task lines would find nothing done
    (or, in older versions, everything): either way a typo in -o must stop the run before any request.
    """
    for output in outputs:
        if output.resolve() == input_path.resolve() or (output.exists() and os.path.samefile(output, input_path)):
            raise ConfigError(f"the output {output} is the input file; write the results to another file (-o)")
        for number, _, obj in islice(iter_lines(output), LINES_SNIFFED):
            if is_answer(obj):
                break
            if _is_task(obj, keys):
                raise ConfigError(f"the output {output} looks like task input (line {number} is a task, not an "
                                  "answer); write the results to another file (-o)")


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
    return frozenset(line.strip() for line in io.StringIO(text) if line.strip() and not line.startswith("#"))


def reading(config: RunConfig) -> FieldKeys:
    """How the run's input is read."""
    return FieldKeys(config.id_key, config.prompt_key, config.images_key, config.images_sep, config.id_from_row,
                     config.messages_key)


def selection(config: RunConfig) -> Selection:
    """Which tasks the run's options select; --only-failed reads the errors files of the outputs."""
    ids = read_ids_file(config.ids) if config.ids is not None else None
    if config.only_failed:
        _, output = config.require_paths()
        failed: set[str] = set()
        for path in model_outputs(output, config.models):
            paths = OutputPaths.of(path)
            failed |= {rid for _, _, obj in iter_lines(paths.errors) if (rid := record_id(obj)) is not None}
            failed -= scan(paths.output).ids
        ids = frozenset(failed) if ids is None else ids & failed
    return Selection(start=config.start or 0, end=config.end, limit=config.limit, ids=ids)
