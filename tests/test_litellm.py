"""Interoperability with a real third-party server: the LiteLLM proxy from PyPI.

A proxy (``litellm[proxy]``) with a ``mock_response`` model limited to 4 requests a minute.
LiteLLM's router counts a deployment's requests for 60 s from the first and refuses beyond the limit
with a 429 that names no wait ("No deployments available for selected model", no Retry-After in
1.108), so the fifth task of a run must wait out most of a minute: this test takes about 70 s,
nearly all of it asleep. Skipped where LiteLLM is not installed (``python3 dev.py test`` installs
it: the ``interop`` extra).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from helpers import litellm_proxy, needs_litellm, read_jsonl, run_cli, text_tasks, write_tasks

MASTER_KEY = "sk-mpinfer-litellm-interop-0000"
RPM = 4
TASKS = 5
# One mock_response model that LiteLLM's router lets through RPM times a minute.
LIMITED_CONFIG = ("model_list:\n"
                  "  - model_name: mock-gpt\n"
                  "    litellm_params:\n"
                  "      model: openai/mock-gpt\n"
                  "      mock_response: \"Hello from LiteLLM\"\n"
                  f"      rpm: {RPM}\n"
                  "router_settings:\n"
                  "  enable_pre_call_checks: true\n")

pytestmark = needs_litellm


def test_the_litellm_proxys_rate_limit_is_waited_out_in_one_run(tmp_path: Path) -> None:
    # Given a LiteLLM proxy whose mock_response model allows 4 requests a minute
    booting = time.monotonic()
    with litellm_proxy(tmp_path, LIMITED_CONFIG, MASTER_KEY) as base_url:
        started = time.monotonic()
        write_tasks(tmp_path / "tasks.jsonl", text_tasks(TASKS))
        # When 5 tasks run through it, with no retry allowed
        proc = run_cli("-i", "tasks.jsonl", "-o", "out.jsonl", "--base-url", base_url, "--model",
                       "mock-gpt", "-p", "1", "-c", "2", "--max-retries", "0", "--retry-backoff",
                       "0.5", cwd=tmp_path, env={"OPENAI_API_KEY": MASTER_KEY})
        print(f"litellm: booted in {started - booting:.1f}s, the run took "
              f"{time.monotonic() - started:.1f}s")
    # Then the run finished on its own: exit 0, every id once, LiteLLM's answers recorded, 429s
    # counted
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert Counter(r["id"] for r in rows) == Counter(f"t{i}" for i in range(TASKS))
    assert {r["answer"] for r in rows} == {"Hello from LiteLLM"}
    assert "429s 0" not in proc.stdout + proc.stderr
    assert MASTER_KEY not in proc.stdout + proc.stderr
