"""What tokens cost: the built-in price table, files that override it, and the cost of one answer.

Prices are US dollars per million tokens, as OpenAI publishes them, for realtime requests; the Batch
API's are half of them (``Price.batch``) unless a table gives ``batch_input`` / ``batch_output``.
The built-in table holds the list prices of OpenAI (which Azure OpenAI's global deployments
share), DeepSeek and Qwen on Alibaba Cloud, each with its date and source page (PROVIDERS). They
change: check them before budgeting, and override them with ``--prices FILE`` (JSON or TOML:
``{"model": {"input": .., "output": .., "cached_input": ..}}``) or ``--price-input`` /
``--price-output``. A model none of these price has no cost (null), never a cost of 0.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

BATCH_DISCOUNT = 0.5
"""The Batch API's price as a share of the online price (OpenAI: 50% off)."""


@dataclass(frozen=True)
class Price:
    """USD per million tokens, with where the figure comes from (``source``: a page, a file or a
    flag) and when it was read there (``as_of``: year and month; None for the user's own)."""

    input: float
    output: float
    cached_input: float | None = None
    # The Batch API's prices; None: half the online price, as OpenAI charges
    batch_input: float | None = None
    batch_output: float | None = None
    as_of: str | None = None
    source: str | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """The cost of one answer; cached prompt tokens
        (part of prompt_tokens) at the cached rate."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        return ((prompt_tokens - cached) * self.input + cached * cached_rate
                + completion_tokens * self.output) / 1_000_000

    def describe(self) -> str:
        """The price as a person checks it: per million tokens, where it was read and when."""
        cached = "" if self.cached_input is None else f", ${self.cached_input:g} cached"
        where = ", ".join(part for part in (self.source, self.as_of) if part)
        return (f"${self.input:g} in{cached}, ${self.output:g} out per 1M tokens"
                + (f" ({where})" if where else ""))

    def batch(self) -> Price:
        """The price of the same tokens through the Batch API:
        its own prices if given, else half of each."""
        cached = None if self.cached_input is None else self.cached_input * BATCH_DISCOUNT
        return Price(
            self.batch_input if self.batch_input is not None else self.input * BATCH_DISCOUNT,
            self.batch_output if self.batch_output is not None else self.output * BATCH_DISCOUNT,
            cached, as_of=self.as_of, source=self.source)


@dataclass(frozen=True)
class Provider:
    """Where a group of built-in prices was read, and when."""

    name: str
    as_of: str
    source: str
    # (input, output, cached input) in USD per million tokens, by model name
    models: Mapping[str, tuple[float, float, float | None]]


# Each provider's list prices as its page showed them on ``as_of``. They change: check the page
# before budgeting; --prices FILE overrides any of them. Azure OpenAI's global deployments list
# OpenAI's prices (its answers name the model, which is what is priced); a regional or data-zone
# deployment costs more: give it with --prices.
PROVIDERS: tuple[Provider, ...] = (
    Provider("OpenAI", "2026-06", "https://openai.com/api/pricing", {
        "gpt-5.5": (5.00, 30.00, 0.50),
        "gpt-5.4": (2.50, 15.00, 0.25),
        "gpt-5.4-mini": (0.75, 4.50, 0.075),
        "gpt-5.4-nano": (0.20, 1.25, 0.02),
        "gpt-5.1": (1.25, 10.00, 0.125),
        "gpt-5": (1.25, 10.00, 0.125),
        "gpt-5-mini": (0.25, 2.00, 0.025),
        "gpt-5-nano": (0.05, 0.40, 0.005),
        "gpt-4.1": (2.00, 8.00, 0.50),
        "gpt-4.1-mini": (0.40, 1.60, 0.10),
        "gpt-4.1-nano": (0.10, 0.40, 0.025),
        "gpt-4o": (2.50, 10.00, 1.25),
        "gpt-4o-mini": (0.15, 0.60, 0.075),
        "o1": (15.00, 60.00, 7.50),
        "o3": (2.00, 8.00, 0.50),
        "o3-mini": (1.10, 4.40, 0.55),
        "o4-mini": (1.10, 4.40, 0.275),
    }),
    # Both names answer with DeepSeek-V3.2 (deepseek-chat without thinking, deepseek-reasoner
    # with), at one price; the cached rate is DeepSeek's "cache hit".
    Provider("DeepSeek", "2026-04", "https://api-docs.deepseek.com/quick_start/pricing", {
        "deepseek-chat": (0.28, 0.42, 0.028),
        "deepseek-reasoner": (0.28, 0.42, 0.028),
    }),
    # Alibaba Cloud Model Studio (DashScope), international (Singapore) deployment. The Qwen3
    # models are priced by prompt length: these are the first tier (prompts up to 32K tokens),
    # and a longer prompt costs more than shown.
    Provider("Qwen (Alibaba Cloud Model Studio)", "2026-05",
             "https://www.alibabacloud.com/help/en/model-studio/models", {
                 "qwen3-vl-plus": (0.20, 1.60, None),
                 "qwen3-vl-flash": (0.05, 0.40, None),
                 "qwen-vl-max": (0.80, 3.20, None),
                 "qwen-vl-plus": (0.21, 0.63, None),
             }),
)

BUILT_IN: dict[str, Price] = {
    name: Price(inp, out, cached, as_of=provider.as_of, source=provider.source)
    for provider in PROVIDERS for name, (inp, out, cached) in provider.models.items()}
"""The built-in table: every provider's models, each price with its date and source."""


