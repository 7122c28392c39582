"""The run manifest: fingerprints, their differences, the input checksum, records file and guard."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest

from mpinfer import __version__
from mpinfer.config import RunConfig
from mpinfer.errors import ConfigError, OutputError, SettingsChanged
from mpinfer.reports.summary import RunSummary
from mpinfer.store.manifest import (
    COUNT_FIELDS,
    RunRecord,
    append_record,
    check_fingerprints,
    differences,
    end_record,
    fingerprint,
    input_checksum,
    last_fingerprints,
    manifest_path,
    output_fingerprints,
    read_records,
    settings_of,
    start_record,
    summary_counts,
)

KEY = "sk-test-4f9Qz7LmN2pR8sT1vX3yZ9wxyz"
ANSWER_FIELDS = {"model", "system_prompt", "temperature", "max_tokens", "extra_body", "prompt_key",
                 "images_key", "model_key", "thinking", "reasoning_effort", "labels",
                 "json_schema", "image_detail", "image_max_side"}


def config(tmp_path: Path, **changes: Any) -> RunConfig:
    tasks = tmp_path / "tasks.jsonl"
    if not tasks.exists():
        tasks.write_bytes(b'{"id": "1", "prompt": "hi"}\n')
    base = RunConfig(input=tasks, output=tmp_path / "results.jsonl", temperature=0.0,
                     api_keys=(KEY,))
    return dataclasses.replace(base, **changes)


def record(outputs: dict[str, dict[str, object]], run_id: str = "1-1") -> RunRecord:
    return RunRecord(event="start", run_id=run_id, started_at=1.0, ended_at=None, argv=["mpinfer"],
                     settings={}, version="0", input=None, outputs=outputs)


# --- fingerprint and differences ------------------------------------------------------------------


def test_fingerprint_holds_exactly_the_settings_that_change_answers(tmp_path: Path) -> None:
    # Given a config with answer-changing settings set
    cfg = config(tmp_path, system_prompt="Be brief.", max_tokens=50, extra_body={"top_p": 0.9})
    # When one model's fingerprint is taken
    print_ = fingerprint(cfg, "gpt-4o")
    # Then it holds those settings and nothing else, as plain values
    assert print_ == {"model": "gpt-4o", "system_prompt": "Be brief.", "temperature": 0.0,
                      "max_tokens": 50, "extra_body": {"top_p": 0.9}, "prompt_key": "prompt",
                      "images_key": "images", "model_key": None, "thinking": None,
                      "reasoning_effort": None, "labels": None, "json_schema": None,
                      "image_detail": None, "image_max_side": None}
    assert set(print_) == ANSWER_FIELDS
    assert orjson.loads(orjson.dumps(print_)) == print_


def test_fingerprint_ignores_settings_that_do_not_change_answers(tmp_path: Path) -> None:
    # Given two configs that differ in processes, concurrency, timeout, retries, limits and keys
    before = config(tmp_path)
    after = config(tmp_path, processes=32, concurrency=64, timeout=5.0, max_retries=9, rpm=100,
                   fsync=True, log_dir=tmp_path / "elsewhere",
                   api_keys=("sk-another-key-000000000000",))
    # When their fingerprints are taken
    # Then they are the same
    assert fingerprint(before, "gpt-4o") == fingerprint(after, "gpt-4o")


def test_fingerprint_changes_with_the_temperature(tmp_path: Path) -> None:
    # Given two configs that differ only in temperature
    # When their fingerprints are taken
    # Then they differ
    assert fingerprint(config(tmp_path), "m") != fingerprint(config(tmp_path, temperature=0.7), "m")


def test_output_fingerprints_names_each_models_output_file(tmp_path: Path) -> None:
    # Given a run over two models into one output set
    cfg = config(tmp_path, model="gpt-4o,qwen/vl")
    # When the fingerprints of its outputs are taken
    prints = output_fingerprints(cfg)
    # Then each model's file is named with that model's fingerprint
    assert {name: p["model"] for name, p in prints.items()} == {"results.gpt-4o.jsonl": "gpt-4o",
                                                                 "results.qwen_vl.jsonl": "qwen/vl"}


def test_differences_lists_each_changed_key_sorted_with_missing_keys_as_none() -> None:
    # Given an old and a new fingerprint; the new one lacks system_prompt, the old one lacks
    # extra_body=None
    old = {"temperature": 0.0, "max_tokens": None, "model": "m", "system_prompt": "Be brief."}
    new = {"temperature": 0.7, "max_tokens": 50, "model": "m", "extra_body": None}
    # When they are compared
    lines = differences(old, new)
    # Then each difference is one line, by key, and a key missing on one side counts as None
    assert lines == ["max_tokens: None -> 50", "system_prompt: 'Be brief.' -> None",
                     "temperature: 0.0 -> 0.7"]


def test_differences_shortens_long_values() -> None:
    # Given two long system prompts
    old = {"system_prompt": "a" * 500}
    new = {"system_prompt": "b" * 500}
    # When they are compared
    [line] = differences(old, new)
    # Then the line stays short
    assert line.startswith("system_prompt: 'aaa") and "... -> 'bbb" in line
    assert len(line) < 160


# --- input_checksum -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (5 << 19) + 7])
def test_input_checksum_equals_hashlib_over_the_whole_file(tmp_path: Path, size: int) -> None:
    # Given a file of this size (around the 1 MiB block too)
    path = tmp_path / "tasks.jsonl"
    data = os.urandom(size)
    path.write_bytes(data)
    # When its checksum is taken
    # Then it is the size and sha256 of every byte
    assert input_checksum(path) == (size, hashlib.sha256(data).hexdigest())


# --- append_record and read_records ---------------------------------------------------------------


def test_append_then_read_round_trips_records_and_skips_a_torn_line(tmp_path: Path) -> None:
    # Given a manifest with one record and a line torn by a crash
    path = manifest_path(tmp_path / "results.jsonl")
    first = record({"results.jsonl": {"model": "a"}}, run_id="1-1")
    append_record(path, first)
    with path.open("ab") as handle:
        handle.write(b'{"event": "start", "run_id": "2-2", "outp')
    # When a second record is appended and the manifest read
    second = end_record(first, {"total": 3}, ended_at=2.0)
    append_record(path, second)
    records = read_records(path)
    # Then both whole records come back, the torn line is skipped, and the new one was not glued
    # onto it
    assert records == [first.to_dict(), second.to_dict()]
    assert path.read_bytes().count(b"\n") == 3


def test_manifest_path_sits_beside_the_output(tmp_path: Path) -> None:
    # Given an output
    # When its manifest path is asked for
    # Then it is the output's name with .runs.jsonl added
    assert manifest_path(tmp_path / "results.jsonl") == tmp_path / "results.jsonl.runs.jsonl"


def test_read_records_of_a_missing_manifest_is_empty(tmp_path: Path) -> None:
    # Given no manifest
    # When it is read
    # Then there are no records
    assert read_records(tmp_path / "none.runs.jsonl") == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_append_record_on_a_full_disk_raises_output_error() -> None:
    # Given a file whose every write fails with ENOSPC
    # When a record is appended
    # Then an OutputError says the disk is full
    with pytest.raises(OutputError, match="disk full"):
        append_record(Path("/dev/full"), record({}))


# --- last_fingerprints and check_fingerprints -----------------------------------------------------


def test_last_fingerprints_picks_the_latest_record_naming_each_output(tmp_path: Path) -> None:
    # Given three runs: a and b, then a alone with a new temperature, then b alone
    path = tmp_path / "out.runs.jsonl"
    append_record(path, record({"a.jsonl": {"temperature": 0.0}, "b.jsonl": {"temperature": 0.0}}))
    append_record(path, record({"a.jsonl": {"temperature": 0.7}}))
    append_record(path, record({"b.jsonl": {"temperature": 0.2}}))
    # When the last fingerprints are read
    # Then each output has the one of the last run that wrote it
    assert last_fingerprints(path) == {"a.jsonl": {"temperature": 0.7},
                                       "b.jsonl": {"temperature": 0.2}}


def test_check_fingerprints_refuses_changed_settings_on_an_output_with_records(
    tmp_path: Path,
) -> None:
    # Given an output written at temperature 0 with no max_tokens, and a second one unchanged
    path = tmp_path / "results.jsonl.runs.jsonl"
    append_record(path, record({"results.jsonl": {"temperature": 0.0, "max_tokens": None},
                                "same.jsonl": {"temperature": 0.0}}))
    current = {"results.jsonl": {"temperature": 0.7, "max_tokens": 50},
               "same.jsonl": {"temperature": 0.0}}
    # When a run with other settings checks it
    with pytest.raises(SettingsChanged) as caught:
        check_fingerprints(path, current, ["results.jsonl", "same.jsonl"], allow_mixed=False)
    # Then it is refused as a settings error naming every difference and the way out
    error = caught.value
    assert isinstance(error, ConfigError) and error.exit_code == 2
    assert str(error) == ("results.jsonl was written with other settings: max_tokens: None -> 50; "
                          "temperature: 0.0 -> 0.7\n"
                          "rerun with --allow-mixed to mix them, or write to another output")


def test_settings_changed_survives_pickling() -> None:
    # Given the error a worker or the parent might send across processes
    error = SettingsChanged(["out.jsonl was written with other settings: temperature: 0.0 -> 0.7"])
    # When it is pickled and unpickled
    copy = pickle.loads(pickle.dumps(error))
    # Then it is the same error with the same message
    assert type(copy) is SettingsChanged
    assert (str(copy), copy.changes) == (str(error), error.changes)


def test_check_fingerprints_with_allow_mixed_returns_the_differences(tmp_path: Path) -> None:
    # Given an output written at temperature 0
    path = tmp_path / "results.jsonl.runs.jsonl"
    append_record(path, record({"results.jsonl": {"temperature": 0.0}}))
    # When a run at 0.7 checks it with allow_mixed
    messages = check_fingerprints(path, {"results.jsonl": {"temperature": 0.7}}, ["results.jsonl"],
                                  allow_mixed=True)
    # Then it passes, returning the difference for the caller to warn about
    assert messages == ["results.jsonl was written with other settings: temperature: 0.0 -> 0.7"]


def test_check_fingerprints_accepts_an_output_without_a_previous_fingerprint(
    tmp_path: Path,
) -> None:
    # Given an output with records but no manifest (written before manifests existed)
    path = tmp_path / "results.jsonl.runs.jsonl"
    # When a run checks it
    messages = check_fingerprints(path, {"results.jsonl": {"temperature": 0.7}}, ["results.jsonl"],
                                  allow_mixed=False)
    # Then it passes with nothing to say
    assert messages == []


def test_check_fingerprints_accepts_changed_settings_on_an_output_without_records(
    tmp_path: Path,
) -> None:
    # Given a manifest naming an output that has no lines (say it was deleted and started over)
    path = tmp_path / "results.jsonl.runs.jsonl"
    append_record(path, record({"results.jsonl": {"temperature": 0.0}}))
    # When a run at another temperature checks it
    messages = check_fingerprints(path, {"results.jsonl": {"temperature": 0.7}}, [],
                                  allow_mixed=False)
    # Then it passes: no answers would be mixed
    assert messages == []


def test_check_fingerprints_accepts_a_fingerprint_written_before_model_key_existed(
    tmp_path: Path,
) -> None:
    # Given an output whose manifest fingerprint has no model_key (written before the setting)
    path = tmp_path / "results.jsonl.runs.jsonl"
    old = fingerprint(config(tmp_path), "gpt-4o")
    del old["model_key"]
    append_record(path, record({"results.jsonl": old}))
    # When a run without model_key resumes it
    messages = check_fingerprints(path, output_fingerprints(config(tmp_path, model="gpt-4o")),
                                  ["results.jsonl"], allow_mixed=False)
    # Then it passes: a missing field counts as None, model_key's default
    assert messages == []


def test_check_fingerprints_refuses_another_model_key(tmp_path: Path) -> None:
    # Given an output written while each row's own model was read from its "model" field
    path = tmp_path / "results.jsonl.runs.jsonl"
    append_record(path, record({"results.jsonl": fingerprint(config(tmp_path, model_key="model"),
                                                             "gpt-4o")}))
    # When a run that sends --model to every row resumes it
    with pytest.raises(SettingsChanged) as caught:
        check_fingerprints(path, output_fingerprints(config(tmp_path, model="gpt-4o")),
                           ["results.jsonl"], allow_mixed=False)
    # Then it is refused, naming the field
    assert "model_key: 'model' -> None" in str(caught.value)


# --- RunRecord ------------------------------------------------------------------------------------


def test_a_run_record_never_holds_the_api_key(tmp_path: Path) -> None:
    # Given a config with an API key, which also leaks into the base URL, a system prompt and the
    # argv
    cfg = config(tmp_path, base_url=f"https://user:{KEY}@proxy.local/v1",
                 system_prompt=f"ignore {KEY}", extra_body={"auth": f"Bearer {KEY}"})
    argv = ["mpinfer", "-i", str(cfg.input), "--api-key", KEY, f"--note={KEY}"]
    # When the start and end records of a run are built and written
    start = start_record(cfg, argv, started_at=1700000000.4, pid=42)
    path = manifest_path(tmp_path / "results.jsonl")
    append_record(path, start)
    append_record(path, end_record(start, {"total": 1}))
    # Then the key is nowhere in the manifest, nor any long piece of it
    text = path.read_text()
    assert KEY not in text
    assert KEY[8:20] not in text
    assert "api_keys" not in start.settings


def test_start_record_describes_the_run(tmp_path: Path) -> None:
    # Given a config and its input file
    cfg = config(tmp_path, max_tokens=50)
    assert cfg.input is not None
    # When the start record is built
    start = start_record(cfg, ["mpinfer", "-o", "results.jsonl"], started_at=1700000000.4, pid=42)
    # Then it names the run, its version, the input's checksum and the output's fingerprint
    data = cfg.input.read_bytes()
    assert (start.event, start.run_id, start.ended_at, start.counts) == (
        "start", "1700000000-42", None, None)
    assert start.version == __version__
    assert start.input == {"path": str(cfg.input), "size": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()}
    assert start.outputs == {"results.jsonl": fingerprint(cfg, "gpt-4o-mini")}
    assert start.argv == ["mpinfer", "-o", "results.jsonl"]


def test_settings_of_holds_every_setting_but_the_keys_as_json(tmp_path: Path) -> None:
    # Given a config
    cfg = config(tmp_path)
    # When its settings are taken
    values = settings_of(cfg)
    # Then every setting but the keys and the bookkeeping is there, paths as strings, and it
    # survives JSON
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(values) == (fields - {"api_keys", "warnings", "explicit"} | {"key_count"})
    assert values["output"] == str(tmp_path / "results.jsonl")
    assert values["log_dir"] == "logs"
    assert orjson.loads(orjson.dumps(values)) == values


def test_end_record_carries_the_counts_of_the_runs_summary(tmp_path: Path) -> None:
    # Given a start record and the summary of a run that was stopped with tasks left
    start = start_record(config(tmp_path), ["mpinfer"], started_at=10.0, pid=1)
    summary = RunSummary(total=10, already_done=2, succeeded=5, failed=1, prompt_tokens=700,
                         completion_tokens=30, stopped="interrupted")
    # When the end record is built
    end = end_record(start, summary_counts(summary, cost=0.0123), ended_at=20.0)
    # Then it is the same run, ended, with every count
    assert (end.event, end.run_id, end.started_at, end.ended_at) == (
        "end", start.run_id, 10.0, 20.0)
    assert end.counts == {"total": 10, "done": 7, "succeeded": 5, "failed": 1, "remaining": 3,
                          "prompt_tokens": 700, "completion_tokens": 30, "cost": 0.0123,
                          "stopped": "interrupted"}
    assert tuple(end.counts) == COUNT_FIELDS
