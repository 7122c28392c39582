"""A model the server does not know stops its tasks within the first few answers, over real HTTP.

OpenAI answers a model it does not have with a 404 ``model_not_found``, Azure a missing deployment
with a 404 ``DeploymentNotFound`` (the mock speaks both). With no other model left the run stops
(exit 5) naming the model and where it was sent, never the key; with other models, theirs go on.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import FAKE_KEY, read_jsonl, run_cli, text_tasks, write_tasks

from mpinfer.mockserver import MockServerProcess

TASKS = 200
FEW = 20  # "within the first few answers": at most the requests a -p 2 -c 4 run has out at once


def test_an_unknown_model_stops_the_run_naming_the_model_and_server(tmp_path: Path,
                                                                    mock: MockServerProcess):
    # Given a server that knows gpt-4o-mini only, and 200 tasks for a model it does not know
    mock.configure(models=["gpt-4o-mini"])
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(TASKS))
    # When they run
    proc = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "gpt-nope", "--base-url",
                   mock.base_url, "-p", "2", "-c", "4", cwd=tmp_path)
    # Then the run stops after a few requests, with exit 5, naming the model and the server
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert 1 <= mock.stats()["requests"] <= FEW
    assert mock.stats()["outcomes"]["404"] >= 1
    shown = proc.stdout + proc.stderr
    assert "gpt-nope" in shown and mock.base_url in shown and "stopped: aborted" in shown
    assert FAKE_KEY not in shown and FAKE_KEY[-4:] not in shown
    # And the failures written (the tasks the workers held, failed without a request once the
    # first answer came) are unknown_model, not not_found; the rest are left for a rerun
    failures = read_jsonl(tmp_path / "out.jsonl.errors.jsonl")
    assert 1 <= len(failures) <= TASKS // 4
    assert {f["error_type"] for f in failures} == {"unknown_model"}


def test_an_unknown_model_among_several_stops_only_its_own_tasks(tmp_path: Path,
                                                                 mock: MockServerProcess):
    # Given two models, one of which the server does not know
    mock.configure(models=["gpt-4o-mini"])
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(60))
    # When they run
    proc = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--model", "gpt-4o-mini,gpt-nope",
                   "--base-url", mock.base_url, "-p", "2", "-c", "4", cwd=tmp_path)
    # Then the known model's tasks are all answered, the unknown one's stop after a few requests
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(read_jsonl(tmp_path / "out.gpt-4o-mini.jsonl")) == 60
    assert mock.stats()["per_model"] == {"gpt-4o-mini": 60}
    assert 1 <= mock.stats()["outcomes"]["404"] <= FEW
    # And the summary names the unknown model, on screen and in the summary file
    assert "not sent: model gpt-nope is unknown at" in proc.stdout, proc.stdout
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert list(summary["unknown_models"]) == ["gpt-nope"]


def test_a_missing_azure_deployment_stops_its_model_and_the_others_go_on(
        tmp_path: Path, mock: MockServerProcess):
    # Given an endpoints table: gpt-4o on an Azure deployment that does not exist, gpt-4o-mini on a
    # plain endpoint
    mock.configure(azure_deployments={"gpt4o-east": "gpt-4o"})
    root = mock.base_url.removesuffix("/v1")
    (tmp_path / "endpoints.toml").write_text(f'''[[endpoints]]
model = "gpt-4o"
provider = "azure"
base_url = "{root}"
deployment = "gpt4o-west"
api_version = "2024-10-21"
api_key_env = "AZURE_KEY"

[[endpoints]]
model = "gpt-4o-mini"
base_url = "{mock.base_url}"
api_key_env = "PLAIN_KEY"
''')
    azure_key = "azure-key-00000000000000east"
    keys = {"AZURE_KEY": azure_key, "PLAIN_KEY": FAKE_KEY}
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(60))
    args = ("-i", "tasks.jsonl", "-o", "out.jsonl", "--endpoints", "endpoints.toml", "-p", "2",
            "-c", "4")
    # When both models run
    both = run_cli(*args, "--model", "gpt-4o,gpt-4o-mini", cwd=tmp_path, env=keys)
    # Then gpt-4o-mini's tasks are answered and the deployment is named, its key is not
    assert both.returncode == 1, both.stdout + both.stderr
    assert len(read_jsonl(tmp_path / "out.gpt-4o-mini.jsonl")) == 60
    assert "model gpt-4o is unknown at deployment gpt4o-west" in both.stdout, both.stdout
    assert azure_key not in both.stdout + both.stderr
    # And gpt-4o alone stops the run at once, with exit 5
    alone = run_cli(*args, "--model", "gpt-4o", "-o", "alone.jsonl", cwd=tmp_path, env=keys)
    assert alone.returncode == 5, alone.stdout + alone.stderr
    assert "stopped: aborted: model gpt-4o is unknown at deployment gpt4o-west" in alone.stdout
    failures = read_jsonl(tmp_path / "alone.jsonl.errors.jsonl")
    assert {f["error_type"] for f in failures} == {"unknown_model"} and len(failures) < 60
