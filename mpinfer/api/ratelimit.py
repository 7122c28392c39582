"""The rate limiter all worker processes share: per lane (one API key and one model), in shared memory.

What it guarantees, per lane:
- **Pacing.** Requests (and tokens) leave at the rate in force, with a burst of at most ``burst_s`` seconds'
  worth (a GCRA token bucket: one "theoretical arrival time" per lane), so a server that enforces a
  per-minute limit per second (OpenAI: "rate limits can be quantized") sees a steady stream, not the whole
  minute's allowance at once. The rate is the limit over the window plus a margin, so the server's window,
  measured on arrival, stays within the limit too.
- **Windows.** With ``--rpm``, no more than ``rpm`` requests start in any window either (a ring of the last
  ``rpm`` start times); with ``--tpm``, the tokens charged in any window stay within it (a ring of charges,
  corrected to the real prompt tokens when the answer comes).
- **Where the limit comes from** (``LimitSource``): the flag; else the limit a server states in
  ``x-ratelimit-limit-*`` (paced to, with a burst no larger than the margin, so that no window can exceed
  it); else, when 429s come with no hint, a rate learned by AIMD: lowered to 0.7 of the rate that was being
  sent, raised again by 3% of that a second while requests succeed, never above a flag's or server's limit.
- **Pauses.** A 429's wait hint, or a server saying nothing is left, pauses the lane for every worker;
  after the pause requests leave one at a time at the rate in force, not in a stampede.
- **Concurrency AIMD** for servers that send no rate headers (vLLM, DeepSeek, Ollama): the requests in flight
  are halved on a 429 or a timeout and grow by one per window of successes.
- **Outages.** After ``OUTAGE_AFTER`` connection failures in a row with no answer between them, the lane
  stops sending; one probe at a time goes out on a backoff (0.5 s doubling to 4 s) and the first answer of
  any kind ends the outage.
- **Keys.** A key that is rejected is disabled for every model; requests go to the least-loaded free key.
- **Dead workers.** Each grant is counted against its holder (a worker slot); ``reclaim`` gives back what a
  dead holder had in flight (its probe included). The lock is a POSIX record lock (``lockf``), which the
  kernel drops when its process dies, so a worker killed while holding it cannot stop the others. Token
  charges stay in the window: the server counted those requests too.

The parent creates it before forking; workers inherit the shared arrays and the lock file's descriptor.
Time is passed in (``now``), so the logic is tested without waiting.
"""

from __future__ import annotations

import fcntl
import math
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any

from ..errors import NoKeysLeft
from .hints import Hints, parse_duration, read_hints

__all__ = ["Ending", "Grant", "LaneStats", "LimitSource", "NoKeysLeft", "SharedLimiter", "Wait", "WaitReason",
           "parse_duration"]

DEFAULT_WINDOW_S = 60.0
DEFAULT_BURST_S = 1.0
# Requests reach the server a little after they leave the limiter; the margin keeps the server's window,
# measured on arrival, within the limit too: 2% of the window, between 0.1 s and 1 s (1.6% of a minute).
MARGIN_SHARE = 0.02
MAX_MARGIN_S = 1.0
MIN_MARGIN_S = 0.1
TOKEN_RING = 16384
_MIN_WINDOW = 1.0
# AIMD on the rate: keep this share of the rate sent when a 429 came; grow by this share of it a second.
RATE_DECREASE = 0.7
RATE_GROWTH_PER_S = 0.03
# Connection failures in a row (no answer between them) that make an outage, and the probes' backoff.
OUTAGE_AFTER = 3
PROBE_FIRST_S = 0.5
PROBE_MAX_S = 4.0
_NEVER = -1e18

