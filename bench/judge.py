"""A judged evaluation: what judging adds, and what a rerun of a finished one costs.

N tasks x 2 models are answered and judged (--judge, labels) against the mock server in one
command; then the same command runs again on the finished job, and, as the floor, the same command
without --judge. Measured: wall seconds and the requests the server received at each step. What
should hold: the judged run sends 2N answers and 2N judgments (judging adds only its own requests),
the rerun sends nothing, and its time is the floor's plus one judging run's start per output.

    python bench/judge.py                 # 5,000 tasks
    python bench/judge.py --tasks 100000  # the issue's size (2 models)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    cli_command,
    cli_env,
    machine_line,
    poll_stats,
    run_measured,
    start_mock,
    table,
    write_text_tasks,
)

JUDGE = """model = "judge-model"
template = "Question: {prompt}\\nAnswer by {model}: {answer}\\nSafe or unsafe?"
labels = ["safe", "unsafe"]
"""


def main() -> None:
    """Run the three steps and print their table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=5000)
    args = parser.parse_args()
    print(machine_line())
    folder = Path(tempfile.mkdtemp(prefix="mpinfer-bench-judge-"))
    mock = start_mock(answer_labels=("safe", "unsafe"))
    try:
        write_text_tasks(folder / "tasks.jsonl", args.tasks)
        (folder / "judge.toml").write_text(JUDGE)
        base = ("-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "m1,m2", "-p", "2", "-c", "64",
                "--base-url", mock.base_url)
        rows: list[dict[str, Any]] = []
        for step, extra in (("answers + judge", ("--judge", "judge.toml")),
                            ("rerun, judged", ("--judge", "judge.toml")),
                            ("rerun, no judge (floor)", ())):
            before = poll_stats(mock.root_url)
            measured = run_measured(cli_command(*base, *extra), cwd=folder, env=cli_env())
            measured.check(step)
            after = poll_stats(mock.root_url)
            judge = (after["per_model"].get("judge-model", 0)
                     - before["per_model"].get("judge-model", 0))
            rows.append({"step": step, "wall s": round(measured.wall_s, 2),
                         "requests": after["requests"] - before["requests"],
                         "judge requests": judge})
        print(table(rows))
        judged = sum(1 for _ in (folder / "out.m1.judge.jsonl").open()) + sum(
            1 for _ in (folder / "out.m2.judge.jsonl").open())
        print(f"judge lines: {judged} (expected {2 * args.tasks})")
    finally:
        mock.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
