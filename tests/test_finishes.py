"""It finishes: runs against servers like the real ones end in one go, exit 0, every id once.

Each case is a server the way a real one limits or fails (quantized per-second enforcement of a
per-minute limit, limits stated in headers, LiteLLM's and no hints at all, a server at capacity, an
outage, a body that trickles), the real CLI in its own process, and short windows so each test takes
a few seconds.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path

from helpers import lines_written, read_jsonl, run_cli, start_cli, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess


def _ids(path: Path) -> Counter[str]:
    return Counter(row["id"] for row in read_jsonl(path))


def _finishes(tmp_path: Path, mock: MockServerProcess, n: int, *args: str) -> tuple[str, dict]:
    """Run ``n`` tasks in one go and assert exit 0 and every id exactly once.

    Returns what it printed and the server's stats.
    """
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(n))
    proc = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--base-url", mock.base_url,
                   "--retry-backoff", "0.1", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _ids(tmp_path / "out.jsonl") == Counter(f"t{i}" for i in range(n))
    assert (not (tmp_path / "out.jsonl.errors.jsonl").exists()
            or not read_jsonl(tmp_path / "out.jsonl.errors.jsonl"))
    return proc.stdout + proc.stderr, mock.stats()


def test_a_quantized_server_at_exactly_our_rpm_sees_almost_no_429s(tmp_path: Path,
                                                                   mock: MockServerProcess):
    # Given a server that enforces 120 requests per 4 s as a bucket of 30 a second (burst 30)
    mock.configure(rpm=120, window_s=4.0, quantum_s=1.0, latency_ms=30)
    # When 150 tasks run with --rpm 120 over the same window, 4 processes x 8 in flight
    _, stats = _finishes(tmp_path, mock, 150, "--rpm", "120", "--rate-window", "4", "-p", "4", "-c",
                         "8", "--max-retries", "1")
    # Then the pace kept the server's bucket from running dry: hardly a 429
    print(f"quantized: {stats['requests']} requests, {stats['limit_rejections']} refused")
    assert stats["limit_rejections"] <= 0.03 * stats["requests"]


def test_without_rpm_the_limit_the_server_states_is_learned_and_kept(tmp_path: Path,
                                                                     mock: MockServerProcess):
    # Given the same quantized server, which states its limit (x-ratelimit-limit-requests: 120) on
    # every answer
    mock.configure(rpm=120, window_s=4.0, quantum_s=1.0, latency_ms=30)
    # When 150 tasks run with no --rpm at all
    printed, stats = _finishes(tmp_path, mock, 150, "--rate-window", "4", "-p", "4", "-c", "8",
                              "--max-retries", "0")
    # Then, with no retry allowed, every task still finished: the 429s before the limit was learned
    # were waited out, not counted as retries; and they were few
    print(f"learned: {stats['requests']} requests, {stats['limit_rejections']} refused")
    assert stats["limit_rejections"] <= 0.15 * stats["requests"]
    # And the summary and --status say which limit was in force, and where it came from
    assert "120 requests/4s (server)" in printed
    status = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--status", cwd=tmp_path).stdout
    assert "120 requests/4s (server)" in status


def test_litellm_style_429s_with_only_llm_provider_retry_after_are_waited_out(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a server that refuses beyond 20 requests per 2 s and says only
    # "llm_provider-retry-after: N"
    mock.configure(rpm=20, window_s=2.0, limit_style="litellm", latency_ms=20)
    # When 40 tasks run with no --rpm and no retries allowed
    _, stats = _finishes(tmp_path, mock, 40, "-p", "2", "-c", "8", "--max-retries", "0")
    # Then they all finished in the one run, the refusals having been waited out
    assert stats["limit_rejections"] > 0


def test_429s_with_no_hint_at_all_lower_the_rate_until_the_run_finishes(tmp_path: Path,
                                                                        mock: MockServerProcess):
    # Given a server that allows 30 requests per 2 s (bucket of 7.5 per half second) and gives no
    # hint at all
    mock.configure(rpm=30, window_s=2.0, quantum_s=0.5, limit_style="none", latency_ms=20)
    # When 60 tasks run with no --rpm and no retries allowed
    printed, stats = _finishes(tmp_path, mock, 60, "-p", "2", "-c", "8", "--max-retries", "0")
    # Then the rate was learned (AIMD) and every task finished
    assert stats["limit_rejections"] > 0
    assert "(learned)" in printed


def test_a_server_at_capacity_refusing_beyond_four_in_flight_finishes(tmp_path: Path,
                                                                      mock: MockServerProcess):
    # Given a server that refuses, with no hint, anything beyond 4 requests in flight
    mock.configure(max_concurrent=4, latency_ms=40, limit_style="none")
    # When 120 tasks run with 16 in flight asked for
    _, stats = _finishes(tmp_path, mock, 120, "-p", "2", "-c", "8", "--max-retries", "0")
    # Then they all finished
    assert stats["limit_rejections"] > 0


def test_random_429s_do_not_use_up_the_retries(tmp_path: Path, mock: MockServerProcess):
    # Given a server that answers 30% of requests with a 429 (Retry-After 0.05 s)
    mock.configure(p429=0.3, retry_after=0.05, latency_ms=10)
    # When 80 tasks run with no retries allowed
    _, stats = _finishes(tmp_path, mock, 80, "-p", "2", "-c", "4", "--max-retries", "0")
    # Then every task finished: a 429 is a wait, not a failure
    assert stats["outcomes"]["429"] > 10


def test_a_server_that_goes_away_for_four_seconds_is_waited_for(tmp_path: Path,
                                                                mock: MockServerProcess):
    # Given 200 tasks against a server with 20 ms latency
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(200))
    mock.configure(latency_ms=20)
    proc = start_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--base-url", mock.base_url, "-p", "2",
                     "-c", "4", "--retry-backoff", "0.1", cwd=tmp_path)
    deadline = time.monotonic() + 30
    while (lines_written(tmp_path / "out.jsonl") < 30 and time.monotonic() < deadline
           and proc.poll() is None):
        time.sleep(0.02)
    # When the server goes away for 4 s mid-run (connections refused) and comes back on the same
    # port
    mock.outage(4.0)
    came_back = time.monotonic() + 4.05
    # Then --status, asked meanwhile, says the run is waiting for the server
    said = ""
    while "waiting for the server since" not in said and time.monotonic() < came_back - 0.5:
        time.sleep(0.3)
        said = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--status", cwd=tmp_path).stdout
    assert "waiting for the server since" in said
    _stdout, stderr = proc.communicate(timeout=90)
    finished = time.monotonic()
    # Then the run waited, said so, and finished once the server was back: exit 0, every id once
    assert proc.returncode == 0, stderr[-3000:]
    assert _ids(tmp_path / "out.jsonl") == Counter(f"t{i}" for i in range(200))
    assert "waiting for the server since" in stderr
    assert finished - came_back < 20


def test_a_body_that_trickles_is_cut_off_at_the_timeout_on_both_transports(tmp_path: Path,
                                                                          mock: MockServerProcess):
    for transport in ("aiohttp", "httpx"):
        # Given a server that sends three tasks' headers at once and their bodies at 1 byte a second
        mock.reset()
        mock.configure(script={f"question t{i}: what is {i} + {i}?": ["slow"] for i in (1, 5, 9)})
        out = tmp_path / transport
        out.mkdir()
        write_tasks(out / "tasks.jsonl", text_tasks(12))
        started = time.monotonic()
        # When 12 tasks run with --timeout 1.5
        proc = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--base-url", mock.base_url,
                       "--timeout", "1.5", "--retry-backoff", "0.1", "--transport", transport, "-p",
                       "1", "-c", "4", cwd=out)
        elapsed = time.monotonic() - started
        # Then each slow answer was cut off at the deadline and retried: one run, exit 0, every id
        # once
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert _ids(out / "out.jsonl") == Counter(f"t{i}" for i in range(12))
        assert mock.stats()["outcomes"]["slow"] == 3
        assert elapsed < 30, transport


def _workers(pid: int) -> list[int]:
    """The worker processes of a run (the CLI's children)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def _kill_workers_mid_run(tmp_path: Path, mock: MockServerProcess, n: int, *args: str) -> None:
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(n))
    proc = start_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--base-url", mock.base_url, "-p", "1",
                     "-c", "4", "--retry-backoff", "0.1", *args, cwd=tmp_path)
    kills = 0
    deadline = time.monotonic() + 60
    # Kill the worker twice (-p 1: before the fix, two deaths leaked every limiter slot and the run
    # hung)
    while kills < 2 and time.monotonic() < deadline and proc.poll() is None:
        # Whole lines only: the worker may be in the middle of a line, or have been killed in it
        # (the next append moves a torn line aside).
        out = tmp_path / "out.jsonl"
        done = out.read_bytes().count(b"\n") if out.exists() else 0
        workers = _workers(proc.pid)
        if workers and done >= 10 * (kills + 1):
            os.kill(workers[0], signal.SIGKILL)
            kills += 1
            time.sleep(0.3)
        time.sleep(0.02)
    _stdout, stderr = proc.communicate(timeout=90)
    assert kills == 2, stderr[-2000:]
    assert proc.returncode == 0, stderr[-3000:]
    assert _ids(tmp_path / "out.jsonl") == Counter(f"t{i}" for i in range(n))


