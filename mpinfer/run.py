"""The parent side of a run: check, lock, repair, scan, then hand the tasks to a backend and summarise.

Everything that must hold whatever runs the tasks happens here, before and after the backend: bad input
fails before anything is spent, one run holds each output, torn tails are cut, the done ids are read from
the output (the truth), the settings fingerprint is checked, and the run is recorded in the manifest.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .api.prices import PriceTable, load_prices
from .api.tokens import image_rule
from .backends.base import Backend
from .config import Backend as BackendName
from .config import RunConfig
from .driver import MAX_FAILURES_SHOWN, RunState, supervise, work_items
from .errors import ConfigError, InputError, OutputError
from .inputs.check import asked_models, check_input, reading, refuse_input_as_output, selection, settle_models
from .inputs.readers import iter_tasks
from .logfile import create_log_file, parent_logging
from .reports.epilogue import after_run
from .reports.summary import RunSummary, Tally
from .store.idset import IdSubset
from .store.manifest import (
    append_record,
    check_fingerprints,
    end_record,
    manifest_path,
    output_fingerprints,
    start_record,
    summary_counts,
)
from .store.output import OutputPaths, companion, model_outputs, repair_tail, scan
from .store.runlock import RunLock

log = logging.getLogger("mpinfer.run")

OLD_WORKERS_WAIT_S = 15.0
DEFAULT_GRACE_S = 30.0

__all__ = ["DEFAULT_GRACE_S", "RunSummary", "run"]


def _backend(config: RunConfig, outputs: list[OutputPaths], run_starts: list[int], log_file: Path | None,
             prices: PriceTable, progress: bool) -> Backend:
    if config.backend is BackendName.BATCH:
        from .backends.batch import BatchBackend

        return BatchBackend(config, outputs, prices, progress)
    if config.backend is BackendName.RAY:
        from .backends.ray import RayBackend

        return RayBackend(config, outputs, prices)
    from .backends.local import LocalBackend

    return LocalBackend(config, outputs, run_starts, log_file, prices)


def _wait_for_old_workers(paths: OutputPaths) -> None:
    """Wait until workers of an earlier run on this output (orphans of a killed parent) are gone."""
    lock = FileLock(str(paths.workers_lock), thread_local=False)
    try:
        lock.acquire(timeout=OLD_WORKERS_WAIT_S)
    except Timeout:
        raise OutputError(f"workers of an earlier run on {paths.output} are still alive; stop them first "
                          f"(they hold {paths.workers_lock})") from None
    lock.release()


def _catch_stop_signals(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    """Route Ctrl-C and SIGTERM to a graceful stop; {signal: the handler it replaced}, to restore.

    Only the main thread may set signal handlers: a run started from another thread (a notebook's, a web
    server's) leaves them to the program, which still owns Ctrl-C.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _prepare(paths: OutputPaths, summary: RunSummary) -> None:
    for path in (paths.output, paths.errors):
        repair = repair_tail(path, paths.corrupt_of(path))
        if repair is None:
            continue
        summary.repaired += 1
        if repair.moved_to:
            log.warning("%s: moved a torn last line (%d bytes) to %s", path, repair.moved_bytes, repair.moved_to)
        else:
            log.info("%s: added the missing newline after the last record", path)


def run(config: RunConfig, *, progress: bool = True, grace_s: float = DEFAULT_GRACE_S,
        argv: Sequence[str] = ()) -> RunSummary:
    """Run every task of the input that is not in the output yet; rerun after any crash to resume.

    ``argv`` is the command line to record in the run manifest (secrets removed there).
    """
    started = time.monotonic()
    input_path, output = config.require_paths()
    if not input_path.is_file():  # the first thing a new user gets wrong: say it before the missing key
        raise InputError("cannot open input: no such file", str(input_path))
    config.require_api_keys()
    prices = load_prices(config.prices, config.price_input, config.price_output)
    keys = reading(config)
    chosen = selection(config)
    index = check_input(input_path, keys, chosen)  # bad input fails here, before anything is spent
    config = settle_models(config, index)
    asked = asked_models(config, index)  # the models requests name (a Batch file's bodies' without --model)
    unpriced = [m for m in asked if prices.find(m) is None]
    if config.max_cost is not None and config.backend == "batch":
        raise ConfigError("--max-cost does not go with --backend batch (a batch's cost is known only once it "
                          "ends); --dry-run --backend batch shows its price first")
    if config.max_cost is not None and unpriced:
        raise ConfigError(f"--max-cost needs a price for {', '.join(unpriced)}: give --prices FILE or "
                          "--price-input and --price-output")
    models = config.models
    outputs = [OutputPaths.of(path) for path in model_outputs(output, models)]
    refuse_input_as_output(input_path, [paths.output for paths in outputs], keys)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output.parent}: {exc.strerror or exc}") from None
    with ExitStack() as locks:
        for paths in outputs:
            locks.enter_context(RunLock(paths, config.model))
        for paths in outputs:
            _wait_for_old_workers(paths)
        log_file = create_log_file(config.log_dir, config.model)
        locks.enter_context(parent_logging(log_file, config.verbose, config.api_keys))
        for name in asked:
            if image_rule(name) is None:
                log.info("%s: no published image token rule; its images are estimated as gpt-4o's", name)
        summary = RunSummary(total=index.total * len(models), already_done=0, log_file=log_file)
        done: list[IdSubset] = []
        run_starts: list[int] = []
        written: list[str] = []
        priced_before = 0
        for model, paths in zip(models, outputs, strict=True):
            _prepare(paths, summary)
            found = scan(paths.output, within=index.ids)
            for bad in found.bad_lines[:MAX_FAILURES_SHOWN]:
                log.warning("%s:%d is not a valid record (left in place; its task runs again): %s", paths.output,
                            bad.line, bad.snippet)
            unknown = len(found.unknown)
            if unknown:
                log.warning("%d ids in %s are not in the input (--validate lists them)", unknown, paths.output)
            done_ids = found.done if found.done is not None else index.ids.empty()  # always set: scanned within
            done.append(done_ids)
            if found.lines:
                written.append(paths.output.name)
            run_starts.append(found.end_offset)
            summary.bad_lines += len(found.bad_lines)
            summary.unknown_ids += unknown
            summary.cost_before += found.cost
            priced_before += len(done_ids)
            summary.per_model[model] = Tally()
        summary.already_done = sum(len(ids) for ids in done)
        manifest = manifest_path(output)
        for change in check_fingerprints(manifest, output_fingerprints(config), written, config.allow_mixed):
            log.warning("--allow-mixed: %s", change)
        start = start_record(config, argv)
        append_record(manifest, start)
        log.info("run %s -> %s: %r", input_path, ", ".join(str(p.output) for p in outputs), config)
        log.info("%d tasks x %d models, %d already done, %d to run", index.total, len(models),
                 summary.already_done, summary.remaining)
        summary_path = companion(output, ".summary.json")
        if summary.remaining == 0:
            summary.elapsed_s = time.monotonic() - started
            append_record(manifest, end_record(start, summary_counts(summary, summary.cost)))
            summary.epilogue = after_run(config, summary.remaining)
            return summary
        items = work_items(iter_tasks(input_path, keys, selection=chosen), done)
        state = RunState(config, items, summary, summary_path, priced_before, progress)
        backend = _backend(config, outputs, run_starts, log_file, prices, progress)
        del index
        previous = _catch_stop_signals(state.on_signal)
        try:
            supervise(state, backend, grace_s)
        finally:
            summary.stopped = state.stop_reason
            summary.elapsed_s = time.monotonic() - started
            try:
                state.save_summary(live=False)  # before close: the limiter's counts live with the backend
            finally:
                backend.close()
                state.close()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            append_record(manifest, end_record(start, summary_counts(summary, summary.cost)))
        # Not on an error on its way out: only after the run ended (a graceful stop included), under the lock.
        summary.epilogue = after_run(config, summary.remaining)
        log.info("run ended: %d written, %d failed, %d left, %.1fs%s", summary.succeeded + summary.recovered,
                 summary.failed, summary.remaining, summary.elapsed_s,
                 f", stopped: {summary.stopped}" if summary.stopped else "")
    return summary
