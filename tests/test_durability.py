"""Durability: a full disk mid-run, --fsync, and a rerun of a finished job.

The full disk is real as far as the process can tell: the CLI runs with RLIMIT_FSIZE, so a write
that would take a file past the limit fails with EFBIG (SIGXFSZ ignored), which the store treats
like ENOSPC.
"""

from __future__ import annotations

import resource
import signal
import subprocess
from collections import Counter
from pathlib import Path

import orjson
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
from mpinfer.store.records import REFUSAL_FIELD, RESULT_FIELDS

# The result lines of text_tasks are about 350 bytes: the output hits the limit after ~30 of 100
# tasks.
FSIZE_LIMIT = 12_000


def _limit_file_size(limit: int):
    def preexec() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        # a write past the limit fails with EFBIG instead
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return preexec


def _lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path.name} does not end with a newline: {data[-80:]!r}"
    return data.split(b"\n")[:-1]


def test_a_full_disk_stops_the_run_with_a_clear_message_and_no_torn_line_and_a_rerun_finishes(
        tmp_path: Path, mock: MockServerProcess):
    # Given 100 tasks whose result lines are about 350 bytes each
    tasks = text_tasks(100)
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    mock.configure(latency_ms=20)
    output = tmp_path / "out.jsonl"
    args = ("-i", "tasks.jsonl", "-o", "out.jsonl", "-p", "2", "-c", "4", "--base-url",
            mock.base_url, "--log-dir", "logs")
    # When the run may grow no file past 12 KB (the disk is full for the output after ~30 lines)
    # (preexec_fn only calls setrlimit and signal in the child: nothing that could deadlock on a
    # lock held by another thread of this process)
    proc = subprocess.Popen(cli_command(*args), cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=_limit_file_size(FSIZE_LIMIT))
    try:
        stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    # Then it stops with the "run stopped" exit code and says the disk is full
    assert proc.returncode == 5, (proc.returncode, stdout, stderr)
    assert "disk full" in stderr, stderr
    # And the output ends with a newline, every line is a whole record, and it stayed within the
    # limit
    lines = _lines(output)
    records = [orjson.loads(line) for line in lines]
    assert 10 <= len(records) < 100, len(records)
    assert all(set(RESULT_FIELDS) <= set(r) for r in records)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))
    assert output.stat().st_size <= FSIZE_LIMIT
    # And the log files were not what hit the limit
    assert all(log.stat().st_size < FSIZE_LIMIT for log in (tmp_path / "logs").iterdir())
    # And no failure was recorded for the tasks that could not be written (they are simply not done)
    assert read_jsonl(tmp_path / "out.jsonl.errors.jsonl") == []
    # When the run is repeated with room on the disk
    again = run_cli(*args, cwd=tmp_path)
    # Then it resumes, finishes, and every id is on disk exactly once; nothing was torn
    assert again.returncode == 0, again.stderr
    assert f"done 100/100 ({len(ids)} before this run" in again.stdout, again.stdout
    final = [orjson.loads(line)["id"] for line in _lines(output)]
    assert Counter(final) == Counter(t["id"] for t in tasks)
    assert not (tmp_path / "out.jsonl.corrupt").exists()
    check = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--validate", cwd=tmp_path)
    assert check.returncode == 0, check.stdout


def test_an_fsync_run_finishes_with_the_same_output_shape_as_a_plain_run(tmp_path: Path,
                                                                         mock: MockServerProcess):
    # Given 60 tasks
    tasks = text_tasks(60)
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    common = ("-i", "tasks.jsonl", "-p", "2", "-c", "4", "--base-url", mock.base_url)
    # When they are run once with --fsync and once without, into two outputs
    synced = run_cli(*common, "-o", "synced.jsonl", "--fsync", cwd=tmp_path)
    plain = run_cli(*common, "-o", "plain.jsonl", cwd=tmp_path)
    # Then both finish, each with every id once
    assert synced.returncode == 0, synced.stderr
    assert plain.returncode == 0, plain.stderr
    expected = Counter(t["id"] for t in tasks)
    synced_lines = [orjson.loads(line) for line in _lines(tmp_path / "synced.jsonl")]
    plain_lines = [orjson.loads(line) for line in _lines(tmp_path / "plain.jsonl")]
    assert Counter(r["id"] for r in synced_lines) == expected
    assert Counter(r["id"] for r in plain_lines) == expected
    synced_records = {r["id"]: r for r in synced_lines}
    plain_records = {r["id"]: r for r in plain_lines}
    # And the lines have the same fields, in the same order, and the same answers
    for task_id, record in synced_records.items():
        other = plain_records[task_id]
        assert list(record) == list(other)
        assert list(record)[:len(RESULT_FIELDS)] == list(RESULT_FIELDS) and REFUSAL_FIELD in record
        assert list(record["usage"]) == list(other["usage"])
        for name in ("input_prompt", "images", "answer", "model", "requested_model", "usage",
                     "finish_reason"):
            assert record[name] == other[name], (task_id, name)
    # And --validate passes on the fsync'd output
    check = run_cli("-i", "tasks.jsonl", "-o", "synced.jsonl", "--validate", cwd=tmp_path)
    assert check.returncode == 0, check.stdout


def test_a_rerun_of_a_finished_job_sends_no_request_and_changes_nothing(tmp_path: Path,
                                                                        mock: MockServerProcess):
    # Given a job of 40 tasks that has run to the end
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(40))
    args = ("-i", "tasks.jsonl", "-o", "out.jsonl", "-p", "2", "-c", "4", "--base-url",
            mock.base_url)
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert mock.stats()["requests"] == 40
    before = (tmp_path / "out.jsonl").read_bytes()
    mock.reset()
    # When the same command is run again
    again = run_cli(*args, cwd=tmp_path)
    # Then it exits 0 having sent nothing, and says all was done before
    assert again.returncode == 0, again.stderr
    assert mock.stats()["requests"] == 0
    assert "done 40/40 (40 before this run, 0 now)" in again.stdout, again.stdout
    # And the output is byte for byte what it was, with no errors file
    assert (tmp_path / "out.jsonl").read_bytes() == before
    assert read_jsonl(tmp_path / "out.jsonl.errors.jsonl") == []
