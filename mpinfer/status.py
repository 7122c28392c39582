"""Read-only progress report of a run: works beside a live run, prints nothing, returns data."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from .config import RunConfig
from .store import OutputPaths, iter_lines, live_run, record_id
from .tasks import FieldKeys, check_input

RECENT_RECORDS = 500
STALLED_AFTER_S = 120.0


@dataclass(frozen=True)
class StatusReport:
    """Where a run stands, from the input, the output and the errors file."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(times: deque[float]) -> float | None:
    if len(times) < 2:
        return None
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else None


def status(config: RunConfig, now: float | None = None) -> StatusReport:
    """Count done, failed and pending tasks, tokens so far, recent throughput and ETA."""
    input_path, output = config.require_paths()
    now = time.time() if now is None else now
    index = check_input(input_path, FieldKeys(config.id_key, config.prompt_key, config.images_key))
    paths = OutputPaths.of(output)
    done: set[str] = set()
    bad = prompt = completion = 0
    recent: deque[float] = deque(maxlen=RECENT_RECORDS)
    for _, _, obj in iter_lines(paths.output):
        rid = record_id(obj)
        if rid is None:
            bad += 1
            continue
        done.add(rid)
        usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
        prompt += int(usage.get("prompt_tokens") or 0)
        completion += int(usage.get("completion_tokens") or 0)
        at = obj.get("processed_at")
        if isinstance(at, (int, float)):
            recent.append(float(at))
    failed_ids = {rid for _, _, obj in iter_lines(paths.errors) if (rid := record_id(obj)) is not None}
    done_known = done & index.ids
    failed = len((failed_ids & index.ids) - done_known)
    pending = index.total - len(done_known)
    info = live_run(paths)
    rate = _rate(recent)
    last = max(recent) if recent else None
    eta = None
    if info is not None and rate and last is not None and now - last < STALLED_AFTER_S:
        eta = pending / rate
    return StatusReport(
        input=str(input_path), output=str(output), total=index.total, done=len(done_known), failed=failed,
        pending=pending, percent=round(100.0 * len(done_known) / index.total, 2),
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
        bad_lines=bad, unknown_ids=len(done - index.ids), recent_per_s=round(rate, 3) if rate else None,
        eta_s=round(eta, 1) if eta is not None else None, last_written_at=last,
        live=info is not None, live_pid=info.pid if info else None,
    )
