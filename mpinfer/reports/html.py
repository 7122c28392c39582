"""``--report``: one self-contained HTML file of charts and tables about an output.

Plotly draws the charts (the optional extra ``mpinfer[report]``): its Python package writes figures
for plotly.js, whose whole script is embedded once in the page, so the file opens with no network,
from an e-mail or an archive, years later. The data comes from ``timeline`` (the output, errors and
runs files); every text shown goes through ``redact`` with the run's keys, though none of those
files should hold one.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError, MpinferError, OutputError
from ..redact import redact
from ..store.atomic import atomic_write
from ..store.output import companion
from .results_html import ResultsData, read_results, results_section
from .timeline import ModelRow, RunView, Series, Timeline, build_timeline
from .validate import ValidationReport, validate

RUNS_DRAWN = 10  # per-run sections beyond the last ten would make a page nobody scrolls
CHART_HEIGHT = 300
_PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
.ok { color: #176b2c; } .bad { color: #a31515; } .note { color: #666; font-size: .9em; }
details { margin: .5em 0; } code { font-size: .9em; }
"""


def default_report_path(output: Path) -> Path:
    """``<output>.report.html``: where ``--report`` writes unless told otherwise."""
    return companion(output, ".report.html")


@dataclass(frozen=True)
class ReportResult:
    """What ``write_report`` wrote, and how long it took."""

    path: Path
    lines: int
    runs: int
    charts: int
    bytes: int
    seconds: float
    valid: bool | None  # None: validate could not run (no input file)


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ConfigError("--report needs Plotly: pip install 'mpinfer[report]'") from None
    return go


class _Page:
    """The page being written: sections of HTML and its figures (counted for the browser test)."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets
        self.parts: list[str] = []
        self.charts = 0
        self.go = _plotly()

    def text(self, value: Any) -> str:
        """``value`` as HTML text, with the run's secrets redacted."""
        return html.escape(redact(str(value), self.secrets))

    def add(self, markup: str) -> None:
        """Append a section of HTML."""
        self.parts.append(markup)

    def figure(self, fig: Any, layout: dict[str, Any] | None = None) -> str:
        """A plotly figure as HTML, in the page's layout (the script is embedded once); ``layout``
        overrides parts of it (the results section's charts: a taller one, the legend on top)."""
        self.charts += 1
        # Fixed margins with room for the legend below and a right-hand axis: margins that
        # expand to fit the legend can redraw in a loop (plotly.js warns "Too many
        # auto-margin redraws" on the console).
        fig.update_layout(height=CHART_HEIGHT, template="plotly_white", showlegend=True,
                          margin={"l": 60, "r": 60, "t": 40, "b": 110, "autoexpand": False},
                          legend={"orientation": "h", "y": -0.38, "yanchor": "top"})
        fig.update_layout(**(layout or {}))
        height = (layout or {}).get("height", CHART_HEIGHT)
        markup: str = fig.to_html(full_html=False, include_plotlyjs=False,
                                  default_height=f"{height}px",
                                  config={"displaylogo": False, "responsive": True})
        return markup

    def table(self, head: Sequence[str], rows: Iterable[Sequence[Any]],
              text_columns: int = 1) -> str:
        """An HTML table; the first ``text_columns`` columns are text, the rest numbers."""
        def cells(tag: str, values: Sequence[Any]) -> str:
            return "".join(
                f"<{tag}{' class=text' if n < text_columns else ''}>{self.text(v)}</{tag}>"
                for n, v in enumerate(values)
            )

        body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
        return f"<table><tr>{cells('th', head)}</tr>{body}</table>"


def _x(series: Series, relative: bool) -> list[Any]:
    """Bin times as seconds into the run, or as local wall-clock times for the whole output."""
    if relative:
        return [round(t - series.start, 3) for t in series.times]
    return [datetime.fromtimestamp(t).isoformat(sep=" ", timespec="milliseconds")
            for t in series.times]


