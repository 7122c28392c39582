"""The on-disk schema: Result lines in the output, Failure lines in ``<output>.errors.jsonl``.

Each record is one JSON object on one line. Two forms:
- mpinfer's own (``Result``, ``Failure``), ``id`` first;
- for Batch API inputs, the Batch API's output and error forms (``{"id", "custom_id", "response",
  "error"}``), so that code that reads Batch API output reads ours; its task id is ``custom_id``,
  and what the Batch API has no field for (latency, attempts, time, cost, the requested model) sits
  under ``"mpinfer"``, which such code ignores.
``view`` reads either form of an answer into one RecordView, and ``failure_view`` either form of
a failure line into one FailureView, so status, validate, export, the report and a worker's
recovery need not care; ``record_id`` is the one rule for a line's task id.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

RESULT_FIELDS: tuple[str, ...] = (
    "id", "input_prompt", "images", "answer", "model", "requested_model", "usage", "finish_reason",
    "latency_s", "attempts", "processed_at", "cost",
)
USAGE_FIELDS: tuple[str, ...] = ("prompt_tokens", "completion_tokens", "total_tokens")
RESULT_KEYS, USAGE_KEYS = frozenset(RESULT_FIELDS), frozenset(USAGE_FIELDS)  # a complete line's
# A refusal keeps its text here, with ``answer`` null:
# for a safety benchmark the refusal is the measurement.
REFUSAL_FIELD = "refusal"
REASONING_FIELD = "reasoning_content"  # written only when the server sent a reasoning text
# A content filter's verdict (Azure): written only when the server's filter stopped the request
# (``filtered_record``), with ``answer`` null; like a refusal, a measurement and done.
FILTERED_FIELD = "filtered"
COST_ESTIMATE_FIELD = "cost_estimate"  # an answer without usage: what --max-cost counts it at
WAITED_FIELD = "waited_s"  # off the wire before the answer left: limits, a slot, backoff
# Where an answer came from (``Endpoint.place``: base URL, or Azure deployment and base URL, never
# the key): written only by a run with an endpoints table; otherwise the manifest's base_url.
ENDPOINT_FIELD = "endpoint"
VARIANT_FIELD = "variant"  # the prompt variant the task was sent as (--variants); only then
# --labels / --json-schema (api/structured.py): the label an answer named, the object it held
LABEL_FIELD, PARSED_FIELD = "label", "parsed"
JUDGE_MODEL_FIELD = "judge_model"  # a judge line's (store/judged.py): who judged
CONTENT_FILTER = "content_filter"  # the finish_reason of a filtered completion, the 400's code
PROMPT, COMPLETION = "prompt", "completion"  # where the filter stopped the request
TRUNCATED = "length"  # the finish_reason of an answer cut off at max_tokens
# gpt-4o-mini -> gpt-4o-mini-2024-07-18 is the same model; so are -0613, -20240620 and -v1.2.
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4}|\d{8}|v?\d+(\.\d+)*)$")
FAILURE_FIELDS: tuple[str, ...] = ("id", "error_type", "status", "message", "attempts",
                                   "processed_at")


@dataclass(slots=True)
class Usage:
    """Tokens as the server counted them.

    ``cached_tokens`` is the part of the prompt it had cached, and ``reasoning_tokens`` the part of
    the completion a reasoning model spent thinking (billed as output)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_dict(cls, data: Any) -> Usage:
        """The usage a record holds; zeros for what it lacks (or all zeros when it holds none)."""
        if not isinstance(data, dict):
            return cls()
        get = data.get
        return cls(int(get("prompt_tokens") or 0), int(get("completion_tokens") or 0),
                   int(get("total_tokens") or 0), int(get("cached_tokens") or 0),
                   int(get("reasoning_tokens") or 0))


