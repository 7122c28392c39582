"""Output piped into a reader that stops early (``| head``): no traceback, and the work stands."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from helpers import CLI_TIMEOUT_S, cli_command, cli_env, read_jsonl, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess


def _into_closed_pipe(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with stdout a pipe whose reader is gone before anything is written (as head)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(cli_command(*args), cwd=tmp_path, env=cli_env(), stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=CLI_TIMEOUT_S, check=False)
    finally:
        os.close(write_end)


def test_status_and_a_runs_summary_into_a_reader_that_left_print_no_traceback(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given tasks
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(5))
    args = ("-i", "tasks.jsonl", "-o", "results.jsonl", "--base-url", mock.base_url)
    # When a run's summary goes into a pipe nobody reads any more
    ran = _into_closed_pipe(tmp_path, *args)
    # Then there is no traceback, the run's exit code is its own, and its answers are on disk
    assert "Traceback" not in ran.stderr and "BrokenPipe" not in ran.stderr, ran.stderr
    assert ran.returncode == 0
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 5
    # And the same for --status and --status --json
    for extra in ((), ("--json",)):
        shown = _into_closed_pipe(tmp_path, *args, "--status", *extra)
        assert "Traceback" not in shown.stderr and shown.returncode == 0, shown.stderr
