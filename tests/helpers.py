"""Plain helpers the test modules share (conftest.py holds the fixtures).

Files in and out (task writers, output lines, reading JSONL back), the real command line in a
subprocess, the processes a killed run leaves, raw HTTP/1.1 servers for the tests of mpinfer's
client, and the LiteLLM proxy that the interoperability tests run against.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from mpinfer.backends.runner import Outcome, TaskRunner
from mpinfer.config import RunConfig
from mpinfer.demo import png_bytes
from mpinfer.inputs.tasks import Task

FAKE_KEY = "sk-test-0000000000000000fake9zq7"
CLI_TIMEOUT_S = 120

# --- files in and out ---------------------------------------------------------------------------


def jsonl_bytes(items: Iterable[dict[str, Any] | bytes]) -> bytes:
    """JSON lines of ``items``; an item in bytes is taken as it is (a torn or corrupt line)."""
    return b"".join(item if isinstance(item, bytes) else orjson.dumps(item) + b"\n"
                    for item in items)


def write_jsonl(path: Path, items: Iterable[dict[str, Any] | bytes]) -> Path:
    """Write ``items`` as JSON lines to ``path`` (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jsonl_bytes(items))
    return path


def write_tasks(path: Path, tasks: Sequence[dict[str, Any]]) -> Path:
    """An input file of ``tasks``."""
    return write_jsonl(path, tasks)


def text_tasks(n: int, prefix: str = "t") -> list[dict[str, Any]]:
    """n tasks whose prompts are unique, so the mock server's per-prompt counts identify them."""
    return [{"id": f"{prefix}{i}", "prompt": f"question {prefix}{i}: what is {i} + {i}?"}
            for i in range(n)]


def write_png(path: Path, rgb: tuple[int, int, int] = (200, 30, 30)) -> Path:
    """A 16x12 PNG image at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(16, 12, rgb, (255, 255, 255)))
    return path


def lines_written(path: Path) -> int:
    """How many whole lines a file holds so far (0 if it does not exist): safe to poll while a run
    appends, where read_jsonl could meet a line half written."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file (none if it does not exist)."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def ids_on_disk(path: Path) -> list[str]:
    """Ids of the complete lines only: a torn last line is not an answer."""
    if not path.exists():
        return []
    ids = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        try:
            ids.append(orjson.loads(line)["id"])
        except orjson.JSONDecodeError:
            pass
    return ids


# A moment in the past that output lines are dated at, so --status's figures are exact.
NOW = 1_700_000_000.0


def result_line(rid: str, *, answer: Any = None, model: str = "gpt-4o-mini",
                requested: str = "gpt-4o-mini", prompt_tokens: int = 10, completion_tokens: int = 5,
                at: float = NOW) -> dict[str, Any]:
    """A complete Result line as the worker writes it."""
    return {
        "id": rid, "input_prompt": f"prompt {rid}", "images": [],
        "answer": f"answer {rid}" if answer is None else answer,
        "model": model, "requested_model": requested,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "finish_reason": "stop", "latency_s": 0.1, "attempts": 1, "processed_at": at,
        "cost": 0.0001,
    }


def failure_line(rid: str) -> dict[str, Any]:
    """A failure line (a 500 after all its attempts) as the worker writes it."""
    return {"id": rid, "error_type": "server_error", "status": 500, "message": "boom",
            "attempts": 4, "processed_at": NOW}


def setup_run(tmp_path: Path, ids: Sequence[str],
              output: Sequence[dict[str, Any] | bytes]) -> RunConfig:
    """An input with ``ids`` and an output with ``output``; the config that points at both."""
    tasks = write_jsonl(tmp_path / "tasks.jsonl",
                        [{"id": rid, "prompt": f"prompt {rid}"} for rid in ids])
    out = write_jsonl(tmp_path / "results.jsonl", output)
    return RunConfig(input=tasks, output=out)


