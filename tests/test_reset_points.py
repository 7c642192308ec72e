"""Where a reset to a stage goes (`workers.admin.stage_entries`), read from golden histories:
since the `snapshots-ride-with-steps` patch a stage's search-attribute upsert follows its first
steps, and the entry is found from the stage header of the first activity it scheduled."""

from __future__ import annotations

import json
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory

from schemas.status import Stage
from tests.scenario import HAPPY_PATH
from workers.admin import reset_point, stage_entries

GOLDEN = Path(__file__).parent / "golden"


def events(name: str) -> list[HistoryEvent]:
    text = (GOLDEN / name).read_text()
    return list(WorkflowHistory.from_json("golden", json.loads(text)).events)


def test_every_stage_is_entered_once_in_order_before_and_after_the_patch() -> None:
    for name in ("individual_mail_live.json", "before_riding/individual_mail_live.json"):
        assert [e.stage for e in stage_entries(events(name))] == list(HAPPY_PATH), name


def test_a_stage_starts_at_the_task_that_scheduled_its_first_step() -> None:
    history = events("individual_mail_live.json")
    point = reset_point(history, Stage.ACTIVATING)
    first_step = next(
        e
        for e in history
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name
        == "issue_activation_codes"
    )
    upsert = next(
        e
        for e in history
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
        and b"activating"
        in e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields[
            "PosStage"
        ].data
    )
    # The upsert comes once the codes are issued; the stage began in the task before.
    assert upsert.event_id > first_step.event_id
    assert point.entered_event_id == first_step.event_id
    assert (
        point.workflow_task_event_id
        == first_step.activity_task_scheduled_event_attributes.workflow_task_completed_event_id
    )


def test_before_the_patch_the_upsert_tells_the_entry() -> None:
    history = events("before_riding/individual_mail_live.json")
    point = reset_point(history, Stage.ACTIVATING)
    entered = next(e for e in history if e.event_id == point.entered_event_id)
    assert entered.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
