"""A worked example of changing a workflow safely, on a tiny workflow defined here.

`ChangedFlow` v1 opens an account, waits, and goes live. v2 also sends a welcome pack after
opening the account: a new command, so it is behind `workflow.patched(WELCOME_PATCH)`.

- A run started under v1 replays on v2: `patched` is False where the history has no marker, and
  v2 takes the old path.
- A run started under v2 records the marker and takes the new path.
- v2 without the guard cannot replay a v1 history, and `posflow admin replay --file` names the
  event where the two part: this is what the check before a deploy catches.
- Rolling back to v1 once v2 runs exist is just as unsafe; v3 (`workflow.deprecate_patch`, the
  old path removed) is safe only once no v1 run is open.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

with workflow.unsafe.imports_passed_through():
    from typer.testing import CliRunner

    import cli.admin as admin
    from workers.temporal import data_converter

WELCOME_PATCH = "example-change"


class ChangedFlowStart(BaseModel):
    merchant: str
    wait: timedelta  # between opening the account and going live


@activity.defn
async def open_account(merchant: str) -> str:
    return f"ACC-{merchant}"


@activity.defn
async def send_welcome_pack(account: str) -> str:
    return f"welcome pack sent to {account}"


@activity.defn
async def go_live(account: str) -> str:
    return f"{account} live"


@activity.defn
async def open_merchant_account(merchant: str) -> str:
    return f"ACC-{merchant}"


ACTIVITIES = [open_account, send_welcome_pack, go_live]
STEP = timedelta(seconds=10)


@workflow.defn(name="ChangedFlow")
class ChangedFlowV1:
    @workflow.run
    async def run(self, start: ChangedFlowStart) -> str:
        account = await workflow.execute_activity(
            open_account, start.merchant, start_to_close_timeout=STEP
        )
        await workflow.sleep(start.wait)
        return await workflow.execute_activity(go_live, account, start_to_close_timeout=STEP)


@workflow.defn(name="ChangedFlow")
class ChangedFlowV2:
    """v1 plus a welcome pack, for runs started from now on: the safe change."""

    @workflow.run
    async def run(self, start: ChangedFlowStart) -> str:
        account = await workflow.execute_activity(
            open_account, start.merchant, start_to_close_timeout=STEP
        )
        if workflow.patched(WELCOME_PATCH):
            await workflow.execute_activity(send_welcome_pack, account, start_to_close_timeout=STEP)
        await workflow.sleep(start.wait)
        return await workflow.execute_activity(go_live, account, start_to_close_timeout=STEP)


@workflow.defn(name="ChangedFlow")
class ChangedFlowV2Unguarded:
    """The same change without the guard: runs started under v1 no longer replay."""

    @workflow.run
    async def run(self, start: ChangedFlowStart) -> str:
        account = await workflow.execute_activity(
            open_account, start.merchant, start_to_close_timeout=STEP
        )
        await workflow.execute_activity(send_welcome_pack, account, start_to_close_timeout=STEP)
        await workflow.sleep(start.wait)
        return await workflow.execute_activity(go_live, account, start_to_close_timeout=STEP)


@workflow.defn(name="ChangedFlow")
class ChangedFlowRenamed:
    """v1 with its first activity renamed: a different command too, however small it looks."""

    @workflow.run
    async def run(self, start: ChangedFlowStart) -> str:
        account = await workflow.execute_activity(
            open_merchant_account, start.merchant, start_to_close_timeout=STEP
        )
        await workflow.sleep(start.wait)
        return await workflow.execute_activity(go_live, account, start_to_close_timeout=STEP)


@workflow.defn(name="ChangedFlow")
class ChangedFlowV3:
    """Once no v1 run is open: the old path removed, the marker still written and accepted."""

    @workflow.run
    async def run(self, start: ChangedFlowStart) -> str:
        account = await workflow.execute_activity(
            open_account, start.merchant, start_to_close_timeout=STEP
        )
        workflow.deprecate_patch(WELCOME_PATCH)
        await workflow.execute_activity(send_welcome_pack, account, start_to_close_timeout=STEP)
        await workflow.sleep(start.wait)
        return await workflow.execute_activity(go_live, account, start_to_close_timeout=STEP)


# --- helpers -------------------------------------------------------------------------------------


async def record(env: WorkflowEnvironment, flow: type[Any], unit: timedelta) -> WorkflowHistory:
    """Run one `flow` to its end on `env` and return its history."""
    queue = f"changed-flow-{uuid.uuid4().hex[:8]}"
    async with Worker(env.client, task_queue=queue, workflows=[flow], activities=ACTIVITIES):
        handle = await env.client.start_workflow(
            "ChangedFlow",
            ChangedFlowStart(merchant="M1", wait=unit),
            id=f"changed-flow-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
            result_type=str,
        )
        assert (await handle.result()).endswith("live")
        return await handle.fetch_history()


async def replays_on(flow: type[Any], history: WorkflowHistory) -> Exception | None:
    replayer = Replayer(workflows=[flow], data_converter=data_converter())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    return result.replay_failure


def activities_of(history: WorkflowHistory) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def patch_markers(history: WorkflowHistory) -> list[str]:
    return [
        json.loads(e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)["id"]
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]


def export(history: WorkflowHistory, path: Path) -> Path:
    """Write `history` as the golden files and `temporal workflow show --output json` do."""
    data = json.loads(history.to_json())
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return path


@pytest.fixture
def replaying_against(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`posflow admin replay` against a ChangedFlow version instead of PosOnboarding."""

    def use(flow: type[Any]) -> None:
        monkeypatch.setattr(
            admin,
            "make_replayer",
            lambda: Replayer(
                workflows=[flow], data_converter=data_converter(), runtime=admin._quiet_runtime()
            ),
        )

    yield use


