"""Compact id sets: a hash is never taken for an id, even when every id shares one (forced)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from helpers import cli_env, read_jsonl, write_tasks

from mpinfer.driver import work_items
from mpinfer.errors import InputError
from mpinfer.inputs.check import check_input
from mpinfer.inputs.readers import iter_tasks
from mpinfer.mockserver import MockServerProcess
from mpinfer.store.idset import BUCKETS, IdIndex, IdSubset, id_hash
from mpinfer.store.output import scan


def crowded(task_id: str) -> int:
    """Every id starting with "c" to one value, "s" ids to another, and the rest to one of three."""
    if task_id.startswith(("c", "s")):
        return 7 if task_id[0] == "c" else 11
    return id_hash(task_id) % 3


def result_line(task_id: str) -> bytes:
    return orjson.dumps({"id": task_id, "answer": "a", "model": "m", "requested_model": "m",
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1}}) + b"\n"


def test_ids_sharing_a_hash_are_told_apart_by_their_full_ids() -> None:
    # Given an index whose hash puts every id in one of two values
    ids = [f"c{i}" for i in range(50)] + [f"x{i}" for i in range(50)]
    index = IdIndex(lambda locator: ids[locator], hash_fn=lambda s: 1 if s.startswith("c") else 2)
    for locator, task_id in enumerate(ids):
        index.add(task_id, locator)
    # When it is frozen
    duplicates = index.freeze()
    # Then nothing is a duplicate, and each id (and only those) is found, in its own slot
    assert duplicates == []
    slots = {index.find(task_id) for task_id in ids}
    assert len(slots) == 100 and None not in slots
    assert [index.id_at(index.find(t, member=True) or 0) for t in ids] == ids
    assert index.find("c-unknown") is None and index.find("x-unknown") is None


def test_a_subset_answers_membership_exactly_under_collisions() -> None:
    # Given a subset of an index where all ids share one hash
    ids = [f"id{i}" for i in range(20)]
    index = IdIndex(lambda locator: ids[locator], hash_fn=lambda s: 0)
    for locator, task_id in enumerate(ids):
        index.add(task_id, locator)
    index.freeze()
    chosen = IdSubset(index)
    for task_id in ids[::2]:
        slot = index.find(task_id)
        assert slot is not None
        chosen.add_slot(slot)
    # Then exactly the chosen ids are in it, whichever way it is asked
    assert sorted(chosen) == sorted(ids[::2])
    assert [t for t in ids if t in chosen] == ids[::2]
    assert [t for t in ids if chosen.has_member(t)] == ids[::2]
    assert "id-other" not in chosen
    assert sorted(IdSubset(index, everything=True).minus(chosen)) == sorted(ids[1::2])


def test_the_input_check_finds_real_duplicates_with_both_lines_when_every_id_collides(
    tmp_path: Path,
) -> None:
    # Given an input where every id has the same hash, one id on lines 2 and 5
    path = write_tasks(tmp_path / "in.jsonl",
                       [{"id": i, "prompt": "p"} for i in ["a", "b", "c", "d", "b"]])
    # When it is checked with that hash
    with pytest.raises(InputError) as caught:
        check_input(path, hash_fn=lambda s: 0)
    # Then only the real duplicate is reported, with the lines of both rows
    assert str(caught.value) == f"{path}: 1 duplicate ids: 'b' (lines 2 and 5)"


def test_colliding_ids_of_a_csv_input_are_read_again_from_their_rows(tmp_path: Path) -> None:
    # Given a CSV input (a quoted cell spans two lines) where all ids collide
    path = tmp_path / "in.csv"
    path.write_text('id,prompt\nc1,"two\nlines"\nc2,plain\n\n,,\nc3,last\n', encoding="utf-8")
    # When it is checked
    index = check_input(path, hash_fn=lambda s: 0)
    # Then every id is there by its full id, and no other
    assert sorted(index.ids) == ["c1", "c2", "c3"]
    assert "c4" not in index.ids


def test_check_scan_and_feed_lose_nothing_and_repeat_nothing_under_forced_collisions(
    tmp_path: Path,
) -> None:
    # Given 40 "c" tasks that all share one hash, 40 others sharing three, one "s" task alone with
    # its hash, and an output holding half of each group, a repeat, and ids that are not in the
    # input but share the crowded hashes and the lone one
    ids = [f"c{i}" for i in range(40)] + [f"x{i}" for i in range(40)] + ["s-lone"]
    path = write_tasks(tmp_path / "in.jsonl", [{"id": i, "prompt": "p"} for i in ids])
    done = ids[:-1:2]
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"".join(result_line(i) for i in [*done, "c-foreign", "x-foreign",
                                                         "s-foreign", done[0]]))
    # When the real check, resume scan and feed run with that hash
    index = check_input(path, hash_fn=crowded)
    found = scan(output, within=index.ids)
    assert found.done is not None
    fed = [task.id for task, _ in work_items(iter_tasks(path), [found.done])]
    # Then exactly the tasks not in the output are fed, once each, and the strangers are counted
    # unknown
    assert fed == [*ids[1::2], "s-lone"]
    assert len(found.done) == len(done)
    assert found.unknown == {"c-foreign", "x-foreign", "s-foreign"}


INJECTED_RUN = """
import sys
import mpinfer.store.idset as idset
# every id collides with many others, but for "s-lone", which shares its hash only with a stranger's
idset.id_hash = lambda task_id: (5 if task_id.startswith("c")
                                 else 4 if task_id.startswith("s") else 6)
