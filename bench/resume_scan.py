"""Resume on a big finished job: a rerun with nothing to do, --status and --validate, against the
floor of Python iterating the output's lines, measured in the same run (issue 25, goal 1).

Builds an output of N result lines of about 1 KB each, in the package's result format (in the
input's order but shuffled within windows of 32, as answers in flight finish), and the matching
input of N tasks (N = 1,000,000 by default: about 1.1 GB of disk in a temporary folder,
removed at the end unless --dir is given), then times, each in its own process (the whole command,
interpreter start and imports included; peak memory of the parent from /usr/bin/time):

- floor: ``for line in open(output, "rb"): pass``, timed inside its process (the strictest floor);
- (a) a rerun that finds nothing to do, the output unchanged since mpinfer last read it: the
  input's id index and the output's done index beside the output are current (goal: 1x the floor);
- (b) a rerun on an output mpinfer never saw (its done index removed; the input's index kept):
  goal 4x;
- (c) a rerun with nothing kept at all (the first rerun after an upgrade): the input is checked and
  the output read whole (reported against 4x too);
- (d) the first ``--status --json`` (no status cache; the output's done index, which a run
  keeps current, is there): goal 4x;
- (e) ``--validate``: goal 6x;
- (f) the first ``--status --json`` of an output no run indexed (no done index either: the ids
  are looked up too), reported against 4x.

Every rerun runs against the mock server, which counts any request (there must be none). Each row
is the fastest of --repeat tries, the floor too. The files are read from the page cache (they were
just written): these are warm-cache numbers. Ten million lines (--lines 10000000, about 11 GB) also
checks the parent's peak under 400 MB.

    python bench/resume_scan.py                    # 1,000,000 lines
    python bench/resume_scan.py --lines 100000     # a quick try
    python bench/resume_scan.py --spaced-input     # the input as json.dumps writes it
    python bench/resume_scan.py --lines 10000000 --steps ab --repeat 1   # ten million
"""

from __future__ import annotations

import argparse
import json
import random
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
LATENCY = b"0.8421"  # in the template: each line gets a latency of its own
GOALS = {"a": 1.0, "b": 4.0, "c": 4.0, "d": 4.0, "e": 6.0, "f": 4.0}  # x the floor
PARENT_TARGET_MB = 400
IN_FLIGHT = 32  # answers written out of order within windows of this many (-p 4 -c 8 in flight)