async def admin_replay(*args: str) -> Any:
    """`posflow admin replay ARGS`, in a thread: the command runs its own event loop."""
    return await asyncio.to_thread(CliRunner().invoke, admin.admin_app, ["replay", *args])


# --- the example ---------------------------------------------------------------------------------


async def test_a_v1_run_replays_on_v2_by_the_old_path(
    env: WorkflowEnvironment, unit: timedelta
) -> None:
    v1 = await record(env, ChangedFlowV1, unit)
    assert activities_of(v1) == ["open_account", "go_live"]
    assert patch_markers(v1) == []
    # No marker in the history: `patched` answers False and v2 issues v1's commands.
    assert await replays_on(ChangedFlowV2, v1) is None


async def test_a_v2_run_takes_the_new_path_and_records_the_marker(
    env: WorkflowEnvironment, unit: timedelta
) -> None:
    v2 = await record(env, ChangedFlowV2, unit)
    assert activities_of(v2) == ["open_account", "send_welcome_pack", "go_live"]
    assert patch_markers(v2) == [WELCOME_PATCH]
    assert await replays_on(ChangedFlowV2, v2) is None


async def test_the_change_without_the_guard_fails_on_a_v1_history_and_admin_replay_says_where(
    env: WorkflowEnvironment, unit: timedelta, tmp_path: Path, replaying_against: Any
) -> None:
    v1 = await record(env, ChangedFlowV1, unit)
    failure = await replays_on(ChangedFlowV2Unguarded, v1)
    assert type(failure).__name__ == "NondeterminismError"

    # Where v1 waited (its timer), the unguarded v2 schedules the welcome pack.
    timer = next(e for e in v1.events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED)
    path = export(v1, tmp_path / "changed_flow_v1.json")

    replaying_against(ChangedFlowV2Unguarded)
    result = await admin_replay("--file", str(path), "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert (report["replayed"], report["failed"]) == (1, 1)
    [failed] = report["failures"]
    assert failed["kind"] == "nondeterminism"
    assert failed["event_id"] == timer.event_id
    assert failed["event_type"] == "TimerStarted"
    assert failed["located_by"] == "sdk message"
    assert f"HistoryEvent(id: {timer.event_id}, TimerStarted)" in failed["why"]

    shown = await admin_replay("--file", str(path))
    assert shown.exit_code == 1
    assert f"does not replay at event {timer.event_id} (TimerStarted" in shown.stdout

    # With the guard, the same history passes the same check.
    replaying_against(ChangedFlowV2)
    guarded = await admin_replay("--file", str(path))
    assert guarded.exit_code == 0, guarded.output
    assert "reproduces its history" in guarded.stdout


async def test_a_rollback_to_v1_fails_on_v2_histories(
    env: WorkflowEnvironment, unit: timedelta, tmp_path: Path, replaying_against: Any
) -> None:
    v2 = await record(env, ChangedFlowV2, unit)
    assert await replays_on(ChangedFlowV1, v2) is not None

    marker = next(e for e in v2.events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED)
    replaying_against(ChangedFlowV1)
    result = await admin_replay("--file", str(export(v2, tmp_path / "v2.json")), "--json")
    assert result.exit_code == 1, result.output
    [failed] = json.loads(result.stdout)["failures"]
    # The SDK's message names the patch, not the event ("Non-deprecated patch marker
    # encountered for change example-change, ..."): the event is found by prefix replay.
    assert failed["kind"] == "nondeterminism"
    assert WELCOME_PATCH in failed["why"]
    assert (failed["event_id"], failed["located_by"]) == (marker.event_id, "prefix replay")
    assert failed["event"] == f"patch marker {WELCOME_PATCH!r}"


async def test_deprecating_the_patch_is_safe_once_no_v1_run_is_open(
    env: WorkflowEnvironment, unit: timedelta
) -> None:
    v1 = await record(env, ChangedFlowV1, unit)
    v2 = await record(env, ChangedFlowV2, unit)
    v3 = await record(env, ChangedFlowV3, unit)
    assert await replays_on(ChangedFlowV3, v2) is None
    assert await replays_on(ChangedFlowV3, v3) is None
    assert await replays_on(ChangedFlowV2, v3) is None  # a v3 run still replays on v2
    assert await replays_on(ChangedFlowV3, v1) is not None  # but a v1 run no longer does


async def test_renaming_an_activity_is_found_by_its_command(
    env: WorkflowEnvironment, unit: timedelta, tmp_path: Path, replaying_against: Any
) -> None:
    v1 = await record(env, ChangedFlowV1, unit)
    opened = next(
        e for e in v1.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    )
    replaying_against(ChangedFlowRenamed)
    result = await admin_replay("--file", str(export(v1, tmp_path / "v1.json")), "--json")
    assert result.exit_code == 1, result.output
    [failed] = json.loads(result.stdout)["failures"]
    # "Activity type of scheduled event 'open_account' does not match activity type of activity
    # command 'open_merchant_account'": no event id, the recorded command is found by its type.
    assert "open_merchant_account" in failed["why"]
    assert (failed["event_id"], failed["located_by"]) == (opened.event_id, "prefix replay")
    assert failed["event"] == "activity open_account"
