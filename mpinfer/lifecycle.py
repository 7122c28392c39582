"""A run's life in named steps: check, lock, repair, scan, manifest, backend, summary.

Everything that must hold whatever runs the tasks happens here, before and after the backend: bad
input fails before anything is spent (check), one run holds each output and no orphan of a killed
run writes beside it (lock), torn tails are cut (repair), the done ids are read from the output, the
truth (scan), the settings fingerprint is checked and the run recorded (manifest), the driver hands
the rest to a backend (backend), and the run's end is recorded and reported (summary).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api.prices import PriceTable, load_prices
from .api.shrink import require_pillow
from .api.structured import answer_rule
from .api.tokens import image_rule
from .backends.base import Backend
from .config import DEFAULT_GRACE_S, Api, BackendKind, RunConfig
from .driver import MAX_FAILURES_SHOWN, RunState, supervise, work_items
from .errors import ConfigError, InputError, OutputError
from .inputs import (
    FieldKeys,
    InputFormat,
    InputIndex,
    PromptForm,
    Selection,
    asked_models,
    checked_input,
    input_index_path,
    iter_tasks,
    keep_input_index,
    parquet_checksum,
    prompt_forms,
    reading,
    refuse_input_as_output,
    selection,
    settle_models,
)
from .logfile import create_log_file, parent_logging
from .reports.run_end import after_run
from .reports.summary import RunSummary, UsageCounts
from .store.done_index import scan_done
from .store.idset import IdSubset
from .store.locks import RunLock, wait_for_old_workers
from .store.manifest import (
    RunRecord,
    append_record,
    check_fingerprints,
    end_record,
    manifest_path,
    output_fingerprints,
    start_record,
    summary_counts,
)
from .store.output import OutputPaths, RunOutput, companion, repair_tail, run_outputs

log = logging.getLogger("mpinfer.run")

__all__ = ["DEFAULT_GRACE_S", "RunSummary", "run"]


@dataclass(frozen=True)
class _Job:
    """What the check settled: the run's settings, where its tasks come from, where lines go."""

    config: RunConfig
    input_path: Path
    output: Path
    keys: FieldKeys
    chosen: Selection
    runs: tuple[RunOutput, ...]  # one per variant and model (store/output.run_outputs)
    outputs: list[OutputPaths]  # their files, in the same order
    forms: tuple[PromptForm, ...]  # how each variant (or --template) makes a task's request
    prices: PriceTable
    unpriced: tuple[str, ...]  # the models asked for that no price table knows: cost unknown


@dataclass
class _Scanned:
    """What the outputs already hold: per output, the done ids and where this run's lines
    start."""

    done: list[IdSubset]
    run_starts: list[int]
    written: list[str]  # names of the outputs that already have lines (their settings must match)
    within: IdSubset  # the selected ids of the input
    kept: dict[str, Any] | None  # which input the done indexes beside the outputs are of


def run(config: RunConfig, *, progress: bool = True, grace_s: float = DEFAULT_GRACE_S,
        argv: Sequence[str] = ()) -> RunSummary:
    """Run every task of the input that is not in the output yet; rerun after any crash to resume.

    ``argv`` is the command line to record in the run manifest (secrets removed there).
    """
    started = time.monotonic()
    job, index = _check(config)
    with ExitStack() as held:
        log_file = _lock(job, held)
        summary = RunSummary(total=index.total * len(job.outputs), already_done=0,
                             log_file=log_file, unpriced_models=list(job.unpriced))
        _repair(job, summary)
        scanned = _scan(job, index, summary)
        manifest, start = _record_start(job, scanned, argv, index, summary)
        del index  # the done sets keep what the feed needs
        ran = summary.remaining > 0
        try:
            if ran:
                _run_backend(job, scanned, summary, log_file, progress, grace_s, started)
                _index_outputs(job, scanned)
        finally:
            summary.elapsed_s = time.monotonic() - started
            append_record(manifest, end_record(start, summary_counts(summary, summary.cost)))
        # Not on an error on its way out: only after the run ended (a graceful
        # stop included), under the lock.
        summary.epilogue = after_run(job.config, summary.remaining)
        if ran:
            log.info("run ended: %d written, %d failed, %d left, %.1fs%s",
                     summary.succeeded + summary.recovered, summary.failed, summary.remaining,
                     summary.elapsed_s, f", stopped: {summary.stopped}" if summary.stopped else "")
    if not ran and log_file is not None and not (summary.repaired or summary.bad_lines
                                                 or summary.unknown_ids):
        # Nothing was sent and nothing found worth a warning: a rerun of a finished job leaves no
        # log behind (the manifest still records it).
        log_file.unlink(missing_ok=True)
        summary.log_file = None
    return summary


