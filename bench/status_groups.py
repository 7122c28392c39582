"""Results by group: the first and second ``--status --json --by scenario`` on a big finished
evaluation, against the floor of reading its files' lines, measured in the same run.

Writes N tasks (N = 100,000 by default) in 13 scenarios, and for each of 2 variants x 2 models an
answers output of N lines (each with its ``variant`` and ``label``, as EVAL.md says; about 600
bytes) and its judge file of N verdicts: 4 N answers and 4 N verdicts. Until run_outputs (issue 23's
variants) is on main the four outputs are given as four models (``--model v1-m1,...``) whose lines
name their variant, which reads the same files the same way. Then times, each in its own process:

- the floor: a Python process that iterates every line of the input, the outputs and the judge
  files (``for line in file``), no decoding: what any reader of those files pays at least;
- ``--status --json`` (no --by), first (no cache) and second (from the status cache);
- ``--status --json --by scenario``, first (no caches) and second (both caches): the second must
  take under 2 s (issue 23), printed as MET or MISSED.

    python bench/status_groups.py                  # 100,000 tasks x 2 variants x 2 models
    python bench/status_groups.py --tasks 10000    # a quick try
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from _common import MB, cli_command, cli_env, machine_line, python_command, run_measured, table

SECOND_TARGET_S = 2.0
SCENARIOS = ["illegal_activity", "hate_speech", "malware", "physical_harm", "economic_harm",
             "fraud", "sex", "political_lobbying", "privacy_violence", "legal_opinion",
             "financial_advice", "health_consultation", "gov_decision"]
VARIANTS = ("v1", "v2")
MODELS = ("m1", "m2")
LABELS = ("safe", "unsafe")

FLOOR_CODE = """
import sys
lines = 0
for name in sys.argv[1:]:
    with open(name, "rb") as handle:
        for _ in handle:
            lines += 1
print(lines)
"""


def generate(folder: Path, n: int) -> tuple[Path, list[Path]]:
    """The input and, per (variant, model), an answers output and its judge file."""
    tasks = folder / "tasks.jsonl"
    with tasks.open("wb") as handle:
        handle.write(b"".join(orjson.dumps({
            "id": f"t{i:07d}", "prompt": f"question {i}: what does the picture show?",
            "images": [f"img/{i % 50}.png"], "scenario": SCENARIOS[i % len(SCENARIOS)]}) + b"\n"
            for i in range(n)))
    files = []
    answer = "The image shows a street at night with a sign. " * 6
    for variant in VARIANTS:
        for model in MODELS:
            output = folder / f"results.{variant}-{model}.jsonl"
            judge = folder / f"results.{variant}-{model}.judge.jsonl"
            with output.open("wb") as out, judge.open("wb") as verdicts:
                for start in range(0, n, 20_000):
                    ids = range(start, min(n, start + 20_000))
                    out.write(b"".join(orjson.dumps({
                        "id": f"t{i:07d}", "input_prompt": f"question {i}", "images": [],
                        "answer": answer, "model": model, "requested_model": model,
                        "usage": {"prompt_tokens": 812, "completion_tokens": 64,
                                  "total_tokens": 876},
                        "finish_reason": "stop", "latency_s": 0.8, "attempts": 1,
                        "processed_at": 1795300000.0 + i, "cost": 0.0002,
                        "variant": variant, "label": LABELS[i % 2]}) + b"\n" for i in ids))
                    verdicts.write(b"".join(orjson.dumps({
                        "id": f"t{i:07d}", "label": LABELS[(i // 3) % 2], "text": "verdict",
                        "judge_model": "judge", "of": "answer", "usage": None, "cost": None,
                        "sent": True}) + b"\n" for i in ids))
            files += [output, judge]
    return tasks, files


def measure(name: str, cmd: list[str], folder: Path, clear: bool) -> tuple[dict[str, Any], Any]:
    """One run of ``cmd`` (the caches removed first when ``clear``), as a table row."""
    if clear:
        for cache in folder.glob(".*status-cache*"):
            cache.unlink()
    m = run_measured(cmd, cwd=folder, env=cli_env(), sample=False, timeout_s=900)
    m.check(name)
    return {"step": name, "wall s": m.wall_s, "CPU s": m.cpu_s}, m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000, help="tasks (default 100,000)")
    ap.add_argument("--dir", type=Path, default=None, help="write the files here (kept)")
    args = ap.parse_args()
    print(machine_line())
    folder = args.dir or Path(tempfile.mkdtemp(prefix="mpinfer-bench-groups-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.monotonic()
        tasks, files = generate(folder, args.tasks)
        size = sum(f.stat().st_size for f in [tasks, *files]) / MB
        print(f"generated {len(files) // 2} outputs and judge files of {args.tasks:,} lines "
              f"({size:,.0f} MB) in {time.monotonic() - started:.1f} s")
        models = ",".join(f"{v}-{m}" for v in VARIANTS for m in MODELS)
        status = ["-i", str(tasks), "-o", str(folder / "results.jsonl"), "--model", models,
                  "--status", "--json"]
        rows = []
        floor, m = measure("floor: iterate every line", [*python_command(FLOOR_CODE),
                                                         str(tasks), *map(str, files)],
                           folder, clear=False)
        floor["check"] = f"{int(m.stdout.strip()):,} lines"
        rows.append(floor)
        for name, extra in (("--status", ()), ("--status --by scenario", ("--by", "scenario"))):
            for turn, clear in (("first", True), ("second", False)):
                row, m = measure(f"{name}, {turn}", cli_command(*status, *extra), folder, clear)
                report = json.loads(m.stdout)
                groups = report.get("groups")
                row["check"] = f"done {report['done']:,}"
                if groups is not None:
                    labelled = sum(sum(g["labels"].values()) for g in groups)
                    row["check"] += f", {len(groups)} groups, labels {labelled:,}"
                rows.append(row)
        for row in rows:
            row["x floor"] = row["wall s"] / floor["wall s"]
        title = f"{args.tasks:,} tasks x {len(VARIANTS)} variants x {len(MODELS)} models"
        print(table(rows, ["step", "wall s", "CPU s", "x floor", "check"], title=title))
        second = rows[-1]["wall s"]
        verdict = "MET" if second < SECOND_TARGET_S else "MISSED"
        print(f"second --status --by: {second:.2f} s (target < {SECOND_TARGET_S:g} s): {verdict}")
        return 0
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
