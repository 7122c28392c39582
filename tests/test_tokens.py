"""Token estimates: OpenAI's image rule, image sizes from file headers, text, a request's charge."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from mpinfer.api.messages import ImageEncoder, build_request
from mpinfer.api.tokens import image_rule, image_size, image_tokens, text_tokens
from mpinfer.demo import png_bytes
from mpinfer.inputs.tasks import Task

WHITE = (255, 255, 255)


def gif(width: int, height: int, version: bytes = b"89a") -> bytes:
    """A GIF's header and logical screen descriptor (enough for its size)."""
    return b"GIF" + version + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00" * 12


def riff(chunk: bytes, payload: bytes) -> bytes:
    body = b"WEBP" + chunk + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_vp8x(width: int, height: int) -> bytes:
    """Extended WEBP: flags, 3 reserved bytes, then canvas width-1 and height-1 in 24 bits each."""
    return riff(b"VP8X", bytes([0x10, 0, 0, 0]) + (width - 1).to_bytes(3, "little")
                + (height - 1).to_bytes(3, "little"))


def webp_vp8(width: int, height: int, scale: int = 0) -> bytes:
    """Lossy WEBP: a 3-byte frame tag, the start code, then 14-bit sizes topped by 2 scale bits."""
    return riff(b"VP8 ",
                b"\x30\x01\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width | scale << 14,
                                                                height | scale << 14) + b"\x00" * 8)


def webp_vp8l(width: int, height: int, alpha: bool = True) -> bytes:
    """Lossless WEBP: the 0x2f signature, width-1 and height-1 in 14 bits each, alpha, version."""
    bits = (width - 1) | (height - 1) << 14 | int(alpha) << 28
    return riff(b"VP8L", b"\x2f" + bits.to_bytes(4, "little") + b"\x00" * 8)


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


APP0 = jpeg_segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")


def sof(marker: int, width: int, height: int) -> bytes:
    """A start-of-frame segment: precision, height, width, then three components."""
    return jpeg_segment(marker,
                        struct.pack(">BHHB", 8, height, width, 3) + bytes([1, 0x22, 0, 2, 0x11, 1,
                                                                           3, 0x11, 1]))


def jpeg(*segments: bytes) -> bytes:
    return b"\xff\xd8" + b"".join(segments) + b"\xff\xd9"


@pytest.fixture(scope="module")
def png_1024() -> bytes:
    return png_bytes(1024, 1024, (30, 90, 200), WHITE)


# --- image_tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height", "detail", "tokens"), [
    (1024, 1024, "high", 765),   # OpenAI: fits 2048, shortest side to 768: 768x768, 4 tiles
    (1024, 1024, "auto", 765),
    (2048, 4096, "high", 1105),  # OpenAI: to 1024x2048, then 768x1536: 2x3 tiles
    (4096, 8192, "low", 85),     # OpenAI: low detail is a flat 85
    (100, 100, "auto", 255),     # one tile
    (512, 512, "high", 255),     # exactly one tile
    (513, 512, "high", 425),     # one pixel more: two tiles
    (4096, 1024, "high", 765),   # to 2048x512; the short side is under 768, so it stays: 4x1 tiles
])
def test_image_tokens_follow_openais_documented_rule(width: int, height: int, detail: str,
                                                     tokens: int) -> None:
    # Given an image's size and the requested detail
    # When its cost is estimated
    # Then it is what OpenAI's vision pricing rule gives
    assert image_tokens(width, height, detail) == tokens


@pytest.mark.parametrize(("width", "height"), [(None, None), (1024, None), (None, 768), (0, 0)])
def test_an_image_of_unknown_size_is_guessed_at_765_tokens(width: int | None,
                                                           height: int | None) -> None:
    # Given an image whose size could not be read
    # When its cost is estimated at the default detail
    # Then it is guessed as a 1024x1024 image, 765; at low detail it is still 85
    assert image_tokens(width, height) == 765
    assert image_tokens(width, height, "low") == 85


# --- image_size -----------------------------------------------------------------------------------


def test_image_size_reads_a_png_header() -> None:
    # Given a real PNG of 37x21
    data = png_bytes(37, 21, (1, 2, 3), WHITE)
    # When its size is read
    # Then it is 37 wide and 21 high
    assert image_size(data) == (37, 21)


@pytest.mark.parametrize(("data", "size"), [
    (gif(300, 200), (300, 200)),
    (gif(1, 65535, b"87a"), (1, 65535)),
    (webp_vp8x(70000, 3), (70000, 3)),  # a width that needs all 24 bits' worth of 3 bytes
    (webp_vp8(640, 480), (640, 480)),
    (webp_vp8(640, 480, scale=3), (640, 480)),  # the scale bits are not part of the size
    (webp_vp8l(400, 300), (400, 300)),
    (webp_vp8l(16384, 1, alpha=False), (16384, 1)),
    (jpeg(APP0, sof(0xC0, 800, 600)), (800, 600)),
])
def test_image_size_reads_gif_webp_and_jpeg_headers(data: bytes, size: tuple[int, int]) -> None:
    # Given the header of a GIF, a WEBP (extended, lossy or lossless) or a JPEG with APP0 before
    # SOF0
    # When its size is read
    # Then it is the size the header holds
    assert tuple(image_size(data) or ()) == size


