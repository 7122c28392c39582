"""The failure vocabulary: the kinds of failure, and the one table of what each calls for.

A failed attempt is known by an exception (online, and the Batch client's own calls), or by an HTTP
status and an error code (a line of a Batch API error file). ``TABLE`` maps either to a ``Kind``
(the name written on the failure line) and a ``Verdict`` (what the failure calls for: retry, wait,
fail, disable the key, drop the model, abort the run). ``classify`` reads an exception and
``of_status`` a status and a code, both through ``TABLE``; ``api.retry.decide`` then weighs the
verdict against what the task has been through.

No import of the openai SDK: the Batch merge, the store and the reports use this vocabulary without
loading it. Exceptions are matched by the names of their classes (the SDK's and those of
``mpinfer.errors``, none shared), looked up along the exception's MRO so that a subclass matches its
base's row. A request sent without the SDK (api/wire.py) fails with ``mpinfer.errors``' own:
``HttpStatusError`` is read as the SDK's ``APIStatusError`` is, ``ConnectionFailed`` as its
``APIConnectionError``, and a timeout is a ``TimeoutError``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, cast

from ..errors import HttpStatusError
from ..limits import wait_hint
from ..store.records import CONTENT_FILTER


class Kind(StrEnum):
    """What went wrong, as written in a failure line's ``error_type`` (and a result's ``retries``).

    Four kinds are written under another name (``CallError.error_type``): HTTP as
    ``http_<status>``, BATCH_CODE as the Batch API's own code, UNANSWERED as
    ``batch_<status of the batch>`` and UNEXPECTED as the exception's class name.
    """

    RATE_LIMIT = "rate_limit"                  # 429 for rate
    INSUFFICIENT_QUOTA = "insufficient_quota"  # 429 with no quota left
    AUTHENTICATION = "authentication"          # 401
    PERMISSION_DENIED = "permission_denied"    # 403
    SERVER_ERROR = "server_error"              # 5xx
    BAD_REQUEST = "bad_request"                # 400
    CONTENT_FILTER = "content_filter"          # 400 content_filter (Azure): a result, not a failure
    NOT_FOUND = "not_found"                    # 404
    UNKNOWN_MODEL = "unknown_model"            # 404: no such model (or Azure deployment) there
    UNPROCESSABLE = "unprocessable"            # 422
    HTTP = "http"                              # any other status: written http_<status>
    TIMEOUT = "timeout"                        # our deadline on the whole request, or the SDK's
    CONNECTION = "connection"                  # refused, reset, DNS; a server down past --patience
    MALFORMED_RESPONSE = "malformed_response"  # a 200 whose body is not an answer
    BAD_ANSWER = "bad_answer"                  # an answer off --json-schema or --labels
    IMAGES_TOO_LARGE = "images_too_large"      # over the provider's limit (found here or there)
    IMAGE = "image"                            # an image that is missing or unreadable
    API_ERROR = "api_error"                    # the SDK's error with neither status nor connection
    NO_ENDPOINT = "no_endpoint"                # every endpoint of the task's model rejected its key
    WRONG_MODEL = "wrong_model"                # answered by another model, under --strict-model
    BATCH_EXPIRED = "batch_expired"            # a Batch API line: the batch expired first
    BATCH_CANCELLED = "batch_cancelled"        # a Batch API line: the batch was cancelled
    REQUEST_TIMEOUT = "request_timeout"        # a Batch API line: the request timed out
    BATCH_ERROR = "batch_error"                # a Batch API line with neither status nor code
    BATCH_CODE = "batch_code"                  # a Batch API line's other code: written as that code
    UNANSWERED = "unanswered"                  # in neither file of a batch: batch_<its status>
    UNEXPECTED = "unexpected"                  # any other exception: written as its class name


class Verdict(StrEnum):
    """What a failure calls for (``TABLE``), and what is done about it (``api.retry.decide``)."""

    RETRY = "retry"              # transient: again after a backoff, counted against --max-retries
    WAIT = "wait"                # a rate limit: wait it out, bounded by --patience, not by retries
    FAIL = "fail"                # the task's own fault: write a failure line
    DISABLE_KEY = "disable_key"  # the key's fault (401/403): go on with another key
    ABORT = "abort"              # no task can succeed (no quota, no key left): stop the run
    FILTERED = "filtered"        # answered by the server's content filter: a done record
    DROP_MODEL = "drop_model"    # no task of the model can succeed: stop its tasks (and the run if
    #                              no other model is left)

    @property
    def transient(self) -> bool:
        """Whether the same request may succeed later (a Batch API row is then sent again)."""
        return self in (Verdict.RETRY, Verdict.WAIT)


@dataclass(frozen=True)
class CallError:
    """A failed attempt, classified: its kind, the server's status and message, and the verdict."""

    kind: Kind
    status: int | None
    message: str
    verdict: Verdict
    retry_after: float | None = None  # the server's wait hint, in seconds
    name: str | None = None  # the written name of BATCH_CODE, UNANSWERED and UNEXPECTED (Kind)
    # The server's error object, kept for a FILTERED verdict: the record is built from it.
    body: dict[str, Any] | None = None

    @property
    def error_type(self) -> str:
        """The name written on the failure line and counted in ``retries``."""
        if self.name:
            return self.name
        if self.kind is Kind.HTTP and self.status is not None:
            return f"http_{self.status}"
        return self.kind.value


