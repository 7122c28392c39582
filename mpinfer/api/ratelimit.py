"""The rate limiter all worker processes share: per lane (one API key and one model), in shared memory.

Per lane:
- **Pacing.** Requests and tokens leave at the rate in force with a burst of at most ``burst_s`` seconds'
  worth (GCRA: one "theoretical arrival time" per lane), so a server that enforces a per-minute limit per
  second (OpenAI: limits "can be quantized") sees a steady stream. The rate is the limit over the window
  plus a margin (2% of it, 0.1 to 1 s), so the server's window, measured on arrival, stays within it.
- **Windows.** With ``--rpm`` no more than ``rpm`` requests start in any window (a ring of start times);
  with ``--tpm`` the tokens charged in any window stay within it (a ring of charges, corrected to the real
  prompt when the answer comes).
- **Where the limit comes from** (LimitSource): the flag; else a limit the server states in
  ``x-ratelimit-limit-*`` (paced with a burst no larger than the margin, so no window can exceed it); else,
  after hint-less 429s, a rate learned by AIMD (0.7 of what was sent, +3% of that a second).
- **Pauses.** A 429's wait hint, or a server saying nothing is left, pauses the lane for every worker; the
  pace starts empty at its end, so requests then leave one at a time, not in a stampede.
- **Concurrency AIMD** for servers with no rate headers (vLLM, DeepSeek, Ollama): halve the requests in
  flight on a 429 or timeout, grow by one per window of successes.
- **Outages**: see lanes.py. **Keys**: a rejected key is disabled for every model; requests go to the
  least-loaded free key.
- **Dead workers.** Grants count against their holder (a worker slot); ``reclaim`` gives back a dead
  holder's requests in flight and its probe. The lock is a ``lockf`` record lock, which the kernel drops
  with its process, so a worker killed holding it cannot stop the others. Token charges stay in the window:
  the server counted those requests too.

The parent creates it before forking; workers inherit the arrays and the lock's descriptor. Time is passed
in (``now``), so the logic is tested without waiting.
"""

from __future__ import annotations

import math
from typing import Any

import mpinfer.api.lanes as L  # the lanes' field indices and constants: L.CWND, L.IN_FLIGHT, ...

from ..errors import NoKeysLeft
from .hints import Hints, parse_duration
from .lanes import Ending, Grant, LaneArray, LaneStats, LimitSource, RecordLock, Wait, WaitReason

__all__ = ["Ending", "Grant", "LaneStats", "LimitSource", "NoKeysLeft", "SharedLimiter", "Wait", "WaitReason",
           "parse_duration"]


