"""An answered task as the store writes it: its output line, priced, and the TaskDone event it
reports.

Online and Batch API answers alike (``answered``): a Result line for plain rows, a Batch API output
line for a Batch body. No openai SDK here: the Batch merge writes its lines with it too.
"""

from __future__ import annotations

import time
from typing import Any

from ..api.answer import Answer
from ..api.failures import CallError, Kind, Verdict
from ..api.prices import PriceTable
from ..api.structured import Parsed
from ..api.tokens import text_tokens
from ..events import TaskDone
from ..inputs import Task
from .records import (
    COST_ESTIMATE_FIELD,
    ENDPOINT_FIELD,
    FILTERED_FIELD,
    TRUNCATED,
    WAITED_FIELD,
    Result,
    Usage,
    batch_result_line,
    is_filtered,
    is_refusal,
    model_mismatch,
)


def answered(task: Task, output_index: int, requested: str, answer: Answer, attempts: int,
             latency: float | None, prices: PriceTable, batch_id: str | None = None,
             retries: dict[str, int] | None = None,
             prompt_estimate: int = 0, waited: float | None = None,
             endpoint: str | None = None,
             parsed: Parsed | None = None, key: int | None = None,
             place: str | None = None) -> tuple[bytes, TaskDone]:
    """The output line and the event of an answered task (for the run's output at
    ``output_index``: store/output.run_outputs); from a batch (``batch_id``) at the Batch
    price. ``retries``: the requests sent again, by the error type of the failed one. ``latency``:
    the answering request's time on the wire, or for a batch's answer the batch's own duration
    (None: the server gave no times); ``waited``: the task's time off the wire before its answering
    request left: the limits, a slot, retries' backoff (None: not measured, as for a batch);
    ``endpoint``: where it was answered, for the line (a run with an endpoints table).

    ``parsed``: what the answer named or held under --labels or --json-schema (on the line).
    An answer without usage has an unknown cost (null on the line); the event carries its
    estimate (``prompt_estimate``, the request's, and its text's tokens) for --max-cost. The event
    names the ``key`` (endpoint) that answered and, for an answer by another model than requested,
    its ``place`` (Endpoint.place)."""
    retries = retries or {}
    # Billed as the model that answered; its price when known, else the requested model's.
    priced_as = answer.model if prices.find(answer.model) is not None else requested
    batch = batch_id is not None
    cost: float | None = None
    estimate: float | None = None
    if answer.usage_known:
        cost = prices.cost(priced_as, answer.prompt_tokens, answer.completion_tokens,
                           answer.cached_tokens, batch=batch)
        cost = round(cost, 8) if cost is not None else None
    else:
        written = text_tokens((answer.content or "") + (answer.reasoning or ""))
        estimate = prices.cost(priced_as, prompt_estimate, written, batch=batch)
        estimate = round(estimate, 8) if estimate is not None else None
    latency = None if latency is None else round(latency, 4)
    waited = None if waited is None else round(waited, 4)
    if task.body is not None:
        meta: dict[str, Any] = {"requested_model": requested, "latency_s": latency,
                                "attempts": attempts, "retries": retries,
                                "processed_at": time.time(), "cost": cost}
        if waited is not None:
            meta[WAITED_FIELD] = waited
        if batch_id is not None:
            meta["batch_id"] = batch_id
        if answer.filtered is not None and answer.body is None:  # a prompt filtered: no body
            meta[FILTERED_FIELD] = answer.filtered
        if estimate is not None:
            meta[COST_ESTIMATE_FIELD] = estimate
        if endpoint is not None:
            meta[ENDPOINT_FIELD] = endpoint
        if parsed is not None:
            meta.update(parsed.fields())
        line = batch_result_line(task.id, answer.headers.get("x-request-id"), answer.body or {},
                                 meta)
    else:
        usage = None
        if answer.usage_known:
            usage = Usage(answer.prompt_tokens, answer.completion_tokens, answer.total_tokens,
                          answer.cached_tokens, answer.reasoning_tokens)
        line = Result(
            id=task.id, input_prompt=task.prompt, images=list(task.images), answer=answer.content,
            model=answer.model, requested_model=requested, usage=usage,
            finish_reason=answer.finish_reason, latency_s=latency, waited_s=waited,
            attempts=attempts,
            processed_at=time.time(), cost=cost, refusal=answer.refusal,
            reasoning_content=answer.reasoning, retries=retries, filtered=answer.filtered,
            cost_estimate=estimate, endpoint=endpoint, variant=task.variant,
            label=parsed.label if parsed is not None else None,
            parsed=parsed.parsed if parsed is not None else None,
        ).to_line()
    mismatch = model_mismatch(requested, answer.model, answer.filtered)
    return line, TaskDone(task.id, output_index, answer.prompt_tokens, answer.completion_tokens,
                          latency, cost, mismatch, attempts,
                          refused=is_refusal(answer.refusal, answer.content),
                          truncated=answer.finish_reason == TRUNCATED, retries=retries,
                          filtered=is_filtered(answer.filtered),
                          no_usage=not answer.usage_known, estimated_cost=estimate, key=key,
                          waited_s=waited, batch=batch, endpoint=place if mismatch else None)


def wrong_model(requested: str, answer: Answer, where: str) -> CallError | None:
    """What --strict-model makes of an answer: by another model than ``requested``, a wrong_model
    failure naming the model that answered and ``where`` it came from; else None (done)."""
    if not model_mismatch(requested, answer.model, answer.filtered):
        return None
    return CallError(Kind.WRONG_MODEL, None, f"requested {requested}, answered by {answer.model} "
                     f"{where} (--strict-model)", Verdict.FAIL)
