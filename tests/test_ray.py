"""The Ray backend on a real local Ray cluster (a head and two worker nodes, all on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Before Ray is imported: keep every node on 127.0.0.1 (Ray would otherwise advertise the machine's
# network address), and send no usage statistics anywhere.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

cluster_utils = pytest.importorskip("ray.cluster_utils",
                                    reason="Ray is not installed: pip install -e '.[ray]'")
from helpers import FAKE_KEY, read_jsonl, run_cli, start_cli, text_tasks, write_tasks  # noqa: E402
from ray._private import ray_constants  # noqa: E402

from mpinfer.mockserver import MockServerProcess  # noqa: E402

NODE = {"num_cpus": 2, "object_store_memory": 80_000_000}
WAIT_S = 90.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head that runs nothing and two worker nodes; the workers' actors land on those."""
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    ray_cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 80_000_000, "include_dashboard": False})
    ray_cluster.add_node(**NODE)
    ray_cluster.add_node(**NODE)
    try:
        yield ray_cluster
    finally:
        ray_cluster.shutdown()


def _ids(path: Path) -> list[str]:
    return [row["id"] for row in read_jsonl(path)]


def _args(cluster: Any, mock: MockServerProcess, *extra: str) -> tuple[str, ...]:
    return ("-i", "tasks.jsonl", "-o", "out.jsonl", "--backend", "ray", "--ray-address",
            cluster.address, "--base-url", mock.base_url, "--retry-backoff", "0.05", *extra)


def test_a_run_on_the_cluster_writes_every_id_once_in_the_usual_format(tmp_path: Path,
                                                                       mock: MockServerProcess,
                                                                       cluster: Any):
    # Given 200 tasks and a server answering in 50 ms
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(200))
    mock.configure(latency_ms=50)
    # When they run on the cluster with 4 worker actors
    proc = run_cli(*_args(cluster, mock, "-p", "4", "-c", "8"), cwd=tmp_path, timeout=WAIT_S)
    # Then every id is in the output once, in the same line format, and status and validate agree
    assert proc.returncode == 0, proc.stderr
    assert Counter(_ids(tmp_path / "out.jsonl")) == Counter(f"t{i}" for i in range(200))
    assert sum(mock.stats()["answered"].values()) == 200
    row = read_jsonl(tmp_path / "out.jsonl")[0]
    assert {"answer", "usage", "model", "requested_model", "latency_s", "attempts",
            "cost"} <= set(row)
    check = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--validate", cwd=tmp_path)
    assert check.returncode == 0, check.stdout


def test_a_worker_node_killed_mid_run_loses_nothing_and_repeats_nothing(tmp_path: Path,
                                                                        mock: MockServerProcess,
                                                                        cluster: Any):
    # Given a run of 300 tasks whose answers take 200 ms, spread over both worker nodes
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(300))
    mock.configure(latency_ms=200)
    args = _args(cluster, mock, "-p", "4", "-c", "8")
    proc = start_cli(*args, cwd=tmp_path)
    deadline = time.monotonic() + WAIT_S
    while (len(_ids(tmp_path / "out.jsonl")) < 40 and time.monotonic() < deadline
           and proc.poll() is None):
        time.sleep(0.05)
    # When one worker node's processes are killed (SIGKILL) mid-run
    victim = cluster.worker_nodes and next(iter(cluster.worker_nodes))
    written_before = set(_ids(tmp_path / "out.jsonl"))
    answered_before = dict(mock.stats()["answered"])
    cluster.remove_node(victim, allow_graceful=False)
    try:
        proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
    # Then, once rerun (if it had to stop), every id is on disk exactly once
    if Counter(_ids(tmp_path / "out.jsonl")) != Counter(f"t{i}" for i in range(300)):
        again = run_cli(*args, cwd=tmp_path, timeout=WAIT_S)
        assert again.returncode == 0, again.stderr
    assert Counter(_ids(tmp_path / "out.jsonl")) == Counter(f"t{i}" for i in range(300))
    # And no task written before the kill was answered again afterwards
    answered = mock.stats()["answered"]
    prompts = {t["id"]: t["prompt"] for t in text_tasks(300)}
    assert [i for i in written_before if answered[prompts[i]] != answered_before[prompts[i]]] == []


