"""What the HTML report shows, as data: the output's lines binned by time per run, totals per model.

Built from the files a run leaves (the output, ``<output>.errors.jsonl`` and
``<output>.runs.jsonl``) and nothing else, so the report cannot drift from the truth and works on an
output written by an earlier version: a line without ``retries`` counts its extra attempts as
retries of unknown type, a manifest without runs makes the whole output one run, a line without
``refusal`` is not a refusal (RecordView decides what is).

One pass over each file keeps compact per-line columns (``array``), so a million lines cost tens of
MB; everything after that pass works on bins, about sixty per run.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..store.manifest import manifest_path, read_records
from ..store.output import OutputPaths, iter_lines, run_outputs
from ..store.records import failure_view, view

UNKNOWN_RETRY = "unknown"  # retries of a line written before lines said which kind they were
TARGET_BINS = 60


@dataclass(frozen=True)
class RunSpan:
    """One run as its manifest records tell it (or the whole output, when there is no manifest)."""

    run_id: str
    started_at: float
    ended_at: float | None  # None: no end record (still live, or killed)
    settings: Mapping[str, Any]
    argv: tuple[str, ...]
    counts: Mapping[str, Any] | None
    version: str | None


@dataclass
class ModelRow:
    """One line of the per-model table: a requested model at one endpoint."""

    model: str
    endpoint: str
    answers: int = 0
    failures: int = 0
    refusals: int = 0
    filtered: int = 0  # stopped by a content filter: answers, like refusals
    truncated: int = 0
    latency_sum: float = 0.0
    latencies: int = 0  # answers that recorded a latency
    waited_sum: float = 0.0  # off the wire before leaving, over ``waits`` answers
    waits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    unpriced: int = 0
    no_usage: int = 0  # answers that came without usage: cost unknown
    answered_by: set[str] = field(default_factory=set)

    @property
    def mean_latency_s(self) -> float | None:
        """Mean latency of the answers that recorded one, or None."""
        return self.latency_sum / self.latencies if self.latencies else None

    @property
    def mean_waited_s(self) -> float | None:
        """Mean wait (limits, a slot, backoff) of the answers that recorded one, or None."""
        return self.waited_sum / self.waits if self.waits else None

    @property
    def cost_per_1000(self) -> float | None:
        """Cost per 1,000 priced answers, or None if none was priced."""
        priced = self.answers - self.unpriced
        return self.cost / priced * 1000 if priced > 0 else None


@dataclass(frozen=True)
class Series:
    """One run's charts as bins of ``width_s`` seconds from ``start`` (x values are bin starts)."""

    start: float
    width_s: float
    times: list[float]
    answers_per_s: list[float]
    p50: list[float | None]
    p95: list[float | None]
    failures: dict[str, list[int]]  # by error type
    retries: dict[str, list[int]]  # by error type of the failed attempt
    cum_tokens: list[int]
    cum_cost: list[float]
    limits: list[tuple[float, str]]  # the answers/s --rpm and --tpm allowed, with their labels
    limit_note: str  # for a run without either: that none was set ("" for the whole output)


@dataclass(frozen=True)
class RunView:
    """One run as the report shows it: its span, its counts and its charts."""

    span: RunSpan
    answers: int
    failures: int
    series: Series | None  # None: the run wrote nothing


@dataclass(frozen=True)
class Timeline:
    """Everything the report draws, for the whole output and for each run."""

    output: Path
    lines: int
    runs: list[RunView]
    whole: Series | None
    table: list[ModelRow]


@dataclass
class _Columns:
    """Per-line values of every answer and failure, in file order (times are not sorted)."""

    t: array[float] = field(default_factory=lambda: array("d"))
    latency: array[float] = field(default_factory=lambda: array("d"))
    tokens: array[int] = field(default_factory=lambda: array("q"))
    cost: array[float] = field(default_factory=lambda: array("d"))
    fail_t: array[float] = field(default_factory=lambda: array("d"))
    fail_type: list[str] = field(default_factory=list)
    retry_t: array[float] = field(default_factory=lambda: array("d"))
    retry_type: list[str] = field(default_factory=list)
    retry_n: array[int] = field(default_factory=lambda: array("q"))


