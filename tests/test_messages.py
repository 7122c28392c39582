"""Task -> chat request: images sniffed from their bytes and encoded once; task settings win."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from mpinfer.api.messages import (
    ImageEncoder,
    build_messages,
    build_request,
    sniff_mime,
    task_request,
)
from mpinfer.config import Api, RequestSettings
from mpinfer.demo import png_bytes
from mpinfer.errors import ImageError
from mpinfer.inputs.tasks import Task

JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 32
GIF87_HEAD = b"GIF87a\x01\x00\x01\x00\x80\x00\x00" + b"\x00" * 16
GIF89_HEAD = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\x00" * 16
WEBP_HEAD = b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00" + b"\x00" * 24


def decode_data_url(url: str) -> tuple[str, bytes]:
    header, _, data = url.partition(",")
    assert header.startswith("data:") and header.endswith(";base64"), url[:40]
    return header[len("data:"):-len(";base64")], base64.b64decode(data)


# --- MIME sniffing --------------------------------------------------------------------------------


def test_a_png_saved_as_jpg_is_sent_as_png(tmp_path: Path) -> None:
    # Given PNG bytes in a file named .jpg
    data = png_bytes(8, 6, (10, 20, 30), (255, 255, 255))
    (tmp_path / "photo.jpg").write_bytes(data)
    encoder = ImageEncoder(tmp_path)
    # When it is encoded
    mime, payload = decode_data_url(encoder.url("photo.jpg"))
    # Then the type comes from the bytes, and the payload is the file
    assert mime == "image/png"
    assert payload == data


@pytest.mark.parametrize(("name", "head", "mime"), [
    ("a.png", JPEG_HEAD, "image/jpeg"),
    ("b.png", GIF87_HEAD, "image/gif"),
    ("c.jpg", GIF89_HEAD, "image/gif"),
    ("d.gif", WEBP_HEAD, "image/webp"),
])
def test_jpeg_gif_and_webp_are_recognised_by_their_bytes(tmp_path: Path, name: str, head: bytes,
                                                         mime: str) -> None:
    # Given a file whose header is of one type and whose name says another
    (tmp_path / name).write_bytes(head)
    # When it is encoded
    found, payload = decode_data_url(ImageEncoder(tmp_path).url(name))
    # Then the header decides
    assert found == mime
    assert payload == head


def test_riff_files_that_are_not_webp_are_not_images() -> None:
    # Given the head of a WAVE file, and WEBP at offset 8 without RIFF
    wave = b"RIFF\x24\x00\x00\x00WAVEfmt "
    fake = b"XXXX\x24\x00\x00\x00WEBPVP8 "
    # When they are sniffed
    # Then neither is an image
    assert sniff_mime(wave) is None
    assert sniff_mime(fake) is None
    assert sniff_mime(WEBP_HEAD[:16]) == "image/webp"


def test_a_file_that_is_not_an_image_raises_image_error_naming_it(tmp_path: Path) -> None:
    # Given a text file named like a PNG
    (tmp_path / "notes.png").write_bytes(b"just some text, not an image at all")
    # When it is encoded
    with pytest.raises(ImageError) as caught:
        ImageEncoder(tmp_path).url("notes.png")
    # Then the error names the reference and the full path
    message = str(caught.value)
    assert "'notes.png'" in message
    assert str(tmp_path / "notes.png") in message
    assert "not a PNG, JPEG, GIF or WEBP image" in message


def test_a_missing_image_raises_image_error_naming_it(tmp_path: Path) -> None:
    # Given a reference to a file that does not exist
    encoder = ImageEncoder(tmp_path)
    # When it is encoded
    with pytest.raises(ImageError) as caught:
        encoder.url("img/missing.png")
    # Then the error names the reference, the reason and the resolved path
    message = str(caught.value)
    assert "'img/missing.png'" in message
    assert "No such file" in message
    assert str(tmp_path / "img" / "missing.png") in message


def test_an_empty_file_is_not_an_image(tmp_path: Path) -> None:
    # Given an empty file
    (tmp_path / "empty.png").write_bytes(b"")
    # When it is encoded
    # Then it is refused
    with pytest.raises(ImageError, match="not a PNG"):
        ImageEncoder(tmp_path).url("empty.png")


# --- references -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", [
    "http://example.invalid/a.png",
    "https://example.invalid/b.jpg?x=1",
    "HTTPS://EXAMPLE.INVALID/C.JPG",
    "data:image/png;base64,iVBORw0KGgo=",
])
def test_remote_and_data_urls_pass_through_untouched(tmp_path: Path, ref: str) -> None:
    # Given a URL (no such local file exists)
    encoder = ImageEncoder(tmp_path)
    # When it is turned into a URL for the API
    url = encoder.url(ref)
    # Then it is the very same text
    assert url == ref


def test_relative_paths_resolve_against_the_root(tmp_path: Path) -> None:
    # Given two different PNGs: one under the root, one with the same relative name under the
    # cwd-like folder
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    in_root = png_bytes(4, 4, (1, 2, 3), (4, 5, 6))
    (root / "img" / "x.png").write_bytes(in_root)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.png").write_bytes(png_bytes(5, 5, (9, 9, 9), (8, 8, 8)))
    # When the relative reference is encoded with the root
    _, payload = decode_data_url(ImageEncoder(root).url("img/x.png"))
    # Then the file under the root is used
    assert payload == in_root


def test_absolute_paths_ignore_the_root(tmp_path: Path) -> None:
    # Given a PNG outside the encoder's root
    data = png_bytes(3, 3, (1, 1, 1), (2, 2, 2))
    path = tmp_path / "abs.png"
    path.write_bytes(data)
    # When it is encoded by its absolute path
    _, payload = decode_data_url(ImageEncoder(tmp_path / "elsewhere").url(str(path)))
    # Then that file is used
    assert payload == data


# --- the cache ------------------------------------------------------------------------------------


def test_a_second_call_for_the_same_file_returns_the_cached_url(tmp_path: Path) -> None:
    # Given an encoded image
    (tmp_path / "a.png").write_bytes(png_bytes(6, 6, (1, 2, 3), (3, 2, 1)))
    encoder = ImageEncoder(tmp_path)
    first = encoder.url("a.png")
    # When it is asked for again
    second = encoder.url("a.png")
    # Then the very same string object comes back (no second read or encode)
    assert second is first


def test_a_modified_file_of_another_size_is_encoded_again(tmp_path: Path) -> None:
    # Given an encoded image
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(6, 6, (1, 2, 3), (3, 2, 1)))
    encoder = ImageEncoder(tmp_path)
    first = encoder.url("a.png")
    # When the file is replaced by a bigger image
    bigger = png_bytes(20, 20, (7, 7, 7), (0, 0, 0))
    path.write_bytes(bigger)
    second = encoder.url("a.png")
    # Then the new bytes are sent
    assert second != first
    assert decode_data_url(second)[1] == bigger


def test_a_modified_file_of_the_same_size_with_a_new_mtime_is_encoded_again(tmp_path: Path) -> None:
    # Given an encoded image
    path = tmp_path / "a.png"
    old = png_bytes(6, 6, (1, 2, 3), (3, 2, 1))
    path.write_bytes(old)
    before = os.stat(path)
    encoder = ImageEncoder(tmp_path)
    first = encoder.url("a.png")
    # When it is rewritten with other bytes of the same size and a different mtime
    new = png_bytes(6, 6, (200, 2, 3), (3, 2, 100))
    assert len(new) == len(old) and new != old
    path.write_bytes(new)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 5_000_000_000))
    second = encoder.url("a.png")
    # Then the new bytes are sent
    assert decode_data_url(second)[1] == new
    assert second != first


def test_an_image_too_big_for_the_cache_is_encoded_each_time(tmp_path: Path) -> None:
    # Given an encoder whose cache is smaller than four times the image's URL
    (tmp_path / "a.png").write_bytes(png_bytes(6, 6, (1, 2, 3), (3, 2, 1)))
    encoder = ImageEncoder(tmp_path, cache_bytes=64)
    # When it is asked for twice
    first = encoder.url("a.png")
    second = encoder.url("a.png")
    # Then both are right but the second is a fresh encoding
    assert first == second
    assert second is not first


def test_the_cache_evicts_the_least_recently_used_image(tmp_path: Path) -> None:
    # Given five same-size PNG files and a cache that holds four of their URLs (one URL may take at
    # most a quarter)
    names = "abcde"
    for n, name in enumerate(names):
        (tmp_path / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([n + 1]) * 90)
    sizes = {len(ImageEncoder(tmp_path).url(f"{name}.png")) for name in names}
    assert len(sizes) == 1
    size = sizes.pop()
    encoder = ImageEncoder(tmp_path, cache_bytes=4 * size + size // 2)
    first = {name: encoder.url(f"{name}.png") for name in "abcd"}
    # When a is used again (so b is the oldest) and e is added
    assert encoder.url("a.png") is first["a"]
    encoder.url("e.png")
    # Then a, c and d are still cached and b was evicted
    assert encoder.url("a.png") is first["a"]
    assert encoder.url("c.png") is first["c"]
    assert encoder.url("d.png") is first["d"]
    again = encoder.url("b.png")
    assert again == first["b"] and again is not first["b"]


# --- messages and requests ------------------------------------------------------------------------


def test_a_text_only_task_sends_plain_string_content(tmp_path: Path) -> None:
    # Given a task with no images
    task = Task(id="a", prompt="What is 2 + 2?")
    # When its messages are built
    messages = build_messages(task, ImageEncoder(tmp_path))
    # Then there is one user message whose content is the prompt itself
    assert messages == [{"role": "user", "content": "What is 2 + 2?"}]


def test_a_task_with_images_sends_text_then_each_image(tmp_path: Path) -> None:
    # Given a task with a local image and a remote one
    data = png_bytes(4, 4, (1, 2, 3), (4, 5, 6))
    (tmp_path / "a.png").write_bytes(data)
    task = Task(id="a", prompt="Compare", images=("a.png", "https://example.invalid/b.png"))
    # When its messages are built
    (message,) = build_messages(task, ImageEncoder(tmp_path))
    # Then the content is a list: the text part, then the images in order
    assert message["role"] == "user"
    parts = message["content"]
    assert parts[0] == {"type": "text", "text": "Compare"}
    assert parts[1]["type"] == "image_url"
    assert (parts[1]["image_url"]["url"]
            == "data:image/png;base64," + base64.b64encode(data).decode())
    assert parts[2] == {"type": "image_url", "image_url": {"url": "https://example.invalid/b.png"}}
    assert len(parts) == 3


def test_an_image_only_task_sends_no_empty_text_part(tmp_path: Path) -> None:
    # Given a task with an image and an empty prompt
    task = Task(id="a", prompt="", images=("https://example.invalid/b.png",))
    # When its messages are built
    (message,) = build_messages(task, ImageEncoder(tmp_path))
    # Then only the image part is sent
    assert message["content"] == [{"type": "image_url",
                                   "image_url": {"url": "https://example.invalid/b.png"}}]


def test_the_system_prompt_of_the_task_beats_the_runs(tmp_path: Path) -> None:
    # Given a task with its own system message and a run with another
    task = Task(id="a", prompt="hi", system="task system")
    # When its messages are built
    messages = build_messages(task, ImageEncoder(tmp_path), system_prompt="run system")
    # Then the task's comes first and the run's is not sent
    assert messages == [{"role": "system", "content": "task system"},
                        {"role": "user", "content": "hi"}]


def test_the_runs_system_prompt_is_used_when_the_task_has_none(tmp_path: Path) -> None:
    # Given a task without a system message
    task = Task(id="a", prompt="hi")
    # When its messages are built with and without a run system prompt
    with_run = build_messages(task, ImageEncoder(tmp_path), system_prompt="run system")
    without = build_messages(task, ImageEncoder(tmp_path))
    # Then the run's is used, and none is sent when neither has one
    assert with_run == [{"role": "system", "content": "run system"},
                        {"role": "user", "content": "hi"}]
    assert without == [{"role": "user", "content": "hi"}]


def test_build_request_task_settings_win_over_run_settings(tmp_path: Path) -> None:
    # Given a task with its own model, temperature 0 and max_tokens
    task = Task(id="a", prompt="hi", model="gpt-4o", temperature=0.0, max_tokens=5)
    # When a request is built with other run settings, per-task models asked for (--model-key)
    settings = RequestSettings(("gpt-4o-mini",), True, Api.CHAT, tmp_path, (50.0,),
                               temperature=0.9, max_tokens=100, per_task=True)
    request = task_request(settings, ImageEncoder(tmp_path), task, 0).kwargs
    # Then the task's settings are sent (a temperature of 0 included)
    assert request["model"] == "gpt-4o"
    assert request["temperature"] == 0.0
    assert request["max_tokens"] == 5


def test_build_request_uses_run_settings_when_the_task_has_none(tmp_path: Path) -> None:
    # Given a task with no settings of its own
    task = Task(id="a", prompt="hi")
    # When a request is built with run settings
    request = build_request(task, ImageEncoder(tmp_path), model="gpt-4o-mini", system_prompt="sys",
                            temperature=0.9, max_tokens=100).kwargs
    # Then the run's settings are sent
    assert request == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
        "temperature": 0.9,
        "max_tokens": 100,
    }


def test_build_request_leaves_out_settings_nobody_set(tmp_path: Path) -> None:
    # Given a task and run with no temperature, max_tokens or extra body
    task = Task(id="a", prompt="hi")
    # When a request is built
    request = build_request(task, ImageEncoder(tmp_path), model="m").kwargs
    # Then only model and messages are sent (the server's defaults apply)
    assert request == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_build_request_passes_extra_body_through(tmp_path: Path) -> None:
    # Given a run extra body
    extra = {"top_p": 0.5, "metadata": {"batch": "7"}}
    # When a request is built
    request = build_request(Task(id="a", prompt="hi"), ImageEncoder(tmp_path), model="m",
                            extra_body=extra).kwargs
    # Then it is passed as the SDK's extra_body, unchanged
    assert request["extra_body"] == {"top_p": 0.5, "metadata": {"batch": "7"}}


def test_build_request_raises_image_error_for_a_missing_image(tmp_path: Path) -> None:
    # Given a task whose image is missing
    task = Task(id="a", prompt="hi", images=("gone.png",))
    # When a request is built
    # Then it raises ImageError (a per-task failure) naming the image
    with pytest.raises(ImageError, match=r"'gone\.png'"):
        build_request(task, ImageEncoder(tmp_path), model="m")
