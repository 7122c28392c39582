"""RunSummary: what a run did, tallied by the parent from its workers and the shared limiter.

It is written to ``<output>.summary.json`` every few seconds while the run is live and once at its
end, so ``--status`` can show requests, tokens and 429s per key and per model, which the output
lines alone do not carry. The counts of done and failed tasks in status come from the output files,
never from here.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..events import Stopped, TaskDone
from ..store.atomic import replace_quietly

if TYPE_CHECKING:
    from ..limits import LaneStats


@dataclass
class UsageCounts:
    """One model's or one key's use: requests, 429s and tokens, tasks answered and failed."""

    requests: int = 0
    rate_limited: int = 0
    tokens: int = 0
    succeeded: int = 0
    failed: int = 0
    disabled: bool = False


@dataclass(frozen=True)
class Epilogue:
    """The files a run's end wrote beside the output (None: not written), for the summary."""

    missing_file: Path | None = None
    missing_tasks: int = 0
    report_file: Path | None = None


@dataclass
class RunSummary:
    """What one run did; the CLI prints it and it is saved beside the output."""

    total: int
    already_done: int
    succeeded: int = 0
    failed: int = 0
    recovered: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    started_at: float = field(default_factory=time.time)
    stopped: Stopped | None = None
    log_file: Path | None = None
    repaired: int = 0
    bad_lines: int = 0
    unknown_ids: int = 0
    worker_deaths: int = 0
    failures_by_type: dict[str, int] = field(default_factory=dict)
    # retried attempts, by their error type
    retries_by_type: dict[str, int] = field(default_factory=dict)
    per_model: dict[str, UsageCounts] = field(default_factory=dict)
    per_key: dict[str, UsageCounts] = field(default_factory=dict)
    cost: float = 0.0
    unpriced: int = 0
    unpriced_models: list[str] = field(default_factory=list)  # asked for, with no known price
    cost_before: float = 0.0
    model_mismatches: int = 0
    # answers by another model than requested, by the endpoint that gave them (Endpoint.place)
    mismatch_endpoints: dict[str, int] = field(default_factory=dict)
    refusals: int = 0  # answered with a refusal: done, not failed, and not an empty answer
    truncated: int = 0  # answers cut off at max_tokens (finish_reason "length")
    filtered: int = 0  # stopped by the server's content filter: done, like a refusal
    no_usage: int = 0  # answers that came without usage: their cost unknown, not 0
    estimated_cost: float = 0.0  # those answers at their estimate (what --max-cost counts)
    # models the server does not know (404 model_not_found, DeploymentNotFound): what it said
    unknown_models: dict[str, str] = field(default_factory=dict)
    # the limits in force and where each came from (flag, server, learned)
    limits: str | None = None
    pace_per_s: float = 0.0  # requests a second the limits in force allow, over every lane
    limited_s: float = 0.0  # time some request waited on a rate limit (pace, window, pause)
    outage_s: float = 0.0  # time the server did not answer at all
    waiting_for_server_since: str | None = None  # HH:MM:SS while the server does not answer
    latencies: list[float] = field(default_factory=list, repr=False)  # on the wire
    waits: list[float] = field(default_factory=list, repr=False)  # limits, a slot, backoff
    # A batch's answers have no latency of their own: their batch's duration, created to ended.
    batch_durations: list[float] = field(default_factory=list, repr=False)
    epilogue: Epilogue | None = None  # the files the run's end wrote: missing tasks, report
    judged: list[RunSummary] = field(default_factory=list)  # --judge: each judging run's

    @property
    def done(self) -> int:
        """Tasks done in all: before this run, answered now, and recovered."""
        return self.already_done + self.succeeded + self.recovered

    @property
    def remaining(self) -> int:
        """Tasks neither done nor failed."""
        return self.total - self.done

    @property
    def rate_limited(self) -> int:
        """429s this run, over every key."""
        return sum(t.rate_limited for t in self.per_key.values())

    @property
    def requests(self) -> int:
        """Requests sent this run, over every key."""
        return sum(t.requests for t in self.per_key.values())

    @property
    def success_rate(self) -> float | None:
        """The share of this run's ended tasks that were answered; None before any ended."""
        ended = self.succeeded + self.failed
        return round(self.succeeded / ended, 4) if ended else None

    def count_answer(self, event: TaskDone) -> None:
        """Count one answered task."""
        self.succeeded += 1
        self.prompt_tokens += event.prompt_tokens
        self.completion_tokens += event.completion_tokens
        if event.no_usage:
            self.no_usage += 1
            if event.estimated_cost is None:
                self.unpriced += 1
            else:
                self.estimated_cost += event.estimated_cost
        elif event.cost is None:
            self.unpriced += 1
        else:
            self.cost += event.cost
        if event.mismatch:
            self.model_mismatches += 1
            if event.endpoint is not None:
                at = self.mismatch_endpoints
                at[event.endpoint] = at.get(event.endpoint, 0) + 1
        if event.refused:
            self.refusals += 1
        if event.truncated:
            self.truncated += 1
        if event.filtered:
            self.filtered += 1
        self.count_retries(event.retries)
        if event.latency_s is not None:
            (self.batch_durations if event.batch else self.latencies).append(event.latency_s)
        if event.waited_s is not None:
            self.waits.append(event.waited_s)

    def count_failure(self, error_type: str, retries: dict[str, int] | None = None,
                      paid: tuple[int, int, float | None] = (0, 0, None)) -> None:
        """Count a failed task by its error type, with the retries it used and what its answers
        cost (``paid``: prompt and completion tokens, cost: a bad_answer's were billed)."""
        self.failed += 1
        self.prompt_tokens += paid[0]
        self.completion_tokens += paid[1]
        self.cost += paid[2] or 0.0
        self.failures_by_type[error_type] = self.failures_by_type.get(error_type, 0) + 1
        self.count_retries(retries or {})

    def count_retries(self, retries: dict[str, int]) -> None:
        """Add a task's retries, by kind."""
        for kind, count in retries.items():
            self.retries_by_type[kind] = self.retries_by_type.get(kind, 0) + count

    def key_counts(self, name: str) -> UsageCounts:
        """The counts of the key (endpoint) ``name``, made on first use."""
        return self.per_key.setdefault(name, UsageCounts())

    def take_lane_stats(self, lanes: list[LaneStats], models: tuple[str, ...], key_names: list[str],
                        disabled: list[bool]) -> None:
        """Requests, 429s and tokens per key and per model, from the shared limiter's counters."""
        for name in models:
            counts = self.per_model.setdefault(name, UsageCounts())
            counts.requests = counts.rate_limited = counts.tokens = 0
        # the counters are the limiter's; the tasks each key ended are the driver's (key_counts)
        ended = {name: (t.succeeded, t.failed) for name, t in self.per_key.items()}
        self.per_key = {}
        for name, off in zip(key_names, disabled, strict=True):
            succeeded, failed = ended.get(name, (0, 0))
            self.per_key[name] = UsageCounts(succeeded=succeeded, failed=failed, disabled=off)
        for lane in lanes:
            for counts in (self.per_model[models[lane.model_index]],
                           self.per_key[key_names[lane.key]]):
                counts.requests += lane.requests
                counts.rate_limited += lane.rate_limited
                counts.tokens += lane.tokens
        self.take_limits(lanes, [f"{models[lane.model_index]} {key_names[lane.key]}"
                                 for lane in lanes])

    def take_limits(self, lanes: list[LaneStats], names: list[str] | None = None) -> None:
        """Which limits were in force, the pace they allow, the runs sharing each lane (``names``:
        the lanes', when there are several), and the time spent waiting on them."""
        told: dict[str, None] = {}
        shared: dict[str, None] = {}
        for index, lane in enumerate(lanes):
            window = f"{lane.window_s:g}s"
            if lane.requests_limit:
                told[f"{lane.requests_limit:.0f} requests/{window} ({lane.requests_source}"
                     f"{_lowest(lane.requests_limit, lane.told_requests, lane.requests_source)})"
                     ] = None
            if lane.tokens_limit:
                told[f"{lane.tokens_limit:.0f} tokens/{window} ({lane.tokens_source}"
                     f"{_lowest(lane.tokens_limit, lane.told_tokens, lane.tokens_source)})"] = None
            if lane.shared_with:
                which = f"{names[index]} " if names and len(lanes) > 1 else ""
                shared[f"{which}shared with {', '.join(lane.shared_with)}"] = None
        self.limits = "; ".join([*told, *shared]) or None
        self.pace_per_s = round(sum(lane.requests_limit / lane.window_s for lane in lanes), 3)
        self.limited_s = round(max((lane.limited_s for lane in lanes), default=0.0), 1)
        self.outage_s = round(max((lane.outage_s for lane in lanes), default=0.0), 1)
        since = min((lane.outage_since for lane in lanes if lane.outage_since), default=0.0)
        self.waiting_for_server_since = (time.strftime("%H:%M:%S", time.localtime(since)) if since
                                         else None)

    def to_dict(self, live: bool) -> dict[str, Any]:
        """The summary file's contents; ``live`` while the run goes on."""
        # Not asdict(self), which would copy every latency first (a long run's summary, rewritten
        # every few seconds, would copy them all each time); the lists go as percentiles below,
        # the epilogue's files are named by the CLI at the end (after this file is written), and
        # each judging run writes its own summary beside its output.
        data = asdict(replace(self, latencies=[], waits=[], batch_durations=[], epilogue=None,
                              judged=[]))
        del data["latencies"], data["waits"], data["batch_durations"]
        del data["epilogue"]
        del data["judged"]
        data["log_file"] = str(self.log_file) if self.log_file else None
        data["stopped"] = str(self.stopped) if self.stopped else None
        per_s = round(self.requests / self.elapsed_s, 3) if self.elapsed_s else None
        data.update(live=live, done=self.done, remaining=self.remaining,
                    rate_limited=self.rate_limited, requests=self.requests,
                    success_rate=self.success_rate, requests_per_s=per_s,
                    latency_s=percentiles(self.latencies), waited_s=percentiles(self.waits),
                    batch_s=percentiles(self.batch_durations),
                    # nothing priced: the cost is unknown, not 0
                    cost=None if self.unpriced and not self.cost else round(self.cost, 6),
                    estimated_cost=round(self.estimated_cost, 6),
                    updated_at=time.time())
        return data


