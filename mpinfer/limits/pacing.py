"""Pacing: when a lane's next request may start under a rate (GCRA).

One "theoretical arrival time" per lane and limit: requests and tokens leave at the rate in force
with a burst of at most a tolerance's worth, so a server that enforces a per-minute limit per second
(OpenAI: limits "can be quantized") sees a steady stream. The rate is the limit over a span: the
window plus a margin, since requests reach the server a little after they leave, and the server's
window, measured on arrival, must stay within the limit too.
"""

from __future__ import annotations

DEFAULT_WINDOW_S = 60.0
DEFAULT_BURST_S = 0.5
MIN_WINDOW = 1.0
#: The margin: 2% of the window, between 0.1 s and 1 s (1.6% of a minute).
MARGIN_SHARE = 0.02
MAX_MARGIN_S = 1.0
MIN_MARGIN_S = 0.1


def margin_for(window_s: float) -> float:
    """The margin added to ``window_s`` when no margin is given."""
    return min(MAX_MARGIN_S, max(MIN_MARGIN_S, MARGIN_SHARE * window_s))


def pace_wait(tat: float, limit: float, cost: float, tolerance: float, span_s: float,
              now: float) -> float:
    """How long until a request costing ``cost`` fits the rate ``limit`` per span (<= 0: now)."""
    cost_s = cost * span_s / limit
    return max(tat, now) + cost_s - max(tolerance, cost_s) - now


def paced(tat: float, limit: float, cost: float, span_s: float, now: float) -> float:
    """The theoretical arrival time after a request costing ``cost`` starts ``now``."""
    return max(tat, now) + cost * span_s / limit
