"""What the server said, read into one Answer: from a chat completion, a Responses API response or
an embeddings response, online or in a Batch API output line.

No openai SDK here: the Batch merge, the store's result lines and the tests read answers without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import MalformedResponse
from ..store.records import COMPLETION, CONTENT_FILTER, PROMPT, filtered_record
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
    usage_known: bool = True  # False: the server sent no usage (its tokens and cost unknown)
    filtered: dict[str, Any] | None = None  # a content filter stopped it (filtered_record)


def filtered_answer(error: Any) -> Answer:
    """The answer a 400 ``content_filter`` stands for (Azure: the prompt was filtered): no text and
    no tokens, with what the filter said per category (``innererror.content_filter_result``).
    ``error`` is the body's ``error`` object (the SDK's ``body``)."""
    error = error if isinstance(error, dict) else {}
    inner = error.get("innererror")
    results = inner.get("content_filter_result") if isinstance(inner, dict) else None
    return Answer(content=None, model=None, finish_reason=CONTENT_FILTER, prompt_tokens=0,
                  completion_tokens=0, total_tokens=0, headers={},
                  filtered=filtered_record(PROMPT, results))


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
        filtered = None
        if choice.get("finish_reason") == CONTENT_FILTER:  # Azure: the completion was filtered
            filtered = filtered_record(COMPLETION, choice.get("content_filter_results"))
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
            usage_known=isinstance(data.get("usage"), dict), filtered=filtered,
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise MalformedResponse(f"malformed response body ({type(exc).__name__}): "
                                f"{str(data)[:120]!r}") from None