# -- check: before anything is locked, written or spent --------------------------------------------


def _check(config: RunConfig) -> tuple[_Job, InputIndex]:
    input_path, output = config.require_paths()
    # the first thing a new user gets wrong: say it before the missing key
    if not input_path.exists():
        raise InputError("cannot open input: no such file", str(input_path))
    config.require_api_keys()
    if config.image_max_side or any(ep.image_max_side for ep in config.endpoint_table):
        require_pillow()
    prices = load_prices(config.prices, config.price_input, config.price_output)
    forms = prompt_forms(config)  # a malformed template fails here
    if config.variant_table and config.backend is BackendKind.BATCH:
        raise ConfigError("--variants does not go with --backend batch yet: run the variants "
                          "online (--backend local or ray)")
    keys = reading(config)
    chosen = selection(config)
    # bad input fails here, before anything is spent (or it was checked as it is before: kept)
    kept = input_index_path(output)
    index = checked_input(input_path, keys, chosen, kept)
    config = settle_models(config, index)
    _check_rule(config, index)
    # the models requests name (a Batch file's bodies' without --model)
    asked = asked_models(config, index)
    unpriced = [m for m in asked if prices.find(m) is None]
    if config.max_cost is not None and config.backend is BackendKind.BATCH:
        raise ConfigError("--max-cost does not go with --backend batch (a batch's cost is known "
                          "only once it ends); --dry-run --backend batch shows its price first")
    if config.max_cost is not None and unpriced:
        raise ConfigError(f"--max-cost needs a price for {', '.join(unpriced)}: give "
                          "--prices FILE or --price-input and --price-output")
    runs = run_outputs(output, config.variant_names, config.models)
    outputs = [OutputPaths.of(out.path) for out in runs]
    refuse_input_as_output(input_path, [paths.output for paths in outputs], keys)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output.parent}: {exc.strerror or exc}") from None
    if not kept.exists():  # the output's folder may be new
        index = keep_input_index(kept, index)
    return _Job(config, input_path, output, keys, chosen, runs, outputs, forms, prices,
                tuple(unpriced)), index


def _check_rule(config: RunConfig, index: InputIndex) -> None:
    """--labels and --json-schema: the schema checked (a file that is no JSON Schema is a
    ConfigError naming it), and the runs they do not apply to refused."""
    rule = answer_rule(config.labels, config.json_schema, checked=True)
    if rule is None:
        return
    flag = "--labels" if rule.schema_text is None else "--json-schema"
    if config.backend is BackendKind.BATCH:
        raise ConfigError(f"{flag} does not go with --backend batch yet (its answers are not "
                          "checked as they are merged)")
    if index.format is InputFormat.BATCH:
        raise ConfigError(f"{flag} does not apply to a Batch API input file: its bodies are "
                          "sent as they are (put response_format in them)")
    if rule.schema_text is not None and config.api is not Api.CHAT:
        raise ConfigError("--json-schema needs --api chat (structured outputs as "
                          "response_format)")


# -- lock: this run alone on each output, and its own log ------------------------------------------


def _lock(job: _Job, held: ExitStack) -> Path | None:
    """Take every output's run lock (released with ``held``), wait out orphans, start the log."""
    config = job.config
    for paths in job.outputs:
        held.enter_context(RunLock(paths, config.model))
    for paths in job.outputs:
        wait_for_old_workers(paths)
    log_file = create_log_file(config.log_dir, config.model, job.output)
    held.enter_context(parent_logging(log_file, config.verbose, config.api_keys))
    return log_file


# -- repair: no torn last line for the next record to land on --------------------------------------


def _repair(job: _Job, summary: RunSummary) -> None:
    for paths in job.outputs:
        for path in (paths.output, paths.errors):
            repair = repair_tail(path, paths.corrupt_of(path))
            if repair is None:
                continue
            summary.repaired += 1
            if repair.moved_to:
                log.warning("%s: moved a torn last line (%d bytes) to %s", path, repair.moved_bytes,
                            repair.moved_to)
            else:
                log.info("%s: added the missing newline after the last record", path)


# -- scan: what is done already, from the output itself --------------------------------------------


