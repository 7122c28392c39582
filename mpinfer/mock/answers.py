"""What the mock answers: the assistant message and its usage, as the servers it stands in for.

- A refusal, as OpenAI sends one: ``content`` null, the text in ``refusal``, ``finish_reason``
  "stop"; an ordinary answer carries ``refusal: null``, as OpenAI's do. The mock refuses a prompt
  that holds ``MockConfig.refuse_marker``.
- A reasoning model's thinking, under the field its server uses: DeepSeek
  (``deepseek-reasoner``) and vLLM before 0.10 send ``reasoning_content``, later vLLM and some
  proxies ``reasoning``; the model is listed in ``MockConfig.reasoning_models`` with that
  field's name. Its tokens count in ``completion_tokens`` and again in
  ``usage.completion_tokens_details.reasoning_tokens``, as OpenAI bills them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import MockConfig

REFUSAL_TEXT = "I'm sorry, but I can't help with that."
REASONING_FIELDS = frozenset({"reasoning_content", "reasoning"})


@dataclass(frozen=True)
class Reply:
    """The assistant message of a completion, and the usage numbers that go with it."""

    message: dict[str, Any]
    finish_reason: str
    completion_tokens: int
    reasoning_tokens: int = 0

    def usage(self, prompt_tokens: int) -> dict[str, Any]:
        """The ``usage`` object of a completion, with reasoning tokens when the model thought."""
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt_tokens + self.completion_tokens,
        }
        if self.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return usage


def _tokens(text: str) -> int:
    return -(-len(text) // 4)


def reply(cfg: MockConfig, model: str, task_text: str, images: int,
          max_tokens: int | None) -> Reply:
    """One accepted request's answer: a refusal, or a (maybe truncated) answer with thinking."""
    if cfg.refuse_marker and cfg.refuse_marker in task_text:
        refused = {"role": "assistant", "content": None, "refusal": REFUSAL_TEXT}
        return Reply(refused, "stop", _tokens(REFUSAL_TEXT))
    content = f"Mock answer to: {task_text[:80]} (images: {images})"
    finish_reason = "stop"
    if max_tokens is not None and _tokens(content) > max_tokens:
        content = content[: max_tokens * 4]
        finish_reason = "length"
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    completion = _tokens(content)
    field = cfg.reasoning_models.get(model)
    if field is None:
        return Reply(message, finish_reason, completion)
    thinking = f"The user asks: {task_text[:40]}. I should answer briefly."
    message[field] = thinking
    return Reply(message, finish_reason, completion + _tokens(thinking), _tokens(thinking))
