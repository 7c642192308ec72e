"""The logistics service after go-live, over real HTTP: inspections (巡检) booked and reported to
the merchant's account, a merchant's replacement parcels, installations and returns with their
outcomes at the merchant's routes, the demo's inspectors and their markers, and the activities
that ask for them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import select
from temporalio.testing import ActivityEnvironment

from activities.http import ServiceClient
from activities.logistics import LogisticsActivities, logistics_activities
from schemas import steps
from schemas.application import Address
from schemas.merchant import InspectionResult
from schemas.messages import DeliveryOutcome
from services.logistics import LogisticsInspection, build
from tests.test_service_logistics import (
    ADDR,
    ADDRESS,
    Stack,
    config_for,
    new_key,
    running,
    until_status,
    where,
)

MID = "102110054110001"
MERCHANT = f"/api/merchants/{MID}"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running(tmp_path / "logistics.db") as stack:
        yield stack


def _inspection(street: str | None = None, **overrides: Any) -> dict[str, Any]:
    address = {**ADDR, "street": street} if street else ADDR
    body = {
        "application_id": "APP-1",
        "merchant_id": MID,
        "mid": MID,
        "address": address,
        "serials": ["SN1"],
        "reinspection": False,
        "due_by": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
    }
    return {**body, **overrides}


async def merchant_events(stack: Stack, mid: str = MID) -> list[dict[str, Any]]:
    response = await stack.http.get(f"/merchants/{mid}/events")
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


# --- inspections -----------------------------------------------------------------------------


async def test_an_inspection_is_booked_once_per_key(stack: Stack) -> None:
    key, body = new_key(), _inspection()
    first = await stack.post("/inspections", body, key)
    again = await stack.post("/inspections", body, key)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers["Idempotent-Replay"] == "true"
    booked = steps.InspectionBooked.model_validate(first.json())
    assert booked.inspection_id.startswith("INS-")
    lead = booked.scheduled_for - datetime.now(UTC)
    assert timedelta(hours=23) < lead <= timedelta(days=1)
    with stack.service.session() as session:
        rows = session.exec(select(LogisticsInspection)).all()
    assert [r.inspection_id for r in rows] == [booked.inspection_id]

    other = await stack.post("/inspections", {**body, "reinspection": True}, key)
    assert (other.status_code, other.json()["error"]) == (409, "idempotency_key_reused")

    shown = (await stack.http.get(f"/inspections/{booked.inspection_id}")).json()
    assert (shown["status"], shown["mid"], shown["serials"]) == ("booked", MID, ["SN1"])
    assert (await stack.http.get("/inspections/INS-NOPE")).status_code == 404


async def test_an_inspection_due_soon_is_booked_by_its_due_date(stack: Stack) -> None:
    due_by = datetime.now(UTC) + timedelta(hours=2)
    booked = await stack.ok("/inspections", _inspection(due_by=due_by.isoformat()))
    assert datetime.fromisoformat(booked["scheduled_for"]) <= due_by


async def test_an_inspection_for_a_malformed_or_other_merchant_is_refused(stack: Stack) -> None:
    bad_mid = await stack.post("/inspections", _inspection(mid="12345", merchant_id=None))
    assert bad_mid.status_code == 422
    assert "mid" in bad_mid.json()["fields"]
    mixed = await stack.post("/inspections", _inspection(merchant_id="102110054110002"))
    assert mixed.status_code == 422


async def test_a_reported_inspection_reaches_the_merchant_once(stack: Stack) -> None:
    ident = (await stack.ok("/inspections", _inspection()))["inspection_id"]
    report = {"passed": False, "inspector": "王工", "findings": ["未张贴受理标识"]}
    shown = await stack.ok(f"/inspections/{ident}/result", report)
    assert (shown["status"], shown["inspector"], shown["findings"]) == (
        "failed",
        "王工",
        ["未张贴受理标识"],
    )

    ((path, data),) = await stack.recorder.wait_for(1)
    assert stack.recorder.refused == []
    assert path == f"{MERCHANT}/inspection"
    result = InspectionResult.model_validate(data)
    assert (result.inspection_id, result.passed, result.inspector, result.findings) == (
        ident,
        False,
        "王工",
        ["未张贴受理标识"],
    )
    [event] = await merchant_events(stack)
    assert event["kind"] == "inspection"
    assert event["body"] == data  # the same message, with its id: a resend is a duplicate
    assert (await stack.http.get("/applications/APP-1/events")).json()["events"] == []

    twice = await stack.post(f"/inspections/{ident}/result", {**report, "passed": True})
    assert (twice.status_code, twice.json()["error"]) == (409, "inspection_closed")
    late = await stack.post(f"/inspections/{ident}/cancellation", {"reason": "closing"})
    assert (late.status_code, late.json()["error"]) == (409, "inspection_done")
    assert len(await merchant_events(stack)) == 1


async def test_a_cancelled_inspection_cannot_be_reported(stack: Stack) -> None:
    ident = (await stack.ok("/inspections", _inspection()))["inspection_id"]
    undone = steps.Undone.model_validate(
        await stack.ok(f"/inspections/{ident}/cancellation", {"reason": "account closing"})
    )
    assert undone.reference == ident
    again = await stack.ok(f"/inspections/{ident}/cancellation", {"reason": "account closing"})
    assert again["detail"] == "already cancelled"
    report = {"passed": True, "inspector": "王工"}
    late = await stack.post(f"/inspections/{ident}/result", report)
    assert late.status_code == 409
    shown = (await stack.http.get(f"/inspections/{ident}")).json()
    assert (shown["status"], shown["reason"]) == ("cancelled", "account closing")
    assert await merchant_events(stack) == []


async def test_an_inspection_report_with_unusable_text_is_refused(stack: Stack) -> None:
    ident = (await stack.ok("/inspections", _inspection()))["inspection_id"]
    for report in (
        {"passed": True, "inspector": "Li\u202eMing"},
        {"passed": False, "inspector": "王工", "findings": [" "]},
        {"passed": False, "inspector": "王工", "findings": ["x"] * 21},
    ):
        refused = await stack.post(f"/inspections/{ident}/result", report)
        assert refused.status_code == 422, report
    assert (await stack.http.get(f"/inspections/{ident}")).json()["status"] == "booked"


# --- a merchant's parcels, installations and returns -----------------------------------------


async def test_a_replacement_parcel_reports_its_delivery_to_the_merchant(stack: Stack) -> None:
    body = {
        "application_id": "APP-1",
        "merchant_id": MID,
        "address": ADDR,
        "recipient": "张三",
        "serials": ["SN-NEW"],
    }
    sid = (await stack.ok("/shipments", body))["shipment_id"]
    await stack.ok(f"/shipments/{sid}/scans", {"location": "北京顺义分拨中心"})
    await stack.ok(f"/shipments/{sid}/delivery", {"outcome": "delivered", "detail": "本人签收"})

    ((path, data),) = await stack.recorder.wait_for(1)
    # The scan called nobody back; the delivery went to the merchant, not the application.
    assert path == f"{MERCHANT}/delivery"
    outcome = DeliveryOutcome.model_validate(data)
    assert (outcome.reference, outcome.kind.value, outcome.detail) == (sid, "delivered", "本人签收")
    assert [e["kind"] for e in await merchant_events(stack)] == ["delivery"]
    assert (await stack.http.get("/applications/APP-1/events")).json()["events"] == []
    shown = (await stack.http.get(f"/shipments/{sid}")).json()
    assert shown["merchant_id"] == MID
    assert [e["status"] for e in shown["history"]] == ["created", "in_transit", "delivered"]
    assert await where(stack, "SN-NEW") == (False, sid)


async def test_a_replacement_installation_reports_to_the_merchant(stack: Stack) -> None:
    body = {
        "application_id": "APP-1",
        "merchant_id": MID,
        "address": ADDR,
        "contact": "李四",
        "serials": ["SN-NEW"],
    }
    aid = (await stack.ok("/installations", body))["appointment_id"]
    report = {"outcome": "installed", "technician": "王工", "detail": "换机完成"}
    await stack.ok(f"/installations/{aid}/completion", report)
    ((path, data),) = await stack.recorder.wait_for(1)
    assert path == f"{MERCHANT}/delivery"
    assert DeliveryOutcome.model_validate(data).kind.value == "installed"
    assert (await stack.http.get(f"/installations/{aid}")).json()["merchant_id"] == MID
    assert await where(stack, "SN-NEW") == (False, aid)


async def test_an_application_parcel_still_reports_to_the_application(stack: Stack) -> None:
    sid = (await stack.shipment())["shipment_id"]
    await stack.ok(f"/shipments/{sid}/scans", {"location": "北京"})
    await stack.ok(f"/shipments/{sid}/delivery", {"outcome": "delivered"})
    received = await stack.recorder.wait_for(2)
    assert [path for path, _ in received] == [
        "/api/applications/APP-1/shipment-scans",
        "/api/applications/APP-1/delivery",
    ]
    assert (await stack.http.get(f"/shipments/{sid}")).json()["merchant_id"] is None


async def test_a_faulty_unit_returned_by_the_merchant_is_back_on_the_shelf(stack: Stack) -> None:
    body = {
        "application_id": "APP-1",
        "merchant_id": MID,
        "serials": ["SN-OLD"],
        "address": ADDR,
        "reason": "faulty: screen dead",
    }
    rid = (await stack.ok("/returns", body))["return_id"]
    assert await where(stack, "SN-OLD") == (False, rid)  # with the merchant until it arrives
    await stack.ok(f"/shipments/{rid}/scans", {"location": "北京"})
    arrived = await stack.ok(f"/shipments/{rid}/delivery", {"outcome": "delivered"})
    assert (arrived["kind"], arrived["status"], arrived["merchant_id"]) == (
        "return",
        "delivered",
        MID,
    )
    assert await where(stack, "SN-OLD") == (True, rid)
    assert await merchant_events(stack) == []  # a return calls nobody back


async def test_a_merchant_id_that_is_not_a_mid_is_refused(stack: Stack) -> None:
    body = {
        "application_id": "APP-1",
        "merchant_id": "not-a-mid",
        "address": ADDR,
        "recipient": "张三",
        "serials": ["SN1"],
    }
    refused = await stack.post("/shipments", body)
    assert refused.status_code == 422
    assert "merchant_id" in refused.json()["fields"]


async def test_shipments_kept_by_an_older_version_still_load(tmp_path: Path) -> None:
    """A database from before `merchant_id`: the column is added at start-up, old rows read as
    the application's."""
    db = tmp_path / "old.db"
    async with running(db) as stack:
        sid = (await stack.shipment())["shipment_id"]
        body = {"application_id": "APP-2", "address": ADDR, "contact": "李四", "serials": ["SN2"]}
        aid = (await stack.ok("/installations", body))["appointment_id"]
        with stack.service.engine.begin() as connection:
            for table in ("logistics_shipments", "logistics_appointments"):
                connection.execute(text(f"ALTER TABLE {table} DROP COLUMN merchant_id"))
    service = build(config_for(db, "http://127.0.0.1:9"))
    try:
        with service.engine.connect() as connection:
            columns = connection.execute(text("PRAGMA table_info(logistics_shipments)")).all()
        assert "merchant_id" in {c[1] for c in columns}
    finally:
        service.engine.dispose()
    async with running(db) as stack:
        assert (await stack.http.get(f"/shipments/{sid}")).json()["merchant_id"] is None
        assert (await stack.http.get(f"/installations/{aid}")).json()["merchant_id"] is None
        await stack.ok(f"/shipments/{sid}/delivery", {"outcome": "delivered"})
        ((path, _),) = await stack.recorder.wait_for(1)
        assert path == "/api/applications/APP-1/delivery"


