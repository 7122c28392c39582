"""Chat rows: a row holding a whole conversation is sent as that conversation.

A JSONL row (or a CSV cell of JSON) holding a whole conversation is sent as that conversation, its
local images as data URLs; malformed conversations, in chat rows and in Batch bodies, are input
errors with file and line before anything is sent.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import read_jsonl, run_cli, write_png, write_tasks

from mpinfer.mockserver import MockServerProcess

REMOTE = "https://example.com/cat.png"


def _conversation(question: str, image: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You judge images for safety."},
            {"role": "user", "content": "Hello."},
            {"role": "assistant", "content": "Hello! Send an image."},
            {"role": "user",
             "content": [{"type": "text", "text": question},
                         {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
                         {"type": "image_url", "image_url": {"url": REMOTE}}]}]


def _run(mock: MockServerProcess, tmp_path: Path, tasks: Path, *extra: str) -> tuple[Path, Any]:
    out = tmp_path / "results.jsonl"
    done = run_cli("-i", str(tasks), "-o", str(out), "-p", "1", "--base-url", mock.base_url, *extra,
                   cwd=tmp_path)
    return out, done


def test_a_chat_row_is_sent_as_its_conversation_with_local_images_inline(mock: MockServerProcess,
                                                                           tmp_path: Path) -> None:
    # Given a row holding a multi-turn chat with a local image (relative to the input) and a remote
    # one
    mock.configure(record_bodies=True)
    write_png(tmp_path / "img" / "a.png")
    question = "Is this image safe to show?"
    tasks = write_tasks(tmp_path / "tasks.jsonl",
                        [{"id": "c1", "messages": _conversation(question, "img/a.png")}])
    # When it runs with a --system-prompt (the conversation has its own system message)
    out, done = _run(mock, tmp_path, tasks, "--system-prompt", "IGNORED")
    # Then the server received the conversation turn for turn, the local image as a data URL
    assert done.returncode == 0, done.stderr
    body = mock.stats()["bodies"][question]
    sent = body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[0]["content"] == "You judge images for safety."
    parts = sent[3]["content"]
    assert parts[0] == {"type": "text", "text": question}
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1]["image_url"]["detail"] == "low"
    assert parts[2] == {"type": "image_url", "image_url": {"url": REMOTE}}
    # And the result line names the last user text and the images as the row gave them
    [line] = read_jsonl(out)
    assert line["input_prompt"] == question
    assert line["images"] == ["img/a.png", REMOTE]
    assert line["answer"].startswith(f"Mock answer to: {question}")


def test_the_system_prompt_is_added_only_when_the_chat_has_none(mock: MockServerProcess,
                                                                tmp_path: Path) -> None:
    # Given a chat row without a system message
    mock.configure(record_bodies=True)
    tasks = write_tasks(tmp_path / "tasks.jsonl", [
        {"id": "c1", "messages": [{"role": "user", "content": "Plain question?"}]}])
    # When it runs with --system-prompt
    _, done = _run(mock, tmp_path, tasks, "--system-prompt", "Be brief.")
    # Then the system message goes first
    assert done.returncode == 0, done.stderr
    sent = mock.stats()["bodies"]["Plain question?"]["messages"]
    assert sent == [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Plain question?"}]


def test_a_csv_cell_of_json_under_another_messages_key_is_a_chat(mock: MockServerProcess,
                                                                 tmp_path: Path) -> None:
    # Given a CSV file whose "dialog" column holds the chat as JSON
    mock.configure(record_bodies=True)
    tasks = tmp_path / "tasks.csv"
    with tasks.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "dialog"])
        chat = [{"role": "user", "content": "First?"}, {"role": "assistant", "content": "Yes."},
                {"role": "user", "content": "Second?"}]
        writer.writerow(["r1", orjson.dumps(chat).decode()])
    # When it runs with --messages-key dialog
    out, done = _run(mock, tmp_path, tasks, "--messages-key", "dialog")
    # Then the chat is sent and answered
    assert done.returncode == 0, done.stderr
    assert len(mock.stats()["bodies"]["Second?"]["messages"]) == 3
    assert read_jsonl(out)[0]["input_prompt"] == "Second?"


@pytest.mark.parametrize(("messages", "said"), [
    ("hello", "messages must be a list of messages, got a string"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "img/a.png"}]}],
     'messages[0].content[0].image_url must be an object {"url": ...}, got a string'),
    ([{"role": "robot", "content": "hi"}], "messages[0].role must be one of"),
    ([], "messages is empty"),
])
def test_a_malformed_chat_row_is_an_input_error_with_its_line(mock: MockServerProcess,
                                                              tmp_path: Path, messages: Any,
                                                              said: str) -> None:
    # Given a good chat row, then a malformed one on line 2
    tasks = write_tasks(tmp_path / "tasks.jsonl",
                        [{"id": "ok", "messages": [{"role": "user", "content": "fine"}]},
                         {"id": "bad", "messages": messages}])
    # When the run starts
    _, done = _run(mock, tmp_path, tasks)
    # Then it stops with exit 2 naming the file, the line and the field, before any request
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"tasks.jsonl:2: {said}" in done.stderr
    assert mock.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("body", "said"),
    [({"model": "gpt-4o-mini",
       "messages": [{"role": "user",
                     "content": [{"type": "text", "text": "what is it?"},
                                 {"type": "image_url", "image_url": "https://x/a.png"}]}]},
      'body.messages[0].content[1].image_url must be an object {"url": ...}, got a string'),
     ({"model": "gpt-4o-mini", "messages": {"role": "user", "content": "hi"}},
      "body.messages must be a list of messages, got an object"),
     ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
      "body.messages[0].content[0].text must be a string, got null")])
def test_a_malformed_batch_body_is_an_input_error_with_its_line(
    mock: MockServerProcess, tmp_path: Path, body: dict[str, Any], said: str,
) -> None:
    # Given a Batch file whose second body is malformed
    good = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "fine"}]}
    tasks = write_tasks(tmp_path / "batch.jsonl", [
        {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": good},
        {"custom_id": "r2", "method": "POST", "url": "/v1/chat/completions", "body": body}])
    # When the run, and the dry run, start
    _, done = _run(mock, tmp_path, tasks)
    dry = run_cli("-i", str(tasks), "-o", str(tmp_path / "x.jsonl"), "--dry-run", cwd=tmp_path)
    # Then both stop with exit 2 naming the file, the line and the field; nothing was sent
    for result in (done, dry):
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"batch.jsonl:2: {said}" in result.stderr
    assert mock.stats()["requests"] == 0
