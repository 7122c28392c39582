"""The shared limiter's parts: the values it hands out and reports, its lock, and its lanes' state.

Each lane (one API key and one model) is a row of floats in shared memory (the field indices below);
``LaneArray`` reads and writes them and holds the two small state machines the limiter's policy drives:
the outage (OUTAGE_AFTER connection failures in a row with no answer between them stop the lane; one
probe at a time then goes out, 0.5 s doubling to 4 s apart, and any answer ends it) and the learned rate
(AIMD: lowered on a hint-less 429, raised again while requests succeed). ``ratelimit.SharedLimiter``
decides, with the lock held, when these change.
"""

from __future__ import annotations

import fcntl
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any

DEFAULT_WINDOW_S = 60.0
DEFAULT_BURST_S = 0.5
# Requests reach the server a little after they leave the limiter; the margin keeps the server's window,
# measured on arrival, within the limit too: 2% of the window, between 0.1 s and 1 s (1.6% of a minute).
MARGIN_SHARE = 0.02
MAX_MARGIN_S = 1.0
MIN_MARGIN_S = 0.1
TOKEN_RING = 16384
MIN_WINDOW = 1.0
# AIMD on the rate: keep this share of the rate sent when a 429 came; grow by this share of it a second.
RATE_DECREASE = 0.7
# AIMD on the requests in flight: keep this share of them on a 429 or a timeout (TCP CUBIC's 0.7).
CWND_DECREASE = 0.7
RATE_GROWTH_PER_S = 0.03
# Connection failures in a row (no answer between them) that make an outage, and the probes' backoff.
OUTAGE_AFTER = 3
PROBE_FIRST_S = 0.5
PROBE_MAX_S = 4.0
NEVER = -1e18

# Per-lane fields in the shared state array.
(PAUSED_UNTIL, IN_FLIGHT, CWND, HEADERS_SEEN, REQ_COUNT, TOK_HEAD, TOK_TAIL, TOK_SUM,
 REQUESTS, RATE_LIMITED, TOKENS, LAST_DECREASE, CWND_MAX,
 REQ_TAT, REQ_LIMIT, REQ_CAP, REQ_SRC, TOK_TAT, TOK_LIMIT, TOK_SRC,
 RATE_BASE, RATE_GROWN_AT, RATE_DECREASED_AT, BUCKET_AT, BUCKET_N, SEND_RATE,
 CONN_FAILS, OUTAGE, OUTAGE_AT, OUTAGE_WALL, PROBE_AT, PROBER, PROBE_GAP, OUTAGE_S,
 LIMITED_S, LIMITED_AT, ANSWERED_SINCE_DECREASE, REQ_GIVEN, TOK_GIVEN) = range(39)
FIELDS = 39


class LimitSource(StrEnum):
    """Where the limit in force on a lane came from."""

    NONE = "none"
    FLAG = "flag"          # --rpm / --tpm
    SERVER = "server"      # x-ratelimit-limit-* on a response
    LEARNED = "learned"    # lowered by 429s (AIMD)


SOURCES = tuple(LimitSource)


class Ending(StrEnum):
    """How a request ended, as the limiter needs to know it."""

    OK = "ok"
    OVERLOADED = "overloaded"    # a 429 or a timeout: the server wants less
    UNREACHABLE = "unreachable"  # no answer at all: refused, reset, DNS, TLS
    ERROR = "error"              # the server answered with another error
    UNSENT = "unsent"            # built ahead and never sent (a stop, or a limit came): not a request at all


class WaitReason(StrEnum):
    LIMIT = "limit"    # a rate, window, pause or concurrency limit
    OUTAGE = "outage"  # the server does not answer; a probe goes first


@dataclass(frozen=True)
class Wait:
    """Not yet: ask again in ``seconds``. During an outage, ``outage_wall`` is when it began (wall clock)
    and ``outage_for_s`` how long it has lasted."""

    seconds: float
    reason: WaitReason = WaitReason.LIMIT
    outage_wall: float = 0.0
    outage_for_s: float = 0.0