def test_a_worker_killed_twice_under_rpm_gives_back_its_slots(tmp_path: Path,
                                                              mock: MockServerProcess):
    # Given a server with 50 ms latency and a run under --rpm with 1 process x 4 in flight
    mock.configure(latency_ms=50)
    # When its worker is SIGKILLed twice while requests are in flight
    # Then the replacements go on and the run finishes with every id once
    _kill_workers_mid_run(tmp_path, mock, 60, "--rpm", "600", "--rate-window", "4")


def test_a_worker_killed_twice_under_tpm_gives_back_its_slots(tmp_path: Path,
                                                              mock: MockServerProcess):
    mock.configure(latency_ms=50)
    _kill_workers_mid_run(tmp_path, mock, 60, "--tpm", "20000", "--rate-window", "4",
                          "--max-tokens", "20")


def test_a_worker_killed_twice_under_aimd_gives_back_its_slots(tmp_path: Path,
                                                               mock: MockServerProcess):
    # Given a server at capacity (no hints), so the concurrency limit is learned (AIMD)
    mock.configure(latency_ms=50, max_concurrent=3, limit_style="none")
    _kill_workers_mid_run(tmp_path, mock, 60)


def test_a_task_rate_limited_beyond_the_patience_fails_saying_so(tmp_path: Path,
                                                                 mock: MockServerProcess):
    # Given a server that refuses one task with 429s (Retry-After 0.05 s) for ever
    mock.configure(script={"question t3: what is 3 + 3?": ["429"] * 1000}, retry_after=0.05)
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(6))
    # When the run goes with a patience of 2 s
    proc = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--base-url", mock.base_url,
                   "--patience", "2", "-p", "1", "-c", "2", cwd=tmp_path)
    # Then the others are answered and that one fails after about 2 s, its failure line saying why
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert _ids(tmp_path / "out.jsonl") == Counter(f"t{i}" for i in range(6) if i != 3)
    [failure] = read_jsonl(tmp_path / "out.jsonl.errors.jsonl")
    assert failure["id"] == "t3" and failure["error_type"] == "rate_limit"
    assert "still rate limited after waiting" in failure["message"]
    assert "--patience 2" in failure["message"]


def test_a_server_that_never_answers_fails_the_tasks_after_the_patience(tmp_path: Path):
    # Given a base URL where nothing listens (every connection refused)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(4))
    started = time.monotonic()
    # When the run goes with a patience of 2 s
    proc = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--base-url",
                   f"http://127.0.0.1:{port}/v1", "--patience", "2", "--retry-backoff", "0.1", "-p",
                   "1", "-c", "2", cwd=tmp_path)
    # Then it waited for the server (said so) and, after the patience, failed the tasks saying since
    # when
    assert proc.returncode == 1, proc.stderr[-2000:]
    failures = read_jsonl(tmp_path / "out.jsonl.errors.jsonl")
    assert sorted(f["id"] for f in failures) == [f"t{i}" for i in range(4)]
    assert any("has not answered since" in f["message"] for f in failures)
    assert time.monotonic() - started < 60
