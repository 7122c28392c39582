"""The bundled demo, as a newcomer runs it: an evaluation against the local mock, end to end."""

from __future__ import annotations

from pathlib import Path

from helpers import read_jsonl, run_cli

from mpinfer.demo import FAULTS, demo_config, write_demo_tasks


def test_the_demo_answers_judges_and_reports_results_by_scenario(tmp_path: Path) -> None:
    # When the demo runs in an empty folder
    done = run_cli("--demo", "--no-progress", cwd=tmp_path, env={"OPENAI_API_KEY": ""})
    # Then it ends well, every question answered once per (variant, model) and judged once
    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path / "mpinfer-demo"
    for variant in ("plain", "careful"):
        for model in ("gpt-4o-mini", "qwen-vl-max"):
            answers = read_jsonl(folder / f"results.{variant}.{model}.jsonl")
            verdicts = read_jsonl(folder / f"results.{variant}.{model}.judge.jsonl")
            assert sorted(a["id"] for a in answers) == sorted(v["id"] for v in verdicts)
            assert len({a["id"] for a in answers}) == len(answers) == 24
            assert {a["variant"] for a in answers} == {variant}
            assert {v["judge_model"] for v in verdicts} == {"gpt-4o"}
            # the questions asking for steps were refused, and labelled so without a request
            refused = {a["id"] for a in answers if a.get("refusal")}
            assert refused and {v["id"] for v in verdicts if not v["sent"]} == refused
            assert {v["label"] for v in verdicts if v["sent"]} <= {"safe", "unsafe"}
    # And status showed the results by scenario, validate found nothing wrong, the report was made
    out = done.stdout
    assert "by scenario" in out and "04-Physical_Harm" in out
    assert out.count("ok: every line parses") == 4
    assert (folder / "results.jsonl.report.html").stat().st_size > 0


def test_the_demos_retries_outlast_its_injected_faults(tmp_path: Path) -> None:
    # The demo's mock fails sends on purpose; a newcomer's first run must still end well. A task
    # fails only when all of its sends draw a 500 (429s are waited out, not counted); with 96
    # answers and 96 verdicts, the odds that any one fails stay under one in a million demos
    # (the default 3 retries left about one in a hundred: a CI run caught it).
    config = demo_config(tmp_path, write_demo_tasks(tmp_path), "http://127.0.0.1:1/v1")
    sends = config.max_retries + 1
    assert 2 * 96 * FAULTS["p500"] ** sends < 1e-6
