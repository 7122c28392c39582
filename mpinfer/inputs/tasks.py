"""Task, the unit of work, and how an input row (JSONL, Batch API, chat) becomes one.

What a run reads is said by ``FieldKeys`` (which fields hold what), ``InputFormat`` (told by the
file) and ``Selection`` (which rows run); ``InputIndex`` is what the input check keeps. Reading
whole files is ``readers.py``; checking them before anything is spent, ``check.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from ..store.idset import IdSubset
from .chat import Conversation, check_messages

BATCH_URLS = frozenset({"/v1/chat/completions", "/chat/completions", "/v1/responses", "/responses",
                        "/v1/embeddings", "/embeddings"})


@dataclass(frozen=True)
class FieldKeys:
    """Which input fields hold the id, the prompt and the images (data sets name them apart)."""

    id: str = "id"
    prompt: str = "prompt"
    images: str = "images"
    images_sep: str = ";"  # CSV: several images in one cell
    id_from_row: bool = False  # the task's id is its row number (0-based), for files that have none
    messages: str = "messages"  # a whole conversation, sent as it is (its local images encoded)
    model: str | None = None  # --model-key: the field naming a task's own model (None: not read)
    judged: bool = False  # a judging run's tasks (eval/judge.py): the row's "of" is read
    # The fields the run's templates name (--template, a variant's): every row must have them, and
    # the prompt is rendered from them rather than read from ``prompt``.
    # (None: no template, the prompt is the row's own)
    templated: tuple[str, ...] | None = None


class InputFormat(StrEnum):
    """The formats an input can be in."""

    JSONL = "jsonl"
    BATCH = "batch"  # OpenAI Batch API request lines: {"custom_id", "method", "url", "body"}
    CSV = "csv"
    PARQUET = "parquet"  # a .parquet file or a folder of shards (inputs/parquet.py)
    JSON = "json"  # a .json file holding a list of tasks, or {"tasks": [...]}

    @property
    def by_position(self) -> bool:
        """Whether a row is found again by its position in the input rather than a byte offset."""
        return self in (InputFormat.PARQUET, InputFormat.JSON)


@dataclass(frozen=True)
class Selection:
    """Which tasks of the input run: a row range (0-based, end exclusive), the first N, ids."""

    start: int = 0
    end: int | None = None
    limit: int | None = None
    ids: frozenset[str] | None = None

    def admits(self, position: int, task_id: str) -> bool:
        """Whether the row at ``position`` with ``task_id`` is selected (``limit`` aside)."""
        if position < self.start or (self.end is not None and position >= self.end):
            return False
        return self.ids is None or task_id in self.ids

    def narrows(self) -> bool:
        """Whether anything narrows the input (else every row is selected)."""
        return bool(self.start or self.end is not None or self.limit is not None
                    or self.ids is not None)


@dataclass(slots=True)
class Task:
    """One prompt to send: the unit of work, of resume and of the output.

    Not frozen, for speed (the input check builds a million of them); nothing
    changes one once built.
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
    # A chat row's conversation, sent as it is but for its local images; ``prompt`` is then its last
    # user text and ``images`` the image references in it, for the result line.
    messages: list[dict[str, Any]] | None = None
    url: str | None = None  # a Batch API line's url: which API its body goes to
    of: str | None = None  # a judging run's task: what it judges (store/judged.py's Judged)
    # The row's values of the fields the run's templates name, as text, until a PromptForm renders
    # the prompt from them (inputs/template.py); None once rendered or without templates.
    fields: dict[str, str] | None = None
    variant: str | None = None  # the prompt variant it is sent as (--variants), for its line


