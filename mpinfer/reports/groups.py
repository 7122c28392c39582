"""Results by group (``--by FIELD``): per value of an input field and per (variant, model), the
tasks, how they ended, each label's count, tokens and cost.

A task's group is the value of the field in its input row (a row without it, or with it empty, is
in the group null, shown "(none)"); its label is its judge line's (``label``, or ``parsed.label``)
when the output has a judge line for it, else its answer line's, else none. The group of a run's
output is (value, variant, model): the output's variant and model, but a line's own ``variant``
wins. An id answered twice counts once (its first line, as --validate --repair keeps); the tokens
and cost are every line's, as --status counts them.

``GroupReader`` reads like the status tallies: each output keeps, per slot of the input's id index,
how its task ended, its labels and its variant, and per group the counts; it then reads only what
was appended to the answers and judge files, and a file that is not the one read (rewritten, cut,
replaced) is read again from the start with the other. The counts are kept beside the output
(by_group.py) so the next ``--status --by`` reads only what is new.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..config import RunConfig
from ..errors import ConfigError
from ..inputs import FieldKeys, InputFormat, Selection, Task, iter_selected
from ..store.idset import IdIndex, IdSubset
from ..store.output import judge_output, run_outputs
from ..store.records import record_id, view
from .tally import FileMark, LineReader, OutputTally, decode_line

NONE_SHOWN = "(none)"  # how a task without the field is shown
NO_LABEL = -1  # an answer without a label; a slot not judged (judge_label)
JUDGED_WITHOUT_LABEL = -2  # a judge line without a label: the task has none
# outcome of a slot
NOT_ANSWERED, ANSWERED, REFUSED, FILTERED = 0, 1, 2, 3


@dataclass(frozen=True)
class GroupOutput:
    """One output of the run, as results by group see it: the file, its variant and model."""

    path: Path
    variant: str | None
    model: str


@dataclass(frozen=True)
class GroupRow:
    """One group: a value of the --by field, one (variant, model); ``--status --json``'s form."""

    by: str
    value: Any
    variant: str | None
    model: str
    tasks: int
    answered: int
    refused: int
    filtered: int
    failed: int
    labels: dict[str, int]
    tokens: dict[str, int | None]  # None: some answer came without usage
    cost: float | None  # None: some answer's cost is unknown (no usage, or no price)

    @property
    def done(self) -> int:
        """Tasks that ended in an answer, a refusal or a filter's stop."""
        return self.answered + self.refused + self.filtered

    def share(self, count: int) -> float | None:
        """``count`` as a share of the tasks done; None before any is done."""
        return count / self.done if self.done else None

    def label_share(self, label: str) -> float | None:
        """``label``'s share of the tasks done; None when none of them has a label (no labels in
        this output: 0% would say they were all something else)."""
        return self.share(self.labels.get(label, 0)) if self.labels else None

    @property
    def shown_value(self) -> str:
        """The value as text: "(none)" for a task without the field."""
        return shown(self.value)

    def to_dict(self) -> dict[str, Any]:
        """The group as JSON values."""
        return {"by": self.by, "value": self.value, "variant": self.variant, "model": self.model,
                "tasks": self.tasks, "answered": self.answered, "refused": self.refused,
                "filtered": self.filtered, "failed": self.failed, "labels": dict(self.labels),
                "tokens": dict(self.tokens), "cost": self.cost}


def group_outputs(config: RunConfig) -> tuple[GroupOutput, ...]:
    """Every output of the run, with its variant and model."""
    _, output = config.require_paths()
    return tuple(GroupOutput(out.path, out.variant, str(out.model))
                 for out in run_outputs(output, config.variant_names, config.models))


def shown(value: Any) -> str:
    """A group's value as text: "(none)" for a task without the field, JSON for a non-text."""
    if value is None:
        return NONE_SHOWN
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def label_of(obj: Any) -> str | None:
    """A line's label: its ``label``, else its ``parsed`` object's ``label`` (a non-empty text)."""
    if not isinstance(obj, dict):
        return None
    label = obj.get("label")
    if isinstance(label, str) and label:
        return label
    parsed = obj.get("parsed")
    if isinstance(parsed, dict):
        label = parsed.get("label")
        if isinstance(label, str) and label:
            return label
    return None


def value_of(raw: dict[str, Any], by: str, fmt: InputFormat) -> tuple[bool, Any]:
    """(whether the row has the field, its value): an empty CSV cell is no value."""
    if by not in raw:
        return False, None
    value = raw[by]
    if fmt is InputFormat.CSV and isinstance(value, str) and not value.strip():
        return False, None
    return True, value


