"""What the worker tells the gateway: each workflow's numbered snapshot of where its application
stands, signed with the worker's secret."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from gateway.auth import signed_by
from gateway.errors import COMMON, SIGNED
from gateway.models import ProjectionReceived
from gateway.resources import MetricsDep, StoreDep
from schemas.status import Projection

router = APIRouter(
    prefix="/api/internal",
    tags=["internal"],
    dependencies=[Depends(signed_by("worker"))],
    responses={**SIGNED, **COMMON},
)


@router.post("/projections", response_model=ProjectionReceived)
async def project(snapshot: Projection, store: StoreDep, metrics: MetricsDep) -> ProjectionReceived:
    """Applied unless the gateway holds a newer snapshot of the application."""
    applied, version = await asyncio.to_thread(store.apply, snapshot)
    metrics.projection_applied(applied)
    return ProjectionReceived(applied=applied, version=version)
