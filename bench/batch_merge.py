"""--backend batch end to end: batches a run creates, rows resubmitted, time to merge.

Runs the real command line (``--backend batch``) in a subprocess against the package's
mock server, whose Batch API works the batch in the background, on N text tasks (N =
50,000 by default, one full batch):

(a) a clean job: one batch of N rows;
(b) a job whose first batch expires after 80% of its rows: their answers are
    merged and the rest go into a second batch;
(c) the same job killed with SIGKILL while it polls, then rerun: the rerun must
    create no batch of its own.

For each: wall time of the run(s), batches the mock created, the most batches any row was sent in,
rows resubmitted (from the plan), answers in the output, and the merge time the backend logs for its
largest batch (download of the output and error files, parsing, result lines, appends). MET when
every id is in the output once, no row was answered twice, and merging N answers took under
MERGE_TARGET_S.

    python bench/batch_merge.py                 # 50,000 rows
    python bench/batch_merge.py --rows 5000     # a quick try
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    cli_command,
    cli_env,
    count_lines,
    machine_line,
    start_mock,
    table,
    write_text_tasks,
)

MERGE_TARGET_S = 10.0
_MERGED = re.compile(
    rb"(\d+) answers merged, \d+ failures recorded, \d+ resubmitted, in ([0-9.]+)s")


def _args(base_url: str, out: str) -> list[str]:
    return ["-i", "tasks.jsonl", "-o", out, "--backend", "batch", "--batch-poll", "0.5",
            "--base-url", base_url, "-v"]


def _merge_s(folder: Path) -> float | None:
    """The longest merge the backend logged in this folder's run logs."""
    times = [float(m.group(2)) for log in (folder / "logs").glob("*.log")
             for m in _MERGED.finditer(log.read_bytes())]
    return max(times) if times else None


def _plan(folder: Path, out: str) -> dict[str, Any]:
    path = folder / (out + ".batches.json")
    return json.loads(path.read_bytes()) if path.exists() else {"chunks": []}


def _case(name: str, rows: int, mock: Any, faults: dict[str, Any], kill: bool) -> dict[str, Any]:
    mock.batch_faults(reset=True, **faults)
    with tempfile.TemporaryDirectory(prefix="mpinfer-bench-batch-") as tmp:
        folder = Path(tmp)
        write_text_tasks(folder / "tasks.jsonl", rows)
        out = "results.jsonl"
        started = time.monotonic()
        if kill:
            proc = subprocess.Popen(cli_command(*_args(mock.base_url, out)), cwd=folder,
                                    env=cli_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(c.get("batch_id")
                                                          for c in _plan(folder, out)["chunks"]):
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            mock.batch_faults(request_s=0)
        done = subprocess.run(cli_command(*_args(mock.base_url, out)), cwd=folder, env=cli_env(),
                              capture_output=True, timeout=900, check=False)
        wall = time.monotonic() - started
        stats = mock.batch_stats()
        plan = _plan(folder, out)
        answers = count_lines(folder / out)
        ids = {json.loads(line)["id"] for line in (folder / out).read_bytes().splitlines()
               if line.strip()}
        merge_s = _merge_s(folder)
        ok = (done.returncode == 0 and answers == rows == len(ids)
              and stats["max_answers_per_row"] == 1 and merge_s is not None
              and merge_s < MERGE_TARGET_S)
        return {"case": name, "rows": rows, "wall_s": round(wall, 1),
                "batches": stats["batches_created"],
                "max_batches_a_row": stats["max_batches_per_row"],
                "resubmitted": sum(c.get("resubmitted", 0) for c in plan["chunks"]),
                "answers": answers, "merge_s_largest": merge_s,
                "verdict": "MET" if ok else "MISSED"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=50_000)
    args = parser.parse_args()
    print(machine_line())
    with start_mock() as mock:
        results = [
            _case("clean", args.rows, mock, {}, kill=False),
            _case("expires at 80%", args.rows, mock,
                  {"expire_next": 1, "expire_after": int(args.rows * 0.8)},
                  kill=False),
            _case("kill -9 while polling, rerun", args.rows, mock, {"request_s": 0.0005},
                  kill=True),
        ]
    print(table(results,
                title=f"--backend batch, {args.rows:,} rows (merge target < {MERGE_TARGET_S:g}s)"))
    return 0 if all(r["verdict"] == "MET" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
