"""--status reads only what is new, and its cache never makes it wrong (checked by a full read)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from helpers import NOW, failure_line, jsonl_bytes, result_line, setup_run, write_jsonl

from mpinfer.config import RunConfig
from mpinfer.inputs import input_index_path
from mpinfer.reports.status import StatusReader, StatusReport
from mpinfer.reports.status_cache import cache_path
from mpinfer.store.repair import repair

IDS = [f"t{i}" for i in range(40)]


def fresh(config: RunConfig) -> StatusReport:
    """What --status says reading everything, with no cache."""
    return StatusReader(config, use_cache=False).read(NOW)


def cached(config: RunConfig) -> tuple[StatusReport, StatusReader]:
    """What --status says from the cache beside the output, and the reader (what it read)."""
    reader = StatusReader(config)
    return reader.read(NOW), reader


@pytest.fixture
def config(tmp_path: Path) -> RunConfig:
    """20 of 40 tasks answered, 3 failures (one answered later), a bad line; one --status done."""
    config = setup_run(tmp_path, IDS,
                       [result_line(i, at=NOW - 40 + n) for n, i in enumerate(IDS[:20])])
    write_jsonl(config.output.with_name("results.jsonl.errors.jsonl"),
                [failure_line("t25"), failure_line("t26"), failure_line("t3")])
    with config.output.open("ab") as handle:
        handle.write(b"not json\n")
    first, reader = cached(config)
    assert not reader.from_cache and cache_path(config.output).exists()
    assert (first.done, first.failed, first.bad_lines) == (20, 2, 1)
    return config


def test_a_second_status_on_an_unchanged_output_reads_nothing_and_says_the_same(
    config: RunConfig,
) -> None:
    # When --status runs again with nothing changed
    again, reader = cached(config)
    # Then it came from the cache, read no byte of the output, and matches a full read
    assert reader.from_cache and reader.bytes_read == 0
    assert again == fresh(config)


def test_after_an_append_only_the_new_bytes_are_read(config: RunConfig) -> None:
    # Given 5 more answers, a torn line being written, and a new failure appended
    added = jsonl_bytes(result_line(i, at=NOW - 5) for i in IDS[20:25])
    with config.output.open("ab") as handle:
        handle.write(added + b'{"id": "t30", "ans')
    errors_added = jsonl_bytes([failure_line("t31")])
    with config.output.with_name("results.jsonl.errors.jsonl").open("ab") as handle:
        handle.write(errors_added)
    # When --status runs again
    again, reader = cached(config)
    # Then it read just what was appended (not the torn tail) and matches a full read
    assert reader.from_cache and reader.bytes_read == len(added) + len(errors_added)
    assert again == fresh(config)
    assert (again.done, again.failed, again.bad_lines) == (25, 3, 2)
    # And once the torn line is finished, the next call takes it
    with config.output.open("ab") as handle:
        handle.write(b'wer": "x"}\n')
    assert cached(config)[0] == fresh(config)


def test_a_watch_reader_redraw_costs_what_was_appended(config: RunConfig) -> None:
    # Given one reader kept across redraws, as --watch does
    reader = StatusReader(config)
    reader.read(NOW)
    added = jsonl_bytes([result_line("t39")])
    with config.output.open("ab") as handle:
        handle.write(added)
    # When it redraws
    report = reader.read(NOW)
    # Then it read the one new line
    assert reader.bytes_read == len(added) and report == fresh(config)


def test_a_truncated_output_is_read_again_whole(config: RunConfig) -> None:
    # Given the output cut back to its first 8 lines
    kept = b"".join(config.output.read_bytes().splitlines(keepends=True)[:8])
    with config.output.open("r+b") as handle:
        handle.truncate(len(kept))
    # When --status runs again
    again, reader = cached(config)
    # Then it noticed, read the whole file, and matches a full read
    assert (reader.bytes_read
            == len(kept) + config.output.with_name("results.jsonl.errors.jsonl").stat().st_size)
    assert again == fresh(config) and again.done == 8


def test_an_output_replaced_by_a_copy_is_read_again_whole(config: RunConfig,
                                                          tmp_path: Path) -> None:
    # Given another output of the same size copied over it in place (same inode), and then one moved
    # over it
    other = tmp_path / "other.jsonl"
    write_jsonl(other, [result_line(i, at=NOW - 40 + n) for n, i in enumerate(IDS[20:40])])
    # make the sizes equal: the copy must be caught by its bytes
    with config.output.open("ab") as handle:
        handle.truncate(other.stat().st_size)
    cached(config)
    shutil.copyfile(other, config.output)
    first_copy, _ = cached(config)
    assert first_copy == fresh(config) and first_copy.done == 20
    assert first_copy.failed == 1  # t25 and t26 are answered in the copy; t3 is not
    moved = tmp_path / "moved.jsonl"
    write_jsonl(moved, [result_line(i) for i in IDS[:3]])
    os.replace(moved, config.output)
    # When --status runs again
    again, _ = cached(config)
    # Then each time it matches a full read
    assert again == fresh(config) and again.done == 3


def test_an_output_rewritten_by_repair_is_read_again_whole(config: RunConfig) -> None:
    # Given --validate --repair rewrites the output (the bad line moves out)
    repair(config)
    # When --status runs again
    again, _ = cached(config)
    # Then it matches a full read, without the bad line
    assert again == fresh(config) and again.bad_lines == 0 and again.done == 20


def test_a_changed_input_is_checked_again(config: RunConfig) -> None:
    # Given 10 more tasks in the input
    write_jsonl(config.input,
                [{"id": i, "prompt": "p"} for i in [*IDS, *(f"n{k}" for k in range(10))]])
    # When --status runs again
    again, reader = cached(config)
    # Then the cache was not used and the totals are the new input's
    assert not reader.from_cache and again.total == 50 and again == fresh(config)


def test_a_cache_that_is_not_one_is_ignored(config: RunConfig) -> None:
    # Given garbage where the cache was
    cache_path(config.output).write_bytes(b"mpinfer status cache 3\n\xff\xff garbage")
    # When --status runs
    again, reader = cached(config)
    # Then it read everything and is right
    assert not reader.from_cache and again == fresh(config)


def test_latency_percentiles_follow_a_rewrite_to_as_many_lines(config: RunConfig) -> None:
    # Given the output rewritten with as many answers, all slower
    slow = [{**result_line(i, at=NOW - 40 + n), "latency_s": 9.0} for n, i in enumerate(IDS[:20])]
    write_jsonl(config.output, [*slow, b"not json\n"])
    # When --status runs again
    again, _ = cached(config)
    # Then the percentiles are those of the new latencies
    assert again.latency_s["p50"] == 9.0 and again == fresh(config)


def test_a_watching_reader_rewrites_the_cache_at_most_once_a_minute_and_on_close(
    config: RunConfig,
) -> None:
    # Given a --watch reader on a clock the test moves, after its first redraw
    clock = [1000.0]
    reader = StatusReader(config, watching=True, clock=lambda: clock[0])
    reader.read(NOW)
    saved = cache_path(config.output).read_bytes()
    # When a line is appended and it redraws 2 s later
    with config.output.open("ab") as handle:
        handle.write(jsonl_bytes([result_line("t39")]))
    clock[0] += 2.0
    report = reader.read(NOW)
    # Then the redraw is right but the cache was not rewritten; closing the reader writes it
    assert report == fresh(config)
    assert cache_path(config.output).read_bytes() == saved
    reader.close()
    again, next_reader = cached(config)
    assert next_reader.bytes_read == 0 and again == fresh(config)


def test_the_cache_counts_over_the_input_index_kept_beside_the_output(config: RunConfig) -> None:
    # Given the cache the first --status wrote, with no copy of the input's index of its own: the
    # one a run (or that status) keeps beside the output is its index
    cache = cache_path(config.output)
    old_copy = cache.with_name(cache.name + "-index")
    kept = input_index_path(config.output)
    assert kept.exists() and not old_copy.exists()
    # When that index is gone
    kept.unlink()
    again, reader = cached(config)
    # Then the cache is not used: everything is read, and right (and the index is kept again)
    assert not reader.from_cache and again == fresh(config) and kept.exists()
    # And when it is not an index of this input, the cache is not used either
    cached(config)
    kept.write_bytes(b"mpinfer input index 1\n" + (2).to_bytes(8, "little") + b"{}")
    again, reader = cached(config)
    assert not reader.from_cache and again == fresh(config)


def test_a_copy_of_the_index_an_older_cache_kept_is_removed(config: RunConfig) -> None:
    # Given the copy of the input's index a cache of an earlier version kept beside it
    cache = cache_path(config.output)
    old_copy = cache.with_name(cache.name + "-index")
    old_copy.write_bytes(b"mpinfer status cache 1\n" + bytes(1000))
    # When --status writes its cache again (after an answer was appended)
    with config.output.open("ab") as handle:
        handle.write(jsonl_bytes([result_line("t38")]))
    again, _ = cached(config)
    # Then the old copy is gone, and the status is a full read's
    assert not old_copy.exists() and again == fresh(config)


def test_a_cache_cut_short_in_its_arrays_is_ignored(config: RunConfig) -> None:
    # Given the cache cut off in the middle of its last blob (the latencies, read into an array)
    cache = cache_path(config.output)
    cache.write_bytes(cache.read_bytes()[:-5])
    # When --status runs
    again, reader = cached(config)
    # Then it read everything and is right
    assert not reader.from_cache and again == fresh(config)


def test_the_cache_serves_the_same_files_named_from_another_folder(
    config: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the same input and output named relative to another working folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert config.input is not None and config.output is not None
    relative = dataclasses.replace(config, input=Path(os.path.relpath(config.input)),
                                   output=Path(os.path.relpath(config.output)))
    # When --status runs there
    again, reader = cached(relative)
    # Then it came from the cache the first --status left: nothing of the output read
    assert reader.from_cache and reader.bytes_read == 0
    assert again.done == fresh(config).done == 20


def test_the_cache_keeps_the_latencies_in_their_sorted_runs(config: RunConfig) -> None:
    # Given the cache, and answers appended since, each with a latency of its own
    added = [{**result_line(i, at=NOW - 5), "latency_s": 0.5 + n} for n, i in
             enumerate(IDS[20:30])]
    with config.output.open("ab") as handle:
        handle.write(jsonl_bytes(added))
    # When --status starts from the cache and reads what is new
    again, reader = cached(config)
    # Then the latencies came back in their runs, each in order (no sort of them all is needed
    # for the percentiles), and the percentiles are a full read's
    runs = reader.tallies[0].latency_runs()
    assert reader.from_cache and runs is not None and len(runs) >= 2
    assert all(list(run) == sorted(run) for run in runs)
    assert again.latency_s == fresh(config).latency_s and again == fresh(config)
