"""The run manifest: what each run on an output ran with,
and the guard against mixing two setups in it.

``<output>.runs.jsonl`` gets one line when a run starts and one when it ends: the redacted command
line, every setting, the input's size and checksum, and for each output file the fingerprint of the
settings that change answers. A rerun with another temperature or system prompt would otherwise
resume silently and leave an output whose answers came from two setups; ``check_fingerprints``
refuses that unless asked.

Nothing here ever holds an API key: keys are not settings, and every string recorded goes through
``redact`` with the run's keys first.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import InputError, OutputError, SettingsChanged
from ..redact import redact, redact_argv
from ..version import __version__
from .marks import file_checksum
from .output import companion, iter_lines, run_outputs, write_whole

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..reports.summary import RunSummary

FINGERPRINT_FIELDS: tuple[str, ...] = (
    "system_prompt", "temperature", "max_tokens", "extra_body", "prompt_key", "images_key",
    "model_key", "thinking", "reasoning_effort", "labels", "json_schema", "image_detail",
    "image_max_side",
)
# Answer-changing settings a fingerprint holds only when set, so the fingerprints of outputs
# written without them stay as they were (a missing key compares as None).
FINGERPRINT_WHEN_SET: tuple[str, ...] = ("template", "system_template")
COUNT_FIELDS: tuple[str, ...] = (
    "total", "done", "succeeded", "failed", "remaining", "prompt_tokens", "completion_tokens",
    "cost", "stopped",
)
_SHOWN_CHARS = 60


def manifest_path(output: Path) -> Path:
    """Where the runs of ``output`` (or of a multi-model set named by it) are recorded."""
    return companion(output, ".runs.jsonl")


def _plain(value: Any, secrets: tuple[str, ...]) -> Any:
    """``value`` as JSON-able data, with every string redacted."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Path):
        return redact(str(value), secrets)
    if isinstance(value, Mapping):
        return {redact(str(k), secrets): _plain(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, secrets) for v in value]
    return value


def fingerprint(config: RunConfig, model: str, variant: str | None = None) -> dict[str, Any]:
    """The settings that change the answers in one output (one model's, of one ``variant``); other
    settings may change freely. A variant's own settings (its templates, temperature, max_tokens)
    are in its outputs' fingerprint, under ``variant``.

    Strings are redacted like everything else in the manifest; redaction is the same on every run
    with the same keys, so fingerprints stay comparable.
    """
    fields = {"model": model, **{name: getattr(config, name) for name in FINGERPRINT_FIELDS}}
    fields.update({name: getattr(config, name) for name in FINGERPRINT_WHEN_SET
                   if getattr(config, name) is not None})
    if variant is not None:
        fields["variant"] = next(v.described() for v in config.variant_table if v.name == variant)
    plain: dict[str, Any] = _plain(fields, config.api_keys)
    return plain


def output_fingerprints(config: RunConfig) -> dict[str, dict[str, Any]]:
    """{output file name: fingerprint} for every output the run writes (one per variant and
    model)."""
    if config.output is None:
        return {}
    return {out.path.name: fingerprint(config, str(out.model), out.variant)
            for out in run_outputs(config.output, config.variant_names, config.models)}


def settings_of(config: RunConfig) -> dict[str, Any]:
    """Every setting of ``config`` except the API keys,
    as JSON-able data (bookkeeping fields left out)."""
    left_out = {"api_keys", "warnings", "explicit", "endpoint_table", "variant_table"}
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name not in left_out}
    plain: dict[str, Any] = _plain(values, config.api_keys)
    # Where each key's variable sends its model, never the key.
    plain["endpoint_table"] = [endpoint.described() for endpoint in config.endpoint_table]
    plain["variant_table"] = _plain([v.described() for v in config.variant_table],
                                    config.api_keys)
    # How many, never which: the report draws --rpm for all of them
    plain["key_count"] = len(config.api_keys)
    return plain


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per key whose value differs (``temperature: 0.0 -> 0.7``),
    sorted; a missing key is None."""
    return [
        f"{key}: {_shown(old.get(key))} -> {_shown(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def input_checksum(path: Path) -> tuple[int, str]:
    """Size in bytes and sha256 (hex) of ``path``,
    read in 1 MiB blocks so any size fits in memory."""
    try:
        return file_checksum(path)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", str(path)) from None


@dataclass(frozen=True)
class RunRecord:
    """One line of the manifest: a run's start, or its end with what it did."""

    event: str
    run_id: str
    started_at: float
    ended_at: float | None
    argv: list[str]
    settings: dict[str, Any]
    version: str
    input: dict[str, Any] | None
    outputs: dict[str, dict[str, Any]]
    counts: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as the manifest's JSON line holds it."""
        return dataclasses.asdict(self)


