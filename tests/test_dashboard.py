"""The dashboard in a real browser (Debian's chromium driven by Playwright) against the real stack:
its numbers are checked against Temporal's visibility, an independent count of the same
workflows, and each page is kept as a screenshot under `artifacts/screenshots/`.

With `POSFLOW_DASHBOARD_URL` (and `TEMPORAL_ADDRESS`) set, the same checks run against a stack
already running, e.g. `make up` after `posflow demo --count 200`, instead of the test's own,
signed in with `POSFLOW_TOKEN` or the viewer token of the credentials file `posflow up` wrote.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Dialog, Page, async_playwright
from temporalio.client import Client

from gateway.app import GatewaySettings, create_app
from gateway.auth import COOKIE
from schemas.application import Application
from schemas.status import Stage
from tests.servers import serving
from tests.stack import TOKENS as STACK_TOKENS
from tests.stack import Stack, new_application
from workers.config import read_credentials
from workers.temporal import DATA_CONVERTER

SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root, where chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
]
IN_FLIGHT = [
    "collecting_documents",
    "site_survey",
    "in_review",
    "contract",
    "preparing_devices",
    "delivering",
    "activating",
    "training",
    "going_live",
    "closing",
]


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    path = os.environ.get("POSFLOW_CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(path):  # noqa: ASYNC240 (once per session)
        pytest.fail(f"no chromium at {path}: `apt-get install chromium` (.ci/run does)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        yield browser
        await browser.close()


@dataclass
class Target:
    url: str
    client: Client
    live: list[str]  # applications known to have gone live, with their MIDs in `mids`
    mids: dict[str, str]
    waiting: list[Application]  # in flight, waiting for documents
    token: str  # a viewer's: the dashboard and the API want one

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}
        )

    async def page(self, browser: Browser, **options: Any) -> Page:
        """A page of a browser signed in to the dashboard (its own context: its own cookie)."""
        context = await browser.new_context(**options)
        await context.add_cookies([{"name": COOKIE, "value": self.token, "url": self.url}])
        return await context.new_page()


def running_stack_token() -> str:
    token = os.environ.get("POSFLOW_TOKEN")
    if token:
        return token
    stored = read_credentials()
    assert stored is not None, "set POSFLOW_TOKEN or run from the directory of `posflow up`"
    return stored.tokens["viewer"]


@pytest.fixture(scope="session")
def own_stack(request: pytest.FixtureRequest) -> Stack | None:
    """The session's stack, unless the tests look at one already running."""
    if os.environ.get("POSFLOW_DASHBOARD_URL"):
        return None
    stack: Stack = request.getfixturevalue("stack")
    return stack


@pytest.fixture(scope="session")
async def target(own_stack: Stack | None) -> AsyncIterator[Target]:
    existing = os.environ.get("POSFLOW_DASHBOARD_URL")
    if own_stack is None:
        assert existing
        client = await Client.connect(
            os.environ.get("TEMPORAL_ADDRESS", "127.0.0.1:7233"), data_converter=DATA_CONVERTER
        )
        token = running_stack_token()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=existing, headers=headers) as http:
            rows = (await http.get("/api/applications", params={"stage": "live"})).json()
        yield Target(existing, client, [r["application_id"] for r in rows[:1]], {}, [], token)
        return
    stack = own_stack
    live = [new_application() for _ in range(2)]
    mids = [s["mid"] for s in await asyncio.gather(*(stack.go_live(app) for app in live))]
    waiting = [new_application() for _ in range(2)]
    for app in waiting:
        await stack.start(app)
    yield Target(
        str(stack.gateway.base_url).rstrip("/"),
        stack.client,
        [a.application_id for a in live],
        dict(zip([a.application_id for a in live], mids, strict=True)),
        waiting,
        STACK_TOKENS["viewer"],
    )


async def visibility_counts(client: Client) -> dict[str, int]:
    """Temporal's own count of onboarding workflows per stage (running ones, for stages in
    flight)."""
    counts: dict[str, int] = {}
    for stage in Stage:
        running = "ExecutionStatus = 'Running' AND " if stage.value in IN_FLIGHT else ""
        query = f"WorkflowType = 'PosOnboarding' AND {running}PosStage = '{stage.value}'"
        counts[stage.value] = (await client.count_workflows(query)).count
    return counts


async def projection_counts(target: Target) -> dict[str, int]:
    async with target.http() as http:
        overview = (await http.get("/api/overview", params={"days": 366})).json()
    return {**overview["in_flight"], **overview["outcomes"]}


