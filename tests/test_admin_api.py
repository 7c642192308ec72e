"""The admin API and the dashboard's Attention page on a real Temporal dev server (visibility and
reset need one; the time-skipping server has neither): the gateway over HTTP, the real workflow,
stand-in services that can be told to fail, and snapshots reaching the gateway's store through
the real projection activity.

What an admin sees (`GET /api/admin/failures`: parked with the step, the reason and since when;
overdue; failed, timed out or terminated), what an admin does (retry, extend, withdraw, reset)
and that each action is kept in the application's messages with who and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities import catalog
from activities.projection import ProjectionActivities
from gateway.app import SIGNERS, GatewaySettings, create_app
from gateway.auth import COOKIE
from gateway.store import Store
from schemas.messages import ReviewOutcome
from schemas.policy import policy_for
from schemas.status import AttentionKind, Outcome, Stage
from tests.conftest import _binary
from tests.factories import individual_application
from tests.scenario import Run
from tests.servers import serving
from tests.standins import StandIns
from tests.test_admin_reset import BrokenOnboarding
from workers.temporal import INTERCEPTORS, build_worker, data_converter, register_search_attributes
from workflows import search_attributes as sa
from workflows.onboarding import PosOnboarding

ADMIN, OPERATOR, VIEWER = "admin-api-admin", "admin-api-operator", "admin-api-viewer"
TOKENS = {ADMIN: "admin", OPERATOR: "operator", VIEWER: "viewer"}
SECRETS = {s: f"{s}-admin-api-secret" for s in SIGNERS}
# Nothing waits long enough to fire during a test unless a test shortens it; a step that fails
# twice parks.
POLICY: dict[str, Any] = {
    "document_deadline": "PT300S",
    "document_reminders": ["PT200S"],
    "review_sla": "PT200S",
    "review_deadline": "PT300S",
    "site_survey_deadline": "PT300S",
    "contract_deadline": "PT300S",
    "contract_reminders": ["PT200S"],
    "mail_delivery_deadline": "PT300S",
    "installation_deadline": "PT300S",
    "activation_deadline": "PT300S",
    "activation_reminders": ["PT200S"],
    "training_deadline": "PT300S",
    "training_reminders": ["PT200S"],
    "activity_timeout": "PT10S",
    "activity_retry_interval": "PT0.05S",
    "activity_retry_max_interval": "PT0.1S",
    "activity_max_attempts": 2,
}

T = TypeVar("T")


@dataclass
class AdminStack:
    env: WorkflowEnvironment
    url: str
    http: httpx.AsyncClient  # with the admin token
    services: StandIns
    queue: str
    app: FastAPI
    projection: ProjectionActivities
    runs: list[Run] = field(default_factory=list)

    @property
    def client(self) -> Client:
        return self.env.client

    @property
    def store(self) -> Store:
        store: Store = self.app.state.store
        return store

    async def start(self, **policy: Any) -> Run:
        """An application started through the gateway by an admin (with a policy)."""
        app = individual_application(application_id=f"AD{uuid.uuid4().hex[:10].upper()}")
        overrides = {**POLICY, **policy}
        body = {**app.model_dump(mode="json"), "policy": overrides}
        response = await self.http.post("/api/applications", json=body)
        assert response.status_code == 201, response.text
        handle = self.client.get_workflow_handle_for(PosOnboarding.run, app.workflow_id)
        run = Run(self.env, handle, app, policy_for(app.channel, overrides))
        self.runs.append(run)
        return run

    async def failures(self, **params: str) -> dict[str, Any]:
        response = await self.http.get("/api/admin/failures", params=params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def listed(
        self, ids: set[str], seconds: float = 20, **params: str
    ) -> dict[str, dict[str, Any]]:
        """The failures list's entries for `ids`, once all of them are on it."""
        return await eventually(
            lambda: self._entries(ids, params), lambda got: set(got) == ids, seconds
        )

    async def _entries(self, ids: set[str], params: dict[str, str]) -> dict[str, Any]:
        data = await self.failures(limit="500", **params)
        return {f["application_id"]: f for f in data["failures"] if f["application_id"] in ids}

    async def act(self, verb: str, app_id: str, **body: Any) -> httpx.Response:
        body.setdefault("request_id", f"{verb}-{uuid.uuid4().hex[:8]}")
        return await self.http.post(f"/api/admin/applications/{app_id}/{verb}", json=body)

    async def messages(self, app_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"/api/applications/{app_id}/messages")
        assert response.status_code == 200, response.text
        return list(response.json())

    def calls(self, app_id: str, name: str) -> int:
        return sum(1 for c in self.services.calls if c.application_id == app_id and c.name == name)


