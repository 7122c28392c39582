"""Run every benchmark in turn (never two at once: 2 cores) and print all their tables.

By default the sizes are modest so that the whole set takes about 10 minutes on a 2-core machine;
--full uses the sizes the issue names (3,000 tasks a throughput row and 6,000 for the 600-in-flight
rows, 1,000,000 lines for the scan and input benchmarks, a 10,000,000-task run start and --status on
1,000,000 lines, about 2.5 GB of temporary disk).

    python bench/run_all.py                 # modest sizes
    python bench/run_all.py --full          # the issue's sizes
    python bench/run_all.py --only startup,images --report bench-report.txt
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

MODEST = {
    "throughput": ["--tasks", "1500", "--target-tasks", "3000"],
    "client_cpu": [],
    "http_stack": [],
    "sdk_floor": ["--requests", "6000"],
    "startup": [],
    "resume_scan": ["--lines", "200000"],
    "input_read": ["--tasks", "300000"],
    "images": ["--tasks", "300", "--distinct", "120", "--strace"],
    "parquet_input": [],
    "batch_merge": ["--rows", "10000"],
    "scale": ["--tasks", "2000000", "--lines", "200000"],
    "report": ["--lines", "200000"],
    "limits": [],
    "judge": ["--tasks", "2000"],
}
FULL = {
    "throughput": ["--tasks", "3000", "--target-tasks", "6000"],
    "client_cpu": ["--tasks", "20000", "--configs", "1x100,2x300,4x150"],
    "http_stack": ["--requests", "12000"],
    "sdk_floor": [],
    "startup": [],
    "resume_scan": ["--lines", "1000000"],
    "input_read": ["--tasks", "1000000"],
    "images": ["--tasks", "500", "--distinct", "200", "--strace"],
    "parquet_input": ["--full"],
    "batch_merge": ["--rows", "50000"],
    "scale": ["--tasks", "10000000", "--lines", "1000000"],
    "report": ["--lines", "1000000"],
    "limits": [],
    "judge": ["--tasks", "100000"],
}
LIMIT_S = 1800.0


def run_one(name: str, args: list[str]) -> tuple[int, list[str], float]:
    """Run one benchmark script, echoing its output; its exit code, lines and wall seconds."""
    cmd = [sys.executable, str(HERE / f"{name}.py"), *args]
    print(f"\n===== {name}: {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    lines: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    assert proc.stdout is not None
    # each script bounds its own runs; this bounds the script
    watchdog = threading.Timer(LIMIT_S, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:  # ends when the script exits (or is killed)
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        code = proc.wait(timeout=60)
    finally:
        watchdog.cancel()
    if time.monotonic() - started >= LIMIT_S:
        lines.append(f"(killed after {LIMIT_S:.0f} s)")
    return code, lines, time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the issue's sizes (default: modest ones)")
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(MODEST))
    ap.add_argument("--report", type=Path, default=None, help="also write every table to this file")
    args = ap.parse_args()

    sizes = FULL if args.full else MODEST
    chosen = [n for n in sizes if not args.only or n in args.only.split(",")]
    results = []
    started = time.monotonic()
    for name in chosen:
        results.append((name, *run_one(name, sizes[name])))
    header = (f"mpinfer benchmarks ({'full' if args.full else 'modest'} sizes), "
              f"{time.strftime('%Y-%m-%d %H:%M')}, {time.monotonic() - started:.0f} s in all")
    report = [header]
    for name, code, lines, took in results:
        report.append(f"\n===== {name} ({took:.0f} s, exit {code}) {' '.join(sizes[name])}")
        report.extend(line for line in lines if not line.startswith("  running"))
    text = "\n".join(report)
    print("\n\n" + text)
    if args.report:
        args.report.write_text(text + "\n")
    return 0 if all(code == 0 for _, code, _, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
