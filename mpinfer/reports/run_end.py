"""What a run leaves beside its output as it ends: the tasks still missing, and the report.

``<output>.missing.jsonl`` is refreshed whenever a run ends with tasks neither answered nor
failed (stopped, budget, crash of a worker), and when an older one is there (so it never
lists what is done since), so that a stopped run always says what is left. Neither file is
needed for a resume, which reads the output; so a failure to write them is logged and never
fails the run whose answers are on disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import RunConfig
from ..errors import MpinferError
from ..store.output import companion
from .export import write_missing
from .summary import Epilogue

log = logging.getLogger("mpinfer.run")


def after_run(config: RunConfig, remaining: int) -> Epilogue:
    """Refresh the missing-tasks file, and write the report if asked; call it under the run lock."""
    output = config.output
    if output is None:
        return Epilogue()
    missing_file: Path | None = None
    missing = 0
    existed = companion(output, ".missing.jsonl").exists()
    if remaining or existed:
        try:
            missing_file, missing = write_missing(config)
        except MpinferError as exc:
            log.warning("could not write the missing tasks' file: %s", exc)
        if missing_file is not None and not missing and not existed:
            # every task left failed: no empty file to wonder about
            missing_file.unlink(missing_ok=True)
    report_file: Path | None = None
    if config.report:
        from .html import write_report

        try:
            report_file = write_report(config).path
        except MpinferError as exc:
            log.warning("could not write the report: %s", exc)
    return Epilogue(missing_file if missing else None, missing, report_file)
