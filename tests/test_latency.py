"""Latency is the answering request's own time on the wire; the wait for the limiter and a free
slot before it is ``waited_s``, its own field and figure (issue 22, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import read_jsonl, run_cli, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str):
    return run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--base-url", mock.base_url,
                   "--model", "gpt-4o-mini", *extra, cwd=tmp_path)


def test_a_request_waiting_for_a_slot_does_not_count_the_wait_as_latency(
        tmp_path: Path, mock: MockServerProcess):
    # Given a server that takes 1.5 s to answer, and one process with one slot for four tasks
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(4))
    mock.configure(latency_ms=1500)
    # When they run
    proc = _run(tmp_path, mock, "-p", "1", "-c", "1")
    # Then each line's latency is its own request's 1.5 s, not the queue before it (which made the
    # median 3 s and more), with generous room for a loaded machine
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 4
    assert all(1.4 <= row["latency_s"] < 2.6 for row in rows), [r["latency_s"] for r in rows]
    # And the wait for the slot is on the line apart: the tasks queued behind another waited
    assert all(row["waited_s"] >= 0 for row in rows)
    assert max(row["waited_s"] for row in rows) > 1.0
    # And the summary gives both figures
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["latency_s"]["p50"] < 2.6
    assert summary["waited_s"]["max"] > 1.0
    assert "waited p50" in proc.stdout
    # And --status shows the wait beside the latency
    status = _run(tmp_path, mock, "--status")
    assert status.returncode == 0, status.stderr
    rows_shown = {line.split(":", 1)[0].strip(): line.split(":", 1)[1]
                  for line in status.stdout.splitlines() if ":" in line}
    assert "s a task on average" in rows_shown["waited"]
    latency = rows_shown["latency"]
    assert float(latency.split("p50 ")[1].split("s")[0]) < 2.6


def test_the_wait_for_the_rate_limit_is_not_latency(tmp_path: Path, mock: MockServerProcess):
    # Given an instant server and a limit of 60 requests a minute for eight tasks
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(8))
    # When they run, paced by the limit
    proc = _run(tmp_path, mock, "--rpm", "60")
    # Then the answers' latency is the server's (instant), however long they waited for the limit
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 8
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["latency_s"]["p50"] < 0.5, summary["latency_s"]
    # And the pacing shows as the wait
    assert summary["waited_s"]["max"] > 1.0, summary["waited_s"]
    assert sum(row["waited_s"] for row in rows) > 2.0
