"""The real stack the end-to-end and browser tests share, once per session: a Temporal dev server,
the worker, the sandbox services over HTTP (the notification service among them) and the gateway."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client

from gateway.app import GatewaySettings, create_app
from schemas.application import Application
from services import device
from services.base import Service, ServiceConfig
from services.review import stable_bucket
from services.stack import Served, serve, stop_all
from tests.factories import individual_application, valid_documents
from tests.servers import PortHold, free_port
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
SERVICES = ("review", "contract", "device", "logistics", "notification")
# The stack's credentials, as `posflow up` generates them: ops tokens, a merchant key for every
# channel, and a signing secret per service and for the worker.
TOKENS = {"viewer": "e2e-viewer-token", "operator": "e2e-operator-token", "admin": "e2e-admin"}
MERCHANT_KEY = "e2e-merchant-key"
SECRETS = {name: f"e2e-{name}-secret" for name in (*SERVICES, "worker")}


@dataclass
class Stack:
    gateway: httpx.AsyncClient  # as operations: the admin token
    services: dict[str, Service]
    served: dict[str, Served]
    ports: dict[str, int]
    client: Client
    home: Path  # the session's state: each service's and the gateway's database
    worker_metrics: str  # the worker's Prometheus endpoint

    async def start(self, app: Application, policy: dict[str, Any] | None = None) -> None:
        """Started by an admin: only an admin may override the policy (`policy` on top of
        FAST_POLICY, e.g. a merchant's short year: `{"merchant": {"billing_period": ...}}`)."""
        body = {**app.model_dump(mode="json"), "policy": {**FAST_POLICY, **(policy or {})}}
        response = await self.gateway.post("/api/applications", json=body)
        assert response.status_code == 201, response.text

    async def submit(
        self, app: Application, documents: list[dict[str, Any]] | None = None
    ) -> httpx.Response:
        """The merchant files documents, with its key."""
        docs = documents or [d.model_dump(mode="json") for d in valid_documents(app)]
        return await self.gateway.post(
            f"/api/applications/{app.application_id}/documents",
            json={"submission_id": f"s-{uuid.uuid4().hex[:6]}", "documents": docs},
            headers={"X-Api-Key": MERCHANT_KEY},
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
        """The merchant enters each activation code on its terminal: the one it was just sent
        (a terminal back in stock from an earlier merchant keeps that merchant's used code)."""
        status = await self.until(app, "activating")
        device_url = self.served["device"].url
        async with httpx.AsyncClient(base_url=device_url) as http:
            for terminal in status["terminals"]:
                for _ in range(100):
                    with self.services["device"].session() as session:
                        code = session.exec(
                            select(device.ActivationCodeRow)
                            .where(
                                device.ActivationCodeRow.serial == terminal["serial"],
                                col(device.ActivationCodeRow.used_at).is_(None),
                                col(device.ActivationCodeRow.revoked_at).is_(None),
                            )
                            .order_by(col(device.ActivationCodeRow.id).desc())
                        ).first()
                    if code is not None:
                        break
                    await asyncio.sleep(0.05)
                assert code is not None
                response = await http.post(
                    f"/terminals/{terminal['serial']}/activation",
                    json={"code": code.code},
                    headers={"Idempotency-Key": f"activate-{terminal['serial']}-{code.id}"},
                )
                assert response.is_success, response.text

    async def go_live(
        self, app: Application, policy: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Start `app`, file its documents, activate its terminals; its status once live."""
        await self.start(app, policy)
        response = await self.submit(app)
        assert response.status_code == 200, response.text
        await self.activate_terminals(app)
        return await self.until(app, "live")

    async def restart(self, name: str) -> None:
        await stop_all([self.served[name]])
        self.served[name] = await serve(name, self.services[name].app, self.ports[name])


def new_application(**overrides: Any) -> Application:
    """An individual business the auto-reviewer approves in round 1 (`overrides`: top-level
    fields, e.g. `channel=Channel.BANK`)."""
    while True:
        app_id = f"E{uuid.uuid4().hex[:10].upper()}"
        if stable_bucket(app_id) != 0:
            return individual_application(application_id=app_id, **overrides)


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    home: Path = tmp_path_factory.mktemp("posflow")
    held = PortHold((*SERVICES, "gateway"))
    ports = held.ports
    gateway_url = f"http://127.0.0.1:{ports['gateway']}"
    saved = dict(os.environ)
    os.environ.update(
        {f"POSFLOW_{n.upper()}_URL": f"http://127.0.0.1:{ports[n]}" for n in SERVICES}
    )
    os.environ["POSFLOW_HOME"] = str(home)
    os.environ["POSFLOW_GATEWAY_URL"] = gateway_url
    os.environ["POSFLOW_WORKER_SECRET"] = SECRETS["worker"]  # the worker signs its snapshots
    server = DevServer(
        port=free_port(), ui_port=free_port(), headless=True, db_file=home / "temporal.db"
    )
    await server.start()
    settings = TemporalSettings(
        address=server.address, task_queue="e2e", metrics_address=f"127.0.0.1:{free_port()}"
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, ready=ready, stop=stop))
    await ready.wait()
    automation = {
        "review": {"auto_review": "true", "auto_review_delay_ms": "200"},
        # Bills are paid too: only a merchant whose policy bills within the session gets one.
        "contract": {
            "auto_sign": "true",
            "auto_sign_delay_ms": "200",
            "auto_pay_bills": "true",
            "auto_pay_delay_ms": "200",
        },
        "logistics": {"auto_progress": "true", "auto_delay_ms": "200"},
        "device": {"stock_per_model": "30"},
        "notification": {},
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
                callback_secret=SECRETS[name],
                options=automation[name],
            )
        )
        served[name] = await serve(name, services[name].app, held.release(name))
    client = await connect(settings)
    gateway_app = create_app(
        client,
        GatewaySettings(
            database_url=f"sqlite:///{home / 'gateway.db'}",
            task_queue="e2e",
            secrets=dict(SECRETS),
            tokens={token: role for role, token in TOKENS.items()},
            merchant_keys={MERCHANT_KEY: "all"},
        ),
    )
    served["gateway"] = await serve("gateway", gateway_app, held.release("gateway"))
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30, headers=admin) as http:
        yield Stack(
            http,
            services,
            served,
            ports,
            client,
            home,
            f"http://{settings.metrics_address}/metrics",
        )
    await stop_all(list(served.values()))
    stop.set()
    await worker
    await server.stop()
    os.environ.clear()
    os.environ.update(saved)
