"""What the limiter is built from: LimiterSettings, the slice of a run's settings it needs.

``LimiterSettings.of`` is the one place a run's settings become a limiter's: the window, the burst,
--rpm/--tpm (one number for every lane), and with an endpoints table or per-model limits, which
endpoints (keys) serve each model and each lane's own limits. Every backend builds its limiter from
it (``SharedLimiter(settings)``), passing what is its own: how many requests may be in flight at
most, and how many holders (worker slots) grants are counted against.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..api.endpoints import DEFAULT_BASE_URL, Endpoint, endpoints_of
from ..errors import ConfigError
from ..settings import ModelRates
from .lanefile import UNLIMITED_IN_FLIGHT, default_folder, lane_id
from .pacing import DEFAULT_BURST_S, DEFAULT_WINDOW_S

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["UNLIMITED_IN_FLIGHT", "LaneLimits", "LimiterSettings", "Sharing"]


@dataclass(frozen=True)
class Sharing:
    """Lanes shared with the other runs on this machine: the folder of their files, each lane's id
    (by lane index; None: the run's own), and the label that names this run to the others."""

    folder: str
    lane_ids: tuple[str | None, ...]
    label: str


@dataclass(frozen=True)
class LaneLimits:
    """One lane's own limits (an endpoint's, for one model), paced as a flag's; None: the run's."""

    key: int
    model_index: int
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None


@dataclass(frozen=True)
class LimiterSettings:
    """Everything a limiter is built from: plain, picklable data (it travels to a Ray actor).

    ``rpm``/``tpm`` hold on every lane, counted in rings over ``window_s``; ``margin_s`` (None: 2%
    of the window, 0.1 to 1 s) is added to it for pacing. ``serves``: for each model, the keys that
    serve it (None: every key serves every model). ``lanes``: the lanes with limits of their own.
    ``share``: the lanes shared with other runs (None: all the run's own). ``slow_start``: a lane
    with no limit known sends one request first, until an answer states a limit or opens it (a run's
    lanes do).
    """

    n_keys: int
    n_models: int = 1
    rpm: int | None = None
    tpm: int | None = None
    window_s: float = DEFAULT_WINDOW_S
    burst_s: float = DEFAULT_BURST_S
    margin_s: float | None = None
    max_in_flight: int = UNLIMITED_IN_FLIGHT
    holders: int = 1
    serves: tuple[tuple[int, ...], ...] | None = None
    lanes: tuple[LaneLimits, ...] = ()
    share: Sharing | None = None
    slow_start: bool = False

    @classmethod
    def of(cls, config: RunConfig, *, max_in_flight: int, holders: int) -> LimiterSettings:
        """A run's limiter settings; ``max_in_flight`` and ``holders`` are the backend's to say.

        Raises ConfigError when an endpoints table leaves a model with no endpoint.
        """
        endpoints = endpoints_of(config)
        models = config.models
        lanes = tuple(LaneLimits(key, model_index, lane_limit(config.rpm, name, endpoint.rpm),
                                 lane_limit(config.tpm, name, endpoint.tpm), endpoint.max_in_flight)
                      for key, endpoint in enumerate(endpoints)
                      for model_index, name in enumerate(models) if endpoint.serves(name))
        return cls(len(config.require_api_keys()), len(models), config.window_rpm,
                   config.window_tpm, config.rate_window, config.burst,
                   max_in_flight=max_in_flight, holders=holders,
                   serves=serving(endpoints, models) if config.endpoint_table else None,
                   lanes=tuple(own for own in lanes if own.rpm or own.tpm or own.max_in_flight),
                   share=sharing(config, endpoints, models) if config.share_limits else None,
                   slow_start=True)


def sharing(config: RunConfig, endpoints: Sequence[Endpoint],
            models: Sequence[str]) -> Sharing:
    """The lanes of a run as every run on the machine names them: by key, where requests go (base
    URL, Azure deployment) and model."""
    ids = tuple(lane_id(endpoint.api_key, _where(endpoint), model) if endpoint.serves(model)
                else None for endpoint in endpoints for model in models)
    folder = config.limits_dir or default_folder()
    return Sharing(str(folder), ids,
                   os.path.abspath(config.output) if config.output else "mpinfer.run()")


def _where(endpoint: Endpoint) -> str:
    """Where an endpoint's requests go, as far as its limits are concerned."""
    return "|".join((str(endpoint.provider), endpoint.base_url or DEFAULT_BASE_URL,
                     endpoint.deployment or ""))


def serving(endpoints: Sequence[Endpoint], models: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """For each model of the run, the endpoints (by index) serving it; ConfigError if none does."""
    served = tuple(tuple(i for i, ep in enumerate(endpoints) if ep.serves(model))
                   for model in models)
    for model, indices in zip(models, served, strict=True):
        if not indices:
            raise ConfigError(f"no endpoint serves model {model!r}: add an [[endpoints]] table "
                              f"with model = {model!r}")
    return served


def lane_limit(config_rate: int | ModelRates | None, model: str, own: int | None) -> int | None:
    """The limit on one endpoint's lane for ``model``: the endpoint's own, else --rpm/--tpm for that
    model. A single --rpm number is the limiter's own window, for every lane: None here."""
    if own is not None:
        return own
    if isinstance(config_rate, ModelRates):
        return config_rate.get(model)
    return None
