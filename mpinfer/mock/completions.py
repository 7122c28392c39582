"""Answering ``POST /v1/chat/completions``: auth, limits, the fault draw, the answer, delivery."""

from __future__ import annotations

import asyncio
import collections
import random
import time

import orjson

from .answers import filter_results, prompt_filtered, reply
from .chat import ApiError, parse_chat
from .config import MockConfig
from .http import Connection, Request, error_body, http_response
from .images import check_image_limit
from .limits import add_ratelimit_headers, check_limits, format_duration, rejection_headers
from .stats import Stats
from .structured import check_response_format

_TOKENS_PER_IMAGE = 85


class ChatCompletions:
    """The chat endpoint of ``MockServer``, apart from its lifecycle, routing and control API.

    A mixin: ``MockServer`` owns the state declared here and sets all of it in ``__init__``.
    """

    _config: MockConfig
    _stats: Stats
    _scripts: dict[str, collections.deque[str]]
    _revoked: set[str]
    _rng: random.Random
    _jitter_rng: random.Random
    _next_id: int

    # -- chat completions ----------------------------------------------------

    def _handle_chat(self, conn: Connection, req: Request) -> None:
        """Decide the outcome of one chat request and answer now or after a delay.

        Everything is decided synchronously at arrival (auth, validation, rate
        limits, fault draw) so ordering and RNG consumption follow arrival
        order; only the waiting happens asynchronously.
        """
        st = self._stats
        cfg = self._config
        now = time.monotonic()
        st.requests += 1
        if st.first_request_at is None:
            st.first_request_at = now
        st.last_request_at = now
        st.evict(now, cfg.window_s)
        if cfg.rpm is not None and len(st.arrivals) >= cfg.rpm:
            st.window_violations += 1
        st.arrivals.append(now)
        st.max_arrivals_window = max(st.max_arrivals_window, len(st.arrivals))
        self._next_id += 1
        n = self._next_id
        st.in_flight += 1
        st.max_in_flight = max(st.max_in_flight, st.in_flight)

        headers: list[tuple[str, str]] = [("x-request-id", f"req_mock_{n}")]
        try:
            outcome, status, body, task_key = self._decide(req, cfg, now, n, headers)
            st.outcomes[outcome] += 1
            add_ratelimit_headers(st, cfg, now, headers)
            payload = (b"" if outcome in ("hang", "reset")
                       else http_response(status, body, req.keep_alive, headers))
        except BaseException:
            st.in_flight -= 1  # a bug above must not leave a phantom request in flight
            raise

        if outcome == "hang":
            conn.run_async(self._hang(conn, cfg.hang_s, st))
            return
        if outcome == "slow":
            conn.run_async(self._trickle(conn, payload, req.keep_alive, cfg.slow_bps, st))
            return
        # A rate limit is refused at the gateway, before any model runs (OpenAI, LiteLLM's pre-call
        # check): at once, not after the model's latency.
        delay = 0.0 if outcome == "limit" else cfg.latency_ms
        if delay and cfg.jitter_ms:
            delay += self._jitter_rng.uniform(-cfg.jitter_ms, cfg.jitter_ms)
        if delay > 0:
            conn.run_async(self._answer_later(conn, delay / 1000.0, outcome, payload,
                                              req.keep_alive, task_key, st))
            return
        try:
            self._deliver(conn, outcome, payload, req.keep_alive, task_key)
        finally:
            st.in_flight -= 1

    def _decide(
        self, req: Request, cfg: MockConfig, now: float, n: int, headers: list[tuple[str, str]]
    ) -> tuple[str, int, bytes, str | None]:
        """Return (outcome, status, body, task key) and add outcome-specific headers."""
        st = self._stats
        auth = req.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return "401", 401, error_body(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            ), None
        # Only the tail of a key is ever stored, so stats can be shared freely.
        st.per_key[key[-4:]] += 1
        if (cfg.keys and key not in cfg.keys) or key in self._revoked:
            return "401", 401, error_body(
                f"Incorrect API key provided: ...{key[-4:]}.", "invalid_request_error", None,
                "invalid_api_key"
            ), None
        try:
            chat = parse_chat(req.body)
            check_response_format(chat.response_format)
            check_image_limit(cfg, req.body)
        except ApiError as exc:
            return exc.outcome, exc.status, exc.body(), None
        if cfg.models and chat.model not in cfg.models:
            # OpenAI's answer to a model it does not have (or the key may not use)
            return "404", 404, error_body(
                f"The model `{chat.model}` does not exist or you do not have access to it.",
                "invalid_request_error", None, "model_not_found"), None
        task_key = chat.task_key
        if cfg.record_bodies:
            st.record_body(task_key, req.body)
        st.per_model[chat.model] += 1
        st.received[task_key] += 1

        answer = reply(cfg, chat.model, task_key, chat.images_in_task, chat.max_tokens,
                       chat.thinks, chat.response_format, attempt=st.received[task_key])
        prompt_tokens = -(-chat.text_chars // 4) + _TOKENS_PER_IMAGE * chat.images_total
        budget = prompt_tokens + (chat.max_tokens if chat.max_tokens is not None
                                  else answer.completion_tokens)
        if cfg.tpm is not None and st.accepted_token_sum + budget > cfg.tpm:
            st.token_window_violations += 1

        if cfg.max_concurrent is not None and st.in_flight > cfg.max_concurrent:
            # A server at capacity (a vLLM behind a gateway, a busy proxy):
            # refused, with no hint at all.
            return "limit", 429, error_body("Server is busy (mock): too many requests in flight.",
                                            "requests", None, "rate_limit_exceeded"), task_key
        rejection = check_limits(st, cfg, now, budget)
        if rejection is not None:
            kind, limit, used, retry_s = rejection
            rejection_headers(cfg, retry_s, headers)
            message = (f"Rate limit reached for {chat.model} (mock) on {kind} per min (RPM/TPM): "
                       f"Limit {limit}")
            if cfg.limit_style == "openai":
                message += (f", Used {used}, Requested {1 if kind == 'requests' else budget}. "
                            f"Please try again in {format_duration(retry_s)}.")
            return "limit", 429, error_body(message, kind, None, "rate_limit_exceeded"), task_key
        # Accepted by the limiter: record it in the sliding token window.
        st.accepted_t.append(now)
        st.accepted_tokens.append(budget)
        st.accepted_token_sum += budget
        st.max_accepted_window = max(st.max_accepted_window, len(st.accepted_t))
        st.max_tokens_window = max(st.max_tokens_window, st.accepted_token_sum)

        if cfg.filter_marker and cfg.filter_marker in task_key:  # Azure stops the prompt: a 400
            return "filtered", 400, prompt_filtered(), task_key
        outcome = self._draw_outcome(cfg, task_key)
        if outcome in ("ok", "slow"):
            choice = {"index": 0, "message": answer.message, "logprobs": None,
                      "finish_reason": answer.finish_reason}
            response = {
                "id": f"chatcmpl-mock-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": cfg.model_map.get(chat.model, chat.model),
                "choices": [choice],
                "usage": answer.usage(prompt_tokens),
                "system_fingerprint": "fp_mock",
            }
            if answer.filtered:  # as Azure: each filter's verdict, on the prompt and the answer
                choice["content_filter_results"] = filter_results(True)
                response["prompt_filter_results"] = [
                    {"prompt_index": 0, "content_filter_results": filter_results(False)}]
            if cfg.omit_usage:  # as some OpenAI-compatible servers: no usage at all
                del response["usage"]
            return outcome, 200, orjson.dumps(response), task_key
        if outcome == "429":
            rejection_headers(cfg, cfg.retry_after, headers)
            hint = (f" Please try again in {format_duration(cfg.retry_after)}."
                    if cfg.limit_style == "openai" else "")
            return "429", 429, error_body(
                f"Rate limit reached for {chat.model} (mock fault).{hint}",
                "requests",
                None,
                "rate_limit_exceeded",
            ), task_key
        if outcome == "quota":
            return "quota", 429, error_body(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                None,
                "insufficient_quota",
            ), task_key
        if outcome == "500":
            return "500", 500, error_body(
                "The server had an error while processing your request. "
                "Sorry about that! (mock fault)",
                "server_error",
            ), task_key
        if outcome == "malformed":
            return "malformed", 200, b'{"id": "chatcmpl-broken", "choices": [', task_key
        return outcome, 0, b"", task_key  # hang / reset: nothing is sent

    def _draw_outcome(self, cfg: MockConfig, task_key: str) -> str:
        """Scripted outcome for this task key if queued, else one seeded draw."""
        queued = self._scripts.get(task_key)
        if queued:
            outcome = queued.popleft()
            if not queued:
                del self._scripts[task_key]
            return outcome
        r = self._rng.random()
        for name, p in (
            ("quota", cfg.pquota),
            ("429", cfg.p429),
            ("500", cfg.p500),
            ("hang", cfg.phang),
            ("reset", cfg.preset),
            ("malformed", cfg.pmalformed),
        ):
            if r < p:
                return name
            r -= p
        return "ok"

    def _deliver(self, conn: Connection, outcome: str, payload: bytes, keep_alive: bool,
                 task_key: str | None) -> None:
        """Send the decided response; count ``answered`` only for real completions."""
        if outcome == "reset":
            conn.reset()
            return
        delivered = conn.send(payload, keep_alive)
        if delivered and outcome == "ok" and task_key is not None:
            self._stats.answered[task_key] += 1

    async def _answer_later(
        self,
        conn: Connection,
        delay_s: float,
        outcome: str,
        payload: bytes,
        keep_alive: bool,
        task_key: str | None,
        st: Stats,
    ) -> None:
        # ``st`` is the Stats object current at arrival: a reset in between
        # must neither count this answer nor drive in_flight negative.
        loop = asyncio.get_running_loop()
        due = loop.time() + delay_s
        try:
            await asyncio.sleep(delay_s)
            # How much later than due this server answered, its own loop being busy: on a shared
            # machine the benchmarks must not count the server's delay as the client's.
            lag = loop.time() - due
            st.answer_lag_s_total += lag
            st.answer_lag_s_max = max(st.answer_lag_s_max, lag)
            if st is self._stats:
                self._deliver(conn, outcome, payload, keep_alive, task_key)
            else:
                self._deliver(conn, outcome, payload, keep_alive, None)
        finally:
            self._leave(st)

    async def _trickle(self, conn: Connection, payload: bytes, keep_alive: bool, bytes_per_s: float,
                       st: Stats) -> None:
        """The headers at once, then the body a byte at a time: a server whose every read arrives in
        time but whose answer never ends (cancelled by connection_lost when the client gives up)."""
        try:
            head_end = payload.index(b"\r\n\r\n") + 4
            if not conn.send(payload[:head_end], True):
                return
            for at in range(head_end, len(payload)):
                await asyncio.sleep(1.0 / bytes_per_s)
                if not conn.send(payload[at:at + 1], True if at + 1 < len(payload) else keep_alive):
                    return
        finally:
            self._leave(st)

    async def _hang(self, conn: Connection, hang_s: float, st: Stats) -> None:
        try:
            # Cancelled by connection_lost when the client gives up, so a hang
            # holds no resources beyond the client's own patience.
            await asyncio.sleep(hang_s)
            conn.abort()
        finally:
            self._leave(st)

    def _leave(self, st: Stats) -> None:
        st.in_flight -= 1
        if st is not self._stats:
            self._stats.in_flight = max(0, self._stats.in_flight - 1)
