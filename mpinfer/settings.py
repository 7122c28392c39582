"""How a setting is declared: the ``setting()`` field helper, the parsers, the Option view.

A RunConfig field declared with ``setting(...)`` is a setting: it gets a flag, environment variables
and a ``mpinfer.toml`` key. Its default is written once, in the field; the CLI's help,
docs/settings.md's table and ``.env.example`` are rendered from (and checked against, by
tests/test_docs.py) the Option built here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, TypeVar

import orjson

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

_KEY = "mpinfer.setting"


# --- parsers: text (a flag, the environment, .env) or a TOML/keyword value, to the field's type ---


def as_integer(text: Any) -> int:
    """An int from a flag's text or a TOML value; a TOML float or bool is refused, not truncated."""
    if isinstance(text, bool) or (isinstance(text, float) and not text.is_integer()):
        raise ValueError("must be a whole number")
    return int(text)


def as_number(text: Any) -> float:
    """Parse a number (not a bool, which Python would take as 0 or 1)."""
    if isinstance(text, bool):
        raise ValueError("must be a number")
    return float(text)


def at_least(
    parse: Callable[[Any], float], low: float, strictly: bool = False
) -> Callable[[Any], Any]:
    """A parser that also bounds the value: ``> low`` when ``strictly``, else ``>= low``."""

    def bounded(text: Any) -> Any:
        value = parse(text)
        if value < low or (strictly and value == low):
            raise ValueError(f"must be more than {low:g}" if strictly
                             else f"must be {low:g} or more")
        return value

    return bounded


positive_int = at_least(as_integer, 1)
non_negative_int = at_least(as_integer, 0)
non_negative_float = at_least(as_number, 0)
positive_float = at_least(as_number, 0, strictly=True)


def as_json_object(text: Any) -> dict[str, Any]:
    """Parse a JSON object (a dict from TOML or a keyword is taken as it is)."""
    value = text if isinstance(text, dict) else orjson.loads(text)
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def as_bool(text: Any) -> bool:
    """Parse a switch: 1, true, yes, on; or 0, false, no, off, empty (any case)."""
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def on_off(text: Any) -> bool:
    """Parse a setting that is on or off but has no default to flip (``--thinking on|off``): as
    as_bool, but a flag that takes its value rather than a bare switch."""
    return as_bool(text)


def one_of(kind: type[E]) -> Callable[[Any], E]:
    """A parser for a str enum: its values, any case."""

    def parse(text: Any) -> E:
        try:
            return kind(str(text).strip().lower())
        except ValueError:
            raise ValueError("must be " + " or ".join(m.value for m in kind)) from None

    return parse


@dataclass(frozen=True)
class ModelRates:
    """``--rpm gpt-4o=500,gpt-4o-mini=5000``: a limit per model (per key or endpoint of it)."""

    rates: tuple[tuple[str, int], ...]

    def get(self, model: str) -> int | None:
        """The rate set for ``model``, or None."""
        return dict(self.rates).get(model)

    def __str__(self) -> str:
        return ",".join(f"{model}={rate}" for model, rate in self.rates)


def parse_rate(text: Any) -> int | ModelRates:
    """A --rpm/--tpm value: one positive number for every model, or ``model=N,model=N``."""
    value = str(text).strip()
    if not isinstance(text, str) or "=" not in value:
        number: int = positive_int(text)
        return number
    rates = []
    for item in value.split(","):
        model, sep, rate = item.strip().partition("=")
        if not sep or not model.strip() or not rate.strip().isdigit() or int(rate) < 1:
            raise ValueError(f"expected model=N,model=N with N >= 1, got {item!r}")
        rates.append((model.strip(), int(rate)))
    return ModelRates(tuple(rates))


def as_path(text: Any) -> Path:
    """Parse a path, ``~`` expanded."""
    return Path(str(text)).expanduser()


def as_text(value: Any) -> str:
    """Parse text: the value as it is."""
    return str(value)


# --- declaring a setting --------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What a setting adds to its field: how to parse it and how it is shown and named."""

    parse: Callable[[Any], Any]
    help: str
    short: str | None
    env: tuple[str, ...]
    metavar: str | None
    shown: str | None
    cli: bool = True


def setting(default: T, parse: Callable[[Any], Any], help: str, *, short: str | None = None,
            env: tuple[str, ...] = (), metavar: str | None = None, shown: str | None = None,
            cli: bool = True) -> T:
    """A RunConfig field that is a setting. ``shown`` says what the default means when its value
    alone does not (``None`` for "the server's"); ``env`` replaces the variable's name
    ``MPINFER_<NAME>``; ``cli=False``: no flag of its own (the flag of that name does something else
    on the command line)."""
    spec = Spec(parse, help, short, env, metavar, shown, cli)
    made: T = dataclasses.field(default=default, metadata={_KEY: spec})
    return made


@dataclass(frozen=True)
class Option:
    """One setting as the CLI, the loader and the docs see it: a RunConfig field with its Spec."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    short: str | None = None
    env: tuple[str, ...] = ()
    metavar: str | None = None
    shown: str | None = None
    cli: bool = True  # has a flag of its own

    @property
    def is_switch(self) -> bool:
        """An on/off flag on the command line (``--fsync``), true/false elsewhere."""
        return self.parse is as_bool

    @property
    def flag(self) -> str:
        """The command-line flag: ``--`` and the name with dashes (``--no-`` for a switch that is
        on by default)."""
        return ("--no-" if self.is_switch and self.default else "--") + self.name.replace("_", "-")

    @property
    def env_names(self) -> tuple[str, ...]:
        """The environment variables read for it, first wins (default ``MPINFER_<NAME>``)."""
        return self.env or ("MPINFER_" + self.name.upper(),)

    @property
    def default_text(self) -> str:
        """The default as the help and docs/settings.md say it ("" when there is nothing to say)."""
        if self.shown is not None:
            return self.shown
        if self.is_switch:
            return "on" if self.default else "off"
        return "" if self.default is None else _plain_text(self.default)

    @property
    def env_value(self) -> str:
        """The default as ``.env.example`` writes it (empty when unset)."""
        if self.is_switch:
            return "true" if self.default else "false"
        return "" if self.default is None else _plain_text(self.default)


def _plain_text(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def options_of(cls: type[Any]) -> tuple[Option, ...]:
    """The settings among a dataclass's fields, in field order."""
    options = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_KEY)
        if isinstance(spec, Spec):
            options.append(Option(f.name, spec.parse, f.default, spec.help, spec.short, spec.env,
                                  spec.metavar, spec.shown, spec.cli))
    return tuple(options)


# --- the documentation's forms: tests/test_docs.py holds docs/settings.md and .env.example to them


def settings_row(option: Option) -> str:
    """The option's row in the settings table of docs/settings.md."""
    flag = f"{option.short}/{option.flag}" if option.short else option.flag
    if option.metavar:
        flag += f" {option.metavar}"
    cells = [f"`{flag}`" if option.cli else "-", f"`{option.env_names[0]}` / `{option.name}`",
             option.default_text, option.help]
    # Escaped for Markdown: a "<model>" would vanish as an HTML tag, a "|" would split the cell.
    return "| " + " | ".join(c.replace("|", "\\|").replace("<", "\\<") for c in cells) + " |"


def env_line(option: Option) -> str:
    """The option's line in ``.env.example``."""
    return f"{option.env_names[0]}={option.env_value}"
