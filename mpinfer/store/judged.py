"""A judge's line: its verdict on one answer, as the judge output (``output.judge_output``) keeps
it, one line per judged id:

    {"id", "label"?, "parsed"?, "text", "judge_model", "of", "usage", "cost", "sent"}

``of`` says what was judged (an answer, a refusal, a filtered answer); ``sent`` is false for a
refusal or filtered answer labelled without a request (``JudgeForm.refusal_label`` /
``filtered_label``). The resume scan counts these lines as done (``records.is_answer``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import orjson

from .records import JUDGE_MODEL_FIELD, Usage


class Judged(StrEnum):
    """What a judge line judges (its ``of``)."""

    ANSWER = "answer"
    REFUSAL = "refusal"
    FILTERED = "filtered"


@dataclass(frozen=True)
class JudgeForm:
    """What a judging run's lines need beyond an answer: the judge's model, and the labels of the
    refusals and filtered answers not sent (``send_refusals`` false)."""

    judge_model: str
    send_refusals: bool = False
    refusal_label: str = "refused"
    filtered_label: str = "filtered"

    def unsent_label(self, of: Judged) -> str | None:
        """The label ``of`` gets without a request, or None when it is sent to the judge."""
        if of is Judged.ANSWER or self.send_refusals:
            return None
        return self.refusal_label if of is Judged.REFUSAL else self.filtered_label


def judge_line(task_id: str, form: JudgeForm, of: Judged, *, text: str | None,
               fields: dict[str, Any] | None = None, usage: Usage | None = None,
               cost: float | None = None, sent: bool = True) -> bytes:
    """One judge line: the judge's ``text`` and what it named or held (``fields``: label,
    parsed), its usage and cost; an unsent one has its label and no text, usage or cost."""
    data: dict[str, Any] = {"id": task_id, **(fields or {}), "text": text,
                            JUDGE_MODEL_FIELD: form.judge_model, "of": of.value,
                            "usage": asdict(usage) if usage is not None else None,
                            "cost": cost, "sent": sent}
    return orjson.dumps(data, option=orjson.OPT_APPEND_NEWLINE)
