"""The slices of a run's settings that the parts take instead of the whole RunConfig: the retry
policy (api/retry.py, the Batch client) and what a task runner reads (backends/runner.py, its HTTP
clients, build-ahead), each built by its ``of``. RequestSettings, what building a request reads,
is in config.py beside the fields it is made of.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .api.endpoints import Endpoint, endpoints_of
from .config import RequestSettings, RunConfig, Transport
from .store.judged import JudgeForm

__all__ = ["RetryPolicy", "RunnerSettings"]


@dataclass(frozen=True)
class RetryPolicy:
    """The run's retry settings, as api/retry.py's decisions read them: --max-retries,
    --retry-backoff and --patience."""

    max_retries: int
    backoff_s: float
    patience_s: float

    @classmethod
    def of(cls, config: RunConfig) -> RetryPolicy:
        """The retry policy of a run (the online runner's and the Batch client's alike)."""
        return cls(config.max_retries, config.retry_backoff, config.patience)


@dataclass(frozen=True)
class RunnerSettings:
    """What a task runner reads of the run (backends/runner.py, its HTTP clients and build-ahead).

    Plain, picklable data: it goes to every worker process and Ray actor instead of the RunConfig.
    ``endpoints`` is by key index (keys read); ``named``: they come from an endpoints table, so a
    failure names its endpoint and an answer line records it; ``strict_model``: an answer by
    another model fails (wrong_model).
    """

    request: RequestSettings
    retry: RetryPolicy
    keys: tuple[str, ...] = field(repr=False)
    endpoints: tuple[Endpoint, ...] = field(repr=False)
    named: bool
    timeout: float
    transport: Transport
    concurrency: int
    strict_model: bool = False
    judging: JudgeForm | None = None  # a judging run: its lines are a judge's (store/judged.py)

    @classmethod
    def of(cls, config: RunConfig) -> RunnerSettings:
        """The runner settings of a run; ConfigError when it has no API key."""
        return cls(RequestSettings.of(config), RetryPolicy.of(config), config.require_api_keys(),
                   endpoints_of(config), bool(config.endpoint_table), config.timeout,
                   config.transport, config.concurrency, config.strict_model, config.judging)

    @property
    def built_ahead(self) -> int:
        """How many requests a local worker builds ahead of its -c slots (backends/ahead.py): as
        many again, on the aiohttp transport; none on httpx (the SDK's own path, kept as it was:
        the reference)."""
        return self.concurrency if self.transport is Transport.AIOHTTP else 0
