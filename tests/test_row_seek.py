"""A part of an output read from any line finds its place in the input without reading the
input's ids from its start (store/row_match.py ``RowSlots._seek``, ``IdIndex.rows_from``): it
marks the same rows, finds the same slots and leaves the same ids as a part that reads the input
from its first line, whatever the input's rows and the output's order."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import text_tasks, write_tasks
from test_status_fast import _own, as_compared, reference_tally, reference_validate, tally_of

from mpinfer.config import RunConfig
from mpinfer.inputs import checked_input, reading, selection
from mpinfer.inputs.check import check_input
from mpinfer.inputs.locate import BOM, IdReader
from mpinfer.inputs.tasks import InputFormat
from mpinfer.reports.tally import OutputTally
from mpinfer.reports.validate import validate_output
from mpinfer.store import row_match
from mpinfer.store.idset import IdIndex
from mpinfer.store.parts import Parts
from mpinfer.store.row_match import RowSlots, covered_slots

N = 2000


def _plain_input(folder: Path) -> Path:
    return write_tasks(folder / "plain.jsonl", text_tasks(N))


def _mixed_input(folder: Path) -> Path:
    """Rows whose ids cannot all be told from their bytes: a BOM, blank lines, ids written with
    an escape, non-ASCII ids; among them rows spaced as json.dumps writes them, and otherwise
    (told from their bytes as the compact ones are)."""
    lines: list[bytes] = []
    for i in range(N):
        if i % 7 == 3:
            row = b'{"id": "t%d", "prompt": "p"}' % i
        elif i % 17 == 4:
            row = b'{ "id" :\t"t%d" , "prompt" : "p" }' % i
        elif i % 11 == 5:
            row = b'{"id":"\\u0074%d","prompt":"p"}' % i  # "t<i>" with its t escaped
        elif i % 13 == 6:
            row = f'{{"id":"t{i}é","prompt":"p"}}'.encode()
        else:
            row = b'{"id":"t%d","prompt":"p"}' % i
        lines.append(row)
        if i % 50 == 49:
            lines.append(b"")
    path = folder / "mixed.jsonl"
    path.write_bytes(BOM + b"\n".join(lines) + b"\n")
    return path


def _ids(index: IdIndex) -> list[bytes]:
    """The input's ids as bytes, in its order (read back through the index)."""
    slots = sorted(range(len(index)), key=index.locator)
    return [index.id_at(slot).encode() for slot in slots]


def _output(ids: list[bytes], order: str) -> list[bytes]:
    """An output of ``ids`` answered in ``order``: about the input's (windows of 40 shuffled,
    every fifth missing, a repeat far from its row and strangers among them), reversed, or in
    no order at all."""
    rng = random.Random(order)
    if order == "about":
        kept = [raw for n, raw in enumerate(ids) if n % 5]
        out: list[bytes] = []
        for start in range(0, len(kept), 40):
            window = kept[start:start + 40]
            rng.shuffle(window)
            out += window
        out[900:900] = [ids[3], b"stranger", ids[-1], ids[1]]
        return [*out, b"stranger-2"]
    if order == "reversed":
        return ids[::-1]
    shuffled = list(ids)
    rng.shuffle(shuffled)
    return shuffled


def _read_part(index: IdIndex, raws: list[bytes], how: str, seek: bool,
               exact_first: int) -> tuple[bytes, list[object], bool]:
    """The rows a part marks, what each of its blocks gives back, whether it met an id twice."""
    rows = RowSlots.over(index, exact_first, seek=seek)
    given: list[object] = []
    rng = random.Random(len(raws))
    at = 0
    while at < len(raws):
        block = raws[at:at + rng.randint(1, 250)]
        given.append(rows.cover(block) if how == "cover" else rows.slots(block))
        at += len(block)
    return rows.covered(), given, rows.again


