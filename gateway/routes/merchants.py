"""Merchants after go-live: each MID's `MerchantAccount` workflow, its callbacks, the requests
merchants and operations make of it, the admin's actions, and the reads.

- callbacks, each signed by its service: `fee-payment` (contract), `inspection` and `delivery`
  (logistics), `activation` (device), `rebinding-decision` (review);
- a merchant's requests: `faults` (a merchant key of its channel, or an operator: a fault is
  reported by either), `terminal-orders` and `settlement-account` (a merchant key of its channel,
  or an admin, like an application's documents); `closure` (operator, like withdrawing an
  application);
- admin: `retry`, `extend` (under `/api/admin/merchants/{mid}`);
- reads (viewer): the list and its counts from the gateway's store, one merchant (the status
  query, or the stored snapshot once the workflow is closed or gone), its messages.

Every message is forwarded and answered like an application's (200, 202 pending, 409, 422, 503)
and kept in the merchant's audit trail (`gateway.merchants`).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from gateway.auth import Principal, admin, merchant_or_staff, operator, signed_by, viewer
from gateway.errors import (
    COMMON,
    MERCHANT,
    SIGNED,
    SIGNED_IN,
    TEMPORAL_UNAVAILABLE,
    UNAVAILABLE,
    ApiError,
    described,
)
from gateway.merchants import (
    MERCHANT_SOURCES,
    Mid,
    audit_key,
    deliver_to_merchant,
    merchant_workflow,
    unknown_merchant,
)
from gateway.models import (
    MerchantAction,
    MerchantExtendRequest,
    MerchantSummary,
    PendingReceipt,
    Receipt,
)
from gateway.resources import ClientDep, StoreDep, client_of
from gateway.routes.admin import actor_of, workflow_message
from gateway.store import MerchantCounts, MerchantFilter, MessageRecord, Store
from schemas import messages
from schemas.merchant import (
    AccountState,
    ClosureRequest,
    FaultReport,
    FeePaid,
    InspectionResult,
    MerchantStatus,
    RebindingDecision,
    RebindingRequest,
    TerminalOrder,
)
from schemas.messages import DeliveryOutcome, TerminalActivated
from workers.logging import masked
from workflows.merchant import MerchantAccount

PREFIX = "/api/merchants/{mid}"
MESSAGE_ANSWERS: dict[int | str, dict[str, Any]] = {
    202: {"model": PendingReceipt, "description": "accepted, applied once its step is recorded"},
    404: described("no such merchant"),
    409: described("a final refusal: stale, unknown reference, not now, or the account closed"),
    **COMMON,
    **UNAVAILABLE,
}
SOURCE_HEADER = "X-Posflow-Source"


# --- the services' callbacks --------------------------------------------------------------------


def _service_router(service: str) -> APIRouter:
    return APIRouter(
        prefix=PREFIX,
        tags=[f"callbacks: {service}"],
        dependencies=[Depends(signed_by(service))],
        responses={**MESSAGE_ANSWERS, **SIGNED},
    )


contract = _service_router("contract")
logistics = _service_router("logistics")
device = _service_router("device")
review = _service_router("review")
CALLBACK_ROUTERS = (contract, logistics, device, review)
MERCHANT_SOURCES.update(
    merchant_fee_paid=("contract", "fee_paid"),
    merchant_inspection_result=("logistics", "inspection_result"),
    merchant_delivery_outcome=("logistics", "delivery_outcome"),
    merchant_terminal_activated=("device", "terminal_activated"),
    merchant_rebinding_decision=("review", "rebinding_decision"),
    merchant_report_fault=("merchant", "report_fault"),
    merchant_order_terminals=("merchant", "order_terminals"),
    merchant_rebind_settlement=("merchant", "rebind_settlement"),
    merchant_request_closure=("operator", "request_closure"),
    merchant_retry=("admin", "retry"),
    merchant_extend=("admin", "extend"),
)


async def _callback(request: Request, mid: str, name: str, update: Any, body: Any) -> JSONResponse:
    source, kind = MERCHANT_SOURCES[name]
    return await deliver_to_merchant(request, mid, source, kind, update, body)


@contract.post("/fee-payment", name="merchant_fee_paid", response_model=Receipt)
async def fee_paid(mid: Mid, paid: FeePaid, request: Request) -> JSONResponse:
    """A bill paid: a suspension for fees ends with it."""
    return await _callback(request, mid, "merchant_fee_paid", MerchantAccount.fee_paid, paid)


@logistics.post("/inspection", name="merchant_inspection_result", response_model=Receipt)
async def inspection_result(mid: Mid, result: InspectionResult, request: Request) -> JSONResponse:
    """An inspector's verdict (巡检)."""
    return await _callback(
        request, mid, "merchant_inspection_result", MerchantAccount.inspection_result, result
    )


@logistics.post("/delivery", name="merchant_delivery_outcome", response_model=Receipt)
async def delivery_outcome(mid: Mid, outcome: DeliveryOutcome, request: Request) -> JSONResponse:
    """A replacement or an added terminal delivered or installed, or its delivery failed."""
    return await _callback(
        request, mid, "merchant_delivery_outcome", MerchantAccount.delivery_outcome, outcome
    )


