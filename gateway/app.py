"""The gateway's HTTP API (DESIGN.md, "External contracts"): requests become workflow starts,
queries and updates; every message is verified, applied at most once and kept with its outcome.

A message reaches its workflow as an update. The gateway waits until the workflow has accepted or
refused it (the validator: answered at once), then for its result for a bounded time. A message
about something a step is still creating waits in the workflow until that step finishes, which
can take minutes: then the sender gets 202 `pending` (the update is durable in Temporal, so the
sender must not send it again) and the gateway keeps waiting in the background to record what
became of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateHandle,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.documents import validate_application
from gateway.auth import Authority, tokens_from_env
from gateway.dashboard import install_dashboard
from gateway.metrics import GatewayMetrics
from gateway.store import ApplicationRecord, ListFilter, MessageRecord, Store
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
    SubmissionResult,
    TerminalActivated,
    TrainingCompleted,
)
from schemas.policy import policy_for
from schemas.status import OnboardingStart, Projection
from services.signing import HEADER, SignatureError, verify
from workers.config import DEFAULT_TASK_QUEUE, state_dir
from workers.logging import mask_text, masked
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
    # How long a callback or action waits for its update's result once the workflow accepted it;
    # after that the sender gets 202 pending and the gateway records the result when it comes.
    update_wait_seconds: float = 5.0
    # How long the workflow may take to accept or refuse a message (its validator runs in a
    # workflow task: a worker must be there) before the sender is told to try again (503).
    update_accept_seconds: float = 10.0
    # The merchant's documents wait for their validation result, at most this long (then 503).
    documents_wait_seconds: float = 30.0
    retry_after_seconds: int = 5  # the `Retry-After` of every 503

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
            update_wait_seconds=_seconds("POSFLOW_GATEWAY_UPDATE_WAIT_SECONDS", 5.0),
            update_accept_seconds=_seconds("POSFLOW_GATEWAY_UPDATE_ACCEPT_SECONDS", 10.0),
            documents_wait_seconds=_seconds("POSFLOW_GATEWAY_DOCUMENTS_WAIT_SECONDS", 30.0),
            retry_after_seconds=max(1, round(_seconds("POSFLOW_GATEWAY_RETRY_AFTER_SECONDS", 5))),
        )


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not 0 <= value <= 3600:
        raise ValueError(f"{name} must be between 0 and 3600 seconds, not {raw!r}")
    return value


class ApiError(Exception):
    """An error answer: `{"error", "message", "fields", "retry"}`. `retry` tells the sender
    whether the same message may succeed later (then `Retry-After` says when); it defaults to
    true for a 5xx and false otherwise."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        fields: dict[str, str] | None = None,
        *,
        retry: bool | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.fields = fields or {}
        self.retry = status >= 500 if retry is None else retry
        self.extra = extra

    def response(self, retry_after: int = 5) -> JSONResponse:
        body = {
            "error": self.error,
            "message": self.message,
            "fields": self.fields,
            "retry": self.retry,
            **self.extra,
        }
        headers = {"Retry-After": str(retry_after)} if self.retry else None
        return JSONResponse(body, status_code=self.status, headers=headers)


# How the workflow's refusals are answered: the status, and whether the sender should send the
# same message again later (503 with `Retry-After`) or take the refusal as final. A refusal type
# not listed is final (409).
REFUSALS: dict[str, tuple[int, bool]] = {
    Refusal.UNAVAILABLE.value: (503, True),
    Refusal.INVALID.value: (422, False),
    Refusal.STALE.value: (409, False),
    Refusal.UNKNOWN_REFERENCE.value: (409, False),
    Refusal.OUT_OF_STAGE.value: (409, False),
    Refusal.FINISHED.value: (409, False),
    Refusal.NOT_PARKED.value: (409, False),
    Refusal.NOT_SKIPPABLE.value: (409, False),
    # Temporal's own: the workflow ended while an accepted message was still waiting in it.
    "AcceptedUpdateCompletedWorkflow": (409, False),
}
TEMPORAL_UNAVAILABLE = "temporal_unavailable"  # no answer from Temporal: 503, try again
PENDING_DETAIL = "accepted: the application applies it as soon as the step it refers to is recorded"
# A receipt with one of these outcomes means the workflow has the message: a resend is a duplicate.
RECEIVED = ("applied", "duplicate", "pending")


