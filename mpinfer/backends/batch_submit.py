"""Submitting to the Batch API:
request files within the API's limits, uploads and creations, with our retries.

The calls go through the openai SDK's ``client.files`` and ``client.batches`` with the SDK's own
retries off: ``BatchClient.call`` does what ``api.retry.decide`` says of each failure (classified by
``api.failures``), as the online runner does: transient ones (5xx, timeouts, resets) are retried
with our backoff within --max-retries, and 429s for rate are waited out within --patience. The API's
limits are respected before they are met:
- a request file holds at most ``batch_size`` lines (50,000 at most)
  and ``batch_max_bytes`` (200 MB);
- batch creation is paced to CREATES_PER_HOUR;
- a creation refused for the enqueued-token limit (``token_limit_exceeded``, as an error or as a
  batch that fails validation) is QueueFull: the backend waits for running batches, it does not fail
  the rows.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import openai

from ..api.endpoints import Endpoint, Provider
from ..api.failures import Verdict, classify
from ..api.messages import ImageEncoder, task_request
from ..api.responses import ApiPath
from ..api.retry import Attempts, decide
from ..config import RequestSettings, RunConfig
from ..errors import BatchApiError, ConfigError, ImageError
from ..inputs import Task
from ..redact import redact
from ..slices import RetryPolicy
from .batch_plan import Chunk, ChunkState, Plan
from .batch_targets import Target, choose

log = logging.getLogger("mpinfer.run")

CREATES_PER_HOUR = 2000
"""Batch creations OpenAI allows an organisation in an hour (about 2,000)."""
QUEUE_LIMIT_CODE = "token_limit_exceeded"
LIST_PAGES = 20
"""Pages of 100 batches searched for one made from a chunk's file before a crash lost its id."""
T = TypeVar("T")


class QueueFull(Exception):
    """The model's enqueued-token limit is reached: wait for running batches, then create again."""


