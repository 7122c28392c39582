"""The model you asked for, over real HTTP and real processes against the mock (issue 22, items 2
and 9).

A model named for the run reaches the server: a row's own model only with --model-key, so an
export's ``model`` column (the model that answered) fed back as input changes nothing. An answer
by another model names its endpoint (on the line with an endpoints table, in the summary always)
and, under --strict-model, is a wrong_model failure.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import read_jsonl, run_cli, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess

KEY = "plain-key-00000000000000west"


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str,
         env: dict[str, str] | None = None):
    return run_cli("--base-url", mock.base_url, "--retry-backoff", "0.05", *extra, cwd=tmp_path,
                   env=env)


def _table(mock: MockServerProcess, path: Path, model: str) -> Path:
    """An endpoints table of one plain endpoint for ``model`` at the mock."""
    path.write_text(f'[[endpoints]]\nmodel = "{model}"\nbase_url = "{mock.base_url}"\n'
                    'api_key_env = "OPENAI_KEY_WEST"\n')
    return path


def test_a_judge_run_over_an_export_asks_every_request_of_the_judge(tmp_path: Path,
                                                                     mock: MockServerProcess):
    # Given a finished run answered by a dated snapshot, exported to JSONL with its input columns
    # (a judge prompt among them)
    tasks = [{**task, "judge_prompt": f"judge the answer to {task['prompt']}"}
             for task in text_tasks(4)]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    mock.configure(model_map={"gpt-4o-mini": "gpt-4o-mini-2024-07-18"})
    first = _run(tmp_path, mock, "-i", "tasks.jsonl", "-o", "answers.jsonl",
                 "--model", "gpt-4o-mini")
    assert first.returncode == 0, first.stderr
    exported = _run(tmp_path, mock, "-i", "tasks.jsonl", "-o", "answers.jsonl",
                    "--export", "export.jsonl")
    assert exported.returncode == 0, exported.stderr
    rows = read_jsonl(tmp_path / "export.jsonl")
    assert len(rows) == 4 and {row["model"] for row in rows} == {"gpt-4o-mini-2024-07-18"}
    # When the export is the input of a judge run that names its model
    mock.reset()
    judged = _run(tmp_path, mock, "-i", "export.jsonl", "-o", "judge.jsonl",
                  "--prompt-key", "judge_prompt", "--model", "judge-x")
    # Then every request the server saw named judge-x, and every record says so
    assert judged.returncode == 0, judged.stderr
    assert mock.stats()["per_model"] == {"judge-x": 4}
    lines = read_jsonl(tmp_path / "judge.jsonl")
    assert len(lines) == 4
    assert {(line["requested_model"], line["model"]) for line in lines} == {("judge-x", "judge-x")}
    # And the summary, the manifest and --validate name the model really requested
    summary = json.loads((tmp_path / "judge.jsonl.summary.json").read_text())
    assert list(summary["per_model"]) == ["judge-x"]
    manifest = read_jsonl(tmp_path / "judge.jsonl.runs.jsonl")
    assert manifest and all("judge-x" in json.dumps(run) for run in manifest)
    assert "gpt-4o-mini-2024-07-18" not in json.dumps(manifest)
    checked = _run(tmp_path, mock, "-i", "export.jsonl", "-o", "judge.jsonl",
                   "--prompt-key", "judge_prompt", "--model", "judge-x", "--validate")
    assert checked.returncode == 0, checked.stdout


def test_a_rows_own_model_is_sent_only_when_model_key_names_its_field(tmp_path: Path,
                                                                      mock: MockServerProcess):
    # Given rows that each name a model in "model" and another in "engine"
    tasks = [{**task, "model": "row-model", "engine": f"engine-{i % 2}"}
             for i, task in enumerate(text_tasks(4))]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    # When a run names its model and no --model-key
    plain = _run(tmp_path, mock, "-i", "tasks.jsonl", "-o", "plain.jsonl", "--model", "run-x")
    # Then every request asks for the run's model: a row's "model" field is only data
    assert plain.returncode == 0, plain.stderr
    assert mock.stats()["per_model"] == {"run-x": 4}
    # When a run asks for per-task models with MPINFER_MODEL_KEY (the setting's variable)
    mock.reset()
    own = _run(tmp_path, mock, "-i", "tasks.jsonl", "-o", "own.jsonl", "--model", "run-x",
               env={"MPINFER_MODEL_KEY": "engine"})
    # Then each row's field named by it wins over --model, and its line records it as requested
    assert own.returncode == 0, own.stderr
    assert mock.stats()["per_model"] == {"engine-0": 2, "engine-1": 2}
    lines = read_jsonl(tmp_path / "own.jsonl")
    assert len(lines) == 4
    assert {line["id"]: line["requested_model"] for line in lines} == {
        f"t{i}": f"engine-{i % 2}" for i in range(4)}


def test_an_answer_by_another_model_names_its_endpoint_on_the_line_and_in_the_summary(
        tmp_path: Path, mock: MockServerProcess):
    # Given an endpoint that answers requests for the 7B model with the 72B one
    mock.configure(model_map={"qwen-7b": "qwen-72b"})
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    table = _table(mock, tmp_path / "endpoints.toml", "qwen-7b")
    # When a run over the table goes, without --strict-model
    proc = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "qwen-7b",
                   "--endpoints", str(table), cwd=tmp_path, env={"OPENAI_KEY_WEST": KEY})
    # Then the answers are done (exit 0), each line names the endpoint that answered, never the key
    assert proc.returncode == 0, proc.stderr
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert len(lines) == 3
    assert {(line["model"], line["endpoint"]) for line in lines} == {("qwen-72b", mock.base_url)}
    assert KEY not in (tmp_path / "out.jsonl").read_text()
    # And the summary's warning names the endpoint
    assert f"answered by another model than requested: 3 at {mock.base_url}" in proc.stdout
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["mismatch_endpoints"] == {mock.base_url: 3}


def test_strict_model_fails_answers_by_another_model_as_wrong_model(tmp_path: Path,
                                                                    mock: MockServerProcess):
    # Given a server (no endpoints table: lines stay without "endpoint") that answers requests for
    # the 7B model with the 72B one
    mock.configure(model_map={"qwen-7b": "qwen-72b"})
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    # When the run goes with --strict-model
    proc = _run(tmp_path, mock, "-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "qwen-7b",
                "--strict-model")
    # Then no answer is done: each is a wrong_model failure naming the endpoint, and the run exits 1
    _assert_wrong_model_failures(tmp_path, proc, "qwen-72b", mock.base_url)
    # When the server is fixed and the run goes again, still strict
    mock.configure(model_map={})
    again = _run(tmp_path, mock, "-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "qwen-7b",
                 "--strict-model")
    # Then it asks again and every task is done as the model asked for, without an endpoint field
    assert again.returncode == 0, again.stdout + again.stderr
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert len(lines) == 3
    assert {line["model"] for line in lines} == {"qwen-7b"}
    assert all("endpoint" not in line for line in lines)


def test_without_strict_model_the_summary_names_the_base_url_of_a_wrong_answer(
        tmp_path: Path, mock: MockServerProcess):
    # Given a server that answers requests for the 7B model with the 72B one
    mock.configure(model_map={"qwen-7b": "qwen-72b"})
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(2))
    # When a run without a table goes
    proc = _run(tmp_path, mock, "-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "qwen-7b")
    # Then it is done with a warning that names where the answers came from
    assert proc.returncode == 0, proc.stderr
    assert f"answered by another model than requested: 2 at {mock.base_url}" in proc.stdout


def test_strict_model_fails_a_batchs_answers_by_another_model_as_wrong_model(
        tmp_path: Path, batch_mock: MockServerProcess):
    # Given a Batch API service that answers requests for the 7B model with the 72B one
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    batch_mock.configure(model_map={"qwen-7b": "qwen-72b"})
    try:
        # When a batch run goes with --strict-model
        proc = _run(tmp_path, batch_mock, "-i", "tasks.jsonl", "-o", "out.jsonl", "--model",
                    "qwen-7b", "--backend", "batch", "--batch-poll", "0.1", "--strict-model")
    finally:
        batch_mock.configure(model_map={})
    # Then no answer is done: each is a wrong_model failure, and the run exits 1
    _assert_wrong_model_failures(tmp_path, proc, "qwen-72b")


def _assert_wrong_model_failures(tmp_path: Path, proc: subprocess.CompletedProcess[str],
                                 *named: str) -> None:
    """The run exited 1, nothing done: its 3 tasks are wrong_model failures naming ``named``."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = tmp_path / "out.jsonl"
    assert not out.exists() or read_jsonl(out) == []
    failures = read_jsonl(tmp_path / "out.jsonl.errors.jsonl")
    assert len(failures) == 3
    assert {f["error_type"] for f in failures} == {"wrong_model"}
    assert all(all(text in f["message"] for text in named) for f in failures)
