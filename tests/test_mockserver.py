"""Tests of the OpenAI-compatible mock server, over real HTTP on 127.0.0.1.

Every test talks to a real subprocess started by ``MockServerProcess`` so the
whole stack (the official ``openai`` client, httpx, sockets, the server's
hand-written HTTP parser) is exercised exactly as the package's own test
suite and benchmarks will use it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from mpinfer.mockserver import (
    MockConfig,
    MockServer,
    MockServerProcess,
    build_arg_parser,
    config_from_args,
    format_duration,
)

PNG_DATA_URL = ("data:image/png;base64,"
                + base64.b64encode(b"\x89PNG\r\n\x1a\nnot really a png").decode())
HTTP_IMAGE_URL = "https://example.invalid/cat.jpg"

StartMock = Callable[..., MockServerProcess]


@pytest.fixture
def start_mock() -> Iterator[StartMock]:
    """Factory for mock servers with options; every server is stopped afterwards."""
    started: list[MockServerProcess] = []

    def _start(**overrides: Any) -> MockServerProcess:
        server = MockServerProcess().start(**overrides)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def mock(start_mock: StartMock) -> MockServerProcess:
    """A fresh mock server with default settings (no faults, no latency)."""
    return start_mock()


def make_client(server: MockServerProcess, api_key: str = "test",
                timeout: float = 10.0) -> openai.OpenAI:
    """The real OpenAI client, without its own retries so every fault is visible."""
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=timeout)


def ask(client: openai.OpenAI, text: str, model: str = "gpt-4o-mini", **kwargs: Any) -> Any:
    """One text-only chat completion."""
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], **kwargs)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll ``predicate`` until true or the (bounded) timeout passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def read_http_response(stream: Any) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length framed response from a socket file."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = stream.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers.get("content-length", "0")))
    return status, headers, body


def chat_body(text: str) -> bytes:
    return json.dumps({"model": "gpt-4o-mini",
                       "messages": [{"role": "user", "content": text}]}).encode()


# --------------------------------------------------------------------------
# Successful completions
# --------------------------------------------------------------------------


def test_a_text_and_image_completion_through_the_openai_client_reports_usage_and_echoes_the_model(
    mock: MockServerProcess,
) -> None:
    # Given a system prompt and a user turn with text, a data-URL image and an http image
    system = "You are helpful."
    question = "Describe this picture"
    messages: Any = [
        {"role": "system", "content": system},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": question},
                {"type": "image_url", "image_url": {"url": PNG_DATA_URL, "detail": "low"}},
                {"type": "image_url", "image_url": {"url": HTTP_IMAGE_URL}},
            ],
        },
    ]
    # When it is sent through the official client
    with make_client(mock) as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                               messages=messages)
        completion = raw.parse()
    # Then the answer is the deterministic mock text with usage computed from the prompt
    assert completion.model == "gpt-4o-mini"
    assert completion.id.startswith("chatcmpl-mock-")
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    expected = f"Mock answer to: {question} (images: 2)"
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == math.ceil((len(system) + len(question)) / 4) + 2 * 85
    assert completion.usage.completion_tokens == math.ceil(len(expected) / 4)
    assert (completion.usage.total_tokens
            == completion.usage.prompt_tokens + completion.usage.completion_tokens)
    assert raw.headers["x-request-id"]
    # And the stats saw one ok request for that task key and model
    stats = mock.stats()
    assert stats["outcomes"]["ok"] == 1
    assert stats["per_model"] == {"gpt-4o-mini": 1}
    assert stats["received"] == {question: 1}
    assert stats["answered"] == {question: 1}


def test_model_map_makes_the_server_report_a_different_model_than_requested(
    start_mock: StartMock,
) -> None:
    # Given a server that answers gpt-4o requests as gpt-4o-2024-08-06
    server = start_mock(model_map={"gpt-4o": "gpt-4o-2024-08-06"})
    with make_client(server) as client:
        # When gpt-4o and an unmapped model are requested
        mapped = ask(client, "hi", model="gpt-4o")
        unmapped = ask(client, "hi", model="gpt-4o-mini")
        # Then only the mapped one reports another model, and /v1/models lists it
        assert mapped.model == "gpt-4o-2024-08-06"
        assert unmapped.model == "gpt-4o-mini"
        assert "gpt-4o-2024-08-06" in {m.id for m in client.models.list()}
    # And the same mapping can be changed at runtime
    server.configure(model_map={"gpt-4o-mini": "other"})
    with make_client(server) as client:
        assert ask(client, "hi", model="gpt-4o-mini").model == "other"


def test_max_tokens_truncation_gives_finish_reason_length(mock: MockServerProcess) -> None:
    # Given a task whose full answer needs far more than 3 tokens
    full = "Mock answer to: a long enough question (images: 0)"
    with make_client(mock) as client:
        # When max_tokens (and separately max_completion_tokens) is 3
        cut = ask(client, "a long enough question", max_tokens=3)
        cut_new = ask(client, "a long enough question", max_completion_tokens=3)
        roomy = ask(client, "a long enough question", max_tokens=1000)
    # Then the content is cut to 12 characters and finish_reason says length
    for completion in (cut, cut_new):
        assert completion.choices[0].message.content == full[:12]
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == 3
    # And a generous limit changes nothing
    assert roomy.choices[0].message.content == full
    assert roomy.choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------
# Validation and auth
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,not*valid*base64!",
        "data:image/png;base64,",
        "data:image/png,aGVsbG8=",
        "ftp://example.invalid/x.png",
        "just-a-string",
    ],
)
def test_an_image_url_that_is_neither_http_nor_a_valid_base64_data_url_is_a_400(
    mock: MockServerProcess, url: str
) -> None:
    # Given a user message with an unusable image URL
    messages: Any = [{"role": "user",
                      "content": [{"type": "text", "text": "x"},
                                  {"type": "image_url", "image_url": {"url": url}}]}]
    # When it is sent
    with make_client(mock) as client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    # Then OpenAI's invalid_request_error shape names the offending parameter
    assert caught.value.status_code == 400
    error = caught.value.response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages.[0].content.[1].image_url.url"
    assert mock.stats()["outcomes"]["400"] == 1


def test_a_body_without_messages_or_model_is_a_400(mock: MockServerProcess) -> None:
    # Given requests missing required fields
    with make_client(mock) as client:
        # When they are sent
        with pytest.raises(openai.BadRequestError) as no_messages:
            client.chat.completions.create(model="gpt-4o-mini", messages=[])
        with pytest.raises(openai.BadRequestError) as no_model:
            client.chat.completions.create(model="", messages=[{"role": "user", "content": "x"}])
    # Then the error param says which one
    assert no_messages.value.response.json()["error"]["param"] == "messages"
    assert no_model.value.response.json()["error"]["param"] == "model"


def test_missing_unknown_and_revoked_keys_are_rejected_with_401(start_mock: StartMock) -> None:
    # Given a server accepting exactly two keys
    server = start_mock(keys=("sk-good-1111", "sk-good-2222"))
    # When requests come with a known key, an unknown key and no key at all
    with make_client(server, api_key="sk-good-1111") as good:
        assert ask(good, "hi").choices[0].message.content
    with (make_client(server, api_key="sk-bad-9999") as bad,
          pytest.raises(openai.AuthenticationError) as unknown):
        ask(bad, "hi")
    request = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with request, request.makefile("rb") as stream:
        body = chat_body("hi")
        request.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        missing_status, _, missing_body = read_http_response(stream)
    # Then only the known key is served; the others get OpenAI 401 bodies
    assert unknown.value.status_code == 401
    assert unknown.value.response.json()["error"]["code"] == "invalid_api_key"
    assert missing_status == 401
    assert json.loads(missing_body)["error"]["type"] == "invalid_request_error"
    # And when a key is revoked at runtime, it is rejected from then on
    server.configure(revoke_keys=["sk-good-2222"])
    with (make_client(server, api_key="sk-good-2222") as revoked,
          pytest.raises(openai.AuthenticationError)):
        ask(revoked, "hi")
    with make_client(server, api_key="sk-good-1111") as still_good:
        assert ask(still_good, "hi").choices[0].finish_reason == "stop"
    assert server.stats()["outcomes"]["401"] == 3


def test_any_non_empty_key_is_accepted_without_a_key_list_and_stats_show_only_its_last_four(
    mock: MockServerProcess,
) -> None:
    # Given a server without a key list
    # When two different secret keys are used
    for key in ("sk-very-secret-abcd", "sk-other-secret-wxyz"):
        with make_client(mock, api_key=key) as client:
            ask(client, "hi")
    # Then both are served and stats never contain a full key
    stats = mock.stats()
    assert stats["per_key"] == {"abcd": 1, "wxyz": 1}
    assert "secret" not in json.dumps(stats)
    assert "keys" not in mock.configure()


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------


def test_a_scripted_500_then_ok_fails_the_first_attempt_and_answers_the_second(
    mock: MockServerProcess,
) -> None:
    # Given a script that makes the first attempt of task "flaky" fail with 500
    mock.configure(script={"flaky": ["500"]})
    with make_client(mock) as client:
        # When the task is sent twice
        with pytest.raises(openai.InternalServerError) as caught:
            ask(client, "flaky")
        answer = ask(client, "flaky")
    # Then the first attempt was a 500 with an OpenAI body and the second succeeded
    assert caught.value.status_code == 500
    assert caught.value.response.json()["error"]["type"] == "server_error"
    assert answer.choices[0].message.content == "Mock answer to: flaky (images: 0)"
    stats = mock.stats()
    assert stats["outcomes"]["500"] == 1 and stats["outcomes"]["ok"] == 1
    assert stats["received"] == {"flaky": 2}
    assert stats["answered"] == {"flaky": 1}
    assert stats["scripted_pending"] == 0


def test_a_429_fault_carries_retry_after_headers_and_a_rate_limit_body(
    start_mock: StartMock,
) -> None:
    # Given a server whose every request is rate limited with a 2.5 s hint
    server = start_mock(p429=1.0, retry_after=2.5)
    # When a request is sent
    with make_client(server) as client, pytest.raises(openai.RateLimitError) as caught:
        ask(client, "busy")
    # Then it is a 429 with Retry-After headers and OpenAI's rate-limit error shape
    response = caught.value.response
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2.5"
    assert response.headers["retry-after-ms"] == "2500"
    error = response.json()["error"]
    assert error["type"] == "requests"
    assert error["code"] == "rate_limit_exceeded"
    assert server.stats()["outcomes"]["429"] == 1


def test_a_quota_fault_is_a_429_with_insufficient_quota_and_no_retry_after(
    mock: MockServerProcess,
) -> None:
    # Given a script that exhausts the quota for one task
    mock.configure(script={"broke": ["quota"]})
    # When it is sent
    with make_client(mock) as client, pytest.raises(openai.RateLimitError) as caught:
        ask(client, "broke")
    # Then it is distinguishable from a rate limit: insufficient_quota and no Retry-After
    response = caught.value.response
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"
    assert response.json()["error"]["type"] == "insufficient_quota"
    assert "retry-after" not in response.headers
    assert mock.stats()["outcomes"]["quota"] == 1


def test_a_reset_fault_surfaces_as_a_connection_error(mock: MockServerProcess) -> None:
    # Given a script that resets the connection for one task
    mock.configure(script={"cut": ["reset"]})
    # When it is sent
    with make_client(mock) as client:
        with pytest.raises(openai.APIConnectionError) as caught:
            ask(client, "cut")
        # And the client recovers on a fresh connection right after
        assert ask(client, "cut").choices[0].finish_reason == "stop"
    # Then it is a connection error, not a timeout
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert mock.stats()["outcomes"]["reset"] == 1


def test_a_reset_fault_is_a_tcp_reset_on_the_wire(mock: MockServerProcess) -> None:
    # Given a script that resets the connection for one task
    mock.configure(script={"rst": ["reset"]})
    sock = socket.create_connection(("127.0.0.1", mock.port), timeout=5)
    body = chat_body("rst")
    with sock:
        # When the request is written raw
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        # Then the read fails with ECONNRESET rather than a clean EOF
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)


def test_a_hang_fault_times_out_the_client_and_is_cleaned_up_when_it_disconnects(
    start_mock: StartMock,
) -> None:
    # Given a server that holds a scripted request for an hour
    server = start_mock(hang_s=3600)
    server.configure(script={"stuck": ["hang"]})
    # When a client with a 0.5 s timeout sends it
    started = time.monotonic()
    with make_client(server, timeout=0.5) as client, pytest.raises(openai.APITimeoutError):
        ask(client, "stuck")
    # Then the client times out promptly
    assert time.monotonic() - started < 3
    # And the server notices the disconnect and releases the request
    assert wait_for(lambda: server.stats()["in_flight"] == 0, timeout_s=5)
    stats = server.stats()
    assert stats["outcomes"]["hang"] == 1
    assert stats["answered"] == {}


def test_a_malformed_body_surfaces_as_a_json_decode_error_not_an_openai_error(
    mock: MockServerProcess,
) -> None:
    # Given a script that answers one task with truncated JSON and status 200
    mock.configure(script={"garbled": ["malformed"]})
    # When it is sent through openai 3.x
    with make_client(mock) as client:
        with pytest.raises(json.JSONDecodeError) as caught:
            ask(client, "garbled")
        # And the connection stays usable for the next request
        assert ask(client, "garbled").choices[0].finish_reason == "stop"
    # Then the client raised the bare json.JSONDecodeError (a ValueError), NOT an
    # openai.APIError: callers must catch it explicitly to treat it as retryable
    assert not isinstance(caught.value, openai.OpenAIError)
    assert isinstance(caught.value, ValueError)
    stats = mock.stats()
    assert stats["outcomes"]["malformed"] == 1
    assert stats["answered"] == {"garbled": 1}


def test_the_same_seed_draws_the_same_fault_sequence(start_mock: StartMock) -> None:
    # Given two servers with the same seed and a mix of fault probabilities
    options = {"seed": 1234, "p500": 0.3, "p429": 0.2, "pquota": 0.1}
    servers = [start_mock(**options), start_mock(**options)]
    sequences = []
    for server in servers:
        # When the same 30 requests are sent one after another
        outcomes = []
        with make_client(server) as client:
            for i in range(30):
                try:
                    ask(client, f"task {i}")
                    outcomes.append("ok")
                except openai.APIStatusError as exc:
                    outcomes.append(exc.response.json()["error"]["code"] or str(exc.status_code))
        sequences.append(outcomes)
    # Then both see the same outcomes, which contain several kinds
    assert sequences[0] == sequences[1]
    assert len(set(sequences[0])) >= 3


# --------------------------------------------------------------------------
# Counters
# --------------------------------------------------------------------------


def test_received_and_answered_count_every_task_so_double_answers_are_detectable(
    mock: MockServerProcess,
) -> None:
    # Given three tasks, one of which fails twice before succeeding
    mock.configure(script={"task-b": ["429", "500"]})
    with make_client(mock) as client:
        # When each task is retried until it succeeds (bounded)
        for task in ("task-a", "task-b", "task-c"):
            for _attempt in range(5):
                try:
                    ask(client, task)
                    break
                except openai.APIStatusError:
                    continue
    # Then received counts every attempt and answered counts each task once
    stats = mock.stats()
    assert stats["received"] == {"task-a": 1, "task-b": 3, "task-c": 1}
    assert stats["answered"] == {"task-a": 1, "task-b": 1, "task-c": 1}
    assert stats["requests"] == 5
    assert sum(stats["outcomes"].values()) == stats["requests"]
    # And the task key is the text of the LAST user message only
    with make_client(mock) as client:
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "earlier turn"},
                                                 {"role": "assistant", "content": "earlier answer"},
                                                 {"role": "user",
                                                  "content": [{"type": "text", "text": "last "},
                                                              {"type": "text", "text": "turn"}]}])
    assert mock.stats()["answered"]["last turn"] == 1


def test_reset_zeroes_counters_and_forgets_scripts(mock: MockServerProcess) -> None:
    # Given some traffic and a pending script
    with make_client(mock) as client:
        ask(client, "before")
    mock.configure(script={"later": ["500"]})
    # When the server is reset
    mock.reset()
    # Then counters are zero and the script no longer applies
    stats = mock.stats()
    assert stats["requests"] == 0 and stats["received"] == {} and stats["answered"] == {}
    assert stats["max_requests_in_any_60s_window"] == 0
    with make_client(mock) as client:
        assert ask(client, "later").choices[0].finish_reason == "stop"


def test_reset_with_settings_returns_every_setting_to_the_start_and_accepts_revoked_keys(
    start_mock: StartMock,
) -> None:
    # Given a server started with a latency, then changed at runtime and a key revoked
    server = start_mock(latency_ms=5)
    started = server.configure()
    changed = server.configure(p500=0.5, retry_after=0.05, seed=3, hang_s=2, rpm=10,
                               model_map={"a": "b"}, limit_style="none", revoke_keys=["sk-gone"])
    assert changed != started
    # When it is reset without settings, they stay; when reset with settings, they go
    server.reset()
    assert server.configure() == changed
    server.reset(settings=True)
    # Then the config is the one it started with, and the revoked key is served again
    assert server.configure() == started == MockConfig(latency_ms=5).public_dict()
    with make_client(server, api_key="sk-gone") as client:
        assert ask(client, "hi").choices[0].finish_reason == "stop"


def test_record_bodies_keeps_the_last_body_of_each_task_key_as_sent_and_at_most_a_thousand_keys(
    mock: MockServerProcess,
) -> None:
    # Given a server that does not record bodies, and a body with fields the mock does not use
    # itself
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "kept"}], "seed": 7,
            "response_format": {"type": "json_object"}, "max_tokens": 20, "temperature": 0.3,
            "metadata": {"run": "a"}}
    with make_client(mock) as client:
        client.post("/chat/completions", body=body, cast_to=object)
    assert mock.stats()["bodies"] == {}
    # When recording is switched on at runtime and the body is sent twice, the second time with
    # another seed
    mock.configure(record_bodies=True)
    with make_client(mock) as client:
        client.post("/chat/completions", body=body, cast_to=object)
        client.post("/chat/completions", body={**body, "seed": 8}, cast_to=object)
    # Then the last body of that task key is kept, every field as sent
    assert mock.stats()["bodies"] == {"kept": {**body, "seed": 8}}
    # When a thousand other task keys follow (pipelined on one connection)
    payload = b"".join(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t\r\n"
        + f"content-length: {len(chat_body(f'k{i}'))}\r\n\r\n".encode() + chat_body(f"k{i}")
        for i in range(1000)
    )
    sock = socket.create_connection(("127.0.0.1", mock.port), timeout=5)
    with sock, sock.makefile("rb") as stream:
        sock.sendall(payload)
        statuses = [read_http_response(stream)[0] for _ in range(1000)]
    # Then at most a thousand keys are kept: the oldest one is forgotten first
    assert statuses == [200] * 1000
    bodies = mock.stats()["bodies"]
    assert len(bodies) == 1000
    assert "kept" not in bodies
    assert json.dumps(bodies["k999"]).encode() == chat_body("k999")
    # And the same switch exists on the command line
    switched_on = build_arg_parser().parse_args(["--record-bodies"])
    assert config_from_args(switched_on).record_bodies is True


def test_runtime_config_rejects_unknown_settings_and_returns_the_new_config(
    mock: MockServerProcess,
) -> None:
    # Given a running server
    # When a valid and an invalid update are posted
    config = mock.configure(latency_ms=5, p500=0.25, rpm=100)
    # Then the valid one comes back applied and the invalid ones are refused
    assert config["latency_ms"] == 5 and config["p500"] == 0.25 and config["rpm"] == 100
    with pytest.raises(RuntimeError, match="unknown"):
        mock.configure(bogus=1)
    with pytest.raises(RuntimeError, match="sum"):
        mock.configure(p429=0.9, p500=0.9)
    with pytest.raises(RuntimeError, match="outcomes"):
        mock.configure(script={"x": ["explode"]})


# --------------------------------------------------------------------------
# Rate limits
# --------------------------------------------------------------------------


def test_rpm_limit_rejects_excess_requests_and_reports_the_window_stats(
    start_mock: StartMock,
) -> None:
    # Given a server limited to 5 requests per minute
    server = start_mock(rpm=5)
    remaining: list[str] = []
    rejected: list[openai.RateLimitError] = []
    started = time.monotonic()
    with make_client(server) as client:
        # When 8 requests arrive at once
        for i in range(8):
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"r{i}"}]
                )
                remaining.append(raw.headers["x-ratelimit-remaining-requests"])
                assert raw.headers["x-ratelimit-limit-requests"] == "5"
                assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
            except openai.RateLimitError as exc:
                rejected.append(exc)
    # Then the first 5 pass with decreasing remaining counts and 3 are rejected
    assert remaining == ["4", "3", "2", "1", "0"]
    assert len(rejected) == 3
    for rejection in rejected:
        headers = rejection.response.headers
        assert rejection.response.json()["error"]["code"] == "rate_limit_exceeded"
        # The slot frees when the first request leaves the 60 s window
        assert 50 <= float(headers["retry-after"]) <= 60.5
        assert 50_000 <= int(headers["retry-after-ms"]) <= 60_500
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert "tokens" not in " ".join(headers.keys())
    # And the stats report arrivals and accepted requests per window
    stats = server.stats()
    assert stats["limit_rejections"] == 3
    assert stats["outcomes"]["limit"] == 3
    assert stats["max_requests_in_any_60s_window"] == 8
    assert stats["rpm"]["max_accepted_in_any_60s_window"] == 5
    assert stats["rpm"]["limit"] == 5
    assert stats["first_request_at"] <= stats["last_request_at"] <= stats["now"]
    assert stats["last_request_at"] - stats["first_request_at"] < time.monotonic() - started + 1


def test_tpm_limit_counts_prompt_plus_max_tokens_and_rejects_the_overflow(
    start_mock: StartMock,
) -> None:
    # Given a 100 tokens-per-minute budget and requests of 1 prompt token + 40 max_tokens
    server = start_mock(tpm=100)
    outcomes = []
    with make_client(server) as client:
        # When three such requests are sent
        for i in range(3):
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"t{i}"}],
                    max_tokens=40)
                outcomes.append(raw.headers["x-ratelimit-remaining-tokens"])
            except openai.RateLimitError as exc:
                outcomes.append(exc.response.json()["error"]["type"])
    # Then two fit (41 tokens each) and the third is refused as a tokens limit
    assert outcomes == ["59", "18", "tokens"]
    stats = server.stats()
    assert stats["max_tokens_in_any_60s_window"] == 82
    assert stats["tpm"]["limit"] == 100
    assert stats["limit_rejections"] == 1


def send_burst(server: MockServerProcess, prefix: str, count: int, **kwargs: Any) -> list[str]:
    """Send ``count`` requests one after another; 'ok' or the 429's error type for each."""
    outcomes = []
    with make_client(server) as client:
        for i in range(count):
            try:
                ask(client, f"{prefix}{i}", **kwargs)
                outcomes.append("ok")
            except openai.RateLimitError as exc:
                outcomes.append(exc.response.json()["error"]["type"])
    return outcomes


