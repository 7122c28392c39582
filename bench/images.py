"""Tasks with 1 MB images: how fast they are read, encoded and sent, and that workers do it.

Writes D distinct images of about 1 MB (200 by default: a real PNG signature and IHDR,
then one IDAT chunk of random bytes, so the bytes sniff as PNG and do not compress) and N
tasks (500 by default) that use them in turn (so some images are shared between tasks),
then runs the CLI (-p 4 -c 16) against the mock server at L = 200 ms, which checks that
every image arrives as valid base64. Reported:

- requests/s (server side, as in throughput.py, and by wall time) and MB/s of image data sent (the
  files' bytes; the base64 on the wire is 4/3 of that);
- client CPU, peak RSS / PSS of the tree;
- where the image bytes were read: ``rchar`` of /proc/<pid>/io (bytes passed to read() and pread(),
  files and pipes alike) of the parent (the CLI process) and of its workers, polled every 50 ms (the
  last value seen before each process exits). The parent reads its own modules (about 11 MB of .py
  and .pyc), the CA bundle, the input and the workers' event messages; a control run of the same
  tasks without their images shows how much that is: the difference must be far less than one image.
- with --strace, a second run under ``strace -e trace=open,openat`` of the parent only (no -f: the
  forked workers are not traced) lists every file the parent opened: no image among them.

    python bench/images.py
    python bench/images.py --tasks 200 --distinct 50 --strace
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import orjson
from _common import (
    MB,
    cli_command,
    cli_env,
    count_lines,
    machine_line,
    proc_cpu_s,
    run_measured,
    start_mock,
    table,
    transport_args,
)


def png_like(width: int, height: int, payload: int) -> bytes:
    """PNG signature, a real IHDR, one IDAT of random bytes, IEND: a PNG of ~``payload`` bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", os.urandom(payload))
            + chunk(b"IEND", b""))