def refusal(err: WorkflowUpdateFailedError) -> ApiError:
    """The workflow's refusal, by its validator or by its handler after acceptance, answered."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        kind = cause.type or "Refused"
        status, retry = REFUSALS.get(kind, (409, False))
        return ApiError(status, kind, mask_text(cause.message), retry=retry)
    return ApiError(409, "refused", mask_text(str(cause or err)), retry=False)


def temporal_error(err: RPCError, application_id: str, store: Store) -> ApiError:
    """Temporal's own errors: no such workflow (never started, or ended), or no answer."""
    if err.status is RPCStatusCode.NOT_FOUND:
        if store.application(application_id) is None:
            return ApiError(404, "unknown_application", f"no application {application_id}")
        return ApiError(409, Refusal.FINISHED.value, f"application {application_id} has ended")
    return ApiError(503, TEMPORAL_UNAVAILABLE, "the process engine did not answer")


class Result(Protocol):
    """What an update answers (`Ack`, `SubmissionResult`): a pydantic model that says whether
    the workflow had the message already."""

    @property
    def duplicate(self) -> bool: ...

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any: ...


R = TypeVar("R", bound=Result)


@dataclass(frozen=True)
class Forwarded(Generic[R]):
    outcome: str  # applied | duplicate | pending
    result: R | None  # None while pending


class Forwarder:
    """Sends messages to workflows as updates and keeps each with its outcome.

    The update's id is the message id, so a resend while the first is still waiting in the
    workflow attaches to the same update (Temporal answers an update id it already has with that
    update's handle and, once done, its result) instead of running it twice. Temporal also keeps
    a completed update's result under its id: after the workflow refused a message as
    temporarily unavailable, its next attempt must use a fresh update id, or it would be answered
    with the same refusal for ever.
    """

    def __init__(
        self, store: Store, metrics: GatewayMetrics, *, wait_seconds: float, accept_seconds: float
    ) -> None:
        self.store, self.metrics = store, metrics
        self.wait_seconds, self.accept_seconds = wait_seconds, accept_seconds
        # The background waits for pending messages: held here so they are not garbage
        # collected, cancelled at shutdown (see `close`).
        self.awaiting: set[asyncio.Task[None]] = set()
        metrics.awaiting.set_function(lambda: len(self.awaiting))

    def record(self, **fields: Any) -> int:
        row = self.store.record_message(**fields)
        self.metrics.message(fields["source"], fields["kind"], fields["outcome"])
        return row

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
        """Keep a message that was not applied, with the reason it was refused."""
        self.record(
            application_id=application_id,
            source=source,
            kind=kind,
            message_id=message_id,
            outcome=_outcome_of(err),
            detail=f"{err.error}: {err.message}",
            body=body,
            update_id=update_id,
        )

    async def forward(
        self,
        handle: WorkflowHandle[Any, Any],
        update: Any,
        payload: BaseModel,
        *,
        application_id: str,
        source: str,
        kind: str,
        body: Any,
        describe: Callable[[R], str],
        wait_seconds: float | None = None,
        scope: str = "",
    ) -> Forwarded[R]:
        """Send `payload` as `update` and keep it with its outcome.

        Returns the result (applied or duplicate) if it came within the wait, else `pending`
        (kept as such, and settled in the background). Raises an ApiError, the message kept as
        refused, invalid or failed, when the workflow refused it or Temporal did not answer.
        `scope` prefixes the update id (update ids are per workflow, message ids per kind).
        """
        message_id = _message_id(payload)
        base = scope + message_id
        earlier = [
            m
            for m in await asyncio.to_thread(self.store.attempts, application_id, message_id)
            if not m.update_id or m.update_id == base or m.update_id.startswith(f"{base}~")
        ]
        resend = any(m.outcome in RECEIVED for m in earlier)
        update_id = _update_id(base, earlier)

        def refused(err: ApiError) -> ApiError:
            self.record_refusal(err, application_id, source, kind, body, message_id, update_id)
            return err

        try:
            started: WorkflowUpdateHandle[Any] = await _within(
                self.accept_seconds,
                handle.start_update(
                    update, payload, id=update_id, wait_for_stage=WorkflowUpdateStage.ACCEPTED
                ),
            )
        except TimeoutError as err:
            # Not accepted yet, perhaps later: a resend attaches to the same update id.
            raise refused(
                ApiError(503, TEMPORAL_UNAVAILABLE, "the process engine did not take the message")
            ) from err
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
            raise refused(self._unanswered(err, application_id)) from err

        waiting = asyncio.ensure_future(started.result())
        try:
            await asyncio.wait(
                {waiting}, timeout=self.wait_seconds if wait_seconds is None else wait_seconds
            )
            if not waiting.done() and _known(started):
                # Refused by the validator, or already done: never "pending", however short the
                # wait (the result is in the answer to the start; only its decoding is left).
                await asyncio.wait({waiting})
        except asyncio.CancelledError:
            waiting.cancel()
            raise
        if waiting.done():
            try:
                result: R = waiting.result()
            except WorkflowUpdateFailedError as err:
                raise refused(refusal(err)) from err
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
                raise refused(self._unanswered(err, application_id)) from err
            if resend and not result.duplicate:
                result = result.model_copy(update={"duplicate": True})
            outcome = "duplicate" if result.duplicate else "applied"
            self.record(
                application_id=application_id,
                source=source,
                kind=kind,
                message_id=message_id,
                outcome=outcome,
                detail=describe(result),
                body=body,
                update_id=update_id,
            )
            return Forwarded(outcome, result)

        row = self.record(
            application_id=application_id,
            source=source,
            kind=kind,
            message_id=message_id,
            outcome="pending",
            detail=PENDING_DETAIL,
            body=body,
            update_id=update_id,
        )
        # The final outcome is written by this task only: a restart of the gateway loses it and
        # the row stays `pending` (the message itself is safe in the workflow, and a resend is
        # answered with what became of it).
        task = asyncio.create_task(
            self._settle(
                started, waiting, row, application_id, message_id, source, kind, resend, describe
            ),
            name=f"settle {application_id} {message_id}",
        )
        self.awaiting.add(task)
        task.add_done_callback(self.awaiting.discard)
        return Forwarded("pending", None)

    async def _settle(
        self,
        started: WorkflowUpdateHandle[Any],
        waiting: asyncio.Future[Any],
        row: int,
        application_id: str,
        message_id: str,
        source: str,
        kind: str,
        resend: bool,
        describe: Callable[[R], str],
    ) -> None:
        """Wait for a pending message's result and keep it: applied, duplicate, or refused."""
        delay = 1.0
        while True:
            try:
                result: R = await waiting
            except WorkflowUpdateFailedError as err:
                answer = refusal(err)
                outcome, detail = _outcome_of(answer), f"{answer.error}: {answer.message}"
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Shut down while waiting (the SDK reports our cancellation as a timeout).
                    raise asyncio.CancelledError from err
                if isinstance(err, RPCError) and err.status is RPCStatusCode.NOT_FOUND:
                    outcome = "refused"
                    detail = f"{Refusal.FINISHED.value}: the application ended first"
                else:  # Temporal did not answer: the update is durable, ask again
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60.0)
                    waiting = asyncio.ensure_future(started.result())
                    continue
            else:
                duplicate = resend or result.duplicate
                outcome, detail = ("duplicate" if duplicate else "applied"), describe(result)
            break
        await asyncio.to_thread(
            self.store.settle_message, application_id, message_id, outcome, detail, row
        )
        self.metrics.message_settled(source, kind, outcome)

    def _unanswered(
        self, err: RPCError | WorkflowUpdateRPCTimeoutOrCancelledError, application_id: str
    ) -> ApiError:
        if isinstance(err, RPCError):
            return temporal_error(err, application_id, self.store)
        return ApiError(503, TEMPORAL_UNAVAILABLE, "the process engine did not answer")

    async def close(self) -> None:
        """Stop waiting for pending results (at shutdown); their rows stay `pending`."""
        for task in list(self.awaiting):
            task.cancel()
        await asyncio.gather(*self.awaiting, return_exceptions=True)