def _dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one: old or torn records lack fields."""
    return value if isinstance(value, dict) else {}


def _meta(obj: dict[str, Any], batch: bool) -> dict[str, Any]:
    """Where mpinfer's fields are: the line itself, or its ``mpinfer`` object in the Batch form."""
    return _dict(obj.get("mpinfer")) if batch else obj


def read_runs(output: Path) -> list[RunSpan]:
    """The manifest's runs, oldest first: a start record, completed by its end record if any."""
    starts: dict[str, dict[str, Any]] = {}
    ends: dict[str, dict[str, Any]] = {}
    for record in read_records(manifest_path(output)):
        run_id = record.get("run_id")
        if not isinstance(run_id, str) or not isinstance(record.get("started_at"), (int, float)):
            continue
        (ends if record.get("event") == "end" else starts).setdefault(run_id, record)
    spans = []
    for run_id, start in starts.items():
        end = ends.get(run_id, {})
        argv = start.get("argv")
        ended = end.get("ended_at")
        version = start.get("version")
        spans.append(RunSpan(run_id=run_id, started_at=float(start["started_at"]),
                             ended_at=float(ended) if isinstance(ended, (int, float)) else None,
                             settings=_dict(start.get("settings")),
                             argv=tuple(str(a) for a in argv) if isinstance(argv, list) else (),
                             counts=_dict(end.get("counts")) or None,
                             version=version if isinstance(version, str) else None))
    return sorted(spans, key=lambda s: s.started_at)


def _retries(obj: dict[str, Any], batch: bool) -> dict[str, int]:
    """Retries of one line by kind: its ``retries`` field, else its extra attempts, ``unknown``."""
    meta = _meta(obj, batch)
    given = meta.get("retries")
    if isinstance(given, dict):
        return {str(k): int(v) for k, v in given.items() if isinstance(v, int) and v > 0}
    attempts = meta.get("attempts")
    if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts > 1:
        return {UNKNOWN_RETRY: attempts - 1}
    return {}


class _Reader:
    """One pass over each output file and its errors file: the columns and the per-model rows."""

    def __init__(self, runs: list[RunSpan]) -> None:
        self.runs = runs
        self.starts = [run.started_at for run in runs]
        self.columns = _Columns()
        self.rows: dict[tuple[str, str], ModelRow] = {}
        self.lines = 0

    def _endpoint(self, obj: dict[str, Any], t: float | None) -> str:
        """The line's own endpoint if it names one, else the base URL of the run that wrote it."""
        named = obj.get("endpoint")
        if isinstance(named, str) and named:
            return named
        if t is None or not self.runs:
            return "-"
        run = self.runs[max(0, bisect.bisect_right(self.starts, t) - 1)]
        return str(run.settings.get("base_url") or "default")

    def _row(self, model: str, endpoint: str) -> ModelRow:
        row = self.rows.get((model, endpoint))
        if row is None:
            row = self.rows[(model, endpoint)] = ModelRow(model, endpoint)
        return row

    def _add_retries(self, t: float | None, retries: dict[str, int]) -> None:
        if t is None:
            return
        cols = self.columns
        for kind, count in retries.items():
            cols.retry_t.append(t)
            cols.retry_type.append(kind)
            cols.retry_n.append(count)

    def read_output(self, path: Path, file_model: str) -> None:
        """Read one output file into the columns and the per-model rows."""
        cols = self.columns
        for _, _, obj in iter_lines(path):
            self.lines += 1
            record = view(obj)
            if record is None:
                continue
            t = record.processed_at
            row = self._row(record.requested_model or file_model, self._endpoint(obj, t))
            usage = record.usage
            row.answers += 1
            row.prompt_tokens += usage.prompt_tokens
            row.completion_tokens += usage.completion_tokens
            if record.model:
                row.answered_by.add(record.model)
            if record.no_usage:
                row.no_usage += 1
            elif record.cost is None:
                row.unpriced += 1
            else:
                row.cost += record.cost
            latency = record.latency_s
            if latency is not None:
                row.latency_sum += latency
                row.latencies += 1
            if record.waited_s is not None:
                row.waited_sum += record.waited_s
                row.waits += 1
            row.truncated += record.truncated
            row.refusals += record.refused
            row.filtered += record.filtered
            self._add_retries(t, _retries(obj, record.batch))
            if t is not None:
                cols.t.append(t)
                cols.latency.append(math.nan if latency is None else latency)
                tokens = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
                cols.tokens.append(tokens)
                cols.cost.append(record.cost or 0.0)

    def read_errors(self, path: Path, file_model: str) -> None:
        """Read one errors file: failures and retries, by time and by model."""
        cols = self.columns
        for _, _, obj in iter_lines(path):
            failure = failure_view(obj)
            if failure is None:
                continue
            t = failure.processed_at
            self._row(file_model, self._endpoint(obj, t)).failures += 1
            self._add_retries(t, _retries(obj, failure.batch))
            if t is not None:
                cols.fail_t.append(t)
                cols.fail_type.append(failure.error_type)


