"""``--dry-run``: check every task a run would send, estimate its tokens and cost; call nothing.

A dry run does what a real run does up to the API call: it checks the input (bad input raises the
same InputError, with file and line), reads each output to leave out the ids already done, and
builds every pending task's request with the worker's own ``task_request`` and ``ImageEncoder``, so
an image that would fail the task in a real run is listed here as a problem. It never writes, locks
or repairs anything, and never fetches a remote image: those are counted and estimated at
tokens.UNKNOWN_IMAGE_TOKENS.

The input is streamed; memory holds the done ids (as a real run does), counters, the first problems,
and a bounded table of what each image file seen so far showed (MAX_FILES_REMEMBERED files, a few
hundred bytes each), so that a file shared by many tasks is read once, however large, and a broken
one too.

``TaskChecker`` checks one pending task: it builds the request with the worker's own
``task_request`` (a Batch body as it is sent) and an ``ImageEncoder`` that reads each image file
once for the whole plan and remembers what it showed. A data: URL in the input is checked from its
bytes; a remote image is never fetched. What a real run would fail a task for comes back as its
message.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api.messages import EncodedImage, ImageEncoder, Request, is_remote, sniff_mime, task_request
from ..api.prices import PriceTable
from ..api.tokens import DEFAULT_COMPLETION_TOKENS, image_size
from ..config import RequestSettings, RunConfig
from ..errors import ImageError
from ..inputs import (
    PromptForm,
    Task,
    check_input,
    is_cell_ref,
    iter_tasks,
    prompt_forms,
    reading,
    selection,
    settle_models,
)
from ..store.output import run_outputs, scan, unit_of

MAX_PROBLEMS_KEPT = 20


# --- one pending task, checked as a worker would build it ---

# Facts about this many image files are remembered (a few hundred bytes each); past that the oldest
# are forgotten and judged again if a later task uses them.
MAX_FILES_REMEMBERED = 65536
_SHORT_REF = 40
_ALREADY_READ = "data:,already-read-by-this-dry-run"  # never sent: a dry run sends nothing


@dataclass(frozen=True)
class CheckedImage:
    """One image reference of a task, checked: its pixel size (None for a remote URL) and bytes."""

    kind: str  # "local", "inline" or "remote"
    size: tuple[int, int] | None
    bytes: int
    path: str


@dataclass(frozen=True)
class _FileFacts:
    """What the one read of an image file showed: its bytes, its pixel size, or why a task fails."""

    bytes: int
    size: tuple[int, int] | None
    problem: str | None = None


def _size_message(ref: str, where: str) -> str:
    return f"image {ref!r}: cannot read its size: corrupt or truncated? ({where})"


def _short(ref: str) -> str:
    return ref if len(ref) <= _SHORT_REF else ref[:_SHORT_REF] + "..."


def _is_web(ref: str) -> bool:
    return ref[:8].lower().startswith(("http://", "https://"))


class _ReadOnceEncoder(ImageEncoder):
    """The worker's ImageEncoder, made to read each image file once for the whole plan.

    The first use of a file goes through the real encoder (the same resolution, MIME sniffing
    and errors as a worker), and what it showed is remembered by path, mtime and size. A
    later use of that file gets the remembered verdict: its ImageError again, or a stand-in
    URL, since a dry run sends nothing and needs only the file's size. The encoder's own
    cache of data URLs would not do: it drops files over 16 MiB and forgets the rest past 64
    MiB, and it never holds a file that failed.
    """

    def __init__(self, root: Path) -> None:
        # the facts below replace the cache, at a fraction of its memory
        super().__init__(root, cache_bytes=0)
        self.files: OrderedDict[tuple[str, int, int, int], _FileFacts] = OrderedDict()
        # (path, facts) of each local image of the task being built
        self.used: list[tuple[str, _FileFacts]] = []

    def _file_key(self, ref: str, max_side: int | None) -> tuple[str, int, int, int] | None:
        path = self.resolve(ref)  # as the workers resolve it; a stat reads no image bytes
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return path, stat.st_mtime_ns, stat.st_size, max_side or 0

    def encode(self, ref: str, max_side: int | None = None) -> EncodedImage:
        """As ImageEncoder.encode, reading each file once; a size that cannot be read fails too.
        A Parquet cell is read each time (its ImageError raised as a worker's would be)."""
        if is_remote(ref):
            return super().encode(ref)
        if is_cell_ref(ref):
            before = len(self.used)
            image = super().encode(ref, max_side)
            if len(self.used) == before:  # (a struct of a path only: used as that file)
                self.used.append((ref, _FileFacts(image.bytes, image.size)))
            return EncodedImage(_ALREADY_READ, image.size, image.bytes)
        key = self._file_key(ref, max_side)
        if key is None:
            # raises the worker's ImageError for a missing file, reading nothing
            return super().encode(ref)
        facts = self.files.get(key)
        if facts is None:
            try:
                image = super().encode(ref, max_side)
            except ImageError as exc:
                facts = _FileFacts(key[2], None, str(exc))
            else:
                facts = _FileFacts(image.bytes, image.size,
                                   None if image.size else _size_message(ref, key[0]))
            self.files[key] = facts
            while len(self.files) > MAX_FILES_REMEMBERED:
                self.files.popitem(last=False)
        else:
            self.files.move_to_end(key)
        if facts.problem is not None:
            raise ImageError(facts.problem)
        self.used.append((key[0], facts))
        return EncodedImage(_ALREADY_READ, facts.size, facts.bytes)


class TaskChecker:
    """Builds each pending task's request as a worker would and judges its images."""

    def __init__(self, settings: RequestSettings,
                 forms: tuple[PromptForm, ...] = (PromptForm(),)) -> None:
        self.settings = settings
        self.forms = forms
        self.encoder = _ReadOnceEncoder(settings.image_root)

    def check(self, task: Task, output_index: int) -> tuple[Request, list[CheckedImage]] | str:
        """The request for the run's output at ``output_index`` (its variant's and model's, as the
        driver and a worker make it) and its checked images, or the problem that would fail the
        task."""
        self.encoder.used.clear()
        variant, model_index = unit_of(output_index, len(self.settings.models))
        try:
            request = task_request(self.settings, self.encoder, self.forms[variant].apply(task),
                                   model_index)
        except ImageError as exc:
            return str(exc)
        local = iter(self.encoder.used)
        images: list[CheckedImage] = []
        for ref in task.images:
            if _is_web(ref):
                images.append(CheckedImage("remote", None, 0, ref))
            elif is_remote(ref):
                inline = self._inline(ref, task.id)
                if isinstance(inline, str):
                    return inline
                images.append(inline)
            else:
                path, facts = next(local)
                images.append(CheckedImage("local", facts.size, facts.bytes, path))
        return request, images

    @staticmethod
    def _inline(ref: str, task_id: str) -> CheckedImage | str:
        """A data: URL from the input, sent as it is by a worker, so checked here from its bytes."""
        header, _, payload = ref.partition(",")
        short = _short(ref)
        if not header.lower().endswith(";base64"):
            return f"image {short!r}: a data: URL that is not base64"
        try:
            data = base64.b64decode(payload)
        except (binascii.Error, ValueError):
            return f"image {short!r}: a data: URL whose base64 does not decode"
        if sniff_mime(data[:16]) is None:
            return f"image {short!r}: not a PNG, JPEG, GIF or WEBP image"
        size = image_size(data)
        if size is None:
            return _size_message(short, f"data: URL of task {task_id}")
        return CheckedImage("inline", size, len(data), f"data: URL of task {task_id}")


# --- the plan ---


def _plain(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """dataclasses.asdict's dict_factory: paths become strings, so that the dict dumps as JSON."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in pairs}


@dataclass(frozen=True)
class TaskProblem:
    """A pending task a real run would fail without sending it (its image missing or broken)."""

    id: str
    line: int
    message: str


@dataclass(frozen=True)
class LargestImage:
    """The largest image the pending tasks send; ``path`` is a short form for a data: URL."""

    path: str
    bytes: int
    width: int
    height: int
    task_id: str


@dataclass(frozen=True)
class ImageCounts:
    """The images of the estimated tasks, counted each time a task uses one (each use is sent).

    ``local`` are files, ``inline`` data: URLs in the input (both checked), ``remote`` http(s) URLs
    (not checked: that would mean fetching them). ``local_bytes`` sums the files and inline images
    as they are before base64, which adds a third on the wire.
    """

    local: int = 0
    inline: int = 0
    remote: int = 0
    local_bytes: int = 0
    largest: LargestImage | None = None


@dataclass(frozen=True)
class PromptStats:
    """Estimated prompt tokens of the estimated tasks: ``total`` over every request (a task run
    against two models counts twice, at each model's count), the others per task (at the first
    model's count)."""

    tasks: int
    total: int
    min: int | None
    mean: float | None
    max: int | None


@dataclass(frozen=True)
class ModelPlan:
    """One model's share of the run: its output, what is done, what would be sent, what it may cost.

    ``pending`` counts every task not in the output; ``problems`` those of them a real run would
    fail without a request. Tokens and cost cover the rest (``estimated``). ``completion_ceiling``
    is each estimated task's max_tokens (the task's, else the run's, else DEFAULT_COMPLETION_TOKENS)
    summed. ``cost_min`` charges the prompts alone, ``cost_max`` adds the ceiling; both are None
    when a model in ``requested_models`` (the run's model, or in a one-model run the models tasks
    ask for) has no price.
    """

    model: str
    output: Path
    done: int
    pending: int
    problems: int
    requested_models: tuple[str, ...]
    prompt_tokens: int
    completion_ceiling: int
    cost_min: float | None
    cost_max: float | None
    batch_cost_min: float | None = None  # the same at the Batch API's price (--backend batch)
    batch_cost_max: float | None = None

    @property
    def estimated(self) -> int:
        """Tasks whose cost is estimated: those to send, less those that would fail."""
        return self.pending - self.problems

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON values (``--dry-run --json``)."""
        return dataclasses.asdict(self, dict_factory=_plain) | {"estimated": self.estimated}


@dataclass(frozen=True)
class PlanTotals:
    """The model rows added up; a task run against two models counts twice, as it is sent twice.

    The costs add up the priced models only (DryRunPlan.unpriced_models names
    the others), and are None when no model has a price.
    """

    done: int
    pending: int
    problems: int
    prompt_tokens: int
    completion_ceiling: int
    cost_min: float | None
    cost_max: float | None
    batch_cost_min: float | None = None
    batch_cost_max: float | None = None


@dataclass(frozen=True)
class DryRunPlan:
    """What a run of this config would do now, found without calling the API.

    ``tasks`` is the number of tasks in the input; ``tasks_pending`` those not done for at least one
    model, which are the ones checked; ``problem_count`` of those would fail (``problems`` keeps the
    first MAX_PROBLEMS_KEPT). ``max_tokens_assumed`` says that some estimated task has no
    max_tokens, neither its own nor the run's, so its answer was counted at ``assumed_max_tokens``,
    what the rate limiter charges.
    """

    input: Path
    models: tuple[str, ...]
    tasks: int
    tasks_pending: int
    rows: tuple[ModelPlan, ...]
    totals: PlanTotals
    problems: tuple[TaskProblem, ...]
    problem_count: int
    images: ImageCounts
    prompt: PromptStats
    max_tokens_assumed: bool
    assumed_max_tokens: int
    unpriced_models: tuple[str, ...]
    # each priced model and its price as checked by a person (Price.describe: date and source)
    prices: tuple[tuple[str, str], ...] = ()
    batch: bool = False  # --backend batch: the Batch API's price is the one that will be paid

    @property
    def ok(self) -> bool:
        """No pending task would fail for its images."""
        return self.problem_count == 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--dry-run --json``: paths are strings, every row and total included."""
        data = dataclasses.asdict(self, dict_factory=_plain)
        data["rows"] = [row.to_dict() for row in self.rows]
        data["prices"] = dict(self.prices)
        data["ok"] = self.ok
        return data


class _ModelCounts:
    """One model's running counts; prompt tokens and ceilings by the model actually requested."""

    def __init__(self) -> None:
        self.pending = 0
        self.problems = 0
        self.by_model: dict[str, list[int]] = {}

    def add(self, model: str, prompt_tokens: int, ceiling: int) -> None:
        """Count one request to ``model``: its prompt tokens and its most completion tokens."""
        tokens = self.by_model.setdefault(model, [0, 0])
        tokens[0] += prompt_tokens
        tokens[1] += ceiling

    def finish(self, model: str, output: Path, done: int, prices: PriceTable) -> ModelPlan:
        """The plan of ``model``'s output: cost bounds online and in the Batch API, if priced."""
        found = [
            (prices.find(name), prompt, ceiling)
            for name, (prompt, ceiling) in self.by_model.items()
        ]
        cost_min: float | None = None
        cost_max: float | None = None
        batch_min: float | None = None
        batch_max: float | None = None
        if all(price is not None for price, _, _ in found):
            priced = [
                (price, prompt, ceiling) for price, prompt, ceiling in found if price is not None
            ]
            cost_min = sum((price.cost(prompt, 0) for price, prompt, _ in priced), 0.0)
            cost_max = sum((price.cost(prompt, ceiling) for price, prompt, ceiling in priced), 0.0)
            batch_min = sum((price.batch().cost(prompt, 0) for price, prompt, _ in priced), 0.0)
            batch_max = sum(
                (price.batch().cost(prompt, ceiling) for price, prompt, ceiling in priced), 0.0
            )
        return ModelPlan(
            model=model, output=output, done=done, pending=self.pending, problems=self.problems,
            requested_models=tuple(sorted(self.by_model)) or (model,),
            prompt_tokens=sum(t[0] for t in self.by_model.values()),
            completion_ceiling=sum(t[1] for t in self.by_model.values()),
            cost_min=cost_min, cost_max=cost_max, batch_cost_min=batch_min,
            batch_cost_max=batch_max,
        )


class _Images:
    """Running image counts."""

    def __init__(self) -> None:
        self.counts = {"local": 0, "inline": 0, "remote": 0}
        self.bytes = 0
        self.largest: LargestImage | None = None

    def add(self, image: CheckedImage, task_id: str) -> None:
        """Count one checked image, keeping the largest."""
        self.counts[image.kind] += 1
        if image.size is None:
            return
        self.bytes += image.bytes
        if self.largest is None or image.bytes > self.largest.bytes:
            self.largest = LargestImage(image.path, image.bytes, image.size[0], image.size[1],
                                        task_id)

    def finish(self) -> ImageCounts:
        """The image counts, bytes and largest image as a value."""
        return ImageCounts(self.counts["local"], self.counts["inline"], self.counts["remote"],
                          self.bytes, self.largest)


def plan(config: RunConfig, prices: PriceTable) -> DryRunPlan:
    """Check every task a run of ``config`` would send now, estimate tokens and cost; send nothing.

    Raises InputError for bad input and ConfigError without input or output paths, as a run would; a
    task whose image is missing, not an image, or of unreadable size is a TaskProblem, not an error.
    """
    input_path, output = config.require_paths()
    keys = reading(config)
    chosen = selection(config)
    index = check_input(input_path, keys, chosen)
    config = settle_models(config, index)  # a Batch file's bodies name the model, as in a real run
    models = config.models
    runs = run_outputs(output, config.variant_names, models)
    done = [scan(out.path, within=index.ids).done or index.ids.empty() for out in runs]
    rows = [_ModelCounts() for _ in runs]
    checker = TaskChecker(RequestSettings.of(config), prompt_forms(config))
    images = _Images()
    problems: list[TaskProblem] = []
    problem_count = tasks_pending = 0
    prompt_total = prompt_count = per_task_total = 0
    prompt_min: int | None = None
    prompt_max: int | None = None
    assumed = False
    for task in iter_tasks(input_path, keys, selection=chosen):
        pending = [i for i, ids in enumerate(done) if not ids.has_member(task.id)]
        if not pending:
            continue
        tasks_pending += 1
        for i in pending:
            rows[i].pending += 1
        if len(models) > 1:
            task = dataclasses.replace(task, model=None)  # as the worker: each of the run's models
        checked = checker.check(task, pending[0])
        if isinstance(checked, str):
            problem_count += 1
            if len(problems) < MAX_PROBLEMS_KEPT:
                problems.append(TaskProblem(task.id, task.line, checked))
            for i in pending:
                rows[i].problems += 1
            continue
        request, task_images = checked
        for image in task_images:
            images.add(image, task.id)
        tokens = request.prompt_tokens
        per_task_total += tokens
        prompt_count += 1
        prompt_min = tokens if prompt_min is None else min(prompt_min, tokens)
        prompt_max = tokens if prompt_max is None else max(prompt_max, tokens)
        for i in pending:
            sent = request
            if i != pending[0]:
                # Each output its own request: models bill the same image at different token
                # counts, and variants ask in their own words.
                again = checker.check(task, i)
                sent = again[0] if not isinstance(again, str) else request
            ceiling = sent.max_tokens
            if ceiling is None:
                ceiling = DEFAULT_COMPLETION_TOKENS
                assumed = True
            rows[i].add(sent.model if len(models) == 1 else str(runs[i].model), sent.prompt_tokens,
                        ceiling)
            prompt_total += sent.prompt_tokens
    model_rows = tuple(row.finish(str(out.model), out.path, len(ids), prices)
                       for row, out, ids in zip(rows, runs, done, strict=True))
    named = sorted({name for row in rows for name in row.by_model})
    unpriced = [name for name in named if prices.find(name) is None]
    shown = tuple((name, price.describe()) for name in named
                  if (price := prices.find(name)) is not None)
    return DryRunPlan(
        input=input_path, models=models, tasks=index.total, tasks_pending=tasks_pending,
        rows=model_rows,
        totals=_totals(model_rows), problems=tuple(problems), problem_count=problem_count,
        images=images.finish(),
        prompt=PromptStats(prompt_count, prompt_total, prompt_min,
                           per_task_total / prompt_count if prompt_count else None, prompt_max),
        max_tokens_assumed=assumed, assumed_max_tokens=DEFAULT_COMPLETION_TOKENS,
        unpriced_models=tuple(unpriced), prices=shown, batch=config.backend == "batch",
    )


def _totals(rows: tuple[ModelPlan, ...]) -> PlanTotals:
    priced = [row for row in rows if row.cost_min is not None and row.cost_max is not None]
    return PlanTotals(
        done=sum(row.done for row in rows),
        pending=sum(row.pending for row in rows),
        problems=sum(row.problems for row in rows),
        prompt_tokens=sum(row.prompt_tokens for row in rows),
        completion_ceiling=sum(row.completion_ceiling for row in rows),
        cost_min=sum(row.cost_min or 0.0 for row in priced) if priced else None,
        cost_max=sum(row.cost_max or 0.0 for row in priced) if priced else None,
        batch_cost_min=sum(row.batch_cost_min or 0.0 for row in priced) if priced else None,
        batch_cost_max=sum(row.batch_cost_max or 0.0 for row in priced) if priced else None,
    )

