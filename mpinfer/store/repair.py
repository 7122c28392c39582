"""Rewriting mpinfer's own files safely: atomic replacement, output repair, and a fresh start.

Everything here changes files a run depends on, so three rules hold throughout:
- nothing is deleted: a repair first copies the old output to ``<output>.bak-<time>``, and a fresh
  start moves the old files into a backup folder;
- a file is replaced whole or not at all (temporary file in the same folder, fsync, ``os.replace``,
  fsync of the folder), so a crash in the middle leaves the old file or the new one, never half of
  each;
- no run may be live on the output, and the output's run lock is held while files change,
  so no run can start in the middle.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ..config import RunConfig
from ..errors import OutputError, RunLockedError
from ..logfile import is_log_of
from .atomic import atomic_write, fsync_dir
from .locks import RunLock, live_run
from .manifest import manifest_path
from .output import OutputPaths, companion, iter_lines, run_outputs
from .records import view

LINES_SHOWN = 5
_STAMP = "%Y%m%d-%H%M%S"
_LOCK_WAIT_S = 0.5


class RemovedKind(StrEnum):
    """Why a repair took a line out of the output."""

    # The last line, cut short by a crash (no newline, does not parse)
    TORN_LINE = "torn_line"
    # Any other line that is not a record of either form
    CORRUPT_LINE = "corrupt_line"
    # A record whose id an earlier line already holds (the first one stays)
    DUPLICATE_ID = "duplicate_id"


@dataclass
class RepairReport:
    """What repair did to one output:
    lines removed by kind (with the first line numbers), and the backup."""

    output: Path
    lines: int = 0
    kept: int = 0
    removed: dict[RemovedKind, int] = field(default_factory=dict)
    examples: dict[RemovedKind, list[int]] = field(default_factory=dict)
    newline_added: bool = False  # the last record lacked only its newline: kept, and given one
    backup: Path | None = None

    @property
    def changed(self) -> bool:
        """Whether the repair changed the file (removed a line or added a final newline)."""
        return bool(self.removed) or self.newline_added

    def remove(self, kind: RemovedKind, line: int) -> None:
        """Count a removed line of ``kind``, keeping the first few line numbers as examples."""
        self.removed[kind] = self.removed.get(kind, 0) + 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < LINES_SHOWN:
            shown.append(line)


def _kept_lines(output: Path, report: RepairReport) -> Iterator[bytes]:
    """The lines that stay, each ending in a newline; counts what goes into ``report`` on the way.

    A line stays when it is a record of either form (``records.view``) whose id no earlier line
    holds: keeping the first means an answer already counted by status and export stays the one they
    counted.
    """
    seen: set[str] = set()
    for number, raw, obj in iter_lines(output):
        report.lines += 1
        record = view(obj)
        if record is None:
            torn = not raw.endswith(b"\n")  # only the last line of a file can lack its newline
            report.remove(RemovedKind.TORN_LINE if torn else RemovedKind.CORRUPT_LINE, number)
            continue
        if record.id in seen:
            report.remove(RemovedKind.DUPLICATE_ID, number)
            continue
        seen.add(record.id)
        report.kept += 1
        if not raw.endswith(b"\n"):
            report.newline_added = True
            raw += b"\n"
        yield raw


def _free_name(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... when it exists (two repairs in the same second)."""
    candidate = base
    for attempt in range(2, 1000):
        if not candidate.exists():
            return candidate
        candidate = base.with_name(f"{base.name}-{attempt}")
    raise OutputError(f"{base}: no free backup name")


