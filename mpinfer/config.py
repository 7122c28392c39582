"""RunConfig: every setting of a run, settled once and frozen.

Precedence, highest first: command-line flags (or keyword settings of ``mpinfer.run``) > environment
(and ``.env`` in the working directory) > ``mpinfer.toml`` in the working directory > the field's
default. This is the only module that reads ``os.environ``.

To add a setting, add one field to RunConfig, in one place (its default, parser, help and names)::

    # shown: what a None default means, for the docs
    max_wait: float | None = setting(None, positive_float, "what it does, for --help",
                                     metavar="SECONDS", shown="no limit")

It then has a flag (``--max-wait``), a variable (``MPINFER_MAX_WAIT``; ``env=`` names others), a
toml key and a keyword of ``mpinfer.run``. ``tests/test_docs.py`` fails until the settings table
of docs/settings.md and ``.env.example`` have its row and its line, and prints both to paste.
Choices are a StrEnum here, parsed with ``one_of(TheEnum)``; an on/off switch is parsed with
``as_bool``. A setting that changes the answers also goes in ``store/manifest.py``
FINGERPRINT_FIELDS, so a resume with another value is refused.

The API key is read from the environment or ``.env`` only (``OPENAI_API_KEY``): never from a flag,
which would leak into shell history and ``ps``, nor from mpinfer.toml, which tends to get committed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .api.structured import AnswerRule, answer_rule, labels_list
from .api.thinking import EFFORTS, ThinkingForm, as_effort, switches
from .errors import ConfigError
from .eval.variants import Variant, read_variants
from .settings import (
    ModelRates,
    Option,
    as_bool,
    as_json_object,
    as_number,
    as_path,
    as_text,
    non_negative_float,
    non_negative_int,
    on_off,
    one_of,
    options_of,
    parse_rate,
    positive_float,
    positive_int,
    setting,
)
from .sources import (
    ENDPOINT_TABLES,
    TOML_NAME,
    api_keys,
    file_warnings,
    lookup,
    read_toml,
    settings_file,
)
from .sources import endpoint_table as table_of
from .store.judged import JudgeForm

if TYPE_CHECKING:
    from .api.endpoints import Endpoint

ENV_FILE_NAME = ".env"


class Api(StrEnum):
    """Which OpenAI API plain rows go to (a Batch API line names its own with its url)."""

    CHAT = "chat"  # chat.completions
    RESPONSES = "responses"  # the Responses API


class ImageDetail(StrEnum):
    """OpenAI's ``detail`` of an image part: what the model sees, and what it costs."""

    LOW = "low"
    HIGH = "high"
    AUTO = "auto"


class BackendKind(StrEnum):
    """Where tasks run."""

    LOCAL = "local"  # worker processes on this machine
    RAY = "ray"  # actors on a Ray cluster
    BATCH = "batch"  # the OpenAI Batch API: half the price, answers within 24 hours


BATCH_MAX_REQUESTS = 50_000
"""Requests the Batch API takes in one batch."""
DEFAULT_GRACE_S = 30.0
"""--grace: the seconds a stopped run gives the requests in flight (a flag of the CLI's)."""


def _batch_size(text: Any) -> int:
    value: int = positive_int(text)
    if value > BATCH_MAX_REQUESTS:
        raise ValueError(f"must be {BATCH_MAX_REQUESTS:,} or less (the Batch API's limit)")
    return value