def test_with_a_one_second_window_s_a_rejected_client_is_served_again_after_about_one_second(
    start_mock: StartMock,
) -> None:
    # Given a server (started with --window-s 1) allowing 3 requests per 1 s window
    server = start_mock(rpm=3, window_s=1.0)
    # When 4 requests arrive at once
    with make_client(server) as client:
        for i in range(3):
            ask(client, f"w{i}")
        with pytest.raises(openai.RateLimitError) as caught:
            ask(client, "w3")
        rejected_at = time.monotonic()
        headers = caught.value.response.headers
        # Then the 4th is told to come back within the 1 s window, not after a minute
        retry_s = float(headers["retry-after"])
        assert 0 < retry_s <= 1.0
        assert 0 < int(headers["retry-after-ms"]) <= 1000
        reset = headers["x-ratelimit-reset-requests"]
        assert reset.endswith("ms") or reset == "1s", reset
        # And once that wait is over the next request is accepted
        time.sleep(max(0.0, rejected_at + retry_s + 0.05 - time.monotonic()))
        assert ask(client, "w4").choices[0].finish_reason == "stop"
    stats = server.stats()
    assert stats["window_s"] == 1.0
    assert stats["rpm"]["limit"] == 3
    assert stats["limit_rejections"] == 1
    # And only the 4th arrival of the first window counted as a violation
    assert stats["window_violations"] == 1
    assert stats["token_window_violations"] == 0


