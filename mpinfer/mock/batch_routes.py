"""Routing of the Files and Batches endpoints (and ``/_mock/batches``) to the BatchService.

``route`` answers a request when its path is one of these and returns False otherwise, so the
server's own routing needs a single hook. Paths are accepted with or without the ``/v1`` prefix, as
the chat endpoint accepts them; Azure's (``/openai/files``, ``/openai/batches``) come here from
mock/azure.py with ``azure`` set. A batch belongs to the key that made it: another key is told it
does not exist (404), as another organisation or Azure resource would be.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

from .batches import BatchService
from .chat import ApiError
from .http import Connection, Request, http_response


def _send(conn: Connection, req: Request, status: int, payload: Any,
          content_type: str = "application/json") -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    conn.send(http_response(status, body, req.keep_alive, content_type=content_type),
              req.keep_alive)


def _query(req: Request) -> dict[str, str]:
    return {k: v[-1] for k, v in urllib.parse.parse_qs(req.query).items()}


def _files(service: BatchService, req: Request, parts: list[str]) -> tuple[int, Any]:
    if parts == [] and req.method == "POST":
        return 200, service.files.upload(req.headers.get("content-type", ""), req.body).to_dict()
    if parts == [] and req.method == "GET":
        return 200, service.files.listing(_query(req).get("purpose"))
    if len(parts) == 1 and req.method == "GET":
        return 200, service.files.get(parts[0]).to_dict()
    if len(parts) == 2 and parts[1] == "content" and req.method == "GET":
        return 200, service.files.get(parts[0]).data
    if len(parts) == 1 and req.method == "DELETE":
        # a provider that fails deletes (a fault), the file kept
        status = service.faults.delete_status
        if status == 404:  # as OpenAI answers for a file already gone
            raise ApiError(404, f"No such File object: {parts[0]}", param="id")
        if status is not None:
            raise ApiError(status, f"The file {parts[0]} could not be deleted (mock fault).",
                           type_="server_error" if status >= 500 else "invalid_request_error")
        return 200, service.files.delete(parts[0])
    raise ApiError(405 if len(parts) <= 2 else 404, f"Unsupported: {req.method} {req.path}")


def _batches(service: BatchService, req: Request, parts: list[str], azure: bool) -> tuple[int, Any]:
    owner = _key(req)
    if parts == [] and req.method == "POST":
        return 200, service.create(req.body, owner, azure)
    if parts == [] and req.method == "GET":
        return 200, service.listing(_query(req), owner)
    if len(parts) == 1 and req.method == "GET":
        return 200, service.get(parts[0], owner)
    if len(parts) == 2 and parts[1] == "cancel" and req.method == "POST":
        return 200, service.cancel(parts[0], owner)
    raise ApiError(405 if len(parts) <= 2 else 404, f"Unsupported: {req.method} {req.path}")


def _key(req: Request) -> str:
    return req.headers.get("authorization", "").partition(" ")[2].strip()


async def _slow_create(service: BatchService, conn: Connection, req: Request, azure: bool) -> None:
    """A create that takes its time before and after the batch exists (faults create_*wait_s)."""
    await asyncio.sleep(service.faults.create_wait_s)
    try:
        payload = service.create(req.body, _key(req), azure)
    except ApiError as exc:
        _send(conn, req, exc.status, exc.body())
        return
    await asyncio.sleep(service.faults.create_reply_wait_s)
    _send(conn, req, 200, payload)


def route(service: BatchService, conn: Connection, req: Request, azure: bool = False) -> bool:
    """Answer ``req`` if it is for the Files or Batches API (Azure's: ``azure``); False when it is
    not."""
    path = req.path.removeprefix("/v1")
    if req.path == "/_mock/batches":
        try:
            payload = (service.stats() if req.method == "GET"
                       else service.configure(json.loads(req.body or b"{}")))
        except (ValueError, TypeError) as exc:
            _send(conn, req, 400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
            return True
        _send(conn, req, 200, payload)
        return True
    head, _, rest = path.strip("/").partition("/")
    if head not in ("files", "batches"):
        return False
    parts = [p for p in rest.split("/") if p]
    try:
        refused = service.authorise(req.headers.get("authorization", ""))
        if refused is not None:
            raise refused
        slow = service.faults.create_wait_s or service.faults.create_reply_wait_s
        if head == "batches" and parts == [] and req.method == "POST" and slow:
            conn.run_async(_slow_create(service, conn, req, azure))
            return True
        if head == "files":
            status, payload = _files(service, req, parts)
        else:
            status, payload = _batches(service, req, parts, azure)
    except ApiError as exc:
        _send(conn, req, exc.status, exc.body())
        return True
    _send(conn, req, status, payload,
          "application/octet-stream" if isinstance(payload, bytes) else "application/json")
    return True
