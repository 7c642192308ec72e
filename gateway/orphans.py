"""Pending messages whose gateway stopped: found and settled by any gateway.

A message that waits in its workflow is answered 202 `pending`, and the gateway that took it
waits in the background to record what became of it (`gateway.forwarding`). If that gateway
stops (a deploy, a crash, one of two behind a load balancer), its wait goes with it and the audit
row would stay `pending` for good, although the message itself is safe in the workflow. Every
gateway therefore sweeps now and then for pending rows older than the longest a live wait could
have left them, and asks Temporal for their update's outcome by its id: a finished update is
recorded (applied, duplicate, or refused and why); one still waiting is left for the next sweep.
Two gateways settling the same row write the same outcome, and only a row still pending is
written (`Store.settle_message`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode

from gateway.errors import refusal
from gateway.forwarding import Forwarder, _outcome_of
from gateway.merchants import AUDIT_PREFIX, mid_of_key
from gateway.store import MessageRecord
from schemas.merchant import merchant_workflow_id
from schemas.messages import Refusal

log = structlog.get_logger(__name__)

ASK_TIMEOUT = timedelta(seconds=2)  # how long one sweep waits for one update's outcome
ASKING_AT_ONCE = 10
SWEEP_LIMIT = 100  # rows looked at in one sweep, oldest first


def workflow_id_of(forwarder: Forwarder, row: MessageRecord) -> str | None:
    """The workflow a message went to: a merchant's account, or the application's."""
    if row.application_id.startswith(AUDIT_PREFIX):
        return merchant_workflow_id(mid_of_key(row.application_id))
    record = forwarder.store.application(row.application_id)
    return record.workflow_id if record is not None else None


async def settle_orphans(
    forwarder: Forwarder, client: Client, older_than: timedelta, limit: int = SWEEP_LIMIT
) -> int:
    """Settle the pending messages older than `older_than` whose update has finished; returns
    how many rows this sweep settled."""
    cutoff = datetime.now(UTC) - older_than
    rows = await asyncio.to_thread(forwarder.store.pending_messages, cutoff, limit)
    asking = asyncio.Semaphore(ASKING_AT_ONCE)

    async def settle(row: MessageRecord) -> bool:
        async with asking:
            return await settle_one(forwarder, client, row)

    return sum(await asyncio.gather(*(settle(row) for row in rows)))


async def settle_one(forwarder: Forwarder, client: Client, row: MessageRecord) -> bool:
    """Ask for one pending message's update; record its outcome if it has one (True)."""
    workflow_id = await asyncio.to_thread(workflow_id_of, forwarder, row)
    if workflow_id is None or not row.update_id:
        return False
    handle = client.get_workflow_handle(workflow_id).get_update_handle(row.update_id)
    try:
        result: Any = await handle.result(rpc_timeout=ASK_TIMEOUT)
    except WorkflowUpdateFailedError as err:
        answer = refusal(err)
        outcome, detail = _outcome_of(answer), f"{answer.error}: {answer.message}"
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        return False  # still waiting in the workflow: the next sweep asks again
    except RPCError as err:
        if err.status is not RPCStatusCode.NOT_FOUND:
            return False  # Temporal did not answer: the next sweep asks again
        outcome, detail = "refused", f"{Refusal.FINISHED.value}: the application ended first"
    else:
        duplicate = isinstance(result, dict) and bool(result.get("duplicate"))
        shown = result.get("detail") if isinstance(result, dict) else None
        outcome = "duplicate" if duplicate else "applied"
        detail = str(shown or outcome)
    changed = await asyncio.to_thread(
        forwarder.store.settle_message,
        row.application_id,
        row.message_id,
        outcome,
        f"{detail} (settled by a sweep: the gateway that took it had stopped)",
        row.id,
    )
    if not changed:
        return False
    forwarder.metrics.message_settled(row.source, row.kind, outcome)
    log.info(
        "pending_message_settled",
        application_id=row.application_id,
        message_id=row.message_id,
        outcome=outcome,
    )
    return True


async def sweep_forever(
    forwarder: Forwarder, client: Client, every: timedelta, older_than: timedelta
) -> None:
    """The gateway's background sweep (started in its lifespan, cancelled at shutdown)."""
    while True:
        await asyncio.sleep(every.total_seconds())
        try:
            await settle_orphans(forwarder, client, older_than)
        except Exception:  # a database or Temporal hiccup: the next sweep tries again
            log.exception("pending_sweep_failed")
