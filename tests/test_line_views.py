"""The store's views of a line: one id rule (record_id) for every line, one view of a failure line
in either form (failure_view), and one definition of a refusal (is_refusal) for line and event."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from mpinfer.api.answer import Answer
from mpinfer.api.prices import PriceTable
from mpinfer.inputs.tasks import Task
from mpinfer.store.answers import answered
from mpinfer.store.records import (
    answer_id,
    batch_result_line,
    failure_line,
    failure_view,
    is_refusal,
    record_id,
    view,
)

OURS = {"answer": "yes", "model": "m", "usage": {"prompt_tokens": 1}}
BATCH = {"response": {"status_code": 200, "body": {"choices": [{"message": {"content": "yes"}}]}}}


@pytest.mark.parametrize(("line", "expected"), [
    ({"id": "t1", **OURS}, "t1"),
    ({"id": 7, **OURS}, "7"),
    ({"id": "", **OURS}, None),
    ({"id": True, **OURS}, None),
    ({"id": None, **OURS}, None),
    ({"id": "batch_req_1", "custom_id": "t1", **BATCH}, "t1"),
    ({"id": "batch_req_1", "custom_id": 7, **BATCH}, "7"),
    ({"id": "batch_req_1", "custom_id": None, **BATCH}, None),
    ({"id": "batch_req_1", "custom_id": "", **BATCH}, None),
])
def test_every_reader_of_a_line_reads_its_id_by_one_rule(line: dict[str, Any],
                                                         expected: str | None) -> None:
    # Given an answer line in either form, with a good or an unusable id
    # When its id is read as a line, as an answer, and through the record view
    record = view(line)
    # Then all three agree (a Batch line is never known by its request id)
    assert record_id(line) == expected and answer_id(line) == expected
    assert (record.id if record is not None else None) == expected


def test_an_id_that_is_not_an_answer_is_a_line_id_but_no_answer_id() -> None:
    # Given a failure line
    line = {"id": "t1", "error_type": "timeout"}
    # When its id is read / Then it has one, but it is not an answer
    assert (record_id(line), answer_id(line), view(line)) == ("t1", None, None)


def test_a_failure_line_reads_the_same_in_either_form() -> None:
    # Given the same failure written in mpinfer's form and in the Batch API's
    retries = {"rate_limit": 3}
    ours = orjson.loads(failure_line("t1", False, "rate_limit", 429, "slow down", 4, retries))
    batch = orjson.loads(failure_line("t1", True, "rate_limit", 429, "slow down", 4, retries,
                                      batch_id="batch_1"))
    # When each is read as a failure
    a, b = failure_view(ours), failure_view(batch)
    # Then both views say the same, bar the form
    assert a is not None and b is not None and (a.batch, b.batch) == (False, True)
    for got in (a, b):
        assert (got.id, got.error_type, got.status, got.message, got.attempts, got.retries) == (
            "t1", "rate_limit", 429, "slow down", 4, {"rate_limit": 3})
        assert got.processed_at is not None and got.processed_at > 0


def test_a_failure_line_of_an_earlier_version_reads_with_defaults() -> None:
    # Given a failure line with no retries, no type and no attempts, and a line with no id
    old = {"id": "t1", "status": None, "message": "gone"}
    # When they are read
    got = failure_view(old)
    # Then the missing fields read as unknown, none and nothing; the line with no id is no failure
    assert got is not None
    assert (got.error_type, got.retries, got.attempts, got.status) == ("unknown", None, 0, None)
    assert failure_view({"error_type": "timeout"}) is None


@pytest.mark.parametrize(("refusal", "content", "refused"), [
    ("I can't help with that.", None, True),
    ("I can't help with that.", "", True),
    ("I can't help with that.", "Sure: ...", False),
    ("  ", None, False),  # a blank refusal is no refusal (tests/test_reasoning_refusals.py)
    (None, None, False),
])
def test_the_event_and_the_line_of_an_answer_agree_on_a_refusal(
        refusal: str | None, content: str | None, refused: bool) -> None:
    # Given an answer with (or without) a refusal and content
    answer = Answer(content=content, model="m", finish_reason="stop", prompt_tokens=1,
                    completion_tokens=1, total_tokens=2, headers={}, refusal=refusal)
    # When it becomes a line and an event
    line, done = answered(Task("t1", "hi"), 0, "m", answer, 1, 0.1, PriceTable({}))
    record = view(orjson.loads(line))
    # Then the event, the line's view and the one definition all say the same
    assert record is not None
    assert (done.refused, record.refused, is_refusal(refusal, content)) == (refused,) * 3


def test_a_batch_answer_line_has_its_custom_id_as_its_id() -> None:
    # Given an answer written in the Batch API's form
    body = {"choices": [{"message": {"content": "x"}}]}
    line = orjson.loads(batch_result_line("t1", "req_1", body, {}))
    # When its id is read / Then it is the task's, not the request line's
    assert record_id(line) == "t1" and line["id"] != "t1"
