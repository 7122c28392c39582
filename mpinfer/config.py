"""RunConfig: every setting of a run, settled once and frozen.

Precedence, highest first: command-line flags > environment (and ``.env`` in the working directory) >
``mpinfer.toml`` in the working directory > the defaults documented in OPTIONS. This is the only module
that reads ``os.environ``.

The API key is read from the environment or ``.env`` only (``OPENAI_API_KEY``): never from a flag, which
would leak into shell history and ``ps``, nor from mpinfer.toml, which tends to get committed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from dotenv import dotenv_values

from .errors import ConfigError

TOML_NAME = "mpinfer.toml"
ENV_FILE_NAME = ".env"


def _integer(text: Any) -> int:
    """An int from a flag's text or a TOML value; a TOML float or boolean is refused, never truncated."""
    if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
        raise ValueError("must be a whole number")
    return int(text)


def _number(text: Any) -> float:
    if isinstance(text, bool):
        raise ValueError("must be a number")
    return float(text)


def _at_least(parse: Callable[[Any], float], low: float, strictly: bool = False) -> Callable[[Any], Any]:
    """A parser that also bounds the value from below: ``> low`` when ``strictly``, else ``>= low``."""

    def bounded(text: Any) -> Any:
        value = parse(text)
        if value < low or (strictly and value == low):
            raise ValueError(f"must be more than {low:g}" if strictly else f"must be {low:g} or more")
        return value

    return bounded


_positive_int = _at_least(_integer, 1)
_non_negative_int = _at_least(_integer, 0)
_non_negative_float = _at_least(_number, 0)
_positive_float = _at_least(_number, 0, strictly=True)


def _json_object(text: Any) -> dict[str, Any]:
    value = text if isinstance(text, dict) else orjson.loads(text)
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def _bool(text: Any) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _transport(text: Any) -> str:
    value = str(text).strip().lower()
    if value not in ("aiohttp", "httpx"):
        raise ValueError("must be aiohttp or httpx")
    return value


def _backend(text: Any) -> str:
    value = str(text).strip().lower()
    if value not in ("local", "ray"):
        raise ValueError("must be local or ray")
    return value


def _path(text: Any) -> Path:
    return Path(str(text)).expanduser()


def _text(text: Any) -> str:
    return str(text)