def test_a_limit_the_server_states_reaches_the_clusters_limiter(tmp_path: Path,
                                                                mock: MockServerProcess,
                                                                cluster: Any):
    # Given a server that allows 120 requests per 4 s as a bucket of 30 a second, and says so on
    # every answer
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(150))
    mock.configure(rpm=120, window_s=4.0, quantum_s=1.0, latency_ms=30)
    # When 4 actors on two nodes run 150 tasks with no --rpm and no retries allowed
    proc = run_cli(*_args(cluster, mock, "-p", "4", "-c", "8", "--rate-window", "4",
                          "--max-retries", "0"), cwd=tmp_path, timeout=WAIT_S)
    # Then every task finished once, and the actors' answers taught the one limiter the server's
    # limit
    assert proc.returncode == 0, proc.stderr
    assert Counter(_ids(tmp_path / "out.jsonl")) == Counter(f"t{i}" for i in range(150))
    assert "120 requests/4s (server)" in proc.stdout + proc.stderr
    stats = mock.stats()
    print(f"ray learned: {stats['requests']} requests, {stats['limit_rejections']} refused")
    assert stats["limit_rejections"] <= 0.15 * stats["requests"]


def test_the_rpm_limit_holds_for_the_cluster_as_a_whole(tmp_path: Path, mock: MockServerProcess,
                                                        cluster: Any):
    # Given a server that allows 60 requests per 4-second window, and 150 tasks
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(150))
    mock.configure(rpm=60, window_s=4.0, latency_ms=50)
    # When 4 actors on two nodes run under --rpm 60 over the same window
    proc = run_cli(*_args(cluster, mock, "-p", "4", "-c", "8", "--rpm", "60", "--rate-window", "4"),
                   cwd=tmp_path, timeout=WAIT_S)
    # Then the server never saw a window over the limit and refused nothing
    assert proc.returncode == 0, proc.stderr
    stats = mock.stats()
    assert stats["window_violations"] == 0 and stats["limit_rejections"] == 0
    assert stats["max_requests_in_any_60s_window"] == 60
    assert Counter(_ids(tmp_path / "out.jsonl")) == Counter(f"t{i}" for i in range(150))
    elapsed = stats["last_request_at"] - stats["first_request_at"]
    print(f"ray rpm: 150 requests in {elapsed:.2f}s, fastest possible 8.00s")
    assert elapsed >= 8.0


def _worker_actor_pids(cluster: Any) -> list[int]:
    """The processes of this cluster's worker actors: children of its worker nodes' raylets."""
    raylets = {node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
               for node in cluster.worker_nodes}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent in raylets and title.startswith(b"ray::_Worker"):
            pids.append(int(entry.name))
    return sorted(pids)


def test_an_actor_killed_again_and_again_is_replaced_once_a_death_and_resends_only_what_it_held(
        tmp_path: Path, mock: MockServerProcess, cluster: Any):
    # Given 400 tasks answered in 150 ms, run by 2 actors with 4 requests in flight each
    n, concurrency = 400, 4
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(n))
    mock.configure(latency_ms=150)
    proc = start_cli(*_args(cluster, mock, "-p", "2", "-c", str(concurrency)), cwd=tmp_path)
    killed: list[int] = []
    try:
        # When an actor's process is killed (SIGKILL) three times, each time once more lines are
        # written
        for written in (40, 130, 220):
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and proc.poll() is None:
                alive = [pid for pid in _worker_actor_pids(cluster) if pid not in killed]
                if len(_ids(tmp_path / "out.jsonl")) >= written and alive:
                    os.kill(alive[0], signal.SIGKILL)
                    killed.append(alive[0])
                    break
                time.sleep(0.05)
        _, stderr = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    # Then the run finished by itself: three deaths, three replacements, nothing given up
    assert len(killed) == 3, "the run ended before the kills"
    assert proc.returncode == 0, stderr
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["worker_deaths"] == 3 and summary["stopped"] is None
    # And every id is on disk exactly once
    assert Counter(_ids(tmp_path / "out.jsonl")) == Counter(f"t{i}" for i in range(n))
    # And a task reached the API again only because a kill took it: at most what the dead actors
    # held
    answered = mock.stats()["answered"]
    assert sum(answered.values()) - n <= len(killed) * concurrency
    assert max(answered.values()) <= 1 + len(killed)


def test_mpinfer_run_in_a_python_session_joined_to_ray_leaves_the_session_connected(
        tmp_path: Path, mock: MockServerProcess, cluster: Any, monkeypatch: pytest.MonkeyPatch):
    # Given a Python session (a notebook) that has joined the cluster itself
    import ray

    import mpinfer

    write_tasks(tmp_path / "tasks.jsonl", text_tasks(20))
    monkeypatch.chdir(tmp_path)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        # When it runs tasks on the Ray backend from Python
        result = mpinfer.run(input="tasks.jsonl", output="out.jsonl", backend="ray",
                             ray_address=cluster.address, processes=2, base_url=mock.base_url,
                             api_keys=FAKE_KEY, retry_backoff=0.05, progress=False)
        # Then every task is answered once, and the session is still connected, for the caller to
        # end
        assert result.summary.succeeded == 20
        assert Counter(a["id"] for a in result.answers()) == Counter(f"t{i}" for i in range(20))
        assert ray.is_initialized()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def second_server() -> Iterator[MockServerProcess]:
    """A second mock server: an endpoint with limits of its own beside the session's."""
    with MockServerProcess() as server:
        yield server


