"""The benchmark's count of billable actions (bench/harness/actions.py), on the golden histories
and on hand-built events for the rules the goldens do not exercise."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload, SearchAttributes, WorkflowExecution
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import (
    ActivityTaskStartedEventAttributes,
    HistoryEvent,
    MarkerRecordedEventAttributes,
    UpsertWorkflowSearchAttributesEventAttributes,
    WorkflowExecutionSignaledEventAttributes,
    WorkflowExecutionStartedEventAttributes,
    WorkflowTaskFailedEventAttributes,
)
from temporalio.client import WorkflowHistory

from bench.harness.actions import cost, count_actions, exempt_actions

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str) -> WorkflowHistory:
    return WorkflowHistory.from_json(name, (GOLDEN / name).read_text())


# The histories issue 14 counted, kept in before_notices/ for replay since the notices patch
# (the current goldens change with the workflow; they are checked by the rules below).


def test_one_round_happy_path_by_mail() -> None:
    """201 events; the issue's 49 commands less the `TemporalChangeVersion` upsert Cloud does
    not bill: 48 actions."""
    found = cost(golden("before_notices/individual_mail_live.json"))
    assert found.events == 201
    assert dict(found.actions) == {
        "workflow_start": 1,
        "activity": 24,
        "search_attribute_upsert": 11,
        "timer": 6,
        "update": 6,
    }
    assert found.total_actions == 48
    assert dict(found.exempt) == {"change_version_upsert": 1}
    assert found.workflow_task_events == 90
    assert found.event_types["activity_task_scheduled"] == 24
    assert found.bytes > 0


def test_hand_over_starts_a_child() -> None:
    found = cost(golden("before_notices/individual_mail_live_handed_over.json"))
    assert found.events == 217
    assert found.actions["child_workflow"] == 1
    assert found.actions["workflow_start"] == 1
    assert found.total_actions == 49


def test_enterprise_on_site() -> None:
    found = cost(golden("before_notices/enterprise_on_site_live.json"))
    assert found.events == 228
    assert found.total_actions == 52
    assert found.actions["activity"] == 25


def test_a_signal_from_a_client_counts() -> None:
    assert count_actions(golden("duplicates_and_refusals.json").events)["signal"] == 1


def test_continue_as_new_counts_the_next_run_once() -> None:
    first = count_actions(golden("merchant/continued_as_new_first_run.json").events)
    last = count_actions(golden("merchant/continued_as_new_last_run.json").events)
    assert first["continue_as_new"] == 1 and first["workflow_start"] == 1
    # The last run was started by continue-as-new: already counted in the run before it.
    assert last["workflow_start"] == 0


@pytest.mark.parametrize("path", sorted(GOLDEN.rglob("*.json")), ids=lambda p: p.stem)
def test_every_golden_history_is_counted(path: Path) -> None:
    found = cost(WorkflowHistory.from_json(path.stem, path.read_text()))
    assert found.events == sum(found.event_types.values())
    assert found.total_actions >= found.event_types["activity_task_started"]
    assert found.actions["timer"] == found.event_types["timer_started"]
    assert found.actions["update"] == found.event_types["workflow_execution_update_accepted"]
    upserts = found.event_types["upsert_workflow_search_attributes"]
    assert found.actions["search_attribute_upsert"] + found.exempt["change_version_upsert"] == (
        upserts
    )


# --- rules on hand-built events -----------------------------------------------------------------

E = EventType


def event(kind: int, **attributes: object) -> HistoryEvent:
    return HistoryEvent(event_type=kind, **attributes)  # type: ignore[arg-type]


def upsert(*names: str) -> HistoryEvent:
    fields = {name: Payload(data=b'"x"') for name in names}
    return event(
        E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
        upsert_workflow_search_attributes_event_attributes=(
            UpsertWorkflowSearchAttributesEventAttributes(
                search_attributes=SearchAttributes(indexed_fields=fields)
            )
        ),
    )


def test_every_attempt_of_an_activity_counts() -> None:
    started = event(
        E.EVENT_TYPE_ACTIVITY_TASK_STARTED,
        activity_task_started_event_attributes=ActivityTaskStartedEventAttributes(attempt=3),
    )
    assert count_actions([started]) == {"activity": 3}


def test_an_upsert_is_one_action_and_change_version_alone_is_exempt() -> None:
    events = [upsert("PosStage", "PosStageDeadline"), upsert("TemporalChangeVersion")]
    assert count_actions(events) == {"search_attribute_upsert": 1}
    assert exempt_actions(events) == {"change_version_upsert": 1}
    assert count_actions([upsert("TemporalChangeVersion", "PosStage")]) == {
        "search_attribute_upsert": 1
    }


def test_local_activities_count_once_per_workflow_task() -> None:
    def marker(task: int) -> HistoryEvent:
        return event(
            E.EVENT_TYPE_MARKER_RECORDED,
            marker_recorded_event_attributes=MarkerRecordedEventAttributes(
                marker_name="core_local_activity", workflow_task_completed_event_id=task
            ),
        )

    patch = event(
        E.EVENT_TYPE_MARKER_RECORDED,
        marker_recorded_event_attributes=MarkerRecordedEventAttributes(marker_name="core_patch"),
    )
    assert count_actions([marker(4), marker(4), marker(9), patch]) == {"local_activity": 2}


def test_a_signal_is_counted_where_it_was_sent() -> None:
    from_workflow = event(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
        workflow_execution_signaled_event_attributes=WorkflowExecutionSignaledEventAttributes(
            signal_name="s", external_workflow_execution=WorkflowExecution(workflow_id="parent")
        ),
    )
    from_client = event(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
        workflow_execution_signaled_event_attributes=WorkflowExecutionSignaledEventAttributes(
            signal_name="s"
        ),
    )
    sent = event(E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED)
    assert count_actions([from_workflow, from_client, sent]) == {"signal": 1, "signal_external": 1}


def test_a_child_start_is_counted_in_the_parent() -> None:
    child_run = event(
        E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
            parent_workflow_execution=WorkflowExecution(workflow_id="parent")
        ),
    )
    assert count_actions([child_run]) == {}
    initiated = event(E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED)
    assert count_actions([initiated]) == {"child_workflow": 1}


def test_timers_updates_resets_and_nexus() -> None:
    reset = event(
        E.EVENT_TYPE_WORKFLOW_TASK_FAILED,
        workflow_task_failed_event_attributes=WorkflowTaskFailedEventAttributes(
            cause=WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW
        ),
    )
    other_failure = event(E.EVENT_TYPE_WORKFLOW_TASK_FAILED)
    events = [
        event(E.EVENT_TYPE_TIMER_STARTED),
        event(E.EVENT_TYPE_TIMER_CANCELED),
        event(E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED),
        event(E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED),
        reset,
        other_failure,
        event(E.EVENT_TYPE_NEXUS_OPERATION_SCHEDULED),
    ]
    assert count_actions(events) == {"timer": 1, "update": 1, "reset": 1, "nexus_operation": 1}