def test_window_stats_are_measured_over_window_s_so_bursts_in_separate_windows_do_not_add_up(
    start_mock: StartMock,
) -> None:
    # Given two servers without limits, one with the default 60 s window and one with a 1 s window
    long_window = start_mock()
    short_window = start_mock(window_s=1.0)
    for server in (long_window, short_window):
        # When each gets a burst of 4 requests, a pause longer than 1 s, and another burst of 4
        assert send_burst(server, "a", 4) == ["ok"] * 4
        time.sleep(1.3)
        assert send_burst(server, "b", 4) == ["ok"] * 4
    # Then the 60 s window saw all 8 together, the 1 s window never more than 4
    assert long_window.stats()["max_requests_in_any_60s_window"] == 8
    assert long_window.stats()["rpm"]["max_accepted_in_any_60s_window"] == 8
    stats = short_window.stats()
    assert stats["max_requests_in_any_60s_window"] == 4
    assert stats["rpm"]["max_accepted_in_any_60s_window"] == 4
    one_burst_tokens = stats["max_tokens_in_any_60s_window"]
    assert 0 < one_burst_tokens < long_window.stats()["max_tokens_in_any_60s_window"]
    # And without limits nothing is a violation
    assert stats["window_violations"] == 0 and stats["token_window_violations"] == 0
    # And once the short window has passed, it holds nothing
    assert wait_for(lambda: short_window.stats()["accepted_in_last_window"] == 0, timeout_s=3)
    assert short_window.stats()["accepted_tokens_in_last_window"] == 0
    assert long_window.stats()["accepted_in_last_window"] == 8


