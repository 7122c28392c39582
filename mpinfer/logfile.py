"""Per-run log files and the console log handler, on mpinfer's own logger.

Every run gets its own file under the log folder, named for the model, the start time and the
output (``mpinfer_gpt-4o-mini_20261121-093000.results.log`` for ``results.jsonl``), and opened
with exclusive creation: a run never overwrites or appends to an earlier run's log, even two runs
started in the same second. The output's name in it is how --fresh tells this output's logs from
those of other outputs that share the folder (``is_log_of``). The console shows warnings and
errors only, written through tqdm so they do not break the bar.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError
from .redact import RedactingFilter

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
LOGGER = "mpinfer"  # the parent's handlers go on this logger only, never on the root
FORMAT = "%(asctime)s parent %(levelname)s %(name)s: %(message)s"
MIN_SECRET_LENGTH = 8


def _safe(name: str, default: str) -> str:
    return _UNSAFE.sub("_", name).strip("_") or default


def log_file_name(model: str, output: Path, started: float, attempt: int = 0) -> str:
    """The log file's name for a run of ``model`` on ``output`` started at ``started`` (then -2,
    -3 ...)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    suffix = f"-{attempt + 1}" if attempt else ""
    return f"mpinfer_{_safe(model, 'model')}_{stamp}{suffix}.{_safe(output.stem, 'output')}.log"


def is_log_of(name: str, output: Path) -> bool:
    """Whether the log file ``name`` is of a run on ``output`` (``log_file_name``'s form)."""
    stem = re.escape(_safe(output.stem, "output"))
    return re.fullmatch(rf"mpinfer_.+_\d{{8}}-\d{{6}}(-\d+)?\.{stem}\.log", name) is not None


def create_log_file(log_dir: Path, model: str, output: Path) -> Path:
    """Create a new, empty log file for this run (on ``output``); never reuses a name."""
    started = time.time()
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"log folder {log_dir}: {exc.strerror or exc}") from None
    for attempt in range(1000):
        path = log_dir / log_file_name(model, output, started, attempt)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConfigError(f"log file {path}: {exc.strerror or exc}") from None
        os.close(fd)
        return path
    raise ConfigError(f"log folder {log_dir}: could not find a free log file name")


class TqdmConsoleHandler(logging.Handler):
    """Writes records above the bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        """Print the record above the progress bar."""
        try:
            from tqdm import tqdm  # (here: a run that logs nothing to the console never loads it)

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take the run down
            self.handleError(record)


def _secrets(keys: Sequence[str]) -> list[str]:
    # A "key" of a few characters (none, EMPTY) guards nothing, and masking it
    # would mangle ordinary words.
    return [key for key in keys if len(key) >= MIN_SECRET_LENGTH]


class _SameThread(logging.Filter):
    """Passes the records of the run's own thread: two runs in two threads keep their own logs."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether the record comes from the run's own thread."""
        return record.thread == self.thread


class _OtherThreads(logging.Handler):
    """While runs go, passes on up the records of threads running none, as propagation would."""

    def emit(self, record: logging.LogRecord) -> None:
        """Pass the caller's other threads' records on to the caller's handlers."""
        parent = logging.getLogger(LOGGER).parent
        if record.thread in _run_threads or parent is None:
            return
        # Only what the caller's levels let through: ours are lowered for the runs' files.
        if record.levelno >= (_saved[0] or parent.getEffectiveLevel()):
            parent.handle(record)


_runs_lock = threading.Lock()
_run_threads: set[int] = set()  # the threads running a run now, in this process
# the "mpinfer" logger's level and propagate before them
_saved: tuple[int, bool] = (logging.NOTSET, True)
_others = _OtherThreads()


@contextmanager
def parent_logging(log_file: Path | None, verbose: bool,
                   keys: Sequence[str] = ()) -> Iterator[None]:
    """While a run lasts: console (warnings and errors, above the bar) and the run's log file
    (everything), both redacted, on mpinfer's own logger.

    The root logger and the caller's handlers are left alone: mpinfer's records do not
    reach them during the run (a notebook's own log must not fill with them), and the
    caller's records do not reach mpinfer's file. Afterwards the handlers are removed and
    closed and the logger is as it was.
    """
    global _saved
    logger = logging.getLogger(LOGGER)
    redacting = RedactingFilter(_secrets(keys))
    console = TqdmConsoleHandler(logging.DEBUG if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
        handlers[-1].setFormatter(logging.Formatter(FORMAT))
        handlers[-1].setLevel(logging.DEBUG if verbose else logging.INFO)
    own_thread = _SameThread()
    for handler in handlers:
        handler.addFilter(redacting)
        handler.addFilter(own_thread)
    with _runs_lock:
        if not _run_threads:
            _saved = (logger.level, logger.propagate)
            # the run's records stop here; _others hands on everyone else's
            logger.propagate = False
            logger.addHandler(_others)
        _run_threads.add(own_thread.thread)
        # Low enough for this run's file (and for what the caller's handlers
        # asked of everyone else's records).
        logger.setLevel(min(logger.getEffectiveLevel(), logging.DEBUG if verbose else logging.INFO))
        for handler in handlers:
            logger.addHandler(handler)
    try:
        yield
    finally:
        with _runs_lock:
            for handler in handlers:
                logger.removeHandler(handler)
                handler.close()
            _run_threads.discard(own_thread.thread)
            if not _run_threads:
                logger.removeHandler(_others)
                logger.setLevel(_saved[0])
                logger.propagate = _saved[1]


def _reset_root(verbose: bool) -> logging.Logger:
    """A worker process's root logger, emptied: the worker is ours, and so is its logging."""
    own = logging.getLogger(LOGGER)
    # A forked worker inherits the parent's run handlers; its records go to its
    # own file handler instead.
    for handler in list(own.handlers):
        own.removeHandler(handler)
    own.setLevel(logging.NOTSET)
    own.propagate = True
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # The SDK and the HTTP stack log every request at INFO: that belongs in -v only.
    for noisy in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    return root


def setup_worker_logging(log_file: str | None, verbose: bool, label: str,
                         keys: Sequence[str] = ()) -> None:
    """A worker logs to the run's file only; what the user must see goes to the parent as events."""
    root = _reset_root(verbose)
    if log_file:
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter(FORMAT.replace("parent", label)))
        handler.addFilter(RedactingFilter(_secrets(keys)))
        root.addHandler(handler)
