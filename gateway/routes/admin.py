"""The admin API: what an admin does to applications that need one. Callers: admin tokens only.

- `retry`, `skip`, `extend`, `withdraw`: the workflow's own updates, forwarded like every message
  (`gateway.forwarding`: 200 applied or duplicate, 202 pending, 409 refused with the reason);
- `reset`: Temporal's reset of the latest run to the start of a stage (`workers.admin`), and
  `reset-point`, the read of where that would be;
- `failures`: every application that needs an admin, from the gateway's store (parked, past its
  stage deadline) and from Temporal's visibility (workflows that failed, timed out or were
  terminated).

Every action is kept in the application's audit trail (`gateway.store.MessageRecord`) with who
took it (the credential's role: ops tokens carry no names), why (a required `reason`), when and
what became of it; a refused one too. The dashboard takes the same actions through the
functions here (`take_action`, `take_reset`, `find_failures`).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, or_
from sqlmodel import col, select
from temporalio.api.common.v1 import WorkflowExecution as ProtoExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHistoryEventFilterType,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from gateway.auth import Principal, admin
from gateway.errors import (
    COMMON,
    SIGNED_IN,
    TEMPORAL_UNAVAILABLE,
    UNAVAILABLE,
    ApiError,
    described,
    shown,
    unknown_application,
)
from gateway.forwarding import Forwarded, Forwarder, answer
from gateway.limits import ApplicationId
from gateway.models import (
    AdminAction,
    ExtendRequest,
    Failure,
    FailureKind,
    FailureList,
    PendingReceipt,
    Receipt,
    ResetPointView,
    ResetReceipt,
    ResetRequest,
    StageEntry,
)
from gateway.resources import SOURCES, client_of, forwarder_of, send, store_of, workflow
from gateway.store import ApplicationRecord, Store, utc
from schemas import messages
from schemas.application import Channel, application_id_of, workflow_id_for
from schemas.messages import Ack
from schemas.status import AttentionKind, Stage
from workers.admin import ResetRefused, reset_point, reset_to_stage, stage_entries
from workers.logging import mask_text, masked
from workflows import search_attributes as sa
from workflows.onboarding import PosOnboarding

Admin = Annotated[Principal, Depends(admin)]

router = APIRouter(
    prefix="/api/admin", tags=["admin"], dependencies=[Depends(admin)], responses=SIGNED_IN
)
APPLICATION = "/applications/{application_id}"
# What an action on one application may answer.
ACTION_ANSWERS: dict[int | str, dict[str, Any]] = {
    202: {"model": PendingReceipt, "description": "accepted, applied once the step is done"},
    404: described("no such application"),
    409: described("not parked, not skippable, not extendable, or ended"),
    **COMMON,
    **UNAVAILABLE,
}
# A body refused as invalid is kept in the application's audit trail under this source.
SOURCES.update(retry="admin", skip="admin", extend="admin", withdraw="admin", reset="admin")

# The workflow's update for each action, and the kind its receipts are kept under.
UPDATES: dict[str, Any] = {
    "retry": PosOnboarding.retry,
    "skip": PosOnboarding.skip,
    "extend": PosOnboarding.extend_deadline,
    "withdraw": PosOnboarding.cancel,
}
# What an admin may do about each kind of parking when the workflow cannot be asked (the
# workflow's own flags, `Attention.retryable/skippable/extendable`, are used when it can).
_OVERDUE_WAITS = {
    AttentionKind.REVIEW_OVERDUE,
    AttentionKind.SITE_SURVEY_OVERDUE,
    AttentionKind.DELIVERY_OVERDUE,
    AttentionKind.ACTIVATION_OVERDUE,
    AttentionKind.TRAINING_OVERDUE,
}
# Stages an application can still be withdrawn in (before go-live, not already closing).
_WITHDRAWABLE = {s.value for s in Stage if not s.finished} - {
    Stage.GOING_LIVE.value,
    Stage.CLOSING.value,
}


def actor_of(who: Principal) -> str:
    """Who took an action, as the audit trail keeps it: the token's role, and its name if
    tokens ever carry one."""
    name = getattr(who, "name", None)
    return f"{who.role}:{name}" if name else str(who.role or "unknown")


# --- retry, skip, extend, withdraw ----------------------------------------------------------------


def workflow_message(verb: str, body: AdminAction, actor: str) -> BaseModel:
    """The workflow's own message for an admin's action."""
    if verb == "withdraw":
        return messages.CancelRequest(
            request_id=body.request_id, reason=body.reason, requested_by=actor
        )
    return messages.AdminAction(
        request_id=body.request_id,
        admin=actor,
        note=body.reason,
        period=body.period if isinstance(body, ExtendRequest) else None,
    )


async def take_action(
    request: Request, application_id: str, verb: str, body: AdminAction, actor: str
) -> tuple[Forwarded[Ack], BaseModel]:
    """Send an admin's action to the workflow and keep it, refused or not, with who and why;
    raises ApiError when refused."""
    payload = workflow_message(verb, body, actor)
    try:
        forwarded = await send(request, application_id, "admin", verb, UPDATES[verb], payload)
    finally:
        await asyncio.to_thread(
            store_of(request).stamp_action,
            application_id,
            body.request_id,
            verb,
            actor,
            body.reason,
        )
    return forwarded, payload


async def _answered(
    request: Request, application_id: str, verb: str, body: AdminAction, who: Principal
) -> JSONResponse:
    forwarded, payload = await take_action(request, application_id, verb, body, actor_of(who))
    return answer(forwarded, payload)


@router.post(f"{APPLICATION}/retry", name="retry", response_model=Receipt, responses=ACTION_ANSWERS)
async def retry(
    application_id: ApplicationId, action: AdminAction, request: Request, who: Admin
) -> JSONResponse:
    """Re-run the step the application is parked on (for an overdue wait: ask the service
    again)."""
    return await _answered(request, application_id, "retry", action, who)


@router.post(f"{APPLICATION}/skip", name="skip", response_model=Receipt, responses=ACTION_ANSWERS)
async def skip(
    application_id: ApplicationId, action: AdminAction, request: Request, who: Admin
) -> JSONResponse:
    """Skip a compensation an admin has done by hand (only those are skippable)."""
    return await _answered(request, application_id, "skip", action, who)


@router.post(
    f"{APPLICATION}/extend", name="extend", response_model=Receipt, responses=ACTION_ANSWERS
)
async def extend(
    application_id: ApplicationId, action: ExtendRequest, request: Request, who: Admin
) -> JSONResponse:
    """Give an overdue review, survey, delivery, activation or training another period: the
    one given, or the stage's own."""
    return await _answered(request, application_id, "extend", action, who)


