"""The floor under issue 14's 1,200-in-flight targets: the openai SDK alone, in the shape of a run.

Until issue 25, mpinfer's workers sent every request through the openai SDK; they now send without
it (mpinfer/api/wire.py), and this shows what that leaves behind: how far a client on the SDK gets.
It runs, beside the real CLI, a client that does nothing but that: P forked processes, each sending
its share of N chat requests with one small image through the SDK's ``post`` over mpinfer's HTTP
client (``complete``, as a worker called it), C slots each, with C more built ahead at mpinfer's
send gate as a worker builds them. It has no input check, rate limiter, retries, output file, lock,
events or parent feeding, and its bodies are built before the clock starts. What it reaches is as
far as any client built on the SDK gets on this machine; mpinfer's own work comes on top.

Both share the mock server and the machine's cores, and are measured the same
way (bench/throughput.py):

- % ideal: N / (last request's arrival - first request's arrival + L) at the mock, over K / L;
- round 2 s, later rounds s: how long the second round of K requests took to reach the mock after
  the first, and the later rounds on average (L each for a client that keeps its slots busy);
- CPU ms/req: user+sys of the client's whole process tree (os.wait4), start-up included, per
  request; "warm" is the floor's CPU after its imports (what is left when start-up costs nothing).

    # -p 4 -c 300 and -p 2 -c 600, 12,000 image requests:
    python bench/sdk_floor.py
    # the 600-in-flight rows:
    python bench/sdk_floor.py --shapes 4x150,2x300 --requests 6000 --text
    # issue 25's 1,200-in-flight rows beside bare aiohttp (no SDK) in the same shape:
    python bench/sdk_floor.py --requests 9000 --floor aiohttp

With ``--floor aiohttp`` the floor sends the same bodies with aiohttp alone (one session a process,
C slots, orjson): no client can do better on the machine as it is at that moment, which shows how
much of a shortfall is the machine's (a loaded one) and how much the CLI's.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

from _common import MB, REPO, machine_line, python_command, start_mock, table
from throughput import (
    CPU_TARGET_MS,
    SCALE_CONFIGS,
    at_mock,
    one_row,
    parse_configs,
    parse_scale_configs,
)

# The floor client: argv = base_url, processes, slots, requests, images (0/1), sdk|aiohttp.
# Prints its warm CPU seconds.
_FLOOR = r'''
import asyncio, base64, gc, os, resource, sys, time
import aiohttp, orjson
sys.path.insert(0, "bench")
from images import png_like
from mpinfer.api.client import complete, make_client, warm_up
from mpinfer.backends.ahead import SendGate
from mpinfer.api.ticket import Ticket
from mpinfer.backends.worker import WORKER_GC_THRESHOLDS

base, images = sys.argv[1], sys.argv[5] == "1"
p, c, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
warm_up()
urls = ["data:image/png;base64," + base64.b64encode(png_like(64, 64, 3000 + i)).decode()
        for i in range(50)]

def body(i: int) -> dict:
    text = {"type": "text", "text": f"question {i}: what is in the picture?"}
    image = {"type": "image_url", "image_url": {"url": urls[i % 50]}}
    content = [text, image] if images else text["text"]
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}

async def bare(share: range) -> None:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(100, c)))
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    bodies = iter([orjson.dumps(body(i)) for i in share])
    async def slot() -> None:
        for data in bodies:
            async with session.post(base + "/chat/completions", data=data, headers=headers) as r:
                orjson.loads(await r.read())
    await asyncio.gather(*(slot() for _ in range(c)))
    await session.close()

async def serve(share: range) -> None:
    gate = SendGate(c)
    client = make_client("sk-bench", base, 120.0, connections=c)
    bodies = iter([body(i) for i in share])
    async def slot() -> None:
        for request in bodies:
            if not await gate.take():
                return
            try:
                await complete(client, request, Ticket(120.0))
            finally:
                gate.give_back()
            await gate.pass_on()
    # c on the wire, c built ahead at the gate
    await asyncio.gather(*(slot() for _ in range(2 * c)))
    await client.close()

start = resource.getrusage(resource.RUSAGE_SELF)
children = []
for k in range(p):
    pid = os.fork()
    if pid == 0:
        gc.set_threshold(*WORKER_GC_THRESHOLDS)
        asyncio.run((bare if sys.argv[6] == "aiohttp" else serve)(range(k, n, p)))
        os._exit(0)
    children.append(pid)
for pid in children:
    _, status = os.waitpid(pid, 0)
    if status != 0:
        sys.exit(f"floor process {pid} ended with status {status}")
used = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print(kids.ru_utime + kids.ru_stime + used.ru_utime + used.ru_stime
      - start.ru_utime - start.ru_stime)
'''
# The shares of the ideal at 1,200 in flight, by (p, c), as bench/throughput.py holds them.
SHARES = {(p, c): share for p, c, share in parse_scale_configs(SCALE_CONFIGS)}
COLUMNS = ["client", "p", "c", "K", "requests", "% ideal", "% rounds", "round 2 s",
           "later rounds s", "wall s", "CPU ms/req", "warm CPU ms/req", "srv CPU s", "peak RSS MB",
           "ok"]


def floor_row(mock: Any, p: int, c: int, n: int, images: bool, latency_ms: float,
              floor: str = "sdk") -> dict[str, Any]:
    """The floor client's row: P processes x C slots sending ``n`` requests through the SDK (or
    aiohttp alone)."""
    k = p * c
    m, seen, stats = at_mock(mock, latency_ms, k, n,
                             [*python_command(_FLOOR), mock.base_url, str(p), str(c), str(n),
                              "1" if images else "0", floor], REPO, None, 600.0)
    ok = m.returncode == 0 and stats["outcomes"]["ok"] == n
    if not ok:
        print(f"  !! floor p={p} c={c}: exit {m.returncode}, "
              f"{stats['outcomes']}\n{m.stderr[-2000:]}")
    warm = float(m.stdout.strip().splitlines()[-1]) if ok else math.nan
    name = "aiohttp alone" if floor == "aiohttp" else "openai SDK alone"
    rounds = n / (math.ceil(n / k) * latency_ms / 1000.0)
    return {**seen, "client": name, "p": p, "c": c, "K": k, "requests": n,
            "% rounds": 100.0 * seen["server/s"] / rounds,
            "wall s": m.wall_s, "warm CPU ms/req": 1000.0 * warm / max(1, stats["requests"]),
            "peak RSS MB": m.peak_tree_rss / MB, "ok": ok}


def verdict(row: dict[str, Any]) -> str:
    """The row against issue 14's targets: shares of the ideal at 1,200 in flight, 0.7 ms at 600."""
    shape = f"{row['client']} p={row['p']} c={row['c']}"
    if row["K"] == 600:
        met = "MET" if row["CPU ms/req"] <= CPU_TARGET_MS else "MISSED"
        return (f"  {shape}: {row['CPU ms/req']:.2f} ms CPU/req: {met} "
                f"(target <= {CPU_TARGET_MS} ms at 600 in flight)")
    share = SHARES.get((row["p"], row["c"]))
    if share is None:
        return f"  {shape}: {row['% ideal']:.1f}% of the ideal (no target for this shape)"
    # (the whole-rounds ideal: the best any client does with this many requests)
    met = "MET" if row["% rounds"] >= share else "MISSED"
    return (f"  {shape}: {row['% rounds']:.1f}% of the ideal ({row['% ideal']:.1f}% of K / L): "
            f"{met} (target >= {share:g}%)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4x300,2x600", help="p x c rows (default 4x300,2x600)")
    ap.add_argument("--requests", type=int, default=12000,
                    help="requests a row (default 12,000: 10 rounds of 1,200)")
    ap.add_argument("--text", action="store_true",
                    help="text requests (default: one small image each)")
    ap.add_argument("--latency", type=float, default=1000.0,
                    help="ms, every answer after exactly this (default 1000)")
    ap.add_argument("--pairs", type=int, default=1,
                    help="rounds of (mpinfer, floor) a shape, interleaved (default 1)")
    ap.add_argument("--floor", choices=("sdk", "aiohttp"), default="sdk",
                    help="the floor client: the openai SDK (default) or aiohttp alone")
    args = ap.parse_args()
    print(machine_line())
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with start_mock() as mock:
        for p, c in parse_configs(args.shapes):
            for _ in range(args.pairs):
                cli = one_row(mock, args.latency, p, c, args.requests, 600.0, False, "aiohttp",
                              images=not args.text)
                rounds = args.requests / (math.ceil(args.requests / (p * c)) * args.latency / 1000)
                rows.append({**cli, "client": "mpinfer CLI", "requests": args.requests,
                             "% rounds": 100.0 * cli["server/s"] / rounds,
                             "warm CPU ms/req": None})
                rows.append(floor_row(mock, p, c, args.requests, not args.text, args.latency,
                                      args.floor))
    kind = "text" if args.text else "image"
    print(table(rows, COLUMNS,
                title=f"{args.requests} {kind} requests at L = {args.latency:.0f} ms, every answer "
                f"after exactly L: mpinfer against {rows[-1]['client'] if rows else 'the floor'}, "
                f"{time.strftime('%Y-%m-%d')}"))
    for row in rows:
        print(verdict(row))
    print(f"(total {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
