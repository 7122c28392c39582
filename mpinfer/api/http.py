"""The openai SDK's HTTP clients, as mpinfer gives them to it: httpx2's client interface over the
aiohttp pool (api/pool.py), and httpx2's own (``--transport httpx``).

The SDK is the reference for what a request looks like (tests/test_wire.py compares api/wire.py's
requests with its own), and its client over httpx2 is the ``--transport httpx`` path; a run on the
default transport sends without it (api/wire.py).

The SDK accepts any ``httpx2.AsyncClient`` and calls only its ``build_request`` and ``send``. The
SDK's own aiohttp client (``openai.DefaultAioHttpClient``) is httpx2's full client over an aiohttp
transport: every request passes httpx2's URL merging, auth flow, redirect loop and response stream,
none of which an API call needs (the SDK puts auth in the headers, it sends absolute URLs, and
mpinfer reads bodies whole). ``AioHttpClient`` keeps the SDK's request and response objects and
drops those layers; redirects, which the SDK's clients follow, aiohttp follows. The pool under it
(session and proxies) is the one api/wire.py sends through.

Failures are raised as the httpx2 errors the SDK turns into ``APITimeoutError`` and
``APIConnectionError``: a connect or read timeout as a timeout, a refused, reset or dropped
connection as a network error.
"""

from __future__ import annotations

import datetime
import ssl
import time
from typing import Any

import aiohttp
import httpx2

from .pool import ACCEPT_ENCODING, UNTIMED, Pool
from .ticket import KEY, Ticket

_AIOHTTP_SETS = frozenset({"host", "content-length"})


class TicketTimeout(httpx2.Timeout):
    """A ticket as the SDK's ``timeout`` option: an ``httpx2.Timeout`` of the ticket's ``seconds``
    (what the SDK reads, and sends as x-stainless-read-timeout), carrying the ticket down to the
    HTTP client (api/ticket.py)."""

    def __init__(self, ticket: Ticket) -> None:
        # Not super().__init__(): one length for every phase, set directly (a request at a time).
        self.connect = self.read = self.write = self.pool = ticket.seconds
        self.ticket = ticket


class _NoTransport(httpx2.AsyncBaseTransport):
    """httpx2.AsyncClient builds a connection pool unless given a transport; every request goes
    through aiohttp instead, so this one is never called."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        raise httpx2.UnsupportedProtocol("mpinfer's aiohttp client sends its requests itself")


class _SdkRequest(httpx2.Request):
    """The request the SDK builds, without what httpx2.Request adds for its own transports.

    ``httpx2.Request`` normalizes the headers twice over, adds Host and Content-Length (aiohttp sets
    both, and they are dropped again before sending) and streams the body into itself, all of it
    work a worker pays for on every request (bench/README.md). The SDK's headers are kept as it gave
    them, the body as bytes, read already.
    """

    def __init__(self, method: str, url: httpx2.URL, headers: Any, content: bytes,
                 extensions: dict[str, Any]) -> None:
        # Not super().__init__(): everything it would set is set here, for a body that is bytes.
        self.method = method.upper()
        self.url = url
        self.headers = httpx2.Headers(headers)
        self.extensions = extensions
        self.stream = httpx2.ByteStream(content)
        self._content = content


class _ReadResponse(httpx2.Response):
    """An answer aiohttp has read whole, with no content encoding: httpx2.Response would stream the
    bytes it is given through its decoder chain into itself, for nothing (bench/README.md)."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], content: bytes,
                 request: httpx2.Request, extensions: dict[str, Any]) -> None:
        super().__init__(status, headers=headers, stream=httpx2.ByteStream(content),
                         request=request, extensions=extensions)
        self._content = content  # as read() leaves it: the body, the stream consumed and closed
        self.is_stream_consumed = True
        self.is_closed = True


