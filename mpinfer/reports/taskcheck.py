"""How a dry run checks one pending task: its request built as a worker would, its images judged.

``TaskChecker`` builds the request with the worker's own ``task_request`` (a Batch body as it is
sent) and an ``ImageEncoder`` that reads each image file once for the whole plan, however many tasks
use it, and remembers what it showed (MAX_FILES_REMEMBERED files, a few hundred bytes each). A data:
URL in the input is checked from its bytes; a remote image is never fetched. What a real run would
fail a task for comes back as its message.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..api.messages import EncodedImage, ImageEncoder, Request, is_remote, sniff_mime, task_request
from ..api.tokens import image_size
from ..config import RequestSettings
from ..errors import ImageError
from ..inputs.tasks import Task

# Facts about this many image files are remembered (a few hundred bytes each); past that the oldest
# are forgotten and judged again if a later task uses them.
MAX_FILES_REMEMBERED = 65536
_SHORT_REF = 40
_ALREADY_READ = "data:,already-read-by-this-dry-run"  # never sent: a dry run sends nothing


@dataclass(frozen=True)
class CheckedImage:
    """One image reference of a task, checked: its pixel size (None for a remote URL) and bytes."""

    kind: str  # "local", "inline" or "remote"
    size: tuple[int, int] | None
    bytes: int
    path: str


@dataclass(frozen=True)
class _FileFacts:
    """What the one read of an image file showed: its bytes, its pixel size, or why a task fails."""

    bytes: int
    size: tuple[int, int] | None
    problem: str | None = None


def _size_message(ref: str, where: str) -> str:
    return f"image {ref!r}: cannot read its size: corrupt or truncated? ({where})"


def _short(ref: str) -> str:
    return ref if len(ref) <= _SHORT_REF else ref[:_SHORT_REF] + "..."


def _is_web(ref: str) -> bool:
    return ref[:8].lower().startswith(("http://", "https://"))


class _ReadOnceEncoder(ImageEncoder):
    """The worker's ImageEncoder, made to read each image file once for the whole plan.

    The first use of a file goes through the real encoder (the same resolution, MIME sniffing
    and errors as a worker), and what it showed is remembered by path, mtime and size. A
    later use of that file gets the remembered verdict: its ImageError again, or a stand-in
    URL, since a dry run sends nothing and needs only the file's size. The encoder's own
    cache of data URLs would not do: it drops files over 16 MiB and forgets the rest past 64
    MiB, and it never holds a file that failed.
    """

    def __init__(self, root: Path) -> None:
        # the facts below replace the cache, at a fraction of its memory
        super().__init__(root, cache_bytes=0)
        self.files: OrderedDict[tuple[str, int, int], _FileFacts] = OrderedDict()
        # (path, facts) of each local image of the task being built
        self.used: list[tuple[str, _FileFacts]] = []

    def _file_key(self, ref: str) -> tuple[str, int, int] | None:
        path = self.resolve(ref)  # as the workers resolve it; a stat reads no image bytes
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return path, stat.st_mtime_ns, stat.st_size

    def encode(self, ref: str) -> EncodedImage:
        """As ImageEncoder.encode, reading each file once; a size that cannot be read fails too."""
        if is_remote(ref):
            return super().encode(ref)
        key = self._file_key(ref)
        if key is None:
            # raises the worker's ImageError for a missing file, reading nothing
            return super().encode(ref)
        facts = self.files.get(key)
        if facts is None:
            try:
                image = super().encode(ref)
            except ImageError as exc:
                facts = _FileFacts(key[2], None, str(exc))
            else:
                facts = _FileFacts(key[2], image.size,
                                   None if image.size else _size_message(ref, key[0]))
            self.files[key] = facts
            while len(self.files) > MAX_FILES_REMEMBERED:
                self.files.popitem(last=False)
        else:
            self.files.move_to_end(key)
        if facts.problem is not None:
            raise ImageError(facts.problem)
        self.used.append((key[0], facts))
        return EncodedImage(_ALREADY_READ, facts.size, facts.bytes)


class TaskChecker:
    """Builds each pending task's request as a worker would and judges its images."""

    def __init__(self, settings: RequestSettings) -> None:
        self.settings = settings
        self.encoder = _ReadOnceEncoder(settings.image_root)

    def check(self, task: Task, model: str) -> tuple[Request, list[CheckedImage]] | str:
        """The request and its checked images, or the problem that would fail the task."""
        self.encoder.used.clear()
        try:
            request = task_request(self.settings, self.encoder, task,
                                   self.settings.models.index(model))
        except ImageError as exc:
            return str(exc)
        local = iter(self.encoder.used)
        images: list[CheckedImage] = []
        for ref in task.images:
            if _is_web(ref):
                images.append(CheckedImage("remote", None, 0, ref))
            elif is_remote(ref):
                inline = self._inline(ref, task.id)
                if isinstance(inline, str):
                    return inline
                images.append(inline)
            else:
                path, facts = next(local)
                images.append(CheckedImage("local", facts.size, facts.bytes, path))
        return request, images

    @staticmethod
    def _inline(ref: str, task_id: str) -> CheckedImage | str:
        """A data: URL from the input, sent as it is by a worker, so checked here from its bytes."""
        header, _, payload = ref.partition(",")
        short = _short(ref)
        if not header.lower().endswith(";base64"):
            return f"image {short!r}: a data: URL that is not base64"
        try:
            data = base64.b64decode(payload)
        except (binascii.Error, ValueError):
            return f"image {short!r}: a data: URL whose base64 does not decode"
        if sniff_mime(data[:16]) is None:
            return f"image {short!r}: not a PNG, JPEG, GIF or WEBP image"
        size = image_size(data)
        if size is None:
            return _size_message(short, f"data: URL of task {task_id}")
        return CheckedImage("inline", size, len(data), f"data: URL of task {task_id}")
