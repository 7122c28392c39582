"""--backend batch end to end: the real command line against the mock's Batch API over HTTP."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import (
    litellm_proxy,
    needs_litellm,
    read_jsonl,
    run_cli,
    start_cli,
    text_tasks,
    write_png,
    write_tasks,
)

from mpinfer.api.prices import BUILT_IN
from mpinfer.mockserver import MockServerProcess

OUT = "out/results.jsonl"


@pytest.fixture
def mock(batch_mock: MockServerProcess) -> MockServerProcess:
    """This module's mock is the Batch API one (conftest.batch_mock), reset for each test."""
    return batch_mock


def _args(mock: MockServerProcess, *extra: str) -> list[str]:
    return ["-i", "tasks.jsonl", "-o", OUT, "--backend", "batch", "--batch-poll", "0.1",
            "--base-url", mock.base_url, "--retry-backoff", "0.05", "--timeout", "5", *extra]


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str) -> Any:
    return run_cli(*_args(mock, *extra), cwd=tmp_path)


def _plan(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / (OUT + ".batches.json")
    return orjson.loads(path.read_bytes()) if path.exists() else {"chunks": []}


def _ids(tmp_path: Path, name: str = OUT) -> list[str]:
    return [r.get("id") or r.get("custom_id") for r in read_jsonl(tmp_path / name)]


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _killed_while_its_batch_runs(tmp_path: Path, mock: MockServerProcess, tasks: int,
                                 request_s: float) -> None:
    """A run of ``tasks`` tasks killed with SIGKILL once its (slow) batch is created."""
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(tasks))
    mock.batch_faults(request_s=request_s)
    proc = start_cli(*_args(mock), cwd=tmp_path)
    try:
        _wait_for("the batch", lambda: any(c.get("batch_id") for c in _plan(tmp_path)["chunks"]))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=10)


def test_rows_are_split_into_batches_of_batch_size_and_answered_once_at_half_the_price(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given 25 tasks and batches of at most 10
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(25))
    # When the batch backend runs
    proc = _run(tmp_path, mock, "--batch-size", "10")
    # Then three batches (10, 10, 5) were created, each row in one of them, and every id is in the
    # output once
    assert proc.returncode == 0, proc.stderr
    stats = mock.batch_stats()
    assert stats["batches_created"] == 3 and stats["max_batches_per_row"] == 1
    assert sorted(c["bytes"] > 0 and len(c["ids"])
                  for c in _plan(tmp_path)["chunks"]) == [5, 10, 10]
    ids = _ids(tmp_path)
    assert sorted(ids) == sorted(f"t{i}" for i in range(25)) and len(ids) == len(set(ids))
    # And each answer is an ordinary result line, priced at half the online price
    row = read_jsonl(tmp_path / OUT)[0]
    assert row["answer"].startswith("Mock answer to: question") and row["model"] == "gpt-4o-mini"
    price = BUILT_IN["gpt-4o-mini"]
    online = (row["usage"]["prompt_tokens"] * price.input
              + row["usage"]["completion_tokens"] * price.output) / 1e6
    assert row["cost"] == pytest.approx(online / 2, abs=1e-8) and row["cost"] < online * 0.6
    # And a rerun has nothing to do and creates no batch
    again = _run(tmp_path, mock, "--batch-size", "10")
    assert again.returncode == 0, again.stderr
    assert mock.batch_stats()["batches_created"] == 3

    # And --status lists each batch with its id, state and request counts, in text and JSON
    text = _run(tmp_path, mock, "--status")
    assert text.returncode == 0, text.stderr
    assert text.stdout.count("batch_mock") == 3 and "completed / 10+0 of 10" in text.stdout
    report = orjson.loads(_run(tmp_path, mock, "--status", "--json").stdout)
    assert sorted(b["rows"] for b in report["batches"]) == [5, 10, 10]
    assert {b["status"] for b in report["batches"]} == {"completed"}
    assert all(b["batch_id"] for b in report["batches"])


