"""``MockServer``: the in-process mock server, its lifecycle, routing and ``/_mock/*`` API."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import random
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from .azure import PREFIX as AZURE_PREFIX
from .azure import as_batch_api as azure_batch_api
from .azure import as_chat as azure_chat
from .azure import is_batch_api as is_azure_batch_api
from .batch_routes import route as route_batch_api
from .batches import BatchService
from .completions import ChatCompletions
from .config import RUNTIME_FIELDS, MockConfig, coerce_field, str_list
from .http import Connection, Request, error_body, http_response
from .responses import route_responses
from .stats import Stats

SCRIPTABLE_OUTCOMES: frozenset[str] = frozenset({"ok", "429", "quota", "500", "hang", "reset",
                                                 "malformed", "slow"})
"""Outcomes that may appear in a per-task-key ``script`` queue."""

_BASE_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "mock-vision-1")


class MockServer(ChatCompletions):
    """The in-process mock server; use ``MockServerProcess`` for a subprocess.

    Running in-process is handy for benchmarks that want to avoid a second
    interpreter, but the test suite uses the subprocess so the client and
    server do not share an event loop or a GIL.
    """

    def __init__(self, config: MockConfig | None = None) -> None:
        """Create a server for ``config`` (defaults if None); call ``start()`` to listen."""
        self._config = config or MockConfig()
        self._start_config = self._config  # what reset(settings=True) returns to
        self._stats = Stats()
        self._scripts: dict[str, collections.deque[str]] = {}
        self._revoked: set[str] = set()
        self._rng = random.Random(self._config.seed)
        # Jitter has its own stream so turning jitter on does not shift the
        # fault sequence a given seed produces.
        self._jitter_rng = random.Random(f"jitter-{self._config.seed}")
        self._next_id = 0
        self._open: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._port = 0
        self._outage_task: asyncio.Task[None] | None = None
        self.batch_service = BatchService(lambda: self._config)  # /v1/files and /v1/batches

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Bind and start listening; afterwards ``port`` and ``base_url`` are valid."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self),
            host=self._config.host,
            port=self._port or self._config.port,  # the same port again after an outage
            backlog=self._config.backlog,
            reuse_address=True,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    def outage(self, seconds: float) -> None:
        """Go away for ``seconds``, as a server that restarts does: stop listening and
        drop every connection (requests are refused), then listen again on the same
        port, counters and settings kept."""

        async def away() -> None:
            await asyncio.sleep(0.05)  # the control request's answer goes out first
            await self.close()
            await asyncio.sleep(seconds)
            await self.start()

        self._outage_task = asyncio.get_running_loop().create_task(away())

    async def close(self) -> None:
        """Stop listening and drop every open connection (pending answers are cancelled)."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._open):
            conn.abort()
        await self.batch_service.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # Let connection_lost callbacks (which cancel pending tasks) run.
        await asyncio.sleep(0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The bound TCP port (0 before ``start()``)."""
        return self._port

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, ending in ``/v1``."""
        return f"http://{self._config.host}:{self._port}/v1"

    @property
    def stats_counters(self) -> Stats:
        """The live counters, for the endpoint modules (mock/responses.py) that count into them."""
        return self._stats

    @property
    def revoked_keys(self) -> set[str]:
        """Keys revoked by ``revoke_keys`` (``POST /_mock/config``): they get 401s."""
        return self._revoked

    @property
    def config(self) -> MockConfig:
        """The current (possibly runtime-updated) configuration."""
        return self._config

    @property
    def connections(self) -> set[Connection]:
        """The open connections (each adds and removes itself); closed by ``close()``."""
        return self._open

    # -- control API -----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Snapshot of all counters as JSON-able data (the ``/_mock/stats`` body)."""
        st = self._stats
        now = time.monotonic()
        cfg = self._config
        st.evict(now, cfg.window_s)
        return {
            "requests": st.requests,
            "outcomes": dict(st.outcomes),
            "in_flight": st.in_flight,
            "max_in_flight": st.max_in_flight,
            # summed over the answers sent after a latency
            "answer_lag_s_total": st.answer_lag_s_total,
            "answer_lag_s_max": st.answer_lag_s_max,
            "received": dict(st.received),
            "answered": dict(st.answered),
            "per_key": dict(st.per_key),
            "per_model": dict(st.per_model),
            "limit_rejections": st.outcomes["limit"],
            # Historical names: both are measured over window_s (60 s by default).
            "max_requests_in_any_60s_window": st.max_arrivals_window,
            "max_tokens_in_any_60s_window": st.max_tokens_window,
            "window_s": cfg.window_s,
            "window_violations": st.window_violations,
            "token_window_violations": st.token_window_violations,
            "accepted_in_last_window": len(st.accepted_t),
            "accepted_tokens_in_last_window": st.accepted_token_sum,
            "first_request_at": st.first_request_at,
            "last_request_at": st.last_request_at,
            "now": now,
            "rpm": {
                "limit": cfg.rpm,
                "window_requests": len(st.arrivals),
                "window_accepted": len(st.accepted_t),
                "max_requests_in_any_60s_window": st.max_arrivals_window,
                "max_accepted_in_any_60s_window": st.max_accepted_window,
            },
            "tpm": {
                "limit": cfg.tpm,
                "window_tokens": st.accepted_token_sum,
                "max_tokens_in_any_60s_window": st.max_tokens_window,
            },
            "connections": len(self._open),
            "scripted_pending": sum(len(q) for q in self._scripts.values()),
            "bodies": dict(st.bodies),
        }

    def reset(self, *, settings: bool = False) -> None:
        """Zero counters, windows and scripts, and reseed, so a run can be repeated.

        Revoked keys and the configuration stay, as settings, unless ``settings``: then every
        setting returns to the server's start (MockConfig's defaults but for what it was started
        with) and no key is revoked.
        """
        if settings:
            self._config = self._start_config
            self._revoked.clear()
        in_flight = self._stats.in_flight
        self._stats = Stats()
        self._stats.in_flight = in_flight
        self._stats.max_in_flight = in_flight
        self._scripts.clear()
        self._reseed()

    def update_config(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Apply runtime settings (as POST /_mock/config); return the public config.

        Besides the runtime MockConfig fields this accepts ``revoke_keys``,
        ``unrevoke_keys`` (lists of keys) and ``script`` ({task_key: [outcome,
        ...]}, which replaces that task key's queue). Raises ValueError on any
        unknown name or bad value (TypeError for a wrong type), and then
        changes nothing.
        """
        if not isinstance(settings, Mapping):
            raise TypeError("config body must be a JSON object")
        updates: dict[str, Any] = {}
        revoke: list[str] = []
        unrevoke: list[str] = []
        script: dict[str, list[str]] = {}
        for name, value in settings.items():
            if name == "revoke_keys":
                revoke = str_list(name, value)
            elif name == "unrevoke_keys":
                unrevoke = str_list(name, value)
            elif name == "script":
                if not isinstance(value, Mapping):
                    raise ValueError("script must map task keys to lists of outcomes")
                for task_key, outcomes in value.items():
                    items = str_list(f"script[{task_key!r}]", outcomes)
                    bad = [o for o in items if o not in SCRIPTABLE_OUTCOMES]
                    if bad:
                        raise ValueError(f"unknown scripted outcomes {bad}; use "
                                         f"{sorted(SCRIPTABLE_OUTCOMES)}")
                    script[str(task_key)] = items
            elif name in RUNTIME_FIELDS:
                updates[name] = coerce_field(name, value)
            else:
                raise ValueError(f"unknown or read-only setting: {name!r}")
        new_config = dataclasses.replace(self._config, **updates)  # validates
        reseed = "seed" in updates
        self._config = new_config
        if reseed:
            self._reseed()
        self._revoked.update(revoke)
        self._revoked.difference_update(unrevoke)
        for task_key, items in script.items():
            if items:
                self._scripts[task_key] = collections.deque(items)
            else:
                self._scripts.pop(task_key, None)
        return self._config.public_dict()

    def _reseed(self) -> None:
        self._rng = random.Random(self._config.seed)
        self._jitter_rng = random.Random(f"jitter-{self._config.seed}")

    # -- routing -------------------------------------------------------------

    def dispatch(self, conn: Connection, req: Request) -> None:
        """Route one parsed request (called by its connection)."""
        path = req.path
        method = req.method
        if path in ("/v1/chat/completions", "/chat/completions"):
            if method != "POST":
                self._send_json_error(conn, req, 405, "Method not allowed; use POST.")
                return
            self._handle_chat(conn, req)
        elif path in ("/v1/models", "/models"):
            if method != "GET":
                self._send_json_error(conn, req, 405, "Method not allowed; use GET.")
                return
            models = sorted(self._config.models or
                            set(_BASE_MODELS) | set(self._config.model_map.values()))
            data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "mpinfer-mock"}
                    for m in models]
            self._send_json(conn, req, 200, {"object": "list", "data": data})
        elif path == "/_mock/stats":
            self._send_json(conn, req, 200, self.stats())
        elif path == "/_mock/config":
            if method == "GET":
                self._send_json(conn, req, 200, self._config.public_dict())
                return
            if method != "POST":
                self._send_json_error(conn, req, 405, "Method not allowed; use GET or POST.")
                return
            try:
                settings = json.loads(req.body or b"{}")
                result = self.update_config(settings)
            except (ValueError, TypeError) as exc:
                self._send_json_error(conn, req, 400, str(exc))
                return
            self._send_json(conn, req, 200, result)
        elif path == "/_mock/reset":
            if method != "POST":
                self._send_json_error(conn, req, 405, "Method not allowed; use POST.")
                return
            try:
                self.reset(settings=bool(json.loads(req.body or b"{}").get("settings")))
            except (ValueError, AttributeError):
                self._send_json_error(conn, req, 400, "reset takes {\"settings\": true or false}")
                return
            self._send_json(conn, req, 200, {"ok": True})
        elif path.startswith(AZURE_PREFIX) and method == "POST":
            chat = azure_chat(self._config, req)  # Azure's deployment paths (mock/azure.py)
            if isinstance(chat, Request):
                self._handle_chat(conn, chat)
            else:
                conn.send(http_response(chat[0], chat[1], req.keep_alive), req.keep_alive)
        elif is_azure_batch_api(path):
            batch = azure_batch_api(req)  # the resource's Files and Batches (mock/azure.py)
            if isinstance(batch, Request):
                route_batch_api(self.batch_service, conn, batch, azure=True)
            else:
                conn.send(http_response(batch[0], batch[1], req.keep_alive), req.keep_alive)
        elif route_responses(self, conn, req):
            pass  # the Responses API and embeddings (mock/responses.py)
        elif route_batch_api(self.batch_service, conn, req):
            pass  # the Files and Batches APIs (mock/batch_routes.py)
        elif path == "/_mock/outage" and method == "POST":
            try:
                seconds = float(json.loads(req.body or b"{}").get("seconds", 0))
            except (ValueError, TypeError, AttributeError):
                self._send_json_error(conn, req, 400, "outage needs {\"seconds\": N}")
                return
            self._send_json(conn, req, 200, {"ok": True, "seconds": seconds})
            self.outage(seconds)
        elif path == "/_mock/health":
            self._send_json(conn, req, 200, {"ok": True})
        else:
            self._send_json_error(conn, req, 404, f"Unknown URL: {method} {path}",
                                  code="unknown_url")

    def _send_json(self, conn: Connection, req: Request, status: int, payload: Any) -> None:
        conn.send(http_response(status, json.dumps(payload).encode(), req.keep_alive),
                  req.keep_alive)

    def _send_json_error(
        self, conn: Connection, req: Request, status: int, message: str, code: str | None = None
    ) -> None:
        body = error_body(message, "invalid_request_error", None, code)
        conn.send(http_response(status, body, req.keep_alive), req.keep_alive)
