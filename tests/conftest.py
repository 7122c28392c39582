"""Shared fixtures: the package's own mock server on 127.0.0.1, task files, and the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from mpinfer.demo import png_bytes
from mpinfer.mockserver import MockServerProcess

FAKE_KEY = "sk-test-0000000000000000fake9zq7"
CLI_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def mock_server() -> Iterator[MockServerProcess]:
    """One mock server for the session; ``mock`` resets it for each test."""
    with MockServerProcess() as server:
        yield server


@pytest.fixture
def mock(mock_server: MockServerProcess) -> MockServerProcess:
    """The session's mock server, counters zeroed and faults off."""
    mock_server.reset()
    mock_server.configure(latency_ms=0, jitter_ms=0, p429=0, p500=0, phang=0, preset=0, pmalformed=0, pquota=0,
                          retry_after=0.05, model_map={}, rpm=None, tpm=None, window_s=60.0,
                          reasoning_models={}, refuse_marker=None, record_bodies=False, max_image_bytes=None,
                          azure_deployments={},
                          unrevoke_keys=[FAKE_KEY], quantum_s=0, limit_style="openai", max_concurrent=None,
                          slow_bps=1.0)
    return mock_server


@pytest.fixture(scope="module")
def batch_server() -> Iterator[MockServerProcess]:
    """A mock server for one test module of the Batch API (its batches and files outlive a reset of counters)."""
    with MockServerProcess() as server:
        yield server


@pytest.fixture
def batch_mock(batch_server: MockServerProcess) -> MockServerProcess:
    """The module's Batch API mock with every file, batch, count and fault forgotten; steps of 20 ms."""
    batch_server.batch_faults(reset=True, step_s=0.02)
    return batch_server


def write_tasks(path: Path, tasks: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in tasks))
    return path


def text_tasks(n: int, prefix: str = "t") -> list[dict[str, Any]]:
    """n tasks whose prompts are unique, so the mock server's per-prompt counts identify them."""
    return [{"id": f"{prefix}{i}", "prompt": f"question {prefix}{i}: what is {i} + {i}?"} for i in range(n)]


def write_png(path: Path, rgb: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(16, 12, rgb, (255, 255, 255)))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the CLI under test: no real keys or settings leak in from the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MPINFER_"))}
    env["OPENAI_API_KEY"] = FAKE_KEY
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mpinfer", "--no-progress", *args]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run the real command line in its own process, as a user would."""
    return subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(env), capture_output=True, text=True,
                          timeout=timeout, check=False)


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(cli_command(*args), cwd=cwd, env=cli_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