def test_an_expired_batch_has_its_unanswered_rows_resubmitted_in_a_new_batch(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given the first batch expires after answering 4 of its 10 rows
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(10))
    mock.batch_faults(expire_next=1, expire_after=4)
    # When the batch backend runs
    proc = _run(tmp_path, mock)
    # Then the 6 expired rows went into a second batch, and every id is answered once
    assert proc.returncode == 0, proc.stderr
    chunks = _plan(tmp_path)["chunks"]
    assert [len(c["ids"]) for c in chunks] == [10, 6] and chunks[0]["resubmitted"] == 6
    assert chunks[0]["status"] == "expired" and chunks[1]["attempt"] == 2
    assert sorted(_ids(tmp_path)) == sorted(f"t{i}" for i in range(10))
    assert mock.batch_stats()["max_answers_per_row"] == 1


def test_500_lines_are_resubmitted_and_400_lines_go_to_the_errors_file(tmp_path: Path,
                                                                       mock: MockServerProcess):
    # Given one row that fails once with 500 and one that is refused with 400 every time
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(5))
    mock.batch_faults(script={"t1": ["500"], "t3": ["400", "400", "400", "400", "400"]})
    # When the batch backend runs
    proc = _run(tmp_path, mock)
    # Then t1 was answered by a second batch; t3 is a failure line (bad_request), not resubmitted
    assert proc.returncode == 1, proc.stderr  # a task failed: rerun to try it again, as online
    assert sorted(_ids(tmp_path)) == ["t0", "t1", "t2", "t4"]
    errors = read_jsonl(tmp_path / (OUT + ".errors.jsonl"))
    assert [(e["id"], e["error_type"], e["status"]) for e in errors] == [("t3", "bad_request", 400)]
    assert mock.batch_stats()["executed"] == {"t0": 1, "t1": 2, "t2": 1, "t3": 1, "t4": 1}


def test_kill_9_while_polling_then_rerun_polls_the_same_batch_and_writes_each_id_once(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a slow batch (0.1 s a request) that the run is polling
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(12))
    mock.batch_faults(request_s=0.1)
    proc = start_cli(*_args(mock, "--batch-size", "6"), cwd=tmp_path)
    try:
        _wait_for("both batches created",
                  lambda: sum(bool(c.get("batch_id")) for c in _plan(tmp_path)["chunks"]) == 2)
        # When the run is killed with SIGKILL while the batches run
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert not (tmp_path / OUT).exists() or len(_ids(tmp_path)) < 12
    # Then a rerun creates no batch: it polls the two open ones and merges every answer once
    again = _run(tmp_path, mock, "--batch-size", "6")
    assert again.returncode == 0, again.stderr
    stats = mock.batch_stats()
    assert stats["batches_created"] == 2 and stats["max_batches_per_row"] == 1
    ids = _ids(tmp_path)
    assert sorted(ids) == sorted(f"t{i}" for i in range(12)) and len(ids) == 12


@pytest.mark.parametrize("window", ["create_wait_s", "create_reply_wait_s"])
def test_kill_9_around_a_create_never_makes_a_second_batch_for_the_same_rows(
    tmp_path: Path, mock: MockServerProcess, window: str,
):
    # Given a create that takes a second before the batch exists (after the upload), or after it
    # exists (the answer with its id is lost in the crash)
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(4))
    mock.batch_faults(**{window: 1.0})
    proc = start_cli(*_args(mock), cwd=tmp_path)
    try:
        _wait_for("the upload",
                  lambda: any(c.get("state") == "creating" for c in _plan(tmp_path)["chunks"]))
        if window == "create_reply_wait_s":
            _wait_for("the batch at the server", lambda: mock.batch_stats()["batches_created"] == 1)
        # When the run is killed with SIGKILL inside that second
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    mock.batch_faults(create_wait_s=0, create_reply_wait_s=0)
    # Then a rerun finds or makes exactly one batch for the rows, and writes each id once
    again = _run(tmp_path, mock)
    assert again.returncode == 0, again.stderr
    stats = mock.batch_stats()
    assert stats["batches_created"] == 1 and stats["max_batches_per_row"] == 1
    assert sorted(_ids(tmp_path)) == ["t0", "t1", "t2", "t3"]