@router.post(
    f"{APPLICATION}/withdraw",
    name="withdraw",
    response_model=Receipt,
    responses={**ACTION_ANSWERS, 409: described("the application has ended")},
)
async def withdraw(
    application_id: ApplicationId, action: AdminAction, request: Request, who: Admin
) -> JSONResponse:
    """Withdraw the application (the operators' `cancel`, audited as an admin's action):
    compensations run in reverse."""
    return await _answered(request, application_id, "withdraw", action, who)


# --- reset --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Point:
    workflow_id: str
    run_id: str
    status: str
    view: StageEntry
    entries: list[StageEntry]


def _status_name(status: WorkflowExecutionStatus | None) -> str:
    """`TimedOut`, as visibility queries name a status."""
    if status is None:
        return "Unknown"
    return "".join(part.capitalize() for part in status.name.split("_"))


async def latest_run(
    client: Client, workflow_id: str
) -> tuple[str, WorkflowExecutionStatus | None]:
    """The latest run of a workflow and its status. The raw description: the SDK's typed one
    cannot read every server's answer (the time-skipping test server's, for one)."""
    described = await client.workflow_service.describe_workflow_execution(
        DescribeWorkflowExecutionRequest(
            namespace=client.namespace, execution=ProtoExecution(workflow_id=workflow_id)
        )
    )
    info = described.workflow_execution_info
    try:
        status: WorkflowExecutionStatus | None = WorkflowExecutionStatus(info.status)
    except ValueError:
        status = None
    return info.execution.run_id, status


