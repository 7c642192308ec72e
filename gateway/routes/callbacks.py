"""The services' callbacks: each service's messages, signed with its own secret
(`X-Posflow-Signature`, see `services.signing`), one router per service.

A callback is answered 200 (`applied` or `duplicate`), 202 (`pending`: the workflow has it and
applies it once the step it names is recorded), 401 (signature), 404, 409 and 422 (final
refusals), or 503 with `Retry-After`. Every one is kept with its outcome in the application's
audit trail.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from temporalio.service import RPCError

from gateway.auth import signed_by
from gateway.errors import COMMON, SIGNED, UNAVAILABLE, described, temporal_error
from gateway.limits import ApplicationId
from gateway.models import PendingReceipt, Receipt
from gateway.resources import SOURCES, ClientDep, ForwarderDep, StoreDep, deliver, workflow
from schemas.messages import (
    Ack,
    ContractEvent,
    DeliveryOutcome,
    ReviewDecision,
    ShipmentScan,
    SiteSurveyResult,
    TerminalActivated,
    TrainingCompleted,
)
from workers.logging import masked
from workflows.onboarding import PosOnboarding

PREFIX = "/api/applications/{application_id}"
ANSWERS: dict[int | str, dict[str, Any]] = {
    202: {"model": PendingReceipt, "description": "accepted, applied once its step is recorded"},
    404: described("no such application"),
    409: described("a final refusal: stale, unknown reference, out of stage, ended"),
    **SIGNED,
    **COMMON,
    **UNAVAILABLE,
}


def service_router(service: str) -> APIRouter:
    return APIRouter(
        prefix=PREFIX,
        tags=[f"callbacks: {service}"],
        dependencies=[Depends(signed_by(service))],
        responses=ANSWERS,
    )


review = service_router("review")
contract = service_router("contract")
device = service_router("device")
logistics = service_router("logistics")
ROUTERS = (review, contract, device, logistics)
SOURCES.update(
    review_decision="review",
    site_survey="review",
    contract_event="contract",
    terminal_activated="device",
    delivery_outcome="logistics",
    training_completed="logistics",
    shipment_scan="logistics",
)


@review.post("/review-decision", name="review_decision", response_model=Receipt)
async def review_decision(
    application_id: ApplicationId, decision: ReviewDecision, request: Request
) -> JSONResponse:
    """approved, rejected or needs_more_info, for a round of a review case."""
    return await deliver(
        request,
        application_id,
        "review",
        "review_decision",
        PosOnboarding.review_decision,
        decision,
    )


@review.post("/site-survey", name="site_survey", response_model=Receipt)
async def site_survey(
    application_id: ApplicationId, result: SiteSurveyResult, request: Request
) -> JSONResponse:
    return await deliver(
        request, application_id, "review", "site_survey", PosOnboarding.site_survey_result, result
    )


@contract.post("/contract", name="contract_event", response_model=Receipt)
async def contract_event(
    application_id: ApplicationId, event: ContractEvent, request: Request
) -> JSONResponse:
    """signed, deposit paid, refunded..."""
    return await deliver(
        request, application_id, "contract", "contract_event", PosOnboarding.contract_event, event
    )


@device.post("/activation", name="terminal_activated", response_model=Receipt)
async def terminal_activated(
    application_id: ApplicationId, activated: TerminalActivated, request: Request
) -> JSONResponse:
    return await deliver(
        request,
        application_id,
        "device",
        "terminal_activated",
        PosOnboarding.terminal_activated,
        activated,
    )


@logistics.post("/delivery", name="delivery_outcome", response_model=Receipt)
async def delivery_outcome(
    application_id: ApplicationId, outcome: DeliveryOutcome, request: Request
) -> JSONResponse:
    """A parcel delivered, an installation done, or either failed."""
    return await deliver(
        request,
        application_id,
        "logistics",
        "delivery_outcome",
        PosOnboarding.delivery_outcome,
        outcome,
    )


@logistics.post("/training", name="training_completed", response_model=Receipt)
async def training_completed(
    application_id: ApplicationId, completed: TrainingCompleted, request: Request
) -> JSONResponse:
    return await deliver(
        request,
        application_id,
        "logistics",
        "training_completed",
        PosOnboarding.training_completed,
        completed,
    )


@logistics.post("/shipment-scans", name="shipment_scan", response_model=Receipt)
async def shipment_scan(
    application_id: ApplicationId,
    scan: ShipmentScan,
    client: ClientDep,
    store: StoreDep,
    forwarder: ForwarderDep,
) -> JSONResponse:
    """Tracking scans are fire-and-forget: a signal, acknowledged as applied once Temporal has
    it (never 202: nothing waits)."""
    body = masked(scan.model_dump(mode="json"))
    try:
        await workflow(client, application_id).signal(PosOnboarding.shipment_scanned, scan)
    except RPCError as err:
        error = temporal_error(err, application_id, store)
        forwarder.record_refusal(
            error, application_id, "logistics", "shipment_scan", body, scan.event_id
        )
        raise error from err
    ack = Ack(message_id=scan.event_id, stage="", detail="scan accepted")
    forwarder.record(
        application_id=application_id,
        source="logistics",
        kind="shipment_scan",
        message_id=scan.event_id,
        outcome="applied",
        detail=ack.detail,
        body=body,
    )
    return JSONResponse({"outcome": "applied", **ack.model_dump(mode="json")})
