"""--status and --validate read an output in blocks, count mpinfer's own lines from their fields
(not a RecordView each), and read a big output in forked parts: the counts and problems must be
what a plain line-by-line read through ``records.view`` gives, on every kind of line."""

from __future__ import annotations

import os
import random
from array import array
from bisect import bisect_left
from collections import deque
from itertools import accumulate, chain
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import NOW, result_line, write_jsonl

from mpinfer.config import RunConfig
from mpinfer.inputs import checked_input, input_index_path, reading, selection
from mpinfer.reports import tally as tally_module
from mpinfer.reports import validate as validate_module
from mpinfer.reports.status import StatusReader
from mpinfer.reports.summary import percentiles, percentiles_of_runs
from mpinfer.reports.tally import RECENT_RECORDS, OutputTally
from mpinfer.reports.validate import (
    Problem,
    ProblemKind,
    ValidationReport,
    validate_output,
)
from mpinfer.store import blocks
from mpinfer.store.blocks import LineReader
from mpinfer.store.done_index import index_path as done_index_path
from mpinfer.store.done_index import kept_done, scan_done
from mpinfer.store.idset import IdSubset
from mpinfer.store.marks import FileMark
from mpinfer.store.output import iter_lines
from mpinfer.store.parts import Parts, read_in_parts
from mpinfer.store.records import (
    Result,
    Usage,
    batch_result_line,
    filtered_record,
    missing_batch_fields,
    missing_fields,
    view,
)

IDS = ["a", "b", "c", "d", "é-ü", 'q"uote', "back\\slash", "tab\tid", "7", "x", "y", "z"]
# a few parts of a few lines each, and up to three of them: every part boundary is crossed
SPLIT = Parts(least=256, most=3)
ONE = Parts(least=1 << 40)


def _own(rid: str, **fields: Any) -> bytes:
    """A line as Result.to_line writes it (keys in its order, optional ones only when set)."""
    base = result_line(rid)
    usage = fields.pop("usage", Usage(10, 5, 15))
    result = Result(id=rid, input_prompt=base["input_prompt"], images=["img/x.png"],
                    answer=fields.pop("answer", base["answer"]),
                    model=fields.pop("model", "gpt-4o-mini-2024-07-18"),
                    requested_model=fields.pop("requested_model", "gpt-4o-mini"), usage=usage,
                    finish_reason=fields.pop("finish_reason", "stop"),
                    latency_s=fields.pop("latency_s", 0.25), attempts=1,
                    processed_at=fields.pop("processed_at", NOW), cost=fields.pop("cost", 0.001),
                    **fields)
    return result.to_line()


