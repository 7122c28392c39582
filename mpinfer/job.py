"""``mpinfer.run`` for Python callers (a notebook, a script, a service): keyword settings in, a RunResult out.

    r = mpinfer.run(input="tasks.jsonl", output="results.jsonl", model="gpt-4o-mini", processes=2)
    r.summary.succeeded, [a["answer"] for a in r.answers()]

The keywords are RunConfig's field names (plus ``api_keys``); they rank as command-line flags do, over the
environment, ``.env`` and ``mpinfer.toml``, so the key still comes from OPENAI_API_KEY unless given. The run
is the command line's run: same locks, resume, files and summary. It leaves the caller's logging alone and
works from any thread (from one that is not the main thread, Ctrl-C stays with the program).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig, load_config, with_settings
from .reports.summary import RunSummary
from .run import DEFAULT_GRACE_S
from .run import run as run_job
from .store.output import iter_lines, model_outputs
from .store.records import answer_id

log = logging.getLogger("mpinfer.job")


@dataclass(frozen=True)
class RunResult:
    """What ``mpinfer.run`` did (``summary``) and where its answers are (``outputs``, one file per model)."""

    summary: RunSummary
    config: RunConfig

    @property
    def outputs(self) -> tuple[Path, ...]:
        """The output files, one per model (``<stem>.<model>.jsonl`` when several models ran)."""
        _, output = self.config.require_paths()
        return model_outputs(output, self.config.models)

    def answers(self) -> Iterator[dict[str, Any]]:
        """Every result line in the outputs, this run's and earlier runs', as dicts, file by file in order.

        Read lazily from disk, so a million answers need not fit in memory. These are the lines a resume counts
        as done; any other line (torn, corrupt or not an answer, which ``validate`` reports) is skipped.
        Failures are in ``<output>.errors.jsonl``.
        """
        for path in self.outputs:
            for _number, _raw, obj in iter_lines(path):
                if answer_id(obj) is not None:
                    yield obj


def run(config: RunConfig | None = None, *, input: str | Path | None = None, output: str | Path | None = None,
        progress: bool = True, grace_s: float = DEFAULT_GRACE_S, **settings: Any) -> RunResult:
    """Run every task of ``input`` that is not in ``output`` yet (rerun to resume) and return the result.

    ``settings`` are RunConfig's field names, e.g. ``model="gpt-4o-mini", processes=2, max_cost=5``; an
    unknown name is a ConfigError. With ``config``, the keyword settings apply over it. Raises MpinferError
    subclasses (bad input, settings or output) before anything is spent.
    """
    settings = {"input": input, "output": output, **settings}
    if config is None:
        config = load_config(settings, keywords=True)
    else:
        config = with_settings(config, settings)
    for warning in config.warnings:
        log.warning("%s", warning)
    summary = run_job(config, progress=progress, grace_s=grace_s)
    return RunResult(summary, config)
