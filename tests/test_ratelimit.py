"""The shared rate limiter: rpm and tpm windows, pauses, hints, AIMD, keys, lanes, processes.

Time is passed in (``now``), so almost every test drives a simulated clock and waits for nothing;
one test runs real forked processes against the real clock.
"""

from __future__ import annotations

import heapq
import math
import os
import random
import signal
import time
from typing import Any

import multiprocess
import pytest

from mpinfer.api.endpoints import Endpoint
from mpinfer.config import RunConfig
from mpinfer.limits import (
    Ending,
    Grant,
    LaneLimits,
    LimiterSettings,
    LimitSource,
    NoKeysLeft,
    SharedLimiter,
    Wait,
    parse_duration,
    read_hints,
)

CTX = multiprocess.get_context("fork")
# Float sums of times (start + window) differ from the limiter's own in the last bit at most; 1 ns
# hides no bug.
EPS = 1e-9
# A clock far from 0, as time.monotonic() is (the AIMD decrease compares with a last time of 0).
T0 = 1000.0
UNPACED = 1e9  # a burst of a billion seconds' worth: the pace never binds


def make(n_keys: int = 1, n_models: int = 1, **kw: Any) -> SharedLimiter:
    """A limiter; unless ``burst_s`` is given its pace allows any burst: only the windows limit."""
    kw.setdefault("burst_s", UNPACED)
    return SharedLimiter(LimiterSettings(n_keys, n_models, **kw))


def grant(got: Grant | Wait) -> Grant:
    assert isinstance(got, Grant), f"expected a grant, got a wait of {got!r}"
    return got


def wait_of(got: Grant | Wait) -> float:
    assert isinstance(got, Wait), f"expected a wait, got {got!r}"
    return got.seconds


def stats(limiter: SharedLimiter, now: float, lane: int = 0) -> Any:
    return limiter.lane_stats(now)[0][lane]


def most_in_a_window(times: list[float], span: float) -> int:
    """The most grants whose times fit in one half-open window (t - span, t]."""
    s = sorted(times)
    most, i = 0, 0
    for j in range(len(s)):
        while s[i] + span <= s[j] + EPS:
            i += 1
        most = max(most, j - i + 1)
    return most


def most_tokens_in_a_window(charges: list[tuple[float, int]], span: float) -> int:
    """The most tokens charged (final, corrected values) in one half-open window (t - span, t]."""
    s = sorted(charges)
    most, total, i = 0, 0, 0
    for j in range(len(s)):
        total += s[j][1]
        while s[i][0] + span <= s[j][0] + EPS:
            total -= s[i][1]
            i += 1
        most = max(most, total)
    return most