# --- the demo's auto-progress ------------------------------------------------------------------


async def test_auto_progress_inspects_by_the_street_markers(tmp_path: Path) -> None:
    options = {"auto_progress": "true", "auto_delay_ms": "40"}
    async with running(tmp_path / "auto.db", options=options) as stack:
        cases = {
            "plain": (ADDR["street"], False),
            "fail": ("中关村大街1号 [fail]", False),
            "fail again": ("中关村大街1号 [fail]", True),
            "fail once": ("中关村大街2号 [fail-once]", False),
            "put right": ("中关村大街2号 [fail-once]", True),
        }
        ids = {}
        for name, (street, reinspection) in cases.items():
            booked = await stack.ok("/inspections", _inspection(street, reinspection=reinspection))
            ids[booked["inspection_id"]] = name
        received = await stack.recorder.wait_for(len(cases))
        assert {path for path, _ in received} == {f"{MERCHANT}/inspection"}
        results = {ids[d["inspection_id"]]: InspectionResult.model_validate(d) for _, d in received}
        passed = {name: r.passed for name, r in results.items()}
        assert passed == {
            "plain": True,
            "fail": False,
            "fail again": False,
            "fail once": False,
            "put right": True,
        }
        assert results["fail"].findings and results["fail once"].findings
        for ident, name in ids.items():
            shown = (await stack.http.get(f"/inspections/{ident}")).json()
            assert shown["status"] == ("passed" if passed[name] else "failed")


