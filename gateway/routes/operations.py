"""The operations API: the list and the overview (from the gateway's own store), every message an
application received, withdrawing an application, and the metrics.

Callers: ops tokens, viewer and above; a withdrawal needs the operator role.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from gateway.auth import operator, viewer
from gateway.errors import COMMON, SIGNED_IN, UNAVAILABLE, described
from gateway.limits import ApplicationId
from gateway.models import PendingReceipt, Receipt
from gateway.resources import SOURCES, MetricsDep, StoreDep, deliver
from gateway.store import ListFilter, MessageRecord, Overview
from schemas.messages import CancelRequest
from workflows.onboarding import PosOnboarding

router = APIRouter(tags=["operations"], dependencies=[Depends(viewer)], responses=SIGNED_IN)
SOURCES.update(cancel="operator")


@router.get(
    "/api/applications",
    summary="A page of applications; X-Total-Count says how many match",
    responses={
        200: {"headers": {"X-Total-Count": {"schema": {"type": "integer"}}}},
        422: COMMON[422],
    },
)
async def list_applications(
    wanted: Annotated[ListFilter, Query()], store: StoreDep
) -> JSONResponse:
    """From the gateway's store (never Temporal's visibility): filters, a sort, a page."""
    now = datetime.now(UTC)
    rows, total = await asyncio.to_thread(store.page, wanted, now)
    return JSONResponse([row.summary(now) for row in rows], headers={"X-Total-Count": str(total)})


@router.get("/api/overview", response_model=Overview, responses={422: COMMON[422]})
async def overview(
    store: StoreDep,
    days: Annotated[float, Query(gt=0, le=366, description="the period, in days")] = 7.0,
) -> JSONResponse:
    """In flight per stage, overdue, needing attention; what started and ended in the period;
    the funnel and time in each stage."""
    now = datetime.now(UTC)
    result = await asyncio.to_thread(store.overview, now - timedelta(days=days), now)
    return JSONResponse(result.model_dump(mode="json"))


@router.get(
    "/api/applications/{application_id}/messages",
    response_model=list[MessageRecord],
    responses={422: COMMON[422]},
)
async def messages(application_id: ApplicationId, store: StoreDep) -> list[MessageRecord]:
    """The audit trail: every message received for the application with its outcome (applied,
    duplicate, pending, refused, invalid, failed); refused bodies as masked excerpts."""
    return await asyncio.to_thread(store.messages, application_id)


@router.post(
    "/api/applications/{application_id}/cancel",
    name="cancel",
    response_model=Receipt,
    dependencies=[Depends(operator)],
    responses={
        202: {"model": PendingReceipt, "description": "accepted, applied once the step is done"},
        404: described("no such application"),
        409: described("the application has ended"),
        **COMMON,
        **UNAVAILABLE,
    },
)
async def cancel(
    application_id: ApplicationId, cancel: CancelRequest, request: Request
) -> JSONResponse:
    """Withdraw the application at any stage before go-live; compensations run in reverse."""
    return await deliver(
        request, application_id, "operator", "cancel", PosOnboarding.cancel, cancel
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics: applications per stage, overdue, needing attention, messages by
    outcome, refusals by reason, request latency."""
    return await metrics.exposition()
