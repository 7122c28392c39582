"""Crash tests: real processes really killed with SIGKILL, then resumed."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import orjson
from helpers import (
    ids_on_disk,
    read_jsonl,
    run_cli,
    start_cli,
    text_tasks,
    wait_workers_gone,
    write_tasks,
)

from mpinfer.mockserver import MockServerProcess

WAIT_S = 60.0


def _wait_for_lines(path: Path, at_least: int, proc, limit_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        if len(ids_on_disk(path)) >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError(
        f"the run wrote fewer than {at_least} lines in {limit_s}s (exit {proc.poll()})")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_kill_9_of_the_parent_mid_run_loses_nothing_and_repeats_nothing(tmp_path: Path,
                                                                        mock: MockServerProcess):
    # Given 400 tasks and a server that takes 100-200 ms an answer
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(400))
    mock.configure(latency_ms=150, jitter_ms=50)
    output = tmp_path / "out.jsonl"
    args = ("-i", "tasks.jsonl", "-o", "out.jsonl", "-p", "3", "-c", "8", "--base-url",
            mock.base_url)
    rng = random.Random(os.environ.get("KILL_TEST_SEED", "20261121"))
    snapshots: list[tuple[set[str], dict[str, int]]] = []
    # When the run is killed with SIGKILL three times, each at a different point
    for round_ in range(3):
        proc = start_cli(*args, cwd=tmp_path)
        _wait_for_lines(output, len(ids_on_disk(output)) + rng.randint(10, 60), proc)
        time.sleep(rng.uniform(0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # Then its workers die with it (they would otherwise go on writing behind the next run's
        # back)
        wait_workers_gone(output)
        ids = ids_on_disk(output)
        assert len(ids) == len(set(ids)), f"round {round_}: duplicate lines"
        snapshots.append((set(ids), dict(mock.stats()["answered"])))
    # When the run is resumed to the end
    final = run_cli(*args, cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    # Then every id is on disk exactly once
    ids = ids_on_disk(output)
    assert Counter(ids) == Counter(f"t{i}" for i in range(400))
    # And no task whose line was already written was answered again by the server
    answered = mock.stats()["answered"]
    prompts = {t["id"]: t["prompt"] for t in text_tasks(400)}
    assert len(snapshots) == 3
    for written, answered_then in snapshots:
        again = [i for i in written if answered[prompts[i]] != answered_then[prompts[i]]]
        assert again == []
    # And validate agrees
    check = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--validate", cwd=tmp_path)
    assert check.returncode == 0, check.stdout


def test_a_killed_worker_is_replaced_and_its_tasks_are_done_once(tmp_path: Path,
                                                                 mock: MockServerProcess):
    # Given a run of 300 tasks with 3 workers
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(300))
    mock.configure(latency_ms=100, jitter_ms=50)
    output = tmp_path / "out.jsonl"
    proc = start_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "-p", "3", "-c", "6", "--base-url",
                     mock.base_url, cwd=tmp_path)
    _wait_for_lines(output, 30, proc)
    # When one worker is killed with SIGKILL mid-run
    workers = _children(proc.pid)
    assert len(workers) == 3
    os.kill(workers[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=WAIT_S)
    # Then the run still finishes with every id exactly once, saying what happened
    assert proc.returncode == 0, stderr
    assert "died" in stderr
    assert Counter(ids_on_disk(output)) == Counter(f"t{i}" for i in range(300))


def test_sigterm_stops_cleanly_and_the_rerun_finishes(tmp_path: Path, mock: MockServerProcess):
    # Given a run of 300 slow tasks
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(300))
    mock.configure(latency_ms=200)
    output = tmp_path / "out.jsonl"
    args = ("-i", "tasks.jsonl", "-o", "out.jsonl", "-p", "2", "-c", "8", "--base-url",
            mock.base_url)
    proc = start_cli(*args, cwd=tmp_path)
    _wait_for_lines(output, 20, proc)
    # When it gets SIGTERM
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=WAIT_S)
    # Then it exits on its own with the interrupted code, a summary, no torn line, no failure
    # recorded
    assert proc.returncode == 130, stderr
    assert "stopped: interrupted" in stdout
    assert output.read_bytes().endswith(b"\n")
    assert read_jsonl(output.with_name("out.jsonl.errors.jsonl")) == []
    written = len(ids_on_disk(output))
    assert 20 <= written < 300
    # And the rerun does the rest, each id once
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert Counter(ids_on_disk(output)) == Counter(f"t{i}" for i in range(300))


def test_a_second_run_on_a_live_output_is_refused_naming_the_pid(tmp_path: Path,
                                                                 mock: MockServerProcess):
    # Given a live run
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(200))
    mock.configure(latency_ms=200)
    args = ("-i", "tasks.jsonl", "-o", "out.jsonl", "-p", "1", "-c", "4", "--base-url",
            mock.base_url)
    proc = start_cli(*args, cwd=tmp_path)
    try:
        _wait_for_lines(tmp_path / "out.jsonl", 4, proc)
        # When a second run starts on the same output, and status asks
        second = run_cli(*args, cwd=tmp_path)
        live = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--status", "--json", cwd=tmp_path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    # Then the second is refused at once with the live pid; status sees the live run
    assert second.returncode == 4
    assert f"pid {proc.pid}" in second.stderr
    report = orjson.loads(live.stdout)
    assert report["live"] is True and report["live_pid"] == proc.pid and report["done"] >= 4


def test_a_second_ctrl_c_quits_at_once_and_the_rerun_still_finishes(tmp_path: Path,
                                                                    mock: MockServerProcess):
    # Given a run whose requests take 3 s each, so that the grace period would be long
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(60))
    mock.configure(latency_ms=3000)
    output = tmp_path / "out.jsonl"
    args = ("-i", "tasks.jsonl", "-o", "out.jsonl", "-p", "2", "-c", "4", "--base-url",
            mock.base_url)
    proc = start_cli(*args, cwd=tmp_path)
    _wait_for_lines(output, 8, proc)
    # When Ctrl-C comes twice
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=WAIT_S)
    # Then it quits well before the requests in flight could finish, with no torn line and no
    # failures
    assert time.monotonic() - started < 2.5
    assert proc.returncode == 130, stderr
    assert "quitting at once" in stderr
    assert output.read_bytes().endswith(b"\n")
    wait_workers_gone(output)
    # And the rerun finishes the job, each id once
    mock.configure(latency_ms=0)
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert Counter(ids_on_disk(output)) == Counter(f"t{i}" for i in range(60))
