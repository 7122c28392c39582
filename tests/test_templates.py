"""Prompt templates (--template, --system-template): the prompt sent is the row rendered, exactly.

The real command line runs in its own process against the mock server over HTTP; the server's
recorded bodies (``record_bodies``) tell what was sent. The renderer's own rules (braces, fields
that look like attribute access) are checked on the library too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import read_jsonl, run_cli, write_tasks

from mpinfer.errors import ConfigError
from mpinfer.inputs.template import Template
from mpinfer.mockserver import MockServerProcess


@pytest.fixture
def recording(mock: MockServerProcess) -> Iterator[MockServerProcess]:
    """The mock server keeping each prompt's last request body; off again afterwards."""
    mock.configure(record_bodies=True)
    yield mock
    mock.configure(record_bodies=False)


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str, tasks: str = "tasks.jsonl",
         out: str = "out/results.jsonl"):
    return run_cli("-i", tasks, "-o", out, "--base-url", mock.base_url, "--retry-backoff", "0.05",
                   "--timeout", "5", "-p", "1", "-c", "4", *extra, cwd=tmp_path)


def _user_text(body: dict) -> str:
    return str(body["messages"][-1]["content"])


def test_a_template_renders_each_jsonl_row_and_the_server_receives_exactly_that(
        tmp_path: Path, recording: MockServerProcess) -> None:
    # Given rows without a prompt field, whose fields a template and a system template name
    write_tasks(tmp_path / "tasks.jsonl", [
        {"id": "a", "question": "Is it red?", "scenario": "colours", "n": 3},
        {"id": "b", "question": "Is it {big}?", "scenario": "sizes", "n": 1.5},
    ])
    # When the run renders them, with literal braces around the placeholders
    proc = _run(tmp_path, recording, "--template", "Q ({n}): {question} {{as JSON}}",
                "--system-template", "You judge {scenario}.")
    # Then each request carries the rendered text, and the row's own braces are left alone
    assert proc.returncode == 0, proc.stderr
    bodies = recording.stats()["bodies"]
    assert sorted(bodies) == ["Q (1.5): Is it {big}? {as JSON}", "Q (3): Is it red? {as JSON}"]
    body = bodies["Q (3): Is it red? {as JSON}"]
    assert body["messages"][0] == {"role": "system", "content": "You judge colours."}
    # And each answer line records the prompt that was sent, and no variant
    lines = {line["id"]: line for line in read_jsonl(tmp_path / "out" / "results.jsonl")}
    assert lines["b"]["input_prompt"] == "Q (1.5): Is it {big}? {as JSON}"
    assert "variant" not in lines["a"]


def test_a_template_renders_csv_columns_and_an_empty_cell_renders_empty(
        tmp_path: Path, recording: MockServerProcess) -> None:
    # Given a CSV file whose columns a template names, one cell empty
    (tmp_path / "tasks.csv").write_text("id,question,hint\nc1,What is 2+2?,think\nc2,Why?,\n")
    # When it runs with the template
    proc = _run(tmp_path, recording, "--template", "{question} [{hint}]", tasks="tasks.csv")
    # Then each row's cells were sent, the empty one as nothing
    assert proc.returncode == 0, proc.stderr
    assert sorted(recording.stats()["bodies"]) == ["What is 2+2? [think]", "Why? []"]


def test_a_row_lacking_a_field_the_template_names_is_an_input_error_and_nothing_is_sent(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given a row (line 2) without the field the template names
    write_tasks(tmp_path / "tasks.jsonl", [{"id": "a", "question": "q1"}, {"id": "b", "q": "q2"}])
    # When it runs
    proc = _run(tmp_path, mock, "--template", "Answer: {question}")
    # Then it stops before any request, naming the file, the line and the field
    assert proc.returncode == 2, proc.stderr
    assert "tasks.jsonl:2:" in proc.stderr and "'question'" in proc.stderr
    assert mock.stats()["requests"] == 0


@pytest.mark.parametrize("template, message", [
    ("Answer: {question", "unbalanced brace"), ("a } b", "unbalanced brace"),
    ("x {} y", "{} is not a field"), ("{a.__class__}", "{a.__class__} is not a field"),
    ("{a[0]}", "{a[0]} is not a field"), ("{a!r}", "{a!r} is not a field"),
])
def test_a_malformed_template_or_one_reaching_into_a_value_is_a_settings_error_naming_the_flag(
        template: str, message: str) -> None:
    # Given a template with an unbalanced brace, an empty placeholder, or attribute, item or
    # conversion syntax that str.format would follow into the value
    # When it is parsed as the run parses --template
    with pytest.raises(ConfigError) as raised:
        Template.parse(template, "--template")
    # Then it is refused, naming the flag and what is wrong
    assert str(raised.value).startswith("--template: ") and message in str(raised.value)


def test_a_malformed_template_stops_the_run_with_exit_2_before_any_request(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given a template with an unbalanced brace
    write_tasks(tmp_path / "tasks.jsonl", [{"id": "a", "question": "q1"}])
    # When it runs
    proc = _run(tmp_path, mock, "--template", "Answer: {question")
    # Then it stops with exit 2 naming the flag, having sent nothing
    assert proc.returncode == 2, proc.stderr
    assert "--template: unbalanced brace" in proc.stderr
    assert mock.stats()["requests"] == 0


def test_doubled_braces_are_braces_and_a_field_is_rendered_as_text_or_json() -> None:
    # Given a template with literal braces and two fields
    template = Template.parse("{{a}} {a} {n}", "--template")
    # When rendered from a row's values (as the input check keeps them)
    text = template.render({"a": "plain", "n": "[1, 2]"})
    # Then doubled braces are braces and each field its value
    assert template.fields == ("a", "n")
    assert text == "{a} plain [1, 2]"


def test_a_template_renders_parquet_columns(tmp_path: Path, recording: MockServerProcess) -> None:
    # Given a Parquet file whose columns a template names, one of them a number
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"id": ["p1", "p2"], "question": ["Why?", "How?"], "level": [1, 2]}),
                   tmp_path / "tasks.parquet")
    # When it runs with the template
    proc = _run(tmp_path, recording, "--template", "[{level}] {question}", tasks="tasks.parquet")
    # Then each row's columns were sent
    assert proc.returncode == 0, proc.stderr
    assert sorted(recording.stats()["bodies"]) == ["[1] Why?", "[2] How?"]
