"""The report's results section (``--report --by FIELD``): results by group as charts and a table,
and a table to browse the rows, with a text filter.

A chart for each label (its share of the tasks done), for the refusal rate and for the filter rate
gives a bar per value of the field for every (variant, model), side by side. The rows table shows
the first ``MAX_ROWS`` selected tasks of every output (id, group, prompt, a thumbnail of its first
local image, the answer or refusal, the label, the judge's text); a filter box (plain JavaScript, in
the page) hides the rows that do not hold its text, and ``#filter=TEXT`` in the page's address fills
it in. Thumbnails are small JPEG data URLs made with Pillow (when installed), at most
``MAX_THUMBNAILS`` of them, so the one file stays a few MB at most.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config import RunConfig
from ..inputs import Task, detect_format, iter_selected, reading, selection
from ..store.output import OutputPaths, iter_lines, judge_output
from ..store.records import failure_view, record_id, view
from .groups import GroupOutput, GroupRow, group_outputs, label_of, shown, value_of
from .status import StatusReader

MAX_ROWS = 1000  # rows browsed, over all outputs
MAX_THUMBNAILS = 200
THUMBNAIL_SIDE = 96  # pixels, the longer side
MAX_IMAGE_BYTES = 30 * 1024 * 1024  # larger files get no thumbnail
MAX_TEXT = 2000  # characters of a prompt, an answer or a judge's text shown in a cell
MAX_LABEL_CHARTS = 8
# taller than the run's charts, for the group values' tick labels; the legend on top
CHART_LAYOUT: dict[str, Any] = {
    "height": 410, "margin": {"l": 60, "r": 20, "t": 110, "b": 130, "autoexpand": False},
    "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0}}
_STYLE = ("<style>#results-rows td { vertical-align: top; max-width: 320px; white-space: pre-wrap;"
          " overflow-wrap: anywhere; } #results-rows img { max-width: 96px; max-height: 96px; }"
          "</style>")

_FILTER_SCRIPT = """
(function () {
  var box = document.getElementById('results-filter');
  var rows = document.querySelectorAll('#results-rows tbody tr');
  var shown = document.getElementById('results-shown');
  function apply() {
    var query = box.value.toLowerCase(), count = 0;
    rows.forEach(function (row) {
      var keep = !query || row.textContent.toLowerCase().indexOf(query) >= 0;
      row.style.display = keep ? '' : 'none';
      if (keep) { count += 1; }
    });
    shown.textContent = count + ' of ' + rows.length + ' rows shown';
  }
  box.addEventListener('input', apply);
  var asked = /[#&]filter=([^&]*)/.exec(window.location.hash);
  if (asked) { box.value = decodeURIComponent(asked[1]); }
  apply();
})();
"""


class _Page(Protocol):
    """What this section needs of the report's page (html._Page)."""

    go: Any

    def text(self, value: Any) -> str:
        """``value`` as HTML text, secrets redacted."""

    def add(self, markup: str) -> None:
        """Append a section of HTML."""

    def figure(self, fig: Any, layout: dict[str, Any] | None = None) -> str:
        """A plotly figure as HTML."""

    def table(self, head: Sequence[str], rows: Iterable[Sequence[Any]],
              text_columns: int = 1) -> str:
        """An HTML table."""


@dataclass(frozen=True)
class BrowseRow:
    """One task's result in one output, as the rows table shows it."""

    id: str
    value: str
    output: str  # "variant / model", or the model
    prompt: str
    thumbnail: str | None  # a data URL
    outcome: str  # answer, refusal, filtered, failed, not answered
    text: str  # the answer, the refusal, the filter's verdict or the error
    label: str | None
    judge_text: str | None


@dataclass(frozen=True)
class ResultsData:
    """What the results section shows: the groups, and the rows to browse."""

    by: str
    groups: list[GroupRow]
    rows: list[BrowseRow]
    rows_total: int  # selected tasks times outputs
    thumbnails: int
    note: str | None  # why some thumbnails are missing


def output_name(variant: str | None, model: str) -> str:
    """How a (variant, model) is named on the page."""
    return model if variant is None else f"{variant} / {model}"


def _cut(text: str | None) -> str:
    if not text:
        return ""
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."


class _Thumbnails:
    """Small JPEG data URLs of local images, each made once, at most MAX_THUMBNAILS."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.made: dict[str, str | None] = {}
        self.note: str | None = None
        try:
            from PIL import Image
        except ImportError:
            self.image: Any = None
            self.note = "no thumbnails: they need Pillow (pip install 'mpinfer[images]')"
        else:
            self.image = Image

    def of(self, ref: str | None) -> str | None:
        if ref is None or self.image is None or ref[:5].lower() == "data:" or "://" in ref:
            return None
        path = os.path.expanduser(ref)
        path = path if os.path.isabs(path) else os.path.join(self.root, path)
        if path in self.made:
            return self.made[path]
        if sum(url is not None for url in self.made.values()) >= MAX_THUMBNAILS:
            self.note = f"thumbnails of the first {MAX_THUMBNAILS} images only"
            return None
        self.made[path] = self._make(path)
        return self.made[path]

    def _make(self, path: str) -> str | None:
        try:
            if os.path.getsize(path) > MAX_IMAGE_BYTES:
                return None
            with self.image.open(path) as picture:
                picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
                data = io.BytesIO()
                picture.convert("RGB").save(data, format="JPEG", quality=70)
        except (OSError, ValueError, self.image.DecompressionBombError):
            return None  # not an image it can read: the row says which file in its prompt
        return "data:image/jpeg;base64," + base64.b64encode(data.getvalue()).decode()


@dataclass
class _Task:
    id: str
    value: str
    prompt: str
    image: str | None


def _first_tasks(config: RunConfig, by: str, count: int) -> list[_Task]:
    input_path, _ = config.require_paths()
    fmt = detect_format(input_path)
    tasks: list[_Task] = []
    for _, raw, item in iter_selected(input_path, reading(config), selection(config), fmt):
        if len(tasks) >= count:
            break
        if isinstance(item, Task) and raw is not None:
            _, value = value_of(raw, by, fmt)
            tasks.append(_Task(item.id, shown(value), item.prompt,
                               item.images[0] if item.images else None))
    return tasks


def _rows_of(output: GroupOutput, tasks: list[_Task], thumbnails: _Thumbnails) -> list[BrowseRow]:
    wanted = {task.id for task in tasks}
    answers: dict[str, Any] = {}
    for _, _, obj in iter_lines(output.path):
        record = view(obj)
        if record is not None and record.id in wanted and record.id not in answers:
            answers[record.id] = (record, obj)
    judged: dict[str, Any] = {}
    for _, _, obj in iter_lines(judge_output(output.path)):
        task_id = record_id(obj)
        if task_id in wanted and task_id not in judged:
            judged[task_id] = obj
    errors: dict[str, str] = {}
    for _, _, obj in iter_lines(OutputPaths.of(output.path).errors):
        failure = failure_view(obj)
        if failure is not None and failure.id in wanted:
            errors[failure.id] = f"{failure.error_type}: {failure.message}"
    name = output_name(output.variant, output.model)
    rows = []
    for task in tasks:
        found = answers.get(task.id)
        verdict = judged.get(task.id)
        judge_text = verdict.get("text") if isinstance(verdict, dict) else None
        label = label_of(verdict) if verdict is not None else None
        prompt = task.prompt
        if found is None:
            outcome, text = ("failed", errors[task.id]) if task.id in errors else (
                "not answered", "")
        else:
            record, obj = found
            label = label if verdict is not None else label_of(obj)
            sent = obj.get("input_prompt")
            prompt = sent if isinstance(sent, str) and sent else prompt
            if record.filtered:
                outcome, text = "filtered", str(record.filter)
            elif record.refused:
                outcome, text = "refusal", record.refusal or ""
            else:
                outcome, text = "answer", record.answer or ""
        rows.append(BrowseRow(task.id, task.value, name, _cut(prompt),
                              thumbnails.of(task.image), outcome, _cut(text), label,
                              _cut(judge_text if isinstance(judge_text, str) else None)))
    return rows


def read_results(config: RunConfig, by: str) -> ResultsData:
    """The groups (as ``--status --by`` counts them) and the first rows of every output."""
    reader = StatusReader(config)
    try:
        report = reader.read()
    finally:
        reader.close()
    outputs = group_outputs(config)
    tasks = _first_tasks(config, by, max(1, MAX_ROWS // len(outputs)))
    thumbnails = _Thumbnails(config.resolved_image_root)
    rows = [row for output in outputs for row in _rows_of(output, tasks, thumbnails)]
    made = sum(url is not None for url in thumbnails.made.values())
    return ResultsData(by, report.groups or [], rows, report.total, made, thumbnails.note)


def _percent(row: GroupRow, count: int | None = None, label: str = "") -> str:
    share = row.label_share(label) if count is None else row.share(count)
    return "-" if share is None else f"{100 * share:.1f}%"


def _chart(page: _Page, data: ResultsData, title: str,
           share: Callable[[GroupRow], float | None]) -> str:
    """One measure (a label's share, the refusal or filter rate) per value of the field, a bar
    for every (variant, model) side by side."""
    go = page.go
    values = list(dict.fromkeys(row.shown_value for row in data.groups))
    figure = go.Figure()
    for variant, model in dict.fromkeys((row.variant, row.model) for row in data.groups):
        mine = {row.shown_value: row for row in data.groups
                if (row.variant, row.model) == (variant, model)}
        figure.add_trace(go.Bar(
            x=values, y=[None if value not in mine else share(mine[value]) for value in values],
            name=output_name(variant, model), hovertemplate="%{x}: %{y:.1%}"))
    figure.update_layout(title={"text": title}, barmode="group",
                         xaxis={"type": "category", "tickangle": -30},
                         yaxis={"tickformat": ".0%", "rangemode": "tozero"})
    return page.figure(figure, layout=CHART_LAYOUT)


def _label_share(label: str) -> Callable[[GroupRow], float | None]:
    def share(row: GroupRow) -> float | None:
        return row.label_share(label)

    return share


def _refusal_rate(row: GroupRow) -> float | None:
    return row.share(row.refused)


def _filter_rate(row: GroupRow) -> float | None:
    return row.share(row.filtered)


def _charts(page: _Page, data: ResultsData) -> str:
    """A chart for each label (the first MAX_LABEL_CHARTS), the refusal and the filter rates
    (each drawn when some task has it: an empty chart would look like a drawing bug)."""
    labels = sorted({label for row in data.groups for label in row.labels})
    charts = [_chart(page, data, f"{label}: share of the tasks done", _label_share(label))
              for label in labels[:MAX_LABEL_CHARTS]]
    notes = [] if labels else ["no labels: the answers have none and no judge judged them"]
    if len(labels) > MAX_LABEL_CHARTS:
        notes.append(f"the first {MAX_LABEL_CHARTS} of {len(labels)} labels are drawn")
    if any(row.refused for row in data.groups):
        charts.append(_chart(page, data, "refusal rate: share of the tasks done", _refusal_rate))
    else:
        notes.append("no refusals: no refusal rate to draw")
    if any(row.filtered for row in data.groups):
        charts.append(_chart(page, data, "filter rate: share of the tasks done", _filter_rate))
    else:
        notes.append("nothing filtered: no filter rate to draw")
    note = f"<p class=note>{page.text('; '.join(notes))}</p>" if notes else ""
    return note + "<div class=charts>" + "".join(charts) + "</div>"


def _groups_table(page: _Page, data: ResultsData) -> str:
    labels = sorted({label for row in data.groups for label in row.labels})
    head = [data.by, "variant / model", "tasks", "done", "refused", "filtered", "failed",
            *labels, "tokens in", "tokens out", "cost"]
    body = [[row.shown_value, output_name(row.variant, row.model), row.tasks, row.done,
             _percent(row, row.refused), _percent(row, row.filtered), row.failed,
             *(_percent(row, label=label) for label in labels),
             "-" if row.tokens["prompt"] is None else row.tokens["prompt"],
             "-" if row.tokens["completion"] is None else row.tokens["completion"],
             "-" if row.cost is None else f"${row.cost:.4f}"] for row in data.groups]
    return page.table(head, body, text_columns=2)


def _rows_table(page: _Page, data: ResultsData) -> str:
    head = ["id", data.by, "variant / model", "prompt", "image", "outcome", "answer or refusal",
            "label", "judge's text"]
    cells = []
    for row in data.rows:
        image = (f'<img src="{row.thumbnail}" alt="" loading="lazy">' if row.thumbnail else "")
        cells.append("<tr>" + "".join(
            f"<td class=text>{part}</td>" for part in (
                page.text(row.id), page.text(row.value), page.text(row.output),
                page.text(row.prompt), image, page.text(row.outcome), page.text(row.text),
                page.text(row.label or ""), page.text(row.judge_text or ""))) + "</tr>")
    header = "".join(f"<th class=text>{page.text(name)}</th>" for name in head)
    return (f"<table id=results-rows><thead><tr>{header}</tr></thead>"
            f"<tbody>{''.join(cells)}</tbody></table>")


def results_section(page: _Page, data: ResultsData) -> None:
    """Add the results section to ``page``."""
    page.add(f"<h2>Results by {page.text(data.by)}</h2><p class=note>refused, filtered and each "
             "label as shares of the tasks done (answered, refused or filtered); labels from "
             "the judge where it judged, else from the answer</p>")
    if not data.groups:
        page.add("<p class=note>no tasks selected: no groups</p>")
        return
    page.add(_charts(page, data) + _groups_table(page, data))
    shown = (f"the first {len(data.rows)} of {data.rows_total} rows"
             if len(data.rows) < data.rows_total else f"all {len(data.rows)} rows")
    note = f"; {data.note}" if data.note else ""
    page.add(f"{_STYLE}<h3>Rows</h3><p class=note>{page.text(shown + note)}</p>"
             "<p><input type=search id=results-filter size=40 "
             "placeholder='filter: any text of the row'> <span id=results-shown></span></p>"
             + _rows_table(page, data) + f"<script>{_FILTER_SCRIPT}</script>")
