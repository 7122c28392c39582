"""Result lines over real HTTP: reasoning kept, refusals kept as refusals, truncation counted.

Status, summary, validate and export report them as such.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import read_jsonl, run_cli, write_tasks

from mpinfer.mockserver import MockServerProcess

MARKER = "[unsafe]"


def _run(mock: MockServerProcess, tmp_path: Path, *extra: str) -> tuple[Path, Path, str]:
    tasks = write_tasks(tmp_path / "tasks.jsonl",
                        [{"id": "safe", "prompt": "What colour is the sky?"},
                         {"id": "unsafe", "prompt": f"{MARKER} How do I pick this lock?"},
                         {"id": "long", "prompt": "Tell me a long story about a lighthouse keeper.",
                          "max_tokens": 3}])
    out = tmp_path / "results.jsonl"
    done = run_cli("-i", str(tasks), "-o", str(out), "-p", "1", "--base-url", mock.base_url,
                   "--model", "deepseek-reasoner", *extra, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tasks, out, done.stdout + done.stderr


def test_reasoning_text_and_tokens_are_kept_on_the_result_line(mock: MockServerProcess,
                                                               tmp_path: Path) -> None:
    # Given a server that sends a reasoning model's thinking as reasoning_content, with its token
    # count
    mock.configure(reasoning_models={"deepseek-reasoner": "reasoning_content"})
    # When the tasks run
    _, out, _ = _run(mock, tmp_path)
    # Then each line keeps the thinking and the reasoning tokens, apart from the answer
    safe = {line["id"]: line for line in read_jsonl(out)}["safe"]
    assert safe["reasoning_content"].startswith("The user asks: What colour is the sky?")
    assert safe["answer"].startswith("Mock answer to: What colour is the sky?")
    assert safe["usage"]["reasoning_tokens"] > 0
    assert safe["usage"]["completion_tokens"] > safe["usage"]["reasoning_tokens"]


def test_a_server_that_names_the_thinking_reasoning_is_read_the_same(mock: MockServerProcess,
                                                                       tmp_path: Path) -> None:
    # Given a server (newer vLLM) that sends the thinking under "reasoning"
    mock.configure(reasoning_models={"deepseek-reasoner": "reasoning"})
    # When the tasks run
    _, out, _ = _run(mock, tmp_path)
    # Then the line holds it as reasoning_content all the same
    safe = {line["id"]: line for line in read_jsonl(out)}["safe"]
    assert safe["reasoning_content"].startswith("The user asks:")
    assert "reasoning" not in safe


def test_a_line_without_thinking_has_no_reasoning_field(mock: MockServerProcess,
                                                        tmp_path: Path) -> None:
    # Given a model that does not think aloud
    # When the tasks run
    _, out, _ = _run(mock, tmp_path)
    # Then no reasoning_content is written, and reasoning_tokens is 0
    lines = read_jsonl(out)
    assert len(lines) == 3
    for line in lines:
        assert "reasoning_content" not in line
        assert line["usage"]["reasoning_tokens"] == 0


def test_a_refusal_is_kept_counted_as_done_and_validates_clean(mock: MockServerProcess,
                                                               tmp_path: Path) -> None:
    # Given a server that refuses the unsafe prompt (content null, the text in "refusal")
    mock.configure(refuse_marker=MARKER)
    # When the tasks run
    tasks, out, printed = _run(mock, tmp_path)
    # Then the refusal is on its line as a refusal, with a null answer, and the run says so
    lines = {line["id"]: line for line in read_jsonl(out)}
    assert lines["unsafe"]["answer"] is None
    assert lines["unsafe"]["refusal"] == "I'm sorry, but I can't help with that."
    assert lines["safe"]["refusal"] is None
    assert lines["long"]["finish_reason"] == "length"
    assert "refusals 1" in printed and "truncated at max_tokens 1" in printed
    # And a rerun sends nothing more: the refusal is done
    requests = mock.stats()["requests"]
    again = run_cli("-i", str(tasks), "-o", str(out), "--base-url", mock.base_url, "--model",
                    "deepseek-reasoner", cwd=tmp_path)
    assert again.returncode == 0 and mock.stats()["requests"] == requests
    # And --status counts it as done and as a refusal
    shown = run_cli("-i", str(tasks), "-o", str(out), "--model", "deepseek-reasoner", "--status",
                    "--json", cwd=tmp_path)
    report = json.loads(shown.stdout)
    assert (report["done"], report["failed"], report["refusals"],
            report["truncated"]) == (3, 0, 1, 1)
    # And --validate finds nothing wrong (exit 0), naming the refusal
    checked = run_cli("-i", str(tasks), "-o", str(out), "--model", "deepseek-reasoner",
                      "--validate", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "refusals 1" in checked.stdout and "empty" not in checked.stdout
    # And the export marks its row refused, with the text in the refusal column
    table = tmp_path / "table.jsonl"
    exported = run_cli("-i", str(tasks), "-o", str(out), "--model", "deepseek-reasoner", "--export",
                       str(table), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    rows = {row["id"]: row for row in read_jsonl(table)}
    assert (rows["unsafe"]["status"], rows["unsafe"]["refusal"]) == ("refused",
                                                                     lines["unsafe"]["refusal"])
    assert rows["safe"]["status"] == "ok" and rows["long"]["finish_reason"] == "length"


def test_an_empty_answer_without_a_refusal_still_fails_validation(tmp_path: Path) -> None:
    # Given an output line with a null answer and no refusal text
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{"id": "a", "prompt": "hi"}])
    out = tmp_path / "results.jsonl"
    write_tasks(out,
                [{"id": "a", "input_prompt": "hi", "images": [], "answer": None, "refusal": "  ",
                  "model": "m", "requested_model": "m",
                  "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1},
                  "finish_reason": "stop", "latency_s": 0.1, "attempts": 1, "processed_at": 1.0,
                  "cost": None}])
    # When it is validated
    checked = run_cli("-i", str(tasks), "-o", str(out), "--model", "m", "--validate", cwd=tmp_path)
    # Then it is an empty answer (a blank refusal is no refusal), and the exit code says so
    assert checked.returncode != 0
    assert "empty_answer: 1" in checked.stdout
