"""Shared fixtures: the package's own mock server on 127.0.0.1 (plain helpers: helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mpinfer.mockserver import MockServerProcess


@pytest.fixture(scope="session")
def mock_server() -> Iterator[MockServerProcess]:
    """One mock server for the session; ``mock`` resets it for each test."""
    with MockServerProcess() as server:
        yield server


@pytest.fixture
def mock(mock_server: MockServerProcess) -> MockServerProcess:
    """The session's mock server, counters zeroed and every setting back to the mock's default."""
    mock_server.reset(settings=True)
    # The one setting tests want other than the mock's default: fault 429s advertise a wait of
    # 0.05 s (the mock's default is 1 s, a real server's order), so a test that meets one retries
    # within milliseconds.
    mock_server.configure(retry_after=0.05)
    return mock_server


@pytest.fixture(scope="module")
def batch_server() -> Iterator[MockServerProcess]:
    """A mock server for one Batch API test module (its batches and files outlive a reset)."""
    with MockServerProcess() as server:
        yield server


@pytest.fixture
def batch_mock(batch_server: MockServerProcess) -> MockServerProcess:
    """The module's Batch API mock, every file, batch, count and fault forgotten; 20 ms steps."""
    batch_server.batch_faults(reset=True, step_s=0.02)
    return batch_server


@pytest.fixture(autouse=True)
def _limits_folder(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's runs share rate limits (the lane files under XDG_STATE_HOME) among themselves
    and with the CLIs it starts, never with another test's or the developer's runs."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