def test_window_violations_count_arrivals_beyond_rpm_and_token_violations_requests_beyond_tpm(
    start_mock: StartMock,
) -> None:
    # Given one server limited to 2 requests per window and one to 100 tokens per window
    by_requests = start_mock(rpm=2)
    by_tokens = start_mock(tpm=100)
    # When each gets 5 requests of 41 tokens (1 prompt token + max_tokens 40) at once
    request_outcomes = send_burst(by_requests, "r", 5, max_tokens=40)
    token_outcomes = send_burst(by_tokens, "t", 5, max_tokens=40)
    # Then the rpm server counts the 3 arrivals that found 2 or more already in the window
    assert request_outcomes == ["ok", "ok", "requests", "requests", "requests"]
    stats = by_requests.stats()
    assert stats["window_violations"] == 3
    assert stats["token_window_violations"] == 0
    assert stats["accepted_in_last_window"] == 2
    # And the tpm server counts the 3 requests that would have taken it past 100 tokens
    assert token_outcomes == ["ok", "ok", "tokens", "tokens", "tokens"]
    stats = by_tokens.stats()
    assert stats["token_window_violations"] == 3
    assert stats["window_violations"] == 0
    assert stats["accepted_tokens_in_last_window"] == 82
    # And a reset zeroes them
    by_tokens.reset()
    assert by_tokens.stats()["token_window_violations"] == 0


