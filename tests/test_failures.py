"""The failure vocabulary (api.failures): one table, read alike for exceptions and Batch lines."""

from __future__ import annotations

import random
import subprocess
import sys

import httpx2
import openai
import pytest

from mpinfer.api.answer import filtered_answer
from mpinfer.api.failures import TABLE, Kind, Verdict, classify, of_status
from mpinfer.api.retry import Attempts, decide
from mpinfer.backends.batch_merge import classify_line
from mpinfer.slices import RetryPolicy


def status_error(status: int, message: str, code: str | None = None) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(status, request=request)
    body = {"message": message, "type": "x", "param": None, "code": code}
    return openai.APIStatusError(message, response=response, body=body)


@pytest.mark.parametrize(("status", "code", "message"), [
    (400, None, "bad"), (400, None, "Total image size (30MB) exceeds the allowed limit"),
    (401, None, "key"), (403, None, "no"), (404, None, "gone"), (404, "model_not_found", "no x"),
    (404, "DeploymentNotFound", "no deployment"), (408, None, "slow"),
    (409, None, "busy"), (413, None, "big"), (418, None, "teapot"), (422, None, "odd"),
    (429, None, "slow down"),
    (429, "insufficient_quota", "no money"), (500, None, "oops"), (503, None, "down"),
])
def test_an_online_answer_and_a_batch_line_with_one_status_are_one_failure(
        status: int, code: str | None, message: str) -> None:
    # Given an error answer online, and a Batch API error line with its status, code and message
    online = status_error(status, message, code)
    line = {"custom_id": "x", "response": {"status_code": status,
                                           "body": {"error": {"message": message, "code": code}}}}
    # When each is classified
    a, b = classify(online), classify_line(line)
    # Then both are the same kind, written the same way, with the same verdict
    assert (a.kind, a.error_type, a.verdict) == (b.kind, b.error_type, b.verdict)


def test_kinds_written_under_another_name_are_written_so() -> None:
    # Given failures of the four kinds with a name of their own
    # When their error types are read
    other = of_status(418, None, "teapot")
    code = of_status(None, "invalid_jsonl", "bad line")
    unexpected = classify(KeyError("boom"))
    # Then each is written as before: http_<status>, the Batch API's code, the exception's class
    assert (other.kind, other.error_type, other.verdict) == (Kind.HTTP, "http_418", Verdict.FAIL)
    assert (code.kind, code.error_type, code.verdict) == (
        Kind.BATCH_CODE, "invalid_jsonl", Verdict.FAIL)
    assert (unexpected.kind, unexpected.error_type) == (Kind.UNEXPECTED, "KeyError")


def test_an_unknown_model_or_deployment_drops_the_model_and_another_404_fails_the_task() -> None:
    # Given OpenAI's 404 for an unknown model, Azure's for a missing deployment, and a bare 404
    unknown = of_status(404, "model_not_found", "The model `x` does not exist")
    deployment = of_status(404, "DeploymentNotFound", "The API deployment does not exist")
    bare = of_status(404, None, "Not found")
    # Then the first two are unknown_model, which stops the model's tasks; the last fails the task
    assert (unknown.error_type, unknown.verdict) == ("unknown_model", Verdict.DROP_MODEL)
    assert (deployment.error_type, deployment.verdict) == ("unknown_model", Verdict.DROP_MODEL)
    assert (bare.error_type, bare.verdict) == ("not_found", Verdict.FAIL)


def test_every_row_of_the_table_can_be_reached() -> None:
    # Given the table's rows, in order
    # When each is compared with the rows before it
    shadowed = [rule for i, rule in enumerate(TABLE) for earlier in TABLE[:i]
                if (earlier.exception, earlier.status) == (rule.exception, rule.status)
                and earlier.code in (None, rule.code) and earlier.message in (None, rule.message)]
    # Then none is hidden behind an earlier row that matches everything it matches
    assert len(TABLE) > 20 and shadowed == []


def test_the_vocabulary_loads_without_the_openai_sdk() -> None:
    # Given a fresh interpreter
    # When the failure vocabulary and the retry decision are imported
    code = "import sys, mpinfer.api.failures, mpinfer.api.retry; print('openai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Then the SDK was not loaded
    assert out.stdout.strip() == "False"


def test_azures_content_filter_400_is_an_answer_the_filter_gave_not_a_failure() -> None:
    # Given Azure's 400 for a filtered prompt, as the SDK raises it (its body: the error object)
    request = httpx2.Request("POST", "http://127.0.0.1/openai/deployments/d/chat/completions")
    verdict = {"violence": {"filtered": True, "severity": "high"},
               "hate": {"filtered": False, "severity": "safe"}}
    body = {"message": "The response was filtered", "code": "content_filter", "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation",
                           "content_filter_result": verdict}}
    error = openai.BadRequestError("filtered", response=httpx2.Response(400, request=request),
                                   body=body)
    # When it is classified, and its next step decided
    failure = classify(error)
    policy = RetryPolicy(max_retries=3, backoff_s=1.0, patience_s=300.0)
    step = decide(failure, Attempts(), policy, random.Random(0), 0.0)
    # Then it is the content filter's answer, kept with the server's body, and not sent again
    assert (failure.kind, failure.verdict, step.verdict) == (Kind.CONTENT_FILTER, Verdict.FILTERED,
                                                             Verdict.FILTERED)
    assert failure.body == body
    # And the answer it stands for has no text and the filter's verdict per category
    answer = filtered_answer(failure.body)
    assert (answer.content, answer.model, answer.finish_reason) == (None, None, "content_filter")
    assert answer.filtered == {"source": "prompt", "categories": verdict}
