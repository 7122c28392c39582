"""The endpoints table: where each model's requests may go,
each endpoint with its own key and limits.

An endpoint is a base URL, a provider, a key and its limits. Written as ``[[endpoints]]`` tables in
a TOML file (``--endpoints FILE``) or in mpinfer.toml; the field names are fixed, since scripts rely
on them::

    [[endpoints]]
    model = "gpt-4o"                 # the model tasks ask for (the requested model)
    provider = "azure"               # openai (default, any OpenAI-compatible server) | azure
    base_url = "https://res.openai.azure.com"
    deployment = "gpt4o-east"        # azure only
    api_version = "2024-10-21"       # azure only
    api_key_env = "AZURE_KEY_EAST"   # the variable holding the key (never the key itself)
    rpm = 3000                       # optional, per endpoint; also tpm, max_in_flight, max_image_mb
    image_detail = "low"             # optional, for the model's requests; also image_max_side
    name = "east"                    # optional: a batch plan's name for it (default: key, place)
    enqueued_tokens = 5000000        # optional: its Batch API enqueued-token limit

Without a table, the flags make an implicit one: each key (``OPENAI_API_KEYS``) at ``--base-url``
for every model. The limiter gives each endpoint its own lanes (mpinfer.limits.settings), so its
limits, pauses and key state are its own, and a request goes to the least loaded of its model's
endpoints that is free.

Azure is reached as the SDK's ``AsyncAzureOpenAI`` reaches it (deployment path, ``api-version``
query, ``api-key`` header: api/wire.py builds the same requests). The model check compares the
answer's model with the requested model, never with the deployment.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError
from ..redact import key_hint

__all__ = ["ANY_MODEL", "Endpoint", "Provider", "endpoints_of", "implicit_endpoints",
           "parse_endpoints", "read_endpoints_file"]

ANY_MODEL = "*"  # an implicit endpoint serves every model of the run
DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the SDK's, when neither flag nor variable says
FIELDS = frozenset({"model", "provider", "base_url", "deployment", "api_version", "api_key_env",
                    "rpm", "tpm", "max_in_flight", "max_image_mb", "image_detail",
                    "image_max_side", "name", "enqueued_tokens"})
DETAILS = ("low", "high", "auto")


class Provider(StrEnum):
    """Who serves an endpoint: how its client is built (Azure's deployment path and api-version,
    or the plain OpenAI-compatible path)."""

    OPENAI = "openai"  # OpenAI or any OpenAI-compatible server (vLLM, DeepSeek, DashScope, LiteLLM)
    AZURE = "azure"  # Azure OpenAI: deployments, api-version, api-key


@dataclass(frozen=True)
class Endpoint:
    """One place a model's requests may go, with its key and its own limits (None: the run's)."""

    model: str
    api_key: str = field(repr=False)
    base_url: str | None = None
    provider: Provider = Provider.OPENAI
    deployment: str | None = None
    api_version: str | None = None
    api_key_env: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None
    max_image_mb: float | None = None
    image_detail: str | None = None  # over --image-detail, for its model's requests
    image_max_side: int | None = None  # the smallest of this and --image-max-side holds
    name: str | None = None
    enqueued_tokens: int | None = None

    @property
    def title(self) -> str:
        """The endpoint's name as a batch plan records it: its own, else its key's variable and
        where it sends (never the key)."""
        if self.name:
            return self.name
        return f"{self.api_key_env} at {self.place()}" if self.api_key_env else self.place()

    def described(self) -> dict[str, Any]:
        """The endpoint as the manifest records it:
        every field but the key (its variable's name stays)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "api_key"}

    def serves(self, model: str) -> bool:
        """Whether this endpoint takes requests for ``model``
        (an endpoint for ANY_MODEL takes all)."""
        return self.model in (ANY_MODEL, model)

    def place(self) -> str:
        """Where its requests go, as a message names it: the URL (and deployment), never the key."""
        url = self.base_url or DEFAULT_BASE_URL
        return f"deployment {self.deployment} at {url}" if self.deployment else url

    def label(self, index: int) -> str:
        """How status, summary and the errors file name it:
        the model and the key's last four characters."""
        tail = key_hint(self.api_key, index)
        return tail if self.model == ANY_MODEL else f"{self.model} {tail}"


def _positive(raw: Mapping[str, Any], name: str, where: str, number: type = int) -> Any:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
            number is int and not isinstance(value, int)):
        raise ConfigError(f"{where}: {name} must be a positive "
                          f"{'whole ' if number is int else ''}number")
    return number(value)


def _name(raw: Mapping[str, Any], where: str) -> str | None:
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"{where}: name must be a non-empty string")
    return name


