"""The Batch API backend (``--backend batch``):
half the price, answers within 24 hours, and a crash costs nothing.

It implements the driver's Backend (backends/base.py); each step is recorded in the batch plan
(batch_plan.py) before it can matter:
- ``start``: the plan beside the output is loaded (a crashed or stopped run left it) or begun;
- ``submit``: a row not done and not in the plan is written into a request file (its line is the
  body the online path sends); rows the plan holds are not planned again;
- ``poll``: the request files are closed and the plan saved (before the first upload), then each
  file is uploaded and its batch created (paced, waiting on the enqueued-token limit); every
  ``--batch-poll`` seconds the open batches are polled, and each finished one is merged
  (batch_merge.py): answers appended through the store as online answers are, failures to the errors
  file, transient failures into a new file; once its merge is saved, its input, output and error
  files are deleted at the provider (--keep-batch-files);
- ``stop`` (Ctrl-C, SIGTERM, the end): nothing to wait for: the batches go on at the server and a
  rerun collects them. ``in_flight`` is the rows of open batches, so the driver ends the run when
  all are merged.

``batch_cancel.cancel`` (``--cancel``) cancels the open batches; ``batch_plan.plan_report`` feeds
--status.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..api.failures import classify
from ..api.messages import ImageEncoder
from ..api.prices import PriceTable
from ..config import RequestSettings, RunConfig
from ..errors import BatchApiError, ConfigError, ImageError
from ..events import Fatal, TaskDone, TaskFailed, WorkItem
from ..inputs import Task, iter_tasks, prompt_forms, reading
from ..limits import LaneStats
from ..slices import RetryPolicy
from ..store.output import Appender, OutputPaths, iter_lines, scan, size_of
from ..store.records import failure_line, record_id
from .base import Note
from .batch_merge import Merger
from .batch_plan import FINAL_STATUSES, Chunk, ChunkState, Plan
from .batch_submit import (
    BatchClient,
    ChunkWriter,
    CreationPacer,
    QueueFull,
    batch_request,
    create,
    delete_files,
    plan_chunks,
    upload,
)
from .batch_targets import Target, target_of, targets_of

log = logging.getLogger("mpinfer.run")

QUEUE_RETRY_POLLS = 4
"""Polls to wait on a full token queue that none of our batches holds
(other jobs' batches fill it)."""
QUEUE_WAIT_S = 24 * 3600.0
"""Longest wait on a full token queue that none of this job's batches holds
(then the job stops: rerun)."""
PER_BATCH_SHOWN = 3
"""Running batches the progress bar shows one by one (completed+failed/rows); --status shows all."""
APPEND_LINES = 1000
"""Result lines appended in one locked write while merging
(one write a line costs a lock and a syscall each)."""
_CANCELLED = frozenset({"cancelling", "cancelled"})


class BatchBackend:
    """Runs the tasks as Batch API batches;
    this process writes every line, as the Ray driver does."""

    def __init__(self, config: RunConfig, outputs: list[OutputPaths], prices: PriceTable,
                 progress: bool = False) -> None:
        self.config = config
        _, self.output = config.require_paths()
        self.outputs = outputs
        # Where batches go (an endpoints table's endpoints, or the first key at --base-url), each
        # with its client, made on first use
        self.targets = targets_of(config)
        self.clients: dict[str | None, BatchClient] = {}
        self.appenders = [Appender(paths, fsync=config.fsync) for paths in outputs]
        self.request = RequestSettings.of(config)
        self.encoder = ImageEncoder(self.request.image_root)
        self.pacer = CreationPacer()
        self.merger = Merger(self.request, RetryPolicy.of(config), config.require_api_keys(),
                             prices, config.strict_model)
        self.plan: Plan | None = None
        self.writer: ChunkWriter | None = None
        self.done: list[set[str]] = []
        self.failed_before: list[set[str]] = []
        # Per model: the rows the plan holds (not planned again while open)
        self.in_plan: list[set[str]] = []
        # Events to report at the next poll (a row whose image cannot be read)
        self.notes: list[Note] = []
        # Per model: our batches finished so far (each frees queue tokens)
        self.freed: dict[int, int] = {}
        # Chunk -> (freed count, polls) when it met a full queue
        self.waits: dict[str, tuple[int, int]] = {}
        self.queue_since: dict[str, float] = {}  # chunk -> when a full queue first refused it
        self.interrupted_creates: set[str] = set()
        self.executed = [0] * len(outputs)
        self.tokens = [0] * len(outputs)
        self.cancelled_live = False
        self.stopping = False
        self.next_poll = 0.0
        self.polls = 0
        self.created = 0
        self.resubmitted = 0
        self.bar = tqdm(total=0, unit="request", desc="batch requests", position=1,
                        dynamic_ncols=True, disable=not progress)

    # -- start and submit: the plan, saved before anything is uploaded -----------------------------

    def start(self) -> None:
        """Load the plan (or start a new one), read the ids done and failed, and note chunks a
        crash left in the middle of a create."""
        plan = Plan.load(self.output)
        if plan is None or plan.finished:
            plan = Plan.new(self.output, [size_of(paths.errors) for paths in self.outputs],
                            list(self.config.models))
        self._check_models(plan)
        self.plan = plan
        self.writer = self._writer(plan)
        for chunk in plan.open_chunks:  # every open batch's endpoint is this run's, or say so now
            self._target(chunk)
        self.done = [scan(paths.output).ids for paths in self.outputs]
        self.failed_before = [
            _ids_from(paths.errors, plan.errors_offsets[m] if m < len(plan.errors_offsets) else 0)
            for m, paths in enumerate(self.outputs)]
        self.in_plan = [plan.covered(m) for m in range(len(self.outputs))]
        # A chunk left CREATING was being created when the last run died: its batch may exist.
        self.interrupted_creates = {c.name for c in plan.chunks if c.state is ChunkState.CREATING}
        log.info("batch: plan %s, %d open request files from an earlier run", plan.path,
                 len(plan.open_chunks))

    def _writer(self, plan: Plan, attempt: int = 1) -> ChunkWriter:
        return ChunkWriter(plan, self.config.batch_size, self.config.batch_max_bytes, self.targets,
                           self.config.models, attempt)

    def _target(self, chunk: Chunk) -> Target:
        return target_of(self.targets, chunk, self.config.models[chunk.model_index])

    def _client(self, chunk: Chunk) -> BatchClient:
        """The Batch API client of the endpoint the chunk's batch goes to (ConfigError: the run
        lacks it)."""
        target = self._target(chunk)
        if target.name not in self.clients:
            self.clients[target.name] = BatchClient(self.config, target.endpoint)
        return self.clients[target.name]

    def _check_models(self, plan: Plan) -> None:
        """Open chunks name their model by its place in the run's models:
        the same list, or a clear error."""
        models = list(self.config.models)
        if plan.open_chunks and plan.models and plan.models != models:
            raise ConfigError(f"the open batches of {self.output} are for "
                              f"--model {','.join(plan.models)}, not {','.join(models)}: "
                              "rerun with that --model to collect them, or --cancel them first")

    def room(self) -> int:
        """Any number while running: rows only go into files now; the Batch API takes them all."""
        return 0 if self.stopping else self.config.batch_size

    def in_flight(self) -> int:
        """Rows of open batches (and of files not yet created, unless a cancel stopped the job)."""
        assert self.plan is not None
        open_chunks = [c for c in self.plan.open_chunks
                       if not self.cancelled_live or c.state is ChunkState.CREATED]
        return sum(c.lines for c in open_chunks) + len(self.notes)

    def submit(self, item: WorkItem) -> bool:
        """Write the task's request into its model's request file (or fail it here when its image
        cannot be read); always True: files take every row."""
        task, model_index = item
        assert self.writer is not None
        if task.id in self.in_plan[model_index]:
            return True  # in a batch of the plan already, or settled by it
        try:
            request = batch_request(self.request, self.encoder, task, model_index)
        except ImageError as exc:  # as online: this task fails, the others go on
            self._image_failed(task, model_index, exc)
            return True
        self.writer.add(model_index, request)
        self.in_plan[model_index].add(task.id)
        return True

    def _image_failed(self, task: Task, model_index: int, exc: ImageError) -> None:
        error = classify(exc)  # image or images_too_large, as online
        as_batch = task.body is not None
        line = failure_line(task.id, as_batch, error.error_type, None, error.message, 0)
        self.appenders[model_index].append(self.outputs[model_index].errors, line)
        self.notes.append(TaskFailed(task.id, model_index, error.error_type, None, error.message,
                                     0))

    # -- poll --------------------------------------------------------------------------------------

    def poll(self, timeout_s: float) -> list[Note]:
        """One turn: save the plan once the files are closed, every ``--batch-poll`` seconds poll
        the open ones and merge those finished, then upload and create batches.

        The poll comes first: a file waiting on a full queue is tried again only after a poll
        (``_queue_may_take``), and that poll is where a cancel from elsewhere is seen; a cancel
        frees the queue, and the file's batch would otherwise be made against it."""
        plan, writer = self.plan, self.writer
        assert plan is not None and writer is not None
        notes, self.notes = self.notes, []
        try:
            if writer.close():
                plan.save()  # every request file is in the plan before the first upload
            if not self.stopping and time.monotonic() >= self.next_poll:
                notes += self._poll(plan)
                self.next_poll = time.monotonic() + self.config.batch_poll
            if not self.stopping and not self.cancelled_live:
                self._submit(plan)
        except BatchApiError as exc:
            # After its retries: stop; the plan keeps what is at the server
            notes.append(Fatal(f"{exc} (rerun to go on: the plan keeps every batch made)"))
            self.stopping = True
        if not notes:
            time.sleep(timeout_s)
        return notes

    def _submit(self, plan: Plan) -> None:
        for chunk in plan.open_chunks:
            if chunk.state is ChunkState.PLANNED:
                upload(self._client(chunk), plan, chunk)
                plan.save()
                # The server has it: keep the disk free
                plan.request_file(chunk).unlink(missing_ok=True)
            if (chunk.state not in (ChunkState.UPLOADED, ChunkState.CREATING)
                    or not self._queue_may_take(chunk)):
                continue
            if self.pacer.wait_s() > 0:
                chunk.waiting = "batch creation rate (2,000 an hour)"
                continue
            chunk.state = ChunkState.CREATING
            plan.save()
            try:
                create(self._client(chunk), plan, chunk, str(self.output),
                       search=chunk.name in self.interrupted_creates, url=self._target(chunk).url)
            except QueueFull as exc:
                self._queue_full(chunk, str(exc))
                plan.save()
                continue
            self.pacer.created()
            self.created += 1
            self.waits.pop(chunk.name, None)
            self.queue_since.pop(chunk.name, None)
            plan.save()
            log.info("batch %s: created for %s (%d rows)%s", chunk.batch_id, chunk.name,
                     chunk.lines, f" at {chunk.endpoint}" if chunk.endpoint else "")

    def _queue_full(self, chunk: Chunk, message: str) -> None:
        """The model's enqueued-token limit is reached: wait for running batches, keep the rows.

        The wait is bounded: after QUEUE_WAIT_S with no batch of ours of the model running (nothing
        of ours can free the queue) the job stops, saying the file may be larger than the limit
        itself.
        """
        chunk.state = ChunkState.UPLOADED
        chunk.batch_id = None
        chunk.waiting = "enqueued-token limit: waiting for running batches to finish"
        self.waits[chunk.name] = (self.freed.get(chunk.model_index, 0), self.polls)
        since = self.queue_since.setdefault(chunk.name, time.monotonic())
        assert self.plan is not None
        ours = any(c.model_index == chunk.model_index and c.state is ChunkState.CREATED
                   for c in self.plan.open_chunks)
        log.warning("%s: %s (%s)", chunk.name, chunk.waiting, message[:200])
        if not ours and time.monotonic() - since > QUEUE_WAIT_S:
            raise BatchApiError(f"{chunk.name}: refused for the enqueued-token limit for "
                                f"{QUEUE_WAIT_S / 3600:g}h with none of this job's batches "
                                "running: its file may hold more tokens than the limit itself "
                                "(lower --batch-size), or other jobs fill the queue")

    def _queue_may_take(self, chunk: Chunk) -> bool:
        """After a full queue: try again once one of our batches of the model ended,
        or after a few polls."""
        if chunk.name not in self.waits:
            return True
        freed, polls = self.waits[chunk.name]
        return (self.freed.get(chunk.model_index, 0) > freed
                or self.polls - polls >= QUEUE_RETRY_POLLS)

    def _poll(self, plan: Plan) -> list[Note]:
        """Poll the running batches; merge those that ended; the events of what was merged."""
        self.polls += 1
        notes: list[Note] = []
        before = [(c.status, c.completed, c.failed) for c in plan.chunks]
        ended: list[tuple[Chunk, Any]] = []
        for chunk in [c for c in plan.open_chunks if c.state is ChunkState.CREATED]:
            client = self._client(chunk)
            try:
                batch = client.call(f"poll {chunk.batch_id}", client.sdk.batches.retrieve,
                                    chunk.batch_id)
            except BatchApiError as exc:
                log.warning("%s (polled again in %gs)", exc, self.config.batch_poll)
                continue
            counts = batch.request_counts
            chunk.completed, chunk.failed = (counts.completed, counts.failed) if counts else (0, 0)
            if batch.status in _CANCELLED and chunk.status not in _CANCELLED:
                self.cancelled_live = True
                log.warning("batch %s is %s (cancelled from elsewhere): no new batches", batch.id,
                            batch.status)
            chunk.status = batch.status
            if batch.status in FINAL_STATUSES:
                ended.append((chunk, batch))
        # The input tasks of every batch that ended, in one read of the input.
        tasks = self._tasks_of({i for chunk, _ in ended for i in chunk.ids}) if ended else {}
        for chunk, batch in ended:
            try:
                notes += self._finish(plan, chunk, batch,
                                      {i: tasks[i] for i in chunk.ids if i in tasks})
            except BatchApiError as exc:
                if chunk.state is not ChunkState.CREATED:
                    raise  # the full queue's wait ran out: the job stops
                # A download failed: merged next poll
                log.warning("%s (merged at the next poll)", exc)
        self._progress(plan)
        if [(c.status, c.completed, c.failed) for c in plan.chunks] != before:
            plan.save()  # the counts --status shows; a merge saved its own steps already
        return notes

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
        each = "".join(f"; {c.batch_id}: {c.completed}+{c.failed}/{c.lines}"
                       for c in running[:PER_BATCH_SHOWN])
        self.bar.total = rows
        self.bar.n = settled
        self.bar.set_postfix_str(f"batches: {summary}{each}", refresh=True)
        for chunk in plan.open_chunks:
            if chunk.state is ChunkState.CREATED:
                log.info("batch %s (%s): %s, %d completed, %d failed of %d", chunk.batch_id,
                         chunk.name, chunk.status, chunk.completed, chunk.failed, chunk.lines)

    def _download(self, client: BatchClient, file_id: str | None) -> bytes:
        if not file_id:
            return b""
        content = client.call(f"download {file_id}", client.sdk.files.content, file_id)
        data: bytes = content.content
        return data

    def _finish(self, plan: Plan, chunk: Chunk, batch: Any, tasks: dict[str, Task]) -> list[Note]:
        """A batch ended: merge its answers, record its failures, plan its transient failures again.
        ``tasks``: the input tasks of its rows."""
        errors = [e for e in (batch.errors.data if batch.errors and batch.errors.data else [])]
        if batch.status == "failed" and any(e.code == "token_limit_exceeded" for e in errors):
            self._queue_full(chunk, errors[0].message or "")
            return []
        if errors:
            chunk.error = "; ".join(f"{e.code}: {e.message}" for e in errors)[:500]
        merge_started = time.monotonic()
        client = self._client(chunk)
        output = self._download(client, batch.output_file_id)
        failures = self._download(client, batch.error_file_id)
        ended = next((getattr(batch, f"{s}_at")
                      for s in ("completed", "expired", "cancelled", "failed")
                      if getattr(batch, f"{s}_at", None)), None)
        # The batch's own duration: its answers have no latency of their own.
        latency = float(ended - batch.created_at) if ended else None
        chunk.ended_at = float(ended) if ended else None
        resubmit = not (self.cancelled_live and batch.status == "cancelled")
        merged = self.merger.merge(chunk, tasks, output, failures, self.done[chunk.model_index],
                                   self.failed_before[chunk.model_index], resubmit, latency)
        paths = self.outputs[chunk.model_index]
        # Whole lines, many to a write: a crash can tear only the last,
        # which the next run's repair cuts off.
        for target, lines in ((paths.output, merged.results), (paths.errors, merged.failures)):
            for start in range(0, len(lines), APPEND_LINES):
                self.appenders[chunk.model_index].append(
                    target, b"".join(lines[start:start + APPEND_LINES]))
        self.executed[chunk.model_index] += chunk.completed + chunk.failed
        self.tokens[chunk.model_index] += sum(e.prompt_tokens + e.completion_tokens
                                              for e in merged.events if isinstance(e, TaskDone))
        if merged.retry:
            again = [(tasks[i], chunk.model_index) for i in merged.retry if i in tasks]
            plan_chunks(self._writer(plan, chunk.attempt + 1), again, self.request, self.encoder)
            chunk.resubmitted = len(merged.retry)
            self.resubmitted += len(merged.retry)
            log.info("batch %s: %d rows resubmitted (attempt %d)", batch.id, len(merged.retry),
                     chunk.attempt + 1)
        chunk.released = merged.released
        chunk.state = ChunkState.MERGED
        chunk.finished_at = time.time()
        self.freed[chunk.model_index] = self.freed.get(chunk.model_index, 0) + 1
        plan.save()  # MERGED and the resubmitting chunks in one write
        log.info("batch %s %s: %d answers merged, %d failures recorded, %d resubmitted, "
                 "in %.2fs (download included)", batch.id, batch.status, len(merged.results),
                 len(merged.failures), len(merged.retry), time.monotonic() - merge_started)
        if not self.config.keep_batch_files:
            # Only now: the merge is saved, so these files are never needed again (a crash before
            # this line leaves them at the provider, which costs storage, never answers).
            deleted = delete_files(client,
                                   [chunk.file_id or batch.input_file_id, batch.output_file_id,
                                                 batch.error_file_id])
            log.info("batch %s: %d files deleted at the provider", batch.id, len(deleted))
        return list(merged.events)

    # -- stop and close ----------------------------------------------------------------------------

    def replace(self, worker: int) -> None:
        """No workers: the batches run at the server."""

    def stop(self) -> None:
        """Create no more batches; the open ones go on at the server and a rerun collects them."""
        if not self.stopping and self.plan is not None and self.plan.open_chunks:
            log.warning("stopping: the open batches go on at the server; "
                        "rerun to collect their answers")
        self.stopping = True
        if self.writer is not None and self.plan is not None and self.writer.close():
            self.plan.save()

    def idle(self) -> bool:
        """Nothing to wait for once stopping: what runs, runs at the server."""
        return self.stopping

    def kill(self) -> list[Note]:
        """As ``stop``: there is nothing local to kill; the notes not yet reported."""
        self.stop()
        notes, self.notes = self.notes, []
        return notes

    def lane_stats(self) -> tuple[list[LaneStats], list[bool]]:
        """The batches' requests and tokens per model, as the summary counts online requests."""
        stats = [LaneStats(0, m, self.executed[m], 0, self.tokens[m], 0, 0.0, 0.0)
                 for m in range(len(self.outputs))]
        return stats, [False] * len(self.config.require_api_keys())

    def close(self) -> None:
        """Close the request files, the appenders, the API client and the progress bar."""
        if self.writer is not None:
            self.writer.close()
        for appender in self.appenders:
            appender.close()
        for client in self.clients.values():
            client.close()
        self.bar.close()
        if self.plan is not None:
            log.info("batch: %d batches created this run, %d rows resubmitted", self.created,
                     self.resubmitted)

    def _tasks_of(self, ids: set[str]) -> dict[str, Task]:
        """The input tasks of these ids,
        read from the input again (whatever this run's selection is)."""
        found: dict[str, Task] = {}
        input_path, _ = self.config.require_paths()
        # as the feed sent them: rendered by --template (a batch run has no variants)
        (form,) = prompt_forms(self.config)
        for task in iter_tasks(input_path, reading(self.config)):
            if task.id in ids:
                found[task.id] = form.apply(task)
                if len(found) == len(ids):
                    break
        return found


def _ids_from(path: Path, offset: int) -> set[str]:
    """Ids with a failure line written from ``offset`` on
    (by this plan): a repeated merge skips them."""
    return {rid for _, _, obj in iter_lines(path, offset) if (rid := record_id(obj)) is not None}
