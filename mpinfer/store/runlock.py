"""The one-run-per-output lock: taking it for a run, saying who holds it, probing it without waiting.

One run at a time holds ``<output>.lock``; ``--status`` and ``--validate`` only read. The holder's pid,
start and model sit beside it in the run-info file, so a refused second run can say whom it waits for.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import orjson
from filelock import FileLock, Timeout

from ..errors import OutputError, RunLockedError
from .output import OutputPaths, companion

RUN_LOCK_WAIT_S = 2.0


@dataclass(frozen=True)
class RunInfo:
    """Who holds the run lock of an output."""

    pid: int
    started_at: float
    model: str

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"pid {self.pid}, started {started}, model {self.model}"


def read_run_info(paths: OutputPaths) -> RunInfo | None:
    try:
        data = orjson.loads(paths.run_info.read_bytes())
        return RunInfo(int(data["pid"]), float(data["started_at"]), str(data["model"]))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class RunLock:
    """The one-run-per-output lock, held by the parent for the whole run.

    Worker processes are forked while it is held and share its descriptor, so the lock stays taken until the
    last of them is gone: a run whose parent was killed cannot be joined by a second run while orphans live.
    """

    def __init__(self, paths: OutputPaths, model: str) -> None:
        self.paths = paths
        self.model = model
        self._lock = FileLock(str(paths.run_lock), thread_local=False)

    def acquire(self, wait_s: float = RUN_LOCK_WAIT_S) -> None:
        try:
            self._lock.acquire(timeout=wait_s)
        except Timeout:
            info = read_run_info(self.paths)
            who = f" ({info.describe()})" if info else ""
            raise RunLockedError(
                f"another run is live on {self.paths.output}{who}; wait for it or stop it first "
                "(--status and --validate work beside it)"
            ) from None
        except OSError as exc:
            raise OutputError(f"{self.paths.run_lock}: cannot lock: {exc.strerror or exc}") from None
        mine = {"pid": os.getpid(), "started_at": time.time(), "model": self.model}
        tmp = companion(self.paths.run_info, ".tmp")
        tmp.write_bytes(orjson.dumps(mine))
        os.replace(tmp, self.paths.run_info)

    def release(self) -> None:
        try:
            self.paths.run_info.unlink()
        except FileNotFoundError:
            pass
        self._lock.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def live_run(paths: OutputPaths) -> RunInfo | None:
    """The live run on this output, if any; probes the run lock without waiting."""
    if not paths.run_lock.exists():
        return None
    probe = FileLock(str(paths.run_lock), thread_local=False)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return read_run_info(paths) or RunInfo(pid=0, started_at=0.0, model="?")
    except OSError:
        return None
    probe.release()
    return None
