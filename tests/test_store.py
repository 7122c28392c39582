"""The output file: torn-tail repair, the id scan, locked line appends, full disks, the run lock."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

import mpinfer
from mpinfer.errors import RunLockedError
from mpinfer.store.locks import RunLock, live_run
from mpinfer.store.output import Appender, BadLine, OutputPaths, TailRepair, repair_tail, scan

PACKAGE_ROOT = str(Path(mpinfer.__file__).resolve().parent.parent)
CHILD_TIMEOUT_S = 20


def record(rid: str | int | bool, **extra: object) -> bytes:
    """An answer record: what the resume scan counts as done."""
    return orjson.dumps({"id": rid, "answer": f"answer {rid}", "model": "m", "usage": {},
                         **extra}) + b"\n"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    return env


def start_child(code: str, *args: str) -> subprocess.Popen[str]:
    """A separate Python process running ``code`` (with sys.argv[1:] = args)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=child_env(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=child_env(),
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)


# --- repair_tail ----------------------------------------------------------------------------------


def test_repair_tail_moves_a_torn_last_line_to_the_corrupt_file(tmp_path: Path) -> None:
    # Given two whole records followed by half of a third
    output = tmp_path / "out.jsonl"
    corrupt = tmp_path / "out.jsonl.corrupt"
    good = record("a") + record("b")
    torn = b'{"id": "c", "answer": "half of an ans'
    output.write_bytes(good + torn)
    # When the tail is repaired
    repair = repair_tail(output, corrupt)
    # Then the file is cut exactly after the last newline and the torn bytes are kept aside, with a
    # newline
    assert repair == TailRepair(output, len(torn), corrupt, False)
    assert output.read_bytes() == good
    assert corrupt.read_bytes() == torn + b"\n"


def test_repair_tail_appends_to_an_existing_corrupt_file(tmp_path: Path) -> None:
    # Given a corrupt file from an earlier repair and a new torn tail
    output = tmp_path / "out.jsonl"
    corrupt = tmp_path / "out.jsonl.corrupt"
    corrupt.write_bytes(b"older torn bytes\n")
    output.write_bytes(record("a") + b'{"id": "b"')
    # When the tail is repaired
    repair_tail(output, corrupt)
    # Then the earlier content is kept and the new torn line added after it
    assert corrupt.read_bytes() == b'older torn bytes\n{"id": "b"\n'
    assert output.read_bytes() == record("a")


def test_repair_tail_of_a_file_with_no_newline_at_all_empties_it(tmp_path: Path) -> None:
    # Given a file holding only a torn first line
    output = tmp_path / "out.jsonl"
    corrupt = tmp_path / "out.jsonl.corrupt"
    output.write_bytes(b'{"id": "a", "ans')
    # When the tail is repaired
    repair = repair_tail(output, corrupt)
    # Then everything is moved and the file is empty
    assert repair is not None and repair.moved_bytes == 16
    assert output.read_bytes() == b""
    assert corrupt.read_bytes() == b'{"id": "a", "ans\n'


def test_repair_tail_finds_the_last_newline_before_a_torn_line_longer_than_one_read_block(
    tmp_path: Path,
) -> None:
    # Given one record and then a torn line of 150,000 bytes (more than two 64 KiB read blocks)
    output = tmp_path / "out.jsonl"
    corrupt = tmp_path / "out.jsonl.corrupt"
    torn = b'{"id": "big", "answer": "' + b"x" * 150_000
    output.write_bytes(record("a") + torn)
    # When the tail is repaired
    repair = repair_tail(output, corrupt)
    # Then the cut is exactly after the first record
    assert repair is not None and repair.moved_bytes == len(torn)
    assert output.read_bytes() == record("a")
    assert corrupt.read_bytes() == torn + b"\n"


def test_a_complete_last_record_without_newline_is_kept_and_gets_one(tmp_path: Path) -> None:
    # Given a last line that is a whole record missing only its newline
    output = tmp_path / "out.jsonl"
    corrupt = tmp_path / "out.jsonl.corrupt"
    last = record("b")[:-1]
    output.write_bytes(record("a") + last)
    # When the tail is repaired
    repair = repair_tail(output, corrupt)
    # Then the record stays, a newline is added and nothing is moved
    assert repair == TailRepair(output, 0, None, True)
    assert output.read_bytes() == record("a") + record("b")
    assert not corrupt.exists()


