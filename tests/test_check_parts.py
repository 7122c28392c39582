"""The input check of a big plain JSONL input in parts (inputs/check_parts.py): a forked child
checks the first part while this process checks the rest, and the check finds exactly what one
pass finds: the same ids in the same slots, the same checksum, the same bad rows named by file
and line, the same duplicates, wherever they fall."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from mpinfer.errors import InputError
from mpinfer.inputs import blocks, check_parts
from mpinfer.inputs.check import check_input
from mpinfer.inputs.tasks import InputIndex
from mpinfer.store.idset import HashFn
from mpinfer.store.parts import Parts, line_bounds

ONE = Parts(most=1)
TWO = Parts(least=1, most=2)  # two parts, however small the input
THREE = Parts(least=1, most=3)
ROWS = 400


def _rows(count: int = ROWS) -> list[bytes]:
    return [b'{"id":"r%d","prompt":"question %d"}' % (i, i) for i in range(count)]


def _write(path: Path, rows: list[bytes], end: bytes = b"\n") -> Path:
    path.write_bytes(b"\n".join(rows) + end)
    return path


def _boundary_line(path: Path) -> int:
    """The line (from 1) the second part starts with."""
    with path.open("rb") as handle:
        bounds = line_bounds(handle.fileno(), 0, path.stat().st_size, 2)
    assert len(bounds) == 2
    return path.read_bytes()[:bounds[1]].count(b"\n") + 1


def _same(one: InputIndex, other: InputIndex) -> None:
    assert other.ids.index.parts() == one.ids.index.parts()
    assert other.checksum == one.checksum and other.total == one.total
    assert other.format is one.format and other.body_models == one.body_models


def _error(path: Path, parts: Parts, hash_fn: HashFn | None = None) -> str:
    with pytest.raises(InputError) as caught:
        check_input(path, hash_fn=hash_fn, parts=parts)
    return str(caught.value)


@pytest.mark.parametrize("parts, sort_round", [(TWO, 1 << 21), (THREE, 1 << 21), (TWO, 50)])
def test_a_plain_input_checked_in_parts_gives_the_index_and_checksum_of_one_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parts: Parts, sort_round: int) -> None:
    # Given a plain input with a BOM, blank lines, CRLF line ends and no last newline, read in
    # blocks small enough that lines are cut by a read, its index sorted in rounds of
    # ``sort_round`` ids
    rows = _rows()
    rows[0] = b"\xef\xbb\xbf" + rows[0]
    rows[50:50] = [b"", b"   "]
    rows[300] += b"\r"
    path = _write(tmp_path / "tasks.jsonl", rows, end=b"")
    monkeypatch.setattr(blocks, "BLOCK", 512)
    monkeypatch.setattr(check_parts, "SORT_ROUND", sort_round)
    # When it is checked in one pass and in parts
    one = check_input(path, parts=ONE)
    parted = check_input(path, parts=parts)
    # Then both find the same ids in the same slots, and the same checksum
    assert one.total == ROWS
    _same(one, parted)
    assert parted.ids.index.find("r399") == one.ids.index.find("r399") is not None


def test_the_first_part_is_checked_in_a_child_and_a_failed_child_leaves_it_to_the_parent(
        tmp_path: Path) -> None:
    # Given a plain input, and a hash that notes each process it runs in (and fails in a child
    # when told to)
    path = _write(tmp_path / "tasks.jsonl", _rows())
    seen = tmp_path / "pids"
    fail = tmp_path / "fail"
    parent = os.getpid()

    def noting(task_id: str) -> int:
        if os.getpid() != parent:
            with seen.open("a") as out:
                out.write(f"{os.getpid()}\n")
            if fail.exists():
                raise RuntimeError("a child that fails")
        return zlib.crc32(task_id.encode()) << 32

    one = check_input(path, hash_fn=noting, parts=ONE)
    assert not seen.exists()
    # When it is checked in two parts, then again with a child that fails
    parted = check_input(path, hash_fn=noting, parts=TWO)
    children = set(seen.read_text().split())
    fail.touch()
    redone = check_input(path, hash_fn=noting, parts=TWO)
    # Then a child hashed ids the first time, and both times the findings are those of one pass
    assert len(children) == 1 and str(parent) not in children
    _same(one, parted)
    _same(one, redone)


@pytest.mark.parametrize("where", ["first", "last of first", "boundary", "second"])
def test_a_bad_row_in_either_part_is_named_by_file_and_line_as_in_one_pass(
        tmp_path: Path, where: str) -> None:
    # Given a plain input with one bad row in the first part, at the boundary or in the second
    path = _write(tmp_path / "tasks.jsonl", _rows())
    boundary = _boundary_line(path)
    line = {"first": 7, "last of first": boundary - 1, "boundary": boundary,
            "second": ROWS - 3}[where]
    rows = _rows()
    rows[line - 1] = b'{"id":"bad","prompt":"   "}'
    _write(path, rows)
    # When it is checked in one pass and in two parts
    one, parted = _error(path, ONE), _error(path, TWO)
    # Then the error is the same, naming the file and that line
    assert parted == one
    assert one.startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("first, second", [(3, 4), (6, 6), (12, 2), (0, 11), (9, 1)])
def test_the_first_ten_bad_rows_over_both_parts_are_listed_as_in_one_pass(
        tmp_path: Path, first: int, second: int) -> None:
    # Given bad rows in both parts (some of them with a line of invalid JSON)
    path = _write(tmp_path / "tasks.jsonl", _rows())
    boundary = _boundary_line(path)
    rows = _rows()
    for n in [*range(2, 2 + 2 * first, 2), *range(boundary + 1, boundary + 1 + 3 * second, 3)]:
        rows[n - 1] = b'{"id":"b%d","prompt":7}' % n if n % 4 else b'{"id":"j%d",' % n
    _write(path, rows)
    # When it is checked in one pass and in two parts
    one, parted = _error(path, ONE), _error(path, TWO)
    # Then the listing is the same: the first ten in line order, and "maybe more" past ten
    assert parted == one
    assert ("(and maybe more: stopped looking)" in one) == (first + second >= 10)


def test_duplicates_across_the_parts_and_within_one_are_reported_as_in_one_pass(
        tmp_path: Path) -> None:
    # Given an id repeated in both parts, one repeated within the second, and one three times
    path = _write(tmp_path / "tasks.jsonl", _rows())
    boundary = _boundary_line(path)
    rows = _rows()
    rows[boundary + 10] = rows[4]
    rows[boundary + 20] = rows[boundary + 30]
    rows[boundary + 40] = rows[boundary - 2] = rows[9]
    _write(path, rows)
    # When it is checked in one pass and in two parts, also with a hash most ids share
    one, parted = _error(path, ONE), _error(path, TWO)

    def crowded(task_id: str) -> int:
        return zlib.crc32(task_id.encode()) % 3

    crowded_one, crowded_parted = _error(path, ONE, crowded), _error(path, TWO, crowded)
    # Then the same duplicates error, with the same lines
    assert parted == one == crowded_one == crowded_parted
    assert one.startswith(f"{path}: 4 duplicate ids: 'r4' (lines 5 and {boundary + 11})")


def test_ids_sharing_a_hash_across_the_parts_keep_their_slots_as_in_one_pass(
        tmp_path: Path) -> None:
    # Given a plain input, and a hash that puts every ten ids on one value
    path = _write(tmp_path / "tasks.jsonl", _rows())

    def crowded(task_id: str) -> int:
        return (int(task_id[1:]) % 40) << 54

    # When it is checked in one pass and in two parts
    one = check_input(path, hash_fn=crowded, parts=ONE)
    parted = check_input(path, hash_fn=crowded, parts=TWO)
    # Then each id is found in the same slot
    _same(one, parted)
    assert [parted.ids.index.find(f"r{i}") for i in range(ROWS)] == \
        [one.ids.index.find(f"r{i}") for i in range(ROWS)]


@pytest.mark.parametrize("part", [0, 1])
def test_rows_that_are_not_plain_in_one_part_are_read_row_by_row_with_the_same_findings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part: int) -> None:
    # Given an input whose rows in one part carry their own settings and chat messages, in
    # blocks of 1 KB (some plain, some not)
    path = _write(tmp_path / "tasks.jsonl", _rows())
    boundary = _boundary_line(path)
    rows = _rows()
    for n in range(30):
        at = (boundary + 5 if part else 20) + 3 * n
        rows[at] = (b'{"id":"s%d","prompt":"x","temperature":0.5}' % n if n % 2
                    else b'{"id":"m%d","messages":[{"role":"user","content":"hi"}]}' % n)
    _write(path, rows)
    monkeypatch.setattr(blocks, "BLOCK", 1024)
    # When it is checked in one pass and in two parts
    one = check_input(path, parts=ONE)
    parted = check_input(path, parts=TWO)
    # Then the findings are the same; and a bad row among them is named alike
    _same(one, parted)
    rows[(boundary + 8 if part else 23)] = b'{"id":"s1","prompt":"x","temperature":"hot"}'
    _write(path, rows)
    assert _error(path, TWO) == _error(path, ONE)


def test_an_input_of_blank_lines_checked_in_parts_has_no_tasks_as_in_one_pass(
        tmp_path: Path) -> None:
    # Given an input of blank lines only
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b"\n   \n" * 200)
    # When it is checked in one pass and in two parts, then both say it holds no task
    assert _error(path, TWO) == _error(path, ONE) == f"{path}: no tasks in the input"