# Per-lane fields in the shared state array.
(_PAUSED_UNTIL, _IN_FLIGHT, _CWND, _HEADERS_SEEN, _REQ_COUNT, _TOK_HEAD, _TOK_TAIL, _TOK_SUM,
 _REQUESTS, _RATE_LIMITED, _TOKENS, _LAST_DECREASE, _CWND_MAX,
 _REQ_TAT, _REQ_LIMIT, _REQ_CAP, _REQ_SRC, _TOK_TAT, _TOK_LIMIT, _TOK_SRC,
 _RATE_BASE, _RATE_GROWN_AT, _RATE_DECREASED_AT, _BUCKET_AT, _BUCKET_N, _SEND_RATE,
 _CONN_FAILS, _OUTAGE, _OUTAGE_AT, _OUTAGE_WALL, _PROBE_AT, _PROBER, _PROBE_GAP, _OUTAGE_S,
 _LIMITED_S, _LIMITED_AT) = range(36)
_FIELDS = 36


class LimitSource(StrEnum):
    """Where the limit in force on a lane came from."""

    NONE = "none"
    FLAG = "flag"          # --rpm / --tpm
    SERVER = "server"      # x-ratelimit-limit-* on a response
    LEARNED = "learned"    # lowered by 429s (AIMD)


_SOURCES = tuple(LimitSource)


