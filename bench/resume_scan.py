"""Resume on a big output: the done-id scan, --status, --validate and a run start on a finished job.

Builds an output of N result lines of about 1 KB each, in the package's result format, and the
matching input of N tasks (N = 1,000,000 by default: about 1.1 GB of disk in a temporary folder,
removed at the end unless --dir is given), then times, each in its own process (peak memory: max RSS
from /usr/bin/time):

(a) the parent's resume scan as a run does it: ``scan(output, within=check_input(input).ids)`` in a
    subprocess (time inside it, after the import and the input check; +RSS: its VmHWM after the scan
    minus after the import, the input's id index included);
(b) ``--status --json`` on the pair, without the status cache (each try removes
    it first: its first call);
(c) ``--validate``;
(d) a full run start on the finished pair: every task done, so it checks the input, scans the output
    and exits without a request (the mock server stands by and counts any).

The files are read from the page cache (they were just written): these are warm-cache numbers.

    python bench/resume_scan.py                    # 1,000,000 lines
    python bench/resume_scan.py --lines 100000     # a quick try
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from _common import (
    MB,
    cli_command,
    cli_env,
    count_lines,
    free_disk_gb,
    machine_line,
    python_command,
    run_measured,
    start_mock,
    table,
)

ID = b"@@ID@@"
SCAN_TARGET_S = 3.0
SCAN_TARGET_MB = 300
VALIDATE_TARGET_S = 10.0

SCAN_CODE = """
import json, sys, time
from pathlib import Path
def hwm():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0])
t0 = time.perf_counter()
from mpinfer.inputs.check import check_input
from mpinfer.store.output import scan
t1 = time.perf_counter()
base = hwm()
index = check_input(Path(sys.argv[2]))
checked = time.perf_counter()
found = scan(Path(sys.argv[1]), within=index.ids)
t2 = time.perf_counter()
peak = hwm()
print(json.dumps({"import_s": t1 - t0, "check_s": checked - t1, "scan_s": t2 - checked,
                  "ids": len(found.done), "lines": found.lines, "bad": len(found.bad_lines),
                  "base_kb": base, "peak_kb": peak}))