@device.post("/activation", name="merchant_terminal_activated", response_model=Receipt)
async def terminal_activated(
    mid: Mid, activated: TerminalActivated, request: Request
) -> JSONResponse:
    return await _callback(
        request, mid, "merchant_terminal_activated", MerchantAccount.terminal_activated, activated
    )


@review.post("/rebinding-decision", name="merchant_rebinding_decision", response_model=Receipt)
async def rebinding_decision(
    mid: Mid, decision: RebindingDecision, request: Request
) -> JSONResponse:
    """A new settlement account approved or refused."""
    return await _callback(
        request, mid, "merchant_rebinding_decision", MerchantAccount.rebinding_decision, decision
    )


# --- a merchant's requests ----------------------------------------------------------------------

merchant_or_operator = merchant_or_staff("operator")
merchant_or_admin = merchant_or_staff("admin")
MerchantOrOperator = Annotated[Principal, Depends(merchant_or_operator)]
MerchantOrAdmin = Annotated[Principal, Depends(merchant_or_admin)]

requests = APIRouter(
    prefix=PREFIX,
    tags=["merchant accounts"],
    dependencies=[Depends(merchant_or_operator)],
    responses={**MERCHANT, **MESSAGE_ANSWERS},
)


def who(caller: Principal) -> str:
    """Who sent a request, as the audit trail keeps it: a merchant key's channel, or a role."""
    return f"merchant:{caller.merchant}" if caller.role is None else actor_of(caller)


async def visible_merchant(store: Store, caller: Principal, mid: str, request: Request) -> None:
    """A merchant key acts only on its channel's merchants: any other is answered 404, like a
    MID that does not exist. A merchant just handed over may not have sent its first snapshot
    yet: its workflow is asked then, as the read does."""
    if caller.role is not None:
        return
    record = await asyncio.to_thread(store.merchant, mid)
    channel = record.channel if record is not None else None
    if channel is None:
        found = await merchant_status(client_of(request), store, mid)
        channel = found[0].channel if found is not None else None
    if channel is None or not caller.may_see(channel):
        raise unknown_merchant(mid)


@requests.post("/faults", name="merchant_report_fault", response_model=Receipt)
async def report_fault(
    mid: Mid, report: FaultReport, request: Request, caller: MerchantOrOperator, store: StoreDep
) -> JSONResponse:
    """A terminal does not work: a replacement is sent (换机) and the faulty one comes back."""
    await visible_merchant(store, caller, mid, request)
    return await deliver_to_merchant(
        request,
        mid,
        "merchant",
        "report_fault",
        MerchantAccount.report_fault,
        report,
        actor=who(caller),
        reason=report.description,
    )


@requests.post(
    "/terminal-orders",
    name="merchant_order_terminals",
    response_model=Receipt,
    dependencies=[Depends(merchant_or_admin)],
)
async def order_terminals(
    mid: Mid, order: TerminalOrder, request: Request, caller: MerchantOrAdmin, store: StoreDep
) -> JSONResponse:
    """More terminals under the same MID."""
    await visible_merchant(store, caller, mid, request)
    return await deliver_to_merchant(
        request,
        mid,
        "merchant",
        "order_terminals",
        MerchantAccount.order_terminals,
        order,
        actor=who(caller),
        reason=f"{order.quantity} × {order.model}",
    )


@requests.post(
    "/settlement-account",
    name="merchant_rebind_settlement",
    response_model=Receipt,
    dependencies=[Depends(merchant_or_admin)],
)
async def rebind_settlement(
    mid: Mid,
    rebinding: RebindingRequest,
    request: Request,
    caller: MerchantOrAdmin,
    store: StoreDep,
) -> JSONResponse:
    """Settle to a new account (重新绑定), once review approves it; the audit trail keeps the
    account number masked."""
    await visible_merchant(store, caller, mid, request)
    return await deliver_to_merchant(
        request,
        mid,
        "merchant",
        "rebind_settlement",
        MerchantAccount.rebind_settlement,
        rebinding,
        actor=who(caller),
    )


# --- operations: reads and closure --------------------------------------------------------------

operations = APIRouter(
    prefix="/api/merchants",
    tags=["merchant accounts"],
    dependencies=[Depends(viewer)],
    responses=SIGNED_IN,
)
Operator = Annotated[Principal, Depends(operator)]


@operations.get(
    "",
    response_model=list[MerchantSummary],
    summary="A page of merchants; X-Total-Count says how many match",
    responses={
        200: {"headers": {"X-Total-Count": {"schema": {"type": "integer"}}}},
        422: COMMON[422],
    },
)
async def list_merchants(
    wanted: Annotated[MerchantFilter, Query()], store: StoreDep
) -> JSONResponse:
    """From the gateway's store (each workflow's last snapshot): filters, a sort, a page."""
    rows, total = await asyncio.to_thread(store.merchant_page, wanted)
    listed = [
        masked(MerchantSummary.model_validate(r.summary()).model_dump(mode="json")) for r in rows
    ]
    return JSONResponse(listed, headers={"X-Total-Count": str(total)})