class Ending(StrEnum):
    """How a request ended, as the limiter needs to know it."""

    OK = "ok"
    OVERLOADED = "overloaded"    # a 429 or a timeout: the server wants less
    UNREACHABLE = "unreachable"  # no answer at all: refused, reset, DNS, TLS
    ERROR = "error"              # the server answered with another error


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
    """

    lane: int
    key: int
    charged: int
    request_pos: int
    token_pos: int
    holder: int = 0
    probe: bool = False


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


class _RecordLock:
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


class SharedLimiter:
    """Limits shared by every process of a run. Build it with ``create`` in the parent, before forking."""

    def __init__(self, lock: Any, state: Any, req_ring: Any, tok_time: Any, tok_amount: Any, key_disabled: Any,
                 held: Any, n_keys: int, n_models: int, rpm: int | None, tpm: int | None, window_s: float,
                 margin_s: float, max_in_flight: int, burst_s: float, holders: int) -> None:
        self._lock = lock
        self._state = state
        self._req_ring = req_ring
        self._tok_time = tok_time
        self._tok_amount = tok_amount
        self._key_disabled = key_disabled
        self._held = held
        self.n_keys = n_keys
        self.n_models = n_models
        self.n_lanes = n_keys * n_models
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self.margin_s = margin_s
        self.span_s = window_s + margin_s
        self.max_in_flight = max_in_flight
        self.burst_s = burst_s
        self.holders = holders
        self.holder = 0  # which holder this process's grants count against (set in each worker)

    @classmethod
    def create(cls, ctx: Any, n_keys: int, n_models: int, rpm: int | None = None, tpm: int | None = None,
               window_s: float = DEFAULT_WINDOW_S, margin_s: float | None = None,
               max_in_flight: int = 1 << 20, burst_s: float = DEFAULT_BURST_S, holders: int = 1) -> SharedLimiter:
        """Shared arrays for ``n_keys * n_models`` lanes and ``holders`` workers (``ctx``: multiprocess)."""
        lanes = n_keys * n_models
        window_s = max(_MIN_WINDOW, window_s)
        if margin_s is None:
            margin_s = min(MAX_MARGIN_S, max(MIN_MARGIN_S, MARGIN_SHARE * window_s))
        state = ctx.RawArray("d", lanes * _FIELDS)
        req_ring = ctx.RawArray("d", lanes * (rpm or 0))
        ring = TOKEN_RING if tpm else 0
        limiter = cls(_RecordLock(), state, req_ring, ctx.RawArray("d", lanes * ring),
                      ctx.RawArray("d", lanes * ring), ctx.RawArray("b", n_keys),
                      ctx.RawArray("i", max(1, holders) * lanes), n_keys, n_models, rpm, tpm, window_s,
                      max(0.0, margin_s), max_in_flight, max(0.0, burst_s), max(1, holders))
        for lane in range(lanes):
            limiter._set(lane, _CWND, float(max_in_flight))
            limiter._set(lane, _CWND_MAX, float(max_in_flight))
            for field in (_REQ_TAT, _TOK_TAT, _LAST_DECREASE, _RATE_DECREASED_AT, _LIMITED_AT, _BUCKET_AT):
                limiter._set(lane, field, _NEVER)
            limiter._set(lane, _PROBER, -1)
            if rpm:
                limiter._set_limit(lane, _REQ_LIMIT, rpm, LimitSource.FLAG)
            if tpm:
                limiter._set_limit(lane, _TOK_LIMIT, tpm, LimitSource.FLAG)
        for i in range(len(req_ring)):
            req_ring[i] = -math.inf
        return limiter

    def for_holder(self, holder: int) -> SharedLimiter:
        """This limiter as seen by worker slot ``holder`` (its grants are counted against it)."""
        self.holder = holder % self.holders
        return self

    # -- shared-state helpers (call with the lock held) ----------------------------------------------

    def _get(self, lane: int, field: int) -> float:
        return float(self._state[lane * _FIELDS + field])

    def _set(self, lane: int, field: int, value: float) -> None:
        self._state[lane * _FIELDS + field] = value

    def _add(self, lane: int, field: int, value: float) -> None:
        self._state[lane * _FIELDS + field] += value

    def _set_limit(self, lane: int, field: int, limit: float, source: LimitSource) -> None:
        """``field`` is _REQ_LIMIT or _TOK_LIMIT; its cap and source follow it."""
        self._set(lane, field, limit)
        self._set(lane, _REQ_SRC if field == _REQ_LIMIT else _TOK_SRC, _SOURCES.index(source))
        if field == _REQ_LIMIT and source is not LimitSource.LEARNED:
            self._set(lane, _REQ_CAP, limit)

    def lane(self, key: int, model: int) -> int:
        return key * self.n_models + model

    def _expire_tokens(self, lane: int, horizon: float) -> None:
        head, tail = int(self._get(lane, _TOK_HEAD)), int(self._get(lane, _TOK_TAIL))
        base = lane * TOKEN_RING
        while head < tail and self._tok_time[base + head % TOKEN_RING] <= horizon:
            self._add(lane, _TOK_SUM, -self._tok_amount[base + head % TOKEN_RING])
            head += 1
        self._set(lane, _TOK_HEAD, head)

    def _tolerance(self, lane: int, source_field: int) -> float:
        """The burst, in seconds of the rate: without a ring to bound the window, no more than the margin."""
        ringed = (self.rpm if source_field == _REQ_SRC else self.tpm) and self._get(lane, source_field) == 1
        return self.burst_s if ringed else min(self.burst_s, self.margin_s)

    def _pace_wait(self, lane: int, tat_field: int, limit: float, cost: float, tolerance: float,
                   now: float) -> float:
        """GCRA: how long until a request costing ``cost`` fits the rate ``limit`` per span (<= 0: now)."""
        cost_s = cost * self.span_s / limit
        return max(self._get(lane, tat_field), now) + cost_s - max(tolerance, cost_s) - now

    def _wait_s(self, lane: int, tokens: int, now: float) -> float:
        """0 when the lane can start a request charged ``tokens`` now, else how long until it may."""
        wait = self._get(lane, _PAUSED_UNTIL) - now
        if self._get(lane, _IN_FLIGHT) >= max(1.0, math.floor(self._get(lane, _CWND))):
            wait = max(wait, 0.05)  # a slot frees when a request ends; look again soon
        limit = self._get(lane, _REQ_LIMIT)
        if limit > 0:
            wait = max(wait, self._pace_wait(lane, _REQ_TAT, limit, 1, self._tolerance(lane, _REQ_SRC), now))
        limit = self._get(lane, _TOK_LIMIT)
        if limit > 0 and tokens > 0:
            wait = max(wait, self._pace_wait(lane, _TOK_TAT, limit, min(tokens, limit),
                                             self._tolerance(lane, _TOK_SRC), now))
        span = self.span_s
        if self.rpm:
            oldest = self._req_ring[lane * self.rpm + int(self._get(lane, _REQ_COUNT)) % self.rpm]
            wait = max(wait, oldest + span - now)
        if self.tpm:
            self._expire_tokens(lane, now - span)
            head, tail = int(self._get(lane, _TOK_HEAD)), int(self._get(lane, _TOK_TAIL))
            total = self._get(lane, _TOK_SUM)
            base = lane * TOKEN_RING
            if tail - head >= TOKEN_RING:
                wait = max(wait, self._tok_time[base + head % TOKEN_RING] + span - now)
            elif total + tokens > self.tpm and head < tail:
                # Wait until enough of the oldest charges leave the window.
                freed, at = 0.0, head
                while at < tail and total - freed + tokens > self.tpm:
                    freed += self._tok_amount[base + at % TOKEN_RING]
                    at += 1
                wait = max(wait, self._tok_time[base + (at - 1) % TOKEN_RING] + span - now)
        return max(0.0, wait)

    def _grant(self, lane: int, key: int, tokens: int, now: float, probe: bool) -> Grant:
        self._add(lane, _IN_FLIGHT, 1)
        self._add(lane, _REQUESTS, 1)
        self._held[self.holder * self.n_lanes + lane] += 1
        limit = self._get(lane, _REQ_LIMIT)
        if limit > 0:
            self._set(lane, _REQ_TAT, max(self._get(lane, _REQ_TAT), now) + self.span_s / limit)
        limit = self._get(lane, _TOK_LIMIT)
        if limit > 0:
            self._set(lane, _TOK_TAT, max(self._get(lane, _TOK_TAT), now) + min(tokens, limit) * self.span_s / limit)
        # The send rate, counted a second at a time: where AIMD starts when the first 429 comes.
        if now - self._get(lane, _BUCKET_AT) >= 1.0:
            elapsed = now - self._get(lane, _BUCKET_AT)
            self._set(lane, _SEND_RATE, self._get(lane, _BUCKET_N) / elapsed if elapsed < 2.0 else 0.0)
            self._set(lane, _BUCKET_AT, now)
            self._set(lane, _BUCKET_N, 0)
        self._add(lane, _BUCKET_N, 1)
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
        if probe:
            self._set(lane, _PROBER, self.holder)
        return Grant(lane, lane // self.n_models, tokens, request_pos, token_pos, self.holder, probe)

    def _token_live(self, grant: Grant) -> bool:
        """Whether the grant's token charge is still counted in its lane's window."""
        return grant.token_pos >= 0 and grant.token_pos >= self._get(grant.lane, _TOK_HEAD)

    def sent(self, grant: Grant, now: float) -> None:
        """The request is leaving now: count it in the windows from now, not from when it was granted.

        The server counts a request when it arrives; building and sending it can take a while on a busy
        machine, and the window must follow the send, or the server would see more than the limit.
        """
        if not (self.rpm or self.tpm):
            return
        with self._lock:
            if self.rpm and int(self._get(grant.lane, _REQ_COUNT)) - grant.request_pos <= self.rpm:
                slot = grant.lane * self.rpm + grant.request_pos % self.rpm
                self._req_ring[slot] = max(self._req_ring[slot], now)
            if self.tpm and self._token_live(grant):
                slot = grant.lane * TOKEN_RING + grant.token_pos % TOKEN_RING
                self._tok_time[slot] = max(self._tok_time[slot], now)

    # -- the worker's side ---------------------------------------------------------------------------

    def _outage_wait(self, lane: int, now: float) -> Wait | None:
        """During an outage: a Wait, or None when this request may go as the probe."""
        if self._get(lane, _PROBER) < 0 and now >= self._get(lane, _PROBE_AT):
            return None
        return Wait(max(0.05, min(self._get(lane, _PROBE_AT) - now, PROBE_FIRST_S)), WaitReason.OUTAGE,
                    self._get(lane, _OUTAGE_WALL), now - self._get(lane, _OUTAGE_AT))

    def try_acquire(self, model: int, tokens: int, now: float) -> Grant | Wait:
        """A Grant on the least-loaded free key for ``model``, or a Wait before asking again.

        Raises NoKeysLeft when every key has been disabled. A request larger than the whole token limit
        is charged the limit, so that it can run alone rather than never.
        """
        if self.tpm:
            tokens = min(tokens, self.tpm)
        with self._lock:
            keys = [k for k in range(self.n_keys) if not self._key_disabled[k]]
            if not keys:
                raise NoKeysLeft()
            if len(keys) > 1:
                keys.sort(key=lambda k: self._get(self.lane(k, model), _IN_FLIGHT))
            best: Wait | None = None
            for key in keys:
                lane = self.lane(key, model)
                probe = False
                if self._get(lane, _OUTAGE):
                    outage = self._outage_wait(lane, now)
                    if outage is not None:
                        best = outage if best is None or outage.seconds < best.seconds else best
                        continue
                    probe = True
                wait = self._wait_s(lane, tokens, now)
                if wait <= 0:
                    return self._grant(lane, key, tokens, now, probe)
                # Time some request spent waiting on the limits (refusals come at least twice a second).
                since = now - self._get(lane, _LIMITED_AT)
                if since < 1.0:
                    self._add(lane, _LIMITED_S, since)
                self._set(lane, _LIMITED_AT, now)
                if best is None or wait < best.seconds:
                    best = Wait(wait)
            assert best is not None
            return best

    def release(self, grant: Grant, now: float, ending: Ending = Ending.OK, *, charged: int | None = None,
                used: int = 0) -> bool:
        """A request ended; returns whether its lane is in an outage (the server does not answer).

        ``charged`` corrects its token charge and ``used`` counts its real tokens. OVERLOADED (429 or
        timeout) lowers the lane's concurrency when the server sends no rate headers; OK grows it again.
        """
        lane = grant.lane
        with self._lock:
            self._add(lane, _IN_FLIGHT, -1)
            held = grant.holder * self.n_lanes + lane
            if self._held[held] > 0:
                self._held[held] -= 1
            self._add(lane, _TOKENS, used)
            if charged is not None and self.tpm:
                # Expire first, so that a charge that has just left the window is not corrected twice.
                self._expire_tokens(lane, now - self.span_s)
                if self._token_live(grant):
                    slot = lane * TOKEN_RING + grant.token_pos % TOKEN_RING
                    self._add(lane, _TOK_SUM, charged - self._tok_amount[slot])
                    self._tok_amount[slot] = charged
            if charged is not None and self._get(lane, _TOK_LIMIT) > 0:
                # The pace follows the correction too: a smaller real prompt gives time back.
                self._add(lane, _TOK_TAT, (charged - grant.charged) * self.span_s / self._get(lane, _TOK_LIMIT))
            if ending is Ending.UNREACHABLE:
                return self._unreachable(lane, grant, now)
            self._answered(lane, now)
            if ending is Ending.OK and self._get(lane, _REQ_SRC) == 3:
                self._grow_rate(lane, now)
            if self._get(lane, _HEADERS_SEEN):
                return False
            cwnd = self._get(lane, _CWND)
            if ending is Ending.OVERLOADED:
                # One decrease per second: the requests that were in flight together fail together.
                if now - self._get(lane, _LAST_DECREASE) >= 1.0:
                    self._set(lane, _CWND, max(1.0, min(cwnd, self._get(lane, _IN_FLIGHT) + 1) / 2))
                    self._set(lane, _LAST_DECREASE, now)
            elif ending is Ending.OK and cwnd < self._get(lane, _CWND_MAX):
                self._set(lane, _CWND, min(self._get(lane, _CWND_MAX), cwnd + 1.0 / max(1.0, cwnd)))
            return False

    def _unreachable(self, lane: int, grant: Grant, now: float) -> bool:
        self._add(lane, _CONN_FAILS, 1)
        if grant.probe:
            self._set(lane, _PROBER, -1)
            gap = min(PROBE_MAX_S, max(PROBE_FIRST_S, 2 * self._get(lane, _PROBE_GAP)))
            self._set(lane, _PROBE_GAP, gap)
            self._set(lane, _PROBE_AT, now + gap)
        elif not self._get(lane, _OUTAGE) and self._get(lane, _CONN_FAILS) >= OUTAGE_AFTER:
            self._set(lane, _OUTAGE, 1)
            self._set(lane, _OUTAGE_AT, now)
            self._set(lane, _OUTAGE_WALL, time.time())
            self._set(lane, _PROBE_GAP, PROBE_FIRST_S)
            self._set(lane, _PROBE_AT, now + PROBE_FIRST_S)
            self._set(lane, _PROBER, -1)
        return bool(self._get(lane, _OUTAGE))

    def _answered(self, lane: int, now: float) -> None:
        """The server answered (anything): no outage."""
        self._set(lane, _CONN_FAILS, 0)
        if self._get(lane, _OUTAGE):
            self._add(lane, _OUTAGE_S, now - self._get(lane, _OUTAGE_AT))
            self._set(lane, _OUTAGE, 0)
            self._set(lane, _PROBER, -1)

    def _grow_rate(self, lane: int, now: float) -> None:
        """Additive increase of a learned rate, up to the flag's or server's limit."""
        dt = min(1.0, now - self._get(lane, _RATE_GROWN_AT))
        self._set(lane, _RATE_GROWN_AT, now)
        if dt <= 0:
            return
        limit = self._get(lane, _REQ_LIMIT) + RATE_GROWTH_PER_S * self._get(lane, _RATE_BASE) * dt
        cap = self._get(lane, _REQ_CAP)
        if cap > 0 and limit >= cap:
            source = LimitSource.FLAG if self.rpm else LimitSource.SERVER
            self._set_limit(lane, _REQ_LIMIT, cap, source)
        else:
            self._set(lane, _REQ_LIMIT, limit)

    def rate_limited(self, lane: int, now: float, retry_after: float | None) -> None:
        """A 429 on this lane: count it, and pause the lane for everyone for its wait hint; with no hint at
        all, lower the rate instead (AIMD), at most once a second.

        After a pause requests leave one at a time at the rate in force (its pace starts empty at the end).
        A 429 with a hint lowers no rate: the server said what it wants, and servers that refuse at random
        (a busy proxy) would otherwise drive the rate to nothing.
        """
        with self._lock:
            self._add(lane, _RATE_LIMITED, 1)
            if not retry_after and now - self._get(lane, _RATE_DECREASED_AT) >= 1.0:
                self._decrease_rate(lane, now)
            if retry_after:
                until = max(self._get(lane, _PAUSED_UNTIL), now + retry_after)
                self._set(lane, _PAUSED_UNTIL, until)
                # The pace starts again empty at the end of the pause: the first request goes then, the
                # others one interval after another.
                for tat, limit_field, source_field in ((_REQ_TAT, _REQ_LIMIT, _REQ_SRC),
                                                       (_TOK_TAT, _TOK_LIMIT, _TOK_SRC)):
                    limit = self._get(lane, limit_field)
                    if limit > 0:
                        step = self.span_s / limit if limit_field == _REQ_LIMIT else 0.0
                        tolerance = max(self._tolerance(lane, source_field), step)
                        self._set(lane, tat, max(self._get(lane, tat), until + tolerance - step))

    def _decrease_rate(self, lane: int, now: float) -> None:
        """AIMD's decrease: a share of the rate that was being sent (or of the rate in force, if lower)."""
        current = self._get(lane, _REQ_LIMIT) / self.span_s
        sent = self._get(lane, _SEND_RATE) or self._get(lane, _BUCKET_N)
        if not sent:
            return  # nothing measured yet: nothing to learn from
        rate = max(1.0 / self.span_s, (min(current, sent) if current else sent) * RATE_DECREASE)
        self._set(lane, _REQ_LIMIT, rate * self.span_s)
        self._set(lane, _REQ_SRC, _SOURCES.index(LimitSource.LEARNED))
        self._set(lane, _RATE_BASE, rate * self.span_s)
        self._set(lane, _RATE_DECREASED_AT, now)
        self._set(lane, _RATE_GROWN_AT, now)
        self._set(lane, _REQ_TAT, max(self._get(lane, _REQ_TAT), now))

    def observe_headers(self, lane: int, headers: Any, now: float) -> None:
        """Read what a response says of the limits: pace to a stated limit when no flag sets one, and pause
        the lane until the reset when the server says nothing is left."""
        hints = read_hints(headers) if headers is not None else None
        if hints is None or hints.empty:
            return
        self.observe(lane, hints, now)

    def observe(self, lane: int, hints: Hints, now: float) -> None:
        pause = hints.exhausted_for_s()
        if (not pause and self._get(lane, _HEADERS_SEEN)
                and (self.rpm or not hints.limit_requests or self._get(lane, _REQ_CAP) == hints.limit_requests)
                and (self.tpm or not hints.limit_tokens or self._get(lane, _TOK_LIMIT) == hints.limit_tokens)):
            return  # nothing new (the usual case): no lock taken
        with self._lock:
            if not self._get(lane, _HEADERS_SEEN):
                self._set(lane, _HEADERS_SEEN, 1)
                self._set(lane, _CWND, self._get(lane, _CWND_MAX))
            if hints.limit_requests and not self.rpm and self._get(lane, _REQ_CAP) != hints.limit_requests:
                self._set_limit(lane, _REQ_LIMIT, hints.limit_requests, LimitSource.SERVER)
            if hints.limit_tokens and not self.tpm and self._get(lane, _TOK_LIMIT) != hints.limit_tokens:
                self._set_limit(lane, _TOK_LIMIT, hints.limit_tokens, LimitSource.SERVER)
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

    def reclaim(self, holder: int) -> int:
        """A worker died: give back the requests it had in flight (and its probe); how many there were."""
        holder %= self.holders
        total = 0
        with self._lock:
            for lane in range(self.n_lanes):
                at = holder * self.n_lanes + lane
                count = self._held[at]
                self._held[at] = 0
                total += count
                self._set(lane, _IN_FLIGHT, max(0.0, self._get(lane, _IN_FLIGHT) - count))
                if self._get(lane, _PROBER) == holder:
                    self._set(lane, _PROBER, -1)
        return total

    def lane_stats(self, now: float) -> list[LaneStats]:
        with self._lock:
            return [
                LaneStats(
                    key=lane // self.n_models, model=lane % self.n_models,
                    requests=int(self._get(lane, _REQUESTS)), rate_limited=int(self._get(lane, _RATE_LIMITED)),
                    tokens=int(self._get(lane, _TOKENS)), in_flight=int(self._get(lane, _IN_FLIGHT)),
                    concurrency_limit=self._get(lane, _CWND),
                    paused_for_s=max(0.0, self._get(lane, _PAUSED_UNTIL) - now),
                    requests_limit=self._get(lane, _REQ_LIMIT) * self.window_s / self.span_s
                    if self._get(lane, _REQ_SRC) == 3 else self._get(lane, _REQ_LIMIT),
                    requests_source=_SOURCES[int(self._get(lane, _REQ_SRC))],
                    tokens_limit=self._get(lane, _TOK_LIMIT), tokens_source=_SOURCES[int(self._get(lane, _TOK_SRC))],
                    window_s=self.window_s, limited_s=self._get(lane, _LIMITED_S),
                    outage_since=self._get(lane, _OUTAGE_WALL) if self._get(lane, _OUTAGE) else 0.0,
                    outage_s=self._get(lane, _OUTAGE_S)
                    + (now - self._get(lane, _OUTAGE_AT) if self._get(lane, _OUTAGE) else 0.0),
                )
                for lane in range(self.n_lanes)
            ]