def test_a_last_line_that_parses_but_is_not_a_record_is_moved(tmp_path: Path) -> None:
    # Given a last line that is JSON but has no id
    output = tmp_path / "out.jsonl"
    corrupt = tmp_path / "out.jsonl.corrupt"
    output.write_bytes(record("a") + b'{"answer": "no id"}')
    # When the tail is repaired
    repair = repair_tail(output, corrupt)
    # Then it is treated as torn
    assert repair is not None and repair.moved_to == corrupt
    assert output.read_bytes() == record("a")


def test_a_file_ending_in_a_newline_is_untouched(tmp_path: Path) -> None:
    # Given a well-formed file (with a bad middle line, which repair does not care about)
    output = tmp_path / "out.jsonl"
    corrupt = tmp_path / "out.jsonl.corrupt"
    content = record("a") + b"garbage\n" + record("b")
    output.write_bytes(content)
    # When the tail is repaired
    repair = repair_tail(output, corrupt)
    # Then nothing happens
    assert repair is None
    assert output.read_bytes() == content
    assert not corrupt.exists()


def test_repair_tail_of_a_missing_or_empty_file_does_nothing(tmp_path: Path) -> None:
    # Given no file, and an empty file
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    # When each is repaired
    # Then nothing is done
    assert repair_tail(tmp_path / "absent.jsonl", tmp_path / "c") is None
    assert repair_tail(empty, tmp_path / "c") is None
    assert empty.read_bytes() == b""
    assert not (tmp_path / "c").exists()


# --- scan -----------------------------------------------------------------------------------------


def test_scan_finds_the_ids_and_reports_a_corrupt_middle_line_without_dropping_it(
    tmp_path: Path,
) -> None:
    # Given records a, b and 7 around a garbage line and a blank line
    output = tmp_path / "out.jsonl"
    content = record("a") + b"}{ not json\n" + record("b") + b"\n" + record(7)
    output.write_bytes(content)
    # When it is scanned
    result = scan(output)
    # Then the ids are found, the bad line is listed with its number, and the file is unchanged
    assert result.ids == {"a", "b", "7"}
    assert result.bad_lines == [BadLine(2, "}{ not json")]
    assert result.lines == 4
    assert result.end_offset == len(content)
    assert output.read_bytes() == content


def test_scan_lists_records_without_a_usable_id_as_bad_lines(tmp_path: Path) -> None:
    # Given lines with an empty id, a boolean id, a list, no id, and an id with nothing else
    output = tmp_path / "out.jsonl"
    output.write_bytes(record("") + record(True)
                       + b'[1]\n{"answer": "x", "model": "m", "usage": {}}\n' + b'{"id": "bare"}\n'
                       + record("ok"))
    # When it is scanned
    result = scan(output)
    # Then only the real record counts
    assert result.ids == {"ok"}
    assert [bad.line for bad in result.bad_lines] == [1, 2, 3, 4, 5]


def test_scan_from_an_offset_reads_only_what_follows(tmp_path: Path) -> None:
    # Given a file of three records and the offset just after the first
    output = tmp_path / "out.jsonl"
    output.write_bytes(record("a") + record("b") + record("c"))
    # When it is scanned from that offset
    result = scan(output, start=len(record("a")))
    # Then only the later records are seen
    assert result.ids == {"b", "c"}


def test_scan_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    # Given no output yet
    # When it is scanned
    result = scan(tmp_path / "absent.jsonl")
    # Then nothing is found
    assert (result.ids, result.bad_lines, result.lines, result.end_offset) == (set(), [], 0, 0)


# --- Appender -------------------------------------------------------------------------------------


def test_append_writes_whole_lines_in_order(tmp_path: Path) -> None:
    # Given an appender on a new output
    paths = OutputPaths.of(tmp_path / "out.jsonl")
    appender = Appender(paths)
    # When three records are appended
    try:
        for rid in ("a", "b", "c"):
            appender.append(paths.output, record(rid))
    finally:
        appender.close()
    # Then the file is exactly those lines
    assert paths.output.read_bytes() == record("a") + record("b") + record("c")


def test_append_after_a_torn_line_moves_the_torn_bytes_out_first(tmp_path: Path) -> None:
    # Given an output whose last line was torn by a killed writer
    paths = OutputPaths.of(tmp_path / "out.jsonl")
    torn = b'{"id": "x", "answer": "cut sh'
    paths.output.write_bytes(record("a") + torn)
    appender = Appender(paths)
    # When a new record is appended
    try:
        appender.append(paths.output, record("b"))
    finally:
        appender.close()
    # Then the new record is on a line of its own and the torn bytes are in the corrupt file
    assert paths.output.read_bytes() == record("a") + record("b")
    assert paths.corrupt.read_bytes() == torn + b"\n"


