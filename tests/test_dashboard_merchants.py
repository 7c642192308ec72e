"""The dashboard's merchant pages over real HTTP, signed in by cookie: the list with its counts and
filters, one merchant's page (live from a stand-in `MerchantAccount` workflow, or the stored file
once the workflow is gone), the actions each role is offered, and the link from a live
application to its merchant."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.projection import ProjectionActivities
from gateway.app import create_app
from gateway.auth import COOKIE
from gateway.store import ApplicationRecord, Store
from schemas.merchant import AccountState, SuspensionReason, merchant_workflow_id
from schemas.status import AttentionKind
from tests.servers import serving
from tests.test_gateway_merchants import (
    ACCOUNT,
    ADMIN,
    OPERATOR,
    SECRETS,
    VIEWER,
    Bench,
    StandInMerchant,
    gateway_settings,
    merchant_status,
    mid_for,
    rebinding,
)


@pytest.fixture
async def bench(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Bench]:
    queue = f"merchant-pages-{uuid.uuid4().hex[:8]}"
    app = create_app(env.client, gateway_settings(tmp_path, queue))
    async with serving(app) as url:
        projection = ProjectionActivities(base_url=url, secret=SECRETS["worker"])
        async with (
            Worker(env.client, task_queue=queue, workflows=[StandInMerchant]),
            httpx.AsyncClient(base_url=url, timeout=20, cookies={COOKIE: VIEWER}) as http,
        ):
            yield Bench(url, app, env, queue, http, projection)
        await projection.aclose()


def signed_in(bench: Bench, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=bench.url, timeout=20, cookies={COOKIE: token})


def rows_of(page: str) -> list[str]:
    return re.findall(r'data-mid="([0-9]{15})"', page)


async def test_the_merchants_page_counts_filters_and_links_each_merchant(bench: Bench) -> None:
    active, suspended, closed = mid_for(31), mid_for(32), mid_for(33)
    await bench.project(merchant_status(active, name="Blue Tea"))
    await bench.project(
        merchant_status(
            suspended,
            name="Harbour [Cafe]",
            channel="alipay",
            state=AccountState.SUSPENDED,
            suspensions=[SuspensionReason.FEES],
            fees_due="1200.00",
            fees_overdue="1200.00",
            attention=AttentionKind.STEP_FAILED,
        )
    )
    await bench.project(
        merchant_status(closed, name="Old Market", state=AccountState.CLOSED, closed=True)
    )
    page = await bench.http.get("/ui/merchants")
    assert page.status_code == 200, page.text
    assert '<a href="/ui/merchants" aria-current="page">Merchants</a>' in page.text
    assert sorted(rows_of(page.text)) == [active, suspended, closed]
    assert f'href="/ui/merchants/{suspended}"' in page.text
    assert "Harbour [Cafe]" in page.text and "1200.00" in page.text
    counts = re.search(r'data-testid="merchant-counts".*?</section>', page.text, re.S)
    assert counts is not None
    figures = dict(re.findall(r'data-state="(\w+)"><span class="n">(\d+)</span>', counts.group()))
    assert figures == {"active": "1", "suspended": "1", "closing": "0", "closed": "1"}
    assert re.search(r'data-testid="count-fees-overdue"><span class="n">1<', counts.group())

    filtered = await bench.http.get("/ui/merchants", params={"suspension": "fees"})
    assert rows_of(filtered.text) == [suspended]
    searched = await bench.http.get("/ui/merchants", params={"q": "old market"})
    assert rows_of(searched.text) == [closed]
    refused = await bench.http.get("/ui/merchants", params={"state": "asleep"})
    assert refused.status_code == 422 and "<b>state</b>" in refused.text

    anonymous = httpx.AsyncClient(base_url=bench.url)
    async with anonymous:
        assert (await anonymous.get("/ui/merchants")).status_code == 303


async def test_a_merchant_page_shows_the_whole_account(bench: Bench) -> None:
    mid = mid_for(34)
    await bench.start(mid, attention=AttentionKind.STEP_FAILED)
    page = await bench.http.get(f"/ui/merchants/{mid}")
    assert page.status_code == 200, page.text
    html = page.text
    assert "Live From Workflow" in html  # from the status query
    assert 'data-testid="snapshot-notice"' not in html
    for shown in (
        "T0000002",  # the replacement's TID
        'data-serial="SN-OLD-1"',
        "SN-NEW-2",
        "returning",
        "**** 0128",  # bindings, last four only
        "**** 0123",
        "B-",  # a bill
        "terminal clean",  # the inspection's findings
        "R-QUEUED-1",
        "R-SERVING-1",
        "terminal replaced",  # an event
        f'href="/ui/applications/APP-{mid[-6:]}"',
    ):
        assert shown in html, shown
    retired = re.search(r'data-testid="retired-tids".*?</p>', html, re.S)
    assert retired is not None and "T0000001" in retired.group()
    # A viewer is offered no action.
    assert 'data-testid="close"' not in html and 'data-testid="retry"' not in html
    forbidden = await bench.http.post(f"/ui/merchants/{mid}/closure", data={"reason": "no"})
    assert forbidden.status_code == 403

    async with signed_in(bench, OPERATOR) as operator:
        html = (await operator.get(f"/ui/merchants/{mid}")).text
        assert 'data-testid="close"' in html and 'data-testid="fault"' in html
        assert 'data-testid="retry"' not in html  # admin only
        reported = await operator.post(
            f"/ui/merchants/{mid}/fault", data={"serial": "SN-NEW-2", "reason": "no signal"}
        )
        assert reported.status_code == 303
        after = await operator.get(reported.headers["location"])
        assert "report fault: applied" in after.text
    async with signed_in(bench, ADMIN) as admin:
        html = (await admin.get(f"/ui/merchants/{mid}")).text
        assert 'data-testid="retry"' in html
        retried = await admin.post(
            f"/ui/merchants/{mid}/retry", data={"reason": "service back", "step": "swap_terminal"}
        )
        after = await admin.get(retried.headers["location"])
        assert "retry: applied" in after.text
    kept = re.search(r'data-testid="messages".*?</table>', after.text, re.S)
    assert kept is not None
    assert "report fault" in kept.group() and "service back" in kept.group()


async def test_a_gone_workflow_shows_the_stored_file_and_never_a_full_account(bench: Bench) -> None:
    mid = mid_for(35)
    await bench.project(merchant_status(mid, version=4, name="Kept File"))  # no workflow
    async with httpx.AsyncClient(
        base_url=bench.url, headers={"X-Api-Key": "m-merchant-all"}
    ) as merchant:
        # A message that reached no workflow: refused, and kept masked.
        refused = await merchant.post(
            f"/api/merchants/{mid}/settlement-account", json=rebinding("rb-1")
        )
        assert refused.status_code == 409
    page = await bench.http.get(f"/ui/merchants/{mid}")
    assert page.status_code == 200
    assert 'data-testid="snapshot-notice"' in page.text and "Kept File" in page.text
    assert "version 4" in page.text
    assert ACCOUNT not in page.text and ACCOUNT[-4:] in page.text  # masked in the messages

    missing = await bench.http.get(f"/ui/merchants/{mid_for(36)}")
    assert missing.status_code == 404 and "No merchant" in missing.text
    malformed = await bench.http.get("/ui/merchants/12x")
    assert malformed.status_code == 404


async def test_a_live_application_links_to_its_merchant(bench: Bench) -> None:
    mid = mid_for(37)
    store: Store = bench.app.state.store
    store.record_application(
        ApplicationRecord(
            application_id="A-WENT-LIVE",
            workflow_id="pos-application-A-WENT-LIVE",
            channel="bank",
            merchant_type="individual",
            merchant_name="Old Market",
            stage="live",
            mid=mid,
        )
    )
    page = await bench.http.get("/ui/applications/A-WENT-LIVE")
    assert page.status_code == 200, page.text
    assert f'href="/ui/merchants/{mid}" data-testid="merchant-link"' in page.text
    assert merchant_workflow_id(mid) not in page.text
