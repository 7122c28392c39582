"""Export, repair and fresh start, end to end through the real command line against the mock."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import orjson
from helpers import (
    read_jsonl,
    run_cli,
    start_cli,
    text_tasks,
    wait_workers_gone,
    write_png,
    write_tasks,
)

from mpinfer.mockserver import MockServerProcess

LIVE_WAIT_S = 15.0


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str, tasks: str = "tasks.jsonl",
         out: str = "out/results.jsonl"):
    return run_cli("-i", tasks, "-o", out, "--base-url", mock.base_url, "--retry-backoff", "0.05",
                   "--timeout", "5", "-p", "1", "-c", "4", *extra, cwd=tmp_path)


def _tool(tmp_path: Path, *extra: str, tasks: str = "tasks.jsonl", out: str = "out/results.jsonl"):
    """A command that sends nothing (export, validate, repair)."""
    return run_cli("-i", tasks, "-o", out, *extra, cwd=tmp_path)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_export_lists_every_task_in_input_order_with_its_status_in_csv_and_jsonl(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given five tasks with fields of their own (one named like an answer column); a trial run of
    # the first three in which t1 failed, so t0 and t2 are done and t3 and t4 were never tried
    tasks = [{**task, "tags": ["x", str(i)], "model": "gpt-4o-mini"}
             for i, task in enumerate(text_tasks(5))]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    mock.configure(script={tasks[1]["prompt"]: ["500"]})
    assert _run(tmp_path, mock, "--limit", "3", "--max-retries", "0").returncode == 1
    answers = {row["id"]: row for row in read_jsonl(tmp_path / "out" / "results.jsonl")}
    # When the job is exported as CSV and as JSONL
    as_csv = _tool(tmp_path, "--export", "final.csv")
    as_jsonl = _tool(tmp_path, "--export", "final.jsonl")
    # Then both list every task in input order with its status, and say so
    assert as_csv.returncode == 0 and as_jsonl.returncode == 0, as_csv.stderr + as_jsonl.stderr
    assert "exported 5 rows to final.csv: ok 2, failed 1, missing 2" in as_csv.stdout
    table = _csv_rows(tmp_path / "final.csv")
    lines = read_jsonl(tmp_path / "final.jsonl")
    expected = [("t0", "ok"), ("t1", "failed"), ("t2", "ok"), ("t3", "missing"), ("t4", "missing")]
    assert [(r["id"], r["status"]) for r in table] == expected
    assert [(r["id"], r["status"]) for r in lines] == expected
    # And the columns are the input's fields, then the answer's, in the same order in both files
    columns = ["id", "prompt", "tags", "input_model", "answer", "refusal", "filtered",
               "model", "requested_model", "prompt_tokens", "completion_tokens", "total_tokens",
               "cost", "finish_reason", "status", "error", "label", "parsed", "judge_label",
               "judge_text", "judge_model"]
    assert list(table[0]) == columns and list(lines[0]) == columns
    # And a done row carries its answer and accounting; a list is JSON text in CSV and a list in
    # JSONL
    done = answers["t2"]
    assert lines[2]["answer"] == table[2]["answer"] == done["answer"]
    assert (lines[2]["total_tokens"] == done["usage"]["total_tokens"]
            == int(table[2]["total_tokens"]))
    assert lines[2]["cost"] == done["cost"] and float(table[2]["cost"]) == done["cost"]
    assert table[2]["tags"] == '["x","2"]' and lines[2]["tags"] == ["x", "2"]
    assert lines[2]["input_model"] == "gpt-4o-mini"
    assert lines[2]["error"] is None
    assert table[2]["error"] == ""
    # And a failed row carries the last error message, a missing row nothing (None: empty or null)
    assert "server had an error" in table[1]["error"] and lines[1]["error"] == table[1]["error"]
    assert table[3]["answer"] == "" and lines[3]["answer"] is None and lines[3]["error"] is None
    # And the missing tasks are in <output>.missing.jsonl as their input records, ready to run again
    assert read_jsonl(tmp_path / "out" / "results.jsonl.missing.jsonl") == tasks[3:]
    # And the export respects the selection options like a run does
    part = _tool(tmp_path, "--export", "part.jsonl", "--start", "1", "--end", "3")
    assert part.returncode == 0, part.stderr
    assert [(r["id"], r["status"]) for r in read_jsonl(tmp_path / "part.jsonl")] == expected[1:3]
    # And an export over the run's own output is refused, leaving it whole
    before = (tmp_path / "out" / "results.jsonl").read_bytes()
    clash = _tool(tmp_path, "--export", "out/results.jsonl")
    assert clash.returncode == 2 and "would overwrite" in clash.stderr
    assert (tmp_path / "out" / "results.jsonl").read_bytes() == before


def test_export_of_a_two_model_run_has_one_row_per_task_and_model(tmp_path: Path,
                                                                  mock: MockServerProcess):
    # Given a run of two tasks against two models, and a third task added to the input afterwards
    tasks = text_tasks(3)
    write_tasks(tmp_path / "tasks.jsonl", tasks[:2])
    assert _run(tmp_path, mock, "--model", "gpt-4o-mini,gpt-4o").returncode == 0
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    # When it is exported
    proc = _tool(tmp_path, "--model", "gpt-4o-mini,gpt-4o", "--export", "both.csv")
    # Then each task has a row per model, in input order then model order, with the model that
    # answered
    assert proc.returncode == 0, proc.stderr
    rows = _csv_rows(tmp_path / "both.csv")
    assert [(r["id"], r["run_model"], r["model"], r["status"]) for r in rows] == [
        ("t0", "gpt-4o-mini", "gpt-4o-mini", "ok"), ("t0", "gpt-4o", "gpt-4o", "ok"),
        ("t1", "gpt-4o-mini", "gpt-4o-mini", "ok"), ("t1", "gpt-4o", "gpt-4o", "ok"),
        ("t2", "gpt-4o-mini", "", "missing"), ("t2", "gpt-4o", "", "missing"),
    ]
    answers = {row["id"]: row["answer"]
               for row in read_jsonl(tmp_path / "out" / "results.gpt-4o.jsonl")}
    assert rows[3]["answer"] == answers["t1"]
    # And the task missing for both models is in the missing file once
    assert read_jsonl(tmp_path / "out" / "results.jsonl.missing.jsonl") == [tasks[2]]


def test_a_csv_inputs_missing_rows_are_written_as_jsonl_tasks_that_run_again(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a CSV input of which a trial run answered the first row only
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png", (0, 0, 255))
    (tmp_path / "tasks.csv").write_text("id,prompt,images,temperature\n"
                                        "c1,first,a.png,\n"
                                        "c2,second,a.png;b.png,0.5\n"
                                        "c3,third,,\n")
    assert _run(tmp_path, mock, "--limit", "1", tasks="tasks.csv").returncode == 0
    # When it is exported
    proc = _tool(tmp_path, "--export", "final.csv", tasks="tasks.csv")
    # Then the table has the CSV's columns as read, and the missing file holds the other rows as
    # JSON tasks
    assert proc.returncode == 0, proc.stderr
    rows = _csv_rows(tmp_path / "final.csv")
    assert [(r["id"], r["images"], r["temperature"], r["status"]) for r in rows] == [
        ("c1", "a.png", "", "ok"), ("c2", "a.png;b.png", "0.5", "missing"),
        ("c3", "", "", "missing")]
    missing = tmp_path / "out" / "results.jsonl.missing.jsonl"
    assert read_jsonl(missing) == [
        {"id": "c2", "prompt": "second", "images": ["a.png", "b.png"], "temperature": 0.5},
        {"id": "c3", "prompt": "third"}]
    # And fed again, they run as the same tasks (images and temperature included)
    mock.reset()
    again = _run(tmp_path, mock, "--image-root", ".", tasks="out/results.jsonl.missing.jsonl")
    assert again.returncode == 0, again.stderr
    answers = {row["id"]: row["answer"] for row in read_jsonl(tmp_path / "out" / "results.jsonl")}
    assert answers == {"c1": "Mock answer to: first (images: 1)",
                       "c2": "Mock answer to: second (images: 2)",
                       "c3": "Mock answer to: third (images: 0)"}


def test_export_of_a_batch_api_input_gives_custom_id_and_the_body_as_json_text(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a Batch API input of two requests, one of which the server refuses with a 400
    broken = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
    bodies = {"r1": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fine"}],
                     "seed": 3},
              "r2": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [broken]}]}}
    write_tasks(tmp_path / "batch.jsonl",
                [{"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
                 for cid, body in bodies.items()])
    assert _run(tmp_path, mock, tasks="batch.jsonl").returncode == 1
    # When it is exported as JSONL
    proc = _tool(tmp_path, "--export", "final.jsonl", tasks="batch.jsonl")
    # Then each request is a row: its custom_id, its body as JSON text, the answer or the error
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(tmp_path / "final.jsonl")
    assert [(r["custom_id"], orjson.loads(r["body"]), r["status"]) for r in rows] == [
        ("r1", bodies["r1"], "ok"), ("r2", bodies["r2"], "failed")]
    assert rows[0]["answer"] == "Mock answer to: fine (images: 0)"
    assert rows[0]["requested_model"] == "gpt-4o-mini"
    assert rows[0]["total_tokens"] > 0 and rows[0]["error"] is None
    assert rows[1]["answer"] is None and "image_url" in rows[1]["error"]


def test_repair_removes_a_torn_tail_a_corrupt_line_and_a_duplicate_after_a_byte_identical_backup(
        tmp_path: Path, mock: MockServerProcess):
    # Given a finished output that then got garbage in the middle, a duplicate, and a torn last line
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    assert _run(tmp_path, mock).returncode == 0
    out = tmp_path / "out" / "results.jsonl"
    good = out.read_bytes().splitlines(keepends=True)
    damaged = good[0] + b"#garbage#\n" + good[1] + good[2] + good[0] + b'{"id": "t1", "input_prom'
    out.write_bytes(damaged)
    # When it is validated with --repair
    proc = _tool(tmp_path, "--validate", "--repair")
    # Then the report counts each kind removed with its line, and the validation after it is clean
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 lines, kept 3, removed 3" in proc.stdout
    assert "removed corrupt_line: 1 (line 2)" in proc.stdout
    assert "removed duplicate_id: 1 (line 5)" in proc.stdout
    assert "removed torn_line: 1 (line 6)" in proc.stdout
    assert "validate after the repair:" in proc.stdout and "ok: every line parses" in proc.stdout
    # And the new file is the three good lines, the first copy of the duplicate kept
    assert out.read_bytes() == b"".join(good)
    # And the old file is kept beside it, byte for byte
    backups = list(out.parent.glob("results.jsonl.bak-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == damaged
    # And a second repair finds nothing to do and makes no new backup
    again = _tool(tmp_path, "--validate", "--repair")
    assert again.returncode == 0 and "nothing to repair" in again.stdout
    assert len(list(out.parent.glob("results.jsonl.bak-*"))) == 1


def _wait_until_sending(mock: MockServerProcess, proc) -> None:
    """Until the slow run has a request at the server: it is live on its output by then."""
    deadline = time.monotonic() + LIVE_WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if mock.stats()["in_flight"] >= 1:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run sent nothing within {LIVE_WAIT_S}s (exit {proc.poll()})")


def test_repair_and_fresh_start_are_refused_while_a_run_is_live_on_the_output(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a slow run live on the output, which already holds a duplicate line
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(4))
    out = tmp_path / "out" / "results.jsonl"
    out.parent.mkdir()
    line = orjson.dumps({"id": "t0", "input_prompt": "q", "images": [], "answer": "a", "model": "m",
                         "requested_model": "m",
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                         "finish_reason": "stop", "latency_s": 0.1, "attempts": 1,
                         "processed_at": 1.8e9, "cost": None}) + b"\n"
    out.write_bytes(line + line)
    mock.configure(latency_ms=20_000)
    proc = start_cli("-i", "tasks.jsonl", "-o", "out/results.jsonl", "--base-url", mock.base_url,
                     "-p", "1", "--allow-mixed", cwd=tmp_path)
    try:
        _wait_until_sending(mock, proc)
        # When a repair and a fresh start are asked for meanwhile
        repair = _tool(tmp_path, "--validate", "--repair")
        fresh = _tool(tmp_path, "--fresh", "--base-url", mock.base_url)
        # Then both are refused with exit 4, naming the live run, and nothing was changed or moved
        assert repair.returncode == 4, repair.stdout + repair.stderr
        assert "a run is live on out/results.jsonl" in repair.stderr and "repair" in repair.stderr
        assert f"pid {proc.pid}" in repair.stderr
        assert fresh.returncode == 4 and "a run is live on out/results.jsonl" in fresh.stderr
        assert out.read_bytes() == line + line
        assert not list(out.parent.glob("*.bak-*")) and not list(out.parent.glob("*.backup-*"))
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    # And once the run and its workers are gone, the same repair goes ahead
    wait_workers_gone(out)
    after = _tool(tmp_path, "--validate", "--repair")
    assert "removed duplicate_id: 1 (line 2)" in after.stdout, after.stdout + after.stderr
    assert out.read_bytes() == line


def _files(folder: Path) -> dict[str, bytes]:
    """Every visible file under ``folder`` (lock files are dot-files and stay where they are)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_fresh_start_moves_every_old_file_into_a_backup_folder_and_the_run_starts_from_zero(
        tmp_path: Path, mock: MockServerProcess):
    # Given a run that left an output, an errors file, a summary, a manifest and a log; a torn-lines
    # file; and files of the user's own beside them
    tasks = text_tasks(3)
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    mock.configure(script={tasks[1]["prompt"]: ["500"]})
    assert _run(tmp_path, mock, "--max-retries", "0").returncode == 1
    (tmp_path / "out" / "results.jsonl.corrupt").write_bytes(b'{"id": "t9", "ans\n')
    (tmp_path / "out" / "notes.txt").write_text("mine")
    (tmp_path / "logs" / "notes.txt").write_text("mine too")
    old_out = {name: data for name, data in _files(tmp_path / "out").items() if name != "notes.txt"}
    old_logs = {name: data for name, data in _files(tmp_path / "logs").items()
                if name != "notes.txt"}
    assert sorted(old_out) == ["results.jsonl", "results.jsonl.corrupt",
                               "results.jsonl.errors.jsonl", "results.jsonl.runs.jsonl",
                               "results.jsonl.summary.json"]
    assert len(old_logs) == 1 and next(iter(old_logs)).startswith("mpinfer_")
    mock.reset()
    # When the same command runs with --fresh
    proc = _run(tmp_path, mock, "--fresh")
    # Then it says where the old files went, and every one of them is there with the same bytes
    assert proc.returncode == 0, proc.stderr
    backups = list((tmp_path / "out").glob("results.jsonl.backup-*"))
    assert len(backups) == 1 and backups[0].is_dir()
    assert f"moved to out/{backups[0].name}" in proc.stdout
    assert _files(backups[0]) == {**old_out,
                                  **{f"logs/{name}": data for name, data in old_logs.items()}}
    # And the user's own files were left alone
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "logs" / "notes.txt").read_text() == "mine too"
    # And the new run started from zero: every task sent once, a new manifest and a new log
    assert sorted(mock.stats()["received"]) == sorted(task["prompt"] for task in tasks)
    assert set(mock.stats()["received"].values()) == {1}
    assert sorted(row["id"]
                  for row in read_jsonl(tmp_path / "out" / "results.jsonl")) == ["t0", "t1", "t2"]
    assert not (tmp_path / "out" / "results.jsonl.errors.jsonl").exists()
    assert [r["event"]
            for r in read_jsonl(tmp_path / "out" / "results.jsonl.runs.jsonl")] == ["start", "end"]
    new_logs = [p for p in (tmp_path / "logs").iterdir() if p.name.startswith("mpinfer_")]
    assert len(new_logs) == 1 and "3 tasks x 1 models, 0 already done" in new_logs[0].read_text()
