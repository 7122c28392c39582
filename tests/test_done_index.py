"""The indexes a run keeps beside its output (the input's ids, the output's done ids): a rerun of a
finished job trusts them only while the files are the ones they describe, and a stale one never
loses or doubles a task."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import orjson
import pytest
from helpers import (
    jsonl_bytes,
    read_jsonl,
    result_line,
    run_cli,
    text_tasks,
    write_jsonl,
    write_tasks,
)

from mpinfer.inputs import FieldKeys, Selection, checked_input, input_index_path
from mpinfer.inputs.check import check_input
from mpinfer.inputs.locate import IdReader
from mpinfer.inputs.tasks import InputFormat
from mpinfer.mockserver import MockServerProcess
from mpinfer.store import done_index
from mpinfer.store.done_index import index_path, scan_done
from mpinfer.store.idset import IdIndex
from mpinfer.store.output import scan

TASKS = 8


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str) -> dict[str, int]:
    """One real run of the CLI on tasks.jsonl -> results.jsonl; the prompts the server was asked."""
    mock.reset()
    proc = run_cli("-i", "tasks.jsonl", "-o", "results.jsonl", "--base-url", mock.base_url,
                   "-p", "2", "-c", "2", *extra, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    received: dict[str, int] = mock.stats()["received"]
    return received


def _finished(tmp_path: Path, mock: MockServerProcess) -> Path:
    """A finished job of TASKS tasks, its indexes kept beside the output."""
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(TASKS))
    assert len(_run(tmp_path, mock)) == TASKS
    output = tmp_path / "results.jsonl"
    assert index_path(output).is_file() and input_index_path(output).is_file()
    return output


def _each_once(output: Path) -> None:
    ids = Counter(row["id"] for row in read_jsonl(output))
    assert ids == {f"t{i}": 1 for i in range(TASKS)}


def _prompt(i: int) -> str:
    return str(text_tasks(TASKS)[i]["prompt"])


def test_a_rerun_of_a_finished_job_with_current_indexes_asks_nothing(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given a finished job whose run kept both indexes
    output = _finished(tmp_path, mock)
    kept = index_path(output).stat().st_mtime_ns
    # When it is run again
    received = _run(tmp_path, mock)
    # Then nothing is asked, every task is in the output once, and the index was current (not
    # written again)
    assert received == {}
    _each_once(output)
    assert index_path(output).stat().st_mtime_ns == kept


def test_lines_appended_by_another_writer_are_read_from_the_mark(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given the first 5 tasks done by a run that kept its index, then two answers appended by
    # another writer (one a task's, one not in the input)
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(TASKS))
    assert len(_run(tmp_path, mock, "--end", "5")) == 5
    output = tmp_path / "results.jsonl"
    with output.open("ab") as handle:
        handle.write(jsonl_bytes([result_line("t6"), result_line("stranger")]))
    # When the whole job runs
    received = _run(tmp_path, mock)
    # Then only the two tasks in neither are asked, and no task is twice in the output
    assert received == {_prompt(5): 1, _prompt(7): 1}
    ids = Counter(row["id"] for row in read_jsonl(output))
    assert ids == {**{f"t{i}": 1 for i in range(TASKS)}, "stranger": 1}


def test_a_truncated_output_is_read_again_whole(tmp_path: Path, mock: MockServerProcess) -> None:
    # Given a finished job whose output is then cut to its first 3 lines in place (same inode)
    output = _finished(tmp_path, mock)
    lines = output.read_bytes().splitlines(keepends=True)
    with output.open("r+b") as handle:
        handle.truncate(sum(len(line) for line in lines[:3]))
    kept = {orjson.loads(line)["id"] for line in lines[:3]}
    # When it is run again
    received = _run(tmp_path, mock)
    # Then exactly the 5 tasks cut off are asked again, and each task is in the output once
    assert sorted(received) == sorted(_prompt(i) for i in range(TASKS) if f"t{i}" not in kept)
    assert set(received.values()) == {1}
    _each_once(output)


def test_a_replaced_output_is_read_again_whole(tmp_path: Path, mock: MockServerProcess) -> None:
    # Given a finished job whose output is replaced by another file holding 6 of its lines
    output = _finished(tmp_path, mock)
    lines = output.read_bytes().splitlines(keepends=True)
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(b"".join(lines[:6]))
    os.replace(copy, output)
    kept = {orjson.loads(line)["id"] for line in lines[:6]}
    # When it is run again
    received = _run(tmp_path, mock)
    # Then the 2 tasks the new file lacks are asked, once each
    assert sorted(received) == sorted(_prompt(i) for i in range(TASKS) if f"t{i}" not in kept)
    _each_once(output)


def test_an_output_rewritten_in_place_to_the_same_size_is_not_trusted(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given a finished job whose last line is overwritten in place, to the same length, with an
    # answer for an id that is not in the input (the file's size and inode unchanged; its mtime
    # moves)
    output = _finished(tmp_path, mock)
    lines = output.read_bytes().splitlines(keepends=True)
    last = orjson.loads(lines[-1])
    replaced = lines[-1].replace(f'"id":"{last["id"]}"'.encode(),
                                 f'"id":"{"x" * len(last["id"])}"'.encode(), 1)
    assert len(replaced) == len(lines[-1]) and replaced != lines[-1]
    with output.open("r+b") as handle:
        handle.seek(sum(len(line) for line in lines[:-1]))
        handle.write(replaced)
    # When it is run again
    received = _run(tmp_path, mock)
    # Then the task whose answer was overwritten is asked again, and only it
    assert received == {_prompt(int(last["id"][1:])): 1}


def test_a_torn_tail_left_after_the_index_loses_nothing(tmp_path: Path,
                                                          mock: MockServerProcess) -> None:
    # Given a finished job, then half an answer appended without its newline (a writer killed
    # mid-line) after the index was kept
    output = _finished(tmp_path, mock)
    with output.open("ab") as handle:
        handle.write(orjson.dumps(result_line("t3"))[:40])
    # When it is run again
    received = _run(tmp_path, mock)
    # Then nothing is asked (every task is done), the torn bytes were moved aside, and each task
    # is in the output once
    assert received == {}
    assert (tmp_path / "results.jsonl.corrupt").read_bytes().startswith(b'{"id":"t3"')
    _each_once(output)


def test_an_index_kept_for_another_input_is_not_used(tmp_path: Path,
                                                     mock: MockServerProcess) -> None:
    # Given a finished job, then the input rewritten with two more tasks
    output = _finished(tmp_path, mock)
    tasks = text_tasks(TASKS + 2)
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    # When it is run again
    received = _run(tmp_path, mock)
    # Then exactly the two new tasks are asked
    assert received == {str(tasks[TASKS]["prompt"]): 1, str(tasks[TASKS + 1]["prompt"]): 1}
    assert len(read_jsonl(output)) == TASKS + 2


def test_the_block_scan_finds_what_the_decoding_scan_finds(tmp_path: Path) -> None:
    # Given an input, and an output with answers in mpinfer's form, an id written with an escape,
    # a non-ASCII id, a torn line with the next answer glued on, a task line, garbage, a blank
    # line, a repeat and an id not in the input
    ids = ["a", "b", "c", "d", 'q"uote', "é", "g", "h"]
    inp = write_tasks(tmp_path / "in.jsonl", [{"id": i, "prompt": "p"} for i in ids])
    glued = orjson.dumps(result_line("g"))[:50] + orjson.dumps(result_line("h")) + b"\n"
    output = write_jsonl(tmp_path / "out.jsonl", [
        result_line("a"), result_line('q"uote'), result_line("é"), glued,
        {"id": "c", "prompt": "p"}, b"not json\n", b"\n", result_line("a"), result_line("zz"),
        result_line("d")])
    index = check_input(inp)
    # When both scans read it, with and without a kept index
    slow = scan(output, within=index.ids)
    fast = scan_done(output, index.ids, None, want_cost=True)
    keyed = checked_input(inp, FieldKeys(), Selection(), input_index_path(output))
    first = scan_done(output, keyed.ids, keyed.kept, want_cost=True)
    again = scan_done(output, keyed.ids, keyed.kept, want_cost=True)
    # Then they find the same done ids, unknown ids, bad lines and cost
    assert slow.done is not None
    expected = sorted(slow.done)
    assert expected == sorted(["a", 'q"uote', "é", "d"])
    for found in (fast, first, again):
        assert found.done is not None
        assert sorted(found.done) == expected
        assert found.unknown == slow.unknown == {"zz"}
        assert found.bad == slow.bad == 3
        assert [b.line for b in found.bad_lines] == [b.line for b in slow.bad_lines] == [4, 5, 6]
        assert abs(found.cost - slow.cost) < 1e-9
    assert index_path(output).is_file()


def test_a_row_that_is_not_plain_is_never_taken_on_its_bytes(tmp_path: Path) -> None:
    # Given rows whose id is plain (one spaced as json.dumps writes it), one that names the id
    # key twice (parsing takes the last), one that names it again spaced, and one whose id
    # differs from the bytes asked about
    path = tmp_path / "in.jsonl"
    rows = [b'{"id":"a","prompt":"p"}\n', b'{"id":"b","prompt":"p","id":"c"}\n',
            b'{"id": "d","prompt":"p"}\n', b'{"id": "f", "prompt": "p", "id" : "g"}\n',
            b'{"id":"e","prompt":"p"}\n']
    path.write_bytes(b"".join(rows))
    offsets = [sum(len(r) for r in rows[:n]) for n in range(len(rows))]
    reader = IdReader(path, "id", InputFormat.JSONL)
    # When each row is compared with an id by its bytes
    verdicts = reader.same_many(offsets, [b"a", b"b", b"d", b"f", b"x"])
    # Then only the plain rows that match are taken; the others are left to a full read
    assert verdicts == [True, None, True, None, None]


@pytest.mark.parametrize("twice", [False, True])
def test_a_few_ids_are_told_by_their_rows_lines_as_many_are_after_the_whole_file_is_counted(
        tmp_path: Path, twice: bool) -> None:
    # Given an input of 130 rows of 500 bytes, plain, or with one that names the id key twice
    rows = [b'{"id":"r%d","prompt":"%s"}\n' % (i, b"x" * 480) for i in range(130)]
    if twice:
        rows[7] = b'{"id":"r7","prompt":"p","id":"s7"}\n'
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(rows))
    offsets = [sum(len(r) for r in rows[:n]) for n in range(len(rows))]
    reader = IdReader(path, "id", InputFormat.JSONL)
    asked = [b"r1", b"r7", b"x", b"r9"]
    # When a few rows are compared with ids (too few for a count of the key over all the file),
    # then many (a count taken), then those few again
    few = reader.same_many([offsets[n] for n in (1, 7, 8, 9)], asked)
    many = reader.same_many(offsets * 3, [b"r%d" % n for n in range(130)] * 3)
    again = reader.same_many([offsets[n] for n in (1, 7, 8, 9)], asked)
    # Then each way takes the plain rows that match, and leaves the row that names it twice
    assert few == again == [True, None if twice else True, None, True]
    assert many == [None if twice and n == 7 else True for n in range(130)] * 3


def test_find_raws_never_takes_a_hash_for_an_id(tmp_path: Path) -> None:
    # Given an index whose rows all hold ids of the same hash bucket neighbourhood, and an id
    # resolver that can only read rows (no byte compare)
    ids = [f"id{i}" for i in range(50)]
    index = IdIndex(lambda locator: ids[locator])
    for locator, task_id in enumerate(ids):
        index.add(task_id, locator)
    index.freeze()
    # When ids in the input and strangers are looked up by their bytes
    found = index.find_raws([b"id3", b"stranger", b"id49", "é".encode()])
    # Then the input's ids have their slots, read back equal, and the strangers have none
    assert found[1] is None and found[3] is None
    assert found[0] is not None and index.id_at(found[0]) == "id3"
    assert found[2] is not None and index.id_at(found[2]) == "id49"


def _defects() -> dict[str, tuple[bytes, set[str]]]:
    """A line to put among canonical ones, and the ids it adds to the done set."""
    whole = orjson.dumps(result_line("t7"))
    return {
        "cut short, with a newline": (whole[:60] + b"\n", set()),
        "a torn line with the next glued on": (whole[:60] + orjson.dumps(result_line("t8"))
                                               + b"\n", set()),
        "a blank line": (b"\n", set()),
        "another key order": (orjson.dumps({"answer": "a", "model": "m", "usage": None,
                                            "id": "t7"}) + b"\n", {"t7"}),
        "an escaped id": (whole.replace(b'"t7"', b'"\\u0074\\u0037"') + b"\n", {"t7"}),
    }


def test_the_block_scan_is_exact_around_every_kind_of_irregular_line(tmp_path: Path) -> None:
    # Given 20 tasks, and outputs of canonical answers for all but t7 and t8, each with one
    # irregular line among them
    inp = write_tasks(tmp_path / "in.jsonl", text_tasks(20))
    index = check_input(inp)
    others = {f"t{i}" for i in range(20)} - {"t7", "t8"}
    lines = [result_line(rid) for rid in sorted(others)]
    for name, (defect, adds) in _defects().items():
        output = write_jsonl(tmp_path / "out.jsonl", [*lines[:9], defect, *lines[9:]])
        # When both scans read it
        slow = scan(output, within=index.ids)
        fast = scan_done(output, index.ids, None)
        # Then they agree: the defect adds only the ids of whole answers, and its line is bad
        # unless it is an answer or blank
        assert slow.done is not None and fast.done is not None
        assert set(fast.done) == set(slow.done) == others | adds, name
        assert (fast.bad, [b.line for b in fast.bad_lines]) == (
            slow.bad, [b.line for b in slow.bad_lines]), name
        assert fast.bad == (0 if adds or name == "a blank line" else 1), name


def test_lines_longer_than_a_block_and_cut_by_blocks_are_read_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given 30 answers, some with answers longer than the scan's block, and a block of 64 bytes
    monkeypatch.setattr(done_index, "_BLOCK", 64)
    inp = write_tasks(tmp_path / "in.jsonl", text_tasks(30))
    index = check_input(inp)
    output = write_jsonl(tmp_path / "out.jsonl", [
        result_line(f"t{i}", answer="x" * (300 if i % 7 == 0 else 3)) for i in range(30)])
    # When it is scanned
    found = scan_done(output, index.ids, None)
    # Then every answer is found, and nothing is bad
    assert found.done is not None and len(found.done) == 30 and found.bad == 0


@pytest.mark.parametrize("block", [1, 2, 3, 5, 8, 1 << 20])
def test_whether_every_row_names_the_id_key_once_is_counted_across_block_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    # Given reads of a few bytes at a time (so that keys are cut by block ends), a file of plain
    # rows, and one where a row names the key a second time
    from mpinfer.inputs import locate

    monkeypatch.setattr(locate, "_BLOCK", block)
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(b'{"id":"a","prompt":"p"}\n{"id":"b","prompt":"q"}\n')
    twice = tmp_path / "twice.jsonl"
    twice.write_bytes(b'{"id":"a","prompt":"p"}\n{"id":"b","prompt":"q","id":"c"}\n')
    # When rows are compared with ids by their bytes
    found = IdReader(plain, "id", InputFormat.JSONL).same_many([0, 24], [b"a", b"x"])
    again = IdReader(twice, "id", InputFormat.JSONL).same_many([0, 24], [b"a", b"b"])
    # Then the plain file's matching row is taken on its bytes; in the other, the row that names
    # the key twice is left to a full read (the plain one still taken after its line is searched)
    assert found == [True, None]
    assert again == [True, None]
