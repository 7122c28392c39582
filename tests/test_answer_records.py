"""Only answer records count as done, and an output that looks like task input is refused.

The resume scan and status skip lines that are not answers; an output that is the input (or looks
like task input) is refused before any request.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import orjson
from helpers import read_jsonl, run_cli, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess


def test_a_line_with_only_an_id_is_not_done_and_its_task_runs(mock: MockServerProcess,
                                                              tmp_path: Path) -> None:
    # Given an output whose only line for t0 is {"id": "t0"}, and one for t1 with an id and a note
    tasks = write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    out = tmp_path / "results.jsonl"
    out.write_bytes(b'{"id": "t0"}\n' + orjson.dumps({"id": "t1",
                                                      "note": "checked by hand"}) + b"\n")
    # When --status reads it
    shown = run_cli("-i", str(tasks), "-o", str(out), "--status", "--json", cwd=tmp_path)
    # Then nothing is done, and both lines are bad lines
    report = json.loads(shown.stdout)
    assert (report["done"], report["bad_lines"]) == (0, 2)
    # When the run resumes on it
    done = run_cli("-i", str(tasks), "-o", str(out), "--base-url", mock.base_url, cwd=tmp_path)
    # Then every task is sent and answered, t0 included
    assert done.returncode == 0, done.stderr
    assert mock.stats()["requests"] == 3
    answered = [line["id"] for line in read_jsonl(out) if "answer" in line]
    assert sorted(answered) == ["t0", "t1", "t2"]
    # And --validate names the two lines as not answer records
    checked = run_cli("-i", str(tasks), "-o", str(out), "--validate", cwd=tmp_path)
    assert "corrupt_line: 2" in checked.stdout and "not an answer record" in checked.stdout


def test_the_input_given_as_the_output_is_refused_before_any_request(mock: MockServerProcess,
                                                                      tmp_path: Path) -> None:
    # Given an input file
    tasks = write_tasks(tmp_path / "x.jsonl", text_tasks(4))
    before = tasks.read_bytes()
    # When it is given as both input and output
    done = run_cli("-i", str(tasks), "-o", str(tasks), "--base-url", mock.base_url, cwd=tmp_path)
    # Then the run is refused with exit 2, nothing is sent, and the file is untouched
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is the input file" in done.stderr
    assert mock.stats()["requests"] == 0
    assert tasks.read_bytes() == before


def test_an_output_that_holds_task_lines_is_refused(mock: MockServerProcess,
                                                    tmp_path: Path) -> None:
    # Given an output that is a copy of the task input (a slip of -o)
    tasks = write_tasks(tmp_path / "tasks.jsonl", text_tasks(4))
    out = tmp_path / "copy.jsonl"
    shutil.copy(tasks, out)
    # When the run starts
    done = run_cli("-i", str(tasks), "-o", str(out), "--base-url", mock.base_url, cwd=tmp_path)
    # Then it is refused with exit 2 before any request, naming the line
    assert done.returncode == 2, done.stdout + done.stderr
    assert "looks like task input (line 1 is a task" in done.stderr
    assert mock.stats()["requests"] == 0


def test_a_batch_output_line_without_a_200_response_is_not_done(mock: MockServerProcess,
                                                                tmp_path: Path) -> None:
    # Given a Batch input and an output line for r0 whose response is a 500 with no body
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello r0"}]}
    tasks = write_tasks(tmp_path / "batch.jsonl", [{"custom_id": "r0", "method": "POST",
                                                     "url": "/v1/chat/completions", "body": body}])
    out = tmp_path / "out.jsonl"
    write_tasks(out,
                [{"id": "batch_req_1", "custom_id": "r0",
                  "response": {"status_code": 500, "body": None}, "error": None}])
    # When the run resumes
    done = run_cli("-i", str(tasks), "-o", str(out), "--base-url", mock.base_url, cwd=tmp_path)
    # Then r0 is sent: that line was no answer
    assert done.returncode == 0, done.stderr
    assert mock.stats()["requests"] == 1
