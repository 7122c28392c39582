"""Every lock on an output, in one place: ``flock`` on dot-files beside the output.

- ``<output>.lock``, the run lock (RunLock): one run per output. The parent holds it for the whole
  run; ``live_run`` probes it without waiting (``--status``, ``--cancel``, repair), taking its
  ``flock`` itself (filelock's import is a run's cost, not --status's). It is a filelock FileLock.
- ``<output>.workers.lock``, the workers' lock: each local worker holds it shared for its life
  (``hold_workers_lock``); a new run takes it exclusively first (``wait_for_old_workers``, a
  FileLock), so it never writes beside orphans of a killed parent.
- ``<output>.write.lock``, the append lock (AppendLock): taken for each whole-line append, by
  whichever process writes (a local worker, the Ray or Batch driver), so two writers never
  interleave.

One mechanism for all three: ``flock`` locks belong to an open file, so the kernel drops them when
their holder dies, whatever killed it, and forked children share their parent's. filelock (our
locking library) takes the exclusive ones; three take ``flock`` directly on the same files, because
filelock has no shared flock (the workers' lock), its per-acquire bookkeeping showed on the
workers' append path (bench/README.md), and its import on --status's start (the run lock's probe).
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import orjson

if TYPE_CHECKING:
    from filelock import FileLock

from ..errors import OutputError, RunLockedError

RUN_LOCK_WAIT_S = 2.0
OLD_WORKERS_WAIT_S = 15.0


class OutputPaths(Protocol):
    """The files of output.OutputPaths that the locks use
    (named so here: output.py imports this module)."""

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


class AppendLock:
    """The append lock, on a descriptor kept open:
    taken once per line, blocking (it is held for one write)."""

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
        """Close the lock file (its lock goes with it)."""
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
        """The run's pid, start time and model, for an error saying who holds the output."""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"pid {self.pid}, started {started}, model {self.model}"


def read_run_info(paths: OutputPaths) -> RunInfo | None:
    """The live run's record beside the output, or None when there is none or it is unreadable."""
    try:
        data = orjson.loads(paths.run_info.read_bytes())
        return RunInfo(int(data["pid"]), float(data["started_at"]), str(data["model"]))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class RunLock:
    """The one-run-per-output lock, held by the parent for the whole run.

    Worker processes are forked while it is held and share its descriptor; the workers' lock, not
    this one, is what keeps a new run away from orphans of a killed parent.
    """

    def __init__(self, paths: OutputPaths, model: str) -> None:
        from filelock import FileLock  # imported by a run, not by --status (it probes alone)

        self.paths = paths
        self.model = model
        self._lock: FileLock = FileLock(str(paths.run_lock), thread_local=False)

    def acquire(self, wait_s: float = RUN_LOCK_WAIT_S) -> None:
        """Take the output's run lock (waiting up to ``wait_s``) and record who holds it;
        RunLockedError when another run keeps it."""
        from filelock import Timeout

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
            raise OutputError(f"{self.paths.run_lock}: cannot lock: "
                              f"{exc.strerror or exc}") from None
        mine = {"pid": os.getpid(), "started_at": time.time(), "model": self.model}
        tmp = self.paths.run_info.with_name(self.paths.run_info.name + ".tmp")
        tmp.write_bytes(orjson.dumps(mine))
        os.replace(tmp, self.paths.run_info)

    def release(self) -> None:
        """Remove the record of this run and let the lock go."""
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
    try:
        fd = os.open(paths.run_lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no run lock: no run has been here, or none can be
        return None
    try:
        # the flock FileLock takes, tried and let go at once (closing the file lets go)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_run_info(paths) or RunInfo(pid=0, started_at=0.0, model="?")
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def wait_for_old_workers(paths: OutputPaths, wait_s: float = OLD_WORKERS_WAIT_S) -> None:
    """Wait until workers of an earlier run on this output (orphans of a killed parent) are gone."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(paths.workers_lock), thread_local=False)
    try:
        lock.acquire(timeout=wait_s)
    except Timeout:
        raise OutputError(f"workers of an earlier run on {paths.output} are still alive; "
                          f"stop them first (they hold {paths.workers_lock})") from None
    except OSError as exc:
        raise OutputError(f"{paths.workers_lock}: cannot lock: {exc.strerror or exc}") from None
    lock.release()


def hold_workers_lock(outputs: tuple[OutputPaths, ...]) -> list[int]:
    """Shared locks a local worker holds for its life (close the descriptors to let go)."""
    fds = []
    for paths in outputs:
        fd = _open(paths.workers_lock)
        fcntl.flock(fd, fcntl.LOCK_SH)
        fds.append(fd)
    return fds