@operations.get("/counts", response_model=MerchantCounts)
async def merchant_counts(store: StoreDep) -> MerchantCounts:
    """Merchants by state; suspended by reason, with fees overdue, needing attention (of the
    accounts not closed)."""
    return await asyncio.to_thread(store.merchant_counts)


async def merchant_status(client: Any, store: Store, mid: str) -> tuple[MerchantStatus, str] | None:
    """The merchant's status and where it came from: `workflow` (the status query) or
    `snapshot` (the gateway's copy: the account is closed, the workflow is gone, or Temporal did
    not answer). None when neither knows the MID; raises ApiError (503) when only Temporal
    might and does not answer."""
    record = await asyncio.to_thread(store.merchant, mid)
    if record is not None and record.state == AccountState.CLOSED.value:
        return record.status(), "snapshot"
    try:
        status = await merchant_workflow(client, mid).query(MerchantAccount.status)
    except (RPCError, WorkflowQueryFailedError) as err:
        if record is not None:
            return record.status(), "snapshot"
        if isinstance(err, RPCError) and err.status is RPCStatusCode.NOT_FOUND:
            return None
        raise ApiError(503, TEMPORAL_UNAVAILABLE, "the process engine did not answer") from err
    return status, "workflow"


@operations.get(
    "/{mid}",
    response_model=MerchantStatus,
    summary="One merchant: its workflow's status query, or its last snapshot once it is gone",
    responses={
        200: {
            "headers": {
                SOURCE_HEADER: {
                    "schema": {"type": "string", "enum": ["workflow", "snapshot"]},
                    "description": "workflow: the live status query; snapshot: the gateway's "
                    "copy (the account closed, or the workflow gone)",
                }
            }
        },
        404: described("no such merchant"),
        422: COMMON[422],
        **UNAVAILABLE,
    },
)
async def merchant(mid: Mid, client: ClientDep, store: StoreDep) -> JSONResponse:
    found = await merchant_status(client, store, mid)
    if found is None:
        raise unknown_merchant(mid)
    status, source = found
    return JSONResponse(masked(status.model_dump(mode="json")), headers={SOURCE_HEADER: source})


@operations.get("/{mid}/messages", response_model=list[MessageRecord], responses={422: COMMON[422]})
async def merchant_messages(mid: Mid, store: StoreDep) -> list[MessageRecord]:
    """The merchant's audit trail: every message with its outcome (applied, duplicate, pending,
    refused, invalid, failed), who took an action and why; bodies masked."""
    return await asyncio.to_thread(store.messages, audit_key(mid))


@operations.post(
    "/{mid}/closure",
    name="merchant_request_closure",
    response_model=Receipt,
    dependencies=[Depends(operator)],
    responses=MESSAGE_ANSWERS,
)
async def request_closure(
    mid: Mid, closure: ClosureRequest, request: Request, caller: Operator
) -> JSONResponse:
    """Close the account (注销): devices come back, the MID is retired, the deposit refunded."""
    return await deliver_to_merchant(
        request,
        mid,
        "operator",
        "request_closure",
        MerchantAccount.request_closure,
        closure,
        actor=actor_of(caller),
        reason=closure.reason,
    )


# --- admin --------------------------------------------------------------------------------------

admin_router = APIRouter(
    prefix="/api/admin/merchants/{mid}",
    tags=["admin"],
    dependencies=[Depends(admin)],
    responses={**SIGNED_IN, **MESSAGE_ANSWERS},
)
Admin = Annotated[Principal, Depends(admin)]
AnyAction = MerchantAction | MerchantExtendRequest


def merchant_message(verb: str, body: AnyAction, actor: str) -> messages.AdminAction:
    """The workflow's message for an admin's action on a merchant account (with the step meant,
    where the message carries one)."""
    message = workflow_message(verb, body, actor)
    assert isinstance(message, messages.AdminAction)
    if body.step and "step" in messages.AdminAction.model_fields:
        message = messages.AdminAction.model_validate({**message.model_dump(), "step": body.step})
    return message


async def admin_action(
    request: Request, mid: str, verb: str, body: AnyAction, actor: str
) -> JSONResponse:
    update = MerchantAccount.retry if verb == "retry" else MerchantAccount.extend_deadline
    return await deliver_to_merchant(
        request,
        mid,
        "admin",
        verb,
        update,
        merchant_message(verb, body, actor),
        actor=actor,
        reason=body.reason,
    )


@admin_router.post("/retry", name="merchant_retry", response_model=Receipt)
async def retry(mid: Mid, action: MerchantAction, request: Request, caller: Admin) -> JSONResponse:
    """Re-run the step the account is parked on."""
    return await admin_action(request, mid, "retry", action, actor_of(caller))


@admin_router.post("/extend", name="merchant_extend", response_model=Receipt)
async def extend(
    mid: Mid, action: MerchantExtendRequest, request: Request, caller: Admin
) -> JSONResponse:
    """Give an overdue wait (an inspection, a delivery, an activation) another period."""
    return await admin_action(request, mid, "extend", action, actor_of(caller))


ROUTERS = (*CALLBACK_ROUTERS, requests, operations, admin_router)
