"""The Responses API and embeddings over real HTTP, as Batch lines and as plain rows.

Batch lines for /v1/responses and /v1/embeddings run and come back in the Batch output form; plain
rows go to the Responses API with --api responses.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import read_jsonl, run_cli, write_png, write_tasks

from mpinfer.mockserver import MockServerProcess


def test_batch_lines_for_responses_and_embeddings_run_beside_chat(mock: MockServerProcess,
                                                                  tmp_path: Path) -> None:
    # Given a Batch file with a chat, a Responses and an embeddings line
    tasks = write_tasks(
        tmp_path / "batch.jsonl",
        [{"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
          "body": {"model": "gpt-4o-mini",
                   "messages": [{"role": "user", "content": "chat question"}]}},
         {"custom_id": "r", "method": "POST", "url": "/v1/responses",
          "body": {"model": "gpt-4o-mini", "input": "responses question", "max_output_tokens": 50}},
         {"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
          "body": {"model": "text-embedding-3-small", "input": ["embed me", "and me"]}}])
    out = tmp_path / "out.jsonl"
    # When it runs without --model: each body with its own model
    done = run_cli("-i", str(tasks), "-o", str(out), "--base-url", mock.base_url, cwd=tmp_path)
    # Then each went to its own API and came back as a Batch output line holding that API's body
    assert done.returncode == 0, done.stderr
    lines = {line["custom_id"]: line for line in read_jsonl(out)}
    assert lines["c"]["response"]["body"]["object"] == "chat.completion"
    response = lines["r"]["response"]["body"]
    assert response["object"] == "response"
    assert response["output"][0]["content"][0]["text"] == "Mock answer to: responses question"
    embeddings = lines["e"]["response"]["body"]
    assert embeddings["object"] == "list" and len(embeddings["data"]) == 2
    assert mock.stats()["per_model"] == {"gpt-4o-mini": 2, "text-embedding-3-small": 1}
    # And status counts all three done with their tokens, and validate finds nothing wrong
    shown = json.loads(run_cli("-i", str(tasks), "-o", str(out), "--status", "--json",
                               cwd=tmp_path).stdout)
    assert shown["done"] == 3 and shown["prompt_tokens"] > 0
    checked = run_cli("-i", str(tasks), "-o", str(out), "--validate", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout


def test_a_batch_line_for_another_api_is_refused_with_its_line(mock: MockServerProcess,
                                                               tmp_path: Path) -> None:
    # Given a Batch line for an API mpinfer does not run
    tasks = write_tasks(tmp_path / "batch.jsonl",
                        [{"custom_id": "m", "method": "POST", "url": "/v1/moderations",
                          "body": {"model": "m", "input": "x"}}])
    # When the run starts
    done = run_cli("-i", str(tasks), "-o", str(tmp_path / "out.jsonl"), "--base-url", mock.base_url,
                   cwd=tmp_path)
    # Then it is an input error on line 1, before any request
    assert done.returncode == 2 and "batch.jsonl:1: url '/v1/moderations'" in done.stderr
    assert mock.stats()["requests"] == 0


def test_plain_rows_go_to_the_responses_api_with_api_responses(mock: MockServerProcess,
                                                               tmp_path: Path) -> None:
    # Given rows with an image, a refused prompt and a long one under a small max_tokens
    mock.configure(record_bodies=True, refuse_marker="[unsafe]")
    write_png(tmp_path / "a.png")
    tasks = write_tasks(tmp_path / "tasks.jsonl", [
        {"id": "img", "prompt": "describe it", "images": ["a.png"]},
        {"id": "bad", "prompt": "[unsafe] help me"},
        {"id": "long", "prompt": "tell me a long story", "max_tokens": 2},
    ])
    out = tmp_path / "out.jsonl"
    # When they run with --api responses and a system prompt
    done = run_cli("-i", str(tasks), "-o", str(out), "--api", "responses", "--system-prompt",
                   "Be brief.", "--base-url", mock.base_url, cwd=tmp_path)
    # Then the server got Responses API bodies: the turns as input, the image as input_image
    assert done.returncode == 0, done.stderr
    body = mock.stats()["bodies"]["describe it"]
    assert "messages" not in body
    assert body["input"][0] == {"role": "system", "content": "Be brief."}
    parts = body["input"][1]["content"]
    assert parts[0] == {"type": "input_text", "text": "describe it"}
    assert parts[1]["type"] == "input_image"
    assert parts[1]["image_url"].startswith("data:image/png;base64,")
    assert mock.stats()["bodies"]["tell me a long story"]["max_output_tokens"] == 2
    # And the result lines hold the output text, the refusal and the truncation, with the usage
    # mapped
    lines = {line["id"]: line for line in read_jsonl(out)}
    assert lines["img"]["answer"] == "Mock answer to: describe it"
    assert lines["img"]["usage"]["prompt_tokens"] > 0
    assert lines["img"]["usage"]["completion_tokens"] > 0
    assert (lines["bad"]["answer"], lines["bad"]["refusal"]) == (
        None, "I'm sorry, but I can't help with that.")
    assert lines["long"]["finish_reason"] == "length"
    checked = run_cli("-i", str(tasks), "-o", str(out), "--validate", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout


def test_the_batch_backend_refuses_responses_requests_before_uploading(mock: MockServerProcess,
                                                                        tmp_path: Path) -> None:
    # Given plain rows asked for the Responses API, on the Batch backend (chat.completions batches
    # only)
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{"id": "r1", "prompt": "one"}])
    files_before = mock.batch_stats()["files"]
    # When the run starts
    done = run_cli("-i", str(tasks), "-o", str(tmp_path / "out.jsonl"), "--api", "responses",
                   "--backend", "batch", "--base-url", mock.base_url, cwd=tmp_path)
    # Then it stops with exit 2, saying why, having uploaded nothing
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--backend batch sends chat.completions requests only" in done.stderr
    assert mock.batch_stats()["files"] == files_before
