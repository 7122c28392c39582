"""``MockConfig``: every tunable of the mock server, its validation, and runtime updates.

The command line, the subprocess helper and ``POST /_mock/config`` all build a ``MockConfig``. For a
runtime update, ``coerce_field`` turns each JSON value into the field's declared type (and
``str_list`` checks the lists of keys and scripted outcomes) before ``dataclasses.replace`` runs the
validation again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

WINDOW_S = 60.0
"""Default length of the sliding rate-limit window (``MockConfig.window_s``),
as OpenAI's per-minute limits."""

# Fields of MockConfig that POST /_mock/config may change at runtime. host,
# port and backlog are fixed once listening; keys are secrets and are only
# ever narrowed (revoked), never replaced or echoed back.
RUNTIME_FIELDS = frozenset(
    {
        "latency_ms",
        "jitter_ms",
        "seed",
        "p429",
        "p500",
        "phang",
        "preset",
        "pmalformed",
        "pquota",
        "retry_after",
        "hang_s",
        "model_map",
        "rpm",
        "tpm",
        "window_s",
        "record_bodies",
        "quantum_s",
        "limit_style",
        "max_concurrent",
        "slow_bps",
        "reasoning_models",
        "refuse_marker",
        "filter_marker",
        "filter_answer_marker",
        "omit_usage",
        "max_image_bytes",
        "azure_deployments",
        "models",
        "answer_labels",
        "label_models",
        "pbad_answer",
    }
)


