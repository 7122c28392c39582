"""Conversations in the input: a chat row's ``messages`` and a Batch API body, checked.

A malformed conversation (``messages`` not a list, an ``image_url`` given as a bare
string, a part without its text) is an input error, reported with file and line by the
input check before anything is sent: the server would refuse it with a 400 after the run
had started, or a worker would trip over it.

What is checked is what mpinfer reads (roles, text parts, image parts); other
part types (audio, files) go to the server as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
SYSTEM_ROLES = frozenset({"system", "developer"})  # OpenAI's o-series take "developer" for "system"
DETAILS = frozenset({"auto", "low", "high"})
# Roles whose content may be null: an assistant turn that only calls tools, and
# the tool answers' senders.
_NULL_CONTENT_ROLES = frozenset({"assistant", "function", "tool"})


@dataclass(frozen=True)
class Conversation:
    """A checked conversation: the last user turn's text (the result's ``input_prompt``)
    and every image reference, in the order they appear (the result's ``images``; the dry
    run checks them in that order)."""

    messages: list[dict[str, Any]]
    last_user_text: str
    images: tuple[str, ...]


_TYPE_NAMES: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}


def _type_name(value: Any) -> str:
    return "null" if value is None else _TYPE_NAMES.get(type(value), type(value).__name__)


def _check_part(part: Any, where: str, images: list[str]) -> str | None:
    """The text of a text part (None for other parts); raises ValueError naming the part."""
    if not isinstance(part, dict):
        raise ValueError(f"{where} must be an object, got {_type_name(part)}")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{where}.text must be a string, got {_type_name(text)}")
        return text
    if kind == "image_url":
        image = part.get("image_url")
        if not isinstance(image, dict):
            raise ValueError(f'{where}.image_url must be an object {{"url": '
                             f'...}}, got {_type_name(image)}')
        url = image.get("url")
        if not isinstance(url, str) or not url:
            raise ValueError(f"{where}.image_url.url must be a non-empty "
                             f"string, got {_type_name(url)}")
        detail = image.get("detail")
        if detail is not None and detail not in DETAILS:
            raise ValueError(f"{where}.image_url.detail must be auto, low or high, got {detail!r}")
        images.append(url)
        return None
    if not isinstance(kind, str):
        raise ValueError(f"{where} has no type")
    return None


def check_messages(value: Any, name: str = "messages") -> Conversation:
    """Check a list of chat messages; raises ValueError whose message names the field, e.g.
    ``messages[1].content[0].image_url must be an object``."""
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of messages, got {_type_name(value)}")
    if not value:
        raise ValueError(f"{name} is empty: nothing to ask")
    images: list[str] = []
    last_user = ""
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise ValueError(f"{where} must be an object, got {_type_name(message)}")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(
                f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {role!r}")
        content = message.get("content")
        if isinstance(content, str):
            texts = [content]
        elif isinstance(content, list):
            found = (
                _check_part(part, f"{where}.content[{j}]", images) for j, part in enumerate(content)
            )
            texts = [text for text in found if text is not None]
        elif content is None and role in _NULL_CONTENT_ROLES:
            texts = []
        else:
            raise ValueError(f"{where}.content must be a string or a list of "
                             f"parts, got {_type_name(content)}")
        if role == "user":
            last_user = "".join(texts)
    return Conversation(value, last_user, tuple(images))


def has_system(messages: list[dict[str, Any]]) -> bool:
    """Whether a conversation sets its own system (or developer) message: then none is added."""
    return any(message.get("role") in SYSTEM_ROLES for message in messages)
