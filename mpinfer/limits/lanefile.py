"""Lane records in memory that processes share: a file per lane under the state folder, or private.

A lane's record (``LaneRecord``) holds its ``Lane``, the windows' rings, the runs that use it and
the holders of its grants. Every run on this machine that uses the same key, base URL (or Azure
deployment) and model maps the same file, ``<folder>/<lane id>.v2.lane``: the lane id is a hash of a
keyed hash of the key (``key_digest``) with the endpoint and the model, so the key never enters the
file or its name. A run with sharing off, and a lane without an id, gets a record in anonymous
shared memory, which its forked workers inherit.

Each record has its own POSIX record lock (the lane file's first byte, or a byte of a private temp
file), so runs on different lanes never wait on each other, and the kernel drops a lock with its
holder. The functions here expect that lock to be held.

Nothing held outlives its process: each run and each holder of grants is recorded with its pid and
the process's start time (``process_start``), and ``sweep`` gives back what dead ones held. When a
run attaches to a lane no live run uses, the lane starts afresh but for its rings: the requests and
tokens a dead run sent still count in the server's window.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import mmap
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .lanes import Lane
from .learned import remembered
from .windows import TOKEN_RING

#: Request start times kept per lane: --rpm up to this is held in every window; above it, paced.
REQUEST_RING = 32768
RUNS = 32          # runs that may share a lane at once
HOLDERS = 256      # grant holders (worker processes, Ray workers) per lane
LABEL = 120        # bytes of a run's label (its output file)
MAGIC = b"mpinfer-lane-v2"
#: Requests in flight on a lane when nothing limits them.
UNLIMITED_IN_FLIGHT = 1 << 20


class RunEntry(ctypes.Structure):
    """A run using the lane: who it is, and the limits it was told (0: none)."""

    _fields_ = [("run", ctypes.c_int64), ("pid", ctypes.c_int64), ("started", ctypes.c_int64),
                ("rpm", ctypes.c_double), ("tpm", ctypes.c_double),
                ("in_flight", ctypes.c_int64), ("own_in_flight", ctypes.c_int64),
                ("label", ctypes.c_char * LABEL)]


class Holder(ctypes.Structure):
    """A holder of grants on the lane: a run's worker slot, in the process that holds them."""

    _fields_ = [("run", ctypes.c_int64), ("holder", ctypes.c_int64), ("pid", ctypes.c_int64),
                ("started", ctypes.c_int64), ("held", ctypes.c_int64)]


class LaneRecord(ctypes.Structure):
    """One lane as processes share it."""

    _fields_ = [("magic", ctypes.c_char * 16), ("boot", ctypes.c_char * 40), ("lane", Lane),
                ("swept_at", ctypes.c_double), ("runs", RunEntry * RUNS),
                ("holders", Holder * HOLDERS), ("req_ring", ctypes.c_double * REQUEST_RING),
                ("tok_time", ctypes.c_double * TOKEN_RING),
                ("tok_amount", ctypes.c_double * TOKEN_RING)]


RECORD_SIZE = ctypes.sizeof(LaneRecord)


def default_folder() -> Path:
    """Where shared lanes live: $XDG_STATE_HOME/mpinfer/limits (~/.local/state by default)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                             "state")
    return Path(state) / "mpinfer" / "limits"


def key_digest(key: str) -> str:
    """A keyed hash of an API key: names it in lane ids, never revealing it."""
    return hashlib.sha256(b"mpinfer-limits-key\0" + key.encode()).hexdigest()[:24]


def lane_id(key: str, where: str, model: str) -> str:
    """The id of a lane: the key (by its digest), where requests go (base URL, deployment), and
    the model."""
    text = "\0".join((key_digest(key), where, model))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _boot_id() -> bytes:
    # Times in a record are time.monotonic(): they mean nothing after a reboot.
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read().strip()[:39]
    except OSError:
        return b"unknown"


BOOT = _boot_id()


def process_start(pid: int) -> int:
    """The start time of process ``pid`` (clock ticks since boot); -1 when it is gone (or a zombie).

    A pid and its start time name a process: a pid reused by a new process has another start.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        if os.path.isdir("/proc"):
            return -1
        try:  # no /proc: whether the pid lives is all there is to know
            os.kill(pid, 0)
        except ProcessLookupError:
            return -1
        except PermissionError:
            pass
        return 0
    return -1 if fields[0] == b"Z" else int(fields[19])


SELF_START: dict[int, int] = {}


def own_start() -> int:
    """This process's start time (kept per pid: a forked child has its own)."""
    pid = os.getpid()
    if pid not in SELF_START:
        SELF_START[pid] = process_start(pid)
    return SELF_START[pid]