@dataclass(frozen=True)
class PriceTable:
    """Prices by model name; a dated snapshot
    (``gpt-4o-mini-2024-07-18``) takes its base model's price."""

    prices: Mapping[str, Price]
    override: Price | None = None
    # What ``find`` found for each model name asked (an answer's model, twice an answer)
    _found: dict[str, Price | None] = field(default_factory=dict, init=False, repr=False,
                                            compare=False)

    def find(self, model: str | None) -> Price | None:
        """The price of ``model``: the flat override, its own entry, or the longest known name it
        starts with (a dated snapshot); None when none fits."""
        if self.override is not None:
            return self.override
        if not model:
            return None
        try:
            return self._found[model]
        except KeyError:
            pass
        name = model.split("/")[-1].lower()
        found = self.prices.get(name)
        if found is None:
            # The longest name the model starts with: gpt-4o-mini-2024-07-18 is gpt-4o-mini, not
            # gpt-4o.
            matches = [known for known in self.prices if name.startswith(known + "-")]
            found = self.prices[max(matches, key=len)] if matches else None
        self._found[model] = found
        return found

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int,
             cached_tokens: int = 0, batch: bool = False) -> float | None:
        """USD for one answer (at the Batch API's price when ``batch``),
        or None when the model has no price."""
        price = self.find(model)
        if price is None:
            return None
        return (price.batch() if batch else price).cost(prompt_tokens, completion_tokens,
                                                        cached_tokens)


def _price_from(name: str, value: Any, source: Path) -> Price:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {name}: expected a table with input and output prices")
    try:
        cached, batch_in, batch_out = (None if value.get(name) is None else float(value[name])
                                       for name in ("cached_input", "batch_input", "batch_output"))
        return Price(float(value["input"]), float(value["output"]), cached, batch_in, batch_out,
                     source=str(source))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {name}: needs numeric input and output prices "
                          f"({exc})") from None


def load_prices(path: Path | None = None, price_input: float | None = None,
                price_output: float | None = None) -> PriceTable:
    """The built-in table, updated from ``path`` (JSON or TOML);
    both flat prices given win over all."""
    prices = dict(BUILT_IN)
    if path is not None:
        try:
            raw = path.read_bytes()
            data = (tomllib.loads(raw.decode()) if path.suffix.lower() == ".toml"
                    else json.loads(raw))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read prices: {exc}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a table of models")
        for name, value in data.items():
            prices[str(name).lower()] = _price_from(str(name), value, path)
    override = None
    if price_input is not None or price_output is not None:
        if price_input is None or price_output is None:
            raise ConfigError("--price-input and --price-output go together")
        override = Price(price_input, price_output, source="--price-input/--price-output")
    return PriceTable(prices, override)