def _entries(events: list[HistoryEvent]) -> list[StageEntry]:
    times = {e.event_id: e.event_time.ToDatetime(tzinfo=UTC) for e in events}
    return [
        StageEntry(
            stage=e.stage,
            entered_event_id=e.entered_event_id,
            workflow_task_event_id=e.workflow_task_event_id,
            entered_at=times.get(e.entered_event_id),
        )
        for e in stage_entries(events)
    ]


def _reset_error(err: RPCError, application_id: str, store: Store) -> ApiError:
    if err.status is RPCStatusCode.NOT_FOUND:
        if store.application(application_id) is None:
            return unknown_application(application_id)
        return ApiError(
            409,
            "no_history",
            f"the process engine no longer holds application {shown(application_id)}'s "
            "workflow (its history retention ended): there is nothing to reset",
        )
    if err.status in (
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.CANCELLED,
    ):
        return ApiError(503, TEMPORAL_UNAVAILABLE, "the process engine did not answer")
    return ApiError(
        409,
        "reset_refused",
        f"the process engine refused the reset: {shown(err.message or err.status.name, 300)}",
    )


async def find_reset_point(
    client: Client, store: Store, application_id: str, stage: Stage
) -> _Point:
    """Where a reset of the latest run to `stage` goes: raises ApiError (404, 409 with the
    reason, 503) when there is no such point."""
    workflow_id = workflow_id_for(application_id)
    try:
        run_id, status = await latest_run(client, workflow_id)
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    except RPCError as err:
        raise await asyncio.to_thread(_reset_error, err, application_id, store) from err
    events = list(history.events)
    try:
        point = reset_point(events, stage)
    except ResetRefused as err:
        raise ApiError(409, "reset_refused", str(err)) from err
    entries = _entries(events)
    view = next(e for e in entries if e.entered_event_id == point.entered_event_id)
    return _Point(workflow_id, run_id, _status_name(status), view, entries)


@router.get(
    f"{APPLICATION}/reset-point",
    name="reset_point",
    response_model=ResetPointView,
    responses={
        404: described("no such application"),
        409: described("the run never entered that stage, or its history is gone"),
        422: COMMON[422],
        **UNAVAILABLE,
    },
)
async def read_reset_point(
    application_id: ApplicationId,
    request: Request,
    to_stage: Annotated[Stage, Query(description="the stage a reset would run again")],
) -> ResetPointView:
    """Where `reset` to `to_stage` would take the latest run: the workflow task that entered
    the stage (the reset point), the upsert that recorded it and when; changes nothing."""
    point = await find_reset_point(client_of(request), store_of(request), application_id, to_stage)
    return ResetPointView(
        workflow_id=point.workflow_id,
        run_id=point.run_id,
        status=point.status,
        stage=to_stage,
        workflow_task_event_id=point.view.workflow_task_event_id,
        entered_event_id=point.view.entered_event_id,
        entered_at=point.view.entered_at,
        entries=point.entries,
    )


def _earlier_reset(store: Store, application_id: str, request_id: str) -> ResetReceipt | None:
    for row in reversed(store.attempts(application_id, request_id)):
        if row.kind == "reset" and row.outcome == "applied" and row.body:
            try:
                done = json.loads(row.body)
                return ResetReceipt.model_validate({**done["result"], "outcome": "duplicate"})
            except (ValueError, KeyError, TypeError):
                continue
    return None


def _keep_refused_reset(
    store: Store,
    forwarder: Forwarder,
    err: ApiError,
    application_id: str,
    body: ResetRequest,
    actor: str,
) -> None:
    sent = {"to_stage": body.to_stage.value, "reason": mask_text(body.reason)}
    forwarder.record_refusal(err, application_id, "admin", "reset", sent, body.request_id)
    store.stamp_action(application_id, body.request_id, "reset", actor, body.reason)


