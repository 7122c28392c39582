"""A prompt template: ``{field}`` placeholders filled from a row's fields, ``{{`` and ``}}`` for
literal braces. Nothing else of Python's format language: no attribute or index access, no
conversion, no format spec (a field's name is all there is between the braces).

A judge's template is rendered with ``render``; --template, --system-template and each variant's
(eval/variants.py) are parsed once as a ``Template`` (a malformed one is a ConfigError naming the
flag or the variants file's table), the input check asks every row for the fields they name
(``Task.fields`` keeps their values), and ``PromptForm.apply`` renders a task's prompt as one
variant (or a run with --template) sends it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from string import Formatter
from typing import Any

import orjson

from ..config import RunConfig
from ..errors import ConfigError
from .tasks import Task

_NOT_IN_NAME = frozenset(".[]!:")


def fields_named(template: str) -> tuple[str, ...]:
    """The fields ``template`` names, first seen first; a ValueError for a template that is not
    one (an unmatched brace, an empty ``{}``, attribute or index access, a conversion or spec)."""
    names: list[str] = []
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:  # Python's words for an unbalanced brace
        raise ValueError(f"unbalanced brace ({exc}): write {{{{ or }}}} for a literal "
                         "brace") from None
    for _, name, spec, conversion in parsed:
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


@dataclass(frozen=True)
class Template:
    """A template checked once: its text and the fields it names."""

    text: str
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, source: str) -> Template:
        """``text`` checked as a template; a ConfigError names ``source`` (``--template``, a
        variants file's table) and what is wrong."""
        try:
            return cls(text, fields_named(text))
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def render(self, values: Mapping[str, Any]) -> str:
        """The text with each placeholder replaced by its field's value (every field present)."""
        return render(self.text, values)


def template_of(text: str | None, source: str) -> Template | None:
    """``text`` parsed as a template, or None when there is none."""
    return None if text is None else Template.parse(text, source)


@dataclass(frozen=True)
class PromptForm:
    """How one variant (or a run with --template) makes each task's request from its row.

    ``variant`` is its name (None outside a variant run), written on each answer line. A row's own
    ``system``, ``temperature`` and ``max_tokens`` win over the form's, as over the run's.
    """

    variant: str | None = None
    template: Template | None = None
    system: Template | None = None
    temperature: float | None = None
    max_tokens: int | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        """The row fields its templates read."""
        names = [*(self.template.fields if self.template else ()),
                 *(self.system.fields if self.system else ())]
        return tuple(dict.fromkeys(names))

    def apply(self, task: Task) -> Task:
        """``task`` as this form sends it: its prompt (and system message) rendered from the row's
        fields, the form's settings where the row has none, and the variant named."""
        if task.fields is None:  # no template, nor a variant: the task as it was read
            return task
        values = task.fields or {}
        return dataclasses.replace(
            task,
            prompt=self.template.render(values) if self.template is not None else task.prompt,
            system=task.system if task.system is not None or self.system is None
            else self.system.render(values),
            temperature=task.temperature if task.temperature is not None else self.temperature,
            max_tokens=task.max_tokens if task.max_tokens is not None else self.max_tokens,
            variant=self.variant, fields=None)


def prompt_forms(config: RunConfig) -> tuple[PromptForm, ...]:
    """How the run makes its tasks' requests, one form per variant (one form without --variants);
    a malformed template is a ConfigError naming the flag or the variants file's table."""
    if not config.variant_table:
        system = template_of(config.system_template, "--system-template")
        template = template_of(config.template, "--template")
        if template is None and system is not None:  # the prompt is the row's, as it is
            template = Template(f"{{{config.prompt_key}}}", (config.prompt_key,))
        return (PromptForm(None, template, system),)
    if config.template is not None:
        raise ConfigError(f"--template does not go with --variants {config.variants}: each "
                          "variant has its own template")
    system = template_of(config.system_template, "--system-template")
    return tuple(PromptForm(v.name, Template.parse(v.template, f"{v.source}: template"),
                            template_of(v.system, f"{v.source}: system") if v.system is not None
                            else system, v.temperature, v.max_tokens)
                 for v in config.variant_table)


def template_fields(forms: tuple[PromptForm, ...]) -> tuple[str, ...] | None:
    """The row fields any of ``forms`` reads, which every row must have; None when no form has a
    template (the prompt is then the row's own)."""
    if all(form.template is None for form in forms):
        return None
    return tuple(dict.fromkeys(name for form in forms for name in form.fields))
