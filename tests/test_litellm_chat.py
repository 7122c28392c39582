"""Chat rows, the Responses API and Batch lines through a real third-party server, LiteLLM.

The LiteLLM proxy runs with a ``mock_response`` model (``litellm[proxy]`` from PyPI; skipped where
it is not installed).

What LiteLLM answers is its own (its Responses API shape, usage with nulls, a model name as
configured), not our mock's: a run must record it and validate clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import litellm_proxy, needs_litellm, read_jsonl, run_cli, write_png, write_tasks

MASTER_KEY = "sk-mpinfer-litellm-chat-00000"
ANSWER = "Hello from LiteLLM"
CONFIG = ("model_list:\n"
          "  - model_name: mock-gpt\n"
          "    litellm_params:\n"
          "      model: openai/mock-gpt\n"
          f"      mock_response: \"{ANSWER}\"\n")

pytestmark = needs_litellm


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A LiteLLM proxy on 127.0.0.1 with one mock_response model; its base URL."""
    folder = tmp_path_factory.mktemp("litellm")
    with litellm_proxy(folder, CONFIG, MASTER_KEY) as base_url:
        yield base_url


def _run(tmp_path: Path, base_url: str, tasks: Path, *extra: str) -> Path:
    out = tmp_path / "out.jsonl"
    done = run_cli("-i", str(tasks), "-o", str(out), "--base-url", base_url, "--model", "mock-gpt",
                   "-p", "1", *extra, cwd=tmp_path, env={"OPENAI_API_KEY": MASTER_KEY})
    assert done.returncode == 0, done.stderr[-3000:]
    checked = run_cli("-i", str(tasks), "-o", str(out), "--model", "mock-gpt", "--validate",
                      cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout
    return out


def test_chat_rows_with_an_image_through_litellm(proxy: str, tmp_path: Path) -> None:
    # Given a multi-turn chat row with a local image
    write_png(tmp_path / "a.png")
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{"id": "c1", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url", "image_url": {"url": "a.png"}}]}]}])
    # When it runs through the proxy
    out = _run(tmp_path, proxy, tasks)
    # Then LiteLLM's answer is recorded for the last user turn
    [line] = read_jsonl(out)
    assert (line["answer"], line["input_prompt"], line["images"]) == (
        ANSWER, "What is this?", ["a.png"])


def test_plain_rows_through_litellms_responses_api(proxy: str, tmp_path: Path) -> None:
    # Given plain rows, sent with --api responses
    tasks = write_tasks(tmp_path / "tasks.jsonl",
                        [{"id": "r1", "prompt": "one"}, {"id": "r2", "prompt": "two"}])
    # When they run through the proxy's /v1/responses
    out = _run(tmp_path, proxy, tasks, "--api", "responses", "--max-tokens", "50")
    # Then the output text is the answer and LiteLLM's usage (with its nulls) is mapped
    lines = read_jsonl(out)
    assert len(lines) == 2
    for line in lines:
        assert line["answer"] == ANSWER
        assert line["usage"]["prompt_tokens"] > 0 and line["usage"]["reasoning_tokens"] == 0


def test_a_batch_responses_line_through_litellm(proxy: str, tmp_path: Path) -> None:
    # Given a Batch file with a chat line and a Responses line
    tasks = write_tasks(tmp_path / "batch.jsonl",
                        [{"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
                          "body": {"model": "mock-gpt",
                                   "messages": [{"role": "user", "content": "chat"}]}},
                         {"custom_id": "r", "method": "POST", "url": "/v1/responses",
                          "body": {"model": "mock-gpt", "input": "resp"}}])
    # When it runs through the proxy
    out = _run(tmp_path, proxy, tasks)
    # Then each came back in the Batch output form with LiteLLM's own body
    bodies = {line["custom_id"]: line["response"]["body"] for line in read_jsonl(out)}
    assert bodies["c"]["choices"][0]["message"]["content"] == ANSWER
    assert bodies["r"]["object"] == "response"
    assert bodies["r"]["output"][0]["content"][0]["text"] == ANSWER
