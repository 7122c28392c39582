"""What follows a failed attempt, given what the task has been through: a ``Step`` (retry after a
delay, fail, disable the key or stop the run).

``api.failures`` says what a failure calls for (its ``Verdict``, by the one table); ``decide``
weighs that against the task's history (its retries, how long it has been rate limited) and the
run's ``RetryPolicy`` (a slice of its settings, slices.py). The online runner and the Batch client
do what the step says and decide nothing themselves. The functions here are pure (the clock's
reading and the random generator are passed in), so every branch is tested without waiting.

Retries are counted only for failures that waiting cannot explain: a 429 for rate waits as long as
the patience allows (its hint, or a backoff when it gave none) without using up ``--max-retries``,
and so does a connection error while the server is down (the limiter holds every request until a
probe gets through).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..slices import RetryPolicy
from .failures import CallError, Kind, Verdict

MAX_BACKOFF_S = 60.0
# A rate-limited task with no hint waits a backoff that stops growing here: the limiter's learned
# pace does the rest, and a server that recovers is not left idle.
MAX_RATE_BACKOFF_S = 2.0


@dataclass
class Attempts:
    """What one task has been through so far (its runner's own, mutable)."""

    count: int = 0                       # requests sent
    retries: int = 0                     # retries counted against --max-retries
    rate_limited: int = 0                # 429s for rate
    limited_since: float | None = None   # when its first 429 came (clock of the runner)
    # Requests sent again, by the error type of the failed one (a line's ``retries``).
    by_type: dict[str, int] = field(default_factory=dict)
    # Off the wire before its answering request left: for the limits, a slot, a retry's backoff;
    # the current wait began at ``waiting_since`` (the runner's clock).
    waited_s: float = 0.0
    waiting_since: float = 0.0

    def waiting(self, now: float) -> None:
        """Count a 429 for rate (a WAIT verdict): the patience runs from the first."""
        self.rate_limited += 1
        if self.limited_since is None:
            self.limited_since = now

    def again(self, error: CallError, step: Step) -> None:
        """Count a request sent again after ``error`` as ``step`` says (waits included, by type)."""
        if step.counted:
            self.retries += 1
        self.by_type[error.error_type] = self.by_type.get(error.error_type, 0) + 1


@dataclass(frozen=True)
class Step:
    """What to do after a failed attempt.

    RETRY: send again after ``delay_s`` (``counted``: a retry that uses up --max-retries).
    FAIL: write the failure with ``message``. FILTERED: write the content filter's answer as
    done. DISABLE_KEY, DROP_MODEL, ABORT: as named."""

    verdict: Verdict
    delay_s: float = 0.0
    counted: bool = False
    message: str = ""


def backoff_s(attempt: int, base: float, rng: random.Random, retry_after: float | None = None,
              ceiling_s: float = MAX_BACKOFF_S) -> float:
    """How long to wait before retry number ``attempt`` (1 for the first retry).

    Exponential with equal jitter, so that workers that failed together do not retry together; a
    server's Retry-After is a floor, not a suggestion.
    """
    ceiling = min(ceiling_s, base * (2.0 ** min(attempt - 1, 32)))
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, retry_after + rng.uniform(0, min(1.0, base)))
    return delay


def patience_spent(waited_s: float, policy: RetryPolicy) -> bool:
    """Whether a task that has waited ``waited_s`` (rate limited, or on a server that is down) has
    waited as long as ``--patience`` allows."""
    return waited_s >= policy.patience_s


def decide(error: CallError, tries: Attempts, policy: RetryPolicy, rng: random.Random, now: float,
           *, outage: bool = False, limiter: bool = True) -> Step:
    """The next step for a task whose attempt failed with ``error``.

    ``outage``: the limiter says the server is down (connection errors with no answer between them).
    ``limiter``: a limiter pauses the rate-limited lane for the server's hint; without one (the
    Batch client) the step itself waits the hint.
    """
    if error.verdict in (Verdict.FAIL, Verdict.ABORT, Verdict.DISABLE_KEY, Verdict.FILTERED,
                         Verdict.DROP_MODEL):
        return Step(error.verdict, message=error.message)
    if error.verdict is Verdict.WAIT:
        since = now if tries.limited_since is None else tries.limited_since
        waited = now - since
        if patience_spent(waited, policy):
            return Step(Verdict.FAIL, message=f"still rate limited after waiting {waited:.0f}s "
                        f"(the patience, --patience {policy.patience_s:g}): {error.message}")
        if error.retry_after is not None:
            if not limiter:  # the hint, within the patience left
                hinted = error.retry_after + rng.uniform(0, min(1.0, policy.backoff_s))
                return Step(Verdict.RETRY, min(hinted, policy.patience_s - waited))
            # The limiter pauses the whole lane for the hint; the request goes when its pace allows.
            return Step(Verdict.RETRY, rng.uniform(0, min(0.05, policy.backoff_s)))
        return Step(Verdict.RETRY, backoff_s(tries.rate_limited, policy.backoff_s, rng,
                                             ceiling_s=MAX_RATE_BACKOFF_S))
    if outage and error.kind is Kind.CONNECTION:
        return Step(Verdict.RETRY)  # the limiter holds it until the server answers a probe
    if tries.retries < policy.max_retries:
        if error.kind is Kind.BAD_ANSWER:  # nothing at the server to wait out: ask again at once
            return Step(Verdict.RETRY, counted=True)
        delay = backoff_s(tries.retries + 1, policy.backoff_s, rng, error.retry_after)
        return Step(Verdict.RETRY, delay, counted=True)
    return Step(Verdict.FAIL, message=error.message)
