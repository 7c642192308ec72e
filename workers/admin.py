"""What an admin does to a workflow execution itself, beyond the workflow's own updates: reset a
run to the start of a stage, so a stage that failed on a bug runs again on the fixed code.

The work before that stage is kept (the new run replays it from history), and every step of
the stage runs again with the same idempotency keys, which come from the workflow id and the
step, never the run: a MID, a shipment or a deposit comes out the same, not twice.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, ResetReapplyType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client

from schemas.status import Stage
from workers.interceptors import STAGE_HEADER
from workflows import search_attributes as sa


class ResetRefused(Exception):
    """The run cannot be reset to that stage (it never entered it, or it is unknown)."""


@dataclass(frozen=True)
class ResetPoint:
    stage: Stage
    # The first event that records the stage: its search-attribute upsert, or the first activity
    # the stage scheduled (stamped with the stage in its header, `workers.interceptors`).
    entered_event_id: int
    workflow_task_event_id: int  # the completed workflow task that entered it: the reset point


@dataclass(frozen=True)
class ResetDone:
    workflow_id: str
    old_run_id: str
    new_run_id: str
    point: ResetPoint


def stage_entries(events: list[HistoryEvent]) -> list[ResetPoint]:
    """Every entry into a stage in a history, oldest first, with the workflow task that made
    each one. A stage is recorded by its `PosStage` upsert (search attributes are never
    encrypted) and by the stage header of each activity it schedules (headers are not encoded
    either). Since the `snapshots-ride-with-steps` patch the upsert waits until the workflow
    next waits, after the stage's first steps: the first activity then tells the entry."""
    entries: list[ResetPoint] = []
    current: Stage | None = None
    last_task = 0
    for event in events:
        stage: Stage | None = None
        task = last_task
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            last_task = event.event_id
        elif event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
            payload = fields.indexed_fields.get(sa.STAGE.name)
            if payload is not None and payload.data:
                stage = Stage(json.loads(payload.data))
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = event.activity_task_scheduled_event_attributes
            header = scheduled.header.fields.get(STAGE_HEADER)
            if header is not None and header.metadata.get("encoding") == b"json/plain":
                stage = Stage(json.loads(header.data))
                task = scheduled.workflow_task_completed_event_id
        if stage is not None and stage is not current:
            entries.append(ResetPoint(stage, event.event_id, task))
            current = stage
    return entries


def reset_point(events: list[HistoryEvent], stage: Stage) -> ResetPoint:
    """The start of the last visit to `stage`: the completed workflow task that entered it."""
    visits = [e for e in stage_entries(events) if e.stage is stage]
    if not visits:
        seen = ", ".join(dict.fromkeys(e.stage.value for e in stage_entries(events)))
        raise ResetRefused(f"the run never entered stage {stage.value} (it went through: {seen})")
    if visits[-1].workflow_task_event_id == 0:
        raise ResetRefused(f"stage {stage.value} was entered before any workflow task completed")
    return visits[-1]


async def reset_to_stage(
    client: Client, workflow_id: str, stage: Stage, reason: str, *, request_id: str = ""
) -> ResetDone:
    """Temporal's reset of the workflow's latest run to the start of `stage`. Messages the old run
    received after that point are applied again (signals and updates), and anything the
    services recorded meanwhile is read back at the stage's deadline in any case."""
    handle = client.get_workflow_handle(workflow_id)
    description = await handle.describe()
    history = await handle.fetch_history()
    point = reset_point(list(history.events), stage)
    response = await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(
                workflow_id=workflow_id, run_id=description.run_id
            ),
            reason=reason,
            workflow_task_finish_event_id=point.workflow_task_event_id,
            request_id=request_id or str(uuid.uuid4()),
            reset_reapply_type=ResetReapplyType.RESET_REAPPLY_TYPE_ALL_ELIGIBLE,
        )
    )
    return ResetDone(workflow_id, description.run_id, response.run_id, point)