def parse_endpoints(tables: Any, source: str,
                    lookup: Callable[[str], str | None]) -> tuple[Endpoint, ...]:
    """Check ``[[endpoints]]`` tables (from ``source``) and read each key from its variable via
    ``lookup`` (an empty key when it is not set: ``RunConfig.require_api_keys`` names those)."""
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{source}: endpoints must be a list of [[endpoints]] tables")
    endpoints = []
    for number, raw in enumerate(tables, start=1):
        where = f"{source}: endpoint {number}"
        unknown = sorted(set(raw) - FIELDS)
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r} "
                              f"(known: {', '.join(sorted(FIELDS))})")
        for name in ("model", "api_key_env"):
            if not isinstance(raw.get(name), str) or not raw[name]:
                raise ConfigError(f"{where}: {name} is required")
        if raw["api_key_env"].startswith("sk-"):
            raise ConfigError(f"{where}: api_key_env names a variable, not the key itself")
        try:
            provider = Provider(str(raw.get("provider", "openai")).lower())
        except ValueError:
            raise ConfigError(f"{where}: provider must be openai or azure, "
                              f"got {raw.get('provider')!r}") from None
        base_url = raw.get("base_url")
        if base_url is not None and (not isinstance(base_url, str)
                                     or not base_url.startswith(("http://", "https://"))):
            raise ConfigError(f"{where}: base_url must be an http(s) URL")
        if isinstance(base_url, str) and "?" in base_url:
            raise ConfigError(f"{where}: base_url must not carry a query "
                              "(give api_version on its own)")
        if provider is Provider.AZURE:
            for name in ("base_url", "deployment", "api_version"):
                if not isinstance(raw.get(name), str) or not raw[name]:
                    raise ConfigError(f"{where} (azure): {name} is required")
        elif raw.get("deployment") or raw.get("api_version"):
            raise ConfigError(f"{where}: deployment and api_version are for "
                              "provider = \"azure\" only")
        # A key not set is no error yet:
        # --status and --validate need none; a run says which is missing.
        key = lookup(raw["api_key_env"]) or ""
        endpoints.append(Endpoint(
            model=raw["model"], api_key=key, base_url=base_url, provider=provider,
            deployment=raw.get("deployment"), api_version=raw.get("api_version"),
            api_key_env=raw["api_key_env"], rpm=_positive(raw, "rpm", where),
            tpm=_positive(raw, "tpm", where), max_in_flight=_positive(raw, "max_in_flight", where),
            max_image_mb=_positive(raw, "max_image_mb", where, float),
            image_detail=_detail(raw, where),
            image_max_side=_positive(raw, "image_max_side", where), name=_name(raw, where),
            enqueued_tokens=_positive(raw, "enqueued_tokens", where)))
    for endpoint in endpoints:
        # a request is built before its endpoint is chosen: one detail for each model
        others = {ep.image_detail for ep in endpoints
                  if ep.model == endpoint.model and ep.image_detail}
        if len(others) > 1:
            raise ConfigError(f"{source}: the endpoints of {endpoint.model} set different "
                              "image_detail values; a model's requests are built before one of "
                              "its endpoints is chosen, so they must agree")
    seen: set[tuple[str, str]] = set()
    for number, endpoint in enumerate(endpoints, start=1):
        # A batch plan finds a batch's endpoint by its model and name
        if (endpoint.title, endpoint.model) in seen:
            raise ConfigError(f"{source}: endpoint {number}: another endpoint of its model is "
                              f"named {endpoint.title!r} too: give each a name")
        seen.add((endpoint.title, endpoint.model))
    return tuple(endpoints)


def _detail(raw: Mapping[str, Any], where: str) -> str | None:
    value = raw.get("image_detail")
    if value is not None and value not in DETAILS:
        raise ConfigError(f"{where}: image_detail must be low, high or auto, got {value!r}")
    return str(value) if value is not None else None


def read_endpoints_file(path: Path) -> Any:
    """The ``[[endpoints]]`` tables of a TOML file."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the endpoints file: {exc}") from None
    if set(data) != {"endpoints"}:
        raise ConfigError(f"{path}: expected only [[endpoints]] tables")
    return data["endpoints"]


def implicit_endpoints(keys: Sequence[str], base_url: str | None) -> tuple[Endpoint, ...]:
    """The table the flags make: every key at --base-url, for every model."""
    return tuple(Endpoint(ANY_MODEL, key, base_url) for key in keys)


class RunSettings(Protocol):
    """What endpoints_of reads of a RunConfig.

    A protocol rather than the class: config.py imports this module (a RunConfig holds
    Endpoints), so an import of config.py here would close a circle."""

    @property
    def endpoint_table(self) -> tuple[Endpoint, ...]: ...
    @property
    def base_url(self) -> str | None: ...
    def require_api_keys(self) -> tuple[str, ...]: ...


def endpoints_of(config: RunSettings) -> tuple[Endpoint, ...]:
    """The run's endpoints, by key index:
    its table, or the implicit one of its keys at --base-url."""
    return config.endpoint_table or implicit_endpoints(config.require_api_keys(), config.base_url)
