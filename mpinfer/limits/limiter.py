"""The rate limiter all worker processes share: per lane (an API key and a model), in shared memory.

Per lane (lanes.py holds its record):
- **Pacing** (pacing.py): requests and tokens leave at the rate in force with a burst of at most
  ``burst_s`` seconds' worth; the rate is the limit over the window plus a margin.
- **Windows** (windows.py): with --rpm no more than rpm requests start in any window, with --tpm
  the tokens charged in any window stay within it.
- **Where the limit comes from** (LimitSource): the flag (or the endpoints table); else a limit the
  server states in ``x-ratelimit-limit-*`` (hints.py), paced with a burst no larger than the margin,
  so no window can exceed it; else, after hint-less 429s, a rate learned by AIMD (learned.py).
- **Pauses.** A 429's wait hint, or a server saying nothing is left, pauses the lane for every
  worker; the pace starts empty at its end, so requests then leave one at a time, not in a stampede.
- **Concurrency AIMD** for servers with no rate headers (learned.py), and **outages** (outage.py).
- **Keys**: a rejected key is disabled for every model; requests go to the least-loaded free key.
- **Dead workers.** Grants count against their holder (a worker slot); ``reclaim`` gives back a dead
  holder's requests in flight and its probe. The lock is a ``lockf`` record lock, which the kernel
  drops with its process, so a worker killed holding it cannot stop the others. Token charges stay
  in the window: the server counted those requests too.

The parent builds it before forking; workers inherit the arrays and the lock's descriptor. Time is
passed in (``now``), so the logic is tested without waiting.
"""

from __future__ import annotations

import fcntl
import math
import tempfile
from types import TracebackType
from typing import Any

from ..errors import NoKeysLeft
from . import learned, outage
from .grants import Ending, Grant, Wait
from .hints import Hints
from .lanes import FLAG, Lane, LaneStats, LimitSource
from .pacing import MIN_WINDOW, margin_for, pace_wait, paced
from .settings import LimiterSettings
from .windows import TOKEN_RING, expire_tokens, token_window_wait


