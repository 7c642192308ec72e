"""The gateway's HTTP API (DESIGN.md, "External contracts"): requests become workflow starts,
queries and updates; every message is verified, applied at most once and kept with its outcome."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.documents import validate_application
from gateway.auth import Authority, tokens_from_env
from gateway.dashboard import install_dashboard
from gateway.metrics import GatewayMetrics
from gateway.store import ApplicationRecord, ListFilter, Store
from schemas.application import Application, workflow_id_for
from schemas.documents import DocumentSubmission
from schemas.messages import (
    Ack,
    AdminAction,
    CancelRequest,
    ContractEvent,
    DeliveryOutcome,
    Refusal,
    ReviewDecision,
    ShipmentScan,
    SiteSurveyResult,
    TerminalActivated,
    TrainingCompleted,
)
from schemas.policy import policy_for
from schemas.status import OnboardingStart, Projection
from services.signing import HEADER, SignatureError, verify
from workers.config import DEFAULT_TASK_QUEUE, state_dir
from workers.logging import masked
from workflows.case import CHINA
from workflows.onboarding import PosOnboarding

M = TypeVar("M", bound=BaseModel)
SERVICES = ("review", "contract", "device", "logistics")
SIGNERS = (*SERVICES, "worker")


@dataclass(frozen=True)
class GatewaySettings:
    database_url: str
    task_queue: str = DEFAULT_TASK_QUEUE
    # Who signs what reaches the gateway: each service its callbacks, the worker its snapshots.
    secrets: dict[str, str] = field(default_factory=lambda: dict.fromkeys(SIGNERS, "dev-secret"))
    temporal_ui_url: str = "http://127.0.0.1:8233"
    namespace: str = "default"
    tokens: dict[str, str] = field(default_factory=dict)  # bearer token -> role; none: open
    refresh_seconds: int = 10  # how often dashboard pages refresh themselves

    @classmethod
    def from_env(cls) -> GatewaySettings:
        url = os.environ.get("POSFLOW_GATEWAY_DATABASE_URL") or os.environ.get("DATABASE_URL")
        return cls(
            database_url=url or f"sqlite:///{state_dir() / 'gateway.db'}",
            task_queue=os.environ.get("POSFLOW_TASK_QUEUE", DEFAULT_TASK_QUEUE),
            secrets={
                s: os.environ.get(f"POSFLOW_{s.upper()}_SECRET", "dev-secret") for s in SIGNERS
            },
            temporal_ui_url=os.environ.get("POSFLOW_TEMPORAL_UI_URL", "http://127.0.0.1:8233"),
            namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
            tokens=tokens_from_env(),
        )


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        fields: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.fields = fields or {}
        self.extra = extra

    def response(self) -> JSONResponse:
        body = {"error": self.error, "message": self.message, "fields": self.fields, **self.extra}
        return JSONResponse(body, status_code=self.status)


_REFUSAL_STATUS = {Refusal.INVALID.value: 422, Refusal.UNAVAILABLE.value: 503}


def _fields(err: ValidationError, prefix: str = "") -> dict[str, str]:
    return {
        prefix + ".".join(str(p) for p in e["loc"])
        if e["loc"]
        else prefix.rstrip(".") or "body": str(masked(e["msg"]))
        for e in err.errors()
    }


def create_app(client: Client, settings: GatewaySettings) -> FastAPI:
    store = Store(settings.database_url)
    app = FastAPI(title="posflow gateway")
    app.state.store = store
    metrics = GatewayMetrics(store)
    metrics.install(app)

    authority = Authority(settings.tokens)

    def authorize(request: Request, needed: str) -> str:
        role = authority.api_role(request)
        if role is None:
            raise ApiError(401, "unauthenticated", "a bearer token is required")
        if not authority.allows(role, needed):
            raise ApiError(403, "forbidden", f"this call needs the {needed} role")
        return role

    def record_message(**fields: Any) -> None:
        store.record_message(**fields)
        metrics.message(fields["source"], fields["kind"], fields["outcome"])

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return err.response()

    def handle(application_id: str) -> WorkflowHandle[PosOnboarding, Any]:
        return client.get_workflow_handle_for(PosOnboarding.run, workflow_id_for(application_id))

    async def read_json(request: Request) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError as err:
            raise ApiError(400, "invalid_json", "the body is not JSON") from err

    def parse(model: type[M], data: Any) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as err:
            raise ApiError(
                422, "invalid_request", "the request has invalid fields", _fields(err)
            ) from err

    async def run_update(application_id: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Send an update; map the workflow's refusal or an unknown application to an ApiError."""
        try:
            return await call()
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError):
                kind = cause.type or "Refused"
                raise ApiError(_REFUSAL_STATUS.get(kind, 409), kind, cause.message) from err
            raise ApiError(409, "refused", str(cause or err)) from err
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                if store.application(application_id) is None:
                    raise ApiError(
                        404, "unknown_application", f"no application {application_id}"
                    ) from err
                raise ApiError(
                    409, Refusal.FINISHED.value, f"application {application_id} has ended"
                ) from err
            raise ApiError(
                503, "temporal_unavailable", "the process engine did not answer"
            ) from err

    def record_refusal(
        err: ApiError, application_id: str, source: str, kind: str, body: Any, message_id: str = ""
    ) -> None:
        """Keep a message that was not applied, with the reason it was refused."""
        record_message(
            application_id=application_id,
            source=source,
            kind=kind,
            message_id=message_id,
            outcome=_outcome_of(err),
            detail=f"{err.error}: {err.message}",
            body=body,
        )

    async def deliver(
        application_id: str,
        source: str,
        kind: str,
        payload: M,
        apply: Callable[[M], Awaitable[Ack]],
        audit_body: Any,
    ) -> tuple[str, Ack]:
        """Apply one parsed message and keep it with its outcome: (applied|duplicate, the ack)."""
        try:
            ack = await run_update(application_id, lambda: apply(payload))
        except ApiError as err:
            record_refusal(err, application_id, source, kind, audit_body, _message_id(payload))
            raise
        outcome = "duplicate" if ack.duplicate else "applied"
        record_message(
            application_id=application_id,
            source=source,
            kind=kind,
            message_id=ack.message_id,
            outcome=outcome,
            detail=ack.detail,
            body=audit_body,
        )
        return outcome, ack

    async def message(
        request: Request,
        application_id: str,
        source: str,
        kind: str,
        model: type[M],
        apply: Callable[[M], Awaitable[Ack]],
        signed_by: str | None = None,
    ) -> JSONResponse:
        """Verify, parse and apply one message; keep it with its outcome whatever happens."""
        raw = await request.body()
        try:
            if signed_by is not None:
                header = request.headers.get(HEADER)
                try:
                    verify(raw, header, settings.secrets[signed_by], int(time.time()))
                except SignatureError as err:
                    raise ApiError(401, "bad_signature", str(err)) from err
                if not store.first_use_of(header or ""):
                    raise ApiError(
                        401, "replayed_signature", "this signed message was already received"
                    )
            payload = parse(model, await read_json(request))
        except ApiError as err:
            record_refusal(err, application_id, source, kind, masked(_safe_json(raw)))
            raise
        outcome, ack = await deliver(
            application_id, source, kind, payload, apply, masked(_safe_json(raw))
        )
        return JSONResponse({"outcome": outcome, **ack.model_dump(mode="json")})

    # --- applications ----------------------------------------------------------------------------

    @app.post("/api/applications", status_code=201)
    async def start_application(request: Request) -> JSONResponse:
        data = await read_json(request)
        if not isinstance(data, dict):
            raise ApiError(422, "invalid_request", "the body must be an application object")
        overrides = data.pop("policy", None) or {}
        data.setdefault("application_id", f"A{uuid.uuid4().hex[:16].upper()}")
        application = parse(Application, data)
        issues = validate_application(application, today=datetime.now(CHINA).date())
        if issues:
            raise ApiError(
                422,
                "invalid_application",
                "the application has invalid fields",
                {i.field: i.message for i in issues},
            )
        try:
            policy = policy_for(application.channel, overrides)
        except ValidationError as err:
            raise ApiError(
                422, "invalid_policy", "the policy overrides are invalid", _fields(err, "policy.")
            ) from err
        created = True
        try:
            await client.start_workflow(
                PosOnboarding.run,
                OnboardingStart(application=application, policy=policy),
                id=application.workflow_id,
                task_queue=settings.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            created = False  # an idempotent retry: the same application id, already running
        record = store.record_application(
            ApplicationRecord(
                application_id=application.application_id,
                workflow_id=application.workflow_id,
                channel=application.channel.value,
                merchant_type=application.merchant.merchant_type.value,
                merchant_name=application.merchant.name,
                stage="collecting_documents",
                application=json.dumps(
                    masked(application.model_dump(mode="json")), ensure_ascii=False
                ),
            )
        )
        body = {
            "application_id": record.application_id,
            "workflow_id": record.workflow_id,
            "stage": record.stage,
            "created": created,
        }
        return JSONResponse(body, status_code=201 if created else 200)

    @app.get("/api/applications")
    async def list_applications(request: Request) -> JSONResponse:
        """A page of applications from the projection; `X-Total-Count` says how many match."""
        authorize(request, "viewer")
        wanted = parse(ListFilter, dict(request.query_params))
        now = datetime.now(UTC)
        rows, total = await asyncio.to_thread(store.page, wanted, now)
        return JSONResponse(
            [row.summary(now) for row in rows], headers={"X-Total-Count": str(total)}
        )

    @app.get("/api/overview")
    async def overview(request: Request, days: float = 7.0) -> JSONResponse:
        authorize(request, "viewer")
        if not 0 < days <= 366:
            raise ApiError(
                422, "invalid_request", "days is out of range", {"days": "between 0 and 366"}
            )
        now = datetime.now(UTC)
        result = await asyncio.to_thread(store.overview, now - timedelta(days=days), now)
        return JSONResponse(result.model_dump(mode="json"))

    @app.post("/api/internal/projections")
    async def project(request: Request) -> JSONResponse:
        """A workflow's snapshot of where its application stands, signed by the worker."""
        raw = await request.body()
        try:
            verify(raw, request.headers.get(HEADER), settings.secrets["worker"], int(time.time()))
        except SignatureError as err:
            raise ApiError(401, "bad_signature", str(err)) from err
        snapshot = parse(Projection, await read_json(request))
        applied, version = await asyncio.to_thread(store.apply, snapshot)
        metrics.projection_applied(applied)
        return JSONResponse({"applied": applied, "version": version})

    @app.get("/api/applications/{application_id}")
    async def status(application_id: str) -> JSONResponse:
        try:
            result = await handle(application_id).query(PosOnboarding.status)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                raise ApiError(
                    404, "unknown_application", f"no application {application_id}"
                ) from err
            raise ApiError(
                503, "temporal_unavailable", "the process engine did not answer"
            ) from err
        # The status holds no document numbers today; masking keeps it so if one is ever added.
        return JSONResponse(masked(result.model_dump(mode="json")))

    @app.get("/api/applications/{application_id}/messages")
    async def messages(application_id: str, request: Request) -> list[dict[str, Any]]:
        authorize(request, "viewer")
        kept = await asyncio.to_thread(store.messages, application_id)
        return [m.model_dump(mode="json") for m in kept]

    @app.post("/api/applications/{application_id}/documents")
    async def documents(application_id: str, request: Request) -> JSONResponse:
        submission = parse(DocumentSubmission, await read_json(request))
        try:
            result = await run_update(
                application_id,
                lambda: handle(application_id).execute_update(
                    PosOnboarding.submit_documents, submission
                ),
            )
        except ApiError as err:
            record_message(
                application_id=application_id,
                source="merchant",
                kind="documents",
                message_id=submission.submission_id,
                outcome="refused",
                detail=f"{err.error}: {err.message}",
            )
            raise
        outcome = "duplicate" if result.duplicate else "applied"
        record_message(
            application_id=application_id,
            source="merchant",
            kind="documents",
            message_id=submission.submission_id,
            outcome=outcome,
            detail=f"{len(result.issues)} issues, outstanding: "
            f"{', '.join(k.value for k in result.outstanding) or 'none'}",
            body=masked(submission.model_dump(mode="json")),
        )
        body = result.model_dump(mode="json")
        if result.issues:
            # Valid documents were filed; the bad ones are named, nothing else changed.
            raise ApiError(
                422,
                "invalid_documents",
                "some documents are invalid",
                {i.field: i.message for i in result.issues},
                result=body,
            )
        return JSONResponse(body)

    # --- callbacks from the services (signed) and actions by people ------------------------------

    def route(
        path: str,
        source: str,
        kind: str,
        model: type[M],
        update: Any,
        signed_by: str | None,
        role: str | None = None,
    ) -> None:
        async def endpoint(application_id: str, request: Request) -> JSONResponse:
            if role is not None:
                authorize(request, role)
            return await message(
                request,
                application_id,
                source,
                kind,
                model,
                lambda m: handle(application_id).execute_update(update, m),
                signed_by,
            )

        app.post(path, name=kind)(endpoint)

    base = "/api/applications/{application_id}"
    route(
        f"{base}/review-decision",
        "review",
        "review_decision",
        ReviewDecision,
        PosOnboarding.review_decision,
        "review",
    )
    route(
        f"{base}/site-survey",
        "review",
        "site_survey",
        SiteSurveyResult,
        PosOnboarding.site_survey_result,
        "review",
    )
    route(
        f"{base}/contract",
        "contract",
        "contract_event",
        ContractEvent,
        PosOnboarding.contract_event,
        "contract",
    )
    route(
        f"{base}/delivery",
        "logistics",
        "delivery_outcome",
        DeliveryOutcome,
        PosOnboarding.delivery_outcome,
        "logistics",
    )
    route(
        f"{base}/activation",
        "device",
        "terminal_activated",
        TerminalActivated,
        PosOnboarding.terminal_activated,
        "device",
    )
    route(
        f"{base}/training",
        "logistics",
        "training_completed",
        TrainingCompleted,
        PosOnboarding.training_completed,
        "logistics",
    )
    route(f"{base}/cancel", "merchant", "cancel", CancelRequest, PosOnboarding.cancel, None)
    route(
        "/api/admin/applications/{application_id}/retry",
        "admin",
        "retry",
        AdminAction,
        PosOnboarding.retry,
        None,
        role="admin",
    )
    route(
        "/api/admin/applications/{application_id}/skip",
        "admin",
        "skip",
        AdminAction,
        PosOnboarding.skip,
        None,
        role="admin",
    )

    @app.post(f"{base}/shipment-scans", status_code=202)
    async def shipment_scan(application_id: str, request: Request) -> JSONResponse:
        """Tracking scans are fire-and-forget: a signal, acknowledged as accepted."""

        async def signal(scan: ShipmentScan) -> Ack:
            await handle(application_id).signal(PosOnboarding.shipment_scanned, scan)
            return Ack(message_id=scan.event_id, stage="", detail="scan accepted")

        return await message(
            request, application_id, "logistics", "shipment_scan", ShipmentScan, signal, "logistics"
        )

    # --- the dashboard ---------------------------------------------------------------------------

    async def status_of(application_id: str) -> tuple[dict[str, Any] | None, str]:
        try:
            result = await handle(application_id).query(PosOnboarding.status)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return None, "The process engine no longer holds this workflow (retention ended)."
            return None, "The process engine did not answer."
        return result.model_dump(mode="json"), ""

    updates: dict[str, Any] = {"cancel": PosOnboarding.cancel, "retry": PosOnboarding.retry}

    async def act(application_id: str, verb: str, source: str, payload: Any) -> tuple[str, Ack]:
        update = updates[verb]
        return await deliver(
            application_id,
            source,
            verb,
            payload,
            lambda m: handle(application_id).execute_update(update, m),
            masked(payload.model_dump(mode="json")),
        )

    def workflow_url(workflow_id: str) -> str:
        return (
            f"{settings.temporal_ui_url.rstrip('/')}/namespaces/{quote(settings.namespace)}"
            f"/workflows/{quote(workflow_id, safe='')}"
        )

    install_dashboard(app, store, authority, status_of, act, workflow_url, settings.refresh_seconds)
    return app


def _outcome_of(err: ApiError) -> str:
    if err.status == 409:
        return "refused"
    return "invalid" if err.status < 500 else "failed"


def _safe_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _message_id(payload: BaseModel) -> str:
    for name in ("decision_id", "event_id", "request_id", "submission_id"):
        if (value := getattr(payload, name, None)) is not None:
            return str(value)
    return ""