@dataclass
class Result:
    """One answered task, as written to the output (not frozen, for speed: one an answer)."""

    id: str
    input_prompt: str
    images: list[str]
    answer: str | None
    model: str | None
    requested_model: str
    usage: Usage | None = field(default_factory=Usage)  # None: the server sent no usage
    finish_reason: str | None = None
    # The answering request's time on the wire; a batch's answer: the batch's duration (None: the
    # server gave no times).
    latency_s: float | None = 0.0
    attempts: int = 1
    processed_at: float = 0.0
    cost: float | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    # Retries by the error type of the failed attempt ({"rate_limit": 2}): the report's
    # failures-and-retries chart.
    # Not a required field: lines of earlier versions have only ``attempts``.
    retries: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, Any] | None = None  # ``filtered_record``; written only when set
    # An answer without usage: its estimated cost (``cost`` is null), for a later run's
    # --max-cost; written only when set.
    cost_estimate: float | None = None
    endpoint: str | None = None  # ENDPOINT_FIELD; written only when set
    # Off the wire before the answering request left (the limits, a slot, retries' backoff);
    # written only when measured (a batch's answers have none).
    waited_s: float | None = None
    variant: str | None = None  # VARIANT_FIELD; written only in a variant run
    # --labels / --json-schema: the label the answer named, the object it held (written when set)
    label: str | None = None
    parsed: dict[str, Any] | None = None

    def to_line(self) -> bytes:
        """The record as one output line."""
        # Not asdict(), which deep-copies every field (most of the time a merge of 50,000 batch
        # answers took); the instance's dict holds the fields in their order, Usage as it is.
        data = dict(self.__dict__)
        if self.reasoning_content is None:
            del data[REASONING_FIELD]
        if self.filtered is None:
            del data[FILTERED_FIELD]
        if self.cost_estimate is None:
            del data[COST_ESTIMATE_FIELD]
        if self.waited_s is None:
            del data[WAITED_FIELD]
        if self.endpoint is None:
            del data[ENDPOINT_FIELD]
        if self.variant is None:
            del data[VARIANT_FIELD]
        if self.label is None:
            del data[LABEL_FIELD]
        if self.parsed is None:
            del data[PARSED_FIELD]
        return orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """A Result from a decoded output line (fields it lacks are None)."""
        values: dict[str, Any] = {name: data.get(name) for name in
                                  (*RESULT_FIELDS, REFUSAL_FIELD, REASONING_FIELD, FILTERED_FIELD,
                                   COST_ESTIMATE_FIELD, WAITED_FIELD, ENDPOINT_FIELD,
                                   VARIANT_FIELD, LABEL_FIELD, PARSED_FIELD)}
        usage = data.get("usage")
        values["usage"] = None if usage is None else Usage.from_dict(usage)
        values["retries"] = _retries(data.get("retries"))
        return cls(**values)


@dataclass(frozen=True)
class Failure:
    """One failed attempt at a task (after its retries), as written to the errors file."""

    id: str
    error_type: str
    status: int | None
    message: str
    attempts: int
    processed_at: float
    # As in Result; not in lines of earlier versions
    retries: dict[str, int] = field(default_factory=dict)
    # An answer that failed after it was paid for (a bad_answer): its text, usage and cost, so
    # that the tokens count (written only when set)
    paid: Paid | None = None

    def to_line(self) -> bytes:
        """The record as one errors-file line."""
        data = asdict(self)
        del data["paid"]
        if self.paid is not None:
            data.update(self.paid.fields())
        return orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        """A Failure from a decoded errors-file line (fields it lacks are None)."""
        values: dict[str, Any] = {name: data.get(name) for name in FAILURE_FIELDS}
        values["retries"] = _retries(data.get("retries"))
        return cls(**values, paid=Paid.of(data))


@dataclass(frozen=True)
class Paid:
    """What a failed task's answers cost (tokens billed though the task is not done): the last
    answer's text, the usage and cost of every answer it got."""

    text: str | None
    usage: Usage
    cost: float | None

    def fields(self) -> dict[str, Any]:
        """The fields a failure line gains."""
        return {"text": self.text, "usage": asdict(self.usage), "cost": self.cost}

    @classmethod
    def of(cls, data: Any) -> Paid | None:
        """What a decoded failure line (or its Batch API ``mpinfer`` part) says was paid."""
        if not isinstance(data, dict) or not isinstance(data.get("usage"), dict):
            return None
        return cls(_text(data.get("text")), Usage.from_dict(data["usage"]),
                   _number(data.get("cost")))


