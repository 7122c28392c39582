"""Requests on the wire without the openai SDK: what the SDK would send, built once per endpoint and
API, and each body sent as orjson bytes over the worker's aiohttp pool (api/pool.py).

The SDK is the reference: ``url_of`` and ``sdk_headers`` build the URL (its query too) and the
headers the SDK's own call sends for the same settings (Bearer auth, or Azure's ``api-key``
header, deployment path and ``api-version`` query; its User-Agent and X-Stainless headers;
OpenAI-Organization and OpenAI-Project from OPENAI_ORG_ID and OPENAI_PROJECT_ID, as the SDK reads
them), and tests/test_wire.py compares the two on the wire. Building a request through the SDK
cost more CPU than the rest of a request (bench/README.md); here a request costs a dict copy,
orjson and aiohttp.

An answer is read as the SDK reads it: a status outside 2xx raises ``HttpStatusError`` with the
SDK's message, body (its ``error`` object) and code, which ``api.failures.classify`` maps as it maps
the SDK's status errors; a timeout is a ``TimeoutError`` and a refused, reset or dropped connection
a ``ConnectionFailed``, the kinds of the SDK's ``APITimeoutError`` and ``APIConnectionError``. No
import of the SDK (or httpx2) here: a run on the default transport never loads it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import platform
import re
import ssl
import sys
import urllib.parse
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson

from ..errors import ConnectionFailed, HttpStatusError
from .answer import Answer, parse_answer
from .endpoints import DEFAULT_BASE_URL
from .pool import ACCEPT_ENCODING, Pool
from .responses import ApiPath
from .ticket import Ticket

# The paths the SDK's Azure client sends under the deployment (the others go under /openai)
_AZURE_DEPLOYED = frozenset({ApiPath.CHAT, ApiPath.EMBEDDINGS})
# The headers the SDK adds from the environment, by the variable it reads
_ACCOUNT = (("OpenAI-Organization", "OPENAI_ORG_ID"), ("OpenAI-Project", "OPENAI_PROJECT_ID"))

_tls: ssl.SSLContext | None = None
_platform: tuple[tuple[str, str], ...] | None = None


class ApiClient(Protocol):
    """An endpoint's client: ``WireClient`` here, or the SDK's (api/client.py's ``SdkClient``)."""

    async def complete(self, request: dict[str, Any], ticket: Ticket,
                       path: ApiPath = ApiPath.CHAT) -> Answer:
        """Send one request: its Answer."""

    async def close(self) -> None:
        """Close its connections."""


def tls_context() -> ssl.SSLContext:
    """The TLS context the SDK's clients verify with (httpcore2's: SSL_CERT_FILE, SSL_CERT_DIR, or
    the system's CA bundle), made once (loading the bundle takes tens of ms)."""
    global _tls
    if _tls is None:
        from httpcore2._ssl import default_ssl_context  # (only for https: its import costs too)

        _tls = default_ssl_context()
    return _tls


def warm_up(tls: bool = True) -> None:
    """Do once, before forking, what every worker would otherwise do for itself at start-up: the
    platform probe behind the SDK's headers, aiohttp's first-use imports and, when a run goes to an
    https URL (``tls``), the TLS context. Forked workers inherit the results (bench/README.md)."""
    import aiohttp.connector  # noqa: F401  (loaded on first use otherwise)

    platform_headers()
    if tls:
        tls_context()


def platform_headers() -> tuple[tuple[str, str], ...]:
    """The SDK's X-Stainless headers of this machine and interpreter (its ``platform_headers``)."""
    global _platform
    if _platform is None:
        system = platform.system().lower()
        names = {"darwin": "MacOS", "windows": "Windows", "linux": "Linux", "freebsd": "FreeBSD",
                 "openbsd": "OpenBSD"}
        machine = platform.machine().lower()
        arches = {"arm64": "arm64", "aarch64": "arm64", "arm": "arm", "x86_64": "x64"}
        arch = arches.get(machine) or ("x32" if sys.maxsize <= 2**32 else
                                       f"other:{machine}" if machine else "unknown")
        _platform = (("X-Stainless-Lang", "python"),
                     ("X-Stainless-Package-Version", sdk_version()),
                     ("X-Stainless-OS",
                      names.get(system) or f"Other:{platform.platform().lower()}"),
                     ("X-Stainless-Arch", arch),
                     ("X-Stainless-Runtime", platform.python_implementation()),
                     ("X-Stainless-Runtime-Version", platform.python_version()))
    return _platform


@functools.cache
def sdk_version() -> str:
    """The installed openai SDK's version, read from its ``_version.py`` without importing it
    (importing it takes most of a second), once a process (a client's headers and the platform
    headers both name it)."""
    try:
        spec = find_spec("openai")
        origin = spec.origin if spec is not None else None
        text = (Path(origin).parent / "_version.py").read_text() if origin else ""
    except (ImportError, OSError, ValueError):
        text = ""
    found = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    return found.group(1) if found else "unknown"


def url_of(base_url: str | None, path: ApiPath, azure: tuple[str, str] | None = None) -> str:
    """Where the SDK's ``AsyncOpenAI`` (``AsyncAzureOpenAI`` with ``azure``: deployment,
    api_version) sends a request to ``path``, its query included.

    A base URL with a query keeps it after the path (the SDK would append the path to the query).
    """
    if azure is not None:
        deployment, api_version = azure
        root = f"{(base_url or '').rstrip('/')}/openai"
        prefix = f"{root}/deployments/{deployment}" if path in _AZURE_DEPLOYED else root
        return f"{prefix}{path.value}?{urllib.parse.urlencode({'api-version': api_version})}"
    base, _, query = (base_url or DEFAULT_BASE_URL).partition("?")
    return f"{base.rstrip('/')}{path.value}" + (f"?{query}" if query else "")


def sdk_headers(api_key: str, timeout: float, azure: bool = False,
                environ: Mapping[str, str] = os.environ) -> tuple[tuple[str, str], ...]:
    """The headers the SDK's ``AsyncOpenAI`` (``AsyncAzureOpenAI`` when ``azure``) sends with every
    request of a client with these settings: its auth, User-Agent and X-Stainless headers, the
    organization and project the environment names, the first attempt's retry count and the read
    timeout; and the Accept-Encoding its HTTP clients add."""
    auth = ("api-key", api_key) if azure else ("Authorization", f"Bearer {api_key}")
    agent = "AsyncAzureOpenAI" if azure else "AsyncOpenAI"
    account = tuple((name, environ[variable]) for name, variable in _ACCOUNT
                    if environ.get(variable) is not None)
    return (auth, ("Accept", "application/json"), ("Content-Type", "application/json"),
            ("User-Agent", f"{agent}/Python {sdk_version()}"), *platform_headers(),
            ("X-Stainless-Async", "async:asyncio"), *account, ("x-stainless-retry-count", "0"),
            ("x-stainless-read-timeout", str(timeout)), ACCEPT_ENCODING)


class WireClient:
    """An endpoint's client without the SDK: its URLs and headers, built once, and the aiohttp
    pool (whose session sends the headers with every request).

    A request with a ticket is sent by its protocol (api/ticket.py): its ``leaving`` as it goes,
    its ``answered`` as soon as the answer's status and headers are read.
    """

    def __init__(self, api_key: str, base_url: str | None, timeout: float, *,
                 connections: int = 1000, azure: tuple[str, str] | None = None) -> None:
        self.urls = {path: url_of(base_url, path, azure) for path in ApiPath}
        self.headers = sdk_headers(api_key, timeout, azure is not None)
        # An https endpoint verifies as the SDK would; an http one needs no CA bundle loaded.
        https = not str(base_url or DEFAULT_BASE_URL).startswith("http:")
        self._pool = Pool(connections, tls_context() if https else True, self.headers)

    async def complete(self, request: dict[str, Any], ticket: Ticket,
                       path: ApiPath = ApiPath.CHAT) -> Answer:
        """Send one request to ``path``: its Answer; raises HttpStatusError, ConnectionFailed,
        TimeoutError or MalformedResponse.

        ``extra_body`` is merged into the body as the SDK's ``create`` would. The ticket's
        ``seconds`` are a deadline for the whole request, connect to the last byte of the body (a
        server that trickles its body a byte a second would otherwise hold it for ever).
        """
        content = orjson.dumps(body_of(request))
        async with asyncio.timeout(ticket.seconds) as deadline:
            ticket.deadline = deadline
            status, headers, data = await self._exchange(self.urls[path], content, ticket)
        if not 200 <= status < 300:
            raise status_error(status, headers, data)
        return parse_answer(data, headers_of(headers), path)

    async def _exchange(self, url: str, content: bytes,
                        ticket: Ticket) -> tuple[int, Any, bytes]:
        await ticket.leaving()
        try:
            answer = await self._pool.exchange("POST", url, [], content)
        except TimeoutError:
            raise  # (aiohttp's own timeouts are TimeoutErrors: a timeout, as the SDK's would be)
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from exc
        await ticket.answered(answer.status, answer.headers)
        return answer.status, answer.headers, answer.content

    async def close(self) -> None:
        """Close the aiohttp pool."""
        await self._pool.close()


def body_of(request: dict[str, Any]) -> dict[str, Any]:
    """The body sent for ``request``: a copy with its ``extra_body`` merged in, as the SDK's
    ``create`` merges it."""
    body = dict(request)
    extra = body.pop("extra_body", None)
    if extra:
        body.update(extra)
    return body


def headers_of(headers: Any) -> dict[str, str]:
    """An answer's headers as the SDK's response gives them: names in lower case, a name sent twice
    as one comma-separated value."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def status_error(status: int, headers: Any, content: bytes) -> HttpStatusError:
    """The error for an answer with a status outside 2xx, as the SDK makes it: the message "Error
    code: N - <the error's message>", the body's ``error`` object (the whole body when it has none,
    its text when it is not JSON) and that object's code."""
    message = f"Error code: {status}"
    text = content.decode("utf-8", "replace").strip()
    body: Any = text
    try:
        body = json.loads(text)  # (as the SDK reads it: json, which takes what orjson refuses)
    except ValueError:
        pass
    else:
        error = body.get("error", body) if isinstance(body, dict) else None
        said = error.get("message") if isinstance(error, dict) else None
        if isinstance(said, str) and said:
            message += f" - {said}"
    data = body.get("error", body) if isinstance(body, dict) else body
    code = data.get("code") if isinstance(data, dict) else None
    return HttpStatusError(message, status, None if code is None else str(code), data, headers)
