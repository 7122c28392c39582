"""Start-up: from the command to the first request the server receives.

For each -p (64, 8 and 1 by default; c = 1) the CLI runs 2*p tasks (each worker is handed two)
against the mock server with a long latency, so that every worker sends exactly one request before
any answer comes back. Measured, as a median of 3 repetitions:

- first req s: the mock's ``first_request_at`` minus ``time.monotonic()`` taken
  just before launching the CLI. Both are CLOCK_MONOTONIC on the same machine, so
  they are comparable across processes;
- all p s: when the mock had received p requests, i.e. every worker was sending (polled every 10 ms
  from /_mock/stats, so up to 10 ms late);
- wall s: the whole command (2 rounds of the latency included).

Also the bare cost of starting Python and importing the CLI (``python -c "import mpinfer.cli"``),
which every run pays before it reads anything; and a one-task job (the CLI with -p 1 -c 1 on one
task, the mock answering at once) beside its floor, a bare aiohttp script that starts, reads the
task, sends it, writes the answer and exits: wall time of each whole process, interleaved, the
median of --one-task-repeat (target: the CLI at most 2.5 times the script).

    python bench/startup.py                    # -p 64, 8, 1; 3 repetitions
    python bench/startup.py --processes 64 --repeat 5
    python bench/startup.py --processes "" --one-task-repeat 9     # the one-task rows alone
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    cli_command,
    cli_env,
    count_lines,
    machine_line,
    poll_stats,
    python_command,
    run_measured,
    start_mock,
    table,
    write_text_tasks,
)

TARGET_S = 3.0
ONE_TASK_RATIO = 2.5  # the one-task job against the bare script
# The floor of a one-task job: start, read the task, send it, write the answer, exit.
# argv = base_url, tasks file, output file.
_BARE = r'''
import asyncio, sys
import aiohttp, orjson

async def main() -> None:
    with open(sys.argv[2], "rb") as handle:
        task = orjson.loads(handle.readline())
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": task["prompt"]}]}
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(sys.argv[1] + "/chat/completions", data=orjson.dumps(body),
                                headers=headers) as answer:
            data = orjson.loads(await answer.read())
    with open(sys.argv[3], "ab") as out:
        out.write(orjson.dumps({"id": task["id"], "answer": data}) + b"\n")

asyncio.run(main())
'''


def watch_requests(root_url: str, want: int, stop: threading.Event,
                   found: dict[str, float]) -> None:
    """Poll the mock until it received ``want`` requests; record the mock's clock at that poll."""
    deadline = time.monotonic() + 600
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            stats = poll_stats(root_url)
        except OSError:
            stats = None
        if stats is not None and stats["requests"] >= want:
            found["all_at"] = stats["now"]
            return
        stop.wait(0.01)


