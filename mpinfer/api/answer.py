"""What the server said, read into one Answer: from a chat completion, a Responses API response or
an embeddings response, online or in a Batch API output line.

No openai SDK here: the Batch merge, the store's result lines and the tests read answers without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import MalformedResponse
from .responses import ApiPath, embeddings_answer, responses_answer


@dataclass(frozen=True)
class Answer:
    """What the server said, reduced to what a Result records."""

    content: str | None
    model: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    headers: dict[str, str]
    cached_tokens: int = 0
    body: dict[str, Any] | None = None  # the whole response, for the Batch API output form
    refusal: str | None = None  # the model declined: its refusal text (content is then null)
    reasoning: str | None = None  # a reasoning model's thinking, when the server sends it
    reasoning_tokens: int = 0


def parse_answer(body: bytes, headers: dict[str, str], path: ApiPath = ApiPath.CHAT) -> Answer:
    """The Answer in a response body from ``path``;
    MalformedResponse for a body that is not JSON."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedResponse(f"malformed response body (JSONDecodeError): "
                                f"{body[:120]!r}") from None
    if path is ApiPath.CHAT:
        return answer_of(data, headers)
    fields = responses_answer(data) if path is ApiPath.RESPONSES else embeddings_answer(data)
    return Answer(headers=headers, body=data, **fields)


def answer_of(data: Any, headers: dict[str, str]) -> Answer:
    """The Answer in a decoded chat.completion
    (an online response, or the body of a Batch API output line)."""
    try:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        usage = data.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        details = usage.get("completion_tokens_details") or {}
        # DeepSeek and older vLLM name the thinking reasoning_content;
        # newer vLLM and others, reasoning.
        reasoning = message.get("reasoning_content")
        if not isinstance(reasoning, str):
            reasoning = message.get("reasoning")
        refusal = message.get("refusal")
        return Answer(
            content=message.get("content"),
            model=data.get("model"),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=int(usage.get("total_tokens") or prompt + completion),
            headers=headers,
            cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
            body=data,
            refusal=refusal if isinstance(refusal, str) and refusal else None,
            reasoning=reasoning if isinstance(reasoning, str) else None,
            reasoning_tokens=int(details.get("reasoning_tokens") or 0),
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise MalformedResponse(f"malformed response body ({type(exc).__name__}): "
                                f"{str(data)[:120]!r}") from None
