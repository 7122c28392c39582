"""CPU per request of mpinfer's client and of the HTTP stacks under the openai SDK, one process,
against the mock server.

Each row sends the same chat request N times with C in flight from one asyncio
process (as one worker does) and reports the process's CPU per request, from a warm
start (a first round is not counted):

- mpinfer, no SDK: ``WireClient`` (mpinfer/api/wire.py), what a worker sends with by default;
- sdk + mpinfer aiohttp: ``AsyncOpenAI.post`` over mpinfer's aiohttp pool (mpinfer/api/http.py),
  what a worker sent with before (``make_client``, ``complete``);
- sdk + httpx: the same over the SDK's httpx client (``--transport httpx``);
- sdk + DefaultAioHttpClient: the same over the SDK's own aiohttp client (what mpinfer used before);
- aiohttp alone: the same bytes with no SDK at all, the floor no client built on the SDK can reach.

Each row runs in its own subprocess (so one row's imports and garbage do not cost the next), twice,
and the smaller figure is shown. The mock answers after L ms (default 20).

    python bench/http_stack.py                       # 6,000 requests a row, 300 in flight
    python bench/http_stack.py --requests 20000 --concurrency 600
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from _common import REPO, machine_line, start_mock, table

STACKS = ("mpinfer, no SDK", "sdk + mpinfer aiohttp", "sdk + httpx", "sdk + DefaultAioHttpClient",
          "aiohttp alone")

# One row, in a subprocess: argv = base_url, stack, requests, concurrency.
# Prints the CPU ms per request.
_ROW = r'''
import asyncio, gc, sys, time
import aiohttp, httpx2, openai, orjson
from mpinfer.api.client import Transport, complete, make_client, warm_up
from mpinfer.api.ticket import Ticket
from mpinfer.api.wire import WireClient
from mpinfer.backends.worker import WORKER_GC_THRESHOLDS

base, stack, n, c = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
gc.set_threshold(*WORKER_GC_THRESHOLDS)
warm_up()
REQUEST = {"model": "gpt-4o-mini",
           "messages": [{"role": "user", "content": "question 1: what is 1 + 1?"}],
           "max_tokens": 16}

async def main() -> None:
    if stack == "aiohttp alone":
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(100, c)))
        headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
        async def one() -> None:
            async with session.post(base + "/chat/completions", data=orjson.dumps(REQUEST),
                                    headers=headers) as r:
                orjson.loads(await r.read())
        close = session.close
    elif stack == "mpinfer, no SDK":
        wire = WireClient("sk-bench", base, 60.0, connections=c)
        async def one() -> None:
            await wire.complete(REQUEST, Ticket(60.0))
        close = wire.close
    else:
        if stack == "sdk + DefaultAioHttpClient":
            pool = httpx2.Limits(max_connections=max(100, c), max_keepalive_connections=max(100, c))
            transport = openai.DefaultAioHttpClient(limits=pool, timeout=60)
            client = openai.AsyncOpenAI(api_key="sk-bench", base_url=base, max_retries=0,
                                        http_client=transport)
        else:
            transport = Transport.HTTPX if stack == "sdk + httpx" else Transport.AIOHTTP
            client = make_client("sk-bench", base, 60.0, transport=transport, connections=c)
        async def one() -> None:
            await complete(client, REQUEST, Ticket(60.0))
        close = client.close
    gate = asyncio.Semaphore(c)
    async def gated() -> None:
        async with gate:
            await one()
    # Warm up: connections open, first-use imports done.
    await asyncio.gather(*(gated() for _ in range(c)))
    cpu = time.process_time()
    await asyncio.gather(*(gated() for _ in range(n)))
    print(1000.0 * (time.process_time() - cpu) / n)
    await close()

asyncio.run(main())
'''


def one_row(base_url: str, stack: str, n: int, c: int) -> float:
    """The CPU a request of ``stack``, in a fresh process (n requests, c in flight)."""
    done = subprocess.run([sys.executable, "-c", _ROW, base_url, stack, str(n), str(c)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{stack}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=6000, help="requests a row (default 6000)")
    ap.add_argument("--concurrency", type=int, default=300, help="requests in flight (default 300)")
    ap.add_argument("--latency", type=float, default=20.0,
                    help="the mock's latency in ms (default 20)")
    args = ap.parse_args()
    print(machine_line())
    mock = start_mock()
    try:
        mock.configure(latency_ms=args.latency)
        rows = []
        for stack in STACKS:
            best = min(one_row(mock.base_url, stack, args.requests, args.concurrency)
                       for _ in range(2))
            rows.append({"stack": stack, "requests": args.requests, "in flight": args.concurrency,
                         "CPU ms/req": best})
        floor = rows[-1]["CPU ms/req"]
        for row in rows:
            row["over aiohttp alone"] = row["CPU ms/req"] - floor
        print(table(rows,
                    title="CPU per request in one process, L = "
                    f"{args.latency:g} ms (best of 2 runs)"))
    finally:
        mock.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
