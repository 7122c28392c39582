"""Merging a finished batch: lines by kind, each id once, and a repeated merge writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from mpinfer.api.prices import load_prices
from mpinfer.backends.batch_merge import Merger, classify_line
from mpinfer.backends.batch_plan import Chunk, ChunkState, Plan
from mpinfer.config import RequestSettings, load_config
from mpinfer.events import TaskDone, TaskFailed
from mpinfer.inputs.tasks import Task
from mpinfer.slices import RetryPolicy


def _merger(tmp_path: Path, max_retries: int = 3) -> Merger:
    config = load_config({"input": str(tmp_path / "in.jsonl"),
                          "output": str(tmp_path / "out.jsonl"), "max_retries": str(max_retries)},
                         environ={"OPENAI_API_KEY": "sk-test"}, cwd=tmp_path)
    return Merger(RequestSettings.of(config), RetryPolicy.of(config), config.require_api_keys(),
                  load_prices())


TASKS = {f"t{i}": Task(f"t{i}", f"question {i}") for i in range(4)}


def _line(custom_id: str, response: dict[str, Any] | None,
          error: dict[str, str] | None = None) -> bytes:
    return orjson.dumps({"id": "r", "custom_id": custom_id, "response": response,
                         "error": error}) + b"\n"


def _ok(custom_id: str) -> bytes:
    body = {"model": "gpt-4o-mini-2024-07-18",
            "choices": [{"message": {"content": f"answer {custom_id}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    return _line(custom_id, {"status_code": 200, "request_id": "req_1", "body": body})


def _chunk(status: str = "completed", attempt: int = 1) -> Chunk:
    chunk = Chunk("c1", 0, attempt, ["t0", "t1", "t2", "t3"], 100, ChunkState.CREATED,
                  batch_id="batch_1")
    chunk.status = status
    return chunk


def test_each_kind_of_line_is_answered_resubmitted_or_recorded_and_a_second_merge_writes_nothing(
    tmp_path: Path,
):
    # Given a batch that answered t0, failed t1 with 500 and t2 with 400, and never reached t3
    merger = _merger(tmp_path)
    output = _ok("t0")
    errors = (_line("t1", {"status_code": 500, "body": {"error": {"message": "boom"}}})
              + _line("t2",
                      {"status_code": 400,
                       "body": {"error": {"message": "bad image", "code": "invalid"}}}))
    done: set[str] = set()
    failed: set[str] = set()
    # When it is merged
    merged = merger.merge(_chunk("expired"), TASKS, output, errors, done, failed, resubmit=True,
                          latency_s=60.0)
    # Then t0 is a result line at the Batch price, t1 and t3 go again, t2 is a failure line
    assert [orjson.loads(line)["id"] for line in merged.results] == ["t0"]
    result = orjson.loads(merged.results[0])
    assert result["answer"] == "answer t0" and result["latency_s"] == 60.0
    assert result["cost"] == round((10 * 0.075 + 5 * 0.30) / 1e6, 8)
    assert sorted(merged.retry) == ["t1", "t3"]
    assert [orjson.loads(line)["error_type"] for line in merged.failures] == ["bad_request"]
    assert [type(e) for e in merged.events] == [TaskDone, TaskFailed]
    assert done == {"t0"} and failed == {"t2"}
    # And a second merge of the same files (a crash before the plan said MERGED) writes no line
    # again
    again = merger.merge(_chunk("expired"), TASKS, output, errors, done, failed, resubmit=True,
                         latency_s=60.0)
    assert again.results == [] and again.failures == [] and sorted(again.retry) == ["t1", "t3"]


def test_transient_rows_past_max_retries_are_failures_and_a_cancel_leaves_them_for_a_rerun(
    tmp_path: Path,
):
    # Given a batch on its last allowed attempt whose rows expired, and one that was cancelled
    merger = _merger(tmp_path, max_retries=1)
    expired = b"".join(_line(i, None, {"code": "batch_expired", "message": "window"})
                       for i in ("t0", "t1", "t2", "t3"))
    # When each is merged
    last = merger.merge(_chunk("expired", attempt=2), TASKS, b"", expired, set(), set(),
                        resubmit=True, latency_s=None)
    cancelled = merger.merge(_chunk("cancelled"), TASKS, b"", b"", set(), set(), resubmit=False,
                             latency_s=None)
    # Then the expired rows are failure lines (batch_expired) and nothing goes again
    assert last.retry == []
    assert {orjson.loads(x)["error_type"] for x in last.failures} == {"batch_expired"}
    # And the cancelled batch records nothing: a later run sends its rows
    assert cancelled.retry == [] and cancelled.failures == [] and cancelled.results == []
    assert sorted(cancelled.released) == ["t0", "t1", "t2", "t3"]


def test_classify_line_tells_transient_from_permanent_lines():
    # Given the line forms the Batch API writes
    cases = {"5xx": ({"status_code": 503, "body": {"error": {"message": "x"}}}, None,
                     ("server_error", True)),
             "429": ({"status_code": 429, "body": {}}, None, ("rate_limit", True)),
             "404": ({"status_code": 404, "body": {"error": {"message": "no model"}}}, None,
                     ("not_found", False)),
             "expired": (None, {"code": "batch_expired", "message": "m"}, ("batch_expired", True)),
             "timeout": (None, {"code": "request_timeout", "message": "m"},
                         ("request_timeout", True))}
    # When each is classified / Then transient ones are resubmitted and the rest recorded
    for name, (response, error, expected) in cases.items():
        got = classify_line({"custom_id": "x", "response": response, "error": error})
        assert (got.error_type, got.verdict.transient) == expected, name


def test_the_plan_survives_a_save_and_load_and_names_its_models(tmp_path: Path):
    # Given a plan with a chunk
    plan = Plan.new(tmp_path / "out.jsonl", [0], ["gpt-4o-mini"])
    chunk = plan.new_chunk(0, 1, ["a", "b"], 42)
    chunk.file_id, chunk.state = "file-1", ChunkState.UPLOADED
    # When it is saved and loaded again
    plan.save()
    loaded = Plan.load(tmp_path / "out.jsonl")
    # Then it is the same plan, and no temporary file is left beside it
    assert loaded is not None
    assert loaded.models == ["gpt-4o-mini"]
    assert loaded.plan_id == plan.plan_id
    assert loaded.chunks[0].state is ChunkState.UPLOADED and loaded.chunks[0].ids == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl.batches.json"]


def test_a_plan_written_before_the_model_index_rename_is_read_and_saved_with_the_new_key(
    tmp_path: Path,
):
    # Given a plan of version 1, as a run before the rename wrote it: chunks name their model by
    # its index under "model"
    old = {"version": 1, "plan_id": "20260101-000000-abcdef", "created_at": 1.0,
           "cancelled": False, "errors_offsets": [0, 0], "models": ["gpt-4o-mini", "gpt-4o"],
           "chunks": [{"name": "p-0001", "model": 1, "attempt": 1, "ids": ["a", "b"], "bytes": 42,
                       "state": "created", "batch_id": "batch_1"}]}
    (tmp_path / "out.jsonl.batches.json").write_bytes(orjson.dumps(old))
    # When it is loaded
    loaded = Plan.load(tmp_path / "out.jsonl")
    # Then its chunk is for the second model, and the rest of it is read as written
    assert loaded is not None
    assert len(loaded.chunks) == 1
    chunk = loaded.chunks[0]
    assert chunk.model_index == 1 and chunk.batch_id == "batch_1"
    assert chunk.state is ChunkState.CREATED and chunk.ids == ["a", "b"]
    assert loaded.covered(1) == {"a", "b"} and loaded.covered(0) == set()
    # And saved again, it names the model by the new key only
    loaded.save()
    saved = orjson.loads((tmp_path / "out.jsonl.batches.json").read_bytes())
    assert saved["version"] == 2
    assert [(c["model_index"], "model" in c) for c in saved["chunks"]] == [(1, False)]
