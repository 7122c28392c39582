"""What a command loads: the read-only ones (--status, --validate, --dry-run, --export, --report)
never import the openai SDK (about a second of import on a small machine), and neither does a run
on the default transport (api/wire.py sends without it); only a run through the SDK
(``--transport httpx``) does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_env, run_cli, text_tasks, write_png, write_tasks

from mpinfer.mockserver import MockServerProcess

# The real CLI's main in a fresh interpreter, then a line on stderr saying whether the SDK loaded.
_WRAPPER = ("import sys\n"
            "from mpinfer.cli import main\n"
            "try:\n"
            "    code = main(sys.argv[1:])\n"
            "finally:\n"
            "    print(f'openai loaded: {\"openai\" in sys.modules}', file=sys.stderr)\n"
            "sys.exit(code)\n")

READ_ONLY = {
    "--status": ["--status"],
    "--validate": ["--validate"],
    "--dry-run": ["--dry-run"],
    "--export": ["--export", "rows.csv"],
    "--report": ["--report"],
    "--status --by": ["--status", "--by", "prompt"],
    "--report --by": ["--report", "--by", "prompt"],
}


def _loads_openai(*args: str, cwd: Path) -> bool:
    """Whether the CLI run with ``args`` in ``cwd`` imported the openai SDK (it must succeed)."""
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, "--no-progress", *args], cwd=cwd,
                          env=cli_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("openai loaded: ")]
    assert len(said) == 1, proc.stderr
    return said[0] == "openai loaded: True"


def _job(work: Path, base_url: str) -> Path:
    """Four tasks, one with an image, and a settings file that sends them to ``base_url``."""
    write_png(work / "red.png")
    tasks = [*text_tasks(3), {"id": "img", "prompt": "what colour?", "images": ["red.png"]}]
    write_tasks(work / "tasks.jsonl", tasks)
    (work / "mpinfer.toml").write_text(f'input = "tasks.jsonl"\noutput = "results.jsonl"\n'
                                       f'base_url = "{base_url}"\nprocesses = 1\nconcurrency = 2\n')
    return work


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, mock_server: MockServerProcess) -> Path:
    """A finished run of the four tasks against the mock server."""
    work = _job(tmp_path_factory.mktemp("finished"), mock_server.base_url)
    mock_server.reset()
    ran = run_cli(cwd=work)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return work


@pytest.mark.parametrize("mode", sorted(READ_ONLY))
def test_a_read_only_command_never_imports_the_openai_sdk(finished: Path, mode: str) -> None:
    # Given a finished run's output
    # When the command reads it through the real CLI in a fresh interpreter
    loaded = _loads_openai(*READ_ONLY[mode], cwd=finished)
    # Then it did its job without loading the openai SDK
    assert not loaded, f"{mode} imported the openai SDK"


def test_a_run_on_the_default_transport_never_imports_the_openai_sdk(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given the same job, not run yet
    work = _job(tmp_path, mock.base_url)
    # When it is run through the same check
    loaded = _loads_openai(cwd=work)
    # Then every task was sent and answered without the SDK loaded
    assert not loaded
    assert sum(mock.stats()["answered"].values()) == 4


def test_the_import_check_sees_a_run_through_the_sdk_load_it(tmp_path: Path,
                                                             mock: MockServerProcess) -> None:
    # Given the same job, not run yet
    work = _job(tmp_path, mock.base_url)
    # When it is run through the same check on the SDK's transport
    loaded = _loads_openai("--transport", "httpx", cwd=work)
    # Then the check sees the SDK loaded (it can fail), and the tasks were sent
    assert loaded
    assert sum(mock.stats()["answered"].values()) == 4
