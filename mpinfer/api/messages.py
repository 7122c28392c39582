"""Task -> chat.completions request (``task_request``: as the run's settings ask); local images and
a Parquet input's image cells -> base64 data URLs, shrunk first when --image-max-side asks.

Runs in the worker, at send time: the parent never reads image bytes. An image that several tasks
share is encoded once per worker (a small LRU bounded in bytes); a Parquet cell is read back from
its row group (inputs/parquet.py), the last row group read kept.
"""

from __future__ import annotations

import base64
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..config import Api, RequestSettings
from ..errors import ImageError, ImagesTooLarge
from ..inputs import RowGroupReader, Task, has_system, is_cell_ref, read_cell
from .responses import ApiPath, responses_body
from .shrink import shrink
from .tokens import (
    DEFAULT_COMPLETION_TOKENS,
    TOKENS_PER_MESSAGE,
    image_size,
    image_tokens,
    text_tokens,
)

# What the OpenAI vision models accept;
# detected from the bytes, since names lie (a .png that is a JPEG).
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
)
_HEAD_BYTES = 16
# base64 characters for the first 64 KiB of an inline image: where its size is
_DATA_URL_HEAD = 87384
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


def sniff_mime(head: bytes) -> str | None:
    """The image MIME type that the first bytes of a file show,
    or None when they show no supported one."""
    for signature, offset, mime in _SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            if mime == "image/webp" and not head.startswith(b"RIFF"):
                continue
            return mime
    return None


def is_remote(ref: str) -> bool:
    """http(s) and data: URLs go to the API as they are."""
    lowered = ref[:8].lower()
    return lowered.startswith(("http://", "https://", "data:"))


@dataclass(frozen=True)
class EncodedImage:
    """An image ready for the API,
    and its pixel size when its bytes showed it (for the token estimate)."""

    url: str
    size: tuple[int, int] | None
    bytes: int = 0  # the image data it carries inline (a remote URL: 0, the server fetches it)

    def tokens(self, detail: str = "auto", model: str | None = None) -> int:
        """What the image costs ``model`` in prompt tokens
        (tokens.image_tokens; an unknown size is guessed)."""
        width, height = self.size or (None, None)
        return image_tokens(width, height, detail=detail, model=model)


def _data_url_bytes(url: str) -> int:
    """The bytes a base64 data URL's payload decodes to (counted from its length, not decoded)."""
    return (len(url) - url.find(",") - 1) * 3 // 4


def _data_url_size(url: str) -> tuple[int, int] | None:
    """The pixel size of an image given inline as a base64 data URL (only its head is decoded)."""
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        return None
    head = payload[:_DATA_URL_HEAD]
    try:
        return image_size(base64.b64decode(head[:len(head) - len(head) % 4]))
    except ValueError:
        return None


class ImageEncoder:
    """Turns image references into URLs for the API,
    caching local files' data URLs by path and mtime."""

    def __init__(self, root: Path, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._root = str(root)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, int, int, int], EncodedImage] = OrderedDict()
        self._cached = 0
        self._cells = RowGroupReader()

    def url(self, ref: str) -> str:
        """The URL the API gets for an image reference: a data URL for a local file."""
        return self.encode(ref).url

    def resolve(self, ref: str) -> str:
        """Where a local image reference points: relative paths resolve against the root. (String
        operations: pathlib's showed in a worker's profile; bench/README.md.)"""
        path = os.path.expanduser(ref)
        return path if os.path.isabs(path) else os.path.join(self._root, path)

    def encode(self, ref: str, max_side: int | None = None) -> EncodedImage:
        """An image reference ready for the API: a data or remote URL as it is, a local file read
        and encoded once (then from the cache while its mtime and size hold), a Parquet cell read
        back from its row group; the last two shrunk to ``max_side`` pixels when given."""
        if ref[:5].lower() == "data:":
            return EncodedImage(ref, _data_url_size(ref), _data_url_bytes(ref))
        if is_remote(ref):
            return EncodedImage(ref, None)
        if is_cell_ref(ref):
            data, named = read_cell(self._cells, ref)
            if data is None:
                return self.encode(str(named), max_side)  # the struct's path: a local file
            return _from_bytes(ref, data, max_side)
        path = self.resolve(ref)
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise ImageError(f"image {ref!r}: {exc.strerror or exc} ({path}){self._hint(ref)}") \
                from None
        key = (path, stat.st_mtime_ns, stat.st_size, max_side or 0)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        image = self._encode(ref, path, max_side)
        self._remember(key, image)
        return image

    def _hint(self, ref: str) -> str:
        """For a relative path not found: the folder it was resolved against, and the way out."""
        if os.path.isabs(os.path.expanduser(ref)):
            return ""
        return (f"; relative image paths are resolved against {os.path.abspath(self._root)} (the "
                "input's folder unless set): if they are relative to another folder, such as "
                "the project's, set --image-root to it")

    def _encode(self, ref: str, path: str, max_side: int | None) -> EncodedImage:
        try:
            data = Path(path).read_bytes()  # only on a miss: a cached image costs a stat
        except OSError as exc:
            raise ImageError(f"image {ref!r}: {exc.strerror or exc} ({path})") from None
        return _from_bytes(ref, data, max_side, f" ({path})")

    def _remember(self, key: tuple[str, int, int, int], image: EncodedImage) -> None:
        # A file larger than a quarter of the cache is encoded anew each time: memory stays bounded.
        if len(image.url) > self.cache_bytes // 4:
            return
        self._cache[key] = image
        self._cached += len(image.url)
        while self._cached > self.cache_bytes and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old.url)


