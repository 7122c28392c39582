"""``--cancel``: stop the live run on an output from another terminal, the way Ctrl-C stops it.

The run holds ``<output>.lock`` for its whole life and records its pid beside it (``store.locks``);
its workers inherit the lock, so the lock is free only when the last of them is gone. Cancelling
sends the run's parent SIGINT, which takes exactly the Ctrl-C path (no new tasks; requests in flight
get their ``--grace`` to finish and be written), then waits for the lock to come free: the run,
workers included, has exited and its summary, manifest record and missing-tasks file are written.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import ConfigError, OutputError
from .reports.summary import read_summary
from .store.locks import RunInfo, live_run
from .store.output import OutputPaths, companion, run_outputs

# after the grace: the run writes its summary and manifest record, workers exit
CANCEL_MARGIN_S = 15.0
POLL_S = 0.1


@dataclass(frozen=True)
class CancelResult:
    """What ``cancel_run`` did: the run it signalled, whether it exited in time, its summary."""

    output: Path
    pid: int
    exited: bool
    waited_s: float
    summary: dict[str, Any] | None  # <output>.summary.json once the run ended (None: none written)


def _outputs(config: RunConfig) -> list[OutputPaths]:
    output = config.output
    if output is None:
        raise ConfigError("--cancel needs the output of the run to stop: pass -o FILE")
    paths = [output, *(out.path for out in run_outputs(output, config.variant_names,
                                                        config.models))]
    return [OutputPaths.of(path) for path in dict.fromkeys(paths)]


def _live(outputs: list[OutputPaths]) -> RunInfo | None:
    for paths in outputs:
        info = live_run(paths)
        if info is not None:
            return info
    return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def cancel_run(config: RunConfig, wait_s: float, *, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> CancelResult | None:
    """Stop the live run on ``config``'s output and wait up to ``wait_s``; None if none is live."""
    outputs = _outputs(config)
    info = _live(outputs)
    if info is None:
        return None
    if info.pid <= 0:
        raise OutputError(f"a run holds {outputs[0].run_lock} but did not record its "
                          "pid; stop it with Ctrl-C in its terminal")
    started = clock()
    try:
        os.kill(info.pid, signal.SIGINT)
    except ProcessLookupError:
        # the parent is gone already; its workers may still hold the lock: wait for them as well
        pass
    except PermissionError:
        raise OutputError(
            f"the run on {outputs[0].output} (pid {info.pid}) belongs to another user: "
            "cannot signal it"
        ) from None
    deadline = started + wait_s
    # The lock comes free when the last worker is gone; the parent exits just
    # after it: wait for both.
    while (_live(outputs) is not None or _alive(info.pid)) and clock() < deadline:
        sleep(POLL_S)
    exited = _live(outputs) is None and not _alive(info.pid)
    # the run's: beside the output it named
    summary = read_summary(companion(outputs[0].output, ".summary.json"))
    return CancelResult(output=outputs[0].output, pid=info.pid, exited=exited,
                        waited_s=clock() - started, summary=summary)