async def take_reset(
    request: Request, application_id: str, body: ResetRequest, actor: str
) -> ResetReceipt:
    """Reset the application's latest run to the start of `body.to_stage` and keep the action
    with who and why; raises ApiError (kept as refused) when it cannot be done. The same
    `request_id` again is answered with the first reset, not a second one."""
    store, client, forwarder = store_of(request), client_of(request), forwarder_of(request)
    sent = {"to_stage": body.to_stage.value, "reason": mask_text(body.reason)}
    held = await asyncio.to_thread(_earlier_reset, store, application_id, body.request_id)
    if held is not None:
        await asyncio.to_thread(
            forwarder.record,
            application_id=application_id,
            source="admin",
            kind="reset",
            message_id=body.request_id,
            outcome="duplicate",
            detail=f"already reset: new run {held.new_run_id}",
            body={"request": sent, "result": held.model_dump(mode="json")},
            actor=actor,
            reason=mask_text(body.reason),
        )
        return held
    workflow_id = workflow_id_for(application_id)
    try:
        point = await find_reset_point(client, store, application_id, body.to_stage)
        try:
            done = await reset_to_stage(
                client,
                workflow_id,
                body.to_stage,
                f"{actor}: {mask_text(body.reason)}",
                request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{workflow_id}/{body.request_id}")),
            )
        except RPCError as err:
            raise await asyncio.to_thread(_reset_error, err, application_id, store) from err
        except ResetRefused as err:
            raise ApiError(409, "reset_refused", str(err)) from err
        except (TypeError, ValueError) as err:
            # The SDK could not read the server's description of the run (the time-skipping
            # test server's, for one): no reset was asked for.
            raise ApiError(
                409, "reset_refused", "the process engine's description of the run is unreadable"
            ) from err
    except ApiError as err:
        await asyncio.to_thread(
            _keep_refused_reset, store, forwarder, err, application_id, body, actor
        )
        raise
    await asyncio.to_thread(store.follow_run, application_id, done.new_run_id)
    entered_at = (
        point.view.entered_at
        if (point.view.entered_event_id == done.point.entered_event_id)
        else None
    )
    receipt = ResetReceipt(
        outcome="applied",
        request_id=body.request_id,
        workflow_id=workflow_id,
        old_run_id=done.old_run_id,
        new_run_id=done.new_run_id,
        stage=body.to_stage,
        workflow_task_event_id=done.point.workflow_task_event_id,
        entered_event_id=done.point.entered_event_id,
        entered_at=entered_at,
    )
    entered = f", entered {entered_at.isoformat()}" if entered_at else ""
    await asyncio.to_thread(
        forwarder.record,
        application_id=application_id,
        source="admin",
        kind="reset",
        message_id=body.request_id,
        outcome="applied",
        detail=(
            f"reset to {body.to_stage.value} at workflow task {done.point.workflow_task_event_id} "
            f"(stage entered at event {done.point.entered_event_id}{entered}); "
            f"new run {done.new_run_id}"
        ),
        body={"request": sent, "result": receipt.model_dump(mode="json")},
        actor=actor,
        reason=mask_text(body.reason),
    )
    return receipt


@router.post(
    f"{APPLICATION}/reset",
    name="reset",
    response_model=ResetReceipt,
    responses={
        404: described("no such application"),
        409: described("the run never entered that stage, its history is gone, or refused"),
        **COMMON,
        **UNAVAILABLE,
    },
)
async def reset(
    application_id: ApplicationId, body: ResetRequest, request: Request, who: Admin
) -> ResetReceipt:
    """Run the application's workflow again from the start of `to_stage` (Temporal's reset of
    its latest run: what came before is kept, the stage's steps run again with the same
    idempotency keys). Answers the new run; the workflow id stays, and the gateway follows it."""
    return await take_reset(request, application_id, body, actor_of(who))


# --- what needs an admin --------------------------------------------------------------------------


class FailureFilter(BaseModel):
    """The failures list's filters, as query parameters."""

    model_config = ConfigDict(extra="forbid")

    stage: Stage | None = None
    kind: FailureKind | None = Field(
        default=None,
        description="needs_attention: parked; overdue: past the stage deadline, parked or not; "
        "failed: the workflow failed, timed out or was terminated",
    )
    channel: Channel | None = None
    older_than: timedelta | None = Field(
        default=None,
        ge=timedelta(0),
        le=timedelta(days=3650),
        description="ISO 8601 (PT1H, P3D): parked, overdue or closed at least this long ago",
    )
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000)