@dataclass
class GroupValues:
    """Each selected task's group: ``slot_group`` maps a slot of the id index to the number of its
    value in ``texts`` (the values as JSON text; number 0 is null), -1 for a slot not selected."""

    by: str
    texts: list[str]
    slot_group: array[int]
    tasks: list[int]  # selected tasks per group

    def value(self, group: int) -> Any:
        """The value of group number ``group``."""
        return orjson.loads(self.texts[group])


def read_values(path: Path, keys: FieldKeys, chosen: Selection, fmt: InputFormat,
                index: IdIndex, by: str) -> GroupValues:
    """Every selected task's value of ``by``, read from the (checked) input; a ConfigError when no
    selected row has the field."""
    numbers: dict[str, int] = {"null": 0}
    texts = ["null"]
    tasks = [0]
    slot_group = array("i", [-1]) * len(index)
    seen = False
    for _, raw, item in iter_selected(path, keys, chosen, fmt):
        if not isinstance(item, Task) or raw is None:
            continue
        slot = index.find(item.id, member=True)
        if slot is None:
            continue
        present, value = value_of(raw, by, fmt)
        seen = seen or present
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        number = numbers.get(text)
        if number is None:
            number = numbers[text] = len(texts)
            texts.append(text)
            tasks.append(0)
        slot_group[slot] = number
        tasks[number] += 1
    if not seen:
        raise ConfigError(f"--by {by}: no selected row of {path} has the field {by!r}")
    return GroupValues(by, texts, slot_group, tasks)


@dataclass
class Counts:
    """One group's counts in one output (per variant, when lines name another)."""

    answered: int = 0
    refused: int = 0
    filtered: int = 0
    moved: int = 0  # tasks whose line names another variant than the output's (counted here)
    prompt: int = 0
    completion: int = 0
    cost: float = 0.0
    unknown_cost: int = 0  # answers without a price
    no_usage: int = 0  # answers without usage: tokens and cost unknown
    labels: dict[int, int] = field(default_factory=dict)

    def to_list(self) -> list[Any]:
        """The counts as JSON values (the cache)."""
        return [self.answered, self.refused, self.filtered, self.moved, self.prompt,
                self.completion, self.cost, self.unknown_cost, self.no_usage,
                {str(k): v for k, v in self.labels.items()}]

    @classmethod
    def from_list(cls, item: list[Any]) -> Counts:
        """Counts ``to_list`` wrote."""
        *numbers, cost, unknown, no_usage, labels = item
        answered, refused, filtered, moved, prompt, completion = (int(n) for n in numbers)
        return cls(answered, refused, filtered, moved, prompt, completion, float(cost),
                   int(unknown), int(no_usage), {int(k): int(v) for k, v in labels.items()})

    def count_label(self, label: int, by: int) -> None:
        """Add ``by`` to label number ``label`` (none below 0)."""
        if label >= 0:
            self.labels[label] = self.labels.get(label, 0) + by


