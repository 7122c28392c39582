"""Where a batch goes: the Batch API of each endpoint of the run (``--backend batch``).

Without an endpoints table a run has one target: its first key at ``--base-url``. With a table,
each endpoint is one: OpenAI-shaped (``/v1/files``, ``/v1/batches``; request lines with ``url``
``/v1/chat/completions`` and the model's name) or Azure OpenAI's (files and batches under the
resource, ``{base_url}/openai/files?api-version=...`` with an ``api-key`` header, through the SDK's
``AzureOpenAI``; a global-batch deployment is named by each line's ``model``, and the lines' ``url``
and the batch's endpoint are ``/chat/completions``, as Azure's documentation shows).

A chunk is given its target when its request file is started (its lines are written for it), the
target of its model with the fewest enqueued tokens for its limit (``enqueued_tokens`` in the table;
as even shares when none is known); the plan records the target's name (``Endpoint.title``, never
its key), so a rerun polls each batch where it was made. A chunk of a plan from before endpoints
(no name) is the run's one endpoint of its model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..api.endpoints import ANY_MODEL, Endpoint, Provider
from ..config import RunConfig
from ..errors import ConfigError
from .batch_plan import Chunk, Plan

OPENAI_URL = "/v1/chat/completions"
"""The endpoint of OpenAI's chat batches (and their lines' ``url``)."""
AZURE_URL = "/chat/completions"
"""The endpoint of Azure OpenAI's chat batches (and their lines' ``url``)."""


@dataclass(frozen=True)
class Target:
    """One endpoint's Batch API as the run's batches use it: ``name`` as the plan records it (None:
    the run's one endpoint, without a table), the endpoint (the model it serves, the deployment a
    line names at Azure, its enqueued-token limit), the URL its lines and batches name."""

    name: str | None
    endpoint: Endpoint
    url: str

    @property
    def deployment(self) -> str | None:
        """The deployment a line names at Azure (None: the line keeps its model)."""
        return self.endpoint.deployment

    @property
    def enqueued_tokens(self) -> int | None:
        """The endpoint's enqueued-token limit (None: unknown)."""
        return self.endpoint.enqueued_tokens

    def serves(self, model: str) -> bool:
        """Whether batches of ``model`` may go here."""
        return self.endpoint.serves(model)

    def line(self, task_id: str, body: dict[str, Any]) -> bytes:
        """The Batch API input line of a request body, as this endpoint takes it."""
        if self.deployment is not None:
            body = {**body, "model": self.deployment}
        line = {"custom_id": task_id, "method": "POST", "url": self.url, "body": body}
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


def targets_of(config: RunConfig) -> tuple[Target, ...]:
    """The run's targets: its table's endpoints, or its first key at --base-url."""
    if not config.endpoint_table:
        key = config.require_api_keys()[0]
        return (Target(None, Endpoint(ANY_MODEL, key, config.base_url), OPENAI_URL),)
    config.require_api_keys()  # every key of the table is set, or a ConfigError names those unset
    return tuple(Target(endpoint.title, endpoint,
                        AZURE_URL if endpoint.provider is Provider.AZURE else OPENAI_URL)
                 for endpoint in config.endpoint_table)


def choose(plan: Plan, targets: Sequence[Target], model: str) -> Target:
    """The target for a new chunk of ``model``: of those serving it, the one whose open chunks
    hold the fewest tokens for its enqueued-token limit (equal limits when none is known)."""
    serving = [t for t in targets if t.serves(model)]
    if not serving:
        raise ConfigError(f"no endpoint serves model {model!r}: add an [[endpoints]] table "
                          f"with model = {model!r}")
    known = [t.enqueued_tokens for t in serving if t.enqueued_tokens]
    usual = sum(known) / len(known) if known else 1.0
    load = {t.name: 0 for t in serving}
    for chunk in plan.open_chunks:
        if chunk.endpoint in load:
            load[chunk.endpoint] += chunk.tokens
    return min(serving, key=lambda t: load[t.name] / (t.enqueued_tokens or usual))


def target_of(targets: Sequence[Target], chunk: Chunk, model: str) -> Target:
    """Where ``chunk`` (of ``model``) went: its target by name; a chunk without one (a plan from
    before endpoints) went to the run's one endpoint of its model. ConfigError when the run has
    no such endpoint (its table changed while batches were open)."""
    serving = [t for t in targets if t.serves(model)]
    if chunk.endpoint is None and len(serving) == 1:
        return serving[0]
    for target in serving:
        if target.name == chunk.endpoint:
            return target
    where = (f"endpoint {chunk.endpoint!r}" if chunk.endpoint
             else "the run's one endpoint (the plan is from before endpoints tables)")
    raise ConfigError(f"{chunk.name}: its batch was made at {where}, which this run's endpoints "
                      f"for {model} do not have: run with the endpoints it was made with to "
                      "collect it (or --cancel it first)")