WORKFLOW_TYPE = "PosOnboarding"
FAILED_STATUSES = ("Failed", "TimedOut", "Terminated")
# Failed runs read from visibility per request at most (the most recently closed first).
MAX_FAILED = 1000
# Status queries (for the step a case is parked on) and close-event reads at once.
CONCURRENCY = 16
QUERY_SECONDS = 3.0
# What a value put into a visibility query may hold: every one is a validated enum value or a
# time the gateway formats itself, and is checked against this before it is quoted.
_QUERY_VALUE = re.compile(r"[A-Za-z0-9_.:+-]{1,64}")


def quoted(value: str) -> str:
    """`value` as a visibility query literal; anything but plain identifiers and times is
    refused, never escaped into the query."""
    if not _QUERY_VALUE.fullmatch(value):
        raise ValueError(f"not a value a visibility query may hold: {value!r}")
    return f"'{value}'"


def failed_query(wanted: FailureFilter) -> str:
    """The visibility query for runs that failed, timed out or were terminated, narrowed by the
    filters (each value validated, then quoted)."""
    statuses = ", ".join(quoted(s) for s in FAILED_STATUSES)
    query = f"WorkflowType = {quoted(WORKFLOW_TYPE)} AND ExecutionStatus IN ({statuses})"
    if wanted.stage is not None:
        query += f" AND PosStage = {quoted(wanted.stage.value)}"
    if wanted.channel is not None:
        query += f" AND PosChannel = {quoted(wanted.channel.value)}"
    return query


@dataclass
class _FailedRun:
    execution: WorkflowExecution
    application_id: str

    @property
    def closed_at(self) -> datetime | None:
        closed = self.execution.close_time
        return utc(closed) if closed else None


T = TypeVar("T")


