"""The cluster's limiter without Ray: one endpoint's LimiterActor shared by two jobs, its name, and
a worker's RayLimiter choosing an endpoint over two actors (in-process stand-ins for handles)."""

from __future__ import annotations

import asyncio
from typing import Any

from mpinfer.api.endpoints import Endpoint
from mpinfer.limits import (
    ClusterLimits,
    Ending,
    EndpointLanes,
    Grant,
    LaneLimits,
    LimiterActor,
    LimiterSettings,
    RayLimiter,
    Wait,
    cluster_lanes,
    limiter_name,
)

UNPACED = 1e9  # a burst of a billion seconds' worth: the pace never binds
T0 = 1000.0
KEY = "sk-cluster-0000000000000000000000abcd"


def _lanes(*models: tuple[str, int | None], in_flight: int = 8,
           rpm: int | None = None) -> EndpointLanes:
    settings = LimiterSettings(1, len(models), rpm, None, 60.0, UNPACED, max_in_flight=in_flight,
                               lanes=tuple(LaneLimits(0, m, own) for m, (_, own)
                                           in enumerate(models) if own))
    [lanes] = cluster_lanes(settings, [Endpoint("*", KEY, "http://127.0.0.1:1/v1")],
                            [name for name, _ in models])
    return lanes


def test_an_actors_name_is_a_keyed_hash_never_the_key_and_differs_by_place() -> None:
    # Given one key at two base URLs, and another key at the first
    here = Endpoint("*", KEY, "http://127.0.0.1:1/v1")
    there = Endpoint("*", KEY, "http://127.0.0.1:2/v1")
    other = Endpoint("*", KEY[:-4] + "wxyz", "http://127.0.0.1:1/v1")
    # Then each place and key has its own name, the same every time, holding no part of the key
    names = [limiter_name(e) for e in (here, there, other)]
    assert len(set(names)) == 3 and limiter_name(here) == names[0]
    assert all(KEY[-4:] not in name and "sk-" not in name for name in names)


def test_two_jobs_on_one_endpoint_share_a_lane_the_lowest_limit_holds_and_counts_stay_apart(
        ) -> None:
    # Given an endpoint's actor joined by job a (gpt-4o at 600 rpm) and job b (gpt-4o at 60 rpm)
    actor = LimiterActor(clock=lambda: T0)
    assert actor.join("a", _lanes(("gpt-4o", 600))) == ["a"]
    assert actor.join("b", _lanes(("gpt-4o", 60), ("gpt-4o-mini", None))) == ["a", "b"]
    # When each job sends requests on the shared lane
    grants = [actor.try_acquire(job, 0, "gpt-4o", 1) for job in ("a", "b", "a")]
    # Then the lane is one: the lowest limit is in force for both, and each job sees its own counts
    [(model, lane)], disabled = actor.lane_stats("a")
    assert model == "gpt-4o" and not disabled
    assert lane.requests_limit == 60 and lane.requests == sum(isinstance(g, Grant)
                                                              for g in grants[::2])
    assert [m for m, _ in actor.lane_stats("b")[0]] == ["gpt-4o", "gpt-4o-mini"]


def test_the_actor_ignores_a_release_from_a_holder_it_has_reclaimed() -> None:
    # Given an endpoint's actor allowing one request in flight, held by worker 3 of job a
    actor = LimiterActor(clock=lambda: T0)
    actor.join("a", _lanes(("m", None), in_flight=1))
    held = actor.try_acquire("a", 3, "m", 1)
    assert isinstance(held, Grant)
    assert isinstance(actor.try_acquire("a", 0, "m", 1), Wait)
    # When worker 3 dies, is reclaimed, and its late release arrives
    assert actor.reclaim("a", 3) == 1
    assert actor.release("a", 3, "m", held, Ending.OK, None, 0) is False
    # Then the slot it held is free once, not twice
    [(_, lane)], _ = actor.lane_stats("a")
    assert lane.in_flight == 0
    assert isinstance(actor.try_acquire("a", 0, "m", 1), Grant)
    assert isinstance(actor.try_acquire("a", 1, "m", 1), Wait)


class _Ref:
    """What ``handle.method.remote(...)`` gives: awaitable, as a Ray ObjectRef is."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        if False:  # pragma: no cover - makes this a generator
            yield
        return self.value


class _Handle:
    """An actor's handle in this process: ``handle.method.remote(*args)`` calls the method."""

    def __init__(self, actor: LimiterActor) -> None:
        self.actor = actor

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.actor, name)

        class _Method:
            @staticmethod
            def remote(*args: Any) -> _Ref:
                return _Ref(method(*args))

        return _Method()


def test_a_worker_takes_the_endpoint_its_model_may_use_now_and_names_it_by_the_runs_key() -> None:
    # Given two endpoints of one model: the first allows one request in flight, the second eight
    first, second = LimiterActor(clock=lambda: T0), LimiterActor(clock=lambda: T0)
    lanes = (_lanes(("m", None), in_flight=1), _lanes(("m", None), in_flight=8))
    first.join("a", lanes[0])
    second.join("a", lanes[1])
    limits = ClusterLimits("a", ("m",), lanes, (_Handle(first), _Handle(second)))
    client = RayLimiter(limits, 0, lambda lanes: None)

    async def acquire() -> list[Grant | Wait]:
        return [await client.try_acquire(0, 1) for _ in range(3)]

    # When a worker asks for three grants without releasing any
    got = asyncio.run(acquire())
    # Then the first went to either endpoint, and once the first is full the others go to the
    # second: each grant names its endpoint by the run's key index
    assert all(isinstance(g, Grant) for g in got)
    keys = [g.key for g in got if isinstance(g, Grant)]
    assert keys.count(0) == 1 and keys.count(1) == 2
    # And a release reaches the actor that granted it
    asyncio.run(client.release(got[0], Ending.OK))  # type: ignore[arg-type]
    assert sum(lane.in_flight for actor in (first, second)
               for _, lane in actor.lane_stats("a")[0]) == 2
