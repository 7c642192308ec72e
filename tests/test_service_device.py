"""The device service over real HTTP: inventory, reservations under concurrency, MID/TID
registration and retirement, activation with its signed callback, test transactions, acquiring,
released terminals back in stock once logistics has them at the warehouse, restarts, and the
activities that call it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.device import DeviceActivities, device_activities
from activities.http import ServiceClient
from schemas import steps
from schemas.identifiers import check_mid, check_tid
from schemas.messages import TerminalActivated
from services import logistics
from services.base import Callback, ServiceConfig
from services.device import build
from tests.servers import CallbackRecorder, free_port, serving

A8 = "LKL-A8"


@dataclass
class Device:
    url: str
    http: httpx.AsyncClient
    config: ServiceConfig

    async def post(self, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        return await self.http.post(
            path, json=body, headers={"Idempotency-Key": key or uuid.uuid4().hex}
        )

    async def reserve(self, application_id: str, quantity: int = 1, model: str = A8) -> Any:
        response = await self.post(
            "/reservations",
            {"application_id": application_id, "model": model, "quantity": quantity},
        )
        assert response.status_code == 201, response.text
        return response.json()

    async def register(self, application_id: str, reservation: dict[str, Any]) -> Any:
        response = await self.post(
            f"/reservations/{reservation['reservation_id']}/registration",
            {
                "application_id": application_id,
                "merchant_name": f"Shop {application_id}",
                "serials": reservation["serials"],
            },
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def prepared(self, application_id: str, quantity: int = 1) -> tuple[Any, Any, Any]:
        """Reserved, registered, codes issued: (reservation, registration, codes by serial)."""
        reservation = await self.reserve(application_id, quantity)
        registration = await self.register(application_id, reservation)
        response = await self.post(
            "/activation-codes",
            {
                "application_id": application_id,
                "mid": registration["mid"],
                "terminals": registration["terminals"],
            },
        )
        assert response.status_code == 201, response.text
        codes = {c["serial"]: c["code"] for c in response.json()["codes"]}
        return reservation, registration, codes

    async def in_stock(self, model: str = A8) -> int:
        models = (await self.http.get("/models")).json()
        return int(next(m["in_stock"] for m in models if m["model"] == model))


def make_config(tmp_path: Path, gateway_url: str, stock: int = 5, **options: str) -> ServiceConfig:
    """The device service; its logistics is a closed port unless `logistics_url` names one."""
    return ServiceConfig(
        name="device",
        database_url=f"sqlite:///{tmp_path / 'device.db'}",
        gateway_url=gateway_url,
        options={
            "stock_per_model": str(stock),
            "logistics_url": f"http://127.0.0.1:{free_port()}",
            "check_in_interval_ms": "50",
            **options,
        },
    )


@dataclass
class Logistics:
    """The real logistics service next to the device service: where terminals physically are."""

    url: str
    http: httpx.AsyncClient

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post(
            path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex}
        )
        assert response.is_success, response.text
        data: dict[str, Any] = response.json()
        return data

    async def ship(self, application_id: str, serials: list[str]) -> str:
        body = {"application_id": application_id, "address": ADDRESS, "recipient": "张三"}
        shipped = await self.post("/shipments", {**body, "serials": serials})
        return str(shipped["shipment_id"])

    async def arrange_return(self, application_id: str, serials: list[str]) -> str:
        body = {"application_id": application_id, "address": ADDRESS, "reason": "withdrawn"}
        arranged = await self.post("/returns", {**body, "serials": serials})
        return str(arranged["return_id"])


ADDRESS = {"province": "北京市", "city": "北京市", "district": "海淀区", "street": "中关村大街1号"}


@asynccontextmanager
async def logistics_service(tmp_path: Path, port: int | None = None) -> AsyncIterator[Logistics]:
    gateway = CallbackRecorder()
    async with serving(gateway.app) as gateway_url:
        service = logistics.build(
            ServiceConfig(
                name="logistics",
                database_url=f"sqlite:///{tmp_path / 'logistics.db'}",
                gateway_url=gateway_url,
            )
        )
        async with (
            serving(service.app, port) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as http,
        ):
            yield Logistics(url, http)


@asynccontextmanager
async def running(config: ServiceConfig) -> AsyncIterator[Device]:
    async with (
        serving(build(config).app) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield Device(url=url, http=http, config=config)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[CallbackRecorder, str]]:
    gateway = CallbackRecorder()
    async with serving(gateway.app) as url:
        yield gateway, url


@pytest.fixture
async def device(tmp_path: Path, recorder: tuple[CallbackRecorder, str]) -> AsyncIterator[Device]:
    async with running(make_config(tmp_path, recorder[1])) as service:
        yield service


async def test_reserve_and_register_allocates_unique_mids_and_tids(device: Device) -> None:
    assert await device.in_stock() == 5
    first = await device.reserve("APP-1", quantity=2)
    assert len(first["serials"]) == 2 and len(set(first["serials"])) == 2
    assert all(s.startswith("A8") and len(s) == 12 for s in first["serials"])
    assert await device.in_stock() == 3

    one = await device.register("APP-1", first)
    two = await device.register("APP-2", await device.reserve("APP-2", quantity=2))
    for registration in (one, two):
        assert check_mid(registration["mid"]) is None and len(registration["mid"]) == 15
        assert all(check_tid(t["tid"]) is None for t in registration["terminals"])
    assert one["mid"] != two["mid"]
    tids = [t["tid"] for t in one["terminals"] + two["terminals"]]
    assert len(set(tids)) == 4
    assert {t["serial"] for t in one["terminals"]} == set(first["serials"])

    # The same application registering another reservation keeps its MID.
    again = await device.register("APP-1", await device.reserve("APP-1"))
    assert again["mid"] == one["mid"]

    terminal = (await device.http.get(f"/terminals/{first['serials'][0]}")).json()
    assert terminal["status"] == "registered" and terminal["mid"] == one["mid"]
    assert (await device.http.get("/terminals/NOPE")).status_code == 404


async def test_out_of_stock_and_unknown_model(device: Device) -> None:
    body = {"application_id": "APP-1", "model": A8, "quantity": 6}
    response = await device.post("/reservations", body)
    assert response.status_code == 409
    error = response.json()
    assert error["error"] == "out_of_stock"
    assert error["fields"] == {"model": A8, "available": "5"}
    assert await device.in_stock() == 5  # nothing half-taken

    response = await device.post("/reservations", {**body, "model": "NOKIA-3310"})
    assert response.status_code == 404 and response.json()["error"] == "unknown_model"

    response = await device.post("/reservations", {**body, "quantity": 0})
    assert response.status_code == 422 and "quantity" in response.json()["fields"]


async def test_concurrent_reservations_never_share_a_terminal(
    tmp_path: Path, recorder: tuple[CallbackRecorder, str]
) -> None:
    async with running(make_config(tmp_path, recorder[1], stock=10)) as device:
        responses = await asyncio.gather(
            *(
                device.post(
                    "/reservations", {"application_id": f"APP-{i}", "model": A8, "quantity": 1}
                )
                for i in range(20)
            )
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] * 10 + [409] * 10
        serials = [s for r in responses if r.status_code == 201 for s in r.json()["serials"]]
        assert len(serials) == 10 and len(set(serials)) == 10
        assert await device.in_stock() == 0


async def test_idempotent_reservation(device: Device) -> None:
    body = {"application_id": "APP-1", "model": A8, "quantity": 2}
    first = await device.post("/reservations", body, key="k-1")
    second = await device.post("/reservations", body, key="k-1")
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replay"] == "true"
    assert await device.in_stock() == 3

    reused = await device.post("/reservations", {**body, "quantity": 1}, key="k-1")
    assert reused.status_code == 409 and reused.json()["error"] == "idempotency_key_reused"

    missing = await device.http.post("/reservations", json=body)
    assert missing.status_code == 400
    assert missing.json()["error"] == "idempotency_key_required"
    assert await device.in_stock() == 3


async def test_activation_callback_and_test_transaction(
    device: Device, recorder: tuple[CallbackRecorder, str]
) -> None:
    gateway, _ = recorder
    _, registration, codes = await device.prepared("APP-1")
    mid = registration["mid"]
    serial, tid = registration["terminals"][0]["serial"], registration["terminals"][0]["tid"]
    tx = {"application_id": "APP-1", "mid": mid, "serial": serial, "tid": tid}

    before = await device.post("/test-transactions", tx)
    assert before.status_code == 201
    assert before.json()["approved"] is False and before.json()["response_code"] == "05"

    wrong_code = "000000" if codes[serial] != "000000" else "111111"
    wrong = await device.post(f"/terminals/{serial}/activation", {"code": wrong_code})
    assert wrong.status_code == 422
    assert wrong.json()["error"] == "invalid_code" and "code" in wrong.json()["fields"]

    right = await device.post(f"/terminals/{serial}/activation", {"code": codes[serial]})
    assert right.status_code == 200, right.text
    assert right.json()["status"] == "activated" and right.json()["mid"] == mid

    [(path, body)] = await gateway.wait_for(1)
    assert path == "/api/applications/APP-1/activation"
    event = TerminalActivated.model_validate(body)
    assert (event.serial, event.tid) == (serial, tid)
    uuid.UUID(event.event_id)
    assert gateway.refused == []  # the signature verified

    approved = (await device.post("/test-transactions", tx)).json()
    assert approved["approved"] is True and approved["response_code"] == "00"
    assert approved["reference"].startswith("TX")
    wrong_binding = (await device.post("/test-transactions", {**tx, "tid": "ZZZZZZZZ"})).json()
    assert wrong_binding["approved"] is False and wrong_binding["response_code"] == "14"

    # Entering the code again changes nothing and calls back no second time.
    again = await device.post(f"/terminals/{serial}/activation", {"code": codes[serial]})
    assert again.status_code == 200
    service_db = build(device.config)
    with service_db.session() as session:
        assert len(session.exec(select(Callback)).all()) == 1


@pytest.fixture
async def beside(
    tmp_path: Path, recorder: tuple[CallbackRecorder, str]
) -> AsyncIterator[tuple[Device, Logistics]]:
    """The device service with a real logistics service to ask where terminals are."""
    async with (
        logistics_service(tmp_path) as lg,
        running(make_config(tmp_path, recorder[1], logistics_url=lg.url)) as device,
    ):
        yield device, lg


async def test_release_of_terminals_never_shipped_returns_stock_and_retires_ids(
    beside: tuple[Device, Logistics],
) -> None:
    device, _ = beside
    reservation, registration, codes = await device.prepared("APP-1", quantity=2)
    serial = reservation["serials"][0]
    await device.post(f"/terminals/{serial}/activation", {"code": codes[serial]})
    assert await device.in_stock() == 3

    path = f"/reservations/{reservation['reservation_id']}/release"
    released = await device.post(path, {"reason": "merchant withdrew"}, key="rel-1")
    assert released.status_code == 200
    assert released.json() == {
        "reference": reservation["reservation_id"],
        "detail": f"2 terminal(s) back in stock, MID {registration['mid']} retired",
    }
    replay = await device.post(path, {"reason": "merchant withdrew"}, key="rel-1")
    assert replay.json() == released.json()
    again = await device.post(path, {"reason": "merchant withdrew"})
    assert again.status_code == 200 and again.json()["detail"] == "already released"
    assert await device.in_stock() == 5

    terminal = (await device.http.get(f"/terminals/{serial}")).json()
    assert terminal["status"] == "in_stock"
    assert terminal["mid"] is None and terminal["tid"] is None and terminal["activated_at"] is None

    # The next applications get the same terminals back, but never the retired MID or TIDs.
    old_tids = {t["tid"] for t in registration["terminals"]}
    for application in ("APP-2", "APP-1"):
        fresh = await device.register(application, await device.reserve(application, 2))
        assert fresh["mid"] != registration["mid"]
        assert not old_tids & {t["tid"] for t in fresh["terminals"]}
    # A retired MID takes no more orders.
    refused = await device.post(
        f"/merchants/{registration['mid']}/acquiring",
        {"application_id": "APP-1", "tids": sorted(old_tids)},
    )
    assert refused.status_code == 404
    unknown = await device.post("/reservations/RS-NOPE/release", {"reason": "x"})
    assert unknown.status_code == 404


async def test_state_survives_restart(
    tmp_path: Path, recorder: tuple[CallbackRecorder, str]
) -> None:
    config = make_config(tmp_path, recorder[1])
    async with running(config) as device:
        reservation = await device.reserve("APP-1", 2)
        registration = await device.register("APP-1", reservation)
    async with running(make_config(tmp_path, recorder[1], stock=50)) as device:
        assert await device.in_stock() == 3  # not seeded a second time
        terminal = (await device.http.get(f"/terminals/{reservation['serials'][0]}")).json()
        assert terminal["reservation_id"] == reservation["reservation_id"]
        assert terminal["mid"] == registration["mid"]
        assert (await device.register("APP-1", reservation)) == registration


async def test_acquiring_needs_every_terminal_activated(device: Device) -> None:
    _, registration, codes = await device.prepared("APP-1", quantity=2)
    mid = registration["mid"]
    tids = [t["tid"] for t in registration["terminals"]]
    body = {"application_id": "APP-1", "tids": tids}
    first, second = registration["terminals"]

    await device.post(f"/terminals/{first['serial']}/activation", {"code": codes[first["serial"]]})
    refused = await device.post(f"/merchants/{mid}/acquiring", body)
    assert refused.status_code == 409
    assert refused.json()["error"] == "terminals_not_activated"
    assert refused.json()["fields"] == {"tids": second["tid"]}

    await device.post(
        f"/terminals/{second['serial']}/activation", {"code": codes[second["serial"]]}
    )
    enabled = await device.post(f"/merchants/{mid}/acquiring", body)
    assert enabled.status_code == 200, enabled.text
    steps.AcquiringEnabled.model_validate(enabled.json())
    again = await device.post(f"/merchants/{mid}/acquiring", body)
    assert again.json() == enabled.json()  # switched on once


async def test_auto_activation(tmp_path: Path, recorder: tuple[CallbackRecorder, str]) -> None:
    gateway, url = recorder
    config = make_config(tmp_path, url, auto_activate="true", auto_delay_ms="100")
    async with running(config) as device:
        reservation, registration, _ = await device.prepared("APP-1", quantity=2)
        received = await gateway.wait_for(2)
        assert {p for p, _ in received} == {"/api/applications/APP-1/activation"}
        assert {b["tid"] for _, b in received} == {t["tid"] for t in registration["terminals"]}
        for serial in reservation["serials"]:
            terminal = (await device.http.get(f"/terminals/{serial}")).json()
            assert terminal["status"] == "activated"


async def test_activities_against_the_service(device: Device) -> None:
    activities = device_activities(device.url)
    env = ActivityEnvironment()
    key = "wf-1/"
    reserved = await env.run(
        activities.reserve_terminals,
        steps.ReserveTerminals(
            idempotency_key=key + "reserve", application_id="APP-1", model=A8, quantity=1
        ),
    )
    assert isinstance(reserved, steps.TerminalsReserved) and len(reserved.serials) == 1
    registered = await env.run(
        activities.register_terminals,
        steps.RegisterTerminals(
            idempotency_key=key + "register",
            application_id="APP-1",
            merchant_name="Shop",
            reservation_id=reserved.reservation_id,
            serials=reserved.serials,
        ),
    )
    issued = await env.run(
        activities.issue_activation_codes,
        steps.IssueActivationCodes(
            idempotency_key=key + "codes",
            application_id="APP-1",
            mid=registered.mid,
            terminals=registered.terminals,
        ),
    )
    [terminal], [code] = registered.terminals, issued.codes
    tx = steps.RunTestTransaction(
        idempotency_key=key + "tx-1",
        application_id="APP-1",
        mid=registered.mid,
        serial=terminal.serial,
        tid=terminal.tid,
    )
    declined = await env.run(activities.run_test_transaction, tx)
    assert declined.approved is False and declined.response_code == "05"
    acquiring = steps.EnableAcquiring(
        idempotency_key=key + "acquiring",
        application_id="APP-1",
        mid=registered.mid,
        tids=[terminal.tid],
    )
    with pytest.raises(ApplicationError) as refused:
        await env.run(activities.enable_acquiring, acquiring)
    assert refused.value.non_retryable and refused.value.type == "terminals_not_activated"

    await device.post(f"/terminals/{terminal.serial}/activation", {"code": code.code})
    approved = await env.run(
        activities.run_test_transaction, tx.model_copy(update={"idempotency_key": key + "tx-2"})
    )
    assert approved.approved is True and approved.response_code == "00"
    enabled = await env.run(
        activities.enable_acquiring,
        acquiring.model_copy(update={"idempotency_key": key + "acquiring-2"}),
    )
    assert isinstance(enabled, steps.AcquiringEnabled)

    undone = await env.run(
        activities.release_terminals,
        steps.ReleaseTerminals(
            idempotency_key=key + "release",
            application_id="APP-1",
            reservation_id=reserved.reservation_id,
            reason="test",
        ),
    )
    assert undone.reference == reserved.reservation_id
    assert len(activities.all()) == 12  # onboarding's six, the merchant account's six

    with pytest.raises(ApplicationError) as out_of_stock:
        await env.run(
            activities.reserve_terminals,
            steps.ReserveTerminals(
                idempotency_key=key + "too-many", application_id="APP-1", model=A8, quantity=99
            ),
        )
    assert out_of_stock.value.non_retryable and out_of_stock.value.type == "out_of_stock"
    await activities.client.aclose()


async def test_unreachable_service_is_retryable() -> None:
    activities = DeviceActivities(
        ServiceClient("device", f"http://127.0.0.1:{free_port()}", timeout=2)
    )
    with pytest.raises(ApplicationError) as unreachable:
        await ActivityEnvironment().run(
            activities.reserve_terminals,
            steps.ReserveTerminals(
                idempotency_key="k", application_id="APP-1", model=A8, quantity=1
            ),
        )
    assert unreachable.value.type == "ServiceUnavailable"
    assert not unreachable.value.non_retryable
    await activities.client.aclose()


# --- released terminals come back into stock once they are at the warehouse -------------------


async def status_of(device: Device, serials: list[str]) -> set[str]:
    return {(await device.http.get(f"/terminals/{s}")).json()["status"] for s in serials}


async def until_in_stock(device: Device, serials: list[str], seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.05)):
        if await status_of(device, serials) == {"in_stock"}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{serials} never back in stock: {await status_of(device, serials)}")


async def test_terminals_with_the_merchant_are_returning_until_their_parcel_arrives(
    beside: tuple[Device, Logistics],
) -> None:
    device, lg = beside
    reservation, registration, codes = await device.prepared("APP-1", quantity=2)
    serials = reservation["serials"]
    shipped = await lg.ship("APP-1", serials)
    await lg.post(f"/shipments/{shipped}/delivery", {"outcome": "delivered"})
    await device.post(f"/terminals/{serials[0]}/activation", {"code": codes[serials[0]]})
    returned = await lg.arrange_return("APP-1", serials)  # booked, still at the merchant's

    path = f"/reservations/{reservation['reservation_id']}/release"
    released = await device.post(path, {"reason": "withdrawn"}, key="rel-1")
    assert released.status_code == 200, released.text
    assert released.json()["detail"] == (
        "0 terminal(s) back in stock, 2 returning (in stock once back at the warehouse),"
        f" MID {registration['mid']} retired"
    )
    terminal = (await device.http.get(f"/terminals/{serials[0]}")).json()
    assert (terminal["status"], terminal["mid"], terminal["tid"], terminal["bound_to"]) == (
        "returning",
        None,
        None,
        None,
    )
    assert await device.in_stock() == 3
    # Not reservable while away, and released once only.
    short = await device.post(
        "/reservations", {"application_id": "APP-2", "model": A8, "quantity": 4}
    )
    assert short.status_code == 409 and short.json()["fields"]["available"] == "3"
    again = await device.post(path, {"reason": "withdrawn"}, key="rel-2")
    assert again.json()["detail"] == "already released"

    await lg.post(f"/shipments/{returned}/scans", {"location": "北京"})
    await asyncio.sleep(0.3)  # a few check-in passes: in transit is not back
    assert await status_of(device, serials) == {"returning"}
    await lg.post(f"/shipments/{returned}/delivery", {"outcome": "delivered"})
    await until_in_stock(device, serials)
    assert await device.in_stock() == 5


async def test_a_recalled_parcel_brings_its_terminals_back_when_it_arrives(
    beside: tuple[Device, Logistics],
) -> None:
    device, lg = beside
    reservation, _, _ = await device.prepared("APP-1", quantity=1)
    serials = reservation["serials"]
    shipped = await lg.ship("APP-1", serials)
    await lg.post(f"/shipments/{shipped}/recall", {"reason": "withdrawn"})
    path = f"/reservations/{reservation['reservation_id']}/release"
    assert (await device.post(path, {"reason": "withdrawn"})).status_code == 200
    assert await status_of(device, serials) == {"returning"}
    await lg.post(f"/shipments/{shipped}/arrival", {})
    await until_in_stock(device, serials)


async def test_release_while_logistics_is_down_waits_for_it(
    tmp_path: Path, recorder: tuple[CallbackRecorder, str]
) -> None:
    """Nobody can say where the terminals are: they stay returning, never wrongly in stock, and
    the check-in finds them on the shelf once logistics answers."""
    port = free_port()
    config = make_config(tmp_path, recorder[1], logistics_url=f"http://127.0.0.1:{port}")
    async with running(config) as device:
        reservation, _, _ = await device.prepared("APP-1", quantity=2)
        path = f"/reservations/{reservation['reservation_id']}/release"
        released = await device.post(path, {"reason": "withdrawn"})
        assert released.status_code == 200
        assert released.json()["detail"].startswith("0 terminal(s) back in stock, 2 returning")
        await asyncio.sleep(0.2)
        assert await status_of(device, reservation["serials"]) == {"returning"}
        async with logistics_service(tmp_path, port):  # never shipped: on the shelf
            await until_in_stock(device, reservation["serials"])
