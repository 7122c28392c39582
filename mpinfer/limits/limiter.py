"""The rate limiter all worker processes share: per lane (an API key and a model), in shared memory.

A lane's record (lanefile.py) is shared by every run on the machine on the same key, endpoint and
model (a file each maps), unless the run keeps it to itself; the lowest limit its live runs were
told holds. Per lane (lanes.py holds its state):
- **Pacing** (pacing.py): requests and tokens leave at the rate in force with a burst of at most
  ``burst_s`` seconds' worth; the rate is the limit over the window plus a margin.
- **Windows** (windows.py): with --rpm no more than rpm requests start in any window, with --tpm
  the tokens charged in any window stay within it.
- **Where the limit comes from** (LimitSource): the flag (or the endpoints table); else a limit the
  server states in ``x-ratelimit-limit-*`` (hints.py), paced with a burst no larger than the margin,
  so no window can exceed it; else, after 429s, a rate learned by AIMD (learned.py). Until one is
  known a run's lane sends one request first (slow start): its answer states a limit, or opens it.
- **Pauses.** A 429's wait hint, or a server saying nothing is left, pauses the lane for every
  worker; the pace starts empty at its end, so requests then leave one at a time, not in a stampede.
- **Concurrency AIMD** for servers with no rate headers (learned.py), and **outages** (outage.py).
- **Keys**: a rejected key is disabled for every model; requests go to the least-loaded free key.
- **Dead workers and runs.** Grants count against their holder (a worker slot, in its process);
  ``reclaim`` gives back a dead worker's requests in flight and its probe, and a lane's ``sweep``
  those of any holder whose process is gone (another run's, killed). Each lane's lock is a
  ``lockf`` record lock, which the kernel drops with its process, so a worker killed holding it
  cannot stop the others. Token charges stay in the window: the server counted those requests too.

The parent builds it before forking; workers inherit the mappings and the locks' descriptors. Time
is passed in (``now``: ``time.monotonic``, one clock for every process of the machine), so the
logic is tested without waiting.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from ..errors import NoKeysLeft
from . import lanefile, learned, outage
from .grants import Ending, Grant, Wait
from .hints import Hints
from .lanefile import REQUEST_RING, Mapped, PrivateRecords
from .lanes import FLAG, Lane, LaneStats, LimitSource
from .pacing import MIN_WINDOW, margin_for, pace_wait, paced
from .settings import LimiterSettings
from .windows import TOKEN_RING, expire_tokens, token_window_wait

log = logging.getLogger("mpinfer.run")
_PID = [os.getpid()]  # this process's pid, kept right in forked children
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))

#: Seconds between looks for dead holders on a lane whose requests in flight are all taken.
SWEEP_EVERY_S = 1.0


class SharedLimiter:
    """Limits shared by every process of a run, and by every run on the machine on the same lane:
    build it from its settings in the parent, then fork.

    Each lane is a ``LaneRecord`` (lanefile.py) with its own lock: in a lane file when the settings
    share it (``settings.share``), else in this run's own shared memory. ``_key_disabled`` (per key)
    and ``_own`` (this run's requests, 429s and tokens per lane, which others may share) are the
    run's own.
    """

    def __init__(self, settings: LimiterSettings) -> None:
        # Loaded here, not with the module: reading a run's lane counters (a report) needs no fork.
        from multiprocess.sharedctypes import RawArray

        n_lanes = settings.n_keys * settings.n_models
        self.n_keys = settings.n_keys
        self.n_models = settings.n_models
        self.window_s = max(MIN_WINDOW, settings.window_s)
        margin_s = settings.margin_s
        self.margin_s = max(0.0, margin_for(self.window_s) if margin_s is None else margin_s)
        self.span_s = self.window_s + self.margin_s
        self.burst_s = max(0.0, settings.burst_s)
        self.holders = max(1, settings.holders)
        # For each model, the keys (endpoints) that serve it; None: every key serves every model.
        self.serves = settings.serves
        self.run = lanefile.new_run_id()
        self._key_disabled: Any = RawArray("b", self.n_keys)
        self._own: Any = RawArray("d", 3 * n_lanes)  # per lane: requests, 429s, tokens
        share = settings.share
        ids = share.lane_ids if share is not None else (None,) * n_lanes
        # (virtual memory: a record's pages are touched only as its lane is used)
        private = PrivateRecords(n_lanes)
        own = {(o.key, o.model_index): o for o in settings.lanes}
        self._maps: list[Mapped] = []
        label = f"{share.label if share else ''} (pid {self._pid()})"
        for index, lane_id in enumerate(ids):
            limits = own.get((index // self.n_models, index % self.n_models))
            rpm = (limits.rpm if limits and limits.rpm else settings.rpm) or 0
            tpm = (limits.tpm if limits and limits.tpm else settings.tpm) or 0
            own_in_flight = limits.max_in_flight if limits and limits.max_in_flight else 0
            told = (float(rpm), float(tpm), settings.max_in_flight, own_in_flight)
            mapped = None
            if lane_id is not None and share is not None:
                try:
                    mapped = self._attach(lanefile.open_shared(Path(share.folder), lane_id),
                                          told, label, settings.slow_start)
                except OSError as exc:  # (a read-only home, a lane full of runs): go alone
                    log.warning("rate limits not shared for lane %d (%s): this run's own", index,
                                exc)
            if mapped is None:
                mapped = self._attach(private.get(index), told, label, settings.slow_start)
            self._maps.append(mapped)
        self._private = private
        self._lanes = [m.record.lane for m in self._maps]
        self._req_ring = [m.record.req_ring for m in self._maps]
        self._tok_time = [m.record.tok_time for m in self._maps]
        self._tok_amount = [m.record.tok_amount for m in self._maps]
        self._told = [self._told_of(m) for m in self._maps]
        self._slots: dict[tuple[int, int, int], int] = {}  # (lane, holder, pid): holder slot
        self._closed = False

    def _attach(self, mapped: Mapped, told: tuple[float, float, int, int], label: str,
                slow_start: bool) -> Mapped:
        """Record this run on a lane's record (OSError when it has no room)."""
        with mapped:
            lanefile.attach(mapped.record, self.run, told, label, time.monotonic(), slow_start)
        return mapped

    @staticmethod
    def _pid() -> int:
        return _PID[0]

    def _told_of(self, mapped: Mapped) -> tuple[float, float]:
        for entry in mapped.record.runs:
            if entry.run == self.run:
                return float(entry.rpm), float(entry.tpm)
        return 0.0, 0.0

    def close(self) -> None:
        """The run is over: leave every lane, giving back what it still holds there."""
        if self._closed:
            return
        self._closed = True
        for mapped in self._maps:
            with mapped:
                lanefile.detach(mapped.record, self.run)

    def limit_lane(self, key: int, model_index: int, rpm: int | None, tpm: int | None,
                   max_in_flight: int | None) -> None:
        """Give one lane (an endpoint's, for one model) its own limits, as this run's told ones."""
        index = self.lane(key, model_index)
        mapped = self._maps[index]
        with mapped:
            for entry in mapped.record.runs:
                if entry.run == self.run:
                    entry.rpm = float(rpm or entry.rpm)
                    entry.tpm = float(tpm or entry.tpm)
                    entry.own_in_flight = max_in_flight or entry.own_in_flight
            lanefile.apply_told(mapped.record)
        self._told[index] = self._told_of(mapped)

    def lane_lock(self, index: int) -> Mapped:
        """Lane ``index``'s record and its lock (``acquire``/``release``)."""
        return self._maps[index]

    def lane(self, key: int, model_index: int) -> int:
        """The lane of ``key`` and ``model_index``."""
        return key * self.n_models + model_index

    # -- with the lane's lock held ---------------------------------------------------------------

    def _tolerance(self, lane: Lane, tokens: bool) -> float:
        """The burst, in seconds of the rate: without a ring to bound the window, no more than the
        margin (a limit the server states, a learned one, or a flag too large for the ring)."""
        if tokens:
            ringed = lane.token_given and lane.token_source == FLAG
        else:
            ringed = (lane.request_given and lane.request_source == FLAG
                      and lane.request_cap <= REQUEST_RING)
        return self.burst_s if ringed else min(self.burst_s, self.margin_s)

    def _wait_s(self, index: int, lane: Lane, tokens: int, now: float) -> float:
        """0 when the lane can start a request charged ``tokens`` now, else how long until then."""
        wait = lane.paused_until - now
        if lane.hint_pending and wait <= 0:
            learned.hinted_pause_over(lane, self.span_s, now)
        if lane.in_flight >= max(1.0, math.floor(lane.concurrency)):
            # A slot frees when a request ends: look again soon (one request a host looks, the
            # runner's turn, and at once when one of the host's own ends).
            wait = max(wait, 0.02)
            if now - self._maps[index].record.swept_at >= SWEEP_EVERY_S:
                # Perhaps a dead run holds them: its process is gone, its slots come back.
                lanefile.sweep(self._maps[index].record, now)
                if lane.in_flight < max(1.0, math.floor(lane.concurrency)):
                    wait = lane.paused_until - now
        span = self.span_s
        limit = lane.request_limit
        if limit > 0:
            wait = max(wait, pace_wait(lane.request_tat, limit, 1, self._tolerance(lane, False),
                                       span, now))
        limit = lane.token_limit
        if limit > 0 and tokens > 0:
            wait = max(wait, pace_wait(lane.token_tat, limit, min(tokens, limit),
                                       self._tolerance(lane, True), span, now))
        if lane.request_given:
            # The window: the request that many grants ago must have left it.
            given = int(lane.request_cap)
            pos = lane.next_request_pos
            if given <= REQUEST_RING and pos >= given:
                wait = max(wait, self._req_ring[index][(pos - given) % REQUEST_RING] + span - now)
        if lane.token_given:
            wait = max(wait, token_window_wait(lane, self._tok_time[index],
                                               self._tok_amount[index], 0, tokens,
                                               int(lane.token_limit), span, now))
        return max(0.0, wait)

    def _grant(self, index: int, lane: Lane, key: int, tokens: int, now: float, holder: int,
               probe: bool) -> Grant:
        """Count a request on the lane (in flight, in its pace and windows) and grant it.

        Called under the lane's lock once it is chosen. Every grant takes its places in the
        lane's rings (a run told a limit later counts the others' requests too), so that the send
        (``sent``) and the end (``release``) can move its time and correct its charge there.
        """
        lane.in_flight += 1
        lane.requests += 1
        self._own[3 * index] += 1
        slot = self._slot(index, holder)
        if slot >= 0:
            self._maps[index].record.holders[slot].held += 1
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
        request_pos = lane.next_request_pos
        self._req_ring[index][request_pos % REQUEST_RING] = now
        lane.next_request_pos = request_pos + 1
        token_pos = lane.token_tail
        times, amounts = self._tok_time[index], self._tok_amount[index]
        if token_pos - lane.token_head >= TOKEN_RING:  # full: the oldest charge leaves
            lane.token_sum -= amounts[lane.token_head % TOKEN_RING]
            lane.token_head += 1
        times[token_pos % TOKEN_RING] = now
        amounts[token_pos % TOKEN_RING] = tokens
        lane.token_tail = token_pos + 1
        lane.token_sum += tokens
        if probe:
            lane.prober = slot
        return Grant(index, key, tokens, request_pos, token_pos, holder, probe, now)

    def _slot(self, index: int, holder: int) -> int:
        """This process's holder slot for ``holder`` on lane ``index`` (-1: the lane is full)."""
        cached = (index, holder, self._pid())
        slot = self._slots.get(cached)
        if slot is None:
            slot = lanefile.holder_slot(self._maps[index].record, self.run, holder)
            if slot >= 0:
                self._slots[cached] = slot
        return slot

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
        lanes = self._lanes
        eligible = range(self.n_keys) if self.serves is None else self.serves[model_index]
        keys = [k for k in eligible if not self._key_disabled[k]]
        if not keys:
            raise NoKeysLeft()
        if len(keys) > 1:  # (read without the locks: a hint of the load, not a decision)
            keys.sort(key=lambda k: lanes[self.lane(k, model_index)].in_flight)
        best: Wait | None = None
        holder %= self.holders
        for key in keys:
            index = self.lane(key, model_index)
            lane = lanes[index]
            mapped = self._maps[index]
            with mapped:
                charge = tokens
                if lane.token_given:
                    charge = min(tokens, int(lane.token_limit))
                probe = False
                if lane.in_outage:
                    waiting = outage.outage_wait(lane, now)
                    if waiting is not None:
                        best = waiting if best is None or waiting.seconds < best.seconds else best
                        continue
                    probe = True
                wait = self._wait_s(index, lane, charge, now)
                if wait <= 0:
                    return self._grant(index, lane, key, charge, now, holder, probe)
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
        index = grant.lane
        lane = self._lanes[index]
        if not (lane.request_given or lane.token_given):  # no window to keep (read unlocked)
            return
        mapped = self._maps[index]
        with mapped:
            if lane.next_request_pos - grant.request_pos <= REQUEST_RING:
                ring = self._req_ring[index]
                slot = grant.request_pos % REQUEST_RING
                ring[slot] = max(ring[slot], now)
            if self._token_live(lane, grant):
                times = self._tok_time[index]
                slot = grant.token_pos % TOKEN_RING
                times[slot] = max(times[slot], now)

    def release(self, grant: Grant, now: float, ending: Ending = Ending.OK, *,
                charged: int | None = None, used: int = 0) -> bool:
        """A request ended; returns whether its lane is in an outage (the server does not answer).

        ``charged`` corrects its token charge and ``used`` counts its real tokens. OVERLOADED (429
        or timeout) lowers the lane's concurrency when the server sends no rate headers; OK grows
        it again.
        """
        index = grant.lane
        mapped = self._maps[index]
        with mapped:
            lane = self._lanes[index]
            lane.in_flight = max(0, lane.in_flight - 1)
            slot = self._slots.get((index, grant.holder, self._pid()), -1)
            if slot >= 0:
                entry = mapped.record.holders[slot]
                if entry.held > 0:
                    entry.held -= 1
            lane.tokens += used
            self._own[3 * index + 2] += used
            if charged is not None and lane.token_given:
                times, amounts = self._tok_time[index], self._tok_amount[index]
                # Expire first,
                # so that a charge that has just left the window is not corrected twice.
                expire_tokens(lane, times, amounts, 0, now - self.span_s)
                if self._token_live(lane, grant):
                    at = grant.token_pos % TOKEN_RING
                    lane.token_sum += charged - amounts[at]
                    amounts[at] = charged
            if charged is not None and lane.token_limit > 0:
                # The pace follows the correction too: a smaller real prompt gives time back.
                lane.token_tat += (charged - grant.charged) * self.span_s / lane.token_limit
            if ending is Ending.UNREACHABLE:
                return outage.unreachable(lane, grant.probe, now)
            outage.answered(lane, now)
            learned.after_request(lane, ending, grant.at, now)
            return False

    def rate_limited(self, lane_index: int, now: float, retry_after: float | None) -> None:
        """A 429 on this lane: count it, and pause the lane for everyone for its wait hint; with no
        hint at all, lower the rate instead (AIMD), at most once a second.

        After a pause requests leave one at a time at the rate in force (its pace starts empty at
        the end). A 429 with a hint on a lane whose limit nobody stated or gave lowers the rate too
        (from what the server accepted), so the next pause does not end in the same burst.
        """
        mapped = self._maps[lane_index]
        with mapped:
            lane = self._lanes[lane_index]
            lane.rate_limited += 1
            self._own[3 * lane_index + 1] += 1
            if not retry_after:
                learned.refused_without_hint(lane, self.span_s, now)
                return
            if not lane.request_cap:
                learned.refused_with_hint(lane)
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
        mapped = self._maps[lane_index]
        with mapped:
            if not lane.headers_seen:
                lane.headers_seen = True
                lane.slow_start = False  # the server states its limits: no guessing them
                lane.concurrency = lane.concurrency_max
            if (hints.limit_requests and not lane.request_given
                    and lane.request_cap != hints.limit_requests):
                lane.set_request_limit(hints.limit_requests, LimitSource.SERVER)
            if (hints.limit_tokens and not lane.token_given
                    and lane.token_limit != hints.limit_tokens):
                lane.set_token_limit(hints.limit_tokens, LimitSource.SERVER)
            if hints.limit_requests or hints.limit_tokens:
                learned.heard(lane, hints.limit_requests or 0, hints.limit_tokens or 0, now)
            if pause:
                lane.paused_until = max(lane.paused_until, now + pause)

    def disable_key(self, key: int) -> bool:
        """Stop using a key for every model (in this run); returns whether any key is left."""
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
        for mapped in self._maps:
            record = mapped.record
            with mapped:
                lane = record.lane
                for slot, entry in enumerate(record.holders):
                    if entry.run == self.run and entry.holder == holder:
                        total += entry.held
                        lane.in_flight = max(0, lane.in_flight - entry.held)
                        entry.held = 0
                        if lane.prober == slot:
                            lane.prober = -1
        return total

    def lane_stats(self, now: float) -> tuple[list[LaneStats], list[bool]]:
        """Every lane's counters, and which keys are disabled (by key); dead runs are forgotten
        on the way."""
        stats = []
        for index, mapped in enumerate(self._maps):
            with mapped:
                if now - mapped.record.swept_at >= SWEEP_EVERY_S:
                    lanefile.sweep(mapped.record, now)
                    lanefile.apply_told(mapped.record)
                others = tuple(label for run, _, _, _, label in lanefile.runs_of(mapped.record)
                               if run != self.run)
                rpm, tpm = self._told[index]
                own = self._own[3 * index:3 * index + 3]
                stats.append(LaneStats.of(mapped.record.lane, index // self.n_models,
                                          index % self.n_models, self.window_s, self.span_s, now,
                                          told_requests=rpm, told_tokens=tpm, shared_with=others,
                                          own=(int(own[0]), int(own[1]), int(own[2]))))
        return stats, [bool(disabled) for disabled in self._key_disabled]
