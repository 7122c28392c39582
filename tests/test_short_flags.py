"""The seed's short flags: ``-v`` validates and ``-s`` shows the status, as in the tool mpinfer
replaces (``--verbose`` keeps its long flag only)."""

from __future__ import annotations

from pathlib import Path

from helpers import run_cli, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess


def _job(folder: Path, base_url: str) -> None:
    """An mpinfer.toml naming the input, the output and the server, as a seed's job does."""
    write_tasks(folder / "tasks.jsonl", text_tasks(3))
    (folder / "mpinfer.toml").write_text(
        f'input = "tasks.jsonl"\noutput = "out.jsonl"\nbase_url = "{base_url}"\n')


def test_dash_v_validates_and_sends_nothing(tmp_path: Path, mock: MockServerProcess):
    # Given a job named in mpinfer.toml, not yet run
    _job(tmp_path, mock.base_url)
    # When the seed's user types -v
    proc = run_cli("-v", cwd=tmp_path)
    # Then the output is validated (3 tasks missing: exit 1), and no request is sent
    assert "missing_id: 3" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert mock.stats()["requests"] == 0
    assert not (tmp_path / "out.jsonl").exists()


def test_dash_s_prints_the_status(tmp_path: Path, mock: MockServerProcess):
    # Given a job named in mpinfer.toml that has run
    _job(tmp_path, mock.base_url)
    assert run_cli(cwd=tmp_path).returncode == 0
    sent = mock.stats()["requests"]
    # When the seed's user types -s
    proc = run_cli("-s", cwd=tmp_path)
    # Then the status is printed (3 of 3 done) and nothing more is sent
    assert proc.returncode == 0, proc.stderr
    assert "done: 3 (100.0%)" in proc.stdout, proc.stdout
    assert mock.stats()["requests"] == sent == 3


def test_verbose_keeps_its_long_flag(tmp_path: Path, mock: MockServerProcess):
    # Given the same job
    _job(tmp_path, mock.base_url)
    # When it runs with --verbose
    proc = run_cli("--verbose", cwd=tmp_path)
    # Then it runs
    assert proc.returncode == 0, proc.stderr
    assert mock.stats()["requests"] == 3
