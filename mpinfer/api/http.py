"""The HTTP client under the openai SDK: httpx2's client interface over one aiohttp session, and nothing between.

The SDK accepts any ``httpx2.AsyncClient`` and calls only its ``build_request`` and ``send``. The SDK's own
aiohttp client (``openai.DefaultAioHttpClient``) is httpx2's full client over an aiohttp transport: every
request passes httpx2's URL merging, auth flow, redirect loop and response stream, none of which an API
call needs (the SDK puts auth in the headers, it sends absolute URLs, and mpinfer reads bodies whole).
This client keeps the SDK's request and response objects and drops those layers; redirects, which the
SDK's clients follow, aiohttp follows. It costs less CPU a request than either of the SDK's clients
(``bench/http_stack.py``; the figures are in bench/README.md).

Proxies are taken from the environment as httpx2 (and so the SDK's own clients) takes them: HTTPS_PROXY,
HTTP_PROXY and ALL_PROXY (either case), NO_PROXY to bypass; read once per client, decided once per URL.

Requests built ahead (``SendGate``): a local worker runs twice -c requests, and until the server states a
limit or refuses a request, a request built while all -c slots are on the wire waits at the gate, so that
an answer's freed slot is taken at once by a request that is ready instead of after the answer's handling
and the next request's building; once a limit is in play, a request granted before it goes back to the
limiter as it leaves (backends/runner.py). What it gained at 1,200 in flight is in bench/README.md.

Failures are raised as the httpx2 errors the SDK turns into ``APITimeoutError`` and ``APIConnectionError``:
a connect or read timeout as a timeout, a refused, reset or dropped connection as a network error.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import ssl
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx2
import yarl

from ..errors import ConfigError

# httpx2's own default; the body is handed to httpx2 undecoded, and it decodes both.
_ACCEPT_ENCODING = ("Accept-Encoding", "gzip, deflate")
KEEPALIVE_S = 5.0  # httpx2's default keep-alive expiry, as the SDK's aiohttp client had it
# The SDK's own clients follow redirects (a gateway moving a path, http to https), up to httpx2's 20.
MAX_REDIRECTS = 20
_AIOHTTP_SETS = frozenset({"host", "content-length"})
_UNTIMED = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)


class Unsent(Exception):
    """A request built ahead was not sent: the run stopped while it waited for a slot (a rerun sends it)."""


# Told of each answer as it arrives: its status and headers (a case-insensitive mapping).
OnAnswer = Callable[[int, Any], Awaitable[None]]

# The deadline of the request this asyncio task is sending, and its length: it starts again when the request
# leaves the gate, so that waiting for a slot never counts as the server's time.
REQUEST_DEADLINE: contextvars.ContextVar[tuple[asyncio.Timeout, float] | None] = contextvars.ContextVar(
    "mpinfer_request_deadline", default=None)


class SendGate:
    """At most ``slots`` requests on the wire at once, however many are built; ``close`` turns away those
    still waiting (the run is stopping: they are left for the rerun, unsent)."""

    def __init__(self, slots: int) -> None:
        self._free = asyncio.Semaphore(slots)
        self.closed = False

    async def __aenter__(self) -> None:
        await self._free.acquire()
        if self.closed:
            self._free.release()  # wakes the next one waiting, which is turned away too
            raise Unsent("the run is stopping")
        held = REQUEST_DEADLINE.get()
        if held is not None:
            deadline, length = held
            deadline.reschedule(asyncio.get_running_loop().time() + length)

    async def __aexit__(self, *_exc: object) -> None:
        self._free.release()

    def close(self) -> None:
        self.closed = True


class _NoTransport(httpx2.AsyncBaseTransport):
    """httpx2.AsyncClient builds a connection pool unless given a transport; every request goes through
    aiohttp instead, so this one is never called."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        raise httpx2.UnsupportedProtocol("mpinfer's aiohttp client sends its requests itself")