@dataclass(frozen=True)
class Grant:
    """Permission for one request on one lane; hand it back with ``release``.

    ``request_pos`` and ``token_pos`` count grants on the lane since the start (-1 when that limit is off):
    an entry is still in its ring while fewer than a ring's length of later grants have overwritten it.
    ``probe`` marks the one request sent during an outage to see whether the server is back.
    ``at`` is when it was granted: only a request sent after the last decrease may lower the lane again.
    """

    lane: int
    key: int
    charged: int
    request_pos: int
    token_pos: int
    holder: int = 0
    probe: bool = False
    at: float = 0.0  # when it was granted


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
    requests_limit: float = 0.0        # per window, in force (0: none)
    requests_source: LimitSource = LimitSource.NONE
    tokens_limit: float = 0.0
    tokens_source: LimitSource = LimitSource.NONE
    window_s: float = DEFAULT_WINDOW_S
    limited_s: float = 0.0             # time some request waited on this lane's limits
    outage_since: float = 0.0          # wall clock; 0 when the server answers
    outage_s: float = 0.0              # time spent in outages


class RecordLock:
    """A lock between processes that the kernel releases when its holder dies (``lockf`` on a temp file).

    POSIX record locks belong to a process, not to a descriptor, so forked workers that inherit the
    descriptor still exclude each other, and a SIGKILLed holder's lock goes with it.
    """

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="mpinfer-limiter-")
        self._fd = self._file.fileno()

    def __enter__(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)


