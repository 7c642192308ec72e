"""End to end on one real stack per session: the Temporal dev server, the worker with its HTTP
activities, the four sandbox services and the gateway, all over real HTTP on loopback.

The review, contract and logistics services act on their own (as in the demo); the device
service does not, so each test decides when the merchant enters the activation code (read from
the device service's own records, as the merchant reads it from the SMS).
"""

from __future__ import annotations

import asyncio
import json

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import select

from services import device, logistics
from services.stack import serve, stop_all
from tests.factories import valid_documents
from tests.stack import Stack, new_application


async def test_an_application_goes_live_through_http_alone(stack: Stack) -> None:
    app = new_application()
    await stack.start(app)
    assert (await stack.submit(app)).status_code == 200
    await stack.activate_terminals(app)
    status = await stack.until(app, "live")
    assert status["mid"] and len(status["mid"]) == 15
    assert all(t["activated_at"] and t["test_transaction"] for t in status["terminals"])
    async with httpx.AsyncClient(base_url=stack.served["device"].url) as http:
        terminal = (await http.get(f"/terminals/{status['terminals'][0]['serial']}")).json()
    account = app.settlement_account
    assert terminal["bound_to"] == {
        "merchant_name": app.merchant.name,
        "settlement_holder": account.holder_name,
        "settlement_bank": account.bank_name,
        "settlement_account": f"****{account.account_number[-4:]}",
        "install_address": app.delivery_address().one_line(),
    }
    assert account.account_number not in json.dumps(terminal, ensure_ascii=False)
    # The list pages learn the ending from the workflow itself, before it completes.
    handle = stack.client.get_workflow_handle(app.workflow_id)
    await handle.result()
    rows = (await stack.gateway.get("/api/applications", params={"q": app.application_id})).json()
    assert [(r["stage"], r["mid"]) for r in rows] == [("live", status["mid"])]
    assert rows[0]["ended_at"] and not rows[0]["needs_attention"]
    messages = (await stack.gateway.get(f"/api/applications/{app.application_id}/messages")).json()
    kinds = {m["kind"] for m in messages if m["outcome"] == "applied"}
    assert {
        "documents",
        "review_decision",
        "contract_event",
        "delivery_outcome",
        "terminal_activated",
        "training_completed",
    } <= kinds


def samples(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


async def test_the_worker_and_the_gateway_count_what_happened(stack: Stack) -> None:
    async with httpx.AsyncClient() as http:
        before = (await http.get(stack.worker_metrics)).text
        app = new_application()
        await stack.go_live(app)
        await stack.client.get_workflow_handle(app.workflow_id).result()
        worker = (await http.get(stack.worker_metrics)).text
    channel = app.channel.value

    def went(text: str, **labels: str) -> float:
        return samples(text, "posflow_stage_transitions_total", channel=channel, **labels)

    # posflow's own stage metrics, recorded by the workflow through the SDK's meter...
    assert went(worker, to_stage="live") == went(before, to_stage="live") + 1
    assert went(worker, from_stage="training", to_stage="going_live") >= 1
    in_review = samples(
        worker, "posflow_time_in_stage_seconds_count", stage="in_review", channel=channel
    )
    assert in_review >= 1 + samples(
        before, "posflow_time_in_stage_seconds_count", stage="in_review", channel=channel
    )
    # ...beside the SDK's runtime metrics of the same worker.
    assert samples(worker, "temporal_workflow_completed_total", task_queue="e2e") >= 1
    assert samples(worker, "temporal_activity_execution_latency_count", task_queue="e2e") >= 10

    gateway = (await stack.gateway.get("/metrics")).text
    assert samples(gateway, "posflow_applications", stage="live") >= 1
    assert samples(gateway, "posflow_gateway_messages_total", kind="documents") >= 1
    assert samples(gateway, "posflow_gateway_request_seconds_count", route="/api/applications") >= 1


async def test_a_wrong_check_character_gets_422_and_the_application_waits(stack: Stack) -> None:
    app = new_application()
    await stack.start(app)
    docs = [d.model_dump(mode="json") for d in valid_documents(app)]
    card = next(d for d in docs if d["kind"] == "identity_card")
    card["number"] = card["number"][:-1] + ("1" if card["number"][-1] != "1" else "2")
    response = await stack.submit(app, docs)
    assert response.status_code == 422
    assert "documents.identity_card.number" in response.json()["fields"]
    await asyncio.sleep(1)
    status = await stack.status(app)
    assert status["stage"] == "collecting_documents"
    assert status["documents"]["outstanding"] == ["identity_card"]


async def test_cancel_after_delivery_releases_terminals_and_ships_them_back(stack: Stack) -> None:
    app = new_application()
    await stack.start(app)
    await stack.submit(app)
    status = await stack.until(app, "activating")
    serials = [t["serial"] for t in status["terminals"]]
    cancel = {"request_id": "cx-1", "reason": "shop closed", "requested_by": "merchant"}
    response = await stack.gateway.post(
        f"/api/applications/{app.application_id}/cancel", json=cancel
    )
    assert response.status_code == 200 and response.json()["outcome"] == "applied"
    await stack.until(app, "cancelled")
    # Released, the terminals are back in stock only once their return parcel (moved on by the
    # auto carrier) is delivered to the warehouse, and not before.
    for _ in range(150):
        with stack.services["device"].session() as session:
            terminals = session.exec(
                select(device.Terminal).where(device.Terminal.serial.in_(serials))  # type: ignore[attr-defined]
            ).all()
        with stack.services["logistics"].session() as session:
            returns = session.exec(
                select(logistics.LogisticsShipment).where(
                    logistics.LogisticsShipment.application_id == app.application_id,
                    logistics.LogisticsShipment.kind == "return",
                )
            ).all()
        statuses = {t.status for t in terminals}
        assert statuses <= {"returning", "in_stock"}
        if statuses == {"in_stock"}:
            break
        await asyncio.sleep(0.1)
    assert terminals and statuses == {"in_stock"}
    assert len(returns) == 1 and sorted(returns[0].serials) == sorted(serials)
    assert returns[0].status == "delivered"


async def test_a_service_that_is_down_makes_its_step_wait_then_succeed(stack: Stack) -> None:
    await stop_all([stack.served["device"]])
    app = new_application()
    await stack.start(app)
    await stack.submit(app)
    await stack.until(app, "preparing_devices")
    await asyncio.sleep(2)  # the reservation is being retried against a closed port
    status = await stack.status(app)
    assert status["stage"] == "preparing_devices" and status["attention"] is None
    stack.served["device"] = await serve(
        "device", stack.services["device"].app, stack.ports["device"]
    )
    status = await stack.until(app, "activating")
    assert status["mid"] is not None
