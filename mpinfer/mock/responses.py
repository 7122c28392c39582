"""``POST /v1/responses`` and ``POST /v1/embeddings``, shaped as OpenAI answers them.

A Responses API answer is ``{"object": "response", "status", "output": [{"type": "message",
"content": [{"type": "output_text", "text"}]}], "usage": {"input_tokens", "output_tokens", ...}}``;
a refusal is a ``refusal`` content part; ``max_output_tokens`` too small makes it ``incomplete``
(reason ``max_output_tokens``). An embeddings answer is a list of vectors with
``usage.prompt_tokens``.

Auth and keys are checked as for chat; the chat endpoint's faults and rate limits do not apply here.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Protocol

from .answers import REFUSAL_TEXT
from .config import MockConfig
from .http import Connection, Request, error_body, http_response
from .stats import Stats

PATHS = {"/v1/responses": "responses", "/responses": "responses", "/v1/embeddings": "embeddings",
         "/embeddings": "embeddings"}
EMBEDDING_DIMENSIONS = 8


class EndpointHost(Protocol):
    """What these endpoints need from the server (declared here: the server imports this module)."""

    @property
    def config(self) -> MockConfig:
        """The server's current settings."""

    @property
    def stats_counters(self) -> Stats:
        """The counters behind ``/_mock/stats``."""

    @property
    def revoked_keys(self) -> set[str]:
        """Keys revoked during the run: they get 401s."""


def _tokens(text: str) -> int:
    return -(-len(text) // 4)


def _input_text(value: Any) -> str:
    """The text a request's ``input`` holds (its last user turn, for a Responses API input list)."""
    if isinstance(value, str):
        return value
    texts: list[str] = []
    for item in value if isinstance(value, list) else ():
        if isinstance(item, str):
            texts = [item]
        elif isinstance(item, dict) and item.get("role", "user") == "user":
            content = item.get("content")
            if isinstance(content, str):
                texts = [content]
            elif isinstance(content, list):
                texts = [str(p.get("text", "")) for p in content if isinstance(p, dict)
                         and "text" in p]
    return "".join(texts)


def _response(server: EndpointHost, data: dict[str, Any], text: str, n: int) -> dict[str, Any]:
    cfg = server.config
    limit = data.get("max_output_tokens")
    status, incomplete = "completed", None
    if cfg.refuse_marker and cfg.refuse_marker in text:
        part: dict[str, Any] = {"type": "refusal", "refusal": REFUSAL_TEXT}
        out = _tokens(REFUSAL_TEXT)
    else:
        answer = f"Mock answer to: {text[:80]}"
        if isinstance(limit, int) and _tokens(answer) > limit:
            answer = answer[: limit * 4]
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        part = {"type": "output_text", "text": answer, "annotations": []}
        out = _tokens(answer)
    used = _tokens(json.dumps(data.get("input")))
    return {
        "id": f"resp_mock_{n}", "object": "response", "created_at": int(time.time()),
        "status": status,
        "incomplete_details": incomplete, "model": cfg.model_map.get(data["model"], data["model"]),
        "output": [{"type": "message", "id": f"msg_mock_{n}", "status": status, "role": "assistant",
                    "content": [part]}],
        "usage": {"input_tokens": used, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": out,
                  "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": used + out},
    }


def _embeddings(server: EndpointHost, data: dict[str, Any]) -> dict[str, Any]:
    inputs = data["input"] if isinstance(data["input"], list) else [data["input"]]
    vectors = []
    for index, item in enumerate(inputs):
        digest = hashlib.sha256(json.dumps(item).encode()).digest()
        vectors.append({"object": "embedding", "index": index,
                        "embedding": [b / 255.0 for b in digest[:EMBEDDING_DIMENSIONS]]})
    used = sum(_tokens(json.dumps(item)) for item in inputs)
    model = server.config.model_map.get(data["model"], data["model"])
    return {"object": "list", "data": vectors, "model": model,
            "usage": {"prompt_tokens": used, "total_tokens": used}}


def _reject(conn: Connection, req: Request, status: int, message: str,
            code: str | None = None) -> None:
    conn.send(http_response(status, error_body(message, "invalid_request_error", None, code),
                            req.keep_alive), req.keep_alive)


def route_responses(server: EndpointHost, conn: Connection, req: Request) -> bool:
    """Answer a Responses API or embeddings request; False when ``req`` is for another path."""
    kind = PATHS.get(req.path)
    if kind is None:
        return False
    if req.method != "POST":
        _reject(conn, req, 405, "Method not allowed; use POST.")
        return True
    stats = server.stats_counters
    stats.requests += 1
    key = req.headers.get("authorization", "").partition(" ")[2].strip()
    if (
        not key
        or (server.config.keys and key not in server.config.keys)
        or key in server.revoked_keys
    ):
        _reject(conn, req, 401, "Incorrect API key provided.", "invalid_api_key")
        return True
    stats.per_key[key[-4:]] += 1
    try:
        data = json.loads(req.body)
    except ValueError:
        _reject(conn, req, 400, "We could not parse the JSON body of your request.")
        return True
    if not isinstance(data, dict) or not isinstance(data.get("model"), str) or "input" not in data:
        _reject(conn, req, 400, "model and input are required.", "missing_required_parameter")
        return True
    text = _input_text(data["input"])
    stats.per_model[data["model"]] += 1
    stats.received[text] += 1
    if server.config.record_bodies:
        stats.record_body(text, req.body)
    payload = (_response(server, data, text, stats.requests) if kind == "responses"
               else _embeddings(server, data))
    if conn.send(http_response(200, json.dumps(payload).encode(), req.keep_alive,
                               [("x-request-id", f"req_mock_{stats.requests}")]), req.keep_alive):
        stats.answered[text] += 1
    return True