def test_append_to_the_errors_file_after_a_torn_line_uses_the_errors_corrupt_file(
    tmp_path: Path,
) -> None:
    # Given an errors file whose last line was torn
    paths = OutputPaths.of(tmp_path / "out.jsonl")
    torn = b'{"id": "x", "error_ty'
    paths.errors.write_bytes(torn)
    appender = Appender(paths)
    # When a failure is appended to it
    try:
        appender.append(paths.errors, record("f"))
    finally:
        appender.close()
    # Then the torn bytes go beside the errors file, not the output's corrupt file
    assert paths.errors.read_bytes() == record("f")
    assert Path(str(paths.errors) + ".corrupt").read_bytes() == torn + b"\n"
    assert not paths.corrupt.exists()


def test_append_after_a_torn_line_written_through_the_same_appender_is_still_repaired(
    tmp_path: Path,
) -> None:
    # Given an appender that has already written, and torn bytes appended behind its back
    paths = OutputPaths.of(tmp_path / "out.jsonl")
    appender = Appender(paths)
    try:
        appender.append(paths.output, record("a"))
        with paths.output.open("ab") as other:
            other.write(b'{"id": "y", "ans')
        # When it appends again
        appender.append(paths.output, record("b"))
    finally:
        appender.close()
    # Then the record is not glued onto the torn bytes
    assert paths.output.read_bytes() == record("a") + record("b")
    assert paths.corrupt.read_bytes() == b'{"id": "y", "ans\n'


def test_append_after_a_whole_record_missing_its_newline_keeps_it(tmp_path: Path) -> None:
    # Given an output ending in a whole record without its newline
    paths = OutputPaths.of(tmp_path / "out.jsonl")
    paths.output.write_bytes(record("a")[:-1])
    appender = Appender(paths)
    # When a record is appended
    try:
        appender.append(paths.output, record("b"))
    finally:
        appender.close()
    # Then both records are whole lines and nothing is moved
    assert paths.output.read_bytes() == record("a") + record("b")
    assert not paths.corrupt.exists()


CONCURRENT_WRITER = """
import os, sys, time
from pathlib import Path
import orjson
from mpinfer.store.output import Appender, OutputPaths

output, writer, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
paths = OutputPaths.of(output)
appender = Appender(paths)
print("READY", flush=True)
deadline = time.monotonic() + 10
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.001)
pad = "x" * (1000 + 37 * int(writer))
for i in range(count):
    appender.append(paths.output, orjson.dumps({"id": f"{writer}-{i}", "pad": pad}) + b"\\n")
appender.close()
print("wrote", count)
"""


def test_concurrent_appends_from_four_processes_produce_intact_lines(tmp_path: Path) -> None:
    # Given four writer processes, released at the same moment, each appending 200 records of about
    # 1 KB
    output = tmp_path / "out.jsonl"
    go = tmp_path / "go"
    children = [start_child(CONCURRENT_WRITER, str(output), str(w), "200", str(go))
                for w in range(4)]
    for child in children:
        assert child.stdout is not None and child.stdout.readline().strip() == "READY"
    # When they all write at once
    go.touch()
    results = [child.communicate(timeout=CHILD_TIMEOUT_S) for child in children]
    # Then every process succeeded and the file holds 800 whole, parsable, distinct lines
    assert [child.returncode for child in children] == [0, 0, 0, 0], [err for _, err in results]
    assert [out.strip() for out, _ in results] == ["wrote 200"] * 4
    raw = output.read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert len(lines) == 800
    ids = [orjson.loads(line)["id"] for line in lines]
    assert sorted(ids) == sorted(f"{w}-{i}" for w in range(4) for i in range(200))
    for w in range(4):
        mine = [int(rid.split("-")[1]) for rid in ids if rid.startswith(f"{w}-")]
        assert mine == list(range(200))
    assert not OutputPaths.of(output).corrupt.exists()


DISK_FULL_WRITER = """
import resource, signal, sys
from pathlib import Path
import orjson
from mpinfer.errors import OutputError
from mpinfer.store.output import Appender, OutputPaths

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
paths = OutputPaths.of(Path(sys.argv[1]))
Appender(paths).close()  # create the lock file before the limit
size = paths.output.stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50, resource.RLIM_INFINITY))
appender = Appender(paths)
try:
    appender.append(paths.output, orjson.dumps({"id": "big", "answer": "y" * 400}) + b"\\n")
except OutputError as exc:
    print("OutputError:", exc)
else:
    print("no error")
"""


