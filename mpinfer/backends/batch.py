"""The Batch API backend (``--backend batch``): half the price, answers within 24 hours, and a crash costs nothing.

The job's life, each step recorded in the batch plan (batch_plan.py) before it can matter:
1. start: the plan beside the output is loaded (a crashed or stopped run left it) or begun; the rows that are
   not done and not already in the plan are written into request files (batch_submit.plan_chunks) and the
   plan is saved, all before the first upload;
2. loop: each chunk is uploaded and its batch created (paced, waiting on the enqueued-token limit), the open
   batches are polled every ``--batch-poll`` seconds, and each finished batch is merged (batch_merge.py):
   answers appended through the store as online answers are, failures to the errors file, transient
   failures into a new chunk;
3. Ctrl-C or SIGTERM stops polling; the batches go on at the server and a rerun collects them.

``cancel`` (``--cancel``) cancels the output's open batches at the server; ``plan_report`` feeds --status.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..api.prices import PriceTable
from ..config import RunConfig
from ..driver import RunState
from ..errors import BatchApiError, ConfigError
from ..events import Stopped, StopReason
from ..inputs.check import reading
from ..inputs.readers import iter_tasks
from ..inputs.tasks import Task
from ..reports.summary import Tally
from ..store.output import Appender, OutputPaths, iter_lines, record_id, scan
from ..store.runlock import live_run
from .batch_merge import Merger
from .batch_plan import FINAL_STATUSES, Chunk, ChunkState, Plan
from .batch_submit import BatchClient, CreationPacer, QueueFull, create, plan_chunks, request_lines, upload

log = logging.getLogger("mpinfer.run")

TICK_S = 0.2
JOB_LIMIT_S = 26 * 3600.0
"""A run polls at most this long: the 24-hour window, finalizing, and some slack; then a rerun goes on."""
QUEUE_RETRY_POLLS = 4
"""Polls to wait on a full token queue that none of our batches holds (other jobs' batches fill it)."""
PER_BATCH_SHOWN = 3
"""Running batches the progress bar shows one by one (completed+failed/rows); --status shows all."""
APPEND_LINES = 1000
"""Result lines appended in one locked write while merging (one write a line costs a lock and a syscall each)."""
_CANCELLED = frozenset({"cancelling", "cancelled"})


class BatchBackend:
    """Runs the tasks as Batch API batches; this process writes every line, as the Ray driver does."""

    def __init__(self, state: RunState, outputs: list[OutputPaths], prices: PriceTable) -> None:
        self.state = state
        self.config = config = state.config
        if config.endpoint_table:  # its client is one key at --base-url
            raise ConfigError("an endpoints table runs online (--backend local) only, for now")
        _, self.output = config.require_paths()
        self.outputs = outputs
        self.client = BatchClient(config)
        self.appenders = [Appender(paths, fsync=config.fsync) for paths in outputs]
        self.pacer = CreationPacer()
        self.merger = Merger(config, prices)
        self.plan: Plan | None = None
        self.done: list[set[str]] = []
        self.failed_before: list[set[str]] = []
        self.freed: dict[int, int] = {}  # per model: our batches finished so far (each frees queue tokens)
        self.waits: dict[str, tuple[int, int]] = {}  # chunk -> (freed count, polls) when it met a full queue
        self.cancelled_live = False
        self.interrupted_creates: set[str] = set()
        self.polls = 0
        self.created = 0
        self.resubmitted = 0

    # -- start: the plan, saved before anything is uploaded ---------------------------------------------

    def start(self) -> None:
        plan = Plan.load(self.output)
        if plan is None or plan.finished:
            plan = Plan.new(self.output, [_size(paths.errors) for paths in self.outputs], list(self.config.models))
        self._check_models(plan)
        self.plan = plan
        self.done = [scan(paths.output).ids for paths in self.outputs]
        self.failed_before = [_ids_from(paths.errors, plan.errors_offsets[m] if m < len(plan.errors_offsets) else 0)
                              for m, paths in enumerate(self.outputs)]
        covered = [plan.covered(m) for m in range(len(self.outputs))]
        # Streamed from the input into the request files: no task is held in memory (a merge reads its rows'
        # tasks from the input again), so a job of millions of rows costs the plan's ids, not the tasks.
        fresh = ((task, model) for task, model in self.state.items if task.id not in covered[model])
        # A chunk left CREATING was being created when the last run died: its batch may exist.
        self.interrupted_creates = {c.name for c in plan.chunks if c.state is ChunkState.CREATING}
        kept = len(plan.open_chunks)
        made = plan_chunks(plan, request_lines(self.config, fresh), self.config.batch_size,
                           self.config.batch_max_bytes)
        plan.save()
        log.info("batch: %d rows in %d new request files (%s); %d open from an earlier run; plan in %s",
                 sum(c.lines for c in made), len(made),
                 ", ".join(f"{c.lines} rows, {c.bytes:,} bytes" for c in made[:5]) or "-", kept, plan.path)

    def _check_models(self, plan: Plan) -> None:
        """Open chunks name their model by its place in the run's models: the same list, or a clear error."""
        models = list(self.config.models)
        if plan.open_chunks and plan.models and plan.models != models:
            raise ConfigError(f"the open batches of {self.output} are for --model {','.join(plan.models)}, not "
                              f"{','.join(models)}: rerun with that --model to collect them, or --cancel them first")

    def _tasks_of(self, ids: set[str]) -> dict[str, Task]:
        """The input tasks of these ids, read from the input again (whatever this run's selection is)."""
        found: dict[str, Task] = {}
        input_path, _ = self.config.require_paths()
        for task in iter_tasks(input_path, reading(self.config)):
            if task.id in ids:
                found[task.id] = task
                if len(found) == len(ids):
                    break
        return found

    # -- loop ---------------------------------------------------------------------------------------------

    def loop(self) -> None:
        plan = self.plan
        assert plan is not None
        started = time.monotonic()
        next_poll = 0.0
        while plan.open_chunks and time.monotonic() - started < JOB_LIMIT_S:
            if self.state.signals:
                log.warning("stopping: the open batches go on at the server; rerun to collect their answers")
                self.state.stop(Stopped(StopReason.INTERRUPTED, "the batches go on at the server"))
                return
            if self.cancelled_live:
                if not any(c.state is ChunkState.CREATED for c in plan.open_chunks):
                    break  # what was running is merged; what was not created waits for a rerun
            else:
                self._submit(plan)
            if time.monotonic() >= next_poll:
                self._poll(plan)
                next_poll = time.monotonic() + self.config.batch_poll
            self.state.save_summary(live=True)
            time.sleep(TICK_S)
        if self.cancelled_live:
            self.state.stop(Stopped(StopReason.INTERRUPTED, "the batches were cancelled (--cancel); a rerun sends "
                                    "what was not answered"))
        elif plan.open_chunks:
            self.state.stop(Stopped(StopReason.INTERRUPTED, f"batches still open after {JOB_LIMIT_S / 3600:.0f}h"))

    def _submit(self, plan: Plan) -> None:
        for chunk in plan.open_chunks:
            if chunk.state is ChunkState.PLANNED:
                upload(self.client, plan, chunk)
                plan.save()
                plan.request_file(chunk).unlink(missing_ok=True)  # the server has it: keep the disk free
            if chunk.state not in (ChunkState.UPLOADED, ChunkState.CREATING) or not self._queue_may_take(chunk):
                continue
            if self.pacer.wait_s() > 0:
                chunk.waiting = "batch creation rate (2,000 an hour)"
                continue
            chunk.state = ChunkState.CREATING
            plan.save()
            try:
                create(self.client, plan, chunk, str(self.output), search=chunk.name in self.interrupted_creates)
            except QueueFull as exc:
                self._queue_full(chunk, str(exc))
                plan.save()
                continue
            self.pacer.created()
            self.created += 1
            self.waits.pop(chunk.name, None)
            plan.save()
            log.info("batch %s: created for %s (%d rows)", chunk.batch_id, chunk.name, chunk.lines)

    def _queue_full(self, chunk: Chunk, message: str) -> None:
        """The model's enqueued-token limit is reached: wait for running batches, keep the rows."""
        chunk.state = ChunkState.UPLOADED
        chunk.batch_id = None
        chunk.waiting = "enqueued-token limit: waiting for running batches to finish"
        self.waits[chunk.name] = (self.freed.get(chunk.model, 0), self.polls)
        log.warning("%s: %s (%s)", chunk.name, chunk.waiting, message[:200])

    def _queue_may_take(self, chunk: Chunk) -> bool:
        """After a full queue: try again once one of our batches of the model ended, or after a few polls."""
        if chunk.name not in self.waits:
            return True
        freed, polls = self.waits[chunk.name]
        return self.freed.get(chunk.model, 0) > freed or self.polls - polls >= QUEUE_RETRY_POLLS

    def _poll(self, plan: Plan) -> None:
        self.polls += 1
        before = [(c.status, c.completed, c.failed) for c in plan.chunks]
        for chunk in [c for c in plan.open_chunks if c.state is ChunkState.CREATED]:
            try:
                batch = self.client.call(f"poll {chunk.batch_id}", self.client.sdk.batches.retrieve, chunk.batch_id)
            except BatchApiError as exc:
                log.warning("%s (polled again in %gs)", exc, self.config.batch_poll)
                continue
            counts = batch.request_counts
            chunk.completed, chunk.failed = (counts.completed, counts.failed) if counts else (0, 0)
            if batch.status in _CANCELLED and chunk.status not in _CANCELLED:
                self.cancelled_live = True
                log.warning("batch %s is %s (cancelled from elsewhere): no new batches", batch.id, batch.status)
            chunk.status = batch.status
            if batch.status in FINAL_STATUSES:
                try:
                    self._finish(plan, chunk, batch)
                except BatchApiError as exc:  # a download failed: the chunk stays CREATED, merged next poll
                    log.warning("%s (merged at the next poll)", exc)
        self._progress(plan)
        if [(c.status, c.completed, c.failed) for c in plan.chunks] != before:
            plan.save()  # the counts --status shows; a merge saved its own steps already

    def _progress(self, plan: Plan) -> None:
        first = [c for c in plan.chunks if c.attempt == 1]  # resubmissions are the same rows again
        rows = sum(c.lines for c in first)
        settled = sum(c.completed + c.failed for c in first)
        states: dict[str, int] = {}
        for chunk in plan.open_chunks:
            key = chunk.status if chunk.state is ChunkState.CREATED else chunk.state.value
            states[key or "?"] = states.get(key or "?", 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "all merged"
        running = [c for c in plan.open_chunks if c.state is ChunkState.CREATED]
        each = "".join(f"; {c.batch_id}: {c.completed}+{c.failed}/{c.lines}" for c in running[:PER_BATCH_SHOWN])
        self.state.bar.set_postfix_str(f"batches: {summary}; requests {settled}/{rows}{each}", refresh=True)
        for chunk in plan.open_chunks:
            if chunk.state is ChunkState.CREATED:
                log.info("batch %s (%s): %s, %d completed, %d failed of %d", chunk.batch_id, chunk.name,
                         chunk.status, chunk.completed, chunk.failed, chunk.lines)

    def _download(self, file_id: str | None) -> bytes:
        if not file_id:
            return b""
        content = self.client.call(f"download {file_id}", self.client.sdk.files.content, file_id)
        data: bytes = content.content
        return data

    def _finish(self, plan: Plan, chunk: Chunk, batch: Any) -> None:
        """A batch ended: merge its answers, record its failures, plan its transient failures again."""
        errors = [e for e in (batch.errors.data if batch.errors and batch.errors.data else [])]
        if batch.status == "failed" and any(e.code == "token_limit_exceeded" for e in errors):
            self._queue_full(chunk, errors[0].message or "")
            return
        if errors:
            chunk.error = "; ".join(f"{e.code}: {e.message}" for e in errors)[:500]
        merge_started = time.monotonic()
        output, failures = self._download(batch.output_file_id), self._download(batch.error_file_id)
        ended = next((getattr(batch, f"{s}_at") for s in ("completed", "expired", "cancelled", "failed")
                      if getattr(batch, f"{s}_at", None)), None)
        latency = float(ended - batch.created_at) if ended else None
        resubmit = not (self.cancelled_live and batch.status == "cancelled")
        tasks = self._tasks_of(set(chunk.ids))
        merged = self.merger.merge(chunk, tasks, output, failures, self.done[chunk.model],
                                   self.failed_before[chunk.model], resubmit, latency)
        paths = self.outputs[chunk.model]
        # Whole lines, many to a write: a crash can tear only the last, which the next run's repair cuts off.
        for target, lines in ((paths.output, merged.results), (paths.errors, merged.failures)):
            for start in range(0, len(lines), APPEND_LINES):
                self.appenders[chunk.model].append(target, b"".join(lines[start:start + APPEND_LINES]))
        for event in merged.events:
            self.state.on_event(event)
        self._count_requests(chunk)
        if merged.retry:
            again = [(tasks[i], chunk.model) for i in merged.retry if i in tasks]
            plan_chunks(plan, request_lines(self.config, again), self.config.batch_size,
                        self.config.batch_max_bytes, attempt=chunk.attempt + 1)
            chunk.resubmitted = len(merged.retry)
            self.resubmitted += len(merged.retry)
            log.info("batch %s: %d rows resubmitted (attempt %d)", batch.id, len(merged.retry), chunk.attempt + 1)
        chunk.released = merged.released
        chunk.state = ChunkState.MERGED
        chunk.finished_at = time.time()
        self.freed[chunk.model] = self.freed.get(chunk.model, 0) + 1
        plan.save()  # MERGED and the resubmitting chunks in one write
        log.info("batch %s %s: %d answers merged, %d failures recorded, %d resubmitted, in %.2fs (download "
                 "included)", batch.id, batch.status, len(merged.results), len(merged.failures), len(merged.retry),
                 time.monotonic() - merge_started)

    def _count_requests(self, chunk: Chunk) -> None:
        """The batch's requests (as the server counted them) in the summary's per-key and per-model tallies."""
        summary = self.state.summary
        executed = chunk.completed + chunk.failed
        for tally in (summary.per_key.setdefault(self.state.key_names[0], Tally()),
                      summary.per_model.setdefault(self.config.models[chunk.model], Tally())):
            tally.requests += executed

    def close(self) -> None:
        for appender in self.appenders:
            appender.close()
        self.client.close()
        if self.plan is not None:
            log.info("batch: %d batches created this run, %d rows resubmitted", self.created, self.resubmitted)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _ids_from(path: Path, offset: int) -> set[str]:
    """Ids with a failure line written from ``offset`` on (by this plan): a repeated merge skips them."""
    return {rid for _, _, obj in iter_lines(path, offset) if (rid := record_id(obj)) is not None}


def _ended(client: BatchClient, batch_id: str) -> str | None:
    """``already <status>`` when the batch has ended (nothing left to cancel), else None."""
    try:
        batch = client.call(f"poll {batch_id}", client.sdk.batches.retrieve, batch_id)
    except BatchApiError:
        return None
    return f"already {batch.status}" if batch.status in FINAL_STATUSES else None


def cancel(config: RunConfig) -> list[tuple[str, str, str]]:
    """Cancel the output's open batches at the server: (chunk, batch id, status) of each one cancelled."""
    _, output = config.require_paths()
    plan = Plan.load(output)
    if plan is None:
        return []
    client = BatchClient(config)
    cancelled: list[tuple[str, str, str]] = []
    try:
        for chunk in plan.open_chunks:
            if chunk.state is not ChunkState.CREATED or chunk.batch_id is None or chunk.status in FINAL_STATUSES:
                continue
            try:
                batch = client.call(f"cancel {chunk.batch_id}", client.sdk.batches.cancel, chunk.batch_id)
            except BatchApiError as exc:  # it ended meanwhile (409), or the API is down: say which, go on
                cancelled.append((chunk.name, chunk.batch_id, _ended(client, chunk.batch_id) or f"not cancelled: {exc}"))
                continue
            chunk.status = batch.status
            cancelled.append((chunk.name, chunk.batch_id, batch.status))
    finally:
        client.close()
    if live_run(OutputPaths.of(output)) is None:
        plan.cancelled = True
        plan.save()  # with no run live, this process may write the plan; a live run sees the cancel by polling
    return cancelled
