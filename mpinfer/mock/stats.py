"""The counters the mock server exposes at ``/_mock/stats``, and the sliding windows they keep."""

from __future__ import annotations

import collections
import json
from typing import Any

OUTCOMES: tuple[str, ...] = ("ok", "429", "quota", "500", "hang", "reset", "malformed", "400",
                             "401", "404", "limit", "slow", "filtered")
"""Keys of ``stats()["outcomes"]``; ``limit`` counts rpm/tpm rejections, ``404`` unknown models,
``filtered`` prompts the content filter stopped (a 400)."""

RECORDED_BODIES_MAX = 1000
"""Most task keys whose last request body ``record_bodies`` keeps; the oldest
key is forgotten first."""


class Stats:
    """All counters the server exposes; reset as a unit by ``/_mock/reset``."""

    def __init__(self) -> None:
        self.requests = 0
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.in_flight = 0
        self.max_in_flight = 0
        self.received: collections.Counter[str] = collections.Counter()
        self.answered: collections.Counter[str] = collections.Counter()
        self.per_key: collections.Counter[str] = collections.Counter()
        self.per_model: collections.Counter[str] = collections.Counter()
        # Answers sent after a latency, and how late (s) their sleep ended: the server's own delay.
        self.answer_lag_s_total = 0.0
        self.answer_lag_s_max = 0.0
        self.first_request_at: float | None = None
        self.last_request_at: float | None = None
        # Arrivals (every chat request) and accepted requests (passed the
        # limiter) in the current window (MockConfig.window_s); deques so each
        # request costs amortised O(1) however long the run.
        self.arrivals: collections.deque[float] = collections.deque()
        self.max_arrivals_window = 0
        self.accepted_t: collections.deque[float] = collections.deque()
        self.accepted_tokens: collections.deque[int] = collections.deque()
        self.accepted_token_sum = 0
        self.max_accepted_window = 0
        self.max_tokens_window = 0
        # The quantized buckets (MockConfig.quantum_s): their levels, None
        # while full, and when last filled.
        self.request_level: float | None = None
        self.token_level: float | None = None
        self.bucket_at = 0.0
        # Arrivals that found the window already holding ``rpm`` or more
        # arrivals, and requests that would take the window's accepted tokens
        # over ``tpm``: what a client respecting the limits never sends.
        self.window_violations = 0
        self.token_window_violations = 0
        # The last request body per task key (MockConfig.record_bodies), oldest key first.
        self.bodies: dict[str, Any] = {}

    def record_body(self, task_key: str, body: bytes) -> None:
        """Keep ``body`` as ``task_key``'s last, forgetting the oldest key beyond the bound."""
        # re-inserted below, so the dict stays ordered by last arrival
        self.bodies.pop(task_key, None)
        if len(self.bodies) >= RECORDED_BODIES_MAX:
            del self.bodies[next(iter(self.bodies))]
        self.bodies[task_key] = json.loads(body)

    def evict(self, now: float, window_s: float) -> None:
        """Drop window entries that are ``window_s`` or more old."""
        horizon = now - window_s
        arrivals = self.arrivals
        while arrivals and arrivals[0] <= horizon:
            arrivals.popleft()
        times = self.accepted_t
        while times and times[0] <= horizon:
            times.popleft()
            self.accepted_token_sum -= self.accepted_tokens.popleft()
