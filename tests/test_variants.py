"""Prompt variants (--variants FILE): every task once per variant and model, each in its own output.

The real command line runs in its own process against the mock server over HTTP: the server's
counts (per prompt, per model) and recorded bodies tell what was sent; the outputs, --status and
--validate tell what was kept.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ids_on_disk, read_jsonl, run_cli, start_cli, wait_workers_gone, write_tasks

from mpinfer.config import RunConfig
from mpinfer.errors import ConfigError
from mpinfer.inputs import prompt_forms
from mpinfer.mockserver import MockServerProcess

VARIANTS = """
[[variants]]
name = "base"
template = "Q: {question}"

[[variants]]
name = "cot"
template = "Think step by step. Q: {question}"
system = "You answer about {topic}."
temperature = 0.7
max_tokens = 64
"""
MODELS = "m-small,m-large"
N = 3


@pytest.fixture
def recording(mock: MockServerProcess) -> Iterator[MockServerProcess]:
    """The mock server keeping each prompt's last request body; off again afterwards."""
    mock.configure(record_bodies=True)
    yield mock
    mock.configure(record_bodies=False)


def _setup(tmp_path: Path, n: int = N, variants: str = VARIANTS) -> None:
    write_tasks(tmp_path / "tasks.jsonl", [{"id": f"t{i}", "question": f"what is {i}?",
                                            "topic": "sums"} for i in range(n)])
    (tmp_path / "variants.toml").write_text(variants)


def _args(mock: MockServerProcess, *extra: str) -> tuple[str, ...]:
    return ("-i", "tasks.jsonl", "-o", "out/results.jsonl", "--variants", "variants.toml",
            "--model", MODELS, "--base-url", mock.base_url, "--retry-backoff", "0.05",
            "--timeout", "5", *extra)


