"""What the worker tells the gateway: each workflow's numbered snapshot of where its application
stands, and each merchant account's after go-live, signed with the worker's secret."""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from gateway.auth import signed_by
from gateway.errors import COMMON, SIGNED, ApiError
from gateway.models import ProjectionReceived
from gateway.resources import MetricsDep, StoreDep
from gateway.store import cents, utc
from schemas.merchant import MerchantStatus, merchant_workflow_id
from schemas.status import Projection, ProjectionReceipt

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


@router.post("/merchants", response_model=ProjectionReceipt)
async def project_merchant(
    snapshot: MerchantStatus, store: StoreDep, metrics: MetricsDep
) -> ProjectionReceipt:
    """A merchant account's whole status, numbered for its MID across runs: applied unless the
    gateway holds one as new or newer. The row is kept after the workflow is gone."""
    problems = unstorable(snapshot, ("version",))
    if not valid_merchant(snapshot):
        problems["mid"] = "must be 15 digits, the MID the workflow id merchant-{MID} names"
    for name in ("fees_due", "fees_overdue"):
        amount: Decimal = getattr(snapshot, name)
        if not amount.is_finite() or not 0 <= cents(amount) <= MAX_STORED_INT:
            problems[name] = f"must be between 0 and {MAX_STORED_INT / 100:.2f}"
    if problems:
        raise ApiError(
            422, "invalid_snapshot", "the snapshot holds values the store cannot keep", problems
        )
    applied, version = await asyncio.to_thread(store.apply_merchant, snapshot)
    metrics.projection_applied(applied)
    return ProjectionReceipt(applied=applied, version=version)


def valid_merchant(snapshot: MerchantStatus) -> bool:
    mid = snapshot.mid
    return (
        len(mid) == 15
        and mid.isascii()
        and mid.isdigit()
        and snapshot.workflow_id == merchant_workflow_id(mid)
    )


def unstorable(
    snapshot: BaseModel, numbers: tuple[str, ...] = ("version", "review_round")
) -> dict[str, str]:
    """The fields of a snapshot the store cannot keep, each with its rule: a number beyond its
    columns, a time with no UTC equivalent (the store keeps UTC), text with a lone surrogate (no
    UTF-8 form). The signed worker never sends one; a 422 says so where a 500 would not."""
    problems: dict[str, str] = {}
    for name in numbers:
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
                try:
                    str(key).encode()
                except UnicodeEncodeError:  # named by where it is: the key cannot be shown
                    problems[path or "body"] = "keys must be text with a UTF-8 form"
                    continue
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}.{index}")

    walk(snapshot.model_dump(), "")
    return problems
