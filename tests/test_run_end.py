"""What a run leaves as it ends: <output>.missing.jsonl for tasks left, the report if asked."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import read_jsonl, run_cli, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str):
    return run_cli("-i", "tasks.jsonl", "-o", "results.jsonl", "--base-url", mock.base_url,
                   "--retry-backoff", "0.02", "-p", "1", "-c", "2", *extra, cwd=tmp_path)


def test_a_run_stopped_by_its_budget_lists_the_untried_tasks_in_the_missing_file(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given 20 tasks, one that fails once (no retries), and a budget that stops the run part way
    tasks = text_tasks(20)
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    mock.configure(script={tasks[0]["prompt"]: ["500"]})
    # When the run ends with tasks left
    ran = _run(tmp_path, mock, "--max-cost", "0.00005", "--price-input", "1", "--price-output", "1",
               "--max-retries", "0")
    assert ran.returncode == 1, ran.stderr
    # Then the missing file holds exactly the tasks neither answered nor failed, as their input
    # records
    answered = {row["id"] for row in read_jsonl(tmp_path / "results.jsonl")}
    failed = {row["id"] for row in read_jsonl(tmp_path / "results.jsonl.errors.jsonl")}
    missing = read_jsonl(tmp_path / "results.jsonl.missing.jsonl")
    assert failed == {"t0"} and 0 < len(missing) < 19
    assert missing == [t for t in tasks if t["id"] not in answered | failed]
    # And the summary says where they are
    said = (f"the {len(missing)} tasks neither answered nor failed are in "
            "results.jsonl.missing.jsonl")
    assert said in ran.stdout
    # When a rerun with no budget answers the rest (t0 too), Then the missing file is refreshed:
    # empty
    assert _run(tmp_path, mock).returncode == 0
    assert (tmp_path / "results.jsonl.missing.jsonl").read_bytes() == b""


def test_a_run_whose_only_tasks_left_failed_writes_no_missing_file(tmp_path: Path,
                                                                   mock: MockServerProcess):
    # Given two tasks, one failing (no retries)
    tasks = text_tasks(2)
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    mock.configure(script={tasks[1]["prompt"]: ["500"]})
    # When the run ends with that one failed
    assert _run(tmp_path, mock, "--max-retries", "0").returncode == 1
    # Then nothing is missing (the failed one is in the errors file), and no empty missing file is
    # left
    assert not (tmp_path / "results.jsonl.missing.jsonl").exists()


@pytest.mark.skipif(importlib.util.find_spec("plotly") is None, reason="the report needs plotly")
def test_report_true_in_the_settings_file_writes_the_report_at_the_end_of_every_run(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given report = true in mpinfer.toml
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    (tmp_path / "mpinfer.toml").write_text("report = true\n")
    # When a run ends
    ran = _run(tmp_path, mock)
    # Then the report is beside the output, and the summary names it (and no missing file: nothing
    # is left)
    assert ran.returncode == 0, ran.stderr
    assert not (tmp_path / "results.jsonl.missing.jsonl").exists()
    page = tmp_path / "results.jsonl.report.html"
    assert page.stat().st_size > 1_000_000 and "report: results.jsonl.report.html" in ran.stdout
    # And a rerun with nothing left to do rewrites it (now with two runs)
    before = page.stat().st_mtime_ns
    assert _run(tmp_path, mock).returncode == 0
    assert page.stat().st_mtime_ns > before and page.read_text().count("<h2>Run ") == 2


def test_a_missing_tasks_file_is_reported_before_a_missing_key(tmp_path: Path):
    # Given neither the tasks file nor a key
    # When a run starts
    ran = run_cli("-i", "tasks.jsonl", "-o", "results.jsonl", cwd=tmp_path,
                  env={"OPENAI_API_KEY": ""})
    # Then the input is what it names, first
    assert ran.returncode == 2
    assert "tasks.jsonl: cannot open input: no such file" in ran.stderr
    assert "API key" not in ran.stderr
