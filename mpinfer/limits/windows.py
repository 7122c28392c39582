"""Windows: with --rpm no more than rpm requests start in any window, with --tpm no more tokens are
charged in any window than it allows.

Both are rings per lane in shared memory: start times for requests (the limiter reads the oldest),
charges and their times for tokens (here), each charge corrected to the real prompt when the answer
comes. A ring is addressed from ``base``, the lane's first slot.
"""

from __future__ import annotations

from typing import Any

from .lanes import Lane

#: Charges kept per lane in the token window's ring.
TOKEN_RING = 16384


def expire_tokens(lane: Lane, times: Any, amounts: Any, base: int, horizon: float) -> None:
    """Drop the charges made at or before ``horizon`` from the lane's token window."""
    head, tail = lane.token_head, lane.token_tail
    while head < tail and times[base + head % TOKEN_RING] <= horizon:
        lane.token_sum -= amounts[base + head % TOKEN_RING]
        head += 1
    lane.token_head = head


def token_window_wait(lane: Lane, times: Any, amounts: Any, base: int, tokens: int, tpm: int,
                      span_s: float, now: float) -> float:
    """How long until ``tokens`` more fit the lane's token window (<= 0: now);
    old charges expire first."""
    expire_tokens(lane, times, amounts, base, now - span_s)
    head, tail = lane.token_head, lane.token_tail
    total = lane.token_sum
    if tail - head >= TOKEN_RING:
        return float(times[base + head % TOKEN_RING] + span_s - now)
    if total + tokens > tpm and head < tail:
        # Until enough of the oldest charges leave the window.
        freed, at = 0.0, head
        while at < tail and total - freed + tokens > tpm:
            freed += amounts[base + at % TOKEN_RING]
            at += 1
        return float(times[base + (at - 1) % TOKEN_RING] + span_s - now)
    return 0.0