async def _bounded(works: list[Awaitable[T]]) -> list[T]:
    """Await `works` (coroutines not started yet), CONCURRENCY at a time, in order."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(work: Awaitable[T]) -> T:
        async with gate:
            return await work

    return list(await asyncio.gather(*(one(w) for w in works)))


async def _failed_runs(client: Client, wanted: FailureFilter) -> tuple[list[_FailedRun], list[str]]:
    """Runs of onboarding workflows that failed, timed out or were terminated and are still the
    latest run of their workflow (a reset one is not: its workflow runs on), most recently
    closed first; and what could not be read."""
    problems: list[str] = []
    found: dict[str, WorkflowExecution] = {}
    try:
        async for execution in client.list_workflows(failed_query(wanted), limit=MAX_FAILED + 1):
            application_id = application_id_of(execution.id)
            if application_id is None or execution.id in found:
                continue
            found[execution.id] = execution
    except RPCError as err:
        reason = shown(err.message or err.status.name, 200)
        return [], [f"failed workflows could not be read from Temporal's visibility: {reason}"]
    if len(found) > MAX_FAILED:
        problems.append(f"more than {MAX_FAILED} failed workflows: the latest {MAX_FAILED} shown")
        found = dict(list(found.items())[:MAX_FAILED])

    async def latest(execution: WorkflowExecution) -> _FailedRun | None:
        try:
            run_id, _ = await latest_run(client, execution.id)
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return None  # gone since it was listed
            run_id = execution.run_id  # cannot tell: listed as it was found
        if run_id != execution.run_id:
            return None  # reset or run again: the workflow goes on in a newer run
        return _FailedRun(execution, application_id_of(execution.id) or "")

    checked = await _bounded([latest(e) for e in found.values()])
    runs = [r for r in checked if r is not None]
    runs.sort(key=lambda r: r.closed_at or datetime.min.replace(tzinfo=UTC), reverse=True)
    return runs, problems


def _store_conditions(wanted: FailureFilter, now: datetime, exclude: set[str]) -> list[Any]:
    app = ApplicationRecord
    # Older than: parked that long ago, or past the deadline by that much.
    cutoff = now - wanted.older_than if wanted.older_than is not None else now
    parked: Any = col(app.needs_attention).is_(True)
    if wanted.older_than is not None:
        parked = parked & (col(app.attention_since) < cutoff)
    late = col(app.stage_deadline).is_not(None) & (col(app.stage_deadline) < cutoff)
    conditions: list[Any] = [col(app.ended_at).is_(None)]
    if wanted.kind == "needs_attention":
        conditions.append(parked)
    elif wanted.kind == "overdue":
        conditions.append(late)
    else:
        conditions.append(or_(parked, late))
    if wanted.stage is not None:
        conditions.append(col(app.stage) == wanted.stage.value)
    if wanted.channel is not None:
        conditions.append(col(app.channel) == wanted.channel.value)
    if exclude:
        conditions.append(col(app.application_id).not_in(sorted(exclude)))
    return conditions


def _store_page(
    store: Store, conditions: list[Any], offset: int, limit: int
) -> tuple[list[ApplicationRecord], int]:
    """The parked and overdue applications, longest waiting first."""
    app = ApplicationRecord
    query = select(app)
    counting = select(func.count()).select_from(app)
    for condition in conditions:
        query, counting = query.where(condition), counting.where(condition)
    since = func.coalesce(col(app.attention_since), col(app.stage_deadline))
    with store.session() as session:
        total = int(session.exec(counting).one())
        rows = session.exec(
            query.order_by(since, col(app.application_id)).offset(offset).limit(limit)
        ).all()
    return list(rows), total


def _records(store: Store, ids: list[str]) -> dict[str, ApplicationRecord]:
    if not ids:
        return {}
    with store.session() as session:
        rows = session.exec(
            select(ApplicationRecord).where(col(ApplicationRecord.application_id).in_(ids))
        ).all()
    return {r.application_id: r for r in rows}


def _at(moment: datetime | None) -> datetime | None:
    return utc(moment) if moment else None


async def _parked_details(client: Client, application_id: str) -> Any:
    """The attention as the workflow holds it (its step and what an admin may do), or None
    when the workflow cannot be asked now."""
    try:
        status = await workflow(client, application_id).query(
            PosOnboarding.status, rpc_timeout=timedelta(seconds=QUERY_SECONDS)
        )
    except Exception:  # no answer is shown as such, never fails the list
        return None
    return status.attention


def _from_record(row: ApplicationRecord, attention: Any, now: datetime) -> Failure:
    overdue = row.overdue(now)
    actions: list[str] = []
    if row.needs_attention:
        if attention is not None:
            actions = [
                verb
                for verb, allowed in (
                    ("retry", attention.retryable),
                    ("skip", attention.skippable),
                    ("extend", attention.extendable),
                )
                if allowed
            ]
        else:
            actions = ["retry"]
            if row.attention_kind in {k.value for k in _OVERDUE_WAITS}:
                actions.append("extend")
    if row.stage in _WITHDRAWABLE:
        actions.append("withdraw")
    actions.append("reset")
    if row.needs_attention:
        since = _at(row.attention_since)
        reason = row.attention_reason
    else:
        since = _at(row.stage_deadline)
        reason = f"past its {row.stage} deadline"
    return Failure(
        application_id=row.application_id,
        workflow_id=row.workflow_id,
        kind="needs_attention" if row.needs_attention else "overdue",
        attention=row.attention_kind or None,
        step=str(attention.step) if attention is not None else "",
        reason=mask_text(reason),
        since=since,
        stage=row.stage,
        channel=row.channel,
        merchant_name=row.merchant_name,
        stage_deadline=_at(row.stage_deadline),
        overdue=overdue,
        actions=actions,
    )


def _failure_text(error: BaseException) -> str:
    parts: list[str] = []
    cause: BaseException | None = error
    while cause is not None and len(parts) < 3:
        if isinstance(cause, ApplicationError):
            parts.append(f"{cause.type or 'error'}: {cause.message}")
        else:
            parts.append(str(cause) or type(cause).__name__)
        cause = cause.__cause__
    return " ← ".join(parts)


async def _close_reason(client: Client, run: _FailedRun) -> str:
    """Why the run ended: the workflow's failure (decrypted with the gateway's codec), the
    termination's reason, or its timeout. Masked."""
    status = run.execution.status
    if status is WorkflowExecutionStatus.TIMED_OUT:
        return "the workflow ran past its execution timeout"
    handle = client.get_workflow_handle(run.execution.id, run_id=run.execution.run_id)
    try:
        async for event in handle.fetch_history_events(
            event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT
        ):
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
                return mask_text(
                    event.workflow_execution_terminated_event_attributes.reason or "terminated"
                )
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
                failure = event.workflow_execution_failed_event_attributes.failure
                error = await client.data_converter.decode_failure(failure)
                return mask_text(_failure_text(error))
    except Exception:  # the reason is a courtesy: the case is listed anyway
        return f"{_status_name(status).lower()} (its reason could not be read)"
    return _status_name(status).lower()


