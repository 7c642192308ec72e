"""Log context across the workflow/activity boundary: every log line an activity writes is bound
with its application, workflow, stage and step, whichever logger wrote it.

The workflow side stamps each activity it schedules with the application's current stage (the
workflow's `stage` property: an update can schedule an activity in the workflow's first task,
before any search attribute is upserted); the activity side binds it, with the ids from the
activity's info, into structlog's context variables for the duration of the activity.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadConverter
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from activities import catalog
from schemas.application import application_id_of
from schemas.status import Projection

STAGE_HEADER = "posflow-stage"


class LogContextInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _BindActivityContext(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _StampStage


class _StampStage(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_StageHeader(outbound))


class _StageHeader(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        stage = getattr(workflow.instance(), "stage", None)
        if isinstance(stage, str):
            header = workflow.payload_converter().to_payloads([stage])[0]
            input.headers = {**input.headers, STAGE_HEADER: header}
        return super().start_activity(input)


class _BindActivityContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        context = {
            "workflow_id": info.workflow_id,
            "application_id": application_id_of(info.workflow_id),
            "stage": _stage(input.headers.get(STAGE_HEADER)),
            "activity": info.activity_type,
            "attempt": info.attempt,
        }
        with structlog.contextvars.bound_contextvars(
            **{k: v for k, v in context.items() if v is not None}
        ):
            return await super().execute_activity(input)


def _stage(payload: Payload | None) -> str | None:
    if payload is None:
        return None
    value = PayloadConverter.default.from_payloads([payload], [str])[0]
    return str(value)


# --- the gateway's snapshot, riding with a step -------------------------------------------------

Deliver = Callable[[Projection], Awaitable[Any]]
log = structlog.get_logger(__name__)


class SnapshotCourier(Interceptor):
    """Delivers the gateway's snapshot a step carries (`Step.then_project`) as the activity
    starts, with the worker's own `project_status`, and marks the step's result `projected`.
    Best effort: a snapshot that cannot go out is logged and left to the workflow, which sends
    it as an activity of its own. The activity's own work runs either way.

    The workflow started the activity in a task it had completed, so what the snapshot shows is
    committed state."""

    def __init__(self, deliver: Deliver) -> None:
        self.deliver = deliver

    @classmethod
    def among(cls, activities: Sequence[Callable[..., Any]]) -> SnapshotCourier | None:
        """The courier for a worker's activities: it delivers with their `project_status`."""
        for function in activities:
            definition = activity._Definition.from_callable(function)
            if definition is not None and definition.name == catalog.PROJECT_STATUS:
                return cls(function)
        return None

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Courier(next, self.deliver)


class _Courier(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, deliver: Deliver) -> None:
        super().__init__(next)
        self.deliver = deliver

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        snapshot = getattr(input.args[0], "then_project", None) if input.args else None
        if not isinstance(snapshot, Projection):
            return await super().execute_activity(input)
        delivered = False
        try:
            await self.deliver(snapshot)
            delivered = True
        except Exception as err:
            log.warning(
                "snapshot_left_to_the_workflow", version=snapshot.version, error=str(err)[:300]
            )
        result = await super().execute_activity(input)
        if delivered and isinstance(result, BaseModel) and "projected" in type(result).model_fields:
            result = result.model_copy(update={"projected": True})
        return result