def _nice_width(span_s: float) -> float:
    """A bin width of 0.1, 0.2, 0.5, 1, 2, 5 ... s, 1, 2, 5 ... min, 1 h ... giving at most about
    TARGET_BINS bins (a short demo run gets tenths of a second, a day-long run minutes)."""
    wanted = max(span_s / TARGET_BINS, 0.1)
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
                 21600, 43200, 86400):
        if step >= wanted:
            return float(step)
    return float(math.ceil(wanted / 86400) * 86400)


def _nearest_rank(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def _limits(settings: Mapping[str, Any], per_answer: float | None) -> list[tuple[float, str]]:
    """The answers a second the settings allowed, over every key and model: --rpm directly, --tpm
    over the mean tokens an answer (approximate: the limiter counts its estimate)."""
    models = [m for m in str(settings.get("model") or "").split(",") if m.strip()] or ["?"]
    keys = settings.get("key_count")
    lanes = len(models) * (keys if isinstance(keys, int) and keys > 0 else 1)
    window = settings.get("rate_window") or 60
    over = f"x {lanes} key-model lane{'s' if lanes > 1 else ''}, counted over {window:g} s"
    limits = []
    rpm, tpm = settings.get("rpm"), settings.get("tpm")
    if isinstance(rpm, (int, float)) and rpm > 0:
        limits.append((rpm * lanes / 60.0, f"--rpm limit ({rpm:g}/min {over})"))
    if isinstance(tpm, (int, float)) and tpm > 0 and per_answer:
        limits.append((tpm * lanes / 60.0 / per_answer,
                       f"--tpm limit ({tpm:g}/min {over}) / {per_answer:.0f} tokens an answer"))
    return limits


def _sorted(cols: _Columns) -> _Columns:
    """The columns in time order (lines are nearly in order already, which timsort makes cheap)."""
    out = _Columns()
    order = sorted(range(len(cols.t)), key=cols.t.__getitem__)
    out.t = array("d", (cols.t[i] for i in order))
    out.latency = array("d", (cols.latency[i] for i in order))
    out.tokens = array("q", (cols.tokens[i] for i in order))
    out.cost = array("d", (cols.cost[i] for i in order))
    order = sorted(range(len(cols.fail_t)), key=cols.fail_t.__getitem__)
    out.fail_t = array("d", (cols.fail_t[i] for i in order))
    out.fail_type = [cols.fail_type[i] for i in order]
    order = sorted(range(len(cols.retry_t)), key=cols.retry_t.__getitem__)
    out.retry_t = array("d", (cols.retry_t[i] for i in order))
    out.retry_type = [cols.retry_type[i] for i in order]
    out.retry_n = array("q", (cols.retry_n[i] for i in order))
    return out


def _span(times: array[float], start: float, end: float) -> range:
    """The indices of sorted ``times`` with start <= t < end."""
    return range(bisect.bisect_left(times, start), bisect.bisect_left(times, end))


def _series(cols: _Columns, start: float, end: float, settings: Mapping[str, Any]) -> Series | None:
    """Bin the lines of sorted ``cols`` with start <= t < end."""
    picked, fails = _span(cols.t, start, end), _span(cols.fail_t, start, end)
    retries = _span(cols.retry_t, start, end)
    ends = [times[r[i]] for times, r in ((cols.t, picked), (cols.fail_t, fails))
            for i in (0, -1) if r]
    if not ends:
        return None
    origin = min(ends) if not math.isfinite(start) else min(start, *ends)
    last = max(ends)
    width = _nice_width(last - origin)
    count = int((last - origin) // width) + 1

    def slot(t: float) -> int:
        return min(count - 1, int((t - origin) // width))

    answers = [0] * count
    latencies: list[list[float]] = [[] for _ in range(count)]
    tokens = [0] * count
    cost = [0.0] * count
    for i in picked:
        b = slot(cols.t[i])
        answers[b] += 1
        latency = cols.latency[i]
        if latency == latency:  # not NaN (no latency recorded)
            latencies[b].append(latency)
        tokens[b] += cols.tokens[i]
        cost[b] += cols.cost[i]
    failures: dict[str, list[int]] = {}
    for i in fails:
        failures.setdefault(cols.fail_type[i], [0] * count)[slot(cols.fail_t[i])] += 1
    retried: dict[str, list[int]] = {}
    for i in retries:
        counts = retried.setdefault(cols.retry_type[i], [0] * count)
        counts[slot(cols.retry_t[i])] += cols.retry_n[i]
    p50: list[float | None] = []
    p95: list[float | None] = []
    for values in latencies:
        values.sort()
        p50.append(_nearest_rank(values, 0.50) if values else None)
        p95.append(_nearest_rank(values, 0.95) if values else None)
    cum_tokens: list[int] = []
    cum_cost: list[float] = []
    running_t, running_c = 0, 0.0
    for b in range(count):
        running_t += tokens[b]
        running_c += cost[b]
        cum_tokens.append(running_t)
        cum_cost.append(round(running_c, 8))
    mean_tokens = running_t / len(picked) if picked else None
    limits = _limits(settings, mean_tokens) if settings else []
    note = "" if limits or not settings else "no --rpm or --tpm set"
    return Series(start=origin, width_s=width, times=[origin + b * width for b in range(count)],
                  answers_per_s=[n / width for n in answers], p50=p50, p95=p95, failures=failures,
                  retries=retried, cum_tokens=cum_tokens, cum_cost=cum_cost, limits=limits,
                  limit_note=note)


def build_timeline(output: Path, models: tuple[str, ...],
                   variants: tuple[str, ...] = ()) -> Timeline:
    """Read the run's outputs (one per variant and model: store/output.run_outputs), their errors
    files and the manifest; a variant's rows are named ``variant:model``."""
    runs = read_runs(output)
    reader = _Reader(runs)
    for out in run_outputs(output, variants, models):
        paths = OutputPaths.of(out.path)
        name = str(out.model) if out.variant is None else f"{out.variant}:{out.model}"
        reader.read_output(paths.output, name)
        reader.read_errors(paths.errors, name)
    cols = _sorted(reader.columns)
    if not runs and (cols.t or cols.fail_t):
        first = min(times[0] for times in (cols.t, cols.fail_t) if times)
        last = max(times[-1] for times in (cols.t, cols.fail_t) if times)
        runs = [RunSpan("(no manifest)", first, last, {}, (), None, None)]
    views = []
    for n, span in enumerate(runs):
        # A run owns the lines written from its start to the next run's start (lines before the
        # first recorded run, from a version without a manifest, go to the first).
        start = span.started_at if n else -math.inf
        end = runs[n + 1].started_at if n + 1 < len(runs) else math.inf
        series = _series(cols, start, end, span.settings)
        views.append(RunView(span, len(_span(cols.t, start, end)),
                             len(_span(cols.fail_t, start, end)), series))
    whole = _series(cols, -math.inf, math.inf, {})
    table = sorted(reader.rows.values(), key=lambda r: (r.model, r.endpoint))
    return Timeline(output=output, lines=reader.lines, runs=views, whole=whole, table=table)
