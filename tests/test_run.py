"""End to end: the real command line in its own process against the mock server over HTTP."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
from helpers import FAKE_KEY, read_jsonl, run_cli, text_tasks, write_png, write_tasks

from mpinfer.mockserver import MockServerProcess


def _run(tmp_path: Path, mock: MockServerProcess, *extra: str, tasks: str = "tasks.jsonl",
         out: str = "out/results.jsonl"):
    return run_cli("-i", tasks, "-o", out, "--base-url", mock.base_url, "--retry-backoff", "0.05",
                   "--timeout", "5", *extra, cwd=tmp_path)


def test_happy_path_answers_every_task_once_with_images_as_data_urls(tmp_path: Path,
                                                                     mock: MockServerProcess):
    # Given tasks with one image, two images (one given as a string key), and none
    write_png(tmp_path / "img" / "a.png")
    write_png(tmp_path / "img" / "b.png", (0, 0, 255))
    write_tasks(tmp_path / "tasks.jsonl", [
        {"id": "one", "prompt": "describe one", "images": ["img/a.png"]},
        {"id": "two", "prompt": "describe two", "images": ["img/a.png", "img/b.png"]},
        {"id": "str", "prompt": "describe str", "images": "img/b.png"},
        {"id": "txt", "prompt": "just text", "system": "be brief"},
    ])
    # When the run goes with two workers
    proc = _run(tmp_path, mock, "-p", "2", "-c", "2", "--model", "gpt-4o-mini")
    # Then it succeeds, and each task is in the output once with the full schema
    assert proc.returncode == 0, proc.stderr
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "results.jsonl")}
    assert sorted(rows) == ["one", "str", "two", "txt"]
    assert rows["two"]["answer"] == "Mock answer to: describe two (images: 2)"
    assert rows["str"]["images"] == ["img/b.png"]
    assert rows["one"]["model"] == "gpt-4o-mini" and rows["one"]["requested_model"] == "gpt-4o-mini"
    assert rows["one"]["usage"]["prompt_tokens"] > 85 and rows["one"]["usage"]["total_tokens"] == (
        rows["one"]["usage"]["prompt_tokens"] + rows["one"]["usage"]["completion_tokens"])
    assert rows["txt"]["attempts"] == 1 and rows["txt"]["finish_reason"] == "stop"
    assert rows["txt"]["latency_s"] > 0 and rows["txt"]["processed_at"] > 1.7e9
    # And the server received each task once
    assert mock.stats()["answered"] == {
        "describe one": 1, "describe two": 1, "describe str": 1, "just text": 1}
    # And a log file named for the model was written
    logs = list((tmp_path / "logs").glob("mpinfer_gpt-4o-mini_*.log"))
    assert len(logs) == 1 and "run ended" in logs[0].read_text()


def test_images_reach_the_server_as_base64_of_the_file_bytes(tmp_path: Path,
                                                             mock: MockServerProcess):
    # Given a PNG image saved under a .jpg name
    png = write_png(tmp_path / "pic.jpg")
    write_tasks(tmp_path / "tasks.jsonl", [{"id": "p", "prompt": "what", "images": ["pic.jpg"]}])
    # When it runs
    proc = _run(tmp_path, mock)
    assert proc.returncode == 0, proc.stderr
    # Then the server saw a PNG data URL (the MIME type comes from the bytes) and the answer counts
    # one image
    stats = mock.stats()
    assert stats["outcomes"]["ok"] == 1
    row = read_jsonl(tmp_path / "out" / "results.jsonl")[0]
    assert row["answer"].endswith("(images: 1)")
    assert base64.b64encode(png.read_bytes())  # the file is a real PNG the server accepted (no 400)
    assert stats["outcomes"].get("400", 0) == 0


def test_a_missing_image_fails_that_task_only_and_the_run_goes_on(tmp_path: Path,
                                                                  mock: MockServerProcess):
    # Given one task whose image does not exist
    write_png(tmp_path / "ok.png")
    write_tasks(tmp_path / "tasks.jsonl", [
        {"id": "good", "prompt": "fine", "images": ["ok.png"]},
        {"id": "bad", "prompt": "broken", "images": ["nope.png"]},
    ])
    # When it runs
    proc = _run(tmp_path, mock)
    # Then the good task is written, the bad one is in the errors file, never sent, and the exit
    # says work is left
    assert proc.returncode == 1
    assert [r["id"] for r in read_jsonl(tmp_path / "out" / "results.jsonl")] == ["good"]
    errors = read_jsonl(tmp_path / "out" / "results.jsonl.errors.jsonl")
    assert [(e["id"], e["error_type"], e["attempts"]) for e in errors] == [("bad", "image", 0)]
    assert "nope.png" in errors[0]["message"]
    assert "broken" not in mock.stats()["received"]


def test_a_500_is_retried_and_the_attempts_are_counted(tmp_path: Path, mock: MockServerProcess):
    # Given a server that fails the task twice with 500 and then answers
    write_tasks(tmp_path / "tasks.jsonl", [{"id": "x", "prompt": "flaky"}])
    mock.configure(script={"flaky": ["500", "500"]})
    # When it runs with up to 3 retries
    proc = _run(tmp_path, mock, "--max-retries", "3")
    # Then the answer is written once, after three attempts
    assert proc.returncode == 0, proc.stderr
    row = read_jsonl(tmp_path / "out" / "results.jsonl")[0]
    assert row["attempts"] == 3
    assert mock.stats()["received"]["flaky"] == 3


def test_a_429_is_retried_after_the_servers_retry_after(tmp_path: Path, mock: MockServerProcess):
    # Given a server that answers 429 with Retry-After 0.5 s once
    write_tasks(tmp_path / "tasks.jsonl", [{"id": "x", "prompt": "busy"}])
    mock.configure(script={"busy": ["429"]}, retry_after=0.5)
    # When it runs with a tiny backoff of its own
    proc = _run(tmp_path, mock)
    # Then it waited at least the server's Retry-After before the second attempt (a wait for the
    # limit, its own field: latency is the answering request's time on the wire, issue 22 item 6)
    assert proc.returncode == 0, proc.stderr
    row = read_jsonl(tmp_path / "out" / "results.jsonl")[0]
    assert row["attempts"] == 2
    assert row["waited_s"] >= 0.5, row


def test_retries_give_up_after_max_retries_and_record_the_failure(tmp_path: Path,
                                                                  mock: MockServerProcess):
    # Given a server that always fails one task
    write_tasks(tmp_path / "tasks.jsonl",
                [{"id": "x", "prompt": "down"}, {"id": "y", "prompt": "up"}])
    mock.configure(script={"down": ["500"] * 10})
    # When it runs with 2 retries
    proc = _run(tmp_path, mock, "--max-retries", "2")
    # Then the task was tried 3 times, is in the errors file, not in the output; the other is done
    assert proc.returncode == 1
    assert mock.stats()["received"]["down"] == 3
    errors = read_jsonl(tmp_path / "out" / "results.jsonl.errors.jsonl")
    assert [(e["id"], e["error_type"], e["status"], e["attempts"]) for e in errors] == [
        ("x", "server_error", 500, 3)]
    assert [r["id"] for r in read_jsonl(tmp_path / "out" / "results.jsonl")] == ["y"]
    # And a rerun retries the failed id and only that one
    mock.reset()  # the server recovers
    again = _run(tmp_path, mock)
    assert again.returncode == 0, again.stderr
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "out" / "results.jsonl")) == ["x", "y"]
    assert mock.stats()["received"] == {"down": 1}


def test_a_400_is_not_retried(tmp_path: Path, mock: MockServerProcess):
    # Given a task whose image is a broken data URL (the server answers 400)
    write_tasks(tmp_path / "tasks.jsonl", [
        {"id": "bad", "prompt": "bad url", "images": ["data:image/png;base64,@@@not-base64@@@"]}])
    # When it runs
    proc = _run(tmp_path, mock, "--max-retries", "5")
    # Then it was sent once and recorded as a bad request
    assert proc.returncode == 1
    stats = mock.stats()
    assert stats["requests"] == 1 and stats["outcomes"]["400"] == 1
    errors = read_jsonl(tmp_path / "out" / "results.jsonl.errors.jsonl")
    assert ([(e["error_type"], e["status"], e["attempts"]) for e in errors]
            == [("bad_request", 400, 1)])


def test_a_rejected_key_stops_the_run_with_a_clear_message_and_no_key_in_it(
    tmp_path: Path, mock: MockServerProcess,
):
    # Given a server that rejects the key in use
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(50))
    mock.configure(revoke_keys=[FAKE_KEY])
    # When it runs
    proc = _run(tmp_path, mock, "-p", "2")
    # Then it stops early with exit 5, says why, and never prints the key
    assert proc.returncode == 5
    assert "authentication" in proc.stdout + proc.stderr
    assert mock.stats()["requests"] < 50
    everything = proc.stdout + proc.stderr + "".join(p.read_text()
                                                     for p in (tmp_path / "logs").glob("*"))
    # the key's fault, not the tasks'
    assert not (tmp_path / "out" / "results.jsonl.errors.jsonl").exists()
    assert FAKE_KEY not in everything


def test_invalid_json_input_is_refused_before_any_request(tmp_path: Path, mock: MockServerProcess):
    # Given an input whose third line is not JSON
    (tmp_path / "tasks.jsonl").write_text(
        '{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": "b"}\n{"id": 3, "pro\n')
    # When it runs
    proc = _run(tmp_path, mock)
    # Then exit 2, the message names file and line, and nothing was sent
    assert proc.returncode == 2
    assert "tasks.jsonl:3: invalid JSON" in proc.stderr
    assert mock.stats()["requests"] == 0


def test_duplicate_and_missing_fields_are_listed_with_lines(tmp_path: Path,
                                                            mock: MockServerProcess):
    # Given duplicate ids and a line without a prompt
    write_tasks(tmp_path / "tasks.jsonl", [{"id": "a", "prompt": "1"}, {"id": "a", "prompt": "2"}])
    write_tasks(tmp_path / "missing.jsonl",
                [{"id": "a", "prompt": "1"}, {"id": "b", "question": "2"}])
    # When each runs
    dup = _run(tmp_path, mock, tasks="tasks.jsonl")
    missing = _run(tmp_path, mock, tasks="missing.jsonl")
    # Then both are refused with exit 2, naming the lines, before any request
    assert dup.returncode == 2 and "duplicate ids: 'a' (lines 1 and 2)" in dup.stderr
    assert missing.returncode == 2 and "missing.jsonl:2: missing prompt" in missing.stderr
    assert mock.stats()["requests"] == 0


def test_prompt_and_id_keys_map_other_field_names(tmp_path: Path, mock: MockServerProcess):
    # Given a data set that calls its fields question and qid
    write_tasks(tmp_path / "tasks.jsonl", [{"qid": 7, "question": "seven?", "image_path": None}])
    # When it runs with the key options
    proc = _run(tmp_path, mock, "--id-key", "qid", "--prompt-key", "question", "--images-key",
                "image_path")
    # Then the task ran under its id (as a string)
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(tmp_path / "out" / "results.jsonl")[0]["id"] == "7"


def test_a_torn_last_line_is_moved_aside_and_never_glued_to(tmp_path: Path,
                                                            mock: MockServerProcess):
    # Given an output whose last line was torn by a crash
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    out = tmp_path / "out" / "results.jsonl"
    out.parent.mkdir()
    first = orjson.dumps({"id": "t0", "input_prompt": "q", "images": [], "answer": "a",
                          "model": "m", "requested_model": "m",
                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                          "finish_reason": "stop", "latency_s": 0.1, "attempts": 1,
                          "processed_at": 1.8e9, "cost": None})
    out.write_bytes(first + b'\n{"id": "t1", "input_prompt": "que')
    # When the run resumes
    proc = _run(tmp_path, mock)
    # Then the torn bytes are in .corrupt, every line of the output parses, and t0 was not asked
    # again
    assert proc.returncode == 0, proc.stderr
    assert ((tmp_path / "out" / "results.jsonl.corrupt").read_bytes()
            == b'{"id": "t1", "input_prompt": "que\n')
    rows = read_jsonl(out)
    assert sorted(r["id"] for r in rows) == ["t0", "t1", "t2"]
    assert "question t0: what is 0 + 0?" not in mock.stats()["received"]


def test_a_corrupt_middle_line_is_reported_kept_and_its_task_redone(tmp_path: Path,
                                                                    mock: MockServerProcess):
    # Given a finished output with garbage in the middle
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(3))
    assert _run(tmp_path, mock).returncode == 0
    out = tmp_path / "out" / "results.jsonl"
    lines = out.read_bytes().splitlines(keepends=True)
    victim = orjson.loads(lines[1])["id"]
    out.write_bytes(lines[0] + b"#garbage#\n" + lines[2])
    # When validate runs, then the line is reported and the lost id is missing
    check = run_cli("-i", "tasks.jsonl", "-o", "out/results.jsonl", "--validate", cwd=tmp_path)
    assert check.returncode == 1
    assert "corrupt_line: 1" in check.stdout
    assert "line 2" in check.stdout
    assert "missing_id: 1" in check.stdout
    # When the run resumes
    proc = _run(tmp_path, mock)
    # Then it warns about the line, keeps it, and redoes only the task whose line was lost
    assert proc.returncode == 0, proc.stderr
    assert "results.jsonl:2 is not a valid record" in proc.stderr
    assert b"#garbage#\n" in out.read_bytes()
    ids = [orjson.loads(x)["id"] for x in out.read_bytes().splitlines() if x.startswith(b"{")]
    assert sorted(ids) == ["t0", "t1", "t2"] and ids[-1] == victim


def test_status_and_validate_report_a_partly_done_output(tmp_path: Path, mock: MockServerProcess):
    # Given 4 tasks, one of which fails (its image is missing)
    tasks = text_tasks(4)
    tasks[3]["images"] = ["missing.png"]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    assert _run(tmp_path, mock).returncode == 1
    # When status runs (text and JSON)
    text = run_cli("-i", "tasks.jsonl", "-o", "out/results.jsonl", "--status", cwd=tmp_path)
    as_json = run_cli("-i", "tasks.jsonl", "-o", "out/results.jsonl", "--status", "--json",
                      cwd=tmp_path)
    # Then it counts 3 done, 1 failed, 1 pending, 75%, tokens, no live run
    assert text.returncode == 0
    assert "done: 3 (75.0%)" in text.stdout
    assert "run live: no" in text.stdout
    report = orjson.loads(as_json.stdout)
    assert (report["total"], report["done"], report["failed"], report["pending"]) == (4, 3, 1, 1)
    assert report["total_tokens"] == sum(r["usage"]["total_tokens"]
                                         for r in read_jsonl(tmp_path / "out" / "results.jsonl"))
    assert report["live"] is False
    # And validate fails on the missing id only
    check = run_cli("-i", "tasks.jsonl", "-o", "out/results.jsonl", "--validate", cwd=tmp_path)
    assert check.returncode == 1 and "missing_id: 1" in check.stdout and "t3" in check.stdout


def test_validate_flags_a_server_that_answers_with_another_model(tmp_path: Path,
                                                                 mock: MockServerProcess):
    # Given a server that answers requests for the 7B model with the 72B one
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(2))
    mock.configure(model_map={"qwen-7b": "qwen-72b"})
    assert _run(tmp_path, mock, "--model", "qwen-7b").returncode == 0
    # When validate runs
    check = run_cli("-i", "tasks.jsonl", "-o", "out/results.jsonl", "--validate", cwd=tmp_path)
    # Then both answers are flagged, and the output recorded the truth
    assert check.returncode == 1 and "model_mismatch: 2" in check.stdout
    assert {r["model"] for r in read_jsonl(tmp_path / "out" / "results.jsonl")} == {"qwen-72b"}


def test_missing_input_and_key_say_where_to_set_them(tmp_path: Path):
    # Given no input option, and then no key
    no_input = run_cli("-o", "x.jsonl", cwd=tmp_path)
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(1))
    no_key = run_cli("-i", "tasks.jsonl", "-o", "x.jsonl", cwd=tmp_path, env={"OPENAI_API_KEY": ""})
    # Then each is one line that names the flag, the variable and the file
    assert no_input.returncode == 2
    assert "-i FILE" in no_input.stderr
    assert "MPINFER_INPUT" in no_input.stderr
    assert no_key.returncode == 2 and "OPENAI_API_KEY" in no_key.stderr and ".env" in no_key.stderr


def test_settings_come_from_env_file_and_toml_when_flags_are_absent(tmp_path: Path,
                                                                    mock: MockServerProcess):
    # Given the input and output in mpinfer.toml and the URL and model in .env
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(2))
    (tmp_path / "mpinfer.toml").write_text(
        'input = "tasks.jsonl"\noutput = "res.jsonl"\nprocesses = 1\n')
    (tmp_path / ".env").write_text(f"OPENAI_BASE_URL={mock.base_url}\nMPINFER_MODEL=from-dotenv\n")
    # When the bare command runs
    proc = run_cli(cwd=tmp_path)
    # Then it used them all
    assert proc.returncode == 0, proc.stderr
    assert {r["requested_model"] for r in read_jsonl(tmp_path / "res.jsonl")} == {"from-dotenv"}
