"""A Parquet input with its images inside, as Hugging Face datasets writes one, against the same
tasks as JSONL with image files: time to the first request, the parent's memory, throughput.

Writes N rows (10,000 by default; --full: 100,000, about 10 GB) of ~100 KB images (a PNG signature
and IHDR, then random bytes, so they sniff as PNG and do not compress), each row its own image, as
a Parquet file of ``{bytes, path}`` structs in row groups of 100 rows (what ``datasets`` writes for
an image column), and the same tasks as JSONL whose images are files. Both run through the CLI
(-p 4 -c 16) against the mock server at L = 200 ms, which checks that every image arrives as valid
base64. Reported for each:

- first request: seconds from the CLI's launch to the mock's first request (it checks the input
  first: for Parquet it reads the id and prompt columns and each struct's path, not the bytes);
- the parent's peak RSS (the CLI process alone, sampled every 50 ms) and the tree's;
- requests/s at the server (from its first request to its last), and by wall time.

Targets (issue 26): first request under 3 s, the parent under 300 MB, and Parquet's throughput
within 10 % of JSONL's (the peer measured in the same run): each MET or MISSED.

    python bench/parquet_input.py                 # 10,000 rows, about 1 GB each way
    python bench/parquet_input.py --full          # 100,000 rows, about 10 GB each way
    python bench/parquet_input.py --rows 2000     # a quick try
    python bench/parquet_input.py --full --run-rows 3000   # the full input checked, 3,000 sent
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
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
    run_measured,
    start_mock,
    table,
)
from images import png_like

GROUP_ROWS = 100  # datasets' writer batch for image columns: its row groups hold 100 rows
FIRST_REQUEST_S = 3.0
PARENT_MB = 300.0
THROUGHPUT_RATIO = 0.9


def write_inputs(folder: Path, n: int, image_bytes: int) -> tuple[Path, Path]:
    """The same n tasks as a datasets-shaped Parquet file and as JSONL with image files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = folder / "img"
    images.mkdir(parents=True)
    parquet = folder / "train-00000-of-00001.parquet"
    jsonl = folder / "tasks.jsonl"
    meta = {b"huggingface": orjson.dumps({"info": {"features": {
        "id": {"dtype": "string", "_type": "Value"},
        "prompt": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"}}}})}
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()),
                        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))],
                       metadata=meta)
    with pq.ParquetWriter(parquet, schema) as writer, jsonl.open("wb") as lines:
        for start in range(0, n, GROUP_ROWS):
            rows = []
            for i in range(start, min(n, start + GROUP_ROWS)):
                data = png_like(512, 512, image_bytes)
                name = f"{i:06d}.png"
                (images / name).write_bytes(data)
                prompt = f"task {i}: what is in this picture?"
                rows.append({"id": f"r{i}", "prompt": prompt,
                             "image": {"bytes": data, "path": name}})
                lines.write(orjson.dumps({"id": f"r{i}", "prompt": prompt,
                                          "images": [f"img/{name}"]}) + b"\n")
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return parquet, jsonl


def measure(mock: Any, folder: Path, source: Path, name: str, n: int, args: argparse.Namespace,
            extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One run of the CLI on ``source``, measured."""
    mock.reset()
    out = folder / f"{name}-results.jsonl"
    m = run_measured(cli_command("-i", str(source), "-o", str(out), "-p", str(args.p),
                                 "-c", str(args.c), "--base-url", mock.base_url, *extra),
                     cwd=folder, env=cli_env(), timeout_s=args.timeout)
    m.check(f"the {name} run")
    stats = mock.stats()
    latency = args.latency / 1000.0
    span = stats["last_request_at"] - stats["first_request_at"] + latency
    assert m.sampler is not None
    return {"input": name, "sent": n, "first request s": stats["first_request_at"] - m.started_at,
            "parent peak RSS MB": m.sampler.peak_root_rss / MB,
            "tree peak RSS MB": m.peak_tree_rss / MB, "server/s": stats["requests"] / span,
            "wall s": m.wall_s, "wall/s": n / m.wall_s, "CPU s": m.cpu_s,
            "ok": count_lines(out) == n and stats["outcomes"]["ok"] == n}


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--full", action="store_true", help="100,000 rows (about 10 GB each way)")
    ap.add_argument("--image-bytes", type=int, default=100_000)
    ap.add_argument("--run-rows", type=int, default=None,
                    help="send only the first N rows (--limit): the whole input is still checked "
                         "before the first request, so its time and the parent's memory are the "
                         "full input's")
    ap.add_argument("-p", type=int, default=4)
    ap.add_argument("-c", type=int, default=16)
    ap.add_argument("--latency", type=float, default=200.0, help="ms (default 200)")
    ap.add_argument("--timeout", type=float, default=3600.0)
    args = ap.parse_args()
    n = 100_000 if args.full else args.rows

    print(machine_line())
    folder = Path(tempfile.mkdtemp(prefix="mpinfer-bench-parquet-"))
    need_gb = 2.2 * n * args.image_bytes / 1e9
    if free_disk_gb(folder) < need_gb + 2:
        print(f"needs about {need_gb:.0f} GB free under {folder.parent}")
        return 1
    try:
        parquet, jsonl = write_inputs(folder, n, args.image_bytes)
        print(f"job: {n:,} rows of {args.image_bytes / 1e3:.0f} KB images; Parquet "
              f"{parquet.stat().st_size / MB:,.0f} MiB in row groups of {GROUP_ROWS}")
        with start_mock(latency_ms=args.latency) as mock:
            limit = ("--limit", str(args.run_rows)) if args.run_rows else ()
            sent = min(n, args.run_rows or n)
            rows = [measure(mock, folder, parquet, "parquet", sent, args,
                            ("--images-key", "image", *limit)),
                    measure(mock, folder, jsonl, "jsonl + files", sent, args, limit)]
        print()
        print(table(rows, title="a datasets Parquet file against the same tasks as JSONL"))
        got, peer = rows
        ratio = got["server/s"] / peer["server/s"]
        print()
        print(f"first request {got['first request s']:.2f} s (target < {FIRST_REQUEST_S:g} s): "
              f"{verdict(got['first request s'] < FIRST_REQUEST_S)}")
        print(f"parent peak RSS {got['parent peak RSS MB']:.0f} MB (target < {PARENT_MB:g} MB): "
              f"{verdict(got['parent peak RSS MB'] < PARENT_MB)}")
        print(f"throughput {ratio:.2f} x JSONL's (target >= {THROUGHPUT_RATIO:g}): "
              f"{verdict(ratio >= THROUGHPUT_RATIO)}")
        print(f"every row answered once: {verdict(got['ok'] and peer['ok'])}")
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
