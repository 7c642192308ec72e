"""End to end on one real stack per session: the Temporal dev server, the worker with its HTTP
activities, the four sandbox services and the gateway, all over real HTTP on loopback.

The review, contract and logistics services act on their own (as in the demo); the device
service does not, so each test decides when the merchant enters the activation code (read from
the device service's own records, as the merchant reads it from the SMS).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.client import Client

from gateway.app import GatewaySettings, create_app
from schemas.application import Application
from services import device, logistics
from services.base import Service, ServiceConfig
from services.review import stable_bucket
from services.stack import Served, serve, stop_all
from tests.factories import individual_application, valid_documents
from tests.servers import free_port
from workers.config import TemporalSettings
from workers.dev_server import DevServer
from workers.main import run_worker
from workers.temporal import connect

FAST_POLICY = {
    "review_sla": "PT2M",
    "review_deadline": "PT5M",
    "contract_deadline": "PT5M",
    "contract_reminders": ["PT1M"],
    "mail_delivery_deadline": "PT5M",
    "installation_deadline": "PT5M",
    "activation_deadline": "PT5M",
    "activation_reminders": ["PT1M"],
    "training_deadline": "PT5M",
    "training_reminders": ["PT1M"],
    # A service that is down is retried for about 15 s before the case would park.
    "activity_retry_interval": "PT0.2S",
    "activity_retry_max_interval": "PT0.5S",
    "activity_max_attempts": 30,
}
SERVICES = ("review", "contract", "device", "logistics")


@dataclass
class Stack:
    gateway: httpx.AsyncClient
    services: dict[str, Service]
    served: dict[str, Served]
    ports: dict[str, int]
    client: Client

    async def start(self, app: Application) -> None:
        body = {**app.model_dump(mode="json"), "policy": FAST_POLICY}
        response = await self.gateway.post("/api/applications", json=body)
        assert response.status_code == 201, response.text

    async def submit(
        self, app: Application, documents: list[dict[str, Any]] | None = None
    ) -> httpx.Response:
        docs = documents or [d.model_dump(mode="json") for d in valid_documents(app)]
        return await self.gateway.post(
            f"/api/applications/{app.application_id}/documents",
            json={"submission_id": f"s-{uuid.uuid4().hex[:6]}", "documents": docs},
        )

    async def status(self, app: Application) -> dict[str, Any]:
        response = await self.gateway.get(f"/api/applications/{app.application_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def until(self, app: Application, stage: str, seconds: float = 30) -> dict[str, Any]:
        for _ in range(int(seconds / 0.1)):
            status = await self.status(app)
            if status["stage"] == stage:
                return status
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"{app.application_id} never reached {stage}: {status['stage']}, "
            f"attention {status['attention']}"
        )

    async def activate_terminals(self, app: Application) -> None:
        """The merchant enters each activation code on its terminal."""
        status = await self.until(app, "activating")
        device_url = self.served["device"].url
        async with httpx.AsyncClient(base_url=device_url) as http:
            for terminal in status["terminals"]:
                for _ in range(100):
                    with self.services["device"].session() as session:
                        code = session.exec(
                            select(device.ActivationCodeRow).where(
                                device.ActivationCodeRow.serial == terminal["serial"]
                            )
                        ).first()
                    if code is not None:
                        break
                    await asyncio.sleep(0.05)
                assert code is not None
                response = await http.post(
                    f"/terminals/{terminal['serial']}/activation",
                    json={"code": code.code},
                    headers={"Idempotency-Key": f"activate-{terminal['serial']}"},
                )
                assert response.is_success, response.text

    async def restart(self, name: str) -> None:
        await stop_all([self.served[name]])
        self.served[name] = await serve(name, self.services[name].app, self.ports[name])


def new_application() -> Application:
    """An individual business the auto-reviewer approves in round 1."""
    while True:
        app_id = f"E{uuid.uuid4().hex[:10].upper()}"
        if stable_bucket(app_id) != 0:
            return individual_application(application_id=app_id)


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    home: Path = tmp_path_factory.mktemp("posflow")
    ports = {name: free_port() for name in (*SERVICES, "gateway")}
    gateway_url = f"http://127.0.0.1:{ports['gateway']}"
    saved = dict(os.environ)
    os.environ.update(
        {f"POSFLOW_{n.upper()}_URL": f"http://127.0.0.1:{ports[n]}" for n in SERVICES}
    )
    os.environ["POSFLOW_HOME"] = str(home)
    os.environ["POSFLOW_GATEWAY_URL"] = gateway_url
    server = DevServer(
        port=free_port(), ui_port=free_port(), headless=True, db_file=home / "temporal.db"
    )
    await server.start()
    settings = TemporalSettings(address=server.address, task_queue="e2e")
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, ready=ready, stop=stop))
    await ready.wait()
    automation = {
        "review": {"auto_review": "true", "auto_review_delay_ms": "200"},
        "contract": {"auto_sign": "true", "auto_sign_delay_ms": "200"},
        "logistics": {"auto_progress": "true", "auto_delay_ms": "200"},
        "device": {"stock_per_model": "30"},
    }
    services: dict[str, Service] = {}
    served: dict[str, Served] = {}
    for name in SERVICES:
        module = __import__(f"services.{name}", fromlist=["build"])
        services[name] = module.build(
            ServiceConfig(
                name=name,
                database_url=f"sqlite:///{home / (name + '.db')}",
                gateway_url=gateway_url,
                options=automation[name],
            )
        )
        served[name] = await serve(name, services[name].app, ports[name])
    client = await connect(settings)
    gateway_app = create_app(
        client, GatewaySettings(database_url=f"sqlite:///{home / 'gateway.db'}", task_queue="e2e")
    )
    served["gateway"] = await serve("gateway", gateway_app, ports["gateway"])
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as http:
        yield Stack(http, services, served, ports, client)
    await stop_all(list(served.values()))
    stop.set()
    await worker
    await server.stop()
    os.environ.clear()
    os.environ.update(saved)


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
    with stack.services["device"].session() as session:
        terminals = session.exec(
            select(device.Terminal).where(device.Terminal.serial.in_(serials))
        ).all()  # type: ignore[attr-defined]
    assert terminals and all(t.status == "in_stock" for t in terminals)
    with stack.services["logistics"].session() as session:
        returns = session.exec(
            select(logistics.LogisticsShipment).where(
                logistics.LogisticsShipment.application_id == app.application_id,
                logistics.LogisticsShipment.kind == "return",
            )
        ).all()
    assert len(returns) == 1 and sorted(returns[0].serials) == sorted(serials)


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
