"""Structured answers over real HTTP: --labels and --json-schema kept on the line, a bad answer
asked again then failed with what it cost, a refusal kept as it is, bad rules refused up front."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from helpers import read_jsonl, run_cli, write_tasks

from mpinfer.api.failures import Verdict, classify
from mpinfer.api.retry import Attempts, decide
from mpinfer.api.structured import AnswerRule, Mismatch, Parsed, check
from mpinfer.errors import BadAnswer
from mpinfer.mockserver import MockServerProcess
from mpinfer.slices import RetryPolicy

REFUSE = "[refuse]"
SCHEMA: dict[str, Any] = {
    "title": "verdict", "type": "object", "additionalProperties": False,
    "required": ["label", "reason", "score"],
    "properties": {"label": {"type": "string", "enum": ["safe", "unsafe"]},
                   "reason": {"type": "string"},
                   "score": {"type": "integer", "minimum": 1}},
}
PRICES = ("--price-input", "1", "--price-output", "2")


def _run(mock: MockServerProcess, tmp_path: Path, n: int, *extra: str,
         prompts: list[str] | None = None) -> tuple[Path, Any]:
    texts = prompts or [f"Is answer {i} safe?" for i in range(n)]
    tasks = write_tasks(tmp_path / "tasks.jsonl",
                        [{"id": f"t{i}", "prompt": text} for i, text in enumerate(texts)])
    out = tmp_path / "results.jsonl"
    done = run_cli("-i", str(tasks), "-o", str(out), "-p", "1", "-c", "4", "--base-url",
                   mock.base_url, *extra, cwd=tmp_path)
    return out, done


def test_the_label_an_answer_names_is_kept_on_its_line(mock: MockServerProcess,
                                                       tmp_path: Path) -> None:
    # Given a server that answers naming one of two labels
    mock.configure(answer_labels=["safe", "unsafe"])
    # When the tasks run with --labels
    out, done = _run(mock, tmp_path, 6, "--labels", "safe,unsafe")
    # Then every line holds the label its answer named, and nothing was asked twice
    assert done.returncode == 0, done.stderr
    lines = read_jsonl(out)
    assert len(lines) == 6
    for line in lines:
        assert line["label"] in ("safe", "unsafe")
        assert f"Verdict: {line['label']}." == line["answer"]
    assert sum(mock.stats()["received"].values()) == 6


def test_a_bad_answer_is_asked_again_then_failed_with_its_text_and_cost(
        mock: MockServerProcess, tmp_path: Path) -> None:
    # Given a server whose every answer names no label
    mock.configure(answer_labels=["safe", "unsafe"], pbad_answer=1.0)
    # When two tasks run with --labels and one retry allowed
    out, done = _run(mock, tmp_path, 2, "--labels", "safe,unsafe", "--max-retries", "1", *PRICES)
    # Then each was asked twice and failed as bad_answer, its last text and both answers'
    # tokens and cost in the errors file
    assert done.returncode == 1
    assert sorted(mock.stats()["received"].values()) == [2, 2]
    failures = read_jsonl(tmp_path / "results.jsonl.errors.jsonl")
    assert len(failures) == 2
    for failure in failures:
        assert failure["error_type"] == "bad_answer"
        assert failure["attempts"] == 2
        assert failure["text"] == "I cannot tell from what is given."
        assert failure["usage"]["completion_tokens"] == 2 * 9  # two answers of 9 tokens each
        assert failure["cost"] > 0
    assert not out.exists() or read_jsonl(out) == []
    # And the status counts what they cost
    status = run_cli("--status", "--json", "-i", str(tmp_path / "tasks.jsonl"), "-o", str(out),
                     *PRICES, cwd=tmp_path)
    report = json.loads(status.stdout)
    assert abs(report["cost"] - sum(f["cost"] for f in failures)) < 1e-6


def test_an_answer_asked_again_may_come_back_good(mock: MockServerProcess,
                                                  tmp_path: Path) -> None:
    # Given a server whose answers are malformed half the time (drawn per prompt and attempt)
    mock.configure(answer_labels=["yes", "no"], pbad_answer=0.5)
    # When eight tasks run with enough retries
    out, done = _run(mock, tmp_path, 8, "--labels", "yes,no", "--max-retries", "8")
    # Then every task is answered with a label, and the re-asks are counted on the lines
    assert done.returncode == 0, done.stderr
    lines = read_jsonl(out)
    assert len(lines) == 8
    assert all(line["label"] in ("yes", "no") for line in lines)
    asked_again = sum(line["retries"].get("bad_answer", 0) for line in lines)
    assert asked_again > 0
    assert sum(mock.stats()["received"].values()) == 8 + asked_again


def test_schema_answers_are_asked_for_strictly_and_kept_parsed(mock: MockServerProcess,
                                                               tmp_path: Path) -> None:
    # Given a JSON Schema file
    schema = tmp_path / "verdict.json"
    schema.write_text(json.dumps(SCHEMA))
    mock.configure(record_bodies=True)
    # When the tasks run with --json-schema
    out, done = _run(mock, tmp_path, 3, "--json-schema", str(schema))
    # Then the request carried OpenAI's response_format, strict, named by the schema's title
    assert done.returncode == 0, done.stderr
    body = next(iter(mock.stats()["bodies"].values()))
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "verdict", "schema": SCHEMA, "strict": True}}
    # And each line holds the object parsed, and its label
    lines = read_jsonl(out)
    assert len(lines) == 3
    for line in lines:
        assert line["parsed"] == json.loads(line["answer"])
        assert set(line["parsed"]) == {"label", "reason", "score"}
        assert line["label"] == line["parsed"]["label"]


def test_a_refusal_is_kept_as_a_refusal_not_asked_again(mock: MockServerProcess,
                                                        tmp_path: Path) -> None:
    # Given a server that refuses one prompt and labels the other
    mock.configure(answer_labels=["safe", "unsafe"], refuse_marker=REFUSE)
    # When both run with --labels
    out, done = _run(mock, tmp_path, 2, "--labels", "safe,unsafe",
                     prompts=["Is this fine?", f"{REFUSE} Help me."])
    # Then the refusal is a done line without a label, sent once
    assert done.returncode == 0, done.stderr
    lines = {line["id"]: line for line in read_jsonl(out)}
    assert len(lines) == 2
    assert lines["t1"]["refusal"] and "label" not in lines["t1"]
    assert lines["t0"]["label"] in ("safe", "unsafe")
    assert sorted(mock.stats()["received"].values()) == [1, 1]


def test_a_bad_rule_is_refused_before_any_request(mock: MockServerProcess,
                                                  tmp_path: Path) -> None:
    # Given a file that is not JSON, one that is no JSON Schema, and a list of one label
    not_json = tmp_path / "broken.json"
    not_json.write_text("{not json")
    no_schema = tmp_path / "noschema.json"
    no_schema.write_text(json.dumps({"type": 12}))
    cases = [(("--json-schema", str(not_json)), "broken.json"),
             (("--json-schema", str(no_schema)), "noschema.json"),
             (("--labels", "only"), "--labels"),
             (("--labels", "a,b", "--json-schema", str(no_schema)), "--labels")]
    for flags, named in cases:
        # When a run is started with it
        _, done = _run(mock, tmp_path, 1, *flags)
        # Then it exits 2 naming the file (or the flag), and nothing was sent
        assert done.returncode == 2, (flags, done.stderr)
        assert named in done.stderr, done.stderr
    assert mock.stats()["received"] == {}


def test_the_label_rule_takes_whole_words_once() -> None:
    # Given the labels safe and unsafe
    rule = AnswerRule(labels=("safe", "unsafe"))
    # Then a whole word names a label, in any case, and two labels named are a mismatch
    assert check(rule, "The answer is UNSAFE.") == Parsed(label="unsafe")
    assert check(rule, "safe") == Parsed(label="safe")
    assert isinstance(check(rule, "safe, or maybe unsafe"), Mismatch)
    assert isinstance(check(rule, "safety first"), Mismatch)
    assert isinstance(check(rule, None), Mismatch)


def test_a_bad_answer_is_asked_again_at_once_until_the_retries_are_used() -> None:
    # Given a bad answer, as the failure table reads it, and a policy of two retries
    error = classify(BadAnswer("names no label"))
    policy = RetryPolicy(max_retries=2, backoff_s=5.0, patience_s=300.0)
    tries = Attempts()
    steps = []
    # When it keeps coming
    for _ in range(3):
        step = decide(error, tries, policy, random.Random(1), 0.0)
        steps.append(step)
        if step.verdict is Verdict.RETRY:
            tries.again(error, step)
    # Then it is a bad_answer, asked again twice without a wait, then failed
    assert error.error_type == "bad_answer"
    assert len(steps) == 3
    assert [(s.verdict, s.delay_s) for s in steps] == [
        (Verdict.RETRY, 0.0), (Verdict.RETRY, 0.0), (Verdict.FAIL, 0.0)]
    assert tries.by_type == {"bad_answer": 2}


def test_a_resume_with_other_labels_is_refused(mock: MockServerProcess, tmp_path: Path) -> None:
    # Given an output answered under --labels safe,unsafe, and a task added to the input since
    mock.configure(answer_labels=["safe", "unsafe"])
    _, first = _run(mock, tmp_path, 2, "--labels", "safe,unsafe")
    assert first.returncode == 0, first.stderr
    with (tmp_path / "tasks.jsonl").open("a") as tasks:
        tasks.write('{"id": "t9", "prompt": "Is this safe?"}\n')
    # When it is resumed with other labels
    again = run_cli("-i", "tasks.jsonl", "-o", "results.jsonl", "--base-url", mock.base_url,
                    "--labels", "yes,no", cwd=tmp_path)
    # Then it is refused, naming the setting, before any request
    assert again.returncode == 2, again.stderr
    assert "labels" in again.stderr
    assert sum(mock.stats()["received"].values()) == 2


def test_a_schema_strict_mode_refuses_fails_as_the_server_says(mock: MockServerProcess,
                                                                tmp_path: Path) -> None:
    # Given a JSON Schema whose object does not close its properties (additionalProperties)
    loose = {key: value for key, value in SCHEMA.items() if key != "additionalProperties"}
    schema = tmp_path / "loose.json"
    schema.write_text(json.dumps(loose))
    # When the tasks run with it (sent with strict: true, as OpenAI's structured outputs want)
    _, done = _run(mock, tmp_path, 2, "--json-schema", str(schema))
    # Then the server's 400 is each task's failure, its message saying why, asked once
    assert done.returncode == 1
    failures = read_jsonl(tmp_path / "results.jsonl.errors.jsonl")
    assert len(failures) == 2
    for failure in failures:
        assert (failure["error_type"], failure["status"]) == ("bad_request", 400)
        assert "'additionalProperties' is required to be supplied and to be false" in (
            failure["message"])
    assert mock.stats()["requests"] == 2
