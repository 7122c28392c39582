"""The mock's limit on image data per request, as OpenAI enforces one: a 400 before any work.

OpenAI answers a request whose inline images together pass its limit (about 50 MB in 2026) with a
400 ``Total image size (...) exceeds the allowed limit``; the same request fails again, whatever the
wait, so a client must not retry it. Off unless ``MockConfig.max_image_bytes`` is set.
"""

from __future__ import annotations

import json
from typing import Any

from .chat import ApiError
from .config import MockConfig


def _inline_bytes(messages: Any) -> int:
    total = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            image = part.get("image_url") if isinstance(part, dict) else None
            url = image.get("url") if isinstance(image, dict) else None
            if isinstance(url, str) and url.startswith("data:"):
                total += (len(url) - url.find(",") - 1) * 3 // 4
    return total


def check_image_limit(cfg: MockConfig, body: bytes) -> None:
    """Raise the server's 400 when the request's inline images pass ``cfg.max_image_bytes``."""
    if cfg.max_image_bytes is None:
        return
    size = _inline_bytes(json.loads(body).get("messages"))
    if size > cfg.max_image_bytes:
        raise ApiError(400,
                       f"Total image size ({size / 1e6:.2f}MB) exceeds the allowed "
                       f"limit ({cfg.max_image_bytes / 1e6:.2f}MB).", param="messages",
                       code="image_too_large")
