"""Chaos: a run against a faulty server, SIGKILLed at random moments again and again, finished.

The server answers 5% of requests with 429 (Retry-After 0.05 s), 5% with 500, hangs on 2% (the CLI's
``--timeout 1`` turns those into timeouts) and resets the connection on 2%. The CLI's parent is
killed with SIGKILL fifteen times, each time after a random number of new lines (seeded:
``CHAOS_SEED``), and every next start is the resume. In the end every id must be on disk exactly
once, ``--validate`` must agree, and no task whose line was on disk at a kill may have been answered
by the server again afterwards.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from helpers import ids_on_disk, run_cli, start_cli, text_tasks, wait_workers_gone, write_tasks

from mpinfer.mockserver import MockServerProcess

TASKS = 800
KILLS = 15
STARTUP_KILL_SHARE = 0.2
MAX_ROUNDS = 30  # kills plus runs that happened to end on their own before their kill
FINAL_RUNS = 4  # a task can fail after all its retries; a rerun retries it
ROUND_WAIT_S = 20.0
FINAL_RUN_TIMEOUT_S = 90.0
POLL_S = 0.01


def _wait_for_new_lines(output: Path, at_least: int, proc: subprocess.Popen[str],
                        limit_s: float) -> bool:
    """True once the output holds ``at_least`` complete lines; False if the run ended first."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if len(ids_on_disk(output)) >= at_least:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(POLL_S)
    raise AssertionError(f"the run wrote fewer than {at_least} lines in {limit_s}s")


def _reap(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """A finished or killed run's output; its workers hold the pipes until they are gone too."""
    try:
        return proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=5)


def test_a_run_killed_at_random_fifteen_times_against_a_faulty_server_ends_with_every_answer_once(
        tmp_path: Path, mock: MockServerProcess):
    # Given 800 tasks and a server with 30 +/- 15 ms latency that fails 14% of requests in four ways
    tasks = text_tasks(TASKS)
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    prompts = {t["id"]: t["prompt"] for t in tasks}
    mock.configure(latency_ms=30, jitter_ms=15, p429=0.05, retry_after=0.05, p500=0.05, phang=0.02,
                   preset=0.02)
    output = tmp_path / "out.jsonl"
    args = ("-i", "tasks.jsonl", "-o", "out.jsonl", "-p", "3", "-c", "8", "--base-url",
            mock.base_url, "--timeout", "1", "--retry-backoff", "0.05", "--max-retries", "8")
    seed = os.environ.get("CHAOS_SEED", "20261122")
    rng = random.Random(seed)
    started = time.monotonic()
    snapshots: list[tuple[set[str], dict[str, int]]] = []
    kills = 0
    startup_kills = 0
    ended_on_their_own: list[int | None] = []
    # When the run is started and SIGKILLed after a random number of new lines, KILLS times, each
    # start resuming the last
    for _round in range(MAX_ROUNDS):
        if kills >= KILLS:
            break
        on_disk = len(ids_on_disk(output))
        # Spread the kills so that enough tasks are left for all of them; about one in five comes
        # during start-up (lock, tail repair, scan, forking), before any new line
        upper = max(1, (TASKS - on_disk) // (KILLS - kills + 2))
        new_lines = 0 if rng.random() < STARTUP_KILL_SHARE else rng.randint(1, upper)
        proc = start_cli(*args, cwd=tmp_path)
        if new_lines == 0:
            time.sleep(rng.uniform(0.1, 1.0))
            reached = proc.poll() is None
        else:
            reached = _wait_for_new_lines(output, on_disk + new_lines, proc, ROUND_WAIT_S)
            time.sleep(rng.uniform(0, 0.05))
        if reached and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
            startup_kills += new_lines == 0
        _, stderr = _reap(proc)
        if proc.returncode != -signal.SIGKILL:
            # A run that got to its end before the kill may only have finished, or left failed tasks
            assert proc.returncode in (0, 1), stderr
            ended_on_their_own.append(proc.returncode)
        # Then the killed run's workers die with it, and the lines on disk are whole and distinct
        wait_workers_gone(output)
        ids = ids_on_disk(output)
        assert (len(ids)
                == len(set(ids))), f"after kill {kills}: {len(ids) - len(set(ids))} duplicate lines"
        snapshots.append((set(ids), dict(mock.stats()["answered"])))
    assert kills >= KILLS, f"only {kills} kills: the runs ended on their own ({ended_on_their_own})"
    # When the run is finished (rerun until it exits 0: a task may fail after all retries)
    final_codes = []
    for _attempt in range(FINAL_RUNS):
        final = run_cli(*args, cwd=tmp_path, timeout=FINAL_RUN_TIMEOUT_S)
        final_codes.append(final.returncode)
        if final.returncode == 0:
            break
        assert final.returncode == 1, final.stderr  # only "tasks left" may be retried
    assert final_codes[-1] == 0, f"exit codes {final_codes}: {final.stderr}"
    elapsed = time.monotonic() - started
    # Then every id is on disk exactly once
    ids = ids_on_disk(output)
    counts = Counter(ids)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    losses = len(set(prompts) - set(counts))
    stats = mock.stats()
    answered = stats["answered"]
    # And no task whose line was on disk at a kill was answered by the server again afterwards
    answered_again = sorted({i for written, answered_then in snapshots for i in written
                             if answered[prompts[i]] != answered_then[prompts[i]]})
    outcomes = {k: v for k, v in stats["outcomes"].items() if v}
    print(f"\nchaos (seed {seed}): kills {kills} ({startup_kills} during start-up), rounds "
          f"{len(snapshots)}, tasks {TASKS}, duplicates {duplicates}, losses {losses}, answered "
          f"again after written {len(answered_again)}, requests {stats['requests']}, answers "
          f"{sum(answered.values())}, outcomes {outcomes}, final exits {final_codes}, "
          f"{elapsed:.1f}s")
    assert duplicates == 0
    assert losses == 0
    assert counts == Counter(list(prompts))
    assert answered_again == []
    # And the faults really happened, in every kind
    for kind in ("ok", "429", "500", "hang", "reset"):
        assert stats["outcomes"][kind] > 0, kind
    # And validate agrees
    check = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--validate", cwd=tmp_path)
    assert check.returncode == 0, check.stdout