async def eventually(
    read: Callable[[], Awaitable[T]], done: Callable[[T], bool], seconds: float = 20
) -> T:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + seconds
    while True:
        value = await read()
        if done(value) or loop.time() > give_up:
            assert done(value), f"not within {seconds} s: {value}"
            return value
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def admin_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AdminStack]:
    environment = await WorkflowEnvironment.start_local(
        data_converter=data_converter(),
        dev_server_existing_path=_binary("temporal"),
        dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal"],
    )
    await register_search_attributes(environment.client)
    home: Path = tmp_path_factory.mktemp("admin-api")
    queue = f"admin-{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(
        database_url=f"sqlite:///{home / 'gateway.db'}",
        task_queue=queue,
        secrets=dict(SECRETS),
        tokens=dict(TOKENS),
        merchant_keys={"admin-api-merchant": "all"},
    )
    app = create_app(environment.client, settings)
    async with serving(app) as url:
        projection = ProjectionActivities(base_url=url, secret=SECRETS["worker"])
        services = StandIns()
        activities = [*services.activities(projection=False), projection.project_status]
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with (
            build_worker(environment.client, queue, activities),
            httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http,
        ):
            stack = AdminStack(environment, url, http, services, queue, app, projection)
            yield stack
            for run in stack.runs:  # leave nothing running on the server
                with contextlib.suppress(RPCError):  # finished already
                    await run.handle.terminate(reason="test finished")
        await projection.aclose()
    await environment.shutdown()


def entered_recently(moment: str | None) -> bool:
    if not moment:
        return False
    return datetime.now(UTC) - datetime.fromisoformat(moment) < timedelta(minutes=2)


async def test_parked_cases_are_listed_with_their_step_and_retried(admin_stack: AdminStack) -> None:
    """A step whose service keeps failing parks the case; the failures list shows it with the
    step, the reason and since when; once the service is back an admin's retry carries it on
    to go-live, and the retry is in its messages with who and why."""
    s = admin_stack
    s.services.fail(catalog.REGISTER_TERMINALS)
    try:
        runs = [await s.start() for _ in range(2)]
        for run in runs:
            await run.to(Stage.PREPARING_DEVICES)
            await run.parked()
        ids = {r.app.application_id for r in runs}
        entries = await s.listed(ids, kind="needs_attention", stage="preparing_devices")
    finally:
        s.services.heal(catalog.REGISTER_TERMINALS)
    for run in runs:
        entry = entries[run.app.application_id]
        assert entry["kind"] == "needs_attention"
        assert entry["attention"] == AttentionKind.STEP_FAILED.value
        assert entry["step"] == catalog.REGISTER_TERMINALS
        assert "503" in entry["reason"]
        assert entered_recently(entry["since"])
        assert entry["stage"] == "preparing_devices" and entry["channel"] == run.app.channel.value
        assert entry["status"] == "Running"
        assert {"retry", "withdraw", "reset"} <= set(entry["actions"])
        assert "extend" not in entry["actions"]
    # The filters narrow the list; none of them lets a parked case pass as another kind.
    for params in (
        {"kind": "failed"},
        {"kind": "overdue"},
        {"stage": "delivering"},
        {"older_than": "PT1H"},
        {"channel": "bank" if runs[0].app.channel.value != "bank" else "tmall"},
    ):
        listed = {f["application_id"] for f in (await s.failures(**params))["failures"]}
        assert not ids & listed, params
    bad = await s.http.get("/api/admin/failures", params={"kind": "broken", "older_than": "soon"})
    assert bad.status_code == 422 and {"kind", "older_than"} <= set(bad.json()["fields"])

    first = runs[0]
    # Extending a failed step makes no sense: refused with the workflow's reason.
    refused = await s.act("extend", first.app.application_id, reason="more time", period="P1D")
    assert refused.status_code == 409 and "nothing to extend" in refused.json()["message"]
    # No reason, no action: 422 names the field, and the workflow never sees it.
    unexplained = await s.act("retry", first.app.application_id)
    assert unexplained.status_code == 422 and "reason" in unexplained.json()["fields"]
    for run in runs:
        app_id = run.app.application_id
        request_id = f"retry-{app_id}"
        done = await s.act("retry", app_id, request_id=request_id, reason="device service back")
        assert done.status_code == 200 and done.json()["outcome"] == "applied", done.text
        again = await s.act("retry", app_id, request_id=request_id, reason="double click")
        assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    for run in runs:
        await run.to(Stage.LIVE)
        assert (await run.outcome()).stage is Stage.LIVE
        assert s.calls(run.app.application_id, catalog.REGISTER_TERMINALS) == 1
    gone = await s.failures(kind="needs_attention")
    assert not ids & {f["application_id"] for f in gone["failures"]}

    kept = await s.messages(first.app.application_id)
    retries = [m for m in kept if m["kind"] == "retry"]
    assert [m["outcome"] for m in retries] == ["invalid", "applied", "duplicate"]
    assert all(m["source"] == "admin" and m["actor"] == "admin" for m in retries[1:])
    assert [m["reason"] for m in retries[1:]] == ["device service back", "double click"]
    extend = next(m for m in kept if m["kind"] == "extend")
    assert extend["outcome"] == "refused" and extend["actor"] == "admin"
    assert extend["reason"] == "more time" and extend["received_at"]


