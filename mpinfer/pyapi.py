"""``mpinfer.run`` for Python callers: keyword settings in, a RunResult out.

    r = mpinfer.run(input="tasks.jsonl", output="results.jsonl", model="gpt-4o-mini", processes=2)
    r.summary.succeeded, [a["answer"] for a in r.answers()]

The keywords are RunConfig's field names (plus ``api_keys``); they rank as command-line flags do,
over the environment, ``.env`` and ``mpinfer.toml``, so the key still comes from OPENAI_API_KEY
unless given. The run is the command line's run: same locks, resume, files and summary. It leaves
the caller's logging alone and works from any thread (from one that is not the main thread, Ctrl-C
stays with the program).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import OPTIONS, RunConfig, endpoint_table, load_config, parse_setting
from .errors import ConfigError
from .eval.judging import run as run_job
from .lifecycle import DEFAULT_GRACE_S
from .reports.summary import RunSummary
from .sources import read_keys_file
from .store.output import OutputPaths, iter_lines, run_outputs, scan
from .store.records import answer_id, record_id

log = logging.getLogger("mpinfer.job")

# The keywords: the settings' names, and the keys (from Python only: a flag
# would leak them into ``ps``).
KEYWORDS: tuple[str, ...] = (*(option.name for option in OPTIONS), "api_keys")


@dataclass(frozen=True)
class RunResult:
    """What ``mpinfer.run`` did (``summary``), and its answer files (``outputs``, one a model)."""

    summary: RunSummary
    config: RunConfig

    @property
    def outputs(self) -> tuple[Path, ...]:
        """The output files, one per variant and model (``<stem>.<model>.jsonl`` when several
        models ran; store/output.run_outputs names them)."""
        _, output = self.config.require_paths()
        return tuple(out.path for out in run_outputs(output, self.config.variant_names,
                                                     self.config.models))

    def answers(self) -> Iterator[dict[str, Any]]:
        """Every result line in the outputs, this run's and earlier ones', as dicts, in file order.

        Read lazily from disk, so a million answers need not fit in memory. These are the lines a
        resume counts as done; any other line (torn, corrupt or not an answer, which ``validate``
        reports) is skipped. The failures are in ``failures()``.
        """
        for path in self.outputs:
            for _number, _raw, obj in iter_lines(path):
                if answer_id(obj) is not None:
                    yield obj

    def failures(self) -> Iterator[dict[str, Any]]:
        """The last failure of each task still not answered (what a rerun retries), as dicts.

        Earlier failures of a task answered since, in this run or a later one, are left out.
        """
        for path in self.outputs:
            done = scan(path).ids
            last: dict[str, dict[str, Any]] = {}
            for _number, _raw, obj in iter_lines(OutputPaths.of(path).errors):
                task_id = record_id(obj)
                if task_id is not None and task_id not in done:
                    last[task_id] = obj
            yield from last.values()


def run(config: RunConfig | None = None, *, input: str | Path | None = None,
        output: str | Path | None = None, progress: bool = True, grace_s: float = DEFAULT_GRACE_S,
        **settings: Any) -> RunResult:
    """Run every task of ``input`` not yet in ``output`` (rerun to resume); the RunResult.

    ``settings`` are RunConfig's field names, e.g. ``model="gpt-4o-mini", processes=2, max_cost=5``;
    an unknown name is a ConfigError. With ``config``, the keyword settings apply over it. Raises
    MpinferError subclasses (bad input, settings or output) before anything is spent.
    """
    settings = {"input": input, "output": output, **settings}
    check_names(settings)
    if config is None:
        keys = settings.pop("api_keys", None)  # not a flag: load_config knows only the settings
        config = load_config(settings, named=lambda option: _keyword(option.name))
        config = with_settings(config, {"api_keys": keys})
    else:
        config = with_settings(config, settings)
    for warning in config.warnings:
        log.warning("%s", warning)
    summary = run_job(config, progress=progress, grace_s=grace_s)
    return RunResult(summary, config)


def check_names(settings: Iterable[str]) -> None:
    """A ConfigError for the first of ``settings`` that is no keyword, with the likeliest meant."""
    for name in settings:
        if name not in KEYWORDS:
            close = difflib.get_close_matches(name, KEYWORDS, n=1)
            hint = (f"; did you mean {close[0]!r}?" if close
                    else f" (known: {', '.join(sorted(KEYWORDS))})")
            raise ConfigError(f"unknown setting {name!r}{hint}")


def with_settings(config: RunConfig, settings: Mapping[str, Any]) -> RunConfig:
    """``config`` with keyword settings over it (None: not given), each parsed as its flag would be.

    ``api_keys`` takes a key or a sequence of keys; a new ``api_keys_file``
    without them reads its keys.
    """
    check_names(settings)
    given = {name: value for name, value in settings.items() if value is not None}
    values = {name: parse_setting(name, value, _keyword(name)) for name, value in given.items()
              if name != "api_keys"}
    if "api_keys" in given:
        values["api_keys"] = _key_list(given["api_keys"])
    elif "api_keys_file" in values:
        values["api_keys"] = read_keys_file(values["api_keys_file"])
    if values.get("endpoints") is not None:  # the table's own keys, one an endpoint
        values["endpoint_table"] = endpoint_table(values["endpoints"])
        values["api_keys"] = tuple(endpoint.api_key for endpoint in values["endpoint_table"]
                                   if endpoint.api_key)
    explicit = config.explicit | (set(values) - {"api_keys", "endpoint_table"})
    return dataclasses.replace(config, **values, explicit=explicit)


def _keyword(name: str) -> str:
    return f"mpinfer.run({name}=...)"


def _key_list(value: Any) -> tuple[str, ...]:
    keys = ([value] if isinstance(value, str)
            else list(value) if isinstance(value, (list, tuple)) else None)
    if not keys or not all(isinstance(key, str) and key.strip() for key in keys):
        raise ConfigError(f"{_keyword('api_keys')}: must be a key or a list "
                          "of keys, none of them empty")
    return tuple(dict.fromkeys(key.strip() for key in keys))