"""

BASELINE_CODE = "import mpinfer.cli"


def task_id(i: int) -> bytes:
    """The id of task ``i``."""
    return b"r%07d" % i


def result_template(line_bytes: int) -> list[bytes]:
    """A result line split at its id (twice in it: id and prompt), padded to ``line_bytes``."""
    record = {
        "id": ID.decode(), "input_prompt": f"question {ID.decode()}: what is shown in the picture?",
        "images": ["img/cat.png"], "answer": "", "model": "gpt-4o-mini-2024-07-18",
        "requested_model": "gpt-4o-mini",
        "usage": {"prompt_tokens": 812, "completion_tokens": 164, "total_tokens": 976,
                  "cached_tokens": 0},
        "finish_reason": "stop", "latency_s": 0.8421, "attempts": 1,
        "processed_at": 1795300000.123456,
        "cost": 0.00022020,
    }
    bare = len(orjson.dumps(record)) - 2 * len(ID) + len(task_id(0)) * 2 + 1
    words = "The image shows a small cat sitting on a wooden table next to a window. "
    record["answer"] = (words * (line_bytes // len(words) + 1))[: max(0, line_bytes - bare)]
    return (orjson.dumps(record) + b"\n").split(ID)


def generate(folder: Path, n: int, line_bytes: int) -> tuple[Path, Path]:
    """Write the input and the output, ``n`` tasks and a result line of about ``line_bytes``
    each."""
    tasks = folder / "tasks.jsonl"
    output = folder / "results.jsonl"
    parts = result_template(line_bytes)
    chunk = 20_000
    with tasks.open("wb") as t, output.open("wb") as o:
        for start in range(0, n, chunk):
            ids = [task_id(i) for i in range(start, min(n, start + chunk))]
            line = b'{"id":"%s","prompt":"question %s: what is shown in the picture?"}\n'
            t.write(b"".join(line % (i, i) for i in ids))
            o.write(b"".join(i.join(parts) for i in ids))
    return tasks, output


def measure(name: str, cmd: list[str], folder: Path, repeat: int) -> tuple[dict[str, Any], Any]:
    """The best of ``repeat`` runs of ``cmd`` (by wall time), as a table row."""
    best = None
    for _ in range(repeat):
        for cache in folder.glob(".*.status-cache"):
            cache.unlink()  # status would read only what is new: measure the full read
        m = run_measured(cmd, cwd=folder, env=cli_env(), sample=False, timeout_s=900,
                         peak_memory=True)
        if best is None or m.wall_s < best.wall_s:
            best = m
    assert best is not None
    return {"step": name, "wall s": best.wall_s, "CPU s": best.cpu_s,
            "max RSS MB": best.maxrss / MB, "exit": best.returncode}, best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000,
                    help="result lines and tasks (default 1,000,000)")
    ap.add_argument("--line-bytes", type=int, default=1024,
                    help="size of a result line (default 1024)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each step; the fastest is shown (default 1)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="keep the files here and reuse them when they are "
                    "there already (default: a temp dir)")
    args = ap.parse_args()

    print(machine_line())
    folder = args.dir or Path(tempfile.mkdtemp(prefix="mpinfer-bench-scan-"))
    folder.mkdir(parents=True, exist_ok=True)
    need_gb = args.lines * (args.line_bytes + 70) / 1e9
    print(f"files: {folder} (about {need_gb:.2f} GB of disk; {free_disk_gb(folder):.0f} GB free)")
    if free_disk_gb(folder) < need_gb * 1.2 + 1:
        print("not enough free disk", file=sys.stderr)
        return 2
    try:
        tasks, output = folder / "tasks.jsonl", folder / "results.jsonl"
        started = time.monotonic()
        if args.dir and count_lines(output) == args.lines and count_lines(tasks) == args.lines:
            print("reusing the files there")
        else:
            tasks, output = generate(folder, args.lines, args.line_bytes)
            print(
                f"generated in {time.monotonic() - started:.1f} s: output "
                f"{output.stat().st_size / MB:,.0f} MB, input {tasks.stat().st_size / MB:,.0f} MB")
        for companion in folder.glob("results.jsonl.*"):
            companion.unlink()  # a run start (d) writes a manifest; start each try clean

        rows = []
        row, _ = measure("baseline: python -c 'import mpinfer.cli'", python_command(BASELINE_CODE),
                         folder, args.repeat)
        rows.append(row)

        row, m = measure("(a) store.scan(output, within=ids), in a subprocess",
                         [*python_command(SCAN_CODE), str(output), str(tasks)],
                         folder, args.repeat)
        m.check("scan")
        inner = json.loads(m.stdout.strip().splitlines()[-1])
        row["inside s"] = inner["scan_s"]
        row["+RSS MB"] = (inner["peak_kb"] - inner["base_kb"]) / 1024
        row["check"] = f"{inner['ids']:,} ids, {inner['bad']} bad"
        rows.append(row)
        scan_row = row

        paths = ["-i", str(tasks), "-o", str(output)]
        row, m = measure("(b) --status --json", cli_command(*paths, "--status", "--json"), folder,
                         args.repeat)
        m.check("--status")
        report = json.loads(m.stdout)
        row["check"] = f"done {report['done']:,} of {report['total']:,}"
        rows.append(row)

        row, m = measure("(c) --validate", cli_command(*paths, "--validate"), folder, args.repeat)
        m.check("--validate")
        row["check"] = m.stdout.strip().splitlines()[0][:60] if m.stdout.strip() else ""
        rows.append(row)
        validate_row = row

        with start_mock() as mock:
            row, m = measure("(d) run start on the finished pair",
                             cli_command(*paths, "--base-url", mock.base_url, "-p", "4", "-c", "8"),
                             folder, args.repeat)
            m.check("run")
            requests = mock.stats()["requests"]
        row["check"] = f"{requests} requests; " + (m.stdout.strip().splitlines()[0][:50]
                                                   if m.stdout.strip() else "")
        rows.append(row)

        print()
        print(table(rows,
                    ["step", "wall s", "inside s", "CPU s", "max RSS MB", "+RSS MB", "exit",
                     "check"],
                    title=f"resume scan: {args.lines:,} result lines of ~{args.line_bytes} B "
                    f"and {args.lines:,} tasks (warm page cache)"))
        print()
        ok_scan = scan_row["inside s"] < SCAN_TARGET_S and scan_row["max RSS MB"] < SCAN_TARGET_MB
        print(f"(a) scan: {scan_row['inside s']:.2f} s inside ({scan_row['wall s']:.2f} s with the "
              f"interpreter), max RSS {scan_row['max RSS MB']:.0f} MB: "
              f"{'MET' if ok_scan else 'MISSED'} (target < {SCAN_TARGET_S:.0f} s and < "
              f"{SCAN_TARGET_MB} MB)")
        ok_val = validate_row["wall s"] < VALIDATE_TARGET_S
        print(f"(c) validate: {validate_row['wall s']:.2f} s: {'MET' if ok_val else 'MISSED'} "
              f"(target < {VALIDATE_TARGET_S:.0f} s)")
        return 0
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