def _retries(value: Any) -> dict[str, int]:
    """A line's retries by type, or none when it has no such field (an earlier version wrote it)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}


def same_model(requested: str | None, reported: str | None) -> bool:
    """Whether the server's model is the one asked for
    (a dated or versioned snapshot of it counts). A line naming a model by anything but a
    string names no model."""
    if not (isinstance(requested, str) and isinstance(reported, str) and requested and reported):
        return False
    if reported == requested or reported.split("/")[-1] == requested.split("/")[-1]:
        return True
    return reported.startswith(requested) and bool(_SNAPSHOT.fullmatch(reported[len(requested):]))


def missing_fields(data: dict[str, Any]) -> list[str]:
    """The required Result fields a decoded output line lacks (usage counted as one field)."""
    usage = data.get("usage")
    if data.keys() >= RESULT_KEYS and (usage is None or (isinstance(usage, dict)
                                                          and usage.keys() >= USAGE_KEYS)):
        return []  # the common case, told at C speed (validate asks it of a million lines)
    missing = [name for name in RESULT_FIELDS if name not in data]
    if usage is None:  # null: the server sent none (or the line has no usage, named above)
        return missing
    if not isinstance(usage, dict) or any(k not in usage for k in USAGE_FIELDS):
        missing.append("usage.*")
    return missing


BATCH_FIELDS: tuple[str, ...] = ("id", "custom_id", "response", "error")


def batch_request_id() -> str:
    """A fresh request id in the Batch API's form (``batch_req_...``)."""
    return f"batch_req_{uuid.uuid4().hex}"


def batch_result_line(custom_id: str, request_id: str | None, body: dict[str, Any],
                      meta: dict[str, Any]) -> bytes:
    """A Batch API output line for one answered request."""
    record = {"id": batch_request_id(), "custom_id": custom_id,
              "response": {"status_code": 200, "request_id": request_id, "body": body},
              "error": None, "mpinfer": meta}
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def batch_error_line(custom_id: str, status: int | None, code: str, message: str,
                     meta: dict[str, Any]) -> bytes:
    """A Batch API error line for one failed request."""
    response = None if status is None else {"status_code": status, "request_id": None,
                                            "body": {"error": {"message": message, "code": code}}}
    record = {"id": batch_request_id(), "custom_id": custom_id, "response": response,
              "error": {"code": code, "message": message}, "mpinfer": meta}
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def failure_line(task_id: str, as_batch: bool, error_type: str, status: int | None, message: str,
                 attempts: int, retries: dict[str, int] | None = None,
                 batch_id: str | None = None, paid: Paid | None = None) -> bytes:
    """The errors-file line of a failed task in its input's form: a Batch API error line for a task
    given as a request body (``as_batch``), else a Failure. ``message`` must be redacted already;
    ``paid``: what its answers cost, when it got some (a bad_answer)."""
    now = time.time()
    if not as_batch:
        return Failure(task_id, error_type, status, message, attempts, now,
                       dict(retries or {}), paid).to_line()
    meta: dict[str, Any] = {"attempts": attempts, "retries": dict(retries or {}),
                            "processed_at": now, **(paid.fields() if paid else {})}
    if batch_id is not None:
        meta["batch_id"] = batch_id
    return batch_error_line(task_id, status, error_type, message, meta)


# Not frozen: a frozen dataclass's __init__ costs several times as much, and status and validate
# build one for each of a million lines.
@dataclass(slots=True)
class RecordView:
    """One output line in either form, reduced to what status, validate and export read."""

    id: str
    answer: str | None
    model: str | None
    requested_model: str | None
    usage: Usage
    latency_s: float | None
    processed_at: float | None
    cost: float | None
    batch: bool
    refusal: str | None = None
    finish_reason: str | None = None
    embedding: bool = False  # an embeddings answer: no text to check
    filter: dict[str, Any] | None = None  # what a content filter said (``filtered_record``)
    no_usage: bool = False  # the server sent no usage: tokens and cost unknown
    waited_s: float | None = None  # before the answer's request left (None: not measured)

    @property
    def refused(self) -> bool:
        """The model declined (``is_refusal``): a result, and for a safety benchmark the result."""
        return is_refusal(self.refusal, self.answer)

    @property
    def filtered(self) -> bool:
        """The server's content filter stopped it (``is_filtered``): a result, like a refusal."""
        return is_filtered(self.filter)

    @property
    def mismatch(self) -> bool:
        """Answered by another model than the one requested (``model_mismatch``)."""
        return model_mismatch(self.requested_model, self.model, self.filter)

    @property
    def truncated(self) -> bool:
        """The answer was cut off at the token limit (``finish_reason: "length"``)."""
        return self.finish_reason == TRUNCATED