def test_cancel_cancels_the_open_batches_and_a_rerun_sends_what_was_not_answered(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a run killed while its slow batch works (8 s: time for --cancel to start on a loaded
    # machine; at 4 s a load of 15 on 2 cores saw the batch complete first)
    _killed_while_its_batch_runs(tmp_path, mock, 8, 1.0)
    # When --cancel runs
    cancelled = _run(tmp_path, mock, "--cancel")
    # Then the batch is cancelling at the server, and the plan records it
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelling" in cancelled.stdout
    assert _plan(tmp_path)["cancelled"] is True
    batch_id = _plan(tmp_path)["chunks"][0]["batch_id"]
    _wait_for("cancelled", lambda: mock.batch_stats()["batches"][batch_id] == "cancelled")
    # And a rerun merges what it answered and resubmits the rest: every id once
    mock.batch_faults(request_s=0)
    again = _run(tmp_path, mock)
    assert again.returncode == 0, again.stderr
    assert sorted(_ids(tmp_path)) == sorted(f"t{i}" for i in range(8))
    assert mock.batch_stats()["max_answers_per_row"] == 1


def test_a_full_token_queue_waits_for_running_batches_instead_of_failing(tmp_path: Path,
                                                                         mock: MockServerProcess):
    # Given an enqueued-token limit that holds one batch of 4 rows at a time
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(8))
    mock.batch_faults(token_limit=30, request_s=0.05)
    # When 8 rows run in batches of 4
    proc = _run(tmp_path, mock, "--batch-size", "4")
    # Then the second batch waited for the first instead of failing its rows: every id answered once
    assert proc.returncode == 0, proc.stderr
    assert sorted(_ids(tmp_path)) == sorted(f"t{i}" for i in range(8))
    assert mock.batch_stats()["max_answers_per_row"] == 1
    assert "enqueued-token limit" in proc.stderr


def test_several_models_and_a_selection_run_one_batch_per_model_into_each_models_output(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given 6 tasks, two models and --limit 4
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(6))
    # When the batch backend runs
    proc = _run(tmp_path, mock, "--model", "gpt-4o-mini,gpt-4o", "--limit", "4")
    # Then each model had its own batch (one model a batch file, as the API requires) and its own
    # output
    assert proc.returncode == 0, proc.stderr
    chunks = _plan(tmp_path)["chunks"]
    assert sorted((c["model_index"], len(c["ids"])) for c in chunks) == [(0, 4), (1, 4)]
    for model in ("gpt-4o-mini", "gpt-4o"):
        rows = read_jsonl(tmp_path / f"out/results.{model}.jsonl")
        assert sorted(r["id"] for r in rows) == ["t0", "t1", "t2", "t3"]
        assert {r["model"] for r in rows} == {model}


def test_a_batch_api_input_file_comes_back_in_the_batch_output_form(tmp_path: Path,
                                                                    mock: MockServerProcess):
    # Given an input already in the Batch API's request form
    rows = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "gpt-4o-mini",
                      "messages": [{"role": "user", "content": f"batch question {i}"}],
                      "max_tokens": 50}} for i in range(3)]
    write_tasks(tmp_path / "tasks.jsonl", rows)
    # When the batch backend runs it
    proc = _run(tmp_path, mock)
    # Then the output holds Batch API output lines with the custom ids, priced at the Batch price
    assert proc.returncode == 0, proc.stderr
    out = read_jsonl(tmp_path / OUT)
    assert sorted(o["custom_id"] for o in out) == ["r0", "r1", "r2"]
    assert out[0]["response"]["status_code"] == 200
    assert out[0]["mpinfer"]["batch_id"].startswith("batch_")
    answer = out[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert answer.startswith("Mock answer to: batch")
    assert out[0]["mpinfer"]["cost"] > 0


def test_request_files_are_split_at_batch_max_bytes_and_a_failed_batch_is_resubmitted(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given 6 tasks, files of at most 400 bytes (two requests each), and a first batch that fails
    # validation
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(6))
    mock.batch_faults(fail_next=1)
    # When the batch backend runs
    proc = _run(tmp_path, mock, "--batch-max-bytes", "400")
    # Then every request file kept under 400 bytes, the failed batch's rows went again, and every id
    # is answered
    assert proc.returncode == 0, proc.stderr
    chunks = _plan(tmp_path)["chunks"]
    assert all(c["bytes"] <= 400 for c in chunks) and len(chunks) == 4
    assert [c["status"] for c in chunks].count("failed") == 1 and chunks[-1]["attempt"] == 2
    assert sorted(_ids(tmp_path)) == sorted(f"t{i}" for i in range(6))
    assert mock.batch_stats()["max_answers_per_row"] == 1


def test_dry_run_with_the_batch_backend_shows_the_batch_price_beside_the_online_price(
    tmp_path: Path,
):
    # Given 5 tasks for a priced model
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(5))
    # When --dry-run runs with --backend batch, in text and JSON
    text = run_cli("-i", "tasks.jsonl", "-o", OUT, "--backend", "batch", "--dry-run", cwd=tmp_path)
    data = orjson.loads(run_cli("-i", "tasks.jsonl", "-o", OUT, "--backend", "batch", "--dry-run",
                                "--json", cwd=tmp_path).stdout)
    # Then both prices are shown, the Batch one half the online one
    assert text.returncode == 0, text.stderr
    assert "estimated cost:" in text.stdout and "at the Batch API price" in text.stdout
    totals = data["totals"]
    assert totals["batch_cost_max"] == pytest.approx(totals["cost_max"] / 2)
    assert totals["cost_max"] > 0


