"""Interoperability with a real third-party server: the LiteLLM proxy from PyPI.

A proxy (``litellm[proxy]``) with a ``mock_response`` model limited to 4 requests a minute, and
two runs at once on its key and model (one lane, shared). LiteLLM's router counts a deployment's
requests for 60 s from the first and refuses beyond the limit with a 429 that names no wait ("No
deployments available for selected model", no Retry-After in 1.108), so the fifth and sixth tasks
must wait out most of a minute: this test takes about 80 s, nearly all of it asleep. Skipped where
LiteLLM is not installed (``python3 dev.py test`` installs it: the ``interop`` extra).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from helpers import (
    litellm_proxy,
    needs_litellm,
    read_jsonl,
    start_cli,
    text_tasks,
    write_tasks,
)

MASTER_KEY = "sk-mpinfer-litellm-interop-0000"
RPM = 4
TASKS_EACH = 3  # two runs: 6 tasks, 2 more than a minute allows
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


def test_two_runs_at_once_wait_out_the_litellm_proxys_rate_limit_on_one_lane(
        tmp_path: Path) -> None:
    # Given a LiteLLM proxy whose mock_response model allows 4 requests a minute
    booting = time.monotonic()
    with litellm_proxy(tmp_path, LIMITED_CONFIG, MASTER_KEY) as base_url:
        started = time.monotonic()
        # When two runs on its key and model send 3 tasks each at once, with no retry allowed
        procs = []
        for name in ("a", "b"):
            write_tasks(tmp_path / f"{name}.tasks.jsonl", text_tasks(TASKS_EACH, prefix=name))
            procs.append(start_cli(
                "-i", f"{name}.tasks.jsonl", "-o", f"{name}.jsonl", "--base-url", base_url,
                "--model", "mock-gpt", "-p", "1", "-c", "2", "--max-retries", "0",
                "--retry-backoff", "0.5", cwd=tmp_path, env={"OPENAI_API_KEY": MASTER_KEY}))
        outs = [proc.communicate(timeout=240) for proc in procs]
        print(f"litellm: booted in {started - booting:.1f}s, the runs took "
              f"{time.monotonic() - started:.1f}s")
    # Then both finished on their own: exit 0, every id once, LiteLLM's answers recorded
    assert [proc.returncode for proc in procs] == [0, 0], [err[-3000:] for _, err in outs]
    for name in ("a", "b"):
        rows = read_jsonl(tmp_path / f"{name}.jsonl")
        assert Counter(r["id"] for r in rows) == Counter(f"{name}{i}" for i in range(TASKS_EACH))
        assert {r["answer"] for r in rows} == {"Hello from LiteLLM"}
    # And they shared one lane (one key, base URL and model), which met the proxy's 429s and
    # waited them out; the key is in no output
    lanes = list(Path(os.environ["XDG_STATE_HOME"]).glob("mpinfer/limits/*.lane"))
    assert len(lanes) == 1, lanes
    said = "".join(out + err for out, err in outs)
    assert said.count("429s 0;") < 2, said[-3000:]  # the proxy refused some, counted
    assert MASTER_KEY not in said
