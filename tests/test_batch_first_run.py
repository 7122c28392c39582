"""What a first --backend batch run shows (issue 22, item 10): a batch's own duration where a live
run shows latency, an age that stops when the batch ends, and the mock's refusals in a batch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from helpers import read_jsonl, run_cli, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess

OUT = "out.jsonl"


@pytest.fixture
def mock(batch_mock: MockServerProcess) -> MockServerProcess:
    """This module's mock is the Batch API one (conftest.batch_mock), reset for each test."""
    batch_mock.reset(settings=True)
    return batch_mock


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str) -> Any:
    return run_cli("-i", "tasks.jsonl", "-o", OUT, "--backend", "batch", "--batch-poll", "0.1",
                   "--base-url", mock.base_url, "--model", "gpt-4o-mini", *extra, cwd=tmp_path)


def _status_rows(stdout: str) -> dict[str, str]:
    return {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
            for line in stdout.splitlines() if ":" in line}


def test_a_finished_batch_shows_its_duration_and_its_age_stops_growing(
        tmp_path: Path, mock: MockServerProcess):
    # Given three tasks run as one batch that takes a few steps
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    mock.batch_faults(step_s=0.3)
    # When the run ends
    proc = _run(tmp_path, mock)
    # Then the summary says how long the batch took, not a latency per answer
    assert proc.returncode == 0, proc.stderr
    assert "batches took p50" in proc.stdout
    assert "latency p50" not in proc.stdout
    # And --status, asked twice some seconds apart, shows the same age: the batch's duration
    first = _status_rows(_run(tmp_path, mock, "--status").stdout)
    time.sleep(2.5)
    second = _run(tmp_path, mock, "--status").stdout
    batch_row = next(line for line in second.splitlines() if "batch_mock" in line)
    assert first[batch_row.split(":", 1)[0].strip()] == batch_row.split(":", 1)[1].strip()
    assert "(answers of a batch: its duration)" in _status_rows(second)["latency"]


def test_the_mock_refuses_a_marked_prompt_in_a_batch_as_in_a_chat(tmp_path: Path,
                                                                 mock: MockServerProcess):
    # Given a mock that refuses prompts holding "t1"
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    mock.configure(refuse_marker="t1:")
    # When the tasks run as a batch
    proc = _run(tmp_path, mock)
    # Then the marked one is a refusal, counted as one, and the others are answers
    assert proc.returncode == 0, proc.stderr
    rows = {row["id"]: row for row in read_jsonl(tmp_path / OUT)}
    assert rows["t1"]["answer"] is None and rows["t1"]["refusal"]
    assert rows["t0"]["answer"] and rows["t2"]["answer"]
    assert "refusals 1" in proc.stdout