def is_refusal(refusal: str | None, answer: str | None) -> bool:
    """Whether an answer is a refusal: a refusal text that is not blank, and no answer (null or
    empty). The one definition, for a line (``RecordView.refused``) and for the event of an answer;
    a blank refusal is none (with no answer, the line is an empty answer, as --validate says)."""
    return isinstance(refusal, str) and bool(refusal.strip()) and not answer


def filtered_record(source: str, results: Any) -> dict[str, Any]:
    """What a content filter said, as a line keeps it: where it stopped the request (PROMPT: a 400
    ``content_filter``; COMPLETION: a 200 ending ``finish_reason: "content_filter"``) and, per
    category (hate, sexual, violence, self_harm, ...), what the server said of it (``filtered``,
    ``severity``). The one shape, for the online answer and the record view."""
    categories = {str(name): dict(result) for name, result in _object(results).items()
                  if isinstance(result, dict)}
    return {"source": source, "categories": categories}


def is_filtered(filtered: Any) -> bool:
    """Whether a line's ``filtered`` says a content filter stopped its request: the one
    definition, beside ``is_refusal``; done, not failed, and not an empty answer."""
    return isinstance(filtered, dict) and filtered.get("source") in (PROMPT, COMPLETION)


def model_mismatch(requested: str | None, reported: str | None, filtered: Any = None) -> bool:
    """Whether an answer came from another model than requested (``same_model``). A prompt the
    filter stopped was answered by no model: it names none, and that is no mismatch."""
    if is_filtered(filtered) and filtered.get("source") == PROMPT and reported is None:
        return False
    return not same_model(requested, reported)


class Mismatches:
    """``model_mismatch`` over many lines, decided once for each pair of models seen without a
    filter's verdict (status and validate ask it of a million lines that name a few models);
    ``known`` holds the verdicts by (requested, reported), for a loop to read without a call."""

    def __init__(self) -> None:
        self.known: dict[tuple[str, str], bool] = {}

    def __call__(self, requested: Any, reported: Any, filtered: Any = None) -> bool:
        """``model_mismatch(requested, reported, filtered)``."""
        if filtered is None and requested.__class__ is str and reported.__class__ is str:
            known = self.known.get((requested, reported))
            if known is None:
                known = self.known[(requested, reported)] = model_mismatch(requested, reported)
            return known
        return model_mismatch(requested, reported, filtered)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class ResponsesOutput:
    """What a Responses API body says: its output text, refusal and reasoning summary, and whether
    it was cut off at max_output_tokens.

    One reader for the online answer (api.responses) and the record view."""

    text: str | None
    refusal: str | None
    reasoning: str | None
    truncated: bool

    @classmethod
    def of(cls, body: dict[str, Any]) -> ResponsesOutput:
        """Read a Responses API body's output items: the message text, refusals, reasoning
        summaries, and whether ``max_output_tokens`` cut it short."""
        texts: list[str] = []
        refusals: list[str] = []
        reasoning: list[str] = []
        for item in body.get("output") or ():
            item = _object(item)
            if item.get("type") == "reasoning":
                reasoning += [str(_object(s).get("text", "")) for s in item.get("summary") or ()]
            for part in item.get("content") or () if item.get("type") == "message" else ():
                part = _object(part)
                if part.get("type") == "output_text":
                    texts.append(str(part.get("text", "")))
                elif part.get("type") == "refusal":
                    refusals.append(str(part.get("refusal", "")))
        truncated = _object(body.get("incomplete_details")).get("reason") == "max_output_tokens"
        return cls("".join(texts) if texts or not refusals else None, "".join(refusals) or None,
                   "\n".join(reasoning) or None, truncated)