def test_image_size_skips_jpeg_tables_whose_markers_sit_among_the_frame_markers() -> None:
    # Given a progressive JPEG whose Huffman table (marker C4, in the C0-CF range of frame markers)
    # comes before its SOF2, and whose bytes would read as a 4660x22136 frame
    dht = jpeg_segment(0xC4, b"\x08\x56\x78\x12\x34" + b"\x00" * 12)
    data = jpeg(APP0, dht, sof(0xC2, 1920, 1080))
    # When its size is read
    # Then the table is skipped and the frame's size is found
    assert image_size(data) == (1920, 1080)


def test_image_size_reads_a_jpeg_cut_right_after_the_frame_size() -> None:
    # Given a JPEG's first bytes, cut right after the width in its SOF0 (as the 64 KiB head read can
    # cut it)
    data = (b"\xff\xd8" + APP0 + sof(0xC0, 800, 600))[:2 + len(APP0) + 9]
    # When its size is read
    # Then the size, all of which is there, is found
    assert image_size(data) == (800, 600)


@pytest.mark.parametrize("data", [
    b"",
    b"hello, this is not an image at all",
    png_bytes(4, 4, (0, 0, 0), WHITE)[:20],  # a PNG cut inside its IHDR
    b"GIF89a\x01",  # a GIF cut inside its size
    riff(b"ALPH", b"\x00" * 20),  # a WEBP whose first chunk is no image chunk
    b"RIFF\x10\x00\x00\x00WAVEfmt " + b"\x00" * 20,  # RIFF, but a sound
    b"\xff\xd8" + b"\x00" * 30,  # JPEG start, then no marker
    jpeg(APP0, jpeg_segment(0xDB, b"\x00" * 65)),  # a JPEG with no frame header
])
def test_image_size_gives_none_for_garbage_and_truncated_headers(data: bytes) -> None:
    # Given bytes that are not a readable image header
    # When their size is read
    # Then there is none
    assert image_size(data) is None


# --- text_tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "tokens"), [
    ("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100), ("x" * 401, 101),
    ("héllo", 2),  # characters, not bytes: 5 characters, 6 UTF-8 bytes
    ("😀😀😀😀😀😀😀😀😀", 3),  # 9 characters, 36 UTF-8 bytes
])
def test_text_tokens_are_a_quarter_of_the_characters_rounded_up(text: str, tokens: int) -> None:
    # Given a text
    # When its tokens are estimated
    # Then they are ceil(characters / 4)
    assert text_tokens(text) == tokens


# --- build_request: the prompt estimate and the charge --------------------------------------------


def test_a_request_counts_text_framing_and_a_1024_square_png_by_its_size(tmp_path: Path,
                                                                         png_1024: bytes) -> None:
    # Given a 1024x1024 PNG and a task with 40 characters of prompt and that image, no max_tokens
    # anywhere
    (tmp_path / "big.png").write_bytes(png_1024)
    task = Task(id="t1", prompt="p" * 40, images=("big.png",))
    # When its request is built
    request = build_request(task, ImageEncoder(tmp_path), model="gpt-4o")
    # Then the prompt is 4 for the message, 10 for the text and 765 for the image
    assert request.prompt_tokens == 4 + 10 + 765
    # And the charge adds the default 256 for the answer
    assert request.max_tokens is None
    assert request.charge == 779 + 256
    # And for gpt-4o-mini the same image is charged at its own rate, 2833 + 4 x 5667
    mini = build_request(task, ImageEncoder(tmp_path), model="gpt-4o-mini")
    assert mini.prompt_tokens == 4 + 10 + 2833 + 4 * 5667


def test_a_small_image_is_counted_by_its_real_size_not_the_unknown_guess(tmp_path: Path) -> None:
    # Given a 100x100 PNG, and a task with a system prompt, 9 characters of prompt and the image
    # twice
    (tmp_path / "small.png").write_bytes(png_bytes(100, 100, (10, 200, 10), WHITE))
    task = Task(id="t2", prompt="q" * 9, images=("small.png", "small.png"))
    encoder = ImageEncoder(tmp_path)
    # When its request is built with max_tokens 100
    request = build_request(task, encoder, model="m", system_prompt="s" * 8, max_tokens=100)
    # Then it counts two messages (8), the system text (2), the prompt (3) and each image as one
    # tile (255)
    assert request.prompt_tokens == 8 + 2 + 3 + 255 + 255
    assert request.charge == request.prompt_tokens + 100
    # And a second request for the same image, served from the encoder's cache, counts the same
    again = build_request(Task(id="t3", prompt="", images=("small.png",)), encoder, model="m")
    assert again.prompt_tokens == 4 + 255


