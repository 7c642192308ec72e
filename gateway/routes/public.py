"""What needs no credential: the health check (and, in `gateway.dashboard`, signing in)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from gateway.auth import public
from gateway.models import Health

router = APIRouter(tags=["public"], dependencies=[Depends(public)])


@router.get("/health", response_model=Health)
async def health() -> Health:
    return Health()