async def test_an_overdue_activation_extended_through_the_api_completes(
    admin_stack: AdminStack,
) -> None:
    s = admin_stack
    run = await s.start(activation_deadline="PT2S", activation_reminders=["PT1S"])
    app_id = run.app.application_id
    await run.to(Stage.ACTIVATING)
    await run.until(
        lambda st: (
            st.attention is not None and st.attention.kind is AttentionKind.ACTIVATION_OVERDUE
        ),
        "activation overdue",
        seconds=20,
    )
    # Parked past its deadline: listed as needing attention, and among the overdue ones too.
    entry = (await s.listed({app_id}, kind="needs_attention"))[app_id]
    assert entry["kind"] == "needs_attention" and entry["overdue"] is True
    assert entry["attention"] == "activation_overdue" and entry["step"] == "terminal_activation"
    assert {"retry", "extend"} <= set(entry["actions"])
    assert (await s.listed({app_id}, kind="overdue"))[app_id]["kind"] == "needs_attention"

    too_long = await s.act("extend", app_id, reason="merchant on holiday", period="P1000D")
    assert too_long.status_code == 422 and "period" in too_long.json()["fields"]
    extended = await s.act("extend", app_id, reason="merchant on holiday", period="PT5M")
    assert extended.status_code == 200 and extended.json()["outcome"] == "applied", extended.text
    status = await run.until(lambda st: st.attention is None, "extended")
    deadline = status.deadlines.stage_deadline
    assert deadline is not None and deadline > datetime.now(UTC) + timedelta(minutes=4)
    await run.activate_all()
    await run.train()
    assert (await run.outcome()).stage is Stage.LIVE

    kept = [m for m in await s.messages(app_id) if m["kind"] == "extend"]
    assert [(m["outcome"], m["actor"], m["reason"]) for m in kept] == [
        ("invalid", "", ""),  # refused before the route ran: who is not known yet
        ("applied", "admin", "merchant on holiday"),
    ]


