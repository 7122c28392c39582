"""The mock's Batch API: ``/v1/batches`` (create, retrieve, cancel, list), worked in the background.

Modelled on OpenAI's documented behaviour, not on our client:
- a batch object has ``status`` validating -> in_progress -> finalizing -> completed, or
  ``failed`` (with ``errors.data``: code, message, line), ``expired`` (the window ran out: what
  was done is in the output file, every request not reached is in the error file with code
  ``batch_expired``), or cancelling -> cancelled (requests not reached: ``batch_cancelled``);
  ``request_counts`` (total, completed, failed), ``output_file_id`` / ``error_file_id`` once
  finished, and the ``*_at`` timestamps;
- an input line is ``{"custom_id", "method": "POST", "url", "body"}``; custom_ids are unique in a
  file, one model a file, at most 50,000 requests a batch. A file is refused (the batch fails
  validation, ``errors.data`` naming the code and line) for a line that is not JSON, lacks a
  custom_id or body, repeats a custom_id or names another endpoint, and for more requests or
  models than that; a request whose body the chat endpoint would refuse is no refused file: it
  gets a 400 line in the error file, as OpenAI does;
- an output line is ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
  "error"}``; a request that failed with an HTTP status is in the error file with that ``response``
  and ``error`` null; one never executed has ``response`` null and ``error`` {code, message};
- each model's enqueued prompt tokens are limited (``token_limit``): a batch that would pass it
  fails validation with ``token_limit_exceeded``; batch creation itself is rate-limited
  (``max_creates``);
- Azure OpenAI's batches (made through ``/openai/batches``, mock/azure.py): the endpoint and each
  line's ``url`` are ``/chat/completions`` (no ``/v1``), each line's ``model`` names a global-batch
  deployment (``MockConfig.azure_deployments``; another fails the batch with ``model_not_found``,
  as Azure does), answered by the model the deployment holds; the enqueued tokens are counted per
  deployment;
- a batch belongs to the key that made it: another key gets a 404 for it and does not list it.

``GET /_mock/batches`` counts, for the tests, how many batches each custom_id was submitted in and
how many times it was answered: a client that pays twice for a row shows up there.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .answers import reply
from .batch_faults import BatchFaults, updated
from .chat import ApiError, ChatRequest, parse_chat
from .config import MockConfig
from .files import FileStore

# --- the lines: an input file checked as OpenAI checks it, output lines ---

MAX_REQUESTS = 50_000
"""Requests allowed in one batch (OpenAI's documented limit)."""

TOKENS_PER_IMAGE = 85


class Refused(Exception):
    """The input file is refused: the batch fails validation with this error."""

    def __init__(self, code: str, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": None, "line": line}


@dataclass(frozen=True)
class BatchInput:
    """An accepted input file: its model and, per request, the parsed chat body or its 400."""

    model: str | None
    requests: list[tuple[str, ChatRequest | ApiError]]

    @property
    def prompt_tokens(self) -> int:
        """The prompt tokens the batch enqueues (what the per-model enqueued-token limit counts)."""
        return sum(prompt_tokens(r) for _, r in self.requests if isinstance(r, ChatRequest))


def prompt_tokens(chat: ChatRequest) -> int:
    """The prompt tokens the mock bills a request: four characters a token, plus a flat count an
    image."""
    return -(-chat.text_chars // 4) + TOKENS_PER_IMAGE * chat.images_total


def custom_ids(data: bytes) -> list[str]:
    """An input file's custom_ids, skipping lines that are not requests (no checks needed)."""
    ids = []
    for raw in data.splitlines():
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
            ids.append(obj["custom_id"])
    return ids


def parse_input(data: bytes, endpoint: str) -> BatchInput:
    """Check an input file for ``endpoint``; Refused if OpenAI would fail the batch's validation."""
    requests: list[tuple[str, ChatRequest | ApiError]] = []
    seen: set[str] = set()
    models: set[str] = set()
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            raise Refused(
                "invalid_json_line", f"Line {number} is not valid JSON.", number
            ) from None
        custom_id = obj.get("custom_id") if isinstance(obj, dict) else None
        if not isinstance(custom_id, str) or not isinstance(obj.get("body"), dict):
            raise Refused("invalid_request", f"Line {number} needs a custom_id and a body.", number)
        if custom_id in seen:
            raise Refused("duplicate_custom_id",
                          f"The custom_id {custom_id!r} is used more than once in this file.",
                          number)
        if obj.get("url") != endpoint or obj.get("method") != "POST":
            raise Refused("invalid_url", f"Line {number}: method must be POST and url {endpoint}.",
                          number)
        seen.add(custom_id)
        model = obj["body"].get("model")
        if isinstance(model, str):
            models.add(model)
        try:
            requests.append((custom_id, parse_chat(json.dumps(obj["body"]).encode())))
        except ApiError as exc:
            requests.append((custom_id, exc))
    if not requests:
        raise Refused("empty_file", "The input file has no requests.")
    if len(requests) > MAX_REQUESTS:
        raise Refused("too_many_requests",
                      f"A batch may hold at most {MAX_REQUESTS} requests; "
                      f"this file has {len(requests)}.")
    if len(models) > 1:
        raise Refused("mixed_models",
                      f"Every request of a batch must use the same model; found {sorted(models)}.")
    return BatchInput(next(iter(models), None), requests)


def answer(cfg: MockConfig, chat: ChatRequest, model: str, n: int) -> dict[str, Any]:
    """The chat.completion a batch request gets: what the online endpoint answers it (``reply``:
    a refusal for ``refuse_marker``, a filtered completion, thinking, a cut-off answer)."""
    got = reply(cfg, chat.model, chat.task_key, chat.images_in_task, chat.max_tokens, chat.thinks,
                chat.response_format)
    return {"id": f"chatcmpl-mockbatch-{n}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": got.message, "logprobs": None,
                         "finish_reason": got.finish_reason}],
            "usage": got.usage(prompt_tokens(chat)), "system_fingerprint": "fp_mock"}


def output_line(custom_id: str, n: int, response: dict[str, Any] | None,
                error: dict[str, str] | None) -> bytes:
    """One line of an output or error file."""
    record = {"id": f"batch_req_mock{n}", "custom_id": custom_id, "response": response,
              "error": error}
    return json.dumps(record).encode() + b"\n"


def status_response(status: int, message: str, type_: str, n: int) -> dict[str, Any]:
    """The ``response`` of a request that failed with an HTTP status."""
    return {"status_code": status, "request_id": f"req_mockbatch_{n}",
            "body": {"error": {"message": message, "type": type_, "param": None, "code": None}}}


# --- the service: batches worked in the background ---

# Azure OpenAI's batch endpoints (its documentation's: no /v1).
_AZURE_ENDPOINTS = frozenset({"/chat/completions", "/embeddings", "/completions"})
# As the API reference lists them.
_ENDPOINTS = frozenset({"/v1/responses", "/v1/chat/completions", "/v1/embeddings",
                        "/v1/completions", "/v1/moderations", "/v1/images/generations",
                        "/v1/images/edits", "/v1/videos"})
_OPEN = frozenset({"validating", "in_progress", "finalizing", "cancelling"})


@dataclass
class _Batch:
    """One batch and its progress (mutable: the worker advances it)."""

    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    created_at: int
    status: str = "validating"
    model: str | None = None
    tokens: int = 0
    total: int = 0
    completed: int = 0
    failed: int = 0
    times: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    cancel_requested: bool = False
    owner: str = ""  # the key that made it
    azure: bool = False  # made through Azure's routes: its lines name deployments

    def to_dict(self) -> dict[str, Any]:
        """The batch object as OpenAI returns it, with its ``*_at`` timestamps."""
        data: dict[str, Any] = {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "model": self.model,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id, "completion_window": "24h", "status": self.status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "expires_at": self.created_at + 24 * 3600,
            "request_counts": {"total": self.total, "completed": self.completed,
                               "failed": self.failed},
            "metadata": self.metadata,
        }
        for stamp in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
                      "cancelled"):
            data[f"{stamp}_at"] = self.times.get(stamp)
        return data