def _charts(page: _Page, series: Series, relative: bool) -> str:
    """The four charts of a span: answers a second (with the limits set), latency, failures and
    retries by type, and cumulative tokens and cost."""
    go = page.go
    x = _x(series, relative)
    axis = {"title": {"text": "seconds into the run" if relative else "time"}}
    every = f"per {series.width_s:g} s bin"
    lines = "lines" if len(x) > 2 else "lines+markers"  # a line through one point draws nothing
    rate = go.Figure(go.Scatter(x=x, y=series.answers_per_s, name="answers/s", mode=lines))
    for (value, label), dash in zip(series.limits, ("dash", "dot"), strict=False):
        rate.add_trace(go.Scatter(x=[x[0], x[-1]], y=[value] * 2, name=label, mode="lines",
                                  line={"dash": dash, "color": "#a31515"}))
    unlimited = f"; {series.limit_note}" if series.limit_note else ""
    rate.update_layout(title={"text": f"Answers per second ({every}{unlimited})"}, xaxis=axis,
                       yaxis={"title": {"text": "answers/s"}, "rangemode": "tozero"})
    latency = go.Figure([go.Scatter(x=x, y=series.p50, name="p50", mode="lines+markers",
                                    connectgaps=False),
                         go.Scatter(x=x, y=series.p95, name="p95", mode="lines+markers",
                                    connectgaps=False)])
    latency.update_layout(title={"text": f"Latency p50 / p95 ({every})"}, xaxis=axis,
                          yaxis={"title": {"text": "seconds"}, "rangemode": "tozero"})
    trouble = go.Figure()
    for kind, counts in sorted(series.failures.items()):
        trouble.add_trace(go.Bar(x=x, y=counts, name=f"failed: {kind}"))
    for kind, counts in sorted(series.retries.items()):
        trouble.add_trace(go.Scatter(x=x, y=counts, name=f"retried: {kind}", mode="lines+markers",
                                     line={"dash": "dot"}))
    if not series.failures and not series.retries:
        trouble.add_trace(go.Scatter(x=[x[0], x[-1]], y=[0, 0], name="no failures, no retries",
                                   mode=lines))
    trouble.update_layout(title={"text": f"Failures and retries by type ({every})"}, xaxis=axis,
                          barmode="stack",
                          yaxis={"title": {"text": "count"}, "rangemode": "tozero"})
    totals = go.Figure([go.Scatter(x=x, y=series.cum_tokens, name="tokens", mode=lines),
                        go.Scatter(x=x, y=series.cum_cost, name="cost (USD)", mode=lines,
                                   yaxis="y2")])
    totals.update_layout(title={"text": "Cumulative tokens and cost"}, xaxis=axis,
                         yaxis={"title": {"text": "tokens"}, "rangemode": "tozero"},
                         yaxis2={"title": {"text": "USD"}, "overlaying": "y", "side": "right",
                                 "rangemode": "tozero", "tickprefix": "$", "tickformat": ".4f"})
    no_latency = all(v is None for v in series.p50)  # an empty chart would look like a drawing bug
    no_chart = "<p class=note>no answers in this span: no latency to draw</p>"
    figures = [page.figure(rate), no_chart if no_latency else page.figure(latency),
               page.figure(trouble), page.figure(totals)]
    return "<div class=charts>" + "".join(figures) + "</div>"