async def test_auto_progress_moves_a_merchant_swap_and_its_return(tmp_path: Path) -> None:
    options = {"auto_progress": "true", "auto_delay_ms": "40"}
    async with running(tmp_path / "auto.db", options=options) as stack:
        merchant = {"application_id": "APP-1", "merchant_id": MID, "address": ADDR}
        sid = (
            await stack.ok("/shipments", {**merchant, "recipient": "张三", "serials": ["SN-NEW"]})
        )["shipment_id"]
        aid = (
            await stack.ok("/installations", {**merchant, "contact": "李四", "serials": ["SN-2"]})
        )["appointment_id"]
        rid = (await stack.ok("/returns", {**merchant, "serials": ["SN-OLD"], "reason": "faulty"}))[
            "return_id"
        ]

        received = await stack.recorder.wait_for(2)
        assert [path for path, _ in received] == [f"{MERCHANT}/delivery"] * 2
        outcomes = {d["reference"]: d["kind"] for _, d in received}
        assert outcomes == {sid: "delivered", aid: "installed"}
        await until_status(stack, rid, "delivered")
        assert await where(stack, "SN-OLD") == (True, rid)
        assert await where(stack, "SN-NEW") == (False, sid)


# --- the activities --------------------------------------------------------------------------


async def run(call: Any, request: Any) -> Any:
    return await ActivityEnvironment().run(call, request)