@dataclass(frozen=True)
class Option:
    """One setting: its RunConfig field, how to parse it, its default, and where else it can be set."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    short: str | None = None
    env: tuple[str, ...] = ()
    metavar: str | None = None

    @property
    def is_switch(self) -> bool:
        """An on/off flag on the command line (``--fsync``), true/false elsewhere."""
        return self.parse is _bool

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_names(self) -> tuple[str, ...]:
        return self.env or ("MPINFER_" + self.name.upper(),)


# The one place where every default is documented. The CLI builds its flags from this table.
OPTIONS: tuple[Option, ...] = (
    Option("input", _path, None, "input tasks, one JSON object a line", "-i", metavar="FILE"),
    Option("output", _path, None, "output results (JSONL); rerun with the same file to resume", "-o",
           metavar="FILE"),
    Option("processes", _positive_int, 4, "worker processes", "-p", metavar="N"),
    Option("concurrency", _positive_int, 1, "requests in flight per worker process", "-c", metavar="C"),
    Option("model", _text, "gpt-4o-mini", "model to request; several, comma-separated, run every task "
           "against each into <output stem>.<model>.jsonl (a task's own \"model\" wins in a one-model run)"),
    Option("base_url", _text, None, "API base URL (default: the SDK's, api.openai.com)",
           env=("OPENAI_BASE_URL", "MPINFER_BASE_URL"), metavar="URL"),
    Option("temperature", _number, None, "sampling temperature (default: the server's)"),
    Option("max_tokens", _positive_int, None, "most tokens in an answer (default: the server's)",
           metavar="N"),
    Option("system_prompt", _text, None, "system message for tasks that carry none", metavar="TEXT"),
    Option("extra_body", _json_object, None, "JSON object merged into every request body", metavar="JSON"),
    Option("timeout", _positive_float, 120.0, "seconds one request may take before it is retried",
           metavar="SECONDS"),
    Option("max_retries", _non_negative_int, 3, "retries of a transient failure (429, 5xx, timeout)",
           metavar="N"),
    Option("retry_backoff", _positive_float, 1.0, "first retry waits about this long, doubling each time "
           "up to 60 s; a server's Retry-After wins", metavar="SECONDS"),
    Option("images_sep", _text, ";", "CSV: what separates several images in one cell", metavar="SEP"),
    Option("id_from_row", _bool, False, "use the row number (0-based) as the task id, for inputs without ids"),
    Option("limit", _positive_int, None, "run only the first N selected tasks (a trial run)", metavar="N"),
    Option("start", _non_negative_int, None, "first row to run (0-based)", metavar="K"),
    Option("end", _positive_int, None, "row to stop before (0-based, exclusive)", metavar="K"),
    Option("ids", _path, None, "run only the ids in this file, one a line", metavar="FILE"),
    Option("only_failed", _bool, False, "run only the ids in the errors file that are not done"),
    Option("image_root", _path, None, "folder relative image paths resolve against (default: the input's)",
           metavar="DIR"),
    Option("id_key", _text, "id", "input field holding the task id", metavar="KEY"),
    Option("prompt_key", _text, "prompt", "input field holding the prompt text", metavar="KEY"),
    Option("images_key", _text, "images", "input field holding an image path or a list of them",
           metavar="KEY"),
    Option("log_dir", _path, Path("logs"), "folder for the per-run log files", metavar="DIR"),
    Option("rpm", _positive_int, None, "requests per minute, per key and model, for all processes together",
           metavar="N"),
    Option("tpm", _positive_int, None, "tokens per minute (prompt estimate + max_tokens), per key and model",
           metavar="N"),
    Option("rate_window", _positive_float, 60.0, "seconds --rpm and --tpm are counted over (OpenAI: 60)",
           metavar="SECONDS"),
    Option("api_keys_file", _path, None, "file with one API key a line, to spread the work over "
           "(default: OPENAI_API_KEYS=k1,k2 or OPENAI_API_KEY)", metavar="FILE"),
    Option("backend", _backend, "local", "where tasks run: local (worker processes on this machine) or ray "
           "(actors on a Ray cluster; pip install mpinfer[ray])", metavar="NAME"),
    Option("ray_address", _text, None, "Ray cluster to join (default: RAY_ADDRESS, or a new local one)",
           env=("MPINFER_RAY_ADDRESS", "RAY_ADDRESS"), metavar="ADDR"),
    Option("transport", _transport, "aiohttp", "HTTP stack under the openai SDK: aiohttp (half the CPU a "
           "request) or httpx (the SDK's default)", metavar="NAME"),
    Option("fsync", _bool, False, "fsync after every line: survives power loss, costs a disk flush a line"),
    Option("prices", _path, None, "price table (JSON or TOML) over the built-in one: "
           '{"model": {"input": 0.15, "cached_input": 0.075, "output": 0.6}}, USD per 1M tokens',
           metavar="FILE"),
    Option("price_input", _non_negative_float, None, "USD per 1M input tokens, for every model",
           metavar="USD"),
    Option("price_output", _non_negative_float, None, "USD per 1M output tokens, for every model",
           metavar="USD"),
    Option("max_cost", _positive_float, None, "budget in USD for the output files (all runs): stop taking "
           "tasks before the estimated total would pass it", metavar="USD"),
    Option("allow_mixed", _bool, False, "resume even though the settings that change answers differ from "
           "those that wrote the output"),
)

_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, settled once. Plain, picklable data: it is sent to worker processes."""

    input: Path | None = None
    output: Path | None = None
    processes: int = 4
    concurrency: int = 1
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    system_prompt: str | None = None
    extra_body: dict[str, Any] | None = None
    timeout: float = 120.0
    max_retries: int = 3
    retry_backoff: float = 1.0
    images_sep: str = ";"
    id_from_row: bool = False
    limit: int | None = None
    start: int | None = None
    end: int | None = None
    ids: Path | None = None
    only_failed: bool = False
    image_root: Path | None = None
    id_key: str = "id"
    prompt_key: str = "prompt"
    images_key: str = "images"
    log_dir: Path = Path("logs")
    backend: str = "local"
    ray_address: str | None = None
    transport: str = "aiohttp"
    fsync: bool = False
    rpm: int | None = None
    tpm: int | None = None
    rate_window: float = 60.0
    api_keys_file: Path | None = None
    prices: Path | None = None
    price_input: float | None = None
    price_output: float | None = None
    max_cost: float | None = None
    allow_mixed: bool = False
    verbose: bool = False
    # repr=False: a config is logged and shown in errors; the keys must never be.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Things the user should hear about the settings themselves (e.g. a .env others can read).
    warnings: tuple[str, ...] = field(default=(), repr=False, compare=False)
    # The options the user set somewhere (flag, environment, .env or mpinfer.toml), not left at default.
    explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @property
    def api_key(self) -> str | None:
        """The first key (the only one, in most runs)."""
        return self.api_keys[0] if self.api_keys else None

    @property
    def models(self) -> tuple[str, ...]:
        """The models to run, from ``--model a,b,c``."""
        return tuple(m.strip() for m in self.model.split(",") if m.strip()) or (self.model,)

    @property
    def resolved_image_root(self) -> Path:
        """Where relative image paths resolve: --image-root, else the input file's folder."""
        if self.image_root is not None:
            return self.image_root
        return self.input.parent if self.input is not None else Path(".")

    def require_paths(self) -> tuple[Path, Path]:
        """The input and output paths, or a ConfigError that says where to set them."""
        if self.input is None:
            raise ConfigError(_missing("input", "-i FILE"))
        if self.output is None:
            raise ConfigError(_missing("output", "-o FILE"))
        return self.input, self.output

    def require_api_key(self) -> str:
        return self.require_api_keys()[0]

    def require_api_keys(self) -> tuple[str, ...]:
        if not self.api_keys:
            raise ConfigError(
                "no API key: set OPENAI_API_KEY (or OPENAI_API_KEYS=k1,k2) in the environment or in .env "
                "(see .env.example), or pass --api-keys-file; a local server that needs none accepts any "
                "value, e.g. OPENAI_API_KEY=none"
            )
        return self.api_keys