from mpinfer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_real_run_resumed_with_every_id_colliding_answers_each_task_exactly_once(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given 31 tasks, 12 answered by an earlier run, and output lines for ids not in the input, in a
    # command-line process whose id hash gives only three values
    ids = [f"c{i}" for i in range(15)] + [f"t{i}" for i in range(15)] + ["s-lone"]
    write_tasks(tmp_path / "tasks.jsonl", [{"id": i, "prompt": f"prompt {i}"} for i in ids])
    output = tmp_path / "results.jsonl"
    output.write_bytes(b"".join(result_line(i) for i in [*ids[:-1:5], *ids[1::5], "c-stranger",
                                                         "s-stranger"]))
    # When the run resumes
    proc = subprocess.run([sys.executable, "-c", INJECTED_RUN, "--no-progress", "-i", "tasks.jsonl",
                           "-o", "results.jsonl", "--base-url", mock.base_url, "-p", "2", "-c", "4",
                           "--timeout", "5"], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=120, check=False)
    # Then it succeeds, every input id is in the output exactly once, and only the 19 not done were
    # asked
    assert proc.returncode == 0, proc.stderr
    written = [row["id"] for row in read_jsonl(output) if "stranger" not in row["id"]]
    assert sorted(written) == sorted(ids)
    pending = sorted(set(ids) - set(ids[:-1:5]) - set(ids[1::5]))
    assert mock.stats()["received"] == {f"prompt {i}": 1 for i in pending}


def test_an_index_whose_locators_pass_a_terabyte_sorts_and_finds_the_same() -> None:
    # Given ids at byte offsets beyond 2**40 (they no longer pack below their hash), some sharing a
    # hash
    ids = {(1 << 41) + 7 * n: f"id{n}" for n in range(300)}
    index = IdIndex(ids.__getitem__, hash_fn=lambda s: int(s[2:]) % 50)
    for locator, task_id in ids.items():
        index.add(task_id, locator)
    # When it is frozen
    assert index.freeze() == []
    # Then every id is found at its own offset
    assert all(index.locator(index.find(t) or 0) == loc for loc, t in ids.items())


def test_buckets_sorted_ahead_in_a_copy_freeze_as_the_index_sorted_whole() -> None:
    # Given three indexes of the same ids, some sharing a hash, one id repeated
    ids = [f"c{i}" for i in range(40)] + [f"x{i}" for i in range(400)] + ["x7"]

    def build() -> IdIndex:
        # the "c" ids share one hash (in the first half of the buckets), the rest spread
        index = IdIndex(ids.__getitem__, hash_fn=lambda s: crowded(s) << 60 | (
            0 if s[0] == "c" else id_hash(s) >> 4))
        for locator, task_id in enumerate(ids):
            index.add(task_id, locator)
        return index

    whole, ahead, half_lost = build(), build(), build()
    # When one is frozen whole, another takes the first half of its buckets sorted by a copy (a
    # forked child's share) and sorts the rest, and the last sorts half and loses the copy's
    copy = build()
    half = BUCKETS // 2
    ahead.take_sorted(copy.sort_buckets(range(half)))
    ahead.sort_buckets(range(half, BUCKETS))
    half_lost.sort_buckets(range(half, BUCKETS))
    found = [index.freeze() for index in (whole, ahead, half_lost)]
    # Then all three find the same duplicate and hold the same slots
    assert found[0] == [("x7", [47, 440])]
    assert found[1] == found[2] == found[0]
    assert ahead.parts() == half_lost.parts() == whole.parts()
    assert [ahead.find(i) for i in ids[:-1]] == [whole.find(i) for i in ids[:-1]]
