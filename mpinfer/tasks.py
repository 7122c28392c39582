"""Task and the JSONL input reader.

The input is read twice and never held: ``check_input`` reads every line before any API call, so bad input
fails fast with file and line and costs nothing, and keeps only the set of ids; ``iter_tasks`` then streams
the tasks that are not done yet. Memory grows with the number of ids, not with the tasks.
"""

from __future__ import annotations

from collections.abc import Iterator, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .errors import InputError

MAX_PROBLEMS_SHOWN = 10
MAX_DUPLICATES_SHOWN = 5


@dataclass(frozen=True)
class FieldKeys:
    """Which input fields hold the id, the prompt and the images (data sets name them differently)."""

    id: str = "id"
    prompt: str = "prompt"
    images: str = "images"


@dataclass(frozen=True)
class Task:
    """One prompt to send: the unit of work, of resume and of the output."""

    id: str
    prompt: str
    images: tuple[str, ...] = ()
    system: str | None = None
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    line: int = 0


@dataclass(frozen=True)
class InputIndex:
    """What the checking pass keeps: the ids in input order's set, and how many lines held tasks."""

    path: Path
    ids: frozenset[str]
    total: int


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
    prompt = obj.get(keys.prompt)
    if prompt is None:
        raise ValueError(f"missing prompt (field {keys.prompt!r}; set --prompt-key if it has another name)")
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
    return Task(
        id=str(raw_id),
        prompt=prompt,
        images=tuple(images),
        system=system,
        model=model,
        temperature=float(temperature) if temperature is not None else None,
        max_tokens=max_tokens,
        line=line,
    )


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered non-blank lines, streamed; a UTF-8 byte-order mark on the first line is dropped."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot open input: {exc.strerror or exc}", str(path)) from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if raw.strip():
                yield number, raw


def _decode(path: Path, number: int, raw: bytes, keys: FieldKeys) -> Task:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc}", str(path), number) from None
    try:
        return parse_task(obj, keys, number)
    except ValueError as exc:
        raise InputError(str(exc), str(path), number) from None


def check_input(path: Path, keys: FieldKeys = FieldKeys()) -> InputIndex:
    """Read every line and check it; return the ids, or raise one InputError listing the first problems."""
    problems: list[InputError] = []
    first_line: dict[str, int] = {}
    duplicates: list[tuple[str, int, int]] = []
    total = 0
    for number, raw in _lines(path):
        try:
            task = _decode(path, number, raw, keys)
        except InputError as exc:
            problems.append(exc)
            if len(problems) >= MAX_PROBLEMS_SHOWN:
                break
            continue
        total += 1
        seen = first_line.setdefault(task.id, number)
        if seen != number:
            duplicates.append((task.id, seen, number))
    if problems:
        more = " (and maybe more: stopped looking)" if len(problems) >= MAX_PROBLEMS_SHOWN else ""
        if len(problems) == 1:
            raise problems[0]
        listing = "\n".join(f"  {p}" for p in problems)
        raise InputError(f"{len(problems)} bad lines{more}:\n{listing}", str(path))
    if duplicates:
        shown = ", ".join(f"{i!r} (lines {a} and {b})" for i, a, b in duplicates[:MAX_DUPLICATES_SHOWN])
        more = f" and {len(duplicates) - MAX_DUPLICATES_SHOWN} more" if len(duplicates) > MAX_DUPLICATES_SHOWN else ""
        raise InputError(f"{len(duplicates)} duplicate ids: {shown}{more}", str(path))
    if total == 0:
        raise InputError("no tasks in the input", str(path))
    return InputIndex(path=path, ids=frozenset(first_line), total=total)


def iter_tasks(path: Path, keys: FieldKeys = FieldKeys(), skip: Set[str] = frozenset()) -> Iterator[Task]:
    """Stream the tasks of a checked input, leaving out the ids in ``skip`` (those already done)."""
    for number, raw in _lines(path):
        task = _decode(path, number, raw, keys)
        if task.id not in skip:
            yield task