def _from_bytes(ref: str, data: bytes, max_side: int | None, where: str = "") -> EncodedImage:
    """An image's bytes as a data URL whose MIME type they show, shrunk first when asked."""
    mime = sniff_mime(data[:_HEAD_BYTES])
    if mime is None:
        raise ImageError(f"image {ref!r}: not a PNG, JPEG, GIF or WEBP image{where}")
    if max_side is not None:
        try:
            data, mime = shrink(data, mime, max_side)
        except ImageError as exc:
            raise ImageError(f"image {ref!r}: {exc}{where}") from None
    return EncodedImage(f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}",
                        image_size(data), len(data))


def _text_tokens_of(messages: list[Any]) -> int:
    total = 0
    for message in messages:
        total += TOKENS_PER_MESSAGE
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += text_tokens(content)
        elif isinstance(content, list):
            total += sum(text_tokens(str(part.get("text", ""))) for part in content
                         if isinstance(part, dict) and part.get("type") == "text")
    return total


def build_messages(task: Task, encoder: ImageEncoder, system_prompt: str | None = None,
                   images_out: list[tuple[int, int]] | None = None, model: str | None = None,
                   detail: str | None = None, max_side: int | None = None,
                   ) -> list[dict[str, Any]]:
    """The chat messages for one task:
    an optional system message, then the text and images as one turn.

    ``images_out`` receives each image's estimated token cost for ``model`` (for the rate limiter)
    and its bytes (for the provider's image limit), as sent: shrunk to ``max_side`` and at
    ``detail`` (--image-detail; a chat row's own detail wins).
    """
    messages: list[dict[str, Any]] = []
    system = task.system if task.system is not None else system_prompt
    if task.messages is not None:
        if system and not has_system(task.messages):
            messages.append({"role": "system", "content": system})
        return messages + [_with_images(message, encoder, images_out, model, detail, max_side)
                           for message in task.messages]
    if system:
        messages.append({"role": "system", "content": system})
    if not task.images:
        messages.append({"role": "user", "content": task.prompt})
        return messages
    parts: list[dict[str, Any]] = []
    if task.prompt:
        parts.append({"type": "text", "text": task.prompt})
    for ref in task.images:
        image = encoder.encode(ref, max_side)
        if images_out is not None:
            images_out.append((image.tokens(detail or "auto", model), image.bytes))
        spec = {"url": image.url, "detail": detail} if detail else {"url": image.url}
        parts.append({"type": "image_url", "image_url": spec})
    messages.append({"role": "user", "content": parts})
    return messages


def _with_images(message: dict[str, Any], encoder: ImageEncoder,
                 images_out: list[tuple[int, int]] | None, model: str | None,
                 detail: str | None, max_side: int | None) -> dict[str, Any]:
    """A chat row's message as sent:
    its image parts' local paths become data URLs (a copy: the task is left as it was read)."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts: list[Any] = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            spec = part["image_url"]
            image = encoder.encode(spec["url"], max_side)
            own = spec.get("detail") or detail
            if images_out is not None:
                images_out.append((image.tokens(str(own or "auto"), model), image.bytes))
            sent = {**spec, "url": image.url, **({"detail": own} if own else {})}
            part = {**part, "image_url": sent}
        parts.append(part)
    return {**message, "content": parts}


@dataclass(frozen=True)
class Request:
    """A request ready to send, with what the rate limiter must charge for it."""

    kwargs: dict[str, Any]
    prompt_tokens: int
    max_tokens: int | None
    image_bytes: int = 0  # inline image data, against the provider's per-request limit
    path: ApiPath = ApiPath.CHAT  # which API it goes to

    def as_responses(self) -> Request:
        """The same request for the Responses API (``--api responses``)."""
        return Request(responses_body(self.kwargs), self.prompt_tokens, self.max_tokens,
                       self.image_bytes, ApiPath.RESPONSES)

    def check_image_limit(self, limit_mb: float | None) -> None:
        """Raise ImagesTooLarge when the images pass ``limit_mb`` MB
        (10^6 bytes), the provider's limit."""
        if limit_mb is None:
            return
        size = self.image_bytes
        if size > limit_mb * 1e6:
            raise ImagesTooLarge(f"the request's images total {size / 1e6:.1f} MB, over the "
                                 f"{limit_mb:g} MB a request may carry (--max-image-mb): "
                                 "send fewer or smaller images")

    @property
    def model(self) -> str:
        """The model the request names (its body's ``model``)."""
        return str(self.kwargs["model"])

    @property
    def charge(self) -> int:
        """Tokens a server counts against its limit up front:
        the prompt plus the longest answer allowed."""
        if self.path is ApiPath.EMBEDDINGS:
            return self.prompt_tokens  # an embedding has no answer to allow for
        return self.prompt_tokens + (self.max_tokens or DEFAULT_COMPLETION_TOKENS)


