"""Where settings come from besides the flags: the settings file (``mpinfer.toml`` or
``--config``), the API keys (variables or a keys file), the endpoints table with its
keys, and what to warn about them.

Each reads the variable layers that ``config.environment`` made (the process environment, then
``.env``): config.py stays the only reader of ``os.environ``, and this module never imports it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .api.endpoints import Endpoint

TOML_NAME = "mpinfer.toml"
CONFIG_ENV = "MPINFER_CONFIG"  # names the settings file, as --config does
ENDPOINT_TABLES = "[[endpoints]]"  # where read_toml keeps mpinfer.toml's endpoint tables

Layers = list[dict[str, str]]


def lookup(layers: Layers, names: tuple[str, ...]) -> tuple[str, str] | None:
    """(name, value) of the first non-empty variable, layer by layer (environment beats .env)."""
    for layer in layers:
        for name in names:
            if layer.get(name):
                return name, layer[name]
    return None


def settings_file(given: Path | None, layers: Layers, cwd: Path) -> Path:
    """``--config FILE``, else ``MPINFER_CONFIG``, else ``./mpinfer.toml``; one named must exist."""
    found = lookup(layers, (CONFIG_ENV,))
    named = given if given is not None else (Path(found[1]) if found else None)
    if named is None:
        return cwd / TOML_NAME
    if not (path := named if named.is_absolute() else cwd / named).is_file():
        raise ConfigError(f"{'--config' if given is not None else CONFIG_ENV} "
                          f"{named}: no such settings file")
    return path


def read_toml(path: Path, known: Collection[str]) -> dict[str, Any]:
    """A settings file's settings by name (dashes read as underscores); {} when there is no file."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "api_key":
            raise ConfigError(f"{path}: api_key does not belong in {TOML_NAME}; "
                              "set OPENAI_API_KEY in .env")
        if name == "endpoints" and isinstance(value, list):
            # [[endpoints]] tables, not the path of a file of them
            settings[ENDPOINT_TABLES] = value
            continue
        if name not in known:
            raise ConfigError(
                f"{path}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
        settings[name] = value
    return settings


def api_keys(layers: Layers, keys_file: Path | None) -> tuple[str, ...]:
    """Keys from --api-keys-file, else OPENAI_API_KEYS (comma-separated), else OPENAI_API_KEY."""
    if keys_file is not None:
        return read_keys_file(keys_file)
    found = lookup(layers, ("OPENAI_API_KEYS", "OPENAI_API_KEY"))
    if found is None:
        return ()
    return tuple(dict.fromkeys(k.strip() for k in found[1].split(",") if k.strip()))


def read_keys_file(keys_file: Path) -> tuple[str, ...]:
    """The keys in an API keys file, one a line (blank lines and # comments left out), each once."""
    try:
        lines = keys_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(
            f"{keys_file}: cannot read the API keys file: {exc.strerror or exc}"
        ) from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"{keys_file}: no API keys in it (one a line)")
    return tuple(dict.fromkeys(keys))


def endpoint_table(
    path: Path | None, tables: Any, source: str, layers: Layers
) -> tuple[Endpoint, ...]:
    """The endpoints table of --endpoints FILE, else of the [[endpoints]] ``tables``; () if none.

    Each endpoint's key is read from its variable in ``layers``.
    """
    # the table's schema lives with its use
    from .api.endpoints import parse_endpoints, read_endpoints_file

    if path is not None:
        tables, source = read_endpoints_file(path), str(path)
    if tables is None:
        return ()

    def key_of(name: str) -> str | None:
        found = lookup(layers, (name,))
        return found[1] if found else None

    return parse_endpoints(tables, source, key_of)


def file_warnings(env_file: Path) -> tuple[str, ...]:
    """A .env holds the key: warn when users other than its owner can read it."""
    try:
        mode = env_file.stat().st_mode
    except OSError:
        return ()
    if mode & 0o044:
        return (f"{env_file} can be read by other users (mode {mode & 0o777:o}); "
                f"it holds your API key: chmod 600 {env_file}",)
    return ()