@dataclass(frozen=True)
class InputIndex:
    """What the checking pass keeps: the selected ids (a subset of the id index), and how many."""

    path: Path
    ids: IdSubset
    total: int
    format: InputFormat = InputFormat.JSONL
    # a Batch file's models, as its bodies name them, first seen first
    body_models: tuple[str, ...] = ()
    # What identifies this index of the input (the input's mark and how it was read), for what is
    # kept beside an output about it (inputs/index_cache.py); None: nothing is kept.
    kept: dict[str, Any] | None = None
    checksum: tuple[int, str] | None = None  # the input's size and sha256, when already known


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_task(obj: Any, keys: FieldKeys, line: int) -> Task:
    """Build a Task from one decoded input line; a ValueError names the field at fault."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    raw_id = obj.get(keys.id)
    if raw_id is None or raw_id == "":
        raise ValueError(f"missing id (field {keys.id!r}; set --id-key if it has another name, "
                         "or --id-from-row to number the rows)")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        raise ValueError(f"id must be a string or an integer, got {type(raw_id).__name__}")
    conversation = obj.get(keys.messages)
    if keys.templated is not None:
        if conversation is not None:
            raise ValueError(f"a chat row ({keys.messages!r}) cannot take a template: its "
                             "messages are sent as they are")
        return _templated_task(obj, keys, str(raw_id), line)
    if conversation is not None:
        return _chat_task(obj, str(raw_id), check_messages(conversation, keys.messages), line,
                          keys.model)
    prompt = obj.get(keys.prompt)
    if prompt is None:
        raise ValueError(f"missing prompt (field {keys.prompt!r}, or a chat in {keys.messages!r}; "
                         "set --prompt-key or --messages-key if it has another name)")
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    found = _images_of(obj, keys.images)
    if not prompt.strip() and not found:
        raise ValueError("empty prompt and no images: nothing to ask")
    system, model, temperature, max_tokens = _task_settings(obj, keys.model)
    of = obj.get("of") if keys.judged else None
    return Task(id=str(raw_id), prompt=prompt, images=found, system=system, model=model,
                temperature=temperature, max_tokens=max_tokens, line=line,
                of=of if isinstance(of, str) else None)


def _templated_task(obj: dict[str, Any], keys: FieldKeys, task_id: str, line: int) -> Task:
    """A row whose prompt a template makes: the fields it names must be there (null is missing)."""
    names = keys.templated or ()
    missing = [name for name in names if obj.get(name) is None]
    if missing:
        absent = ", ".join(repr(name) for name in missing)
        raise ValueError(f"missing field {absent} named by the template (the row has "
                         f"{', '.join(repr(k) for k in list(obj)[:12]) or 'no fields'})")
    images = _images_of(obj, keys.images)
    system, model, temperature, max_tokens = _task_settings(obj, keys.model)
    return Task(id=task_id, prompt="", images=images, system=system, model=model,
                temperature=temperature, max_tokens=max_tokens, line=line,
                fields={name: field_text(obj[name]) for name in names})


def _images_of(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    images = obj.get(key)
    if images is None:
        images = []
    elif isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise ValueError(f"{key!r} must be an image path or URL, or a list of them")
    return tuple(images)


def field_text(value: Any) -> str:
    """A row's value as a template shows it: a string as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _chat_task(obj: dict[str, Any], task_id: str, conversation: Conversation, line: int,
               model_key: str | None) -> Task:
    system, model, temperature, max_tokens = _task_settings(obj, model_key)
    return Task(id=task_id, prompt=conversation.last_user_text, images=conversation.images,
                system=system, model=model, temperature=temperature, max_tokens=max_tokens,
                line=line, messages=conversation.messages)


def _task_settings(obj: dict[str, Any], model_key: str | None,
                   ) -> tuple[str | None, str | None, float | None, int | None]:
    """A row's own system, model (read only from the --model-key field), temperature and
    max_tokens, checked."""
    system = obj.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError("system must be a string")
    model = obj.get(model_key) if model_key is not None else None
    if model is not None and (not isinstance(model, str) or not model):
        raise ValueError(f"{model_key} must be a non-empty string")
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
        raise ValueError(f"url {url!r}: only /v1/chat/completions, /v1/responses "
                         "and /v1/embeddings requests can run")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise ValueError(f"body must be a request object, got {type(body).__name__}")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ValueError("body has no model")
    if not url.endswith("/chat/completions"):
        return Task(id=custom_id, prompt=_input_text(body.get("input")), model=body["model"],
                    line=line, body=body, url=url)
    conversation = check_messages(body.get("messages"), "body.messages")
    for ref in conversation.images:
        if not ref[:8].lower().startswith(("http://", "https://", "data:")):
            raise ValueError(f"body image {ref[:60]!r}: a Batch body is sent as it is, so its "
                             "images must be http(s) or data: URLs, not file paths")
    return Task(id=custom_id, prompt=conversation.last_user_text, images=conversation.images,
                model=body["model"], line=line, body=body, url=url)


def _input_text(value: Any) -> str:
    """The text of a Responses or embeddings body's ``input`` (a string, or its last text item);
    raises ValueError when there is none."""
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