class SharedLimiter(LaneArray):
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
        # For each model, the keys (endpoints) that serve it; None: every key serves every model.
        self.serves: tuple[tuple[int, ...], ...] | None = None

    @classmethod
    def create(cls, ctx: Any, n_keys: int, n_models: int, rpm: int | None = None, tpm: int | None = None,
               window_s: float = L.DEFAULT_WINDOW_S, margin_s: float | None = None,
               max_in_flight: int = 1 << 20, burst_s: float = L.DEFAULT_BURST_S, holders: int = 1) -> SharedLimiter:
        """Shared arrays for ``n_keys * n_models`` lanes and ``holders`` workers (``ctx``: multiprocess)."""
        lanes = n_keys * n_models
        window_s = max(L.MIN_WINDOW, window_s)
        if margin_s is None:
            margin_s = min(L.MAX_MARGIN_S, max(L.MIN_MARGIN_S, L.MARGIN_SHARE * window_s))
        state = ctx.RawArray("d", lanes * L.FIELDS)
        req_ring = ctx.RawArray("d", lanes * (rpm or 0))
        ring = L.TOKEN_RING if tpm else 0
        limiter = cls(RecordLock(), state, req_ring, ctx.RawArray("d", lanes * ring),
                      ctx.RawArray("d", lanes * ring), ctx.RawArray("b", n_keys),
                      ctx.RawArray("i", max(1, holders) * lanes), n_keys, n_models, rpm, tpm, window_s,
                      max(0.0, margin_s), max_in_flight, max(0.0, burst_s), max(1, holders))
        for lane in range(lanes):
            limiter._set(lane, L.CWND, float(max_in_flight))
            limiter._set(lane, L.CWND_MAX, float(max_in_flight))
            for field in (L.REQ_TAT, L.TOK_TAT, L.LAST_DECREASE, L.RATE_DECREASED_AT, L.LIMITED_AT, L.BUCKET_AT):
                limiter._set(lane, field, L.NEVER)
            limiter._set(lane, L.PROBER, -1)
            if rpm:
                limiter._set_limit(lane, L.REQ_LIMIT, rpm, LimitSource.FLAG)
            if tpm:
                limiter._set_limit(lane, L.TOK_LIMIT, tpm, LimitSource.FLAG)
        for i in range(len(req_ring)):
            req_ring[i] = -math.inf
        return limiter

    def limit_lane(self, key: int, model: int, rpm: int | None, tpm: int | None,
                   max_in_flight: int | None) -> None:
        """Give one lane (an endpoint's, for one model) its own limits, paced as a flag's, before forking."""
        lane = self.lane(key, model)
        if rpm:
            self._set_limit(lane, L.REQ_LIMIT, rpm, LimitSource.FLAG)
        if tpm:
            self._set_limit(lane, L.TOK_LIMIT, tpm, LimitSource.FLAG)
        if max_in_flight:
            self._set(lane, L.CWND, float(max_in_flight))
            self._set(lane, L.CWND_MAX, float(max_in_flight))

    def _flagged(self, lane: int, source_field: int) -> bool:
        """Whether the lane's limit was given (--rpm/--tpm, set on every lane, or the endpoints table): a
        server's never replaces it, nor after AIMD has lowered the rate below it (the source is then LEARNED
        for a while)."""
        return bool(self._get(lane, L.REQ_GIVEN if source_field == L.REQ_SRC else L.TOK_GIVEN))

    def for_holder(self, holder: int) -> SharedLimiter:
        """This limiter as seen by worker slot ``holder`` (its grants are counted against it)."""
        self.holder = holder % self.holders
        return self

    # -- shared-state helpers (call with the lock held) ----------------------------------------------

    def lane(self, key: int, model: int) -> int:
        return key * self.n_models + model

    def _wait_s(self, lane: int, tokens: int, now: float) -> float:
        """0 when the lane can start a request charged ``tokens`` now, else how long until it may."""
        wait = self._get(lane, L.PAUSED_UNTIL) - now
        if self._get(lane, L.IN_FLIGHT) >= max(1.0, math.floor(self._get(lane, L.CWND))):
            wait = max(wait, 0.05)  # a slot frees when a request ends; look again soon
        limit = self._get(lane, L.REQ_LIMIT)
        if limit > 0:
            wait = max(wait, self._pace_wait(lane, L.REQ_TAT, limit, 1, self._tolerance(lane, L.REQ_SRC), now))
        limit = self._get(lane, L.TOK_LIMIT)
        if limit > 0 and tokens > 0:
            wait = max(wait, self._pace_wait(lane, L.TOK_TAT, limit, min(tokens, limit),
                                             self._tolerance(lane, L.TOK_SRC), now))
        span = self.span_s
        if self.rpm:
            oldest = self._req_ring[lane * self.rpm + int(self._get(lane, L.REQ_COUNT)) % self.rpm]
            wait = max(wait, oldest + span - now)
        if self.tpm:
            self._expire_tokens(lane, now - span)
            head, tail = int(self._get(lane, L.TOK_HEAD)), int(self._get(lane, L.TOK_TAIL))
            total = self._get(lane, L.TOK_SUM)
            base = lane * L.TOKEN_RING
            if tail - head >= L.TOKEN_RING:
                wait = max(wait, self._tok_time[base + head % L.TOKEN_RING] + span - now)
            elif total + tokens > self.tpm and head < tail:
                # Wait until enough of the oldest charges leave the window.
                freed, at = 0.0, head
                while at < tail and total - freed + tokens > self.tpm:
                    freed += self._tok_amount[base + at % L.TOKEN_RING]
                    at += 1
                wait = max(wait, self._tok_time[base + (at - 1) % L.TOKEN_RING] + span - now)
        return max(0.0, wait)

    def _grant(self, lane: int, key: int, tokens: int, now: float, probe: bool) -> Grant:
        self._add(lane, L.IN_FLIGHT, 1)
        self._add(lane, L.REQUESTS, 1)
        self._held[self.holder * self.n_lanes + lane] += 1
        limit = self._get(lane, L.REQ_LIMIT)
        if limit > 0:
            self._set(lane, L.REQ_TAT, max(self._get(lane, L.REQ_TAT), now) + self.span_s / limit)
        limit = self._get(lane, L.TOK_LIMIT)
        if limit > 0:
            self._set(lane, L.TOK_TAT, max(self._get(lane, L.TOK_TAT), now) + min(tokens, limit) * self.span_s / limit)
        # The send rate, counted a second at a time: where AIMD starts when the first 429 comes.
        if now - self._get(lane, L.BUCKET_AT) >= 1.0:
            elapsed = now - self._get(lane, L.BUCKET_AT)
            self._set(lane, L.SEND_RATE, self._get(lane, L.BUCKET_N) / elapsed if elapsed < 2.0 else 0.0)
            self._set(lane, L.BUCKET_AT, now)
            self._set(lane, L.BUCKET_N, 0)
        self._add(lane, L.BUCKET_N, 1)
        request_pos = token_pos = -1
        if self.rpm:
            request_pos = int(self._get(lane, L.REQ_COUNT))
            self._req_ring[lane * self.rpm + request_pos % self.rpm] = now
            self._set(lane, L.REQ_COUNT, request_pos + 1)
        if self.tpm:
            token_pos = int(self._get(lane, L.TOK_TAIL))
            self._tok_time[lane * L.TOKEN_RING + token_pos % L.TOKEN_RING] = now
            self._tok_amount[lane * L.TOKEN_RING + token_pos % L.TOKEN_RING] = tokens
            self._set(lane, L.TOK_TAIL, token_pos + 1)
            self._add(lane, L.TOK_SUM, tokens)
        if probe:
            self._set(lane, L.PROBER, self.holder)
        return Grant(lane, lane // self.n_models, tokens, request_pos, token_pos, self.holder, probe, now)

    def sent(self, grant: Grant, now: float) -> None:
        """The request is leaving now: count it in the windows from now, not from when it was granted.

        The server counts a request when it arrives; building and sending it can take a while on a busy
        machine, and the window must follow the send, or the server would see more than the limit.
        """
        if not (self.rpm or self.tpm):
            return
        with self._lock:
            if self.rpm and int(self._get(grant.lane, L.REQ_COUNT)) - grant.request_pos <= self.rpm:
                slot = grant.lane * self.rpm + grant.request_pos % self.rpm
                self._req_ring[slot] = max(self._req_ring[slot], now)
            if self.tpm and self._token_live(grant):
                slot = grant.lane * L.TOKEN_RING + grant.token_pos % L.TOKEN_RING
                self._tok_time[slot] = max(self._tok_time[slot], now)

    # -- the worker's side ---------------------------------------------------------------------------

    def try_acquire(self, model: int, tokens: int, now: float) -> Grant | Wait:
        """A Grant on the least-loaded free key for ``model``, or a Wait before asking again.

        Raises NoKeysLeft when every key has been disabled. A request larger than the whole token limit
        is charged the limit, so that it can run alone rather than never.
        """
        if self.tpm:
            tokens = min(tokens, self.tpm)
        with self._lock:
            eligible = range(self.n_keys) if self.serves is None else self.serves[model]
            keys = [k for k in eligible if not self._key_disabled[k]]
            if not keys:
                raise NoKeysLeft()
            if len(keys) > 1:
                keys.sort(key=lambda k: self._get(self.lane(k, model), L.IN_FLIGHT))
            best: Wait | None = None
            for key in keys:
                lane = self.lane(key, model)
                probe = False
                if self._get(lane, L.OUTAGE):
                    outage = self._outage_wait(lane, now)
                    if outage is not None:
                        best = outage if best is None or outage.seconds < best.seconds else best
                        continue
                    probe = True
                wait = self._wait_s(lane, tokens, now)
                if wait <= 0:
                    return self._grant(lane, key, tokens, now, probe)
                # Time some request spent waiting on the limits (refusals come at least twice a second).
                since = now - self._get(lane, L.LIMITED_AT)
                if since < 1.0:
                    self._add(lane, L.LIMITED_S, since)
                self._set(lane, L.LIMITED_AT, now)
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
            self._add(lane, L.IN_FLIGHT, -1)
            held = grant.holder * self.n_lanes + lane
            if self._held[held] > 0:
                self._held[held] -= 1
            self._add(lane, L.TOKENS, used)
            if charged is not None and self.tpm:
                # Expire first, so that a charge that has just left the window is not corrected twice.
                self._expire_tokens(lane, now - self.span_s)
                if self._token_live(grant):
                    slot = lane * L.TOKEN_RING + grant.token_pos % L.TOKEN_RING
                    self._add(lane, L.TOK_SUM, charged - self._tok_amount[slot])
                    self._tok_amount[slot] = charged
            if charged is not None and self._get(lane, L.TOK_LIMIT) > 0:
                # The pace follows the correction too: a smaller real prompt gives time back.
                self._add(lane, L.TOK_TAT, (charged - grant.charged) * self.span_s / self._get(lane, L.TOK_LIMIT))
            if ending is Ending.UNSENT:  # neither a request the server saw nor an answer from it
                self._add(lane, L.REQUESTS, -1)
                return bool(self._get(lane, L.OUTAGE))
            if ending is Ending.UNREACHABLE:
                return self._unreachable(lane, grant, now)
            self._answered(lane, now)
            if ending is Ending.OK:
                self._set(lane, L.ANSWERED_SINCE_DECREASE, 1)
            if ending is Ending.OK and self._get(lane, L.REQ_SRC) == 3:
                self._grow_rate(lane, now)
            if self._get(lane, L.HEADERS_SEEN):
                return False
            cwnd = self._get(lane, L.CWND)
            if ending is Ending.OVERLOADED:
                # Once per window of requests: those already in flight at a decrease fail together.
                if grant.at > self._get(lane, L.LAST_DECREASE):
                    self._set(lane, L.CWND, max(1.0, min(cwnd, self._get(lane, L.IN_FLIGHT) + 1) * L.CWND_DECREASE))
                    self._set(lane, L.LAST_DECREASE, now)
            elif ending is Ending.OK and cwnd < self._get(lane, L.CWND_MAX):
                self._set(lane, L.CWND, min(self._get(lane, L.CWND_MAX), cwnd + 1.0 / max(1.0, cwnd)))
            return False

    def rate_limited(self, lane: int, now: float, retry_after: float | None) -> None:
        """A 429 on this lane: count it, and pause the lane for everyone for its wait hint; with no hint at
        all, lower the rate instead (AIMD), at most once a second.

        After a pause requests leave one at a time at the rate in force (its pace starts empty at the end).
        A 429 with a hint lowers no rate: the server said what it wants, and servers that refuse at random
        (a busy proxy) would otherwise drive the rate to nothing.
        """
        with self._lock:
            self._add(lane, L.RATE_LIMITED, 1)
            # The requests in flight are lowered first (release); the rate only once they are down to two
            # (or are not managed), so a server that refuses beyond N in flight keeps its full rate. Once
            # a second at most, and only if something got through since the last decrease: while a server
            # refuses everything (a window that has run out), more refusals say nothing new.
            if (not retry_after and now - self._get(lane, L.RATE_DECREASED_AT) >= 1.0
                    and (self._get(lane, L.HEADERS_SEEN) or self._get(lane, L.CWND) <= 2.0)
                    and (self._get(lane, L.ANSWERED_SINCE_DECREASE) or self._get(lane, L.REQ_SRC) != 3)):
                self._decrease_rate(lane, now)
            if retry_after:
                until = max(self._get(lane, L.PAUSED_UNTIL), now + retry_after)
                self._set(lane, L.PAUSED_UNTIL, until)
                # The pace starts again empty at the end of the pause: the first request goes then, the
                # others one interval after another.
                for tat, limit_field, source_field in ((L.REQ_TAT, L.REQ_LIMIT, L.REQ_SRC),
                                                       (L.TOK_TAT, L.TOK_LIMIT, L.TOK_SRC)):
                    limit = self._get(lane, limit_field)
                    if limit > 0:
                        step = self.span_s / limit if limit_field == L.REQ_LIMIT else 0.0
                        tolerance = max(self._tolerance(lane, source_field), step)
                        self._set(lane, tat, max(self._get(lane, tat), until + tolerance - step))

    def observe(self, lane: int, hints: Hints, now: float) -> None:
        """What a response says of the limits (``api.hints.read_hints``): pace to a stated limit when none was
        given, and pause the lane until the reset when the server says nothing is left. Hints that say nothing
        change nothing: a lane has seen rate headers only once some arrive."""
        if hints.empty:
            return
        pause = hints.exhausted_for_s()
        # Nothing new (the usual case, an endpoint's own limit included): no lock taken. Each test is the
        # negation of an update below.
        if (not pause and self._get(lane, L.HEADERS_SEEN)
                and (not hints.limit_requests or self._flagged(lane, L.REQ_SRC)
                     or self._get(lane, L.REQ_CAP) == hints.limit_requests)
                and (not hints.limit_tokens or self._flagged(lane, L.TOK_SRC)
                     or self._get(lane, L.TOK_LIMIT) == hints.limit_tokens)):
            return
        with self._lock:
            if not self._get(lane, L.HEADERS_SEEN):
                self._set(lane, L.HEADERS_SEEN, 1)
                self._set(lane, L.CWND, self._get(lane, L.CWND_MAX))
            if (hints.limit_requests and not self._flagged(lane, L.REQ_SRC)
                    and self._get(lane, L.REQ_CAP) != hints.limit_requests):
                self._set_limit(lane, L.REQ_LIMIT, hints.limit_requests, LimitSource.SERVER)
            if (hints.limit_tokens and not self._flagged(lane, L.TOK_SRC)
                    and self._get(lane, L.TOK_LIMIT) != hints.limit_tokens):
                self._set_limit(lane, L.TOK_LIMIT, hints.limit_tokens, LimitSource.SERVER)
            if pause:
                self._set(lane, L.PAUSED_UNTIL, max(self._get(lane, L.PAUSED_UNTIL), now + pause))

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
                self._set(lane, L.IN_FLIGHT, max(0.0, self._get(lane, L.IN_FLIGHT) - count))
                if self._get(lane, L.PROBER) == holder:
                    self._set(lane, L.PROBER, -1)
        return total
