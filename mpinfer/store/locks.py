"""Every lock on an output, in one place, all of them ``flock`` on a dot-file beside the output.

- ``<output>.lock``, the run lock (RunLock): one run per output. The parent holds it for the whole run;
  ``live_run`` probes it without waiting (``--status``, ``--cancel``, repair).
- ``<output>.workers.lock``, the workers' lock: each local worker holds it shared for its life
  (``hold_workers_lock``); a new run takes it exclusively first (``wait_for_old_workers``), so it never
  writes beside orphans of a killed parent.
- ``<output>.write.lock``, the append lock (AppendLock): taken for each whole-line append, by whichever
  process writes (a local worker, the Ray or Batch driver), so two writers never interleave.

One mechanism for all three: ``flock`` locks belong to an open file, so the kernel drops them when their
holder dies, whatever killed it, and forked children share their parent's. (filelock does the same on
Linux; its per-acquire bookkeeping cost 8% of a worker's CPU on the append path, and it has no shared
lock.)
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from ..errors import OutputError, RunLockedError

RUN_LOCK_WAIT_S = 2.0
OLD_WORKERS_WAIT_S = 15.0
_POLL_S = 0.05


class OutputPaths(Protocol):
    """The files of output.OutputPaths that the locks use (named so here: output.py imports this module)."""

    @property
    def output(self) -> Path: ...
    @property
    def run_lock(self) -> Path: ...
    @property
    def run_info(self) -> Path: ...
    @property
    def workers_lock(self) -> Path: ...


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{path}: cannot open the lock file: {exc.strerror or exc}") from None


def _lock_within(fd: int, operation: int, wait_s: float) -> bool:
    """Take ``operation`` (LOCK_EX or LOCK_SH) on ``fd`` within ``wait_s`` seconds; whether it was taken."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)


class AppendLock:
    """The append lock, on a descriptor kept open: taken once per line, blocking (it is held for one write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> None:
        if self._fd is None:
            self._fd = _open(self.path)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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

    Worker processes are forked while it is held and share its descriptor; releasing it (LOCK_UN) frees it
    for them too, so the workers' lock, not this one, is what keeps a new run away from orphans.
    """

    def __init__(self, paths: OutputPaths, model: str) -> None:
        self.paths = paths
        self.model = model
        self._fd: int | None = None

    def acquire(self, wait_s: float = RUN_LOCK_WAIT_S) -> None:
        fd = _open(self.paths.run_lock)
        try:
            taken = _lock_within(fd, fcntl.LOCK_EX, wait_s)
        except OSError as exc:
            os.close(fd)
            raise OutputError(f"{self.paths.run_lock}: cannot lock: {exc.strerror or exc}") from None
        if not taken:
            os.close(fd)
            info = read_run_info(self.paths)
            who = f" ({info.describe()})" if info else ""
            raise RunLockedError(
                f"another run is live on {self.paths.output}{who}; wait for it or stop it first "
                "(--status and --validate work beside it)"
            )
        self._fd = fd
        mine = {"pid": os.getpid(), "started_at": time.time(), "model": self.model}
        tmp = self.paths.run_info.with_name(self.paths.run_info.name + ".tmp")
        tmp.write_bytes(orjson.dumps(mine))
        os.replace(tmp, self.paths.run_info)

    def release(self) -> None:
        try:
            self.paths.run_info.unlink()
        except FileNotFoundError:
            pass
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def live_run(paths: OutputPaths) -> RunInfo | None:
    """The live run on this output, if any; probes the run lock without waiting."""
    if not paths.run_lock.exists():
        return None
    try:
        fd = os.open(paths.run_lock, os.O_RDWR)
    except OSError:
        return None
    try:
        if not _lock_within(fd, fcntl.LOCK_EX, 0):
            return read_run_info(paths) or RunInfo(pid=0, started_at=0.0, model="?")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError:
        return None
    finally:
        os.close(fd)


def wait_for_old_workers(paths: OutputPaths, wait_s: float = OLD_WORKERS_WAIT_S) -> None:
    """Wait until workers of an earlier run on this output (orphans of a killed parent) are gone."""
    fd = _open(paths.workers_lock)
    try:
        if not _lock_within(fd, fcntl.LOCK_EX, wait_s):
            raise OutputError(f"workers of an earlier run on {paths.output} are still alive; stop them first "
                              f"(they hold {paths.workers_lock})")
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def hold_workers_lock(outputs: tuple[OutputPaths, ...]) -> list[int]:
    """Shared locks a local worker holds for its life (close the descriptors to let go)."""
    fds = []
    for paths in outputs:
        fd = _open(paths.workers_lock)
        fcntl.flock(fd, fcntl.LOCK_SH)
        fds.append(fd)
    return fds
