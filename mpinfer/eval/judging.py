"""A judged run: the answers, then each answers output's judging run (eval/judge.py), in one
command.

Judging starts once the answers run has ended without a stop (a stopped run's rerun answers what
is left, then judges). Each judging run is a run like any other (lifecycle.run: the same locks,
repair, scan, manifest, backends and limits per key and model), over the judge's tasks, into the
judge output; a rerun of a finished judged run sends nothing, and one killed mid-judging judges
only what is left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..config import RunConfig
from ..lifecycle import DEFAULT_GRACE_S
from ..lifecycle import run as run_answers
from ..reports.summary import RunSummary
from ..store.output import run_outputs
from .judge import check_judge, judge_config, judge_tasks, load_judge

log = logging.getLogger("mpinfer.run")


def run(config: RunConfig, *, progress: bool = True, grace_s: float = DEFAULT_GRACE_S,
        argv: Sequence[str] = ()) -> RunSummary:
    """Run every task not done yet (lifecycle.run); with --judge, then judge every answer not
    judged yet. The answers' summary, with the judging runs' in ``judged``."""
    if config.judge is None:
        return run_answers(config, progress=progress, grace_s=grace_s, argv=argv)
    spec = load_judge(config.judge)
    check_judge(config, spec)  # bad input fails here, before any request
    summary = run_answers(config, progress=progress, grace_s=grace_s, argv=argv)
    if summary.stopped is not None:
        return summary
    _, output = config.require_paths()
    for out in run_outputs(output, config.variant_names, config.models):
        answers = out.path
        tasks = judge_tasks(config, spec, answers)
        if tasks is None:
            continue
        judged = run_answers(judge_config(config, spec, tasks, answers), progress=progress,
                             grace_s=grace_s, argv=argv)
        summary.judged.append(judged)
        if judged.stopped is not None:
            break
    return summary
