"""Chat requests: a chat.completions body validated as OpenAI would, or an OpenAI-style error."""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from .http import error_body

_VALID_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_VALID_DETAILS = frozenset({"auto", "low", "high"})


class ApiError(Exception):
    """An OpenAI-style API error to send back as ``{"error": {...}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        outcome: str = "400",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.outcome = outcome

    def body(self) -> bytes:
        """The JSON error body OpenAI clients know how to parse."""
        return error_body(self.message, self.type, self.param, self.code)


@dataclass(slots=True)
class ChatRequest:
    """The parts of a validated chat request that the mock needs."""

    model: str
    task_key: str
    images_in_task: int
    images_total: int
    text_chars: int
    max_tokens: int | None
    thinks: bool | None = None  # the request's thinking switch (thinking_switch), None: none
    response_format: Any = None  # as sent: mock/structured.py checks and reads it


def thinking_switch(data: dict[str, Any]) -> bool | None:
    """Whether a request asks its model to think, in any server's words: vLLM's
    ``chat_template_kwargs.enable_thinking``, DashScope's ``enable_thinking``, DeepSeek's
    ``thinking.type``, OpenAI's ``reasoning_effort`` (``none`` is off); None when it says
    nothing."""
    kwargs = data.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and isinstance(kwargs.get("enable_thinking"), bool):
        return bool(kwargs["enable_thinking"])
    if isinstance(data.get("enable_thinking"), bool):
        return bool(data["enable_thinking"])
    thinking = data.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
        return bool(thinking["type"] == "enabled")
    effort = data.get("reasoning_effort")
    return None if effort is None else effort != "none"


def _check_image_url(url: Any) -> str | None:
    """Return why ``url`` is not an acceptable image URL, or None if it is."""
    if not isinstance(url, str):
        return "must be a string"
    if url.startswith(("http://", "https://")):
        if len(url.split("://", 1)[1]) == 0:
            return "has no host"
        return None
    if not url.startswith("data:"):
        return "must be an http(s) URL or a base64 data URL"
    header, sep, data = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        return "data URL must be of the form data:<mime>;base64,<data>"
    mime = header[: -len(";base64")]
    major, slash, minor = mime.partition("/")
    if not slash or not major or not minor:
        return "data URL has no valid MIME type"
    if not data:
        return "data URL has no data"
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return "data URL payload is not valid base64"
    return None


def parse_chat(body: bytes) -> ChatRequest:
    """Validate a chat.completions body the way OpenAI would, raising ApiError."""
    try:
        data = orjson.loads(body)  # strict JSON, as OpenAI parses it (no NaN)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            "using your HTTP library correctly.)",
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model",
                       code="missing_required_parameter")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            400, "'messages' must be a non-empty array.", param="messages",
            code="missing_required_parameter"
        )
    if data.get("stream"):
        raise ApiError(400, "The mock server does not support streaming.", param="stream",
                       code="unsupported_value")

    text_chars = 0
    images_total = 0
    task_parts: list[str] = []
    images_in_task = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"Invalid type for 'messages[{i}]': expected an object.",
                           param=f"messages.[{i}]")
        role = message.get("role")
        if role not in _VALID_ROLES:
            raise ApiError(
                400, f"Invalid value for 'messages[{i}].role': {role!r}.",
                param=f"messages.[{i}].role",
                code="invalid_value",
            )
        content = message.get("content")
        texts: list[str] = []
        images = 0
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                where = f"messages.[{i}].content.[{j}]"
                if not isinstance(part, dict):
                    raise ApiError(400, f"Invalid type for '{where}': expected an object.",
                                   param=where)
                kind = part.get("type")
                if kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise ApiError(400, f"Invalid type for '{where}.text': expected a string.",
                                        param=f"{where}.text", code="invalid_type")
                    texts.append(text)
                elif kind == "image_url":
                    image = part.get("image_url")
                    if not isinstance(image, dict):
                        raise ApiError(400,
                                       f"Invalid type for '{where}.image_url': expected an object.",
                                       param=f"{where}.image_url", code="invalid_type")
                    problem = _check_image_url(image.get("url"))
                    if problem is not None:
                        raise ApiError(400, f"Invalid '{where}.image_url.url': {problem}.",
                                        param=f"{where}.image_url.url", code="invalid_value")
                    detail = image.get("detail")
                    if detail is not None and detail not in _VALID_DETAILS:
                        raise ApiError(400,
                                       f"Invalid value for '{where}.image_url.detail': {detail!r}.",
                                       param=f"{where}.image_url.detail", code="invalid_value")
                    images += 1
                else:
                    raise ApiError(400, f"Invalid value for '{where}.type': {kind!r}.",
                                    param=f"{where}.type", code="invalid_value")
        elif content is None and role in ("assistant", "function"):
            pass  # assistant turns carrying only tool calls have null content
        else:
            raise ApiError(400, f"Invalid type for 'messages[{i}].content'.",
                           param=f"messages.[{i}].content", code="invalid_type")
        for text in texts:
            text_chars += len(text)
        images_total += images
        if role == "user":
            task_parts = texts
            images_in_task = images

    max_tokens: int | None = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(400, f"Invalid value for '{name}': expected an integer >= 1.",
                           param=name, code="invalid_value")
        max_tokens = value
        break  # max_completion_tokens is the newer name and wins, as on OpenAI
    return ChatRequest(model, "".join(task_parts), images_in_task, images_total, text_chars,
                       max_tokens, thinking_switch(data), data.get("response_format"))
