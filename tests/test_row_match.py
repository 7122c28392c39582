"""The resume scan matches an output's ids with the input's rows in order (store/row_match.py): it
finds exactly what decoding every line finds, whatever the output's order, and never takes a hash
for an id."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest
from helpers import result_line, text_tasks, write_jsonl, write_tasks
from test_idset import crowded

from mpinfer.inputs.check import check_input
from mpinfer.inputs.locate import IdReader
from mpinfer.inputs.tasks import InputFormat
from mpinfer.store import done_index
from mpinfer.store.done_index import scan_done
from mpinfer.store.idset import HashFn, IdSubset
from mpinfer.store.output import scan
from mpinfer.store.row_match import RowMatch, RowSlots, covered_slots, join_marks


def _jittered(ids: list[str], window: int, seed: int) -> list[str]:
    """``ids`` shuffled within windows of ``window``: answers written a few in flight at once."""
    rng = random.Random(seed)
    out: list[str] = []
    for start in range(0, len(ids), window):
        part = ids[start:start + window]
        rng.shuffle(part)
        out.extend(part)
    return out


def _same_as_decoding(inp: Path, output: Path, hash_fn: HashFn | None = None) -> set[str]:
    """Scan ``output`` both ways; assert they agree; the done ids."""
    index = check_input(inp, hash_fn=hash_fn)
    slow = scan(output, within=index.ids)
    fast = scan_done(output, index.ids, None)
    assert slow.done is not None and fast.done is not None
    assert sorted(fast.done) == sorted(slow.done)
    assert fast.unknown == slow.unknown
    assert (fast.bad, fast.lines) == (slow.bad, slow.lines)
    return set(fast.done)


def test_an_output_a_little_out_of_order_with_repeats_and_strangers_is_read_exactly(
        tmp_path: Path) -> None:
    # Given 3,000 tasks, and outputs of their answers shuffled within windows of 40, one of all,
    # one of every third missing, each with a repeat and an id not in the input
    ids = [f"t{i}" for i in range(3000)]
    inp = write_tasks(tmp_path / "in.jsonl", text_tasks(3000))
    for name, answered in (("all", ids), ("some", [i for n, i in enumerate(ids) if n % 3])):
        order = _jittered(answered, 40, seed=len(answered))
        order[100:100] = [answered[5], "stranger"]
        output = write_jsonl(tmp_path / f"{name}.jsonl", [result_line(i) for i in order])
        # When both scans read it
        done = _same_as_decoding(inp, output)
        # Then the done ids are exactly the answered ones
        assert done == set(answered), name


def test_an_output_in_no_order_at_all_loses_nothing_when_little_is_held(tmp_path: Path) -> None:
    # Given 500 tasks and an output of 400 of them in reverse order, a stranger among them, and a
    # matcher that holds at most 3 ids a side
    inp = write_tasks(tmp_path / "in.jsonl", text_tasks(500))
    index = check_input(inp).ids.index
    answered = [f"t{i}" for i in range(499, 99, -1)]
    raws = [i.encode() for i in answered[:200]] + [b"stranger"] + [i.encode()
                                                                   for i in answered[200:]]
    match = RowMatch.over(index, held=3)
    assert match is not None
    # When its ids are matched in blocks of 64, those held too long looked up by hash
    done = IdSubset(index)
    late: list[bytes] = []
    for start in range(0, len(raws), 64):
        late += match.take(raws[start:start + 64])
    late += match.finish(done)
    found = index.find_raws(late)
    done.add_slots([slot for slot in found if slot is not None])
    # Then every answered id is done, and only the stranger is left without a row
    assert set(done) == set(answered)
    assert [raw for raw, slot in zip(late, found, strict=True) if slot is None] == [b"stranger"]


def test_rows_whose_id_cannot_be_told_from_their_bytes_are_never_matched_on_them(
        tmp_path: Path) -> None:
    # Given an input with a blank line, a row spaced as json.dumps writes it, an id with an
    # escape, a non-ASCII id and a block that names the id key a second time in a row, and an
    # output of all of them
    rows = [b'{"id":"a","prompt":"p"}', b"", b'{"id": "b","prompt":"p"}',
            b'{"id":"c\\u0064","prompt":"p"}', '{"id":"é","prompt":"p"}'.encode(),
            b'{"id":"e","prompt":"p"}']
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b"\n".join(rows) + b"\n")
    twice = tmp_path / "twice.jsonl"
    twice.write_bytes(b'{"id":"x","prompt":"p"}\n{"id":"y","prompt":"p","id":"z"}\n')
    # When their ids are read in order
    plain = [raw for block in IdReader(inp, "id", InputFormat.JSONL).plain_ids() or []
             for raw in block]
    again = [raw for block in IdReader(twice, "id", InputFormat.JSONL).plain_ids() or []
             for raw in block]
    # Then only the plain rows (the spaced one among them) give their bytes, one entry a line
    assert plain == [b"a", b"", b"b", b"", b"", b"e"]
    assert again == [b"", b""]
    # and a scan of an output of every id finds what decoding finds
    ids = ["a", "b", "cd", "é", "e"]
    output = write_jsonl(tmp_path / "out.jsonl", [result_line(i) for i in reversed(ids)])
    assert _same_as_decoding(inp, output) == set(ids)
    output = write_jsonl(tmp_path / "out2.jsonl", [result_line(i) for i in ("z", "x", "y")])
    assert _same_as_decoding(twice, output) == {"z", "x"}


def test_a_partly_done_output_under_forced_collisions_is_read_exactly(tmp_path: Path) -> None:
    # Given tasks whose ids share a handful of hashes, and an output of some of them a little out
    # of order, with ids not in the input that share those hashes
    ids = [f"c{i}" for i in range(60)] + [f"x{i}" for i in range(60)] + ["s-lone"]
    inp = write_tasks(tmp_path / "in.jsonl", [{"id": i, "prompt": "p"} for i in ids])
    answered = [*_jittered([*ids[:-1:2], "s-lone"], 7, seed=3), "c-foreign", "s-foreign"]
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"".join(orjson.dumps(result_line(i)) + b"\n" for i in answered))
    # When both scans read it, with the crowded hash
    done = _same_as_decoding(inp, output, hash_fn=crowded)
    # Then exactly the answered input ids are done
    assert done == set(ids[:-1:2]) | {"s-lone"}


def test_an_output_read_by_two_processes_gives_what_one_gives(tmp_path: Path) -> None:
    # Given 2,000 tasks and an output of their answers a little out of order, with in each half
    # an irregular line (a torn line with the next glued on, garbage, a task line) and a stranger,
    # and a torn tail
    ids = [f"t{i}" for i in range(2000)]
    inp = write_tasks(tmp_path / "in.jsonl", text_tasks(2000))
    lines = [orjson.dumps(result_line(i)) + b"\n" for i in _jittered(ids[:1900], 30, seed=9)]
    glued = orjson.dumps(result_line("t1950"))[:40] + orjson.dumps(result_line("t1951")) + b"\n"
    lines[300:300] = [glued, b"not json\n", orjson.dumps(result_line("stranger-1")) + b"\n"]
    lines[1500:1500] = [b'{"id":"t1960","prompt":"p"}\n', orjson.dumps(result_line("t1999"))
                        + b"\n", b"garbage\n", orjson.dumps(result_line("stranger-2")) + b"\n"]
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"".join(lines) + orjson.dumps(result_line("t1998"))[:30])
    index = check_input(inp)
    # When it is scanned by one process, and by two (the second half in a forked child)
    one = scan_done(output, index.ids, None, split_from=1 << 60)
    two = scan_done(output, index.ids, None, split_from=1)
    slow = scan(output, within=index.ids)
    # Then both find what decoding every line finds (the glued line is bad: t1951 runs again)
    assert slow.done is not None
    for found in (one, two):
        assert found.done is not None
        assert sorted(found.done) == sorted(slow.done) == sorted([*ids[:1900], "t1999"])
        assert found.unknown == slow.unknown == {"stranger-1", "stranger-2"}
        assert (found.bad, found.lines) == (slow.bad, slow.lines)
        assert [b.line for b in found.bad_lines] == [b.line for b in slow.bad_lines]


def test_two_processes_read_small_blocks_and_lines_longer_than_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given 60 answers, some longer than the scan's block, a block of 64 bytes, and a torn tail
    monkeypatch.setattr(done_index, "_BLOCK", 64)
    inp = write_tasks(tmp_path / "in.jsonl", text_tasks(60))
    index = check_input(inp)
    output = write_jsonl(tmp_path / "out.jsonl", [
        result_line(i, answer="x" * (300 if int(i[1:]) % 7 == 0 else 3))
        for i in _jittered([f"t{n}" for n in range(59)], 5, seed=1)])
    with output.open("ab") as tail:
        tail.write(orjson.dumps(result_line("t59"))[:20])
    # When two processes read it
    found = scan_done(output, index.ids, None, split_from=1)
    slow = scan(output, within=index.ids)
    # Then every whole answer is found, and the torn tail is what decoding finds (t59 runs again)
    assert found.done is not None and slow.done is not None
    assert sorted(found.done) == sorted(slow.done) == sorted(f"t{i}" for i in range(59))
    assert (found.bad, found.lines, found.bad_lines) == (slow.bad, slow.lines, slow.bad_lines)


@pytest.mark.parametrize("start", [0, 1234, 2900])
def test_row_slots_give_what_the_exact_lookup_gives_from_any_line(tmp_path: Path,
                                                                   start: int) -> None:
    # Given 3,000 tasks and an output a little out of order: every fifth task missing (failed),
    # a repeat of an early id far from its row, strangers, and blocks of uneven size, read from
    # a line near the start, the middle or the end (a part of the output read by one process)
    ids = [f"t{i}" for i in range(3000)]
    inp = write_tasks(tmp_path / "in.jsonl", text_tasks(3000))
    index = check_input(inp).ids.index
    order = [i.encode() for i in _jittered([i for n, i in enumerate(ids) if n % 5], 40, seed=4)]
    order[1500:1500] = [b"t7", b"stranger", b"t2999", b"t1"]
    order.append(b"stranger-2")
    raws = order[start * 4 // 5:]
    # When their slots are found beside the input's rows, from the first block on
    slots = RowSlots.over(index, exact_first=0)
    found: list[int | None] = []
    rng = random.Random(start)
    at = 0
    while at < len(raws):
        size = rng.randint(1, 300)
        found += slots.slots(raws[at:at + size])
        at += size
    # Then they are the exact lookup's, slot for slot
    assert found == index.find_raws(raws)


@pytest.mark.parametrize("hash_fn", [None, crowded])
def test_row_slots_never_take_a_hash_for_an_id(tmp_path: Path, hash_fn: HashFn | None) -> None:
    # Given an input whose ids share hashes (crowded) or not, and an output of its ids in order
    # with near-misses of them (a prefix, a suffix) in between
    inp = write_tasks(tmp_path / "in.jsonl", text_tasks(600))
    index = check_input(inp, hash_fn=hash_fn).ids.index
    raws = [raw for i in range(600) for raw in ((f"t{i}".encode(),) if i % 7 else
                                                 (f"t{i}".encode(), f"t{i}x".encode(),
                                                  f"t{i}"[:-1].encode()))]
    # When their slots are found beside the input's rows
    slots = RowSlots.over(index, exact_first=0)
    found = [slot for at in range(0, len(raws), 50) for slot in slots.slots(raws[at:at + 50])]
    # Then they are the exact lookup's: a near-miss is never one of the input's
    assert found == index.find_raws(raws)


def test_rows_covered_in_parts_and_ids_left_give_what_the_exact_lookup_finds(
        tmp_path: Path) -> None:
    # Given 3,000 tasks and an output a little out of order, every fifth task missing, with a
    # repeat far from its row and strangers, cut in three parts (each read by one process)
    ids = [f"t{i}" for i in range(3000)]
    inp = write_tasks(tmp_path / "in.jsonl", text_tasks(3000))
    index = check_input(inp).ids.index
    order = [i.encode() for i in _jittered([i for n, i in enumerate(ids) if n % 5], 40, seed=6)]
    order[1500:1500] = [b"t7", b"stranger", b"t2999", b"t1"]
    order.append(b"stranger-2")
    # When each part marks the rows its ids equal near their place, and looks up the rest
    covered = 0
    left: list[bytes] = []
    for lo, hi in ((0, 700), (700, 1800), (1800, len(order))):
        rows = RowSlots.over(index, exact_first=0)
        for at in range(lo, hi, 97):
            left += rows.cover(order[at:min(at + 97, hi)])
        covered |= int.from_bytes(rows.covered(), "little")
    marks = covered.to_bytes(max((covered.bit_length() + 7) // 8, 1), "little")
    slots, but = covered_slots(index, marks)
    exact = {slot for slot in index.find_raws(left) if slot is not None}
    found = exact | (set(range(len(index))) - set(slots) if but else set(slots))
    # Then the ids found are exactly those of the output, and most were never looked up
    assert found == {slot for slot in index.find_raws(order) if slot is not None}
    assert len(left) < len(order) // 10
    # And so when the first ids were looked up exactly (not marked): fewer rows are unmarked
    rows = RowSlots.over(index, exact_first=200)
    left = [raw for at in range(0, len(order), 97) for raw in rows.cover(order[at:at + 97])]
    slots, but = covered_slots(index, rows.covered())
    assert but and len(slots) < len(index) // 3
    exact = {slot for slot in index.find_raws(left) if slot is not None}
    assert exact | (set(range(len(index))) - set(slots)) == {
        slot for slot in index.find_raws(order) if slot is not None}


def test_every_row_covered_is_the_whole_input_with_no_lookup(tmp_path: Path) -> None:
    # Given 500 tasks and an output of all of them a little out of order
    inp = write_tasks(tmp_path / "in.jsonl", text_tasks(500))
    index = check_input(inp).ids.index
    order = [i.encode() for i in _jittered([f"t{i}" for i in range(500)], 30, seed=2)]
    # When its rows are covered in blocks
    rows = RowSlots.over(index, exact_first=0)
    left = [raw for at in range(0, 500, 64) for raw in rows.cover(order[at:at + 64])]
    # Then nothing is left to look up, and the marks say: every row
    assert left == [] and covered_slots(index, rows.covered()) == ([], True)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_parts_marks_are_joined_by_or_and_a_row_marked_twice_is_told(chunk: int) -> None:
    # Given three parts' marks of rows (a byte of 0 or 1 a row), of their own lengths
    rng = random.Random(chunk)
    marks = [bytes(rng.random() < 0.3 for _ in range(size)) for size in (40, 17, 33)]
    # When they are joined a chunk of rows at a time
    joined, twice = join_marks(marks, chunk)
    # Then each row is marked when any part marked it, and a row two parts marked is told
    expected = [max(mark[row] if row < len(mark) else 0 for mark in marks) for row in range(40)]
    assert list(joined) == expected
    assert twice == any(sum(mark[row] for mark in marks if row < len(mark)) > 1
                        for row in range(40))
    # And marks that never meet are not told as meeting
    apart = [bytes([1, 0, 0, 1]), bytes([0, 1, 0, 0, 0, 1])]
    assert join_marks(apart, chunk) == (bytearray([1, 1, 0, 1, 0, 1]), False)
    assert join_marks([]) == (bytearray(), False)