FLOOR_CODE = """
import sys, time
t0, c0 = time.perf_counter(), time.process_time()
for line in open(sys.argv[1], "rb"):
    pass
print(time.perf_counter() - t0, time.process_time() - c0)
"""


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
        "finish_reason": "stop", "latency_s": float(LATENCY), "attempts": 1,
        "processed_at": 1795300000.123456,
        "cost": 0.00022020,
    }
    bare = len(orjson.dumps(record)) - 2 * len(ID) + len(task_id(0)) * 2 + 1
    words = "The image shows a small cat sitting on a wooden table next to a window. "
    record["answer"] = (words * (line_bytes // len(words) + 1))[: max(0, line_bytes - bare)]
    return (orjson.dumps(record) + b"\n").split(ID)


def in_flight_order(ids: list[bytes], rng: random.Random) -> list[bytes]:
    """``ids`` in the order a run writes their answers: the input's, shuffled within windows of
    ``IN_FLIGHT`` (the answers in flight finish in any order)."""
    out: list[bytes] = []
    for start in range(0, len(ids), IN_FLIGHT):
        window = ids[start:start + IN_FLIGHT]
        rng.shuffle(window)
        out.extend(window)
    return out


def task_line(spaced: bool) -> bytes:
    """A task's line, its id twice in it: compact, or spaced as Python's json.dumps writes it."""
    if spaced:
        return b'{"id": "%s", "prompt": "question %s: what is shown in the picture?"}\n'
    return b'{"id":"%s","prompt":"question %s: what is shown in the picture?"}\n'


def write_tasks(tasks: Path, n: int, spaced: bool) -> None:
    """Write the input alone (a reused folder's, in the other form)."""
    line = task_line(spaced)
    with tasks.open("wb") as t:
        for start in range(0, n, 20_000):
            ids = [task_id(i) for i in range(start, min(n, start + 20_000))]
            t.write(b"".join(line % (i, i) for i in ids))


def generate(folder: Path, n: int, line_bytes: int, spaced: bool) -> tuple[Path, Path]:
    """Write the input and the output, ``n`` tasks and a result line of about ``line_bytes``
    each."""
    tasks = folder / "tasks.jsonl"
    output = folder / "results.jsonl"
    parts = result_template(line_bytes)
    chunk = 20_000
    rng = random.Random(25)
    line = task_line(spaced)
    with tasks.open("wb") as t, output.open("wb") as o:
        for start in range(0, n, chunk):
            ids = [task_id(i) for i in range(start, min(n, start + chunk))]
            t.write(b"".join(line % (i, i) for i in ids))
            # each answer's own latency, as a real output has them (their percentiles are sorted)
            o.write(b"".join(i.join(parts).replace(LATENCY, b"%.4f" % rng.uniform(0.3, 3.0))
                             for i in in_flight_order(ids, rng)))
    return tasks, output


def measure(name: str, cmd: list[str], folder: Path, repeat: int,
            prepare: Any = None) -> tuple[dict[str, Any], Any]:
    """The best of ``repeat`` runs of ``cmd`` (by wall time), as a table row; ``prepare()`` runs
    before each (it removes what the row must not find)."""
    best = None
    for _ in range(repeat):
        if prepare is not None:
            prepare()
        m = run_measured(cmd, cwd=folder, env=bench_env(folder), sample=False, timeout_s=3600,
                         peak_memory=True)
        if best is None or m.wall_s < best.wall_s:
            best = m
    assert best is not None
    return {"step": name, "s": best.wall_s, "CPU s": best.cpu_s,
            "parent peak MB": best.maxrss / MB, "exit": best.returncode}, best


def bench_env(folder: Path) -> dict[str, str]:
    """The CLI's environment, with its bytecode cached (in ``folder``, not the checkout) as an
    installed package's is: a rerun of a few tenths of a second must not compile mpinfer first."""
    env = cli_env({"PYTHONPYCACHEPREFIX": str(folder / "pycache")})
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def remove(folder: Path, *patterns: str) -> Any:
    """A ``prepare`` that removes the files matching ``patterns`` in ``folder``."""
    def prepare() -> None:
        for pattern in patterns:
            for path in folder.glob(pattern):
                path.unlink()
    return prepare


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000,
                    help="result lines and tasks (default 1,000,000)")
    ap.add_argument("--line-bytes", type=int, default=1024,
                    help="size of a result line (default 1024)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of each step; the fastest is shown (default 2)")
    ap.add_argument("--steps", default="abcdef",
                    help="the rows to measure (default abcdef; e.g. ab for ten million lines)")
    ap.add_argument("--spaced-input", action="store_true",
                    help='the input as Python\'s json.dumps writes it ({"id": "r0", ...}), as '
                    "most users make theirs (default: compact)")
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
            with tasks.open("rb") as head:
                if head.read(7) != task_line(args.spaced_input)[:7]:
                    write_tasks(tasks, args.lines, args.spaced_input)
        else:
            tasks, output = generate(folder, args.lines, args.line_bytes, args.spaced_input)
            print(
                f"generated in {time.monotonic() - started:.1f} s: output "
                f"{output.stat().st_size / MB:,.0f} MB, input {tasks.stat().st_size / MB:,.0f} MB")
        for stale in [*folder.glob("results.jsonl.*"), *folder.glob(".results.jsonl.*")]:
            if stale.is_file():
                stale.unlink()  # a clean start: no manifest, index or cache of a try before

        floors = []
        for _ in range(max(args.repeat, 2)):
            m = run_measured([*python_command(FLOOR_CODE), str(output)], cwd=folder,
                             env=bench_env(folder), sample=False)
            m.check("floor")
            wall, cpu = m.stdout.strip().splitlines()[-1].split()
            floors.append((float(wall), float(cpu)))
        floor, floor_cpu = min(floors)
        rows: list[dict[str, Any]] = [{"step": "floor: for line in open(output, 'rb'): pass",
                                       "s": floor, "x floor": 1.0, "CPU s": floor_cpu,
                                       "CPU x floor": 1.0}]
        paths = ["-i", str(tasks), "-o", str(output)]
        with start_mock() as mock:
            run = cli_command(*paths, "--base-url", mock.base_url, "-p", "4", "-c", "8")
            # the first rerun keeps both indexes; (a) then finds them current
            measure("first rerun", run, folder, 1)[1].check("first rerun")
            steps = [
                ("a", "(a) rerun, nothing to do, indexes current", run, None),
                ("b", "(b) rerun of a never-seen output (input index kept)", run,
                 remove(folder, ".results.jsonl.done-index")),
                ("c", "(c) rerun with nothing kept (input checked, output read)", run,
                 remove(folder, ".results.jsonl.done-index", ".results.jsonl.input-index")),
                ("d", "(d) first --status --json (no status cache)",
                 cli_command(*paths, "--status", "--json"), remove(folder, ".*.status-cache*")),
                ("e", "(e) --validate", cli_command(*paths, "--validate"), None),
                ("f", "(f) first --status of an output no run indexed",
                 cli_command(*paths, "--status", "--json"),
                 remove(folder, ".*.status-cache*", ".results.jsonl.done-index")),
            ]
            for goal, name, cmd, prepare in [step for step in steps if step[0] in args.steps]:
                row, m = measure(name, cmd, folder, args.repeat, prepare)
                row["goal"] = GOALS[goal]
                if goal in "abc":
                    m.check(name)
                    row["check"] = f"{mock.stats()['requests']} requests"
                elif goal in "df":
                    m.check(name)
                    report = json.loads(m.stdout)
                    row["check"] = f"done {report['done']:,} of {report['total']:,}"
                else:
                    row["check"] = (m.stdout.strip().splitlines()[0][:40]
                                    if m.stdout.strip() else "")
                rows.append(row)
        for row in rows[1:]:
            row["x floor"] = row["s"] / floor
            # the whole command's CPU against the floor's: steadier than wall time on a loaded
            # machine (the goals are on wall time)
            row["CPU x floor"] = row["CPU s"] / floor_cpu
            row["verdict"] = "MET" if row["x floor"] <= row["goal"] else "MISSED"
        print()
        print(table(rows, ["step", "s", "x floor", "goal", "verdict", "CPU s", "CPU x floor",
                           "parent peak MB", "check"],
                    title=f"resume: {args.lines:,} result lines of ~{args.line_bytes} B and "
                    f"{args.lines:,} tasks{' (spaced)' if args.spaced_input else ''} (warm page "
                    f"cache; best of {args.repeat}; floor best "
                    f"of {len(floors)}: {', '.join(f'{f:.2f}' for f, _ in floors)} s)"))
        print()
        for row in rows[1:]:
            print(f"{row['step']}: {row['s']:.2f} s = {row['x floor']:.1f}x the floor: "
                  f"{row['verdict']} (goal <= {row['goal']:g}x)")
        peak = max(row["parent peak MB"] for row in rows[1:])
        print(f"parent peak: {peak:.0f} MB: {'MET' if peak < PARENT_TARGET_MB else 'MISSED'} "
              f"(goal < {PARENT_TARGET_MB} MB)")
        return 0
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
