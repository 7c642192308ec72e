"""Push, then pull: every service answers `GET /applications/{id}/events` with the messages it
recorded for that application, and the `read_service_events` activity reads them over HTTP."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import catalog
from activities.events import event_activities
from activities.http import path
from schemas import steps
from schemas.application import Address
from schemas.messages import ContractEvent, ContractEventKind
from services import contract, logistics
from services.base import ServiceConfig, callback_path, create_service
from tests.servers import CallbackRecorder, free_port, serving

ADDR = Address(province="北京市", city="北京市", district="海淀区", street="中关村大街1号")


def config(name: str, db: Path, gateway_url: str, **options: str) -> ServiceConfig:
    return ServiceConfig(
        name=name, database_url=f"sqlite:///{db}", gateway_url=gateway_url, options=options
    )


async def post(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await http.post(url, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert response.is_success, response.text
    data: dict[str, Any] = response.json()
    return data


async def events(http: httpx.AsyncClient, application_id: str) -> list[dict[str, Any]]:
    response = await http.get(path("applications", application_id, "events"))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["events"]
    return found


@asynccontextmanager
async def contract_service(
    db: Path, recorder: CallbackRecorder
) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(recorder.app) as gateway:
        service = contract.build(config("contract", db, gateway))
        async with serving(service.app) as url, httpx.AsyncClient(base_url=url) as http:
            yield http


async def sign_and_pay(http: httpx.AsyncClient, application_id: str, deposit: str = "0") -> str:
    issued = await post(
        http,
        "/contracts",
        {
            "application_id": application_id,
            "merchant_name": "杭州西湖小吃店",
            "channel": "bank",
            "deposit_amount": deposit,
            "device_model": "LKL-A8",
            "quantity": 1,
        },
    )
    cid = str(issued["contract_id"])
    await post(http, f"/contracts/{cid}/signature", {"signer_name": "王芳"})
    if deposit != "0":
        await post(
            http, f"/contracts/{cid}/payments", {"amount": deposit, "payment_reference": "P-1"}
        )
    return cid


# Ids that a careless LIKE or an unquoted path would mix up with one another.
LOOKALIKES = ("A_1", "AX1", "A%1", "A", "A/1", "A 1", "张三-1")


async def test_events_are_every_message_of_exactly_that_application(tmp_path: Path) -> None:
    recorder = CallbackRecorder()
    async with contract_service(tmp_path / "c.db", recorder) as http:
        contracts = {app: await sign_and_pay(http, app) for app in LOOKALIKES}
        paid = await sign_and_pay(http, "APP-PAID", deposit="99.00")
        await recorder.wait_for(len(LOOKALIKES) + 2)
        # A message recorded after the others were delivered: delivered or not, all are there.
        recorder.fail_first = 1_000
        await post(http, f"/contracts/{paid}/void", {"reason": "withdrawn"})
        before = datetime.now(UTC)
        later = await sign_and_pay(http, "APP-PAID")

        for app, cid in contracts.items():
            [event] = await events(http, app)
            assert event["kind"] == "contract"
            assert ContractEvent.model_validate(event["body"]).contract_id == cid
        found = steps.ServiceEvents.model_validate({"events": await events(http, "APP-PAID")})
        assert [e.kind for e in found.events] == ["contract"] * 3
        bodies = [ContractEvent.model_validate(e.body) for e in found.events]
        assert [(b.contract_id, b.kind) for b in bodies] == [
            (paid, ContractEventKind.SIGNED),
            (paid, ContractEventKind.DEPOSIT_PAID),
            (later, ContractEventKind.SIGNED),
        ]
        # The body is the callback as sent: the gateway saw the same message ids.
        sent = [b["event_id"] for p, b in recorder.received if p.endswith("/APP-PAID/contract")]
        assert [b.event_id for b in bodies[:2]] == sent
        assert found.events[2].recorded_at >= before - timedelta(seconds=1)
        assert all(e.recorded_at.tzinfo is not None for e in found.events)
        assert await events(http, "NOBODY") == []
        assert await events(http, "A_") == []  # a prefix of an id is not the id


async def test_events_are_the_service_own_even_in_a_shared_database(tmp_path: Path) -> None:
    """Under one `DATABASE_URL` every service's outbox is one table: each answers for itself."""
    db = tmp_path / "shared.db"
    recorder = CallbackRecorder()
    async with serving(recorder.app) as gateway:
        c = contract.build(config("contract", db, gateway))
        lg = logistics.build(config("logistics", db, gateway))
        async with (
            serving(c.app) as c_url,
            serving(lg.app) as l_url,
            httpx.AsyncClient(base_url=c_url) as c_http,
            httpx.AsyncClient(base_url=l_url) as l_http,
        ):
            await sign_and_pay(c_http, "APP-1")
            shipment = await post(
                l_http,
                "/shipments",
                {
                    "application_id": "APP-1",
                    "address": ADDR.model_dump(),
                    "recipient": "张三",
                    "serials": ["SN1"],
                },
            )
            sid = shipment["shipment_id"]
            await post(l_http, f"/shipments/{sid}/scans", {"location": "北京"})
            await post(l_http, f"/shipments/{sid}/delivery", {"outcome": "delivered"})
            assert [e["kind"] for e in await events(c_http, "APP-1")] == ["contract"]
            found = await events(l_http, "APP-1")
            assert [e["kind"] for e in found] == ["shipment-scans", "delivery"]
            assert found[1]["body"]["reference"] == sid


