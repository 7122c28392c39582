"""Image size limits known before paying, and the server's own over-limit answer.

A request whose images pass --max-image-mb fails before it is sent (and the dry run lists it); the
server's own over-limit 400 is classified as such and not retried.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import read_jsonl, run_cli, write_png, write_tasks

from mpinfer.mockserver import MockServerProcess


def _tasks(tmp_path: Path) -> Path:
    # Two 30 kB images in one task (a real PNG header, then padding: the size is what counts here)
    for name in ("a.png", "b.png"):
        path = write_png(tmp_path / name)
        with path.open("ab") as handle:
            handle.write(os.urandom(30_000))
    return write_tasks(tmp_path / "tasks.jsonl", [
        {"id": "big", "prompt": "compare these", "images": ["a.png", "b.png"]},
        {"id": "text", "prompt": "no images here"},
    ])


def test_a_task_over_the_image_limit_fails_before_it_is_sent(mock: MockServerProcess,
                                                             tmp_path: Path) -> None:
    # Given a task with 60 kB of images and a limit of 0.05 MB a request
    tasks = _tasks(tmp_path)
    out = tmp_path / "out.jsonl"
    # When the dry run, then the run, go
    dry = run_cli("-i", str(tasks), "-o", str(out), "--max-image-mb", "0.05", "--dry-run", "--json",
                  cwd=tmp_path)
    done = run_cli("-i", str(tasks), "-o", str(out), "--max-image-mb", "0.05", "--base-url",
                   mock.base_url, cwd=tmp_path)
    # Then the dry run names it as a problem
    plan = json.loads(dry.stdout)
    [problem] = plan["problems"]
    assert problem["id"] == "big" and "over the 0.05 MB a request may carry" in problem["message"]
    # And the run sends only the other task, failing this one once, as images_too_large
    assert done.returncode == 1, done.stderr
    assert mock.stats()["requests"] == 1
    [failure] = read_jsonl(tmp_path / "out.jsonl.errors.jsonl")
    assert (failure["id"], failure["error_type"], failure["attempts"]) == ("big",
                                                                           "images_too_large", 0)


def test_the_servers_over_limit_400_is_not_retried(mock: MockServerProcess, tmp_path: Path) -> None:
    # Given a server whose limit (10 kB) is below ours (the default 50 MB)
    mock.configure(max_image_bytes=10_000)
    tasks = _tasks(tmp_path)
    out = tmp_path / "out.jsonl"
    # When the run goes, with retries allowed
    done = run_cli("-i", str(tasks), "-o", str(out), "--max-retries", "3", "--retry-backoff",
                   "0.05", "--base-url", mock.base_url, cwd=tmp_path)
    # Then the 400 is recorded as images_too_large after one attempt: the same request would fail
    # again
    assert done.returncode == 1, done.stderr
    [failure] = read_jsonl(tmp_path / "out.jsonl.errors.jsonl")
    assert (failure["id"], failure["error_type"], failure["status"], failure["attempts"]) == (
        "big", "images_too_large", 400, 1)
    assert "exceeds the allowed limit" in failure["message"]
    assert mock.stats()["requests"] == 2
    assert [line["id"] for line in read_jsonl(out)] == ["text"]
