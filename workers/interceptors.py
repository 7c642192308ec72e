"""Log context across the workflow/activity boundary: every log line an activity writes is bound
with its application, workflow, stage and step, whichever logger wrote it.

The workflow side stamps each activity it schedules with the application's current stage (the
workflow's `stage` property: an update can schedule an activity in the workflow's first task,
before any search attribute is upserted); the activity side binds it, with the ids from the
activity's info, into structlog's context variables for the duration of the activity.
"""

from __future__ import annotations

from typing import Any

import structlog
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

from schemas.application import application_id_of

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