def _outputs(tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "out"
    return {f"{v}.{m}": out / f"results.{v}.{m}.jsonl"
            for v in ("base", "cot") for m in ("m-small", "m-large")}


def test_two_variants_and_two_models_give_four_outputs_each_asked_as_its_variant_says(
        tmp_path: Path, recording: MockServerProcess) -> None:
    # Given 3 tasks, two variants (one with its own system, temperature and max_tokens), two models
    _setup(tmp_path)
    # When the run goes
    proc = run_cli(*_args(recording, "-p", "1", "-c", "4"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # Then there are four outputs, each with every task once, each line naming its variant
    outputs = _outputs(tmp_path)
    for name, path in outputs.items():
        lines = read_jsonl(path)
        assert sorted(line["id"] for line in lines) == ["t0", "t1", "t2"], name
        variant, model = name.split(".")
        assert {(line["variant"], line["requested_model"]) for line in lines} == {(variant, model)}
    # And the server got each variant's prompt once per model, with the variant's settings
    stats = recording.stats()
    assert stats["per_model"] == {"m-small": 2 * N, "m-large": 2 * N}
    assert stats["received"] == {**{f"Q: what is {i}?": 2 for i in range(N)},
                                 **{f"Think step by step. Q: what is {i}?": 2 for i in range(N)}}
    base = stats["bodies"]["Q: what is 0?"]
    assert "temperature" not in base and "max_tokens" not in base
    assert [m["role"] for m in base["messages"]] == ["user"]
    cot = stats["bodies"]["Think step by step. Q: what is 0?"]
    assert (cot["temperature"], cot["max_tokens"]) == (0.7, 64)
    assert cot["messages"][0] == {"role": "system", "content": "You answer about sums."}
    cot_line = next(line for line in read_jsonl(outputs["cot.m-large"]) if line["id"] == "t1")
    assert cot_line["input_prompt"] == "Think step by step. Q: what is 1?"

    # When it runs again
    again = run_cli(*_args(recording, "-p", "1"), cwd=tmp_path)
    # Then nothing is sent
    assert again.returncode == 0, again.stderr
    assert recording.stats()["requests"] == 4 * N

    # And --status and --validate, given the same flags, cover all four outputs
    status = run_cli(*_args(recording, "--status", "--json"), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert (report["total"], report["done"], report["pending"]) == (4 * N, 4 * N, 0)
    assert sorted(Path(part["output"]).name for part in report["models"]) == sorted(
        path.name for path in outputs.values())
    validate = run_cli(*_args(recording, "--validate", "--json"), cwd=tmp_path)
    assert validate.returncode == 0, validate.stderr
    checked = json.loads(validate.stdout)
    checked = checked if isinstance(checked, list) else checked["outputs"]
    assert sorted(Path(r["output"]).name for r in checked) == sorted(
        path.name for path in outputs.values())
    assert all(r["ok"] and r["records"] == N for r in checked)
    # And --status --by groups each (variant, model) apart
    grouped = run_cli(*_args(recording, "--status", "--json", "--by", "topic"), cwd=tmp_path)
    assert grouped.returncode == 0, grouped.stderr
    groups = json.loads(grouped.stdout)["groups"]
    assert sorted((g["variant"], g["model"], g["value"], g["answered"]) for g in groups) == sorted(
        (v, m, "sums", N) for v in ("base", "cot") for m in ("m-small", "m-large"))
    # And --export writes one row per task, variant and model, --dry-run finds nothing to send
    export = run_cli(*_args(recording, "--export", "table.jsonl"), cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    rows = read_jsonl(tmp_path / "table.jsonl")
    assert Counter((r["id"], r["variant"], r["run_model"], r["status"]) for r in rows) == Counter(
        (f"t{i}", v, m, "ok") for i in range(N) for v in ("base", "cot")
        for m in ("m-small", "m-large"))
    dry = run_cli(*_args(recording, "--dry-run", "--json"), cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert sorted(Path(row["output"]).name for row in plan["rows"]) == sorted(
        path.name for path in outputs.values())
    assert all((row["done"], row["pending"]) == (N, 0) for row in plan["rows"])


def test_a_variant_run_killed_mid_run_and_rerun_answers_each_task_variant_and_model_once(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given 40 tasks x 2 variants x 2 models and a server that takes a while
    _setup(tmp_path, n=40)
    mock.configure(latency_ms=40, jitter_ms=20)
    args = _args(mock, "-p", "2", "-c", "4")
    outputs = _outputs(tmp_path)
    # When the run is killed with SIGKILL once some answers are written
    proc = start_cli(*args, cwd=tmp_path)
    deadline = time.monotonic() + 30
    while (sum(len(ids_on_disk(p)) for p in outputs.values()) < 30
           and time.monotonic() < deadline and proc.poll() is None):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    wait_workers_gone(tmp_path / "out" / "results.base.m-small.jsonl")
    assert sum(len(ids_on_disk(p)) for p in outputs.values()) < 4 * 40, "killed too late"
    # And run again to the end
    final = run_cli(*args, cwd=tmp_path)
    # Then every output holds each task exactly once
    assert final.returncode == 0, final.stderr
    for name, path in outputs.items():
        assert Counter(ids_on_disk(path)) == Counter(f"t{i}" for i in range(40)), name


def test_a_changed_variant_template_on_resume_is_refused_as_a_settings_change(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given a finished variant run
    _setup(tmp_path, n=1)
    assert run_cli(*_args(mock, "-p", "1"), cwd=tmp_path).returncode == 0
    # When a variant's template changes and the run is resumed
    (tmp_path / "variants.toml").write_text(VARIANTS.replace("Think step by step", "Reason"))
    proc = run_cli(*_args(mock, "-p", "1"), cwd=tmp_path)
    # Then it is refused before any request, naming the change
    assert proc.returncode == 2, proc.stderr
    assert "variant" in proc.stderr and "--allow-mixed" in proc.stderr
    assert mock.stats()["requests"] == 4


def test_a_variants_file_with_a_duplicate_name_stops_the_run_before_any_request(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given a variants file whose second table repeats the first one's name
    _setup(tmp_path, variants=VARIANTS.replace('"cot"', '"base"'))
    # When it runs
    proc = run_cli(*_args(mock), cwd=tmp_path)
    # Then it stops with exit 2, naming the file and the table, having sent nothing
    assert proc.returncode == 2, proc.stderr
    assert "variants.toml: [[variants]] #2 'base': duplicate variant name" in proc.stderr
    assert mock.stats()["requests"] == 0


def test_a_template_naming_a_field_a_row_lacks_stops_a_variant_run_with_file_and_line(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given a variant whose system template names a field row 3 lacks
    _setup(tmp_path)
    rows = read_jsonl(tmp_path / "tasks.jsonl")
    del rows[2]["topic"]
    write_tasks(tmp_path / "tasks.jsonl", rows)
    # When it runs
    proc = run_cli(*_args(mock), cwd=tmp_path)
    # Then it stops before any request, naming the file, the line and the field
    assert proc.returncode == 2, proc.stderr
    assert "tasks.jsonl:3:" in proc.stderr and "'topic'" in proc.stderr
    assert mock.stats()["requests"] == 0


@pytest.mark.parametrize("table, message", [
    ('name = "a"', "#1 'a': no template"),
    ('template = "{q}"', "#1: no name"),
    ('name = "../up"\ntemplate = "{q}"', "#1 '../up': the name must be"),
    ('name = "a"\ntemplate = "{q}"\ntemprature = 0', "#1 'a': unknown key 'temprature'"),
    ('name = "a"\ntemplate = "{q"', "#1 'a': template: unbalanced brace"),
])
def test_each_mistake_in_a_variants_file_is_named_by_file_and_table(
        tmp_path: Path, table: str, message: str) -> None:
    # Given a variants file with one mistake
    path = tmp_path / "variants.toml"
    path.write_text(f"[[variants]]\n{table}\n")
    # When it is read, and its templates parsed as a run would
    with pytest.raises(ConfigError) as raised:
        prompt_forms(RunConfig(variants=path))
    # Then the error names the file and the table
    assert f"{path}: [[variants]] {message}" in str(raised.value)


def test_a_judge_judges_each_variants_output_into_its_own_judge_output(
        tmp_path: Path, mock: MockServerProcess) -> None:
    # Given two variants, one model and a judge over the answer and the prompt that was sent
    _setup(tmp_path, n=2)
    (tmp_path / "judge.toml").write_text('model = "judge-model"\n'
                                         'template = "Safe? {prompt} -> {answer}"\n'
                                         'labels = ["safe", "unsafe"]\n')
    mock.configure(answer_labels=["safe", "unsafe"])
    # When the run goes with --judge
    proc = run_cli("-i", "tasks.jsonl", "-o", "out/results.jsonl", "--variants", "variants.toml",
                   "--model", "m-small", "--judge", "judge.toml", "--base-url", mock.base_url,
                   "-p", "1", cwd=tmp_path)
    # Then each variant's output has its answers and its own judge output, one line per id
    assert proc.returncode == 0, proc.stderr
    for variant in ("base", "cot"):
        answers = tmp_path / "out" / f"results.{variant}.jsonl"
        assert sorted(ids_on_disk(answers)) == ["t0", "t1"]
        judged = read_jsonl(tmp_path / "out" / f"results.{variant}.judge.jsonl")
        assert sorted(line["id"] for line in judged) == ["t0", "t1"]
        assert {line["judge_model"] for line in judged} == {"judge-model"}
    # And the judge saw each variant's own prompt, as it was sent (2 answers + 2 judgments each)
    assert mock.stats()["per_model"] == {"m-small": 4, "judge-model": 4}
    received = mock.stats()["received"]
    assert received.get("Safe? Think step by step. Q: what is 0? -> " + _answer_of(
        tmp_path / "out" / "results.cot.jsonl", "t0")) == 1


def _answer_of(path: Path, task_id: str) -> str:
    return next(str(line["answer"]) for line in read_jsonl(path) if line["id"] == task_id)
