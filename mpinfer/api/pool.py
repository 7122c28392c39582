"""The aiohttp connection pool a worker sends through: one session and the environment's proxies.

Both clients send through it: mpinfer's own requests (api/wire.py, the default transport) and the
openai SDK's adapter over aiohttp (api/http.py: the SDK as the reference, and its tests). Proxies
are taken from the environment as httpx2 (and so the SDK's own clients) takes them: HTTPS_PROXY,
HTTP_PROXY and ALL_PROXY (either case), NO_PROXY to bypass; read once per pool, decided once per
URL.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Sequence
from typing import Any, NamedTuple

import aiohttp
import yarl

from ..errors import ConfigError

# What the SDK's clients offer (httpx2's default): api/wire.py sends it with every request, and
# api/http.py adds it where the SDK's request has none (httpx2 decodes both).
ACCEPT_ENCODING = ("Accept-Encoding", "gzip, deflate")
KEEPALIVE_S = 5.0  # httpx2's default keep-alive expiry, as the SDK's aiohttp client had it
# The SDK's own clients follow redirects
# (a gateway moving a path, http to https), up to httpx2's 20.
MAX_REDIRECTS = 20
# A deadline on the whole request (the ticket's) ends it before any of aiohttp's timers could, and
# aiohttp's per-read timer would be set again at every read for nothing.
UNTIMED = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)


class Exchanged(NamedTuple):
    """An answer read whole: its status, reason, headers (raw, and as aiohttp's case-insensitive
    mapping) and body."""

    status: int
    reason: str | None
    raw_headers: tuple[tuple[bytes, bytes], ...]
    headers: Any  # aiohttp's CIMultiDictProxy
    content: bytes


_Proxy = tuple[yarl.URL | None, dict[str, str] | None]


class Pool:
    """One aiohttp session (made on the first request, inside the event loop that runs them) with
    ``connections`` connections, and the environment's proxies. ``headers`` go with every request
    (the session's own: merged once a request, not parsed from the caller's each time)."""

    def __init__(self, connections: int, verify: ssl.SSLContext | bool = True,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        # aiohttp's default, 100, would queue a busier worker
        self._connections = max(100, connections)
        self._verify = verify
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None
        self._env_proxies = urllib.request.getproxies_environment()
        for name, given in self._env_proxies.items():
            if name != "no" and _proxy_url(given).scheme not in ("http", "https"):
                raise ConfigError(f"{name}_proxy {_proxy_url(given).with_user(None)}: the aiohttp "
                                  "transport reaches http and https proxies only; use --transport "
                                  "httpx (with the socksio package installed) for this one")
        self._proxies: dict[str, _Proxy] = {}

    async def exchange(self, method: str, url: str, headers: list[tuple[str, str]],
                       body: bytes | None, *, timeout: aiohttp.ClientTimeout = UNTIMED,
                       decompress: bool = True, server_hostname: str | None = None) -> Exchanged:
        """Send one request and read its answer whole; raises aiohttp's (and the socket's) errors.

        ``headers`` (beside the pool's own) is the caller's list (a proxy's login may be added to
        it): Host and Content-Length are aiohttp's to set."""
        session = self._session or self._open()
        proxy, login = self._proxies.get(url) or self._proxy_for(url)
        proxy_headers = None
        # aiohttp sends proxy_headers on a CONNECT (https) only; plain http carries it
        if login is not None:
            if url.startswith("https:"):
                proxy_headers = login
            else:
                headers.extend(login.items())
        async with session.request(method, url, data=body, headers=headers or None, proxy=proxy,
                                   proxy_headers=proxy_headers, max_redirects=MAX_REDIRECTS,
                                   auto_decompress=decompress, timeout=timeout,
                                   server_hostname=server_hostname) as answer:
            content = await answer.read()
            return Exchanged(answer.status, answer.reason, answer.raw_headers, answer.headers,
                             content)

    def _proxy_for(self, url: str) -> _Proxy:
        """The proxy the environment names for ``url`` (None: none, or NO_PROXY bypasses it),
        and the header with its login."""
        found: _Proxy = (None, None)
        parsed = yarl.URL(url)
        given = self._env_proxies.get(parsed.scheme) or self._env_proxies.get("all")
        # NO_PROXY, read as urllib and httpx2 read it
        if given and not urllib.request.proxy_bypass(parsed.host or ""):
            proxy = _proxy_url(given)
            login = None
            if proxy.user:
                login = {"Proxy-Authorization":
                         aiohttp.encode_basic_auth(proxy.user, proxy.password or "")}
            found = (proxy.with_user(None), login)
        self._proxies[url] = found
        return found

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=KEEPALIVE_S,
                                         ssl=self._verify)
        self._session = aiohttp.ClientSession(connector=connector, headers=list(self._headers))
        return self._session

    async def close(self) -> None:
        """Close the session, if one was opened."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _proxy_url(given: str) -> yarl.URL:
    # "host:3128" means an http proxy
    return yarl.URL(given if "://" in given else f"http://{given}")