def test_a_full_disk_makes_append_raise_and_leaves_no_partial_line(tmp_path: Path) -> None:
    # Given an output of two records and a process that may grow files by only 50 more bytes
    output = tmp_path / "out.jsonl"
    before = record("a") + record("b")
    output.write_bytes(before)
    # When that process appends a record of about 420 bytes
    done = run_child(DISK_FULL_WRITER, str(output))
    # Then append raised OutputError saying the disk is full, and the 50 bytes that did fit were cut
    # off again
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OutputError: "), done.stdout + done.stderr
    assert "disk full" in done.stdout
    assert str(output) in done.stdout
    assert output.read_bytes() == before


# --- the run lock ---------------------------------------------------------------------------------


LOCK_HOLDER = """
import sys
from pathlib import Path
from mpinfer.store.output import OutputPaths
from mpinfer.store.locks import RunLock

lock = RunLock(OutputPaths.of(Path(sys.argv[1])), "holder-model")
lock.acquire()
print("LOCKED", flush=True)
sys.stdin.readline()
lock.release()
print("RELEASED", flush=True)
"""


def test_a_second_run_lock_from_another_process_fails_fast_naming_the_first_pid(
    tmp_path: Path,
) -> None:
    # Given another process holding the run lock of an output
    paths = OutputPaths.of(tmp_path / "out.jsonl")
    holder = start_child(LOCK_HOLDER, str(paths.output))
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "LOCKED"
        # When this process tries to take it
        started = time.monotonic()
        with pytest.raises(RunLockedError) as caught:
            RunLock(paths, "gpt-4o-mini").acquire(wait_s=0.3)
        waited = time.monotonic() - started
        # Then it fails within about the wait, naming the holder's pid and model
        assert waited < 2.0
        message = str(caught.value)
        assert f"pid {holder.pid}," in message
        assert "model holder-model" in message
        assert str(paths.output) in message
    finally:
        holder.communicate("\n", timeout=CHILD_TIMEOUT_S)
    assert holder.returncode == 0


def test_live_run_reports_the_holder_and_none_after_release(tmp_path: Path) -> None:
    # Given no run yet
    paths = OutputPaths.of(tmp_path / "out.jsonl")
    assert live_run(paths) is None
    # When another process takes the run lock
    holder = start_child(LOCK_HOLDER, str(paths.output))
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "LOCKED"
        info = live_run(paths)
        # Then live_run reports its pid and model
        assert info is not None
        assert (info.pid, info.model) == (holder.pid, "holder-model")
        assert abs(info.started_at - time.time()) < 60
        # And when it releases the lock
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "RELEASED"
        # Then no run is reported, and the lock can be taken here
        assert live_run(paths) is None
        lock = RunLock(paths, "mine")
        lock.acquire(wait_s=0.5)
        try:
            mine = live_run(paths)
            assert mine is not None and mine.pid == os.getpid()
        finally:
            lock.release()
    finally:
        if holder.poll() is None:
            holder.communicate("\n", timeout=CHILD_TIMEOUT_S)
    assert live_run(paths) is None


def test_run_lock_release_removes_the_run_info(tmp_path: Path) -> None:
    # Given a run lock taken and released in this process
    paths = OutputPaths.of(tmp_path / "out.jsonl")
    with RunLock(paths, "m"):
        # When it is held
        # Then the run info names this process
        assert orjson.loads(paths.run_info.read_bytes())["pid"] == os.getpid()
    # Then after release the run info is gone
    assert not paths.run_info.exists()


def test_output_paths_name_the_companion_files(tmp_path: Path) -> None:
    # Given an output path
    paths = OutputPaths.of(tmp_path / "results.jsonl")
    # When its companions are named
    # Then they sit beside it, locks hidden
    assert paths.errors == tmp_path / "results.jsonl.errors.jsonl"
    assert paths.corrupt == tmp_path / "results.jsonl.corrupt"
    assert paths.run_lock == tmp_path / ".results.jsonl.lock"
    assert paths.write_lock == tmp_path / ".results.jsonl.write.lock"
    assert paths.run_info == tmp_path / ".results.jsonl.run.json"
    assert paths.corrupt_of(paths.output) == paths.corrupt
    assert paths.corrupt_of(paths.errors) == tmp_path / "results.jsonl.errors.jsonl.corrupt"
