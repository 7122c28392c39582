"""What the benchmarks share: the CLI as a user runs it, a process-tree sampler, and table printing.

Every benchmark runs the real command line (``python -m mpinfer ... --no-progress``) in a
subprocess, in a temporary folder, against the package's mock server on 127.0.0.1. This module
measures such a subprocess from the outside:

- wall time, from just before the launch to the moment the process is reaped;
- CPU (user + sys) of the whole process tree, from ``os.wait4`` on the CLI and cross-checked
  against the delta of ``getrusage(RUSAGE_CHILDREN)``: the kernel adds a process's CPU to its
  parent's "children" account when the parent reaps it, so the CLI's workers (which the CLI
  joins) count in the CLI's account, which counts in ours once we reap the CLI. A third figure,
  the sum of the last CPU ticks seen for every process of the tree in ``/proc/<pid>/stat``,
  shows that the workers are really in it;
- peak memory of one process (``peak_memory=True``: from /usr/bin/time, see ``run_measured``);
- the peak of the summed RSS of the tree (parent plus workers), sampled from ``/proc`` every 50 ms,
  and the peak summed PSS (shared pages split between the processes that map them) every 0.5 s;
- optionally the ``/proc/<pid>/io`` counters of every process of the tree (the last value seen).

Nothing here imports mpinfer: the benchmarks measure it, they do not use its insides (except where a
benchmark says so, in a subprocess of its own).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DUMMY_KEY = "sk-bench-000000000000000000dummy"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 0.05
PSS_EVERY = 10  # samples: PSS (smaps_rollup) is dearer to read than /proc/<pid>/stat
MB = 1024 * 1024
TIME_BIN = "/usr/bin/time"

sys.path.insert(0, str(REPO))  # the mock server helper, from this checkout


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment minus OPENAI_/MPINFER_ settings, plus a dummy key and this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MPINFER_"))}
    env["OPENAI_API_KEY"] = DUMMY_KEY
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def cli_command(*args: str) -> list[str]:
    """The command line a user would run: ``python -m mpinfer --no-progress ...``."""
    return [sys.executable, "-m", "mpinfer", "--no-progress", *args]


def cli_help() -> str:
    """The CLI's --help text (to see which options this version of the package has)."""
    done = subprocess.run(cli_command("--help"), env=cli_env(), capture_output=True, text=True,
                          timeout=120, check=False)
    return done.stdout


def transports(wanted: str) -> list[str]:
    """The --transport values to run: ``auto`` is every one the CLI offers, else its only one."""
    text = cli_help()
    if "--transport" not in text:
        return ["default"]
    if wanted != "auto":
        return [t.strip() for t in wanted.split(",") if t.strip()]
    return ["aiohttp", "httpx"]


def transport_args(transport: str) -> list[str]:
    """The flags that pick ``transport`` (none for a package without the switch)."""
    return [] if transport == "default" else ["--transport", transport]


def python_command(code: str) -> list[str]:
    """A command that runs ``code`` in this interpreter."""
    return [sys.executable, "-c", code]


# -- the process tree ------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _children(pid: int, all_threads: bool) -> list[int]:
    """Direct children of ``pid`` (of its main thread only, unless ``all_threads``)."""
    tids = [str(pid)]
    if all_threads:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return []
    found: list[int] = []
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/children")
        if text:
            found.extend(int(x) for x in text.split())
    return found


def tree(root: int) -> list[int]:
    """``root`` and its descendants, now."""
    pids = [root]
    queue = [root]
    while queue and len(pids) < 10_000:
        pid = queue.pop()
        kids = _children(pid, all_threads=(pid == root))
        pids.extend(kids)
        queue.extend(kids)
    return pids


def stat_of(pid: int) -> tuple[int, int] | None:
    """(CPU ticks user+sys, RSS bytes) of one process from /proc/<pid>/stat."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text[text.rfind(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, rss 24.
    return int(fields[11]) + int(fields[12]), int(fields[21]) * PAGE


def pss_of(pid: int) -> int | None:
    """The process's proportional set size in bytes, or None if it is gone."""
    text = _read(f"/proc/{pid}/smaps_rollup")
    if not text:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return None


