"""The admin API: re-run the step an application is parked on, or skip a compensation an admin
has done by hand. Callers: admin tokens only."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gateway.auth import admin
from gateway.errors import COMMON, SIGNED_IN, UNAVAILABLE, described
from gateway.limits import ApplicationId
from gateway.models import PendingReceipt, Receipt
from gateway.resources import SOURCES, deliver
from schemas.messages import AdminAction
from workflows.onboarding import PosOnboarding

router = APIRouter(
    prefix="/api/admin/applications/{application_id}",
    tags=["admin"],
    dependencies=[Depends(admin)],
    responses={
        **SIGNED_IN,
        202: {"model": PendingReceipt, "description": "accepted, applied once the step is done"},
        404: described("no such application"),
        409: described("not parked, not skippable, or ended"),
        **COMMON,
        **UNAVAILABLE,
    },
)
SOURCES.update(retry="admin", skip="admin")


@router.post("/retry", name="retry", response_model=Receipt)
async def retry(
    application_id: ApplicationId, action: AdminAction, request: Request
) -> JSONResponse:
    """Re-run the step the application is parked on."""
    return await deliver(request, application_id, "admin", "retry", PosOnboarding.retry, action)


@router.post("/skip", name="skip", response_model=Receipt)
async def skip(
    application_id: ApplicationId, action: AdminAction, request: Request
) -> JSONResponse:
    """Skip a compensation an admin has done by hand (only those are skippable)."""
    return await deliver(request, application_id, "admin", "skip", PosOnboarding.skip, action)
