"""The device service after go-live, over real HTTP: acquiring suspended and reinstated, more
terminals under the MID, swaps with the TID moved or reissued, unbinding and the return to stock,
settlement re-binding with its history, retirement, the merchant's activation callback, and the
activities the merchant workflow calls."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.device import DeviceActivities, device_activities
from activities.http import ServiceClient
from schemas import steps
from services import device as device_service
from services.base import fingerprint
from tests.servers import CallbackRecorder, serving
from tests.test_service_device import (
    A8,
    Device,
    Logistics,
    logistics_service,
    make_config,
    running,
    status_of,
    until_in_stock,
)

APP = "APP-1"


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[CallbackRecorder, str]]:
    gateway = CallbackRecorder()
    async with serving(gateway.app) as url:
        yield gateway, url


@pytest.fixture
async def device(tmp_path: Path, recorder: tuple[CallbackRecorder, str]) -> AsyncIterator[Device]:
    async with running(make_config(tmp_path, recorder[1], stock=30)) as service:
        yield service


@pytest.fixture
async def beside(
    tmp_path: Path, recorder: tuple[CallbackRecorder, str]
) -> AsyncIterator[tuple[Device, Logistics]]:
    async with (
        logistics_service(tmp_path) as lg,
        running(make_config(tmp_path, recorder[1], logistics_url=lg.url)) as device,
    ):
        yield device, lg


async def activate(device: Device, codes: dict[str, str]) -> None:
    for serial, code in codes.items():
        response = await device.post(f"/terminals/{serial}/activation", {"code": code})
        assert response.status_code == 200, response.text


async def live(device: Device, quantity: int = 1, application_id: str = APP) -> dict[str, Any]:
    """A merchant gone live: registered, every terminal activated, acquiring on."""
    _, registration, codes = await device.prepared(application_id, quantity)
    await activate(device, codes)
    enabled = await device.post(
        f"/merchants/{registration['mid']}/acquiring",
        {"application_id": application_id, "tids": [t["tid"] for t in registration["terminals"]]},
    )
    assert enabled.status_code == 200, enabled.text
    return dict(registration)


async def pay(device: Device, mid: str, terminal: dict[str, str]) -> dict[str, Any]:
    response = await device.post(
        "/test-transactions",
        {"application_id": APP, "mid": mid, "serial": terminal["serial"], "tid": terminal["tid"]},
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def reserve_for(device: Device, mid: str, quantity: int = 1) -> dict[str, Any]:
    response = await device.post(
        "/reservations",
        {"application_id": APP, "model": A8, "quantity": quantity, "merchant_id": mid},
    )
    assert response.status_code == 201, response.text
    reservation: dict[str, Any] = response.json()
    return reservation


async def merchant(device: Device, mid: str) -> dict[str, Any]:
    response = await device.http.get(f"/merchants/{mid}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def terminal(device: Device, serial: str) -> dict[str, Any]:
    view: dict[str, Any] = (await device.http.get(f"/terminals/{serial}")).json()
    return view


# --- acquiring suspended and reinstated --------------------------------------------------------


async def test_a_suspended_merchant_takes_no_payments_until_reinstated(device: Device) -> None:
    registration = await live(device)
    mid, [one] = registration["mid"], registration["terminals"]
    assert (await pay(device, mid, one))["response_code"] == "00"
    assert (await merchant(device, mid))["state"] == "enabled"

    body = {"application_id": APP, "reason": "fees: bill B-1 overdue", "merchant_id": mid}
    suspended = await device.post(f"/merchants/{mid}/acquiring/suspension", body, key="s-1")
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["state"] == "suspended"
    replay = await device.post(f"/merchants/{mid}/acquiring/suspension", body, key="s-1")
    assert replay.json() == suspended.json()
    # Suspended a second time (another reason): still the first suspension.
    again = await device.post(
        f"/merchants/{mid}/acquiring/suspension", {**body, "reason": "inspection failed"}
    )
    assert again.status_code == 200 and again.json() == suspended.json()

    declined = await pay(device, mid, one)
    assert declined["approved"] is False and declined["response_code"] == "62"
    view = await merchant(device, mid)
    assert view["state"] == "suspended"
    assert view["suspension_reason"] == "fees: bill B-1 overdue"
    assert [t["accepts_payments"] for t in view["terminals"]] == [False]

    path = f"/merchants/{mid}/acquiring/reinstatement"
    reinstated = await device.post(path, {**body, "reason": "bill B-1 paid"})
    assert reinstated.status_code == 200, reinstated.text
    assert reinstated.json()["state"] == "enabled"
    assert reinstated.json()["changed_at"] > suspended.json()["changed_at"]
    # Reinstating an enabled merchant is an answer, not an error, and changes nothing.
    noop = await device.post(path, {**body, "reason": "paid twice"})
    assert noop.status_code == 200 and noop.json() == reinstated.json()

    approved = await pay(device, mid, one)
    assert approved["approved"] is True and approved["response_code"] == "00"
    view = await merchant(device, mid)
    assert view["state"] == "enabled" and view["suspension_reason"] is None
    assert [t["accepts_payments"] for t in view["terminals"]] == [True]


async def test_acquiring_changes_are_refused_where_they_mean_nothing(device: Device) -> None:
    _, registration, _ = await device.prepared(APP)
    mid = registration["mid"]
    body = {"application_id": APP, "reason": "fees"}
    never_on = await device.post(f"/merchants/{mid}/acquiring/suspension", body)
    assert never_on.status_code == 409 and never_on.json()["error"] == "acquiring_not_enabled"
    unknown = await device.post("/merchants/898000000000000/acquiring/suspension", body)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_merchant"
    other = await device.post(
        f"/merchants/{mid}/acquiring/suspension", {**body, "application_id": "APP-2"}
    )
    assert other.status_code == 409 and other.json()["error"] == "wrong_application"
    wrong = await device.post(
        f"/merchants/{mid}/acquiring/suspension", {**body, "merchant_id": "898000000000000"}
    )
    assert wrong.status_code == 422 and wrong.json()["error"] == "wrong_merchant"


# --- more terminals ----------------------------------------------------------------------------


async def test_more_terminals_under_the_same_mid(device: Device) -> None:
    registration = await live(device)
    mid = registration["mid"]
    reservation = await reserve_for(device, mid, 2)
    body = {
        "application_id": APP,
        "reservation_id": reservation["reservation_id"],
        "serials": reservation["serials"],
        "merchant_id": mid,
    }
    more = await device.post(f"/merchants/{mid}/terminals", body)
    assert more.status_code == 200, more.text
    added = steps.TerminalsRegistered.model_validate(more.json())
    assert added.mid == mid
    assert {t.serial for t in added.terminals} == set(reservation["serials"])
    tids = {t.tid for t in added.terminals} | {registration["terminals"][0]["tid"]}
    assert len(tids) == 3
    again = await device.post(f"/merchants/{mid}/terminals", body)  # another key: same TIDs
    assert again.json() == more.json()
    view = await merchant(device, mid)
    assert {t["tid"] for t in view["terminals"]} == tids
    assert {t["status"] for t in view["terminals"] if t["serial"] in reservation["serials"]} == {
        "registered"
    }

    mismatch = await device.post(f"/merchants/{mid}/terminals", {**body, "serials": ["A8NOPE"]})
    assert mismatch.status_code == 422 and mismatch.json()["error"] == "serials_mismatch"
    other = await live(device, application_id="APP-2")
    taken = await device.post(
        f"/merchants/{other['mid']}/terminals",
        {**body, "application_id": "APP-2", "merchant_id": other["mid"]},
    )
    assert taken.status_code == 409


# --- swaps (换机) --------------------------------------------------------------------------------


async def swap(
    device: Device, mid: str, faulty: str, move_tid: bool, key: str | None = None
) -> httpx.Response:
    reservation = await reserve_for(device, mid)
    return await device.post(
        f"/merchants/{mid}/swaps",
        {
            "application_id": APP,
            "faulty_serial": faulty,
            "replacement_serial": reservation["serials"][0],
            "reservation_id": reservation["reservation_id"],
            "move_tid": move_tid,
            "merchant_id": mid,
        },
        key=key,
    )


async def test_a_swap_moves_the_tid_to_the_replacement(device: Device) -> None:
    registration = await live(device)
    mid, [old] = registration["mid"], registration["terminals"]
    swapped = await swap(device, mid, old["serial"], move_tid=True, key="swap-1")
    assert swapped.status_code == 200, swapped.text
    result = steps.TerminalSwapped.model_validate(swapped.json())
    assert result.tid == old["tid"] and result.retired_tid is None
    assert result.serial != old["serial"]

    faulty = await terminal(device, old["serial"])
    assert (faulty["status"], faulty["mid"], faulty["tid"]) == ("faulty", mid, None)
    replacement = await terminal(device, result.serial)
    assert (replacement["status"], replacement["mid"], replacement["tid"]) == (
        "registered",
        mid,
        old["tid"],
    )
    # The faulty unit no longer takes payments under the TID; the replacement does once active.
    assert (await pay(device, mid, old))["response_code"] == "14"
    view = await merchant(device, mid)
    assert view["retired_tids"] == []
    assert [(t["tid"], t["serial"]) for t in view["tids"]] == [(old["tid"], result.serial)]

    # The same swap asked again (the workflow retried with a new key) answers as the first.
    body = json.loads(swapped.request.content)
    replay = await device.post(f"/merchants/{mid}/swaps", body)
    assert replay.status_code == 200 and replay.json() == swapped.json()


async def test_a_swap_with_a_new_tid_retires_the_old_one_for_good(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    registration = await live(device)
    mid, [old] = registration["mid"], registration["terminals"]
    swapped = await swap(device, mid, old["serial"], move_tid=False)
    assert swapped.status_code == 200, swapped.text
    result = steps.TerminalSwapped.model_validate(swapped.json())
    assert result.retired_tid == old["tid"] and result.tid != old["tid"]
    assert (await terminal(device, result.serial))["tid"] == result.tid
    view = await merchant(device, mid)
    assert view["retired_tids"] == [old["tid"]]

    # Draw the retired TID every other time: however often it comes up, it is never issued.
    real = device_service._draw_tid
    draws: list[str] = []

    def draw() -> str:
        draws.append(old["tid"] if len(draws) % 2 == 0 else real())
        return draws[-1]

    monkeypatch.setattr(device_service, "_draw_tid", draw)
    issued: set[str] = set()
    for _ in range(4):
        reservation = await reserve_for(device, mid, 5)
        more = await device.post(
            f"/merchants/{mid}/terminals",
            {
                "application_id": APP,
                "reservation_id": reservation["reservation_id"],
                "serials": reservation["serials"],
            },
        )
        assert more.status_code == 200, more.text
        issued |= {t["tid"] for t in more.json()["terminals"]}
    assert draws.count(old["tid"]) == 20  # offered once for each of 20 new TIDs
    assert len(issued) == 20 and old["tid"] not in issued and result.tid not in issued


async def test_a_swap_needs_the_merchants_own_terminal(device: Device) -> None:
    registration = await live(device)
    other = await live(device, application_id="APP-2")
    mid = registration["mid"]
    refused = await swap(device, mid, other["terminals"][0]["serial"], move_tid=True)
    assert refused.status_code == 409 and refused.json()["error"] == "not_bound"
    assert (await terminal(device, other["terminals"][0]["serial"]))["status"] == "activated"


# --- unbinding, and back in stock --------------------------------------------------------------


async def test_an_unbound_terminal_is_back_in_stock_once_its_return_arrives(
    beside: tuple[Device, Logistics],
) -> None:
    device, lg = beside
    reservation, registration, codes = await device.prepared(APP, quantity=2)
    mid, serials = registration["mid"], reservation["serials"]
    shipped = await lg.ship(APP, serials)
    await lg.post(f"/shipments/{shipped}/delivery", {"outcome": "delivered"})
    await activate(device, codes)
    gone = next(t for t in registration["terminals"] if t["serial"] == serials[0])
    stock = await device.in_stock()

    body = {"application_id": APP, "mid": mid, "reason": "returned", "merchant_id": mid}
    unbound = await device.post(f"/terminals/{gone['serial']}/unbinding", body, key="u-1")
    assert unbound.status_code == 200, unbound.text
    assert unbound.json() == {
        "reference": gone["serial"],
        "detail": f"unbound from MID {mid}, TID {gone['tid']} retired, returning"
        " (in stock once back at the warehouse)",
    }
    replay = await device.post(f"/terminals/{gone['serial']}/unbinding", body, key="u-1")
    assert replay.json() == unbound.json()
    again = await device.post(f"/terminals/{gone['serial']}/unbinding", body)
    assert again.status_code == 200 and again.json()["detail"] == f"already unbound from MID {mid}"

    view = await terminal(device, gone["serial"])
    assert (view["status"], view["mid"], view["tid"], view["bound_to"]) == (
        "returning",
        None,
        None,
        None,
    )
    account = await merchant(device, mid)
    assert [t["serial"] for t in account["terminals"]] == [serials[1]]
    assert account["retired_tids"] == [gone["tid"]]
    assert await device.in_stock() == stock  # not on the shelf yet

    returned = await lg.arrange_return(APP, [gone["serial"]])
    await lg.post(f"/shipments/{returned}/delivery", {"outcome": "delivered"})
    await until_in_stock(device, [gone["serial"]])
    assert await device.in_stock() == stock + 1
    assert await status_of(device, [serials[1]]) == {"activated"}  # the other stays

    other = await device.post(
        f"/terminals/{serials[1]}/unbinding", {**body, "mid": "8" * 15, "merchant_id": "8" * 15}
    )
    assert other.status_code == 409 and other.json()["error"] == "not_bound"


# --- settlement re-binding ---------------------------------------------------------------------


async def test_a_rebinding_keeps_the_earlier_accounts_as_history(device: Device) -> None:
    reservation = await device.reserve(APP)
    registered = await device.post(
        f"/reservations/{reservation['reservation_id']}/registration",
        {
            "application_id": APP,
            "merchant_name": "Shop",
            "serials": reservation["serials"],
            "settlement_holder": "张三",
            "settlement_bank": "ICBC",
            "settlement_account_last4": "1234",
        },
    )
    mid = registered.json()["mid"]
    first = (await merchant(device, mid))["settlement"]
    assert (first["binding_id"], first["account"], first["unbound_at"]) == (None, "****1234", None)

    body = {
        "application_id": APP,
        "holder_name": "张三",
        "bank_name": "CCB",
        "account_kind": "personal",
        "account_last4": "5678",
        "merchant_id": mid,
    }
    bound = await device.post(f"/merchants/{mid}/settlement", body)
    assert bound.status_code == 200, bound.text
    second = steps.SettlementBound.model_validate(bound.json())
    same = await device.post(f"/merchants/{mid}/settlement", body)  # the same account again
    assert same.json() == bound.json()
    third = await device.post(
        f"/merchants/{mid}/settlement", {**body, "bank_name": "BOC", "account_last4": "9012"}
    )
    assert third.status_code == 200

    view = await merchant(device, mid)
    assert view["settlement"]["binding_id"] == third.json()["binding_id"]
    assert view["settlement"]["account"] == "****9012"
    assert [(b["bank_name"], b["account"]) for b in view["past_settlements"]] == [
        ("CCB", "****5678"),
        ("ICBC", "****1234"),
    ]
    assert view["past_settlements"][0]["binding_id"] == second.binding_id
    assert all(b["unbound_at"] is not None for b in view["past_settlements"])
    malformed = await device.post(
        f"/merchants/{mid}/settlement", {**body, "account_last4": "6222021234567890"}
    )
    assert malformed.status_code == 422 and "account_last4" in malformed.json()["fields"]


# --- retirement --------------------------------------------------------------------------------


async def test_retirement_retires_the_mid_and_every_tid_for_good(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    registration = await live(device, quantity=2)
    mid = registration["mid"]
    first, second = registration["terminals"]
    swapped = (await swap(device, mid, first["serial"], move_tid=False)).json()
    tids = {first["tid"], second["tid"], swapped["tid"]}

    body = {"application_id": APP, "reason": "closure (requested)", "merchant_id": mid}
    retired = await device.post(f"/merchants/{mid}/retirement", body, key="r-1")
    assert retired.status_code == 200, retired.text
    result = steps.MerchantRetired.model_validate(retired.json())
    assert result.mid == mid and set(result.retired_tids) == tids
    again = await device.post(f"/merchants/{mid}/retirement", body)
    assert again.status_code == 200 and again.json() == retired.json()

    view = await merchant(device, mid)
    assert view["state"] == "retired" and view["retirement_reason"] == "closure (requested)"
    assert view["terminals"] == [] and set(view["retired_tids"]) == tids
    # Every terminal that was with it is on its way back (logistics cannot say otherwise here).
    serials = [first["serial"], second["serial"], swapped["serial"]]
    assert await status_of(device, serials) == {"returning"}
    assert (await pay(device, mid, second))["approved"] is False

    reservation = await reserve_for(device, mid)
    refused = await device.post(
        f"/merchants/{mid}/terminals",
        {
            "application_id": APP,
            "reservation_id": reservation["reservation_id"],
            "serials": reservation["serials"],
        },
    )
    assert refused.status_code == 409 and refused.json()["error"] == "merchant_retired"
    suspend = await device.post(
        f"/merchants/{mid}/acquiring/suspension", {"application_id": APP, "reason": "fees"}
    )
    assert suspend.status_code == 409 and suspend.json()["error"] == "merchant_retired"

    # The MID is never issued again, even when it is the number drawn.
    real = device_service._draw_mid
    drawn = iter([mid])
    monkeypatch.setattr(device_service, "_draw_mid", lambda: next(drawn, None) or real())
    fresh = await device.register(APP, await device.reserve(APP))
    assert fresh["mid"] != mid and not tids & {t["tid"] for t in fresh["terminals"]}


# --- the merchant's activation callback --------------------------------------------------------


async def test_a_merchant_workflows_activation_is_called_back_to_the_merchant(
    device: Device, recorder: tuple[CallbackRecorder, str]
) -> None:
    gateway, _ = recorder
    registration = await live(device)
    mid = registration["mid"]
    onboarding = await gateway.wait_for(1)
    assert [p for p, _ in onboarding] == [f"/api/applications/{APP}/activation"]

    reservation = await reserve_for(device, mid)
    more = await device.post(
        f"/merchants/{mid}/terminals",
        {
            "application_id": APP,
            "reservation_id": reservation["reservation_id"],
            "serials": reservation["serials"],
            "merchant_id": mid,
        },
    )
    [added] = more.json()["terminals"]
    issued = await device.post(
        "/activation-codes",
        {"application_id": APP, "mid": mid, "terminals": [added], "merchant_id": mid},
    )
    assert issued.status_code == 201, issued.text
    [code] = issued.json()["codes"]
    await activate(device, {code["serial"]: code["code"]})

    path, body = (await gateway.wait_for(2))[1]
    assert path == f"/api/merchants/{mid}/activation"
    assert (body["serial"], body["tid"]) == (added["serial"], added["tid"])
    events = (await device.http.get(f"/merchants/{mid}/events")).json()["events"]
    assert [(e["kind"], e["body"]) for e in events] == [("activation", body)]
    application = (await device.http.get(f"/applications/{APP}/events")).json()["events"]
    assert [e["body"]["serial"] for e in application] == [registration["terminals"][0]["serial"]]
    tx = await device.post(
        "/test-transactions", {"application_id": APP, "mid": mid, **added, "merchant_id": mid}
    )
    assert tx.json()["response_code"] == "00"


# --- the activities ----------------------------------------------------------------------------


async def test_merchant_activities_against_the_service(device: Device) -> None:
    registration = await live(device)
    mid, [old] = registration["mid"], registration["terminals"]
    activities = device_activities(device.url)
    env = ActivityEnvironment()
    common: dict[str, Any] = {"application_id": APP, "merchant_id": mid}

    def key(name: str) -> str:
        return f"merchant-{mid}:{name}"

    suspended = await env.run(
        activities.change_acquiring,
        steps.ChangeAcquiring(
            idempotency_key=key("suspend"), **common, mid=mid, action="suspend", reason="fees"
        ),
    )
    assert suspended.state == "suspended"
    reinstated = await env.run(
        activities.change_acquiring,
        steps.ChangeAcquiring(
            idempotency_key=key("reinstate"), **common, mid=mid, action="reinstate", reason="paid"
        ),
    )
    assert reinstated.state == "enabled"
    with pytest.raises(ApplicationError) as bad_action:
        await env.run(
            activities.change_acquiring,
            steps.ChangeAcquiring(
                idempotency_key=key("x"), **common, mid=mid, action="stop", reason="?"
            ),
        )
    assert bad_action.value.non_retryable and bad_action.value.type == "invalid_action"

    reserved = await env.run(
        activities.reserve_terminals,
        steps.ReserveTerminals(idempotency_key=key("reserve-1"), **common, model=A8, quantity=2),
    )
    more = await env.run(
        activities.register_more_terminals,
        steps.RegisterMoreTerminals(
            idempotency_key=key("more"),
            **common,
            mid=mid,
            reservation_id=reserved.reservation_id,
            serials=reserved.serials,
        ),
    )
    assert more.mid == mid and len(more.terminals) == 2

    replacement = await env.run(
        activities.reserve_terminals,
        steps.ReserveTerminals(idempotency_key=key("reserve-2"), **common, model=A8, quantity=1),
    )
    swapped = await env.run(
        activities.swap_terminal,
        steps.SwapTerminal(
            idempotency_key=key("swap"),
            **common,
            mid=mid,
            faulty_serial=old["serial"],
            replacement_serial=replacement.serials[0],
            reservation_id=replacement.reservation_id,
            move_tid=True,
        ),
    )
    assert swapped.tid == old["tid"]
    undone = await env.run(
        activities.unbind_terminal,
        steps.UnbindTerminal(
            idempotency_key=key("unbind"), **common, mid=mid, serial=old["serial"], reason="faulty"
        ),
    )
    assert undone.reference == old["serial"]
    bound = await env.run(
        activities.bind_settlement,
        steps.BindSettlement(
            idempotency_key=key("bind"),
            **common,
            mid=mid,
            holder_name="张三",
            bank_name="CCB",
            account_kind="personal",
            account_last4="5678",
        ),
    )
    assert bound.binding_id.startswith("SB-")
    retired = await env.run(
        activities.retire_merchant,
        steps.RetireMerchant(idempotency_key=key("retire"), **common, mid=mid, reason="closure"),
    )
    assert retired.mid == mid and old["tid"] in retired.retired_tids
    with pytest.raises(ApplicationError) as refused:
        await env.run(
            activities.register_more_terminals,
            steps.RegisterMoreTerminals(
                idempotency_key=key("more-2"),
                **common,
                mid=mid,
                reservation_id=reserved.reservation_id,
                serials=reserved.serials,
            ),
        )
    assert refused.value.non_retryable and refused.value.type == "merchant_retired"
    await activities.client.aclose()


async def test_onboarding_requests_carry_no_merchant_id() -> None:
    """Only the merchant workflow's steps name a merchant: onboarding's bodies are as before."""
    sent: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(201, json={"reservation_id": "RS-1", "serials": ["A8"]})

    activities = DeviceActivities(
        ServiceClient("device", "http://device", transport=httpx.MockTransport(answer))
    )
    env = ActivityEnvironment()
    step = steps.ReserveTerminals(idempotency_key="k", application_id=APP, model=A8, quantity=1)
    await env.run(activities.reserve_terminals, step)
    mid = "898000000000001"
    await env.run(activities.reserve_terminals, step.model_copy(update={"merchant_id": mid}))
    assert sent == [
        {"application_id": APP, "model": A8, "quantity": 1},
        {"application_id": APP, "model": A8, "quantity": 1, "merchant_id": mid},
    ]
    await activities.client.aclose()
    # And a key recorded before `merchant_id` existed still matches its request.
    body = device_service.ReserveBody(application_id=APP, model=A8, quantity=1)
    assert fingerprint(device_service._payload(body)) == fingerprint(sent[0])


# --- a database from before these columns ------------------------------------------------------


NEW_COLUMNS = (
    ("device_reservations", "merchant_id"),
    ("device_activation_codes", "merchant_id"),
    ("device_merchants", "suspended_at"),
    ("device_merchants", "suspension_reason"),
    ("device_merchants", "reinstated_at"),
    ("device_merchants", "retirement_reason"),
)


@pytest.fixture
def old_database(tmp_path: Path) -> Iterator[None]:
    """The device tables as the version before the merchant account left them."""
    device_service.build(make_config(tmp_path, "http://127.0.0.1:9")).engine.dispose()
    with sqlite3.connect(tmp_path / "device.db") as db:
        for table, column in NEW_COLUMNS:
            db.execute(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
    yield


async def test_an_older_database_gets_the_new_columns(
    old_database: None, tmp_path: Path, recorder: tuple[CallbackRecorder, str]
) -> None:
    async with running(make_config(tmp_path, recorder[1])) as device:
        registration = await live(device)
        mid = registration["mid"]
        reservation = await reserve_for(device, mid)
        assert reservation["serials"]
        suspended = await device.post(
            f"/merchants/{mid}/acquiring/suspension", {"application_id": APP, "reason": "fees"}
        )
        assert suspended.status_code == 200, suspended.text
    with sqlite3.connect(tmp_path / "device.db") as db:
        for table, column in NEW_COLUMNS:
            names = {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
            assert column in names, (table, column)
