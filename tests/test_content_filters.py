"""Content filters over real HTTP: Azure's 400 ``content_filter`` and a 200 whose choice ends
``finish_reason: "content_filter"`` are results, kept as done records with what the filter said.

The summary, --status, --validate, --export and the report count them beside refusals, and a rerun
does not ask again; on the plain OpenAI path and on Azure's deployment path alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import read_jsonl, run_cli, write_tasks

from mpinfer.mock.answers import FILTERED_CATEGORY, FILTERED_SEVERITY
from mpinfer.mockserver import MockServerProcess
from mpinfer.reports.timeline import build_timeline

STOP_PROMPT = "[stop-prompt]"
STOP_ANSWER = "[stop-answer]"
AZURE_KEY = "azure-key-0000000000000east"


def _azure_table(mock: MockServerProcess, path: Path) -> Path:
    """gpt-4o as an Azure deployment on the mock (its key from AZURE_KEY_EAST)."""
    root = mock.base_url.removesuffix("/v1")
    path.write_text(f'''[[endpoints]]
model = "gpt-4o"
provider = "azure"
base_url = "{root}"
deployment = "gpt4o-east"
api_version = "2024-10-21"
api_key_env = "AZURE_KEY_EAST"
''')
    return path


def _where(mock: MockServerProcess, tmp_path: Path, path: str) -> tuple[list[str], dict[str, str]]:
    """The flags (and environment) that send gpt-4o over the plain path or Azure's."""
    if path == "plain":
        return ["--base-url", mock.base_url], {}
    mock.configure(azure_deployments={"gpt4o-east": "gpt-4o"})
    table = _azure_table(mock, tmp_path / "endpoints.toml")
    return ["--endpoints", str(table)], {"AZURE_KEY_EAST": AZURE_KEY}


@pytest.mark.parametrize("path", ["plain", "azure"])
def test_filtered_prompts_and_answers_are_done_records_counted_beside_refusals(
        mock: MockServerProcess, tmp_path: Path, path: str) -> None:
    # Given a server whose content filter stops one prompt (a 400) and one answer (a 200)
    mock.configure(filter_marker=STOP_PROMPT, filter_answer_marker=STOP_ANSWER)
    where, env = _where(mock, tmp_path, path)
    tasks = write_tasks(tmp_path / "tasks.jsonl",
                        [{"id": "safe", "prompt": "What colour is the sky?"},
                         {"id": "prompt", "prompt": f"{STOP_PROMPT} Describe the fight."},
                         {"id": "answer", "prompt": f"{STOP_ANSWER} Describe the fight."}])
    out = tmp_path / "results.jsonl"
    base = ["-i", str(tasks), "-o", str(out), "--model", "gpt-4o"]
    # When the tasks run
    done = run_cli(*base, "-p", "1", *where, cwd=tmp_path, env=env)
    # Then the run ends well (exit 0), nothing failed, and the summary counts 2 filtered
    assert done.returncode == 0, done.stdout + done.stderr
    printed = done.stdout + done.stderr
    assert "filtered 2" in printed and "failed 0" in printed
    errors = tmp_path / "results.jsonl.errors.jsonl"
    assert not errors.exists() or not errors.read_text().strip()
    # And each filtered task is a done line with no answer and what the filter said, per category
    lines = {line["id"]: line for line in read_jsonl(out)}
    assert len(lines) == 3
    said = {"filtered": True, "severity": FILTERED_SEVERITY}
    for rid, source in (("prompt", "prompt"), ("answer", "completion")):
        line = lines[rid]
        assert (line["answer"], line["finish_reason"]) == (None, "content_filter")
        assert line["filtered"]["source"] == source
        assert line["filtered"]["categories"][FILTERED_CATEGORY] == said
        assert line["filtered"]["categories"]["hate"] == {"filtered": False, "severity": "safe"}
    assert "filtered" not in lines["safe"] and lines["safe"]["answer"]
    assert lines["prompt"]["model"] is None  # no model answered a prompt the filter stopped
    # And a rerun asks nothing again
    requests = mock.stats()["requests"]
    again = run_cli(*base, *where, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    assert mock.stats()["requests"] == requests
    # And --status counts them done and filtered (JSON and text)
    shown = run_cli(*base, "--status", "--json", cwd=tmp_path)
    report = json.loads(shown.stdout)
    assert (report["done"], report["failed"], report["filtered"], report["refusals"],
            report["model_mismatches"]) == (3, 0, 2, 0, 0)
    text = run_cli(*base, "--status", cwd=tmp_path).stdout
    assert "filtered: 2" in text
    # And --validate finds nothing wrong (no empty answer, no other model), naming them
    checked = run_cli(*base, "--validate", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "filtered 2" in checked.stdout and "empty" not in checked.stdout
    # And the export marks both rows filtered, with the filter's verdict in its column
    table = tmp_path / "table.jsonl"
    exported = run_cli(*base, "--export", str(table), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    rows = {row["id"]: row for row in read_jsonl(table)}
    assert [rows[rid]["status"] for rid in ("safe", "prompt", "answer")] == ["ok", "filtered",
                                                                           "filtered"]
    assert rows["prompt"]["filtered"] == lines["prompt"]["filtered"]
    assert rows["safe"]["filtered"] is None
    # And the report's table counts them, with no failure
    (row,) = build_timeline(out, ("gpt-4o",)).table
    assert (row.answers, row.failures, row.filtered, row.refusals) == (3, 0, 2, 0)
    made = run_cli(*base, "--report", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert ">filtered<" in (tmp_path / "results.jsonl.report.html").read_text()
