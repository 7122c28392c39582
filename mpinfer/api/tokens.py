"""Token estimates made before a request is sent: what the rate limiter charges, and later, the dry run.

Text: one token per 4 characters, plus 4 per message for the chat framing (OpenAI's rule of thumb; real
tokenizers differ by some percent, and the charge is corrected by the real usage once the answer comes).
Images: OpenAI's rule for its vision models: ``detail: low`` costs 85 tokens; otherwise the image is scaled
to fit in 2048x2048, then its shortest side to 768, and costs 85 plus 170 per 512-pixel tile.
"""

from __future__ import annotations

import math
import struct

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
LOW_DETAIL_TOKENS = 85
TILE_TOKENS = 170
UNKNOWN_IMAGE_TOKENS = 765  # a 1024x1024 image at high detail: the guess for a remote image
DEFAULT_COMPLETION_TOKENS = 256  # charged for the answer when no max_tokens is set


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def image_tokens(width: int | None, height: int | None, detail: str = "auto") -> int:
    """OpenAI's image token cost from the image's size and the requested detail."""
    if detail == "low":
        return LOW_DETAIL_TOKENS
    if not width or not height:
        return UNKNOWN_IMAGE_TOKENS
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return LOW_DETAIL_TOKENS + TILE_TOKENS * math.ceil(w / 512) * math.ceil(h / 512)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read from a PNG, GIF, WEBP or JPEG header, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if kind == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        # Start-of-frame markers carry the size; C4, C8 and CC are other tables with nearby numbers.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width, height
        at += 2 + length
    return None