async def test_failed_and_terminated_workflows_are_listed_and_a_reset_goes_live(
    admin_stack: AdminStack,
) -> None:
    """A run a bad deploy failed and one terminated by hand are listed under kind=failed with
    their channel and stage from the store; a reset through the API (its point read first)
    runs the failed one again from delivery on the fixed code, and it goes live with every
    step before delivery done once."""
    s = admin_stack
    broken_queue = f"broken-{uuid.uuid4().hex[:8]}"
    activities = [*s.services.activities(projection=False), s.projection.project_status]
    broken = Worker(
        s.client,
        task_queue=broken_queue,
        workflows=[BrokenOnboarding],
        activities=activities,
        interceptors=INTERCEPTORS,
    )
    failed_app = individual_application(application_id=f"AF{uuid.uuid4().hex[:10].upper()}")
    policy = policy_for(failed_app.channel, POLICY)
    async with broken:
        failed = await Run.start(s.env, broken_queue, failed_app, policy)
        await failed.to(Stage.PREPARING_DEVICES)
        with pytest.raises(WorkflowFailureError):
            await failed.handle.result()
    stuck = await s.start()
    await stuck.to(Stage.IN_REVIEW)
    # Visibility has the stage once the workflow waits for the review (after opening its case).
    assert await stuck.written(sa.STAGE.name, "in_review") == "in_review"
    await stuck.handle.terminate(reason="stuck after a data fix, terminated by ops")
    failed_id, stuck_id = failed_app.application_id, stuck.app.application_id

    entries = await s.listed({failed_id, stuck_id}, kind="failed")
    assert entries[failed_id]["status"] == "Failed"
    assert "a bug in the new delivery code" in entries[failed_id]["reason"]
    assert entries[failed_id]["stage"] == "delivering"
    assert entries[failed_id]["channel"] == failed_app.channel.value
    assert entries[failed_id]["actions"] == ["reset"] and entries[failed_id]["run_id"]
    assert entries[stuck_id]["status"] == "Terminated"
    assert entries[stuck_id]["reason"] == "stuck after a data fix, terminated by ops"
    assert entries[stuck_id]["stage"] == "in_review"
    narrowed = await s.failures(kind="failed", stage="in_review")
    assert stuck_id in {f["application_id"] for f in narrowed["failures"]}
    assert failed_id not in {f["application_id"] for f in narrowed["failures"]}
    # Listed as failed only, never again as parked or overdue from its stale row.
    everything = await s.failures(limit="500")
    assert [f["kind"] for f in everything["failures"] if f["application_id"] == failed_id] == [
        "failed"
    ]

    base = f"/api/admin/applications/{failed_id}"
    point = await s.http.get(f"{base}/reset-point", params={"to_stage": "delivering"})
    assert point.status_code == 200, point.text
    read = point.json()
    assert read["status"] == "Failed" and read["stage"] == "delivering"
    assert read["workflow_task_event_id"] < read["entered_event_id"]
    assert entered_recently(read["entered_at"])
    assert [e["stage"] for e in read["entries"]][-1] == "delivering"

    never = await s.act("reset", failed_id, to_stage="training", reason="wrong stage")
    assert never.status_code == 409 and "never entered stage training" in never.json()["message"]
    unknown = await s.act("reset", "NO-SUCH-APP", to_stage="delivering", reason="typo")
    assert unknown.status_code == 404
    unexplained = await s.act("reset", failed_id, to_stage="delivering")
    assert unexplained.status_code == 422 and "reason" in unexplained.json()["fields"]

    async with build_worker(s.client, broken_queue, activities):  # the fix is deployed
        done = await s.act(
            "reset", failed_id, request_id="reset-1", to_stage="delivering", reason="fixed in 1.2.1"
        )
        assert done.status_code == 200, done.text
        receipt = done.json()
        assert receipt["outcome"] == "applied" and receipt["new_run_id"] != receipt["old_run_id"]
        assert receipt["workflow_task_event_id"] == read["workflow_task_event_id"]
        again = await s.act(
            "reset", failed_id, request_id="reset-1", to_stage="delivering", reason="fixed in 1.2.1"
        )
        assert again.json()["outcome"] == "duplicate"
        assert again.json()["new_run_id"] == receipt["new_run_id"]
        # The gateway's handles name the workflow, not the run: the status follows the new run.
        status = await s.http.get(f"/api/applications/{failed_id}")
        assert status.status_code == 200 and status.json()["stage"] == "delivering"
        failed.handle = s.client.get_workflow_handle_for(
            PosOnboarding.run, failed_app.workflow_id, run_id=receipt["new_run_id"]
        )
        await failed.delivery()
        await failed.activate_all()
        await failed.train()
        outcome: Outcome = await failed.outcome()
    assert outcome.stage is Stage.LIVE
    for step in (
        catalog.OPEN_REVIEW_CASE,
        catalog.ISSUE_CONTRACT,
        catalog.RESERVE_TERMINALS,
        catalog.REGISTER_TERMINALS,
        catalog.CREATE_SHIPMENT,
        catalog.ENABLE_ACQUIRING,
    ):
        assert s.calls(failed_id, step) == 1, step
    await eventually(
        lambda: asyncio.to_thread(s.store.application, failed_id),
        lambda r: r is not None and r.stage == "live",
        seconds=10,
    )
    after = await s.failures(kind="failed")
    assert failed_id not in {f["application_id"] for f in after["failures"]}

    resets = [m for m in await s.messages(failed_id) if m["kind"] == "reset"]
    assert [m["outcome"] for m in resets] == ["refused", "invalid", "applied", "duplicate"]
    assert resets[0]["actor"] == "admin" and resets[0]["reason"] == "wrong stage"
    assert "never entered stage training" in resets[0]["detail"]
    assert resets[2]["actor"] == "admin" and resets[2]["reason"] == "fixed in 1.2.1"
    assert receipt["new_run_id"] in resets[2]["detail"]


