"""Prompt variants: ``--variants FILE``, a TOML file of ``[[variants]]`` tables.

Each table is one way of asking every task: ``name`` (a part of its output's file name),
``template`` (the user prompt, ``{field}`` placeholders over the row), and optionally ``system`` (a
system message template), ``temperature`` and ``max_tokens``. Every task runs once per variant
(and per model); each (variant, model) has its own output (store/output.run_outputs).

Read here as plain, picklable data; the templates are parsed where rows are read
(inputs/template.py), so a malformed one fails with the same check as ``--template``. Every
mistake is a ConfigError naming the file and the table (``[[variants]] #2 'cot'``), before any
request.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

KNOWN_KEYS = ("name", "template", "system", "temperature", "max_tokens")
# a name becomes part of a file name: letters, digits, '.', '_' and '-', not starting with a dot
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_NAME = 64


@dataclass(frozen=True)
class Variant:
    """One prompt variant, as its table says (templates still text)."""

    name: str
    template: str
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    source: str = ""  # where it was read: ``variants.toml: [[variants]] #1 'base'``, for errors

    def described(self) -> dict[str, Any]:
        """Its settings, for the manifest's fingerprint and settings (no ``source``)."""
        return {"name": self.name, "template": self.template, "system": self.system,
                "temperature": self.temperature, "max_tokens": self.max_tokens}


def read_variants(path: Path) -> tuple[Variant, ...]:
    """The variants of the TOML file at ``path``; a ConfigError names the file and the table."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the variants file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    unknown = [key for key in data if key != "variants"]
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}: the file holds [[variants]] "
                          "tables only")
    tables = data.get("variants")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path}: no [[variants]] tables (each has name and template)")
    variants: list[Variant] = []
    seen: dict[str, int] = {}
    for number, table in enumerate(tables, start=1):
        variant = _variant(table, f"{path}: [[variants]] #{number}")
        if variant.name in seen:
            raise ConfigError(f"{variant.source}: duplicate variant name {variant.name!r} (also "
                              f"[[variants]] #{seen[variant.name]}): each names its own output")
        seen[variant.name] = number
        variants.append(variant)
    return tuple(variants)


def _variant(table: Any, where: str) -> Variant:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: not a table")
    name = table.get("name")
    if isinstance(name, str) and name:
        where = f"{where} {name!r}"
    unknown = [key for key in table if key not in KNOWN_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(KNOWN_KEYS)})")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: no name (a short name, which its output's file name takes)")
    if not _SAFE_NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise ConfigError(f"{where}: the name must be letters, digits, '.', '_' or '-' (not "
                          f"starting with '.', at most {MAX_NAME}): it is part of a file name")
    template = table.get("template")
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"{where}: no template (the user prompt, {{field}} placeholders over "
                          "the row)")
    system = table.get("system")
    if system is not None and not isinstance(system, str):
        raise ConfigError(f"{where}: system must be a string (a template)")
    temperature = table.get("temperature")
    if temperature is not None and (isinstance(temperature, bool)
                                    or not isinstance(temperature, (int, float))):
        raise ConfigError(f"{where}: temperature must be a number")
    max_tokens = table.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise ConfigError(f"{where}: max_tokens must be a positive integer")
    return Variant(name, template, system,
                   float(temperature) if temperature is not None else None, max_tokens, where)
