"""The on-disk schema: Result lines in the output, Failure lines in ``<output>.errors.jsonl``.

Each record is one JSON object on one line, ``id`` first so that a reader can find it early in the line.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

RESULT_FIELDS: tuple[str, ...] = (
    "id", "input_prompt", "images", "answer", "model", "requested_model", "usage", "finish_reason",
    "latency_s", "attempts", "processed_at", "cost",
)
USAGE_FIELDS: tuple[str, ...] = ("prompt_tokens", "completion_tokens", "total_tokens")
# gpt-4o-mini -> gpt-4o-mini-2024-07-18 is the same model; so are -0613, -20240620 and -v1.2.
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4}|\d{8}|v?\d+(\.\d+)*)$")
FAILURE_FIELDS: tuple[str, ...] = ("id", "error_type", "status", "message", "attempts", "processed_at")


@dataclass(frozen=True)
class Usage:
    """Tokens as the server counted them; ``cached_tokens`` is the part of the prompt it had cached."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0

    @classmethod
    def from_dict(cls, data: Any) -> Usage:
        if not isinstance(data, dict):
            return cls()
        return cls(*(int(data.get(name) or 0) for name in (*USAGE_FIELDS, "cached_tokens")))


@dataclass(frozen=True)
class Result:
    """One answered task, as written to the output."""

    id: str
    input_prompt: str
    images: list[str]
    answer: str | None
    model: str | None
    requested_model: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    latency_s: float = 0.0
    attempts: int = 1
    processed_at: float = 0.0
    cost: float | None = None

    def to_line(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        values = {name: data.get(name) for name in RESULT_FIELDS}
        values["usage"] = Usage.from_dict(data.get("usage"))
        return cls(**values)


@dataclass(frozen=True)
class Failure:
    """One failed attempt at a task (after its retries), as written to the errors file."""

    id: str
    error_type: str
    status: int | None
    message: str
    attempts: int
    processed_at: float

    def to_line(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        return cls(**{name: data.get(name) for name in FAILURE_FIELDS})


def same_model(requested: str | None, reported: str | None) -> bool:
    """Whether the server's model is the one asked for (a dated or versioned snapshot of it counts)."""
    if not requested or not reported:
        return False
    if reported == requested or reported.split("/")[-1] == requested.split("/")[-1]:
        return True
    return reported.startswith(requested) and bool(_SNAPSHOT.fullmatch(reported[len(requested):]))


def missing_fields(data: dict[str, Any]) -> list[str]:
    """The required Result fields a decoded output line lacks (usage counted as one field)."""
    missing = [name for name in RESULT_FIELDS if name not in data]
    usage = data.get("usage")
    if "usage" in data and (not isinstance(usage, dict) or any(k not in usage for k in USAGE_FIELDS)):
        missing.append("usage.*")
    return missing
