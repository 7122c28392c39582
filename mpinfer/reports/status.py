"""Read-only progress report of a run: works beside a live run, prints nothing, returns data.

Done, failed and pending come from the output and errors files (the truth); requests, tokens and
429s per key come from the run's summary file, which the parent rewrites every few seconds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from ..backends.batch_plan import BatchStatus, plan_report
from ..config import RunConfig
from ..inputs import InputIndex, checked_input, input_index_path, reading, selection
from ..store.locks import live_run
from ..store.output import OutputPaths, companion, run_outputs
from . import status_cache
from .by_group import GroupReader
from .groups import GroupRow
from .summary import percentiles, percentiles_of_runs, read_summary
from .tally import RECENT_RECORDS, OutputTally

STALLED_AFTER_S = 120.0
WATCH_SAVE_EVERY_S = 60.0
WATCH_LATENCY_EVERY_S = 30.0


@dataclass(frozen=True)
class OutputStatus:
    """Where one output (one variant's and model's) stands."""

    output: str
    done: int
    failed: int
    pending: int
    prompt_tokens: int
    completion_tokens: int
    bad_lines: int
    unknown_ids: int
    last_written_at: float | None
    cost: float = 0.0
    unpriced: int = 0
    unpriced_models: list[str] = field(default_factory=list)  # no price known: cost unknown
    model_mismatches: int = 0
    failures_by_type: dict[str, int] = field(default_factory=dict)
    refusals: int = 0
    truncated: int = 0
    filtered: int = 0  # stopped by a content filter: done, like a refusal
    no_usage: int = 0  # answers that came without usage: their cost unknown, not in ``cost``


@dataclass(frozen=True)
class StatusReport:
    """Where a run stands, over all its outputs."""

    input: str
    output: str
    total: int
    done: int
    failed: int
    pending: int
    percent: float
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    bad_lines: int
    unknown_ids: int
    recent_per_s: float | None
    eta_s: float | None
    last_written_at: float | None
    live: bool
    live_pid: int | None
    rate_limited: int = 0
    cost: float = 0.0
    unpriced: int = 0
    unpriced_models: list[str] = field(default_factory=list)  # answers of these: cost unknown
    model_mismatches: int = 0
    failures_by_type: dict[str, int] = field(default_factory=dict)
    refusals: int = 0
    truncated: int = 0
    filtered: int = 0
    no_usage: int = 0
    latency_s: dict[str, float | None] = field(default_factory=dict)  # on the wire
    waited_s: float | None = None  # the mean wait before a task's answer left
    models: list[OutputStatus] = field(default_factory=list)
    limits: str | None = None
    limited_s: float = 0.0
    waiting_for_server_since: str | None = None
    per_model: dict[str, Any] = field(default_factory=dict)
    per_key: dict[str, Any] = field(default_factory=dict)
    # --backend batch: each batch, as last polled
    batches: list[BatchStatus] = field(default_factory=list)
    groups: list[GroupRow] | None = None  # --by FIELD: results by group (None: not asked)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON values (``--status --json``; ``groups`` only with --by)."""
        data = asdict(self)
        # nothing priced: the cost is unknown, not 0
        for part in (data, *data["models"]):
            if part["unpriced"] and not part["cost"]:
                part["cost"] = None
        if self.groups is None:
            del data["groups"]
        else:
            data["groups"] = [row.to_dict() for row in self.groups]
        # Users read a batch's model index as "model" in this JSON: the key stays as it was.
        data["batches"] = [{("model" if key == "model_index" else key): value
                            for key, value in batch.items()} for batch in data["batches"]]
        return data


def _rate(times: list[float]) -> float | None:
    if len(times) < 2:
        return None
    ordered = sorted(times)
    span = ordered[-1] - ordered[0]
    return (len(ordered) - 1) / span if span > 0 else None


def _output_status(output: Path, tally: OutputTally) -> OutputStatus:
    done = len(tally.done)
    by_type = tally.failures_by_type()
    return OutputStatus(
        output=str(output), done=done, failed=sum(by_type.values()),
        pending=len(tally.within) - done,
        prompt_tokens=tally.prompt, completion_tokens=tally.completion,
        bad_lines=tally.bad + tally.torn,
        unknown_ids=len(tally.unknown), last_written_at=tally.last, cost=round(tally.cost, 6),
        unpriced=tally.unpriced, unpriced_models=sorted(tally.unpriced_models),
        model_mismatches=tally.mismatches, failures_by_type=by_type,
        refusals=tally.refusals, truncated=tally.truncated, filtered=tally.filtered,
        no_usage=tally.no_usage,
    )


