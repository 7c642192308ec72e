"""What the worker tells the gateway: each workflow's numbered snapshot of where its application
stands, signed with the worker's secret."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends

from gateway.auth import signed_by
from gateway.errors import COMMON, SIGNED, ApiError
from gateway.models import ProjectionReceived
from gateway.resources import MetricsDep, StoreDep
from gateway.store import utc
from schemas.status import Projection

router = APIRouter(
    prefix="/api/internal",
    tags=["internal"],
    dependencies=[Depends(signed_by("worker"))],
    responses={**SIGNED, **COMMON},
)

# The largest number the store's INTEGER columns hold everywhere (32 bits on PostgreSQL). A
# workflow counts its snapshots and review rounds from 1: nowhere near it.
MAX_STORED_INT = 2**31 - 1


@router.post("/projections", response_model=ProjectionReceived)
async def project(snapshot: Projection, store: StoreDep, metrics: MetricsDep) -> ProjectionReceived:
    """Applied unless the gateway holds a newer snapshot of the application."""
    problems = unstorable(snapshot)
    if problems:
        raise ApiError(
            422, "invalid_snapshot", "the snapshot holds values the store cannot keep", problems
        )
    applied, version = await asyncio.to_thread(store.apply, snapshot)
    metrics.projection_applied(applied)
    return ProjectionReceived(applied=applied, version=version)


def unstorable(snapshot: Projection) -> dict[str, str]:
    """The fields of a snapshot the store cannot keep, each with its rule: a number beyond its
    columns, a time with no UTC equivalent (the store keeps UTC), text with a lone surrogate (no
    UTF-8 form). The signed worker never sends one; a 422 says so where a 500 would not."""
    problems: dict[str, str] = {}
    for name in ("version", "review_round"):
        if not 0 <= getattr(snapshot, name) <= MAX_STORED_INT:
            problems[name] = f"must be between 0 and {MAX_STORED_INT}"

    def walk(value: Any, path: str) -> None:
        if isinstance(value, datetime):
            try:
                utc(value)
            except OverflowError:
                problems[path] = "must be a time that exists in UTC (years 1 to 9999)"
        elif isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                problems[path] = "must be text with a UTF-8 form (no lone surrogates)"
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}.{index}")

    walk(snapshot.model_dump(), "")
    return problems