def test_a_rerun_with_other_models_than_the_open_batches_is_refused_before_anything_is_sent(
        tmp_path: Path, mock: MockServerProcess):
    # Given a run killed while its slow batch for gpt-4o-mini works
    _killed_while_its_batch_runs(tmp_path, mock, 4, 0.5)
    # When it is rerun with another model
    again = _run(tmp_path, mock, "--model", "gpt-4o")
    # Then it refuses, naming the model of the open batches, and creates nothing
    assert again.returncode == 2 and "--model gpt-4o-mini" in again.stderr
    assert mock.batch_stats()["batches_created"] == 1
    assert not (tmp_path / OUT).exists()


def test_a_create_that_times_out_is_not_retried_into_a_second_batch(tmp_path: Path,
                                                                    mock: MockServerProcess):
    # Given a create whose answer comes after the client's timeout, though the batch exists at once
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    mock.batch_faults(create_reply_wait_s=3.0)
    # When the batch backend runs with a 1 s timeout
    proc = _run(tmp_path, mock, "--timeout", "1")  # the last --timeout wins
    # Then the retry found the batch the timed-out create made: one batch, every id once
    assert proc.returncode == 0, proc.stderr
    assert mock.batch_stats()["batches_created"] == 1
    assert sorted(_ids(tmp_path)) == ["t0", "t1", "t2"]


LITELLM_KEY = "sk-mpinfer-litellm-0123456789abcdefXYZ"