async def test_the_attention_page_lists_cases_and_admins_act_from_it(
    admin_stack: AdminStack,
) -> None:
    s = admin_stack
    s.services.fail(catalog.ISSUE_CONTRACT)
    try:
        run = await s.start()
        await run.submit()
        await run.decide(ReviewOutcome.APPROVED)
        await run.parked()
    finally:
        s.services.heal(catalog.ISSUE_CONTRACT)
    app_id = run.app.application_id
    await s.listed({app_id}, kind="needs_attention")
    async with httpx.AsyncClient(base_url=s.url, cookies={COOKIE: ADMIN}) as admin_page:
        page = await admin_page.get("/ui/attention", params={"kind": "needs_attention"})
        assert page.status_code == 200
        assert app_id in page.text and catalog.ISSUE_CONTRACT in page.text
        assert f'data-testid="retry-{app_id}"' in page.text
        assert f'data-testid="withdraw-{app_id}"' in page.text
        bad = await admin_page.get("/ui/attention", params={"kind": "nonsense"})
        assert bad.status_code == 422 and "Filter not applied" in bad.text
        here = "/ui/attention?kind=needs_attention&page=1"
        unexplained = await admin_page.post(
            f"/ui/applications/{app_id}/withdraw", data={"next": here, "reason": " "}
        )
        assert unexplained.status_code == 303 and "not+sent" in unexplained.headers["location"]
        withdrawn = await admin_page.post(
            f"/ui/applications/{app_id}/withdraw",
            data={"next": here, "reason": "merchant closed the shop"},
        )
        assert withdrawn.status_code == 303
        assert withdrawn.headers["location"].startswith("/ui/attention?kind=needs_attention")
        shown = await admin_page.get(withdrawn.headers["location"])
        assert "withdraw: applied" in shown.text
        application = await admin_page.get(f"/ui/applications/{app_id}")
        assert "merchant closed the shop" in application.text  # the messages, with why
    async with httpx.AsyncClient(base_url=s.url, cookies={COOKIE: VIEWER}) as viewer_page:
        page = await viewer_page.get("/ui/attention")
        assert page.status_code == 200 and 'data-testid="retry-' not in page.text
        refused = await viewer_page.post(
            f"/ui/applications/{app_id}/withdraw", data={"reason": "x"}
        )
        assert refused.status_code == 403
    assert (await run.outcome()).stage is Stage.CANCELLED
    kept = [m for m in await s.messages(app_id) if m["kind"] == "withdraw"]
    assert [(m["outcome"], m["source"], m["actor"], m["reason"]) for m in kept] == [
        ("applied", "admin", "admin", "merchant closed the shop")
    ]


async def test_the_application_page_refreshes_without_a_query_while_nothing_changed(
    admin_stack: AdminStack,
) -> None:
    """The page's own refresh says what it shows (snapshot version and messages): unchanged,
    it is answered 204 and the workflow is not queried; after a change, the page comes anew."""
    s = admin_stack
    run = await s.start()
    await run.submit()
    app_id = run.app.application_id
    async with httpx.AsyncClient(base_url=s.url, cookies={COOKIE: VIEWER}) as page:
        # In review, waiting for a decision: nothing changes, so what the page shows holds.
        for _ in range(100):
            first = await page.get(f"/ui/applications/{app_id}")
            shown = re.search(r'data-shown="([^"]+)"', first.text)
            assert first.status_code == 200 and shown is not None
            refresh = {"X-Refresh": "1", "X-Shown": shown.group(1)}
            unchanged = await page.get(f"/ui/applications/{app_id}", headers=refresh)
            if "in_review" in first.text and unchanged.status_code == 204:
                break
            await asyncio.sleep(0.1)
        assert unchanged.status_code == 204 and unchanged.text == ""
        await run.decide(ReviewOutcome.APPROVED)
        for _ in range(100):
            changed = await page.get(f"/ui/applications/{app_id}", headers=refresh)
            if changed.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert changed.status_code == 200 and 'data-shown="' in changed.text
        assert f'data-shown="{shown.group(1)}"' not in changed.text
        # Asked for without the page's own header (a person's reload), it always comes anew.
        assert (await page.get(f"/ui/applications/{app_id}")).status_code == 200
