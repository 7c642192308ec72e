"""`posflow admin failures | retry | skip | extend | withdraw | reset` against the real gateway
over HTTP, on a real Temporal dev server with stand-in services that can be told to fail (the
stack of tests/test_admin_api.py, one per module).

The CLI is synchronous (the bulk actions run their own event loop), so it runs in a thread while
the gateway answers on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from typer.testing import CliRunner, Result

from activities import catalog
from cli.main import app
from schemas.status import Stage
from tests.scenario import Run
from tests.test_admin_api import ADMIN, VIEWER, AdminStack, admin_stack, entered_recently

__all__ = ["admin_stack"]  # the fixture, one stack for this module


async def cli(s: AdminStack, *args: str, **env: str) -> Result:
    """`posflow admin ARGS` with the admin token in POSFLOW_TOKEN, in a wide terminal."""
    environ: dict[str, str | None] = {
        "COLUMNS": "200",
        "POSFLOW_GATEWAY_URL": s.url,
        "POSFLOW_TOKEN": ADMIN,
        "POSFLOW_CREDENTIALS_FILE": None,
        "TEMPORAL_ADDRESS": s.client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": s.client.namespace,
        **env,
    }
    runner = CliRunner()
    return await asyncio.to_thread(lambda: runner.invoke(app, ["admin", *args], env=environ))


def parsed(result: Result) -> Any:
    assert result.stdout.strip(), result.output
    return json.loads(result.stdout)


async def parked_cases(s: AdminStack, count: int) -> list[Run]:
    """`count` applications parked on terminal registration, whose service keeps failing."""
    s.services.fail(catalog.REGISTER_TERMINALS)
    runs = [await s.start() for _ in range(count)]
    for run in runs:
        await run.to(Stage.PREPARING_DEVICES)
        await run.parked()
    await s.listed({r.app.application_id for r in runs}, kind="needs_attention")
    return runs


async def test_bulk_retry_over_the_failures_list_carries_every_parked_case_live(
    admin_stack: AdminStack,
) -> None:
    s = admin_stack
    runs = await parked_cases(s, 3)
    ids = {r.app.application_id for r in runs}
    filters = ("--kind", "needs_attention", "--stage", "preparing_devices")

    listed = await cli(s, "failures", *filters, "--json")
    assert listed.exit_code == 0, listed.output
    entries = {f["application_id"]: f for f in parsed(listed)["failures"]}
    assert ids <= set(entries)
    for app_id in ids:
        assert entries[app_id]["step"] == catalog.REGISTER_TERMINALS
        assert "503" in entries[app_id]["reason"]
        assert entered_recently(entries[app_id]["since"])
    table = await cli(s, "failures", *filters)
    assert table.exit_code == 0 and all(app_id in table.stdout for app_id in ids)
    assert catalog.REGISTER_TERMINALS in table.stdout

    # A dry run lists what would be touched and sends nothing: still parked, nothing kept.
    before = {app_id: len(await s.messages(app_id)) for app_id in ids}
    dry = await cli(s, "retry", *filters, "--reason", "device service back", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert all(app_id in dry.stdout for app_id in ids) and "nothing was sent" in dry.stdout
    dry_json = parsed(await cli(s, "retry", *filters, "--reason", "r", "--dry-run", "--json"))
    assert dry_json["dry_run"] is True and {c["outcome"] for c in dry_json["cases"]} == {""}
    by_query = await cli(
        s,
        "retry",
        "--query",
        "WorkflowType='PosOnboarding' AND ExecutionStatus='Running' AND PosNeedsAttention=true",
        "--reason",
        "r",
        "--dry-run",
        "--json",
    )
    assert by_query.exit_code == 0, by_query.output
    assert ids <= {c["application_id"] for c in parsed(by_query)["cases"]}
    await asyncio.sleep(0.5)
    for run in runs:
        assert (await run.status()).attention is not None
        assert len(await s.messages(run.app.application_id)) == before[run.app.application_id]

    # The service is back: one bulk retry over the failures list, at a bounded rate.
    s.services.heal(catalog.REGISTER_TERMINALS)
    done = await cli(
        s, "retry", *filters, "--reason", "device service back", "--rate", "20", "--json"
    )
    assert done.exit_code == 0, done.output
    report = parsed(done)
    cases = {c["application_id"]: c for c in report["cases"]}
    assert ids <= set(cases)
    assert all(cases[i]["outcome"] in ("applied", "pending") for i in ids), report
    assert report["summary"].get("applied", 0) + report["summary"].get("pending", 0) >= 3
    for run in runs:
        await run.to(Stage.LIVE)
        assert (await run.outcome()).stage is Stage.LIVE
        assert s.calls(run.app.application_id, catalog.REGISTER_TERMINALS) == 1
        kept = [m for m in await s.messages(run.app.application_id) if m["kind"] == "retry"]
        assert [(m["actor"], m["reason"]) for m in kept] == [("admin", "device service back")]
        assert kept[0]["message_id"].startswith(f"{report['batch']}:retry:")


async def test_a_refused_case_is_reported_and_the_exit_code_is_1(admin_stack: AdminStack) -> None:
    s = admin_stack
    parked = (await parked_cases(s, 1))[0]
    s.services.heal(catalog.REGISTER_TERMINALS)
    waiting = await s.start()
    await waiting.to(Stage.IN_REVIEW)  # waits on the reviewer: nothing to retry
    ids = [parked.app.application_id, waiting.app.application_id, "NO-SUCH-APP"]

    result = await cli(s, "retry", *ids, "--reason", "chasing everything", "--json")
    assert result.exit_code == 1, result.output
    report = parsed(result)
    cases = {c["application_id"]: c for c in report["cases"]}
    assert cases[parked.app.application_id]["outcome"] == "applied"
    assert cases[waiting.app.application_id]["outcome"] == "refused"
    assert cases[waiting.app.application_id]["status"] == 409
    assert "NotParked" in cases[waiting.app.application_id]["detail"]
    assert cases["NO-SUCH-APP"]["outcome"] == "refused" and cases["NO-SUCH-APP"]["status"] == 404
    assert report["summary"] == {"applied": 1, "refused": 2}

    # The table says the same, case by case, with a summary.
    again = await cli(s, "withdraw", waiting.app.application_id, "NO-SUCH-APP", "--reason", "dup")
    assert again.exit_code == 1
    assert "applied" in again.stdout and "refused" in again.stdout
    assert "unknown_application" in again.stdout and "1 refused or failed" in again.stdout
    assert (await waiting.outcome()).stage is Stage.CANCELLED
    withdrawn = [m for m in await s.messages(waiting.app.application_id) if m["actor"]]
    assert [(m["kind"], m["outcome"], m["reason"]) for m in withdrawn] == [
        ("retry", "refused", "chasing everything"),
        ("withdraw", "applied", "dup"),
    ]

    # Without --reason nothing is sent; without an admin token nothing is done.
    unexplained = await cli(s, "retry", parked.app.application_id)
    assert unexplained.exit_code == 2 and "--reason" in unexplained.output
    viewer = await cli(s, "retry", parked.app.application_id, "--reason", "x", POSFLOW_TOKEN=VIEWER)
    assert viewer.exit_code == 1 and "admin" in viewer.output
    await parked.to(Stage.LIVE)


async def test_reset_dry_run_shows_the_point_and_changes_nothing(admin_stack: AdminStack) -> None:
    s = admin_stack
    run = await s.start()
    await run.to(Stage.LIVE)
    await run.outcome()
    app_id = run.app.application_id
    before = (await run.handle.describe()).run_id

    shown = await cli(s, "reset", app_id, "--to-stage", "activating", "--reason", "x", "--dry-run")
    assert shown.exit_code == 0, shown.output
    assert (
        "reset point: workflow task event" in shown.stdout and "nothing was changed" in shown.stdout
    )
    point = parsed(
        await cli(
            s, "reset", app_id, "--to-stage", "activating", "--reason", "x", "--dry-run", "--json"
        )
    )
    assert point["status"] == "Completed" and point["stage"] == "activating"
    assert entered_recently(point["entered_at"])
    assert (await run.handle.describe()).run_id == before
    assert not [m for m in await s.messages(app_id) if m["kind"] == "reset"]

    never = await cli(s, "reset", app_id, "--to-stage", "site_survey", "--reason", "x")
    assert never.exit_code == 1 and "never entered stage site_survey" in never.output
    invalid = await cli(s, "reset", app_id, "--to-stage", "nowhere", "--reason", "x")
    assert invalid.exit_code == 2 and "--to-stage" in invalid.output
