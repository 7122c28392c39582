"""The rpm/tpm rate limits: the check, OpenAI's ``x-ratelimit-*`` headers, their formats.

``check_limits`` and ``add_ratelimit_headers`` read the sliding windows that ``Stats`` keeps;
``format_duration`` (Go style, as OpenAI's reset headers) and ``format_seconds`` (Retry-After)
format the waits they announce.
"""

from __future__ import annotations

import math

from .config import MockConfig
from .stats import Stats


def format_duration(seconds: float) -> str:
    """Format seconds as a Go-style duration (``"6m0s"``, ``"1s"``, ``"12ms"``).

    OpenAI's ``x-ratelimit-reset-*`` headers use this format, so clients in
    this package must parse it; the mock emits the same shape. Rounding is
    upwards to the millisecond so a client that waits exactly this long is
    never early.
    """
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rem = divmod(ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    secs, frac = divmod(rem, 1000)
    sec_text = str(secs) + (f".{frac:03d}".rstrip("0") if frac else "")
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"


def format_seconds(seconds: float) -> str:
    """Seconds for a Retry-After header: an integer when whole, else ms precision."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _check_buckets(
    st: Stats, cfg: MockConfig, now: float, budget: int
) -> tuple[str, int, int, float] | None:
    """The quantized limits: buckets refilled at limit/window a second, holding quantum_s' worth.

    An accepted request takes its share out of the buckets here.
    """
    elapsed = max(0.0, now - st.bucket_at)
    st.bucket_at = now
    request_rate = token_rate = 0.0
    if cfg.rpm is not None:
        request_rate = cfg.rpm / cfg.window_s
        size = max(1.0, request_rate * cfg.quantum_s)
        level = size if st.request_level is None else min(size,
                                                          st.request_level + request_rate * elapsed)
        st.request_level = level
        if level < 1.0:
            return "requests", cfg.rpm, cfg.rpm - int(level), (1.0 - level) / request_rate
    if cfg.tpm is not None:
        token_rate = cfg.tpm / cfg.window_s
        size = max(float(budget), token_rate * cfg.quantum_s)
        level = size if st.token_level is None else min(size, st.token_level + token_rate * elapsed)
        st.token_level = level
        if level < budget:
            return "tokens", cfg.tpm, cfg.tpm - int(level), (budget - level) / token_rate
    if st.request_level is not None:
        st.request_level -= 1.0
    if st.token_level is not None:
        st.token_level -= budget
    return None


def rejection_headers(cfg: MockConfig, retry_s: float, headers: list[tuple[str, str]]) -> None:
    """The wait a 429 announces, in the words of the server the mock plays (``limit_style``)."""
    if cfg.limit_style == "openai":
        headers.append(("retry-after", format_seconds(math.ceil(retry_s * 1000) / 1000)))
        headers.append(("retry-after-ms", str(math.ceil(retry_s * 1000))))
    elif cfg.limit_style == "litellm":
        headers.append(("llm_provider-retry-after", str(max(1, math.ceil(retry_s)))))


def check_limits(
    st: Stats, cfg: MockConfig, now: float, budget: int
) -> tuple[str, int, int, float] | None:
    """(kind, limit, used, retry seconds) if this request breaks rpm/tpm, else None."""
    if cfg.quantum_s > 0:
        return _check_buckets(st, cfg, now, budget)
    if cfg.rpm is not None and len(st.accepted_t) + 1 > cfg.rpm:
        # The earliest moment a slot frees is when the oldest entry expires;
        # rpm >= 1 guarantees the deque is non-empty here.
        return "requests", cfg.rpm, len(st.accepted_t), st.accepted_t[0] + cfg.window_s - now
    if cfg.tpm is not None and st.accepted_token_sum + budget > cfg.tpm:
        if budget > cfg.tpm:
            # Can never fit; OpenAI also answers such requests with a 429.
            return "tokens", cfg.tpm, st.accepted_token_sum, cfg.window_s
        # Walk from the oldest entry until enough tokens would have expired;
        # only done on rejection and bounded by the window's length.
        need = st.accepted_token_sum + budget - cfg.tpm
        freed = 0
        for t, tokens in zip(st.accepted_t, st.accepted_tokens, strict=True):
            freed += tokens
            if freed >= need:
                return "tokens", cfg.tpm, st.accepted_token_sum, t + cfg.window_s - now
        return "tokens", cfg.tpm, st.accepted_token_sum, cfg.window_s
    return None


def add_ratelimit_headers(st: Stats, cfg: MockConfig, now: float,
                          headers: list[tuple[str, str]]) -> None:
    """OpenAI's x-ratelimit-* headers for each configured limit.

    ``reset`` is the time until the oldest accepted request leaves the
    window, i.e. when ``remaining`` next increases.
    """
    if (cfg.rpm is None and cfg.tpm is None) or cfg.limit_style != "openai":
        return
    reset = format_duration(st.accepted_t[0] + cfg.window_s - now) if st.accepted_t else "0s"
    if cfg.rpm is not None:
        headers.append(("x-ratelimit-limit-requests", str(cfg.rpm)))
        headers.append(("x-ratelimit-remaining-requests",
                        str(max(0, cfg.rpm - len(st.accepted_t)))))
        headers.append(("x-ratelimit-reset-requests", reset))
    if cfg.tpm is not None:
        headers.append(("x-ratelimit-limit-tokens", str(cfg.tpm)))
        headers.append(("x-ratelimit-remaining-tokens",
                        str(max(0, cfg.tpm - st.accepted_token_sum))))
        headers.append(("x-ratelimit-reset-tokens", reset))
