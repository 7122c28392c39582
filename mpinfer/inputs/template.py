"""A prompt template: ``{field}`` placeholders filled from a row's fields, ``{{`` and ``}}`` for
literal braces. Nothing else of Python's format language: no attribute or index access, no
conversion, no format spec (a field's name is all there is between the braces).
"""

from __future__ import annotations

from collections.abc import Mapping
from string import Formatter
from typing import Any

import orjson

_NOT_IN_NAME = frozenset(".[]!:")


def fields_named(template: str) -> tuple[str, ...]:
    """The fields ``template`` names, first seen first; a ValueError for a template that is not
    one (an unmatched brace, an empty ``{}``, attribute or index access, a conversion or spec)."""
    names: list[str] = []
    for _, name, spec, conversion in Formatter().parse(template):
        if name is None:
            continue
        if not name.strip() or spec or conversion or _NOT_IN_NAME & set(name):
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(f"{{{shown}}} is not a field: write {{name}} (and {{{{ }}}} for a "
                             "literal brace)")
        names.append(name)
    return tuple(dict.fromkeys(names))


def render(template: str, fields: Mapping[str, Any]) -> str:
    """``template`` with each ``{field}`` replaced by its value in ``fields`` (text as it is, null
    as empty, anything else as JSON); a KeyError names a field ``fields`` lacks."""
    parts: list[str] = []
    for literal, name, _, _ in Formatter().parse(template):
        parts.append(literal)
        if name is None:
            continue
        value = fields[name]
        parts.append(value if isinstance(value, str)
                     else "" if value is None else orjson.dumps(value).decode())
    return "".join(parts)