def _merge(counts: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for part in counts:
        for name, count in part.items():
            merged[name] = merged.get(name, 0) + count
    return dict(sorted(merged.items()))


class StatusReader:
    """Status that reads only what is new: the input's ids and each output's tally are kept.

    ``--status --watch`` keeps one reader (``watching``), so a redraw costs what was appended since
    the last one: it rewrites the cache at most every WATCH_SAVE_EVERY_S (and at ``close``), and
    sorts the latencies again for their percentiles once a hundredth more of them came in (or
    WATCH_LATENCY_EVERY_S passed). A reader also starts from the cache a previous --status left
    beside the output (reports/status_cache.py).
    """

    def __init__(self, config: RunConfig, use_cache: bool = True, watching: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.input_path, self.output = config.require_paths()
        self.outputs = tuple(out.path for out in run_outputs(self.output, config.variant_names,
                                                             config.models))
        self.keys = reading(config)
        self.use_cache = use_cache and status_cache.usable(config.only_failed)
        self.index: InputIndex | None = None
        self.tallies: list[OutputTally] = []
        self.bytes_read = 0  # by the last read: how much of the files it had to read
        self.from_cache = False
        self._key: dict[str, object] = {}
        self._percentiles: tuple[int, dict[str, float | None]] = (-1, {})
        self.watching = watching
        self._clock = clock
        self._saved_at: float | None = None
        self._unsaved = False
        self._sorted_at = 0.0
        self._groups: GroupReader | None = None  # --by FIELD

    def _refresh(self) -> tuple[InputIndex, bool]:
        """Read what is new; the index, and whether anything changed since the cache was written."""
        fresh = False
        if self.index is None:
            chosen = selection(self.config)
            self._key = status_cache.cache_key(self.input_path, self.keys, chosen,
                                                 self.outputs)
            if self.config.by is not None:
                self._groups = GroupReader(self.config, self.config.by, chosen, self._key,
                                           self.use_cache)
            cached = (status_cache.load(self._cache, self._key, self.input_path, self.keys,
                                        input_index_path(self.output))
                      if self.use_cache else None)
            self.from_cache = cached is not None
            if cached is None:
                # the input's id index a run kept beside the output, when the input is unchanged
                self.index = checked_input(self.input_path, self.keys, chosen,
                                           input_index_path(self.output))
                self.tallies = [OutputTally.empty(self.index.ids) for _ in self.outputs]
                fresh = True
            else:
                self.index, self.tallies = cached.index, cached.tallies
                self._percentiles = cached.latency
                self._saved_at = self._clock()  # what it holds is as good as a save just made
        marks = [(t.output_mark, t.errors_mark) for t in self.tallies]
        self.bytes_read = 0
        for path, tally in zip(self.outputs, self.tallies, strict=True):
            paths = OutputPaths.of(path)
            self.bytes_read += tally.refresh(paths.output, paths.errors, kept=self.index.kept)
        if any(t.restarted for t in self.tallies):
            self._percentiles = (-1, {})  # new latencies, perhaps as many as before
        changed = fresh or marks != [(t.output_mark, t.errors_mark) for t in self.tallies]
        return self.index, changed

    @property
    def groups_from_cache(self) -> bool:
        """Whether the groups (--by) were read from their cache (then only what is new)."""
        return self._groups is not None and self._groups.from_cache

    @property
    def _cache(self) -> Path:
        return status_cache.cache_path(self.output)

    def _latency(self) -> dict[str, float | None]:
        count = sum(t.latency_count() for t in self.tallies)
        done, now = self._percentiles[0], self._clock()
        if done == count:
            return self._percentiles[1]
        # Sorting a million latencies costs: not at every redraw for a few new ones.
        if (
            self.watching
            and done >= 0
            and count - done < count / 100
            and now - self._sorted_at < WATCH_LATENCY_EVERY_S
        ):
            return self._percentiles[1]
        self._sorted_at = now
        runs = [t.latency_runs() for t in self.tallies]
        if all(run is not None for run in runs):  # read just now: each part's in order
            self._percentiles = (count, percentiles_of_runs(
                [part for parts in runs if parts is not None for part in parts]))
        else:
            latencies = chain.from_iterable(run for t in self.tallies for run in t.latencies)
            self._percentiles = (count, percentiles(latencies))
        return self._percentiles[1]

    def _save(self, index: InputIndex, force: bool = False) -> None:
        now = self._clock()
        if (
            not force
            and self.watching
            and self._saved_at is not None
            and now - self._saved_at < WATCH_SAVE_EVERY_S
        ):
            return
        status_cache.save(self._cache, self._key, index, self.tallies, self._percentiles)
        if self._groups is not None:
            self._groups.save()
        self._saved_at, self._unsaved = now, False

    def close(self) -> None:
        """Write what a watching reader has not saved yet."""
        if self.use_cache and self._unsaved and self.index is not None:
            self._save(self.index, force=True)

    def read(self, now: float | None = None) -> StatusReport:
        """Count done, failed and pending tasks, tokens so far, recent throughput and ETA."""
        now = time.time() if now is None else now
        index, changed = self._refresh()
        outputs = self.outputs
        parts = [
            _output_status(path, tally) for path, tally in zip(outputs, self.tallies, strict=True)
        ]
        recent = sorted(stamp for tally in self.tallies for stamp in tally.recent)[-RECENT_RECORDS:]
        latency = self._latency()
        waits = sum(t.waits for t in self.tallies)
        waited = round(sum(t.waited for t in self.tallies) / waits, 4) if waits else None
        groups = None if self._groups is None else self._groups.read(
            index, dict(zip(self.outputs, self.tallies, strict=True)))
        self._unsaved = self._unsaved or changed or (self._groups is not None
                                                     and self._groups.unsaved)
        if self.use_cache and self._unsaved:
            self._save(index)
        report = _report(self.config, index.total * len(outputs), parts, recent,
                         (latency, waited), now)
        return report if groups is None else dataclasses.replace(report, groups=groups)


def status(config: RunConfig, now: float | None = None) -> StatusReport:
    """Count done, failed and pending tasks, tokens so far, recent throughput and ETA."""
    return StatusReader(config).read(now)


def _report(config: RunConfig, total: int, parts: list[OutputStatus], recent: list[float],
            latency: tuple[dict[str, float | None], float | None], now: float) -> StatusReport:
    """``latency``: the percentiles of the time on the wire, and the mean wait before it."""
    input_path, output = config.require_paths()
    outputs = [out.path for out in run_outputs(output, config.variant_names, config.models)]
    live = next((info for info in (live_run(OutputPaths.of(p)) for p in outputs) if info), None)
    done = sum(p.done for p in parts)
    pending = total - done
    rate = _rate(recent)
    stamps = [p.last_written_at for p in parts if p.last_written_at]
    last = max(stamps) if stamps else None
    summary = read_summary(companion(output, ".summary.json")) or {}
    eta = None
    if live is not None and rate and last is not None and now - last < STALLED_AFTER_S:
        # When the rate limit is the bottleneck (requests wait on it), its pace is the truth.
        pace = float(summary.get("pace_per_s") or 0.0)
        eta = pending / (min(rate, pace) if pace and summary.get("limited_s") else rate)
    prompt = sum(p.prompt_tokens for p in parts)
    completion = sum(p.completion_tokens for p in parts)
    waiting_since = summary.get("waiting_for_server_since")
    return StatusReport(
        input=str(input_path), output=str(output), total=total, done=done,
        failed=sum(p.failed for p in parts), pending=pending,
        percent=round(100.0 * done / total, 2),
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        bad_lines=sum(p.bad_lines for p in parts), unknown_ids=sum(p.unknown_ids for p in parts),
        recent_per_s=round(rate, 3) if rate else None,
        eta_s=round(eta, 1) if eta is not None else None,
        last_written_at=last, live=live is not None, live_pid=live.pid if live else None,
        rate_limited=int(summary.get("rate_limited") or 0),
        cost=round(sum(p.cost for p in parts), 6), unpriced=sum(p.unpriced for p in parts),
        unpriced_models=sorted({m for p in parts for m in p.unpriced_models}),
        model_mismatches=sum(p.model_mismatches for p in parts),
        failures_by_type=_merge(p.failures_by_type for p in parts),
        refusals=sum(p.refusals for p in parts), truncated=sum(p.truncated for p in parts),
        filtered=sum(p.filtered for p in parts), no_usage=sum(p.no_usage for p in parts),
        latency_s=latency[0], waited_s=latency[1], models=parts, limits=summary.get("limits"),
        limited_s=float(summary.get("limited_s") or 0.0),
        waiting_for_server_since=waiting_since if live is not None else None,
        per_model=summary.get("per_model") or {}, per_key=summary.get("per_key") or {},
        batches=plan_report(output, time.time()),
    )
