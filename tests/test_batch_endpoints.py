"""--backend batch over an endpoints table: Azure OpenAI's Batch API beside an OpenAI-shaped one, on
the mock (its Azure routes: /openai/files and /openai/batches, api-version, api-key)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import read_jsonl, run_cli, start_cli, text_tasks, write_tasks

from mpinfer.api.endpoints import Endpoint
from mpinfer.backends.batch_plan import Chunk
from mpinfer.backends.batch_targets import OPENAI_URL, Target, target_of
from mpinfer.errors import ConfigError
from mpinfer.mockserver import MockServerProcess

OUT = "results.jsonl"
KEYS = {"AZURE_BATCH_KEY": "azure-key-00000000000000000east",
        "OPENAI_BATCH_KEY": "sk-plain-00000000000000000west"}


@pytest.fixture
def mock(batch_mock: MockServerProcess) -> MockServerProcess:
    """This module's mock is the Batch API one (conftest.batch_mock), with a global-batch
    deployment of gpt-4o (answering as its dated snapshot)."""
    batch_mock.configure(azure_deployments={"gpt4o-batch": "gpt-4o-2024-08-06"})
    return batch_mock


def _table(mock: MockServerProcess, path: Path, east_tokens: int | None = None) -> Path:
    limit = f"enqueued_tokens = {east_tokens}\n" if east_tokens else ""
    path.write_text(f'''[[endpoints]]
model = "gpt-4o"
name = "east"
provider = "azure"
base_url = "{mock.root_url}"
deployment = "gpt4o-batch"
api_version = "2024-10-21"
api_key_env = "AZURE_BATCH_KEY"
{limit}
[[endpoints]]
model = "gpt-4o"
name = "west"
base_url = "{mock.base_url}"
api_key_env = "OPENAI_BATCH_KEY"
{"enqueued_tokens = " + str(east_tokens // 3) if east_tokens else ""}
''')
    return path


def _args(table: Path, *extra: str) -> list[str]:
    return ["-i", "tasks.jsonl", "-o", OUT, "--model", "gpt-4o", "--endpoints", str(table),
            "--backend", "batch", "--batch-poll", "0.1", "--batch-size", "10",
            "--retry-backoff", "0.05", "--timeout", "5", *extra]


def _plan(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / (OUT + ".batches.json")
    return orjson.loads(path.read_bytes()) if path.exists() else {"chunks": []}


def _per_key(mock: MockServerProcess) -> dict[str, int]:
    return {name: mock.batch_stats()["batches_per_key"].get(key[-4:], 0)
            for name, key in (("east", KEYS["AZURE_BATCH_KEY"]),
                              ("west", KEYS["OPENAI_BATCH_KEY"]))}


def test_batches_spread_evenly_over_an_azure_and_an_openai_endpoint_and_the_plan_names_each(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given 40 tasks for gpt-4o, batches of 10, and two endpoints of unknown enqueued-token limits:
    # an Azure resource's global-batch deployment and an OpenAI-shaped server
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(40))
    table = _table(mock, tmp_path / "endpoints.toml")
    # When the batch backend runs over the table
    proc = run_cli(*_args(table), cwd=tmp_path, env=KEYS)
    # Then each endpoint made two of the four batches, two through Azure's routes, and the plan
    # names each batch's endpoint by its name, never its key
    assert proc.returncode == 0, proc.stderr
    assert _per_key(mock) == {"east": 2, "west": 2}
    stats = mock.batch_stats()
    assert stats["azure_batches"] == 2 and stats["max_batches_per_row"] == 1
    plan = (tmp_path / (OUT + ".batches.json")).read_text()
    assert Counter(c["endpoint"] for c in orjson.loads(plan)["chunks"]) == {"east": 2, "west": 2}
    assert all(key not in plan for key in KEYS.values())
    status = run_cli(*_args(table, "--status"), cwd=tmp_path, env=KEYS)
    assert status.stdout.count("; at east") == 2 and status.stdout.count("; at west") == 2
    # And every id is answered once; Azure's answers name the deployment's model, which is the
    # requested one's snapshot
    rows = read_jsonl(tmp_path / OUT)
    assert Counter(r["id"] for r in rows) == Counter(f"t{i}" for i in range(40))
    assert {r["model"] for r in rows} == {"gpt-4o", "gpt-4o-2024-08-06"}
    assert {r["requested_model"] for r in rows} == {"gpt-4o"}
    assert stats["max_answers_per_row"] == 1


def test_batches_spread_by_the_endpoints_enqueued_token_limits(tmp_path: Path,
                                                               mock: MockServerProcess) -> None:
    # Given four batches' worth of tasks and an Azure endpoint with three times the other's
    # enqueued-token limit
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(40))
    table = _table(mock, tmp_path / "endpoints.toml", east_tokens=3_000_000)
    # When the batch backend runs
    proc = run_cli(*_args(table), cwd=tmp_path, env=KEYS)
    # Then three batches went to the larger queue and one to the other
    assert proc.returncode == 0, proc.stderr
    assert _per_key(mock) == {"east": 3, "west": 1}
    assert sorted(r["id"] for r in read_jsonl(tmp_path / OUT)) == sorted(
        f"t{i}" for i in range(40))


def test_a_rerun_after_a_kill_polls_each_batch_at_its_own_endpoint_and_merges_once(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given slow batches (0.05 s a request) over both endpoints, and the run killed with SIGKILL
    # once all four are created (a batch is found only with the key that made it)
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(40))
    table = _table(mock, tmp_path / "endpoints.toml")
    mock.batch_faults(request_s=0.05)
    proc = start_cli(*_args(table), cwd=tmp_path, env=KEYS)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and sum(
                bool(c.get("batch_id")) for c in _plan(tmp_path)["chunks"]) < 4:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert sum(bool(c.get("batch_id")) for c in _plan(tmp_path)["chunks"]) == 4
    # When the same command runs again
    again = run_cli(*_args(table), cwd=tmp_path, env=KEYS)
    # Then it created no batch: it polled each where it was made, and merged every answer once
    assert again.returncode == 0, again.stderr
    stats = mock.batch_stats()
    assert stats["batches_created"] == 4 and _per_key(mock) == {"east": 2, "west": 2}
    assert stats["max_batches_per_row"] == 1 and stats["max_answers_per_row"] == 1
    ids = [r["id"] for r in read_jsonl(tmp_path / OUT)]
    assert Counter(ids) == Counter(f"t{i}" for i in range(40))


def test_an_open_batch_whose_endpoint_left_the_table_stops_the_run_before_any_request(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given a plan whose open batch was made at endpoint "north", which the table no longer has
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(2))
    table = _table(mock, tmp_path / "endpoints.toml")
    chunk = {"name": "p-0001", "model_index": 0, "attempt": 1, "ids": ["t0", "t1"], "bytes": 10,
             "state": "created", "file_id": "file-x", "batch_id": "batch_x", "endpoint": "north"}
    (tmp_path / (OUT + ".batches.json")).write_bytes(orjson.dumps(
        {"version": 2, "plan_id": "p", "created_at": time.time(), "models": ["gpt-4o"],
         "chunks": [chunk]}))
    # When the run starts
    proc = run_cli(*_args(table), cwd=tmp_path, env=KEYS)
    # Then it stops with exit 2, naming the endpoint, before any call to the Batch API
    assert proc.returncode == 2 and "'north'" in proc.stderr, proc.stderr
    assert mock.batch_stats()["batches_created"] == 0


def test_a_chunk_of_a_plan_from_before_endpoints_is_the_runs_one_endpoint_of_its_model() -> None:
    # Given a chunk with no endpoint (an old plan), and a run with one endpoint of gpt-4o
    chunk = Chunk("p-0001", 0, 1, ["t0"], 10)
    one = Target("a", Endpoint("gpt-4o", "k1", "http://127.0.0.1:1/v1"), OPENAI_URL)
    other = Target("b", Endpoint("gpt-4o-mini", "k2", "http://127.0.0.1:2/v1"), OPENAI_URL)
    # Then the chunk is that endpoint's; with two endpoints of its model it is an error
    assert target_of([one, other], chunk, "gpt-4o") is one
    with pytest.raises(ConfigError, match="from before endpoints"):
        target_of([one, Target("c", Endpoint("gpt-4o", "k3"), OPENAI_URL)], chunk, "gpt-4o")
