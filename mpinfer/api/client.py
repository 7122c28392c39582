"""One API call through the openai SDK: the client, sending a request and reading its answer (a
failure is classified by ``api.failures``).

The SDK is the reference for what a request looks like, and this is the ``--transport httpx`` path
(``SdkClient``, over the SDK's httpx2); the default transport sends without the SDK (api/wire.py,
compared with this in tests/test_wire.py). ``make_client`` on the aiohttp transport gives the SDK
mpinfer's aiohttp pool (api/http.py).

The SDK's own retries are off (``max_retries=0``): every attempt is ours, so it is counted once and
waits by our backoff. The response body is decoded with orjson rather than the SDK's models: it is
the same JSON, at a fraction of the CPU, and a body that is not JSON becomes a retryable error
instead of a crash.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import httpx2
import openai
import orjson

# The setting's enum, re-exported for the client's callers
from ..config import Transport as Transport
from .answer import Answer, parse_answer
from .http import AioHttpClient, HttpxClient, TicketTimeout
from .responses import ApiPath
from .ticket import Ticket
from .wire import body_of, tls_context
from .wire import warm_up as _warm_up


def warm_up() -> None:
    """Do once, before forking, what every worker would otherwise do for itself at start-up
    (api/wire.py's ``warm_up``), and import the parts of httpx2's stack that load on first use."""
    import importlib

    for name in ("httpcore2", "h11", "anyio.streams.tls"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    _warm_up()


def make_client(api_key: str, base_url: str | None, timeout: float,
                transport: Transport = Transport.AIOHTTP, connections: int = 1000,
                azure: tuple[str, str] | None = None) -> openai.AsyncOpenAI:
    """An async client with the SDK's retries off
    and a connection pool for ``connections`` in flight.

    Each request's ticket (``complete``) is told as it leaves and as its answer arrives
    (api/ticket.py).
    ``azure`` (deployment, api_version) makes it the SDK's Azure client on ``base_url``: it sends to
    ``/openai/deployments/{deployment}/...?api-version=...`` with an ``api-key`` header.
    """

    verify = tls_context()
    http_client: httpx2.AsyncClient
    if transport is Transport.AIOHTTP:
        http_client = AioHttpClient(timeout=timeout, connections=connections, verify=verify)
    else:
        # httpx2's own default is 100 connections:
        # a worker with more requests in flight would queue.
        pool = max(100, connections)
        limits = httpx2.Limits(max_connections=pool, max_keepalive_connections=pool)
        http_client = HttpxClient(verify=verify, timeout=timeout, limits=limits)
    if azure is not None:
        deployment, api_version = azure
        return openai.AsyncAzureOpenAI(api_key=api_key, azure_endpoint=base_url or "",
                                       azure_deployment=deployment, api_version=api_version,
                                       max_retries=0, timeout=timeout, http_client=http_client)
    return openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout,
                              http_client=http_client)


_JSON = {"Content-Type": "application/json"}


async def complete(client: openai.AsyncOpenAI, request: dict[str, Any], ticket: Ticket,
                   path: ApiPath = ApiPath.CHAT) -> Answer:
    """Send one request to ``path`` (chat.completions, responses or embeddings): its Answer;
    raises the SDK's errors or MalformedResponse.

    Through the SDK's own request path (its auth, headers, base URL and status errors), with the
    body as orjson bytes: the typed ``create`` spends more CPU checking parameters than the rest of
    a request costs. ``extra_body`` is merged into the body as ``create`` would. The ticket's
    ``seconds`` are a deadline for the whole request, connect to the last byte of the body: the
    transports' own timeouts are per read, and a server that trickles its body a byte a second
    would hold a request for ever (raises TimeoutError). The ticket goes down as the SDK's timeout
    option (api/ticket.py).
    """
    body = orjson.dumps(body_of(request))
    async with asyncio.timeout(ticket.seconds) as deadline:
        ticket.deadline = deadline
        response = await client.post(_url(client, path), cast_to=httpx2.Response, content=body,
                                     options={"timeout": TicketTimeout(ticket),
                                              "headers": _JSON})
        content = response.content
    # items() is one pass over the headers;
    # dict(headers) looks each name up again, a scan of them all.
    return parse_answer(content, dict(response.headers.items()), path)


_URLS: weakref.WeakKeyDictionary[openai.AsyncOpenAI, dict[ApiPath, str]] = (
    weakref.WeakKeyDictionary())


def _url(client: openai.AsyncOpenAI, path: ApiPath) -> str:
    """Where ``path`` is sent: the absolute URL, which the SDK parses once (a path under its base
    URL is parsed and then joined to the base, a large share of the SDK's own CPU); the path itself
    for Azure's client, which routes by it, and under a base URL with a query string, which a
    join keeps."""
    urls = _URLS.setdefault(client, {})
    url = urls.get(path)
    if url is None:
        base = client.base_url
        if isinstance(client, openai.AsyncAzureOpenAI) or base.query:
            url = urls[path] = path.value
        else:
            url = urls[path] = f"{base}{path.value[1:]}"  # the SDK keeps its base URL ending in "/"
    return url


class SdkClient:
    """An endpoint's client through the openai SDK (``--transport httpx``): the shape of
    api/wire.py's ``WireClient``, so that the runner holds either."""

    def __init__(self, api_key: str, base_url: str | None, timeout: float, *,
                 connections: int = 1000, azure: tuple[str, str] | None = None) -> None:
        self.sdk = make_client(api_key, base_url, timeout, transport=Transport.HTTPX,
                               connections=connections, azure=azure)

    async def complete(self, request: dict[str, Any], ticket: Ticket,
                       path: ApiPath = ApiPath.CHAT) -> Answer:
        """Send one request through the SDK (``complete``)."""
        return await complete(self.sdk, request, ticket, path)

    async def close(self) -> None:
        """Close the SDK's client and its connection pool."""
        await self.sdk.close()