@needs_litellm
def test_through_a_litellm_proxy_a_killed_run_is_resumed_without_a_second_batch(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a real LiteLLM proxy on 127.0.0.1 whose Files and Batches APIs go to the mock
    config = ("model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n"
              f"      model: openai/gpt-4o-mini\n      api_base: {mock.base_url}\n"
              "      api_key: sk-mock\nfiles_settings:\n  - custom_llm_provider: openai\n"
              f"    api_base: {mock.base_url}\n    api_key: sk-mock\ngeneral_settings:\n"
              f"  master_key: {LITELLM_KEY}\n  dangerously_permit_weak_or_unset_master_key: true\n")
    with litellm_proxy(tmp_path, config, LITELLM_KEY) as base_url:
        write_tasks(tmp_path / "tasks.jsonl", text_tasks(6))
        mock.batch_faults(request_s=0.3)
        args = ["-i", "tasks.jsonl", "-o", OUT, "--backend", "batch", "--batch-poll", "0.2",
                "--base-url", base_url, "--retry-backoff", "0.05"]
        env = {"OPENAI_API_KEY": LITELLM_KEY}
        # When a run through the proxy is killed with SIGKILL while its batch works, then rerun
        run = start_cli(*args, cwd=tmp_path, env=env)
        try:
            _wait_for("the batch",
                      lambda: any(c.get("batch_id") for c in _plan(tmp_path)["chunks"]))
            run.send_signal(signal.SIGKILL)
        finally:
            run.wait(timeout=10)
        again = run_cli(*args, cwd=tmp_path, env=env)
    # Then the rerun polled the same batch through the proxy: one batch, every id once
    assert again.returncode == 0, again.stderr
    assert mock.batch_stats()["batches_created"] == 1
    assert sorted(_ids(tmp_path)) == sorted(f"t{i}" for i in range(6))


def test_fresh_is_refused_while_batches_are_open_and_moves_a_finished_plan(tmp_path: Path,
                                                                           mock: MockServerProcess):
    # Given a run killed while its batch works
    _killed_while_its_batch_runs(tmp_path, mock, 3, 0.3)
    # When --fresh is asked for
    refused = _run(tmp_path, mock, "--fresh")
    # Then it refuses (the batch is paid for: its rows would go again) and moves nothing
    assert refused.returncode != 0 and "open batches" in refused.stderr
    assert (tmp_path / (OUT + ".batches.json")).exists()
    # And once a rerun has collected the batch, --fresh moves the finished plan with the output
    mock.batch_faults(request_s=0)
    assert _run(tmp_path, mock).returncode == 0
    moved = _run(tmp_path, mock, "--fresh")
    assert moved.returncode == 0, moved.stderr
    backups = list((tmp_path / "out").glob("results.jsonl.backup-*"))
    assert len(backups) == 1 and (backups[0] / "results.jsonl.batches.json").exists()
    assert mock.batch_stats()["batches_created"] == 2  # the fresh run's own batch


def test_cancel_during_a_live_run_stops_it_and_the_next_run_sends_every_row_left(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a live run whose slow first batch of 3 works, and a second one waiting on the
    # enqueued-token limit
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(6))
    # 4.5 s: time for --cancel to start on a loaded machine
    mock.batch_faults(request_s=1.5, token_limit=30)
    run = start_cli(*_args(mock, "--batch-size", "3"), cwd=tmp_path)
    try:
        # (the second file uploaded too: a cancel before that would leave it only planned)
        _wait_for("the batch, and the second file waiting", lambda: (
            any(c.get("batch_id") for c in _plan(tmp_path)["chunks"])
            and any(c["state"] == "uploaded" for c in _plan(tmp_path)["chunks"])))
        # When --cancel runs from another terminal
        cancelled = _run(tmp_path, mock, "--cancel")
        assert cancelled.returncode == 0, cancelled.stderr
        # Then the live run sees its batch cancelled, merges what it answered, and ends with rows
        # left (exit 1)
        assert run.wait(timeout=60) == 1
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=10)
    answered = len(_ids(tmp_path))
    assert answered < 6
    # the waiting one: still open
    states = [c["state"] for c in _plan(tmp_path)["chunks"]]
    assert "uploaded" in states, states  # (no batch made for it after the cancel)
    # And one rerun sends the rows the cancel left and the waiting file: every id once
    mock.batch_faults(request_s=0)
    again = _run(tmp_path, mock, "--batch-size", "3")
    assert again.returncode == 0, again.stderr
    assert sorted(_ids(tmp_path)) == sorted(f"t{i}" for i in range(6))
    assert mock.batch_stats()["max_answers_per_row"] == 1


