"""Reading a big input: time and peak memory of the checking pass and of the streaming pass.

Writes N tasks (1,000,000 by default, about 75 MB) and measures, each in its own subprocess:

- ``mpinfer.inputs.check.check_input(path)``: the pass that checks every line
  before anything is sent and keeps only the ids;
- a full ``iter_tasks(path)`` pass (every Task built and dropped: the streaming
  pass a run feeds from);
- a process that only builds the frozenset of the same N ids: the memory the ids alone need, which
  is the bound the checking pass should stay near;
- the bare import, for reference.

"+MB" is the process's VmHWM after the work minus after its imports (the memory the work itself
took); "max RSS MB" is the whole process's peak (from /usr/bin/time).

    python bench/input_read.py                  # 1,000,000 tasks
    python bench/input_read.py --tasks 100000   # a quick try
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from _common import MB, cli_env, machine_line, python_command, run_measured, table

PRELUDE = """
import json, sys, time
from pathlib import Path
def hwm():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0])
from mpinfer.inputs.check import check_input
from mpinfer.inputs.readers import iter_tasks
path = Path(sys.argv[1])
n = int(sys.argv[2])
base = hwm()
t0 = time.perf_counter()
"""
EPILOGUE = """
t1 = time.perf_counter()
print(json.dumps({"s": t1 - t0, "base_kb": base, "peak_kb": hwm(), "count": count}))
"""
STEPS = {
    "import mpinfer.inputs.check and readers only": "count = 0",
    "check_input (keeps the ids)": "index = check_input(path)\ncount = index.total",
    "iter_tasks, full streaming pass": "count = 0\nfor task in iter_tasks(path):\n    count += 1",
    "frozenset of the same ids alone": ("ids = frozenset('r%07d' % i for i in range(n))\n"
                                        "count = len(ids)"),
}


def write_tasks(path: Path, n: int) -> None:
    """Write ``n`` text tasks to ``path``."""
    with path.open("wb") as handle:
        for start in range(0, n, 20_000):
            line = b'{"id":"r%07d","prompt":"question %d: what is shown in the picture?"}\n'
            handle.write(b"".join(line % (i, i) for i in range(start, min(n, start + 20_000))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1_000_000,
                    help="tasks in the input (default 1,000,000)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each step; the fastest is shown (default 1)")
    args = ap.parse_args()

    print(machine_line())
    folder = Path(tempfile.mkdtemp(prefix="mpinfer-bench-input-"))
    try:
        path = folder / "tasks.jsonl"
        write_tasks(path, args.tasks)
        print(f"input: {args.tasks:,} tasks, {path.stat().st_size / MB:.0f} MB (warm page cache)")
        rows = []
        for name, body in STEPS.items():
            best = None
            for _ in range(args.repeat):
                m = run_measured([*python_command(PRELUDE + body + EPILOGUE), str(path),
                                  str(args.tasks)], cwd=folder, env=cli_env(), sample=False,
                                 peak_memory=True, timeout_s=900)
                m.check(name)
                if best is None or m.wall_s < best.wall_s:
                    best = m
            assert best is not None
            inner = json.loads(best.stdout.strip().splitlines()[-1])
            rows.append({"step": name, "s": inner["s"], "wall s": best.wall_s,
                         "+MB": (inner["peak_kb"] - inner["base_kb"]) / 1024,
                         "max RSS MB": best.maxrss / MB, "count": inner["count"]})
        idset = next(r for r in rows if r["step"].startswith("frozenset"))["+MB"]
        for row in rows:
            row["x id set"] = row["+MB"] / idset if idset > 0 else None
        print()
        print(table(rows, ["step", "s", "wall s", "+MB", "x id set", "max RSS MB", "count"],
                    title=f"reading {args.tasks:,} tasks: time inside the "
                    "process, memory over the imports"))
        check = rows[1]
        stream = rows[2]
        print(f"\ncheck_input holds {check['x id set']:.2f}x the id set's memory; the streaming "
              f"pass {stream['+MB']:.1f} MB (independent of N if it streams)")
        verdict = "MET" if check["x id set"] is not None and check["x id set"] <= 1.25 else "MISSED"
        print("memory bounded by the id set (check_input within 1.25x "
              f"of the frozenset alone): {verdict}")
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
