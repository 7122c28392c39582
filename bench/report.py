"""--report on a big output: how long the HTML report of a million-line output takes, and its size.

Builds an output of N result lines (N = 1,000,000 by default, about 400 MB) written over three runs
of an hour each (the manifest records them), with 2% failures in the errors file, retries of several
kinds, refusals and truncated answers, and the matching input; then times, each in its own process
(peak memory: max RSS from /usr/bin/time):

(a) ``--report`` with the input there (so the report runs --validate too, reading the output twice);
(b) ``--report`` without the input (charts and tables only: no validate).

    python bench/report.py                    # 1,000,000 lines
    python bench/report.py --lines 100000     # a quick try
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from _common import MB, cli_command, cli_env, free_disk_gb, machine_line, run_measured, table

# "within seconds" for a million lines, validate included, on a loaded 2-core machine
TARGET_S = 20.0
RUN_S = 3600.0
T0 = 1795300000.0
KINDS = ("rate_limit", "server_error", "timeout", "connection")


def generate(folder: Path, n: int) -> tuple[Path, Path]:
    """Write the input, output, errors and runs files of ``n`` tasks over three runs."""
    tasks, output = folder / "tasks.jsonl", folder / "results.jsonl"
    errors = folder / "results.jsonl.errors.jsonl"
    runs = folder / "results.jsonl.runs.jsonl"
    step = 3 * RUN_S / n
    with tasks.open("wb") as t, output.open("wb") as o, errors.open("wb") as e:
        for start in range(0, n, 20_000):
            t_lines, o_lines, e_lines = [], [], []
            for i in range(start, min(n, start + 20_000)):
                tid = f"r{i:07d}"
                t_lines.append(orjson.dumps({"id": tid, "prompt": f"question {tid}"}) + b"\n")
                at = T0 + i * step
                if i % 50 == 7:
                    failure = {"id": tid, "error_type": KINDS[i % 4], "status": 500,
                               "message": "boom", "attempts": 4, "processed_at": at}
                    e_lines.append(orjson.dumps(failure) + b"\n")
                    continue
                record: dict[str, Any] = {
                    "id": tid, "input_prompt": f"question {tid}", "images": [],
                    "answer": "a cat " * 40,
                    "model": "gpt-4o-mini-2024-07-18", "requested_model": "gpt-4o-mini",
                    "usage": {"prompt_tokens": 812, "completion_tokens": 164, "total_tokens": 976},
                    "finish_reason": "length" if i % 97 == 0 else "stop",
                    "latency_s": 0.5 + (i % 13) / 10,
                    "attempts": 1 + (i % 31 == 0), "processed_at": at, "cost": 0.0002202,
                    "refusal": "I can't help with that." if i % 89 == 0 else None,
                }
                if i % 31 == 0:
                    record["retries"] = {KINDS[i % 4]: 1}
                o_lines.append(orjson.dumps(record) + b"\n")
            t.write(b"".join(t_lines))
            o.write(b"".join(o_lines))
            e.write(b"".join(e_lines))
    with runs.open("wb") as r:
        for k in range(3):
            start = {"event": "start", "run_id": f"run-{k}", "started_at": T0 + k * RUN_S - 1,
                     "ended_at": None,
                     "argv": ["mpinfer", "-i", "tasks.jsonl", "-o", "results.jsonl"],
                     "settings": {"model": "gpt-4o-mini", "rpm": 30000, "key_count": 1},
                     "version": "bench", "input": None, "outputs": {}}
            r.write(orjson.dumps(start) + b"\n")
            r.write(orjson.dumps({**start, "event": "end", "ended_at": T0 + (k + 1) * RUN_S,
                                  "counts": {"done": n}}) + b"\n")
    return tasks, output


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000,
                    help="result lines and tasks (default 1,000,000)")
    args = ap.parse_args()
    print(machine_line())
    folder = Path(tempfile.mkdtemp(prefix="mpinfer-bench-report-"))
    need_gb = args.lines * 520 / 1e9
    if free_disk_gb(folder) < need_gb * 1.2 + 1:
        print("not enough free disk", file=sys.stderr)
        return 2
    try:
        began = time.monotonic()
        tasks, output = generate(folder, args.lines)
        print(f"generated in {time.monotonic() - began:.1f} s: output "
              f"{output.stat().st_size / MB:,.0f} MB")
        rows = []
        for name, paths in (("(a) --report, validate included",
                             ["-i", str(tasks), "-o", str(output)]),
                            ("(b) --report, no input: no validate", ["-o", str(output)])):
            m = run_measured(cli_command(*paths, "--report"), cwd=folder, env=cli_env(),
                             sample=False, timeout_s=600, peak_memory=True)
            m.check(name)
            page = folder / "results.jsonl.report.html"
            rows.append({"step": name, "wall s": m.wall_s, "CPU s": m.cpu_s,
                         "max RSS MB": m.maxrss / MB, "page MB": page.stat().st_size / MB,
                         "check": m.stdout.strip()[:70]})
            page.unlink()
        print()
        print(table(rows, ["step", "wall s", "CPU s", "max RSS MB", "page MB", "check"],
                    title=f"report: {args.lines:,} result lines over 3 runs (warm page cache)"))
        worst = max(row["wall s"] for row in rows)
        met = "MET" if worst < TARGET_S else "MISSED"
        print(f"\nslowest: {worst:.1f} s: {met} (target < {TARGET_S:.0f} s)")
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
