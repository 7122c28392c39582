"""Token estimates made before a request is sent:
what the rate limiter charges, and later, the dry run.

Text: one token per 4 characters, plus 4 per message for the chat framing (OpenAI's rule of thumb;
real tokenizers differ by some percent, and the charge is corrected by the real usage once the
answer comes).

Images: OpenAI's published rules (the vision guide, "Calculating costs"), which differ by model:
- tiles (GPT-4o, GPT-4.1, GPT-4.5, GPT-5, o1, o3): ``detail: low`` costs the base tokens; otherwise
  the image is scaled to fit in 2048x2048, then its shortest side to 768, and costs the base plus
  the tile tokens per 512-pixel tile. gpt-4o-mini bills 2833 + 5667 a tile (about 33 times gpt-4o's
  85 + 170), so that an image costs as many dollars on both;
- patches (gpt-4.1-mini, gpt-4.1-nano, o4-mini, gpt-5-mini, gpt-5-nano): the 32-pixel patches that
  cover the image, scaled down to at most 1536 of them, times the model's multiplier; detail does
  not change it.
A model the table does not know (Qwen, a vLLM model, a new OpenAI one) is estimated as gpt-4o.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
UNKNOWN_SIZE = (1024, 1024)  # the guess for a remote image, whose size is not read
DEFAULT_COMPLETION_TOKENS = 256  # charged for the answer when no max_tokens is set
PATCH = 32
MAX_PATCHES = 1536


@dataclass(frozen=True)
class ImageRule:
    """How one model bills an image:
    tiles (``base`` + ``tile`` per 512-pixel tile) or 32-pixel patches times ``multiplier``."""

    base: int = 0
    tile: int = 0
    multiplier: float = 0.0

    @property
    def patches(self) -> bool:
        """Whether the model bills 32-pixel patches (a multiplier is set) rather than tiles."""
        return self.multiplier > 0


GPT_4O_RULE = ImageRule(85, 170)
# Model name prefixes (a dated snapshot, gpt-4o-mini-2024-07-18, matches its model);
# the longest wins.
IMAGE_RULES: dict[str, ImageRule] = {
    "gpt-4o": GPT_4O_RULE, "chatgpt-4o": GPT_4O_RULE, "gpt-4.1": GPT_4O_RULE,
    "gpt-4.5": GPT_4O_RULE, "gpt-4-turbo": GPT_4O_RULE,
    "gpt-4o-mini": ImageRule(2833, 5667),
    "gpt-5": ImageRule(70, 140),
    "o1": ImageRule(75, 150), "o3": ImageRule(75, 150),
    "computer-use-preview": ImageRule(65, 129),
    "gpt-4.1-mini": ImageRule(multiplier=1.62), "gpt-4.1-nano": ImageRule(multiplier=2.46),
    "gpt-5-mini": ImageRule(multiplier=1.62), "gpt-5-nano": ImageRule(multiplier=2.46),
    "o4-mini": ImageRule(multiplier=1.72),
}
UNKNOWN_IMAGE_TOKENS = 765  # gpt-4o's cost of an image of UNKNOWN_SIZE at high detail


def image_rule(model: str | None) -> ImageRule | None:
    """The published rule for ``model``
    (its last path segment, so ``openai/gpt-4o`` is gpt-4o), or None."""
    if not model:
        return None
    name = model.rsplit("/", 1)[-1].lower()
    best = ""
    for prefix in IMAGE_RULES:
        if len(prefix) > len(best) and (name == prefix or name.startswith(prefix + "-")):
            best = prefix
    return IMAGE_RULES[best] if best else None


def text_tokens(text: str) -> int:
    """The estimated tokens of ``text``: one per CHARS_PER_TOKEN characters, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def image_tokens(width: int | None, height: int | None, detail: str = "auto",
                 model: str | None = None) -> int:
    """The image's cost in prompt tokens for ``model`` (gpt-4o's rule when unknown), from its pixel
    size and the requested detail; an image of unknown size is taken as UNKNOWN_SIZE."""
    rule = image_rule(model) or GPT_4O_RULE
    if not width or not height:
        width, height = UNKNOWN_SIZE
    if rule.patches:
        return _patch_tokens(width, height, rule.multiplier)
    if detail == "low":
        return rule.base
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return rule.base + rule.tile * math.ceil(w / 512) * math.ceil(h / 512)


def _patch_tokens(width: int, height: int, multiplier: float) -> int:
    """32-pixel patches covering the image,
    scaled down (keeping whole patches) to fit MAX_PATCHES."""
    patches = math.ceil(width / PATCH) * math.ceil(height / PATCH)
    if patches > MAX_PATCHES:
        shrink = math.sqrt(PATCH * PATCH * MAX_PATCHES / (width * height))
        w, h = width * shrink, height * shrink
        shrink *= min(math.floor(w / PATCH) / (w / PATCH), math.floor(h / PATCH) / (h / PATCH))
        patches = min(MAX_PATCHES,
                      math.ceil(width * shrink / PATCH) * math.ceil(height * shrink / PATCH))
    return math.ceil(patches * multiplier)


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
