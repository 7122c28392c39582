"""A big file read in parts by forked children (store/parts.py): a child holds none of the
parent's files but the one it reads (no lock outlives the parent), and a parent that fails or is
interrupted ends its children, leaving no process and no zombie behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from mpinfer.store.blocks import LineReader
from mpinfer.store.parts import Child, Parts, read_in_parts


def test_a_child_holds_none_of_the_parents_files_but_the_ones_it_reads(tmp_path: Path) -> None:
    # Given two open files (one of them might hold a lock), the child told to keep the first
    kept = os.open(tmp_path / "kept", os.O_CREAT | os.O_RDWR)
    other = os.open(tmp_path / "lock", os.O_CREAT | os.O_RDWR)
    try:
        def open_in_child() -> tuple[bool, bool]:
            def is_open(fd: int) -> bool:
                try:
                    os.fstat(fd)
                except OSError:
                    return False
                return True
            return is_open(kept), is_open(other)

        # When a child looks at them
        child = Child.start(open_in_child, keep=(kept,))
        assert child is not None
        try:
            seen = child.result()
        finally:
            child.stop()
        # Then it has the kept one only
        assert seen == (True, False)
    finally:
        os.close(kept)
        os.close(other)


def test_a_failing_parent_ends_its_children_and_leaves_no_zombie(tmp_path: Path) -> None:
    # Given a file of 300 lines, children that would read their part for a minute, and a parent
    # whose own part fails
    path = tmp_path / "lines.txt"
    path.write_bytes(b"".join(b"%d\n" % n for n in range(1, 301)))
    pids = tmp_path / "pids"
    parent = os.getpid()

    def read(reader: LineReader) -> int:
        if os.getpid() == parent:
            deadline = time.monotonic() + 5
            while not pids.exists() or len(pids.read_bytes().split()) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            raise KeyboardInterrupt
        with pids.open("a") as out:
            out.write(f"{os.getpid()}\n")
        time.sleep(60)
        return 0

    # When it is read in three parts
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        read_in_parts(path, 0, read, Parts(least=100, most=3))
    # Then it failed at once, and both children are gone: killed and waited for
    assert time.monotonic() - started < 10
    for pid in (int(p) for p in pids.read_bytes().split()):
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_child_killed_while_sending_its_result_gives_none(tmp_path: Path) -> None:
    # Given a child whose result (8 MB) is far more than a pipe holds, and that says its pid
    pid_file = tmp_path / "pid"

    def big() -> bytes:
        pid_file.write_text(str(os.getpid()))
        return b"x" * (8 << 20)

    child = Child.start(big)
    assert child is not None
    try:
        deadline = time.monotonic() + 5
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # When it is killed before its result has been read whole
        time.sleep(0.05)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        # Then it gives no result (the caller does its work itself), and no error
        assert child.result() is None
    finally:
        child.stop()


class _Unloadable:
    """Pickles well, and fails to load: a result no lost child explains."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return _refuse, ()


def _refuse() -> None:
    raise RuntimeError("this result does not load")


def test_a_result_that_does_not_load_from_a_child_that_ended_well_is_raised() -> None:
    # Given a child that ends well with a result that cannot be loaded
    child = Child.start(_Unloadable)
    assert child is not None
    try:
        # When its result is taken, then the error is raised, not taken for a lost child
        with pytest.raises(RuntimeError, match="does not load"):
            child.result()
    finally:
        child.stop()