def one_run(mock: Any, p: int, latency_ms: float, timeout_s: float) -> dict[str, Any]:
    """One start-up with ``p`` workers: times to the first request and to every worker's first."""
    mock.reset()
    folder = Path(tempfile.mkdtemp(prefix=f"mpinfer-bench-start-{p}-"))
    try:
        tasks = write_text_tasks(folder / "tasks.jsonl", 2 * p)
        stop = threading.Event()
        found: dict[str, float] = {}
        poller = threading.Thread(target=watch_requests, args=(mock.root_url, p, stop, found),
                                  daemon=True)
        poller.start()
        m = run_measured(cli_command("-i", str(tasks), "-o", str(folder / "results.jsonl"), "-p",
                                     str(p), "-c", "1", "--base-url", mock.base_url), cwd=folder,
                         env=cli_env(), timeout_s=timeout_s, sample=False)
        stop.set()
        poller.join(5)
        m.check(f"-p {p}")
        stats = mock.stats()
        return {"first": stats["first_request_at"] - m.started_at,
                "all": found["all_at"] - m.started_at if "all_at" in found else None,
                "wall": m.wall_s, "cpu": m.cpu_s}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def import_cost(repeat: int) -> dict[str, Any]:
    """The time ``import mpinfer.cli`` takes, the floor under any start-up."""
    folder = Path(tempfile.mkdtemp(prefix="mpinfer-bench-import-"))
    try:
        walls = []
        for _ in range(repeat):
            m = run_measured(python_command("import mpinfer.cli"), cwd=folder, env=cli_env(),
                             sample=False)
            m.check("import")
            walls.append(m.wall_s)
        return {"what": "python -c 'import mpinfer.cli'", "median s": statistics.median(walls),
                "min s": min(walls), "max s": max(walls)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def one_task(mock: Any, repeat: int, timeout_s: float) -> list[dict[str, Any]]:
    """The one-task job and the bare script, ``repeat`` times each, interleaved: their rows."""
    mock.configure(latency_ms=0)
    walls: dict[str, list[float]] = {"bare aiohttp script": [], "mpinfer, one task": []}
    cpus: dict[str, list[float]] = {name: [] for name in walls}
    for i in range(repeat):
        print(f"  one task, repetition {i + 1}/{repeat} ...", flush=True)
        for name in walls:
            folder = Path(tempfile.mkdtemp(prefix="mpinfer-bench-one-"))
            try:
                tasks = write_text_tasks(folder / "tasks.jsonl", 1)
                out = folder / "results.jsonl"
                cmd = ([*python_command(_BARE), mock.base_url, str(tasks), str(out)]
                       if name.startswith("bare") else
                       cli_command("-i", str(tasks), "-o", str(out), "-p", "1", "-c", "1",
                                   "--base-url", mock.base_url))
                m = run_measured(cmd, cwd=folder, env=cli_env(), timeout_s=timeout_s,
                                 sample=False)
                m.check(name)
                if count_lines(out) != 1:
                    raise SystemExit(f"{name}: no answer written\n{m.stderr[-2000:]}")
                walls[name].append(m.wall_s)
                cpus[name].append(m.cpu_s)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    return [{"what": name, "reps": len(walls[name]),
             "median wall s": statistics.median(walls[name]),
             "min s": min(walls[name]), "max s": max(walls[name]),
             "median CPU s": statistics.median(cpus[name])} for name in walls]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", default="64,8,1", help="the -p values (default 64,8,1)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="repetitions of each (default 3); the median is shown")
    ap.add_argument("--latency", type=float, default=3000.0,
                    help="mock latency in ms (default 3000: longer than the start-up, so each "
                    "worker's first request is still in flight when the last worker starts)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--one-task-repeat", type=int, default=5,
                    help="repetitions of the one-task job and its bare script (default 5; 0: "
                    "none)")
    args = ap.parse_args()

    print(machine_line())
    rows = []
    with start_mock(latency_ms=args.latency) as mock:
        for p in (int(x) for x in args.processes.split(",") if x.strip()):
            runs = []
            for i in range(args.repeat):
                print(f"  running -p {p} -c 1, repetition {i + 1}/{args.repeat} ...", flush=True)
                runs.append(one_run(mock, p, args.latency, args.timeout))
            firsts = [r["first"] for r in runs]
            alls = [r["all"] for r in runs if r["all"] is not None]
            rows.append({"p": p, "reps": len(runs), "first req s": statistics.median(firsts),
                         "min": min(firsts), "max": max(firsts),
                         "all p s": statistics.median(alls) if alls else None,
                         "wall s": statistics.median(r["wall"] for r in runs),
                         "CPU s": statistics.median(r["cpu"] for r in runs)})
        alone = one_task(mock, args.one_task_repeat, args.timeout) if args.one_task_repeat else []
    print()
    print(table(rows,
                title="start-up: command -> first request at the mock (median of "
                f"{args.repeat}); 2*p tasks, c=1, L={args.latency:.0f} ms"))
    print()
    print(table([import_cost(args.repeat)], title="interpreter start + import of the CLI"))
    for row in rows:
        if row["p"] == 64:
            met = row["first req s"] < TARGET_S
            print(f"\n-p 64 first request after {row['first req s']:.2f} s (median): "
                  f"{'MET' if met else 'MISSED'} (target < {TARGET_S:.0f} s)")
    if alone:
        print()
        print(table(alone, title="a one-task job beside a bare aiohttp script (start, send, "
                    f"write, exit), whole process, {time.strftime('%Y-%m-%d')}"))
        ratio = alone[1]["median wall s"] / alone[0]["median wall s"]
        print(f"\none task: {alone[1]['median wall s']:.2f} s against the script's "
              f"{alone[0]['median wall s']:.2f} s, {ratio:.2f} times: "
              f"{'MET' if ratio <= ONE_TASK_RATIO else 'MISSED'} "
              f"(target <= {ONE_TASK_RATIO} times)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
