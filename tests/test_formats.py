"""Inputs people already have, end to end: Batch API files, CSV files, and the selection options.

The real command line runs in its own process against the mock server over HTTP; what the server
received (task keys, and with ``record_bodies`` the bodies themselves) tells what was sent.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import read_jsonl, run_cli, text_tasks, write_png, write_tasks

from mpinfer.demo import png_bytes
from mpinfer.mockserver import MockServerProcess

PNG_URL = "data:image/png;base64," + base64.b64encode(png_bytes(16, 12, (0, 90, 200),
                                                                (255, 255, 255))).decode()
BAD_URL = "data:image/png;base64,@@@not-base64@@@"


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str, tasks: str = "tasks.jsonl",
         out: str = "out/results.jsonl"):
    return run_cli("-i", tasks, "-o", out, "--base-url", mock.base_url, "--retry-backoff", "0.05",
                   "--timeout", "5", "-p", "1", "-c", "4", *extra, cwd=tmp_path)


@pytest.fixture
def recording(mock: MockServerProcess) -> Iterator[MockServerProcess]:
    """The mock server keeping each task's last request body; off again afterwards for the rest."""
    mock.configure(record_bodies=True)
    yield mock
    mock.configure(record_bodies=False)


def _batch_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


BODIES: dict[str, dict[str, Any]] = {
    "req-1": {"model": "gpt-4o-mini",
              "messages": [{"role": "system", "content": "Answer in one word."},
                           {"role": "user", "content": "batch one"}],
              "max_tokens": 50, "temperature": 0.2, "seed": 7, "response_format": {"type": "text"}},
    "req-2": {"model": "gpt-4o",
              "messages": [{"role": "user", "content": [
                  {"type": "text", "text": "batch two"},
                  {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}}]}],
              "max_completion_tokens": 40, "user": "u-42", "metadata": {"batch": "nightly"}},
    # The server refuses this image URL with a 400: a failure that no retry can fix.
    "req-3": {"model": "gpt-4o-mini",
              "messages": [{"role": "user", "content": [
                  {"type": "text", "text": "batch three"},
                  {"type": "image_url", "image_url": {"url": BAD_URL}}]}]},
}


def _write_batch(tmp_path: Path) -> Path:
    return write_tasks(tmp_path / "batch.jsonl",
                       [_batch_line(cid, body) for cid, body in BODIES.items()])


def test_a_batch_api_file_is_sent_body_for_body_and_answered_in_the_batch_output_form(
        tmp_path: Path, recording: MockServerProcess):
    # Given a Batch API input file whose bodies carry fields mpinfer has no option for
    _write_batch(tmp_path)
    # When it runs without --model
    proc = _run(tmp_path, recording, tasks="batch.jsonl", out="out/batch_out.jsonl")
    # Then the server received every body exactly as in the file, each with its own model
    assert proc.returncode == 1, proc.stderr  # req-3 failed: work is left
    stats = recording.stats()
    assert stats["bodies"] == {"batch one": BODIES["req-1"], "batch two": BODIES["req-2"]}
    assert stats["per_model"] == {"gpt-4o-mini": 1, "gpt-4o": 1}
    assert stats["requests"] == 3 and stats["outcomes"]["400"] == 1  # the 400 was not retried
    # And each answer is a Batch API output line, field by field
    rows = {row["custom_id"]: row for row in read_jsonl(tmp_path / "out" / "batch_out.jsonl")}
    assert sorted(rows) == ["req-1", "req-2"]
    for custom_id, images in (("req-1", 0), ("req-2", 1)):
        row = rows[custom_id]
        assert row["id"].startswith("batch_req_") and row["error"] is None
        response = row["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_mock_")
        body = response["body"]
        assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
        assert body["model"] == BODIES[custom_id]["model"]
        text = BODIES[custom_id]["messages"][-1]["content"]
        prompt = text if isinstance(text, str) else text[0]["text"]
        assert body["choices"][0]["message"] == {
            "role": "assistant", "refusal": None,
            "content": f"Mock answer to: {prompt} (images: {images})"}
        assert body["choices"][0]["finish_reason"] == "stop"
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert rows["req-1"]["id"] != rows["req-2"]["id"]
    # And the failure is a Batch API error line in the errors file
    errors = read_jsonl(tmp_path / "out" / "batch_out.jsonl.errors.jsonl")
    assert len(errors) == 1
    failure = errors[0]
    assert failure["custom_id"] == "req-3" and failure["id"].startswith("batch_req_")
    assert failure["error"]["code"] == "bad_request" and "image_url" in failure["error"]["message"]
    assert failure["response"]["status_code"] == 400
    assert failure["response"]["body"]["error"]["message"] == failure["error"]["message"]