def write_job(folder: Path, n: int, distinct: int, image_bytes: int) -> tuple[Path, int]:
    """Images under folder/img and the tasks: the tasks file and the image bytes they refer to."""
    (folder / "img").mkdir(parents=True)
    sizes = []
    for i in range(distinct):
        data = png_like(1024, 1024, image_bytes)
        (folder / "img" / f"{i:04d}.png").write_bytes(data)
        sizes.append(len(data))
    tasks = folder / "tasks.jsonl"
    total = 0
    with tasks.open("wb") as handle:
        for i in range(n):
            task = {"id": f"img{i}", "prompt": f"task {i}: what is in this picture?",
                    "images": [f"img/{i % distinct:04d}.png"]}
            handle.write(orjson.dumps(task) + b"\n")
            total += sizes[i % distinct]
    return tasks, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--distinct", type=int, default=200, help="distinct images (default 200)")
    ap.add_argument("--image-bytes", type=int, default=1_000_000,
                    help="size of each image (default 1,000,000)")
    ap.add_argument("-p", type=int, default=4)
    ap.add_argument("-c", type=int, default=16)
    ap.add_argument("--latency", type=float, default=200.0, help="ms (default 200)")
    ap.add_argument("--transport", default="default",
                    help="the CLI's --transport (default: not given, so the package's default)")
    ap.add_argument("--strace", action="store_true",
                    help="also list the files the parent opens, under strace")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()

    print(machine_line())
    folder = Path(tempfile.mkdtemp(prefix="mpinfer-bench-img-"))
    try:
        tasks, total_bytes = write_job(folder, args.tasks, args.distinct, args.image_bytes)
        distinct_bytes = sum(f.stat().st_size for f in (folder / "img").iterdir())
        print(f"job: {args.tasks} tasks, {args.distinct} distinct images of "
              f"{args.image_bytes / 1e6:.1f} MB ({distinct_bytes / MB:.0f} MiB distinct, "
              f"{total_bytes / MB:.0f} MiB referenced by the tasks)")
        out = folder / "results.jsonl"
        rows: list[dict[str, Any]] = []
        io_rows: list[dict[str, Any]] = []
        with start_mock(latency_ms=args.latency) as mock:
            server_cpu = proc_cpu_s(mock.pid)
            m = run_measured(cli_command("-i", str(tasks), "-o", str(out), "-p", str(args.p), "-c",
                                         str(args.c), "--base-url", mock.base_url,
                                         *transport_args(args.transport)), cwd=folder,
                             env=cli_env(), timeout_s=args.timeout, io=True)
            server_cpu = proc_cpu_s(mock.pid) - server_cpu
            stats = mock.stats()
            m.check("the run")
            L = args.latency / 1000.0
            span = stats["last_request_at"] - stats["first_request_at"] + L
            written = count_lines(out)
            k = args.p * args.c
            rows.append({
                "p": args.p, "c": args.c, "L ms": int(args.latency), "transport": args.transport,
                "tasks": args.tasks,
                "ideal/s": min(k, args.tasks) / L, "server/s": stats["requests"] / span,
                "wall s": m.wall_s, "wall/s": args.tasks / m.wall_s,
                "img MB/s": total_bytes / MB / span, "b64 MB/s": total_bytes * 4 / 3 / MB / span,
                "img MB/s wall": total_bytes / MB / m.wall_s, "CPU s": m.cpu_s,
                "CPU ms/req": 1000 * m.cpu_s / max(1, stats["requests"]), "srv CPU s": server_cpu,
                "peak RSS MB": m.peak_tree_rss / MB,
                "peak PSS MB": m.sampler.peak_pss / MB if m.sampler else None,
                "ok": written == args.tasks and stats["outcomes"]["ok"] == args.tasks,
            })
            sampler = m.sampler
            assert sampler is not None
            parent = sampler.root
            for pid, counters in sorted(sampler.last_io.items()):
                io_rows.append({"process": "parent (CLI)" if pid == parent else f"worker pid {pid}",
                                "rchar MB": counters.get("rchar", 0) / MB,
                                "syscr": counters.get("syscr", 0),
                                "read_bytes MB": counters.get("read_bytes", 0) / MB,
                                "wchar MB": counters.get("wchar", 0) / MB})
            # The control: the same run with the same tasks minus their images, for the parent's own
            # reads (its modules alone are about 11 MB of .py/.pyc, the CA bundle, the input).
            control_tasks = folder / "control.jsonl"
            control_tasks.write_bytes(b"".join(
                orjson.dumps({k: v for k, v in orjson.loads(line).items() if k != "images"}) + b"\n"
                for line in tasks.read_bytes().splitlines()))
            mock.reset()
            control = run_measured(cli_command("-i", str(control_tasks), "-o",
                                               str(folder / "control-out.jsonl"), "-p", str(args.p),
                                               "-c", str(args.c), "--base-url", mock.base_url,
                                               *transport_args(args.transport)), cwd=folder,
                                   env=cli_env(), timeout_s=args.timeout, io=True)
            control.check("the control run")
            assert control.sampler is not None
            control_parent = control.sampler.last_io.get(control.sampler.root, {})
            io_rows.append({"process": "parent, control run without images",
                            "rchar MB": control_parent.get("rchar", 0) / MB,
                            "syscr": control_parent.get("syscr", 0),
                            "read_bytes MB": control_parent.get("read_bytes", 0) / MB,
                            "wchar MB": control_parent.get("wchar", 0) / MB})
            workers = [r for r in io_rows if r["process"].startswith("worker")]
            io_rows.append({"process": "all workers",
                            "rchar MB": sum(r["rchar MB"] for r in workers),
                            "syscr": sum(r["syscr"] for r in workers),
                            "read_bytes MB": sum(r["read_bytes MB"] for r in workers),
                            "wchar MB": sum(r["wchar MB"] for r in workers)})
            opened: list[str] | None = None
            if args.strace and shutil.which("strace"):
                out.unlink()
                for extra in folder.glob("results.jsonl.*"):
                    extra.unlink()
                trace = folder / "parent.strace"
                mock.reset()
                st = run_measured(["strace", "-e", "trace=open,openat", "-o", str(trace),
                                   *cli_command("-i", str(tasks), "-o", str(out), "-p", str(args.p),
                                                "-c", str(args.c), "--base-url", mock.base_url,
                                                *transport_args(args.transport))], cwd=folder,
                                  env=cli_env(), timeout_s=args.timeout, sample=False)
                st.check("the run under strace")
                lines = trace.read_text().splitlines()
                opened = [line for line in lines if "/img/" in line or ".png" in line]
                print(f"strace: the parent made {len(lines)} open/openat calls; "
                      f"{len(opened)} of them on an image")
        print()
        print(table(rows, title="images: throughput of reading, encoding and sending 1 MB images"))
        print()
        print(table(io_rows, title="who read the image bytes: /proc/<pid>/io, "
                                   "last value seen for each process"))
        parent_row = next(r for r in io_rows if r["process"] == "parent (CLI)")
        all_row = io_rows[-1]
        control_row = next(r for r in io_rows if r["process"].startswith("parent, control"))
        extra = parent_row["rchar MB"] - control_row["rchar MB"]
        in_workers = extra < args.image_bytes / MB and all_row["rchar MB"] >= distinct_bytes / MB
        print(f"\nthe parent read {parent_row['rchar MB']:.1f} MiB in all, {extra:+.2f} MiB "
              f"against the same run without images (one image is {args.image_bytes / MB:.2f} MiB, "
              f"the tasks refer to {total_bytes / MB:.0f} MiB); the workers read "
              f"{all_row['rchar MB']:.0f} MiB. Encoding happens in the workers: "
              f"{'YES' if in_workers else 'NO'}")
        if opened is not None:
            shown = ", ".join(opened[:5]) if opened else "none"
            print("strace of the parent, image files opened: " + shown)
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
