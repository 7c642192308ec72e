"""Messages to a merchant's `MerchantAccount` workflow (after go-live), forwarded and audited
exactly like an application's (`gateway.forwarding`), under the merchant's own audit trail.

A merchant's trail is keyed `merchant:{MID}` in the messages table: a key no application id can
take (they have no `:`), so a merchant's messages and an application's never mix, even for an
application whose id is fifteen digits. A refusal is kept only for a merchant the gateway knows
(it has a snapshot of it); for any other MID it is counted, like refusals for unknown
applications. Temporal's "no such workflow" is 404 for a MID the gateway does not know and 409
for one it knows (its account closed, the workflow ended).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from temporalio.client import Client, WorkflowHandle
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError as UpdateTimeout
from temporalio.service import RPCError, RPCStatusCode

from gateway.errors import TEMPORAL_UNAVAILABLE, ApiError, shown
from gateway.forwarding import Forwarded, Forwarder, answer, describe_ack
from gateway.forwarding import _outcome_of as outcome_of
from schemas.merchant import MID_PATTERN, merchant_workflow_id
from schemas.messages import Ack, Refusal
from workers.logging import masked
from workflows.merchant import MerchantAccount

AUDIT_PREFIX = "merchant:"

Mid = Annotated[
    str,
    Path(
        min_length=15,
        max_length=15,
        pattern=MID_PATTERN,
        description="the merchant's MID: 15 digits",
    ),
]

# The merchant message routes (by route name) and what each is: who sends it and the kind its
# receipts are kept under. A body they refuse as invalid is kept in the merchant's audit trail.
MERCHANT_SOURCES: dict[str, tuple[str, str]] = {}


def audit_key(mid: str) -> str:
    """The merchant's audit trail in the messages table."""
    return f"{AUDIT_PREFIX}{mid}"


def mid_of_key(key: str) -> str:
    return key.removeprefix(AUDIT_PREFIX)


def valid_mid(mid: str) -> bool:
    return len(mid) == 15 and mid.isascii() and mid.isdigit()


def unknown_merchant(mid: str) -> ApiError:
    return ApiError(404, "unknown_merchant", f"no merchant {shown(mid)}")


def merchant_closed(mid: str) -> ApiError:
    return ApiError(
        409,
        Refusal.FINISHED.value,
        f"merchant {shown(mid)}'s account is closed (its workflow ended)",
    )


class MerchantForwarder(Forwarder):
    """The gateway's forwarder with a merchant's audit trail for the application's: the same
    waits, answers and pending messages (it shares the forwarder's background waits, so they
    are counted and stopped at shutdown together)."""

    def __init__(self, base: Forwarder) -> None:
        # Not Forwarder.__init__: that would point the metrics' gauge at a second set of waits.
        self.store, self.metrics = base.store, base.metrics
        self.wait_seconds, self.accept_seconds = base.wait_seconds, base.accept_seconds
        self.awaiting = base.awaiting

    def known(self, key: str) -> bool:
        mid = mid_of_key(key)
        if not (key.startswith(AUDIT_PREFIX) and valid_mid(mid)):
            return False
        return self.store.merchant(mid) is not None

    def record_refusal(
        self,
        err: ApiError,
        application_id: str,
        source: str,
        kind: str,
        body: Any,
        message_id: str = "",
        update_id: str = "",
    ) -> None:
        """Kept in a known merchant's trail (`application_id` is its audit key); for a MID the
        gateway does not know, only counted: made-up MIDs cannot fill the store."""
        self.metrics.refusal(err.error)
        if not self.known(application_id):
            return
        self.record(
            application_id=application_id,
            source=source,
            kind=kind,
            message_id=message_id,
            outcome=outcome_of(err),
            detail=f"{err.error}: {err.message}",
            body=body,
            update_id=update_id,
        )

    def _unanswered(self, err: RPCError | UpdateTimeout, application_id: str) -> ApiError:
        if isinstance(err, RPCError) and err.status is RPCStatusCode.NOT_FOUND:
            mid = mid_of_key(application_id)
            return merchant_closed(mid) if self.known(application_id) else unknown_merchant(mid)
        return ApiError(503, TEMPORAL_UNAVAILABLE, "the process engine did not answer")


def merchant_forwarder_of(request: Request) -> MerchantForwarder:
    forwarder: MerchantForwarder = request.app.state.merchant_forwarder
    return forwarder


def merchant_workflow(client: Client, mid: str) -> WorkflowHandle[MerchantAccount, Any]:
    return client.get_workflow_handle_for(MerchantAccount.run, merchant_workflow_id(mid))


async def send_to_merchant(
    request: Request,
    mid: str,
    source: str,
    kind: str,
    update: Any,
    payload: BaseModel,
    *,
    actor: str = "",
    reason: str = "",
) -> Forwarded[Ack]:
    """Send one message to the merchant's workflow and keep it with its outcome (and, for an
    action people take, who and why); raises ApiError when it is refused.

    Update ids are scoped by kind: a fault report and a closure request may carry the same id."""
    forwarder = merchant_forwarder_of(request)
    key = audit_key(mid)
    try:
        return await forwarder.forward(
            merchant_workflow(request.app.state.client, mid),
            update,
            payload,
            application_id=key,
            source=source,
            kind=kind,
            body=masked(payload.model_dump(mode="json")),
            describe=describe_ack,
            scope=f"{kind}:",
        )
    finally:
        if actor:
            message_id = getattr(payload, "request_id", "")
            await asyncio.to_thread(
                forwarder.store.stamp_action, key, message_id, kind, actor, reason
            )


async def deliver_to_merchant(
    request: Request,
    mid: str,
    source: str,
    kind: str,
    update: Any,
    payload: BaseModel,
    *,
    actor: str = "",
    reason: str = "",
) -> JSONResponse:
    """`send_to_merchant`, answered: 200 with the workflow's ack, 202 while pending."""
    forwarded = await send_to_merchant(
        request, mid, source, kind, update, payload, actor=actor, reason=reason
    )
    return answer(forwarded, payload)