def new_run_id() -> int:
    """A run's number in the lanes it uses: random, so two runs in one process differ."""
    return secrets.randbits(62) + 1


# -- where records live ----------------------------------------------------------------------------


@dataclass
class Mapped:
    """A record in memory, and the lock that guards it: ``(fd, offset)`` of one byte; ``with`` it
    holds the lock."""

    record: LaneRecord
    fd: int
    offset: int

    def acquire(self) -> None:
        """Take the record's lock (blocks)."""
        lock(self.fd, self.offset)

    def release(self) -> None:
        """Give it back."""
        unlock(self.fd, self.offset)

    # (lockf here, not through acquire and lock: taken twice for every request)
    def __enter__(self) -> LaneRecord:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, self.offset)
        return self.record

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, self.offset)


_OPEN: dict[str, tuple[int, mmap.mmap, LaneRecord]] = {}  # lane files this process has mapped


def open_shared(folder: Path, lane: str) -> Mapped:
    """The record of lane ``lane`` in ``folder``, mapped (created and made fresh when needed).

    Each file stays open and mapped for the life of the process: closing any descriptor of a file
    drops every record lock the process holds on it.
    """
    # The record's layout is in the name: runs of two versions never map one file two ways.
    path = str(folder / f"{lane}.{MAGIC[-2:].decode()}.lane")
    if path not in _OPEN:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        lock(fd, 0)
        try:
            if os.fstat(fd).st_size < RECORD_SIZE:
                os.ftruncate(fd, RECORD_SIZE)
            memory = mmap.mmap(fd, RECORD_SIZE)
            record = LaneRecord.from_buffer(memory)
            if record.magic != MAGIC or record.boot != BOOT:
                ctypes.memset(ctypes.addressof(record), 0, RECORD_SIZE)
                record.magic = MAGIC
                record.boot = BOOT
                fresh_lane(record, 0)
        finally:
            unlock(fd, 0)
        _OPEN[path] = (fd, memory, record)
    fd, _, record = _OPEN[path]
    return Mapped(record, fd, 0)


class PrivateRecords:
    """Records only this run (and its forked workers) sees: anonymous shared memory, one lock file
    with a byte per record."""

    def __init__(self, count: int) -> None:
        import tempfile

        self._file = tempfile.TemporaryFile(prefix="mpinfer-limiter-")
        self._memory = mmap.mmap(-1, max(1, count) * RECORD_SIZE)
        self.count = count

    def get(self, index: int) -> Mapped:
        """Record ``index``, fresh."""
        record = LaneRecord.from_buffer(self._memory, index * RECORD_SIZE)
        fresh_lane(record, 0)
        return Mapped(record, self._file.fileno(), index)


def lock(fd: int, offset: int) -> None:
    """Take the record lock of the record at ``offset`` (blocks)."""
    fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)


def unlock(fd: int, offset: int) -> None:
    """Give it back."""
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)


# -- runs and holders (the record's lock held) -----------------------------------------------------


def fresh_lane(record: LaneRecord, in_flight: int, slow_start: bool = False,
               now: float | None = None) -> None:
    """The lane as no run has used it, but for its rings, the grants live holders still hold and
    what the server last said of its limits; ``slow_start``: it opens one request at a time until
    a limit is known, unless the server said it lately (``learned.remembered``, at ``now``)."""
    lane = record.lane
    keep = (lane.next_request_pos, lane.token_head, lane.token_tail, lane.token_sum)
    heard = (lane.heard_at, lane.heard_requests, lane.heard_tokens)
    ctypes.memset(ctypes.addressof(lane), 0, ctypes.sizeof(Lane))
    lane.next_request_pos, lane.token_head, lane.token_tail, lane.token_sum = keep
    lane.start(UNLIMITED_IN_FLIGHT)
    if any(heard):  # a record made before any answer holds zeros: nothing heard
        lane.heard_at, lane.heard_requests, lane.heard_tokens = heard
    lane.in_flight = in_flight
    lane.slow_start = slow_start
    lane.concurrency = 1.0 if slow_start else lane.concurrency_max
    if slow_start and now is not None:
        remembered(lane, now)


def live_runs(record: LaneRecord) -> Iterator[RunEntry]:
    """The runs recorded on the lane (alive when last swept)."""
    return (entry for entry in record.runs if entry.run)


