"""--report --by FIELD: the results section (a chart of the groups, the rows with thumbnails and a
text filter), in a headless Chromium."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import orjson
import pytest
from helpers import run_cli, write_jsonl, write_png
from test_report import BROWSER_TIMEOUT_S, CHROMIUM_FLAGS, _browser, drawn_charts, open_in_browser

from mpinfer.mockserver import MockServerProcess

pytest.importorskip("plotly")


def _dom_at(page: Path, work: Path, fragment: str) -> str:
    """The DOM of ``page`` opened at ``#fragment``, after its scripts ran."""
    command = [_browser(), *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile-filter'}",
               "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri() + fragment]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S,
                          check=False)
    assert done.stdout.strip(), done.stderr[-2000:]
    return done.stdout


def _shown_rows(dom: str) -> list[str]:
    """The ids of the rows table's rows that are not hidden."""
    body = dom.split('id="results-rows"')[1].split("</tbody>")[0]
    rows = re.findall(r"<tr( style=\"[^\"]*\")?><td class=\"text\">([^<]*)</td>", body)
    return [rid for style, rid in rows if "display: none" not in style]


def test_the_report_by_scenario_charts_the_groups_and_filters_the_rows(tmp_path: Path,
                                                                        mock: MockServerProcess):
    # Given a run of six tasks with images in two scenarios, two refused, with two models, and
    # a judge's verdicts on one model's answers
    rows = []
    for n in range(6):
        write_png(tmp_path / "img" / f"{n}.png", (40 * n, 120, 200))
        rows.append({"id": f"q{n}", "prompt": f"question {n}" + (" REFUSE" if n in (1, 4) else ""),
                     "images": [f"img/{n}.png"], "scenario": ["fraud", "privacy"][n % 2]})
    write_jsonl(tmp_path / "tasks.jsonl", rows)
    mock.configure(refuse_marker="REFUSE")
    common = ("-i", "tasks.jsonl", "-o", "results.jsonl", "--model", "m-small,m-large")
    ran = run_cli(*common, "--base-url", mock.base_url, "-p", "1", "-c", "3", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    write_jsonl(tmp_path / "results.m-small.judge.jsonl", [
        {"id": f"q{n}", "label": "unsafe" if n == 0 else "safe", "text": f"judged q{n} zebra"
         if n == 2 else f"judged q{n}", "judge_model": "judge", "of": "answer", "usage": None,
         "cost": None, "sent": True} for n in range(6)])
    # When the report is written with --by scenario
    made = run_cli(*common, "--report", "--by", "scenario", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    page = tmp_path / "results.jsonl.report.html"
    text = page.read_text()
    # Then it is still one offline file, with a thumbnail of each image
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="https?:', text)
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', text)) == 12
    # And in the browser every chart drew, with no console errors; the results chart names the
    # groups and both models
    dom, console, shot = open_in_browser(page, tmp_path)
    assert console == []
    charts, drawn = drawn_charts(dom)
    assert drawn == charts and charts >= 5
    results = dom.split("Results by scenario")[1].split("<h3>")[0]
    titles = ("safe: share", "unsafe: share", "refusal rate: share")  # nothing filtered: no chart
    charted = results.split('class="plotly-graph-div')[1:]
    assert len(charted) == len(titles)
    for chart, title in zip(charted, titles, strict=True):
        assert title in chart
        for name in ("fraud", "privacy", "m-small", "m-large"):  # the groups, the legend
            assert f">{name}<" in chart, (title, name)
    assert "nothing filtered: no filter rate to draw" in results
    # And all twelve rows show, until the filter is given a text
    assert len(_shown_rows(dom)) == 12
    assert "12 of 12 rows shown" in dom
    filtered = _dom_at(page, tmp_path, "#filter=zebra")
    assert _shown_rows(filtered) == ["q2"]
    assert "1 of 12 rows shown" in filtered
    refusals = _dom_at(page, tmp_path, "#filter=refusal")
    assert sorted(_shown_rows(refusals)) == ["q1", "q1", "q4", "q4"]
    assert shot.exists() and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    # And the page's group table says what --status --by says
    shown = run_cli(*common, "--status", "--json", "--by", "scenario", cwd=tmp_path)
    groups = orjson.loads(shown.stdout)["groups"]
    small_fraud = next(g for g in groups if (g["value"], g["model"]) == ("fraud", "m-small"))
    assert small_fraud["labels"] == {"safe": 2, "unsafe": 1}
