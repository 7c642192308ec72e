"""`posflow admin replay`: the golden histories through the command, one workflow and a visibility
query against a running server (a dev server: the time-skipping server has no visibility API),
and the ways it refuses to check anything."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker
from typer.testing import CliRunner, Result

import cli.admin as admin
from schemas.status import Stage
from tests.scenario import Bench, Run
from tests.standins import StandIns
from tests.test_patching import (
    ACTIVITIES,
    ChangedFlowStart,
    ChangedFlowV1,
    ChangedFlowV2,
    ChangedFlowV2Unguarded,
)
from workers.codec import KEYRING_ENV, KEYRING_FILE_ENV
from workers.temporal import build_worker, data_converter, register_search_attributes

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = sorted(GOLDEN_DIR.rglob("*.json"))
BIN = Path(sys.executable).parent

LIVE, IN_CONTRACT, COLLECTING = 3, 3, 6  # onboarding runs on the server, by where they are
CHANGED_FLOWS = 3  # ChangedFlow v1 runs waiting on their timer


def invoke(*args: str) -> Result:
    return CliRunner().invoke(admin.admin_app, ["replay", *args])


async def invoke_in_thread(*args: str) -> Result:
    """From an async test: the command runs its own event loop."""
    return await asyncio.to_thread(invoke, *args)


# --- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", GOLDEN, ids=[str(p.relative_to(GOLDEN_DIR)) for p in GOLDEN])
def test_each_golden_history_replays_through_the_command(path: Path) -> None:
    result = invoke("--file", str(path))
    assert result.exit_code == 0, result.output
    assert "reproduces its history" in result.stdout


def test_every_golden_history_in_one_run(capsys: pytest.CaptureFixture[str]) -> None:
    result = invoke("--file", str(GOLDEN_DIR), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["replayed"], report["failed"], report["failures"]) == (len(GOLDEN), 0, [])
    with capsys.disabled():
        print(
            f"\n{report['replayed']} golden histories in {report['seconds']} s: "
            f"{report['histories_per_second']} histories/s"
        )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "exactly one of"),
        (("some-app", "--file", "tests/golden"), "exactly one of"),
        (("--file", "tests/golden", "--limit", "3"), "--limit goes with --query"),
        (("--file", "tests/golden", "--run-id", "r1"), "--run-id goes with"),
        (("--file", "no/such/history.json"), "no such file or directory"),
    ],
    ids=["nothing", "two sources", "limit without query", "run id without id", "missing file"],
)
def test_nothing_to_check_is_exit_code_2(args: tuple[str, ...], says: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert says in result.stderr


def test_a_file_that_is_not_a_history_is_exit_code_2(tmp_path: Path) -> None:
    (tmp_path / "notes.json").write_text('{"events": "none"}')
    result = invoke("--file", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert "notes.json: not a workflow history" in result.stderr


def test_no_key_ring_is_exit_code_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEYRING_ENV)
    monkeypatch.setenv(KEYRING_FILE_ENV, str(tmp_path / "keyring.json"))
    result = invoke("--file", str(GOLDEN[0]))
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr


# --- a running server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_local(
        data_converter=data_converter(),
        dev_server_existing_path=str(BIN / "temporal"),
        dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal"],
    )
    await register_search_attributes(environment.client)
    yield environment
    await environment.shutdown()


async def settled(client: Client, query: str, count: int) -> None:
    """Visibility is eventually consistent: wait until `query` counts `count` workflows."""
    for _ in range(100):
        if (await client.count_workflows(query)).count == count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{query!r} never counted {count} workflows")


@pytest.fixture(scope="module")
async def onboarding(server: WorkflowEnvironment) -> AsyncIterator[list[Run]]:
    """Onboarding runs in several stages, some finished, with their worker still running."""
    services = StandIns()
    queue = f"admin-replay-{uuid.uuid4().hex[:8]}"
    async with build_worker(server.client, queue, services.activities()):
        bench = Bench(server, services, queue, timedelta(seconds=1))
        runs = [await bench.start() for _ in range(LIVE + IN_CONTRACT + COLLECTING)]
        await asyncio.gather(
            *(run.to(Stage.LIVE) for run in runs[:LIVE]),
            *(run.to(Stage.CONTRACT) for run in runs[LIVE : LIVE + IN_CONTRACT]),
        )
        await settled(server.client, "WorkflowType='PosOnboarding'", len(runs))
        await settled(
            server.client,
            "WorkflowType='PosOnboarding' AND ExecutionStatus='Running'",
            IN_CONTRACT + COLLECTING,
        )
        yield runs
        await bench.end_runs()


@pytest.fixture(scope="module")
async def changed_flows(server: WorkflowEnvironment) -> AsyncIterator[list[str]]:
    """ChangedFlow v1 runs, each waiting on its timer."""
    queue = f"changed-flow-{uuid.uuid4().hex[:8]}"
    ids = [f"changed-flow-{uuid.uuid4().hex[:8]}" for _ in range(CHANGED_FLOWS)]
    async with Worker(
        server.client, task_queue=queue, workflows=[ChangedFlowV1], activities=ACTIVITIES
    ):
        for workflow_id in ids:
            await server.client.start_workflow(
                "ChangedFlow",
                ChangedFlowStart(merchant="M1", wait=timedelta(hours=1)),
                id=workflow_id,
                task_queue=queue,
            )
        for workflow_id in ids:  # until each one waits on its timer
            handle = server.client.get_workflow_handle(workflow_id)
            for _ in range(100):
                events = [e.event_type async for e in handle.fetch_history_events()]
                if EventType.EVENT_TYPE_TIMER_STARTED in events:
                    break
                await asyncio.sleep(0.05)
        await settled(server.client, "WorkflowType='ChangedFlow'", CHANGED_FLOWS)
        yield ids


@pytest.fixture
def on_server(server: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", server.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", server.client.namespace)


@pytest.mark.usefixtures("on_server")
async def test_a_query_replays_every_workflow_it_selects(
    onboarding: list[Run], capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    result = await invoke_in_thread("--query", "WorkflowType='PosOnboarding'", "--json")
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["replayed"], report["failed"], report["skipped"]) == (len(onboarding), 0, [])
    with capsys.disabled():
        print(
            f"\n--query: {report['replayed']} onboarding histories from the dev server in "
            f"{report['seconds']} s: {report['histories_per_second']} histories/s "
            f"(the whole command: {seconds:.2f} s)"
        )


@pytest.mark.usefixtures("on_server")
async def test_a_query_for_what_is_in_flight(onboarding: list[Run]) -> None:
    query = "WorkflowType='PosOnboarding' AND ExecutionStatus='Running'"
    result = await invoke_in_thread("--query", query)
    assert result.exit_code == 0, result.output
    assert f"{IN_CONTRACT + COLLECTING} replayed, every history replays" in result.stdout

    limited = await invoke_in_thread("--query", query, "--limit", "2", "--json")
    assert json.loads(limited.stdout)["replayed"] == 2


@pytest.mark.usefixtures("on_server")
async def test_one_workflow_by_application_or_workflow_id(onboarding: list[Run]) -> None:
    run = onboarding[0]
    for given in (run.app.application_id, run.app.workflow_id):
        result = await invoke_in_thread(given)
        assert result.exit_code == 0, result.output
        assert f"{run.app.workflow_id}  run" in result.stdout
        assert "reproduces its history" in result.stdout

    missing = await invoke_in_thread("Tnosuchapp000")
    assert missing.exit_code == 2
    assert "no workflow pos-application-Tnosuchapp000" in missing.stderr


@pytest.mark.usefixtures("on_server")
async def test_a_query_the_server_refuses_is_exit_code_2(server: WorkflowEnvironment) -> None:
    result = await invoke_in_thread("--query", "NoSuchAttribute = 'x'")
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr


@pytest.mark.usefixtures("on_server")
async def test_a_query_lists_every_history_the_code_does_not_reproduce(
    changed_flows: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def replaying(flow: type[Any]) -> None:
        monkeypatch.setattr(
            admin,
            "make_replayer",
            lambda: Replayer(
                workflows=[flow], data_converter=data_converter(), runtime=admin._quiet_runtime()
            ),
        )

    replaying(ChangedFlowV2Unguarded)
    result = await invoke_in_thread("--query", "WorkflowType='ChangedFlow'", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert (report["replayed"], report["failed"]) == (CHANGED_FLOWS, CHANGED_FLOWS)
    assert {f["workflow_id"] for f in report["failures"]} == set(changed_flows)
    for failure in report["failures"]:
        assert (failure["kind"], failure["event_type"]) == ("nondeterminism", "TimerStarted")
        assert f"HistoryEvent(id: {failure['event_id']}, TimerStarted)" in failure["why"]

    shown = await invoke_in_thread("--query", "WorkflowType='ChangedFlow'")
    assert shown.exit_code == 1
    assert f"{CHANGED_FLOWS} replayed, {CHANGED_FLOWS} failed" in shown.stdout
    for workflow_id in changed_flows:
        assert workflow_id in shown.stdout

    replaying(ChangedFlowV2)  # the guarded change: safe to deploy over these runs
    guarded = await invoke_in_thread("--query", "WorkflowType='ChangedFlow'")
    assert guarded.exit_code == 0, guarded.output


# --- what a change to the code looks like ---------------------------------------------------------


def test_a_change_to_the_document_rules_changes_new_runs_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The required documents are captured when a run starts (runs started before that keep
    the frozen rules of their time): one more required document in today's rules leaves every
    open run replaying as it ran, while a broken frozen copy would be caught."""
    import activities.documents
    import workflows.case
    from schemas.documents import DocumentKind

    live = activities.documents.required_documents

    def one_more(app: Any, extra: Any = ()) -> list[DocumentKind]:
        kinds = {*live(app, extra), DocumentKind.TAX_REGISTRATION}
        return [kind for kind in DocumentKind if kind in kinds]

    monkeypatch.setattr(activities.documents, "required_documents", one_more)
    result = invoke("--file", str(GOLDEN_DIR), "--json")
    assert result.exit_code == 0, result.output

    frozen = workflows.case.required_documents_v1
    monkeypatch.setattr(
        workflows.case,
        "required_documents_v1",
        lambda app: [*frozen(app), DocumentKind.TAX_REGISTRATION],
    )
    result = invoke(
        "--file", str(GOLDEN_DIR / "before_notices" / "individual_mail_live.json"), "--json"
    )
    assert result.exit_code == 1, result.output
    [failed] = json.loads(result.stdout)["failures"]
    assert failed["kind"] == "nondeterminism"
    assert failed["stage"] == "collecting_documents"
    assert failed["event_type"] == "TimerCanceled"  # the reminder the history cancelled


def test_the_workflow_code_raising_is_shown_with_where_it_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import workflows.case

    def broken(app: Any) -> list[Any]:
        raise LookupError("no rule for this merchant type")

    monkeypatch.setattr(workflows.case, "required_documents_v1", broken)
    result = invoke("--file", str(GOLDEN_DIR / "before_notices" / "rejected.json"), "--json")
    assert result.exit_code == 1, result.output
    [failed] = json.loads(result.stdout)["failures"]
    assert failed["kind"] == "workflow_error"
    assert failed["why"] == "LookupError: no rule for this merchant type"
    assert failed["raised_at"].startswith("tests/test_admin_replay.py:")
    assert failed["raised_at"].endswith(" in broken")
    # The first workflow task already asks what is outstanding: it handles the start.
    assert (failed["event_id"], failed["event_type"]) == (1, "WorkflowExecutionStarted")