def start_record(
    config: RunConfig,
    argv: Sequence[str],
    started_at: float | None = None,
    pid: int | None = None,
    checksum: tuple[int, str] | None = None,
) -> RunRecord:
    """The record of a run that is starting:
    settings, redacted command line, input checksum, fingerprints.

    The input is read whole for its checksum, unless ``checksum`` gives it (a Parquet input's is
    taken over its footers; an unchanged input's is kept with its id index): it says later which
    input an output was made from.
    """
    started = time.time() if started_at is None else started_at
    input_info = None
    if config.input is not None:
        size, sha256 = checksum or input_checksum(config.input)
        input_info = {"path": redact(str(config.input), config.api_keys), "size": size,
                      "sha256": sha256}
    return RunRecord(
        event="start",
        run_id=f"{started:.0f}-{os.getpid() if pid is None else pid}",
        started_at=started,
        ended_at=None,
        argv=redact_argv(argv, config.api_keys),
        settings=settings_of(config),
        version=__version__,
        input=input_info,
        outputs=output_fingerprints(config),
    )


def summary_counts(summary: RunSummary, cost: float | None) -> dict[str, Any]:
    """The counts an end record carries,
    from the run's summary and its cost in USD (None: unknown)."""
    return {
        "total": summary.total, "done": summary.done, "succeeded": summary.succeeded,
        "failed": summary.failed, "remaining": summary.remaining,
        "prompt_tokens": summary.prompt_tokens,
        "completion_tokens": summary.completion_tokens, "cost": cost,
        "stopped": str(summary.stopped) if summary.stopped else None,
    }


def end_record(start: RunRecord, counts: Mapping[str, Any],
               ended_at: float | None = None) -> RunRecord:
    """The record of the same run ending (see COUNT_FIELDS for what ``counts`` holds)."""
    return dataclasses.replace(start, event="end",
                               ended_at=time.time() if ended_at is None else ended_at,
                               counts=dict(counts))


def append_record(path: Path, record: RunRecord) -> None:
    """Append ``record`` as one JSON line with one write; on failure the file is left as it was.

    A line torn by an earlier crash is ended first, in the same write, so this record is never glued
    onto it and lost with it.
    """
    line = orjson.dumps(record.to_dict()) + b"\n"
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{path}: cannot open for appending: {exc.strerror or exc}") from None
    try:
        before = os.fstat(fd).st_size
        if before and os.pread(fd, 1, before - 1) != b"\n":
            line = b"\n" + line
        write_whole(fd, path, line, before, fsync=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot append: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record in the manifest, oldest first;
    torn or corrupt lines are skipped, never fatal."""
    return [obj for _, _, obj in iter_lines(path) if isinstance(obj, dict)]


def last_fingerprints(path: Path) -> dict[str, dict[str, Any]]:
    """For each output file name, the fingerprint in the latest record that names it."""
    latest: dict[str, dict[str, Any]] = {}
    for record in read_records(path):
        outputs = record.get("outputs")
        if not isinstance(outputs, dict):
            continue
        for name, print_ in outputs.items():
            if isinstance(print_, dict):
                latest[name] = print_
    return latest


def check_fingerprints(
    manifest: Path,
    current: Mapping[str, Mapping[str, Any]],
    outputs_with_records: Iterable[str],
    allow_mixed: bool,
) -> list[str]:
    """Refuse to add answers to an output that holds answers made with other answer-changing
    settings.

    ``current`` maps output file names to this run's fingerprints; ``outputs_with_records`` names
    the outputs that already have lines (or paths: only the name counts). An output without lines,
    or without a fingerprint in the manifest (written before manifests existed), is accepted. Call
    it before appending this run's start record, which would become the latest fingerprint.

    Returns one message per output that differs when ``allow_mixed`` (the caller warns with them);
    raises SettingsChanged listing them otherwise.
    """
    written = {Path(name).name for name in outputs_with_records}
    previous = last_fingerprints(manifest)
    messages = []
    for name, now in current.items():
        before = previous.get(name)
        if name not in written or before is None:
            continue
        changes = differences(before, now)
        if changes:
            messages.append(f"{name} was written with other settings: {'; '.join(changes)}")
    if messages and not allow_mixed:
        raise SettingsChanged(messages)
    return messages
