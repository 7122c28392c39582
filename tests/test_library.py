"""mpinfer.run from Python, as a notebook calls it: keyword settings in, a RunResult out.

The caller's logging is left alone and any thread may call it. In this process, against the mock
server over HTTP on 127.0.0.1, with real worker processes.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import FAKE_KEY, text_tasks, write_tasks

import mpinfer
from mpinfer.mockserver import MockServerProcess

RUN_WAIT_S = 120


@pytest.fixture
def notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder and an environment like a user's: only the key, in OPENAI_API_KEY."""
    for name in [n for n in os.environ if n.startswith(("OPENAI_", "MPINFER_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.chdir(tmp_path)
    write_tasks(tmp_path / "tasks.jsonl", text_tasks(6))
    return tmp_path


def quick(mock: MockServerProcess) -> dict[str, Any]:
    return {"base_url": mock.base_url, "timeout": 5, "retry_backoff": 0.05, "progress": False}


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def in_a_thread(**kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """mpinfer.run started in a thread that is not the main one; the dict gets its outcome."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = mpinfer.run(**kwargs)
        except BaseException as exc:  # handed to the test, which fails on it
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="notebook-cell")
    thread.start()
    return thread, outcome


def _run_log_is_open(log_dir: Path) -> bool:
    """Whether a run's log has its start and not yet its end: the run's handlers are in place."""
    texts = [path.read_text(encoding="utf-8") for path in log_dir.glob("*.log")]
    return any(" to run" in text and "run ended" not in text for text in texts)


def test_keyword_settings_run_every_task_and_answers_yields_each_answer_once(
    notebook: Path, mock: MockServerProcess,
) -> None:
    # Given six tasks and the key in the environment
    # When a notebook runs them with plain keyword settings
    result = mpinfer.run(input="tasks.jsonl", output="out/results.jsonl", processes=2,
                         concurrency=2, model="gpt-4o-mini", **quick(mock))
    # Then it returns a frozen RunResult whose summary counts every task
    assert isinstance(result, mpinfer.RunResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.summary = result.summary  # type: ignore[misc]
    assert result.summary.succeeded == 6 and result.summary.remaining == 0
    assert result.config.processes == 2 and result.config.concurrency == 2
    # And answers() yields each task's result line once, as a dict
    answers = list(result.answers())
    assert sorted(a["id"] for a in answers) == sorted(t["id"] for t in text_tasks(6))
    assert all(a["answer"].startswith("Mock answer to: question") and a["model"] == "gpt-4o-mini"
               for a in answers)
    # And the server answered each task exactly once
    assert sorted(mock.stats()["answered"].values()) == [1] * 6


def test_a_rerun_resumes_and_answers_yields_the_answers_on_disk_and_nothing_else(
    notebook: Path, mock: MockServerProcess,
) -> None:
    # Given a finished run, and then a corrupt line and a line that is no answer appended to its
    # output
    mpinfer.run(input="tasks.jsonl", output="out.jsonl", processes=1, **quick(mock))
    with (notebook / "out.jsonl").open("ab") as out:
        out.write(b'{"id": "t0", "note": "not an answer"}\n{"id": "t1", "answ\n')
    # When the same call runs again
    again = mpinfer.run(input="tasks.jsonl", output="out.jsonl", processes=1, **quick(mock))
    # Then nothing is sent again
    assert again.summary.already_done == 6 and again.summary.succeeded == 0
    assert sum(mock.stats()["answered"].values()) == 6
    # And answers() yields the six answers of the first run, each once, and neither of the other
    # lines
    answers = list(again.answers())
    assert sorted(a["id"] for a in answers) == sorted(t["id"] for t in text_tasks(6))
    assert all("answer" in a for a in answers)


def test_a_run_from_a_thread_that_is_not_the_main_thread_finishes(notebook: Path,
                                                                  mock: MockServerProcess) -> None:
    # Given the program's own Ctrl-C handler
    before = signal.getsignal(signal.SIGINT)
    # When the run is started from another thread (as a notebook's background cell or a web server
    # does)
    thread, outcome = in_a_thread(input="tasks.jsonl", output="out.jsonl", processes=2,
                                  **quick(mock))
    thread.join(RUN_WAIT_S)
    # Then it finishes with every task answered, instead of "signal only works in main thread"
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].summary.succeeded == 6
    # And the program's signal handlers are as they were
    assert signal.getsignal(signal.SIGINT) is before


def test_the_callers_root_logging_keeps_its_own_records_and_gets_none_of_mpinfers(
        notebook: Path, mock: MockServerProcess) -> None:
    # Given a notebook that logs through its own handler on the root logger, at DEBUG
    root = logging.getLogger()
    mine = Collect()
    old_level = root.level
    root.addHandler(mine)
    root.setLevel(logging.DEBUG)
    own = logging.getLogger("notebook")
    handlers_before = list(root.handlers)
    try:
        own.info("before the run")
        # When a run goes on in a thread while the notebook keeps logging, on its own logger and
        # (once the run's log is open) through mpinfer's, as a call of mpinfer.status from the
        # notebook would
        mock.configure(latency_ms=200)
        thread, outcome = in_a_thread(input="tasks.jsonl", output="out.jsonl", processes=2,
                                      verbose=True, **quick(mock))
        deadline = time.monotonic() + RUN_WAIT_S
        sent_during = False
        while thread.is_alive() and time.monotonic() < deadline:
            own.info("during the run")
            if not sent_during and _run_log_is_open(notebook / "logs"):
                logging.getLogger("mpinfer.reports").info(
                    "mpinfer, called by the notebook during the run")
                sent_during = _run_log_is_open(notebook / "logs")
            thread.join(0.05)
        assert sent_during
        own.info("after the run")
        assert "error" not in outcome, outcome.get("error")
    finally:
        root.removeHandler(mine)
        root.setLevel(old_level)
    result = outcome["result"]
    # Then the notebook's handler got every record of its own and none of mpinfer's
    messages = [r.getMessage() for r in mine.records]
    assert messages[0] == "before the run"
    assert messages[-1] == "after the run"
    assert "during the run" in messages
    assert {r.name for r in mine.records if r.name.startswith("mpinfer")} <= {"mpinfer.reports"}
    # And mpinfer's records from the notebook's own thread reach it, as they would without a run
    # going
    assert "mpinfer, called by the notebook during the run" in messages
    # And the root logger's handlers are the notebook's, as before
    assert handlers_before == [*handlers_before[:-1], mine]
    assert root.handlers == handlers_before[:-1]
    # And mpinfer's log file has the run's records and none of the notebook's
    text = Path(result.summary.log_file).read_text(encoding="utf-8")
    assert "run ended" in text and "during the run" not in text and "before the run" not in text
    assert "called by the notebook" not in text
    # And mpinfer's logger is as it was: no handler left, records reach the caller's logging again
    assert logging.getLogger("mpinfer").handlers == [] and logging.getLogger("mpinfer").propagate


def test_two_runs_in_two_threads_at_once_keep_their_own_log_files(notebook: Path,
                                                                  mock: MockServerProcess) -> None:
    # Given two jobs on two outputs, and answers slow enough for the runs to overlap
    write_tasks(notebook / "other.jsonl", text_tasks(6, prefix="o"))
    mock.configure(latency_ms=100)
    # When both run at once, each from its own thread
    first, first_outcome = in_a_thread(input="tasks.jsonl", output="a.jsonl", processes=1,
                                       log_dir="logs_a", **quick(mock))
    second, second_outcome = in_a_thread(input="other.jsonl", output="b.jsonl", processes=1,
                                         log_dir="logs_b", **quick(mock))
    first.join(RUN_WAIT_S)
    second.join(RUN_WAIT_S)
    # Then both finish
    assert "error" not in first_outcome and "error" not in second_outcome, (first_outcome,
                                                                            second_outcome)
    assert (first_outcome["result"].summary.succeeded == second_outcome["result"].summary.succeeded
            == 6)
    # And each log file has its own run's records and none of the other's
    a_log = Path(first_outcome["result"].summary.log_file).read_text(encoding="utf-8")
    b_log = Path(second_outcome["result"].summary.log_file).read_text(encoding="utf-8")
    assert "-> a.jsonl" in a_log and "-> b.jsonl" not in a_log
    assert "-> b.jsonl" in b_log and "-> a.jsonl" not in b_log
    # And mpinfer's logger is as it was once both ended
    assert logging.getLogger("mpinfer").handlers == [] and logging.getLogger("mpinfer").propagate


def test_the_workers_records_reach_the_runs_log_file_and_not_the_callers_logging(
        notebook: Path, mock: MockServerProcess) -> None:
    # Given a server that fails every request, and a caller's handler on the root logger
    mock.configure(p500=1.0)
    root = logging.getLogger()
    mine = Collect()
    root.addHandler(mine)
    try:
        # When two tasks run with no retries in one worker process (forked from this one, handlers
        # and all)
        result = mpinfer.run(input="tasks.jsonl", output="out.jsonl", processes=1, limit=2,
                             max_retries=0, **quick(mock))
    finally:
        root.removeHandler(mine)
    # Then the worker's warnings are in the run's log file, labelled with the worker
    assert result.summary.failed == 2
    text = Path(result.summary.log_file).read_text(encoding="utf-8")
    assert len([line for line in text.splitlines()
                if " w0 WARNING " in line and "failed after" in line]) == 2
    # And none of mpinfer's records reached the caller's handler
    assert [r.name for r in mine.records if r.name.startswith("mpinfer")] == []


def test_failures_yields_the_last_failure_of_each_task_left_and_none_once_a_rerun_answers_them(
        notebook: Path, mock: MockServerProcess) -> None:
    # Given a server that fails every request
    mock.configure(p500=1.0)
    # When two tasks run without retries
    failed = mpinfer.run(input="tasks.jsonl", output="out.jsonl", processes=1, limit=2,
                         max_retries=0, **quick(mock))
    # Then failures() yields one failure for each, naming its type, and answers() yields none
    failures = list(failed.failures())
    assert sorted(f["id"] for f in failures) == ["t0", "t1"]
    assert {(f["error_type"], f["status"]) for f in failures} == {("server_error", 500)}
    assert list(failed.answers()) == []
    # And when the server recovers and the same call runs again
    mock.configure(p500=0.0)
    again = mpinfer.run(input="tasks.jsonl", output="out.jsonl", processes=1, limit=2,
                        max_retries=0, **quick(mock))
    # Then both are answered and no failure is left, though the errors file still holds the old
    # lines
    assert sorted(a["id"] for a in again.answers()) == ["t0", "t1"]
    assert list(again.failures()) == []
    assert (notebook / "out.jsonl.errors.jsonl").read_text(encoding="utf-8").count("\n") == 2


def test_an_unknown_setting_is_a_config_error_that_names_the_likely_one(
    notebook: Path, mock: MockServerProcess,
) -> None:
    # Given a misspelt setting
    # When the run is called with it
    with pytest.raises(mpinfer.ConfigError,
                       match=r"^unknown setting 'procesess'; did you mean 'processes'\?$"):
        mpinfer.run(input="tasks.jsonl", output="out.jsonl", procesess=2, **quick(mock))
    # Then nothing ran and nothing was written
    assert not (notebook / "out.jsonl").exists() and mock.stats()["answered"] == {}


def test_a_bad_keyword_value_is_a_config_error_naming_the_keyword(notebook: Path,
                                                                  mock: MockServerProcess) -> None:
    # Given zero processes
    # When the run is called with it
    # Then the error names the keyword and says what is wrong
    said = r"^mpinfer\.run\(processes=\.\.\.\): processes = 0 is invalid: must be 1 or more$"
    with pytest.raises(mpinfer.ConfigError, match=said):
        mpinfer.run(input="tasks.jsonl", output="out.jsonl", processes=0, **quick(mock))


def test_a_run_config_still_works_and_keyword_settings_apply_over_it(
    notebook: Path, mock: MockServerProcess,
) -> None:
    # Given a RunConfig built in code, with its own key and no key in the environment
    config = mpinfer.RunConfig(input=Path("tasks.jsonl"), output=Path("out.jsonl"), processes=1,
                               base_url=mock.base_url, timeout=5, api_keys=(FAKE_KEY,))
    # When it is run with a keyword setting over it
    result = mpinfer.run(config, model="gpt-4o", progress=False)
    # Then the run used both: the config's settings and the keyword's model
    assert result.summary.succeeded == 6 and result.config.processes == 1
    assert {a["requested_model"] for a in result.answers()} == {"gpt-4o"}
    assert result.config.explicit >= {"model"}


def test_api_keys_can_be_given_as_a_keyword(notebook: Path, mock: MockServerProcess,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no key in the environment
    monkeypatch.delenv("OPENAI_API_KEY")
    # When the key is given to run directly
    result = mpinfer.run(input="tasks.jsonl", output="out.jsonl", processes=1, api_keys=FAKE_KEY,
                         **quick(mock))
    # Then the run uses it, and it is not in the config's repr
    assert result.summary.succeeded == 6
    assert FAKE_KEY not in repr(result)


def test_mpinfer_run_stays_the_function_when_the_cli_is_imported() -> None:
    # Given the CLI imported, with the module holding a run's life
    import mpinfer.cli
    import mpinfer.lifecycle

    # Then mpinfer.run is still the public function, and no module shares its name
    assert mpinfer.run is mpinfer.pyapi.run
    assert mpinfer.lifecycle.run is not mpinfer.run
    assert "mpinfer.run" not in sys.modules


def test_a_run_leaves_the_garbage_collector_unfrozen(notebook: Path,
                                                     mock: MockServerProcess) -> None:
    # Given a process whose garbage collector nothing has frozen
    assert gc.get_freeze_count() == 0
    # When a run forks its workers (it freezes the collector for them) and ends
    mpinfer.run(input="tasks.jsonl", output="out.jsonl", processes=1, **quick(mock))
    # Then the caller's objects are collectable again
    assert gc.get_freeze_count() == 0