def _missing(name: str, flag: str) -> str:
    env = _BY_NAME[name].env_names[0]
    return f"no {name} file: pass {flag}, or set {env} in the environment or .env, or {name} in {TOML_NAME}"


def _parse(option: Option, value: Any, source: str) -> Any:
    try:
        return option.parse(value)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{source}: {option.name} = {value!r} is invalid: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
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
            raise ConfigError(f"{path}: api_key does not belong in {TOML_NAME}; set OPENAI_API_KEY in .env")
        if name not in _BY_NAME and name != "verbose":
            known = ", ".join(sorted(_BY_NAME))
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {known})")
        settings[name] = value
    return settings


def environment(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> list[dict[str, str]]:
    """Where settings are looked up after the flags, first hit wins: the process environment, then ``.env``."""
    cwd = cwd or Path.cwd()
    dotenv = {k: v for k, v in dotenv_values(cwd / ENV_FILE_NAME).items() if v is not None}
    return [dict(os.environ if environ is None else environ), dotenv]


def _lookup(layers: list[dict[str, str]], names: tuple[str, ...]) -> tuple[str, str] | None:
    """(name, value) of the first non-empty variable, layer by layer: any name in the environment beats .env."""
    for layer in layers:
        for name in names:
            if layer.get(name):
                return name, layer[name]
    return None


def load_config(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> RunConfig:
    """Settle a RunConfig from flags > environment and .env > mpinfer.toml > defaults.

    ``flags`` holds only what the user gave (None means not given); ``environ`` defaults to the real
    environment, ``cwd`` to the working directory (where .env and mpinfer.toml are looked up).
    """
    cwd = cwd or Path.cwd()
    layers = environment(environ, cwd)
    toml_path = cwd / TOML_NAME
    toml = _read_toml(toml_path)
    flags = flags or {}
    values: dict[str, Any] = {}
    explicit: set[str] = set()
    for option in OPTIONS:
        explicit.add(option.name)
        if flags.get(option.name) is not None:
            values[option.name] = _parse(option, flags[option.name], option.flag)
            continue
        found = _lookup(layers, option.env_names)
        if found is not None:
            values[option.name] = _parse(option, found[1], found[0])
        elif option.name in toml:
            values[option.name] = _parse(option, toml[option.name], str(toml_path))
        else:
            values[option.name] = option.default
            explicit.discard(option.name)
    values["explicit"] = frozenset(explicit)
    verbose = toml.get("verbose", False)
    values["verbose"] = bool(flags.get("verbose")) or _parse(Option("verbose", _bool, False, ""), verbose,
                                                            str(toml_path))
    values["api_keys"] = _api_keys(layers, values["api_keys_file"])
    values["warnings"] = _file_warnings(cwd / ENV_FILE_NAME)
    return RunConfig(**values)


def _file_warnings(env_file: Path) -> tuple[str, ...]:
    """A .env holds the key: warn when users other than its owner can read it."""
    try:
        mode = env_file.stat().st_mode
    except OSError:
        return ()
    if mode & 0o044:
        return (f"{env_file} can be read by other users (mode {mode & 0o777:o}); it holds your API key: "
                f"chmod 600 {env_file}",)
    return ()


def _api_keys(layers: list[dict[str, str]], keys_file: Path | None) -> tuple[str, ...]:
    """Keys from --api-keys-file, else OPENAI_API_KEYS (comma-separated), else OPENAI_API_KEY."""
    if keys_file is not None:
        try:
            lines = keys_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"{keys_file}: cannot read the API keys file: {exc.strerror or exc}") from None
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ConfigError(f"{keys_file}: no API keys in it (one a line)")
        return tuple(dict.fromkeys(keys))
    found = _lookup(layers, ("OPENAI_API_KEYS", "OPENAI_API_KEY"))
    if found is None:
        return ()
    return tuple(dict.fromkeys(k.strip() for k in found[1].split(",") if k.strip()))
