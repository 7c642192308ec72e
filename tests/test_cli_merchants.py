"""`posflow merchants` against the real gateway over real HTTP, in front of the stand-in
`MerchantAccount` workflow (tests/test_gateway_merchants.py): the list with its counts and
filters, one merchant, its messages, and the actions with the roles they take. The CLI is
synchronous, so it runs in a thread while the gateway answers on the test's event loop."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from typer.testing import CliRunner, Result

from activities.projection import ProjectionActivities
from cli.main import app
from gateway.app import create_app
from schemas.merchant import AccountState, SuspensionReason
from tests.servers import serving
from tests.test_gateway_merchants import (
    ADMIN,
    OPERATOR,
    SECRETS,
    VIEWER,
    Bench,
    StandInMerchant,
    bearer,
    gateway_settings,
    merchant_status,
    mid_for,
)


@pytest.fixture
async def bench(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Bench]:
    queue = f"merchant-cli-{uuid.uuid4().hex[:8]}"
    served = create_app(env.client, gateway_settings(tmp_path, queue))
    async with serving(served) as url:
        projection = ProjectionActivities(base_url=url, secret=SECRETS["worker"])
        async with (
            Worker(env.client, task_queue=queue, workflows=[StandInMerchant]),
            httpx.AsyncClient(base_url=url, timeout=20, headers=bearer(VIEWER)) as http,
        ):
            yield Bench(url, served, env, queue, http, projection)
        await projection.aclose()


async def cli(bench: Bench, token: str | None, *args: str) -> Result:
    """`posflow merchants ARGS` in a wide terminal, with `token` (none: no credentials file
    either, so nothing is signed in)."""
    environ: dict[str, str | None] = {
        "COLUMNS": "220",
        "POSFLOW_GATEWAY_URL": bench.url,
        "POSFLOW_TOKEN": token,
        "POSFLOW_CREDENTIALS_FILE": "/nonexistent/credentials.json",
    }
    runner = CliRunner()
    return await asyncio.to_thread(lambda: runner.invoke(app, ["merchants", *args], env=environ))


async def test_list_shows_counts_filters_and_json(bench: Bench) -> None:
    active, suspended = mid_for(41), mid_for(42)
    await bench.project(merchant_status(active, name="Blue [Tea]"))
    await bench.project(
        merchant_status(
            suspended,
            name="Harbour Cafe",
            state=AccountState.SUSPENDED,
            suspensions=[SuspensionReason.FEES],
            fees_due="1200.00",
            fees_overdue="1200.00",
        )
    )
    listed = await cli(bench, VIEWER, "list")
    assert listed.exit_code == 0, listed.output
    assert active in listed.output and suspended in listed.output
    assert "Blue [Tea]" in listed.output  # never read as markup
    assert "suspended for fees 1" in listed.output and "fees overdue 1" in listed.output
    assert "showing 1–2 of 2" in listed.output

    only = await cli(bench, VIEWER, "list", "--fees-overdue", "--json")
    assert only.exit_code == 0, only.output
    data = json.loads(only.output)
    assert [m["mid"] for m in data["merchants"]] == [suspended] and data["total"] == 1
    assert data["counts"]["by_state"]["suspended"] == 1

    refused = await cli(bench, VIEWER, "list", "--state", "asleep")
    assert refused.exit_code == 2
    assert "state (--state)" in refused.output
    nobody = await cli(bench, None, "list")
    assert nobody.exit_code == 1 and "HTTP 401" in nobody.output


async def test_show_and_messages_and_actions_with_their_roles(bench: Bench) -> None:
    mid = mid_for(43)
    await bench.start(mid)
    shown = await cli(bench, VIEWER, "show", mid)
    assert shown.exit_code == 0, shown.output
    for text in ("Live From Workflow", "T0000002", "SN-OLD-1", "**** 0128", "T0000001"):
        assert text in shown.output, text

    # A viewer may not report a fault or close; an operator may.
    forbidden = await cli(bench, VIEWER, "close", mid, "--reason", "shop closed")
    assert forbidden.exit_code == 1 and "HTTP 403" in forbidden.output
    reported = await cli(
        bench,
        OPERATOR,
        "fault",
        mid,
        "SN-NEW-2",
        "--description",
        "no signal",
        "--request-id",
        "cli-f-1",
    )
    assert reported.exit_code == 0, reported.output
    assert "applied" in reported.output and "cli-f-1" in reported.output
    again = await cli(
        bench, OPERATOR, "fault", mid, "SN-NEW-2", "--request-id", "cli-f-1", "--json"
    )
    assert again.exit_code == 0 and json.loads(again.output)["outcome"] == "duplicate"
    refused = await cli(bench, OPERATOR, "fault", mid, "NOBODY")
    assert refused.exit_code == 1 and "HTTP 409" in refused.output
    not_admin = await cli(bench, OPERATOR, "retry", mid, "--reason", "service back")
    assert not_admin.exit_code == 1 and "HTTP 403" in not_admin.output
    retried = await cli(bench, ADMIN, "retry", mid, "--reason", "service back")
    assert retried.exit_code == 0, retried.output
    extended = await cli(bench, ADMIN, "extend", mid, "--reason", "strike", "--period", "P3D")
    assert extended.exit_code == 0, extended.output
    closed = await cli(bench, OPERATOR, "close", mid, "--reason", "shop closed")
    assert closed.exit_code == 0, closed.output

    kept = await cli(bench, VIEWER, "messages", mid, "--json")
    assert kept.exit_code == 0, kept.output
    assert [(m["kind"], m["outcome"]) for m in json.loads(kept.output)] == [
        ("report_fault", "applied"),
        ("report_fault", "duplicate"),
        ("report_fault", "refused"),
        ("retry", "applied"),
        ("extend", "applied"),
        ("request_closure", "applied"),
    ]
    table = await cli(bench, VIEWER, "messages", mid)
    assert "request_closure" in table.output and "shop closed" in table.output

    unknown = await cli(bench, VIEWER, "show", mid_for(49))
    assert unknown.exit_code == 1 and "HTTP 404" in unknown.output
