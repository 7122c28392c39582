"""--validate and --status as library calls, on hand-written input and output files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import NOW, failure_line, result_line, setup_run, write_jsonl

from mpinfer.backends.batch_plan import Plan
from mpinfer.config import RunConfig
from mpinfer.errors import ConfigError, InputError
from mpinfer.reports.status import status
from mpinfer.reports.validate import ProblemKind, validate
from mpinfer.store.locks import RunLock
from mpinfer.store.output import OutputPaths
from mpinfer.store.records import same_model


def lines_of(report: Any, kind: ProblemKind) -> list[int | None]:
    return [problem.line for problem in report.examples.get(kind, [])]


# --- validate -------------------------------------------------------------------------------------


def test_a_clean_output_validates_ok(tmp_path: Path) -> None:
    # Given every input id answered once, by the model asked for
    config = setup_run(tmp_path, ["a", "b", "c"],
                       [result_line("a"), result_line("b"), result_line("c")])
    # When it is validated
    [report] = validate(config)
    # Then there is nothing to report
    assert report.ok
    assert (report.lines, report.records) == (3, 3)
    assert not any(report.counts.values())


def test_a_corrupt_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    # Given a line that is not JSON between two records
    config = setup_run(tmp_path, ["a", "b"],
                       [result_line("a"), b'{"id": "b", "ans\n', result_line("b")])
    # When it is validated
    [report] = validate(config)
    # Then line 2 is reported, and only that
    assert not report.ok
    assert report.counts == {ProblemKind.CORRUPT_LINE: 1}
    assert lines_of(report, ProblemKind.CORRUPT_LINE) == [2]
    assert '{"id": "b", "ans' in report.examples[ProblemKind.CORRUPT_LINE][0].message
    assert (report.lines, report.records) == (3, 2)


def test_missing_fields_are_reported_by_name(tmp_path: Path) -> None:
    # Given a record without latency_s and with a usage lacking total_tokens
    broken = result_line("b")
    del broken["latency_s"]
    del broken["usage"]["total_tokens"]
    config = setup_run(tmp_path, ["a", "b"], [result_line("a"), broken])
    # When it is validated
    [report] = validate(config)
    # Then line 2 is reported with the missing fields
    assert report.counts == {ProblemKind.MISSING_FIELDS: 1}
    (problem,) = report.examples[ProblemKind.MISSING_FIELDS]
    assert (problem.line, problem.id) == (2, "b")
    assert problem.message == "missing latency_s, usage.*"


def test_a_duplicate_id_is_reported_on_its_second_line(tmp_path: Path) -> None:
    # Given id a answered on lines 1 and 3
    config = setup_run(tmp_path, ["a", "b"], [result_line("a"), result_line("b"), result_line("a")])
    # When it is validated
    [report] = validate(config)
    # Then line 3 is reported, pointing back at line 1
    assert report.counts == {ProblemKind.DUPLICATE_ID: 1}
    (problem,) = report.examples[ProblemKind.DUPLICATE_ID]
    assert (problem.line, problem.id, problem.message) == (3, "a", "also on line 1")


def test_an_unknown_id_is_reported(tmp_path: Path) -> None:
    # Given an answer for an id the input does not have
    config = setup_run(tmp_path, ["a"], [result_line("a"), result_line("zz")])
    # When it is validated
    [report] = validate(config)
    # Then it is reported on its line
    assert report.counts == {ProblemKind.UNKNOWN_ID: 1}
    (problem,) = report.examples[ProblemKind.UNKNOWN_ID]
    assert (problem.line, problem.id) == (2, "zz")


def test_missing_ids_are_all_counted_and_some_shown(tmp_path: Path) -> None:
    # Given an input of ten tasks of which two were answered
    ids = [f"t{i}" for i in range(10)]
    config = setup_run(tmp_path, ids, [result_line("t0"), result_line("t5")])
    # When it is validated
    [report] = validate(config)
    # Then all eight missing ids are counted, the first five (sorted) shown, with no line
    assert report.counts == {ProblemKind.MISSING_ID: 8}
    shown = report.examples[ProblemKind.MISSING_ID]
    assert [p.id for p in shown] == ["t1", "t2", "t3", "t4", "t6"]
    assert all(p.line is None for p in shown)


@pytest.mark.parametrize("answer", ["", "   \n", 42, False])
def test_an_empty_answer_is_reported(tmp_path: Path, answer: Any) -> None:
    # Given a record whose answer is empty or not text
    config = setup_run(tmp_path, ["a", "b"], [result_line("a"), result_line("b", answer=answer)])
    # When it is validated
    [report] = validate(config)
    # Then line 2 is reported
    assert report.counts == {ProblemKind.EMPTY_ANSWER: 1}
    assert lines_of(report, ProblemKind.EMPTY_ANSWER) == [2]


def test_a_null_answer_is_reported_as_empty(tmp_path: Path) -> None:
    # Given a record whose answer is null (a refusal or a tool call)
    record = result_line("a")
    record["answer"] = None
    config = setup_run(tmp_path, ["a"], [record])
    # When it is validated
    [report] = validate(config)
    # Then it is an empty answer
    assert report.counts == {ProblemKind.EMPTY_ANSWER: 1}
    assert report.examples[ProblemKind.EMPTY_ANSWER][0].message == "answer is None"


def test_a_model_mismatch_is_reported(tmp_path: Path) -> None:
    # Given a record answered by another model than asked
    config = setup_run(tmp_path, ["a", "b"],
                       [result_line("a"), result_line("b", model="gpt-3.5-turbo")])
    # When it is validated
    [report] = validate(config)
    # Then line 2 is reported with both names
    assert report.counts == {ProblemKind.MODEL_MISMATCH: 1}
    (problem,) = report.examples[ProblemKind.MODEL_MISMATCH]
    assert problem.line == 2
    assert problem.message == "requested 'gpt-4o-mini', answered by 'gpt-3.5-turbo'"


def test_a_dated_snapshot_of_the_requested_model_is_not_a_mismatch(tmp_path: Path) -> None:
    # Given answers from dated and versioned snapshots of the requested models
    config = setup_run(tmp_path, ["a", "b"], [
        result_line("a", model="gpt-4o-mini-2024-07-18"),
        result_line("b", requested="gpt-4", model="gpt-4-0613"),
    ])
    # When it is validated
    [report] = validate(config)
    # Then all is well
    assert report.ok, report.counts


@pytest.mark.parametrize(("requested", "reported", "same"), [
    ("gpt-4o-mini", "gpt-4o-mini", True),
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", True),
    ("gpt-4", "gpt-4-0613", True),
    ("openai/gpt-4o", "gpt-4o", True),
    ("gpt-4o", "gpt-4o-mini", False),
    ("gpt-4o", "gpt-4o-mini-2024-07-18", False),
    ("gpt-4o-mini", "gpt-4o", False),
    ("gpt-4o-mini", None, False),
    (None, "gpt-4o", False),
])
def test_same_model_accepts_snapshots_but_not_other_models(requested: str | None,
                                                           reported: str | None,
                                                           same: bool) -> None:
    # Given a requested and a reported model
    # When they are compared
    # Then only the same model (or a snapshot of it) counts as the same
    assert same_model(requested, reported) is same


def test_several_problems_are_each_counted_with_their_own_lines(tmp_path: Path) -> None:
    # Given an output with a corrupt line, a duplicate, an unknown id and an empty answer
    config = setup_run(tmp_path, ["a", "b", "c"],
                       [result_line("a"), b"garbage\n", result_line("a"), result_line("x"),
                        result_line("b", answer="")])
    # When it is validated
    [report] = validate(config)
    # Then each kind is counted on its line, and c is missing
    assert report.counts == {
        ProblemKind.CORRUPT_LINE: 1, ProblemKind.DUPLICATE_ID: 1, ProblemKind.UNKNOWN_ID: 1,
        ProblemKind.EMPTY_ANSWER: 1, ProblemKind.MISSING_ID: 1,
    }
    assert lines_of(report, ProblemKind.CORRUPT_LINE) == [2]
    assert lines_of(report, ProblemKind.DUPLICATE_ID) == [3]
    assert lines_of(report, ProblemKind.UNKNOWN_ID) == [4]
    assert lines_of(report, ProblemKind.EMPTY_ANSWER) == [5]
    assert [p.id for p in report.examples[ProblemKind.MISSING_ID]] == ["c"]


def test_validate_with_a_custom_id_key_reads_the_input_with_it(tmp_path: Path) -> None:
    # Given an input whose ids are in "uid" (the output always uses "id")
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"uid": "a", "prompt": "x"}])
    out = write_jsonl(tmp_path / "results.jsonl", [result_line("a")])
    # When it is validated with that key
    [report] = validate(RunConfig(input=tasks, output=out, id_key="uid"))
    # Then all is well
    assert report.ok


def test_validate_without_paths_and_with_a_bad_input_raises(tmp_path: Path) -> None:
    # Given no paths, and then an input that is not JSON
    bad = tmp_path / "tasks.jsonl"
    bad.write_bytes(b"nope\n")
    # When each is validated
    # Then the config or input error comes through
    with pytest.raises(ConfigError):
        validate(RunConfig())
    with pytest.raises(InputError):
        validate(RunConfig(input=bad, output=tmp_path / "out.jsonl"))


def test_validating_before_any_output_reports_every_id_missing(tmp_path: Path) -> None:
    # Given an input and no output file at all
    tasks = write_jsonl(tmp_path / "tasks.jsonl",
                        [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}])
    # When it is validated
    [report] = validate(RunConfig(input=tasks, output=tmp_path / "none.jsonl"))
    # Then both ids are missing
    assert report.counts == {ProblemKind.MISSING_ID: 2}
    assert report.lines == 0


# --- status ---------------------------------------------------------------------------------------


def test_status_counts_done_failed_pending_percent_and_tokens(tmp_path: Path) -> None:
    # Given eight tasks: a, b, c done; d and e failed; c also failed earlier but is now done
    ids = [f"{c}" for c in "abcdefgh"]
    config = setup_run(tmp_path, ids, [
        result_line("a", prompt_tokens=10, completion_tokens=3, at=NOW - 20),
        result_line("b", prompt_tokens=20, completion_tokens=4, at=NOW - 10),
        result_line("c", prompt_tokens=30, completion_tokens=5, at=NOW),
    ])
    write_jsonl(OutputPaths.of(tmp_path / "results.jsonl").errors,
                [failure_line("c"), failure_line("d"), failure_line("e"), failure_line("d")])
    # When the status is read
    report = status(config, now=NOW + 1)
    # Then the counts follow the files
    assert (report.total, report.done, report.failed, report.pending) == (8, 3, 2, 5)
    assert report.percent == 37.5
    assert (report.prompt_tokens, report.completion_tokens, report.total_tokens) == (60, 12, 72)
    assert report.last_written_at == NOW
    assert report.recent_per_s == pytest.approx(0.1)
    assert (report.bad_lines, report.unknown_ids) == (0, 0)


def test_status_reports_no_live_run_and_no_eta_when_nothing_runs(tmp_path: Path) -> None:
    # Given a finished-looking output and nobody holding the run lock
    config = setup_run(tmp_path, ["a", "b", "c"],
                       [result_line("a", at=NOW - 5), result_line("b", at=NOW)])
    # When the status is read
    report = status(config, now=NOW + 1)
    # Then no run is live and no ETA is given
    assert report.live is False
    assert report.live_pid is None
    assert report.eta_s is None
    assert report.pending == 1


def test_status_reports_the_live_run_and_an_eta(tmp_path: Path) -> None:
    # Given two answers 10 s apart and a run holding the lock
    config = setup_run(tmp_path, ["a", "b", "c", "d"],
                       [result_line("a", at=NOW - 10), result_line("b", at=NOW)])
    lock = RunLock(OutputPaths.of(tmp_path / "results.jsonl"), "gpt-4o-mini")
    lock.acquire(wait_s=0.5)
    try:
        # When the status is read
        report = status(config, now=NOW + 1)
    finally:
        lock.release()
    # Then the run is live, and two pending tasks at 0.1/s take 20 s
    assert report.live is True
    assert report.live_pid is not None and report.live_pid > 0
    assert report.eta_s == 20.0


def test_status_counts_bad_lines_and_unknown_ids_but_not_as_done(tmp_path: Path) -> None:
    # Given an output with a corrupt line, an unknown id and a duplicate
    config = setup_run(tmp_path, ["a", "b"],
                       [result_line("a"), b"broken\n", result_line("zz"), result_line("a")])
    write_jsonl(OutputPaths.of(tmp_path / "results.jsonl").errors, [failure_line("zz")])
    # When the status is read
    report = status(config, now=NOW)
    # Then only a counts as done, once; the rest is reported apart
    assert (report.done, report.failed, report.pending) == (1, 0, 1)
    assert (report.bad_lines, report.unknown_ids) == (1, 1)
    assert report.percent == 50.0


def test_status_before_any_output_is_all_pending(tmp_path: Path) -> None:
    # Given an input and no output yet
    tasks = write_jsonl(tmp_path / "tasks.jsonl",
                        [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"},
                         {"id": "c", "prompt": "z"}])
    # When the status is read
    report = status(RunConfig(input=tasks, output=tmp_path / "none.jsonl"), now=NOW)
    # Then nothing is done
    assert (report.total, report.done, report.failed, report.pending,
            report.percent) == (3, 0, 0, 3, 0.0)
    assert report.total_tokens == 0
    assert report.recent_per_s is None and report.last_written_at is None


def test_status_to_dict_holds_every_field(tmp_path: Path) -> None:
    # Given a status report
    config = setup_run(tmp_path, ["a"], [result_line("a")])
    report = status(config, now=NOW)
    # When it is turned into a dict (what --status --json prints)
    data = report.to_dict()
    # Then it carries the counts and paths
    assert data["done"] == 1 and data["total"] == 1 and data["percent"] == 100.0
    assert data["output"] == str(config.output)
    assert orjson.loads(orjson.dumps(data)) == data


def test_status_json_names_a_batchs_model_index_model_as_users_read_it(tmp_path: Path) -> None:
    # Given a batch run's plan with a chunk for the run's second model
    config = setup_run(tmp_path, ["a"], [])
    assert config.output is not None
    plan = Plan.new(config.output, [0, 0], ["gpt-4o-mini", "gpt-4o"])
    plan.new_chunk(1, 1, ["a"], 10)
    plan.save()
    # When the status is turned into what --status --json prints
    data = status(config, now=NOW).to_dict()
    # Then the batch names its model's index under "model", the key the JSON has always had
    assert len(data["batches"]) == 1
    assert data["batches"][0]["model"] == 1 and "model_index" not in data["batches"][0]
