"""The one supervise loop every backend shares: the work to hand out, the counts, stopping.

A backend (local processes, a Ray cluster; see backends.base.Backend) moves tasks to where they run
and events back; the driver decides the rest the same way for all of them: which task goes next
(budget, stop), what an event means for the summary and the progress bar, when the summary file is
rewritten, what a signal does, how long stopping may take, and whether a dead worker is replaced.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .api.endpoints import endpoints_of
from .backends.base import Backend, Note, Returned, WorkerDied
from .config import RunConfig
from .events import (
    Abort,
    Event,
    Fatal,
    KeyDisabled,
    ModelUnknown,
    Stopped,
    StopReason,
    TaskDone,
    TaskFailed,
    WorkItem,
)
from .inputs import PromptForm, Task
from .limits import LaneStats
from .reports.summary import RunSummary, write_summary
from .store.idset import IdSubset
from .store.output import unit_of

log = logging.getLogger("mpinfer.run")

# lane stats, and which keys are disabled
LaneReport = Callable[[], tuple[list[LaneStats], list[bool]]]

SUMMARY_EVERY_S = 2.0
MAX_FAILURES_SHOWN = 5
MESSAGE_SHOWN_CHARS = 200
POLL_S = 0.25
STOP_JOIN_S = 10.0  # the least time workers get to finish once told to stop
RESPAWNS_PER_WORKER = 3  # dead workers replaced before the run stops on "workers keep dying"


def one_line(message: str) -> str:
    """A server's message as one console line: a multi-line HTML error page
    would flood the terminal (the errors file keeps it whole)."""
    text = " ".join(message.split())
    return text if len(text) <= MESSAGE_SHOWN_CHARS else text[: MESSAGE_SHOWN_CHARS - 3] + "..."


def work_items(tasks: Iterator[Task], done: list[IdSubset],
               forms: Sequence[PromptForm] = (PromptForm(),)) -> Iterator[WorkItem]:
    """Each task once for each output (of each variant and model: ``done`` is by output, in
    store/output.run_outputs' order) that does not have it yet, as its variant's form sends it.

    The tasks come from the input the done sets index, so membership needs no read of the input.
    """
    models = len(done) // len(forms)
    for task in tasks:
        shaped: dict[int, Task] = {}
        for output_index, ids in enumerate(done):
            if not ids.has_member(task.id):
                variant = unit_of(output_index, models)[0]
                if variant not in shaped:
                    shaped[variant] = forms[variant].apply(task)
                yield shaped[variant], output_index


class _NoBar:
    """The progress bar of a run without one (``progress`` False): what the run calls, doing
    nothing."""

    def update(self, _count: int = 1) -> None:
        """Nothing to advance."""

    def set_postfix(self, **_fields: Any) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


class RunState:
    """The driver's side of a run, whatever runs the tasks."""

    def __init__(self, config: RunConfig, items: Iterator[WorkItem], summary: RunSummary,
                 summary_path: Path, priced_before: int, progress: bool) -> None:
        self.config = config
        self.items = items
        self.summary = summary
        self.summary_path = summary_path
        self.priced_before = priced_before
        self.dearest = 0.0  # the highest cost of an answer of this run (--max-cost)
        self.key_names = [endpoint.label(i) for i, endpoint in enumerate(endpoints_of(config))]
        self.requeue: deque[WorkItem] = deque()
        self.feeding = True
        self.stop_reason: Stopped | None = None
        self.signals = 0
        self.lanes: LaneReport | None = None
        self.bar: Any = _NoBar()
        if progress:  # (tqdm is imported only for a bar: a run without one starts sooner)
            from tqdm import tqdm

            # no monitor thread: the local backend's parent must stay single-threaded
            tqdm.monitor_interval = 0
            self.bar = tqdm(total=summary.total, initial=summary.already_done, unit="task",
                            dynamic_ncols=True, smoothing=0.05)
        self._postfix_at = 0.0
        self._summary_at = 0.0

    def model_of(self, output_index: int) -> str:
        """The model of the output at ``output_index`` (a variant's and a model's)."""
        models = self.config.models
        return models[unit_of(output_index, len(models))[1]]

    def on_signal(self, _signum: int, _frame: Any) -> None:
        """SIGINT and SIGTERM: count the signal; the loop decides what it means."""
        self.signals += 1

    def stop(self, reason: Stopped | None) -> None:
        """Take no more tasks; the first reason given is the one the summary reports."""
        if reason and self.stop_reason is None:
            self.stop_reason = reason
        self.feeding = False

    def next_item(self, outstanding: Callable[[], int]) -> WorkItem | None:
        """The next task to send (tasks given back first), or None when there
        is none or none may go.
        ``outstanding`` counts the tasks in flight; it is asked only under
        --max-cost (a backend may pay to count them)."""
        if not self.feeding or not self._within_budget(outstanding):
            return None
        item = self.requeue.popleft() if self.requeue else next(self.items, None)
        while item is not None and self.model_of(item[1]) in self.summary.unknown_models:
            item = self.requeue.popleft() if self.requeue else next(self.items, None)
        if item is None:
            self.feeding = False
        return item

    def give_back(self, items: list[WorkItem]) -> None:
        """Tasks sent but not done (their worker died): sent again, unless stopping."""
        if items and self.stop_reason is None:
            self.requeue.extend(items)
            self.feeding = True

    def _within_budget(self, in_flight: Callable[[], int]) -> bool:
        """Whether one more task fits in --max-cost, counting in-flight tasks at the dearest
        answer's cost so far (never below the average): at the average, answers that grow dearer as
        a run goes on (longer prompts further in) passed the budget by the difference.

        Until the first answer gives an average, only one task per worker goes out, as a probe.
        """
        budget = self.config.max_cost
        if budget is None:
            return True
        outstanding = in_flight()
        # An answer without usage has no cost: it counts at its estimate (RunSummary).
        spent = self.summary.cost_before + self.summary.cost + self.summary.estimated_cost
        answers = self.priced_before + self.summary.succeeded - self.summary.unpriced
        if answers <= 0:
            return outstanding < self.config.processes
        each = max(spent / answers, self.dearest)
        if spent + (outstanding + 1) * each <= budget:
            return True
        if self.stop_reason is None:
            self.stop(Stopped(StopReason.BUDGET,
                              f"${budget:.4f} would be passed (spent ${spent:.4f}, about "
                              f"${each:.5f} a task, {outstanding} in flight)"))
            log.warning("stopping: %s; finishing what is in flight", self.stop_reason)
        self.feeding = False
        return False

    def on_event(self, event: Event) -> None:
        """Count one event."""
        match event:
            case TaskDone():
                self.summary.count_answer(event)
                self.dearest = max(self.dearest, event.cost or event.estimated_cost or 0.0)
                self.summary.per_model[self.model_of(event.output_index)].succeeded += 1
                if event.key is not None:
                    self.summary.key_counts(self.key_names[event.key]).succeeded += 1
                self.bar.update(1)
            case TaskFailed():
                self.summary.count_failure(event.error_type, event.retries,
                                           (event.prompt_tokens, event.completion_tokens,
                                            event.cost))
                self.summary.per_model[self.model_of(event.output_index)].failed += 1
                if event.key is not None:
                    self.summary.key_counts(self.key_names[event.key]).failed += 1
                if self.summary.failed <= MAX_FAILURES_SHOWN:
                    last = self.summary.failed == MAX_FAILURES_SHOWN
                    more = " (further failures only in the log)" if last else ""
                    log.warning("task %s failed: %s: %s%s", event.id, event.error_type,
                                one_line(event.message), more)
            case KeyDisabled():
                log.warning("API key %s rejected (%s): disabled for this run", event.key,
                            event.message)
            case ModelUnknown():
                self.drop_model(event)
            case Abort() | Fatal():
                reason = StopReason.ABORTED if isinstance(event, Abort) else StopReason.FATAL
                self.fail_run(Stopped(reason, event.message))
        now = time.monotonic()
        if now - self._postfix_at > 0.5:
            self._postfix_at = now
            self._show_totals()

    def _show_totals(self, refresh: bool = False) -> None:
        self.bar.set_postfix(failed=self.summary.failed,
                             tokens=self.summary.prompt_tokens + self.summary.completion_tokens,
                             cost=("unknown" if self.summary.unpriced and not self.summary.cost
                                   else f"${self.summary.cost:.4f}"), refresh=refresh)

    def drop_model(self, event: ModelUnknown) -> None:
        """The server does not know a model: send none of its tasks; with no model left, stop."""
        name = self.config.models[event.model_index]
        if name in self.summary.unknown_models:
            return
        self.summary.unknown_models[name] = event.message
        if len(self.summary.unknown_models) == len(self.config.models):
            self.fail_run(Stopped(StopReason.ABORTED, event.message))
        else:
            log.error("%s; its tasks are not sent (a rerun sends them), the other models go on",
                      event.message)

    def fail_run(self, stopped: Stopped) -> None:
        """Stop the run on a fault; the summary reports the first, the log the rest."""
        if self.stop_reason is None:
            log.error("stopping the run: %s", stopped.detail or stopped)
        else:
            log.info("also: %s", stopped.detail or stopped)
        self.stop(stopped)

    def recovered(self, count: int) -> None:
        """Tasks a dead worker had written before it died: done, though never reported."""
        self.summary.recovered += count
        self.bar.update(count)

    def save_summary(self, live: bool, now: float | None = None) -> None:
        """Rewrite the summary file (while live, at most every SUMMARY_EVERY_S)."""
        now = time.monotonic() if now is None else now
        if live and now - self._summary_at < SUMMARY_EVERY_S:
            return
        self._summary_at = now
        if self.lanes is not None:
            lanes, disabled = self.lanes()
            waiting = self.summary.waiting_for_server_since
            self.summary.take_lane_stats(lanes, self.config.models, self.key_names, disabled)
            if self.summary.waiting_for_server_since != waiting:
                if self.summary.waiting_for_server_since:
                    log.warning("waiting for the server since %s: it does not answer; one request "
                                "probes it, the rest wait (up to --patience %gs)",
                                self.summary.waiting_for_server_since, self.config.patience)
                else:
                    log.warning("the server answers again; going on")
        write_summary(self.summary_path, self.summary, live)

    def close(self) -> None:
        """Close the progress bar, its last frame showing the final totals."""
        # the last frame shows the totals the summary below it shows
        self._show_totals(refresh=True)
        self.bar.close()


def supervise(state: RunState, backend: Backend, grace_s: float, poll_s: float = POLL_S) -> None:
    """Run the tasks on ``backend`` until they are done or the run stops and its workers finish.

    Each turn of the loop: act on a new signal (the first stops feeding and gives the requests in
    flight ``grace_s`` to finish; a second drops them, to be sent again on the rerun); feed the
    backend while it has room; once nothing more goes out and nothing is in flight, or the run
    stopped, stop the backend and give its workers at least STOP_JOIN_S, killing them after that;
    rewrite the summary file; then handle what the backend reports within ``poll_s``. Tasks given
    back are fed again, a worker that died is replaced (RESPAWNS_PER_WORKER replacements for each
    worker process, shared by all; then the run fails), and events are tallied.
    """
    state.lanes = backend.lane_stats
    respawns_left = RESPAWNS_PER_WORKER * state.config.processes
    handled = 0
    stopping = False
    deadline: float | None = None
    backend.start()
    while True:
        # A new signal: the first stops the run gracefully, a second quits at once.
        if state.signals > handled:
            handled = state.signals
            if handled > 1:
                log.warning("quitting at once: requests in flight are "
                            "dropped and sent again on rerun")
                _count_late_notes(state, backend.kill())
                return
            log.warning("stopping: finishing the requests in flight (up to "
                        "%.0fs); interrupt again to quit at once", grace_s)
            state.stop(Stopped(StopReason.INTERRUPTED))
            deadline = time.monotonic() + grace_s
        # Feed the backend while it has room.
        while state.feeding and backend.room() > 0:
            item = state.next_item(backend.in_flight)
            if item is None:
                break
            if not backend.submit(item):
                state.give_back([item])
                break
        if not state.feeding and (state.stop_reason is not None or backend.in_flight() == 0):
            stopping = True  # stopped, or all the work (or all the budget allows) is done
        if stopping:
            backend.stop()
            if backend.idle():
                return
            if deadline is None:
                deadline = time.monotonic() + max(grace_s, STOP_JOIN_S)
        now = time.monotonic()
        if deadline is not None and now > deadline:
            log.warning("workers did not finish in time; stopping them")
            _count_late_notes(state, backend.kill())
            return
        state.save_summary(live=True, now=now)
        # What the backend reports: tasks given back, dead workers, events.
        for note in backend.poll(poll_s):
            if isinstance(note, Returned):
                state.recovered(note.recovered)
                state.give_back(list(note.items))
            elif isinstance(note, WorkerDied):
                if note.expected:
                    continue
                state.summary.worker_deaths += 1
                if state.stop_reason is not None:
                    continue
                if respawns_left <= 0:
                    state.fail_run(Stopped(StopReason.WORKERS_DYING,
                                           "workers keep dying; see the log"))
                    continue
                respawns_left -= 1
                backend.replace(note.worker)
            else:
                state.on_event(note)


def _count_late_notes(state: RunState, notes: list[Note]) -> None:
    """What arrived while the workers were being killed: answers count, nothing is sent again."""
    for note in notes:
        if isinstance(note, Returned):
            state.recovered(note.recovered)
        elif not isinstance(note, WorkerDied):
            state.on_event(note)
