"""What a server says about its rate limits, read from every header and message that carries it.

Servers and proxies announce limits in different words; this module reads all of them into two small
values, so the limiter and the retry decision never look at a header themselves:

- ``Hints``: what a response says about the limit itself (how many requests or tokens a window
  allows, how many are left, when that resets). OpenAI and Azure send
  ``x-ratelimit-limit/remaining/reset-requests`` and ``-tokens`` on every response (reset as a Go
  duration, "6m0s"); LiteLLM sends the same names for its own limits and passes a provider's on as
  ``llm_provider-x-ratelimit-*``; OpenRouter sends ``X-RateLimit-Limit/Remaining/Reset`` (the reset
  an epoch instant in milliseconds).
- ``wait_hint``: how long a 429 (or 503) asks the client to wait: ``retry-after-ms`` (OpenAI,
  Azure), ``Retry-After`` in seconds or as an HTTP date (RFC 9110), LiteLLM's
  ``llm_provider-retry-after`` and ``llm_provider-retry-after-ms``, the reset of whichever limit is
  exhausted, OpenRouter's reset instant, and OpenAI's "Please try again in 1.5s" in the error
  message. vLLM, DeepSeek and Ollama send none of these: ``wait_hint`` is then None and the limiter
  learns the rate instead.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNIT = r"(?:ns|us|µs|ms|h|m|s)"
_TRY_AGAIN = re.compile(rf"try again in (\d+(?:\.\d+)?{_UNIT}(?:\d+(?:\.\d+)?{_UNIT})*)",
                        re.IGNORECASE)
# Prefixes under which the same OpenAI-style names arrive: the server's own, then a provider's
# behind a LiteLLM proxy (the proxy's own limits come first: they are the ones it enforces on us).
_PREFIXES = ("", "llm_provider-")
# Longest wait a hint may ask for: a bogus date or epoch must not park a run for days.
MAX_HINT_S = 3600.0
# Epoch values above this are milliseconds (OpenRouter), below it seconds.
_EPOCH_MS_FROM = 1e11


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration ("6m0s", "1.5s", "12ms") or a plain number of seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def _seconds_or_date(value: str | None, wall: float) -> float | None:
    """Retry-After: delay-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # (here: a date is rare, and the module costs every run's start)

    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - wall)


def _number(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class Hints:
    """What one response said about its lane's limits; None where it said nothing."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None

    @property
    def empty(self) -> bool:
        """Whether the response said nothing about its limits."""
        return self is _NO_HINTS or self == _NO_HINTS

    def exhausted_for_s(self) -> float:
        """How long the server says nothing is left (0 when something is): the longer reset."""
        pause = 0.0
        if self.remaining_requests is not None and self.remaining_requests <= 0:
            pause = max(pause, self.reset_requests_s if self.reset_requests_s is not None else 1.0)
        if self.remaining_tokens is not None and self.remaining_tokens <= 0:
            pause = max(pause, self.reset_tokens_s if self.reset_tokens_s is not None else 1.0)
        return min(pause, MAX_HINT_S)


_NO_HINTS = Hints()


def _openrouter_reset(value: str | None, wall: float) -> float | None:
    """OpenRouter's X-RateLimit-Reset: an epoch instant (milliseconds); a small one is a delay."""
    number = _number(value)
    if number is None:
        return parse_duration(value)
    if number >= _EPOCH_MS_FROM:
        return max(0.0, number / 1000.0 - wall)
    if number >= 1e9:
        return max(0.0, number - wall)
    return float(number)


_SUFFIXED = ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
             "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens")
_UNSUFFIXED = ("x-ratelimit-limit", "x-ratelimit-remaining")
# Each prefix's names, joined once (read_hints runs for every answer, and most state nothing)
_NAMES = tuple((prefix, tuple(prefix + name for name in (*_SUFFIXED, *_UNSUFFIXED)))
               for prefix in _PREFIXES)
_NOTHING_SAID = (None,) * (len(_SUFFIXED) + len(_UNSUFFIXED))


def read_hints(headers: Any, wall: float | None = None) -> Hints:
    """The limit, remaining and reset a response states (any case-insensitive header mapping)."""
    if not headers:
        return _NO_HINTS
    get = headers.get
    for prefix, names in _NAMES:
        said = tuple(map(get, names))
        if said == _NOTHING_SAID:
            continue
        wall = time.time() if wall is None else wall
        limit_r, limit_t, left_r, left_t = map(_number, said[:4])
        if limit_r is None and left_r is None and limit_t is None and left_t is None:
            # OpenRouter's (and many gateways') unsuffixed names count requests.
            limit_r, left_r = _number(said[4]), _number(said[5])
            if limit_r is None and left_r is None:
                continue
            reset = _openrouter_reset(get(prefix + "x-ratelimit-reset"), wall)
            return Hints(limit_requests=limit_r, remaining_requests=left_r, reset_requests_s=reset)
        return Hints(limit_r, limit_t, left_r, left_t,
                     parse_duration(get(prefix + "x-ratelimit-reset-requests")),
                     parse_duration(get(prefix + "x-ratelimit-reset-tokens")))
    return _NO_HINTS


def wait_hint(headers: Any, message: str | None = None, wall: float | None = None) -> float | None:
    """Seconds a refused request is asked to wait, from the first hint there is; None when none."""
    wall = time.time() if wall is None else wall
    if headers:
        for prefix in _PREFIXES:
            value = headers.get(prefix + "retry-after-ms")
            if value:
                try:
                    return min(MAX_HINT_S, max(0.0, float(value) / 1000.0))
                except ValueError:
                    pass
            seconds = _seconds_or_date(headers.get(prefix + "retry-after"), wall)
            if seconds is not None:
                return min(MAX_HINT_S, seconds)
        hints = read_hints(headers, wall)
        exhausted = hints.exhausted_for_s()
        if exhausted:
            return exhausted
        resets = [s for s in (hints.reset_requests_s, hints.reset_tokens_s) if s]
        if resets and (hints.remaining_requests is not None or hints.remaining_tokens is not None):
            return min(MAX_HINT_S, min(resets))
    if message:
        found = _TRY_AGAIN.search(message)
        if found:
            seconds = parse_duration(found.group(1))
            if seconds is not None:
                return min(MAX_HINT_S, seconds)
    return None