def test_a_task_whose_image_cannot_be_read_fails_alone_before_upload(tmp_path: Path,
                                                                     mock: MockServerProcess):
    # Given three tasks, one naming an image that does not exist
    tasks = text_tasks(3)
    tasks[1]["images"] = ["img/missing.png"]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    # When the batch backend runs
    proc = _run(tmp_path, mock)
    # Then that task is a failure line (image), never sent; the other two are answered by one batch
    assert proc.returncode == 1, proc.stderr
    assert sorted(_ids(tmp_path)) == ["t0", "t2"]
    errors = read_jsonl(tmp_path / (OUT + ".errors.jsonl"))
    assert [(e["id"], e["error_type"]) for e in errors] == [("t1", "image")]
    assert mock.batch_stats()["rows"] == {"t0": 1, "t2": 1}


def test_a_task_over_the_image_limit_fails_before_upload_as_online(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given three tasks, one carrying 60 kB of images, and a limit of 0.05 MB a request
    image = write_png(tmp_path / "big.png")
    with image.open("ab") as handle:
        handle.write(b"\0" * 60_000)
    tasks = text_tasks(3)
    tasks[1]["images"] = ["big.png"]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    # When the batch backend runs
    proc = _run(tmp_path, mock, "--max-image-mb", "0.05")
    # Then that task is a failure line named as online (images_too_large), never sent
    assert proc.returncode == 1, proc.stderr
    errors = read_jsonl(tmp_path / (OUT + ".errors.jsonl"))
    assert [(e["id"], e["error_type"]) for e in errors] == [("t1", "images_too_large")]
    assert mock.batch_stats()["rows"] == {"t0": 1, "t2": 1}


def test_a_crash_in_the_middle_of_a_merge_is_merged_again_writing_each_id_once(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a finished job, then the files put back as a kill -9 halfway through its merge leaves
    # them: the plan as saved before the merge (the batch open), and half the answers on disk, the
    # last line torn
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(200))
    mock.batch_faults(request_s=0.01)
    # The batch's files kept, as such a crash keeps them: they are deleted only once the merge is
    # saved.
    proc = start_cli(*_args(mock, "--keep-batch-files"), cwd=tmp_path)
    plan_file = tmp_path / (OUT + ".batches.json")
    try:
        _wait_for("the batch", lambda: any(c.get("batch_id") for c in _plan(tmp_path)["chunks"]))
        before_merge = plan_file.read_bytes()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    out = tmp_path / OUT
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:100]) + lines[100][:40])
    plan_file.write_bytes(before_merge)
    # When the job is rerun
    again = _run(tmp_path, mock)
    # Then the batch is merged again, skipping what is on disk: every id once, no second batch
    assert again.returncode == 0, again.stderr
    ids = _ids(tmp_path)
    assert len(ids) == 200 and len(set(ids)) == 200
    stats = mock.batch_stats()
    assert stats["batches_created"] == 1
    # And this time, the merge saved, the batch's files are deleted at the provider
    assert stats["file_ids"] == [] and len(stats["deleted_files"]) == 2


def test_batch_creations_refused_with_429_are_waited_out_within_the_patience(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given 6 rows in batches of 2, a server that allows one creation a second, and no retries
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(6))
    mock.batch_faults(max_creates=1, create_window_s=1.0)
    # When the batch backend runs with --max-retries 0 and a patience of 60 s
    proc = _run(tmp_path, mock, "--batch-size", "2", "--max-retries", "0", "--patience", "60")
    # Then the 429s were waited out, not counted as retries: three batches, every row answered once
    assert proc.returncode == 0, proc.stderr
    stats = mock.batch_stats()
    assert stats["batches_created"] == 3 and stats["refused_creates"] >= 1
    assert sorted(_ids(tmp_path)) == sorted(f"t{i}" for i in range(6))


def test_a_batch_creation_still_refused_after_the_patience_fails_the_run(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a server that allows one creation an hour, and a patience of half a second
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(4))
    mock.batch_faults(max_creates=1)
    # When 4 rows go in batches of 2, with retries to spare
    proc = _run(tmp_path, mock, "--batch-size", "2", "--max-retries", "5", "--patience", "0.5")
    # Then the second creation is given up once the patience is spent, saying so
    assert proc.returncode != 0
    assert "rate_limit" in proc.stderr and "--patience 0.5" in proc.stderr, proc.stderr
    assert mock.batch_stats()["refused_creates"] >= 2
