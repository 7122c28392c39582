"""Read-only progress report of a run: works beside a live run, prints nothing, returns data.

Done, failed and pending come from the output and errors files (the truth); requests, tokens and 429s per
key come from the run's summary file, which the parent rewrites every few seconds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Set
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..inputs.tasks import check_input, reading, selection
from ..store.output import OutputPaths, companion, iter_lines, live_run, model_outputs, record_id
from ..store.records import failure_type, same_model, view
from .summary import percentiles, read_summary

RECENT_RECORDS = 500
STALLED_AFTER_S = 120.0


@dataclass(frozen=True)
class OutputStatus:
    """Where one output (one model) stands."""

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
    model_mismatches: int = 0
    failures_by_type: dict[str, int] = field(default_factory=dict)
    refusals: int = 0
    truncated: int = 0


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
    model_mismatches: int = 0
    failures_by_type: dict[str, int] = field(default_factory=dict)
    refusals: int = 0
    truncated: int = 0
    latency_s: dict[str, float | None] = field(default_factory=dict)
    models: list[OutputStatus] = field(default_factory=list)
    per_model: dict[str, Any] = field(default_factory=dict)
    per_key: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(times: deque[float]) -> float | None:
    if len(times) < 2:
        return None
    ordered = sorted(times)
    span = ordered[-1] - ordered[0]
    return (len(ordered) - 1) / span if span > 0 else None


def _output_status(output: Path, input_ids: Set[str], recent: deque[float],
                   latencies: list[float]) -> OutputStatus:
    paths = OutputPaths.of(output)
    done: set[str] = set()
    bad = prompt = completion = unpriced = mismatches = refusals = truncated = 0
    cost = 0.0
    last: float | None = None
    for _, _, obj in iter_lines(paths.output):
        record = view(obj)
        if record is None:
            bad += 1
            continue
        done.add(record.id)
        prompt += record.usage.prompt_tokens
        completion += record.usage.completion_tokens
        if record.cost is None:
            unpriced += 1
        else:
            cost += record.cost
        if not same_model(record.requested_model, record.model):
            mismatches += 1
        refusals += record.refused
        truncated += record.truncated
        if record.latency_s is not None:
            latencies.append(record.latency_s)
        if record.processed_at is not None:
            recent.append(record.processed_at)
            last = max(last or 0.0, record.processed_at)
    done_known = done & input_ids
    # The last failure of each id that is still not done: what a rerun will retry.
    failures: dict[str, str] = {}
    for _, _, obj in iter_lines(paths.errors):
        rid = record_id(obj)
        if rid is not None and rid in input_ids and rid not in done_known:
            failures[rid] = failure_type(obj) or "unknown"
    by_type: dict[str, int] = {}
    for error_type in failures.values():
        by_type[error_type] = by_type.get(error_type, 0) + 1
    return OutputStatus(
        output=str(output), done=len(done_known), failed=len(failures),
        pending=len(input_ids) - len(done_known), prompt_tokens=prompt, completion_tokens=completion,
        bad_lines=bad, unknown_ids=len(done - input_ids), last_written_at=last, cost=round(cost, 6),
        unpriced=unpriced, model_mismatches=mismatches, failures_by_type=dict(sorted(by_type.items())),
        refusals=refusals, truncated=truncated,
    )


def _merge(counts: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for part in counts:
        for name, count in part.items():
            merged[name] = merged.get(name, 0) + count
    return dict(sorted(merged.items()))


def status(config: RunConfig, now: float | None = None) -> StatusReport:
    """Count done, failed and pending tasks, tokens so far, recent throughput and ETA."""
    input_path, output = config.require_paths()
    now = time.time() if now is None else now
    index = check_input(input_path, reading(config), selection(config))
    outputs = model_outputs(output, config.models)
    recent: deque[float] = deque(maxlen=RECENT_RECORDS)
    latencies: list[float] = []
    parts = [_output_status(path, index.ids, recent, latencies) for path in outputs]
    live = next((info for info in (live_run(OutputPaths.of(p)) for p in outputs) if info), None)
    total = index.total * len(outputs)
    done = sum(p.done for p in parts)
    pending = total - done
    rate = _rate(recent)
    stamps = [p.last_written_at for p in parts if p.last_written_at]
    last = max(stamps) if stamps else None
    eta = None
    if live is not None and rate and last is not None and now - last < STALLED_AFTER_S:
        eta = pending / rate
    summary = read_summary(companion(output, ".summary.json")) or {}
    prompt = sum(p.prompt_tokens for p in parts)
    completion = sum(p.completion_tokens for p in parts)
    return StatusReport(
        input=str(input_path), output=str(output), total=total, done=done,
        failed=sum(p.failed for p in parts), pending=pending, percent=round(100.0 * done / total, 2),
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        bad_lines=sum(p.bad_lines for p in parts), unknown_ids=sum(p.unknown_ids for p in parts),
        recent_per_s=round(rate, 3) if rate else None, eta_s=round(eta, 1) if eta is not None else None,
        last_written_at=last, live=live is not None, live_pid=live.pid if live else None,
        rate_limited=int(summary.get("rate_limited") or 0), cost=round(sum(p.cost for p in parts), 6),
        unpriced=sum(p.unpriced for p in parts), model_mismatches=sum(p.model_mismatches for p in parts),
        failures_by_type=_merge(p.failures_by_type for p in parts),
        refusals=sum(p.refusals for p in parts), truncated=sum(p.truncated for p in parts),
        latency_s=percentiles(latencies), models=parts,
        per_model=summary.get("per_model") or {}, per_key=summary.get("per_key") or {},
    )
