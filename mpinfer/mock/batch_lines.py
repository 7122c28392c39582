"""The lines of the mock's Batch API: an input file checked as OpenAI checks it, output lines.

An input line is ``{"custom_id", "method": "POST", "url", "body"}``; a file is refused (the batch
fails validation, ``errors.data`` naming the code and line) for a line that is not JSON, lacks a
custom_id or body, repeats a custom_id, names another endpoint, for more than MAX_REQUESTS lines, or
for more than one model. A request whose body the chat endpoint would refuse is not a refused file:
it gets a 400 line in the error file, as OpenAI does.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from .chat import ApiError, ChatRequest, parse_chat

MAX_REQUESTS = 50_000
"""Requests allowed in one batch (OpenAI's documented limit)."""

TOKENS_PER_IMAGE = 85


class Refused(Exception):
    """The input file is refused: the batch fails validation with this error."""

    def __init__(self, code: str, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": None, "line": line}


@dataclass(frozen=True)
class BatchInput:
    """An accepted input file: its model and, per request, the parsed chat body or its 400."""

    model: str | None
    requests: list[tuple[str, ChatRequest | ApiError]]

    @property
    def prompt_tokens(self) -> int:
        """The prompt tokens the batch enqueues (what the per-model enqueued-token limit counts)."""
        return sum(prompt_tokens(r) for _, r in self.requests if isinstance(r, ChatRequest))


def prompt_tokens(chat: ChatRequest) -> int:
    """The prompt tokens the mock bills a request: four characters a token, plus a flat count an
    image."""
    return -(-chat.text_chars // 4) + TOKENS_PER_IMAGE * chat.images_total


def custom_ids(data: bytes) -> list[str]:
    """An input file's custom_ids, skipping lines that are not requests (no checks needed)."""
    ids = []
    for raw in data.splitlines():
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
            ids.append(obj["custom_id"])
    return ids


def parse_input(data: bytes, endpoint: str) -> BatchInput:
    """Check an input file for ``endpoint``; Refused if OpenAI would fail the batch's validation."""
    requests: list[tuple[str, ChatRequest | ApiError]] = []
    seen: set[str] = set()
    models: set[str] = set()
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            raise Refused(
                "invalid_json_line", f"Line {number} is not valid JSON.", number
            ) from None
        custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
        if not isinstance(custom_id, str) or not isinstance(obj.get("body"), dict):
            raise Refused("invalid_request", f"Line {number} needs a custom_id and a body.", number)
        if custom_id in seen:
            raise Refused("duplicate_custom_id",
                          f"The custom_id {custom_id!r} is used more than once in this file.",
                          number)
        if obj.get("url") != endpoint or obj.get("method") != "POST":
            raise Refused("invalid_url", f"Line {number}: method must be POST and url {endpoint}.",
                          number)
        seen.add(custom_id)
        model = obj["body"].get("model")
        if isinstance(model, str):
            models.add(model)
        try:
            requests.append((custom_id, parse_chat(json.dumps(obj["body"]).encode())))
        except ApiError as exc:
            requests.append((custom_id, exc))
    if not requests:
        raise Refused("empty_file", "The input file has no requests.")
    if len(requests) > MAX_REQUESTS:
        raise Refused("too_many_requests",
                      f"A batch may hold at most {MAX_REQUESTS} requests; "
                      f"this file has {len(requests)}.")
    if len(models) > 1:
        raise Refused("mixed_models",
                      f"Every request of a batch must use the same model; found {sorted(models)}.")
    return BatchInput(next(iter(models), None), requests)


def answer(chat: ChatRequest, model: str, n: int) -> dict[str, Any]:
    """The chat.completion a batch request gets: what the online endpoint answers it."""
    content = f"Mock answer to: {chat.task_key[:80]} (images: {chat.images_in_task})"
    prompt = prompt_tokens(chat)
    finish = "stop"
    if chat.max_tokens is not None and -(-len(content) // 4) > chat.max_tokens:
        content, finish = content[: chat.max_tokens * 4], "length"
    completion = -(-len(content) // 4)
    return {"id": f"chatcmpl-mockbatch-{n}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}, "system_fingerprint": "fp_mock"}


def output_line(custom_id: str, n: int, response: dict[str, Any] | None,
                error: dict[str, str] | None) -> bytes:
    """One line of an output or error file."""
    record = {"id": f"batch_req_mock{n}", "custom_id": custom_id, "response": response,
              "error": error}
    return json.dumps(record).encode() + b"\n"


def status_response(status: int, message: str, type_: str, n: int) -> dict[str, Any]:
    """The ``response`` of a request that failed with an HTTP status."""
    return {"status_code": status, "request_id": f"req_mockbatch_{n}",
            "body": {"error": {"message": message, "type": type_, "param": None, "code": None}}}
