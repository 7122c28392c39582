"""Tokens, cost, budget, summary, manifest and secrets, end to end against the mock server."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from helpers import FAKE_KEY, read_jsonl, run_cli, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str):
    return run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--base-url", mock.base_url,
                   "--retry-backoff", "0.05", *extra, cwd=tmp_path)


def test_each_answer_carries_its_cost_from_the_built_in_prices(tmp_path: Path,
                                                               mock: MockServerProcess):
    # Given tasks for gpt-4o-mini, priced at $0.15 in and $0.60 out per million tokens
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(5))
    # When they run
    proc = _run(tmp_path, mock, "--model", "gpt-4o-mini")
    # Then each line's cost follows from its own usage, and the summary adds them up
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 5
    for row in rows:
        usage = row["usage"]
        assert row["cost"] == pytest.approx(
            (usage["prompt_tokens"] * 0.15 + usage["completion_tokens"] * 0.60) / 1e6)
    summary = orjson.loads((tmp_path / "out.jsonl.summary.json").read_bytes())
    assert summary["cost"] == pytest.approx(sum(r["cost"] for r in rows), abs=1e-6)
    report = orjson.loads(_run(tmp_path, mock, "--status", "--json").stdout)
    assert report["cost"] == pytest.approx(sum(r["cost"] for r in rows), abs=1e-6)


def test_a_price_file_and_flat_prices_override_the_built_in_table(tmp_path: Path,
                                                                  mock: MockServerProcess):
    # Given a price table that gives a local model a price, and another run with flat prices
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    (tmp_path / "prices.json").write_text(json.dumps({"my-vlm": {"input": 2.0, "output": 5.0}}))
    # When one output runs with the file and another with --price-input/--price-output
    with_file = _run(tmp_path, mock, "--model", "my-vlm", "--prices", "prices.json")
    flat = run_cli("-i", "tasks.jsonl", "-o", "flat.jsonl", "--base-url", mock.base_url, "--model",
                   "gpt-4o", "--price-input", "10", "--price-output", "100", cwd=tmp_path)
    # Then each line is priced by the table that applies
    assert with_file.returncode == 0 and flat.returncode == 0, with_file.stderr + flat.stderr
    with_file_rows = read_jsonl(tmp_path / "out.jsonl")
    flat_rows = read_jsonl(tmp_path / "flat.jsonl")
    assert len(with_file_rows) == len(flat_rows) == 3
    for row in with_file_rows:
        usage = row["usage"]
        assert row["cost"] == pytest.approx(
            (usage["prompt_tokens"] * 2 + usage["completion_tokens"] * 5) / 1e6)
    for row in flat_rows:
        usage = row["usage"]
        assert row["cost"] == pytest.approx(
            (usage["prompt_tokens"] * 10 + usage["completion_tokens"] * 100) / 1e6)


def test_an_unknown_model_has_no_cost_rather_than_a_wrong_one(tmp_path: Path,
                                                              mock: MockServerProcess):
    # Given a model with no known price
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(2))
    # When it runs
    proc = _run(tmp_path, mock, "--model", "local-llava")
    # Then the cost is null on every line, and the summary, --status (text and JSON) and the
    # summary file say it is unknown and why, never $0
    assert proc.returncode == 0, proc.stderr
    assert {row["cost"] for row in read_jsonl(tmp_path / "out.jsonl")} == {None}
    assert "cost unknown: no price for local-llava" in proc.stdout
    assert "$0.0000" not in proc.stdout
    summary = orjson.loads((tmp_path / "out.jsonl.summary.json").read_bytes())
    assert summary["cost"] is None and summary["unpriced_models"] == ["local-llava"]
    text = _run(tmp_path, mock, "--model", "local-llava", "--status").stdout
    assert "unknown: no price for local-llava" in text and "$0.0000" not in text
    report = orjson.loads(_run(tmp_path, mock, "--model", "local-llava", "--status",
                               "--json").stdout)
    assert report["cost"] is None and report["unpriced_models"] == ["local-llava"]


def test_a_priced_and_an_unpriced_model_show_the_known_part_and_name_the_other(
        tmp_path: Path, mock: MockServerProcess):
    # Given two models, one in the built-in table and one no table prices
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(2))
    both = ("--model", "gpt-4o-mini,local-llava")
    # When they run
    proc = _run(tmp_path, mock, *both)
    # Then the cost shown is the priced model's, and the unpriced model's answers are named
    assert proc.returncode == 0, proc.stderr
    priced = sum(r["cost"] for r in read_jsonl(tmp_path / "out.gpt-4o-mini.jsonl"))
    assert priced > 0
    assert f"${priced:.4f} (2 answers with no price for local-llava not counted)" in proc.stdout
    report = orjson.loads(_run(tmp_path, mock, *both, "--status", "--json").stdout)
    assert report["cost"] == pytest.approx(priced, abs=1e-6)
    assert report["unpriced_models"] == ["local-llava"]
    assert [part["cost"] is None for part in report["models"]] == [False, True]


def test_max_cost_stops_taking_tasks_before_the_budget_is_passed(tmp_path: Path,
                                                                 mock: MockServerProcess):
    # Given answers that cost about 3 cents each (about 30 tokens at $1,000 per million) and a $1
    # budget
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(200))
    mock.configure(latency_ms=30)
    budget = ("--price-input", "1000", "--price-output", "1000", "--max-cost", "1.0", "-p", "2",
              "-c", "4")
    # When the run goes
    proc = _run(tmp_path, mock, *budget)
    # Then it stopped on the budget, spent no more than it, and every request the server answered is
    # written
    assert proc.returncode == 1, proc.stderr
    assert "budget" in proc.stdout
    rows = read_jsonl(tmp_path / "out.jsonl")
    spent = sum(r["cost"] for r in rows)
    assert spent <= 1.0
    assert 20 <= len(rows) < 200
    assert sum(mock.stats()["answered"].values()) == len(rows)
    # And a rerun with the same budget counts what the output already spent: it may use what is left
    # of the budget, never more
    again = _run(tmp_path, mock, *budget)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert again.returncode == 1 and "budget" in again.stdout
    assert sum(r["cost"] for r in rows) <= 1.0
    assert len(rows) < 200 and sum(mock.stats()["answered"].values()) == len(rows)


def test_the_summary_reports_what_a_faulty_run_did(tmp_path: Path, mock: MockServerProcess):
    # Given a server that fails 15% of requests with 500 and 10% with 429, and one task with a
    # missing image
    tasks = text_tasks(80)
    tasks[0]["images"] = ["missing.png"]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    mock.configure(latency_ms=20, jitter_ms=10, p500=0.15, p429=0.10, seed=3)
    # When the run goes with enough retries
    proc = _run(tmp_path, mock, "-p", "2", "-c", "4", "--max-retries", "8", "--model",
                "gpt-4o-mini")
    # Then the summary file and the printed summary carry the figures
    assert proc.returncode == 1, proc.stderr
    summary = orjson.loads((tmp_path / "out.jsonl.summary.json").read_bytes())
    stats = mock.stats()
    assert summary["succeeded"] == 79 and summary["failed"] == 1
    assert summary["failures_by_type"] == {"image": 1}
    assert summary["success_rate"] == pytest.approx(79 / 80, abs=1e-4)
    assert summary["requests"] == stats["requests"]
    assert summary["rate_limited"] == stats["outcomes"]["429"] > 0
    assert summary["requests_per_s"] > 0 and summary["elapsed_s"] > 0
    latency = summary["latency_s"]
    assert 0.02 <= latency["p50"] <= latency["p95"] <= latency["max"]
    assert summary["cost"] > 0 and summary["live"] is False
    assert f"429s {stats['outcomes']['429']}" in proc.stdout and "success 98.8%" in proc.stdout
    # And status shows the error breakdown and latency percentiles
    status = orjson.loads(_run(tmp_path, mock, "--status", "--json").stdout)
    assert status["failures_by_type"] == {"image": 1}
    assert status["latency_s"]["max"] == pytest.approx(latency["max"], abs=1e-3)
    assert status["rate_limited"] == summary["rate_limited"]


def test_model_substitution_is_counted_in_the_summary_and_status(tmp_path: Path,
                                                                 mock: MockServerProcess):
    # Given a server that answers the 7B model with the 72B one
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(4))
    mock.configure(model_map={"qwen-7b": "qwen-72b"})
    # When the run goes
    proc = _run(tmp_path, mock, "--model", "qwen-7b")
    # Then both the summary and status say so, not only validate
    assert "answered by another model than requested: 4" in proc.stdout
    status = orjson.loads(_run(tmp_path, mock, "--model", "qwen-7b", "--status", "--json").stdout)
    assert status["model_mismatches"] == 4


def test_each_run_appends_its_record_to_the_manifest(tmp_path: Path, mock: MockServerProcess):
    # Given two runs over the same output
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    assert _run(tmp_path, mock, "--temperature", "0").returncode == 0
    assert _run(tmp_path, mock, "--temperature", "0").returncode == 0
    # Then the manifest holds a start and an end record for each, with the input's checksum and
    # counts
    records = read_jsonl(tmp_path / "out.jsonl.runs.jsonl")
    assert [r["event"] for r in records] == ["start", "end", "start", "end"]
    import hashlib

    digest = hashlib.sha256((tmp_path / "tasks.jsonl").read_bytes()).hexdigest()
    assert records[0]["input"]["sha256"] == digest
    assert records[1]["counts"]["succeeded"] == 3 and records[3]["counts"]["succeeded"] == 0
    assert records[0]["outputs"]["out.jsonl"]["temperature"] == 0.0
    assert "--temperature" in records[0]["argv"] and records[0]["version"]


def test_a_resume_with_other_answer_settings_is_refused_unless_allowed(tmp_path: Path,
                                                                       mock: MockServerProcess):
    # Given an output half written at temperature 0
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(4))
    write_tasks(tmp_path / "first.jsonl", text_tasks(2))
    assert run_cli("-i", "first.jsonl", "-o", "out.jsonl", "--base-url", mock.base_url,
                   "--temperature", "0", cwd=tmp_path).returncode == 0
    # When it is resumed at temperature 0.7
    refused = _run(tmp_path, mock, "--temperature", "0.7")
    # Then it is refused, naming the difference, before any request
    assert refused.returncode == 2
    assert "temperature: 0.0 -> 0.7" in refused.stderr and "--allow-mixed" in refused.stderr
    assert mock.stats()["requests"] == 2
    # And --allow-mixed lets it go on, with a warning
    allowed = _run(tmp_path, mock, "--temperature", "0.7", "--allow-mixed")
    assert allowed.returncode == 0, allowed.stderr
    assert "temperature" in allowed.stderr and len(read_jsonl(tmp_path / "out.jsonl")) == 4


def test_the_key_appears_in_no_log_manifest_summary_output_or_error(tmp_path: Path,
                                                                    mock: MockServerProcess):
    # Given a key that also found its way into the system prompt and a task whose image is missing
    tasks = text_tasks(6)
    tasks[0]["images"] = ["nope.png"]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    mock.configure(script={"question t1: what is 1 + 1?": ["500"]})
    # When a verbose run goes, logging everything, and status and validate run too
    proc = _run(tmp_path, mock, "--verbose", "--system-prompt", f"never say {FAKE_KEY}")
    status = _run(tmp_path, mock, "--status", "--json")
    check = _run(tmp_path, mock, "--validate")
    # Then no file the run wrote, nor anything it printed, holds the key
    assert proc.returncode == 1
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "tasks.jsonl"]
    assert any(p.name.endswith(".runs.jsonl") for p in written)
    assert any(p.suffix == ".log" for p in written)
    for path in written:
        assert FAKE_KEY not in path.read_text(errors="replace"), path
    for shown in (proc, status, check):
        assert FAKE_KEY not in shown.stdout + shown.stderr


def test_a_dotenv_that_others_can_read_gets_a_warning(tmp_path: Path, mock: MockServerProcess):
    # Given a .env readable by everyone
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(1))
    env_file = tmp_path / ".env"
    env_file.write_text("MPINFER_MODEL=gpt-4o-mini\n")
    env_file.chmod(0o644)
    # When a command runs, then it warns; once it is private, it does not
    assert "can be read by other users" in _run(tmp_path, mock, "--status").stderr
    env_file.chmod(0o600)
    assert "can be read by other users" not in _run(tmp_path, mock, "--status").stderr


def test_a_dry_run_checks_and_estimates_everything_and_sends_nothing(tmp_path: Path,
                                                                     mock: MockServerProcess):
    # Given a 1024x1024 image, text tasks, and one task whose image is missing
    from mpinfer.demo import png_bytes

    (tmp_path / "big.png").write_bytes(png_bytes(1024, 1024, (10, 20, 30), (200, 200, 200)))
    tasks = text_tasks(4)
    tasks[0]["images"] = ["big.png"]
    tasks[1]["images"] = ["missing.png"]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    # When a dry run goes (text and JSON)
    text = _run(tmp_path, mock, "--dry-run", "--model", "gpt-4o", "--max-tokens", "100")
    as_json = _run(tmp_path, mock, "--dry-run", "--json", "--model", "gpt-4o",
                   "--max-tokens", "100")
    # Then the server saw nothing, and the plan names the problem and the estimate
    assert mock.stats()["requests"] == 0
    assert text.returncode == 1
    assert "missing.png" in text.stdout
    assert "nothing was sent" in text.stdout
    plan = orjson.loads(as_json.stdout)
    prompts = [t["prompt"] for t in tasks if t["id"] != "t1"]
    expected = sum(4 + -(-len(p) // 4) for p in prompts) + 765
    assert plan["totals"]["prompt_tokens"] == expected
    assert plan["totals"]["completion_ceiling"] == 300
    assert plan["totals"]["cost_max"] == pytest.approx((expected * 2.5 + 300 * 10) / 1e6)
    assert plan["problem_count"] == 1
    # And nothing was written either
    assert not (tmp_path / "out.jsonl").exists()


def test_a_dry_run_of_broken_input_fails_with_file_and_line_and_sends_nothing(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given an input whose second line is not JSON
    (tmp_path / "tasks.jsonl").write_text('{"id": "a", "prompt": "x"}\n{oops\n')
    # When a dry run goes
    proc = _run(tmp_path, mock, "--dry-run")
    # Then it fails like a run would, before anything is sent
    assert proc.returncode == 2 and "tasks.jsonl:2: invalid JSON" in proc.stderr
    assert mock.stats()["requests"] == 0


def test_the_summary_counts_the_tasks_each_key_ended(tmp_path: Path, mock: MockServerProcess):
    # Given two keys and 12 tasks, one of which the server fails with a 500 (and no retries)
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(12))
    mock.configure(script={"question t3: what is 3 + 3?": ["500"]})
    keys = {"OPENAI_API_KEYS": "sk-first-000000000000000aaaa,sk-second-00000000000000bbbb"}
    # When they run
    proc = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--base-url", mock.base_url, "-c", "4",
                   "--max-retries", "0", cwd=tmp_path, env=keys)
    # Then the summary's per-key counts add up to the run's: 11 answered and 1 failed, by the keys
    # that sent them, as the server counted its requests
    assert proc.returncode == 1, proc.stderr
    per_key = orjson.loads((tmp_path / "out.jsonl.summary.json").read_bytes())["per_key"]
    assert len(per_key) == 2
    assert sum(t["succeeded"] for t in per_key.values()) == 11
    assert sum(t["failed"] for t in per_key.values()) == 1
    served = mock.stats()["per_key"]
    for name, tally in per_key.items():
        assert tally["succeeded"] + tally["failed"] == tally["requests"] == served[name[-4:]]