def test_model_given_on_the_command_line_replaces_only_the_model_of_each_batch_body(
        tmp_path: Path, recording: MockServerProcess):
    # Given the same Batch API file
    _write_batch(tmp_path)
    # When it runs with --model
    proc = _run(tmp_path, recording, "--model", "gpt-4.1-mini", tasks="batch.jsonl")
    # Then each body went with that model and every other field unchanged
    assert proc.returncode == 1, proc.stderr
    assert recording.stats()["bodies"] == {
        "batch one": {**BODIES["req-1"], "model": "gpt-4.1-mini"},
        "batch two": {**BODIES["req-2"], "model": "gpt-4.1-mini"}}
    rows = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert {row["response"]["body"]["model"] for row in rows} == {"gpt-4.1-mini"}
    assert {row["mpinfer"]["requested_model"] for row in rows} == {"gpt-4.1-mini"}


def test_resume_status_and_validate_work_on_a_batch_api_output(tmp_path: Path,
                                                               mock: MockServerProcess):
    # Given a Batch API run with two answers and one failure
    _write_batch(tmp_path)
    assert _run(tmp_path, mock, tasks="batch.jsonl").returncode == 1
    mock.reset()
    # When it is rerun
    again = _run(tmp_path, mock, tasks="batch.jsonl")
    # Then only the failed request was sent again, and nothing was written twice
    assert again.returncode == 1, again.stderr
    assert mock.stats()["requests"] == 1 and mock.stats()["outcomes"]["400"] == 1
    assert sorted(r["custom_id"]
                  for r in read_jsonl(tmp_path / "out" / "results.jsonl")) == ["req-1", "req-2"]
    # And status counts it by custom_id
    report = orjson.loads(run_cli("-i", "batch.jsonl", "-o", "out/results.jsonl", "--status",
                                  "--json", cwd=tmp_path).stdout)
    assert (report["total"], report["done"], report["failed"], report["pending"]) == (3, 2, 1, 1)
    assert report["failures_by_type"] == {"bad_request": 1} and report["total_tokens"] > 0
    # And validate finds the Batch API lines whole, and only the missing answer
    check = run_cli("-i", "batch.jsonl", "-o", "out/results.jsonl", "--validate", cwd=tmp_path)
    assert check.returncode == 1
    assert "missing_id: 1" in check.stdout and "'req-3'" in check.stdout
    for kind in ("corrupt_line", "missing_fields", "duplicate_id", "unknown_id", "empty_answer",
                 "model_mismatch"):
        assert kind not in check.stdout


def _answers(path: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in read_jsonl(path)}


