"""The aiohttp connection pool a worker sends through: one session, the environment's proxies, and
the send gate where requests built ahead wait for a slot.

Both clients send through it: mpinfer's own requests (api/wire.py, the default transport) and the
openai SDK's adapter over aiohttp (api/http.py: the SDK as the reference, and its tests). Proxies
are taken from the environment as httpx2 (and so the SDK's own clients) takes them: HTTPS_PROXY,
HTTP_PROXY and ALL_PROXY (either case), NO_PROXY to bypass; read once per pool, decided once per
URL.

Requests built ahead (``SendGate``): a local worker runs twice -c requests, and until the server
states a limit or refuses a request, a request built while all -c slots are on the wire waits at the
gate, so that an answer's freed slot is taken at once by a request that is ready instead of after
the answer's handling and the next request's building; once a limit is in play, a request granted
before it goes back to the limiter as it leaves (backends/ahead.py, and the ticket's protocol in
api/ticket.py). What it gained at 1,200 in flight is in bench/README.md.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections import deque
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


class SendGate:
    """At most ``slots`` requests on the wire at once, however many are built; ``close`` turns away
    those still waiting (the run is stopping: they are left for the rerun, unsent).

    First come, first served, as asyncio.Semaphore; but a freed slot goes straight to the first
    request waiting, in constant time. (Python 3.11's Semaphore scans its waiters on every acquire
    and on every release past those woken and not yet run: when a round's hundreds of answers arrive
    together, each freed slot walked hundreds of them, bench/README.md.)
    """

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: deque[asyncio.Future[None]] = deque()
        self.closed = False
        self._freed_this_turn = 0  # slots given back in this turn of the event loop

    async def pass_on(self) -> None:
        """After ``give_back``: when other slots were given back in this turn of the event loop
        too (answers that arrived together, handled one after another in one turn), yield twice,
        so that the requests woken by the freed slots go out before the rest of this answer's
        handling; an answer that came alone goes on at once (the yields cost a turn each)."""
        self._freed_this_turn += 1
        if self._freed_this_turn == 1:
            asyncio.get_running_loop().call_soon(self._next_turn)
            return
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def _next_turn(self) -> None:
        self._freed_this_turn = 0

    async def take(self) -> bool:
        """Wait for a slot: True with it,
        False when the gate was closed meanwhile (no slot held)."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(handed)
            try:
                await handed  # set when a slot is handed over (give_back skips one cancelled)
            except asyncio.CancelledError:
                if handed.done() and not handed.cancelled():
                    self.give_back()  # handed a slot, then cancelled before it ran: pass it on
                raise
        if self.closed:
            self.give_back()  # to the next one waiting, which is turned away too
            return False
        return True

    def give_back(self) -> None:
        """Free the slot of a request whose answer came back (or that failed), for the next one."""
        while self._waiting:
            handed = self._waiting.popleft()
            if not handed.done():  # (a waiter cancelled meanwhile is skipped)
                handed.set_result(None)
                return
        self._free += 1

    def close(self) -> None:
        """Turn away the requests still waiting and those to come: the run is stopping."""
        self.closed = True


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