class _SdkRequest(httpx2.Request):
    """The request the SDK builds, without what httpx2.Request adds for its own transports.

    ``httpx2.Request`` normalizes the headers twice over, adds Host and Content-Length (aiohttp sets both,
    and they are dropped again before sending) and streams the body into itself, all of it work a
    worker pays for on every request (bench/README.md). The SDK's headers are kept as it gave
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
    """An answer aiohttp has read whole, with no content encoding: httpx2.Response would stream the bytes it
    is given through its decoder chain into itself, for nothing (bench/README.md)."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], content: bytes, request: httpx2.Request,
                 extensions: dict[str, Any]) -> None:
        super().__init__(status, headers=headers, stream=httpx2.ByteStream(content), request=request,
                         extensions=extensions)
        self._content = content  # as read() leaves it: the body, the stream consumed and closed
        self.is_stream_consumed = True
        self.is_closed = True


class AioHttpClient(httpx2.AsyncClient):
    """An ``httpx2.AsyncClient`` for the SDK that sends through an aiohttp connection pool.

    ``on_send`` is awaited as each request leaves, after the SDK has built it (the rate limiter's stamp);
    with a ``gate``, after the request has its slot. ``on_answer`` is awaited with each answer's status and
    headers as soon as it is read, before its slot goes to the next request. The aiohttp session is made on
    the first request, inside the event loop that runs the requests.
    """

    def __init__(self, *, timeout: float, connections: int, verify: ssl.SSLContext | bool = True,
                 on_send: Callable[[], Awaitable[None]] | None = None, gate: SendGate | None = None,
                 on_answer: OnAnswer | None = None) -> None:
        super().__init__(timeout=timeout, transport=_NoTransport(), trust_env=False)
        self._gate = gate
        self._connections = max(100, connections)  # aiohttp's default, 100, would queue a busier worker
        self._verify = verify
        self._on_send = on_send
        self._on_answer = on_answer
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, httpx2.URL] = {}  # the few URLs a run sends to, parsed once
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}
        self._env_proxies = urllib.request.getproxies_environment()
        for name, given in self._env_proxies.items():
            if name != "no" and _proxy_url(given).scheme not in ("http", "https"):
                raise ConfigError(f"{name}_proxy {_proxy_url(given).with_user(None)}: the aiohttp transport "
                                  "reaches http and https proxies only; use --transport httpx (with the socksio "
                                  "package installed) for this one")
        self._proxies: dict[str, tuple[yarl.URL | None, dict[str, str] | None]] = {}

    def build_request(self, method: str, url: httpx2.URL | str, *, content: Any = None, data: Any = None,
                      files: Any = None, json: Any = None, params: Any = None, headers: Any = None,
                      cookies: Any = None, timeout: Any = httpx2.USE_CLIENT_DEFAULT,
                      extensions: Any = None) -> httpx2.Request:
        if data is not None or files is not None or json is not None or cookies is not None:
            return super().build_request(method, url, content=content, data=data, files=files, json=json,
                                         params=params, headers=headers, cookies=cookies, timeout=timeout,
                                         extensions=extensions)
        if isinstance(url, str):
            parsed = self._urls.get(url)
            if parsed is None:  # the SDK sends absolute URLs (its own base URL already joined)
                parsed = self._urls[url] = httpx2.URL(url)
            url = parsed
        if params:  # Azure's api-version
            url = url.copy_merge_params(params)
        extensions = dict(extensions or {})
        if "timeout" not in extensions:
            chosen = self.timeout if timeout is httpx2.USE_CLIENT_DEFAULT else httpx2.Timeout(timeout)
            extensions["timeout"] = chosen.as_dict()
        if content is None or isinstance(content, bytes):
            return _SdkRequest(method, url, headers, content or b"", extensions)
        return httpx2.Request(method, url, content=content, headers=headers, extensions=extensions)

    async def send(self, request: httpx2.Request, *, stream: bool = False, auth: Any = httpx2.USE_CLIENT_DEFAULT,
                   follow_redirects: Any = httpx2.USE_CLIENT_DEFAULT) -> httpx2.Response:
        """Send ``request`` and read the whole body (``stream`` too: the SDK's streaming calls are not used)."""
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        body = await request.aread()
        # Host and Content-Length are aiohttp's to set: a redirect to another host must not carry the old Host.
        headers = [(name, value) for name, value in request.headers.multi_items() if name not in _AIOHTTP_SETS]
        if "accept-encoding" not in request.headers:
            headers.append(_ACCEPT_ENCODING)
        if self._gate is None:
            return await self._exchange(request, body, headers)
        async with self._gate:
            response = await self._exchange(request, body, headers)
        # Answers that arrive together are handled in one turn of the loop, each woken request only after
        # all of them: two yields let the requests woken by these freed slots go out first.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return response

    async def _exchange(self, request: httpx2.Request, body: bytes,
                        headers: list[tuple[str, str]]) -> httpx2.Response:
        if self._on_send is not None:
            await self._on_send()
        session = self._session or self._open()
        started = time.perf_counter()
        url = str(request.url)
        proxy, login = self._proxies.get(url) or self._proxy_for(url, request.url)
        proxy_headers = None
        if login is not None:  # aiohttp sends proxy_headers on a CONNECT (https) only; plain http carries it
            if request.url.scheme == "https":
                proxy_headers = login
            else:
                headers.extend(login.items())
        try:
            async with session.request(request.method, url, data=body or None, headers=headers, proxy=proxy,
                                       proxy_headers=proxy_headers, max_redirects=MAX_REDIRECTS, auto_decompress=False,
                                       timeout=self._client_timeout(request.extensions.get("timeout") or {}),
                                       server_hostname=request.extensions.get("sni_hostname")) as answer:
                content = await answer.read()
                status, raw_headers, reason = answer.status, answer.raw_headers, answer.reason
                encoded = "Content-Encoding" in answer.headers
                answer_headers = answer.headers
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _http_error(exc, request) from exc
        if self._on_answer is not None:
            await self._on_answer(status, answer_headers)
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if reason:
            extensions["reason_phrase"] = reason.encode()
        response: httpx2.Response
        if encoded:  # httpx2 decodes it, as it would have from its own transport
            response = httpx2.Response(status, headers=list(raw_headers), content=content, request=request,
                                       extensions=extensions)
        else:
            response = _ReadResponse(status, list(raw_headers), content, request, extensions)
        response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)  # as httpx2 sets it
        return response

    def _proxy_for(self, key: str, url: httpx2.URL) -> tuple[yarl.URL | None, dict[str, str] | None]:
        """The proxy the environment names for ``url`` (None: none, or NO_PROXY bypasses it), and the header
        with its login."""
        found: tuple[yarl.URL | None, dict[str, str] | None] = (None, None)
        given = self._env_proxies.get(url.scheme) or self._env_proxies.get("all")
        if given and not urllib.request.proxy_bypass(url.host):  # NO_PROXY, read as urllib and httpx2 read it
            proxy = _proxy_url(given)
            login = None
            if proxy.user:
                login = {"Proxy-Authorization": aiohttp.encode_basic_auth(proxy.user, proxy.password or "")}
            found = (proxy.with_user(None), login)
        self._proxies[key] = found
        return found

    def _open(self) -> aiohttp.ClientSession:
        ssl_option: ssl.SSLContext | bool = self._verify
        connector = aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=KEEPALIVE_S, ssl=ssl_option)
        self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _client_timeout(self, given: dict[str, float | None]) -> aiohttp.ClientTimeout:
        if REQUEST_DEADLINE.get() is not None:
            # A deadline on the whole request (api.client.complete) ends it before any of these could: each is
            # as long as the whole, and aiohttp's per-read timer would be set again at every read for nothing.
            return _UNTIMED
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            # As httpx2 means them: connect is the TCP and TLS handshake, read the longest gap between reads,
            # pool the wait for a free connection.
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(sock_connect=key[0], sock_read=key[1],
                                                                  connect=key[2])
        return timeout

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        await super().aclose()


def _proxy_url(given: str) -> yarl.URL:
    return yarl.URL(given if "://" in given else f"http://{given}")  # "host:3128" means an http proxy


def _http_error(exc: BaseException, request: httpx2.Request) -> httpx2.TransportError:
    """The httpx2 error for an aiohttp (or socket) failure, so that the SDK classifies it as it would its own."""
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
    return httpx2.ReadError(message, request=request)  # reset, dropped, a malformed or cut-short answer