def test_a_client_that_stays_within_rpm_causes_no_window_violations(start_mock: StartMock) -> None:
    # Given a server allowing 3 requests per 0.5 s
    server = start_mock(rpm=3, window_s=0.5)
    # When a client sends 3 requests, waits out the window, and sends 3 more (twice over)
    outcomes = []
    for round_ in range(3):
        outcomes += send_burst(server, f"polite{round_}-", 3)
        time.sleep(0.6)
    # Then every request was accepted and none counted as a violation
    assert outcomes == ["ok"] * 9
    stats = server.stats()
    assert stats["window_violations"] == 0
    assert stats["limit_rejections"] == 0
    assert stats["max_requests_in_any_60s_window"] == 3


def test_window_s_changes_at_runtime_and_impossible_windows_are_refused(
    mock: MockServerProcess,
) -> None:
    # Given a server allowing one request a minute, whose one request is spent
    mock.configure(rpm=1)
    assert send_burst(mock, "x", 2) == ["ok", "requests"]
    # When the window is shortened to 0.3 s at runtime
    config = mock.configure(window_s=0.3)
    # Then the config says so and, after 0.3 s, the spent slot is free again
    assert config["window_s"] == 0.3
    time.sleep(0.4)
    assert send_burst(mock, "y", 1) == ["ok"]
    assert mock.stats()["window_s"] == 0.3
    # And zero, negative and non-numeric windows are refused, on the wire and in code
    for bad in (0, -1, "1s"):
        with pytest.raises(RuntimeError):
            mock.configure(window_s=bad)
    assert mock.configure()["window_s"] == 0.3
    for bad_value in (0.0, -5.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="window_s"):
            MockConfig(window_s=bad_value)
    # And the command line takes --window-s
    assert config_from_args(build_arg_parser().parse_args(["--window-s", "2.5"])).window_s == 2.5
    assert MockConfig().window_s == 60.0