def _scan(job: _Job, index: InputIndex, summary: RunSummary) -> _Scanned:
    scanned = _Scanned([], [], [], index.ids, index.kept)
    want_cost = job.config.max_cost is not None
    for out, paths in zip(job.runs, job.outputs, strict=True):
        found = scan_done(paths.output, index.ids, index.kept, want_cost)
        for bad in found.bad_lines[:MAX_FAILURES_SHOWN]:
            log.warning("%s:%d is not a valid record (left in place; its task runs again): %s",
                        paths.output, bad.line, bad.snippet)
        unknown = len(found.unknown)
        if unknown:
            log.warning("%d ids in %s are not in the input (--validate lists them)", unknown,
                        paths.output)
        # always set: scanned within
        done_ids = found.done if found.done is not None else index.ids.empty()
        scanned.done.append(done_ids)
        if found.lines:
            scanned.written.append(paths.output.name)
        scanned.run_starts.append(found.end_offset)
        summary.bad_lines += found.bad
        summary.unknown_ids += unknown
        summary.cost_before += found.cost
        summary.per_model[str(out.model)] = UsageCounts()
    summary.already_done = sum(len(ids) for ids in scanned.done)
    return scanned


def _index_outputs(job: _Job, scanned: _Scanned) -> None:
    """Bring each output's done index up to what the run wrote (read from where the scan stopped),
    so that the next rerun finds it current; an output that cannot be read keeps its old index."""
    for paths in job.outputs:
        try:
            scan_done(paths.output, scanned.within, scanned.kept,
                      want_cost=job.config.max_cost is not None)
        except OutputError as exc:
            log.warning("%s: its done index was not brought up to date: %s", paths.output, exc)


# -- manifest: the settings must match what the outputs hold; the run is
# recorded ---------------------


def _record_start(job: _Job, scanned: _Scanned, argv: Sequence[str], index: InputIndex,
                  summary: RunSummary) -> tuple[Path, RunRecord]:
    config = job.config
    manifest = manifest_path(job.output)
    for change in check_fingerprints(manifest, output_fingerprints(config), scanned.written,
                                     config.allow_mixed):
        log.warning("--allow-mixed: %s", change)
    checksum = (parquet_checksum(job.input_path) if index.format is InputFormat.PARQUET
                else index.checksum)  # kept with the input's index when it is unchanged
    start = start_record(config, argv, checksum=checksum)
    append_record(manifest, start)
    log.info("run %s -> %s: %r", job.input_path, ", ".join(str(p.output) for p in job.outputs),
             config)
    for name in asked_models(config, index):
        if image_rule(name) is None:
            log.info("%s: no published image token rule; its images are estimated as gpt-4o's",
                     name)
    variants = f" x {len(job.forms)} variants" if config.variant_table else ""
    log.info("%d tasks x %d models%s, %d already done, %d to run", index.total, len(config.models),
             variants, summary.already_done, summary.remaining)
    return manifest, start


# -- backend: the driver hands what is left to where it runs ---------------------------------------


def _backend(job: _Job, scanned: _Scanned, log_file: Path | None, progress: bool) -> Backend:
    config = job.config
    if config.backend is BackendKind.BATCH:
        from .backends.batch import BatchBackend

        return BatchBackend(config, job.outputs, job.prices, progress)
    if config.backend is BackendKind.RAY:
        from .backends.ray import RayBackend

        return RayBackend(config, job.outputs, job.prices)
    from .backends.local import LocalBackend

    return LocalBackend(config, job.outputs, scanned.run_starts, log_file, job.prices)


def _run_backend(job: _Job, scanned: _Scanned, summary: RunSummary, log_file: Path | None,
                 progress: bool, grace_s: float, started: float) -> None:
    """Run what is left; whatever happens, the summary file is rewritten and the backend closed."""
    items = work_items(iter_tasks(job.input_path, job.keys, selection=job.chosen), scanned.done,
                       job.forms)
    state = RunState(job.config, items, summary, companion(job.output, ".summary.json"),
                     summary.already_done, progress)
    backend = _backend(job, scanned, log_file, progress)
    previous = _catch_stop_signals(state.on_signal)
    try:
        supervise(state, backend, grace_s)
    finally:
        summary.stopped = state.stop_reason
        summary.elapsed_s = time.monotonic() - started
        try:
            # before close: the limiter's counts live with the backend
            state.save_summary(live=False)
        finally:
            backend.close()
            state.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _catch_stop_signals(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    """Route Ctrl-C and SIGTERM to a graceful stop; {signal: the handler it replaced}, to restore.

    Only the main thread may set signal handlers: a run started from another thread (a notebook's, a
    web server's) leaves them to the program, which still owns Ctrl-C.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