def varied_lines() -> list[bytes]:
    """Every kind of line an output can hold, and a few that no writer should make."""
    body = {"model": "gpt-4o-mini", "choices": [{"message": {"content": "batch answer"},
                                                 "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
    judge = {"id": "c", "label": "yes", "text": "yes", "judge_model": "judge-1", "of": "answer",
             "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
             "cost": 0.5, "sent": True}
    nested = {"id": "z", "model": "not-this", "answer": "", "usage": None, "cost": 9.0,
              "refusal": "nested", "filtered": {"source": "prompt"}}
    return [
        _own("a"),
        _own("b", answer=None, refusal="I can't help with that."),
        _own("b", answer="", refusal="   "),  # a blank refusal: an empty answer
        _own("c", answer=None, model=None, usage=None, cost=None,
             filtered=filtered_record("prompt", {"hate": {"filtered": True}})),
        _own("d", answer=None, finish_reason="content_filter", cost=0.002,
             filtered=filtered_record("completion", {"sexual": {"filtered": True}})),
        _own("d", filtered={"source": "elsewhere"}),  # not a filter's verdict
        _own("x", usage=None, cost=None, cost_estimate=0.01),  # no usage: cost unknown
        _own("x", cost=None),  # unpriced
        _own("y", model="gpt-4o", finish_reason="length", waited_s=1.5),  # mismatch, truncated
        _own("é-ü", latency_s=None, processed_at=NOW + 5),
        _own('q"uote', parsed={"id": "inner", "model": "m", "answer": "a", "usage": {}},
             label="cat"),
        _own("back\\slash", variant="v2", endpoint="https://example.test/v1"),
        _own("tab\tid", retries={"rate_limit": 2}, reasoning_content="thinking"),
        _own("unknown-id"),
        _own("a", answer="   "),  # a duplicate, and an empty answer
        orjson.dumps({**result_line("z"), "parsed": nested}),  # ours, keys in another order
        b'  { "id" : "y" , "answer" : "spaced" , "model" : "gpt-4o-mini" , "usage" : null }  ',
        orjson.dumps({**result_line("7"), "id": 7, "cost": 1, "latency_s": 2}),  # id a number
        orjson.dumps({**result_line("x"), "cost": True, "processed_at": "late"}),
        orjson.dumps({**result_line("x"), "usage": {"prompt_tokens": None}}),
        orjson.dumps({**result_line("x"), "usage": {"prompt_tokens": 3.0}, "model": 5}),
        orjson.dumps({"id": "x", "answer": "no model or usage"}),
        orjson.dumps({"id": "", **{k: v for k, v in result_line("x").items() if k != "id"}}),
        orjson.dumps({"id": True, **{k: v for k, v in result_line("x").items() if k != "id"}}),
        orjson.dumps({**result_line("x"), "id": "x", "answer": "dup", "answer2": 1}),
        batch_result_line("a", "req_1", body, {"requested_model": "gpt-4o-mini",
                                               "latency_s": 0.3, "processed_at": NOW,
                                               "cost": 0.003}),
        orjson.dumps(judge),
        b"",
        b"   ",
        b"[1, 2, 3]",
        b"not json at all",
        _own("a")[:40] + _own("b"),  # torn, with the next line glued on
        b'{"id": "c", "ans',
    ]


def setup(tmp_path: Path, lines: list[bytes], copies: int = 1) -> tuple[RunConfig, IdSubset]:
    tasks = write_jsonl(tmp_path / "tasks.jsonl",
                        [{"id": rid, "prompt": f"prompt {rid}"} for rid in IDS])
    out = tmp_path / "results.jsonl"
    out.write_bytes(b"".join(line.rstrip(b"\n") + b"\n" for line in lines) * copies)
    config = RunConfig(input=tasks, output=out)
    index = checked_input(tasks, reading(config), selection(config), input_index_path(out))
    return config, index.ids


# --- the reference: one line at a time, through records.view (what status and validate did) ----


def reference_tally(path: Path, within: IdSubset) -> dict[str, Any]:
    done, unknown = within.empty(), set()
    counts: dict[str, Any] = dict.fromkeys(
        ("bad", "prompt", "completion", "unpriced", "mismatches", "refusals", "truncated",
         "filtered", "no_usage", "waits"), 0)
    cost, waited, latencies = 0.0, 0.0, array("d")
    recent: deque[float] = deque(maxlen=RECENT_RECORDS)
    last, models = None, set()
    for _, _, obj in iter_lines(path):
        record = view(obj)
        if record is None:
            counts["bad"] += 1
            continue
        slot = within.index.find(record.id)
        if slot is None:
            unknown.add(record.id)
        elif within.has_slot(slot):
            done.add_slot(slot)
        counts["prompt"] += record.usage.prompt_tokens
        counts["completion"] += record.usage.completion_tokens
        if record.no_usage:
            counts["no_usage"] += 1
        elif record.cost is None:
            counts["unpriced"] += 1
            models.add(record.model or record.requested_model or "?")
        else:
            cost += record.cost
        counts["mismatches"] += record.mismatch
        counts["refusals"] += record.refused
        counts["filtered"] += record.filtered
        counts["truncated"] += record.truncated
        if record.latency_s is not None:
            latencies.append(record.latency_s)
        if record.waited_s is not None:
            waited += record.waited_s
            counts["waits"] += 1
        if record.processed_at is not None:
            recent.append(record.processed_at)
            last = max(last or 0.0, record.processed_at)
    return {**counts, "done": done.to_bytes(), "unknown": unknown, "cost": cost,
            "waited": waited, "latencies": sorted(latencies), "recent": list(recent), "last": last,
            "unpriced_models": models}


def tally_of(tally: OutputTally) -> dict[str, Any]:
    names = ("bad", "prompt", "completion", "unpriced", "mismatches", "refusals", "truncated",
             "filtered", "no_usage", "waits", "unknown", "cost", "waited", "last",
             "unpriced_models")
    return {**{name: getattr(tally, name) for name in names}, "done": tally.done.to_bytes(),
            "latencies": sorted(chain.from_iterable(tally.latencies)), "recent": list(tally.recent)}


def reference_validate(path: Path, input_ids: IdSubset) -> ValidationReport:
    report = ValidationReport(output=str(path))
    first_line: dict[str, int] = {}
    found = input_ids.empty()
    for number, raw, obj in iter_lines(path):
        report.lines += 1
        record = view(obj)
        if record is None:
            snippet = raw[:80].decode("utf-8", "replace").rstrip()
            report.add(Problem(ProblemKind.CORRUPT_LINE,
                               f"not an answer record (id, answer, model, usage): {snippet}",
                               number))
            continue
        rid = record.id
        report.records += 1
        missing = missing_batch_fields(obj) if record.batch else missing_fields(obj)
        if missing:
            report.add(Problem(ProblemKind.MISSING_FIELDS, f"missing {', '.join(missing)}",
                               number, rid))
        seen = first_line.setdefault(rid, number)
        if seen != number:
            report.add(Problem(ProblemKind.DUPLICATE_ID, f"also on line {seen}", number, rid))
        slot = input_ids.find(rid)
        if slot is None:
            report.add(Problem(ProblemKind.UNKNOWN_ID, "not in the input", number, rid))
        else:
            found.add_slot(slot)
        report.truncated += record.truncated
        if record.refused:
            report.refusals += 1
        elif record.filtered:
            report.filtered += 1
        elif not record.embedding and (not isinstance(record.answer, str)
                                       or not record.answer.strip()):
            report.add(Problem(ProblemKind.EMPTY_ANSWER, f"answer is {record.answer!r}", number,
                               rid))
        if record.mismatch:
            report.add(Problem(ProblemKind.MODEL_MISMATCH,
                               f"requested {record.requested_model!r}, answered by "
                               f"{record.model!r}", number, rid))
    for rid in sorted(input_ids.minus(found)):
        report.add(Problem(ProblemKind.MISSING_ID, "in the input, not in the output", None, rid))
    return report


def as_compared(report: ValidationReport) -> Any:
    return (report.to_dict(), list(report.counts), report.filtered,
            {kind: list(kept) for kind, kept in report.examples.items()})


# --- status ---------------------------------------------------------------------------------------


def test_status_counts_every_kind_of_line_as_a_line_by_line_read_does(tmp_path: Path) -> None:
    # Given an output of every kind of line: refusals, filters, no usage, unpriced, mismatches,
    # escaped and unicode ids, numbers where strings go, nested objects holding our keys, Batch
    # API and judge lines, odd whitespace, blank, corrupt and torn lines, duplicates
    lines = varied_lines()
    config, within = setup(tmp_path, lines)
    output = config.require_paths()[1]
    expected = reference_tally(output, within)
    # When status tallies it in one part
    tally = OutputTally.empty(within)
    tally.refresh(output, tmp_path / "none.errors.jsonl", ONE)
    # Then every count is the line-by-line read's, to the last bit of the float sums
    assert tally_of(tally) == expected
    assert expected["bad"] == 7 and expected["refusals"] == 1 and expected["filtered"] == 2
    assert expected["no_usage"] == 3 and expected["mismatches"] >= 2 and expected["unknown"]
    assert expected["unpriced_models"] == {"gpt-4o-mini-2024-07-18", "gpt-4o-mini"}


@pytest.mark.parametrize("small", [False, True])
def test_status_read_in_forked_parts_counts_what_one_read_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: bool) -> None:
    # Given the same lines many times over: an output of several parts (``small``: each part
    # read in blocks of a few lines, its costs and latencies kept in many arrays)
    if small:
        monkeypatch.setattr(blocks, "BLOCK", 1 << 10)
        monkeypatch.setattr(tally_module, "RUN", 5)
    config, within = setup(tmp_path, varied_lines()[:-1], copies=25)
    output = config.require_paths()[1]
    with output.open("ab") as handle:
        handle.write(_own("a")[:30])  # and a torn last line, being written
    expected = reference_tally(output, within)
    # When it is tallied in up to three parts, the first two read by forked processes
    tally = OutputTally.empty(within)
    read = tally.refresh(output, tmp_path / "none.errors.jsonl", SPLIT)
    # Then the counts are one read's, the torn line is left for later and the mark is the end
    got = tally_of(tally)
    expected["bad"] -= 1  # a line-by-line read counts the torn line; status leaves it for later
    assert got == expected
    assert tally.torn and read == output.stat().st_size - 30
    assert tally.output_mark is not None and tally.output_mark.offset == read
    # And a refresh after the line is finished reads only that line
    with output.open("ab") as handle:
        handle.write(_own("a")[30:])
    assert tally.refresh(output, tmp_path / "none.errors.jsonl", SPLIT) == len(_own("a"))
    assert not tally.torn and tally.bad == expected["bad"]


def test_percentiles_of_sorted_runs_are_those_of_all_values_sorted() -> None:
    # Given runs of latencies each in order of size, with repeats, empty runs and one value alone
    rng = random.Random(7)
    for _ in range(200):
        runs = [sorted(round(rng.uniform(0.1, 3.0), rng.choice((1, 4)))
                       for _ in range(rng.choice((0, 1, 2, 5, 40, 300))))
                for _ in range(rng.randint(1, 4))]
        # Then the ranks found by bisection are the nearest ranks of all of them sorted
        assert percentiles_of_runs(runs) == percentiles(v for run in runs for v in run)
    assert percentiles_of_runs([[], []]) == {"p50": None, "p95": None, "max": None}


@pytest.mark.parametrize("run", [tally_module.RUN, 7])
def test_status_in_parts_gives_the_percentiles_of_every_latency(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: int) -> None:
    # Given an output of several parts whose answers each took their own time, each part's
    # latencies sorted in runs of about ``run`` (cut where a block ends: blocks of a few lines)
    monkeypatch.setattr(tally_module, "RUN", run)
    monkeypatch.setattr(blocks, "BLOCK", 1 << 10)
    rng = random.Random(3)
    lines = [_own(rid, latency_s=round(rng.uniform(0.2, 9.0), 4)) for rid in IDS * 40]
    config, within = setup(tmp_path, lines)
    output = config.require_paths()[1]
    expected = percentiles(orjson.loads(line)["latency_s"] for line in lines)
    # When it is tallied in three parts, each sorting its own latencies
    tally = OutputTally.empty(within)
    tally.refresh(output, tmp_path / "none.errors.jsonl", SPLIT)
    runs = tally.latency_runs()
    # Then there is a run a part (or many for a big part), each in order, and their
    # percentiles are all of them sorted
    assert runs is not None
    assert len(runs) == 3 if run > len(lines) else len(runs) > 3 * 10
    assert all(list(run) == sorted(run) for run in runs)
    assert percentiles_of_runs(runs) == expected
    # And status gives them, read whole and then from its cache
    for _ in range(2):
        assert StatusReader(config).read().latency_s == expected


def test_a_tally_refreshed_many_times_keeps_a_few_runs_and_their_percentiles(
        tmp_path: Path) -> None:
    # Given a tally of an output read whole, then refreshed after each of 60 appended answers
    # (as --status --watch does at every redraw), each with a latency of its own
    rng = random.Random(11)
    lines = [_own(rid, latency_s=round(rng.uniform(0.2, 9.0), 4)) for rid in IDS * 3]
    config, within = setup(tmp_path, lines)
    output = config.require_paths()[1]
    tally = OutputTally.empty(within)
    tally.refresh(output, tmp_path / "none.errors.jsonl", ONE)
    for number in range(60):
        line = _own(IDS[number % len(IDS)], latency_s=round(rng.uniform(0.2, 9.0), 4))
        lines.append(line)
        with output.open("ab") as handle:
            handle.write(line)
        tally.refresh(output, tmp_path / "none.errors.jsonl", ONE)
    # Then it holds a few runs, not one a refresh, each in order, with every latency's percentiles
    runs = tally.latency_runs()
    assert runs is not None and len(runs) <= 17  # at most MANY_RUNS (16) and a merged one
    assert all(list(run) == sorted(run) for run in runs)
    expected = percentiles(orjson.loads(line)["latency_s"] for line in lines)
    assert percentiles_of_runs(runs) == expected and tally.latency_count() == len(lines)


def _indexed(tmp_path: Path, lines: list[bytes]) -> tuple[Path, IdSubset, dict[str, Any]]:
    """An output of ``lines`` whose done index a rerun's scan kept; the input's ids and key."""
    config, _ = setup(tmp_path, lines)
    tasks, output = config.require_paths()
    index = checked_input(tasks, reading(config), selection(config), input_index_path(output))
    assert index.kept is not None
    scan_done(output, index.ids, index.kept)
    assert done_index_path(output).exists()
    return output, index.ids, index.kept


def _tally(output: Path, within: IdSubset, kept: dict[str, Any] | None,
           parts: Any = ONE) -> OutputTally:
    tally = OutputTally.empty(within)
    tally.refresh(output, output.with_name("none.errors.jsonl"), parts, kept=kept)
    return tally


def test_status_takes_the_ids_done_from_a_current_done_index(tmp_path: Path) -> None:
    # Given an output a rerun's scan indexed, of every kind of line but the damaged ones
    lines = [line for line in varied_lines() if orjson_or_none(line) is not None] * 20
    output, within, kept = _indexed(tmp_path, lines)
    expected = reference_tally(output, within)
    # When status reads it whole, in one part and in parts, the index given
    for parts in (ONE, SPLIT):
        # Then every count is a line-by-line read's, the ids done and unknown included
        assert tally_of(_tally(output, within, kept, parts)) == expected
    # And lines appended since the index (answers, a stranger, a repeat) are looked up
    with output.open("ab") as handle:
        handle.write(_own("z") + b"\n" + _own("stranger") + b"\n" + _own("a") + b"\n")
    expected = reference_tally(output, within)
    assert "stranger" in expected["unknown"]
    for parts in (ONE, SPLIT):
        assert tally_of(_tally(output, within, kept, parts)) == expected


def test_status_reads_the_ids_itself_of_an_output_replaced_since_its_index(tmp_path: Path) -> None:
    # Given an indexed output, then another file put in its place (other answers)
    output, within, kept = _indexed(tmp_path, [_own("a"), _own("b"), _own("c")])
    replacement = output.with_name("new.jsonl")
    replacement.write_bytes(_own("x") + b"\n" + _own("y") + b"\n" + _own("nobody") + b"\n")
    os.replace(replacement, output)
    # When status reads it, the index given
    # Then it counts what the new file holds, not what the index said
    assert tally_of(_tally(output, within, kept)) == reference_tally(output, within)


def test_a_done_index_holds_only_for_the_file_it_read(tmp_path: Path) -> None:
    # Given an indexed output, and what its index says as status takes it before reading
    output, within, kept = _indexed(tmp_path, [_own("a"), _own("b")])
    known = kept_done(output, within.index, kept)
    assert known is not None
    size = output.stat().st_size
    # Then it holds for a read of that file to its end, and of it grown
    assert known.holds(output, FileMark.of(output, size))
    with output.open("ab") as handle:
        handle.write(_own("c") + b"\n")
    assert known.holds(output, FileMark.of(output, output.stat().st_size))
    # And not for a read that stopped short of its mark, nor once another file took its place
    assert not known.holds(output, FileMark.of(output, size - 1))
    replacement = output.with_name("new.jsonl")
    replacement.write_bytes(_own("x") + b"\n" + _own("y") + b"\n" + _own("z") + b"\n")
    os.replace(replacement, output)
    assert not known.holds(output, FileMark.of(output, output.stat().st_size))
    assert kept_done(output, within.index, kept) is None


def test_status_counts_done_what_the_next_rerun_takes_for_done(tmp_path: Path) -> None:
    # Given a line in mpinfer's form damaged in its middle (not torn), which the resume scan
    # takes for done without decoding it, in an output the scan indexed
    broken = _own("b").replace(b'"model":', b'"model" BROKEN ', 1)
    output, within, kept = _indexed(tmp_path, [_own("a"), broken, _own("c")])
    rerun = scan_done(output, within, kept)
    assert rerun.done is not None and within.index.find("b") in set(rerun.done.slots())
    # When status reads it with the index, and without
    with_index, without = _tally(output, within, kept), _tally(output, within, None)
    # Then with it, status's done is the rerun's (b is not sent again), the line still bad;
    # without it, the line is only bad
    assert with_index.done.to_bytes() == rerun.done.both(within).to_bytes()
    assert with_index.bad == without.bad == 1
    assert len(with_index.done) == 3 and len(without.done) == 2


def orjson_or_none(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


# --- validate -------------------------------------------------------------------------------------


def test_validate_finds_every_problem_a_line_by_line_read_finds(tmp_path: Path) -> None:
    # Given an output of every kind of line (every kind of problem in it)
    config, within = setup(tmp_path, varied_lines())
    output = config.require_paths()[1]
    # When it is validated in one part
    report = validate_output(output, within, ONE)
    # Then the report is the line-by-line read's: counts, examples, their order
    expected = reference_validate(output, within)
    assert as_compared(report) == as_compared(expected)
    assert set(expected.counts) == set(ProblemKind) - {ProblemKind.MISSING_ID}


def test_validate_in_forked_parts_finds_duplicates_across_them(tmp_path: Path) -> None:
    # Given an output of several parts where ids come back in later parts, an unknown id too
    lines = varied_lines()[:-1]
    config, within = setup(tmp_path, lines, copies=20)
    output = config.require_paths()[1]
    with output.open("ab") as handle:
        handle.write(b'{"id": "c", "ans')  # a torn last line: checked too
    expected = reference_validate(output, within)
    # When it is validated in up to three parts
    report = validate_output(output, within, SPLIT)
    # Then it reports what one read reports, duplicates named with their first line
    assert as_compared(report) == as_compared(expected)
    duplicates = report.examples[ProblemKind.DUPLICATE_ID]
    assert report.counts[ProblemKind.DUPLICATE_ID] > 20 * 3
    assert duplicates[0].message.startswith("also on line ")
    assert report.counts[ProblemKind.CORRUPT_LINE] == expected.counts[ProblemKind.CORRUPT_LINE]


def test_validate_in_parts_names_the_first_line_of_an_id_seen_in_an_earlier_part(
        tmp_path: Path) -> None:
    # Given ids answered once each, then an unknown id twice and the first id twice at the end
    lines = [_own(rid) for rid in IDS] + [_own("unknown-id"), _own("unknown-id"), _own("a"),
                                          _own("a")]
    config, within = setup(tmp_path, lines)
    output = config.require_paths()[1]
    # When it is validated in three parts
    report = validate_output(output, within, SPLIT)
    # Then both last lines name line 1, where "a" was first, in another part
    assert [(p.line, p.id, p.message) for p in report.examples[ProblemKind.DUPLICATE_ID]] == [
        (14, "unknown-id", "also on line 13"), (15, "a", "also on line 1"),
        (16, "a", "also on line 1")]
    assert report.counts[ProblemKind.UNKNOWN_ID] == 2
    assert as_compared(report) == as_compared(reference_validate(output, within))


def test_a_big_file_is_read_in_parts_by_forked_processes_in_file_order(tmp_path: Path) -> None:
    # Given a file of 300 numbered lines
    path = tmp_path / "lines.txt"
    path.write_bytes(b"".join(b"%d\n" % n for n in range(1, 301)))

    def read(reader: LineReader) -> tuple[int, list[int]]:
        return os.getpid(), [int(line) for block in reader.blocks() for line in block]

    # When it is read in up to three parts
    parts = read_in_parts(path, 0, read, Parts(least=100, most=3))
    # Then three parts came back, the first two from other processes, every line once, in order
    assert len(parts) == 3
    assert parts[0][0] != os.getpid() and parts[1][0] != os.getpid()
    assert parts[2][0] == os.getpid()
    assert [n for _, numbers in parts for n in numbers] == list(range(1, 301))


def test_a_part_whose_process_fails_is_read_by_the_parent(tmp_path: Path) -> None:
    # Given a file of 300 numbered lines, and a read that fails in any other process
    path = tmp_path / "lines.txt"
    path.write_bytes(b"".join(b"%d\n" % n for n in range(1, 301)))
    parent = os.getpid()

    def read(reader: LineReader) -> list[int]:
        if os.getpid() != parent:
            raise RuntimeError("a forked reader failed")
        return [int(line) for block in reader.blocks() for line in block]

    # When it is read in up to three parts
    parts = read_in_parts(path, 0, read, Parts(least=100, most=3))
    # Then the parent read the failed parts itself: every line once, in order
    assert len(parts) == 3
    assert [n for numbers in parts for n in numbers] == list(range(1, 301))


def test_forked_parts_read_a_csv_inputs_ids_each_from_its_own_file(tmp_path: Path) -> None:
    # Given a CSV input, whose ids the lookup reads again from the file for every answer
    ids = [f"row{n}" for n in range(400)]
    tasks = tmp_path / "tasks.csv"
    tasks.write_text("id,prompt\n" + "".join(f"{rid},prompt {rid}\n" for rid in ids))
    out = tmp_path / "results.jsonl"
    out.write_bytes(b"".join(_own(rid) for rid in ids) * 3)
    config = RunConfig(input=tasks, output=out)
    within = checked_input(tasks, reading(config), selection(config), input_index_path(out)).ids
    # When status and validate read the output in three parts, parent and children at once
    tally = OutputTally.empty(within)
    tally.refresh(out, tmp_path / "none.errors.jsonl", Parts(least=4096, most=3))
    report = validate_output(out, within, Parts(least=4096, most=3))
    # Then every id was found: none read from where another process had moved the file
    assert len(tally.done) == 400 and not tally.unknown
    assert report.counts == {ProblemKind.DUPLICATE_ID: 800}


def test_status_and_validate_of_a_long_output_in_about_the_inputs_order(tmp_path: Path) -> None:
    # Given 45,000 tasks (more than are looked up by hash before the input is read in order) and
    # an output of most of them in order, with gaps, a repeat far from its row and a stranger
    ids = [f"r{n}" for n in range(45_000)]
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"id": rid, "prompt": "p"} for rid in ids])
    answered = [rid for n, rid in enumerate(ids) if n % 11]
    answered[40_000:40_000] = ["r5", "stranger"]
    out = tmp_path / "results.jsonl"
    out.write_bytes(b"".join(_own(rid) for rid in answered))
    config = RunConfig(input=tasks, output=out)
    within = checked_input(tasks, reading(config), selection(config), input_index_path(out)).ids
    # When status and validate read it, in one part and in two
    for parts in (ONE, Parts(least=1 << 20, most=2)):
        tally = OutputTally.empty(within)
        tally.refresh(out, tmp_path / "none.errors.jsonl", parts)
        report = validate_output(out, within, parts)
        # Then they find what a line-by-line read finds
        assert tally_of(tally) == reference_tally(out, within)
        assert as_compared(report) == as_compared(reference_validate(out, within))