class AioHttpClient(httpx2.AsyncClient):
    """An ``httpx2.AsyncClient`` for the SDK that sends through an aiohttp connection pool.

    A request with a ticket (``api.ticket``: the SDK's timeout option) is sent by its protocol:
    its ``leaving`` as it goes, its ``answered`` as soon as the answer's status and headers are
    read. The aiohttp session is made on the first request, inside the event loop that runs the
    requests.
    """

    def __init__(self, *, timeout: float, connections: int,
                 verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(timeout=timeout, transport=_NoTransport(), trust_env=False)
        self._pool = Pool(connections, verify)
        self._urls: dict[str, httpx2.URL] = {}  # the few URLs a run sends to, parsed once
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    def build_request(self, method: str, url: httpx2.URL | str, *, content: Any = None,
                      data: Any = None, files: Any = None, json: Any = None, params: Any = None,
                      headers: Any = None, cookies: Any = None,
                      timeout: Any = httpx2.USE_CLIENT_DEFAULT,
                      extensions: Any = None) -> httpx2.Request:
        """The SDK's request, built without httpx2's per-request work where nothing needs it.

        A request with a form, files, JSON or cookies goes through httpx2 as it would; the SDK's own
        (a body of bytes) becomes a plain request with the ticket in its extensions."""
        if data is not None or files is not None or json is not None or cookies is not None:
            return super().build_request(method, url, content=content, data=data, files=files,
                                         json=json, params=params, headers=headers, cookies=cookies,
                                         timeout=timeout, extensions=extensions)
        if isinstance(url, str):
            parsed = self._urls.get(url)
            if parsed is None:  # the SDK sends absolute URLs (its own base URL already joined)
                parsed = self._urls[url] = httpx2.URL(url)
            url = parsed
        if params:  # Azure's api-version
            url = url.copy_merge_params(params)
        if isinstance(timeout, TicketTimeout):
            # The ticket's deadline times the whole request (_client_timeout): no timeout extension.
            ticket = timeout.ticket
            extensions = {**extensions, KEY: ticket} if extensions else {KEY: ticket}
        else:
            extensions = dict(extensions or {})
        if "timeout" not in extensions and KEY not in extensions:
            chosen = (self.timeout if timeout is httpx2.USE_CLIENT_DEFAULT
                      else httpx2.Timeout(timeout))
            extensions["timeout"] = chosen.as_dict()
        if content is None or isinstance(content, bytes):
            return _SdkRequest(method, url, headers, content or b"", extensions)
        return httpx2.Request(method, url, content=content, headers=headers, extensions=extensions)

    async def send(self, request: httpx2.Request, *, stream: bool = False,
                   auth: Any = httpx2.USE_CLIENT_DEFAULT,
                   follow_redirects: Any = httpx2.USE_CLIENT_DEFAULT) -> httpx2.Response:
        """Send ``request`` and read the whole body
        (``stream`` too: the SDK's streaming calls are not used)."""
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        body = await request.aread()
        # Host and Content-Length are aiohttp's to set:
        # a redirect to another host must not carry the old Host.
        headers = [(name, value) for name, value in request.headers.multi_items()
                   if name not in _AIOHTTP_SETS]
        if "accept-encoding" not in request.headers:
            headers.append(ACCEPT_ENCODING)  # (the body is handed to httpx2 undecoded)
        return await self._exchange(request, body, headers, request.extensions.get(KEY))

    async def _exchange(self, request: httpx2.Request, body: bytes, headers: list[tuple[str, str]],
                        ticket: Ticket | None) -> httpx2.Response:
        """Send the request through the aiohttp session and read its answer whole.

        With a ticket, the ticket is told as the request leaves, and hears the answer's status and
        headers before the SDK reads them.
        """
        if ticket is not None:
            await ticket.leaving()
        started = time.perf_counter()
        try:
            answer = await self._pool.exchange(
                request.method, str(request.url), headers, body or None, decompress=False,
                timeout=self._client_timeout(request, ticket),
                server_hostname=request.extensions.get("sni_hostname"))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _http_error(exc, request) from exc
        status, raw_headers, reason, content = (answer.status, answer.raw_headers, answer.reason,
                                                answer.content)
        encoded = "Content-Encoding" in answer.headers
        answer_headers = answer.headers
        if ticket is not None:
            await ticket.answered(status, answer_headers)
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if reason:
            extensions["reason_phrase"] = reason.encode()
        response: httpx2.Response
        if encoded:  # httpx2 decodes it, as it would have from its own transport
            response = httpx2.Response(status, headers=list(raw_headers), content=content,
                                       request=request, extensions=extensions)
        else:
            response = _ReadResponse(status, list(raw_headers), content, request, extensions)
        # The elapsed time, as httpx2 sets it
        response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
        return response

    def _client_timeout(self, request: httpx2.Request,
                        ticket: Ticket | None) -> aiohttp.ClientTimeout:
        if ticket is not None and ticket.deadline is not None:
            # A deadline on the whole request (api.client.complete) ends it before any of these
            # could: each is as long as the whole, and aiohttp's per-read timer would be set again
            # at every read for nothing.
            return UNTIMED
        # (A ticket outside complete, with no deadline, is timed per phase as its Timeout says.)
        given = request.extensions.get("timeout") or (
            dict.fromkeys(("connect", "read", "pool"), ticket.seconds) if ticket else {})
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            # As httpx2 means them: connect is the TCP and TLS handshake, read the longest gap
            # between reads, pool the wait for a free connection.
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(sock_connect=key[0],
                                                                  sock_read=key[1], connect=key[2])
        return timeout

    async def aclose(self) -> None:
        """Close the aiohttp pool (its session opened on the first request) and then httpx2's
        client."""
        await self._pool.close()
        await super().aclose()


class HttpxClient(httpx2.AsyncClient):
    """httpx2's own client, as the SDK's ``DefaultAsyncHttpxClient`` makes it (``--transport
    httpx``), with the tickets' protocol: ``leaving`` as a request is sent, ``answered`` (a response
    hook) as soon as its status and headers arrive, before its body is read."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(follow_redirects=True, event_hooks={"response": [_answered]}, **settings)

    def build_request(self, method: str, url: httpx2.URL | str, *, content: Any = None,
                      data: Any = None, files: Any = None, json: Any = None, params: Any = None,
                      headers: Any = None, cookies: Any = None,
                      timeout: Any = httpx2.USE_CLIENT_DEFAULT,
                      extensions: Any = None) -> httpx2.Request:
        """httpx2's request, with the ticket kept in its extensions beside its timeout."""
        if isinstance(timeout, TicketTimeout):
            # httpx2 would read it as a Timeout and drop the rest: the ticket is kept beside its
            # timeout (which httpx2 then leaves as it is, with no copy of its own).
            ticketed = {KEY: timeout.ticket, "timeout": timeout.as_dict()}
            extensions = {**extensions, **ticketed} if extensions else ticketed
        return super().build_request(method, url, content=content, data=data, files=files,
                                     json=json, params=params, headers=headers, cookies=cookies,
                                     timeout=timeout, extensions=extensions)

    async def send(self, request: httpx2.Request, *, stream: bool = False,
                   auth: Any = httpx2.USE_CLIENT_DEFAULT,
                   follow_redirects: Any = httpx2.USE_CLIENT_DEFAULT) -> httpx2.Response:
        """Send ``request`` through httpx2, its ticket told as it leaves."""
        ticket: Ticket | None = request.extensions.get(KEY)
        if ticket is not None:
            await ticket.leaving()
        return await super().send(request, stream=stream, auth=auth,
                                  follow_redirects=follow_redirects)


async def _answered(response: httpx2.Response) -> None:
    ticket: Ticket | None = response.request.extensions.get(KEY)
    if ticket is not None:
        await ticket.answered(response.status_code, response.headers)


def _http_error(exc: BaseException, request: httpx2.Request) -> httpx2.TransportError:
    """The httpx2 error for an aiohttp (or socket) failure,
    so that the SDK classifies it as it would its own."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx2.ConnectTimeout(message, request=request)
    if isinstance(exc, TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        return httpx2.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return httpx2.ProxyError(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(message, request=request)
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return httpx2.UnsupportedProtocol(message, request=request)
    # Reset, dropped, a malformed or cut-short answer
    return httpx2.ReadError(message, request=request)
