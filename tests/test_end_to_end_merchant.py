"""A merchant's life after go-live, end to end on the session's real stack (`tests/stack.py`):
billed and paid, a faulty terminal swapped, the account closed, all through HTTP, then checked
in each service's own records.

The merchant's year is a few seconds long (a policy override), so its first bill comes while the
test runs; the contract service's auto-payer pays it. The logistics auto-carrier moves every
parcel, returns included, and the device service's check-in job puts returned terminals back in
stock once logistics has them at the warehouse. The merchant enters each activation code itself,
read from the device service's records as it reads it from the SMS.

The second test pins a billing rule a swap must keep: an anniversary that falls after the
replacement is in service but before the faulty unit is returned bills one terminal, not two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

import httpx
from sqlmodel import col, select

from schemas.application import Channel
from services import device, logistics
from services.stack import serve, stop_all
from tests.stack import MERCHANT_KEY, TOKENS, Stack, new_application

T = TypeVar("T")

# A short year: a bill 5 s after go-live (and every 5 s after), due 30 s after it.
SHORT_YEAR = {
    "merchant": {"billing_period": "PT5S", "payment_period": "PT30S", "fee_reminders": ["PT10S"]}
}
OPERATOR = {"Authorization": f"Bearer {TOKENS['operator']}"}
MERCHANT = {"X-Api-Key": MERCHANT_KEY}
BANK_SERVICE_FEE = Decimal("120.00")  # the bank channel's fee per terminal in service
BANK_DEPOSIT = Decimal("299.00")


async def eventually(
    read: Callable[[], Awaitable[T]], ok: Callable[[T], bool], what: str, seconds: float = 30
) -> T:
    """`read()` again until `ok` holds of it, for at most `seconds`."""
    for _ in range(int(seconds / 0.2)):
        seen = await read()
        if ok(seen):
            return seen
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {seconds} s; last seen {seen}")


async def test_a_merchant_is_billed_gets_a_terminal_swapped_and_closes(stack: Stack) -> None:
    app = new_application(channel=Channel.BANK)
    live = await stack.go_live(app, SHORT_YEAR)
    mid: str = live["mid"]
    [original] = [t["serial"] for t in live["terminals"]]
    gateway = stack.gateway
    device_http = httpx.AsyncClient(base_url=stack.served["device"].url)
    contract_http = httpx.AsyncClient(base_url=stack.served["contract"].url)

    async def merchant() -> dict[str, Any]:
        response = await gateway.get(f"/api/merchants/{mid}")
        assert response.status_code in (200, 404), response.text
        return dict(response.json()) if response.status_code == 200 else {}

    async def listed() -> list[dict[str, Any]]:
        return list((await gateway.get("/api/merchants", params={"q": mid})).json())

    async def contract() -> dict[str, Any]:
        response = await contract_http.get(f"/contracts/{contract_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def terminal(serial: str) -> dict[str, Any]:
        response = await device_http.get(f"/terminals/{serial}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async with device_http, contract_http:
        # Handed over at go-live: the merchant is listed, active.
        rows = await eventually(listed, lambda rows: len(rows) == 1, "merchant listed")
        assert rows[0]["state"] == "active" and rows[0]["channel"] == "bank"
        assert rows[0]["application_id"] == app.application_id
        account = await merchant()
        contract_id = account["contract_id"]
        assert Decimal(account["deposit_held"]) == BANK_DEPOSIT

        # The first anniversary: a bill for the one terminal, paid by the auto-payer.
        account = await eventually(
            merchant,
            lambda m: bool(m["bills"]) and m["bills"][0]["paid_at"] is not None,
            "first bill paid",
        )
        first = account["bills"][0]
        assert first["period"] == 1 and first["terminals"] == 1
        assert Decimal(first["amount"]) == BANK_SERVICE_FEE
        assert first["payment_reference"] == f"AUTO-{first['bill_id']}"
        assert not first["overdue"] and not first["paid_after_closing"]
        held = await contract()
        billed = {b["bill_id"]: b for b in held["bills"]}
        assert billed[first["bill_id"]]["status"] == "paid"
        assert billed[first["bill_id"]]["merchant_id"] == mid
        fee = [p for p in held["payments"] if p["payment_reference"] == first["payment_reference"]]
        assert [Decimal(p["amount"]) for p in fee] == [BANK_SERVICE_FEE]
        [deposit] = [p for p in held["payments"] if p["payment_reference"] == f"AUTO-{contract_id}"]
        assert Decimal(deposit["amount"]) == BANK_DEPOSIT

        # The terminal breaks: the merchant reports it; a replacement comes under the same MID.
        fault = {
            "request_id": "fault-1",
            "serial": original,
            "description": "the screen stays dark",
            "reported_by": app.contact.name,
        }
        response = await gateway.post(f"/api/merchants/{mid}/faults", json=fault, headers=MERCHANT)
        assert response.status_code == 200 and response.json()["outcome"] == "applied", (
            response.text
        )
        account = await eventually(
            merchant,
            lambda m: any(t["replaces"] == original for t in m["terminals"]),
            "replacement bound",
        )
        [replacement] = [t for t in account["terminals"] if t["replaces"] == original]
        serial = replacement["serial"]
        assert serial != original and replacement["state"] == "pending"
        # The TID moves with the swap (the bank's rule): the faulty unit has none left.
        assert replacement["tid"] == live["terminals"][0]["tid"]

        # Delivered by the auto-carrier, then the merchant enters the SMS code on the unit.
        code = await eventually(
            lambda: asyncio.to_thread(unused_code, stack, serial),
            lambda c: c is not None,
            "replacement's activation code",
        )
        assert code is not None
        response = await device_http.post(
            f"/terminals/{serial}/activation",
            json={"code": code[1]},
            headers={"Idempotency-Key": f"activate-{serial}-{code[0]}"},
        )
        assert response.is_success, response.text
        account = await eventually(
            merchant, lambda m: m["counters"].get("swaps") == 1 and not m["queue"], "swap done"
        )
        states = {t["serial"]: t for t in account["terminals"]}
        assert states[serial]["state"] == "active" and states[serial]["test_transaction"]
        assert states[original]["state"] == "returning"
        assert states[original]["replaced_by"] == serial
        swapped_in = await terminal(serial)
        assert swapped_in["status"] == "activated" and swapped_in["mid"] == mid

        # Closed at the merchant's request, by an operator.
        closure = {
            "request_id": "close-1",
            "reason": "the shop closes for good",
            "requested_by": app.contact.name,
        }
        response = await gateway.post(
            f"/api/merchants/{mid}/closure", json=closure, headers=OPERATOR
        )
        assert response.status_code == 200 and response.json()["outcome"] == "applied", (
            response.text
        )
        account = await eventually(merchant, lambda m: m["state"] == "closed", "account closed")
        assert account["closure_cause"] == "requested" and account["closed_at"]
        assert Decimal(account["deposit_held"]) == 0
        assert {t["serial"]: t["state"] for t in account["terminals"]} == {
            original: "returning",
            serial: "returning",
        }

        # The device service: both units back on the shelf once logistics has them home...
        for unit in (original, serial):
            back = await eventually(
                partial(terminal, unit),
                lambda t: t["status"] == "in_stock",
                f"{unit} back in stock",
            )
            assert back["mid"] is None and back["tid"] is None and back["bound_to"] is None
        with stack.services["logistics"].session() as session:
            returns = session.exec(
                select(logistics.LogisticsShipment)
                .where(
                    logistics.LogisticsShipment.merchant_id == mid,
                    logistics.LogisticsShipment.kind == "return",
                )
                .order_by(col(logistics.LogisticsShipment.created_at))
            ).all()
        assert [(r.serials, r.status) for r in returns] == [
            ([original], "delivered"),
            ([serial], "delivered"),
        ]
        # ...the MID and every TID retired.
        retired = (await device_http.get(f"/merchants/{mid}")).json()
        assert retired["state"] == "retired" and retired["retired_at"]
        assert retired["terminals"] == []
        assert retired["tids"] and all(t["retired_at"] for t in retired["tids"])
        assert sorted(retired["retired_tids"]) == sorted(t["tid"] for t in retired["tids"])
        assert sorted(account["retired_tids"]) == sorted(retired["retired_tids"])

        # The contract service: terminated, the deposit refunded, the fees kept (a bill paid
        # while the account closed is refunded; one never paid is written off).
        held = await contract()
        assert held["status"] == "terminated" and held["terminated_at"]
        refunds = {r["payment_reference"]: Decimal(r["amount"]) for r in held["refunds"]}
        assert refunds[f"AUTO-{contract_id}"] == BANK_DEPOSIT
        billed = {b["bill_id"]: b for b in held["bills"]}
        assert billed[first["bill_id"]]["status"] == "paid"
        assert first["payment_reference"] not in refunds
        for bill in account["bills"]:
            there = billed[bill["bill_id"]]
            if bill["paid_after_closing"]:
                assert there["status"] == "refunded" and bill["refunded"], bill
            elif bill["paid_at"] is not None:
                assert there["status"] == "paid", bill
            else:
                assert there["status"] == "issued", bill
        assert len(held["bills"]) == len(account["bills"])
        assert set(refunds) == {f"AUTO-{contract_id}"} | {
            b["payment_reference"] for b in account["bills"] if b["paid_after_closing"]
        }

    # The gateway: the row closed, as requested (shown from its snapshot now the account is
    # closed); the audit trail holds what was applied.
    [row] = await eventually(listed, lambda rows: rows[0]["state"] == "closed", "row closed")
    assert row["closure_cause"] == "requested" and row["closed_at"]
    shown = await gateway.get(f"/api/merchants/{mid}")
    assert shown.headers["X-Posflow-Source"] == "snapshot"
    assert shown.json()["closure_cause"] == "requested"
    messages = (await gateway.get(f"/api/merchants/{mid}/messages")).json()
    applied = {m["kind"] for m in messages if m["outcome"] == "applied"}
    assert {
        "fee_paid",
        "report_fault",
        "delivery_outcome",
        "terminal_activated",
        "request_closure",
    } <= applied, messages
    [closing] = [m for m in messages if m["kind"] == "request_closure"]
    assert closing["actor"] and closing["reason"] == closure["reason"]


async def test_a_bill_during_a_swap_charges_one_fee_for_the_unit_and_its_replacement(
    stack: Stack,
) -> None:
    """A one-terminal merchant swaps its terminal; the anniversary falls after the replacement
    is proven but before the faulty unit's return is arranged (logistics is down for a few
    seconds, as it may be for days): it is billed for one terminal, not two."""
    app = new_application(channel=Channel.BANK)
    live = await stack.go_live(app, SHORT_YEAR)
    mid: str = live["mid"]
    [original] = [t["serial"] for t in live["terminals"]]

    async def merchant() -> dict[str, Any]:
        return dict((await stack.gateway.get(f"/api/merchants/{mid}")).json())

    async def listed() -> list[dict[str, Any]]:
        return list((await stack.gateway.get("/api/merchants", params={"q": mid})).json())

    # A merchant key acts on the merchants the gateway lists (has a snapshot of) only.
    await eventually(listed, lambda rows: len(rows) == 1, "merchant listed")
    fault = {
        "request_id": "fault-1",
        "serial": original,
        "description": "the card reader fails",
        "reported_by": app.contact.name,
    }
    response = await stack.gateway.post(
        f"/api/merchants/{mid}/faults", json=fault, headers=MERCHANT
    )
    assert response.status_code == 200, response.text
    account = await eventually(
        merchant,
        lambda m: any(t["replaces"] == original for t in m["terminals"]),
        "replacement bound",
    )
    [serial] = [t["serial"] for t in account["terminals"] if t["replaces"] == original]
    code = await eventually(
        lambda: asyncio.to_thread(unused_code, stack, serial), lambda c: c is not None, "code"
    )
    assert code is not None
    # Delivered already (the code is issued on delivery): logistics is next needed to take the
    # faulty unit back, after the replacement's test transaction.
    await stop_all([stack.served["logistics"]])
    try:
        async with httpx.AsyncClient(base_url=stack.served["device"].url) as http:
            response = await http.post(
                f"/terminals/{serial}/activation",
                json={"code": code[1]},
                headers={"Idempotency-Key": f"activate-{serial}-{code[0]}"},
            )
            assert response.is_success, response.text
        account = await eventually(
            merchant,
            lambda m: any(t["serial"] == serial and t["state"] == "active" for t in m["terminals"]),
            "replacement in service",
        )
        since = next(at(t["since"]) for t in account["terminals"] if t["serial"] == serial)
        account = await eventually(
            merchant,
            lambda m: any(at(b["issued_at"]) >= since for b in m["bills"]),
            "a bill after the replacement went into service",
            seconds=10,
        )
        states = {t["serial"]: t["state"] for t in account["terminals"]}
        assert states == {original: "faulty", serial: "active"}
    finally:
        stack.served["logistics"] = await serve(
            "logistics", stack.services["logistics"].app, stack.ports["logistics"]
        )
    [bill] = [b for b in account["bills"] if at(b["issued_at"]) >= since]
    # Closed, so its bills stop; the swap finishes first (the return is retried meanwhile).
    await eventually(merchant, lambda m: m["counters"].get("swaps") == 1, "swap done")
    closure = {"request_id": "close-1", "reason": "test over", "requested_by": app.contact.name}
    response = await stack.gateway.post(
        f"/api/merchants/{mid}/closure", json=closure, headers=OPERATOR
    )
    assert response.status_code == 200, response.text
    await eventually(merchant, lambda m: m["state"] == "closed", "account closed")
    # One terminal was in service: the replacement (the faulty unit has no TID since the swap).
    assert (bill["terminals"], Decimal(bill["amount"])) == (1, BANK_SERVICE_FEE), bill


def at(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


def unused_code(stack: Stack, serial: str) -> tuple[int | None, str] | None:
    """The activation code the merchant got by SMS for `serial`, once issued (its row id, the
    code): a unit back in stock from an earlier merchant keeps that merchant's used code."""
    with stack.services["device"].session() as session:
        row = session.exec(
            select(device.ActivationCodeRow)
            .where(
                device.ActivationCodeRow.serial == serial,
                col(device.ActivationCodeRow.used_at).is_(None),
                col(device.ActivationCodeRow.revoked_at).is_(None),
            )
            .order_by(col(device.ActivationCodeRow.id).desc())
        ).first()
    return (row.id, row.code) if row is not None else None
