"""--report: the HTML report's numbers from the files alone, and the page in a headless Chromium."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
from helpers import FAKE_KEY, run_cli, text_tasks, write_tasks

from mpinfer.driver import one_line
from mpinfer.mockserver import MockServerProcess
from mpinfer.reports.html import render
from mpinfer.reports.timeline import UNKNOWN_RETRY, build_timeline

BROWSER_TIMEOUT_S = 90
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
# Chromium with --enable-logging=stderr prints every console message, and every uncaught error, so:
_CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)")


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on this machine (python3 dev.py test installs Debian's chromium when "
                "run as root)")


def _chromium(page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    """A headless Chromium on a local file: own profile, no network of its own, logs to stderr."""
    command = [_browser(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr",
               "--v=0", "--virtual-time-budget=10000", *mode, page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S,
                          check=False)


def open_in_browser(page: Path, work: Path) -> tuple[str, list[str], Path]:
    """The DOM after the scripts ran, the console messages, a screenshot of ``page`` in Chromium."""
    dom = _chromium(page, work / "profile-dom", "--dump-dom")
    shot = work / "report.png"
    pictured = _chromium(page, work / "profile-shot", "--window-size=1300,2600",
                         f"--screenshot={shot}")
    console = [m.group(1) for proc in (dom, pictured) for m in _CONSOLE.finditer(proc.stderr)]
    assert dom.stdout.strip(), dom.stderr[-2000:]
    return dom.stdout, console, shot


def drawn_charts(dom: str) -> tuple[int, int]:
    """(charts on the page, charts whose SVG plot area holds a drawn line, marker or bar)."""
    charts = dom.split('class="plotly-graph-div')[1:]
    # The legend (in the info layer, after the plot layers) draws sample lines of its own: leave it
    # out.
    plots = [chart.split('class="infolayer"')[0] for chart in charts]
    drawn = sum(1 for plot in plots if re.search(r'class="js-line" d="M[\d.]+,[\d.]+L', plot)
                or re.search(r'<path class="point"[^>]* d="M[^"]+"', plot)
                or re.search(r'<g class="point"><path d="M[\d.]+,[\d.]+[VH]', plot))
    return len(charts), drawn


def test_the_browser_check_catches_a_page_that_throws_and_draws_nothing(tmp_path: Path):
    # Given a page that logs an error, throws, and has an empty chart
    page = tmp_path / "broken.html"
    page.write_text('<html><body><div class="plotly-graph-div"><svg class="main-svg"></svg></div>'
                    '<script>console.error("bad"); nothing();</script></body></html>')
    # When it is opened in the browser
    dom, console, _ = open_in_browser(page, tmp_path)
    # Then both errors are seen and the chart does not count as drawn
    assert any("bad" in line for line in console)
    assert any("nothing is not defined" in line for line in console)
    assert drawn_charts(dom) == (1, 0)


def test_the_report_of_a_real_run_draws_every_chart_with_no_console_errors(tmp_path: Path,
                                                                           mock: MockServerProcess):
    # Given two runs against the mock with 500s (some retried, some failing after their retries),
    # rpm and tpm limits
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(30))
    mock.configure(latency_ms=20, p500=0.3, seed=3)
    for _ in range(2):
        ran = run_cli("-i", "tasks.jsonl", "-o", "results.jsonl", "--base-url", mock.base_url,
                      "--retry-backoff", "0.02", "--max-retries", "1", "--rpm", "6000", "--tpm",
                      "600000", "-p", "2", "-c", "2", cwd=tmp_path)
        assert ran.returncode in (0, 1), ran.stderr
    # When its report is written
    made = run_cli("-i", "tasks.jsonl", "-o", "results.jsonl", "--report", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    page = tmp_path / "results.jsonl.report.html"
    assert "report: " in made.stdout and page.exists()
    # Then it is one offline file: no script or style is fetched from anywhere
    text = page.read_text()
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?:', text)
    assert FAKE_KEY not in text
    # And in a real browser every chart drew, nothing went to the console, and a screenshot was
    # taken
    dom, console, shot = open_in_browser(page, tmp_path)
    assert console == []
    charts, drawn = drawn_charts(dom)
    # four for the whole output, four for each run (less latency for a rerun that got no answer)
    assert charts >= 11 and drawn == charts, (charts, drawn)
    assert "--rpm limit" in dom
    assert "--tpm limit" in dom
    assert "failed: server_error" in dom
    assert "retried: " in dom
    assert shot.exists() and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def _line(obj: dict[str, object]) -> bytes:
    return orjson.dumps(obj) + b"\n"


def test_the_table_counts_refusals_truncations_and_costs_per_model_from_old_and_new_lines(
    tmp_path: Path,
):
    # Given an output from a version without a manifest, refusal or retries fields, plus newer lines
    # that have them
    out = tmp_path / "results.jsonl"
    old = {"id": "a", "answer": "x", "model": "m-1", "requested_model": "m", "latency_s": 1.0,
           "attempts": 3, "processed_at": 100.0, "cost": 0.002, "finish_reason": "stop",
           "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    truncated = {**old, "id": "b", "finish_reason": "length", "attempts": 1, "latency_s": 3.0,
                 "processed_at": 101.0}
    refused = {**old, "id": "c", "answer": None, "refusal": "I can't help with that.",
               "attempts": 2, "retries": {"rate_limit": 1}, "processed_at": 102.0, "cost": None}
    not_refused = {**old, "id": "d", "refusal": None, "attempts": 1, "processed_at": 103.0}
    out.write_bytes(b"".join(_line(r) for r in (old, truncated, refused, not_refused)) + b"{torn")
    (tmp_path / "results.jsonl.errors.jsonl").write_bytes(
        _line({"id": "e", "error_type": "server", "status": 500, "message": "boom", "attempts": 4,
               "processed_at": 104.0}))
    # When the timeline is built
    timeline = build_timeline(out, ("m",))
    # Then one row holds model m: 4 answers, 1 failure, 1 refusal, 1 truncated, the priced answers'
    # cost
    (row,) = timeline.table
    assert (row.model, row.answers, row.failures, row.refusals, row.truncated) == ("m", 4, 1, 1, 1)
    assert row.answered_by == {"m-1"} and row.unpriced == 1
    assert row.mean_latency_s == pytest.approx(1.5)
    assert row.cost == pytest.approx(0.006) and row.cost_per_1000 == pytest.approx(2.0)
    # And the whole output is one run, whose retries are typed where the line says so, "unknown"
    # where not
    (run,) = timeline.runs
    assert run.span.run_id == "(no manifest)" and (run.answers, run.failures) == (4, 1)
    series = run.series
    assert series is not None
    assert {kind: sum(counts) for kind, counts in series.retries.items()} == {UNKNOWN_RETRY: 5,
                                                                              "rate_limit": 1}
    assert {kind: sum(counts) for kind, counts in series.failures.items()} == {"server": 1}
    assert series.cum_tokens[-1] == 60 and series.cum_cost[-1] == pytest.approx(0.006)


def test_retries_are_recorded_by_type_on_the_line_and_in_the_summary(tmp_path: Path,
                                                                     mock: MockServerProcess):
    # Given a task the server fails with a 500 and then a 429 before answering, and one it answers
    # at once
    write_tasks(tmp_path / "tasks.jsonl",
                [{"id": "a", "prompt": "flaky"}, {"id": "b", "prompt": "fine"}])
    mock.configure(script={"flaky": ["500", "429"]}, retry_after=0.01)
    # When it runs
    ran = run_cli("-i", "tasks.jsonl", "-o", "results.jsonl", "--base-url", mock.base_url,
                  "--retry-backoff", "0.02", "-p", "1", cwd=tmp_path)
    # Then its line says which kinds of failure were retried, and the summary counts them by type
    assert ran.returncode == 0, ran.stderr
    rows = [orjson.loads(x) for x in (tmp_path / "results.jsonl").read_bytes().splitlines()]
    lines = {row["id"]: row for row in rows}
    assert lines["a"]["retries"] == {"server_error": 1, "rate_limit": 1}
    assert lines["a"]["attempts"] == 3
    assert lines["b"]["retries"] == {}
    assert "retries 2 (rate_limit 1, server_error 1)" in ran.stdout
    # And the report's timeline reads them by type
    (run,) = build_timeline(tmp_path / "results.jsonl", ("gpt-4o-mini",)).runs
    assert run.series is not None
    assert {kind: sum(counts) for kind, counts in run.series.retries.items()} == {"server_error": 1,
                                                                                  "rate_limit": 1}


def test_a_failure_warning_is_one_line_however_long_the_servers_message():
    # Given a server's multi-line error page
    page = "<html>\n  <body>\n    <h1>502 Bad Gateway</h1>\n" + "x" * 500 + "\n</body></html>"
    # When it is shown on the console
    shown = one_line(page)
    # Then it is one line of at most 200 characters, its start kept
    assert "\n" not in shown
    assert len(shown) <= 200
    assert shown.startswith("<html> <body> <h1>502 Bad Gateway</h1>")


@pytest.mark.skipif(importlib.util.find_spec("plotly") is None, reason="the report needs plotly")
def test_no_key_reaches_the_report_even_from_a_manifest_that_holds_one(tmp_path: Path):
    # Given an output whose manifest (hand-edited, or from a careless tool) names the key in a
    # setting and argv
    out = tmp_path / "results.jsonl"
    out.write_bytes(
        _line({"id": "a", "answer": "x", "model": "m", "processed_at": 100.0, "latency_s": 1.0,
               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
    start = {"event": "start", "run_id": "r1", "started_at": 99.0, "ended_at": None,
             "argv": ["mpinfer", "--base-url", f"http://127.0.0.1:1/v1?key={FAKE_KEY}"],
             "settings": {"base_url": f"http://127.0.0.1:1/v1?key={FAKE_KEY}"}, "version": "0",
             "input": None, "outputs": {}}
    (tmp_path / "results.jsonl.runs.jsonl").write_bytes(_line(start))
    # When the page is rendered with the run's keys
    document, charts = render(build_timeline(out, ("m",)), None, "no input", secrets=(FAKE_KEY,))
    # Then the key is nowhere in it (redacted as the logs redact it: its last four characters), and
    # the run is there with its charts
    assert FAKE_KEY not in document and f"key=...{FAKE_KEY[-4:]}" in document
    assert "Run r1" in document and charts == 4