class Transport(StrEnum):
    """How requests are sent: mpinfer's own over aiohttp, without the SDK (api/wire.py), or through
    the openai SDK over its httpx client, which costs several times the CPU a request
    (bench/README.md, http_stack)."""

    AIOHTTP = "aiohttp"
    HTTPX = "httpx"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, settled once. Plain, picklable data: it is sent to worker processes.

    Each ``setting(default, parse, help, ...)`` field is a setting (flag, variables, toml key); the
    rest is settled by ``load_config`` from the other sources (sources.py).
    """

    input: Path | None = setting(None, as_path, "input tasks: JSONL, CSV, a JSON list, a "
                                 "Parquet file or folder of shards", short="-i", metavar="FILE")
    output: Path | None = setting(None, as_path,
                                  "output results (JSONL); rerun with the same file to resume",
                                  short="-o", metavar="FILE")
    processes: int = setting(4, positive_int, "worker processes", short="-p", metavar="N")
    concurrency: int = setting(1, positive_int, "requests in flight per worker process", short="-c",
                               metavar="C")
    model: str = setting("gpt-4o-mini", as_text,
                         "model to request; several, comma-separated, run every task "
                         "against each into <output stem>.<model>.jsonl", metavar="NAME")
    model_key: str | None = setting(None, as_text,
                                    "input field naming a task's own model, which then wins "
                                    "over --model in a one-model run (per-task models); without "
                                    "it every task asks for --model", metavar="FIELD",
                                    shown="none: --model for every task")
    base_url: str | None = setting(None, as_text, "API base URL",
                                   env=("OPENAI_BASE_URL", "MPINFER_BASE_URL"), metavar="URL",
                                   shown="api.openai.com")
    temperature: float | None = setting(None, as_number, "sampling temperature", metavar="T",
                                        shown="the server's")
    max_tokens: int | None = setting(None, positive_int, "most tokens in an answer", metavar="N",
                                     shown="the server's")
    system_prompt: str | None = setting(None, as_text, "system message for tasks that carry none",
                                        metavar="TEXT")
    template: str | None = setting(None, as_text,
                                   "user prompt from the row's fields: {field} placeholders, "
                                   "{{ and }} for braces", metavar="TEXT",
                                   shown="the --prompt-key field")
    system_template: str | None = setting(None, as_text,
                                          "system message from the row's fields, as --template, "
                                          "for tasks that carry none", metavar="TEXT")
    variants: Path | None = setting(None, as_path,
                                    "TOML file of [[variants]] tables (name, template, system, "
                                    "temperature, max_tokens): every task runs once per variant",
                                    metavar="FILE")
    extra_body: dict[str, Any] | None = setting(None, as_json_object,
                                                "JSON object merged into every request body",
                                                metavar="JSON")
    thinking: bool | None = setting(None, on_off,
                                    "turn a model's thinking on or off, in its server's own field "
                                    "(see --thinking-form)", metavar="on|off",
                                    shown="the model's default")
    reasoning_effort: str | None = setting(None, as_effort,
                                           "how much a model thinks: " + ", ".join(EFFORTS),
                                           metavar="LEVEL", shown="the server's default")
    thinking_form: ThinkingForm = setting(ThinkingForm.AUTO, one_of(ThinkingForm),
                                          "how --thinking and --reasoning-effort are sent: auto "
                                          "(by the base URL), openai, deepseek, dashscope or vllm",
                                          metavar="FORM")
    json_schema: Path | None = setting(None, as_path,
                                       "JSON Schema file: answers are asked for as its JSON "
                                       "(strict), checked and kept as parsed", metavar="FILE",
                                       shown="free text")
    labels: tuple[str, ...] | None = setting(None, labels_list,
                                             "comma-separated labels: an answer must name "
                                             "exactly one, kept as label", metavar="A,B",
                                             shown="free text")
    judge: Path | None = setting(None, as_path,
                                 "TOML file of a judge (model, template, labels or json_schema): "
                                 "each answer judged into <output stem>.judge.jsonl",
                                 metavar="FILE", shown="none")
    timeout: float = setting(120.0, positive_float,
                             "seconds one request may take, connect to last byte", metavar="S")
    max_retries: int = setting(3, non_negative_int, "retries of a 5xx, timeout or reset (not 429s)",
                               metavar="N")
    patience: float = setting(300.0, positive_float,
                              "seconds to wait out rate limits or a server that "
                              "is down before tasks fail", metavar="SECONDS")
    retry_backoff: float = setting(1.0, positive_float,
                                   "first retry waits about this long, doubling each time up "
                                   "to 60 s; a server's Retry-After wins", metavar="SECONDS")
    images_sep: str = setting(";", as_text, "CSV: what separates several images in one cell",
                              metavar="SEP")
    id_from_row: bool = setting(False, as_bool,
                                "use the row number (0-based) as the task id, "
                                "for inputs without ids")
    limit: int | None = setting(None, positive_int,
                                "run only the first N selected tasks (a trial run)", metavar="N",
                                shown="all")
    start: int | None = setting(None, non_negative_int, "first row to run (0-based)", metavar="K",
                                shown="0")
    end: int | None = setting(None, positive_int, "row to stop before (0-based, exclusive)",
                              metavar="K", shown="after the last row")
    ids: Path | None = setting(None, as_path, "run only the ids in this file, one a line",
                               metavar="FILE", shown="all")
    only_failed: bool = setting(False, as_bool,
                                "run only the ids in the errors file that are not done")
    image_root: Path | None = setting(None, as_path, "folder relative image paths resolve against",
                                      metavar="DIR", shown="the input's folder")
    id_key: str = setting("id", as_text, "input field holding the task id", metavar="KEY")
    prompt_key: str = setting("prompt", as_text, "input field holding the prompt text",
                              metavar="KEY")
    images_key: str = setting("images", as_text,
                              "input field holding an image path or a list of them "
                              "(Parquet: or image bytes)", metavar="KEY")
    api: Api = setting(Api.CHAT, one_of(Api),
                       "API plain rows are sent to: chat (chat.completions) or responses (the "
                       "Responses API: the answer is its output text)", metavar="NAME")
    messages_key: str = setting("messages", as_text,
                                "input field holding a whole chat (a list of messages, "
                                "images inside), sent as that conversation", metavar="KEY")
    max_image_mb: float = setting(50.0, positive_float,
                                  "MB of image data one request may carry (the provider's limit; "
                                  "OpenAI: 50): a task over it fails before it is sent",
                                  metavar="MB")
    image_detail: ImageDetail | None = setting(None, one_of(ImageDetail),
                                               "detail of every image part: low, high or auto",
                                               metavar="LEVEL", shown="none sent")
    image_max_side: int | None = setting(None, positive_int,
                                         "shrink images whose longer side passes N pixels "
                                         "(mpinfer[images])", metavar="N", shown="as they are")
    log_dir: Path = setting(Path("logs"), as_path, "folder for the per-run log files",
                            metavar="DIR")
    rpm: int | ModelRates | None = setting(None, parse_rate,
                                           "requests per minute, per key (or endpoint) and "
                                           "model, for all processes together; per model: "
                                           "gpt-4o=500,gpt-4o-mini=5000", metavar="N",
                                           shown="no limit")
    tpm: int | ModelRates | None = setting(None, parse_rate,
                                           "tokens per minute (prompt estimate + max_tokens), per "
                                           "key (or endpoint) and model; per model as --rpm",
                                           metavar="N", shown="no limit")
    endpoints: Path | None = setting(None, as_path,
                                     "TOML file of [[endpoints]] tables (model, provider, "
                                     "base_url, deployment, api_version, api_key_env, rpm, tpm, "
                                     "max_in_flight): several keys, regions and Azure deployments "
                                     "per model", metavar="FILE", shown="--base-url with the keys")
    rate_window: float = setting(60.0, positive_float,
                                 "seconds --rpm and --tpm are counted over (OpenAI: 60)",
                                 metavar="SECONDS")
    burst: float = setting(0.5, non_negative_float, "seconds' worth of the rate limit sent at once",
                           metavar="S")
    share_limits: bool = setting(True, as_bool,
                                 "runs on this machine on one key, base URL and model share "
                                 "their limits, pauses and learned rates (off: this run's own)")
    limits_dir: Path | None = setting(None, as_path, "folder of the limits runs share",
                                      metavar="DIR", shown="$XDG_STATE_HOME/mpinfer/limits")
    api_keys_file: Path | None = setting(None, as_path,
                                         "file with one API key a line, to spread the work over",
                                         metavar="FILE",
                                         shown="OPENAI_API_KEYS=k1,k2 or OPENAI_API_KEY")
    backend: BackendKind = setting(BackendKind.LOCAL, one_of(BackendKind),
                                   "where tasks run: local (worker processes on this machine), "
                                   "ray (actors on a Ray cluster; pip install mpinfer[ray]) or "
                                   "batch (the OpenAI Batch API: half the price, within 24 "
                                   "hours)", metavar="NAME")
    batch_size: int = setting(BATCH_MAX_REQUESTS, _batch_size,
                              "--backend batch: most requests in one batch (the "
                              "Batch API allows 50,000)", metavar="N")
    batch_poll: float = setting(30.0, positive_float,
                                "--backend batch: seconds between polls of the open batches",
                                metavar="SECONDS")
    batch_max_bytes: int = setting(200 * 1024 * 1024, positive_int,
                                   "--backend batch: largest batch input file in bytes "
                                   "(the Batch API allows 200 MB)", metavar="BYTES")
    keep_batch_files: bool = setting(False, as_bool,
                                     "--backend batch: keep each batch's input, output and error "
                                     "files at the provider after its merge (deleted by default, "
                                     "so the provider's file storage does not fill up run after "
                                     "run)")
    ray_address: str | None = setting(None, as_text, "Ray cluster to join",
                                      env=("MPINFER_RAY_ADDRESS", "RAY_ADDRESS"), metavar="ADDR",
                                      shown="RAY_ADDRESS, or a new local one")
    transport: Transport = setting(Transport.AIOHTTP, one_of(Transport),
                                   "aiohttp (mpinfer's own requests, no SDK) or httpx (the openai "
                                   "SDK's client: SOCKS proxies; several times the CPU)",
                                   metavar="NAME")
    fsync: bool = setting(False, as_bool,
                          "fsync after every line: survives power loss, costs a disk flush a line")
    prices: Path | None = setting(None, as_path,
                                  "price table (JSON or TOML) over the built-in one: "
                                  '{"model": {"input": 0.15, "cached_input": 0.075, '
                                  '"output": 0.6}}, USD per 1M tokens', metavar="FILE",
                                  shown="built in")
    price_input: float | None = setting(None, non_negative_float,
                                        "USD per 1M input tokens, for every model", metavar="USD",
                                        shown="the price table's")
    price_output: float | None = setting(None, non_negative_float,
                                         "USD per 1M output tokens, for every model", metavar="USD",
                                         shown="the price table's")
    max_cost: float | None = setting(None, positive_float,
                                     "budget in USD for the output files (all runs): stop taking "
                                     "tasks before the estimated total would pass it",
                                     metavar="USD", shown="no budget")
    strict_model: bool = setting(False, as_bool,
                                 "an answer by another model than requested is not done: it "
                                 "fails as wrong_model (errors file, exit 1; a rerun asks again)")
    allow_mixed: bool = setting(False, as_bool,
                                "resume even though the settings that change answers "
                                "differ from those that wrote the output")
    verbose: bool = setting(False, as_bool, "log every attempt and the HTTP stack")
    by: str | None = setting(None, as_text,
                             "input field to count results by (scenario, task_type): with "
                             "--status and --report", metavar="FIELD", shown="no groups")
    report: bool = setting(False, as_bool,
                           "write the HTML report <output>.report.html at the end of every run "
                           "(needs mpinfer[report]; --report writes one at once)", cli=False)
    # repr=False: a config is logged and shown in errors; the keys must never be.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # The endpoints table (--endpoints, or [[endpoints]] in mpinfer.toml), keys read; api_keys then
    # holds each endpoint's key, in table order. Empty: the implicit table (each key at --base-url).
    endpoint_table: tuple[Endpoint, ...] = field(default=(), repr=False)
    # The variants of --variants, read (eval/variants.py); empty without.
    variant_table: tuple[Variant, ...] = field(default=(), repr=False)
    # Things the user should hear about the settings themselves (e.g. a .env others can read).
    warnings: tuple[str, ...] = field(default=(), repr=False, compare=False)
    # A judging run's (eval/judge.py): its lines are a judge's (store/judged.py); None: answers.
    judging: JudgeForm | None = field(default=None, repr=False)
    # The options the user set (flag, environment, .env or mpinfer.toml), not left at default.
    explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        # A RunConfig built directly (not by load_config) with --variants reads its file too, so
        # that every command sees the same outputs.
        if self.variants is not None and not self.variant_table:
            object.__setattr__(self, "variant_table", read_variants(self.variants))

    @property
    def window_rpm(self) -> int | None:
        """--rpm as one number for every lane (the limiter's window); None if per model or unset."""
        return self.rpm if isinstance(self.rpm, int) else None

    @property
    def window_tpm(self) -> int | None:
        """--tpm as one number for every lane; None if per model or unset."""
        return self.tpm if isinstance(self.tpm, int) else None

    @property
    def api_key(self) -> str | None:
        """The first key (the only one, in most runs)."""
        return self.api_keys[0] if self.api_keys else None

    @property
    def models(self) -> tuple[str, ...]:
        """The models to run, from ``--model a,b,c``."""
        return tuple(m.strip() for m in self.model.split(",") if m.strip()) or (self.model,)

    @property
    def variant_names(self) -> tuple[str, ...]:
        """The prompt variants' names, in the file's order (none without --variants)."""
        return tuple(variant.name for variant in self.variant_table)

    @property
    def model_named(self) -> bool:
        """Whether the user named the model(s) (flag, environment, toml, ``mpinfer.run`` keyword,
        or several): a named model replaces a Batch API body's own."""
        return len(self.models) > 1 or "model" in self.explicit

    @property
    def resolved_image_root(self) -> Path:
        """Where relative image paths resolve: --image-root, else the input file's folder."""
        if self.image_root is not None:
            return self.image_root
        if self.input is None:
            return Path(".")
        return self.input if self.input.is_dir() else self.input.parent  # a folder of shards

    def require_paths(self) -> tuple[Path, Path]:
        """The input and output paths, or a ConfigError that says where to set them."""
        if self.input is None:
            raise ConfigError(_missing("input", "-i FILE"))
        if self.output is None:
            raise ConfigError(_missing("output", "-o FILE"))
        return self.input, self.output

    def require_api_key(self) -> str:
        """The first API key, or a ConfigError saying how to set one."""
        return self.require_api_keys()[0]

    def require_api_keys(self) -> tuple[str, ...]:
        """The API keys, or a ConfigError saying which are missing and how to set them."""
        unset = [str(ep.api_key_env) for ep in self.endpoint_table if not ep.api_key]
        if unset:
            raise ConfigError("the endpoints table's keys are not set: "
                              f"{', '.join(dict.fromkeys(unset))} (set them in the environment or "
                              ".env)")
        if not self.api_keys:
            raise ConfigError(
                "no API key: set OPENAI_API_KEY (or OPENAI_API_KEYS=k1,k2) in the environment or "
                "in .env (see .env.example), or pass --api-keys-file; a local server that needs "
                "none accepts any value, e.g. OPENAI_API_KEY=none"
            )
        return self.api_keys


@dataclass(frozen=True)
class RequestSettings:
    """What building a task's request reads of the run (``api.messages.task_request``).

    ``chosen``: the user named the model(s), so it replaces a Batch API body's own; ``per_task``:
    --model-key, a task's own model wins; ``max_image_mb`` is by model index: the smallest of
    --max-image-mb and the limits of the endpoints serving it; so are ``image_detail`` (an
    endpoint's wins over --image-detail) and ``image_max_side`` (the smallest).
    """

    models: tuple[str, ...]
    chosen: bool
    api: Api
    image_root: Path
    max_image_mb: tuple[float, ...]
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    extra_body: dict[str, Any] | None = None
    per_task: bool = False
    # by model index: the fields that switch its thinking (--thinking, --reasoning-effort)
    thinking: tuple[dict[str, Any], ...] = ()
    rule: AnswerRule | None = None  # --labels or --json-schema: what an answer must be
    image_detail: tuple[str | None, ...] = ()
    image_max_side: tuple[int | None, ...] = ()

    @property
    def response_format(self) -> dict[str, Any] | None:
        """The ``response_format`` every plain row's request carries (--json-schema), or None."""
        return self.rule.response_format() if self.rule is not None else None

    @classmethod
    def of(cls, config: RunConfig) -> RequestSettings:
        """The request settings of a run."""
        models = config.models
        # An endpoint may set its own image limit: the smallest of the model's endpoints holds for
        # all of them.
        image_mb = tuple(min([config.max_image_mb, *(ep.max_image_mb for ep in config.endpoint_table
                                                     if ep.serves(name) and ep.max_image_mb)])
                         for name in models)
        served = [[ep for ep in config.endpoint_table if ep.serves(name)] for name in models]
        detail = tuple(next((ep.image_detail for ep in eps if ep.image_detail),
                            config.image_detail) for eps in served)
        sides = tuple(min([s for s in (config.image_max_side, *(ep.image_max_side for ep in eps))
                           if s], default=None) for eps in served)
        return cls(models, config.model_named, config.api,
                   config.resolved_image_root, image_mb, config.system_prompt, config.temperature,
                   config.max_tokens, config.extra_body, config.model_key is not None,
                   model_thinking(config), answer_rule(config.labels, config.json_schema),
                   detail, sides)

    def extra_for(self, model_index: int) -> dict[str, Any] | None:
        """The fields merged into a request of the model at ``model_index``: its thinking switch,
        then --extra-body, which wins where both name a field."""
        switch = self.thinking[model_index] if self.thinking else None
        if not switch:
            return self.extra_body
        return {**switch, **(self.extra_body or {})}

    def requested(self, own: str | None, body: bool, model_index: int) -> str:
        """The model a task's request names: the one rule of which model is asked for.

        ``own`` is the task's own model: a Batch API body's ``model`` (``body``), which the user
        wrote on purpose and which only a model named for the run replaces; or a plain row's field
        named by --model-key, which wins in a one-model run. Without --model-key a row's fields
        never choose the model: an export's ``model`` column (the model that answered) fed back as
        input does not change what a later run sends.
        """
        run_model = self.models[model_index]
        if body:
            return run_model if self.chosen or not own else own
        if own and self.per_task and len(self.models) == 1:
            return own
        return run_model


# The settings, derived from RunConfig's fields: the CLI builds its flags from this table.
OPTIONS: tuple[Option, ...] = options_of(RunConfig)
_BY_NAME = {option.name: option for option in OPTIONS}


def model_thinking(config: RunConfig) -> tuple[dict[str, Any], ...]:
    """By model index, the fields that ask its servers for --thinking and --reasoning-effort
    (api/thinking.py); raises ConfigError when they cannot."""
    if config.thinking is None and config.reasoning_effort is None:
        return ()
    places = {name: [(ep.base_url, ep.provider == "azure") for ep in config.endpoint_table
                     if ep.serves(name)] or [(config.base_url, False)] for name in config.models}
    return switches(places, config.thinking_form, config.thinking, config.reasoning_effort,
                    responses=config.api is Api.RESPONSES)


def _missing(name: str, flag: str) -> str:
    env = _BY_NAME[name].env_names[0]
    return (f"no {name} file: pass {flag}, or set {env} in the environment or .env, "
            f"or {name} in {TOML_NAME}")


def parse_setting(name: str, value: Any, source: str) -> Any:
    """Parse ``value`` as setting ``name`` (a ConfigError names ``source``; KeyError if unknown)."""
    return _parse(_BY_NAME[name], value, source)


def _parse(option: Option, value: Any, source: str) -> Any:
    try:
        return option.parse(value)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{source}: {option.name} = {value!r} is invalid: {exc}") from None


def environment(environ: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> list[dict[str, str]]:
    """Where settings are looked up after the flags (first hit wins): the environment, ``.env``."""
    cwd = cwd or Path.cwd()
    dotenv: dict[str, str] = {}
    if (cwd / ENV_FILE_NAME).exists():  # (python-dotenv loaded only then: it costs every start)
        from dotenv import dotenv_values

        dotenv = {k: v for k, v in dotenv_values(cwd / ENV_FILE_NAME).items() if v is not None}
    return [dict(os.environ if environ is None else environ), dotenv]


def load_config(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    *,
    named: Callable[[Option], str] | None = None,
    config_file: Path | None = None,
) -> RunConfig:
    """Settle a RunConfig from flags > environment and .env > mpinfer.toml > defaults.

    ``flags`` holds only what the user gave (None means not given); ``environ`` defaults to the real
    environment, ``cwd`` to the working directory (where .env and mpinfer.toml are looked up);
    ``named`` says how an error names a flag (``--processes``; ``mpinfer.run`` names its keywords
    its way). ``config_file`` (``--config``, else ``MPINFER_CONFIG``) is read instead of
    ``./mpinfer.toml``.
    """
    flags = flags or {}
    cwd = cwd or Path.cwd()
    layers = environment(environ, cwd)
    toml_path = settings_file(config_file, layers, cwd)
    toml = read_toml(toml_path, _BY_NAME)
    values: dict[str, Any] = {}
    explicit: set[str] = set()
    for option in OPTIONS:
        explicit.add(option.name)
        if flags.get(option.name) is not None:
            values[option.name] = _parse(option, flags[option.name],
                                         named(option) if named else option.flag)
            continue
        found = lookup(layers, option.env_names)
        if found is not None:
            values[option.name] = _parse(option, found[1], found[0])
        elif option.name in toml:
            values[option.name] = _parse(option, toml[option.name], str(toml_path))
        else:
            values[option.name] = option.default
            explicit.discard(option.name)
    values["explicit"] = frozenset(explicit)
    start, end = values["start"] or 0, values["end"]
    if end is not None and end <= start:  # rows start..end-1: none, a mistake rather than a run
        raise ConfigError(f"--start {start} --end {end} selects no row: --end is the first row "
                          "not run, so it must be more than --start")
    values["api_keys"] = api_keys(layers, values["api_keys_file"])
    tables = toml.get(ENDPOINT_TABLES)
    table = table_of(values["endpoints"], tables, str(toml_path), layers)
    if table:
        values["endpoint_table"] = table
        values["api_keys"] = tuple(endpoint.api_key for endpoint in table if endpoint.api_key)
    values["warnings"] = file_warnings(cwd / ENV_FILE_NAME)
    config = RunConfig(**values)
    model_thinking(config)  # a switch no server of the run can take: refused before anything runs
    return config


def endpoint_table(path: Path) -> tuple[Endpoint, ...]:
    """The endpoints table of a TOML file, keys read from the environment and ./.env."""
    return table_of(path, None, str(path), environment())