async def settled_counts(target: Target) -> dict[str, int]:
    """The counts once the projection and visibility agree (both follow the workflows, each a
    moment behind); they must come to agree, or the two have drifted."""
    for _ in range(100):
        seen, projected = (await visibility_counts(target.client), await projection_counts(target))
        if all(projected.get(stage, 0) == n for stage, n in seen.items()):
            return seen
        await asyncio.sleep(0.2)
    raise AssertionError(f"projection {projected} never agreed with visibility {seen}")


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def number(text: str) -> int:
    match = re.search(r"\d+", text)
    assert match, text
    return int(match.group())


async def test_overview_shows_what_temporal_counts(browser: Browser, target: Target) -> None:
    counts = await settled_counts(target)
    page = await target.page(browser, viewport={"width": 1440, "height": 900})
    await page.goto(f"{target.url}/ui?days=90")
    in_flight = sum(counts[s] for s in IN_FLIGHT)
    assert number(await page.get_by_test_id("in-flight").inner_text()) == in_flight
    for outcome in ("live", "rejected", "expired", "cancelled"):
        shown = await page.get_by_test_id(f"outcome-{outcome}").inner_text()
        assert number(shown) == counts[outcome], outcome
    rows = await page.get_by_test_id("stage-counts").locator("tr").all_inner_texts()
    shown_stages = {
        r.rsplit(maxsplit=1)[0].replace(" ", "_"): int(r.rsplit(maxsplit=1)[1]) for r in rows
    }
    assert shown_stages == {s: counts[s] for s in IN_FLIGHT}
    assert await page.get_by_test_id("funnel").locator(".frow").count() == 10
    assert await page.get_by_test_id("time-in-stage").locator(".trow").count() >= 5
    await shot(page, "overview")
    wall = await target.page(browser, viewport={"width": 2560, "height": 1440})
    await wall.goto(f"{target.url}/ui?days=90")
    await shot(wall, "overview-wall-screen")
    await page.close()
    await wall.close()


async def test_filtered_list_and_search(browser: Browser, target: Target) -> None:
    counts = await settled_counts(target)
    page = await target.page(browser, viewport={"width": 1440, "height": 900})
    await page.goto(f"{target.url}/ui/applications?stage=live&sort=started")
    result = await page.get_by_test_id("result-count").inner_text()
    assert re.search(rf"of {counts['live']}\b", result), result
    stages = (
        await page.get_by_test_id("applications")
        .locator("tbody tr")
        .evaluate_all("rows => rows.map(r => r.dataset.stage)")
    )
    assert stages and set(stages) == {"live"}
    await shot(page, "applications-live")
    # The form's filters: waiting for documents and not overdue, then a search by id.
    await page.goto(f"{target.url}/ui/applications")
    await page.get_by_label("Stage").select_option("collecting_documents")
    await page.get_by_label("Overdue").select_option("false")
    await page.get_by_role("button", name="Apply").click()
    await page.wait_for_url(re.compile(r"stage=collecting_documents"))
    async with target.http() as http:
        expected = await http.get(
            "/api/applications", params={"stage": "collecting_documents", "overdue": "false"}
        )
    total = int(expected.headers["X-Total-Count"])
    shown = await page.get_by_test_id("result-count").inner_text()
    assert (f"of {total}" in shown) if total else ("No application" in shown), shown
    assert total <= counts["collecting_documents"]
    await shot(page, "applications-collecting-documents")
    wanted = target.live[0]
    await page.get_by_label("Search").fill(wanted)
    await page.get_by_label("Stage").select_option("")
    await page.get_by_label("Overdue").select_option("")
    await page.get_by_role("button", name="Apply").click()
    await page.wait_for_url(re.compile(rf"q={wanted}"))
    links = page.get_by_test_id("applications").locator("tbody tr a")
    assert await links.all_inner_texts() == [wanted]
    await page.close()