def simulate(limiter: SharedLimiter, *, seed: int, workers: int, horizon: float,
             tokens: tuple[int, int], busy: tuple[float, float], think: float, correct: bool,
             max_steps: int) -> tuple[list[list[Any]], int]:
    """Workers that ask and, when told to wait, ask again exactly when told.

    A granted request runs for a random time, is released (its charge corrected down by up to a
    fifth when ``correct``), and the worker thinks a random while before asking again. Returns
    [[time, final charge]] per grant and the steps run.
    """
    rng = random.Random(seed)
    heap: list[tuple[float, int, int, str, Any]] = []
    seq = 0
    for w in range(workers):
        heap.append((rng.uniform(0.0, 1.0), seq, w, "ask", rng.randint(*tokens)))
        seq += 1
    heapq.heapify(heap)
    records: list[list[Any]] = []
    steps = 0
    while heap and steps < max_steps:
        steps += 1
        now, _, w, kind, payload = heapq.heappop(heap)
        if now >= horizon:
            break
        if kind == "ask":
            got = limiter.try_acquire(0, payload, now)
            if isinstance(got, Grant):
                records.append([now, got.charged])
                heapq.heappush(
                    heap, (now + rng.uniform(*busy), seq, w, "release", (got, len(records) - 1)))
            else:
                assert got.seconds > 0
                heapq.heappush(heap, (now + got.seconds, seq, w, "ask", payload))
        else:
            g, index = payload
            charged = g.charged - rng.randint(0, g.charged // 5) if correct else None
            limiter.release(g, now, Ending.OK, charged=charged)
            if charged is not None:
                records[index][1] = charged
            heapq.heappush(heap,
                           (now + rng.expovariate(1 / think), seq, w, "ask", rng.randint(*tokens)))
        seq += 1
    return records, steps


# --- rpm ------------------------------------------------------------------------------------------


def test_three_requests_start_at_once_and_the_fourth_waits_a_whole_window() -> None:
    # Given a lane allowed 3 requests per 10 s, no margin
    limiter = make(rpm=3, window_s=10.0, margin_s=0.0)
    # When four requests ask at t=0
    granted = [limiter.try_acquire(0, 1, 0.0) for _ in range(3)]
    fourth = limiter.try_acquire(0, 1, 0.0)
    # Then three start and the fourth must wait exactly until the first leaves the window
    assert all(isinstance(g, Grant) for g in granted)
    assert wait_of(fourth) == pytest.approx(10.0)
    # And just before then it still waits, just after it starts
    assert wait_of(limiter.try_acquire(0, 1, 9.5)) == pytest.approx(0.5)
    grant(limiter.try_acquire(0, 1, 10.001))
    # And so do two more (their slots, too, were taken at 0), after which the next waits 10 s again
    grant(limiter.try_acquire(0, 1, 10.001))
    grant(limiter.try_acquire(0, 1, 10.001))
    assert wait_of(limiter.try_acquire(0, 1, 10.001)) == pytest.approx(10.0)


def test_the_ring_remembers_start_times_not_ends_so_releasing_frees_no_rpm_slot() -> None:
    # Given a lane allowed 2 requests per 10 s whose two requests have started and ended at once
    limiter = make(rpm=2, window_s=10.0, margin_s=0.0)
    for _ in range(2):
        limiter.release(grant(limiter.try_acquire(0, 1, 0.0)), 0.1, Ending.OK)
    # When a third asks at t=1
    got = limiter.try_acquire(0, 1, 1.0)
    # Then it waits for the window, whatever the finished requests
    assert wait_of(got) == pytest.approx(9.0)


def test_a_margin_adds_to_every_rpm_wait() -> None:
    # Given a lane allowed 3 requests per 10 s with a 0.2 s margin for the trip to the server
    limiter = make(rpm=3, window_s=10.0, margin_s=0.2)
    for _ in range(3):
        grant(limiter.try_acquire(0, 1, 0.0))
    # When the fourth asks at t=0 and again at t=10.1
    # Then it waits 10.2 s, then 0.1 s, and starts at 10.2
    assert wait_of(limiter.try_acquire(0, 1, 0.0)) == pytest.approx(10.2)
    assert wait_of(limiter.try_acquire(0, 1, 10.1)) == pytest.approx(0.1)
    grant(limiter.try_acquire(0, 1, 10.2))


@pytest.mark.parametrize(("window", "margin"), [(10.0, 0.2), (60.0, 1.0), (100.0, 1.0)])
def test_the_default_margin_is_two_percent_of_the_window_and_at_most_a_second(
    window: float, margin: float,
) -> None:
    # Given a one-request lane built without a margin
    limiter = make(rpm=1, window_s=window)
    grant(limiter.try_acquire(0, 1, 0.0))
    # When a second request asks at once
    got = limiter.try_acquire(0, 1, 0.0)
    # Then it waits the window plus 2% of it, never more than 1 s extra
    assert wait_of(got) == pytest.approx(window + margin)


@pytest.mark.parametrize("margin", [0.0, 0.2])
def test_simulated_requests_at_random_times_never_exceed_rpm_yet_use_it_all(margin: float) -> None:
    # Given 3 requests per 10 s and 6 workers that always have work, asking again exactly when told
    # to
    rpm, window, horizon = 3, 10.0, 1000.0
    limiter = make(rpm=rpm, window_s=window, margin_s=margin)
    # When 1000 s of requests of random length, with random pauses between them, are simulated
    records, steps = simulate(limiter, seed=1234, workers=6, horizon=horizon, tokens=(1, 1),
                              busy=(0.05, 4.0), think=0.5, correct=False, max_steps=50_000)
    times = [t for t, _ in records]
    # Then the simulation ran to its end (a few thousand steps), ...
    assert steps < 50_000 and max(times) > horizon - window - margin, steps
    # ... no window of 10 s plus the margin ever holds more than 3 starts (so no 10 s window does
    # either), ...
    assert most_in_a_window(times, window + margin) == rpm
    assert most_in_a_window(times, window) == rpm
    # ... and after the first window the starts reach 95% of the limit (the margin's own cost aside)
    later = [t for t in times if t >= window]
    assert len(later) >= 0.95 * rpm * (horizon - window) / (window + margin), len(later)


def test_with_a_margin_the_same_start_times_that_pass_without_one_are_refused() -> None:
    # Given a lane with a 0.2 s margin that started 3 requests at t=0
    limiter = make(rpm=3, window_s=10.0, margin_s=0.2)
    for _ in range(3):
        grant(limiter.try_acquire(0, 1, 0.0))
    # When the next asks at 10.0 and 10.19
    # Then both wait: the margin counts, not only the window
    assert wait_of(limiter.try_acquire(0, 1, 10.0)) == pytest.approx(0.2)
    assert wait_of(limiter.try_acquire(0, 1, 10.19)) == pytest.approx(0.01)


# --- tpm ------------------------------------------------------------------------------------------


def test_token_charges_add_up_and_a_request_waits_until_enough_old_charges_leave() -> None:
    # Given 100 tokens per 10 s and charges of 40, 30 and 20 at t=0, 2 and 4
    limiter = make(tpm=100, window_s=10.0, margin_s=0.0)
    for t, tokens in ((0.0, 40), (2.0, 30), (4.0, 20)):
        assert grant(limiter.try_acquire(0, tokens, t)).charged == tokens
    # When requests of 10, 11, 50 and 80 tokens ask at t=5
    # Then 10 still fits (90 + 10 = 100), exactly at the limit
    small = grant(limiter.try_acquire(0, 10, 5.0))
    # And 11 more would make 111: it waits for the 40 of t=0 to leave at t=10 (60 + 11 fits)
    assert wait_of(limiter.try_acquire(0, 11, 5.0)) == pytest.approx(5.0)
    # And 50 needs the 30 of t=2 gone as well (60 + 50 > 100, 30 + 50 fits): until t=12 ...
    assert wait_of(limiter.try_acquire(0, 50, 5.0)) == pytest.approx(7.0)
    # ... and 80 the 20 of t=4 too (30 + 80 > 100, 10 + 80 fits): until t=14
    assert wait_of(limiter.try_acquire(0, 80, 5.0)) == pytest.approx(9.0)
    # And at t=12, with the charges of t=0 and t=2 gone, 70 fits (20 + 10 + 70 = 100)
    grant(limiter.try_acquire(0, 70, 12.0))
    assert small.charged == 10


def test_correcting_a_charge_down_lets_a_new_request_fit_sooner() -> None:
    # Given 100 tokens per 10 s charged 80 at t=0 and 20 at t=1
    limiter = make(tpm=100, window_s=10.0, margin_s=0.0)
    big = grant(limiter.try_acquire(0, 80, 0.0))
    grant(limiter.try_acquire(0, 20, 1.0))
    assert wait_of(limiter.try_acquire(0, 30, 2.0)) == pytest.approx(8.0)
    # When the 80 ends at t=2 having really cost 10
    limiter.release(big, 2.0, Ending.OK, charged=10)
    # Then 30 fits at once (10 + 20 + 30 = 60) ...
    grant(limiter.try_acquire(0, 30, 2.0))
    # ... and the window holds exactly 60: 40 more fit, 41 wait for the corrected 10 to leave at
    # t=10
    assert wait_of(limiter.try_acquire(0, 41, 2.0)) == pytest.approx(8.0)
    grant(limiter.try_acquire(0, 40, 2.0))


def test_a_correction_after_the_charge_has_left_the_window_changes_nothing() -> None:
    # Given 100 tokens per 10 s, 80 charged at t=0, and the full 100 charged at t=10.5 once the 80
    # had left
    limiter = make(tpm=100, window_s=10.0, margin_s=0.0)
    old = grant(limiter.try_acquire(0, 80, 0.0))
    grant(limiter.try_acquire(0, 100, 10.5))
    # When the request of t=0 ends at t=10.6 and corrects its charge to 10
    limiter.release(old, 10.6, Ending.OK, charged=10)
    # Then the window still holds 100: even one token waits until t=20.5
    assert wait_of(limiter.try_acquire(0, 1, 10.7)) == pytest.approx(9.8)


def test_a_late_correction_after_the_charge_expired_under_a_later_clock_changes_nothing() -> None:
    # Given 100 tokens per 10 s, 80 charged at t=0, and another process that at t=10.0 saw the 80
    # leave and was charged the full 100
    limiter = make(tpm=100, window_s=10.0, margin_s=0.0)
    old = grant(limiter.try_acquire(0, 80, 0.0))
    grant(limiter.try_acquire(0, 100, 10.0))
    # When the request of t=0 is released with a clock read a moment earlier (9.99), before it took
    # the lock, correcting its charge to 10
    limiter.release(old, 9.99, Ending.OK, charged=10)
    # Then the window still holds the 100 of t=10: a request of 60 at t=10.01 waits until t=20
    got = limiter.try_acquire(0, 60, 10.01)
    assert not isinstance(got, Grant), (
        "granted 60 tokens with 100 already charged in the window (tpm=100)")
    assert wait_of(got) == pytest.approx(9.99)


def test_a_request_larger_than_tpm_is_charged_tpm_and_runs_alone() -> None:
    # Given 100 tokens per 10 s
    limiter = make(tpm=100, window_s=10.0, margin_s=0.0)
    # When a request of 500 tokens asks on an empty lane
    huge = grant(limiter.try_acquire(0, 500, 0.0))
    # Then it starts, charged the whole limit, and even one token then waits for the window
    assert huge.charged == 100
    assert wait_of(limiter.try_acquire(0, 1, 1.0)) == pytest.approx(9.0)
    # And a second huge request, once a 1-token one is in the window, waits until that one leaves
    # too
    grant(limiter.try_acquire(0, 1, 10.0))
    assert wait_of(limiter.try_acquire(0, 500, 10.0)) == pytest.approx(10.0)


@pytest.mark.parametrize("margin", [0.0, 0.2])
def test_simulated_requests_with_corrections_never_exceed_tpm_yet_use_it_all(margin: float) -> None:
    # Given 1000 tokens per 10 s and 16 always-busy workers whose requests are charged 10 to 40
    # tokens, each corrected down by up to a fifth when it ends
    tpm, window, horizon = 1000, 10.0, 200.0
    limiter = make(tpm=tpm, window_s=window, margin_s=margin)
    # When 200 s are simulated
    records, steps = simulate(limiter, seed=99, workers=16, horizon=horizon, tokens=(10, 40),
                              busy=(0.05, 1.0), think=0.1, correct=True, max_steps=60_000)
    charges = [(t, c) for t, c in records]
    # Then the simulation ran to its end ...
    assert steps < 60_000 and max(t for t, _ in charges) > horizon - window - margin, steps
    # ... no window ever holds more than tpm tokens, at their corrected value ...
    assert most_tokens_in_a_window(charges, window + margin) <= tpm
    # ... and after the first window the tokens charged reach 95% of the limit
    later = sum(c for t, c in charges if t >= window)
    assert later >= 0.95 * tpm * (horizon - window) / (window + margin), later


# --- pauses ---------------------------------------------------------------------------------------


def test_a_429_with_retry_after_pauses_the_lane_and_is_counted() -> None:
    # Given a lane with no limits at all
    limiter = make()
    # When a 429 says Retry-After: 2 at T0
    limiter.rate_limited(0, T0, retry_after=2)
    # Then every try on the lane waits out the 2 s, and the 429 is counted
    assert wait_of(limiter.try_acquire(0, 1, T0)) == pytest.approx(2.0)
    assert wait_of(limiter.try_acquire(0, 1, T0)) == pytest.approx(2.0)
    assert wait_of(limiter.try_acquire(0, 1, T0 + 1.5)) == pytest.approx(0.5)
    assert stats(limiter, T0).rate_limited == 1
    assert stats(limiter, T0).paused_for_s == pytest.approx(2.0)
    grant(limiter.try_acquire(0, 1, T0 + 2.0))


def test_a_shorter_second_retry_after_does_not_shorten_the_pause() -> None:
    # Given a lane paused until T0+2 by a 429
    limiter = make()
    limiter.rate_limited(0, T0, retry_after=2)
    # When a second 429 at T0+0.5 says Retry-After: 0.5
    limiter.rate_limited(0, T0 + 0.5, retry_after=0.5)
    # Then the lane still waits until T0+2, and both 429s count
    assert wait_of(limiter.try_acquire(0, 1, T0 + 1.5)) == pytest.approx(0.5)
    assert stats(limiter, T0).rate_limited == 2


def test_a_429_without_retry_after_is_counted_but_pauses_nothing() -> None:
    # Given a lane with no limits
    limiter = make()
    # When a 429 comes without Retry-After
    limiter.rate_limited(0, T0, retry_after=None)
    # Then it is counted and the next request may start
    assert stats(limiter, T0).rate_limited == 1
    grant(limiter.try_acquire(0, 1, T0))


# --- x-ratelimit-* headers ------------------------------------------------------------------------


def test_no_requests_remaining_pauses_the_lane_until_the_request_reset() -> None:
    # Given a lane with no limits of its own
    limiter = make()
    # When the server says no requests remain, resetting in 1.5 s
    limiter.observe(0,
                    read_hints({"x-ratelimit-remaining-requests": "0",
                                "x-ratelimit-reset-requests": "1.5s"}), T0)
    # Then the lane waits 1.5 s
    assert wait_of(limiter.try_acquire(0, 1, T0)) == pytest.approx(1.5)
    assert stats(limiter, T0).paused_for_s == pytest.approx(1.5)
    grant(limiter.try_acquire(0, 1, T0 + 1.5))


def test_no_tokens_remaining_pauses_the_lane_until_the_token_reset() -> None:
    # Given a lane with no limits of its own
    limiter = make()
    # When the server says no tokens remain, resetting in 6m0s
    limiter.observe(0,
                    read_hints({"x-ratelimit-remaining-tokens": "0",
                                "x-ratelimit-reset-tokens": "6m0s",
                                "x-ratelimit-remaining-requests": "99"}), T0)
    # Then the lane waits 360 s
    assert wait_of(limiter.try_acquire(0, 1, T0)) == pytest.approx(360.0)


def test_both_exhausted_pause_for_the_longer_reset_and_a_missing_reset_means_one_second() -> None:
    # Given two lanes
    limiter = make(n_models=2)
    # When lane 0 hears both limits exhausted and lane 1 hears no requests left with no reset given
    both = read_hints({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s",
                       "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "7s"})
    limiter.observe(0, both, T0)
    limiter.observe(1, read_hints({"x-ratelimit-remaining-requests": "0"}), T0)
    # Then lane 0 waits the longer 7 s and lane 1 a default of 1 s
    assert wait_of(limiter.try_acquire(0, 1, T0)) == pytest.approx(7.0)
    assert wait_of(limiter.try_acquire(1, 1, T0)) == pytest.approx(1.0)


@pytest.mark.parametrize("headers", [
    {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "30s"},
    {"x-ratelimit-remaining-tokens": "1", "x-ratelimit-reset-tokens": "1m"},
    {"content-type": "application/json"},
    {},
    None,
])
def test_headers_that_report_something_left_or_nothing_at_all_do_not_pause(headers: dict[str, str]
                                                                           | None) -> None:
    # Given a lane with no limits
    limiter = make()
    # When the answer's headers show requests or tokens remaining, or no rate headers at all
    limiter.observe(0, read_hints(headers), T0)
    # Then the next request starts at once
    grant(limiter.try_acquire(0, 1, T0))
    assert stats(limiter, T0).paused_for_s == 0.0


# --- AIMD for servers without rate headers --------------------------------------------------------


def test_with_max_in_flight_32_the_33rd_request_waits_until_one_ends() -> None:
    # Given a lane allowing 32 requests in flight
    limiter = make(max_in_flight=32)
    # When 33 ask at once
    grants = [grant(limiter.try_acquire(0, 1, T0)) for _ in range(32)]
    extra = limiter.try_acquire(0, 1, T0)
    # Then 32 start, the 33rd is told to look again soon, ...
    assert 0 < wait_of(extra) <= 0.1
    assert stats(limiter, T0).in_flight == 32
    # ... and starts once one of them ends
    limiter.release(grants[0], T0 + 0.1, Ending.OK)
    grant(limiter.try_acquire(0, 1, T0 + 0.1))


def test_an_overload_cuts_the_concurrency_limit_to_70_percent_once_per_window_of_requests() -> None:
    # Given 32 requests in flight on a lane without rate headers
    limiter = make(max_in_flight=32)
    grants = [grant(limiter.try_acquire(0, 1, T0)) for _ in range(32)]
    # When one ends overloaded (a 429 or a timeout)
    limiter.release(grants.pop(), T0 + 0.1, Ending.OVERLOADED)
    # Then the limit falls to 70% of it (22.4)
    assert stats(limiter, T0).concurrency_limit == pytest.approx(22.4)
    # And another overload of a request sent before that decrease does not lower it again
    limiter.release(grants.pop(), T0 + 0.5, Ending.OVERLOADED)
    assert stats(limiter, T0).concurrency_limit == pytest.approx(22.4)
    # And with 30 still in flight, new requests wait until fewer than 22 are
    assert wait_of(limiter.try_acquire(0, 1, T0 + 0.5)) > 0
    for _ in range(9):
        limiter.release(grants.pop(), T0 + 0.6, Ending.ERROR)  # failed, not overloaded: no change
    grants.append(grant(limiter.try_acquire(0, 1, T0 + 0.6)))
    # And an overload of a request sent after the decrease lowers it again, to 70% of what was in
    # flight
    limiter.release(grants.pop(), T0 + 1.0, Ending.OVERLOADED)
    assert stats(limiter, T0).concurrency_limit == pytest.approx(0.7 * 22)


def test_the_limit_never_falls_below_seventy_percent_of_what_was_in_flight_nor_below_one() -> None:
    # Given a lane allowing 32 in flight with only 4 in flight
    limiter = make(max_in_flight=32)
    grants = [grant(limiter.try_acquire(0, 1, T0)) for _ in range(4)]
    # When one ends overloaded
    limiter.release(grants.pop(), T0 + 0.1, Ending.OVERLOADED)
    # Then the limit is 70% of the 4 that were in flight, not of 32
    assert stats(limiter, T0).concurrency_limit == pytest.approx(2.8)
    # And repeated overloads of ever newer requests stop at 1
    assert len(grants) == 3
    for g in grants:
        limiter.release(g, T0 + 0.2, Ending.ERROR)
    for n in range(6):
        limiter.release(grant(limiter.try_acquire(0, 1, T0 + 1.0 + n)), T0 + 1.5 + n,
                        Ending.OVERLOADED)
    assert stats(limiter, T0).concurrency_limit == 1.0


def test_successes_raise_the_limit_by_about_one_per_window_of_successes() -> None:
    # Given a lane lowered from 32 to 22.4 with 31 requests in flight
    limiter = make(max_in_flight=32)
    grants = [grant(limiter.try_acquire(0, 1, T0)) for _ in range(32)]
    limiter.release(grants.pop(), T0 + 0.1, Ending.OVERLOADED)
    assert stats(limiter, T0).concurrency_limit == pytest.approx(22.4)
    # When 22 of them succeed
    for _ in range(22):
        limiter.release(grants.pop(), T0 + 0.1, Ending.OK)
    # Then the limit has grown by about one (each success adds 1/limit)
    assert 23.2 < stats(limiter, T0).concurrency_limit < 23.4
    # And however many succeed, it never passes max_in_flight
    for _ in range(2000):
        limiter.release(grant(limiter.try_acquire(0, 1, T0 + 0.3)), T0 + 0.3, Ending.OK)
    assert stats(limiter, T0).concurrency_limit == 32.0


def test_once_rate_headers_are_seen_overloads_no_longer_shrink_the_lane() -> None:
    # Given two lanes allowing 32 in flight, 4 requests in flight on each, and lane 0 halved before
    # it heard any rate headers
    limiter = make(n_models=2, max_in_flight=32)
    lane0 = [grant(limiter.try_acquire(0, 1, T0)) for _ in range(4)]
    lane1 = [grant(limiter.try_acquire(1, 1, T0)) for _ in range(4)]
    limiter.release(lane0.pop(), T0 + 0.1, Ending.OVERLOADED)
    assert stats(limiter, T0, 0).concurrency_limit == pytest.approx(2.8)
    # When lane 0's server sends rate headers (with requests left)
    limiter.observe(0, read_hints({"x-ratelimit-remaining-requests": "10"}), T0 + 0.1)
    # Then its limit is back to the full 32, and a later overload (a second later) leaves it there
    assert stats(limiter, T0, 0).concurrency_limit == 32.0
    limiter.release(lane0.pop(), T0 + 2.0, Ending.OVERLOADED)
    assert stats(limiter, T0, 0).concurrency_limit == 32.0
    # And lane 1, which heard no headers, still falls on its overload
    limiter.release(lane1.pop(), T0 + 2.0, Ending.OVERLOADED)
    assert stats(limiter, T0, 1).concurrency_limit == pytest.approx(2.8)


# --- keys -----------------------------------------------------------------------------------------


def test_requests_go_to_the_least_loaded_enabled_key() -> None:
    # Given three keys for one model
    limiter = make(n_keys=3)
    # When three requests start, then one more
    first = [grant(limiter.try_acquire(0, 1, T0)) for _ in range(3)]
    # Then each key got one, ...
    assert [g.key for g in first] == [0, 1, 2]
    # ... and once key 1's request ends, key 1 (0 in flight) is chosen over keys 0 and 2 (1 each)
    limiter.release(first[1], T0, Ending.OK)
    assert grant(limiter.try_acquire(0, 1, T0)).key == 1
    # And with key 0 at 1, key 1 at 1 and key 2 at 0, key 2 is chosen
    limiter.release(first[2], T0, Ending.OK)
    assert grant(limiter.try_acquire(0, 1, T0)).key == 2


def test_a_disabled_key_is_not_chosen_for_any_model() -> None:
    # Given three keys and two models, one request in flight on keys 1 and 2 of both models, none on
    # key 0
    limiter = make(n_keys=3, n_models=2)
    for model_index in (0, 1):
        first = [grant(limiter.try_acquire(model_index, 1, T0)) for _ in range(3)]
        assert [g.key for g in first] == [0, 1, 2]
        limiter.release(first[0], T0, Ending.OK)
    # When key 0 is disabled
    left = limiter.disable_key(0)
    # Then keys are left, key 0 reports disabled, and no request of either model goes to key 0
    assert left is True
    assert limiter.key_disabled(0) and not limiter.key_disabled(1)
    keys = [grant(limiter.try_acquire(model_index, 1, T0)).key
            for model_index in (0, 1) for _ in range(6)]
    assert 0 not in keys
    assert set(keys) == {1, 2}


def test_when_every_key_is_disabled_try_acquire_raises_no_keys_left() -> None:
    # Given three keys
    limiter = make(n_keys=3)
    # When they are disabled one by one
    answers = [limiter.disable_key(k) for k in (2, 0, 1)]
    # Then disable_key says keys are left until the last one goes, and then nothing can be acquired
    assert answers == [True, True, False]
    with pytest.raises(NoKeysLeft):
        limiter.try_acquire(0, 1, T0)


# --- lanes ----------------------------------------------------------------------------------------


def test_a_full_rpm_window_on_one_model_does_not_block_another_model() -> None:
    # Given one key, two models and one request per 10 s, and model 0's request started
    limiter = make(n_models=2, rpm=1, window_s=10.0, margin_s=0.0)
    grant(limiter.try_acquire(0, 1, 0.0))
    # When model 0 and model 1 ask again at t=1
    # Then model 0 waits 9 s and model 1 starts
    assert wait_of(limiter.try_acquire(0, 1, 1.0)) == pytest.approx(9.0)
    assert grant(limiter.try_acquire(1, 1, 1.0)).lane == limiter.lane(0, 1)


def test_a_full_window_on_one_key_sends_the_request_to_another_key() -> None:
    # Given two keys, one model, one request per 10 s, and key 0's request started and ended
    limiter = make(n_keys=2, rpm=1, window_s=10.0, margin_s=0.0)
    limiter.release(grant(limiter.try_acquire(0, 1, 0.0)), 0.5, Ending.OK)
    # When the next asks at t=1 (both keys equally loaded, key 0 first in line)
    got = grant(limiter.try_acquire(0, 1, 1.0))
    # Then key 1 takes it, and a third request waits for the sooner of the two windows (key 0's, at
    # 10)
    assert got.key == 1
    assert wait_of(limiter.try_acquire(0, 1, 2.0)) == pytest.approx(8.0)


def test_a_pause_on_one_key_lane_leaves_the_other_key_free() -> None:
    # Given two keys for one model, and a 429 that paused key 0's lane for 30 s
    limiter = make(n_keys=2)
    limiter.rate_limited(limiter.lane(0, 0), T0, retry_after=30)
    # When two requests ask
    keys = [grant(limiter.try_acquire(0, 1, T0)).key for _ in range(2)]
    # Then both go to key 1
    assert keys == [1, 1]
    lanes, _ = limiter.lane_stats(T0)
    assert [s.paused_for_s for s in lanes] == [pytest.approx(30.0), 0.0]


def test_lane_stats_count_requests_tokens_and_in_flight_per_lane() -> None:
    # Given two keys and two models
    limiter = make(n_keys=2, n_models=2)
    # When model 1 starts two requests (one per key) and one ends having used 123 tokens
    a = grant(limiter.try_acquire(1, 1, T0))
    grant(limiter.try_acquire(1, 1, T0))
    limiter.release(a, T0, Ending.OK, used=123)
    # Then the stats name each lane's key and model and count what happened on it
    lanes, _ = limiter.lane_stats(T0)
    rows = [(s.key, s.model_index, s.requests, s.tokens, s.in_flight) for s in lanes]
    assert rows == [(0, 0, 0, 0, 0), (0, 1, 1, 123, 0), (1, 0, 0, 0, 0), (1, 1, 1, 0, 1)]


def test_a_runs_endpoints_table_becomes_the_limiters_lanes_and_who_serves_each_model() -> None:
    # Given a run of two models and two endpoints: key 0 serves m1 (600 rpm, 4 in flight), key 1 all
    key_a, key_b = "sk-a-00000000000000000001", "sk-b-00000000000000000002"
    config = RunConfig(model="m1,m2", api_keys=(key_a, key_b),
                       endpoint_table=(Endpoint("m1", key_a, rpm=600, max_in_flight=4),
                                       Endpoint("*", key_b)))
    # When its limiter settings are made and a limiter is built from them
    settings = LimiterSettings.of(config, max_in_flight=10, holders=2)
    limiter = SharedLimiter(settings)
    # Then m1 goes to either key and m2 only to key 1; key 0's lane for m1 has its own limits
    assert settings.serves == ((0, 1), (1,))
    assert settings.lanes == (LaneLimits(0, 0, rpm=600, max_in_flight=4),)
    lanes, disabled = limiter.lane_stats(T0)
    assert len(lanes) == 4 and disabled == [False, False]
    # (a lane with no limit known opens one request at a time: slow start)
    assert [(s.requests_limit, s.requests_source, s.concurrency_limit) for s in lanes] == [
        (600.0, LimitSource.FLAG, 4.0), (0.0, LimitSource.NONE, 1.0),
        (0.0, LimitSource.NONE, 1.0), (0.0, LimitSource.NONE, 1.0)]
    keys = set()
    for _ in range(3):
        got = grant(limiter.try_acquire(1, 1, T0))
        keys.add(got.key)
        limiter.release(got, T0)
    assert keys == {1}


# --- across processes -----------------------------------------------------------------------------

PROCESSES = 4
CAP = 2000


def _hammer(limiter: SharedLimiter, times: Any, counts: Any, k: int, start: float,
            end: float) -> None:
    """Ask as fast as the limiter allows from ``start`` to ``end``; record each grant's time."""
    time.sleep(max(0.0, start - time.monotonic()))
    for _ in range(1_000_000):
        now = time.monotonic()
        if now >= end:
            break
        got = limiter.try_acquire(0, 1, now)
        if isinstance(got, Grant):
            if counts[k] < CAP:
                times[k * CAP + counts[k]] = now
            counts[k] += 1
            limiter.release(got, time.monotonic(), Ending.OK)
        else:
            time.sleep(max(0.0, min(got.seconds, end - now)))


def test_four_forked_processes_share_one_rpm_window() -> None:
    # Given one limiter of 50 requests per 1 s, no margin, shared by 4 forked processes
    rpm, window, duration = 50, 1.0, 2.5
    limiter = make(rpm=rpm, window_s=window, margin_s=0.0)
    times = CTX.RawArray("d", PROCESSES * CAP)
    counts = CTX.RawArray("i", PROCESSES)
    start = time.monotonic() + 0.2
    end = start + duration
    # When each asks as fast as it can for 2.5 s of real time
    procs = [CTX.Process(target=_hammer, args=(limiter, times, counts, k, start, end))
             for k in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=15)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join(timeout=5)
    assert not alive and all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert all(c <= CAP for c in counts), list(counts)
    grants = [times[k * CAP + i] for k in range(PROCESSES) for i in range(counts[k])]
    # Then the grants were spread over processes (which one wins a refill is luck, so not over all
    # four), ...
    assert sum(c > 0 for c in counts) >= 2, list(counts)
    # ... no 1 s window holds more than 50 of them all together (each process reads its clock before
    # it takes the lock, so two grants can be recorded out of order by that gap; 20 ms covers it),
    # ...
    assert most_in_a_window(grants, window - 0.02) <= rpm, sorted(grants)
    # ... at most 50 per started second were granted (a window refills once a second: at 0, 1 and
    # 2), ...
    assert len(grants) <= rpm * math.ceil(duration / window)
    # ... and the limit was used: at least 95% of 50 per second of the run (the three refills give
    # 150)
    assert len(grants) >= 0.95 * rpm * duration / window, len(grants)


# --- parse_duration -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("6m0s", 360.0),
    ("1.5s", 1.5),
    ("12ms", 0.012),
    ("1h2m3s", 3723.0),
    ("500us", 0.0005),
    ("250ns", 2.5e-7),
    ("3", 3.0),
    ("0.5", 0.5),
    (" 20s ", 20.0),
    ("1m30.5s", 90.5),
])
def test_parse_duration_reads_go_durations_and_plain_seconds(text: str, seconds: float) -> None:
    # Given a duration as an API's x-ratelimit-reset-* header writes it
    # When it is parsed
    # Then it is that many seconds
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("text", ["abc", "5x", "", None, "s", "5 s", "ms12", "1m-3s", "3 4"])
def test_parse_duration_rejects_what_is_not_a_duration(text: str | None) -> None:
    # Given text that is no duration
    # When it is parsed
    # Then there is no answer, rather than a wrong one
    assert parse_duration(text) is None


# --- pacing, learned limits, outages, dead holders ------------------------------------------------


def test_a_paced_lane_lets_half_a_seconds_worth_go_at_once_then_one_every_interval() -> None:
    # Given 600 requests a minute (about 9.8 a second over the window and its 1 s margin), burst 0.5
    # s
    limiter = make(rpm=600, burst_s=0.5)
    # When requests are asked for all at once
    burst = 0
    while isinstance(limiter.try_acquire(0, 1, T0), Grant):
        burst += 1
    # Then half a second's worth (4 whole requests of 4.9) go, then one every interval (61/600 s)
    assert burst == 4
    first = T0 + wait_of(limiter.try_acquire(0, 1, T0))
    grant(limiter.try_acquire(0, 1, first))
    assert wait_of(limiter.try_acquire(0, 1, first)) == pytest.approx(61 / 600, rel=1e-6)


def test_a_pause_ends_with_one_request_then_one_per_interval_not_a_stampede() -> None:
    # Given a paced lane (600/min) whose bucket is full, and a 429 asking for 2 s
    limiter = make(rpm=600, burst_s=0.5)
    limiter.rate_limited(0, T0, retry_after=2.0)
    # When the pause ends
    # Then one request goes at once and the next one interval later
    grant(limiter.try_acquire(0, 1, T0 + 2.0))
    assert wait_of(limiter.try_acquire(0, 1, T0 + 2.0)) == pytest.approx(61 / 600, rel=1e-6)


def test_a_limit_stated_in_headers_is_paced_to_when_no_flag_sets_one() -> None:
    # Given a lane with no --rpm, and an answer stating 120 requests a minute
    limiter = make(burst_s=0.5)
    limiter.observe(0,
                    read_hints({"x-ratelimit-limit-requests": "120",
                                "x-ratelimit-remaining-requests": "119"}), T0)
    # When requests are asked for at once
    granted = sum(isinstance(limiter.try_acquire(0, 1, T0), Grant) for _ in range(10))
    # Then only the burst goes (the margin's worth, 2 requests of 120 per 61 s), and the stats name
    # the source
    assert granted == 1
    row = stats(limiter, T0)
    assert (row.requests_limit, row.requests_source) == (120, "server")


def test_a_hintless_429_lowers_the_rate_to_seventy_percent_of_what_was_sent() -> None:
    # Given a lane with no limit, two requests in flight at most (so the rate is what is left to
    # lower), that sent 20 requests in its first second, 20 more in the next
    limiter = make(max_in_flight=2)
    for i in range(40):
        limiter.release(grant(limiter.try_acquire(0, 1, T0 + i * 0.05)), T0 + i * 0.05, Ending.OK)
    # When a 429 with no hint comes
    limiter.rate_limited(0, T0 + 2.0, None)
    # Then the rate in force is learned: 70% of the 20 a second sent, and grows back while requests
    # succeed
    row = stats(limiter, T0 + 2.0)
    assert row.requests_source == "learned"
    assert row.requests_limit / row.window_s == pytest.approx(14.0, rel=0.05)
    for i in range(10):
        now = T0 + 2.0 + (i + 1) * 0.5
        got = limiter.try_acquire(0, 1, now)
        if isinstance(got, Grant):
            limiter.release(got, now, Ending.OK)
    assert stats(limiter, T0 + 7.0).requests_limit / 60 > 14.0 * 1.1


def test_after_three_connection_failures_a_probe_at_a_time_goes_until_the_server_answers() -> None:
    # Given a lane whose requests fail to connect three times in a row
    limiter = make()
    grants = [grant(limiter.try_acquire(0, 1, T0)) for _ in range(3)]
    assert [limiter.release(g, T0, Ending.UNREACHABLE) for g in grants] == [False, False, True]
    # Then nothing goes for half a second, then one probe, and nothing beside it
    waiting = limiter.try_acquire(0, 1, T0 + 0.1)
    assert isinstance(waiting, Wait) and waiting.reason == "outage"
    probe = grant(limiter.try_acquire(0, 1, T0 + 0.5))
    assert probe.probe
    assert isinstance(limiter.try_acquire(0, 1, T0 + 0.6), Wait)
    # When the probe fails, the next waits twice as long; when one is answered, everything goes
    # again
    limiter.release(probe, T0 + 0.6, Ending.UNREACHABLE)
    assert isinstance(limiter.try_acquire(0, 1, T0 + 1.5), Wait)
    second = grant(limiter.try_acquire(0, 1, T0 + 1.6))
    limiter.release(second, T0 + 1.7, Ending.OK)
    grant(limiter.try_acquire(0, 1, T0 + 1.7))
    grant(limiter.try_acquire(0, 1, T0 + 1.7))
    assert stats(limiter, T0 + 1.7).outage_s == pytest.approx(1.7)


def test_reclaim_gives_back_what_a_dead_holder_had_in_flight() -> None:
    # Given two holders sharing a lane of at most 4 in flight, holder 1 holding 3
    limiter = make(max_in_flight=4, holders=2)
    for _ in range(3):
        grant(limiter.try_acquire(0, 1, T0, holder=1))
    grant(limiter.try_acquire(0, 1, T0, holder=0))
    assert isinstance(limiter.try_acquire(0, 1, T0), Wait)
    # When holder 1 dies and is reclaimed
    assert limiter.reclaim(1) == 3
    # Then its three slots are free again
    for _ in range(3):
        grant(limiter.try_acquire(0, 1, T0))


def _take_the_lock_and_die(limiter: SharedLimiter) -> None:
    limiter.lane_lock(0).acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_process_killed_while_holding_the_lock_does_not_stop_the_others() -> None:
    # Given a forked process that takes the limiter's lock and is SIGKILLed holding it
    limiter = make()
    proc = CTX.Process(target=_take_the_lock_and_die, args=(limiter,))
    proc.start()
    proc.join(timeout=10)
    assert proc.exitcode == -signal.SIGKILL
    # When another process asks for a grant
    result = CTX.Queue()
    asker = CTX.Process(target=lambda: result.put(isinstance(limiter.try_acquire(0, 1, T0), Grant)))
    asker.start()
    asker.join(timeout=10)
    alive = asker.is_alive()
    if alive:
        asker.kill()
    # Then it gets one at once: the kernel dropped the dead holder's lock
    assert not alive and result.get(timeout=5) is True


def test_an_endpoints_own_limit_outlives_an_aimd_decrease_and_a_server_stating_more() -> None:
    # Given a lane with its endpoint's own limit of 600 a minute, at most two in flight, that sent
    # 10 a second
    limiter = make(max_in_flight=2)
    limiter.limit_lane(0, 0, rpm=600, tpm=None, max_in_flight=None)
    for i in range(20):
        limiter.release(grant(limiter.try_acquire(0, 1, T0 + i * 0.1)), T0 + i * 0.1, Ending.OK)
    # When a 429 with no hint lowers the rate, and then the server states a limit ten times the
    # endpoint's
    limiter.rate_limited(0, T0 + 2.0, None)
    assert stats(limiter, T0 + 2.0).requests_source == "learned"
    limiter.observe(0,
                    read_hints({"x-ratelimit-limit-requests": "6000",
                                "x-ratelimit-remaining-requests": "5990"}), T0 + 2.0)
    # Then the rate grows back to the endpoint's 600 and no further, given again, not the server's
    limits = []
    for i in range(60):
        now = T0 + 2.0 + (i + 1) * 1.0
        got = limiter.try_acquire(0, 1, now)
        if isinstance(got, Grant):
            limiter.release(got, now, Ending.OK)
        limits.append(stats(limiter, now).requests_limit)
    row = stats(limiter, T0 + 62.0)
    assert (row.requests_limit, row.requests_source) == (600, "flag")
    assert max(limits) <= 600 + EPS
