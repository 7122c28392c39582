"""The mock's Files API: uploads (multipart), metadata, content, the list and deletes.

Modelled on OpenAI's ``/v1/files``: an upload is ``multipart/form-data`` with a ``purpose`` field
and a ``file`` part; the answer is a file object (``id``, ``object: "file"``, ``bytes``,
``created_at``, ``filename``, ``purpose``, ``status``). A Batch API input file may be at most 200 MB
(OpenAI's documented limit); larger uploads are refused with 400, as the real API refuses them.
Batches add their output and error files here with purpose ``batch_output``. ``DELETE
/v1/files/{id}`` answers ``{"id", "object": "file", "deleted": true}``, or 404 for an id it does not
hold; the ids deleted are remembered, so a test can see that a client cleaned up after itself.
Everything is kept in memory: the mock serves tests.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass

from .chat import ApiError

BATCH_FILE_MAX_BYTES = 200 * 1024 * 1024
"""The largest Batch API input file OpenAI accepts (200 MB)."""

_PURPOSES = frozenset({"batch", "fine-tune", "assistants", "vision", "user_data", "evals"})
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_DISPOSITION = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class StoredFile:
    """One file held by the mock."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_dict(self) -> dict[str, object]:
        """The file object as OpenAI returns it."""
        return {"id": self.id, "object": "file", "bytes": len(self.data),
                "created_at": self.created_at, "filename": self.filename, "purpose": self.purpose,
                "status": "processed", "expires_at": None, "status_details": None}


def _parts(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename or None, content)."""
    found = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith("multipart/form-data") or found is None:
        raise ApiError(400, "Expected a multipart/form-data body with a boundary.")
    delimiter = b"--" + found.group(1).encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ApiError(400, "Malformed multipart body: a part has no header end.")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        params: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                params = dict(_DISPOSITION.findall(value))
        if "name" in params:
            fields[params["name"]] = (params.get("filename"), content)
    return fields


class FileStore:
    """The files uploaded to, or written by, one mock server."""

    def __init__(self) -> None:
        self.files: dict[str, StoredFile] = {}
        self.deleted: list[str] = []  # in the order deleted
        self._ids = itertools.count(1)

    def add(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        """Store an upload and return it with a new id, as ``POST /v1/files`` does."""
        stored = StoredFile(f"file-mock{next(self._ids):06d}", filename, purpose, data,
                            int(time.time()))
        self.files[stored.id] = stored
        return stored

    def upload(self, content_type: str, body: bytes) -> StoredFile:
        """Store the file of one ``POST /v1/files``; ApiError (400) for what OpenAI would refuse."""
        fields = _parts(content_type, body)
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace").strip()
        if purpose not in _PURPOSES:
            raise ApiError(400, f"'{purpose}' is not one of {sorted(_PURPOSES)} - 'purpose'",
                           param="purpose")
        if "file" not in fields:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file",
                           code="missing_required_parameter")
        filename, data = fields["file"]
        if purpose == "batch" and len(data) > BATCH_FILE_MAX_BYTES:
            raise ApiError(400,
                           f"File is too large: {len(data)} bytes; the limit for batch "
                           f"files is {BATCH_FILE_MAX_BYTES} bytes.", param="file")
        return self.add(filename or "upload", purpose, data)

    def get(self, file_id: str) -> StoredFile:
        """The stored file ``file_id``, or the 404 OpenAI answers for an unknown one."""
        stored = self.files.get(file_id)
        if stored is None:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    def delete(self, file_id: str) -> dict[str, object]:
        """``DELETE /v1/files/{id}``: the file is gone (a 404 for an unknown id, as ``get``)."""
        self.get(file_id)
        del self.files[file_id]
        self.deleted.append(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    def clear(self) -> None:
        """Forget every file and every delete (a reset)."""
        self.files.clear()
        self.deleted.clear()

    def listing(self, purpose: str | None) -> dict[str, object]:
        """``GET /v1/files``: the files of ``purpose`` (all if None), newest first."""
        data = [f.to_dict() for f in reversed(self.files.values()) if purpose in (None, f.purpose)]
        return {"object": "list", "data": data, "has_more": False}
