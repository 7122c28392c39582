"""Learned limits (AIMD): the rate and the requests in flight a server that states no limit accepts.

- **The rate**: after hint-less 429s, a rate learned by AIMD: RATE_DECREASE of what was being sent
  (or of the rate in force, if lower), growing again by RATE_GROWTH_PER_S of that a second while
  requests succeed, back up to the limit given or stated.
- **What the server said** (``heard``, ``remembered``): whether its answers state limits, and
  which, is kept in the lane across runs for HEARD_KEPT_S, so the next run on the lane knows it
  from its first request instead of spending a round of one request to learn it again.
- **The requests in flight**, for servers with no rate headers at all (vLLM, DeepSeek, Ollama):
  lowered to CWND_DECREASE of them on a 429 or a timeout, once per window of requests, and grown by
  one per window of successes (TCP's congestion window).

Each function changes one lane's record and expects the limiter's lock to be held.
"""

from __future__ import annotations

from .grants import Ending
from .lanes import LEARNED, Lane, LimitSource

#: On a decrease, keep this share of the rate sent when a 429 came.
RATE_DECREASE = 0.7
#: While requests succeed, grow the rate by this share of where it restarted, a second.
RATE_GROWTH_PER_S = 0.03
#: Answers accepted before a rate is learned from them.
MIN_ACCEPTED = 8
#: On a 429 or a timeout, keep this share of the requests in flight (TCP CUBIC's 0.7).
CWND_DECREASE = 0.7
#: How long what a server said of its limits (or that it states none) spares the next run on the
#: lane its first round of one request: a key's limits change seldom, and when they do the first
#: answers' headers (or 429s) correct them as they would correct a flag.
HEARD_KEPT_S = 24 * 3600.0


def heard(lane: Lane, requests: float, tokens: float, now: float) -> None:
    """An answer told what the server states of its limits (0: nothing of that kind)."""
    lane.heard_at = now
    lane.heard_requests = requests
    lane.heard_tokens = tokens


def remembered(lane: Lane, now: float) -> None:
    """A fresh lane in slow start takes what the server said within HEARD_KEPT_S: its stated
    limits (paced as if its headers had just come), or that it states none (opened at once)."""
    if not 0.0 <= now - lane.heard_at < HEARD_KEPT_S:
        return
    lane.slow_start = False
    lane.concurrency = lane.concurrency_max
    if lane.heard_requests or lane.heard_tokens:
        lane.headers_seen = True
        if lane.heard_requests:
            lane.set_request_limit(lane.heard_requests, LimitSource.SERVER)
        if lane.heard_tokens:
            lane.set_token_limit(lane.heard_tokens, LimitSource.SERVER)


def grow_rate(lane: Lane, now: float) -> None:
    """Additive increase of a learned rate, up to the flag's or server's limit."""
    dt = min(1.0, now - lane.rate_grown_at)
    lane.rate_grown_at = now
    if dt <= 0:
        return
    limit = lane.request_limit + RATE_GROWTH_PER_S * lane.rate_base * dt
    cap = lane.request_cap
    if cap > 0 and limit >= cap:
        lane.set_request_limit(cap, LimitSource.FLAG if lane.request_given else LimitSource.SERVER)
    else:
        lane.request_limit = limit


def decrease_rate(lane: Lane, span_s: float, now: float, sent: float = 0.0) -> None:
    """Multiplicative decrease: a share of the rate that was being sent (or ``sent``, the rate the
    server accepted), or of the rate in force, if lower. Nothing measured yet: nothing to learn
    from."""
    current = lane.request_limit / span_s
    sent = sent or lane.send_rate or lane.bucket_count
    if not sent:
        return
    rate = max(1.0 / span_s, (min(current, sent) if current else sent) * RATE_DECREASE)
    # Never below a share of the most the server has accepted in a second: a server that refuses
    # at random (a busy proxy) refuses as many at any rate, and must not drive it to nothing.
    rate = max(rate, RATE_DECREASE * lane.ok_best)
    lane.request_limit = rate * span_s
    lane.request_source = LEARNED
    lane.rate_base = rate * span_s
    lane.rate_decreased_at = now
    lane.answered_since_decrease = False
    lane.rate_grown_at = now
    lane.request_tat = max(lane.request_tat, now)
    lane.slow_start = False


