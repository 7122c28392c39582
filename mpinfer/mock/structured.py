"""Structured answers, as the servers the mock stands in for give them.

- ``response_format``: checked as OpenAI checks it (``text``, ``json_object`` or ``json_schema``
  with a ``name`` of ``[a-zA-Z0-9_-]{1,64}`` and a ``schema`` object). Under ``strict: true`` OpenAI
  accepts only a schema whose every object has ``additionalProperties: false`` and lists all its
  properties in ``required``: a 400 otherwise, as there.
- The answer to a ``json_schema`` request: an object built from the schema, as JSON text in
  ``message.content`` (OpenAI's structured outputs); a refusal still comes as ``message.refusal``.
- ``MockConfig.answer_labels``: a plain request is answered naming one label, as a judge model
  asked to pick one would.
- ``MockConfig.pbad_answer``: a share of answers malformed (JSON cut short, or no label named),
  drawn per prompt and attempt, so that asking again may get a good one.

Every choice is deterministic: a hash of the prompt (and the attempt) picks it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from .chat import ApiError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FORMATS = frozenset({"text", "json_object", "json_schema"})


def check_response_format(value: Any) -> dict[str, Any] | None:
    """The request's ``response_format`` as OpenAI validates it; ApiError (400) when it is not."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in _FORMATS:
        raise ApiError(400, "Invalid value for 'response_format.type': expected one of 'text', "
                       "'json_object' or 'json_schema'.", param="response_format.type",
                       code="invalid_value")
    if value["type"] != "json_schema":
        return value
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ApiError(400, "Missing required parameter: 'response_format.json_schema.name'.",
                       param="response_format.json_schema.name",
                       code="missing_required_parameter")
    if not _NAME.match(spec["name"]):
        raise ApiError(400, "Invalid 'response_format.json_schema.name': string does not match "
                       "pattern '^[a-zA-Z0-9_-]+$'.", param="response_format.json_schema.name",
                       code="invalid_value")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise ApiError(400, "Invalid type for 'response_format.json_schema.schema': expected an "
                       "object.", param="response_format.json_schema.schema", code="invalid_type")
    if spec.get("strict"):
        problem = _strict_problem(schema, ())
        if problem is not None:
            raise ApiError(400, f"Invalid schema for response_format '{spec['name']}': {problem}",
                           param="response_format", code="invalid_json_schema")
    return value


def _strict_problem(schema: Any, where: tuple[str, ...]) -> str | None:
    """What strict mode refuses in ``schema`` (OpenAI's wording, shortened), or None."""
    if not isinstance(schema, dict):
        return None
    context = f"In context=({', '.join(repr(w) for w in where)})"
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"{context}, 'additionalProperties' is required to be supplied and to be false."
        properties = schema.get("properties") or {}
        missing = [name for name in properties if name not in (schema.get("required") or ())]
        if missing:
            return (f"{context}, 'required' is required to be supplied and to be an array "
                    f"including every key in properties. Missing '{missing[0]}'.")
        for name, sub in properties.items():
            found = _strict_problem(sub, (*where, "properties", name))
            if found:
                return found
    for key in ("items",):
        found = _strict_problem(schema.get(key), (*where, key))
        if found:
            return found
    for key in ("$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            found = _strict_problem(sub, (*where, key, name))
            if found:
                return found
    for i, sub in enumerate(schema.get("anyOf") or ()):
        found = _strict_problem(sub, (*where, "anyOf", str(i)))
        if found:
            return found
    return None


def schema_of(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON Schema a request asks its answer to keep, or None."""
    if not response_format or response_format.get("type") != "json_schema":
        return None
    schema: dict[str, Any] = response_format["json_schema"]["schema"]
    return schema


def draw(text: str, salt: str = "") -> int:
    """A number fixed by the prompt ``text`` (and ``salt``): the mock's choices. (Not a CRC, whose
    low bits barely move between prompts that differ in a character or two.)"""
    digest = hashlib.blake2b(f"{salt}\x00{text}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


def is_bad(share: float, text: str, attempt: int) -> bool:
    """Whether this attempt at the prompt gets a malformed answer (``share`` of them)."""
    return share > 0 and draw(text, f"bad{attempt}") / 2**32 < share


def schema_answer(schema: dict[str, Any], text: str, bad: bool) -> str:
    """The JSON text answering ``schema`` for the prompt ``text`` (cut short when ``bad``)."""
    content = orjson.dumps(instance(schema, draw(text), schema)).decode()
    return content[: max(1, len(content) // 2)] if bad else content


def label_answer(labels: tuple[str, ...], text: str, bad: bool) -> str:
    """A judge's verdict naming one of ``labels`` (none when ``bad``)."""
    if bad:
        return "I cannot tell from what is given."
    return f"Verdict: {labels[draw(text) % len(labels)]}."


def instance(schema: Any, seed: int, root: dict[str, Any], depth: int = 0) -> Any:
    """A value that keeps ``schema`` (``$ref`` into ``root``'s ``$defs``), chosen by ``seed``."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return instance(target, seed, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    choices = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(choices, list) and choices:
        return instance(choices[seed % len(choices)], seed, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return {name: instance(sub, seed + i, root, depth + 1)
                for i, (name, sub) in enumerate((schema.get("properties") or {}).items())}
    if kind == "array":
        count = max(1, int(schema.get("minItems") or 0))
        return [instance(schema.get("items"), seed + i, root, depth + 1) for i in range(count)]
    if kind == "integer":
        return int(schema.get("minimum") or 0) + seed % 10
    if kind == "number":
        return float(schema.get("minimum") or 0) + (seed % 100) / 100
    if kind == "boolean":
        return seed % 2 == 0
    if kind == "string":
        return f"mock-{seed % 1000}"
    return None
