"""A judge (``--judge FILE``): its TOML file, read and checked before any request, and the tasks
it is given.

Each answers output ``X`` gets a judging run of its own, right after the answers: an output in its
own right (``store.output.judge_output(X)``, with its locks, scan, repair and manifest), whose tasks
are the answers of ``X`` with the judge's template rendered over them (written beside it, as
``companion(judge_output(X), ".tasks.jsonl")``, rebuilt from ``X`` and the input on every run so
that a rerun judges only what is left). eval/judging.py runs them.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..api.endpoints import Endpoint
from ..api.structured import AnswerRule, answer_rule, labels_list
from ..config import Api, BackendKind, RunConfig, environment
from ..errors import ConfigError, InputError
from ..inputs import Selection, Task, fields_named, iter_selected, reading, render
from ..sources import lookup
from ..store.atomic import atomic_write
from ..store.judged import Judged, JudgeForm
from ..store.output import companion, iter_lines, judge_output
from ..store.records import view

log = logging.getLogger("mpinfer.run")

#: What a judge's template may name beside the task's fields.
ANSWER_FIELDS = ("answer", "refusal", "prompt", "model")
_KEYS = frozenset({"model", "template", "labels", "json_schema", "system", "temperature",
                   "max_tokens", "send_refusals", "refusal_label", "filtered_label", "base_url",
                   "api_key_env", "endpoint"})
TASKS_SUFFIX = ".tasks.jsonl"


@dataclass(frozen=True)
class JudgeSpec:
    """A judge file, read: the judge's model and template, the rule of its answers, its request
    settings, what becomes of refusals and filtered answers, and where it is sent: ``base_url``
    and ``api_key_env``, or ``endpoint`` (the entries of the run's endpoints table whose ``model``
    it names); none of them: the run's own base URL and keys (or its table's entries for the
    judge's model)."""

    path: Path
    model: str
    template: str
    rule: AnswerRule | None = None
    labels: tuple[str, ...] | None = None
    json_schema: Path | None = None
    system: str | None = None
    temperature: float = 0.0
    max_tokens: int | None = None
    form: JudgeForm | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    endpoint: str | None = None

    @property
    def task_fields(self) -> tuple[str, ...]:
        """The fields its template takes from the task's row (the rest are the answer's)."""
        return tuple(name for name in fields_named(self.template) if name not in ANSWER_FIELDS)


def load_judge(path: Path) -> JudgeSpec:
    """Read and check a judge file; a ConfigError naming the file (and the key) when it is not
    one: no model or template, a template that is not one, labels and json_schema both, fewer
    than two labels, a schema that is not one, a key it does not know."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the judge file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (a judge file has "
                          f"{', '.join(sorted(_KEYS))})")
    model, template = data.get("model"), data.get("template")
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"{path}: no model: name the judge's model (model = \"gpt-4o\")")
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"{path}: no template: write the judge's prompt (template = \"...\", "
                          "naming {answer}, {refusal}, {prompt}, {model} or the task's fields)")
    try:
        fields_named(template)
    except ValueError as exc:
        raise ConfigError(f"{path}: template: {exc}") from None
    labels = None
    if data.get("labels") is not None:
        try:
            labels = labels_list(_typed(path, data, "labels", list))
        except ValueError as exc:
            raise ConfigError(f"{path}: labels: {exc}") from None
    schema = None
    if data.get("json_schema") is not None:
        schema = path.parent / _typed(path, data, "json_schema", str)
    if labels and schema is not None:
        raise ConfigError(f"{path}: labels and json_schema do not go together: give one")
    temperature = data.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ConfigError(f"{path}: temperature must be a number")
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise ConfigError(f"{path}: max_tokens must be a positive integer")
    form = JudgeForm(model.strip(), bool(_typed(path, data, "send_refusals", bool, False)),
                     _typed(path, data, "refusal_label", str, "refused"),
                     _typed(path, data, "filtered_label", str, "filtered"))
    return JudgeSpec(path, model.strip(), template, answer_rule(labels, schema, checked=True),
                     labels, schema, _typed(path, data, "system", str, None), float(temperature),
                     max_tokens, form, _typed(path, data, "base_url", str, None),
                     _typed(path, data, "api_key_env", str, None),
                     _typed(path, data, "endpoint", str, None))


def _typed(path: Path, data: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = data.get(key, default)
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"{path}: {key} must be a {kind.__name__}")
    return value


def check_judge(config: RunConfig, spec: JudgeSpec) -> None:
    """What must hold before any request of a judged run: the judge's key is set, its model is
    served, and every input row has the fields its template names (an InputError at the row's
    file and line)."""
    if config.backend is BackendKind.BATCH:
        raise ConfigError("--judge does not go with --backend batch yet")
    if spec.endpoint is not None and (spec.base_url or spec.api_key_env):
        raise ConfigError(f"{spec.path}: endpoint, or base_url and api_key_env: give one")
    if spec.endpoint is not None and not _entries(config, spec):
        raise ConfigError(f"{spec.path}: endpoint {spec.endpoint!r} is no entry of the run's "
                          "endpoints table (an entry is named by its model)")
    if spec.api_key_env is not None and _key(spec) is None:
        raise ConfigError(f"{spec.path}: api_key_env {spec.api_key_env} is not set (set it in the "
                          "environment or .env)")
    if (spec.base_url is None and spec.api_key_env is None and spec.endpoint is None
            and config.endpoint_table
            and not any(ep.serves(spec.model) for ep in config.endpoint_table)):
        raise ConfigError(f"{spec.path}: the endpoints table has no entry for the judge's model "
                          f"{spec.model}: add one, or give base_url and api_key_env")
    needed = spec.task_fields
    if not needed:
        return
    input_path, _ = config.require_paths()
    for line, row, item in iter_selected(input_path, reading(config), Selection()):
        if isinstance(item, Task) and row is not None:
            missing = [name for name in needed if name not in row]
            if missing:
                raise InputError(f"the judge's template ({spec.path}) names {{{missing[0]}}}, "
                                 "which this row lacks (it may name {answer}, {refusal}, "
                                 "{prompt}, {model} and the task's fields)", str(input_path),
                                 line)


def _entries(config: RunConfig, spec: JudgeSpec) -> tuple[Endpoint, ...]:
    """The run's endpoints named by the judge file's ``endpoint``, serving the judge's model."""
    return tuple(dataclasses.replace(ep, model=spec.model) for ep in config.endpoint_table
                 if ep.model == spec.endpoint)