class RecordLock:
    """A lock between processes that the kernel drops when its holder dies (``lockf``, a temp file).

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
    """Limits shared by every process of a run: build it from its settings in the parent, then fork.

    Shared memory: ``_lanes`` (a Lane per lane), the windows' rings (``_req_ring``: rpm start times
    per lane; ``_tok_time``/``_tok_amount``: TOKEN_RING charges per lane), ``_key_disabled`` (per
    key) and ``_held`` (grants in flight, per holder and lane).
    """

    def __init__(self, settings: LimiterSettings) -> None:
        # Loaded here, not with the module: reading a run's lane counters (a report) needs no fork.
        from multiprocess.sharedctypes import RawArray

        n_lanes = settings.n_keys * settings.n_models
        self.n_keys = settings.n_keys
        self.n_models = settings.n_models
        self.n_lanes = n_lanes
        self.rpm = settings.rpm
        self.tpm = settings.tpm
        self.window_s = max(MIN_WINDOW, settings.window_s)
        margin_s = settings.margin_s
        self.margin_s = max(0.0, margin_for(self.window_s) if margin_s is None else margin_s)
        self.span_s = self.window_s + self.margin_s
        self.burst_s = max(0.0, settings.burst_s)
        self.holders = max(1, settings.holders)
        # For each model, the keys (endpoints) that serve it; None: every key serves every model.
        self.serves = settings.serves
        self._lock = RecordLock()
        self._lanes: Any = RawArray(Lane, n_lanes)
        self._req_ring: Any = RawArray("d", n_lanes * (self.rpm or 0))
        ring = TOKEN_RING if self.tpm else 0
        self._tok_time: Any = RawArray("d", n_lanes * ring)
        self._tok_amount: Any = RawArray("d", n_lanes * ring)
        self._key_disabled: Any = RawArray("b", self.n_keys)
        self._held: Any = RawArray("i", self.holders * n_lanes)
        for index in range(n_lanes):
            lane = self._lanes[index]
            lane.start(settings.max_in_flight)
            if self.rpm:
                lane.set_request_limit(self.rpm, LimitSource.FLAG)
            if self.tpm:
                lane.set_token_limit(self.tpm, LimitSource.FLAG)
        for own in settings.lanes:
            self.limit_lane(own.key, own.model_index, own.rpm, own.tpm, own.max_in_flight)
        for i in range(len(self._req_ring)):
            self._req_ring[i] = -math.inf

    def limit_lane(self, key: int, model_index: int, rpm: int | None, tpm: int | None,
                   max_in_flight: int | None) -> None:
        """Give one lane (an endpoint's, for one model) its own limits, paced as a flag's."""
        lane = self._lanes[self.lane(key, model_index)]
        if rpm:
            lane.set_request_limit(rpm, LimitSource.FLAG)
        if tpm:
            lane.set_token_limit(tpm, LimitSource.FLAG)
        if max_in_flight:
            lane.concurrency = lane.concurrency_max = float(max_in_flight)

    def lane(self, key: int, model_index: int) -> int:
        """The lane of ``key`` and ``model_index``."""
        return key * self.n_models + model_index

    # -- with the lock held ----------------------------------------------------------------------

    def _tolerance(self, lane: Lane, tokens: bool) -> float:
        """The burst, in seconds of the rate: without a ring to bound the window, no more than the
        margin (a limit the server states, or a learned one)."""
        if tokens:
            ringed = self.tpm and lane.token_source == FLAG
        else:
            ringed = self.rpm and lane.request_source == FLAG
        return self.burst_s if ringed else min(self.burst_s, self.margin_s)

    def _wait_s(self, index: int, lane: Lane, tokens: int, now: float) -> float:
        """0 when the lane can start a request charged ``tokens`` now, else how long until then."""
        wait = lane.paused_until - now
        if lane.in_flight >= max(1.0, math.floor(lane.concurrency)):
            wait = max(wait, 0.05)  # a slot frees when a request ends; look again soon
        span = self.span_s
        limit = lane.request_limit
        if limit > 0:
            wait = max(wait, pace_wait(lane.request_tat, limit, 1, self._tolerance(lane, False),
                                       span, now))
        limit = lane.token_limit
        if limit > 0 and tokens > 0:
            wait = max(wait, pace_wait(lane.token_tat, limit, min(tokens, limit),
                                       self._tolerance(lane, True), span, now))
        if self.rpm:
            oldest = self._req_ring[index * self.rpm + lane.next_request_pos % self.rpm]
            wait = max(wait, oldest + span - now)
        if self.tpm:
            wait = max(wait, token_window_wait(lane, self._tok_time, self._tok_amount,
                                               index * TOKEN_RING, tokens, self.tpm, span, now))
        return max(0.0, wait)

    def _grant(self, index: int, lane: Lane, key: int, tokens: int, now: float, holder: int,
               probe: bool) -> Grant:
        """Count a request on the lane (in flight, in its pace and windows) and grant it.

        Called under the lock once the lane is chosen. The grant keeps its places in the request
        and token windows, so that the send (``sent``) and the end (``release``) can move its time
        and correct its charge there.
        """
        lane.in_flight += 1
        lane.requests += 1
        self._held[holder * self.n_lanes + index] += 1
        limit = lane.request_limit
        if limit > 0:
            lane.request_tat = paced(lane.request_tat, limit, 1, self.span_s, now)
        limit = lane.token_limit
        if limit > 0:
            lane.token_tat = paced(lane.token_tat, limit, min(tokens, limit), self.span_s, now)
        # The send rate, counted a second at a time: where AIMD starts when the first 429 comes.
        elapsed = now - lane.bucket_at
        if elapsed >= 1.0:
            lane.send_rate = lane.bucket_count / elapsed if elapsed < 2.0 else 0.0
            lane.bucket_at = now
            lane.bucket_count = 0
        lane.bucket_count += 1
        request_pos = token_pos = -1
        if self.rpm:
            request_pos = lane.next_request_pos
            self._req_ring[index * self.rpm + request_pos % self.rpm] = now
            lane.next_request_pos = request_pos + 1
        if self.tpm:
            token_pos = lane.token_tail
            slot = index * TOKEN_RING + token_pos % TOKEN_RING
            self._tok_time[slot] = now
            self._tok_amount[slot] = tokens
            lane.token_tail = token_pos + 1
            lane.token_sum += tokens
        if probe:
            lane.prober = holder
        return Grant(index, key, tokens, request_pos, token_pos, holder, probe, now)

    def _token_live(self, lane: Lane, grant: Grant) -> bool:
        """Whether the grant's token charge is still counted in its lane's window."""
        return grant.token_pos >= 0 and grant.token_pos >= lane.token_head

    # -- the worker's side -----------------------------------------------------------------------

    def try_acquire(self, model_index: int, tokens: int, now: float,
                    holder: int = 0) -> Grant | Wait:
        """A Grant on the least-loaded free key for ``model_index``, counted against worker slot
        ``holder``, or a Wait before asking again.

        Raises NoKeysLeft when every key has been disabled. A request larger than the whole token
        limit is charged the limit, so that it can run alone rather than never.
        """
        if self.tpm:
            tokens = min(tokens, self.tpm)
        lanes = self._lanes
        with self._lock:
            eligible = range(self.n_keys) if self.serves is None else self.serves[model_index]
            keys = [k for k in eligible if not self._key_disabled[k]]
            if not keys:
                raise NoKeysLeft()
            if len(keys) > 1:
                keys.sort(key=lambda k: lanes[self.lane(k, model_index)].in_flight)
            best: Wait | None = None
            for key in keys:
                index = self.lane(key, model_index)
                lane = lanes[index]
                probe = False
                if lane.in_outage:
                    waiting = outage.outage_wait(lane, now)
                    if waiting is not None:
                        best = waiting if best is None or waiting.seconds < best.seconds else best
                        continue
                    probe = True
                wait = self._wait_s(index, lane, tokens, now)
                if wait <= 0:
                    return self._grant(index, lane, key, tokens, now, holder % self.holders, probe)
                # Time some request spent waiting on the limits (refusals come twice a second).
                since = now - lane.limited_at
                if since < 1.0:
                    lane.limited_s += since
                lane.limited_at = now
                if best is None or wait < best.seconds:
                    best = Wait(wait)
            assert best is not None
            return best

    def sent(self, grant: Grant, now: float) -> None:
        """The request is leaving now: count it in the windows from now, not from its grant.

        The server counts a request when it arrives; building and sending it can take a while on a
        busy machine, and the window must follow the send, or the server would see more than the
        limit.
        """
        if not (self.rpm or self.tpm):
            return
        with self._lock:
            lane = self._lanes[grant.lane]
            if self.rpm and lane.next_request_pos - grant.request_pos <= self.rpm:
                slot = grant.lane * self.rpm + grant.request_pos % self.rpm
                self._req_ring[slot] = max(self._req_ring[slot], now)
            if self.tpm and self._token_live(lane, grant):
                slot = grant.lane * TOKEN_RING + grant.token_pos % TOKEN_RING
                self._tok_time[slot] = max(self._tok_time[slot], now)

    def release(self, grant: Grant, now: float, ending: Ending = Ending.OK, *,
                charged: int | None = None, used: int = 0) -> bool:
        """A request ended; returns whether its lane is in an outage (the server does not answer).

        ``charged`` corrects its token charge and ``used`` counts its real tokens. OVERLOADED (429
        or timeout) lowers the lane's concurrency when the server sends no rate headers; OK grows
        it again.
        """
        index = grant.lane
        with self._lock:
            lane = self._lanes[index]
            lane.in_flight -= 1
            held = grant.holder * self.n_lanes + index
            if self._held[held] > 0:
                self._held[held] -= 1
            lane.tokens += used
            if charged is not None and self.tpm:
                # Expire first,
                # so that a charge that has just left the window is not corrected twice.
                expire_tokens(lane, self._tok_time, self._tok_amount, index * TOKEN_RING,
                              now - self.span_s)
                if self._token_live(lane, grant):
                    slot = index * TOKEN_RING + grant.token_pos % TOKEN_RING
                    lane.token_sum += charged - self._tok_amount[slot]
                    self._tok_amount[slot] = charged
            if charged is not None and lane.token_limit > 0:
                # The pace follows the correction too: a smaller real prompt gives time back.
                lane.token_tat += (charged - grant.charged) * self.span_s / lane.token_limit
            if ending is Ending.UNSENT:  # neither a request the server saw nor an answer from it
                lane.requests -= 1
                return bool(lane.in_outage)
            if ending is Ending.UNREACHABLE:
                return outage.unreachable(lane, grant.probe, now)
            outage.answered(lane, now)
            learned.after_request(lane, ending, grant.at, now)
            return False

    def rate_limited(self, lane_index: int, now: float, retry_after: float | None) -> None:
        """A 429 on this lane: count it, and pause the lane for everyone for its wait hint; with no
        hint at all, lower the rate instead (AIMD), at most once a second.

        After a pause requests leave one at a time at the rate in force (its pace starts empty at
        the end). A 429 with a hint lowers no rate: the server said what it wants, and servers that
        refuse at random (a busy proxy) would otherwise drive the rate to nothing.
        """
        with self._lock:
            lane = self._lanes[lane_index]
            lane.rate_limited += 1
            if not retry_after:
                learned.refused_without_hint(lane, self.span_s, now)
                return
            until = max(lane.paused_until, now + retry_after)
            lane.paused_until = until
            # The pace starts again empty at the end of the pause: the first request goes then, the
            # others one interval after another.
            limit = lane.request_limit
            if limit > 0:
                step = self.span_s / limit
                tolerance = max(self._tolerance(lane, False), step)
                lane.request_tat = max(lane.request_tat, until + tolerance - step)
            if lane.token_limit > 0:
                lane.token_tat = max(lane.token_tat, until + self._tolerance(lane, True))

    def observe(self, lane_index: int, hints: Hints, now: float) -> None:
        """What a response says of the limits (``read_hints``): pace to a stated limit when none was
        given, and pause the lane until the reset when the server says nothing is left. Hints that
        say nothing change nothing: a lane has seen rate headers only once some arrive."""
        if hints.empty:
            return
        pause = hints.exhausted_for_s()
        lane = self._lanes[lane_index]
        # Nothing new (the usual case, an endpoint's own limit included): no lock taken. Each test
        # is the negation of an update below.
        if (not pause and lane.headers_seen
                and (not hints.limit_requests or lane.request_given
                     or lane.request_cap == hints.limit_requests)
                and (not hints.limit_tokens or lane.token_given
                     or lane.token_limit == hints.limit_tokens)):
            return
        with self._lock:
            if not lane.headers_seen:
                lane.headers_seen = True
                lane.concurrency = lane.concurrency_max
            if (hints.limit_requests and not lane.request_given
                    and lane.request_cap != hints.limit_requests):
                lane.set_request_limit(hints.limit_requests, LimitSource.SERVER)
            if (hints.limit_tokens and not lane.token_given
                    and lane.token_limit != hints.limit_tokens):
                lane.set_token_limit(hints.limit_tokens, LimitSource.SERVER)
            if pause:
                lane.paused_until = max(lane.paused_until, now + pause)

    def disable_key(self, key: int) -> bool:
        """Stop using a key for every model; returns whether any key is left."""
        with self._lock:
            self._key_disabled[key] = 1
            return any(not self._key_disabled[k] for k in range(self.n_keys))

    def key_disabled(self, key: int) -> bool:
        """Whether ``key`` has been disabled."""
        return bool(self._key_disabled[key])

    # -- the parent's side -----------------------------------------------------------------------

    def reclaim(self, holder: int) -> int:
        """A worker died: give back the requests it had in flight (and its probe); how many."""
        holder %= self.holders
        total = 0
        with self._lock:
            for index in range(self.n_lanes):
                at = holder * self.n_lanes + index
                count = self._held[at]
                self._held[at] = 0
                total += count
                lane = self._lanes[index]
                lane.in_flight = max(0, lane.in_flight - count)
                if lane.prober == holder:
                    lane.prober = -1
        return total

    def lane_stats(self, now: float) -> tuple[list[LaneStats], list[bool]]:
        """Every lane's counters, and which keys are disabled (by key), read together."""
        with self._lock:
            lanes = [LaneStats.of(self._lanes[index], index // self.n_models, index % self.n_models,
                                  self.window_s, self.span_s, now) for index in range(self.n_lanes)]
            return lanes, [bool(disabled) for disabled in self._key_disabled]