async def test_application_page_shows_the_whole_case(browser: Browser, target: Target) -> None:
    app_id = target.live[0]
    async with target.http() as http:
        status = (await http.get(f"/api/applications/{app_id}")).json()
    page = await target.page(browser, viewport={"width": 1440, "height": 900})
    await page.goto(f"{target.url}/ui/applications/{app_id}")
    assert (await page.get_by_test_id("stage").inner_text()).strip() == "live"
    summary = await page.get_by_test_id("summary").inner_text()
    assert status["mid"] in summary
    terminals = await page.get_by_test_id("terminals").inner_text()
    for terminal in status["terminals"]:
        assert terminal["serial"] in terminals and terminal["tid"] in terminals
    if status["shipment"]:  # by mail: the parcel's tracking number
        tracking = await page.get_by_test_id("tracking").inner_text()
        assert status["shipment"]["tracking_number"] in tracking
    else:  # installed on site: when the technician came
        installed = await page.get_by_test_id("installation").inner_text()
        assert "installed" in installed
    rounds = await page.get_by_test_id("review-rounds").inner_text()
    assert "approved" in rounds and status["review"]["rounds"][0]["reviewer"] in rounds
    timeline = await page.get_by_test_id("timeline").inner_text()
    assert "went live" in timeline and "stage entered" in timeline
    visits = await page.get_by_test_id("visits").locator("tbody tr").count()
    assert visits >= 8
    link = page.get_by_role("link", name=re.compile("Temporal Web UI"))
    assert (await link.get_attribute("href") or "").endswith(f"/workflows/pos-application-{app_id}")
    await shot(page, "application-live")
    await page.close()


async def test_personal_numbers_never_reach_the_page(
    browser: Browser, target: Target, own_stack: Stack | None
) -> None:
    if own_stack is None:
        pytest.skip("needs the test's own applications")
    stack = own_stack
    app = target.waiting[0]
    page = await target.page(browser)
    await page.goto(f"{target.url}/ui/applications/{app.application_id}")
    await stack.submit(app)  # the documents hold the full identity and account numbers
    await page.reload()
    html = await page.content()
    assert app.legal_representative.id_number not in html
    assert app.settlement_account.account_number not in html
    await page.close()


async def test_actions_follow_the_role_and_pages_refresh_themselves(
    browser: Browser, target: Target, own_stack: Stack | None
) -> None:
    """A second gateway on the same store and Temporal, with sign-in on: a viewer sees no
    withdraw button, an operator withdraws, and the open list page follows by itself."""
    if own_stack is None:
        pytest.skip("needs the test's own applications")
    stack = own_stack
    tokens = {"viewer-token": "viewer", "operator-token": "operator", "admin-token": "admin"}
    settings = GatewaySettings(
        database_url=f"sqlite:///{stack.home / 'gateway.db'}",
        task_queue="e2e",
        tokens=tokens,
        refresh_seconds=1,
    )
    app = target.waiting[-1]
    async with serving(create_app(stack.client, settings)) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/api/applications")).status_code == 401
            viewer_header = {"Authorization": "Bearer viewer-token"}
            assert (await http.get("/api/applications", headers=viewer_header)).is_success
            retry = await http.post(
                f"/api/admin/applications/{app.application_id}/retry",
                json={"request_id": "r1", "admin": "x"},
                headers=viewer_header,
            )
            assert retry.status_code == 403
        viewer = await browser.new_page()
        await viewer.goto(f"{url}/ui/applications/{app.application_id}")
        await viewer.wait_for_url(re.compile("/ui/login"))
        await shot(viewer, "sign-in")
        await viewer.get_by_label("Token").fill("viewer-token")
        await viewer.get_by_role("button", name="Sign in").click()
        await viewer.wait_for_url(re.compile(f"/ui/applications/{app.application_id}$"))
        assert await viewer.get_by_test_id("cancel").count() == 0
        # The viewer watches the withdrawn applications; the page refreshes on its own.
        await viewer.goto(f"{url}/ui/applications?q={app.application_id}&stage=cancelled")
        assert await viewer.get_by_test_id("applications").locator("tbody tr").count() == 0

        operator = await browser.new_page()
        await operator.goto(f"{url}/ui/login")
        await operator.get_by_label("Token").fill("operator-token")
        await operator.get_by_role("button", name="Sign in").click()
        await operator.goto(f"{url}/ui/applications/{app.application_id}")

        async def confirm(dialog: Dialog) -> None:
            await dialog.accept()

        operator.on("dialog", confirm)
        await operator.get_by_label("Reason").fill("merchant closed the shop")
        await operator.get_by_test_id("cancel").click()
        result = await operator.get_by_test_id("action-result").inner_text()
        assert result.startswith("cancel: applied"), result
        await shot(operator, "application-withdrawn")

        row = viewer.get_by_test_id("applications").locator("tbody tr")
        await row.first.wait_for(timeout=15_000)  # no reload: the page's own refresh shows it
        assert await row.locator("a").all_inner_texts() == [app.application_id]
        await viewer.close()
        await operator.close()