def io_of(pid: int) -> dict[str, int] | None:
    """The process's ``/proc/<pid>/io`` counters, or None if it is gone."""
    text = _read(f"/proc/{pid}/io")
    if not text:
        return None
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines() if ": " in line)}


class TreeSampler(threading.Thread):
    """Samples a process tree every ``SAMPLE_S`` until stopped: peaks, each pid's last values."""

    def __init__(self, root: int, io: bool = False, interval_s: float = SAMPLE_S) -> None:
        super().__init__(name="tree-sampler", daemon=True)
        self.root = root
        self.io = io
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self.peak_rss = 0
        self.peak_root_rss = 0  # the root process's own (the CLI's parent)
        self.peak_pss = 0
        self.peak_procs = 0
        self.samples = 0
        self.last_ticks: dict[int, int] = {}
        self.last_io: dict[int, dict[str, int]] = {}
        self.seen: set[int] = set()

    def run(self) -> None:
        """Sample until stopped (at most a day)."""
        deadline = time.monotonic() + 24 * 3600
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            self.sample()
            self.stop_event.wait(self.interval_s)

    def sample(self) -> None:
        """Read the tree once: CPU ticks, summed RSS, I/O if asked, and PSS every PSS_EVERY
        samples."""
        pids = tree(self.root)
        rss = 0
        alive = 0
        for pid in pids:
            got = stat_of(pid)
            if got is None:
                continue
            alive += 1
            self.last_ticks[pid] = got[0]
            rss += got[1]
            if pid == self.root:
                self.peak_root_rss = max(self.peak_root_rss, got[1])
            self.seen.add(pid)
            if self.io:
                counters = io_of(pid)
                if counters is not None:
                    self.last_io[pid] = counters
        if self.samples % PSS_EVERY == 0:
            pss = sum(v for v in (pss_of(pid) for pid in pids) if v is not None)
            self.peak_pss = max(self.peak_pss, pss)
        self.samples += 1
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_procs = max(self.peak_procs, alive)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self.stop_event.set()
        self.join(timeout=5)

    @property
    def sampled_cpu_s(self) -> float:
        """The tree's CPU seconds from the last ticks seen of each process."""
        return sum(self.last_ticks.values()) / TICK


@dataclass
class Measured:
    """One subprocess, measured from the outside."""

    returncode: int
    wall_s: float
    started_at: float  # time.monotonic() just before the launch
    cpu_s: float  # user+sys of the process and every descendant it reaped (os.wait4)
    children_cpu_s: float  # the same from our RUSAGE_CHILDREN delta: a cross-check
    # bytes: the largest single process of the tree (ru_maxrss; see run_measured's peak_memory)
    maxrss: int
    stdout: str
    stderr: str
    sampler: TreeSampler | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_tree_rss(self) -> int:
        """The largest summed RSS of the tree seen (0 if it was not sampled)."""
        return self.sampler.peak_rss if self.sampler else 0

    def check(self, what: str) -> None:
        """Raise with the output's tails if the command failed."""
        if self.returncode != 0:
            raise RuntimeError(f"{what} exited {self.returncode}\nstdout:\n{self.stdout[-3000:]}\n"
                               f"stderr:\n{self.stderr[-3000:]}")