def build_request(
    task: Task,
    encoder: ImageEncoder,
    *,
    model: str,
    system_prompt: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    extra_body: dict[str, Any] | None = None,
    image_detail: str | None = None,
    image_max_side: int | None = None,
) -> Request:
    """The request for one task and ``model`` (``RequestSettings.requested`` chose it); a task's
    own system, temperature and max_tokens win over the run's."""
    images: list[tuple[int, int]] = []
    messages = build_messages(task, encoder, system_prompt, images, model, image_detail,
                              image_max_side)
    request: dict[str, Any] = {"model": model, "messages": messages}
    temperature = task.temperature if task.temperature is not None else temperature
    if temperature is not None:
        request["temperature"] = temperature
    max_tokens = task.max_tokens if task.max_tokens is not None else max_tokens
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    if extra_body:
        request["extra_body"] = extra_body
    return Request(request, _text_tokens_of(messages) + sum(t for t, _ in images), max_tokens,
                   sum(b for _, b in images))


def build_body_request(body: dict[str, Any], model: str | None = None,
                       path: ApiPath = ApiPath.CHAT) -> Request:
    """A Batch API request body, sent as it is (its model replaced only when ``model`` is given).

    The SDK takes the model and messages as arguments and everything else as ``extra_body``, which
    it merges into the JSON unchanged: no field is dropped or renamed on the way.
    """
    rest = dict(body)
    chosen = model or rest.pop("model")
    rest.pop("model", None)
    if path is not ApiPath.CHAT:
        # Responses and embeddings bodies have no messages: their input is estimated as text.
        limit = rest.get("max_output_tokens")
        text = rest.get("input")
        tokens = text_tokens(text if isinstance(text, str) else orjson.dumps(text).decode())
        return Request({"model": chosen, **rest}, tokens, limit if isinstance(limit, int) else None,
                       0, path)
    messages = rest.pop("messages")
    kwargs: dict[str, Any] = {"model": chosen, "messages": messages}
    if rest:
        kwargs["extra_body"] = rest
    images = data = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url")
                image = image if isinstance(image, dict) else {}
                url = image.get("url")
                url = url if isinstance(url, str) else ""
                inline = url[:5].lower() == "data:"
                size = _data_url_size(url) if inline else None
                width, height = size or (None, None)
                images += image_tokens(width, height, detail=image.get("detail", "auto"),
                                       model=chosen)
                data += _data_url_bytes(url) if inline else 0
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    return Request(kwargs, _text_tokens_of(messages) + images,
                   max_tokens if isinstance(max_tokens, int) else None, data)


def _at(values: tuple[Any, ...], index: int) -> Any:
    return values[index] if index < len(values) else None


def task_request(settings: RequestSettings, encoder: ImageEncoder, task: Task,
                 model_index: int) -> Request:
    """The request for ``task`` and the run's model at ``model_index`` (its place in the run's
    models), online or in a Batch API file alike (the dry run checks it as the worker builds it)."""
    asked = settings.requested(task.model, task.body is not None, model_index)
    if task.body is not None:
        # A Batch API body goes as it is, but for the model the rule settles.
        path = ApiPath.of_url(task.url or "") or ApiPath.CHAT
        request = build_body_request(task.body, asked, path)
    else:
        request = build_request(task, encoder, model=asked,
                                system_prompt=settings.system_prompt,
                                temperature=settings.temperature, max_tokens=settings.max_tokens,
                                extra_body=settings.extra_for(model_index),
                                image_detail=_at(settings.image_detail, model_index),
                                image_max_side=_at(settings.image_max_side, model_index))
        response_format = settings.response_format
        if response_format is not None:  # (--api responses with a schema is refused at the start)
            request.kwargs["response_format"] = response_format
        if settings.api is Api.RESPONSES:
            request = request.as_responses()
    # Over the provider's limit the server answers 400 after the upload:
    # a per-task failure found here, free.
    request.check_image_limit(settings.max_image_mb[model_index])
    return request