def _key(spec: JudgeSpec) -> str | None:
    if spec.api_key_env is None:
        return None
    found = lookup(environment(), (spec.api_key_env,))
    return found[1] if found is not None and found[1] else None


def judge_tasks(config: RunConfig, spec: JudgeSpec, answers: Path) -> Path | None:
    """Write the judge's tasks for the answers output ``answers`` (one row per answered id, its
    prompt the template rendered); the tasks file, or None when there is no answer to judge."""
    rows = _input_rows(config, spec)
    tasks = companion(judge_output(answers), TASKS_SUFFIX)
    count = 0
    with atomic_write(tasks, durable=False) as handle:
        for row in _judge_rows(spec, answers, rows):
            handle.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
            count += 1
    if not count:
        tasks.unlink(missing_ok=True)
        return None
    return tasks


def _input_rows(config: RunConfig, spec: JudgeSpec) -> dict[str, dict[str, Any]]:
    """The fields the template takes from each input row, by task id."""
    needed = spec.task_fields
    if not needed:
        return {}
    input_path, _ = config.require_paths()
    return {item.id: {name: row.get(name) for name in needed}
            for _, row, item in iter_selected(input_path, reading(config), Selection())
            if isinstance(item, Task) and row is not None}


def _judge_rows(spec: JudgeSpec, answers: Path, rows: dict[str, dict[str, Any]],
                ) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    for _, _, obj in iter_lines(answers):
        record = view(obj)
        if record is None or record.id in seen:
            continue
        seen.add(record.id)
        of = (Judged.FILTERED if record.filtered else Judged.REFUSAL if record.refused
              else Judged.ANSWER)
        sent = obj.get("input_prompt") if isinstance(obj, dict) else None
        fields = {**rows.get(record.id, {}), "answer": record.answer or "",
                  "refusal": record.refusal or "", "prompt": sent if isinstance(sent, str) else "",
                  "model": record.model or record.requested_model or ""}
        try:
            prompt = render(spec.template, fields)
        except KeyError as exc:  # an id the input does not hold (--validate lists them)
            log.warning("%s: %s is not in the input: not judged (no field %s)", answers,
                        record.id, exc)
            continue
        yield {"id": record.id, "prompt": prompt, "of": of.value}


def judge_config(config: RunConfig, spec: JudgeSpec, tasks: Path, answers: Path) -> RunConfig:
    """The settings of the judging run over ``answers``: the judge file's model, request settings
    and rule (none of the answers' own: no --extra-body, no thinking switch); its endpoint (else
    the run's); the run's limits, processes and logs."""
    where: dict[str, Any] = {}
    if spec.endpoint is not None:
        entries = _entries(config, spec)
        where = {"endpoint_table": entries, "api_keys": tuple(ep.api_key for ep in entries)}
    elif spec.base_url is not None or spec.api_key_env is not None:
        key = _key(spec)
        where = {"base_url": spec.base_url or config.base_url, "endpoint_table": (),
                 "api_keys": (key,) if key is not None else config.api_keys}
    return dataclasses.replace(
        config, input=tasks, output=judge_output(answers), model=spec.model, model_key=None,
        temperature=spec.temperature, max_tokens=spec.max_tokens, system_prompt=spec.system,
        extra_body=None, thinking=None, reasoning_effort=None, labels=spec.labels,
        json_schema=spec.json_schema, judge=None, template=None, system_template=None,
        variants=None, variant_table=(),
        judging=spec.form, id_key="id", prompt_key="prompt", images_key="images",
        messages_key="messages", id_from_row=False, start=None, end=None, limit=None, ids=None,
        only_failed=False, max_cost=None, image_root=None, api=Api.CHAT, report=False,
        explicit=config.explicit | {"model"}, **where)
