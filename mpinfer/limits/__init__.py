"""The rate limiter: pacing, windows, learned limits, hints, outages, over lanes in shared memory.

A lane is one API key (an endpoint) and one model. ``SharedLimiter`` (limiter.py) holds every lane
of a run in shared memory, a lane's record (lanefile.py) in a file that every run on the machine on
the same key, endpoint and model maps (or the run's own, with sharing off), built from
``LimiterSettings`` (settings.py, the one place a run's settings become a limiter's) before the
workers fork; a worker reaches it through a
``LimiterClient`` (clients.py): ``LocalLimiter`` on one machine, ``RayLimiter`` to the
``LimiterActor`` of a cluster. What a server says of its limits is read into ``Hints`` (hints.py)
where its answer arrives.

The parts: grants (Grant, Wait, Ending), lanes (a lane's record, LaneStats), pacing (GCRA), windows
(the --rpm/--tpm rings), learned (AIMD on the rate and the requests in flight, slow start),
outage, hints.
"""

from ..errors import NoKeysLeft
from .clients import (
    NAMESPACE,
    ClusterLimits,
    EndpointLanes,
    LimiterActor,
    LimiterClient,
    LocalLimiter,
    RayLimiter,
    cluster_lanes,
    limiter_name,
)
from .grants import Ending, Grant, Wait, WaitReason
from .hints import Hints, parse_duration, read_hints, wait_hint
from .lanes import LaneStats, LimitSource
from .limiter import SharedLimiter
from .settings import LaneLimits, LimiterSettings

__all__ = ["NAMESPACE", "ClusterLimits", "Ending", "EndpointLanes", "Grant", "Hints", "LaneLimits",
           "LaneStats", "LimitSource", "LimiterActor", "LimiterClient", "LimiterSettings",
           "LocalLimiter", "NoKeysLeft", "RayLimiter", "SharedLimiter", "Wait", "WaitReason",
           "cluster_lanes", "limiter_name", "parse_duration", "read_hints", "wait_hint"]
