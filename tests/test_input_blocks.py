"""The input check a block at a time (inputs/blocks.py): a plain block checked in bulk admits
only what the row-by-row check admits, with the same ids, and a bad row is still named by file
and line."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from mpinfer.errors import InputError
from mpinfer.inputs import blocks
from mpinfer.inputs.blocks import JsonlBlocks, PlainRows
from mpinfer.inputs.check import check_input, id_resolver
from mpinfer.inputs.readers import placed_rows
from mpinfer.inputs.tasks import FieldKeys, InputFormat, Task, parse_task
from mpinfer.store.idset import IdIndex

KEYS = FieldKeys()

# Rows of every kind the check meets: each either plain (checked in bulk) or not (read row by row)
ROWS: list[bytes] = [
    b'{"id":"a1","prompt":"what is this?"}',
    b'{"id": "a2", "prompt": "spaced as json.dumps writes", "images": ["x.png", "y.png"]}',
    b'{"prompt":"key order turned","id":"a3","images":"one.png"}',
    b'{"id":17,"prompt":"an integer id"}',
    b'{"id":"a4","prompt":"no images","images":null}',
    b'{"id":"a5","prompt":"empty list","images":[]}',
    b'{"id":"a6","prompt":"caf\xc3\xa9 \\u00e9 \\"quoted\\" \\\\ \\/"}',
    b'{"id":"a7","prompt":"  padded  ","extra":{"nested":1}}',
    b'{"id":"a8","prompt":"","images":["only.png"]}',
    b'{"id":"a9","prompt":"x","messages":null}',
    b'{"id":"b1","prompt":"x","temperature":0.5,"max_tokens":9,"system":"s"}',
    b'{"id":"b2","prompt":"\\u3000 but here"}',
    b'  {"id":"b3","prompt":"leading spaces"}',
    b'{"id":"b4","prompt":"a { brace } in the prompt"}',
    b'{"id":"b5","prompt":"ok","id":"b5-again"}',
]
BAD_ROWS: list[bytes] = [
    b'{"id":"c1","prompt":"   "}',
    b'{"id":"","prompt":"empty id"}',
    b'{"id":true,"prompt":"a bool id"}',
    b'{"id":1.5,"prompt":"a float id"}',
    b'{"id":"c2","prompt":7}',
    b'{"id":"c3"}',
    b'{"id":"c4","prompt":"x","images":[""]}',
    b'{"id":"c5","prompt":"x","images":[3]}',
    b'{"id":"c6","prompt":"x","images":""}',
    b'{"id":"c7","prompt":"x","temperature":"hot"}',
    b'{"id":"c8","prompt":"\xff not utf-8"}',
    b'{"id":"c9","prompt":"\\ud800 a lone surrogate"}',
    b'["a list"]',
    b'{"id":"d1","prompt":"two"},{"id":"d2","prompt":"rows"}',
    b'{"id":"d3","prompt":"trailing comma",}',
    # lines that are not JSON alone but would be read together as one array: each bad alone
    b'{"id":"e1","prompt":"x","more":[[{}',
    b'{}]]}',
    b'{"id":"e2","prompt":"open string }',
    b'{"}',
]


def _row_by_row(path: Path, keys: FieldKeys = KEYS) -> tuple[Any, list[str]]:
    """The id index and the errors the row-by-row reader gives (the reference)."""
    index = IdIndex(id_resolver(path, keys, InputFormat.JSONL))
    errors = []
    for _, offset, _, item in placed_rows(path, keys, InputFormat.JSONL):
        if isinstance(item, Task):
            index.add(item.id, offset)
        else:
            errors.append(str(item))
    assert not index.freeze()
    return index.parts(), errors


@pytest.mark.parametrize("row", ROWS + BAD_ROWS)
def test_a_row_the_bulk_check_admits_is_one_parse_task_accepts_with_the_same_id(row: bytes) -> None:
    # Given one row in a block of plain rows around it
    block = b'{"id":"p1","prompt":"plain"}\n' + row + b'\n{"id":"p2","prompt":"plain"}\n'
    # When the bulk check takes the block
    taken = PlainRows(KEYS).take(block, 100)
    if taken is None:
        return  # read row by row: the reference itself
    # Then the row parses alone, parse_task accepts it, and its id and offset are the ones given
    ids, offsets = taken
    assert len(ids) == len(offsets) == 3
    assert ids[1] == parse_task(orjson.loads(row), KEYS, 2).id
    assert offsets == [100, 100 + 29, 100 + 29 + len(row) + 1]


def test_every_plain_row_of_the_common_shapes_is_taken_in_bulk() -> None:
    # Given a block of the rows of the common shapes (no settings, no chat, no other fields)
    plain = [r for r in ROWS if b"extra" not in r and b"messages" not in r
             and b"temperature" not in r and b"{ brace" not in r and b'"prompt":""' not in r
             and b"\\u3000" not in r]
    # When the bulk check takes it
    taken = PlainRows(KEYS).take(b"\n".join(plain) + b"\n", 0)
    # Then it is taken whole, each id as parse_task gives it
    assert taken is not None
    assert taken[0] == [parse_task(orjson.loads(r), KEYS, 1).id for r in plain]


@pytest.mark.parametrize("block_bytes", [64, 200, 1 << 20])
def test_the_check_by_blocks_finds_the_ids_the_row_by_row_reader_finds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block_bytes: int) -> None:
    # Given an input of plain rows and odd ones, with blank lines, a BOM, CRLF and no last newline,
    # read in blocks small enough that lines are cut by a read
    lines = [b"\xef\xbb\xbf" + ROWS[0], *ROWS[1:], b"", b"   ",
             *(b'{"id":"n%d","prompt":"question %d"}' % (i, i) for i in range(300)),
             b'{"id":"crlf","prompt":"windows"}\r', b'{"id":"last","prompt":"no newline"}']
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b"\n".join(lines))
    monkeypatch.setattr(blocks, "BLOCK", block_bytes)
    # When it is checked
    index = check_input(path)
    # Then the id index is the one made row by row, and the checksum is the file's
    assert index.ids.index.parts() == _row_by_row(path)[0]
    assert len(index.ids) == len(ROWS) + 300 + 2
    assert index.checksum == (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.mark.parametrize("bad", BAD_ROWS)
def test_a_bad_row_among_plain_rows_is_named_by_file_and_line(tmp_path: Path, bad: bytes) -> None:
    # Given a plain input with one bad row at line 42 (or a pair, the last two of BAD_ROWS)
    rows = [b'{"id":"n%d","prompt":"question"}' % i for i in range(80)]
    rows[41] = bad
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    # When it is checked
    with pytest.raises(InputError) as caught:
        check_input(path)
    # Then the error is the one the row-by-row reader gives: this file, line 42
    errors = _row_by_row(path)[1]
    assert errors and str(caught.value) == errors[0]
    assert str(path) in errors[0] and "42" in errors[0]


def test_the_blocks_keep_each_rows_offset_and_count_blank_lines_in_the_line_numbers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an input whose bad row comes after blank lines, in blocks of 40 bytes
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b'{"id":"a","prompt":"x"}\n\n\n{"id":"b","prompt":"y"}\n{"id":"c"}\n')
    monkeypatch.setattr(blocks, "BLOCK", 40)
    # When its blocks are read
    reader = JsonlBlocks(path, KEYS, InputFormat.JSONL)
    got = [(offset, item) for block in reader for offset, item in
           [*zip(block.offsets, block.ids, strict=True), *block.rows]]
    # Then each row is at its byte offset, and the bad one is named at line 5
    assert [offset for offset, _ in got] == [0, 26, 50]
    assert isinstance(got[2][1], InputError) and got[2][1].line == 5
    assert reader.checksum is not None and reader.checksum[0] == path.stat().st_size


def test_lines_that_would_join_into_one_array_are_each_read_alone_and_reported(
        tmp_path: Path) -> None:
    # Given lines no JSON alone, that joined by commas would still make as many objects as lines
    # (two that close each other's brackets, one that holds two objects)
    rows = [b'{"id":"e1","prompt":"x","more":[[{}', b"{}]]}",
            b'{"id":"d1","prompt":"two"},{"id":"d2","prompt":"rows"}']
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    # When the bulk check and the whole check take them
    assert PlainRows(KEYS).take(path.read_bytes(), 0) is None
    with pytest.raises(InputError) as caught:
        check_input(path)
    # Then each line is reported on its own, as the row-by-row reader does
    assert "3 bad lines" in str(caught.value)
    for error in _row_by_row(path)[1]:
        assert error in str(caught.value)


def test_an_open_brace_in_a_string_is_taken_in_bulk_and_a_brace_left_open_is_not(
        tmp_path: Path) -> None:
    # Given a row whose prompt holds a "{" (no "}" but its last), and two lines whose one "}"
    # each would close an object opened on the first, its "}" inside a string
    plain = b'{"id":"o1","prompt":"an { open brace"}\n'
    joined = [b'{"id":"j1","prompt":"p","more":{"x":"}', b'"}']
    # When the bulk check takes them
    taken = PlainRows(KEYS).take(plain, 0)
    # Then the first is plain, with its id; the pair is not, and is reported line by line
    assert taken is not None and taken[0] == ["o1"]
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b"\n".join(joined) + b"\n")
    assert PlainRows(KEYS).take(path.read_bytes(), 0) is None
    with pytest.raises(InputError) as caught:
        check_input(path)
    assert "2 bad lines" in str(caught.value)
    for error in _row_by_row(path)[1]:
        assert error in str(caught.value)


def test_an_input_with_windows_line_ends_is_taken_in_bulk_with_each_rows_offset(
        tmp_path: Path) -> None:
    # Given an input written with CRLF line ends
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(b"".join(b'{"id":"w%d","prompt":"question %d"}\r\n' % (i, i)
                              for i in range(50)))
    # When the bulk check takes it, and the whole check reads it
    taken = PlainRows(KEYS).take(path.read_bytes(), 0)
    index = check_input(path)
    # Then it is taken whole, and the index is the one made row by row
    assert taken is not None and taken[0] == [f"w{i}" for i in range(50)]
    assert index.ids.index.parts() == _row_by_row(path)[0]
