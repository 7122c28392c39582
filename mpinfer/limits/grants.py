"""What the limiter hands a request and is told back: a Grant or a Wait, and how it Ended."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Ending(StrEnum):
    """How a request ended, as the limiter needs to know it."""

    OK = "ok"
    OVERLOADED = "overloaded"    # a 429 or a timeout: the server wants less
    UNREACHABLE = "unreachable"  # no answer at all: refused, reset, DNS, TLS
    ERROR = "error"              # the server answered with another error


class WaitReason(StrEnum):
    """Why a request must wait."""

    LIMIT = "limit"    # a rate, window, pause or concurrency limit
    OUTAGE = "outage"  # the server does not answer; a probe goes first


@dataclass(frozen=True)
class Wait:
    """Not yet: ask again in ``seconds``. During an outage, ``outage_wall`` is when it began (wall
    clock) and ``outage_for_s`` how long it has lasted."""

    seconds: float
    reason: WaitReason = WaitReason.LIMIT
    outage_wall: float = 0.0
    outage_for_s: float = 0.0


@dataclass(frozen=True)
class Grant:
    """Permission for one request on one lane; hand it back with ``release``.

    ``request_pos`` and ``token_pos`` count grants on the lane since the start (-1 when that limit
    is off): an entry is still in its ring while fewer than a ring's length of later grants have
    overwritten it. ``holder`` is the worker slot it counts against; ``probe`` marks the one request
    sent during an outage to see whether the server is back. ``at`` is when it was granted: only a
    request sent after the last decrease may lower the lane again.
    """

    lane: int
    key: int
    charged: int
    request_pos: int
    token_pos: int
    holder: int = 0
    probe: bool = False
    at: float = 0.0
