"""Azure OpenAI's shape of the chat endpoint: ``POST
/openai/deployments/{deployment}/chat/completions ?api-version=...`` with an ``api-key`` header,
answered by the model the deployment holds; and of the Files and Batches APIs, under the resource:
``/openai/files``, ``/openai/batches`` (``as_batch_api``), whose request lines name a global-batch
deployment as their ``model`` and ``/chat/completions`` as their ``url`` (mock/batches.py).

As Azure does: a request without ``api-version`` is a 404 "Resource not found"; a deployment that
does not exist is a 404 ``DeploymentNotFound``; no key is a 401. The body's ``model`` is ignored
(the deployment decides), and the answer names the deployment's model
(``MockConfig.azure_deployments``: deployment -> model, e.g. ``gpt-4o-2024-08-06``), never the
deployment. The request then goes through the chat endpoint as any other, with its faults and
limits; ``per_key`` counts it under the key's last four characters.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from urllib.parse import parse_qs

from .config import MockConfig
from .http import Request, error_body

PREFIX = "/openai/deployments/"
BATCH_PREFIXES = ("/openai/files", "/openai/batches")
_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")


def _azure_error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _missing_key(req: Request) -> tuple[int, bytes] | None:
    if not req.headers.get("api-key", "").strip() and not req.headers.get("authorization"):
        return 401, _azure_error("401",
                                 "Access denied due to missing subscription key. Make sure to "
                                 "include subscription key when making requests to an API.")
    return None


def _with_bearer(req: Request) -> dict[str, str]:
    headers = dict(req.headers)
    key = req.headers.get("api-key", "").strip()
    if key:
        headers["authorization"] = f"Bearer {key}"
    return headers


def is_batch_api(path: str) -> bool:
    """Whether ``path`` is under the resource's Files or Batches API."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in BATCH_PREFIXES)


def as_batch_api(req: Request) -> Request | tuple[int, bytes]:
    """The Files or Batches request an Azure one stands for (its path under ``/v1``, its
    ``api-key`` as a bearer key), or the (status, body) Azure answers it with: 404 "Resource not
    found" without ``api-version``, 401 without a key."""
    if not parse_qs(req.query).get("api-version"):
        return 404, _azure_error("404", "Resource not found")
    refused = _missing_key(req)
    if refused is not None:
        return refused
    return replace(req, path="/v1" + req.path.removeprefix("/openai"), headers=_with_bearer(req))


def as_chat(cfg: MockConfig, req: Request) -> Request | tuple[int, bytes]:
    """The chat request an Azure request stands for, or the (status, body) Azure answers it with."""
    match = _PATH.match(req.path)
    if match is None:
        return 404, _azure_error("404", "Resource not found")
    if not parse_qs(req.query).get("api-version"):
        return 404, _azure_error("404", "Resource not found")
    deployment = match.group(1)
    model = cfg.azure_deployments.get(deployment)
    if model is None:
        return 404, _azure_error("DeploymentNotFound",
                                 "The API deployment for this resource does not exist. If you "
                                 "created the deployment within the last 5 minutes, please "
                                 "wait a moment and try again.")
    refused = _missing_key(req)
    if refused is not None:
        return refused
    headers = _with_bearer(req)
    try:
        body = json.loads(req.body)
    except ValueError:
        return 400, error_body("We could not parse the JSON body of your request.",
                               "invalid_request_error")
    if isinstance(body, dict):
        body["model"] = model  # the deployment decides which model answers
    return replace(req, path="/v1/chat/completions", headers=headers,
                   body=json.dumps(body).encode())
