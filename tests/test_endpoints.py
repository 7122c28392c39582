"""Endpoints over real HTTP: one model spread over an Azure-shaped endpoint and a plain one.

Each has its own key and limits; Azure is reached through its deployment path, api-version and
api-key; the model is checked against the requested model, never the deployment; per-model --rpm;
a table's mistakes are ConfigErrors.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import read_jsonl, run_cli, text_tasks, write_tasks

import mpinfer
from mpinfer.mockserver import MockServerProcess

AZURE_KEY = "azure-key-0000000000000east"
PLAIN_KEY = "plain-key-0000000000000west"
KEYS = {"AZURE_KEY_EAST": AZURE_KEY, "OPENAI_KEY_WEST": PLAIN_KEY}


def _azure(mock: MockServerProcess, deployment: str = "gpt4o-east") -> str:
    """The table entry of gpt-4o on the mock as an Azure endpoint (key from AZURE_KEY_EAST)."""
    root = mock.base_url.removesuffix("/v1")
    return f'''[[endpoints]]
model = "gpt-4o"
provider = "azure"
base_url = "{root}"
deployment = "{deployment}"
api_version = "2024-10-21"
api_key_env = "AZURE_KEY_EAST"
'''


def _table(mock: MockServerProcess, path: Path, azure_rpm: int = 6000,
           plain_rpm: int = 6000) -> Path:
    path.write_text(f'''
{_azure(mock)}rpm = {azure_rpm}

[[endpoints]]
model = "gpt-4o"
base_url = "{mock.base_url}"
api_key_env = "OPENAI_KEY_WEST"
rpm = {plain_rpm}
''')
    return path


def test_one_model_over_an_azure_and_a_plain_endpoint_validates_clean(mock: MockServerProcess,
                                                                       tmp_path: Path) -> None:
    # Given an Azure deployment of gpt-4o (answering as its dated snapshot) and a plain endpoint,
    # each with a key
    mock.configure(azure_deployments={"gpt4o-east": "gpt-4o-2024-08-06"}, latency_ms=20)
    table = _table(mock, tmp_path / "endpoints.toml")
    tasks = write_tasks(tmp_path / "tasks.jsonl", text_tasks(40))
    out = tmp_path / "out.jsonl"
    # When the tasks run over the table
    done = run_cli("-i", str(tasks), "-o", str(out), "--model", "gpt-4o", "--endpoints", str(table),
                   "-p", "2", "-c", "4", cwd=tmp_path, env=KEYS)
    # Then every task is answered once, and both endpoints took a share
    assert done.returncode == 0, done.stderr
    lines = read_jsonl(out)
    assert sorted(line["id"] for line in lines) == sorted(f"t{i}" for i in range(40))
    per_key = mock.stats()["per_key"]
    assert per_key.get(AZURE_KEY[-4:], 0) >= 5 and per_key.get(PLAIN_KEY[-4:], 0) >= 5, per_key
    assert per_key[AZURE_KEY[-4:]] + per_key[PLAIN_KEY[-4:]] == 40
    # And the Azure answers name the deployment's model, which is the requested model's snapshot: no
    # mismatch
    assert {line["model"] for line in lines} == {"gpt-4o", "gpt-4o-2024-08-06"}
    assert {line["requested_model"] for line in lines} == {"gpt-4o"}
    checked = run_cli("-i", str(tasks), "-o", str(out), "--model", "gpt-4o", "--validate",
                      cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout
    # And the summary names each endpoint by its model and the key's last four characters
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert set(summary["per_key"]) == {"gpt-4o ...east", "gpt-4o ...west"}
    # And no key is in any file the run wrote (output, errors, summary, manifest, log); the manifest
    # names each endpoint by its key's variable
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert AZURE_KEY not in text and PLAIN_KEY not in text, path
    manifest = (tmp_path / "out.jsonl.runs.jsonl").read_text()
    assert '"api_key_env":"AZURE_KEY_EAST"' in manifest


def test_each_endpoint_keeps_its_own_rate_limit(mock: MockServerProcess, tmp_path: Path) -> None:
    # Given a slow Azure endpoint (30 a minute) and a fast plain one, for one model
    mock.configure(azure_deployments={"gpt4o-east": "gpt-4o"})
    table = _table(mock, tmp_path / "endpoints.toml", azure_rpm=30, plain_rpm=6000)
    tasks = write_tasks(tmp_path / "tasks.jsonl", text_tasks(30))
    # When 30 tasks run (a few seconds)
    done = run_cli("-i", str(tasks), "-o", str(tmp_path / "out.jsonl"), "--model", "gpt-4o",
                   "--endpoints", str(table), "-c", "4", cwd=tmp_path, env=KEYS)
    # Then the slow endpoint took no more than its pace allowed; the fast one took the rest
    assert done.returncode == 0, done.stderr
    per_key = mock.stats()["per_key"]
    assert per_key.get(AZURE_KEY[-4:], 0) <= 6, per_key
    assert per_key[PLAIN_KEY[-4:]] >= 24


def test_azure_requests_use_the_deployment_path_api_version_and_api_key(mock: MockServerProcess,
                                                                         tmp_path: Path) -> None:
    # Given only an Azure endpoint whose api_version the mock requires, and a deployment it does not
    # have
    mock.configure(azure_deployments={"gpt4o-east": "gpt-4o"})
    table = tmp_path / "endpoints.toml"
    table.write_text(_azure(mock, "no-such-deployment"))
    tasks = write_tasks(tmp_path / "tasks.jsonl", text_tasks(1))
    # When it runs
    done = run_cli("-i", str(tasks), "-o", str(tmp_path / "out.jsonl"), "--model", "gpt-4o",
                   "--endpoints", str(table), cwd=tmp_path, env=KEYS)
    # Then Azure's 404 DeploymentNotFound fails the task, naming the endpoint but never its key, and
    # stops the run (no other model can go on: exit 5)
    assert done.returncode == 5
    [failure] = read_jsonl(tmp_path / "out.jsonl.errors.jsonl")
    assert failure["status"] == 404 and failure["message"].startswith("gpt-4o ...east: ")
    assert AZURE_KEY not in (tmp_path / "out.jsonl.errors.jsonl").read_text()
    # When the deployment is right, it is answered (the path, the query and the api-key header were
    # right)
    table.write_text(table.read_text().replace("no-such-deployment", "gpt4o-east"))
    again = run_cli("-i", str(tasks), "-o", str(tmp_path / "out.jsonl"), "--model", "gpt-4o",
                    "--endpoints", str(table), cwd=tmp_path, env=KEYS)
    assert again.returncode == 0, again.stderr
    assert read_jsonl(tmp_path / "out.jsonl")[0]["answer"].startswith("Mock answer to:")


def test_per_model_rpm_paces_each_model_on_its_own(mock: MockServerProcess, tmp_path: Path) -> None:
    # Given two models, one limited to 60 a minute and one to 6000
    tasks = write_tasks(tmp_path / "tasks.jsonl", text_tasks(5))
    # When both run with --rpm per model
    started = time.monotonic()
    done = run_cli("-i", str(tasks), "-o", str(tmp_path / "out.jsonl"), "--model",
                   "gpt-4o,gpt-4o-mini", "--rpm", "gpt-4o=60,gpt-4o-mini=6000", "--base-url",
                   mock.base_url, "-c", "4", cwd=tmp_path, timeout=60)
    # Then all are done, gpt-4o at its pace of one a second (4 intervals at least: never faster)
    assert done.returncode == 0, done.stderr
    assert mock.stats()["per_model"] == {"gpt-4o": 5, "gpt-4o-mini": 5}
    assert time.monotonic() - started >= 4 * 1.0 * 0.95


def test_a_table_that_names_an_unset_variable_or_an_unknown_field_is_refused(
    tmp_path: Path,
) -> None:
    # Given a table whose key variable is not set, then one with a misspelt field
    tasks = write_tasks(tmp_path / "tasks.jsonl", text_tasks(1))
    table = tmp_path / "endpoints.toml"
    table.write_text('[[endpoints]]\nmodel = "gpt-4o"\napi_key_env = "NOT_SET_ANYWHERE"\n')
    unset = run_cli("-i", str(tasks), "-o", str(tmp_path / "o.jsonl"), "--endpoints", str(table),
                    cwd=tmp_path)
    # (--status needs no key: it works without the variable)
    status = run_cli("-i", str(tasks), "-o", str(tmp_path / "o.jsonl"), "--endpoints", str(table),
                     "--status", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    table.write_text(
        '[[endpoints]]\nmodel = "gpt-4o"\napi_key_env = "AZURE_KEY_EAST"\ndeploymnet = "x"\n')
    typo = run_cli("-i", str(tasks), "-o", str(tmp_path / "o.jsonl"), "--endpoints", str(table),
                   cwd=tmp_path, env=KEYS)
    # Then both stop with exit 2 and say what is wrong
    assert unset.returncode == 2
    assert "the endpoints table's keys are not set: NOT_SET_ANYWHERE" in unset.stderr
    assert typo.returncode == 2 and "unknown field 'deploymnet'" in typo.stderr


def test_mpinfer_run_reads_an_endpoints_table_with_its_keys(
    mock: MockServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an endpoints file and its key variables in the environment of a Python caller
    for name, key in KEYS.items():
        monkeypatch.setenv(name, key)
    mock.configure(azure_deployments={"gpt4o-east": "gpt-4o"})
    table = _table(mock, tmp_path / "endpoints.toml")
    tasks = write_tasks(tmp_path / "tasks.jsonl", text_tasks(6))
    # When mpinfer.run is given the table
    result = mpinfer.run(input=tasks, output=tmp_path / "out.jsonl", model="gpt-4o",
                         endpoints=table, log_dir=tmp_path / "logs", progress=False)
    # Then the tasks went to the table's endpoints, with its keys
    assert result.summary.done == 6
    assert set(mock.stats()["per_key"]) <= {AZURE_KEY[-4:], PLAIN_KEY[-4:]}


def test_a_model_whose_every_endpoint_is_rejected_fails_while_the_others_go_on(
    mock: MockServerProcess, tmp_path: Path,
) -> None:
    # Given gpt-4o on an Azure endpoint whose key the server rejects, and gpt-4o-mini on a plain one
    mock.configure(azure_deployments={"gpt4o-east": "gpt-4o"}, revoke_keys=[AZURE_KEY])
    table = tmp_path / "endpoints.toml"
    table.write_text(f'''{_azure(mock)}
[[endpoints]]
model = "gpt-4o-mini"
base_url = "{mock.base_url}"
api_key_env = "OPENAI_KEY_WEST"
''')
    tasks = write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    try:
        # When both models run
        done = run_cli("-i", str(tasks), "-o", str(tmp_path / "out.jsonl"), "--model",
                       "gpt-4o,gpt-4o-mini", "--endpoints", str(table), cwd=tmp_path, env=KEYS)
    finally:
        mock.configure(unrevoke_keys=[AZURE_KEY])
    # Then gpt-4o-mini answered all three, gpt-4o's tasks failed as no_endpoint, and the run was not
    # aborted
    assert done.returncode == 1, done.stderr
    assert len(read_jsonl(tmp_path / "out.gpt-4o-mini.jsonl")) == 3
    failures = read_jsonl(tmp_path / "out.gpt-4o.jsonl.errors.jsonl")
    assert sorted(f["id"] for f in failures) == ["t0", "t1", "t2"]
    assert {f["error_type"] for f in failures} == {"no_endpoint"}


def test_endpoints_tables_in_mpinfer_toml_are_the_table(mock: MockServerProcess,
                                                        tmp_path: Path) -> None:
    # Given [[endpoints]] in the working folder's mpinfer.toml, beside another setting
    mock.configure(azure_deployments={"gpt4o-east": "gpt-4o"})
    _table(mock, tmp_path / "endpoints.toml")
    (tmp_path / "mpinfer.toml").write_text(
        'model = "gpt-4o"\n' + (tmp_path / "endpoints.toml").read_text())
    tasks = write_tasks(tmp_path / "tasks.jsonl", text_tasks(4))
    # When a run starts without --endpoints
    done = run_cli("-i", str(tasks), "-o", str(tmp_path / "out.jsonl"), cwd=tmp_path, env=KEYS)
    # Then the table's endpoints took the tasks, with their keys
    assert done.returncode == 0, done.stderr
    assert set(mock.stats()["per_key"]) <= {AZURE_KEY[-4:], PLAIN_KEY[-4:]}
    assert sum(mock.stats()["per_key"].values()) == 4
