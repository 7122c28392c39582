"""Structured answers: the rule an answer must keep (``--labels`` or ``--json-schema``), and the
one check of an answer against it.

``check(rule, text)`` returns a value: ``Parsed`` (the label named, the object parsed) or
``Mismatch`` (why the answer does not keep the rule; the runner asks again, api/failures.py's
``bad_answer``). A refusal or a filtered answer is never checked: it is kept as it is.

The ``jsonschema`` package is imported only when a schema is used: read-only commands and plain
runs never load it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError

LABEL_FIELD = "label"  # a line's label (--labels, or a schema answer's top-level string "label")
PARSED_FIELD = "parsed"  # a line's object (--json-schema)
_NAME = re.compile(r"[^A-Za-z0-9_-]+")  # OpenAI: a schema's name is [a-zA-Z0-9_-]{1,64}
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@dataclass(frozen=True)
class AnswerRule:
    """What an answer must be: exactly one of ``labels`` (named in the answer) or a JSON Schema
    (``schema_text``, the file's JSON; ``name`` goes to the server with it)."""

    labels: tuple[str, ...] = ()
    schema_text: str | None = None
    name: str = "answer"

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON Schema, decoded (None for a labels rule)."""
        if self.schema_text is None:
            return None
        schema: dict[str, Any] = orjson.loads(self.schema_text)
        return schema

    def response_format(self) -> dict[str, Any] | None:
        """OpenAI's ``response_format`` for a schema rule (structured outputs, strict); None for
        labels, which are asked for in the prompt."""
        if self.schema_text is None:
            return None
        return {"type": "json_schema",
                "json_schema": {"name": self.name, "schema": self.schema, "strict": True}}


@dataclass(frozen=True)
class Parsed:
    """An answer that keeps the rule: the label it names (or its object's ``label``), its object."""

    label: str | None = None
    parsed: dict[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        """The fields an answer line gains (only those set)."""
        out: dict[str, Any] = {}
        if self.label is not None:
            out[LABEL_FIELD] = self.label
        if self.parsed is not None:
            out[PARSED_FIELD] = self.parsed
        return out


@dataclass(frozen=True)
class Mismatch:
    """An answer that does not keep the rule, and why (the failure line's message)."""

    reason: str


def labels_list(text: Any) -> tuple[str, ...]:
    """``--labels a,b,c`` (or a TOML list) as labels; a ValueError for fewer than two."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    labels = tuple(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))
    if len(labels) < 2:
        raise ValueError("needs at least two different labels (an answer names one of them)")
    return labels


def check(rule: AnswerRule, text: str | None) -> Parsed | Mismatch:
    """Whether the answer ``text`` keeps ``rule``: what it names or holds, else why not."""
    if not text or not text.strip():
        return Mismatch("empty answer")
    if rule.schema_text is None:
        return _label(rule.labels, text)
    fenced = _FENCE.match(text.strip())  # some servers wrap JSON in a code fence
    try:
        obj = orjson.loads(fenced.group(1) if fenced else text)
    except orjson.JSONDecodeError as exc:
        return Mismatch(f"the answer is not JSON ({exc}): {text[:80]!r}")
    if not isinstance(obj, dict):
        return Mismatch(f"the answer is JSON but not an object: {text[:80]!r}")
    problem = _schema_problem(rule.schema_text, obj)
    if problem is not None:
        return Mismatch(f"the answer does not fit the schema: {problem}")
    label = obj.get(LABEL_FIELD)
    return Parsed(label if isinstance(label, str) else None, obj)


def _label(labels: tuple[str, ...], text: str) -> Parsed | Mismatch:
    named = [label for label in labels
             if re.search(rf"(?<!\w){re.escape(label)}(?!\w)", text, re.IGNORECASE)]
    if len(named) == 1:
        return Parsed(label=named[0])
    if not named:
        return Mismatch(f"the answer names none of the labels {', '.join(labels)}: {text[:80]!r}")
    return Mismatch(f"the answer names {len(named)} labels ({', '.join(named)}), not one: "
                    f"{text[:80]!r}")


_VALIDATORS: dict[str, Any] = {}  # schema text -> its validator, built once per process


def _validator(schema_text: str) -> Any:
    found = _VALIDATORS.get(schema_text)
    if found is None:
        from jsonschema.validators import validator_for  # only with a schema

        schema = orjson.loads(schema_text)
        found = _VALIDATORS[schema_text] = validator_for(schema)(schema)
    return found


def _schema_problem(schema_text: str, obj: Any) -> str | None:
    from jsonschema.exceptions import best_match

    error = best_match(_validator(schema_text).iter_errors(obj))
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path)
    return f"{where + ': ' if where else ''}{error.message}"[:300]


def load_schema(path: Path, checked: bool = True) -> AnswerRule:
    """The rule of a JSON Schema file (its name: the schema's ``title``, else the file's stem);
    ``checked``: the schema itself is checked too (the run's start does; a worker need not).
    A ConfigError naming the file for one that cannot be read, is not JSON, or is no schema."""
    try:
        schema = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the JSON Schema: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"{path}: not a JSON Schema (a JSON object is needed)")
    if checked:
        from jsonschema.exceptions import SchemaError
        from jsonschema.validators import validator_for

        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            raise ConfigError(f"{path}: not a JSON Schema: {exc.message}") from None
    title = schema.get("title")
    name = _NAME.sub("_", title if isinstance(title, str) and title.strip() else path.stem)
    return AnswerRule(schema_text=orjson.dumps(schema).decode(), name=name.strip("_")[:64]
                      or "answer")


def answer_rule(labels: tuple[str, ...] | None, schema: Path | None,
                checked: bool = False) -> AnswerRule | None:
    """The run's rule from --labels and --json-schema (None: answers are free text); a
    ConfigError when both are given."""
    if labels and schema is not None:
        raise ConfigError("--labels and --json-schema do not go together: give one (a schema "
                          "answer's string field 'label' is its label)")
    if schema is not None:
        return load_schema(schema, checked)
    return AnswerRule(labels=labels) if labels else None