async def test_the_activity_reads_any_service_over_http(tmp_path: Path) -> None:
    recorder = CallbackRecorder(fail_first=1_000)  # nothing reaches the gateway: pull finds it
    async with serving(recorder.app) as gateway:
        c = contract.build(config("contract", tmp_path / "c.db", gateway))
        failing = create_service(
            ServiceConfig(
                name="device",
                database_url=f"sqlite:///{tmp_path / 'd.db'}",
                gateway_url=gateway,
                failure_rate=1.0,
            ),
            tables=[],
        )
        async with (
            serving(c.app) as c_url,
            serving(failing.app) as d_url,
            httpx.AsyncClient(base_url=c_url) as http,
        ):
            cid = await sign_and_pay(http, "APP/7")
            acts = event_activities(
                {"contract": c_url, "device": d_url, "review": f"http://127.0.0.1:{free_port()}"}
            )
            env = ActivityEnvironment()
            try:
                assert acts.read_service_events.__temporal_activity_definition.name == (  # type: ignore[attr-defined]
                    catalog.READ_SERVICE_EVENTS
                )
                read = await env.run(
                    acts.read_service_events,
                    steps.ReadServiceEvents(application_id="APP/7", service="contract"),
                )
                assert type(read) is steps.ServiceEvents
                [event] = read.events
                assert (event.kind, event.body["contract_id"]) == ("contract", cid)
                assert event.body["event_id"] == recorder_free_event_id(tmp_path, cid)

                for service in ("review", "device"):  # down, and answering 503
                    with pytest.raises(ApplicationError) as unavailable:
                        await env.run(
                            acts.read_service_events,
                            steps.ReadServiceEvents(application_id="APP/7", service=service),
                        )
                    assert unavailable.value.type == "ServiceUnavailable"
                    assert not unavailable.value.non_retryable

                with pytest.raises(ApplicationError) as unknown:
                    await env.run(
                        acts.read_service_events,
                        steps.ReadServiceEvents(application_id="APP/7", service="billing"),
                    )
                assert unknown.value.non_retryable and unknown.value.type == "unknown_service"
            finally:
                await acts.aclose()


def recorder_free_event_id(tmp_path: Path, contract_id: str) -> str:
    """The message id as the outbox holds it, read straight from the database."""
    with sqlite3.connect(tmp_path / "c.db") as db:
        [(body,)] = db.execute(
            "SELECT body FROM service_callbacks WHERE path = ?",
            (callback_path("APP/7", "contract"),),
        ).fetchall()
    event = ContractEvent.model_validate_json(body)
    assert event.contract_id == contract_id
    return event.event_id


async def test_an_outbox_from_before_recorded_at_is_upgraded_and_read(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as old:
        old.execute(
            "CREATE TABLE service_callbacks (id INTEGER PRIMARY KEY, service VARCHAR NOT NULL,"
            " path VARCHAR NOT NULL, body VARCHAR NOT NULL, attempts INTEGER NOT NULL,"
            " next_attempt_at DATETIME NOT NULL, delivered_at DATETIME, last_error VARCHAR"
            " NOT NULL)"
        )
        old.execute(
            "INSERT INTO service_callbacks VALUES (1, 'probe', '/api/applications/OLD/delivery',"
            " '{\"event_id\": \"e-1\"}', 1, '2024-05-01 08:00:00.000000', NULL, '')"
        )
    service = create_service(
        ServiceConfig(name="probe", database_url=f"sqlite:///{db}", gateway_url="http://x"),
        tables=[],
    )
    async with serving(service.app) as url, httpx.AsyncClient(base_url=url) as http:
        [event] = await events(http, "OLD")
    assert event == {
        "kind": "delivery",
        "body": {"event_id": "e-1"},
        "recorded_at": "2024-05-01T08:00:00Z",
    }
    # Building it again finds the column there.
    create_service(
        ServiceConfig(name="probe", database_url=f"sqlite:///{db}", gateway_url="http://x"),
        tables=[],
    )
