"""Answers without usage over real HTTP: an unknown cost is unknown, not zero.

Some OpenAI-compatible servers send no ``usage``: the line says so (usage and cost null), the
summary and --status count such answers, and --max-cost counts them at their estimate.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import read_jsonl, run_cli, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess

# About 3 cents an answer (some 30 tokens at $1,000 per million), as the server would bill them.
PRICES = ("--price-input", "1000", "--price-output", "1000")


def _run(tmp_path: Path, mock: MockServerProcess,
         *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "gpt-4o-mini",
                   "--base-url", mock.base_url, *PRICES, *extra, cwd=tmp_path)


def test_an_answer_without_usage_has_a_null_cost_and_is_counted_as_such(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given a server that sends no usage
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    mock.configure(omit_usage=True)
    # When the tasks run
    ran = _run(tmp_path, mock, "-p", "1")
    # Then every line is an answer whose usage and cost are null, not 0
    assert ran.returncode == 0, ran.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 3
    for row in rows:
        assert row["answer"] and row["usage"] is None and row["cost"] is None
        assert "cost_estimate" in row
    # And the summary says how many came without usage, and prices them at an estimate
    assert "without usage: 3 answers" in ran.stdout
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["no_usage"] == 3 and summary["cost"] == 0 and summary["estimated_cost"] > 0
    # And --status says so too (JSON and text), and a rerun sends nothing again
    status = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "gpt-4o-mini",
                     "--status", "--json", cwd=tmp_path)
    report = json.loads(status.stdout)
    assert (report["done"], report["no_usage"], report["unpriced"]) == (3, 3, 0)
    text = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "gpt-4o-mini", "--status",
                   cwd=tmp_path).stdout
    assert "no usage: 3 answers came without usage" in text
    # And the cost shown says it is not the whole cost: an unknown cost is not shown as $0
    assert "(3 answers without usage not counted)" in text
    assert "(3 answers without usage not counted)" in ran.stdout
    requests = mock.stats()["requests"]
    assert _run(tmp_path, mock).returncode == 0 and mock.stats()["requests"] == requests
    # And --validate takes the lines as they are (no missing field)
    checked = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "gpt-4o-mini",
                      "--validate", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout


def test_max_cost_counts_answers_without_usage_at_their_estimate(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given a server that sends no usage, answers that cost about 3 cents, and a 30-cent budget
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(60))
    mock.configure(omit_usage=True, latency_ms=20)
    # When the run goes
    ran = _run(tmp_path, mock, "--max-cost", "0.3", "-p", "2", "-c", "2")
    # Then it stopped on the budget: the answers without usage were counted, at their estimate
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "budget" in ran.stdout
    rows = read_jsonl(tmp_path / "out.jsonl")
    # (how many got in before the stop depends on timing: the budget also holds the in-flight
    # requests' estimates)
    assert 1 <= len(rows) < 30
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["no_usage"] == len(rows) and 0 < summary["estimated_cost"] <= 0.3
    # And each line keeps its estimate, so that a rerun with the same budget counts what the output
    # already spent: it may use what is left of the budget, never more
    assert all(row["cost_estimate"] > 0 for row in rows)
    again = _run(tmp_path, mock, "--max-cost", "0.3", "-p", "2", "-c", "2")
    assert again.returncode == 1 and "budget" in again.stdout
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) < 30 and sum(row["cost_estimate"] for row in rows) <= 0.3
