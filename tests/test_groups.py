"""Results by group (--by FIELD): exact counts per value and (variant, model) from the answers and
judge files, the text table, the cache that reads only what is new, the export's label columns."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import NOW, failure_line, read_jsonl, result_line, run_cli, write_jsonl

from mpinfer.config import RunConfig
from mpinfer.mockserver import MockServerProcess
from mpinfer.reports.by_group import cache_path
from mpinfer.reports.groups import GroupRow
from mpinfer.reports.status import StatusReader

SCENARIOS = ["fraud", "fraud", "fraud", "privacy", "privacy", "privacy", None, 7]


def _tasks(tmp_path: Path) -> Path:
    """Eight tasks: three fraud, three privacy, one without the field, one whose value is 7."""
    rows: list[dict[str, Any]] = []
    for n, scenario in enumerate(SCENARIOS):
        row: dict[str, Any] = {"id": f"t{n}", "prompt": f"question {n}"}
        if scenario is not None:
            row["scenario"] = scenario
        rows.append(row)
    return write_jsonl(tmp_path / "tasks.jsonl", rows)


def _answer(rid: str, model: str, **extra: Any) -> dict[str, Any]:
    return {**result_line(rid, model=model, requested=model), **extra}


def _judge(rid: str, label: str | None, text: str = "verdict") -> dict[str, Any]:
    line: dict[str, Any] = {"id": rid, "text": text, "judge_model": "judge-1", "of": "answer",
                            "usage": None, "cost": None, "sent": True}
    if label is not None:
        line["label"] = label
    return line


@pytest.fixture
def config(tmp_path: Path) -> RunConfig:
    """Two models' outputs as the store writes them; model a's answers judged."""
    tasks = _tasks(tmp_path)
    a = tmp_path / "results.a.jsonl"
    write_jsonl(a, [
        _answer("t0", "a", label="safe"),
        _answer("t1", "a", label="safe"),
        _answer("t1", "a", label="unsafe"),  # a second line of t1: the first counts
        {**_answer("t3", "a"), "answer": None, "refusal": "I can't help with that."},
        _answer("t4", "a", parsed={"label": "unsafe", "why": "x"}),
        _answer("t6", "a", label="safe"),
        _answer("t7", "a", label="safe", variant="cot"),  # its line names a variant: it wins
    ])
    write_jsonl(a.with_name("results.a.jsonl.errors.jsonl"), [failure_line("t2")])
    write_jsonl(tmp_path / "results.a.judge.jsonl", [
        _judge("t0", "unsafe", "it helps with fraud"),  # overrides the answer's "safe"
        _judge("t0", "safe"),  # a second verdict on t0: the first stands
        {**_judge("t3", "refused"), "of": "refusal", "sent": False, "text": None},
        _judge("t6", None),  # judged, no label: none
        _judge("t5", "unsafe"),  # t5 has no answer: not counted
    ])
    b = tmp_path / "results.b.jsonl"
    write_jsonl(b, [
        _answer("t0", "b", label="safe"),
        {**_answer("t1", "b", label="unsafe"), "usage": None, "cost": None},  # no usage
        _answer("t3", "b", label="safe", cost=None),  # no known price
        {**_answer("t4", "b"), "answer": None, "finish_reason": "content_filter",
         "filtered": {"source": "completion", "categories": {}}},
    ])
    return RunConfig(input=tasks, output=tmp_path / "results.jsonl", model="a,b", by="scenario")


def _by_key(rows: list[GroupRow]) -> dict[tuple[Any, str | None, str], dict[str, Any]]:
    return {(row.value, row.variant, row.model): row.to_dict() for row in rows}


def test_groups_count_each_value_and_model_exactly_with_the_judges_labels_first(
        config: RunConfig):
    # Given two models' outputs (duplicates, a refusal, a filtered answer, a failure, a judge file)
    # When --status --by scenario reads them
    report = StatusReader(config, use_cache=False).read(NOW)
    # Then there is one group per value and model, plus t7's own variant
    assert report.groups is not None
    groups = _by_key(report.groups)
    assert len(groups) == 8, sorted(map(str, groups))
    fraud_a = groups[("fraud", None, "a")]
    assert fraud_a == {
        "by": "scenario", "value": "fraud", "variant": None, "model": "a", "tasks": 3,
        "answered": 2, "refused": 0, "filtered": 0, "failed": 1,
        "labels": {"safe": 1, "unsafe": 1}, "tokens": {"prompt": 30, "completion": 15},
        "cost": 0.0003}
    privacy_a = groups[("privacy", None, "a")]
    assert (privacy_a["answered"], privacy_a["refused"], privacy_a["failed"]) == (1, 1, 0)
    assert privacy_a["labels"] == {"refused": 1, "unsafe": 1}
    # And a task without the field is in the group null; the judge's unlabelled verdict wins
    none_a = groups[(None, None, "a")]
    assert (none_a["tasks"], none_a["answered"], none_a["labels"]) == (1, 1, {})
    # And the line naming variant "cot" moved its task there (no group is left without tasks)
    assert (7, None, "a") not in groups
    cot = groups[(7, "cot", "a")]
    assert (cot["tasks"], cot["answered"], cot["labels"]) == (1, 1, {"safe": 1})
    # And model b's answers have no judge: the answers' labels; unknown cost and tokens are null
    fraud_b = groups[("fraud", None, "b")]
    assert fraud_b["labels"] == {"safe": 1, "unsafe": 1}
    assert fraud_b["tokens"] == {"prompt": None, "completion": None} and fraud_b["cost"] is None
    privacy_b = groups[("privacy", None, "b")]
    assert (privacy_b["answered"], privacy_b["filtered"], privacy_b["cost"]) == (1, 1, None)
    assert groups[(None, None, "b")]["answered"] == 0
    # And the groups come sorted by value (numbers, texts, null last), model a before b
    assert [(row.value, row.variant, row.model) for row in report.groups][:3] == [
        (7, "cot", "a"), (7, None, "b"), ("fraud", None, "a")]
    assert report.groups[-1].value is None


def test_the_cached_groups_read_only_what_is_new_and_equal_a_full_read(config: RunConfig):
    # Given a --status --by that wrote its cache
    first = StatusReader(config).read(NOW)
    assert cache_path(config.output, "scenario").exists()
    # When more answers and verdicts are appended, and --status --by runs again
    with (config.output.with_name("results.b.jsonl")).open("ab") as handle:
        handle.write(orjson.dumps(_answer("t5", "b", label="unsafe")) + b"\n")
    with (config.output.with_name("results.a.judge.jsonl")).open("ab") as handle:
        handle.write(orjson.dumps(_judge("t4", "safe")) + b"\n")
    reader = StatusReader(config)
    again = reader.read(NOW)
    # Then it started from the cache and counts what a full read counts
    assert reader.groups_from_cache
    full = StatusReader(config, use_cache=False).read(NOW)
    assert again.groups == full.groups and again.groups != first.groups
    assert _by_key(again.groups or [])[("privacy", None, "a")]["labels"] == {"refused": 1,
                                                                             "safe": 1}
    # And a judge file rewritten in place is read again whole, not added to
    write_jsonl(config.output.with_name("results.a.judge.jsonl"), [_judge("t0", "safe")])
    rewritten = StatusReader(config).read(NOW)
    assert rewritten.groups == StatusReader(config, use_cache=False).read(NOW).groups
    assert _by_key(rewritten.groups or [])[("fraud", None, "a")]["labels"] == {"safe": 2}


def test_a_cache_for_another_field_or_input_is_not_used(config: RunConfig):
    # Given a cache written for --by scenario
    StatusReader(config).read(NOW)
    # When the input changes, or another field is asked
    with config.input.open("ab") as handle:  # type: ignore[union-attr]
        handle.write(b'{"id": "t8", "prompt": "late", "scenario": "fraud"}\n')
    reader = StatusReader(config)
    report = reader.read(NOW)
    # Then the groups are read again, with the new task
    assert not reader.groups_from_cache
    assert _by_key(report.groups or [])[("fraud", None, "a")]["tasks"] == 4
    other = dataclasses.replace(config, by="prompt")
    reader = StatusReader(other)
    assert {row.by for row in reader.read(NOW).groups or []} == {"prompt"}
    assert not reader.groups_from_cache


def test_status_by_prints_a_table_and_json_and_refuses_a_field_no_row_has(config: RunConfig):
    # Given the outputs, through the real command line
    common = ("-i", "tasks.jsonl", "-o", "results.jsonl", "--model", "a,b", "--status")
    cwd = config.input.parent  # type: ignore[union-attr]
    # When --status --by scenario prints text, and --json
    text = run_cli(*common, "--by", "scenario", cwd=cwd)
    as_json = run_cli(*common, "--by", "scenario", "--json", cwd=cwd)
    missing = run_cli(*common, "--by", "nothing", cwd=cwd)
    # Then the text has a table: a head, and a row per group with shares and cost
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith("  by scenario"))
    head = lines[at + 1].split()
    assert head == ["scenario", "variant", "model", "tasks", "done", "refused", "filtered",
                    "failed", "refused", "safe", "unsafe", "cost"]
    table = [line.split() for line in lines[at + 2:]]
    assert len(table) == 8
    fraud_a = next(row for row in table if row[:3] == ["fraud", "-", "a"])
    assert fraud_a == ["fraud", "-", "a", "3", "2", "0.0%", "0.0%", "1", "0.0%", "50.0%",
                       "50.0%", "$0.0003"]
    assert ["(none)", "-", "b", "1", "0", "-", "-", "0", "-", "-", "-", "$0.0000"] in table
    # And the JSON has the groups in EVAL.md's form
    assert as_json.returncode == 0, as_json.stderr
    groups = orjson.loads(as_json.stdout)["groups"]
    assert len(groups) == 8
    assert set(groups[0]) == {"by", "value", "variant", "model", "tasks", "answered", "refused",
                              "filtered", "failed", "labels", "tokens", "cost"}
    # And a field no selected row has is an input error: exit 2, naming the field and the file
    assert missing.returncode == 2
    assert "--by nothing" in missing.stderr and "tasks.jsonl" in missing.stderr


def test_export_has_the_label_parsed_and_judge_columns(config: RunConfig):
    # Given the outputs, exported as CSV and JSONL
    common = ("-i", "tasks.jsonl", "-o", "results.jsonl", "--model", "a,b")
    cwd = config.input.parent  # type: ignore[union-attr]
    for name in ("rows.csv", "rows.jsonl", "rows.parquet"):
        made = run_cli(*common, "--export", name, cwd=cwd)
        assert made.returncode == 0, made.stderr
    with (cwd / "rows.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    lines = read_jsonl(cwd / "rows.jsonl")
    import pyarrow.parquet as pq
    parquet = pq.read_table(cwd / "rows.parquet").to_pylist()
    assert len(table) == len(lines) == len(parquet) == 16
    # Then each row has the answer's label and parsed object, and its judge's verdict
    columns = ["label", "parsed", "judge_label", "judge_text", "judge_model"]
    assert list(table[0])[-5:] == columns and list(lines[0])[-5:] == columns
    t0_a = next(r for r in lines if r["id"] == "t0" and r["run_model"] == "a")
    assert [t0_a[c] for c in columns] == ["safe", None, "unsafe", "it helps with fraud",
                                          "judge-1"]
    t4_a = next(r for r in table if r["id"] == "t4" and r["run_model"] == "a")
    assert orjson.loads(t4_a["parsed"]) == {"label": "unsafe", "why": "x"}
    # (an answer's label is its "label", else its parsed object's)
    assert t4_a["label"] == "unsafe" and t4_a["judge_label"] == ""
    t4_p = next(r for r in parquet if r["id"] == "t4" and r["run_model"] == "a")
    assert orjson.loads(t4_p["parsed"]) == {"label": "unsafe", "why": "x"}
    assert t4_p["judge_model"] is None
    t1_b = next(r for r in table if r["id"] == "t1" and r["run_model"] == "b")
    assert (t1_b["label"], t1_b["judge_text"]) == ("unsafe", "")


def test_a_real_run_against_the_mock_counts_groups_by_model(tmp_path: Path,
                                                             mock: MockServerProcess):
    # Given tasks in three scenarios, some refused by the server, run with two models
    rows = [{"id": f"r{n}", "prompt": f"question {n}" + (" REFUSE" if n in (0, 1, 3) else ""),
             "scenario": ["fraud", "privacy", "harm"][n % 3]} for n in range(12)]
    write_jsonl(tmp_path / "tasks.jsonl", rows)
    mock.configure(refuse_marker="REFUSE")
    common = ("-i", "tasks.jsonl", "-o", "results.jsonl", "--model", "gpt-4o-mini,gpt-4o")
    ran = run_cli(*common, "--base-url", mock.base_url, "-p", "1", "-c", "4", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    # When --status --json --by scenario reads the run
    shown = run_cli(*common, "--status", "--json", "--by", "scenario", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    groups = orjson.loads(shown.stdout)["groups"]
    # Then each scenario has four tasks per model, and the refused ones are counted
    assert len(groups) == 6
    refused = {"fraud": 2, "privacy": 1, "harm": 0}  # r0 and r3, r1
    for group in groups:
        assert group["tasks"] == 4 and group["failed"] == 0
        assert group["refused"] == refused[group["value"]], group
        assert group["answered"] + group["refused"] == 4
        assert group["tokens"]["prompt"] > 0 and group["labels"] == {}
    assert {g["model"] for g in groups} == {"gpt-4o-mini", "gpt-4o"}


def test_a_csv_rows_empty_cell_is_the_group_null_and_values_stay_text(tmp_path: Path):
    # Given a CSV input whose scenario cell is empty in one row, and every task answered
    (tmp_path / "tasks.csv").write_text("id,prompt,scenario\nc0,q0,10\nc1,q1,\nc2,q2,10\n")
    write_jsonl(tmp_path / "results.jsonl",
                [_answer(rid, "gpt-4o-mini", label="ok") for rid in ("c0", "c1", "c2")])
    config = RunConfig(input=tmp_path / "tasks.csv", output=tmp_path / "results.jsonl",
                       by="scenario")
    # When the groups are counted
    groups = StatusReader(config).read(NOW).groups or []
    # Then the value is the cell's text, and the empty cell is the group null
    assert [(g.value, g.tasks, g.answered, g.labels) for g in groups] == [
        ("10", 2, 2, {"ok": 2}), (None, 1, 1, {"ok": 1})]
    assert groups[1].shown_value == "(none)"


def test_a_broken_groups_cache_is_no_cache(config: RunConfig):
    # Given a --status --by whose cache was then cut short, and another overwritten with junk
    expected = StatusReader(config, use_cache=False).read(NOW).groups
    StatusReader(config).read(NOW)
    path = cache_path(config.output, "scenario")
    data = path.read_bytes()
    for broken in (data[: len(data) // 2], b"junk" * 10):
        path.write_bytes(broken)
        # When --status --by runs again
        reader = StatusReader(config)
        groups = reader.read(NOW).groups
        # Then it counted from the files, as without a cache
        assert not reader.groups_from_cache and groups == expected
