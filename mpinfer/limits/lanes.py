"""A lane's record in shared memory (one API key and one model), and the counters it reports.

``Lane`` is a ctypes Structure: the limiter keeps one per lane in an array that forked workers
share, so its fields are read and written by name, in place. Every write (and every read that
decides something) happens with the limiter's lock held; ``SharedLimiter.observe`` alone reads a few
fields without it, to skip the lock when an answer brings nothing new.

The fields' names and types are the annotations below; ``_fields_`` is made from them (``float`` a C
double, ``int`` a 64-bit integer, ``bool`` a C bool; a source is its position in SOURCES).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from enum import StrEnum

from .pacing import DEFAULT_WINDOW_S

NEVER = -1e18  # a time before any other: "not yet" for the times a lane starts from


class LimitSource(StrEnum):
    """Where the limit in force on a lane came from."""

    NONE = "none"
    FLAG = "flag"          # --rpm / --tpm, or the endpoints table
    SERVER = "server"      # x-ratelimit-limit-* on a response
    LEARNED = "learned"    # lowered by 429s (AIMD)


SOURCES = tuple(LimitSource)  # a source is kept in shared memory as its position here
FLAG = SOURCES.index(LimitSource.FLAG)
LEARNED = SOURCES.index(LimitSource.LEARNED)


class Lane(ctypes.Structure):
    """One lane's state; every method expects the limiter's lock to be held."""

    # Pauses and concurrency (AIMD on the requests in flight, while no rate headers come)
    paused_until: float          # no request starts before this (a 429's hint, a limit used up)
    in_flight: int
    concurrency: float           # requests allowed in flight
    concurrency_max: float
    concurrency_decreased_at: float
    headers_seen: bool           # the server sends rate headers: its limits, not the concurrency's
    slow_start: bool             # no limit known yet: one request in flight until an answer
    # Counters for the summary
    requests: int
    rate_limited: int
    tokens: float                # used, as the answers report them
    limited_s: float             # time some request waited on this lane's limits
    limited_at: float
    # The request limit (per span, the window and its margin) and its pace (GCRA)
    request_limit: float
    request_cap: float           # the limit given or stated: a learned rate grows back to it
    request_source: int          # a SOURCES position
    request_given: bool          # by a flag or the endpoints table: a server's never replaces it
    request_tat: float           # theoretical arrival time of the next request
    next_request_pos: int        # grants so far: the next one's place in the ring of start times
    # The token limit and its pace, and the ring of charges in the window
    token_limit: float
    token_source: int
    token_given: bool
    token_tat: float
    token_head: int              # the oldest charge still in the window
    token_tail: int              # the next charge's place
    token_sum: float             # charges in the window
    # The learned rate (AIMD): the rate sent, counted a second at a time, is where a decrease starts
    rate_base: float
    rate_grown_at: float
    rate_decreased_at: float
    answered_since_decrease: bool
    bucket_at: float
    bucket_count: int
    send_rate: float
    ok_at: float                 # the answers accepted, counted a second at a time: where AIMD
    ok_count: int                # starts after a 429 with a wait hint
    ok_rate: float
    ok_best: float               # the most the server accepted in a second: a floor for AIMD
    ok_last: float
    hint_pending: bool           # a hinted 429 came: the rate is learned when its pause ends
    # Outages (outage.py)
    connection_failures: int     # in a row, with no answer between them
    in_outage: bool
    outage_at: float
    outage_wall: float           # when it began, on the wall clock
    outage_s: float              # time spent in outages before the current one
    probe_at: float
    probe_gap: float
    prober: int                  # the holder whose request is the probe; -1: none
    # What the server last said of its limits, kept when a fresh lane starts (learned.remembered)
    heard_at: float              # when (NEVER: not heard): an answer stating limits, or none
    heard_requests: float        # the request limit it stated (0: none)
    heard_tokens: float          # the token limit it stated (0: none)

    def start(self, max_in_flight: int) -> None:
        """A new lane: no limit, ``max_in_flight`` requests allowed in flight, nothing seen yet."""
        self.concurrency = self.concurrency_max = float(max_in_flight)
        self.request_tat = self.token_tat = NEVER
        self.concurrency_decreased_at = self.rate_decreased_at = NEVER
        self.limited_at = self.bucket_at = self.ok_at = NEVER
        self.prober = -1
        self.heard_at = NEVER

    def set_request_limit(self, limit: float, source: LimitSource) -> None:
        """The request limit in force, and where it came from. A limit given (FLAG) stays given when
        AIMD lowers the rate below it and it grows back; any but a learned one is the cap."""
        self.request_limit = limit
        self.request_source = SOURCES.index(source)
        if source is LimitSource.FLAG:
            self.request_given = True
        if source is not LimitSource.LEARNED:
            self.request_cap = limit

    def set_token_limit(self, limit: float, source: LimitSource) -> None:
        """The token limit in force, and where it came from."""
        self.token_limit = limit
        self.token_source = SOURCES.index(source)
        if source is LimitSource.FLAG:
            self.token_given = True


_CTYPES: dict[str, type[ctypes.c_double | ctypes.c_int64 | ctypes.c_bool]] = {
    "float": ctypes.c_double, "int": ctypes.c_int64, "bool": ctypes.c_bool}
Lane._fields_ = [(name, _CTYPES[kind]) for name, kind in Lane.__annotations__.items()]


@dataclass(frozen=True)
class LaneStats:
    """One lane's counters and limits, as the summary reports them."""

    key: int
    model_index: int
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
    told_requests: float = 0.0         # the request limit this run was told (0: none)
    told_tokens: float = 0.0
    shared_with: tuple[str, ...] = ()  # the other runs on this lane (their outputs and pids)

    @classmethod
    def of(cls, lane: Lane, key: int, model_index: int, window_s: float, span_s: float,
           now: float, *, told_requests: float = 0.0, told_tokens: float = 0.0,
           shared_with: tuple[str, ...] = (), own: tuple[int, int, int] | None = None,
           ) -> LaneStats:
        """``lane``'s counters now (read with the lock held); a learned rate per window. ``own``:
        one run's requests, 429s and tokens on it, reported instead of the lane's (which count
        every run that shares it)."""
        learned = lane.request_source == LEARNED
        requests, rate_limited, tokens = own or (int(lane.requests), int(lane.rate_limited),
                                                 int(lane.tokens))
        return cls(
            key=key, model_index=model_index, requests=requests, rate_limited=rate_limited,
            tokens=tokens, in_flight=int(lane.in_flight),
            concurrency_limit=lane.concurrency, paused_for_s=max(0.0, lane.paused_until - now),
            requests_limit=(lane.request_limit * window_s / span_s if learned
                            else lane.request_limit),
            requests_source=SOURCES[lane.request_source], tokens_limit=lane.token_limit,
            tokens_source=SOURCES[lane.token_source], window_s=window_s, limited_s=lane.limited_s,
            outage_since=lane.outage_wall if lane.in_outage else 0.0,
            outage_s=lane.outage_s + (now - lane.outage_at if lane.in_outage else 0.0),
            told_requests=told_requests, told_tokens=told_tokens, shared_with=shared_with,
        )