def run_measured(cmd: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None,
                 timeout_s: float = 900.0, sample: bool = True, io: bool = False,
                 peak_memory: bool = False) -> Measured:
    """Run ``cmd`` to its end (killed after ``timeout_s``) and measure it (module docstring).

    ``peak_memory``: run it under ``/usr/bin/time`` and take ``maxrss`` from there. The
    ru_maxrss that os.wait4 (or RUSAGE_CHILDREN) reports for a child we spawn directly is
    useless for that: Linux keeps the high-water RSS of the address space a process had
    before its exec, and a child forked (or vforked) from this benchmark process starts with
    ours, so a 9 MB ``python -c pass`` shows as large as the benchmark itself. /usr/bin/time
    is small, so the child it forks starts small.
    """
    time_file: str | None = None
    if peak_memory and os.path.exists(TIME_BIN):
        handle, time_file = tempfile.mkstemp(prefix="mpinfer-bench-time-")
        os.close(handle)
        cmd = [TIME_BIN, "-f", "%M", "-o", time_file, *cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=err)
        sampler = TreeSampler(proc.pid, io=io) if sample else None
        if sampler:
            sampler.start()
        reaped: list[tuple[int, int, Any]] = []
        waiter = threading.Thread(target=lambda: reaped.append(os.wait4(proc.pid, 0)), daemon=True)
        waiter.start()
        waiter.join(timeout_s)
        if not reaped:
            for pid in reversed(tree(proc.pid)):  # the processes this call started, by their ids
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            waiter.join(10)
        ended = time.monotonic()
        if sampler:
            sampler.stop()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if not reaped:
            raise RuntimeError(f"{cmd} could not be reaped")
        _, status, usage = reaped[0]
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        measured = Measured(
            returncode=proc.returncode,
            wall_s=ended - started,
            started_at=started,
            cpu_s=usage.ru_utime + usage.ru_stime,
            children_cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            maxrss=usage.ru_maxrss * 1024,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            sampler=sampler,
        )
        if proc.returncode == -signal.SIGKILL and ended - started >= timeout_s:
            measured.extra["timed_out"] = True
        measured.extra["maxrss_wait4"] = measured.maxrss
        if time_file is not None:
            try:
                text = Path(time_file).read_text().strip().splitlines()
                measured.maxrss = int(text[-1]) * 1024
            except (OSError, ValueError, IndexError):
                measured.maxrss = 0
            finally:
                os.unlink(time_file)
        elif peak_memory:
            print(f"warning: no {TIME_BIN}: peak memory from os.wait4 includes this process's own",
                  file=sys.stderr)
        return measured


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user+sys) a live process used so far (e.g. the mock server)."""
    got = stat_of(pid)
    return got[0] / TICK if got else 0.0


# -- the mock server -------------------------------------------------------------------------------


def start_mock(**config: Any) -> Any:
    """The package's mock server in its own process, on 127.0.0.1."""
    from mpinfer.mockserver import MockServerProcess

    return MockServerProcess(ready_timeout_s=30.0).start(host="127.0.0.1", **config)


def poll_stats(root_url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET /_mock/stats without a proxy (for pollers in threads)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(root_url + "/_mock/stats", timeout=timeout_s) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


# -- files -----------------------------------------------------------------------------------------


def write_text_tasks(path: Path, n: int, prefix: str = "t") -> Path:
    """n small text tasks with unique prompts."""
    with path.open("wb") as handle:
        for start in range(0, n, 10_000):
            line = b'{"id":"%s%d","prompt":"question %d: what is %d + %d?"}\n'
            handle.write(b"".join(line % (prefix.encode(), i, i, i, i)
                                  for i in range(start, min(n, start + 10_000))))
    return path


def count_lines(path: Path) -> int:
    """Lines in ``path`` (0 if it does not exist), read in 1 MB chunks."""
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def free_disk_gb(path: Path) -> float:
    """GB free for us on ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 1e9


# -- output ----------------------------------------------------------------------------------------


def table(rows: Sequence[dict[str, Any]], columns: Iterable[str] | None = None,
          title: str = "") -> str:
    """A plain text table; numbers right-aligned."""
    if not rows:
        return f"{title}\n(no rows)" if title else "(no rows)"
    cols = list(columns) if columns is not None else list(rows[0])
    cells = [[_cell(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    numeric = [all(_is_number(row.get(c)) or row.get(c) is None for row in rows) for c in cols]

    def line(values: Sequence[str]) -> str:
        cells = (v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(values, widths, numeric, strict=True))
        return "  ".join(cells).rstrip()

    out = [title] if title else []
    out.append(line(cols))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine_line() -> str:
    """The machine the numbers come from, and its load now."""
    import platform

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}; mock server and client share the cores; "
            f"load average now {load} (anything else running skews the numbers)")
