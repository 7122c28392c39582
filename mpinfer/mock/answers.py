"""What the mock answers: the assistant message and its usage, as the servers it stands in for.

- A refusal, as OpenAI sends one: ``content`` null, the text in ``refusal``, ``finish_reason``
  "stop"; an ordinary answer carries ``refusal: null``, as OpenAI's do. The mock refuses a prompt
  that holds ``MockConfig.refuse_marker``.
- A reasoning model's thinking (unless the request switched it off: mock/chat.thinking_switch),
  under the field its server uses: DeepSeek (``deepseek-reasoner``) and vLLM before 0.10 send
  ``reasoning_content``, later vLLM and some proxies ``reasoning``; the model is listed in
  ``MockConfig.reasoning_models`` with that field's name. Its tokens count in
  ``completion_tokens`` and again in ``usage.completion_tokens_details.reasoning_tokens``, as
  OpenAI bills them.
- Azure's content filter, on prompts that hold a marker: ``MockConfig.filter_marker`` stops the
  prompt (``prompt_filtered``: a 400 ``content_filter``, innererror
  ``ResponsibleAIPolicyViolation`` with ``content_filter_result`` per category);
  ``MockConfig.filter_answer_marker`` filters the completion (a 200 whose choice ends
  ``finish_reason: "content_filter"``, no content, ``content_filter_results`` on the choice and
  ``prompt_filter_results`` beside the choices). The category filtered is ``FILTERED_CATEGORY``.
- Structured answers (mock/structured.py): an object built from a ``json_schema`` request's schema,
  or a verdict naming one of ``MockConfig.answer_labels``; ``pbad_answer`` of them malformed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from .config import MockConfig
from .structured import is_bad, label_answer, schema_answer, schema_of

REFUSAL_TEXT = "I'm sorry, but I can't help with that."
FILTER_CATEGORIES = ("hate", "self_harm", "sexual", "violence")
FILTERED_CATEGORY, FILTERED_SEVERITY = "violence", "medium"
PROMPT_FILTERED_MESSAGE = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management "
    "policy. Please modify your prompt and retry. To learn more about our content filtering "
    "policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766")


def filter_results(filtered: bool) -> dict[str, Any]:
    """Azure's verdict per category: ``FILTERED_CATEGORY`` filtered when ``filtered``."""
    return {name: ({"filtered": True, "severity": FILTERED_SEVERITY}
                   if filtered and name == FILTERED_CATEGORY
                   else {"filtered": False, "severity": "safe"})
            for name in FILTER_CATEGORIES}


def prompt_filtered() -> bytes:
    """Azure's 400 for a prompt its content filter stopped."""
    return orjson.dumps({"error": {
        "message": PROMPT_FILTERED_MESSAGE, "type": None, "param": "prompt",
        "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation",
                       "content_filter_result": filter_results(True)}}})


@dataclass(frozen=True)
class Reply:
    """The assistant message of a completion, and the usage numbers that go with it."""

    message: dict[str, Any]
    finish_reason: str
    completion_tokens: int
    reasoning_tokens: int = 0
    filtered: bool = False  # the completion was filtered (Azure's content filter)

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
          max_tokens: int | None, thinks: bool | None = None, response_format: Any = None,
          attempt: int = 1) -> Reply:
    """One accepted request's answer: a refusal, or a (maybe truncated) answer with thinking: a
    reasoning model thinks unless the request switched it off (``thinks`` False), as Qwen3 on
    vLLM or DashScope, DeepSeek and OpenAI's ``reasoning_effort: none`` do. Structured
    (mock/structured.py) for a ``json_schema`` request or ``answer_labels``; ``attempt``: how
    many times this prompt has been asked (a malformed answer's draw)."""
    if cfg.filter_answer_marker and cfg.filter_answer_marker in task_text:
        # Azure sends no content for a filtered completion; the tokens it wrote are billed.
        return Reply({"role": "assistant", "content": None}, "content_filter", 12, filtered=True)
    if cfg.refuse_marker and cfg.refuse_marker in task_text:
        refused = {"role": "assistant", "content": None, "refusal": REFUSAL_TEXT}
        return Reply(refused, "stop", _tokens(REFUSAL_TEXT))
    content = f"Mock answer to: {task_text[:80]} (images: {images})"
    schema = schema_of(response_format if isinstance(response_format, dict) else None)
    bad = is_bad(cfg.pbad_answer, task_text, attempt)
    if schema is not None:
        content = schema_answer(schema, task_text, bad)
    elif cfg.answer_labels and (not cfg.label_models or model in cfg.label_models):
        content = label_answer(cfg.answer_labels, task_text, bad)
    finish_reason = "stop"
    if max_tokens is not None and _tokens(content) > max_tokens:
        content = content[: max_tokens * 4]
        finish_reason = "length"
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    completion = _tokens(content)
    field = cfg.reasoning_models.get(model)
    if field is None or thinks is False:
        return Reply(message, finish_reason, completion)
    thinking = f"The user asks: {task_text[:40]}. I should answer briefly."
    message[field] = thinking
    return Reply(message, finish_reason, completion + _tokens(thinking), _tokens(thinking))