def _from_run(run: _FailedRun, row: ApplicationRecord | None, reason: str) -> Failure:
    # Where the run was when it ended is in its search attributes, upserted in the same task
    # (the snapshot sent from there may never have left); the store fills in what they lack.
    attributes = run.execution.typed_search_attributes
    stage = attributes.get(sa.STAGE) or (row.stage if row else "")
    channel = attributes.get(sa.CHANNEL) or (row.channel if row else "")
    return Failure(
        application_id=run.application_id,
        workflow_id=run.execution.id,
        kind="failed",
        step="",
        reason=reason,
        since=run.closed_at,
        stage=stage,
        channel=channel,
        merchant_name=row.merchant_name if row else "",
        stage_deadline=_at(row.stage_deadline) if row else None,
        run_id=run.execution.run_id,
        status=_status_name(run.execution.status),
        actions=["reset"],
    )


async def find_failures(client: Client, store: Store, wanted: FailureFilter) -> FailureList:
    """Every application that needs an admin, matching `wanted`: parked or overdue ones from
    the store (longest waiting first), then failed runs from visibility (latest first). A run
    that failed is listed as failed only: its row in the store stopped where it failed."""
    now = datetime.now(UTC)
    failed, problems = await _failed_runs(client, wanted)
    exclude = {r.application_id for r in failed}
    listed_failed: list[_FailedRun] = []
    if wanted.kind in (None, "failed"):
        cutoff = now - wanted.older_than if wanted.older_than is not None else None
        listed_failed = [
            r
            for r in failed
            if cutoff is None or (r.closed_at is not None and r.closed_at < cutoff)
        ]
    rows: list[ApplicationRecord] = []
    in_store = 0
    if wanted.kind != "failed":
        conditions = _store_conditions(wanted, now, exclude)
        rows, in_store = await asyncio.to_thread(
            _store_page, store, conditions, wanted.offset, wanted.limit
        )
    start = max(0, wanted.offset - in_store)
    page_failed = listed_failed[start : start + wanted.limit - len(rows)]

    attentions = await _bounded(
        [_parked_details(client, r.application_id) if r.needs_attention else _none() for r in rows]
    )
    if any(r.needs_attention and a is None for r, a in zip(rows, attentions, strict=True)):
        problems.append("some workflows did not answer: their step is not shown")
    reasons = await _bounded([_close_reason(client, r) for r in page_failed])
    records = await asyncio.to_thread(_records, store, [r.application_id for r in page_failed])
    failures = [_from_record(r, a, now) for r, a in zip(rows, attentions, strict=True)]
    failures += [
        _from_run(r, records.get(r.application_id), reason)
        for r, reason in zip(page_failed, reasons, strict=True)
    ]
    return FailureList(
        total=in_store + len(listed_failed),
        offset=wanted.offset,
        limit=wanted.limit,
        failures=[Failure.model_validate(masked(f.model_dump(mode="json"))) for f in failures],
        complete=not problems,
        problems=problems,
    )


async def _none() -> None:
    return None


@router.get("/failures", response_model=FailureList, responses={422: COMMON[422]})
async def failures(wanted: Annotated[FailureFilter, Query()], request: Request) -> FailureList:
    """What needs an admin: every application parked for attention (with the step, the reason,
    since when and the kind of attention) and every one past its stage deadline, from the
    gateway's store; and every workflow that failed, timed out or was terminated, from Temporal's
    visibility, with its channel and stage from the store. Parked and overdue first (longest
    waiting first), then failed (latest first). `complete` is false when a part could not be
    read (the rest is still listed)."""
    return await find_failures(client_of(request), store_of(request), wanted)