class LaneArray:
    """Per-lane state in a shared array; every method here expects the limiter's lock to be held."""

    _state: Any
    _lock: Any
    n_models: int
    n_lanes: int
    window_s: float
    _tok_time: Any
    _tok_amount: Any
    rpm: int | None
    tpm: int | None
    span_s: float
    burst_s: float
    margin_s: float

    def _set_limit(self, lane: int, field: int, limit: float, source: LimitSource) -> None:
        """``field`` is REQ_LIMIT or TOK_LIMIT; its source (and, for requests, its cap) follow it. A limit given
        (FLAG: a flag or the endpoints table) stays given when AIMD lowers the rate below it and it grows back."""
        self._set(lane, field, limit)
        self._set(lane, REQ_SRC if field == REQ_LIMIT else TOK_SRC, SOURCES.index(source))
        if source is LimitSource.FLAG:
            self._set(lane, REQ_GIVEN if field == REQ_LIMIT else TOK_GIVEN, 1)
        if field == REQ_LIMIT and source is not LimitSource.LEARNED:
            self._set(lane, REQ_CAP, limit)

    def _get(self, lane: int, field: int) -> float:
        return float(self._state[lane * FIELDS + field])

    def _set(self, lane: int, field: int, value: float) -> None:
        self._state[lane * FIELDS + field] = value

    def _add(self, lane: int, field: int, value: float) -> None:
        self._state[lane * FIELDS + field] += value

    def _outage_wait(self, lane: int, now: float) -> Wait | None:
        """During an outage: a Wait, or None when this request may go as the probe."""
        if self._get(lane, PROBER) < 0 and now >= self._get(lane, PROBE_AT):
            return None
        return Wait(max(0.05, min(self._get(lane, PROBE_AT) - now, PROBE_FIRST_S)), WaitReason.OUTAGE,
                    self._get(lane, OUTAGE_WALL), now - self._get(lane, OUTAGE_AT))

    def _unreachable(self, lane: int, grant: Grant, now: float) -> bool:
        self._add(lane, CONN_FAILS, 1)
        if grant.probe:
            self._set(lane, PROBER, -1)
            gap = min(PROBE_MAX_S, max(PROBE_FIRST_S, 2 * self._get(lane, PROBE_GAP)))
            self._set(lane, PROBE_GAP, gap)
            self._set(lane, PROBE_AT, now + gap)
        elif not self._get(lane, OUTAGE) and self._get(lane, CONN_FAILS) >= OUTAGE_AFTER:
            self._set(lane, OUTAGE, 1)
            self._set(lane, OUTAGE_AT, now)
            self._set(lane, OUTAGE_WALL, time.time())
            self._set(lane, PROBE_GAP, PROBE_FIRST_S)
            self._set(lane, PROBE_AT, now + PROBE_FIRST_S)
            self._set(lane, PROBER, -1)
        return bool(self._get(lane, OUTAGE))

    def _answered(self, lane: int, now: float) -> None:
        """The server answered (anything): no outage."""
        self._set(lane, CONN_FAILS, 0)
        if self._get(lane, OUTAGE):
            self._add(lane, OUTAGE_S, now - self._get(lane, OUTAGE_AT))
            self._set(lane, OUTAGE, 0)
            self._set(lane, PROBER, -1)

    def _grow_rate(self, lane: int, now: float) -> None:
        """Additive increase of a learned rate, up to the flag's or server's limit."""
        dt = min(1.0, now - self._get(lane, RATE_GROWN_AT))
        self._set(lane, RATE_GROWN_AT, now)
        if dt <= 0:
            return
        limit = self._get(lane, REQ_LIMIT) + RATE_GROWTH_PER_S * self._get(lane, RATE_BASE) * dt
        cap = self._get(lane, REQ_CAP)
        if cap > 0 and limit >= cap:
            source = LimitSource.FLAG if self._get(lane, REQ_GIVEN) else LimitSource.SERVER
            self._set_limit(lane, REQ_LIMIT, cap, source)
        else:
            self._set(lane, REQ_LIMIT, limit)

    def _decrease_rate(self, lane: int, now: float) -> None:
        """AIMD's decrease: a share of the rate that was being sent (or of the rate in force, if lower)."""
        current = self._get(lane, REQ_LIMIT) / self.span_s
        sent = self._get(lane, SEND_RATE) or self._get(lane, BUCKET_N)
        if not sent:
            return  # nothing measured yet: nothing to learn from
        rate = max(1.0 / self.span_s, (min(current, sent) if current else sent) * RATE_DECREASE)
        self._set(lane, REQ_LIMIT, rate * self.span_s)
        self._set(lane, REQ_SRC, SOURCES.index(LimitSource.LEARNED))
        self._set(lane, RATE_BASE, rate * self.span_s)
        self._set(lane, RATE_DECREASED_AT, now)
        self._set(lane, ANSWERED_SINCE_DECREASE, 0)
        self._set(lane, RATE_GROWN_AT, now)
        self._set(lane, REQ_TAT, max(self._get(lane, REQ_TAT), now))

    def _expire_tokens(self, lane: int, horizon: float) -> None:
        head, tail = int(self._get(lane, TOK_HEAD)), int(self._get(lane, TOK_TAIL))
        base = lane * TOKEN_RING
        while head < tail and self._tok_time[base + head % TOKEN_RING] <= horizon:
            self._add(lane, TOK_SUM, -self._tok_amount[base + head % TOKEN_RING])
            head += 1
        self._set(lane, TOK_HEAD, head)

    def _tolerance(self, lane: int, source_field: int) -> float:
        """The burst, in seconds of the rate: without a ring to bound the window, no more than the margin."""
        ringed = (self.rpm if source_field == REQ_SRC else self.tpm) and self._get(lane, source_field) == 1
        return self.burst_s if ringed else min(self.burst_s, self.margin_s)

    def _pace_wait(self, lane: int, tat_field: int, limit: float, cost: float, tolerance: float,
                   now: float) -> float:
        """GCRA: how long until a request costing ``cost`` fits the rate ``limit`` per span (<= 0: now)."""
        cost_s = cost * self.span_s / limit
        return max(self._get(lane, tat_field), now) + cost_s - max(tolerance, cost_s) - now

    def _token_live(self, grant: Grant) -> bool:
        """Whether the grant's token charge is still counted in its lane's window."""
        return grant.token_pos >= 0 and grant.token_pos >= self._get(grant.lane, TOK_HEAD)

    def lane_stats(self, now: float) -> list[LaneStats]:
        with self._lock:
            return [
                LaneStats(
                    key=lane // self.n_models, model=lane % self.n_models,
                    requests=int(self._get(lane, REQUESTS)), rate_limited=int(self._get(lane, RATE_LIMITED)),
                    tokens=int(self._get(lane, TOKENS)), in_flight=int(self._get(lane, IN_FLIGHT)),
                    concurrency_limit=self._get(lane, CWND),
                    paused_for_s=max(0.0, self._get(lane, PAUSED_UNTIL) - now),
                    requests_limit=self._get(lane, REQ_LIMIT) * self.window_s / self.span_s
                    if self._get(lane, REQ_SRC) == 3 else self._get(lane, REQ_LIMIT),
                    requests_source=SOURCES[int(self._get(lane, REQ_SRC))],
                    tokens_limit=self._get(lane, TOK_LIMIT), tokens_source=SOURCES[int(self._get(lane, TOK_SRC))],
                    window_s=self.window_s, limited_s=self._get(lane, LIMITED_S),
                    outage_since=self._get(lane, OUTAGE_WALL) if self._get(lane, OUTAGE) else 0.0,
                    outage_s=self._get(lane, OUTAGE_S)
                    + (now - self._get(lane, OUTAGE_AT) if self._get(lane, OUTAGE) else 0.0),
                )
                for lane in range(self.n_lanes)
            ]
