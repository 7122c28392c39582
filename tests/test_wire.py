"""Requests sent without the SDK (api/wire.py) against the SDK's own, on a raw server on 127.0.0.1.

The SDK is the reference: for the same settings, what arrives from ``WireClient`` is what arrives
from the SDK's own call (method, URL with its query, headers, body), and every failure it reads
is classified as the SDK's error for the same answer is.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from helpers import Handler, keep_alive, response

from mpinfer.api.answer import Answer
from mpinfer.api.client import complete, make_client
from mpinfer.api.failures import CallError, classify
from mpinfer.api.messages import ImageEncoder, Request, build_body_request, build_request
from mpinfer.api.responses import ApiPath
from mpinfer.api.ticket import Ticket
from mpinfer.api.wire import WireClient
from mpinfer.demo import png_bytes
from mpinfer.inputs.tasks import Task

KEY = "sk-test-0000000000000000fakew1r3"
TIMEOUT = 5.0
# Set by the HTTP client, not the SDK (the SDK's own call goes through httpx2, ours through
# aiohttp), or different on every request and attempt: left out of the comparison.
NOT_COMPARED = frozenset({"host", "content-length", "connection", "accept-encoding",
                          "x-stainless-retry-count", "x-stainless-read-timeout"})
CHAT = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
RESPONSE = {"id": "r", "object": "response", "created_at": 1, "model": "gpt-4o-mini",
            "status": "completed", "output": [], "parallel_tool_calls": False,
            "tool_choice": "auto", "tools": [],
            "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}}
EMBEDDING = {"object": "list", "model": "text-embedding-3-small",
             "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
             "usage": {"prompt_tokens": 2, "total_tokens": 2}}


class Arrived:
    """A request as it reached the server: method, target (path and query), headers, body."""

    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode().split("\r\n")
        self.method, self.target, _ = lines[0].split(" ")
        self.headers = {name.lower(): value for name, value in
                        (line.split(": ", 1) for line in lines[1:] if ": " in line)}
        self.body = orjson.loads(body)

    def compared(self) -> tuple[str, str, dict[str, str], Any]:
        """What must be the same whoever sent it."""
        headers = {k: v for k, v in self.headers.items() if k not in NOT_COMPARED}
        return self.method, self.target, headers, self.body


async def _recorded(send: Callable[[str], Awaitable[object]], answer: dict[str, Any],
                    root: str = "/v1") -> Arrived:
    """The one request ``send`` (given the server's base URL) made to a server answering
    ``answer``."""
    arrived: list[Arrived] = []

    async def record(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        arrived.append(Arrived(head, body))
        writer.write(response(orjson.dumps(answer)))
        await writer.drain()

    server = await asyncio.start_server(keep_alive(record), "127.0.0.1", 0)
    try:
        await send(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}{root}")
    finally:
        server.close()
        await server.wait_closed()
    assert len(arrived) == 1
    return arrived[0]


async def _by_wire(base: str, request: Request, azure: tuple[str, str] | None = None) -> object:
    client = WireClient(KEY, base, TIMEOUT, azure=azure)
    try:
        return await client.complete(request.kwargs, Ticket(TIMEOUT), request.path)
    finally:
        await client.close()


def _sdk(base: str, azure: tuple[str, str] | None) -> openai.AsyncOpenAI:
    """The SDK's own client (its own httpx2 client) for the same settings."""
    if azure is None:
        return openai.AsyncOpenAI(api_key=KEY, base_url=base, max_retries=0, timeout=TIMEOUT)
    return openai.AsyncAzureOpenAI(api_key=KEY, azure_endpoint=base, azure_deployment=azure[0],
                                   api_version=azure[1], max_retries=0, timeout=TIMEOUT)


async def _by_sdk(base: str, request: Request, azure: tuple[str, str] | None = None) -> object:
    """The request sent by the SDK's own typed call for it."""
    client = _sdk(base, azure)
    kwargs = request.kwargs
    try:
        if request.path is ApiPath.CHAT:
            return await client.chat.completions.create(**kwargs)
        if request.path is ApiPath.RESPONSES:
            return await client.responses.create(**kwargs)
        return await client.embeddings.create(**kwargs)
    finally:
        await client.close()


def _chat(tmp_path: Path) -> Request:
    """A task with a text and an image, a system prompt, settings and extra_body, as built."""
    (tmp_path / "a.png").write_bytes(png_bytes(8, 8, (1, 2, 3), (4, 5, 6)))
    task = Task(id="a", prompt="describe", images=("a.png",), max_tokens=7)
    return build_request(task, ImageEncoder(tmp_path), model="gpt-4o-mini",
                         system_prompt="be brief", temperature=0.0, extra_body={"top_k": 3})


def _same_on_the_wire(request: Request, answer: dict[str, Any],
                      azure: tuple[str, str] | None = None) -> tuple[Arrived, Arrived]:
    root = "" if azure else "/v1"
    ours = asyncio.run(_recorded(lambda base: _by_wire(base, request, azure), answer, root))
    sdks = asyncio.run(_recorded(lambda base: _by_sdk(base, request, azure), answer, root))
    return ours, sdks


def test_a_chat_request_is_the_sdks_own_on_the_wire(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a chat request with an image, settings and extra_body, and the organization and project
    # the SDK reads from the environment
    monkeypatch.setenv("OPENAI_ORG_ID", "org-wire")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-wire")
    request = _chat(tmp_path)
    # When it is sent without the SDK, and by the SDK's own call
    ours, sdks = _same_on_the_wire(request, CHAT)
    # Then the same method, URL, headers and body arrived
    assert ours.compared() == sdks.compared()
    assert ours.target == "/v1/chat/completions" and ours.body["top_k"] == 3
    assert ours.headers["authorization"] == f"Bearer {KEY}"
    assert ours.headers["openai-organization"] == "org-wire"
    assert ours.headers["accept-encoding"] == "gzip, deflate"


def test_an_azure_deployments_request_is_the_sdks_own_on_the_wire(tmp_path: Path) -> None:
    # Given an Azure deployment and its api-version
    azure = ("gpt4o-east", "2024-10-21")
    # When a chat request is sent without the SDK, and by the SDK's Azure client
    ours, sdks = _same_on_the_wire(_chat(tmp_path), CHAT, azure)
    # Then both went to the deployment's path with the api-version query and the api-key header
    assert ours.compared() == sdks.compared()
    assert ours.target == "/openai/deployments/gpt4o-east/chat/completions?api-version=2024-10-21"
    assert ours.headers["api-key"] == KEY and "authorization" not in ours.headers


def test_a_responses_api_request_is_the_sdks_own_on_the_wire(tmp_path: Path) -> None:
    # Given the chat request as a Responses API request
    request = _chat(tmp_path).as_responses()
    # When it is sent without the SDK and by the SDK, to OpenAI and to an Azure resource
    plain = _same_on_the_wire(request, RESPONSE)
    azure = _same_on_the_wire(request, RESPONSE, ("gpt4o-east", "2024-10-21"))
    # Then the same arrived (Azure's under /openai, not the deployment: the SDK's routing)
    assert plain[0].compared() == plain[1].compared()
    assert azure[0].compared() == azure[1].compared()
    assert (plain[0].target, azure[0].target) == ("/v1/responses",
                                                  "/openai/responses?api-version=2024-10-21")


def test_an_embeddings_request_is_the_sdks_own_on_the_wire() -> None:
    # Given an embeddings body (a Batch API line's), with its encoding format
    body = {"model": "text-embedding-3-small", "input": "two words", "encoding_format": "float"}
    request = build_body_request(body, path=ApiPath.EMBEDDINGS)
    # When it is sent without the SDK and by the SDK, to OpenAI and to an Azure deployment
    plain = _same_on_the_wire(request, EMBEDDING)
    azure = _same_on_the_wire(request, EMBEDDING, ("embed-east", "2024-10-21"))
    # Then the same arrived
    assert plain[0].compared() == plain[1].compared()
    assert azure[0].compared() == azure[1].compared()
    assert plain[0].target == "/v1/embeddings"


# --- failures: classified as the SDK's ----------------------------------------------------------

NOW = 1_700_000_000.0
ERROR = {"error": {"message": "slow down", "type": "requests", "param": None,
                   "code": "rate_limit_exceeded"}}
FILTERED = {"error": {"message": "filtered", "type": None, "param": "prompt",
                      "code": "content_filter", "status": 400,
                      "innererror": {"code": "ResponsibleAIPolicyViolation",
                                     "content_filter_result": {"hate": {"filtered": True,
                                                                         "severity": "high"}}}}}
ANSWERS: dict[str, bytes] = {
    "500": b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n",
    "429": b"HTTP/1.1 429 Too Many Requests\r\nretry-after-ms: 1500\r\n"
           b"x-ratelimit-remaining-requests: 0\r\nContent-Type: application/json\r\n",
    "503": f"HTTP/1.1 503 Service Unavailable\r\nRetry-After: "
           f"{email.utils.formatdate(NOW + 30, usegmt=True)}\r\n".encode(),
    "quota": b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n",
    "401": b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n",
    "filter": b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n",
    "404": b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n",
    "413": b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\n",
    "200": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n",
}
BODIES: dict[str, bytes] = {
    "500": orjson.dumps({"error": {"message": "boom", "type": "server_error", "code": None}}),
    "429": orjson.dumps(ERROR),
    "503": b"upstream down",
    "quota": orjson.dumps({"error": {"message": "no quota", "code": "insufficient_quota"}}),
    "401": orjson.dumps({"error": {"message": "Incorrect API key provided", "code": 401}}),
    "filter": orjson.dumps(FILTERED),
    "404": orjson.dumps({"error": {"message": "no such model", "code": "model_not_found"}}),
    "413": b"request entity too large",
    "200": b'{"id": "chatcmpl-broken", "choices": [',
}


async def _scripted(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
    case = orjson.loads(body)["messages"][0]["content"]
    if case == "drop":
        writer.close()
        return
    if case == "gzip":
        writer.write(response(gzip.compress(orjson.dumps(CHAT)), "Content-Encoding: gzip"))
    else:
        writer.write(ANSWERS[case] + f"Content-Length: {len(BODIES[case])}\r\n\r\n".encode()
                     + BODIES[case])
    await writer.drain()


async def _both(case: str, handler: Handler = _scripted,
                port: int | None = None) -> tuple[object, object]:
    """The outcome (an Answer or the error raised) of ``case`` sent without the SDK, and through
    the SDK's ``post`` (api/client.py's ``complete``, the reference)."""
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": case}]}
    server = None
    if port is None:
        server = await asyncio.start_server(keep_alive(handler), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}/v1"
    wire, sdk = WireClient(KEY, base, TIMEOUT), make_client(KEY, base, TIMEOUT)
    outcomes: list[object] = []
    try:
        for send in (lambda: wire.complete(request, Ticket(TIMEOUT)),
                     lambda: complete(sdk, request, Ticket(TIMEOUT))):
            try:
                outcomes.append(await send())
            except Exception as exc:
                outcomes.append(exc)
    finally:
        await wire.close()
        await sdk.close()
        if server is not None:
            server.close()
            await server.wait_closed()
    return outcomes[0], outcomes[1]


def _classified(outcome: object) -> CallError:
    assert isinstance(outcome, Exception), outcome
    return classify(outcome, wall=NOW)


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_a_failed_answer_is_classified_as_the_sdks_error_for_it(case: str) -> None:
    # Given a server answering with a failure (status, headers, body), or a 200 that is not JSON
    # When the request is sent without the SDK and through it
    ours, sdks = asyncio.run(_both(case))
    # Then both failed, and alike: the same kind, status, message, verdict, wait and body
    assert _classified(ours) == _classified(sdks), (ours, sdks)


def test_a_refused_or_dropped_connection_is_a_connection_error_as_through_the_sdk() -> None:
    # Given a port nothing listens on, and a server that hangs up without an answer
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    # When a request is sent to each, without the SDK and through it
    refused = asyncio.run(_both("refused", port=dead))
    dropped = asyncio.run(_both("drop"))
    # Then each is the same retryable connection error, naming what happened
    for ours, sdks in (refused, dropped):
        assert _classified(ours) == _classified(sdks), (ours, sdks)
        assert _classified(ours).error_type == "connection"
    assert "ServerDisconnected" in _classified(dropped[0]).message


def test_a_server_that_says_nothing_is_a_timeout_as_through_the_sdk() -> None:
    # Given a server that reads the request and never answers
    async def silent(_head: bytes, _body: bytes, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3)

    async def go() -> object:
        server = await asyncio.start_server(keep_alive(silent), "127.0.0.1", 0)
        client = WireClient(KEY, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", 0.5)
        try:
            return await client.complete({"model": "m", "messages": []}, Ticket(0.5))
        except Exception as exc:
            return exc
        finally:
            await client.close()
            server.close()

    # When a request with a 0.5 s deadline is sent
    outcome = asyncio.run(go())
    # Then it is a retryable timeout
    error = _classified(outcome)
    assert (error.error_type, error.verdict.value) == ("timeout", "retry")


def test_a_compressed_answer_is_read_with_its_headers_as_the_sdk_gives_them() -> None:
    # Given a server that compresses its answer
    # When the request is sent without the SDK and through it
    ours, sdks = asyncio.run(_both("gzip"))
    # Then both read the same answer, and the same headers (names in lower case)
    assert isinstance(ours, Answer) and isinstance(sdks, Answer), (ours, sdks)
    assert (ours.content, ours.total_tokens) == (sdks.content, sdks.total_tokens) == ("hi", 4)
    assert ours.headers == sdks.headers and ours.headers["content-encoding"] == "gzip"