def _money(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"${value:.{digits}f}"


def _row_cost(row: ModelRow) -> str:
    """A model's cost, never $0 for answers no price was known for."""
    if row.unpriced and not row.cost:
        return f"unknown: no price for {row.model}"
    return (_money(row.cost) + (f" ({row.unpriced} with no price)" if row.unpriced else "")
            + (f" ({row.no_usage} without usage)" if row.no_usage else ""))


def _model_table(page: _Page, rows: list[ModelRow]) -> str:
    head = ["model", "endpoint", "answered by", "answers", "failures", "refusals", "filtered",
            "truncated (length)", "mean latency", "mean wait", "tokens in", "tokens out", "cost",
            "cost / 1,000 answers"]
    body = [
        [row.model, row.endpoint, ", ".join(sorted(row.answered_by)) or "-", row.answers,
         row.failures,
         row.refusals, row.filtered, row.truncated,
         "-" if row.mean_latency_s is None else f"{row.mean_latency_s:.2f} s",
         "-" if row.mean_waited_s is None else f"{row.mean_waited_s:.2f} s",
         row.prompt_tokens, row.completion_tokens,
         _row_cost(row),
         _money(row.cost_per_1000)]
        for row in rows
    ]
    return page.table(head, body, text_columns=3)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _run_section(page: _Page, run: RunView) -> None:
    span = run.span
    took = (f"{span.ended_at - span.started_at:.1f} s" if span.ended_at is not None
            else "no end recorded")
    page.add(f"<h2>Run {page.text(span.run_id)}</h2><p>started {_when(span.started_at)}, ended "
             f"{_when(span.ended_at)} ({took}); {run.answers} answers and {run.failures} failures "
             f"written{'; mpinfer ' + page.text(span.version) if span.version else ''}</p>")
    if span.argv:
        page.add(f"<p>command: <code>{page.text(' '.join(span.argv))}</code></p>")
    if span.counts:
        values = [f"{v:.6f}" if isinstance(v, float) else ("-" if v is None else v)
                  for v in span.counts.values()]
        page.add(page.table(list(span.counts), [values], text_columns=0))
    if run.series is None:
        page.add("<p class=note>this run wrote no lines</p>")
    else:
        page.add(_charts(page, run.series, relative=True))
    if span.settings:
        rows = [
            [name, "-" if value is None else value] for name, value in sorted(span.settings.items())
        ]
        page.add("<details><summary>settings of this "
                 f"run</summary>{page.table(['setting', 'value'], rows, 2)}</details>")


def _verdict(page: _Page, reports: list[ValidationReport] | None, reason: str) -> str:
    if reports is None:
        return f"<p class=note>validate: not run ({page.text(reason)})</p>"
    items = []
    for report in reports:
        if report.ok:
            items.append(f"<li class=ok>{page.text(report.output)}: ok "
                         f"({report.records} records)</li>")
        else:
            problems = ", ".join(f"{kind.value} {count}" for kind, count in report.counts.items())
            items.append(f"<li class=bad>{page.text(report.output)}: {page.text(problems)}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def render(timeline: Timeline, reports: list[ValidationReport] | None, reason: str,
           secrets: tuple[str, ...] = (), results: ResultsData | None = None) -> tuple[str, int]:
    """The page's HTML and how many charts it holds; ``results``: the results section (--by)."""
    import plotly.offline

    page = _Page(secrets)
    page.add(f"<h1>mpinfer report: {page.text(timeline.output)}</h1><p class=note>made "
             f"{_when(time.time())} from the output, errors and runs files; {timeline.lines} "
             f"output lines, {len(timeline.runs)} run{'s' if len(timeline.runs) != 1 else ''}</p>")
    page.add("<h2>Validate</h2>" + _verdict(page, reports, reason))
    page.add("<h2>Per model and endpoint (all runs)</h2>" + _model_table(page, timeline.table))
    if results is not None:
        results_section(page, results)
    # With one run, the run's own charts say it all.
    if timeline.whole is not None and len(timeline.runs) > 1:
        charts = _charts(page, timeline.whole, relative=False)
        page.add("<h2>The whole output (all runs)</h2>" + charts)
    shown = timeline.runs[-RUNS_DRAWN:]
    if len(timeline.runs) > len(shown):
        page.add(f"<p class=note>the last {len(shown)} of {len(timeline.runs)} runs are drawn</p>")
    for run in reversed(shown):
        _run_section(page, run)
    script = plotly.offline.get_plotlyjs()
    document = ("<!DOCTYPE html><html><head><meta charset=utf-8><title>mpinfer report</title>"
                f"<style>{_PAGE_STYLE}</style><script>{script}</script></head><body>"
                + "".join(page.parts) + "</body></html>")
    return document, page.charts


def write_report(config: RunConfig, dest: Path | None = None) -> ReportResult:
    """Write ``config``'s report to ``dest`` (default ``<output>.report.html``), atomically."""
    began = time.monotonic()
    _plotly()
    output = config.output
    if output is None:
        raise ConfigError("--report needs the output: pass -o FILE")
    target = dest or default_report_path(output)
    timeline = build_timeline(output, config.models, config.variant_names)
    if not timeline.runs:
        raise OutputError(f"--report: {output} has no answers, failures or runs "
                          "recorded yet: nothing to report")
    reports: list[ValidationReport] | None = None
    reason = ""
    if config.input is None or not config.input.exists():
        reason = "no input file given" if config.input is None else f"{config.input} not found"
    else:
        try:
            reports = validate(config)
        except MpinferError as exc:
            reason = str(exc)
    results = None if config.by is None else read_results(config, config.by)
    document, charts = render(timeline, reports, reason, config.api_keys, results)
    data = document.encode()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--report {target}: {exc.strerror or exc}") from None
    with atomic_write(target) as handle:  # a reader never sees half a page
        handle.write(data)
    return ReportResult(path=target, lines=timeline.lines, runs=len(timeline.runs), charts=charts,
                        bytes=len(data), seconds=time.monotonic() - began,
                        valid=None if reports is None else all(r.ok for r in reports))


__all__ = ["ReportResult", "default_report_path", "render", "write_report"]