def _found_in_parts(index: IdIndex, raws: list[bytes], bounds: list[int]) -> set[int]:
    """The slots found when ``raws`` is read in parts from ``bounds``: the rows each part marks
    joined, and the ids they leave looked up exactly (as --status and --validate find them)."""
    joined, size, left = 0, 0, []
    for lo, hi in zip(bounds, [*bounds[1:], len(raws)], strict=True):
        rows = RowSlots.over(index, exact_first=0)
        left += [raw for at in range(lo, hi, 97) for raw in rows.cover(raws[at:min(at + 97, hi)])]
        joined |= int.from_bytes(rows.covered(), "little")
        size = max(size, len(rows.covered()))
    slots, but = covered_slots(index, joined.to_bytes(size, "little"))
    exact = {slot for slot in index.find_raws(left) if slot is not None}
    return exact | (set(range(len(index))) - set(slots) if but else set(slots))


@pytest.mark.parametrize("shape", ["plain", "mixed"])
@pytest.mark.parametrize("order", ["about", "reversed", "shuffled"])
def test_a_part_from_any_line_matches_as_one_that_reads_the_input_from_its_start(
        tmp_path: Path, shape: str, order: str) -> None:
    # Given an input (plain rows, or rows with a BOM, blank lines, spaced rows, escaped and
    # non-ASCII ids) and an output of its ids in some order, read in parts that start at its
    # first line, in its middle, at a row whose id has an escape, and on the input's last rows
    inp = _plain_input(tmp_path) if shape == "plain" else _mixed_input(tmp_path)
    index = check_input(inp).ids.index
    ids = _ids(index)
    raws = _output(ids, order)
    starts = [0, len(raws) // 2, len(raws) - 30]
    if shape == "mixed":
        starts.append(raws.index(b"t181"))  # 181 % 11 == 5: written with an escape
    for start in starts:
        for how in ("cover", "slots"):
            for exact_first in (0, 150):
                # When the part seeks its place near its first ids' rows, and when it reads the
                # input from its start up to them
                near = _read_part(index, raws[start:], how, True, exact_first)
                read = _read_part(index, raws[start:], how, False, exact_first)
                # Then it marks the same rows, gives the same back, and meets ids twice alike
                assert near == read, (start, how, exact_first)
    # and the rows parts mark and the ids they leave are exactly what the exact lookup finds
    assert _found_in_parts(index, raws, [0, N // 3, len(raws) - 30]) == {
        slot for slot in index.find_raws(raws) if slot is not None}


def test_a_part_whose_first_ids_are_strangers_marks_the_rows_of_its_next_blocks(
        tmp_path: Path) -> None:
    # Given an input and a part of an output that starts with ids the input does not hold
    index = check_input(_plain_input(tmp_path)).ids.index
    raws = [b"stranger-%d" % n for n in range(40)] + [b"t%d" % n for n in range(1200, 1500)]
    # When it marks its blocks' rows, seeking its place near its first ids
    rows = RowSlots.over(index, exact_first=0)
    left = [raw for at in range(0, len(raws), 40) for raw in rows.cover(raws[at:at + 40])]
    # Then the strangers are left to the exact lookup and every later row is marked
    assert left == raws[:40]
    assert [n for n, mark in enumerate(rows.covered()) if mark] == list(range(1200, 1500))


def test_a_part_marks_the_same_rows_beside_a_row_that_names_the_id_key_twice(
        tmp_path: Path) -> None:
    # Given an input with a row in its middle that names the id key twice (parsing takes the
    # last): the rows read beside it cannot be told from their bytes
    rows = [b'{"id":"t%d","prompt":"p"}' % i for i in range(600)]
    rows[300] = b'{"id":"t300","prompt":"p","id":"u300"}'
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"\n".join(rows) + b"\n")
    index = check_input(inp).ids.index
    raws = [b"t%d" % i for i in range(600) if i != 300] + [b"u300"]
    # When it is read in parts, one starting at the row, one beside it, one past it
    for bounds in ([0], [0, 300], [0, 280], [0, 450], [0, 200, 310]):
        found = _found_in_parts(index, raws, bounds)
        # Then the rows marked and the ids left are exactly the output's, t300 not among them
        assert found == {slot for slot in index.find_raws(raws) if slot is not None}
        assert len(found) == 600 and index.find_raws([b"t300"]) == [None]


def test_the_input_read_from_a_row_is_its_ids_from_that_line_with_its_number(
        tmp_path: Path) -> None:
    # Given an input with a BOM, blank lines and rows that are not plain
    inp = _mixed_input(tmp_path)
    index = check_input(inp).ids.index
    reader = IdReader(inp, "id", InputFormat.JSONL)
    every = [raw for block in reader.plain_ids() or [] for raw in block]
    # When it is read from a little before some rows (the first, one after a blank line, the
    # last), and from its very first line
    for task_id in (b"t0", b"t50", b"t1999"):
        slot = index.find_raws([task_id])[0]
        assert slot is not None
        for before in (0, 3, 10_000):
            near = index.rows_from(slot, before)
            assert near is not None
            row, blocks = near
            # Then it gives the ids of every line from the line it names, as read from the
            # start, and that line is ``before`` lines before the row's (or the first)
            assert [raw for block in blocks for raw in block] == every[row:]
            assert row == max(every.index(task_id) - before, 0)
    # and the first row, behind its BOM, is told from its bytes, as are spaced rows
    assert every[:6] == [b"t0", b"t1", b"t2", b"t3", b"t4", b""] and len(every) == N + N // 50


def test_a_part_over_rows_not_told_by_their_bytes_gives_up_its_place_and_finds_all_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an input whose ids are written with an escape (not told from their bytes) but for
    # its last 100, and a reach of 100 rows past the first id a part seeks its place by
    monkeypatch.setattr(row_match, "REACH", 100)
    rows = [b'{"id": "\\u0074%d", "prompt": "p"}' % i for i in range(1900)]
    rows += [b'{"id":"t%d","prompt":"p"}' % i for i in range(1900, 2000)]
    inp = tmp_path / "escaped.jsonl"
    inp.write_bytes(b"\n".join(rows) + b"\n")
    index = check_input(inp).ids.index
    raws = [b"t%d" % i for i in range(500, 2000)]
    # When a part of an output of those ids seeks its place, and when it reads from the start
    near = _read_part(index, raws, "cover", True, 0)
    read = _read_part(index, raws, "cover", False, 0)
    # Then neither finds a place (the first ids' rows are not plain): every id is left to the
    # exact lookup, which finds them all
    assert near == read
    marks, given, again = near
    assert marks == b"" and not again
    left = [raw for block in given for raw in block]  # type: ignore[attr-defined]
    assert left == raws and None not in index.find_raws(left)


def test_status_and_validate_in_parts_over_rows_of_every_kind_find_what_one_read_finds(
        tmp_path: Path) -> None:
    # Given an input with a BOM, blank lines, spaced rows, escaped and non-ASCII ids, and an
    # output of its ids about in its order, with gaps, a repeat far from its row and strangers
    inp = _mixed_input(tmp_path)
    config = RunConfig(input=inp, output=tmp_path / "results.jsonl")
    within = checked_input(inp, reading(config), selection(config), None).ids
    answered = [raw.decode() for raw in _output(_ids(within.index), "about")]
    out = tmp_path / "results.jsonl"
    out.write_bytes(b"".join(_own(rid) for rid in answered))
    expected_tally, expected_report = reference_tally(out, within), reference_validate(out, within)
    # When status and validate read it in one part, and in three (each seeking its place)
    for parts in (Parts(least=1 << 40), Parts(least=1 << 14, most=3)):
        tally = OutputTally.empty(within)
        tally.refresh(out, tmp_path / "none.errors.jsonl", parts)
        report = validate_output(out, within, parts)
        # Then they find what a line-by-line read finds
        assert tally_of(tally) == expected_tally
        assert as_compared(report) == as_compared(expected_report)
    assert len(tally.done) == len(set(answered)) - 2
