"""The on-disk schema: Result lines in the output, Failure lines in ``<output>.errors.jsonl``.

Each record is one JSON object on one line, ``id`` first so that a reader can find it early in the line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

RESULT_FIELDS: tuple[str, ...] = (
    "id", "input_prompt", "images", "answer", "model", "requested_model", "usage", "finish_reason",
    "latency_s", "attempts", "processed_at",
)
USAGE_FIELDS: tuple[str, ...] = ("prompt_tokens", "completion_tokens", "total_tokens")
FAILURE_FIELDS: tuple[str, ...] = ("id", "error_type", "status", "message", "attempts", "processed_at")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_dict(cls, data: Any) -> Usage:
        if not isinstance(data, dict):
            return cls()
        return cls(*(int(data.get(name) or 0) for name in USAGE_FIELDS))


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


def missing_fields(data: dict[str, Any]) -> list[str]:
    """The required Result fields a decoded output line lacks (usage counted as one field)."""
    missing = [name for name in RESULT_FIELDS if name not in data]
    usage = data.get("usage")
    if "usage" in data and (not isinstance(usage, dict) or any(k not in usage for k in USAGE_FIELDS)):
        missing.append("usage.*")
    return missing