def _backup(output: Path) -> Path:
    """Copy ``output`` to ``<output>.bak-<time>``
    and make the copy durable before anything changes."""
    dest = _free_name(companion(output, f".bak-{time.strftime(_STAMP)}"))
    try:
        with output.open("rb") as source, dest.open("xb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
            sink.flush()
            os.fsync(sink.fileno())
        shutil.copymode(output, dest)
    except OSError as exc:
        raise OutputError(f"{dest}: cannot write the backup: {exc.strerror or exc}") from None
    fsync_dir(dest.parent)
    return dest


def _refuse_if_live(outputs: list[OutputPaths], doing: str) -> None:
    for paths in outputs:
        info = live_run(paths)
        if info is not None:
            who = f" ({info.describe()})" if info.pid else ""
            raise RunLockedError(f"a run is live on {paths.output}{who}: {doing} needs the output "
                                 "to itself; wait for the run to end or stop it first")


@contextmanager
def _locked(outputs: list[OutputPaths], doing: str) -> Iterator[None]:
    """Hold every output's run lock, so no run can start while files change.

    The lock records "(repair)" or "(a fresh start)" where a run records its model, so a run refused
    meanwhile says what holds the output.
    """
    _refuse_if_live(outputs, doing)
    with ExitStack() as locks:
        for paths in outputs:
            lock = RunLock(paths, f"({doing})")
            lock.acquire(_LOCK_WAIT_S)
            locks.callback(lock.release)
        yield


def repair_output(output: Path) -> RepairReport:
    """Rewrite one output without corrupt lines,
    a torn last line or duplicate ids, after a backup copy.

    The caller holds the output's run lock. A clean output is left alone: no backup, no rewrite.
    """
    report = RepairReport(output=output)
    if not output.exists():
        return report
    for _ in _kept_lines(output, report):
        pass  # a first, read-only pass: most outputs need nothing, and then nothing is written
    if not report.changed:
        return report
    report.backup = _backup(output)
    written = RepairReport(output=output)
    with atomic_write(output, mode_from=output) as sink:
        for line in _kept_lines(output, written):
            sink.write(line)
        # The run lock keeps writers out, so this is a bug if it ever happens; raised here, the new
        # file is dropped and the old one stays.
        if (written.removed, written.kept) != (report.removed, report.kept):
            raise OutputError(f"{output} changed during the repair; it was left as it was")
    return report


def repair(config: RunConfig) -> list[RepairReport]:
    """Repair every output of the run (one per variant and model);
    refused while a run is live on any of them."""
    _, output = config.require_paths()
    outputs = [OutputPaths.of(out.path)
               for out in run_outputs(output, config.variant_names, config.models)]
    if not output.parent.is_dir():
        # No run yet: nothing to lock or mend
        return [RepairReport(output=paths.output) for paths in outputs]
    with _locked(outputs, "repair"):
        return [repair_output(paths.output) for paths in outputs]


def _old_files(config: RunConfig, outputs: list[OutputPaths]) -> list[Path]:
    """Every file earlier runs left for this output:
    results, errors, torn lines, summary, manifest, logs.

    Logs are included only when the output has files of its own: the log folder may be shared, and a
    fresh start of an output that never ran must not sweep up other outputs' logs.
    """
    _, output = config.require_paths()
    found: list[Path] = []
    for paths in outputs:
        found += [paths.output, paths.errors, paths.corrupt, paths.corrupt_of(paths.errors)]
        found += sorted(paths.output.parent.glob(f"{paths.output.name}.bak-*"))
    found += [companion(output, ".summary.json"), manifest_path(output),
              companion(output, ".missing.jsonl")]
    found = [path for path in dict.fromkeys(found) if path.is_file()]
    if found and config.log_dir.is_dir():
        found += sorted(p for p in config.log_dir.iterdir() if _is_log(config, p) and p.is_file())
    return found


def _finished_batch_plan(output: Path) -> list[Path]:
    """The --backend batch plan, to move with the rest; refused while it has open batches (they are
    paid for: a fresh start would send their rows again)."""
    # The plan is the batch backend's; only its file matters here
    from ..backends.batch_plan import Plan

    plan = Plan.load(output)
    if plan is None:
        return []
    if plan.open_chunks:
        raise OutputError(f"{plan.path} records {len(plan.open_chunks)} open batches of "
                          "--backend batch: let a run collect them, or --cancel them "
                          "(and rerun once to merge what they answered), before --fresh")
    return [plan.path]


def _is_log(config: RunConfig, path: Path) -> bool:
    """A log of a run on this output (its name says so): others sharing the folder stay."""
    _, output = config.require_paths()
    return path.parent == config.log_dir and is_log_of(path.name, output)


def _move(source: Path, dest: Path) -> None:
    """Rename ``source`` to ``dest``;
    across filesystems, copy durably first and remove the source after."""
    try:
        os.rename(source, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise OutputError(f"{source}: cannot move to {dest}: {exc.strerror or exc}") from None
    try:
        shutil.copy2(source, dest)
        with dest.open("rb+") as copy:
            os.fsync(copy.fileno())
        source.unlink()
    except OSError as exc:
        raise OutputError(f"{source}: cannot move to {dest}: {exc.strerror or exc}") from None


def fresh_start(config: RunConfig) -> Path | None:
    """Move everything earlier runs left for this output into ``<output>.backup-<time>/``; delete
    nothing.

    Moved: the output(s), errors files, ``.corrupt`` files, repair backups, summary, manifest, the
    export's missing list, and the log folder's logs of runs on this output (``is_log_of``; they go
    under ``logs/`` in the backup). Lock files stay: they are in use. Returns the backup folder, or
    None when there was nothing to move. Refused while a run is live on the output; its run lock is
    held while files move.
    """
    _, output = config.require_paths()
    outputs = [OutputPaths.of(out.path)
               for out in run_outputs(output, config.variant_names, config.models)]
    if not output.parent.is_dir():
        return None
    with _locked(outputs, "a fresh start"):
        files = _old_files(config, outputs) + _finished_batch_plan(output)
        if not files:
            return None
        backup = _free_name(output.with_name(f"{output.name}.backup-{time.strftime(_STAMP)}"))
        logs = backup / "logs"
        try:
            backup.mkdir()
            if any(_is_log(config, path) for path in files):
                logs.mkdir()
        except OSError as exc:
            raise OutputError(f"{backup}: cannot create the backup folder: "
                              f"{exc.strerror or exc}") from None
        for path in files:
            _move(path, (logs if _is_log(config, path) else backup) / path.name)
        for folder in {backup, logs, output.parent, config.log_dir}:
            fsync_dir(folder)
    return backup
