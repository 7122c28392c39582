"""Client CPU a request, side by side with the peer: the openai-cookbook's parallel processor
pattern (bench/cookbook_peer.py: aiohttp, no SDK) at its 100 in flight, and the CLI at 100 and at
600 in flight, in one run against the mock server.

Every row sends the same N text requests (the same prompts, the same model) to the mock, which
answers each after exactly L ms, and is measured the same way (bench/throughput.py's ``at_mock``):
CPU ms/req is user+sys of the client's whole process tree (os.wait4: start-up, workers and parent
included) over the requests the mock received. The CLI writes its full result lines, checks its
input, paces, retries and resumes; the peer appends ``[request, answer]`` lines.

    python bench/client_cpu.py                          # 4,000 tasks at L = 200 ms
    python bench/client_cpu.py --tasks 20000 --configs 1x100,2x300,4x150
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
    args = ap.parse_args()
    print(machine_line())
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    with start_mock() as mock:
        print(f"  running the peer, {PEER_IN_FLIGHT} in flight ...", flush=True)
        peer = peer_row(mock, args.latency, args.tasks, args.timeout)
        rows.append(peer)
        for p, c in parse_configs(args.configs):
            print(f"  running the CLI -p {p} -c {c} ...", flush=True)
            row = one_row(mock, args.latency, p, c, args.tasks, args.timeout, False, "aiohttp")
            rows.append({**row, "client": "mpinfer CLI", "in flight": p * c,
                         "tasks": args.tasks})
    for row in rows:
        row["over peer"] = row["CPU ms/req"] / peer["CPU ms/req"]
    print()
    print(table(rows, COLUMNS, title=f"client CPU a request: {args.tasks} text tasks at L = "
                f"{args.latency:.0f} ms, every answer after exactly L, "
                f"{time.strftime('%Y-%m-%d')}"))
    for row in rows[1:]:
        met = row["ok"] and peer["ok"] and row["CPU ms/req"] <= peer["CPU ms/req"]
        print(f"  mpinfer -p {row['p']} -c {row['c']} ({row['in flight']} in flight): "
              f"{row['CPU ms/req']:.2f} ms CPU/req against the peer's {peer['CPU ms/req']:.2f} at "
              f"{PEER_IN_FLIGHT}: {'MET' if met else 'MISSED'} (target: at most the peer's)")
    print(f"(total {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
