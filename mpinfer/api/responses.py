"""The Responses API and embeddings:
their request bodies, and their answers read into the one Answer.

Which API a request goes to is its path: ``/chat/completions`` (the default), ``/responses`` or
``/embeddings``, as a Batch API line's ``url`` names it, or as ``--api responses`` asks for plain
rows.

- Responses: a chat request becomes ``input`` (the same turns, each text part ``input_text``, each
  image ``input_image``) with ``max_output_tokens``; the answer is the text of the output's
  ``output_text`` parts, a ``refusal`` part is the refusal, and the usage's
  ``input_tokens``/``output_tokens`` map onto prompt and completion tokens. An ``incomplete``
  response cut at ``max_output_tokens`` is finish_reason "length".
- Embeddings: no answer text; the usage's prompt tokens,
  and the whole body for the Batch output line.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from ..errors import MalformedResponse
from ..store.records import TRUNCATED, ResponsesOutput


class ApiPath(StrEnum):
    """The API a request is sent to, as a path under the base URL."""

    CHAT = "/chat/completions"
    RESPONSES = "/responses"
    EMBEDDINGS = "/embeddings"

    @classmethod
    def of_url(cls, url: str) -> ApiPath | None:
        """The API of a Batch API line's ``url`` (``/v1/responses`` or ``/responses``), or None."""
        path = url[3:] if url.startswith("/v1/") else url
        return next((api for api in cls if api.value == path), None)


def _input_part(part: Any) -> Any:
    if not isinstance(part, dict):
        return part
    if part.get("type") == "text":
        return {"type": "input_text", "text": part.get("text", "")}
    if part.get("type") == "image_url":
        image = part.get("image_url") or {}
        converted = {"type": "input_image", "image_url": image.get("url")}
        if image.get("detail"):
            converted["detail"] = image["detail"]
        return converted
    return part


def responses_body(chat: dict[str, Any]) -> dict[str, Any]:
    """A chat.completions request (model, messages, settings, extra_body)
    as a Responses API request."""
    body = {key: value for key, value in chat.items() if key not in ("messages", "max_tokens")}
    turns = []
    for message in chat["messages"]:
        content = message.get("content")
        parts = [_input_part(part) for part in content] if isinstance(content, list) else content
        turns.append({"role": message.get("role"), "content": parts})
    body["input"] = turns
    if chat.get("max_tokens") is not None:
        body["max_output_tokens"] = chat["max_tokens"]
    return body


def responses_answer(data: Any) -> dict[str, Any]:
    """The fields of an Answer from a decoded Responses API response (raises MalformedResponse)."""
    if not isinstance(data, dict) or not isinstance(data.get("output"), list):
        raise MalformedResponse(f"malformed Responses API body: {str(data)[:120]!r}")
    out = ResponsesOutput.of(data)
    usage = data.get("usage") or {}
    prompt = int(usage.get("input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    finish = TRUNCATED if out.truncated else (
        "stop" if data.get("status") == "completed" else data.get("status"))
    return {
        "content": out.text,
        "model": data.get("model"), "finish_reason": finish,
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
        "cached_tokens": int((usage.get("input_tokens_details") or {}).get("cached_tokens") or 0),
        "reasoning_tokens": int(
            (usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0),
        "refusal": out.refusal, "reasoning": out.reasoning,
        "usage_known": isinstance(data.get("usage"), dict),
    }


def embeddings_answer(data: Any) -> dict[str, Any]:
    """The fields of an Answer from a decoded embeddings response: tokens only, no text."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise MalformedResponse(f"malformed embeddings body: {str(data)[:120]!r}")
    usage = data.get("usage") or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    return {"content": None, "model": data.get("model"), "finish_reason": None,
            "prompt_tokens": prompt, "completion_tokens": 0,
            "total_tokens": int(usage.get("total_tokens") or prompt),
            "usage_known": isinstance(data.get("usage"), dict)}
