"""A judge (--judge FILE) over real HTTP: one judge line per answered id, by the judge's model,
refusals labelled without a request, a rerun sends nothing, a killed judging run resumes once,
and a bad judge file is refused before any request."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from helpers import ids_on_disk, read_jsonl, run_cli, start_cli, wait_workers_gone, write_tasks

from mpinfer.errors import ConfigError
from mpinfer.eval.judge import load_judge
from mpinfer.inputs import fields_named, render
from mpinfer.mockserver import MockServerProcess

REFUSE = "[refuse]"
FILTER = "[filter]"
JUDGE = """model = "judge-model"
template = "Is this answer to {prompt} safe? {answer} (topic {topic}, by {model})"
labels = ["safe", "unsafe"]
"""


def _tasks(tmp_path: Path, n: int, refused: int = 0, filtered: bool = False) -> Path:
    rows: list[dict[str, Any]] = [
        {"id": f"t{i}", "prompt": (f"{REFUSE} " if i < refused else "") + f"question {i}",
         "topic": f"topic{i % 2}", "m": "row-model"} for i in range(n)]
    if filtered:  # the last one's answer is stopped by the content filter
        rows[-1]["prompt"] = f"{FILTER} {rows[-1]['prompt']}"
    return write_tasks(tmp_path / "tasks.jsonl", rows)


def _judge(tmp_path: Path, text: str = JUDGE) -> Path:
    path = tmp_path / "judge.toml"
    path.write_text(text)
    return path


def _args(mock: MockServerProcess, *extra: str) -> tuple[str, ...]:
    return ("-i", "tasks.jsonl", "-o", "out.jsonl", "-p", "1", "-c", "4", "--base-url",
            mock.base_url, "--model", "answer-model", *extra)


def test_each_answer_is_judged_once_by_the_judge_model_and_a_rerun_sends_nothing(
        mock: MockServerProcess, tmp_path: Path) -> None:
    # Given five tasks that name their own model (--model-key), one of them refused and one
    # filtered, and a judge file naming another model, a template over the answer and a task
    # field, and two labels
    _tasks(tmp_path, 5, refused=1, filtered=True)
    _judge(tmp_path)
    mock.configure(refuse_marker=REFUSE, filter_answer_marker=FILTER,
                   answer_labels=["safe", "unsafe"], record_bodies=True)
    # When the run goes with --judge
    done = run_cli(*_args(mock, "--model-key", "m", "--judge", "judge.toml"), cwd=tmp_path)
    # Then the answers were asked of the row's model and the judgments of the judge's model only:
    # three (the refusal and the filtered answer are labelled without a request)
    assert done.returncode == 0, done.stderr
    assert mock.stats()["per_model"] == {"row-model": 5, "judge-model": 3}
    # And the judge output has one line per id, in EVAL.md's shape
    lines = {line["id"]: line for line in read_jsonl(tmp_path / "out.judge.jsonl")}
    assert ids_on_disk(tmp_path / "out.judge.jsonl").count("t0") == 1
    assert sorted(lines) == ["t0", "t1", "t2", "t3", "t4"]
    refused = lines["t0"]
    assert refused == {"id": "t0", "label": "refused", "text": None, "judge_model": "judge-model",
                       "of": "refusal", "usage": None, "cost": 0.0, "sent": False}
    assert (lines["t4"]["label"], lines["t4"]["of"], lines["t4"]["sent"]) == (
        "filtered", "filtered", False)
    for task_id in ("t1", "t2", "t3"):
        line = lines[task_id]
        assert line["label"] in ("safe", "unsafe")
        assert line["text"] == f"Verdict: {line['label']}."
        assert (line["judge_model"], line["of"], line["sent"]) == ("judge-model", "answer", True)
        assert line["usage"]["prompt_tokens"] > 0
    # And the judge was sent the template rendered over the answer, the prompt, the task's field
    # and the answering model, at temperature 0
    bodies = [b for b in mock.stats()["bodies"].values() if b["model"] == "judge-model"]
    assert len(bodies) == 3
    sent = {b["messages"][-1]["content"] for b in bodies}
    answers = {line["id"]: line for line in read_jsonl(tmp_path / "out.jsonl")}
    assert (f"Is this answer to question 1 safe? {answers['t1']['answer']} (topic topic1, by "
            "row-model)") in sent
    assert all(b["temperature"] == 0 for b in bodies)
    # When the same command runs again
    again = run_cli(*_args(mock, "--model-key", "m", "--judge", "judge.toml"), cwd=tmp_path)
    # Then nothing is sent, and the judge output is as it was
    assert again.returncode == 0, again.stderr
    assert sum(mock.stats()["per_model"].values()) == 8
    assert len(read_jsonl(tmp_path / "out.judge.jsonl")) == 5


def test_refusals_are_sent_when_the_judge_file_asks(mock: MockServerProcess,
                                                    tmp_path: Path) -> None:
    # Given a judge file that sends refusals, with its template naming the refusal
    _tasks(tmp_path, 2, refused=1)
    _judge(tmp_path, 'model = "judge-model"\ntemplate = "Judge: {answer}{refusal}"\n'
                     'labels = ["safe", "unsafe"]\nsend_refusals = true\n')
    mock.configure(refuse_marker=REFUSE, answer_labels=["safe", "unsafe"])
    # When the run goes
    done = run_cli(*_args(mock, "--judge", "judge.toml"), cwd=tmp_path)
    # Then the refusal was judged by a request too
    assert done.returncode == 0, done.stderr
    lines = {line["id"]: line for line in read_jsonl(tmp_path / "out.judge.jsonl")}
    assert len(lines) == 2
    assert (lines["t0"]["of"], lines["t0"]["sent"]) == ("refusal", True)
    assert lines["t0"]["label"] in ("safe", "unsafe")
    assert mock.stats()["per_model"]["judge-model"] == 2


def test_a_judge_with_a_schema_judges_each_models_answers(mock: MockServerProcess,
                                                          tmp_path: Path) -> None:
    # Given a judge file with a JSON Schema beside it (its path relative to the file)
    (tmp_path / "judges").mkdir()
    schema = {"type": "object", "additionalProperties": False, "required": ["label"],
              "properties": {"label": {"type": "string", "enum": ["ok", "bad"]}}}
    (tmp_path / "judges" / "verdict.json").write_text(json.dumps(schema))
    (tmp_path / "judges" / "judge.toml").write_text(
        'model = "judge-model"\ntemplate = "Judge: {answer}"\njson_schema = "verdict.json"\n')
    _tasks(tmp_path, 2)
    # When the run goes with two answering models
    done = run_cli(*_args(mock, "--model", "m1,m2", "--judge", "judges/judge.toml"),
                   cwd=tmp_path)
    # Then each model's answers output has its judge output, each line holding the object
    # parsed and its label
    assert done.returncode == 0, done.stderr
    for model in ("m1", "m2"):
        lines = read_jsonl(tmp_path / f"out.{model}.judge.jsonl")
        assert len(lines) == 2
        for line in lines:
            assert line["parsed"]["label"] in ("ok", "bad")
            assert line["label"] == line["parsed"]["label"]
    assert mock.stats()["per_model"] == {"m1": 2, "m2": 2, "judge-model": 4}


def test_a_bad_judge_file_is_refused_before_any_request(mock: MockServerProcess,
                                                        tmp_path: Path) -> None:
    # Given judge files without a model, without a template, naming a field no row has, with both
    # labels and a schema, with one label
    _tasks(tmp_path, 2)
    cases = {
        'template = "x {answer}"\nlabels = ["a", "b"]\n': "no model",
        'model = "j"\nlabels = ["a", "b"]\n': "no template",
        'model = "j"\ntemplate = "{answer} {nope}"\nlabels = ["a", "b"]\n': "tasks.jsonl:1",
    }
    for text, said in cases.items():
        (tmp_path / "judge.toml").write_text(text)
        # When a run is started with it
        done = run_cli(*_args(mock, "--judge", "judge.toml"), cwd=tmp_path)
        # Then it exits 2 saying what is wrong, and nothing was sent
        assert done.returncode == 2, (text, done.stderr)
        assert said in done.stderr, (text, done.stderr)
    assert mock.stats()["received"] == {}


def test_a_judge_file_that_is_no_judge_is_refused_naming_it(tmp_path: Path) -> None:
    # Given judge files with both labels and a schema, one label, a field with attribute access,
    # a key no judge file has
    cases = {
        'model = "j"\ntemplate = "{answer}"\nlabels = ["a", "b"]\njson_schema = "s.json"\n':
            "do not go together",
        'model = "j"\ntemplate = "{answer}"\nlabels = ["a"]\n': "labels",
        'model = "j"\ntemplate = "{answer.x}"\n': "not a field",
        'model = "j"\ntemplate = "{answer}"\nurl = "x"\n': "unknown key 'url'",
    }
    for text, said in cases.items():
        path = tmp_path / "judge.toml"
        path.write_text(text)
        # When it is read
        try:
            load_judge(path)
        except ConfigError as exc:
            # Then it is a settings error (exit 2) naming the file and what is wrong
            assert str(exc).startswith(f"{path}: ") and said in str(exc), str(exc)
        else:
            raise AssertionError(f"{text!r} was taken as a judge")


def test_a_judging_run_killed_mid_way_resumes_and_judges_each_answer_once(
        mock: MockServerProcess, tmp_path: Path) -> None:
    # Given twelve tasks answered already, and a judge that takes 150 ms an answer
    _tasks(tmp_path, 12)
    _judge(tmp_path)
    mock.configure(answer_labels=["safe", "unsafe"])
    first = run_cli(*_args(mock), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    mock.configure(latency_ms=150)
    judged = tmp_path / "out.judge.jsonl"
    # When the judged run is killed with SIGKILL once some judgments are written
    proc = start_cli(*_args(mock, "-c", "2", "--judge", "judge.toml"), cwd=tmp_path)
    deadline = time.monotonic() + 30
    while len(ids_on_disk(judged)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    wait_workers_gone(judged)
    before = len(ids_on_disk(judged))
    assert 3 <= before < 12
    # And the run is started again
    mock.configure(latency_ms=0)
    again = run_cli(*_args(mock, "--judge", "judge.toml"), cwd=tmp_path)
    # Then every answer is judged exactly once, no answer asked again, and only what was left (and
    # what was in flight at the kill) was sent
    assert again.returncode == 0, again.stderr
    assert Counter(ids_on_disk(judged)) == Counter(f"t{i}" for i in range(12))
    per_model = mock.stats()["per_model"]
    assert per_model["answer-model"] == 12
    assert 12 <= per_model["judge-model"] <= 12 + 2


def test_a_template_fills_fields_and_keeps_doubled_braces() -> None:
    # Given a template with fields and literal braces
    template = "{{\"q\": {prompt}}} -> {answer} {n} {none}"
    # Then it names its fields once each, in order, and renders text as it is, others as JSON
    assert fields_named(template + "{prompt}") == ("prompt", "answer", "n", "none")
    assert render(template, {"prompt": "hi", "answer": "yes", "n": 3, "none": None}) == (
        '{"q": hi} -> yes 3 ')
    # And attribute or index access, a conversion, a spec or a lone brace is no template
    for bad in ("{a.b}", "{a[0]}", "{a!r}", "{a:>3}", "{}", "{a", "a}"):
        try:
            fields_named(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was taken as a template")
    try:
        render("{missing}", {})
    except KeyError as exc:
        assert "missing" in str(exc)
    else:
        raise AssertionError("a missing field was rendered")


def test_the_judge_goes_where_its_file_says(mock: MockServerProcess, tmp_path: Path) -> None:
    # Given a judge file sending to a base URL with its own key, and one naming an entry of the
    # run's endpoints table (an entry is named by its model) with another key
    _tasks(tmp_path, 2)
    mock.configure(answer_labels=["safe", "unsafe"])
    (tmp_path / "own.toml").write_text(
        f'model = "judge-model"\ntemplate = "Judge: {{answer}}"\nlabels = ["safe", "unsafe"]\n'
        f'base_url = "{mock.base_url}"\napi_key_env = "JUDGE_KEY"\n')
    (tmp_path / "entry.toml").write_text(
        'model = "judge-model"\ntemplate = "Judge: {answer}"\nlabels = ["safe", "unsafe"]\n'
        'endpoint = "judges"\n')
    (tmp_path / "endpoints.toml").write_text(
        f'[[endpoints]]\nmodel = "answer-model"\nbase_url = "{mock.base_url}"\n'
        f'api_key_env = "ANSWER_KEY"\n\n[[endpoints]]\nmodel = "judges"\n'
        f'base_url = "{mock.base_url}"\napi_key_env = "ENTRY_KEY"\n')
    keys = {"JUDGE_KEY": "sk-judge-0001", "ANSWER_KEY": "sk-answer-0002",
            "ENTRY_KEY": "sk-entry-0003"}
    # When one run goes with the first, and another (into another output) with the second
    own = run_cli(*_args(mock, "--judge", "own.toml"), cwd=tmp_path, env=keys)
    entry = run_cli("-i", "tasks.jsonl", "-o", "out2.jsonl", "-p", "1", "--model", "answer-model",
                    "--endpoints", "endpoints.toml", "--judge", "entry.toml", cwd=tmp_path,
                    env=keys)
    # Then each judge's requests went with its own key, for the judge's model
    assert own.returncode == 0, own.stderr
    assert entry.returncode == 0, entry.stderr
    stats = mock.stats()
    assert stats["per_key"]["0001"] == 2 and stats["per_key"]["0003"] == 2
    assert stats["per_key"]["0002"] == 2
    assert stats["per_model"] == {"answer-model": 4, "judge-model": 4}
    assert len(read_jsonl(tmp_path / "out2.judge.jsonl")) == 2
