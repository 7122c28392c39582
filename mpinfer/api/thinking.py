"""Thinking switches: ``--thinking on|off`` and ``--reasoning-effort``, in each server's own words.

Servers switch a model's thinking with different fields, as their docs say:

- **OpenAI** (and Azure OpenAI): ``reasoning_effort`` in a chat request, ``reasoning.effort`` in
  the Responses API. Its reasoning models always think (the effort only sets how much), so
  ``--thinking`` has no clean meaning there and is refused: give ``--reasoning-effort``.
- **DeepSeek** (api.deepseek.com): ``thinking: {"type": "enabled" | "disabled"}``, and
  ``reasoning_effort`` for how much.
- **Qwen on DashScope** (Alibaba Cloud Model Studio, ``dashscope*.aliyuncs.com``):
  ``enable_thinking: true | false``. Its budget is ``thinking_budget`` tokens, not an effort, so
  ``--reasoning-effort`` is refused there (give the budget with ``--extra-body``).
- **vLLM and SGLang** serving a model whose chat template thinks (Qwen3): ``chat_template_kwargs:
  {"enable_thinking": ...}``; ``reasoning_effort`` goes as it is (vLLM reads it for gpt-oss). Any
  other server (a LiteLLM proxy, Ollama) is taken for this kind unless ``--thinking-form`` says
  otherwise.

The fields go into every request of the model, under the user's own ``--extra-body``, which wins
where both name a field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = ["EFFORTS", "ThinkingForm", "as_effort", "form_of", "switches", "thinking_fields"]

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
"""The efforts any of the servers takes; which of them a model accepts is for its server to say."""


def as_effort(text: Any) -> str:
    """Parse ``--reasoning-effort``: one of EFFORTS, any case."""
    effort = str(text).strip().lower()
    if effort not in EFFORTS:
        raise ValueError("must be " + ", ".join(EFFORTS))
    return effort


class ThinkingForm(StrEnum):
    """How a server is told to think."""

    AUTO = "auto"  # from the base URL (form_of)
    OPENAI = "openai"
    DEEPSEEK = "deepseek"
    DASHSCOPE = "dashscope"
    VLLM = "vllm"


def form_of(base_url: str | None, azure: bool = False) -> ThinkingForm:
    """The form a server at ``base_url`` takes (``azure``: an Azure OpenAI endpoint)."""
    host = (urlsplit(base_url).hostname or "") if base_url else "api.openai.com"
    if azure or host == "api.openai.com" or host.endswith(".openai.azure.com"):
        return ThinkingForm.OPENAI
    if host == "api.deepseek.com":
        return ThinkingForm.DEEPSEEK
    if host.startswith("dashscope") and host.endswith(".aliyuncs.com"):
        return ThinkingForm.DASHSCOPE
    return ThinkingForm.VLLM


def thinking_fields(form: ThinkingForm, thinking: bool | None, effort: str | None, *,
                    responses: bool = False) -> dict[str, Any]:
    """The body fields that ask a server of ``form`` for ``thinking`` (None: the model's default)
    and ``effort`` (None: the server's default); ``responses``: the Responses API's body.
    Raises ConfigError for a switch the server has no clean field for."""
    if form is ThinkingForm.AUTO:
        raise ValueError("resolve the form first (form_of)")
    fields: dict[str, Any] = {}
    if thinking is not None:
        if form is ThinkingForm.OPENAI:
            raise ConfigError("--thinking: OpenAI's reasoning models always think; set how much "
                              "with --reasoning-effort (none, minimal, low, medium, high)")
        if responses:
            raise ConfigError("--thinking goes with the chat API only; with --api responses set "
                              "--reasoning-effort (none turns thinking off where the server "
                              "allows it)")
        if form is ThinkingForm.DEEPSEEK:
            fields["thinking"] = {"type": "enabled" if thinking else "disabled"}
        elif form is ThinkingForm.DASHSCOPE:
            fields["enable_thinking"] = thinking
        else:
            fields["chat_template_kwargs"] = {"enable_thinking": thinking}
    if effort is not None:
        if form is ThinkingForm.DASHSCOPE:
            raise ConfigError("--reasoning-effort: DashScope sets a thinking budget in tokens, not "
                              "an effort: give it as --extra-body '{\"thinking_budget\": N}'")
        if responses:
            fields["reasoning"] = {"effort": effort}
        else:
            fields["reasoning_effort"] = effort
    return fields


def switches(places: Mapping[str, Sequence[tuple[str | None, bool]]], form: ThinkingForm,
             thinking: bool | None, effort: str | None, *,
             responses: bool = False) -> tuple[dict[str, Any], ...]:
    """For each model (in ``places`` order: its servers as (base URL, is Azure)), the fields that
    ask for ``thinking`` and ``effort``. ``form`` other than AUTO holds for every server. Raises
    ConfigError when a server has no field for what was asked, or when the servers of one model
    would need different fields."""
    found: list[dict[str, Any]] = []
    for name, servers in places.items():
        forms = {form if form is not ThinkingForm.AUTO else form_of(url, azure)
                 for url, azure in servers}
        if len(forms) > 1:
            raise ConfigError(f"--thinking/--reasoning-effort: {name} is served by endpoints that "
                              f"switch thinking differently ({', '.join(sorted(forms))}): give "
                              "--thinking-form, or run them apart")
        found.append(thinking_fields(forms.pop(), thinking, effort, responses=responses))
    return tuple(found)
