"""Every rate-limit hint servers send, read into one wait and one set of stated limits."""

from __future__ import annotations

import email.utils

import httpx2
import pytest

from mpinfer.limits import read_hints, wait_hint

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("headers", "message", "seconds"), [
    ({"retry-after-ms": "1500", "retry-after": "2"}, None, 1.5),  # OpenAI, Azure
    ({"Retry-After": "7"}, None, 7.0),  # RFC 9110 seconds
    ({"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}, None, 30.0),  # RFC 9110 date
    ({"llm_provider-retry-after": "60"}, None, 60.0),  # LiteLLM proxy
    ({"llm_provider-retry-after-ms": "250"}, None, 0.25),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, None, 360.0),
    ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1.5s",
      "x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "20ms"}, None, 1.5),
    # OpenRouter (its reset in epoch milliseconds)
    ({"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0",
      "X-RateLimit-Reset": str(int((NOW + 12) * 1000))}, None, 12.0),
    # OpenAI's text
    ({}, "Rate limit reached for gpt-4o. Please try again in 1.234s. Visit ...", 1.234),
    ({}, "Please try again in 6m12s.", 372.0),
])
def test_every_kind_of_hint_gives_the_wait_it_asks_for(headers: dict[str, str], message: str | None,
                                                       seconds: float) -> None:
    # Given a 429's headers (any case) and message, as one server or another sends them
    # When the wait is read
    # Then it is what the server asked for
    assert wait_hint(httpx2.Headers(headers), message, wall=NOW) == pytest.approx(seconds, abs=1e-3)


@pytest.mark.parametrize("headers",
                         [{}, {"Retry-After": "soon"}, {"x-ratelimit-limit-requests": "100"},
                          {"x-ratelimit-remaining-requests": "3"}])
def test_no_hint_at_all_is_none_so_the_limiter_learns_instead(headers: dict[str, str]) -> None:
    # Given a 429 that says nothing usable about when to come back (vLLM, DeepSeek)
    # When the wait is read
    # Then there is none
    assert wait_hint(httpx2.Headers(headers), "Too many requests", wall=NOW) is None


def test_a_hint_beyond_an_hour_is_capped() -> None:
    # Given a bogus Retry-After of a week
    # When it is read
    # Then the run is not parked for longer than an hour
    assert wait_hint(httpx2.Headers({"Retry-After": str(7 * 86400)}), wall=NOW) == 3600.0


def test_stated_limits_are_read_from_openai_litellm_provider_and_openrouter_headers() -> None:
    # Given the limits as OpenAI states them, as LiteLLM passes a provider's on, and as OpenRouter
    # does
    openai = read_hints(httpx2.Headers({"x-ratelimit-limit-requests": "500",
                                        "x-ratelimit-limit-tokens": "30000",
                                        "x-ratelimit-remaining-requests": "499",
                                        "x-ratelimit-reset-requests": "120ms"}), NOW)
    provider = read_hints(httpx2.Headers({"llm_provider-x-ratelimit-limit-requests": "60"}), NOW)
    router = read_hints(httpx2.Headers({"X-RateLimit-Limit": "200",
                                        "X-RateLimit-Remaining": "150"}), NOW)
    # When they are read
    # Then each gives the limit per window and what is left
    assert (openai.limit_requests, openai.limit_tokens,
            openai.remaining_requests) == (500, 30000, 499)
    assert openai.reset_requests_s == pytest.approx(0.12)
    assert provider.limit_requests == 60
    assert (router.limit_requests, router.remaining_requests) == (200, 150)
    assert read_hints(httpx2.Headers({"content-type": "application/json"}), NOW).empty
