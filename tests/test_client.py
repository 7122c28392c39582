"""One API call against the mock, the retry/fail/abort verdicts, and the waits between tries."""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from mpinfer.api.answer import Answer
from mpinfer.api.client import complete, make_client
from mpinfer.api.failures import CallError, Verdict, classify
from mpinfer.api.messages import ImageEncoder, build_request
from mpinfer.api.retry import MAX_BACKOFF_S, backoff_s
from mpinfer.api.ticket import Ticket
from mpinfer.demo import png_bytes
from mpinfer.errors import ImageError, MalformedResponse
from mpinfer.inputs.tasks import Task
from mpinfer.limits import wait_hint
from mpinfer.mockserver import MockServerProcess

KEY = "sk-test-0000000000000000fake9zq7"


def request_for(prompt: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def call(mock: MockServerProcess, request: dict[str, Any], *, key: str = KEY,
         timeout: float = 10.0) -> Answer | BaseException:
    """Send one request with the package's real client; the answer, or the exception it raised."""

    async def go() -> Answer | BaseException:
        client = make_client(key, mock.base_url, timeout)
        try:
            return await complete(client, request, Ticket(timeout))
        except Exception as exc:
            return exc
        finally:
            await client.close()

    return asyncio.run(go())


def failure(mock: MockServerProcess, request: dict[str, Any],
            **kwargs: Any) -> tuple[BaseException, CallError]:
    outcome = call(mock, request, **kwargs)
    assert isinstance(outcome, BaseException), f"expected an error, got {outcome!r}"
    return outcome, classify(outcome)


# --- against the mock server ----------------------------------------------------------------------


def test_a_normal_answer_is_parsed_with_content_model_and_usage(mock: MockServerProcess) -> None:
    # Given a healthy server
    prompt = "What is 2 + 2?"
    # When one request is sent
    answer = call(mock, request_for(prompt))
    # Then the answer carries the mock's content, the model and the token counts
    assert isinstance(answer, Answer)
    content = f"Mock answer to: {prompt} (images: 0)"
    assert answer.content == content
    assert answer.model == "gpt-4o-mini"
    assert answer.finish_reason == "stop"
    assert answer.prompt_tokens == math.ceil(len(prompt) / 4)
    assert answer.completion_tokens == math.ceil(len(content) / 4)
    assert answer.total_tokens == answer.prompt_tokens + answer.completion_tokens
    assert answer.headers["x-request-id"].startswith("req_mock_")
    assert mock.stats()["answered"] == {prompt: 1}


def test_the_model_reported_by_the_server_is_recorded(mock: MockServerProcess) -> None:
    # Given a server that answers gpt-4o-mini requests with a dated snapshot
    mock.configure(model_map={"gpt-4o-mini": "gpt-4o-mini-2024-07-18"})
    # When a request is sent
    answer = call(mock, request_for("which model?"))
    # Then the server's model is what the answer says
    assert isinstance(answer, Answer)
    assert answer.model == "gpt-4o-mini-2024-07-18"


def test_a_request_built_from_a_task_with_an_image_is_accepted(mock: MockServerProcess,
                                                               tmp_path: Path) -> None:
    # Given a task with a local PNG, built into a request by the package
    (tmp_path / "a.png").write_bytes(png_bytes(8, 8, (1, 2, 3), (4, 5, 6)))
    task = Task(id="a", prompt="describe", images=("a.png",), max_tokens=3)
    request = build_request(task, ImageEncoder(tmp_path), model="gpt-4o").kwargs
    # When it is sent
    answer = call(mock, request)
    # Then the server saw one image, and max_tokens cut the answer short
    assert isinstance(answer, Answer)
    assert answer.model == "gpt-4o"
    assert answer.finish_reason == "length"
    assert answer.completion_tokens == 3
    assert answer.prompt_tokens == math.ceil(len("describe") / 4) + 85


def test_a_server_error_is_retried_with_status_500(mock: MockServerProcess) -> None:
    # Given a server scripted to fail this prompt with a 500
    prompt = "scripted 500"
    mock.configure(script={prompt: ["500"]})
    # When it is sent
    exc, error = failure(mock, request_for(prompt))
    # Then it is a retryable server error
    assert isinstance(exc, openai.InternalServerError)
    assert (error.verdict, error.error_type, error.status) == (Verdict.RETRY, "server_error", 500)
    assert "mock fault" in error.message
    assert error.retry_after is None
    assert mock.stats()["outcomes"]["500"] == 1


def test_a_rate_limit_is_waited_out_after_the_servers_retry_after(mock: MockServerProcess) -> None:
    # Given a server scripted to answer 429 with a Retry-After of 2.5 s
    prompt = "scripted 429"
    mock.configure(script={prompt: ["429"]}, retry_after=2.5)
    # When it is sent
    exc, error = failure(mock, request_for(prompt))
    # Then it is a rate limit to wait out, carrying the server's wait
    assert isinstance(exc, openai.RateLimitError)
    assert (error.verdict, error.error_type, error.status) == (Verdict.WAIT, "rate_limit", 429)
    assert error.retry_after == pytest.approx(2.5)


def test_a_script_retries_then_succeeds(mock: MockServerProcess) -> None:
    # Given a server scripted to fail once and then answer
    prompt = "fail once"
    mock.configure(script={prompt: ["500", "ok"]})
    # When the same request is sent twice
    first = call(mock, request_for(prompt))
    second = call(mock, request_for(prompt))
    # Then the first fails and the second is answered
    assert isinstance(first, openai.InternalServerError)
    assert isinstance(second, Answer) and second.content == f"Mock answer to: {prompt} (images: 0)"
    assert mock.stats()["received"] == {prompt: 2}


def test_no_quota_aborts_the_run(mock: MockServerProcess) -> None:
    # Given a server scripted to report insufficient quota
    prompt = "scripted quota"
    mock.configure(script={prompt: ["quota"]})
    # When it is sent
    _, error = failure(mock, request_for(prompt))
    # Then no task can succeed: abort
    assert (error.verdict, error.error_type, error.status) == (
        Verdict.ABORT, "insufficient_quota", 429)
    assert "quota" in error.message


def test_a_bad_key_disables_the_key_as_an_authentication_error(mock: MockServerProcess) -> None:
    # Given a key the server has revoked
    revoked = "sk-test-revoked-key-for-this-test-q7w8"
    mock.configure(revoke_keys=[revoked])
    try:
        # When a request is sent with it
        exc, error = failure(mock, request_for("with a revoked key"), key=revoked)
    finally:
        mock.configure(unrevoke_keys=[revoked])
    # Then it is a 401 that disables the key (the run stops only when none is left), and the message
    # shows only the key's tail
    assert isinstance(exc, openai.AuthenticationError)
    assert (error.verdict, error.error_type, error.status) == (Verdict.DISABLE_KEY,
                                                               "authentication", 401)
    assert "Incorrect API key" in error.message
    assert revoked not in error.message


def test_a_bad_data_url_fails_the_task_as_a_bad_request(mock: MockServerProcess,
                                                        tmp_path: Path) -> None:
    # Given a task whose image is a data URL with a payload that is not base64 (passed through
    # untouched)
    bad_url = "data:image/png;base64,!!!not-base64!!!"
    request = build_request(Task(id="a", prompt="look", images=(bad_url,)), ImageEncoder(tmp_path),
                            model="gpt-4o-mini").kwargs
    assert request["messages"][0]["content"][1]["image_url"]["url"] == bad_url
    # When it is sent
    exc, error = failure(mock, request)
    # Then only this task fails: a 400 that is not retried
    assert isinstance(exc, openai.BadRequestError)
    assert (error.verdict, error.error_type, error.status) == (Verdict.FAIL, "bad_request", 400)
    assert "not valid base64" in error.message


def test_a_malformed_body_is_a_retryable_malformed_response(mock: MockServerProcess) -> None:
    # Given a server scripted to answer 200 with a truncated body
    prompt = "scripted malformed"
    mock.configure(script={prompt: ["malformed"]})
    # When it is sent
    exc, error = failure(mock, request_for(prompt))
    # Then the body is reported as malformed and retried
    assert isinstance(exc, MalformedResponse)
    assert "chatcmpl-broken" in str(exc)
    assert (error.verdict, error.error_type, error.status) == (
        Verdict.RETRY, "malformed_response", 200)


def test_a_reset_connection_is_a_retryable_connection_error(mock: MockServerProcess) -> None:
    # Given a server scripted to reset the connection
    prompt = "scripted reset"
    mock.configure(script={prompt: ["reset"]})
    # When it is sent
    exc, error = failure(mock, request_for(prompt))
    # Then it is a connection error that is retried, not a timeout (the aiohttp transport raises the
    # SDK's timeout class for it; the root cause tells them apart)
    assert isinstance(exc, openai.APIConnectionError)
    assert (error.verdict, error.error_type, error.status) == (Verdict.RETRY, "connection", None)
    assert error.message.startswith("connection error") and "reset" in error.message.lower()
    assert mock.stats()["outcomes"]["reset"] == 1


def test_a_hanging_request_times_out_and_is_retried(mock: MockServerProcess) -> None:
    # Given a server scripted to never answer this prompt
    prompt = "scripted hang"
    mock.configure(script={prompt: ["hang"]})
    # When it is sent with a 0.5 s timeout
    started = time.monotonic()
    exc, error = failure(mock, request_for(prompt), timeout=0.5)
    elapsed = time.monotonic() - started
    # Then it gives up after about the timeout (the SDK's, or our deadline on the whole request), as
    # a retryable timeout
    assert isinstance(exc, (openai.APITimeoutError, TimeoutError))
    assert (error.verdict, error.error_type, error.status) == (Verdict.RETRY, "timeout", None)
    assert 0.4 <= elapsed < 5.0


# --- classify without a server --------------------------------------------------------------------


def status_error(status: int, headers: dict[str, str] | None = None,
                 code: str | None = None) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    body = {"message": f"status {status}", "type": "x", "param": None, "code": code}
    return openai.APIStatusError(f"status {status}", response=response, body=body)


@pytest.mark.parametrize(("status", "verdict", "error_type"), [
    (400, Verdict.FAIL, "bad_request"),
    (403, Verdict.DISABLE_KEY, "permission_denied"),
    (404, Verdict.FAIL, "not_found"),
    (422, Verdict.FAIL, "unprocessable"),
    (413, Verdict.FAIL, "http_413"),
    (408, Verdict.RETRY, "http_408"),
    (409, Verdict.RETRY, "http_409"),
    (502, Verdict.RETRY, "server_error"),
    (503, Verdict.RETRY, "server_error"),
])
def test_classify_sorts_http_statuses_into_fail_retry_and_disable_key(status: int, verdict: Verdict,
                                                                      error_type: str) -> None:
    # Given an API status error
    exc = status_error(status)
    # When it is classified
    error = classify(exc)
    # Then the verdict and name follow the status
    assert (error.verdict, error.error_type, error.status, error.message) == (
        verdict, error_type, status, f"status {status}")


def test_classify_takes_retry_after_from_a_503() -> None:
    # Given a 503 with Retry-After
    exc = status_error(503, {"Retry-After": "4"})
    # When it is classified
    error = classify(exc)
    # Then the wait is kept
    assert error.retry_after == 4.0


def test_classify_fails_a_task_with_a_bad_image_and_anything_unexpected() -> None:
    # Given an image error and an unexpected exception
    # When they are classified
    image = classify(ImageError("image 'x.png': No such file"))
    other = classify(KeyError("boom"))
    # Then each fails its task without retrying
    assert (image.verdict, image.error_type, image.status) == (Verdict.FAIL, "image", None)
    assert image.message == "image 'x.png': No such file"
    assert (other.verdict, other.error_type) == (Verdict.FAIL, "KeyError")


# --- backoff_s and retry_after_s ------------------------------------------------------------------


def test_backoff_grows_exponentially_within_its_jitter_bounds() -> None:
    # Given a seeded generator and a base of 1 s
    rng = random.Random(1234)
    # When 100 waits are drawn for each of the first six retries
    waits = {attempt: [backoff_s(attempt, 1.0, rng) for _ in range(100)] for attempt in range(1, 7)}
    # Then retry n waits between half and all of base * 2**(n-1), spread out, and never less than
    # retry n-1
    for attempt, values in waits.items():
        ceiling = 2.0 ** (attempt - 1)
        assert all(ceiling / 2 <= v <= ceiling for v in values), (attempt, min(values), max(values))
        assert len(set(values)) > 50
        assert max(values) - min(values) > ceiling / 4
    for attempt in range(2, 7):
        assert min(waits[attempt]) >= max(waits[attempt - 1])


def test_backoff_scales_with_the_base() -> None:
    # Given a base of 0.2 s
    rng = random.Random(5)
    # When the third retry's wait is drawn
    values = [backoff_s(3, 0.2, rng) for _ in range(100)]
    # Then it lies between 0.4 and 0.8 s
    assert all(0.4 <= v <= 0.8 for v in values)


def test_backoff_is_capped_at_sixty_seconds() -> None:
    # Given many retries in
    rng = random.Random(99)
    # When late retries' waits are drawn
    values = [backoff_s(attempt, 1.0, rng) for attempt in (7, 8, 10, 20, 60) for _ in range(50)]
    # Then none exceeds the cap and all stay in its upper half
    assert MAX_BACKOFF_S == 60.0
    assert all(30.0 <= v <= 60.0 for v in values)
    assert max(values) > 55.0


def test_backoff_never_goes_below_a_retry_after() -> None:
    # Given a server asking for 5 s, and then for 90 s (beyond the cap)
    rng = random.Random(7)
    # When first-retry waits are drawn
    short = [backoff_s(1, 1.0, rng, retry_after=5.0) for _ in range(100)]
    long = [backoff_s(20, 1.0, rng, retry_after=90.0) for _ in range(100)]
    small = [backoff_s(6, 1.0, rng, retry_after=0.5) for _ in range(100)]
    # Then the wait is at least the server's, plus at most a second of jitter; a small one does not
    # shorten ours
    assert all(5.0 <= v <= 6.0 for v in short)
    assert all(90.0 <= v <= 91.0 for v in long)
    assert all(16.0 <= v <= 32.0 for v in small)


def test_retry_after_parses_seconds() -> None:
    # Given a Retry-After in seconds
    headers = httpx2.Headers({"Retry-After": "7"})
    # When it is read
    # Then it is that many seconds
    assert wait_hint(headers) == 7.0
    assert wait_hint(httpx2.Headers({"Retry-After": "0.25"})) == 0.25


def test_retry_after_parses_milliseconds_and_prefers_them() -> None:
    # Given OpenAI's retry-after-ms, alone and beside a rounded Retry-After
    alone = httpx2.Headers({"retry-after-ms": "1500"})
    both = httpx2.Headers({"retry-after-ms": "250", "Retry-After": "1"})
    # When they are read
    # Then the milliseconds are used
    assert wait_hint(alone) == 1.5
    assert wait_hint(both) == 0.25


def test_retry_after_parses_an_http_date() -> None:
    # Given a Retry-After date 30 s after a fixed now, and one in the past
    now = 1_700_000_000.0
    future = httpx2.Headers({"Retry-After": email.utils.formatdate(now + 30, usegmt=True)})
    past = httpx2.Headers({"Retry-After": email.utils.formatdate(now - 30, usegmt=True)})
    # When they are read
    # Then the wait is the time until the date, and never negative
    assert wait_hint(future, wall=now) == pytest.approx(30.0)
    assert wait_hint(past, wall=now) == 0.0


def test_retry_after_without_a_usable_value_is_none() -> None:
    # Given no headers, no Retry-After, and an unparsable one
    # When they are read
    # Then there is no server wait
    assert wait_hint(None) is None
    assert wait_hint(httpx2.Headers({})) is None
    assert wait_hint(httpx2.Headers({"Retry-After": "soon"})) is None
    assert wait_hint(httpx2.Headers({"retry-after-ms": "x", "Retry-After": "3"})) == 3.0
    assert wait_hint(httpx2.Headers({"Retry-After": "-4"})) == 0.0


def test_backoff_of_a_very_late_retry_is_still_capped() -> None:
    # Given a run allowed thousands of retries
    rng = random.Random(3)
    # When the wait before retry 1100 is drawn
    wait = backoff_s(1100, 1.0, rng)
    # Then it is capped like any other late retry
    assert 30.0 <= wait <= 60.0


def test_the_httpx_transport_answers_like_the_aiohttp_one(mock: MockServerProcess) -> None:
    # Given the same request through each transport
    from mpinfer.api.client import Transport

    async def send(transport: Transport) -> Answer:
        client = make_client("sk-test", mock.base_url, 10.0, transport=transport)
        try:
            return await complete(client, request_for("either transport"), Ticket(10.0))
        finally:
            await client.close()

    # When it is sent
    answers = [asyncio.run(send(t)) for t in (Transport.AIOHTTP, Transport.HTTPX)]
    # Then both read the same answer and usage
    assert answers[0].content == answers[1].content
    assert answers[0].content == "Mock answer to: either transport (images: 0)"
    assert answers[0].total_tokens == answers[1].total_tokens > 0


class _Noting(Ticket):
    """A ticket that notes its hooks' calls (the runner's stamps the send and reads the limits)."""

    def __init__(self, seconds: float, seen: list[str]) -> None:
        super().__init__(seconds)
        self.seen = seen

    async def leaving(self) -> None:
        self.seen.append("leaving")

    async def answered(self, status: int, headers: Any) -> None:
        self.seen.append(f"answered {status}")


def test_a_tickets_hooks_run_once_per_request_on_either_transport(mock: MockServerProcess) -> None:
    # Given tickets that note their hooks' calls (the rate limiter's send stamp rides on leaving)
    from mpinfer.api.client import Transport

    async def send_three(transport: Transport) -> list[str]:
        seen: list[str] = []
        client = make_client("sk-test", mock.base_url, 10.0, transport=transport)
        try:
            for n in range(3):
                await complete(client, request_for(f"hooked {n}"), _Noting(10.0, seen))
        finally:
            await client.close()
        return seen

    for transport in (Transport.AIOHTTP, Transport.HTTPX):
        # When three requests are sent
        seen = asyncio.run(send_three(transport))
        # Then each ticket was told (awaited) once as its request left and once as its answer came
        assert seen.count("leaving") == 3, transport
        assert seen == ["leaving", "answered 200"] * 3, transport