class GroupTally:
    """What one output's answers and judge files say, per slot and per group, read so far."""

    def __init__(self, size: int, variant: str | None) -> None:
        self._reset(size, variant)

    def _reset(self, size: int, variant: str | None) -> None:
        self.outcome = bytearray(size)
        self.answer_label = array("i", [NO_LABEL]) * size
        self.judge_label = array("i", [NO_LABEL]) * size
        self.variant = array("i", [0]) * size  # number in ``variants``; 0: the output's own
        self.variants: list[str | None] = [variant]
        self.labels: list[str] = []
        self._label_numbers: dict[str, int] = {}
        self.counts: dict[tuple[int, int], Counts] = {}
        self.answers_mark: FileMark | None = None
        self.judge_mark: FileMark | None = None

    def label_number(self, label: str | None) -> int:
        """The number of ``label`` in ``labels`` (added when new); NO_LABEL for none."""
        if label is None:
            return NO_LABEL
        number = self._label_numbers.get(label)
        if number is None:
            number = self._label_numbers[label] = len(self.labels)
            self.labels.append(label)
        return number

    def set_labels(self, labels: list[str]) -> None:
        """Take the label table a cache kept."""
        self.labels = list(labels)
        self._label_numbers = {label: n for n, label in enumerate(labels)}

    def _variant_number(self, name: Any) -> int:
        if not isinstance(name, str) or name == self.variants[0]:
            return 0
        if name not in self.variants:
            self.variants.append(name)
        return self.variants.index(name)

    def _counts(self, group: int, variant: int) -> Counts:
        counts = self.counts.get((group, variant))
        if counts is None:
            counts = self.counts[(group, variant)] = Counts()
        return counts

    def refresh(self, answers: Path, values: GroupValues, within: IdSubset) -> bool:
        """Read what was appended to the answers file and its judge file; whether anything was."""
        judge = judge_output(answers)
        start = self.answers_mark.resume_at(answers) if self.answers_mark else 0
        judge_start = self.judge_mark.resume_at(judge) if self.judge_mark else 0
        before = (self.answers_mark, self.judge_mark)
        if start is None or judge_start is None:
            # Either file is not the one read: the labels of both are intertwined, read both again
            self._reset(len(self.outcome), self.variants[0])
            start = judge_start = 0
        self._read_answers(answers, start, values, within)
        self._read_judge(judge, judge_start, values, within)
        return before != (self.answers_mark, self.judge_mark)

    def _read_answers(self, path: Path, start: int, values: GroupValues,
                      within: IdSubset) -> None:
        reader = LineReader(path, start)
        find, selected, groups = within.index.find, within.has_slot, values.slot_group
        for raw in reader.lines():
            obj = decode_line(raw)
            record = view(obj)
            if record is None:
                continue
            slot = find(record.id)
            if slot is None or not selected(slot):
                continue
            group = groups[slot]
            if self.outcome[slot] == NOT_ANSWERED:
                variant = self._variant_number(obj.get("variant"))
                self.variant[slot] = variant
                counts = self._counts(group, variant)
                counts.moved += variant != 0
                if record.filtered:
                    self.outcome[slot] = FILTERED
                    counts.filtered += 1
                elif record.refused:
                    self.outcome[slot] = REFUSED
                    counts.refused += 1
                else:
                    self.outcome[slot] = ANSWERED
                    counts.answered += 1
                label = self.label_number(label_of(obj))
                self.answer_label[slot] = label
                judged = self.judge_label[slot]
                counts.count_label(label if judged == NO_LABEL else judged, 1)
            else:
                counts = self._counts(group, self.variant[slot])
            if record.no_usage:
                counts.no_usage += 1
                continue
            counts.prompt += record.usage.prompt_tokens
            counts.completion += record.usage.completion_tokens
            if record.cost is None:
                counts.unknown_cost += 1
            else:
                counts.cost += record.cost
        self.answers_mark = reader.mark

    def _read_judge(self, path: Path, start: int, values: GroupValues, within: IdSubset) -> None:
        reader = LineReader(path, start)
        find, selected = within.index.find, within.has_slot
        for raw in reader.lines():
            obj = decode_line(raw)
            task_id = record_id(obj)
            slot = None if task_id is None else find(task_id)
            if slot is None or not selected(slot) or self.judge_label[slot] != NO_LABEL:
                continue  # the first verdict on an id stands
            label = self.label_number(label_of(obj))
            self.judge_label[slot] = JUDGED_WITHOUT_LABEL if label == NO_LABEL else label
            if self.outcome[slot] != NOT_ANSWERED:
                counts = self._counts(values.slot_group[slot], self.variant[slot])
                counts.count_label(self.answer_label[slot], -1)
                counts.count_label(label, 1)
        self.judge_mark = reader.mark


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (3, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())


def group_rows(values: GroupValues, outputs: tuple[GroupOutput, ...],
               tallies: list[GroupTally], status: list[OutputTally]) -> list[GroupRow]:
    """The groups of every output: by value, then in the run's order of outputs and variants."""
    rows: list[tuple[tuple[int, Any], int, int, GroupRow]] = []
    for number, (output, tally, done) in enumerate(zip(outputs, tallies, status, strict=True)):
        failed = [0] * len(values.texts)
        for slot in done.failures:
            if not done.done.has_slot(slot) and values.slot_group[slot] >= 0:
                failed[values.slot_group[slot]] += 1
        moved = [0] * len(values.texts)
        for (group, variant), counts in tally.counts.items():
            if variant:
                moved[group] += counts.moved
        keys = {(g, 0) for g, n in enumerate(values.tasks) if n} | set(tally.counts)
        for group, variant in keys:
            counts = tally.counts.get((group, variant)) or Counts()
            tasks = values.tasks[group] - moved[group] if variant == 0 else counts.moved
            if not tasks and not failed[group]:
                continue  # every task's line named another variant: nothing left here
            value = values.value(group)
            unknown = counts.no_usage > 0
            row = GroupRow(
                by=values.by, value=value, variant=tally.variants[variant], model=output.model,
                tasks=tasks, answered=counts.answered, refused=counts.refused,
                filtered=counts.filtered, failed=failed[group] if variant == 0 else 0,
                labels={tally.labels[k]: n for k, n in sorted(
                    counts.labels.items(), key=lambda item: tally.labels[item[0]]) if n},
                tokens={"prompt": None if unknown else counts.prompt,
                        "completion": None if unknown else counts.completion},
                cost=None if unknown or counts.unknown_cost else round(counts.cost, 6))
            rows.append((_sort_key(value), number, variant, row))
    rows.sort(key=lambda item: item[:3])
    return [row for *_, row in rows]
