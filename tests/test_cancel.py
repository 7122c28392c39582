"""--cancel: a second terminal stops the live run gracefully and says how to resume."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from helpers import (
    CLI_TIMEOUT_S,
    cli_command,
    cli_env,
    read_jsonl,
    run_cli,
    text_tasks,
    write_tasks,
)

from mpinfer.mockserver import MockServerProcess

WAIT_S = 60.0


def _wait_for_lines(path: Path, at_least: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_bytes().splitlines()) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {at_least} lines (run exit {proc.poll()})")


def test_cancel_stops_the_live_run_gracefully_and_a_rerun_finishes_the_rest(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a slow run of 60 tasks, live, with a few answers written
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(60))
    mock.configure(latency_ms=300)
    args = ("-i", "tasks.jsonl", "-o", "results.jsonl", "--base-url", mock.base_url, "-p", "1",
            "-c", "2")
    run = subprocess.Popen(cli_command(*args), cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lines(tmp_path / "results.jsonl", 2, run)
        # When --cancel is given from another terminal
        cancel = run_cli("-o", "results.jsonl", "--cancel", "--grace", "10", cwd=tmp_path)
        # Then it says it stopped the run and how to resume, and exits 0 once the run has exited
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert f"(pid {run.pid})" in cancel.stdout and "run the same command again" in cancel.stdout
        assert run.poll() is not None
        out, _ = run.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    # And the run ended as on Ctrl-C: interrupted, requests in flight written, work left
    assert run.returncode == 130, out
    assert "stopped: interrupted" in out
    written = read_jsonl(tmp_path / "results.jsonl")
    assert 2 <= len(written) < 60
    assert len({row["id"] for row in written}) == len(written)
    # And what is left is listed, as input records, in the missing file
    missing = read_jsonl(tmp_path / "results.jsonl.missing.jsonl")
    assert sorted(t["id"] for t in missing) == sorted(
        t["id"] for t in text_tasks(60) if t["id"] not in {row["id"] for row in written})
    # And a second --cancel finds no live run and exits 1
    again = run_cli("-o", "results.jsonl", "--cancel", cwd=tmp_path)
    assert again.returncode == 1 and "no run is live" in again.stdout
    # And the rerun answers the rest, each task once
    mock.configure(latency_ms=0)
    rerun = run_cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    ids = [row["id"] for row in read_jsonl(tmp_path / "results.jsonl")]
    assert sorted(ids) == sorted(t["id"] for t in text_tasks(60))