def _step(kind: type[steps.Step], merchant: bool, **fields: Any) -> Any:
    extra = {"merchant_id": MID} if merchant else {}
    return kind(idempotency_key=new_key(), application_id="APP-9", **extra, **fields)


async def test_activities_send_merchant_id_only_when_set() -> None:
    """An application's requests carry no `merchant_id` field; a merchant's carry the MID."""
    bodies: list[tuple[str, dict[str, Any]]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append((request.url.path, body))
        replies = {
            "/shipments": {"shipment_id": "SHP1", "carrier": "SF", "tracking_number": "SF1"},
            "/installations": {"appointment_id": "APT1", "scheduled_for": "2030-01-01T00:00Z"},
            "/returns": {"return_id": "RET1", "tracking_number": "SF2"},
        }
        return httpx.Response(201, json=replies[request.url.path])

    client = ServiceClient("logistics", "http://logistics", transport=httpx.MockTransport(answer))
    acts = LogisticsActivities(client)
    try:
        for merchant in (False, True):
            await run(
                acts.create_shipment,
                _step(
                    steps.CreateShipment, merchant, address=ADDRESS, recipient="张", serials=["S"]
                ),
            )
            await run(
                acts.book_installation,
                _step(
                    steps.BookInstallation, merchant, address=ADDRESS, contact="张", serials=["S"]
                ),
            )
            await run(
                acts.arrange_return,
                _step(steps.ArrangeReturn, merchant, serials=["S"], address=ADDRESS, reason="x"),
            )
    finally:
        await client.aclose()
    onboarding, after_go_live = bodies[:3], bodies[3:]
    assert all("merchant_id" not in body for _, body in onboarding)
    assert all(body["merchant_id"] == MID for _, body in after_go_live)
    assert all("idempotency_key" not in body for _, body in bodies)


async def test_merchant_activities_against_the_service(stack: Stack) -> None:
    acts = logistics_activities(stack.url)
    try:
        street = Address(**{**ADDR, "street": "中关村大街2号"})
        request = steps.BookInspection(
            idempotency_key=new_key(),
            application_id="APP-9",
            merchant_id=MID,
            mid=MID,
            address=street,
            serials=["SN9"],
            due_by=datetime.now(UTC) + timedelta(days=30),
        )
        booked = await run(acts.book_inspection, request)
        assert isinstance(booked, steps.InspectionBooked)
        assert await run(acts.book_inspection, request) == booked  # a retried activity

        shipped = await run(
            acts.create_shipment,
            _step(steps.CreateShipment, True, address=ADDRESS, recipient="张三", serials=["SN9"]),
        )
        returned = await run(
            acts.arrange_return,
            _step(steps.ArrangeReturn, True, serials=["SN8"], address=ADDRESS, reason="faulty"),
        )
        onboarding = await run(
            acts.create_shipment,
            _step(steps.CreateShipment, False, address=ADDRESS, recipient="张三", serials=["SN7"]),
        )
    finally:
        await acts.client.aclose()

    shown = (await stack.http.get(f"/inspections/{booked.inspection_id}")).json()
    assert (shown["mid"], shown["status"]) == (MID, "booked")
    ret = (await stack.http.get(f"/shipments/{returned.return_id}")).json()
    assert (ret["kind"], ret["merchant_id"]) == ("return", MID)
    assert (await stack.http.get(f"/shipments/{shipped.shipment_id}")).json()["merchant_id"] == MID
    own = (await stack.http.get(f"/shipments/{onboarding.shipment_id}")).json()
    assert own["merchant_id"] is None
    await stack.ok(f"/shipments/{shipped.shipment_id}/delivery", {"outcome": "delivered"})
    ((path, _),) = await stack.recorder.wait_for(1)
    assert path == f"{MERCHANT}/delivery"
