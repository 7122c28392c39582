"""Outages: a lane whose server does not answer at all.

OUTAGE_AFTER connection failures in a row, with no answer between them, stop the lane; then one
request at a time goes out as a probe, PROBE_FIRST_S apart, doubling to PROBE_MAX_S, and any answer
ends the outage. Each function changes one lane's record and expects the limiter's lock to be held.
"""

from __future__ import annotations

import time

from .grants import Wait, WaitReason
from .lanes import Lane

OUTAGE_AFTER = 3
PROBE_FIRST_S = 0.5
PROBE_MAX_S = 4.0


def outage_wait(lane: Lane, now: float) -> Wait | None:
    """During an outage: a Wait, or None when this request may go as the probe."""
    if lane.prober < 0 and now >= lane.probe_at:
        return None
    return Wait(max(0.05, min(lane.probe_at - now, PROBE_FIRST_S)), WaitReason.OUTAGE,
                lane.outage_wall, now - lane.outage_at)


def unreachable(lane: Lane, probe: bool, now: float) -> bool:
    """A request got no answer; returns whether the lane is in an outage."""
    lane.connection_failures += 1
    if probe:
        lane.prober = -1
        lane.probe_gap = min(PROBE_MAX_S, max(PROBE_FIRST_S, 2 * lane.probe_gap))
        lane.probe_at = now + lane.probe_gap
    elif not lane.in_outage and lane.connection_failures >= OUTAGE_AFTER:
        lane.in_outage = True
        lane.outage_at = now
        lane.outage_wall = time.time()
        lane.probe_gap = PROBE_FIRST_S
        lane.probe_at = now + PROBE_FIRST_S
        lane.prober = -1
    return bool(lane.in_outage)


def answered(lane: Lane, now: float) -> None:
    """The server answered (anything): no outage."""
    lane.connection_failures = 0
    if lane.in_outage:
        lane.outage_s += now - lane.outage_at
        lane.in_outage = False
        lane.prober = -1