@dataclass(frozen=True)
class MockConfig:
    """Every tunable of the mock server, with its default.

    One frozen value object keeps the command line, the subprocess helper and
    the runtime ``/_mock/config`` endpoint in agreement about names, types and
    defaults; runtime changes produce a new instance via ``dataclasses.replace``
    so validation in ``__post_init__`` always runs.
    """

    host: str = "127.0.0.1"
    """Address to bind. Only loopback is intended: this server has no real auth."""

    port: int = 0
    """TCP port; 0 lets the OS choose a free one (reported in the MOCK_READY line)."""

    latency_ms: float = 0.0
    """Base delay before every chat response, simulating model latency."""

    jitter_ms: float = 0.0
    """Uniform +/- jitter added to ``latency_ms`` (the result is clamped at 0)."""

    seed: int = 0
    """Seed of the per-server RNG that draws faults, so runs are reproducible."""

    p429: float = 0.0
    """Probability of a rate-limit 429 (with Retry-After) per chat request."""

    p500: float = 0.0
    """Probability of an internal-server-error 500 per chat request."""

    phang: float = 0.0
    """Probability that a request is read but never answered (until ``hang_s``)."""

    preset: float = 0.0
    """Probability that the connection is reset (RST) instead of answered."""

    pmalformed: float = 0.0
    """Probability of a 200 response whose JSON body is truncated."""

    pquota: float = 0.0
    """Probability of a 429 ``insufficient_quota`` error (not retryable by waiting)."""

    retry_after: float = 1.0
    """Seconds advertised in Retry-After / retry-after-ms on fault 429s."""

    hang_s: float = 3600.0
    """How long a hanging request is held before the server drops the connection."""

    model_map: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Requested model -> reported model, to simulate a server answering with another model."""

    keys: tuple[str, ...] = ()
    """Accepted API keys; empty means any non-empty bearer key is accepted."""

    rpm: int | None = None
    """Requests-per-minute limit over a sliding ``window_s`` window; None disables it."""

    tpm: int | None = None
    """Tokens-per-minute limit over a sliding ``window_s`` window; None disables it."""

    window_s: float = WINDOW_S
    """Length of the sliding window for ``rpm``/``tpm`` and for the window statistics.

    OpenAI's limits are per minute (60 s); a shorter window lets a test see a
    client-side limiter go through many windows in seconds. ``rpm``/``tpm``
    then mean "per ``window_s``". The stats keep their historical names
    (``max_requests_in_any_60s_window`` ...) but are measured over this window.
    """

    quantum_s: float = 0.0
    """Enforce ``rpm``/``tpm`` per shorter period, as OpenAI documents they may be ("60,000
    requests/minute may be enforced as 1,000 requests/second"): token buckets refilled at
    limit/window a second, holding ``quantum_s`` seconds' worth. 0 keeps the sliding window."""

    limit_style: str = "openai"
    """How rate limits are announced, as different servers do: ``openai``
    (x-ratelimit-limit/remaining/reset on every response, Retry-After and retry-after-ms on 429s),
    ``litellm`` (a 429 carries only ``llm_provider-retry-after`` in whole seconds, as a LiteLLM
    proxy passes its limit on) or ``none`` (no rate header at all, as vLLM or DeepSeek)."""

    max_concurrent: int | None = None
    """Refuse with a hint-less 429 any request beyond this many in flight (a server at capacity)."""

    slow_bps: float = 1.0
    """Bytes a second at which a ``slow`` outcome sends its body (the headers go at once)."""

    backlog: int = 4096
    """Listen backlog, large so that connection bursts are queued rather than refused."""

    max_body_bytes: int = 64 * 1024 * 1024
    """Largest accepted request body; larger ones get 413 (protects the benchmark host)."""

    record_bodies: bool = False
    """Keep the last JSON body of each task key in ``stats()["bodies"]``, so a test can check that a
    client sent every field as given (extra ones included). Off by default: bodies carry base64
    images, and at most ``RECORDED_BODIES_MAX`` keys are kept."""

    reasoning_models: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Model -> the message field its thinking comes in (``reasoning_content``
    as DeepSeek, or ``reasoning``)."""

    refuse_marker: str | None = None
    """Prompts that hold this text are refused (``content`` null, ``refusal``
    text), as a safety benchmark sees."""

    filter_marker: str | None = None
    """Prompts that hold this text are stopped by Azure's content filter (a 400
    ``content_filter``, its verdict per category)."""

    filter_answer_marker: str | None = None
    """Prompts that hold this text get a completion Azure's content filter stopped (a 200 with
    ``finish_reason: "content_filter"``, no content)."""

    omit_usage: bool = False
    """Answer without ``usage``, as some OpenAI-compatible servers do."""

    azure_deployments: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Azure deployment -> the model it holds
    (``/openai/deployments/{deployment}/chat/completions``)."""

    models: tuple[str, ...] = ()
    """The models the server knows: a chat request for another is a 404 ``model_not_found``, as
    OpenAI answers it. Empty (the default): every model is known."""

    max_image_bytes: int | None = None
    """Largest total of inline image data a chat request may carry (OpenAI:
    about 50 MB); None: no limit."""

    answer_labels: tuple[str, ...] = ()
    """Answer plain requests naming one of these labels (by a hash of the prompt), as a judge."""

    label_models: tuple[str, ...] = ()
    """Only requests for these models are answered with ``answer_labels`` (the judge's model, the
    others answering as usual); empty: every model."""

    pbad_answer: float = 0.0
    """Share of structured answers (labels, or a ``json_schema`` request's) that come malformed,
    drawn per prompt and attempt: asking again may get a good one."""

    def __post_init__(self) -> None:
        """Normalise container fields and reject impossible settings early."""
        # Copy containers so a caller mutating its dict/list later cannot
        # change a config that is supposed to be immutable.
        object.__setattr__(self, "model_map", dict(self.model_map))
        object.__setattr__(self, "reasoning_models", dict(self.reasoning_models))
        object.__setattr__(self, "azure_deployments", dict(self.azure_deployments))
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "answer_labels", tuple(self.answer_labels))
        object.__setattr__(self, "label_models", tuple(self.label_models))
        for name in ("pbad_answer", "p429", "p500", "phang", "preset", "pmalformed", "pquota"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value!r}")
        total = self.p429 + self.p500 + self.phang + self.preset + self.pmalformed + self.pquota
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities sum to {total:.4f} > 1")
        if self.limit_style not in ("openai", "litellm", "none"):
            raise ValueError("limit_style must be openai, litellm or none, "
                             f"got {self.limit_style!r}")
        if self.slow_bps <= 0:
            raise ValueError("slow_bps must be > 0")
        for name in ("latency_ms", "jitter_ms", "retry_after", "hang_s", "quantum_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"window_s must be a finite number > 0, got {self.window_s!r}")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if any(not isinstance(k, str) or not k for k in self.keys):
            raise ValueError("keys must be non-empty strings")
        if any(not isinstance(k, str) or not isinstance(v, str) for k, v in self.model_map.items()):
            raise ValueError("model_map must map str to str")
        if any(v not in REASONING_FIELDS for v in self.reasoning_models.values()):
            raise ValueError("reasoning_models must map models to reasoning_content or reasoning")

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-able data without the API keys (which are secrets)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "keys"}
        data["model_map"] = dict(self.model_map)
        data["reasoning_models"] = dict(self.reasoning_models)
        data["azure_deployments"] = dict(self.azure_deployments)
        data["models"] = list(self.models)
        data["answer_labels"] = list(self.answer_labels)
        data["label_models"] = list(self.label_models)
        data["keys_configured"] = len(self.keys)
        return data


LIMIT_STYLES = frozenset({"openai", "litellm", "none"})
REASONING_FIELDS = frozenset({"reasoning_content", "reasoning"})  # where a model's thinking comes


def str_list(name: str, value: Any) -> list[str]:
    """``value`` as a list of strings, or a ValueError naming the setting ``name``."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of strings")
    return list(value)


def coerce_field(name: str, value: Any) -> Any:
    """Convert a JSON value for a runtime MockConfig field to its declared type."""
    if name in ("model_map", "reasoning_models", "azure_deployments"):
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be an object mapping model names")
        return dict(value)
    if name in ("models", "answer_labels", "label_models"):
        return tuple(str_list(name, value))
    if name in ("refuse_marker", "filter_marker", "filter_answer_marker"):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a string or null")
        return value or None
    if name in ("rpm", "tpm", "max_image_bytes"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{name} must be an integer or null")
        return int(value)
    if name == "seed":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("seed must be an integer")
        return value
    if name == "limit_style":
        if value not in LIMIT_STYLES:
            raise ValueError(f"limit_style must be one of {sorted(LIMIT_STYLES)}")
        return value
    if name == "max_concurrent":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("max_concurrent must be an integer >= 1 or null")
        return value
    if name in ("record_bodies", "omit_usage"):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number")
    return float(value)
