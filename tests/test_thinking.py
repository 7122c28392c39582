"""Thinking switches on the wire: --thinking and --reasoning-effort in each server's own field,
against the mock over real HTTP; the switches no server can take are refused before any request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import read_jsonl, run_cli, write_tasks

from mpinfer.mockserver import MockServerProcess

MODEL = "qwen3-vl-plus"
PROMPT = "What is in the picture?"


def _run(mock: MockServerProcess, tmp_path: Path, *extra: str) -> tuple[int, str, list[Any]]:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [{"id": "a", "prompt": PROMPT}])
    out = tmp_path / "out.jsonl"
    done = run_cli("-i", str(tasks), "-o", str(out), "-p", "1", "--base-url", mock.base_url,
                   "--model", MODEL, *extra, cwd=tmp_path)
    lines = read_jsonl(out) if out.exists() else []
    return done.returncode, done.stdout + done.stderr, lines


@pytest.mark.parametrize(("form", "off"), [
    # the mock at 127.0.0.1 is none of OpenAI, DeepSeek, DashScope by its address: vLLM's form
    ("auto", {"chat_template_kwargs": {"enable_thinking": False}}),
    ("dashscope", {"enable_thinking": False}),
    ("deepseek", {"thinking": {"type": "disabled"}}),
])
def test_thinking_off_goes_in_the_servers_own_field_and_the_model_follows_it(
        mock: MockServerProcess, tmp_path: Path, form: str, off: dict[str, Any]) -> None:
    # Given a model that thinks by default, on a server of each form
    mock.configure(record_bodies=True, reasoning_models={MODEL: "reasoning_content"})
    # When it runs with thinking off
    code, said, lines = _run(mock, tmp_path, "--thinking", "off", "--thinking-form", form)
    # Then the request carried that server's switch, and the answer came without thinking
    assert code == 0, said
    body = mock.stats()["bodies"][PROMPT]
    assert {key: body[key] for key in off} == off
    assert "reasoning_content" not in lines[0]
    assert not lines[0]["usage"].get("reasoning_tokens")


def test_thinking_on_is_asked_for_and_the_thinking_kept(mock: MockServerProcess,
                                                       tmp_path: Path) -> None:
    mock.configure(record_bodies=True, reasoning_models={MODEL: "reasoning_content"})
    code, said, lines = _run(mock, tmp_path, "--thinking", "on")
    assert code == 0, said
    assert mock.stats()["bodies"][PROMPT]["chat_template_kwargs"] == {"enable_thinking": True}
    assert lines[0]["reasoning_content"].startswith("The user asks")


def test_reasoning_effort_goes_as_the_chat_and_the_responses_api_name_it(
        mock: MockServerProcess, tmp_path: Path) -> None:
    mock.configure(record_bodies=True)
    code, said, _ = _run(mock, tmp_path, "--reasoning-effort", "HIGH", "--thinking-form", "openai")
    assert code == 0, said
    assert mock.stats()["bodies"][PROMPT]["reasoning_effort"] == "high"
    (tmp_path / "out.jsonl").unlink()
    code, said, _ = _run(mock, tmp_path, "--reasoning-effort", "low", "--thinking-form", "openai",
                         "--api", "responses", "--fresh")
    assert code == 0, said
    body = next(iter(mock.stats()["bodies"].values()))
    assert body["reasoning"] == {"effort": "low"} and "reasoning_effort" not in body


def test_the_users_extra_body_wins_over_the_switch(mock: MockServerProcess,
                                                   tmp_path: Path) -> None:
    mock.configure(record_bodies=True)
    code, said, _ = _run(mock, tmp_path, "--thinking", "off", "--thinking-form", "dashscope",
                         "--extra-body", '{"enable_thinking": true, "thinking_budget": 50}')
    assert code == 0, said
    body = mock.stats()["bodies"][PROMPT]
    assert body["enable_thinking"] is True and body["thinking_budget"] == 50


@pytest.mark.parametrize(("extra", "says"), [
    (("--thinking", "on", "--thinking-form", "openai"), "always think"),
    (("--reasoning-effort", "high", "--thinking-form", "dashscope"), "thinking budget"),
    (("--thinking", "off", "--api", "responses"), "chat API only"),
    (("--reasoning-effort", "extreme"), "must be none, minimal"),
])
def test_a_switch_the_server_cannot_take_is_refused_before_any_request(
        mock: MockServerProcess, tmp_path: Path, extra: tuple[str, ...], says: str) -> None:
    code, said, lines = _run(mock, tmp_path, *extra)
    assert code == 2 and says in said, said
    assert mock.stats()["requests"] == 0 and lines == []


def test_a_resume_with_another_thinking_switch_is_a_settings_change(mock: MockServerProcess,
                                                                    tmp_path: Path) -> None:
    code, said, _ = _run(mock, tmp_path, "--thinking", "off")
    assert code == 0, said
    write_tasks(tmp_path / "tasks.jsonl", [{"id": "a", "prompt": PROMPT},
                                           {"id": "b", "prompt": "And this one?"}])
    tasks = tmp_path / "tasks.jsonl"
    done = run_cli("-i", str(tasks), "-o", str(tmp_path / "out.jsonl"), "--base-url",
                   mock.base_url, "--model", MODEL, "--thinking", "on", cwd=tmp_path)
    assert done.returncode == 2 and "thinking" in done.stderr, done.stdout + done.stderr