# --- the command line in a subprocess ----------------------------------------------------------


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The CLI's environment: no real keys or settings leak in from the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MPINFER_"))}
    env["OPENAI_API_KEY"] = FAKE_KEY
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def cli_command(*args: str) -> list[str]:
    """The command line that runs mpinfer with ``args`` (no progress bar)."""
    return [sys.executable, "-m", "mpinfer", "--no-progress", *args]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run the real command line in its own process, as a user would."""
    return subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(env), capture_output=True,
                          text=True, timeout=timeout, check=False)


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the real command line in its own process and return at once."""
    return subprocess.Popen(cli_command(*args), cwd=cwd, env=cli_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_workers_gone(output: Path, limit_s: float = 10.0) -> None:
    """Wait until no worker of a run on ``output`` is alive.

    Every worker holds a shared lock on the workers lock file for its whole life.
    """
    lock = output.with_name("." + output.name + ".workers.lock")
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        deadline = time.monotonic() + limit_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError("workers outlived their killed parent") from None
                time.sleep(0.02)
    finally:
        os.close(fd)


# --- raw HTTP/1.1 servers -----------------------------------------------------------------------
# For the tests of mpinfer's client (test_http.py, test_send_gate.py): they give what the mock does
# not (a compressed answer, a redirect, a connection closed without an answer, an answer at a chosen
# moment) and see exactly the bytes that arrived.

# Answers one request: given its head and body, writes to the connection (or closes it, or says
# nothing).
Handler = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[None]]
Connection = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
READ_S = 10.0  # a request that has not arrived whole by then is not coming


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The head (through its blank line) and the body of the next request on the connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_S)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await asyncio.wait_for(reader.readexactly(length), READ_S)
    return head, body


def response(body: bytes, *headers: str) -> bytes:
    """A 200 answer with a JSON ``body`` and any more header lines ("Name: value")."""
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def keep_alive(handler: Handler, heads: list[bytes] | None = None, limit: int = 10) -> Connection:
    """A keep-alive connection handler for ``asyncio.start_server``: requests one after another.

    Each is answered with ``handler``, until the client closes the connection or the handler does
    (at most ``limit``); each request's head is appended to ``heads``.
    """
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(limit):
                try:
                    head, body = await read_request(reader)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    return
                if heads is not None:
                    heads.append(head)
                await handler(head, body, writer)
                if writer.is_closing():
                    return
        finally:
            writer.close()
    return serve


# --- the LiteLLM proxy --------------------------------------------------------------------------

LITELLM = Path(sys.executable).with_name("litellm")
LITELLM_BOOT_TIMEOUT_S = 90
needs_litellm = pytest.mark.skipif(
    importlib.util.find_spec("litellm") is None or not LITELLM.exists(),
    reason="litellm[proxy] is not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _up(url: str) -> bool:
    # Straight to 127.0.0.1, never through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def litellm_proxy(folder: Path, config: str, master_key: str) -> Iterator[str]:
    """A LiteLLM proxy on 127.0.0.1 run with ``config`` (its YAML) for the block; its base URL."""
    (folder / "litellm.yaml").write_text(config)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
    env["LITELLM_MASTER_KEY"] = master_key
    with (folder / "litellm.log").open("wb") as log:
        server = subprocess.Popen([str(LITELLM), "--config", str(folder / "litellm.yaml"),
                                   "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + LITELLM_BOOT_TIMEOUT_S
            while not _up(f"http://127.0.0.1:{port}/health/liveliness"):
                alive = server.poll() is None and time.monotonic() < deadline
                assert alive, (folder / "litellm.log").read_text()
                time.sleep(0.25)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=5)


async def run_at_once(runner: TaskRunner, tasks: int, stop_after_s: float | None = None,
                      timeout_s: float = 60.0) -> list[Outcome | None]:
    """Tasks t0 to t(tasks - 1) run at once through ``runner`` (stopped after ``stop_after_s``
    when given), then the runner closed: their outcomes."""
    async def stop_later(seconds: float) -> None:
        await asyncio.sleep(seconds)
        runner.stop()

    stopper = asyncio.ensure_future(stop_later(stop_after_s)) if stop_after_s else None
    try:
        return await asyncio.wait_for(asyncio.gather(
            *(runner.run(Task(id=f"t{i}", prompt="hi"), 0) for i in range(tasks))), timeout_s)
    finally:
        if stopper is not None:
            stopper.cancel()
        await runner.close()