class BatchClient:
    """The SDK's Files and Batches calls at one endpoint, with our retries (Azure's through the
    SDK's AzureOpenAI: under the resource, ``api-version``, ``api-key``); time is a parameter so
    tests need not wait."""

    def __init__(self, config: RunConfig, endpoint: Endpoint,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import random

        self.config = config
        self.keys = config.require_api_keys()
        self.sdk: openai.OpenAI
        if endpoint.provider is Provider.AZURE:
            self.sdk = openai.AzureOpenAI(azure_endpoint=str(endpoint.base_url),
                                          api_key=endpoint.api_key,
                                          api_version=endpoint.api_version, max_retries=0,
                                          timeout=config.timeout)
        else:
            self.sdk = openai.OpenAI(api_key=endpoint.api_key, base_url=endpoint.base_url,
                                     max_retries=0, timeout=config.timeout)
        self.policy = RetryPolicy.of(config)
        self.sleep = sleep
        self.clock = clock
        self.rng = random.Random()

    def call(self, what: str, fn: Callable[..., T], *args: Any,
             before_retry: Callable[[], T | None] | None = None, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, sent again while ``api.retry.decide`` says so; BatchApiError
        (redacted) once it does not.

        ``before_retry`` runs before each retry; what it returns (not None) is taken as the call's
        result: a create that timed out may have made its batch, which must be found rather than
        made twice.
        """
        tries = Attempts()
        while True:
            if tries.count and before_retry is not None:
                found = before_retry()
                if found is not None:
                    return found
            tries.count += 1
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # classify and decide say what follows
                if getattr(exc, "code", None) == QUEUE_LIMIT_CODE:
                    raise QueueFull(str(exc)) from None
                error = classify(exc)
                now = self.clock()
                if error.verdict is Verdict.WAIT:
                    tries.waiting(now)
                step = decide(error, tries, self.policy, self.rng, now, limiter=False)
                if step.verdict is Verdict.RETRY:
                    tries.again(error, step)
                    log.info("%s: %s (%s); retry in %.2fs", what, error.error_type, error.message,
                             step.delay_s)
                    self.sleep(step.delay_s)
                    continue
                message = step.message or error.message
                failed = f"{what}: {error.status or ''} {error.error_type}: {message}"
                raise BatchApiError(redact(failed, self.keys)) from None

    def close(self) -> None:
        """Close the SDK client and its connections."""
        self.sdk.close()


@dataclass(frozen=True)
class BatchRequest:
    """A task's request as a batch takes it: the body the online path would send, and the prompt
    tokens it enqueues (as estimated)."""

    task_id: str
    body: dict[str, Any]
    tokens: int


def batch_request(settings: RequestSettings, encoder: ImageEncoder, task: Task,
                  model_index: int) -> BatchRequest:
    """The Batch API request of a task: the body the online path would send. ImageError as
    online."""
    request = task_request(settings, encoder, task, model_index)
    if request.path is not ApiPath.CHAT:
        # One batch has one endpoint, and these are chat.completions batches.
        raise ConfigError(f"task {task.id} goes to {request.path.value}: --backend batch sends "
                          "chat.completions requests only, for now (run it online)")
    body = dict(request.kwargs)
    body.update(body.pop("extra_body", None) or {})
    return BatchRequest(task.id, body, request.prompt_tokens)


class ChunkWriter:
    """Writes request lines into files of at most ``size`` lines and ``max_bytes`` each, one model
    and one endpoint a file (``batch_targets.choose`` picks it as the file starts, and the lines are
    written as it takes them), each a PLANNED chunk of the plan (the caller saves the plan, after
    ``close``, before anything is uploaded)."""

    def __init__(self, plan: Plan, size: int, max_bytes: int, targets: Sequence[Target],
                 models: Sequence[str], attempt: int = 1) -> None:
        self.plan = plan
        self.size = size
        self.max_bytes = max_bytes
        self.targets = targets
        self.models = models
        self.attempt = attempt
        self.open: dict[int, tuple[Chunk, BinaryIO, Target]] = {}
        self.made: list[Chunk] = []

    def _start(self, model_index: int) -> tuple[Chunk, BinaryIO, Target]:
        self.plan.folder.mkdir(parents=True, exist_ok=True)
        target = choose(self.plan, self.targets, self.models[model_index])
        chunk = self.plan.new_chunk(model_index, self.attempt, [], 0)
        chunk.endpoint = target.name
        self.made.append(chunk)
        opened = (chunk, self.plan.request_file(chunk).open("wb"), target)
        self.open[model_index] = opened
        return opened

    def add(self, model_index: int, request: BatchRequest) -> None:
        """Append one request's line to its model's open file, starting a new chunk when the file
        is full (by lines or bytes); a line larger than a whole file is a ConfigError."""
        chunk, handle, target = self.open.get(model_index) or self._start(model_index)
        line = target.line(request.task_id, request.body)
        if len(line) > self.max_bytes:
            raise ConfigError(f"task {request.task_id}: its request is {len(line):,} bytes, more "
                              f"than a whole batch file may hold ({self.max_bytes:,}); shrink its "
                              "images")
        if chunk.lines >= self.size or chunk.bytes + len(line) > self.max_bytes:
            handle.close()
            chunk, handle, target = self._start(model_index)
            line = target.line(request.task_id, request.body)
        handle.write(line)
        chunk.ids.append(request.task_id)
        chunk.bytes += len(line)
        chunk.tokens += request.tokens

    def close(self) -> list[Chunk]:
        """Close every file; the chunks made since the last close."""
        for _, handle, _ in self.open.values():
            handle.close()
        self.open.clear()
        made, self.made = self.made, []
        return made


def plan_chunks(writer: ChunkWriter, items: Iterable[tuple[Task, int]], settings: RequestSettings,
                encoder: ImageEncoder) -> list[Chunk]:
    """The request files of ``items`` (rows sent again, whose images were read once already) as
    PLANNED chunks of ``writer``'s plan; ``encoder`` is the backend's, with its cache."""
    try:
        for task, model_index in items:
            try:
                writer.add(model_index, batch_request(settings, encoder, task, model_index))
            except ImageError as exc:
                raise ConfigError(f"task {task.id}: {exc}") from None
    finally:
        made = writer.close()
    return made


def upload(client: BatchClient, plan: Plan, chunk: Chunk) -> None:
    """Upload a PLANNED chunk's file (purpose ``batch``); it becomes UPLOADED with its file_id."""
    path = plan.request_file(chunk)
    # A 200 MB file needs more than one request's timeout: allow about 1 MB/s.
    timeout = max(client.config.timeout, chunk.bytes / 1_000_000)
    with path.open("rb") as handle:
        uploaded = client.call(f"upload {chunk.name}", client.sdk.files.create,
                               file=(path.name, handle), purpose="batch", timeout=timeout)
    chunk.file_id = uploaded.id
    chunk.state = ChunkState.UPLOADED


def delete_files(client: BatchClient, file_ids: Iterable[str | None]) -> list[str]:
    """Delete files at the provider,
    best effort (a merged batch's input, output and error files); those deleted.

    One attempt each, not ``BatchClient.call``'s retries: those wait up to --max-retries backoffs of
    up to a minute (a Retry-After included) while the other batches go unpolled, and a file left
    behind costs only storage. A failure is a warning naming the file, never an error: the answers
    are merged already.
    """
    deleted: list[str] = []
    for file_id in dict.fromkeys(f for f in file_ids if f):  # once each, in order
        try:
            answer = client.sdk.files.delete(file_id)
        except openai.APIError as exc:
            error = classify(exc)
            problem = f"{error.status or ''} {error.error_type}: {error.message}".strip()
        else:
            if answer.deleted:
                deleted.append(file_id)
                continue
            problem = "the provider answered deleted: false"
        log.warning("%s", redact(f"batch file {file_id} not deleted at the provider ({problem}); "
                                 "it stays in the provider's file storage", client.keys))
    return deleted


def find_created(client: BatchClient, plan: Plan, chunk: Chunk) -> Any | None:
    """The batch made from the chunk's file,
    if a create reached the server before a crash lost its answer."""
    after: str | None = None
    for _ in range(LIST_PAGES):
        kwargs: dict[str, Any] = {"limit": 100}
        if after:
            kwargs["after"] = after
        page = client.call("list batches", client.sdk.batches.list, **kwargs)
        for batch in page.data:
            # By the file, or by the chunk's name in the metadata:
            # a proxy (LiteLLM) may show other file ids.
            if (batch.input_file_id == chunk.file_id
                    or (batch.metadata or {}).get("mpinfer_chunk") == chunk.name):
                return batch
        if not page.has_more or not page.data or page.data[-1].created_at < plan.created_at - 3600:
            return None
        after = page.data[-1].id
    return None


class CreationPacer:
    """At most CREATES_PER_HOUR creations in any hour, counted in this process."""

    def __init__(self, per_hour: int = CREATES_PER_HOUR,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_hour = per_hour
        self.clock = clock
        self.times: deque[float] = deque()

    def wait_s(self) -> float:
        """Seconds until another creation fits in the hour (0 when one may go now)."""
        now = self.clock()
        while self.times and now - self.times[0] >= 3600:
            self.times.popleft()
        return 0.0 if len(self.times) < self.per_hour else 3600 - (now - self.times[0])

    def created(self) -> None:
        """Count a creation made now."""
        self.times.append(self.clock())


def create(client: BatchClient, plan: Plan, chunk: Chunk, output_name: str, search: bool,
           url: str) -> None:
    """Create the chunk's batch; the chunk becomes CREATED.
    QueueFull: the model's token queue is full.

    ``url`` is the endpoint the batch names (its target's). The caller saved the chunk as CREATING
    before this call. ``search`` (the chunk was CREATING when
    the run started: a crash came in the middle of a create) first looks for a batch made from its
    file, and so does every retry of a create that failed without an answer: such a batch is
    adopted, never made twice.
    """

    def made_before() -> Any | None:
        batch = find_created(client, plan, chunk)
        if batch is None or batch.status == "failed":
            return None  # a failed batch never ran: nothing of it is paid, and a new one is made
        log.info("%s: found batch %s made by an earlier attempt; polling it instead of creating "
                 "another", chunk.name, batch.id)
        return batch

    batch = made_before() if search else None
    if batch is None:
        metadata = {"mpinfer_output": output_name[-500:], "mpinfer_chunk": chunk.name}
        batch = client.call(f"create the batch of {chunk.name}", client.sdk.batches.create,
                            input_file_id=chunk.file_id, endpoint=url, completion_window="24h",
                            metadata=metadata, before_retry=made_before)
    chunk.batch_id = batch.id
    chunk.status = batch.status
    chunk.created_at = float(batch.created_at)
    chunk.waiting = None
    chunk.state = ChunkState.CREATED