def _response_message(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Responses API body read as a chat message (its output text, or its refusal) and choice."""
    out = ResponsesOutput.of(body)
    return ({"content": out.text, "refusal": out.refusal},
            {"finish_reason": TRUNCATED if out.truncated else "stop"})


def usage_of_body(usage: Any) -> Usage:
    """A server's usage object (``*_tokens_details`` nested, as OpenAI sends it; the Responses API's
    input/output tokens too) as our flat Usage."""
    if not isinstance(usage, dict):
        return Usage()
    if "input_tokens" in usage:
        usage = {"prompt_tokens": usage.get("input_tokens"),
                 "completion_tokens": usage.get("output_tokens"),
                 "total_tokens": usage.get("total_tokens"),
                 "prompt_tokens_details": usage.get("input_tokens_details"),
                 "completion_tokens_details": usage.get("output_tokens_details")}
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    return Usage.from_dict({
        **usage,
        "cached_tokens": (prompt_details.get("cached_tokens")
                          if isinstance(prompt_details, dict) else 0),
        "reasoning_tokens": (completion_details.get("reasoning_tokens")
                             if isinstance(completion_details, dict) else 0),
    })


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def number(value: Any) -> float | None:
    """A line's number field (cost, latency, a time) as a float; None when it holds no number."""
    return value if value.__class__ is float else _number(value)


def _object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one:
    a part of the wrong type reads as missing."""
    return value if isinstance(value, dict) else {}


# What makes a line an answer, in every version of our format (answer, model and usage): a line with
# an id and nothing else (or a task input line pasted into the output) must never count as done, or
# its task would never be sent.


def is_answer(obj: Any) -> bool:
    """Whether a decoded output line is an answer record: ours with its answer, model and usage, a
    judge's line, or a Batch API output line whose response is a 200 with a body."""
    if not isinstance(obj, dict):
        return False
    if "custom_id" in obj:
        response = obj.get("response")
        return (isinstance(response, dict) and response.get("status_code") == 200
                and isinstance(response.get("body"), dict))
    # Spelt out, not a loop over names: the resume scan asks this of every line.
    # usage is null when the server sent none (its cost unknown): still an answer.
    if "answer" not in obj:  # a judge's line (store/judged.py) is done too
        return JUDGE_MODEL_FIELD in obj and "of" in obj
    return "model" in obj and (isinstance(obj.get("usage"), dict)
                               or ("usage" in obj and obj["usage"] is None))


def record_id(obj: Any) -> str | None:
    """The task id of a decoded line of any kind (an answer, a failure), or None when it has none.

    The one rule for a line's id. A line in the Batch API's form (it has a ``custom_id`` key) is
    known by ``custom_id`` alone: its ``id`` is the provider's request id, never a task's, so a
    ``custom_id`` that is not usable leaves the line without one. Other lines are known by ``id``.
    An id is a non-empty string, or an integer (an input's ids may be JSON numbers) read as its
    decimal text; a bool is not an id.
    """
    if not isinstance(obj, dict):
        return None
    value = obj.get("custom_id") if "custom_id" in obj else obj.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        return None
    return str(value)


def answer_id(obj: Any) -> str | None:
    """The task id of an answer record (``record_id``); None for any other line (the resume scan
    counts only these)."""
    # mpinfer's own line first (is_answer and record_id spelt out: asked of a million lines)
    if isinstance(obj, dict) and "answer" in obj and "model" in obj and "custom_id" not in obj:
        value, usage = obj.get("id"), obj.get("usage")
        if value.__class__ is str and (usage.__class__ is dict
                                       or (usage is None and "usage" in obj)):
            return value or None
    return record_id(obj) if is_answer(obj) else None


