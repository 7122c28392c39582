"""``--cancel --backend batch``: cancel the output's open batches at the server, from any terminal.

Answers a cancelled batch already gave are kept: the next run merges them and sends the rest. With
no run live on the output, the plan records the cancel; a live run sees it by polling (its batches
turn ``cancelling``), merges what they answered and takes no new batch.
"""

from __future__ import annotations

from ..config import RunConfig
from ..errors import BatchApiError
from ..store.locks import live_run
from ..store.output import OutputPaths
from .batch_plan import FINAL_STATUSES, ChunkState, Plan
from .batch_submit import BatchClient
from .batch_targets import target_of, targets_of


def _ended(client: BatchClient, batch_id: str) -> str | None:
    """``already <status>`` when the batch has ended (nothing left to cancel), else None."""
    try:
        batch = client.call(f"poll {batch_id}", client.sdk.batches.retrieve, batch_id)
    except BatchApiError:
        return None
    return f"already {batch.status}" if batch.status in FINAL_STATUSES else None


def cancel(config: RunConfig) -> list[tuple[str, str, str]]:
    """Cancel the output's open batches at the server:
    (chunk, batch id, status) of each one cancelled."""
    _, output = config.require_paths()
    plan = Plan.load(output)
    if plan is None:
        return []
    targets = targets_of(config)
    clients: dict[str | None, BatchClient] = {}
    cancelled: list[tuple[str, str, str]] = []
    try:
        for chunk in plan.open_chunks:
            if (chunk.state is not ChunkState.CREATED or chunk.batch_id is None
                    or chunk.status in FINAL_STATUSES):
                continue
            # At the endpoint the batch was made at (a plan records its name, never its key)
            target = target_of(targets, chunk, plan.models[chunk.model_index] if plan.models
                               else config.models[chunk.model_index])
            if target.name not in clients:
                clients[target.name] = BatchClient(config, target.endpoint)
            client = clients[target.name]
            try:
                batch = client.call(f"cancel {chunk.batch_id}", client.sdk.batches.cancel,
                                    chunk.batch_id)
            except BatchApiError as exc:
                # It ended meanwhile (409), or the API is down: say which, go on
                ended = _ended(client, chunk.batch_id)
                cancelled.append((chunk.name, chunk.batch_id, ended or f"not cancelled: {exc}"))
                continue
            chunk.status = batch.status
            cancelled.append((chunk.name, chunk.batch_id, batch.status))
    finally:
        for client in clients.values():
            client.close()
    if live_run(OutputPaths.of(output)) is None:
        plan.cancelled = True
        # With no run live, this process may write the plan; a live run sees the cancel by polling
        plan.save()
    return cancelled