def test_go_style_durations_match_openai_header_format() -> None:
    # Given / When / Then: the formats OpenAI uses in x-ratelimit-reset-*
    assert format_duration(360) == "6m0s"
    assert format_duration(1) == "1s"
    assert format_duration(0.012) == "12ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(3661.25) == "1h1m1.25s"
    assert format_duration(0) == "0s"
    assert format_duration(-3) == "0s"


# --------------------------------------------------------------------------
# HTTP behaviour and scale
# --------------------------------------------------------------------------


def test_pipelined_chunked_requests_are_answered_in_order_and_connection_close_is_honoured(
    mock: MockServerProcess,
) -> None:
    # Given one connection carrying a chunked chat request and a keep-alive GET,
    # followed by a request with Connection: close, all written in one go
    body = chat_body("chunky")
    chunked = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n"
                       for part in (body[:10], body[10:25], body[25:])) + b"0\r\n\r\n"
    payload = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t\r\n"
        b"transfer-encoding: chunked\r\n\r\n" + chunked
        + b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n"
        + b"GET /_mock/stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", mock.port), timeout=5)
    with sock, sock.makefile("rb") as stream:
        # When it is sent and the responses are read
        sock.sendall(payload)
        first = read_http_response(stream)
        second = read_http_response(stream)
        third = read_http_response(stream)
        rest = stream.read()
    # Then the responses come back in order and the server closes afterwards
    assert first[0] == 200
    assert (json.loads(first[2])["choices"][0]["message"]["content"]
            == "Mock answer to: chunky (images: 0)")
    assert first[1]["connection"] == "keep-alive"
    assert second[0] == 200 and json.loads(second[2])["object"] == "list"
    assert third[0] == 200 and third[1]["connection"] == "close"
    assert rest == b""