def _fields(err: ValidationError, prefix: str = "") -> dict[str, str]:
    return {
        prefix + ".".join(str(p) for p in e["loc"])
        if e["loc"]
        else prefix.rstrip(".") or "body": str(masked(e["msg"]))
        for e in err.errors()
    }


def create_app(client: Client, settings: GatewaySettings) -> FastAPI:
    store = Store(settings.database_url)
    metrics = GatewayMetrics(store)
    forwarder = Forwarder(
        store,
        metrics,
        wait_seconds=settings.update_wait_seconds,
        accept_seconds=settings.update_accept_seconds,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await forwarder.close()

    app = FastAPI(title="posflow gateway", lifespan=lifespan)
    app.state.store = store
    app.state.forwarder = forwarder
    app.state.awaiting = forwarder.awaiting  # the background waits for pending messages
    metrics.install(app)

    authority = Authority(settings.tokens)

    def authorize(request: Request, needed: str) -> str:
        role = authority.api_role(request)
        if role is None:
            raise ApiError(401, "unauthenticated", "a bearer token is required")
        if not authority.allows(role, needed):
            raise ApiError(403, "forbidden", f"this call needs the {needed} role")
        return role

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return err.response(settings.retry_after_seconds)

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

    async def message(
        request: Request,
        application_id: str,
        source: str,
        kind: str,
        model: type[M],
        apply: Callable[[M, Any], Awaitable[JSONResponse]],
        signed_by: str | None = None,
    ) -> JSONResponse:
        """Verify, parse and apply one message; keep it with its outcome whatever happens.
        `apply(message, its masked body)` sends it on and keeps it with its outcome."""
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
            forwarder.record_refusal(err, application_id, source, kind, masked(_safe_json(raw)))
            raise
        return await apply(payload, masked(_safe_json(raw)))

    async def forward_ack(
        application_id: str, source: str, kind: str, update: Any, payload: BaseModel, body: Any
    ) -> Forwarded[Ack]:
        return await forwarder.forward(
            handle(application_id),
            update,
            payload,
            application_id=application_id,
            source=source,
            kind=kind,
            body=body,
            describe=_describe_ack,
        )

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
        except RPCError as err:  # started or not, the same application id again is safe
            raise ApiError(503, TEMPORAL_UNAVAILABLE, "the process engine did not answer") from err
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
        """The merchant waits for the validation result: the answer names every bad field."""
        submission = parse(DocumentSubmission, await read_json(request))
        forwarded: Forwarded[SubmissionResult] = await forwarder.forward(
            handle(application_id),
            PosOnboarding.submit_documents,
            submission,
            application_id=application_id,
            source="merchant",
            kind="documents",
            body=masked(submission.model_dump(mode="json")),
            describe=_describe_submission,
            wait_seconds=settings.documents_wait_seconds,
            scope="documents:",  # submission ids are not unique among other messages' ids
        )
        result = forwarded.result
        if result is None:
            # Accepted and still being validated (kept as pending): the same submission sent
            # again is answered with the result once there is one.
            raise ApiError(
                503,
                "still_validating",
                "the documents were accepted and are still being validated: "
                "send the same submission again to read the result",
                retry=True,
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

            async def apply(payload: M, body: Any) -> JSONResponse:
                forwarded = await forward_ack(application_id, source, kind, update, payload, body)
                return answer(forwarded, payload)

            return await message(request, application_id, source, kind, model, apply, signed_by)

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

        async def signal(scan: ShipmentScan, body: Any) -> JSONResponse:
            try:
                await handle(application_id).signal(PosOnboarding.shipment_scanned, scan)
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
        forwarded = await forward_ack(
            application_id,
            source,
            verb,
            updates[verb],
            payload,
            masked(payload.model_dump(mode="json")),
        )
        return forwarded.outcome, forwarded.result or _pending_ack(payload)

    def workflow_url(workflow_id: str) -> str:
        return (
            f"{settings.temporal_ui_url.rstrip('/')}/namespaces/{quote(settings.namespace)}"
            f"/workflows/{quote(workflow_id, safe='')}"
        )

    install_dashboard(app, store, authority, status_of, act, workflow_url, settings.refresh_seconds)
    return app


def answer(forwarded: Forwarded[Ack], payload: BaseModel) -> JSONResponse:
    """A callback's answer: 200 with the workflow's ack, or 202 while it is pending (the message
    is durable in the workflow: the sender must not send it again)."""
    if forwarded.result is None:
        return JSONResponse(
            {"outcome": "pending", "message_id": _message_id(payload), "detail": PENDING_DETAIL},
            status_code=202,
        )
    return JSONResponse({"outcome": forwarded.outcome, **forwarded.result.model_dump(mode="json")})


def _pending_ack(payload: BaseModel) -> Ack:
    return Ack(message_id=_message_id(payload), stage="", detail=PENDING_DETAIL)


def _describe_ack(ack: Ack) -> str:
    return ack.detail


def _describe_submission(result: SubmissionResult) -> str:
    outstanding = ", ".join(k.value for k in result.outstanding) or "none"
    return f"{len(result.issues)} issues, outstanding: {outstanding}"


T = TypeVar("T")


async def _within(seconds: float, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result, or TimeoutError after `seconds` (the work is then cancelled).

    Not `asyncio.wait_for`: the SDK turns a cancelled call into its own timeout error."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not task.done():
        task.cancel()
        task.add_done_callback(_swallow)
        raise TimeoutError
    return task.result()


def _swallow(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a cancelled call's error is of no interest


def _known(started: WorkflowUpdateHandle[Any]) -> bool:
    """Whether the answer to the start already held the outcome (a validator's refusal, or an
    update done at once). The SDK keeps it on the handle; if that ever changes, this says False
    and such an answer is only as prompt as the wait allows."""
    return getattr(started, "_known_outcome", None) is not None


def _update_id(message_id: str, earlier: list[MessageRecord]) -> str:
    """The message id, unless an update under that id was refused as temporarily unavailable:
    Temporal would answer that id with the same refusal for ever, so the next attempt gets the
    next unused `~n` suffix."""
    prefix = f"{Refusal.UNAVAILABLE.value}:"
    spent = {
        m.update_id
        for m in earlier
        if m.update_id and m.outcome == "failed" and m.detail.startswith(prefix)
    }
    candidate, n = message_id, 0
    while candidate in spent:
        n += 1
        candidate = f"{message_id}~{n}"
    return candidate


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
