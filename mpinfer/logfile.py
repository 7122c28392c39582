"""Per-run log files and the console log handler.

Every run gets its own file under the log folder, named for the model and the start time, and opened with
exclusive creation: a run never overwrites or appends to an earlier run's log, even two runs started in the
same second. The console shows warnings and errors only, written through tqdm so they do not break the bar.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .errors import ConfigError
from .redact import RedactingFilter

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
FORMAT = "%(asctime)s parent %(levelname)s %(name)s: %(message)s"
MIN_SECRET_LENGTH = 8


def log_file_name(model: str, started: float, attempt: int = 0) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    suffix = f"-{attempt + 1}" if attempt else ""
    return f"mpinfer_{_UNSAFE.sub('_', model).strip('_') or 'model'}_{stamp}{suffix}.log"


def create_log_file(log_dir: Path, model: str, started: float | None = None) -> Path:
    """Create a new, empty log file for this run; never reuses a name."""
    started = time.time() if started is None else started
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"log folder {log_dir}: {exc.strerror or exc}") from None
    for attempt in range(1000):
        path = log_dir / log_file_name(model, started, attempt)
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
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take the run down
            self.handleError(record)


def _reset_root(verbose: bool) -> logging.Logger:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # The SDK and the HTTP stack log every request at INFO: that belongs in -v only.
    for noisy in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    return root


def _secrets(keys: Sequence[str]) -> list[str]:
    # A "key" of a few characters (none, EMPTY) guards nothing, and masking it would mangle ordinary words.
    return [key for key in keys if len(key) >= MIN_SECRET_LENGTH]


def setup_parent_logging(log_file: Path | None, verbose: bool, keys: Sequence[str] = ()) -> None:
    """Console (warnings and errors, above the bar) and the run's log file (everything), both redacted."""
    root = _reset_root(verbose)
    redacting = RedactingFilter(_secrets(keys))
    console = TqdmConsoleHandler(logging.DEBUG if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    console.addFilter(redacting)
    root.addHandler(console)
    if log_file is not None:
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(redacting)
        root.addHandler(handler)


def setup_worker_logging(log_file: str | None, verbose: bool, label: str, keys: Sequence[str] = ()) -> None:
    """A worker logs to the run's file only; what the user must see travels to the parent as events."""
    root = _reset_root(verbose)
    if log_file:
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter(FORMAT.replace("parent", label)))
        handler.addFilter(RedactingFilter(_secrets(keys)))
        root.addHandler(handler)