ANY_CODE = "*"
"""A row's code that matches any code (and none)."""
SERVER_STATUSES = range(500, sys.maxsize)
"""5xx, and any status above (``status >= 500``)."""
ANY_STATUS = range(-sys.maxsize, sys.maxsize)
# OpenAI: 400 "Total image size (...) exceeds the allowed limit"; a proxy: 413 for a body too large.
_TOO_LARGE = re.compile(r"image size.*exceeds|exceeds.*image size|too large", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    """One row of TABLE: what it matches, and the kind and verdict of a failure it matches.

    A row matches an exception by ``exception`` (a class name in the exception's MRO), or an answer
    by ``status`` (with ``code`` and ``message`` when set), or a Batch API line with no status by
    ``code``.
    """

    kind: Kind
    verdict: Verdict
    exception: str | None = None
    status: range | int | None = None
    code: str | None = None
    message: re.Pattern[str] | None = None

    def matches_status(self, status: int, code: str, message: str) -> bool:
        """Whether this row holds for an answer with ``status``, error ``code`` and ``message``."""
        if self.status is None:
            return False
        if status not in (self.status if isinstance(self.status, range) else (self.status,)):
            return False
        if self.code is not None and self.code != code:
            return False
        return self.message is None or bool(self.message.search(message))

    def matches_code(self, code: str) -> bool:
        """Whether this row holds for a Batch API line with no status and this error ``code``."""
        return self.status is None and self.exception is None and self.code in (code, ANY_CODE)


TABLE: tuple[Rule, ...] = (
    # Exceptions, first match wins (a subclass's row before its base's)
    Rule(Kind.IMAGES_TOO_LARGE, Verdict.FAIL, exception="ImagesTooLarge"),
    Rule(Kind.IMAGE, Verdict.FAIL, exception="ImageError"),
    Rule(Kind.MALFORMED_RESPONSE, Verdict.RETRY, exception="MalformedResponse"),
    # Asked again: sampling may give a good answer; bounded by --max-retries (paid each time).
    Rule(Kind.BAD_ANSWER, Verdict.RETRY, exception="BadAnswer"),
    Rule(Kind.TIMEOUT, Verdict.RETRY, exception="TimeoutError"),  # our deadline on a request
    Rule(Kind.TIMEOUT, Verdict.RETRY, exception="APITimeoutError"),  # unless caused by a reset
    Rule(Kind.CONNECTION, Verdict.RETRY, exception="APIConnectionError"),
    Rule(Kind.CONNECTION, Verdict.RETRY, exception="ConnectionFailed"),  # sent without the SDK
    # (the SDK's APIStatusError is read by its status and code: the rows below)
    Rule(Kind.API_ERROR, Verdict.RETRY, exception="APIError"),
    Rule(Kind.UNEXPECTED, Verdict.FAIL, exception="BaseException"),
    # Answers, by status (and code, and message); first match wins
    Rule(Kind.INSUFFICIENT_QUOTA, Verdict.ABORT, status=429, code="insufficient_quota"),
    Rule(Kind.RATE_LIMIT, Verdict.WAIT, status=429),
    # The key's fault, not the task's: the task goes on with another key, if any is left.
    Rule(Kind.AUTHENTICATION, Verdict.DISABLE_KEY, status=401),
    Rule(Kind.PERMISSION_DENIED, Verdict.DISABLE_KEY, status=403),
    Rule(Kind.SERVER_ERROR, Verdict.RETRY, status=SERVER_STATUSES),
    # OpenAI asks clients to retry these; everything else in 4xx is the request's own fault.
    Rule(Kind.HTTP, Verdict.RETRY, status=408),
    Rule(Kind.HTTP, Verdict.RETRY, status=409),
    # Azure's content filter stopped the prompt (innererror ResponsibleAIPolicyViolation): asking
    # again gets the same answer, and for a safety benchmark it is the answer (a done record).
    Rule(Kind.CONTENT_FILTER, Verdict.FILTERED, status=400, code=CONTENT_FILTER),
    # The same request fails again: no retry.
    Rule(Kind.IMAGES_TOO_LARGE, Verdict.FAIL, status=400, message=_TOO_LARGE),
    Rule(Kind.IMAGES_TOO_LARGE, Verdict.FAIL, status=413, message=_TOO_LARGE),
    Rule(Kind.BAD_REQUEST, Verdict.FAIL, status=400),
    # The model is not there (OpenAI; Azure: the deployment): every task of it would fail alike.
    Rule(Kind.UNKNOWN_MODEL, Verdict.DROP_MODEL, status=404, code="model_not_found"),
    Rule(Kind.UNKNOWN_MODEL, Verdict.DROP_MODEL, status=404, code="DeploymentNotFound"),
    Rule(Kind.NOT_FOUND, Verdict.FAIL, status=404),
    Rule(Kind.UNPROCESSABLE, Verdict.FAIL, status=422),
    Rule(Kind.HTTP, Verdict.FAIL, status=ANY_STATUS),
    # A Batch API error line with no status, by its code
    Rule(Kind.BATCH_EXPIRED, Verdict.RETRY, code="batch_expired"),
    Rule(Kind.BATCH_CANCELLED, Verdict.RETRY, code="batch_cancelled"),
    Rule(Kind.REQUEST_TIMEOUT, Verdict.RETRY, code="request_timeout"),
    Rule(Kind.BATCH_ERROR, Verdict.RETRY, code=""),
    Rule(Kind.BATCH_CODE, Verdict.FAIL, code=ANY_CODE),
)


def of_status(status: int | None, code: str | None, message: str,
              retry_after: float | None = None) -> CallError:
    """A failure known by its HTTP ``status`` and error ``code`` (a Batch API line may lack one)."""
    code = code or ""
    if status is None:
        rule = next(r for r in TABLE if r.matches_code(code))
    else:
        rule = next(r for r in TABLE if r.matches_status(status, code, message))
    name = code if rule.kind is Kind.BATCH_CODE else None
    return CallError(rule.kind, status, message, rule.verdict, retry_after, name)


def classify(exc: BaseException, wall: float | None = None) -> CallError:
    """What a failed attempt calls for: its kind and verdict by ``TABLE``. ``wall`` is the time a
    wait hint given as a date is read against (now, by default)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "APIStatusError" in names or "HttpStatusError" in names:
        return _of_status_error(exc, wall)
    rule = next(r for r in TABLE if r.exception in names)
    message = str(exc)
    if rule.kind is Kind.TIMEOUT:
        if rule.exception == "APITimeoutError" and not _timed_out(exc):
            return _connection_error(exc)
        return CallError(Kind.TIMEOUT, None, "request timed out", rule.verdict)
    if rule.kind is Kind.CONNECTION:
        return _connection_error(exc)
    if rule.kind is Kind.MALFORMED_RESPONSE:
        return CallError(rule.kind, 200, message, rule.verdict)
    if rule.kind in (Kind.API_ERROR, Kind.UNEXPECTED):  # (ours are short; another's may not be)
        message = message[:500]
    name = type(exc).__name__ if rule.kind is Kind.UNEXPECTED else None
    return CallError(rule.kind, None, message, rule.verdict, name=name)


class _StatusError(Protocol):
    """What is read of the SDK's APIStatusError (the SDK is not imported here) and of
    HttpStatusError: the headers are an HttpStatusError's ``headers``, or the SDK's
    ``response.headers``."""

    status_code: int
    code: str | None
    body: object
    message: str


def _of_status_error(exc: BaseException, wall: float | None) -> CallError:
    """An answer with an error status (the SDK's APIStatusError); its wait hint when it may wait."""
    answer = cast(_StatusError, exc)
    message = _status_message(answer)
    error = of_status(answer.status_code, answer.code, message)
    if error.verdict is Verdict.FILTERED:
        body = answer.body if isinstance(answer.body, dict) else None
        return dataclasses.replace(error, body=body)
    if error.verdict.transient:
        # (the SDK's error: an httpx2 Response's headers)
        headers = (exc.headers if isinstance(exc, HttpStatusError)
                   else cast(Any, exc).response.headers)
        hint = wait_hint(headers, message, wall)
        error = CallError(error.kind, answer.status_code, message, error.verdict, hint)
    return error


def _timed_out(exc: BaseException) -> bool:
    """Whether an SDK timeout is one: the SDK's own aiohttp client reports a dropped connection so,
    and it matters (timeouts slow the run down, a reset does not)."""
    root = _root_cause(exc)
    return root is exc or isinstance(root, TimeoutError) or "Timeout" in type(root).__name__


def _connection_error(exc: BaseException) -> CallError:
    root = _root_cause(exc)
    detail = f": {type(root).__name__}: {root}"[:300] if root is not exc else ""
    return CallError(Kind.CONNECTION, None, f"connection error{detail}", Verdict.RETRY)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception behind ``exc`` (bounded: causes can, in principle, form a loop)."""
    seen = 0
    while seen < 10:
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc, seen = inner, seen + 1
    return exc


def _status_message(exc: _StatusError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, str):
        return message[:500]
    return str(exc.message)[:500]
