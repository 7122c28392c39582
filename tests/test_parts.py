"""A big file read in parts by forked children (store/parts.py): a child holds none of the
parent's files but the one it reads (no lock outlives the parent), and a parent that fails or is
interrupted ends its children, leaving no process and no zombie behind."""

from __future__ import annotations

import os
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