def refused_without_hint(lane: Lane, span_s: float, now: float) -> None:
    """A 429 with no wait hint: lower the rate, when that is what the server wants.

    The requests in flight are lowered first (``after_request``); the rate only once they are down
    to two (or are not managed), so a server that refuses beyond N in flight keeps its full rate.
    Once a second at most, and only if something got through since the last decrease: while a server
    refuses everything (a window that has run out), more refusals say nothing new.
    """
    if (now - lane.rate_decreased_at >= 1.0
            and (lane.headers_seen or lane.concurrency <= 2.0)
            and (lane.answered_since_decrease or lane.request_source != LEARNED)):
        decrease_rate(lane, span_s, now)


def refused_with_hint(lane: Lane) -> None:
    """A 429 with a wait hint on a lane whose limit nobody stated: the pause alone would end in
    the same burst, so the rate is lowered too when the pause ends (``hinted_pause_over``)."""
    lane.hint_pending = True


def hinted_pause_over(lane: Lane, span_s: float, now: float) -> None:
    """The pause of a hinted 429 is over: lower the rate from the rate the server accepted (a rate
    limit refuses what is sent beyond it), counted now that the requests sent with the refused one
    have come back; once MIN_ACCEPTED answers tell what that is, and as often as
    ``refused_without_hint`` at most."""
    lane.hint_pending = False
    accepted = max(lane.ok_rate, lane.ok_count / max(1.0, lane.ok_last - lane.ok_at))
    if (now - lane.rate_decreased_at >= 1.0
            and (lane.ok_best or lane.ok_count >= MIN_ACCEPTED)
            and (lane.answered_since_decrease or lane.request_source != LEARNED)):
        decrease_rate(lane, span_s, now, accepted)


def after_request(lane: Lane, ending: Ending, granted_at: float, now: float) -> None:
    """A request the server answered ended: the rate and the requests in flight learn from it.

    Until a limit is known the first round is one request, so a server that states its limit in
    its answers is not overrun by the first round: its first answer sets the pace (observe). An
    answer that states none opens the lane at once (one round lost, not the log2(N) of doubling:
    at 1,200 in flight and 1 s latency, 18 s against 9 s for 9,000 tasks); a refusal ends it too.
    """
    if ending is Ending.OK:
        # Answers accepted, counted a second at a time (a hinted 429's decrease starts there).
        elapsed = now - lane.ok_at
        if elapsed >= 1.0:
            lane.ok_rate = lane.ok_count / elapsed if elapsed < 2.0 else 0.0
            lane.ok_best = max(lane.ok_best, lane.ok_rate)
            lane.ok_at = now
            lane.ok_count = 0
        lane.ok_count += 1
        lane.ok_last = now
        lane.answered_since_decrease = True
        if lane.request_source == LEARNED:
            grow_rate(lane, now)
    if lane.headers_seen:
        return  # the server states its limits: the requests in flight are not managed
    concurrency = lane.concurrency
    if lane.slow_start:
        if ending is Ending.OK:
            # An answer that stated no limit (a stated one ends slow start in observe): this server
            # states none (vLLM, most proxies), so a slower opening would learn nothing more. Open
            # at once; a refusal from here on teaches the rate and the requests in flight (below).
            heard(lane, 0.0, 0.0, now)
            lane.slow_start = False
            lane.concurrency = lane.concurrency_max
            return
        if ending is Ending.OVERLOADED:
            lane.slow_start = False
    if ending is Ending.OVERLOADED:
        # Once per window of requests: those already in flight at a decrease fail together.
        if granted_at > lane.concurrency_decreased_at:
            lane.concurrency = max(1.0, min(concurrency, lane.in_flight + 1) * CWND_DECREASE)
            lane.concurrency_decreased_at = now
    elif ending is Ending.OK and concurrency < lane.concurrency_max:
        lane.concurrency = min(lane.concurrency_max, concurrency + 1.0 / max(1.0, concurrency))