def _lowest(limit: float, told: float, source: str) -> str:
    """What to add when another run sharing the lane was told a lower limit than this run."""
    if source == "flag" and told > limit:
        return f", the lowest of the runs sharing the lane; {told:.0f} told here"
    if source == "flag" and not told:
        return ", told another run sharing the lane"
    return ""


def percentiles(values: Iterable[float]) -> dict[str, float | None]:
    """p50, p95 and max of latencies (nearest rank), None for each when there are none."""
    return percentiles_of_runs([sorted(values)])


def percentiles_of_runs(runs: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """``percentiles`` of the values of ``runs``, each in order of size (a part of an output
    read on a core of its own sorts its own): each rank found by bisection in the runs, exact,
    with no sort of them all together."""
    runs = [run for run in runs if len(run)]
    count = sum(map(len, runs))
    if not count:
        return {"p50": None, "p95": None, "max": None}

    def rank(share: float) -> float:
        return _nth(runs, min(count - 1, max(0, math.ceil(share * count) - 1)))

    return {"p50": rank(0.50), "p95": rank(0.95), "max": max(run[-1] for run in runs)}


def _nth(runs: list[Sequence[float]], nth: int) -> float:
    """The ``nth`` smallest (from 0) of the values of ``runs``, each in order of size: in the run
    that holds it, the first value with more than ``nth`` values at or below it."""
    if len(runs) == 1:
        return runs[0][nth]
    for run in runs:
        low, high = 0, len(run)
        while low < high:
            middle = (low + high) // 2
            if sum(bisect_right(other, run[middle]) for other in runs) > nth:
                high = middle
            else:
                low = middle + 1
        if low < len(run) and sum(bisect_left(other, run[low]) for other in runs) <= nth:
            return run[low]
    raise ValueError("runs not each in order of size")


def write_summary(path: Path, summary: RunSummary, live: bool) -> None:
    """Replace the summary file atomically: a reader sees the old one or the new one, never half."""
    replace_quietly(path, orjson.dumps(summary.to_dict(live), option=orjson.OPT_INDENT_2))


def read_summary(path: Path) -> dict[str, Any] | None:
    """The summary file's contents, or None if it is missing or unreadable."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
