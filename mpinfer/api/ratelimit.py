"""The rate limiter all worker processes share: per lane (one API key and one model), in shared memory.

What it guarantees, per lane:
- ``rpm``: no more than ``rpm`` requests start in any window of ``window_s`` seconds. A ring of the last
  ``rpm`` start times: a request may start when the oldest of them is more than a window (plus a margin for
  the trip to the server) ago. A token bucket would let twice the limit through one window.
- ``tpm``: the tokens charged in any window stay within ``tpm``. A request is charged its estimated prompt
  tokens plus max_tokens (what OpenAI counts), corrected to the real prompt tokens when the answer comes.
- A 429's Retry-After, or a server saying it has no requests or tokens left (x-ratelimit-remaining-*),
  pauses the whole lane for every worker, not only the one that heard it.
- Servers that send no rate headers (vLLM, DeepSeek, Ollama) get additive-increase/multiplicative-decrease
  on the requests in flight: halve on a 429 or a timeout, grow by one per window of successes.
- A key that is rejected (401/403) is disabled for every model; requests go to the least-loaded free key.

The parent creates it before forking; workers inherit the shared arrays. Time is passed in (``now``), so
the logic is tested without waiting.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import NoKeysLeft

DEFAULT_WINDOW_S = 60.0
# Requests reach the server a little after they leave the limiter; the margin keeps the server's window,
# measured on arrival, within the limit too: 2% of the window, between 0.1 s and 1 s (1.6% of a minute).
MARGIN_SHARE = 0.02
MAX_MARGIN_S = 1.0
MIN_MARGIN_S = 0.1
TOKEN_RING = 16384
_MIN_WINDOW = 1.0

# Per-lane fields in the shared state array.
(_PAUSED_UNTIL, _IN_FLIGHT, _CWND, _HEADERS_SEEN, _REQ_COUNT, _TOK_HEAD, _TOK_TAIL, _TOK_SUM,
 _REQUESTS, _RATE_LIMITED, _TOKENS, _LAST_DECREASE, _CWND_MAX) = range(13)
_FIELDS = 13

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration ("6m0s", "1.5s", "12ms") or a plain number of seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


@dataclass(frozen=True)
class Grant:
    """Permission for one request on one lane; hand it back with ``release``.

    ``request_pos`` and ``token_pos`` count grants on the lane since the start (-1 when that limit is off):
    an entry is still in its ring while fewer than a ring's length of later grants have overwritten it.
    """

    lane: int
    key: int
    charged: int
    request_pos: int
    token_pos: int


@dataclass(frozen=True)
class LaneStats:
    key: int
    model: int
    requests: int
    rate_limited: int
    tokens: int
    in_flight: int
    concurrency_limit: float
    paused_for_s: float


class SharedLimiter:
    """Limits shared by every process of a run. Build it with ``create`` in the parent, before forking."""

    def __init__(self, lock: Any, state: Any, req_ring: Any, tok_time: Any, tok_amount: Any, key_disabled: Any, n_keys: int, n_models: int, rpm: int | None, tpm: int | None,
                 window_s: float, margin_s: float, max_in_flight: int) -> None:
        self._lock = lock
        self._state = state
        self._req_ring = req_ring
        self._tok_time = tok_time
        self._tok_amount = tok_amount
        self._key_disabled = key_disabled
        self.n_keys = n_keys
        self.n_models = n_models
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self.margin_s = margin_s
        self.max_in_flight = max_in_flight

    @classmethod
    def create(cls, ctx: Any, n_keys: int, n_models: int, rpm: int | None = None, tpm: int | None = None,
               window_s: float = DEFAULT_WINDOW_S, margin_s: float | None = None,
               max_in_flight: int = 1 << 20) -> SharedLimiter:
        """Shared arrays for ``n_keys * n_models`` lanes (``ctx`` is a multiprocess context)."""
        lanes = n_keys * n_models
        window_s = max(_MIN_WINDOW, window_s)
        if margin_s is None:
            margin_s = min(MAX_MARGIN_S, max(MIN_MARGIN_S, MARGIN_SHARE * window_s))
        state = ctx.RawArray("d", lanes * _FIELDS)
        req_ring = ctx.RawArray("d", lanes * (rpm or 0))
        ring = TOKEN_RING if tpm else 0
        tok_time = ctx.RawArray("d", lanes * ring)
        tok_amount = ctx.RawArray("d", lanes * ring)
        for lane in range(lanes):
            state[lane * _FIELDS + _CWND] = float(max_in_flight)
            state[lane * _FIELDS + _CWND_MAX] = float(max_in_flight)
        for i in range(len(req_ring)):
            req_ring[i] = -math.inf
        return cls(ctx.Lock(), state, req_ring, tok_time, tok_amount, ctx.RawArray("b", n_keys),
                   n_keys, n_models, rpm, tpm, window_s, max(0.0, margin_s), max_in_flight)

    # -- shared-state helpers (call with the lock held) ----------------------------------------------

    def _get(self, lane: int, field: int) -> float:
        return float(self._state[lane * _FIELDS + field])

    def _set(self, lane: int, field: int, value: float) -> None:
        self._state[lane * _FIELDS + field] = value

    def _add(self, lane: int, field: int, value: float) -> None:
        self._state[lane * _FIELDS + field] += value

    def lane(self, key: int, model: int) -> int:
        return key * self.n_models + model

    def _expire_tokens(self, lane: int, horizon: float) -> None:
        head, tail = int(self._get(lane, _TOK_HEAD)), int(self._get(lane, _TOK_TAIL))
        base = lane * TOKEN_RING
        while head < tail and self._tok_time[base + head % TOKEN_RING] <= horizon:
            self._add(lane, _TOK_SUM, -self._tok_amount[base + head % TOKEN_RING])
            head += 1
        self._set(lane, _TOK_HEAD, head)

    def _wait_s(self, lane: int, tokens: int, now: float) -> float:
        """0 when the lane can start a request charged ``tokens`` now, else how long until it may."""
        waits = [self._get(lane, _PAUSED_UNTIL) - now]
        if self._get(lane, _IN_FLIGHT) >= max(1.0, math.floor(self._get(lane, _CWND))):
            waits.append(0.05)  # a slot frees when a request ends; look again soon
        span = self.window_s + self.margin_s
        if self.rpm:
            oldest = self._req_ring[lane * self.rpm + int(self._get(lane, _REQ_COUNT)) % self.rpm]
            waits.append(oldest + span - now)
        if self.tpm:
            self._expire_tokens(lane, now - span)
            head, tail = int(self._get(lane, _TOK_HEAD)), int(self._get(lane, _TOK_TAIL))
            total = self._get(lane, _TOK_SUM)
            base = lane * TOKEN_RING
            if tail - head >= TOKEN_RING:
                waits.append(self._tok_time[base + head % TOKEN_RING] + span - now)
            elif total + tokens > self.tpm and head < tail:
                # Wait until enough of the oldest charges leave the window.
                freed, at = 0.0, head
                while at < tail and total - freed + tokens > self.tpm:
                    freed += self._tok_amount[base + at % TOKEN_RING]
                    at += 1
                waits.append(self._tok_time[base + (at - 1) % TOKEN_RING] + span - now)
        return max(0.0, max(waits))

    def _grant(self, lane: int, key: int, tokens: int, now: float) -> Grant:
        self._add(lane, _IN_FLIGHT, 1)
        self._add(lane, _REQUESTS, 1)
        request_pos = token_pos = -1
        if self.rpm:
            request_pos = int(self._get(lane, _REQ_COUNT))
            self._req_ring[lane * self.rpm + request_pos % self.rpm] = now
            self._set(lane, _REQ_COUNT, request_pos + 1)
        if self.tpm:
            token_pos = int(self._get(lane, _TOK_TAIL))
            self._tok_time[lane * TOKEN_RING + token_pos % TOKEN_RING] = now
            self._tok_amount[lane * TOKEN_RING + token_pos % TOKEN_RING] = tokens
            self._set(lane, _TOK_TAIL, token_pos + 1)
            self._add(lane, _TOK_SUM, tokens)
        return Grant(lane, lane // self.n_models, tokens, request_pos, token_pos)

    def _token_live(self, grant: Grant) -> bool:
        """Whether the grant's token charge is still counted in its lane's window."""
        return grant.token_pos >= 0 and grant.token_pos >= self._get(grant.lane, _TOK_HEAD)

    def sent(self, grant: Grant, now: float) -> None:
        """The request is leaving now: count it in the windows from now, not from when it was granted.

        The server counts a request when it arrives; building and sending it can take a while on a busy
        machine, and the window must follow the send, or the server would see more than the limit.
        """
        with self._lock:
            if self.rpm and int(self._get(grant.lane, _REQ_COUNT)) - grant.request_pos <= self.rpm:
                slot = grant.lane * self.rpm + grant.request_pos % self.rpm
                self._req_ring[slot] = max(self._req_ring[slot], now)
            if self.tpm and self._token_live(grant):
                slot = grant.lane * TOKEN_RING + grant.token_pos % TOKEN_RING
                self._tok_time[slot] = max(self._tok_time[slot], now)

    # -- the worker's side ---------------------------------------------------------------------------

    def try_acquire(self, model: int, tokens: int, now: float) -> Grant | float:
        """A Grant on the least-loaded free key for ``model``, or the seconds to wait before asking again.

        Raises NoKeysLeft when every key has been disabled. A request larger than the whole token limit
        is charged the limit, so that it can run alone rather than never.
        """
        if self.tpm:
            tokens = min(tokens, self.tpm)
        with self._lock:
            keys = [k for k in range(self.n_keys) if not self._key_disabled[k]]
            if not keys:
                raise NoKeysLeft()
            keys.sort(key=lambda k: self._get(self.lane(k, model), _IN_FLIGHT))
            best = math.inf
            for key in keys:
                lane = self.lane(key, model)
                wait = self._wait_s(lane, tokens, now)
                if wait <= 0:
                    return self._grant(lane, key, tokens, now)
                best = min(best, wait)
            return best

    def release(self, grant: Grant, now: float, *, ok: bool, overloaded: bool = False,
                charged: int | None = None, used: int = 0) -> None:
        """A request ended. ``charged`` corrects its token charge and ``used`` counts its real tokens;
        ``overloaded`` (429 or timeout) halves the lane's concurrency when the server sends no rate
        headers; success grows it again."""
        lane = grant.lane
        with self._lock:
            self._add(lane, _IN_FLIGHT, -1)
            self._add(lane, _TOKENS, used)
            if charged is not None and self.tpm:
                # Expire first, so that a charge that has just left the window is not corrected twice.
                self._expire_tokens(lane, now - self.window_s - self.margin_s)
                if self._token_live(grant):
                    slot = lane * TOKEN_RING + grant.token_pos % TOKEN_RING
                    self._add(lane, _TOK_SUM, charged - self._tok_amount[slot])
                    self._tok_amount[slot] = charged
            if self._get(lane, _HEADERS_SEEN):
                return
            cwnd = self._get(lane, _CWND)
            if overloaded:
                # One decrease per second: the requests that were in flight together fail together.
                if now - self._get(lane, _LAST_DECREASE) >= 1.0:
                    self._set(lane, _CWND, max(1.0, min(cwnd, self._get(lane, _IN_FLIGHT) + 1) / 2))
                    self._set(lane, _LAST_DECREASE, now)
            elif ok and cwnd < self._get(lane, _CWND_MAX):
                self._set(lane, _CWND, min(self._get(lane, _CWND_MAX), cwnd + 1.0 / max(1.0, cwnd)))

    def rate_limited(self, lane: int, now: float, retry_after: float | None) -> None:
        """A 429 on this lane: count it and pause the lane for everyone for the server's Retry-After."""
        with self._lock:
            self._add(lane, _RATE_LIMITED, 1)
            if retry_after:
                self._set(lane, _PAUSED_UNTIL, max(self._get(lane, _PAUSED_UNTIL), now + retry_after))

    def observe_headers(self, lane: int, headers: Any, now: float) -> None:
        """Read x-ratelimit-*: a server that says it has nothing left pauses the lane until its reset."""
        if headers is None:
            return
        remaining_requests = headers.get("x-ratelimit-remaining-requests")
        remaining_tokens = headers.get("x-ratelimit-remaining-tokens")
        if remaining_requests is None and remaining_tokens is None:
            return
        pause = 0.0
        try:
            if remaining_requests is not None and int(remaining_requests) <= 0:
                pause = max(pause, parse_duration(headers.get("x-ratelimit-reset-requests")) or 1.0)
            if remaining_tokens is not None and int(remaining_tokens) <= 0:
                pause = max(pause, parse_duration(headers.get("x-ratelimit-reset-tokens")) or 1.0)
        except ValueError:
            return
        with self._lock:
            if not self._get(lane, _HEADERS_SEEN):
                self._set(lane, _HEADERS_SEEN, 1)
                self._set(lane, _CWND, self._get(lane, _CWND_MAX))
            if pause:
                self._set(lane, _PAUSED_UNTIL, max(self._get(lane, _PAUSED_UNTIL), now + pause))

    def disable_key(self, key: int) -> bool:
        """Stop using a key for every model; returns whether any key is left."""
        with self._lock:
            self._key_disabled[key] = 1
            return any(not self._key_disabled[k] for k in range(self.n_keys))

    def key_disabled(self, key: int) -> bool:
        return bool(self._key_disabled[key])

    # -- the parent's side ---------------------------------------------------------------------------

    def lane_stats(self, now: float) -> list[LaneStats]:
        with self._lock:
            return [
                LaneStats(
                    key=lane // self.n_models, model=lane % self.n_models,
                    requests=int(self._get(lane, _REQUESTS)), rate_limited=int(self._get(lane, _RATE_LIMITED)),
                    tokens=int(self._get(lane, _TOKENS)), in_flight=int(self._get(lane, _IN_FLIGHT)),
                    concurrency_limit=self._get(lane, _CWND),
                    paused_for_s=max(0.0, self._get(lane, _PAUSED_UNTIL) - now),
                )
                for lane in range(self.n_keys * self.n_models)
            ]