def sweep(record: LaneRecord, now: float) -> int:
    """Forget dead runs and give back what dead holders held; how many grants came back."""
    record.swept_at = now
    alive: dict[tuple[int, int], bool] = {}

    def lives(pid: int, started: int) -> bool:
        if (pid, started) not in alive:
            alive[(pid, started)] = process_start(pid) == started
        return alive[(pid, started)]

    lane = record.lane
    returned = 0
    for slot, holder in enumerate(record.holders):
        if holder.run and not lives(holder.pid, holder.started):
            returned += holder.held
            lane.in_flight = max(0, lane.in_flight - holder.held)
            if lane.prober == slot:
                lane.prober = -1
            ctypes.memset(ctypes.addressof(holder), 0, ctypes.sizeof(Holder))
    for entry in record.runs:
        if entry.run and not lives(entry.pid, entry.started):
            ctypes.memset(ctypes.addressof(entry), 0, ctypes.sizeof(RunEntry))
    return returned


def attach(record: LaneRecord, run: int, told: tuple[float, float, int, int], label: str,
           now: float, slow_start: bool = False) -> None:
    """Record run ``run`` on the lane with its told (rpm, tpm, in flight, own in flight); a lane
    no live run uses starts afresh. Raises OSError when the lane has no room for another run."""
    sweep(record, now)
    if not any(True for _ in live_runs(record)):
        fresh_lane(record, sum(h.held for h in record.holders if h.run), slow_start, now)
    free = next((entry for entry in record.runs if not entry.run), None)
    if free is None:
        raise OSError(f"{RUNS} runs already share this lane")
    free.run, free.pid, free.started = run, os.getpid(), own_start()
    free.rpm, free.tpm, free.in_flight, free.own_in_flight = told
    free.label = label.encode()[-LABEL + 1:]
    apply_told(record)


def detach(record: LaneRecord, run: int) -> None:
    """Run ``run`` leaves the lane: its grants and its told limits go."""
    lane = record.lane
    for slot, holder in enumerate(record.holders):
        if holder.run == run:
            lane.in_flight = max(0, lane.in_flight - holder.held)
            if lane.prober == slot:
                lane.prober = -1
            ctypes.memset(ctypes.addressof(holder), 0, ctypes.sizeof(Holder))
    for entry in record.runs:
        if entry.run == run:
            ctypes.memset(ctypes.addressof(entry), 0, ctypes.sizeof(RunEntry))
    apply_told(record)


def apply_told(record: LaneRecord) -> None:
    """The limits in force from what the live runs were told: the lowest of each holds."""
    from .lanes import LimitSource

    lane = record.lane
    runs = list(live_runs(record))
    rpm = min((e.rpm for e in runs if e.rpm > 0), default=0.0)
    tpm = min((e.tpm for e in runs if e.tpm > 0), default=0.0)
    if rpm:
        if not (lane.request_given and lane.request_cap == rpm):
            lane.set_request_limit(rpm, LimitSource.FLAG)
    elif lane.request_given:
        lane.request_given = False
        lane.request_cap = 0.0
        lane.set_request_limit(0.0, LimitSource.NONE)
    if tpm:
        if not (lane.token_given and lane.token_limit == tpm):
            lane.set_token_limit(tpm, LimitSource.FLAG)
    elif lane.token_given:
        lane.token_given = False
        lane.set_token_limit(0.0, LimitSource.NONE)
    owns = [e.own_in_flight for e in runs if e.own_in_flight > 0]
    cap = float(min(owns) if owns else min(UNLIMITED_IN_FLIGHT, sum(e.in_flight for e in runs)))
    cap = max(1.0, cap)
    was_full = lane.concurrency >= lane.concurrency_max
    lane.concurrency_max = cap
    known = bool(rpm or tpm)  # a limit is known: the lane opens at once, no slow start
    opened = known and lane.slow_start
    if known:
        lane.slow_start = False
    if opened or (was_full and not lane.slow_start) or lane.concurrency > cap:
        lane.concurrency = cap


def holder_slot(record: LaneRecord, run: int, holder: int) -> int:
    """The slot of ``holder`` of run ``run`` in this process, claimed when new; -1 when full."""
    pid = os.getpid()
    free = -1
    for slot, entry in enumerate(record.holders):
        if entry.run == run and entry.holder == holder:
            if entry.pid != pid:  # a replaced worker: what its predecessor held was given back
                entry.pid, entry.started = pid, own_start()
            return slot
        if free < 0 and not entry.run:
            free = slot
    if free >= 0:
        entry = record.holders[free]
        entry.run, entry.holder, entry.pid, entry.started, entry.held = (run, holder, pid,
                                                                         own_start(), 0)
    return free


def runs_of(record: LaneRecord) -> list[tuple[int, int, float, float, str]]:
    """The live runs on the lane: (run, pid, rpm, tpm, label)."""
    return [(e.run, e.pid, e.rpm, e.tpm, e.label.decode(errors="replace"))
            for e in live_runs(record)]