def test_one_thousand_concurrent_requests_with_200ms_latency_are_all_answered_in_parallel(
    start_mock: StartMock,
) -> None:
    # Given a server with 200 ms latency and 1,000 open client connections
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 4096 <= hard or hard == resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
        if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
            pytest.skip("not enough file descriptors for 1,000 connections")
    except ImportError:
        pass
    server = start_mock(latency_ms=200)
    count = 1000

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  i: int) -> tuple[int, str]:
        body = chat_body(f"parallel {i}")
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(line.split(":")[1]) for line in lines
                      if line.lower().startswith("content-length:"))
        data = await reader.readexactly(length)
        writer.close()
        return int(lines[0].split()[1]), json.loads(data)["choices"][0]["message"]["content"]

    async def run() -> tuple[list[tuple[int, str]], float]:
        opening = (asyncio.open_connection("127.0.0.1", server.port) for _ in range(count))
        connections = await asyncio.wait_for(asyncio.gather(*opening), 10)
        started = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(*(one(r, w, i) for i, (r, w) in enumerate(connections))), 15
        )
        return results, time.monotonic() - started

    # When every connection sends one request at the same moment
    results, elapsed = asyncio.run(run())
    # Then every request is answered correctly, in parallel rather than one by one
    assert [status for status, _ in results] == [200] * count
    assert sorted(content for _, content in results) == sorted(
        f"Mock answer to: parallel {i} (images: 0)" for i in range(count)
    )
    assert elapsed < 5
    stats = server.stats()
    assert stats["max_in_flight"] >= 900
    assert stats["answered"] == {f"parallel {i}": 1 for i in range(count)}
    assert wait_for(lambda: server.stats()["in_flight"] == 0, timeout_s=2)