def test_a_csv_row_may_carry_several_images_and_an_empty_image_cell_means_none(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a CSV file with two images in one cell, an empty cell, and one image with spaces around
    # it
    write_png(tmp_path / "img" / "a.png")
    write_png(tmp_path / "img" / "b.png", (0, 0, 255))
    (tmp_path / "tasks.csv").write_text("id,prompt,images\n"
                                        "c1,two pictures,img/a.png;img/b.png\n"
                                        "c2,no picture,\n"
                                        "c3,one picture, img/b.png \n")
    # When it runs
    proc = _run(tmp_path, mock, tasks="tasks.csv")
    # Then each row was sent with its images, and the output lists them
    assert proc.returncode == 0, proc.stderr
    rows = _answers(tmp_path / "out" / "results.jsonl")
    assert {i: (r["images"], r["answer"]) for i, r in rows.items()} == {
        "c1": (["img/a.png", "img/b.png"], "Mock answer to: two pictures (images: 2)"),
        "c2": ([], "Mock answer to: no picture (images: 0)"),
        "c3": (["img/b.png"], "Mock answer to: one picture (images: 1)"),
    }
    assert mock.stats()["outcomes"]["400"] == 0


def test_id_from_row_and_another_images_separator_read_a_csv_without_ids(tmp_path: Path,
                                                                         mock: MockServerProcess):
    # Given a CSV file without an id column, its own column names, and images separated by |
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png", (0, 0, 255))
    (tmp_path / "questions.csv").write_text("question,image_path\n"
                                            "what are these?,a.png|b.png\n"
                                            "and this?,b.png\n")
    # When it runs with the row number as the id
    proc = _run(tmp_path, mock, "--id-from-row", "--images-sep", "|", "--prompt-key", "question",
                "--images-key", "image_path", tasks="questions.csv")
    # Then the rows ran as tasks "0" and "1", with their images split on |
    assert proc.returncode == 0, proc.stderr
    rows = _answers(tmp_path / "out" / "results.jsonl")
    assert {i: r["answer"] for i, r in rows.items()} == {
        "0": "Mock answer to: what are these? (images: 2)",
        "1": "Mock answer to: and this? (images: 1)"}


def test_a_bad_csv_row_is_named_by_file_line_and_row_and_nothing_is_sent(tmp_path: Path,
                                                                         mock: MockServerProcess):
    # Given a CSV file whose second row has no prompt
    (tmp_path / "bad.csv").write_text("id,prompt,images\nc1,fine,\nc2,,\nc3,also fine,\n")
    # When it runs
    proc = _run(tmp_path, mock, tasks="bad.csv")
    # Then it is refused with the file, its line and the row, and the server heard nothing
    assert proc.returncode == 2
    assert "bad.csv:3: row 2: missing prompt" in proc.stderr
    assert mock.stats()["requests"] == 0


SIX = text_tasks(6)
PROMPT_TO_ID = {task["prompt"]: task["id"] for task in SIX}


def _sent_ids(mock: MockServerProcess) -> list[str]:
    return sorted(PROMPT_TO_ID[prompt] for prompt in mock.stats()["received"])


@pytest.mark.parametrize(("options", "expected"), [
    (("--limit", "2"), ["t0", "t1"]),
    (("--start", "2", "--end", "4"), ["t2", "t3"]),
    (("--ids", "ids.txt"), ["t1", "t4"]),
], ids=["limit", "start-end", "ids"])
def test_each_selection_option_sends_exactly_the_tasks_it_selects(
    tmp_path: Path, mock: MockServerProcess, options: tuple[str, ...], expected: list[str],
):
    # Given six tasks and an ids file naming two of them (with a comment)
    write_tasks(tmp_path / "tasks.jsonl", SIX)
    (tmp_path / "ids.txt").write_text("# the two to check\nt4\nt1\n")
    # When a run selects some of them
    proc = _run(tmp_path, mock, *options)
    # Then the server received exactly those, once each, and the output holds them
    assert proc.returncode == 0, proc.stderr
    assert _sent_ids(mock) == expected
    assert set(mock.stats()["received"].values()) == {1}
    assert sorted(_answers(tmp_path / "out" / "results.jsonl")) == expected


def test_only_failed_reruns_the_failed_tasks_and_not_the_ones_never_tried(tmp_path: Path,
                                                                          mock: MockServerProcess):
    # Given a trial run of the first three of six tasks, in which t1 failed
    write_tasks(tmp_path / "tasks.jsonl", SIX)
    mock.configure(script={SIX[1]["prompt"]: ["500"]})
    first = _run(tmp_path, mock, "--limit", "3", "--max-retries", "0")
    assert first.returncode == 1, first.stderr
    assert sorted(_answers(tmp_path / "out" / "results.jsonl")) == ["t0", "t2"]
    mock.reset()
    # When it is rerun with --only-failed
    again = _run(tmp_path, mock, "--only-failed")
    # Then only t1 was sent (t3 to t5 were never tried, so they are not failed), and it is done now
    assert again.returncode == 0, again.stderr
    assert _sent_ids(mock) == ["t1"]
    assert sorted(_answers(tmp_path / "out" / "results.jsonl")) == ["t0", "t1", "t2"]
