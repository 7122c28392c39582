"""mpinfer's HTTP client under the SDK (api/http.py) against raw HTTP servers on 127.0.0.1.

They do what the mock does not: compress the answer, refuse the connection, close it without an
answer, record exactly what arrived.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from helpers import Handler, keep_alive, response

from mpinfer.api.answer import Answer
from mpinfer.api.client import Transport, complete, make_client
from mpinfer.api.failures import CallError, classify
from mpinfer.api.ticket import Ticket
from mpinfer.errors import ConfigError

KEY = "sk-test-0000000000000000fake4hq2"
REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}


async def _exchange(handler: Handler, timeout: float = 10.0,
                    base_url: Callable[[int], str] = lambda port: f"http://127.0.0.1:{port}/v1",
                    ) -> tuple[Answer | BaseException, list[bytes]]:
    """One request through the package's client to a server on 127.0.0.1 answering with ``handler``.

    Returns the answer (or the error) and the request heads the server saw. ``base_url`` makes the
    client's base URL from the server's port (and may point the environment's proxy at it).
    """
    heads: list[bytes] = []
    server = await asyncio.start_server(keep_alive(handler, heads), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = make_client(KEY, base_url(port), timeout)
    try:
        return await complete(client, REQUEST, Ticket(timeout)), heads
    except Exception as exc:
        return exc, heads
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def _ok(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(response(orjson.dumps(ANSWER)))
    await writer.drain()


def test_a_gzip_compressed_answer_is_decoded() -> None:
    # Given a server (a CDN in front of the API, say) that compresses its answers
    async def gzipped(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(response(gzip.compress(orjson.dumps(ANSWER)), "Content-Encoding: gzip"))
        await writer.drain()

    # When a request is sent
    answer, heads = asyncio.run(_exchange(gzipped))
    # Then the client offered gzip and read the answer and usage out of the compressed body
    assert isinstance(answer, Answer), answer
    assert b"accept-encoding: gzip, deflate" in heads[0].lower()
    assert (answer.content, answer.model, answer.total_tokens) == ("hi there",
                                                                   "gpt-4o-mini-2024-07-18", 11)


def test_the_request_is_the_sdks_own_with_its_auth_and_headers() -> None:
    # Given a server that records what arrives
    # When a request is sent
    answer, heads = asyncio.run(_exchange(_ok))
    # Then it went to the base URL's chat path, with the SDK's key header, user agent and retry
    # count
    assert isinstance(answer, Answer), answer
    head = heads[0].decode().lower()
    assert "x-stainless-async: async:asyncio" in head
    assert head.startswith("post /v1/chat/completions http/1.1\r\n")
    assert f"authorization: bearer {KEY.lower()}" in head
    assert "user-agent: asyncopenai/python" in head
    assert "x-stainless-retry-count: 0" in head and "content-type: application/json" in head


def test_the_sdks_typed_and_raw_calls_read_the_request_and_answer_as_httpx2_gives_them() -> None:
    # Given a server that answers with a request id, and the client's own request and response
    # objects
    async def ok(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(response(orjson.dumps(ANSWER), "X-Request-Id: req-42"))
        await writer.drain()

    async def raw_call() -> tuple[object, ...]:
        server = await asyncio.start_server(keep_alive(ok, limit=1), "127.0.0.1", 0)
        client = make_client(KEY, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", 10.0)
        try:
            # When the SDK's typed method is called through its raw-response API
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
            completion = raw.parse()
            request = raw.http_request
            return (completion.choices[0].message.content,
                    completion.usage.total_tokens if completion.usage else 0,
                    raw.headers.get("x-request-id"), raw.http_response.is_closed, raw.status_code,
                    orjson.loads(request.content)["messages"][0]["content"], request.method,
                    request.headers.get("authorization"))
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    # Then the SDK parsed the answer, and the request it built carries its body, method and key
    assert asyncio.run(raw_call()) == ("hi there", 11, "req-42", True, 200, "hello", "POST",
                                       f"Bearer {KEY}")


def test_a_redirect_is_followed_with_the_same_request_as_the_sdks_clients_follow_it() -> None:
    # Given a gateway that moves the path with a 307 (method and body kept), then answers there
    bodies: list[bytes] = []

    async def moved(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        bodies.append(body)
        if head.startswith(b"POST /v1/chat/completions "):
            writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /v2/chat/completions\r\n"
                         b"Content-Length: 0\r\n\r\n")
        else:
            writer.write(response(orjson.dumps(ANSWER)))
        await writer.drain()

    # When a request is sent
    answer, heads = asyncio.run(_exchange(moved))
    # Then the answer came from the new path, asked with the same body and key
    assert isinstance(answer, Answer) and answer.content == "hi there", answer
    assert [h.split(b" ")[1] for h in heads] == [b"/v1/chat/completions", b"/v2/chat/completions"]
    assert bodies[0] == bodies[1] and orjson.loads(bodies[1])["messages"] == REQUEST["messages"]
    assert f"authorization: bearer {KEY.lower()}" in heads[1].decode().lower()


def test_a_redirect_to_another_host_does_not_carry_the_key_there() -> None:
    # Given a gateway that redirects to another origin (another port), where a second server answers
    elsewhere: list[bytes] = []

    async def go() -> tuple[Answer | BaseException, list[bytes]]:
        second = await asyncio.start_server(keep_alive(_ok, elsewhere, limit=1), "127.0.0.1", 0)
        port = second.sockets[0].getsockname()[1]

        async def moved(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
            writer.write("HTTP/1.1 307 Temporary Redirect\r\n"
                         f"Location: http://localhost:{port}/v1/chat/completions"
                         "\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()

        try:
            return await _exchange(moved)
        finally:
            second.close()

    # When a request is sent
    answer, _ = asyncio.run(go())
    # Then the other host was asked under its own name and without the API key
    assert isinstance(answer, Answer), answer
    head = elsewhere[0].decode().lower()
    assert "\r\nhost: localhost:" in head
    assert "authorization" not in head
    assert KEY.lower() not in head


def test_a_refused_connection_is_a_connection_error_not_a_timeout() -> None:
    # Given a port nothing listens on
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def go() -> BaseException | Answer:
        client = make_client(KEY, f"http://127.0.0.1:{port}/v1", 5.0)
        try:
            return await complete(client, REQUEST, Ticket(5.0))
        except Exception as exc:
            return exc
        finally:
            await client.close()

    # When a request is sent there
    outcome = asyncio.run(go())
    # Then it is a retryable connection error that names the refusal
    assert isinstance(outcome, BaseException), outcome
    error = classify(outcome)
    assert (error.error_type, error.verdict.value) == ("connection", "retry"), error
    assert "ConnectError" in error.message or "refused" in error.message.lower(), error.message


def test_a_connection_closed_without_an_answer_is_a_connection_error_not_a_timeout() -> None:
    # Given a server that reads the request and hangs up (a proxy restarting, a load balancer's idle
    # cut)
    async def hang_up(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.close()

    # When a request is sent
    outcome, heads = asyncio.run(_exchange(hang_up))
    # Then it reached the server, and came back as a dropped connection: retried, and not a timeout
    # (which would slow the run down as an overloaded server does)
    assert len(heads) == 1
    assert isinstance(outcome, BaseException), outcome
    error: CallError = classify(outcome)
    assert (error.error_type, error.verdict.value) == ("connection", "retry"), error
    assert "ServerDisconnected" in error.message, error.message


def test_a_server_that_never_answers_is_a_timeout() -> None:
    # Given a server that reads the request and then says nothing
    async def silent(_head: bytes, _body: bytes, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    # When a request with a 1 s timeout is sent
    outcome, _ = asyncio.run(_exchange(silent, timeout=1.0))
    # Then it times out, as a timeout
    assert isinstance(outcome, BaseException), outcome
    assert classify(outcome).error_type == "timeout"


LOGIN = "Basic " + base64.b64encode(b"mpuser:s3cret").decode()


def _via_proxy(monkeypatch: pytest.MonkeyPatch, scheme: str) -> Callable[[int], str]:
    """A base URL only a proxy can reach, {SCHEME}_PROXY (with a login) naming the test's server."""
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    def base_url(port: int) -> str:
        monkeypatch.setenv(f"{scheme.upper()}_PROXY", f"http://mpuser:s3cret@127.0.0.1:{port}")
        return f"{scheme}://api.mpinfer-test.invalid/v1"

    return base_url


def _fields(head: str) -> dict[str, str]:
    return {name.lower(): value for name, value in
            (line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)}


def test_the_environments_http_proxy_is_used_with_its_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given HTTP_PROXY (with a login) naming a proxy on 127.0.0.1, and an API host only the proxy
    # can reach
    # When a request is sent
    answer, heads = asyncio.run(_exchange(_ok, base_url=_via_proxy(monkeypatch, "http")))
    # Then it went to the proxy, in the absolute form, with the proxy's login, and its answer was
    # read
    assert isinstance(answer, Answer) and answer.content == "hi there", answer
    head = heads[0].decode()
    assert head.startswith(
        "POST http://api.mpinfer-test.invalid/v1/chat/completions HTTP/1.1\r\n"), head
    assert _fields(head)["proxy-authorization"] == LOGIN


def test_an_https_api_is_tunnelled_through_the_proxy_with_its_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given HTTPS_PROXY (with a login) naming a proxy on 127.0.0.1 that refuses the tunnel, and an
    # https API
    async def refuse(_head: bytes, _body: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    # When a request is sent
    outcome, heads = asyncio.run(_exchange(refuse, base_url=_via_proxy(monkeypatch, "https")))
    # Then the proxy was asked for a tunnel to the API's host, with the login; its refusal is a
    # retryable connection error (a proxy restarting, say), never an answer
    head = heads[0].decode()
    assert head.startswith("CONNECT api.mpinfer-test.invalid:443 HTTP/1.1\r\n"), head
    assert _fields(head)["proxy-authorization"] == LOGIN
    assert isinstance(outcome, BaseException), outcome
    error = classify(outcome)
    assert error.error_type == "connection" and "s3cret" not in error.message, error


def test_no_proxy_sends_straight_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given HTTP_PROXY naming a port nothing listens on, and NO_PROXY naming the API's host
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    # When a request is sent to the host
    answer, heads = asyncio.run(_exchange(_ok))
    # Then it went straight there (the request line is the path alone)
    assert isinstance(answer, Answer), answer
    assert heads[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")


def test_a_socks_proxy_is_refused_with_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given ALL_PROXY naming a SOCKS proxy, which aiohttp cannot reach
    monkeypatch.setenv("ALL_PROXY", "socks5://user:pw@127.0.0.1:1080")
    # When the client is made
    # Then it says so, without the proxy's password, and names the transport that can
    with pytest.raises(ConfigError, match="--transport httpx") as caught:
        make_client(KEY, "http://127.0.0.1:9/v1", 5.0)
    assert "pw" not in str(caught.value)


class _Noting(Ticket):
    """A ticket that notes what it was told."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.told: list[str] = []

    async def leaving(self) -> None:
        self.told.append("leaving")

    async def answered(self, status: int, headers: Any) -> None:
        self.told.append(f"answered {status}")


async def _ticketed(transport: Transport,
                    tickets: list[Ticket]) -> tuple[list[Answer], list[bytes]]:
    """Each ticket's request, one after another, through a client on ``transport`` to a server that
    answers each; what complete returned, and the request heads the server saw."""
    heads: list[bytes] = []
    server = await asyncio.start_server(keep_alive(_ok, heads), "127.0.0.1", 0)
    client = make_client(KEY, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", 5.0,
                         transport=transport)
    try:
        return [await complete(client, REQUEST, ticket) for ticket in tickets], heads
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("transport", list(Transport))
def test_a_ticket_goes_down_to_the_client_but_never_reaches_the_server(
        transport: Transport) -> None:
    # Given a request's ticket of 5 s
    ticket = _Noting(5.0)
    # When its request is sent
    answers, heads = asyncio.run(_ticketed(transport, [ticket]))
    # Then the client told it as the request left and as the answer came, and the server saw the
    # request as the SDK sends any: its read timeout, and no trace of the ticket
    assert len(answers) == 1 and isinstance(answers[0], Answer), answers
    assert ticket.told == ["leaving", "answered 200"]
    assert len(heads) == 1
    head = heads[0].decode().lower()
    assert "x-stainless-read-timeout: 5.0\r\n" in head
    assert "ticket" not in head and "mpinfer" not in head