class BatchService:
    """The Files and Batches endpoints of one mock server, and the batches' background work."""

    def __init__(self, config: Callable[[], MockConfig]) -> None:
        self._config = config
        self._tasks: set[asyncio.Task[None]] = set()
        self.files = FileStore()
        # Ids stay unique for the server's life, resets included: a client must
        # never meet an old id again.
        self._ids = itertools.count(1)
        self._requests = itertools.count(1)
        self._clear()

    def _clear(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.files.clear()
        self.faults = BatchFaults()
        self._rng = random.Random(0)
        self._scripts: dict[str, collections.deque[str]] = {}
        self._batches: dict[str, _Batch] = {}
        self._creates: collections.deque[float] = collections.deque()
        self.rows: collections.Counter[str] = collections.Counter()
        self.answered: collections.Counter[str] = collections.Counter()
        self.executed: collections.Counter[str] = collections.Counter()
        self.refused_creates = 0
        self.per_key: collections.Counter[str] = collections.Counter()  # batches made, per key

    # -- control -----------------------------------------------------------------

    def configure(self, settings: Any) -> dict[str, Any]:
        """Apply fault settings; ``"reset": true`` first forgets files, batches, counts, faults."""
        if isinstance(settings, dict) and settings.get("reset") is True:
            settings = {k: v for k, v in settings.items() if k != "reset"}
            self._clear()
        faults, scripts = updated(self.faults, settings)
        if faults.seed != self.faults.seed:
            self._rng = random.Random(faults.seed)
        self.faults = faults
        for custom_id, outcomes in scripts.items():
            self._scripts[custom_id] = collections.deque(outcomes)
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """``GET /_mock/batches``: the faults and the counts the tests assert on."""
        return {
            "faults": dataclasses.asdict(self.faults),
            "batches_created": len(self._batches),
            "batches": {b.id: b.status for b in self._batches.values()},
            "rows": dict(self.rows), "max_batches_per_row": max(self.rows.values(), default=0),
            "answered": dict(self.answered),
            "max_answers_per_row": max(self.answered.values(), default=0),
            "executed": dict(self.executed), "refused_creates": self.refused_creates,
            "batches_per_key": dict(self.per_key),
            "azure_batches": sum(b.azure for b in self._batches.values()),
            # What is stored and what was deleted: a client that leaves files behind shows up here.
            "files": len(self.files.files), "file_ids": sorted(self.files.files),
            "deleted_files": list(self.files.deleted),
        }

    # -- endpoints -----------------------------------------------------------------

    def authorise(self, authorization: str) -> ApiError | None:
        """The 401 a request with a missing or unknown key gets, or None if the key is good."""
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        config = self._config()
        if scheme.lower() != "bearer" or not key:
            return ApiError(401, "You didn't provide an API key.")
        if config.keys and key not in config.keys:
            return ApiError(401, f"Incorrect API key provided: ...{key[-4:]}.",
                            code="invalid_api_key")
        return None

    def create(self, body: bytes, owner: str = "", azure: bool = False) -> dict[str, Any]:
        """``POST /v1/batches`` (Azure's ``/openai/batches``: ``azure``) by the key ``owner``:
        checked at once, as OpenAI checks it; worked in the background."""
        try:
            params = json.loads(body or b"{}")
        except json.JSONDecodeError:
            raise ApiError(400, "We could not parse the JSON body of your request.") from None
        if not isinstance(params, dict):
            raise ApiError(400, "The body must be a JSON object.")
        file_id = params.get("input_file_id")
        stored = self.files.get(str(file_id)) if isinstance(file_id, str) else None
        if stored is None:
            raise ApiError(400, "Missing required parameter: 'input_file_id'.",
                           param="input_file_id")
        if stored.purpose != "batch":
            raise ApiError(400, f"File {file_id} was not uploaded with purpose 'batch'.",
                           param="input_file_id")
        endpoint = params.get("endpoint")
        endpoints = _AZURE_ENDPOINTS if azure else _ENDPOINTS
        if endpoint not in endpoints:
            raise ApiError(400, f"Invalid endpoint {endpoint!r}; supported: {sorted(endpoints)}.",
                           param="endpoint")
        if params.get("completion_window") != "24h":
            raise ApiError(400, "completion_window must be '24h'.", param="completion_window")
        metadata = params.get("metadata")
        if metadata is not None and (
                not isinstance(metadata, dict) or len(metadata) > 16
                or not all(len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                           for k, v in metadata.items())):
            raise ApiError(400,
                           "metadata: at most 16 pairs, keys of at most 64 "
                           "characters, string values of at most 512.", param="metadata")
        self._check_create_rate()
        batch = _Batch(f"batch_mock{next(self._ids):06d}", stored.id, str(endpoint), metadata,
                       int(time.time()), owner=owner, azure=azure)
        self._batches[batch.id] = batch
        self.per_key[owner[-4:]] += 1
        for custom_id in custom_ids(stored.data):
            self.rows[custom_id] += 1
        task = asyncio.get_running_loop().create_task(self._work(batch, stored.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return batch.to_dict()

    def _check_create_rate(self) -> None:
        faults = self.faults
        if faults.max_creates is None:
            return
        now = time.monotonic()
        while self._creates and now - self._creates[0] >= faults.create_window_s:
            self._creates.popleft()
        if len(self._creates) >= faults.max_creates:
            self.refused_creates += 1
            raise ApiError(429,
                           "Rate limit reached for batch creation: Limit "
                           f"{faults.max_creates} per {faults.create_window_s:g}s.",
                           type_="requests", code="rate_limit_exceeded")
        self._creates.append(now)

    def get(self, batch_id: str, owner: str = "") -> dict[str, Any]:
        """``GET /v1/batches/{id}``: the batch object, or a 404 (also for another key's)."""
        return self._find(batch_id, owner).to_dict()

    def _find(self, batch_id: str, owner: str) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None or batch.owner != owner:
            raise ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return batch

    def cancel(self, batch_id: str, owner: str = "") -> dict[str, Any]:
        """``POST /v1/batches/{id}/cancel``: cancelling, then (after a step) cancelled."""
        batch = self._find(batch_id, owner)
        if batch.status not in ("validating", "in_progress", "finalizing", "cancelling"):
            raise ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.")
        batch.cancel_requested = True
        if batch.status != "cancelling":
            batch.status = "cancelling"
            batch.times["cancelling"] = int(time.time())
        return batch.to_dict()

    def listing(self, query: dict[str, str], owner: str = "") -> dict[str, Any]:
        """``GET /v1/batches?limit=&after=``: the key's batches, newest first, cursor-paginated as
        OpenAI's lists."""
        try:
            limit = max(1, min(100, int(query.get("limit", "20"))))
        except ValueError:
            raise ApiError(400, "limit must be an integer.", param="limit") from None
        batches = [b for b in reversed(self._batches.values()) if b.owner == owner]
        after = query.get("after")
        if after:
            ids = [b.id for b in batches]
            batches = batches[ids.index(after) + 1:] if after in ids else []
        page = batches[:limit]
        return {"object": "list", "data": [b.to_dict() for b in page],
                "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                "has_more": len(batches) > limit}

    # -- the background work -------------------------------------------------------

    def _enqueued(self, model: str) -> int:
        return sum(b.tokens for b in self._batches.values() if b.model == model
                   and b.status in _OPEN)

    def _outcome(self, custom_id: str) -> str:
        queued = self._scripts.get(custom_id)
        if queued:
            outcome = queued.popleft()
            if not queued:
                del self._scripts[custom_id]
            return outcome
        return "500" if self._rng.random() < self.faults.p500 else "ok"

    async def _work(self, batch: _Batch, data: bytes) -> None:
        """Work one batch in the background through OpenAI's states.

        After a step it validates the input (a batch that fails validation, or would pass the
        enqueued-token limit, ends ``failed``), then executes the requests in order. A cancel or a
        scripted expiry stops it: the requests not reached go to the error file. The batch ends with
        its output and error files."""
        faults = self.faults
        await asyncio.sleep(faults.step_s)
        if batch.cancel_requested:
            self._finish(batch, "cancelled", [], [])
            return
        try:
            parsed = parse_input(data, batch.endpoint)
            batch.model = parsed.model
            if batch.azure:
                self._deployment(parsed.model)
            requests = parsed.requests
            if self.faults.fail_next:
                self.faults = dataclasses.replace(self.faults, fail_next=self.faults.fail_next - 1)
                raise Refused("mock_failure", "The batch failed validation (mock fault).")
            tokens = parsed.prompt_tokens
            limit = self.faults.token_limit
            if limit is not None and batch.model and self._enqueued(batch.model) + tokens > limit:
                raise Refused("token_limit_exceeded",
                              f"Enqueued token limit reached for {batch.model} in organization "
                              f"org-mock. Limit: {limit:,} enqueued tokens. Please try again once "
                              "some in_progress batches have been completed.")
        except Refused as refused:
            batch.status, batch.errors = "failed", [refused.error]
            batch.times["failed"] = int(time.time())
            return
        batch.tokens = tokens  # enqueued from now until the batch ends
        batch.total = len(requests)
        batch.status = "in_progress"
        batch.times["in_progress"] = int(time.time())
        expire_at: int | None = None
        if self.faults.expire_next:
            self.faults = dataclasses.replace(self.faults, expire_next=self.faults.expire_next - 1)
            expire_at = self.faults.expire_after
        outputs: list[bytes] = []
        errors: list[bytes] = []
        done = 0
        for custom_id, request in requests:
            if batch.cancel_requested or (expire_at is not None and done >= expire_at):
                break
            if self.faults.request_s:
                await asyncio.sleep(self.faults.request_s)
            elif done % 500 == 499:
                await asyncio.sleep(0)  # let the server answer polls while a large batch is worked
            done += 1
            self._execute(batch, custom_id, request, outputs, errors)
        code, status = (("batch_cancelled", "cancelled") if batch.cancel_requested
                        else ("batch_expired", "expired"))
        if done < len(requests):
            message = ("The batch was cancelled before this request executed."
                       if code == "batch_cancelled"
                       else "This request could not be executed before the "
                       "completion window expired.")
            for custom_id, _ in requests[done:]:
                errors.append(output_line(custom_id, next(self._requests), None,
                                          {"code": code, "message": message}))
            batch.failed += len(requests) - done
            if status == "cancelled":
                await asyncio.sleep(self.faults.step_s)
            self._finish(batch, status, outputs, errors)
            return
        batch.status = "finalizing"
        batch.times["finalizing"] = int(time.time())
        await asyncio.sleep(self.faults.step_s)
        self._finish(batch, "cancelled" if batch.cancel_requested else "completed", outputs, errors)

    def _deployment(self, name: str | None) -> None:
        """Refused as Azure refuses a batch whose lines name no deployment of the resource."""
        deployments = self._config().azure_deployments
        if name not in deployments:
            raise Refused("model_not_found",
                          f"The provided model deployment '{name}' does not exist in the AOAI "
                          f"resource. Valid deployments are '{', '.join(sorted(deployments))}'.")

    def _execute(self, batch: _Batch, custom_id: str, request: ChatRequest | ApiError,
                 outputs: list[bytes], errors: list[bytes]) -> None:
        n = next(self._requests)
        self.executed[custom_id] += 1
        outcome = "400" if isinstance(request, ApiError) else self._outcome(custom_id)
        if outcome == "ok" and isinstance(request, ChatRequest):
            config = self._config()
            model = (config.azure_deployments[request.model] if batch.azure
                     else config.model_map.get(request.model, request.model))
            response = {"status_code": 200, "request_id": f"req_mockbatch_{n}",
                        "body": answer(config, request, model, n)}
            outputs.append(output_line(custom_id, n, response, None))
            batch.completed += 1
            self.answered[custom_id] += 1
            return
        batch.failed += 1
        if outcome == "timeout":
            errors.append(output_line(custom_id, n, None,
                                      {"code": "request_timeout",
                                       "message": "The underlying call to the model timed out."}))
        elif outcome == "500":
            failed = status_response(500, "The server had an error while processing your request. "
                                     "(mock fault)", "server_error", n)
            errors.append(output_line(custom_id, n, failed, None))
        else:
            message = (request.message if isinstance(request, ApiError)
                       else "Invalid request (mock fault).")
            failed = status_response(400, message, "invalid_request_error", n)
            errors.append(output_line(custom_id, n, failed, None))

    def _finish(self, batch: _Batch, status: str, outputs: list[bytes],
                errors: list[bytes]) -> None:
        if outputs:
            batch.output_file_id = self.files.add(f"{batch.id}_output.jsonl", "batch_output",
                                                  b"".join(outputs)).id
        if errors:
            batch.error_file_id = self.files.add(f"{batch.id}_error.jsonl", "batch_output",
                                                 b"".join(errors)).id
        batch.status = status
        batch.times[status] = int(time.time())

    async def close(self) -> None:
        """Cancel the batches being worked and wait for their tasks to end."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
