"""The logistics service over real HTTP: shipments, returns, installations and trainings, their
signed callbacks to the gateway, idempotency, restarts, the demo's auto-progress, and the
activities that call it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.logistics import LogisticsActivities, logistics_activities
from schemas import steps
from schemas.application import Address
from schemas.messages import DeliveryOutcome, ShipmentScan, TrainingCompleted
from services.base import Callback, Service, ServiceConfig
from services.logistics import LogisticsShipment, build
from tests.servers import CallbackRecorder, free_port, serving

ADDRESS = Address(province="北京市", city="北京市", district="海淀区", street="中关村大街1号")
ADDR = ADDRESS.model_dump()


@dataclass
class Stack:
    url: str
    http: httpx.AsyncClient
    recorder: CallbackRecorder
    service: Service

    async def post(self, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        return await self.http.post(path, json=body, headers={"Idempotency-Key": key or new_key()})

    async def ok(self, path: str, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        response = await self.post(path, body, key)
        assert response.is_success, response.text
        data: dict[str, Any] = response.json()
        return data

    async def shipment(self, application_id: str = "APP-1") -> dict[str, Any]:
        return await self.ok(
            "/shipments",
            {
                "application_id": application_id,
                "address": ADDR,
                "recipient": "张三",
                "serials": ["SN1"],
            },
        )


def new_key() -> str:
    return uuid.uuid4().hex


def config_for(db: Path, gateway_url: str, **options: str) -> ServiceConfig:
    return ServiceConfig(
        name="logistics",
        database_url=f"sqlite:///{db}",
        gateway_url=gateway_url,
        options={"auto_progress": "false", **options},
    )


@asynccontextmanager
async def running(
    db: Path, recorder: CallbackRecorder | None = None, options: dict[str, str] | None = None
) -> AsyncIterator[Stack]:
    recorder = recorder or CallbackRecorder()
    async with serving(recorder.app) as gateway_url:
        service = build(config_for(db, gateway_url, **(options or {})))
        try:
            async with serving(service.app) as url, httpx.AsyncClient(base_url=url) as http:
                yield Stack(url, http, recorder, service)
        finally:
            service.engine.dispose()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running(tmp_path / "logistics.db") as stack:
        yield stack


def callbacks(stack: Stack, path_end: str) -> list[dict[str, Any]]:
    return [body for path, body in stack.recorder.received if path.endswith(path_end)]


async def test_shipment_is_scanned_and_delivered_with_signed_callbacks(stack: Stack) -> None:
    created = steps.ShipmentCreated.model_validate(await stack.shipment())
    assert created.carrier == "SF Express"
    assert created.tracking_number.startswith("SF") and len(created.tracking_number) == 14
    assert created.tracking_number[2:].isdigit()
    sid = created.shipment_id

    await stack.ok(
        f"/shipments/{sid}/scans", {"location": "北京顺义分拨中心", "description": "已揽收"}
    )
    delivered = await stack.ok(
        f"/shipments/{sid}/delivery", {"outcome": "delivered", "detail": "本人签收"}
    )
    assert delivered["status"] == "delivered"

    received = await stack.recorder.wait_for(2)
    assert stack.recorder.refused == []  # every callback carried a valid signature
    assert [path for path, _ in received] == [
        "/api/applications/APP-1/shipment-scans",
        "/api/applications/APP-1/delivery",
    ]
    scan = ShipmentScan.model_validate(received[0][1])
    assert (scan.shipment_id, scan.location) == (sid, "北京顺义分拨中心")
    outcome = DeliveryOutcome.model_validate(received[1][1])
    assert (outcome.reference, outcome.kind.value, outcome.detail) == (sid, "delivered", "本人签收")
    assert uuid.UUID(outcome.event_id)

    recall = await stack.post(f"/shipments/{sid}/recall", {"reason": "merchant withdrew"})
    assert recall.status_code == 409
    assert recall.json()["error"] == "shipment_delivered"
    again = await stack.post(f"/shipments/{sid}/delivery", {"outcome": "failed"})
    assert again.status_code == 409

    shown = (await stack.http.get(f"/shipments/{sid}")).json()
    assert [e["status"] for e in shown["history"]] == ["created", "in_transit", "delivered"]
    assert shown["history"][1]["location"] == "北京顺义分拨中心"


async def test_recalled_shipment_cannot_be_delivered(stack: Stack) -> None:
    sid = (await stack.shipment())["shipment_id"]
    undone = steps.Undone.model_validate(
        await stack.ok(f"/shipments/{sid}/recall", {"reason": "merchant withdrew"})
    )
    assert undone.reference == sid
    # Recalling again, even under another key, acknowledges rather than refuses.
    again = await stack.ok(f"/shipments/{sid}/recall", {"reason": "merchant withdrew"})
    assert again["reference"] == sid

    late = await stack.post(f"/shipments/{sid}/delivery", {"outcome": "delivered"})
    assert (late.status_code, late.json()["error"]) == (409, "shipment_recalled")
    scan = await stack.post(f"/shipments/{sid}/scans", {"location": "北京"})
    assert scan.status_code == 409
    shown = (await stack.http.get(f"/shipments/{sid}")).json()
    assert shown["status"] == "recalled"
    assert [e["status"] for e in shown["history"]] == ["created", "recalled"]


async def test_installation_booked_then_completed_then_not_cancellable(stack: Stack) -> None:
    body = {"application_id": "APP-2", "address": ADDR, "contact": "李四", "serials": ["SN2"]}
    booked = steps.InstallationBooked.model_validate(await stack.ok("/installations", body))
    lead = booked.scheduled_for - datetime.now(UTC)
    assert timedelta(hours=23) < lead <= timedelta(days=1)
    aid = booked.appointment_id

    report = {"outcome": "installed", "technician": "王工", "detail": "调试完成"}
    done = await stack.ok(f"/installations/{aid}/completion", report)
    assert (done["status"], done["performed_by"]) == ("done", "王工")
    (path, data), *_ = await stack.recorder.wait_for(1)
    assert path == "/api/applications/APP-2/delivery"
    outcome = DeliveryOutcome.model_validate(data)
    assert (outcome.reference, outcome.kind.value) == (aid, "installed")

    cancel = await stack.post(f"/installations/{aid}/cancel", {"reason": "withdrawn"})
    assert (cancel.status_code, cancel.json()["error"]) == (409, "installation_done")

    # A booked one is cancelled, and then cannot be completed.
    other = (await stack.ok("/installations", body))["appointment_id"]
    undone = await stack.ok(f"/installations/{other}/cancel", {"reason": "withdrawn"})
    assert undone["reference"] == other
    late = await stack.post(f"/installations/{other}/completion", report)
    assert late.status_code == 409


async def test_training_scheduled_then_completed(stack: Stack) -> None:
    body = {
        "application_id": "APP-3",
        "merchant_name": "张三便利店",
        "address": ADDR,
        "on_site": False,
    }
    scheduled = steps.TrainingScheduled.model_validate(await stack.ok("/trainings", body))
    assert scheduled.scheduled_for > datetime.now(UTC)
    session_id = scheduled.session_id

    topics = ["消费", "退货", "结算"]
    await stack.ok(f"/trainings/{session_id}/completion", {"trainer": "赵老师", "topics": topics})
    (path, data), *_ = await stack.recorder.wait_for(1)
    assert path == "/api/applications/APP-3/training"
    completed = TrainingCompleted.model_validate(data)
    assert (completed.session_id, completed.trainer, completed.topics) == (
        session_id,
        "赵老师",
        topics,
    )
    cancel = await stack.post(f"/trainings/{session_id}/cancel", {"reason": "withdrawn"})
    assert cancel.status_code == 409
    # An installation id is not a training session.
    unknown = await stack.post("/trainings/APT-NOPE/cancel", {"reason": "withdrawn"})
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")


async def test_a_training_in_two_sessions_calls_back_after_the_second(stack: Stack) -> None:
    body = {
        "application_id": "APP-4",
        "merchant_name": "好运来旗舰店",
        "address": ADDR,
        "on_site": True,
        "sessions": 2,
    }
    scheduled = steps.TrainingScheduled.model_validate(await stack.ok("/trainings", body))
    assert scheduled.sessions == 2
    sid = scheduled.session_id
    first = await stack.ok(
        f"/trainings/{sid}/completion", {"trainer": "赵老师", "topics": ["消费"]}
    )
    assert (first["status"], first["sessions_done"]) == ("booked", 1)
    assert first["scheduled_for"] > scheduled.scheduled_for.isoformat()  # the next session
    await asyncio.sleep(0.3)
    assert callbacks(stack, "/training") == []  # not trained yet
    last = await stack.ok(f"/trainings/{sid}/completion", {"trainer": "赵老师", "topics": ["结算"]})
    assert (last["status"], last["sessions_done"]) == ("done", 2)
    (path, data), *_ = await stack.recorder.wait_for(1)
    assert path == "/api/applications/APP-4/training"
    assert TrainingCompleted.model_validate(data).session_id == sid
    too_many = await stack.post(f"/trainings/{sid}/completion", {"trainer": "赵老师"})
    assert too_many.status_code == 409


async def test_a_pick_up_is_held_at_a_branch_then_collected(stack: Stack) -> None:
    body = {"application_id": "APP-5", "address": ADDR, "contact": "李四", "serials": ["SN9"]}
    held = steps.PickUpBooked.model_validate(await stack.ok("/pickups", body))
    assert held.branch == "北京市服务网点"
    assert len(held.pickup_code) == 6 and held.pickup_code.isdigit()
    view = (await stack.http.get(f"/pickups/{held.pickup_id}")).json()
    assert view["branch"] == held.branch and held.pickup_code not in str(view)
    where = (await stack.http.get("/whereabouts", params={"serial": "SN9"})).json()
    collected = await stack.ok(
        f"/pickups/{held.pickup_id}/collection", {"outcome": "collected", "clerk": "网点柜员"}
    )
    assert collected["status"] == "done"
    (path, data), *_ = await stack.recorder.wait_for(1)
    assert path == "/api/applications/APP-5/delivery"
    outcome = DeliveryOutcome.model_validate(data)
    assert (outcome.reference, outcome.kind.value) == (held.pickup_id, "delivered")
    after = (await stack.http.get("/whereabouts", params={"serial": "SN9"})).json()
    assert after != where  # the terminal left the warehouse with the merchant
    cancel = await stack.post(f"/pickups/{held.pickup_id}/cancel", {"reason": "withdrawn"})
    assert cancel.status_code == 409


async def test_a_pick_up_cancelled_is_not_collected(stack: Stack) -> None:
    body = {"application_id": "APP-6", "address": ADDR, "contact": "李四", "serials": ["SN8"]}
    held = steps.PickUpBooked.model_validate(await stack.ok("/pickups", body))
    undone = await stack.ok(f"/pickups/{held.pickup_id}/cancel", {"reason": "withdrawn"})
    assert undone["reference"] == held.pickup_id
    late = await stack.post(
        f"/pickups/{held.pickup_id}/collection", {"outcome": "collected", "clerk": "网点柜员"}
    )
    assert late.status_code == 409


async def test_idempotency_key_gives_one_shipment(stack: Stack) -> None:
    key = new_key()
    first = await stack.post("/shipments", _shipment_body(), key)
    second = await stack.post("/shipments", _shipment_body(), key)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replay"] == "true"
    with stack.service.session() as session:
        rows = session.exec(select(LogisticsShipment)).all()
    assert [r.tracking_number for r in rows] == [first.json()["tracking_number"]]

    changed = await stack.post("/shipments", _shipment_body(serials=["SN9"]), key)
    assert (changed.status_code, changed.json()["error"]) == (409, "idempotency_key_reused")
    keyless = await stack.http.post("/shipments", json=_shipment_body())
    assert keyless.status_code == 400

    invalid = await stack.post("/shipments", _shipment_body(serials=[]))
    assert invalid.status_code == 422
    assert invalid.json()["error"] == "invalid_request"
    assert "serials" in invalid.json()["fields"]
    assert (await stack.http.get("/shipments/SHP-NOPE")).status_code == 404


def _shipment_body(**overrides: Any) -> dict[str, Any]:
    body = {"application_id": "APP-4", "address": ADDR, "recipient": "张三", "serials": ["SN4"]}
    return {**body, **overrides}


async def test_callbacks_are_retried_until_accepted(tmp_path: Path) -> None:
    async with running(tmp_path / "l.db", recorder=CallbackRecorder(fail_first=2)) as stack:
        sid = (await stack.shipment())["shipment_id"]
        await stack.ok(f"/shipments/{sid}/scans", {"location": "北京"})
        (_, data), *_ = await stack.recorder.wait_for(1, seconds=10)
        assert data["shipment_id"] == sid
        # The gateway has it; the outbox records the delivery just after the answer.
        for _ in range(200):
            with stack.service.session() as session:
                (callback,) = session.exec(select(Callback)).all()
            if callback.delivered_at is not None:
                break
            await asyncio.sleep(0.05)
        assert callback.attempts == 3 and callback.delivered_at is not None
        assert len(stack.recorder.received) == 1


async def test_shipments_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "restart.db"
    async with running(db) as stack:
        sid = (await stack.shipment())["shipment_id"]
        await stack.ok(f"/shipments/{sid}/scans", {"location": "上海"})
        before = (await stack.http.get(f"/shipments/{sid}")).json()
    async with running(db) as stack:
        after = (await stack.http.get(f"/shipments/{sid}")).json()
        assert after == before
        assert [e["status"] for e in after["history"]] == ["created", "in_transit"]
        await stack.ok(f"/shipments/{sid}/delivery", {"outcome": "delivered"})


@pytest.mark.parametrize(("loss_rate", "outcome"), [("0", "delivered"), ("1", "failed")])
async def test_auto_progress_delivers_on_its_own(
    tmp_path: Path, loss_rate: str, outcome: str
) -> None:
    options = {"auto_progress": "true", "auto_delay_ms": "40", "loss_rate": loss_rate}
    async with running(tmp_path / "auto.db", options=options) as stack:
        sid = (await stack.shipment())["shipment_id"]
        await stack.ok(
            "/trainings",
            {
                "application_id": "APP-1",
                "merchant_name": "张三便利店",
                "address": ADDR,
                "on_site": True,
            },
        )
        received = await stack.recorder.wait_for(3)
        paths = sorted(path.rsplit("/", 1)[1] for path, _ in received)
        assert paths == ["delivery", "shipment-scans", "training"]
        (delivery,) = callbacks(stack, "/delivery")
        assert (delivery["reference"], delivery["kind"]) == (sid, outcome)
        shown = (await stack.http.get(f"/shipments/{sid}")).json()
        assert [e["status"] for e in shown["history"]][:3] == ["created", "in_transit", outcome]
        if outcome == "failed":  # an undeliverable parcel goes back to the warehouse on its own
            shown = await until_status(stack, sid, "returned")
            assert [e["status"] for e in shown["history"]] == [
                "created",
                "in_transit",
                "failed",
                "returned",
            ]
            assert await where(stack, "SN1") == (True, sid)


async def until_status(stack: Stack, shipment_id: str, status: str) -> dict[str, Any]:
    for _ in range(200):
        shown: dict[str, Any] = (await stack.http.get(f"/shipments/{shipment_id}")).json()
        if shown["status"] == status:
            return shown
        await asyncio.sleep(0.02)
    raise AssertionError(f"{shipment_id} never {status}: {shown['status']}")


async def where(stack: Stack, serial: str) -> tuple[bool, str | None]:
    """(at the warehouse, what moved it last) as logistics answers for one terminal."""
    response = await stack.http.get("/whereabouts", params={"serial": serial})
    assert response.status_code == 200, response.text
    [row] = response.json()["terminals"]
    assert row["serial"] == serial
    return row["at_warehouse"], row["reference"]


# --- where the terminals are: out in a parcel, with the merchant, back at the warehouse -------


async def test_a_return_puts_terminals_back_only_when_it_arrives(stack: Stack) -> None:
    assert await where(stack, "SN1") == (True, None)  # never shipped: on the shelf
    sid = (await stack.shipment())["shipment_id"]
    assert await where(stack, "SN1") == (False, sid)
    await stack.ok(f"/shipments/{sid}/delivery", {"outcome": "delivered"})
    assert await where(stack, "SN1") == (False, sid)

    ret = await stack.ok(
        "/returns",
        {"application_id": "APP-1", "serials": ["SN1"], "address": ADDR, "reason": "withdrawn"},
    )
    rid = ret["return_id"]
    assert await where(stack, "SN1") == (False, rid)  # booked is not back
    await stack.ok(f"/shipments/{rid}/scans", {"location": "北京"})
    assert await where(stack, "SN1") == (False, rid)
    await stack.ok(f"/shipments/{rid}/delivery", {"outcome": "delivered"})
    assert await where(stack, "SN1") == (True, rid)

    both = await stack.http.get("/whereabouts", params=[("serial", "SN1"), ("serial", "NEW-1")])
    rows = both.json()["terminals"]
    assert [(r["serial"], r["at_warehouse"]) for r in rows] == [("SN1", True), ("NEW-1", True)]
    assert rows[0]["detail"] == "returned to the warehouse" and rows[0]["since"]
    too_many = await stack.http.get(
        "/whereabouts", params=[("serial", f"S{i}") for i in range(501)]
    )
    assert too_many.status_code == 422
    assert (await stack.http.get("/whereabouts")).status_code == 422


async def test_a_recalled_parcel_is_back_when_it_arrives(stack: Stack) -> None:
    sid = (await stack.shipment())["shipment_id"]
    early = await stack.post(f"/shipments/{sid}/arrival", {})
    assert (early.status_code, early.json()["error"]) == (409, "not_coming_back")
    await stack.ok(f"/shipments/{sid}/recall", {"reason": "merchant withdrew"})
    assert await where(stack, "SN1") == (False, sid)  # recalled is on its way, not back

    arrived = await stack.ok(f"/shipments/{sid}/arrival", {"detail": "入库"})
    assert arrived["status"] == "returned"
    assert [e["status"] for e in arrived["history"]] == ["created", "recalled", "returned"]
    assert await where(stack, "SN1") == (True, sid)
    again = await stack.ok(f"/shipments/{sid}/arrival", {})
    assert again == arrived
    recall = await stack.ok(f"/shipments/{sid}/recall", {"reason": "again"})
    assert recall["detail"] == "already back at the warehouse"


async def test_a_parcel_arriving_back_moves_only_terminals_it_still_holds(stack: Stack) -> None:
    first = (await stack.shipment())["shipment_id"]
    await stack.ok(f"/shipments/{first}/delivery", {"outcome": "failed", "detail": "无人签收"})
    assert await where(stack, "SN1") == (False, first)  # undeliverable: coming back
    second = (await stack.shipment())["shipment_id"]  # shipped again meanwhile
    await stack.ok(f"/shipments/{first}/arrival", {})
    assert await where(stack, "SN1") == (False, second)
    # A delivered parcel, or a return, does not "arrive back".
    await stack.ok(f"/shipments/{second}/delivery", {"outcome": "delivered"})
    delivered = await stack.post(f"/shipments/{second}/arrival", {})
    assert (delivered.status_code, delivered.json()["error"]) == (409, "not_coming_back")


async def test_an_installed_terminal_is_with_the_merchant(stack: Stack) -> None:
    body = {"application_id": "APP-2", "address": ADDR, "contact": "李四", "serials": ["SN2"]}
    failed = (await stack.ok("/installations", body))["appointment_id"]
    report = {"outcome": "failed", "technician": "王工", "detail": "site not ready"}
    await stack.ok(f"/installations/{failed}/completion", report)
    assert await where(stack, "SN2") == (True, None)  # the technician brought it back
    done = (await stack.ok("/installations", body))["appointment_id"]
    assert await where(stack, "SN2") == (True, None)  # booked: still on the shelf
    await stack.ok(f"/installations/{done}/completion", {**report, "outcome": "installed"})
    assert await where(stack, "SN2") == (False, done)


async def test_auto_progress_brings_a_recalled_parcel_back(tmp_path: Path) -> None:
    options = {"auto_progress": "true", "auto_delay_ms": "40"}
    async with running(tmp_path / "auto.db", options=options) as stack:
        sid = (await stack.shipment())["shipment_id"]
        await stack.ok(f"/shipments/{sid}/recall", {"reason": "withdrawn"})
        shown = await until_status(stack, sid, "returned")
        assert [e["status"] for e in shown["history"]][-2:] == ["recalled", "returned"]
        assert await where(stack, "SN1") == (True, sid)
        ret = await stack.ok(
            "/returns",
            {"application_id": "APP-1", "serials": ["SN1"], "address": ADDR, "reason": "x"},
        )
        await until_status(stack, ret["return_id"], "delivered")
        assert await where(stack, "SN1") == (True, ret["return_id"])


# --- the activities --------------------------------------------------------------------------


async def run(call: Callable[..., Any], request: Any) -> Any:
    return await ActivityEnvironment().run(call, request)


def _step(kind: type[steps.Step], **fields: Any) -> Any:
    return kind(idempotency_key=new_key(), application_id="APP-9", **fields)


async def test_activities_against_the_service(stack: Stack) -> None:
    acts = logistics_activities(stack.url)
    try:
        request = _step(steps.CreateShipment, address=ADDRESS, recipient="张三", serials=["SN9"])
        shipped = await run(acts.create_shipment, request)
        assert isinstance(shipped, steps.ShipmentCreated)
        assert await run(acts.create_shipment, request) == shipped  # a retried activity

        recalled = await run(
            acts.recall_shipment,
            _step(steps.RecallShipment, shipment_id=shipped.shipment_id, reason="withdrawn"),
        )
        assert recalled.reference == shipped.shipment_id

        booked = await run(
            acts.book_installation,
            _step(steps.BookInstallation, address=ADDRESS, contact="张三", serials=["SN9"]),
        )
        cancelled = await run(
            acts.cancel_installation,
            _step(steps.CancelInstallation, appointment_id=booked.appointment_id, reason="x"),
        )
        assert cancelled.reference == booked.appointment_id

        returned = await run(
            acts.arrange_return,
            _step(steps.ArrangeReturn, serials=["SN9"], address=ADDRESS, reason="withdrawn"),
        )
        assert isinstance(returned, steps.ReturnArranged)
        assert returned.tracking_number != shipped.tracking_number
        await stack.ok(f"/shipments/{returned.return_id}/scans", {"location": "北京"})
        await stack.ok(f"/shipments/{returned.return_id}/delivery", {"outcome": "delivered"})

        training = await run(
            acts.schedule_training,
            _step(
                steps.ScheduleTraining, merchant_name="张三便利店", address=ADDRESS, on_site=True
            ),
        )
        undone = await run(
            acts.cancel_training,
            _step(steps.CancelTraining, session_id=training.session_id, reason="withdrawn"),
        )
        assert undone.reference == training.session_id

        # Delivered: a recall is refused for good (the workflow arranges a return instead).
        delivered = await run(
            acts.create_shipment,
            _step(steps.CreateShipment, address=ADDRESS, recipient="张三", serials=["SN8"]),
        )
        await stack.ok(f"/shipments/{delivered.shipment_id}/delivery", {"outcome": "delivered"})
        with pytest.raises(ApplicationError) as refused:
            await run(
                acts.recall_shipment,
                _step(steps.RecallShipment, shipment_id=delivered.shipment_id, reason="x"),
            )
        assert refused.value.non_retryable
        assert refused.value.type == "shipment_delivered"

        # Another application's shipment is not found.
        foreign = steps.RecallShipment(
            idempotency_key=new_key(),
            application_id="APP-OTHER",
            shipment_id=delivered.shipment_id,
            reason="x",
        )
        with pytest.raises(ApplicationError) as missing:
            await run(acts.recall_shipment, foreign)
        assert missing.value.type == "not_found"
    finally:
        await acts.client.aclose()

    # Returns call nobody back; the outbound delivery did.
    await stack.recorder.wait_for(1)
    assert [path for path, _ in stack.recorder.received] == ["/api/applications/APP-9/delivery"]


async def test_activity_on_a_closed_port_is_retryable() -> None:
    acts: LogisticsActivities = logistics_activities(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ApplicationError) as unavailable:
            await run(
                acts.create_shipment,
                _step(steps.CreateShipment, address=ADDRESS, recipient="张三", serials=["SN1"]),
            )
    finally:
        await acts.client.aclose()
    assert unavailable.value.type == "ServiceUnavailable"
    assert not unavailable.value.non_retryable


async def test_a_report_with_text_no_one_could_mean_is_refused_with_the_field() -> None:
    """A trainer's name with a bidi override or a NUL is a 422 naming the field, not a 500 when
    the callback message is built from it."""
    from services.logistics import TrainingReport

    for bad in ("Li\u202eMing", "Li\x00Ming", " \u3000 "):
        try:
            TrainingReport(trainer=bad)
        except ValueError as err:
            assert "trainer" in str(err)
        else:
            raise AssertionError(f"{bad!r} was accepted")
    assert TrainingReport(trainer=" 李明 ").trainer == "李明"
