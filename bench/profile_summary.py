"""Summarise a py-spy raw profile of a run: shares per role (parent, workers) and function.

Record the CLI and its workers (``--gil`` keeps only samples of threads holding the GIL, i.e. Python
work; without it, threads blocked in a pipe read or waiting for a CPU on a busy machine count too):

    py-spy record --subprocesses --gil --format raw -r 100 -o prof.txt \\
        -- python -m mpinfer --no-progress ...
    python bench/profile_summary.py prof.txt                 # every role
    python bench/profile_summary.py prof.txt --role "worker main" --top 40

"self" is where the sample was taken; "inclusive" is every function on the
stack at that moment. Shares are of the role's own samples.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

_PREFIXES = (re.compile(r" \(/[^()]*?/site-packages/"),
             re.compile(r" \(/[^()]*?/lib/python3\.\d+/"))


def clean(frame: str, root: str) -> str:
    """A frame without the checkout's, site-packages' or stdlib's path and without its line
    number."""
    frame = frame.replace(f" ({root}/", " (")
    for prefix in _PREFIXES:
        frame = prefix.sub(" (", frame)
    return re.sub(r":\d+\)$", ")", frame)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--role", default=None,
                    help='only this role, e.g. "worker main" or "parent main"')
    args = ap.parse_args()
    root = str(Path(__file__).resolve().parent.parent)

    roles: Counter[str] = Counter()
    own: defaultdict[str, Counter[str]] = defaultdict(Counter)
    inclusive: defaultdict[str, Counter[str]] = defaultdict(Counter)
    total = 0
    with args.profile.open() as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            processes = [f for f in frames if f.startswith("process ")]
            code = [clean(f, root) for f in frames if not f.startswith("process ")]
            # a forked child's stack names its parent too
            who = "parent" if len(processes) <= 1 else "worker"
            in_thread = any(f.startswith(("Thread._bootstrap", "_bootstrap (threading"))
                            for f in code[:3])
            role = f"{who} {'thread' if in_thread else 'main'}"
            roles[role] += n
            if code:
                own[role][code[-1]] += n
                for frame in set(code):
                    inclusive[role][frame] += n
    print(f"{total} samples")
    for role, n in roles.most_common():
        print(f"{100 * n / max(1, total):5.1f}%  {role}")
    for role, n in roles.most_common():
        if args.role and role != args.role:
            continue
        print(f"\n== {role}: {n} samples ==\n-- self --")
        for frame, k in own[role].most_common(args.top):
            print(f"{100 * k / n:5.1f}%  {frame}")
        print("-- inclusive --")
        for frame, k in inclusive[role].most_common(args.top + 15):
            print(f"{100 * k / n:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
