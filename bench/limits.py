"""Rate limits and outages: how much of a limit a run uses, its 429s, whether it finishes.

Servers, each the package's mock server playing a real one, each against the real CLI:

- quantized: a per-window limit enforced per second (a bucket of one second's worth),
  as OpenAI documents it may do; the run is given the same --rpm. Target: >= 95% of
  the limit used, 429s < 1%, 0 failed.
- learned (the first round): the same server, no --rpm, 64 in flight: the run opens one request
  at a time until an answer states x-ratelimit-limit-requests, then paces to it.
  Target: >= 90% of the limit used, 429s <= 1%.
- no hints: a server refusing (429, no hint at all) beyond N requests in
  flight. Target: >= 80% of its capacity (N / latency), 0 failed.
- outage: the server goes away (connections refused) and comes back on the same port.
  Target: 0 failed, the run finishes within 10 s of the server's return.
- two runs: two CLIs at once on one key and model, each given the server's --rpm: they share
  one lane. Target: together >= 90% of the limit used, 429s <= 1%.
- after a kill -9: a run on the key is killed (SIGKILL) mid-way and another starts right away,
  given the same --rpm. Target: >= 85% of the limit used by it, 429s <= 1%.
- LiteLLM hints: 429s carry only llm_provider-retry-after, no limit is stated or given.
  Target: 429s <= 5%, >= 80% of the limit used.
- ray, two endpoints: ``--backend ray`` (a local Ray cluster on 127.0.0.1) over an endpoints
  table of two servers, each quantized per second at its own limit, which the table gives.
  Target: every id written exactly once, 429s <= 1% (skipped when Ray is not installed).

    python bench/limits.py          # a 10 s window at 30 requests/s, a 30 s outage (about 3 min)
    python bench/limits.py --quick  # a 4 s window, a 5 s outage, small counts (about 70 s)
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import subprocess
import sys
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
    start_mock,
    table,
    write_text_tasks,
)


def _env(tmp: Path) -> dict[str, str]:
    """The CLI's environment; its shared lanes under ``tmp`` (the bench's own)."""
    return cli_env({"XDG_STATE_HOME": str(tmp / "state")})


def _start(tmp: Path, base_url: str, tasks: int, out: str, *args: str) -> subprocess.Popen[bytes]:
    """Start the CLI on ``tasks`` fresh tasks into ``out`` (its input ``out``.tasks.jsonl)."""
    for old in tmp.glob(out + "*"):
        if old.is_file():
            old.unlink()
    write_text_tasks(tmp / f"{out}.tasks.jsonl", tasks, prefix=out)
    return subprocess.Popen(cli_command("-i", f"{out}.tasks.jsonl", "-o", out, "--base-url",
                                        base_url, "--retry-backoff", "0.2", *args), cwd=tmp,
                            env=_env(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait(proc: subprocess.Popen[bytes], timeout_s: float = 600.0) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def _run(tmp: Path, base_url: str, tasks: int, *args: str, during: Any = None,
         timeout_s: float = 600.0) -> tuple[int, float, float]:
    """Run the CLI on ``tasks`` fresh tasks: (exit code, seconds, failed lines).

    ``during(proc)`` runs beside."""
    for old in tmp.glob("out*"):
        if old.is_file():
            old.unlink()
    write_text_tasks(tmp / "tasks.jsonl", tasks)
    started = time.monotonic()
    proc = subprocess.Popen(cli_command("-i", "tasks.jsonl", "-o", "out.jsonl", "--base-url",
                                        base_url, "--retry-backoff", "0.2", *args), cwd=tmp,
                            env=_env(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    helper = threading.Thread(target=during, args=(proc,), daemon=True) if during else None
    if helper:
        helper.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait(timeout=10)
    took = time.monotonic() - started
    if helper:
        helper.join(timeout=120)
    return code, took, count_lines(tmp / "out.jsonl.errors.jsonl")


def _verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def limited(tmp: Path, name: str, flag: bool, limit: int, window: float, tasks: int,
            used_target: float, rejected_target: float) -> dict[str, Any]:
    """A server limiting the rate per window, quantized by second; ``flag``: the run is given
    --rpm."""
    mock = start_mock(rpm=limit, window_s=window, quantum_s=1.0, latency_ms=50)
    try:
        args = ["--rate-window", f"{window:g}", "-p", "4", "-c", "16"]
        args += ["--rpm", str(limit)] if flag else []
        code, took, failed = _run(tmp, mock.base_url, tasks, *args)
        stats = mock.stats()
    finally:
        mock.stop()
    rate = limit / window
    accepted = stats["requests"] - stats["limit_rejections"]
    span = max(1e-9, stats["last_request_at"] - stats["first_request_at"])
    used = (accepted - 0.5 * rate) / span / rate  # the first half second's burst left out
    rejected = stats["limit_rejections"] / max(1, stats["requests"])
    ok = used >= used_target and rejected <= rejected_target and failed == 0 and code == 0
    target = f">= {used_target:.0%} used, 429s <= {rejected_target:.0%}"
    return {"server": name, "limit/s": rate, "requests/s": round(accepted / span, 2),
            "used": f"{used:.1%}", "429s": f"{rejected:.2%}", "failed": failed, "exit": code,
            "seconds": round(took, 1), "target": target + (", 0 failed" if flag else ""),
            "verdict": _verdict(ok)}


def no_hints(tmp: Path, in_flight: int, latency_ms: float, tasks: int) -> dict[str, Any]:
    """A server that refuses past ``in_flight`` requests with 429s and no hints."""
    mock = start_mock(max_concurrent=in_flight, latency_ms=latency_ms, limit_style="none")
    try:
        code, took, failed = _run(tmp, mock.base_url, tasks, "-p", "2", "-c", "16")
        stats = mock.stats()
    finally:
        mock.stop()
    capacity = in_flight / (latency_ms / 1000.0)
    span = max(1e-9, stats["last_request_at"] - stats["first_request_at"])
    answered = stats["outcomes"]["ok"]
    used = answered / span / capacity
    rejected = stats["limit_rejections"] / max(1, stats["requests"])
    ok = used >= 0.8 and failed == 0 and code == 0
    return {"server": f"no hints, > {in_flight} in flight refused", "limit/s": capacity,
            "requests/s": round(answered / span, 2), "used": f"{used:.1%}",
            "429s": f"{rejected:.2%}", "failed": failed, "exit": code, "seconds": round(took, 1),
            "target": ">= 80% of capacity, 0 failed", "verdict": _verdict(ok)}


def outage(tmp: Path, away_s: float, tasks: int) -> dict[str, Any]:
    """A server that goes away for ``away_s`` once a quarter of the tasks are done."""
    mock = start_mock(latency_ms=20)
    back_at: list[float] = []

    def go_away(proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 60
        while (
            count_lines(tmp / "out.jsonl") < tasks // 4
            and proc.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        mock.outage(away_s)
        back_at.append(time.monotonic() + away_s + 0.05)

    try:
        code, took, failed = _run(tmp, mock.base_url, tasks, "-p", "2", "-c", "4", during=go_away)
        ended = time.monotonic()
    finally:
        mock.stop()
    after = ended - back_at[0] if back_at else float("nan")
    done = count_lines(tmp / "out.jsonl")
    ok = failed == 0 and code == 0 and done == tasks and after <= 10.0
    return {"server": f"away {away_s:g} s (refused), back on its port", "limit/s": None,
            "requests/s": round(done / took, 2), "used": None, "429s": None, "failed": failed,
            "exit": code, "seconds": round(took, 1),
            "target": f"0 failed, done <= 10 s after the return ({after:.1f} s)",
            "verdict": _verdict(ok)}


def _used(accepted: int, first_at: float, last_at: float, rate: float) -> float:
    """The share of the limit used from the first request to the last (the first half second's
    burst left out)."""
    return (accepted - 0.5 * rate) / max(1e-9, last_at - first_at) / rate


def two_runs(tmp: Path, limit: int, window: float, tasks: int) -> dict[str, Any]:
    """Two CLIs at once on one key and model, each given the server's --rpm."""
    mock = start_mock(rpm=limit, window_s=window, quantum_s=1.0, latency_ms=50)
    try:
        args = ("--rate-window", f"{window:g}", "-p", "2", "-c", "16", "--rpm", str(limit))
        started = time.monotonic()
        procs = [_start(tmp, mock.base_url, tasks // 2, name, *args) for name in ("a", "b")]
        codes = [_wait(proc) for proc in procs]
        took = time.monotonic() - started
        stats = mock.stats()
    finally:
        mock.stop()
    failed = count_lines(tmp / "a.errors.jsonl") + count_lines(tmp / "b.errors.jsonl")
    done = count_lines(tmp / "a") + count_lines(tmp / "b")
    rate = limit / window
    accepted = stats["requests"] - stats["limit_rejections"]
    used = _used(accepted, stats["first_request_at"], stats["last_request_at"], rate)
    rejected = stats["limit_rejections"] / max(1, stats["requests"])
    ok = used >= 0.90 and rejected <= 0.01 and failed == 0 and codes == [0, 0] and done == tasks
    span = max(1e-9, stats["last_request_at"] - stats["first_request_at"])
    return {"server": f"quantized {limit}/{window:g}s, two runs each --rpm {limit}",
            "limit/s": rate, "requests/s": round(accepted / span, 2), "used": f"{used:.1%}",
            "429s": f"{rejected:.2%}", "failed": failed, "exit": max(codes),
            "seconds": round(took, 1), "target": ">= 90% used together, 429s <= 1%",
            "verdict": _verdict(ok)}


def _workers_gone(output: Path, limit_s: float = 10.0) -> None:
    """Wait until no worker of the run on ``output`` lives (each holds the workers lock)."""
    lock = output.with_name("." + output.name + ".workers.lock")
    deadline = time.monotonic() + limit_s
    while lock.exists() and time.monotonic() < deadline:
        with lock.open("rb") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                time.sleep(0.02)


def after_kill(tmp: Path, limit: int, window: float, tasks: int) -> dict[str, Any]:
    """A run killed (SIGKILL) a third of the way, and another started at once on the same key."""
    mock = start_mock(rpm=limit, window_s=window, quantum_s=1.0, latency_ms=50)
    try:
        args = ("--rate-window", f"{window:g}", "-p", "2", "-c", "16", "--rpm", str(limit))
        first = _start(tmp, mock.base_url, tasks, "a", *args)
        deadline = time.monotonic() + 120
        while (count_lines(tmp / "a") < tasks // 3 and first.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.02)
        first.kill()
        first.wait(timeout=10)
        _workers_gone(tmp / "a")
        before = mock.stats()
        started = time.monotonic()
        second = _start(tmp, mock.base_url, tasks, "b", *args)
        first_at = None
        while second.poll() is None and first_at is None:
            now = poll_stats(mock.root_url)
            if now["requests"] > before["requests"]:
                first_at = now["now"]
            time.sleep(0.01)
        code = _wait(second)
        took = time.monotonic() - started
        stats = mock.stats()
    finally:
        mock.stop()
    failed = count_lines(tmp / "b.errors.jsonl")
    rate = limit / window
    requests = stats["requests"] - before["requests"]
    refused = stats["limit_rejections"] - before["limit_rejections"]
    used = _used(requests - refused, first_at or stats["now"], stats["last_request_at"], rate)
    rejected = refused / max(1, requests)
    ok = used >= 0.85 and rejected <= 0.01 and failed == 0 and code == 0
    return {"server": f"quantized {limit}/{window:g}s, a run right after a kill -9",
            "limit/s": rate, "requests/s": round(used * rate, 2), "used": f"{used:.1%}",
            "429s": f"{rejected:.2%}", "failed": failed, "exit": code,
            "seconds": round(took, 1), "target": ">= 85% used, 429s <= 1%",
            "verdict": _verdict(ok)}


def litellm_hints(tmp: Path, limit: int, window: float, tasks: int) -> dict[str, Any]:
    """429s with only LiteLLM's llm_provider-retry-after; no limit stated or given."""
    mock = start_mock(rpm=limit, window_s=window, quantum_s=1.0, latency_ms=50,
                      limit_style="litellm")
    try:
        code, took, failed = _run(tmp, mock.base_url, tasks, "-p", "4", "-c", "16")
        stats = mock.stats()
    finally:
        mock.stop()
    rate = limit / window
    accepted = stats["requests"] - stats["limit_rejections"]
    used = _used(accepted, stats["first_request_at"], stats["last_request_at"], rate)
    rejected = stats["limit_rejections"] / max(1, stats["requests"])
    summary = json.loads((tmp / "out.jsonl.summary.json").read_text())
    ok = used >= 0.80 and rejected <= 0.05 and failed == 0 and code == 0
    span = max(1e-9, stats["last_request_at"] - stats["first_request_at"])
    return {"server": f"quantized {limit}/{window:g}s, LiteLLM hints only ({summary['limits']})",
            "limit/s": rate, "requests/s": round(accepted / span, 2), "used": f"{used:.1%}",
            "429s": f"{rejected:.2%}", "failed": failed, "exit": code,
            "seconds": round(took, 1), "target": ">= 80% used, 429s <= 5%",
            "verdict": _verdict(ok)}


def ray_two_endpoints(tmp: Path, window: float, limits: tuple[int, int],
                      tasks: int) -> dict[str, Any]:
    """--backend ray over two servers of an endpoints table, each with its own limit per window
    (quantized per second), which the table gives each."""
    mocks = [start_mock(rpm=limit, window_s=window, quantum_s=1.0, latency_ms=50)
             for limit in limits]
    keys = {f"BENCH_KEY_{n}": f"sk-bench-00000000000000000000key{n}" for n in range(2)}
    (tmp / "endpoints.toml").write_text("".join(
        f'[[endpoints]]\nmodel = "gpt-4o"\nbase_url = "{mock.base_url}"\n'
        f'api_key_env = "BENCH_KEY_{n}"\nrpm = {limit}\n\n'
        for n, (mock, limit) in enumerate(zip(mocks, limits, strict=True))))
    for old in tmp.glob("out*"):
        if old.is_file():
            old.unlink()
    write_text_tasks(tmp / "tasks.jsonl", tasks)
    env = cli_env({**keys, "RAY_USAGE_STATS_ENABLED": "0"})
    # A local cluster on 127.0.0.1, as the tests start it (Ray's own start may advertise an address
    # of the machine's that is not reachable)
    from ray import cluster_utils

    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "object_store_memory": 80_000_000, "include_dashboard": False})
    started = time.monotonic()
    try:
        done = subprocess.run(cli_command(
            "-i", "tasks.jsonl", "-o", "out.jsonl", "--backend", "ray", "--model", "gpt-4o",
            "--ray-address", cluster.address,
            "--endpoints", "endpoints.toml", "--rate-window", f"{window:g}", "-p", "4", "-c", "16",
            "--retry-backoff", "0.2"), cwd=tmp, env=env, capture_output=True, timeout=600,
            check=False)
        took = time.monotonic() - started
        stats = [mock.stats() for mock in mocks]
    finally:
        cluster.shutdown()
        for mock in mocks:
            mock.stop()
    out = tmp / "out.jsonl"
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()] if out.exists() else []
    once = len(ids) == len(set(ids)) == tasks
    if done.returncode != 0 or not all(s["first_request_at"] for s in stats):
        print(done.stderr.decode(errors="replace")[-2000:], file=sys.stderr)
    requests = sum(s["requests"] for s in stats)
    refused = sum(s["limit_rejections"] for s in stats)
    rejected = refused / max(1, requests)
    rate = sum(limits) / window
    span = max(1e-9, max(s["last_request_at"] or 0 for s in stats)
               - min(s["first_request_at"] or 0 for s in stats))
    accepted = requests - refused
    ok = once and rejected <= 0.01 and done.returncode == 0
    return {"server": f"ray over two endpoints, {limits[0]} and {limits[1]}/{window:g}s each its "
                      "own", "limit/s": rate, "requests/s": round(accepted / span, 2),
            "used": f"{(accepted - 0.5 * rate) / span / rate:.1%}", "429s": f"{rejected:.2%}",
            "failed": count_lines(tmp / "out.jsonl.errors.jsonl"), "exit": done.returncode,
            "seconds": round(took, 1),
            "target": f"exactly once ({'yes' if once else 'no'}), 429s <= 1%",
            "verdict": _verdict(ok)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="short windows and counts, while developing")
    args = ap.parse_args()
    window, limit, outage_s = (4.0, 100, 5.0) if args.quick else (10.0, 300, 30.0)
    tasks = int(limit * 2.5)
    print(machine_line(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpinfer-bench-limits-") as tmp_name:
        tmp = Path(tmp_name)
        print("  running quantized ...", flush=True)
        rows.append(limited(tmp, f"quantized {limit}/{window:g}s, --rpm {limit}", True, limit,
                            window, tasks, 0.95, 0.01))
        print("  running learned ...", flush=True)
        rows.append(limited(tmp, f"quantized {limit}/{window:g}s, stated in headers, first round "
                            "at 64 in flight", False, limit, window, tasks, 0.90, 0.01))
        print("  running no hints ...", flush=True)
        rows.append(no_hints(tmp, 8, 100.0, 600 if args.quick else 1500))
        print("  running outage ...", flush=True)
        rows.append(outage(tmp, outage_s, 400 if args.quick else 1000))
        print("  running two runs on one key ...", flush=True)
        rows.append(two_runs(tmp, limit, window, tasks))
        print("  running after a kill -9 ...", flush=True)
        rows.append(after_kill(tmp, limit, window, tasks))
        print("  running LiteLLM hints ...", flush=True)
        rows.append(litellm_hints(tmp, limit, window, tasks))
        if importlib.util.find_spec("ray") is not None:
            print("  running ray over two endpoints ...", flush=True)
            rows.append(ray_two_endpoints(tmp, window, (limit // 2, limit // 4), tasks // 2))
    print(table(rows,
                title="rate limits and outages: requests/s against each "
                "kind of server next to its limit"))
    return 0 if all(r["verdict"] == "MET" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