# --- validate's quick read: ids marked at their rows, an id met twice read again exactly ---------


def _in_flight(ids: list[str]) -> list[str]:
    """``ids`` as a run writes them: shuffled within windows of 16, every ninth left out."""
    rng = random.Random(9)
    out: list[str] = []
    for start in range(0, len(ids), 16):
        window = [rid for n, rid in enumerate(ids[start:start + 16], start) if n % 9]
        rng.shuffle(window)
        out.extend(window)
    return out


def _repeated(answered: list[str], where: str) -> list[str]:
    """``answered`` with one id written again ``where``, or strangers (twice) only."""
    answered = list(answered)
    if where == "beside":  # the next line: in the same block
        answered.insert(1201, answered[1200])
    elif where == "a block on":  # near its row, a block or two later
        for at in (1500, 1700, 1900):
            answered.insert(at + 40, answered[at])
    elif where == "far":  # at the end, far from its row (looked up, beside a row marked)
        answered.append(answered[100])
    elif where == "late":  # only far from its row, twice: both looked up
        late = answered.pop(100)
        answered.insert(2000, late)
        answered.append(late)
    elif where == "first":  # among the first lines
        answered.insert(2, answered[0])
    elif where == "next part":  # 30 lines before the middle byte, again 30 lines after it:
        sizes = list(accumulate(len(_own(rid)) for rid in answered))  # a line in each part
        middle = bisect_left(sizes, sizes[-1] // 2)
        answered.insert(middle + 30, answered[middle - 30])
    answered[1000:1000] = ["stranger", "stranger-2"]
    answered.append("stranger")
    return answered


@pytest.mark.parametrize("where", ["nowhere", "beside", "a block on", "far", "late", "first",
                                   "next part"])
def test_validate_marks_ids_at_their_rows_and_names_each_repeat_as_one_read_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    # Given 3,000 tasks, an output of most of them a little out of order, strangers, and an id
    # written twice (or none), read in blocks of a few dozen lines
    monkeypatch.setattr(blocks, "BLOCK", 1 << 13)
    ids = [f"r{n}" for n in range(3000)]
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"id": rid, "prompt": "p"} for rid in ids])
    out = tmp_path / "results.jsonl"
    out.write_bytes(b"".join(_own(rid) for rid in _repeated(_in_flight(ids), where)))
    config = RunConfig(input=tasks, output=out)
    within = checked_input(tasks, reading(config), selection(config), input_index_path(out)).ids
    expected = as_compared(reference_validate(out, within))
    exact_reads: list[bool] = []

    class Checker(validate_module._Checker):
        def __init__(self, input_ids: IdSubset, quick: bool = False) -> None:
            super().__init__(input_ids, quick)
            exact_reads.append(not quick)

    monkeypatch.setattr(validate_module, "_Checker", Checker)
    for parts in (ONE, Parts(least=1 << 16, most=2)):
        exact_reads.clear()
        # When it is validated, in one part and in two
        report = validate_output(out, within, parts)
        # Then the report is one read's; the output is read again exactly only for a repeat
        assert as_compared(report) == expected
        assert any(exact_reads) == (where != "nowhere")
    counts = report.counts
    assert counts[ProblemKind.UNKNOWN_ID] == 3 and counts[ProblemKind.MISSING_ID] == 334
    assert counts[ProblemKind.DUPLICATE_ID] == {"nowhere": 1, "a block on": 4}.get(where, 2)
