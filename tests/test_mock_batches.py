"""The mock's Files and Batches APIs over real HTTP, through the openai SDK's own clients."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import openai
import pytest

from mpinfer.mockserver import MockServerProcess

FINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture
def mock(batch_mock: MockServerProcess) -> MockServerProcess:
    """This module's mock is the Batch API one (conftest.batch_mock), reset for each test."""
    return batch_mock


def _client(mock: MockServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=mock.base_url, api_key="sk-test", max_retries=0, timeout=10)


def _lines(ids: list[str], model: str = "gpt-4o-mini") -> bytes:
    rows = [{"custom_id": i, "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}}
            for i in ids]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _submit(client: openai.OpenAI, data: bytes) -> Any:
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                 completion_window="24h", metadata={"job": "test"})


def _wait(client: openai.OpenAI, batch_id: str, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish in {timeout_s}s")


def _file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()
            if line.strip()]


def test_a_batch_goes_through_validating_and_in_progress_to_completed_with_every_answer(
    mock: MockServerProcess,
):
    # Given an uploaded file of three requests
    client = _client(mock)
    # When a batch is created from it and polled
    batch = _submit(client, _lines(["a", "b", "c"]))
    assert batch.status == "validating" and batch.metadata == {"job": "test"}
    done = _wait(client, batch.id)
    # Then it completed with every request answered in its output file, and no error file
    assert done.status == "completed" and done.error_file_id is None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (3, 3, 0)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = _file_lines(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == ["a", "b", "c"]
    assert out[0]["response"]["status_code"] == 200 and out[0]["error"] is None
    answer = out[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert answer.startswith("Mock answer to: question")
    assert mock.batch_stats()["rows"] == {"a": 1, "b": 1, "c": 1}


def test_an_expiring_batch_returns_what_it_did_and_lists_the_rest_as_batch_expired(
    mock: MockServerProcess,
):
    # Given the next batch expires after two requests
    mock.batch_faults(expire_next=1, expire_after=2)
    client = _client(mock)
    # When a batch of five runs
    done = _wait(client, _submit(client, _lines([f"r{i}" for i in range(5)])).id)
    # Then it expired: two answers in the output file, three batch_expired lines with no response
    assert done.status == "expired" and done.expired_at
    assert len(_file_lines(client, done.output_file_id)) == 2
    errors = _file_lines(client, done.error_file_id)
    assert [e["error"]["code"] for e in errors] == ["batch_expired"] * 3
    assert all(e["response"] is None for e in errors)
    # And the next batch is not expired
    assert _wait(client, _submit(client, _lines(["x"])).id).status == "completed"


def test_failed_requests_land_in_the_error_file_with_their_http_status(mock: MockServerProcess):
    # Given one request scripted to fail with 500, one with 400, one to time out
    mock.batch_faults(script={"b": ["500"], "c": ["400"], "d": ["timeout"]})
    client = _client(mock)
    # When the batch runs
    done = _wait(client, _submit(client, _lines(["a", "b", "c", "d"])).id)
    # Then it completed, with one answer and three error lines
    assert done.status == "completed" and done.request_counts.failed == 3
    errors = {e["custom_id"]: e for e in _file_lines(client, done.error_file_id)}
    assert errors["b"]["response"]["status_code"] == 500 and errors["b"]["error"] is None
    assert errors["c"]["response"]["status_code"] == 400
    assert errors["d"]["response"] is None and errors["d"]["error"]["code"] == "request_timeout"


def test_a_batch_can_fail_validation_with_errors_and_a_duplicate_custom_id_is_refused(
    mock: MockServerProcess,
):
    # Given a fault that fails the next batch, and a file that repeats a custom_id
    mock.batch_faults(fail_next=1)
    client = _client(mock)
    # When both run
    failed = _wait(client, _submit(client, _lines(["a"])).id)
    duplicate = _wait(client, _submit(client, _lines(["a", "a"])).id)
    # Then both failed, with the reason in errors.data and no files
    assert failed.status == "failed" and failed.errors.data[0].code == "mock_failure"
    assert duplicate.status == "failed" and duplicate.errors.data[0].code == "duplicate_custom_id"
    assert duplicate.errors.data[0].line == 2 and duplicate.output_file_id is None


def test_the_enqueued_token_limit_fails_a_batch_while_another_is_running(mock: MockServerProcess):
    # Given a per-model enqueued-token limit that one batch nearly fills, and slow processing
    mock.batch_faults(token_limit=8, request_s=0.3)
    client = _client(mock)
    first = _submit(client, _lines(["a", "b"]))  # 2 x 3 prompt tokens
    time.sleep(0.3)
    # When a second batch is created while the first is in progress
    second = _wait(client, _submit(client, _lines(["c", "d"])).id)
    # Then the second fails validation with token_limit_exceeded, and the first completes
    assert second.status == "failed" and second.errors.data[0].code == "token_limit_exceeded"
    assert _wait(client, first.id).status == "completed"


def test_cancelling_goes_through_cancelling_and_lists_unreached_requests_as_batch_cancelled(
    mock: MockServerProcess,
):
    # Given a slow batch of four
    mock.batch_faults(request_s=0.2)
    client = _client(mock)
    batch = _submit(client, _lines(["a", "b", "c", "d"]))
    time.sleep(0.35)
    # When it is cancelled
    assert client.batches.cancel(batch.id).status == "cancelling"
    done = _wait(client, batch.id)
    # Then it ends cancelled; what was not reached is batch_cancelled, and a second cancel is
    # refused
    assert done.status == "cancelled" and done.cancelled_at
    codes = [e["error"]["code"] for e in _file_lines(client, done.error_file_id) if e["error"]]
    assert codes and set(codes) == {"batch_cancelled"}
    assert len(codes) + len(_file_lines(client, done.output_file_id)) == 4
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_batches_are_listed_newest_first_with_cursor_pages_and_creation_is_rate_limited(
    mock: MockServerProcess,
):
    # Given three batches, and a creation limit of three
    mock.batch_faults(max_creates=3)
    client = _client(mock)
    ids = [_submit(client, _lines([f"r{i}"])).id for i in range(3)]
    # When they are listed a page of two at a time (the SDK follows has_more/after)
    listed = [b.id for b in client.batches.list(limit=2)]
    # Then all three come back, newest first; and a fourth creation is refused with 429
    assert listed == ids[::-1]
    with pytest.raises(openai.RateLimitError):
        _submit(client, _lines(["r9"]))
    assert mock.batch_stats()["refused_creates"] == 1


def test_files_api_refuses_an_unknown_purpose_and_a_missing_file(mock: MockServerProcess):
    # Given a client
    client = _client(mock)
    # When a file goes up with an unknown purpose, and a file that does not exist is read
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="nonsense")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    # Then a good upload is listed and read back byte for byte
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(_lines(["a"]))), purpose="batch")
    assert client.files.retrieve(uploaded.id).bytes == len(_lines(["a"]))
    assert client.files.content(uploaded.id).content == _lines(["a"])