def test_a_jpeg_image_is_counted_by_the_size_in_its_frame_header(tmp_path: Path) -> None:
    # Given a file with a JPEG header saying 2048x4096 (the size is all the estimate reads)
    (tmp_path / "photo.jpg").write_bytes(jpeg(APP0, sof(0xC0, 2048, 4096)))
    # When a request with that image alone is built
    request = build_request(
        Task(id="j", prompt="", images=("photo.jpg",)), ImageEncoder(tmp_path), model="m")
    # Then the image costs what OpenAI charges for 2048x4096
    assert request.prompt_tokens == 4 + 1105


@pytest.mark.parametrize("ref",
                         ["https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="])
def test_an_image_the_encoder_did_not_read_is_guessed_at_765(tmp_path: Path, ref: str) -> None:
    # Given a task whose image is a URL the encoder passes through without reading
    task = Task(id="r", prompt="abcd", images=(ref,))
    # When its request is built
    request = build_request(task, ImageEncoder(tmp_path), model="m")
    # Then the image is guessed as 765 tokens
    assert request.prompt_tokens == 4 + 1 + 765


def test_a_text_only_request_charges_the_prompt_plus_max_tokens_and_the_task_max_tokens_wins(
    tmp_path: Path,
) -> None:
    # Given a text task with 17 characters of prompt and its own max_tokens of 50
    task = Task(id="x", prompt="a" * 17, max_tokens=50)
    # When its request is built with a run max_tokens of 100
    request = build_request(task, ImageEncoder(tmp_path), model="m", max_tokens=100)
    # Then the prompt is 4 + 5 tokens and the charge uses the task's 50
    assert request.prompt_tokens == 9
    assert request.max_tokens == 50
    assert request.charge == 59
    # And without any max_tokens the charge is the prompt plus 256
    plain = build_request(Task(id="y", prompt="a" * 17), ImageEncoder(tmp_path), model="m")
    assert plain.charge == 9 + 256


# --- per-model image rules ------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "detail", "tokens"), [
    ("gpt-4o", "high", 765),                      # 85 + 4 x 170
    ("gpt-4o-2024-08-06", "high", 765),           # a snapshot bills as its model
    ("gpt-4o-mini", "high", 2833 + 4 * 5667),     # OpenAI: 2833 base, 5667 a tile
    ("gpt-4o-mini-2024-07-18", "low", 2833),
    ("o1", "high", 75 + 4 * 150),
    ("o3-2025-04-16", "low", 75),
    ("gpt-5", "high", 70 + 4 * 140),
    ("openai/gpt-4o-mini", "high", 2833 + 4 * 5667),  # a proxy's provider/model name
    ("gpt-4.1-mini", "high", math.ceil(1024 * 1.62)),  # 32x32 patches: 1024 of them, x 1.62
    ("gpt-4.1-mini", "low", math.ceil(1024 * 1.62)),   # detail does not change a patch count
    ("o4-mini", "auto", math.ceil(1024 * 1.72)),
    ("qwen2.5-vl-72b-instruct", "high", 765),     # unknown: gpt-4o's rule
])
def test_a_1024_square_image_costs_what_each_models_published_rule_says(model: str, detail: str,
                                                                         tokens: int) -> None:
    # Given a 1024x1024 image, a model and a detail
    # When its cost is estimated
    # Then it is that model's published rule (tiles or patches), gpt-4o's for a model the table
    # lacks
    assert image_tokens(1024, 1024, detail, model) == tokens


def test_a_patch_models_large_image_is_capped_at_1536_patches() -> None:
    # Given images far beyond 1536 patches, and OpenAI's example of 1800x2400 for gpt-4.1-mini
    # When their cost is estimated
    # Then the patches are scaled to fit 1536 (OpenAI: 1800x2400 becomes 1452 patches)
    assert image_tokens(1800, 2400, "high", "gpt-4.1-nano") == math.ceil(1452 * 2.46)
    assert image_tokens(8000, 8000, "high", "gpt-4.1-mini") <= math.ceil(1536 * 1.62)


def test_image_rule_matches_the_longest_model_prefix() -> None:
    # Given models whose names share prefixes
    # Then each gets its own rule, not that of a shorter name
    assert image_rule("gpt-4o-mini") != image_rule("gpt-4o")
    assert image_rule("gpt-4.1-nano-2025-04-14") == image_rule("gpt-4.1-nano")
    assert image_rule("gpt-4omni") is None and image_rule(None) is None
