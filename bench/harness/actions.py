"""What one workflow history costs: its events, its bytes and its billable actions by Temporal
Cloud's rules (https://docs.temporal.io/cloud/actions), each broken down by kind.

Every action is counted once, in the history of the execution that initiated it, so the costs
of a chain of histories (a parent and its child, the runs of a continue-as-new) add up:

- `workflow_start`: the start of a run from a client (its `WorkflowExecutionStarted`); a run
  started by its parent or by continue-as-new is counted where that happened instead;
- `child_workflow`: a child started (`StartChildWorkflowExecutionInitiated`);
- `continue_as_new`: the next run started (`WorkflowExecutionContinuedAsNew`);
- `reset`: the run is the result of a reset (a workflow task failed with cause RESET_WORKFLOW);
- `activity`: every attempt of every activity (the `attempt` of its `ActivityTaskStarted`: the
  server records one started event, for the last attempt);
- `local_activity`: every workflow task that recorded local-activity markers (Cloud bills all
  local activities of one workflow task as one action);
- `timer`: every timer started, including those the SDK starts for a wait with a timeout;
- `search_attribute_upsert`: every `UpsertWorkflowSearchAttributes` command, one action whatever
  it holds, except one holding nothing but `TemporalChangeVersion` (exempt);
- `signal`: a signal received from a client, `signal_external`: one sent by this workflow (the
  receiving workflow's `WorkflowExecutionSignaled` of it is not counted again);
- `update`: every update accepted (an update's id counts once; a rejected update also costs an
  action but leaves no event, so it cannot be read from a history);
- `nexus_operation`: every Nexus operation scheduled.

Not in any history and so not counted here: queries (one action each), rejected updates,
activity heartbeats, schedules and exports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory

CHANGE_VERSION = "TemporalChangeVersion"
LOCAL_ACTIVITY_MARKER = "core_local_activity"

# The order kinds are shown in.
KINDS = (
    "workflow_start",
    "activity",
    "local_activity",
    "search_attribute_upsert",
    "timer",
    "update",
    "signal",
    "signal_external",
    "child_workflow",
    "continue_as_new",
    "reset",
    "nexus_operation",
)

E = EventType


def count_actions(events: Iterable[HistoryEvent]) -> Counter[str]:
    """The billable actions of one history, by kind (only kinds that occur are present)."""
    return _count(events)[0]


def exempt_actions(events: Iterable[HistoryEvent]) -> Counter[str]:
    """Commands in the history that Cloud does not bill: upserts of `TemporalChangeVersion`
    alone (`workflow.patched` records one the first time a patch is met)."""
    return _count(events)[1]


def _count(events: Iterable[HistoryEvent]) -> tuple[Counter[str], Counter[str]]:
    actions: Counter[str] = Counter()
    exempt: Counter[str] = Counter()
    local_activity_tasks: set[int] = set()
    for event in events:
        kind = event.event_type
        if kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started = event.workflow_execution_started_event_attributes
            by_parent = started.HasField("parent_workflow_execution")
            by_continue = bool(started.continued_execution_run_id)
            if not by_parent and not by_continue:
                actions["workflow_start"] += 1
        elif kind == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            actions["activity"] += max(1, event.activity_task_started_event_attributes.attempt)
        elif kind == E.EVENT_TYPE_MARKER_RECORDED:
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == LOCAL_ACTIVITY_MARKER:
                local_activity_tasks.add(marker.workflow_task_completed_event_id)
        elif kind == E.EVENT_TYPE_TIMER_STARTED:
            actions["timer"] += 1
        elif kind == E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
            if set(fields.indexed_fields) - {CHANGE_VERSION}:
                actions["search_attribute_upsert"] += 1
            else:
                exempt["change_version_upsert"] += 1
        elif kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            actions["update"] += 1
        elif kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signaled = event.workflow_execution_signaled_event_attributes
            if not signaled.HasField("external_workflow_execution"):
                actions["signal"] += 1
        elif kind == E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            actions["signal_external"] += 1
        elif kind == E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            actions["child_workflow"] += 1
        elif kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            actions["continue_as_new"] += 1
        elif kind == E.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            failed = event.workflow_task_failed_event_attributes
            if failed.cause == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW:
                actions["reset"] += 1
        elif kind == E.EVENT_TYPE_NEXUS_OPERATION_SCHEDULED:
            actions["nexus_operation"] += 1
    if local_activity_tasks:
        actions["local_activity"] = len(local_activity_tasks)
    return actions, exempt


def event_name(kind: int) -> str:
    """`EVENT_TYPE_ACTIVITY_TASK_STARTED` -> `activity_task_started`."""
    return EventType.Name(kind).removeprefix("EVENT_TYPE_").lower()  # type: ignore[arg-type]


@dataclass
class Cost:
    """What one history costs."""

    events: int
    bytes: int  # the events as the server stores them (protobuf), payloads as sent (encrypted)
    actions: Counter[str] = field(default_factory=Counter)
    exempt: Counter[str] = field(default_factory=Counter)  # not billed (see `exempt_actions`)
    event_types: Counter[str] = field(default_factory=Counter)
    # The workflow-task events (scheduled, started, completed, failed, timed out).
    workflow_task_events: int = 0

    @property
    def total_actions(self) -> int:
        return sum(self.actions.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "bytes": self.bytes,
            "actions": self.total_actions,
            "actions_by_kind": ordered(self.actions),
            "not_billed": dict(self.exempt),
            "workflow_task_events": self.workflow_task_events,
            "events_by_type": dict(self.event_types.most_common()),
        }


def cost(history: WorkflowHistory | Iterable[HistoryEvent]) -> Cost:
    """Events, bytes and billable actions of one history (fetched, or read from a JSON export
    with `WorkflowHistory.from_json`)."""
    events = list(history.events if isinstance(history, WorkflowHistory) else history)
    types = Counter(event_name(e.event_type) for e in events)
    actions, exempt = _count(events)
    return Cost(
        events=len(events),
        bytes=sum(e.ByteSize() for e in events),
        actions=actions,
        exempt=exempt,
        event_types=types,
        workflow_task_events=sum(n for t, n in types.items() if t.startswith("workflow_task_")),
    )


def ordered(actions: Mapping[str, float]) -> dict[str, float]:
    """`actions` by kind in `KINDS` order (unknown kinds last), leaving out kinds never seen."""
    known = {k: actions[k] for k in KINDS if actions.get(k)}
    return {**known, **{k: v for k, v in actions.items() if k not in known and v}}
