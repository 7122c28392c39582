"""Scale on one machine: a run's start on ten million tasks, and --status reading the new.

(a) start: a fresh run (empty output) on an N-task input (10,000,000 by default) against the
    mock server with a long latency. Measured: the time from launching the command to the first
    request the mock receives, and the parent's peak RSS (VmHWM of the parent process alone,
    read from /proc when that first request has arrived and again 2 s later; the workers are
    separate processes), with the parent's CPU time by then (less sensitive to the machine's
    load than the wall time). The run is then stopped with SIGINT, as Ctrl-C would. Targets:
    first request within 60 s, parent under 400 MB.
(b) status: ``--status`` on an M-line output (1,000,000 by default) of an M-task input, three times:
    the first call (no cache: reads the input and the whole output), the second (nothing changed:
    the cache beside the output), and a third after 1,000 lines were appended (reads those). Target:
    the second call under 1 s.

    python bench/scale.py                        # 10,000,000 tasks; status on 1,000,000 lines
    python bench/scale.py --tasks 2000000 --lines 200000
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from _common import (
    cli_command,
    cli_env,
    free_disk_gb,
    machine_line,
    poll_stats,
    proc_cpu_s,
    start_mock,
    table,
    write_text_tasks,
)

START_TARGET_S = 60.0
PARENT_TARGET_MB = 400.0
STATUS_TARGET_S = 1.0


def vm_hwm_mb(pid: int) -> float | None:
    """The peak resident set of one process (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_row(mock: Any, folder: Path, tasks: int, timeout_s: float) -> dict[str, Any]:
    """Part (a): a fresh run on ``tasks`` tasks, until its first request; then stopped."""
    print(f"  writing {tasks:,} tasks ...", flush=True)
    path = write_text_tasks(folder / "tasks.jsonl", tasks)
    size_mb = path.stat().st_size / 1e6
    mock.reset()
    started = time.monotonic()
    proc = subprocess.Popen(cli_command("-i", str(path), "-o", str(folder / "results.jsonl"), "-p",
                                        "2", "-c", "1", "--base-url", mock.base_url), cwd=folder,
                            env=cli_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    first_s: float | None = None
    peak_at_first: float | None = None
    cpu_at_first: float | None = None
    deadline = started + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            stats = poll_stats(mock.root_url)
            if stats["requests"] >= 1:
                first_s = stats["first_request_at"] - started
                peak_at_first = vm_hwm_mb(proc.pid)
                cpu_at_first = proc_cpu_s(proc.pid)
                break
            time.sleep(0.1)
        # the feed keeps going: see whether the parent grows after its first request
        time.sleep(2.0)
        peak_after = vm_hwm_mb(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # the process this benchmark started, by its id
            _, err = proc.communicate()
    if first_s is None:
        raise RuntimeError(f"no request within {timeout_s:.0f} s (exit {proc.returncode}):\n"
                           f"{err.decode('utf-8', 'replace')[-2000:]}")
    peak = max(v for v in (peak_at_first, peak_after) if v is not None)
    return {"tasks": tasks, "input MB": round(size_mb), "first request s": round(first_s, 1),
            "parent CPU s then": round(cpu_at_first or 0, 1),
            "parent peak MB": round(peak), "MB at first request": round(peak_at_first or 0),
            "bytes/task": round(peak * 1e6 / tasks, 1)}


def answer_lines(start: int, stop: int) -> bytes:
    """Result lines for tasks ``start`` to ``stop``, in the package's format."""
    return b"".join(orjson.dumps({
        "id": f"t{i}", "input_prompt": f"question {i}", "images": [], "answer": f"answer {i}",
        "model": "m",
        "requested_model": "m",
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        "finish_reason": "stop", "latency_s": 0.5, "attempts": 1, "processed_at": 1.7e9 + i,
        "cost": 1e-6,
    }) + b"\n" for i in range(start, stop))


def timed_status(folder: Path, tasks: Path, output: Path) -> float:
    """Wall seconds of one ``--status`` on ``output``."""
    started = time.monotonic()
    proc = subprocess.run(cli_command("-i", str(tasks), "-o", str(output), "--status", "--model",
                                      "m"), cwd=folder, env=cli_env(), capture_output=True,
                          text=True, timeout=600, check=False)
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"--status exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return took


def status_rows(folder: Path, lines: int) -> list[dict[str, Any]]:
    """Part (b): ``--status`` on a ``lines``-line output, cold, cached, then after 1,000 more
    lines."""
    print(f"  writing {lines:,} tasks and {lines:,} answer lines ...", flush=True)
    tasks = write_text_tasks(folder / "status-tasks.jsonl", lines + 1000)
    output = folder / "status-results.jsonl"
    with output.open("wb") as handle:
        for start in range(0, lines, 10_000):
            handle.write(answer_lines(start, min(lines, start + 10_000)))
    first = timed_status(folder, tasks, output)
    second = timed_status(folder, tasks, output)
    with output.open("ab") as handle:
        handle.write(answer_lines(lines, lines + 1000))
    third = timed_status(folder, tasks, output)
    return [{"call": "first (no cache)", "lines": lines, "s": round(first, 2)},
            {"call": "second (unchanged)", "lines": lines, "s": round(second, 2)},
            {"call": "third (1,000 appended)", "lines": lines + 1000, "s": round(third, 2)}]


def verdict(name: str, value: float, target: float, unit: str) -> str:
    """One target's line: the value, MET or MISSED, and the target."""
    met = "MET" if value < target else "MISSED"
    return f"{name}: {value:g} {unit}: {met} (target < {target:g} {unit})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10_000_000,
                    help="tasks in the start-up input (default 10,000,000)")
    ap.add_argument("--lines", type=int, default=1_000_000,
                    help="output lines for --status (default 1,000,000)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="give up on the first request after this")
    ap.add_argument("--skip-start", action="store_true")
    ap.add_argument("--skip-status", action="store_true")
    args = ap.parse_args()

    print(machine_line())
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores shared)")
    folder = Path(tempfile.mkdtemp(prefix="mpinfer-bench-scale-"))
    verdicts = []
    try:
        needed_gb = (args.tasks * 60 + args.lines * 400) / 1e9 * 1.2
        if free_disk_gb(folder) < needed_gb:
            raise SystemExit(f"needs about {needed_gb:.1f} GB of free disk in {folder}")
        if not args.skip_start:
            with start_mock(latency_ms=3000) as mock:
                row = start_row(mock, folder, args.tasks, args.timeout)
            print()
            print(table([row],
                        title=f"(a) run start on {args.tasks:,} tasks, empty output, -p 2 -c 1"))
            verdicts.append(verdict("first request", row["first request s"], START_TARGET_S, "s"))
            verdicts.append(verdict("parent peak", row["parent peak MB"], PARENT_TARGET_MB, "MB"))
            (folder / "tasks.jsonl").unlink()
        if not args.skip_status:
            rows = status_rows(folder, args.lines)
            print()
            print(table(rows,
                        title=f"(b) --status on a {args.lines:,}-line output "
                        "(wall s, the whole command)"))
            verdicts.append(verdict("second --status", rows[1]["s"], STATUS_TARGET_S, "s"))
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
        for line in verdicts:
            print(line)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