ENDPOINT_KEYS = {"KEY_EAST": "sk-east-00000000000000000000east",
                 "KEY_WEST": "sk-west-00000000000000000000west"}


def test_an_endpoints_table_spreads_tasks_over_two_servers_each_within_its_own_rpm(
        tmp_path: Path, mock: MockServerProcess, second_server: MockServerProcess, cluster: Any):
    # Given two servers, each enforcing its own limit per 4 s quantized per second (40 and 20), and
    # an endpoints table giving each its limit, with a per-model --rpm above both
    second_server.reset(settings=True)
    for server, rpm in ((mock, 40), (second_server, 20)):
        server.configure(rpm=rpm, window_s=4.0, quantum_s=1.0, latency_ms=30)
    table = tmp_path / "endpoints.toml"
    table.write_text("".join(f'[[endpoints]]\nmodel = "gpt-4o"\nbase_url = "{server.base_url}"\n'
                             f'api_key_env = "{env}"\nrpm = {rpm}\n\n'
                             for server, env, rpm in ((mock, "KEY_EAST", 40),
                                                      (second_server, "KEY_WEST", 20))))
    n = 120
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(n))
    # When 4 actors on two nodes run the tasks over the table
    proc = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--backend", "ray", "--ray-address",
                   cluster.address, "--model", "gpt-4o", "--endpoints", str(table),
                   "--rpm", "gpt-4o=600", "--rate-window", "4", "-p", "4", "-c", "8",
                   cwd=tmp_path, env=ENDPOINT_KEYS, timeout=WAIT_S)
    # Then every id is written once, at most 1% of requests were refused, and each server took its
    # share (twice as much for the one with twice the limit, within the pace's slack)
    assert proc.returncode == 0, proc.stderr
    assert Counter(_ids(tmp_path / "out.jsonl")) == Counter(f"t{i}" for i in range(n))
    east, west = mock.stats(), second_server.stats()
    requests = east["requests"] + west["requests"]
    refused = east["limit_rejections"] + west["limit_rejections"]
    print(f"ray over two endpoints: {east['requests']} + {west['requests']} requests, "
          f"{refused} refused")
    assert refused <= 0.01 * requests
    assert east["requests"] >= 60 and west["requests"] >= 25
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert set(summary["per_key"]) == {"gpt-4o ...east", "gpt-4o ...west"}


def test_two_jobs_on_one_key_share_the_clusters_limiter_and_together_keep_its_rpm(
        tmp_path: Path, mock: MockServerProcess, cluster: Any):
    # Given a server allowing 40 requests per 4 s, and two jobs (two driver processes) on its one
    # key, each told that limit, each with 50 tasks of its own
    mock.configure(rpm=40, window_s=4.0, latency_ms=30)
    jobs = [tmp_path / "a", tmp_path / "b"]
    for folder in jobs:
        folder.mkdir()
        write_tasks(folder / "tasks.jsonl", [{**t, "prompt": f"{folder.name} {t['prompt']}"}
                                             for t in text_tasks(50)])
    # When both run at once on the cluster
    procs = [start_cli(*_args(cluster, mock, "-p", "2", "-c", "4", "--rpm", "40",
                              "--rate-window", "4"), cwd=folder) for folder in jobs]
    outputs = []
    try:
        outputs = [proc.communicate(timeout=WAIT_S) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
    # Then both finish, each id once in each output
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    for folder in jobs:
        assert Counter(_ids(folder / "out.jsonl")) == Counter(f"t{i}" for i in range(50))
    # And they shared one limiter: the server saw no window over the limit and refused nothing,
    # which two limiters of 40 each would have passed
    stats = mock.stats()
    assert stats["requests"] == 100
    assert stats["window_violations"] == 0 and stats["limit_rejections"] == 0
    # And a job's summary counts its own requests only
    for folder in jobs:
        summary = json.loads((folder / "out.jsonl.summary.json").read_text())
        assert sum(row["requests"] for row in summary["per_key"].values()) == 50
    # And the job that came second found the first one's actor
    logs = "".join(path.read_text() for folder in jobs for path in folder.rglob("*.log"))
    assert "shared with 1 other job" in logs + "".join(out + err for out, err in outputs)
