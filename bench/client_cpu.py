"""Client CPU a request, side by side with the peer: the openai-cookbook's parallel processor
pattern (bench/cookbook_peer.py: aiohttp, no SDK) at its 100 in flight, and the CLI at 100 and at
600 in flight, in one run against the mock server.

Every row sends the same N text requests (the same prompts, the same model) to the mock, which
answers each after exactly L ms, and is measured the same way (bench/throughput.py's ``at_mock``):
CPU ms/req is user+sys of the client's whole process tree (os.wait4: start-up, workers and parent
included) over the requests the mock received. The CLI writes its full result lines, checks its
input, paces, retries and resumes; the peer appends ``[request, answer]`` lines.

Both run as a user runs them: the Python bytecode of what they import cached, as an installed
package has it (pip compiles it; a first run writes it), in a folder of this run's
(PYTHONPYCACHEPREFIX), filled by an untimed one-task run of the CLI first. A machine that sets
PYTHONDONTWRITEBYTECODE (this project's sandbox does) would otherwise have every CLI run compile
mpinfer's sources (about 0.1 s of CPU; the peer is one script, compiled each run either way);
``--compile-each-run`` measures that instead. Each client runs ``--repeat`` times, the rows
interleaved, and its smallest figure is shown: the machine's other load only ever adds CPU.

    python bench/client_cpu.py                          # 4,000 tasks at L = 200 ms, best of 3
    python bench/client_cpu.py --tasks 20000 --configs 1x100,2x300,4x150
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from _common import DUMMY_KEY, REPO, cli_env, count_lines, machine_line, start_mock, table
from throughput import at_mock, one_row, parse_configs

PEER_IN_FLIGHT = 100
COLUMNS = ["client", "p", "c", "in flight", "tasks", "% ideal", "CPU ms/req", "over peer",
           "srv CPU s", "ok"]


def peer_row(mock: Any, latency_ms: float, n: int, timeout_s: float) -> dict[str, Any]:
    """The cookbook-style peer sending the same ``n`` requests, ``PEER_IN_FLIGHT`` at a time."""
    folder = Path(tempfile.mkdtemp(prefix="mpinfer-bench-peer-"))
    try:
        requests = folder / "requests.jsonl"
        with requests.open("wb") as handle:
            for i in range(n):
                prompt = f"question {i}: what is {i} + {i}?"  # the CLI's tasks (write_text_tasks)
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
                handle.write(orjson.dumps(body) + b"\n")
        out = folder / "results.jsonl"
        cmd = [sys.executable, str(REPO / "bench" / "cookbook_peer.py"), "--requests_filepath",
               str(requests), "--save_filepath", str(out), "--request_url",
               f"{mock.base_url}/chat/completions", "--api_key", DUMMY_KEY,
               "--max_in_flight", str(PEER_IN_FLIGHT)]
        m, seen, stats = at_mock(mock, latency_ms, PEER_IN_FLIGHT, n, cmd, folder, cli_env(),
                                 timeout_s)
        ok = m.returncode == 0 and count_lines(out) == n and stats["outcomes"]["ok"] == n
        if not ok:
            print(f"  !! peer: exit {m.returncode}, {stats['outcomes']}\n{m.stderr[-2000:]}")
        return {**seen, "client": "cookbook pattern (aiohttp, no SDK)", "p": 1,
                "c": PEER_IN_FLIGHT, "in flight": PEER_IN_FLIGHT, "tasks": n, "ok": ok}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=4000, help="requests a row (default 4000)")
    ap.add_argument("--latency", type=float, default=200.0, help="ms (default 200)")
    ap.add_argument("--configs", default="1x100,2x300",
                    help="the CLI's p x c rows (default 1x100,2x300: 100 and 600 in flight)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each client, interleaved; the smallest is shown (default 3)")
    ap.add_argument("--compile-each-run", action="store_true",
                    help="no bytecode cache: with PYTHONDONTWRITEBYTECODE set, each CLI run "
                    "compiles mpinfer's sources")
    args = ap.parse_args()
    print(machine_line())
    started = time.monotonic()
    cache = None
    if not args.compile_each_run:  # (the clients inherit this environment: cli_env copies it)
        cache = tempfile.mkdtemp(prefix="mpinfer-bench-pyc-")
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = cache
    configs = parse_configs(args.configs)
    runs: list[list[dict[str, Any]]] = [[] for _ in range(1 + len(configs))]  # by client
    try:
        with start_mock() as mock:
            if cache is not None:
                print("  filling the bytecode cache (a one-task run, not counted) ...", flush=True)
                one_row(mock, args.latency, 1, 1, 1, args.timeout, False, "aiohttp")
            for turn in range(max(1, args.repeat)):
                print(f"  round {turn + 1}: the peer, {PEER_IN_FLIGHT} in flight ...", flush=True)
                ran = [peer_row(mock, args.latency, args.tasks, args.timeout)]
                for p, c in configs:
                    print(f"  round {turn + 1}: the CLI -p {p} -c {c} ...", flush=True)
                    row = one_row(mock, args.latency, p, c, args.tasks, args.timeout, False,
                                  "aiohttp")
                    ran.append({**row, "client": "mpinfer CLI", "in flight": p * c,
                                "tasks": args.tasks})
                for index, row in enumerate(ran):
                    runs[index].append(row)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
    # Each client's least CPU a request, "ok" only if every run of it was
    rows = [{**min(each, key=lambda r: r["CPU ms/req"]), "ok": all(r["ok"] for r in each)}
            for each in runs]
    peer = rows[0]
    for row in rows:
        row["over peer"] = row["CPU ms/req"] / peer["CPU ms/req"]
    print()
    how = ("bytecode compiled each run" if args.compile_each_run
           else "bytecode cached, as installed")
    print(table(rows, COLUMNS, title=f"client CPU a request: {args.tasks} text tasks at L = "
                f"{args.latency:.0f} ms, every answer after exactly L, {how}, best of "
                f"{max(1, args.repeat)}, {time.strftime('%Y-%m-%d')}"))
    for row in rows[1:]:
        met = row["ok"] and peer["ok"] and row["CPU ms/req"] <= peer["CPU ms/req"]
        print(f"  mpinfer -p {row['p']} -c {row['c']} ({row['in flight']} in flight): "
              f"{row['CPU ms/req']:.2f} ms CPU/req against the peer's {peer['CPU ms/req']:.2f} at "
              f"{PEER_IN_FLIGHT}: {'MET' if met else 'MISSED'} (target: at most the peer's)")
    for row, each in zip(rows, runs, strict=True):
        print(f"  {row['client']} at {row['in flight']} in flight, every run: "
              + ", ".join(f"{r['CPU ms/req']:.2f}" for r in each) + " ms CPU/req")
    print(f"(total {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