def view(obj: Any) -> RecordView | None:
    """Read a decoded output line; None when it is not an answer record of either form."""
    task_id = answer_id(obj)
    if task_id is None:
        return None
    if "custom_id" in obj:
        body = _object(_object(obj.get("response")).get("body"))
        choices = body.get("choices")
        choice = _object(choices[0]) if isinstance(choices, list) and choices else {}
        message = _object(choice.get("message"))
        meta = _object(obj.get("mpinfer"))
        if body.get("object") == "response":
            message, choice = _response_message(body)
        filtered = meta.get(FILTERED_FIELD)
        if choice.get("finish_reason") == CONTENT_FILTER:
            filtered = filtered_record(COMPLETION, choice.get("content_filter_results"))
        return RecordView(
            id=task_id, answer=message.get("content"), embedding=body.get("object") == "list",
            model=body.get("model"), requested_model=meta.get("requested_model"),
            usage=usage_of_body(body.get("usage")),
            latency_s=_number(meta.get("latency_s")), waited_s=_number(meta.get(WAITED_FIELD)),
            processed_at=_number(meta.get("processed_at")), cost=_number(meta.get("cost")),
            batch=True, refusal=_text(message.get("refusal")),
            finish_reason=_text(choice.get("finish_reason")),
            filter=filtered if is_filtered(filtered) else None,
            no_usage=bool(body) and body.get("usage") is None,
        )
    if JUDGE_MODEL_FIELD in obj and "answer" not in obj:  # a judge's line: its text, its model
        judge = _text(obj.get(JUDGE_MODEL_FIELD))
        return RecordView(id=task_id, answer=_text(obj.get("text")), model=judge,
                          requested_model=judge, usage=Usage.from_dict(obj.get("usage")),
                          latency_s=None, processed_at=None, cost=_number(obj.get("cost")),
                          batch=False, no_usage=obj.get("usage") is None and bool(obj.get("sent")))
    get = obj.get  # mpinfer's own form: each field read once, a float taken as it is
    usage, filtered = get("usage"), get(FILTERED_FIELD)
    return RecordView(
        id=task_id, answer=get("answer"), model=get("model"),
        requested_model=get("requested_model"),
        usage=Usage() if usage is None else Usage.from_dict(usage),
        latency_s=number(get("latency_s")), waited_s=number(get(WAITED_FIELD)),
        processed_at=number(get("processed_at")), cost=number(get("cost")), batch=False,
        refusal=_text(get(REFUSAL_FIELD)), finish_reason=_text(get("finish_reason")),
        filter=filtered if filtered is not None and is_filtered(filtered) else None,
        no_usage=usage is None,
    )


def missing_batch_fields(data: dict[str, Any]) -> list[str]:
    """The Batch API fields a line lacks (``--validate`` names them); empty when it has all."""
    missing = [name for name in BATCH_FIELDS if name not in data]
    response = data.get("response")
    if (not isinstance(response, dict) or "status_code" not in response
            or not isinstance(response.get("body"), dict)):
        missing.append("response.status_code/body")
    return missing


@dataclass(frozen=True, slots=True)
class FailureView:
    """One errors-file line in either form (a Failure, or a Batch API error line), reduced to what
    status, export, the report and a dead worker's recovery read."""

    id: str
    error_type: str  # "unknown" when the line names none
    status: int | None
    message: str
    attempts: int
    retries: dict[str, int] | None  # None: the line has no such field (an earlier version wrote it)
    processed_at: float | None
    batch: bool
    paid: Paid | None = None  # answers paid for, though the task failed (a bad_answer)


def failure_view(obj: Any) -> FailureView | None:
    """Read a decoded errors-file line; None when it has no task id (``record_id``)."""
    task_id = record_id(obj)
    if task_id is None:
        return None
    batch = "custom_id" in obj
    if batch:  # the Batch API's form: error in "error", status in "response", ours in "mpinfer"
        error = _object(obj.get("error"))
        error_type, message = error.get("code"), error.get("message")
        status = _object(obj.get("response")).get("status_code")
        meta = _object(obj.get("mpinfer"))
    else:
        error_type, message, meta = obj.get("error_type"), obj.get("message"), obj
        status = obj.get("status")
    attempts, retries, number = meta.get("attempts"), meta.get("retries"), _number(status)
    return FailureView(
        task_id, str(error_type) if error_type not in (None, "") else "unknown",
        None if number is None else int(number), "" if message is None else str(message),
        int(_number(attempts) or 0), _retries(retries) if isinstance(retries, dict) else None,
        _number(meta.get("processed_at")), batch, Paid.of(meta))