def test_async_openai_client_gets_concurrent_answers(start_mock: StartMock) -> None:
    # Given a server with 50 ms latency
    server = start_mock(latency_ms=50, jitter_ms=20)

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0,
                                      timeout=10) as client:
            coros = [client.chat.completions.create(model="gpt-4o-mini",
                                                    messages=[{"role": "user", "content": f"a{i}"}])
                     for i in range(100)]
            answers = await asyncio.wait_for(asyncio.gather(*coros), 20)
        return [a.choices[0].message.content or "" for a in answers]

    # When 100 requests are issued concurrently through AsyncOpenAI
    started = time.monotonic()
    contents = asyncio.run(run())
    # Then all are answered much faster than sequentially (100 x 50 ms = 5 s)
    assert len(contents) == 100 and all(c.startswith("Mock answer to: a") for c in contents)
    assert time.monotonic() - started < 3
    assert server.stats()["max_in_flight"] > 10


def test_the_server_can_run_in_process_on_the_callers_event_loop() -> None:
    # Given an in-process server (for benchmarks that avoid a subprocess)
    async def run() -> tuple[int, dict[str, Any]]:
        async with MockServer(MockConfig(latency_ms=1)) as server:
            async with openai.AsyncOpenAI(base_url=server.base_url, api_key="t", max_retries=0,
                                          timeout=5) as client:
                # When one request is made
                answer = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "inline"}]
                )
            assert answer.choices[0].message.content == "Mock answer to: inline (images: 0)"
            return server.port, server.stats()

    port, stats = asyncio.run(run())
    # Then it answered on a real port and counted the request
    assert port > 0
    assert stats["answered"] == {"inline": 1}


# --------------------------------------------------------------------------
# The helper itself
# --------------------------------------------------------------------------


def test_the_helper_reports_the_ready_url_and_stops_cleanly_on_sigterm() -> None:
    # Given a started helper
    with MockServerProcess() as server:
        # Then it exposes a loopback /v1 base URL and a live pid
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.pid > 0 and server.returncode is None
    # When the context exits (SIGTERM) the process exited with status 0 and was reaped
    assert server.returncode == 0
    assert server.stderr_text == ""


def test_start_inside_the_with_block_replaces_the_default_server_with_the_configured_one() -> None:
    # Given a helper entered without options (which starts a default server)
    with MockServerProcess() as server:
        first_pid = server.pid
        # When start() is called again with options
        server.start(model_map={"m": "n"})
        # Then a new, configured server answers and the first one was reaped
        assert server.pid != first_pid
        with make_client(server) as client:
            assert ask(client, "x", model="m").model == "n"
    assert server.returncode == 0


def test_the_helper_raises_a_clear_error_with_stderr_when_the_server_cannot_start(
    mock: MockServerProcess,
) -> None:
    # Given a port that is already taken by another mock server
    # When a second server is started on it
    with pytest.raises(RuntimeError) as caught:
        MockServerProcess(ready_timeout_s=10).start(port=mock.port)
    # Then the error says so and includes the server's stderr
    message = str(caught.value)
    assert "failed to start" in message
    assert "cannot listen" in message


def test_the_helper_rejects_unknown_options_before_spawning() -> None:
    # Given / When an unknown option or a non-loopback host is requested
    # Then it fails fast without starting a process
    with pytest.raises(TypeError):
        MockServerProcess().start(no_such_option=1)
    with pytest.raises(ValueError):
        MockServerProcess().start(host="0.0.0.0")
    with pytest.raises(ValueError):
        MockServerProcess().start(p500=2)