def test_a_file_is_deleted_as_openai_answers_and_an_unknown_id_is_a_404_with_an_error_body(
    mock: MockServerProcess,
):
    # Given an uploaded file
    client = _client(mock)
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(_lines(["a"]))), purpose="batch")
    # When it is deleted
    deleted = client.files.delete(uploaded.id)
    # Then the answer is OpenAI's file deletion object, and the file is gone (the stats say which
    # went)
    assert (deleted.id, deleted.object, deleted.deleted) == (uploaded.id, "file", True)
    stats = mock.batch_stats()
    assert stats["file_ids"] == [] and stats["deleted_files"] == [uploaded.id]
    # And a second delete, or a read, of that id is a 404 with an OpenAI-style error body
    for call in (client.files.delete, client.files.retrieve):
        with pytest.raises(openai.NotFoundError) as caught:
            call(uploaded.id)
        assert caught.value.body == {"message": f"No such File object: {uploaded.id}",
                                     "type": "invalid_request_error", "param": "id", "code": None}


def _azure(mock: MockServerProcess, key: str = "azure-key-0001",
           version: str | None = "2024-10-21") -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=mock.root_url, api_key=key, api_version=version,
                              max_retries=0, timeout=10)


def test_azure_batches_live_under_the_resource_name_deployments_and_belong_to_their_key(
    mock: MockServerProcess,
):
    # Given a resource with a global-batch deployment of gpt-4o
    mock.configure(azure_deployments={"gpt4o-batch": "gpt-4o-2024-08-06"})
    client = _azure(mock)
    lines = [{"custom_id": i, "method": "POST", "url": "/chat/completions",
              "body": {"model": model, "messages": [{"role": "user", "content": f"q {i}"}]}}
             for i, model in (("a", "gpt4o-batch"), ("b", "gpt4o-batch"))]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in lines)
    # When a file is uploaded under the resource and a /chat/completions batch made from it
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/chat/completions",
                                  completion_window="24h")
    done = _wait(client, batch.id)  # type: ignore[arg-type]
    # Then the deployment's model answers every line
    assert done.status == "completed", done.errors
    assert {row["response"]["body"]["model"] for row in _file_lines(client, done.output_file_id)
            } == {"gpt-4o-2024-08-06"}
    # And another key is told the batch does not exist, as another resource would be
    with pytest.raises(openai.NotFoundError):
        _azure(mock, key="azure-key-0002").batches.retrieve(batch.id)
    # And without api-version the resource answers 404 Resource not found, as Azure does
    with pytest.raises(openai.NotFoundError, match="Resource not found"):
        openai.OpenAI(base_url=mock.root_url + "/openai", api_key="k",
                      max_retries=0).batches.retrieve(batch.id)
    # And a line naming no deployment of the resource fails the batch with model_not_found
    bad = data.replace(b"gpt4o-batch", b"gpt-4o")
    uploaded = client.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="batch")
    failed = _wait(client, client.batches.create(input_file_id=uploaded.id,
                                                 endpoint="/chat/completions",
                                                 completion_window="24h").id)
    assert failed.status == "failed" and failed.errors.data[0].code == "model_not_found"
