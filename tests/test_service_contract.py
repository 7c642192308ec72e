"""The contract / e-sign service on real HTTP: issue, sign, pay, void, refund, its signed callbacks,
idempotency, restart, the demo auto-signer, and the activities that call it; after go-live, fee
bills and their payments (`FeePaid` to the merchant's route), their refunds, termination and the
demo auto-payer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.contract import contract_activities
from schemas import steps
from schemas.merchant import FeePaid
from schemas.messages import ContractEvent, ContractEventKind
from services.base import Callback, Service, ServiceConfig, ServiceError
from services.contract import Agreement, auto_pay_due, auto_pay_settings, build, new_id, sign
from services.notification import personal_number
from tests.servers import CallbackRecorder, free_port, serving


def contract_config(tmp_path: Path, gateway_url: str, **options: str) -> ServiceConfig:
    return ServiceConfig(
        name="contract",
        database_url=f"sqlite:///{tmp_path / 'contract.db'}",
        gateway_url=gateway_url,
        options=options,
    )


@dataclass
class Stack:
    service: Service
    recorder: CallbackRecorder
    http: httpx.AsyncClient
    url: str

    async def post(self, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        return await self.http.post(
            path, json=body, headers={"Idempotency-Key": key or str(uuid.uuid4())}
        )

    async def issue(self, deposit: str = "299.00", application_id: str = "APP-1") -> str:
        response = await self.post("/contracts", issue_body(deposit, application_id))
        assert response.status_code == 201, response.text
        return str(response.json()["contract_id"])

    async def contract(self, contract_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/contracts/{contract_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data


def issue_body(deposit: str = "299.00", application_id: str = "APP-1") -> dict[str, Any]:
    return {
        "application_id": application_id,
        "merchant_name": "杭州西湖小吃店",
        "channel": "lakala",
        "deposit_amount": deposit,
        "device_model": "LKL-A8",
        "quantity": 2,
    }


@asynccontextmanager
async def stack(tmp_path: Path, *, fail_first: int = 0, **options: str) -> AsyncIterator[Stack]:
    recorder = CallbackRecorder(fail_first=fail_first)
    async with serving(recorder.app) as gateway:
        service = build(contract_config(tmp_path, gateway, **options))
        async with serving(service.app) as url, httpx.AsyncClient(base_url=url) as http:
            yield Stack(service, recorder, http, url)


def events(received: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, ContractEvent]]:
    return [(path, ContractEvent.model_validate(body)) for path, body in received]


async def test_issue_sign_pay_sends_signed_callbacks(tmp_path: Path) -> None:
    port = free_port()
    recorder = CallbackRecorder()
    async with serving(recorder.app) as gateway:
        config = contract_config(tmp_path, gateway, public_url=f"http://127.0.0.1:{port}")
        service = build(config)
        async with serving(service.app, port) as url, httpx.AsyncClient(base_url=url) as http:
            s = Stack(service, recorder, http, url)
            response = await s.post("/contracts", issue_body("299"))
            assert response.status_code == 201
            issued = response.json()
            cid = issued["contract_id"]
            assert issued == {
                "contract_id": cid,
                "signing_url": f"{url}/sign/{cid}",
                "status": "issued",
                "deposit_due": "299.00",
            }
            page = await http.get(f"/sign/{cid}")
            assert page.status_code == 200 and cid in page.text and "杭州西湖小吃店" in page.text
            assert "费率): 0.60%" in page.text  # the default: the UnionPay standard rate
            alipay = await s.post(
                "/contracts", {**issue_body("0", "APP-RATE"), "card_rate_percent": "0.38"}
            )
            shown = await s.contract(alipay.json()["contract_id"])
            assert shown["card_rate_percent"] == "0.38"
            too_high = await s.post("/contracts", {**issue_body(), "card_rate_percent": "9"})
            assert too_high.status_code == 422 and "card_rate_percent" in too_high.json()["fields"]

            signed = await s.post(f"/contracts/{cid}/signature", {"signer_name": "王芳"})
            assert signed.status_code == 200, signed.text
            assert signed.json()["status"] == "signed" and signed.json()["signer_name"] == "王芳"
            again = await s.post(f"/contracts/{cid}/signature", {"signer_name": "王芳"})
            assert again.status_code == 409 and "already signed" in again.json()["message"]

            wrong = await s.post(
                f"/contracts/{cid}/payments", {"amount": "99.00", "payment_reference": "P1"}
            )
            assert wrong.status_code == 422 and "amount" in wrong.json()["fields"]
            odd = await s.post(
                f"/contracts/{cid}/payments", {"amount": "299.001", "payment_reference": "P1"}
            )
            assert odd.status_code == 422 and "amount" in odd.json()["fields"]
            paid = await s.post(
                f"/contracts/{cid}/payments", {"amount": "299.00", "payment_reference": "P1"}
            )
            assert paid.status_code == 201, paid.text
            twice = await s.post(
                f"/contracts/{cid}/payments", {"amount": "299.00", "payment_reference": "P2"}
            )
            assert twice.status_code == 409 and twice.json()["error"] == "nothing_due"

            received = events(await recorder.wait_for(2))
            assert recorder.refused == []
            assert [path for path, _ in received] == ["/api/applications/APP-1/contract"] * 2
            first, second = (event for _, event in received)
            assert (first.contract_id, first.kind, first.amount) == (
                cid,
                ContractEventKind.SIGNED,
                None,
            )
            assert (second.kind, second.amount, second.payment_reference) == (
                ContractEventKind.DEPOSIT_PAID,
                Decimal("299.00"),
                "P1",
            )
            assert first.event_id != second.event_id
            uuid.UUID(first.event_id)

            state = await s.contract(cid)
            assert state["status"] == "signed"
            assert (state["deposit_due"], state["paid"], state["refunded"]) == (
                "0.00",
                "299.00",
                "0.00",
            )
            assert [h["kind"] for h in state["history"]] == ["issued", "signed", "deposit_paid"]


async def test_callbacks_are_retried_until_the_gateway_takes_them(tmp_path: Path) -> None:
    async with stack(tmp_path, fail_first=2) as s:
        cid = await s.issue("0")
        assert (await s.post(f"/contracts/{cid}/signature", {"signer_name": "A"})).is_success
        [(_, event)] = events(await s.recorder.wait_for(1, seconds=8))
        assert event.kind is ContractEventKind.SIGNED
        # The recorder sees the callback before the outbox commits it as delivered: wait for that.
        for _ in range(200):
            with s.service.session() as session:
                [callback] = session.exec(select(Callback)).all()
            if callback.delivered_at is not None:
                break
            await asyncio.sleep(0.02)
        assert callback.attempts == 3 and callback.delivered_at is not None


async def test_zero_deposit_has_nothing_due(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        cid = await s.issue("0.00")
        assert (await s.contract(cid))["deposit_due"] == "0.00"
        paid = await s.post(f"/contracts/{cid}/payments", {"amount": "1", "payment_reference": "P"})
        assert paid.status_code == 409
        refund = await s.post(
            f"/contracts/{cid}/refunds", {"amount": "1", "payment_reference": "P"}
        )
        assert refund.status_code == 409 and refund.json()["error"] == "nothing_paid"


async def test_idempotent_issue(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        first = await s.post("/contracts", issue_body(), key="k-1")
        # The same amount written differently is the same request.
        second = await s.post("/contracts", issue_body("299"), key="k-1")
        assert first.status_code == second.status_code == 201
        assert first.json() == second.json()
        assert second.headers["Idempotent-Replay"] == "true"
        other = await s.post("/contracts", issue_body("99.00"), key="k-1")
        assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"
        keyless = await s.http.post("/contracts", json=issue_body())
        assert keyless.status_code == 400
        bad = await s.post("/contracts", {**issue_body("1.234"), "quantity": 0})
        assert bad.status_code == 422
        assert set(bad.json()["fields"]) == {"deposit_amount", "quantity"}
        with s.service.session() as session:
            assert len(session.exec(select(Agreement)).all()) == 1


async def test_void_refunds_a_paid_deposit_and_a_later_refund_gets_that_refund(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path) as s:
        cid = await s.issue("99.00")
        pay = {"amount": "99.00", "payment_reference": "PAY-9"}
        early = await s.post(f"/contracts/{cid}/refunds", pay)
        assert early.status_code == 409 and early.json()["error"] == "nothing_paid"
        assert (await s.post(f"/contracts/{cid}/payments", pay)).status_code == 201

        too_much = await s.post(
            f"/contracts/{cid}/refunds", {"amount": "99.01", "payment_reference": "PAY-9"}
        )
        assert too_much.status_code == 409 and too_much.json()["error"] == "refund_exceeds_paid"
        stranger = await s.post(
            f"/contracts/{cid}/refunds", {"amount": "99.00", "payment_reference": "PAY-X"}
        )
        assert stranger.status_code == 422 and "payment_reference" in stranger.json()["fields"]

        voided = await s.post(f"/contracts/{cid}/void", {"reason": "withdrawn"})
        assert voided.status_code == 200
        undone = steps.Undone.model_validate(voided.json())
        assert undone.reference == cid
        state = await s.contract(cid)
        [refund] = state["refunds"]
        assert (refund["amount"], refund["payment_reference"]) == ("99.00", "PAY-9")
        assert undone.detail == (
            f"voided: withdrawn; deposit refunded: 99.00 as {refund['refund_id']} (payment PAY-9)"
        )
        assert (state["status"], state["paid"], state["refunded"], state["deposit_due"]) == (
            "void",
            "99.00",
            "99.00",
            "0.00",
        )
        assert [h["kind"] for h in state["history"]][-2:] == ["voided", "refunded"]
        assert state["history"][-1]["detail"] == "99.00 ref PAY-9"  # as the refund endpoint

        again = await s.post(f"/contracts/{cid}/void", {"reason": "expired"})
        assert again.status_code == 200 and again.json()["detail"] == "already void: withdrawn"

        # The workflow's own refund, after the void gave the money back: that refund, no error.
        for key in ("refund-1", "refund-2"):
            refunded = await s.post(f"/contracts/{cid}/refunds", pay, key=key)
            assert refunded.status_code == 200, refunded.text
            assert refunded.json() == {"refund_id": refund["refund_id"]}
        replay = await s.post(f"/contracts/{cid}/refunds", pay, key="refund-1")
        assert replay.status_code == 200 and replay.headers["Idempotent-Replay"] == "true"
        more = await s.post(
            f"/contracts/{cid}/refunds", {"amount": "99.01", "payment_reference": "PAY-9"}
        )
        assert more.status_code == 409 and more.json()["error"] == "refund_exceeds_paid"
        state = await s.contract(cid)
        assert len(state["refunds"]) == 1 and state["refunded"] == "99.00"

        # A void contract takes no money and no signature.
        late = await s.post(f"/contracts/{cid}/payments", pay)
        assert late.status_code == 409 and late.json()["error"] == "contract_void"
        sign = await s.post(f"/contracts/{cid}/signature", {"signer_name": "A"})
        assert sign.status_code == 409 and sign.json()["error"] == "contract_void"
        assert (await s.http.get("/contracts/CT-NOPE")).status_code == 404


async def test_a_refund_before_the_void_is_not_repeated_by_it(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        cid = await s.issue("299.00")
        pay = {"amount": "299.00", "payment_reference": "PAY-1"}
        assert (await s.post(f"/contracts/{cid}/payments", pay)).status_code == 201
        first = await s.post(f"/contracts/{cid}/refunds", pay, key="r-1")
        assert first.status_code == 201
        refund_id = first.json()["refund_id"]
        other_key = await s.post(f"/contracts/{cid}/refunds", pay, key="r-2")
        assert (other_key.status_code, other_key.json()) == (200, {"refund_id": refund_id})

        voided = await s.post(f"/contracts/{cid}/void", {"reason": "withdrawn"})
        assert voided.json()["detail"] == "voided: withdrawn"  # nothing left to give back
        state = await s.contract(cid)
        assert [r["refund_id"] for r in state["refunds"]] == [refund_id]
        assert state["refunded"] == "299.00"


async def test_void_refunds_what_a_partial_refund_left(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        cid = await s.issue("100.00")
        pay = {"amount": "100.00", "payment_reference": "PAY-2"}
        assert (await s.post(f"/contracts/{cid}/payments", pay)).status_code == 201
        part = {"amount": "40.10", "payment_reference": "PAY-2"}
        assert (await s.post(f"/contracts/{cid}/refunds", part)).status_code == 201
        rest = await s.post(f"/contracts/{cid}/refunds", pay)
        assert rest.status_code == 409 and rest.json()["error"] == "refund_exceeds_paid"

        voided = await s.post(f"/contracts/{cid}/void", {"reason": "expired"})
        assert "deposit refunded: 59.90 as RF-" in voided.json()["detail"]
        state = await s.contract(cid)
        assert [r["amount"] for r in state["refunds"]] == ["40.10", "59.90"]
        assert state["refunded"] == "100.00"
        # Asked for the whole deposit now: it is back, the answer is the last refund.
        whole = await s.post(f"/contracts/{cid}/refunds", pay)
        assert (whole.status_code, whole.json()) == (
            200,
            {"refund_id": state["refunds"][-1]["refund_id"]},
        )


async def test_void_of_an_unpaid_contract_refunds_nothing(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        cid = await s.issue("99.00")
        voided = await s.post(f"/contracts/{cid}/void", {"reason": "expired"})
        assert voided.json() == {"reference": cid, "detail": "voided: expired"}
        state = await s.contract(cid)
        assert (state["refunds"], state["refunded"], state["deposit_due"]) == ([], "0.00", "0.00")
        pay = {"amount": "99.00", "payment_reference": "PAY-3"}
        late = await s.post(f"/contracts/{cid}/payments", pay)
        assert late.status_code == 409 and late.json()["error"] == "contract_void"
        assert (await s.contract(cid))["paid"] == "0.00"


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        cid = await s.issue("99.00")
        paid = await s.post(
            f"/contracts/{cid}/payments", {"amount": "99.00", "payment_reference": "R1"}, key="p-1"
        )
        await s.recorder.wait_for(1)
    async with stack(tmp_path) as s:
        state = await s.contract(cid)
        assert (state["paid"], state["payments"][0]["payment_reference"]) == ("99.00", "R1")
        replay = await s.post(
            f"/contracts/{cid}/payments", {"amount": "99.00", "payment_reference": "R1"}, key="p-1"
        )
        assert replay.json() == paid.json()
        await s.post(f"/contracts/{cid}/signature", {"signer_name": "B"})
        # Only the new signature is called back: the payment's callback was delivered before.
        [(_, event)] = events(await s.recorder.wait_for(1))
        assert event.kind is ContractEventKind.SIGNED


async def test_auto_signer_signs_and_pays(tmp_path: Path) -> None:
    async with stack(tmp_path, auto_sign="true", auto_sign_delay_ms="50") as s:
        cid = await s.issue("299.00")
        free = await s.issue("0", application_id="APP-2")
        received = events(await s.recorder.wait_for(3))
        by_app = sorted((path.split("/")[3], event.kind.value) for path, event in received)
        assert by_app == [("APP-1", "deposit_paid"), ("APP-1", "signed"), ("APP-2", "signed")]
        paid = next(e for _, e in received if e.kind is ContractEventKind.DEPOSIT_PAID)
        assert (paid.contract_id, paid.amount) == (cid, Decimal("299.00"))
        state = await s.contract(cid)
        assert (state["status"], state["signer_name"], state["paid"]) == (
            "signed",
            "auto-signer",
            "299.00",
        )
        assert (await s.contract(free))["status"] == "signed"


async def test_activities_against_the_service(tmp_path: Path) -> None:
    env = ActivityEnvironment()
    async with stack(tmp_path) as s:
        acts = contract_activities(s.url)
        request = steps.IssueContract(
            idempotency_key="wf-1/issue_contract",
            application_id="APP-7",
            merchant_name="成都火锅店",
            channel="bank",
            deposit_amount=Decimal("99"),
            device_model="LKL-A8",
            quantity=1,
        )
        issued = await env.run(acts.issue_contract, request)
        assert type(issued) is steps.ContractIssued
        assert issued == await env.run(acts.issue_contract, request)  # a retry: the same contract
        cid = issued.contract_id
        pay = {"amount": "99.00", "payment_reference": "PAY-7"}
        assert (await s.post(f"/contracts/{cid}/payments", pay)).status_code == 201

        refund = steps.RefundDeposit(
            idempotency_key="wf-1/refund_deposit",
            application_id="APP-7",
            contract_id=cid,
            amount=Decimal("99.00"),
            payment_reference="PAY-7",
        )
        refunded = await env.run(acts.refund_deposit, refund)
        assert type(refunded) is steps.Refunded
        # Asked again under another key: the money is back already, that refund is the answer.
        again = refund.model_copy(update={"idempotency_key": "k2"})
        assert await env.run(acts.refund_deposit, again) == refunded
        with pytest.raises(ApplicationError) as refused:
            await env.run(
                acts.refund_deposit,
                refund.model_copy(update={"idempotency_key": "k3", "amount": Decimal("99.01")}),
            )
        assert refused.value.non_retryable and refused.value.type == "refund_exceeds_paid"

        void = steps.VoidContract(
            idempotency_key="wf-1/void_contract",
            application_id="APP-7",
            contract_id=cid,
            reason="withdrawn",
        )
        undone = await env.run(acts.void_contract, void)
        assert type(undone) is steps.Undone and undone.reference == cid
        assert undone.detail == "voided: withdrawn"  # refunded before: nothing more to give back
        await acts.client.aclose()

    closed = contract_activities(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ApplicationError) as unreachable:
        await env.run(closed.void_contract, void)
    assert unreachable.value.type == "ServiceUnavailable" and not unreachable.value.non_retryable
    await closed.client.aclose()


async def test_a_stale_writer_is_refused(tmp_path: Path) -> None:
    """Two writers that read the same contract (the auto-signer and the merchant, say): the
    second one's sign is refused instead of signing and calling back twice."""
    async with stack(tmp_path) as s:
        cid = await s.issue("0")
        with s.service.session() as first, s.service.session() as second:
            mine, theirs = first.get(Agreement, cid), second.get(Agreement, cid)
            assert mine is not None and theirs is not None
            sign(first, mine, "A")
            first.commit()
            with pytest.raises(ServiceError) as refused:
                sign(second, theirs, "B")
            assert (refused.value.status, refused.value.error) == (409, "concurrent_update")
            second.rollback()
        assert (await s.contract(cid))["signer_name"] == "A"
        await s.recorder.wait_for(1)
        await asyncio.sleep(0.3)
        assert len(s.recorder.received) == 1


# --- after go-live: bills, refunds of a bill's payment, termination ---------------------------

MID = "102310058120001"


def bill_body(
    period: int = 1, amount: str = "360.00", due_at: datetime | None = None, **extra: Any
) -> dict[str, Any]:
    due = due_at or datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    return {
        "merchant_id": MID,
        "application_id": "APP-1",
        "period": period,
        "annual_fee": "300.00",
        "service_fee": "60",
        "amount": amount,
        "due_at": due.isoformat(),
        **extra,
    }


async def live_contract(s: Stack, merchant_name: str = "杭州西湖小吃店") -> str:
    """A contract as it stands after go-live: signed, its deposit paid."""
    body = {**issue_body("299.00"), "merchant_name": merchant_name}
    response = await s.post("/contracts", body)
    assert response.status_code == 201, response.text
    cid = str(response.json()["contract_id"])
    assert (await s.post(f"/contracts/{cid}/signature", {"signer_name": "王芳"})).is_success
    deposit = {"amount": "299.00", "payment_reference": "DEP-1"}
    assert (await s.post(f"/contracts/{cid}/payments", deposit)).status_code == 201
    return cid


async def issue_bill(s: Stack, cid: str, **body: Any) -> dict[str, Any]:
    response = await s.post(f"/contracts/{cid}/bills", bill_body(**body))
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def fee_payments(received: list[tuple[str, dict[str, Any]]]) -> list[FeePaid]:
    return [
        FeePaid.model_validate(body)
        for path, body in received
        if path == f"/api/merchants/{MID}/fee-payment"
    ]


async def test_a_paid_bill_is_called_back_to_the_merchant(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        cid = await live_contract(s)
        issued = await s.post(f"/contracts/{cid}/bills", bill_body(), key="bill-1")
        assert issued.status_code == 201, issued.text
        bill = steps.BillIssued.model_validate(issued.json())
        assert bill.bill_id.startswith("BILL-") and bill.amount == Decimal("360.00")
        assert bill.due_at == datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
        replay = await s.post(f"/contracts/{cid}/bills", bill_body(), key="bill-1")
        assert replay.json() == issued.json() and replay.headers["Idempotent-Replay"] == "true"
        assert (await s.http.get(f"/bills/{bill.bill_id}")).json()["status"] == "issued"

        wrong = await s.post(f"/bills/{bill.bill_id}/payments", {"amount": "300.00"})
        assert wrong.status_code == 422 and "amount" in wrong.json()["fields"]
        paid = await s.post(
            f"/bills/{bill.bill_id}/payments", {"amount": "360", "reference": "WX-88"}, key="pay-1"
        )
        assert paid.status_code == 201, paid.text
        assert (paid.json()["status"], paid.json()["payment_reference"]) == ("paid", "WX-88")
        again = await s.post(f"/bills/{bill.bill_id}/payments", {"amount": "360.00"})
        assert again.status_code == 409 and again.json()["error"] == "bill_paid"
        replayed = await s.post(
            f"/bills/{bill.bill_id}/payments",
            {"amount": "360.00", "reference": "WX-88"},
            key="pay-1",
        )
        assert replayed.status_code == 201 and replayed.json() == paid.json()

        [fee] = fee_payments(await s.recorder.wait_for(3))
        assert (fee.bill_id, fee.amount, fee.payment_reference) == (
            bill.bill_id,
            Decimal("360.00"),
            "WX-88",
        )
        uuid.UUID(fee.event_id)
        outbox = (await s.http.get(f"/merchants/{MID}/events")).json()["events"]
        assert [(e["kind"], e["body"]["event_id"]) for e in outbox] == [
            ("fee-payment", fee.event_id)
        ]
        # The application's own messages stay the application's.
        own = (await s.http.get("/applications/APP-1/events")).json()["events"]
        kinds = [e["kind"] for e in own]
        assert kinds == ["contract", "contract"]

        state = await s.contract(cid)
        [listed] = state["bills"]
        assert (listed["bill_id"], listed["status"], listed["merchant_id"]) == (
            bill.bill_id,
            "paid",
            MID,
        )
        assert (listed["annual_fee"], listed["service_fee"], listed["amount"]) == (
            "300.00",
            "60.00",
            "360.00",
        )
        assert (state["paid"], state["fees_paid"], state["deposit_due"]) == (
            "659.00",
            "360.00",
            "0.00",
        )
        assert [h["kind"] for h in state["history"]][-2:] == ["bill_issued", "fee_paid"]
        assert (await s.http.get("/bills/BILL-NOPE")).status_code == 404


async def test_a_bill_is_refused_when_it_is_wrong(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        cid = await live_contract(s)
        wrong = await s.post(f"/contracts/{cid}/bills", bill_body(amount="300.00"))
        assert wrong.status_code == 422 and wrong.json()["error"] == "amount_mismatch"
        assert "360.00" in wrong.json()["fields"]["amount"]
        no_mid = await s.post(f"/contracts/{cid}/bills", bill_body(merchant_id=None))
        assert no_mid.status_code == 422 and "merchant_id" in no_mid.json()["fields"]
        naive = await s.post(
            f"/contracts/{cid}/bills", {**bill_body(), "due_at": "2026-03-01T09:00:00"}
        )
        assert naive.status_code == 422 and "due_at" in naive.json()["fields"]
        other_app = await s.post(f"/contracts/{cid}/bills", bill_body(application_id="APP-2"))
        assert other_app.status_code == 409 and other_app.json()["error"] == "contract_mismatch"
        unknown = await s.post("/contracts/CT-NOPE/bills", bill_body())
        assert unknown.status_code == 404

        first = await issue_bill(s, cid)
        twice = await s.post(f"/contracts/{cid}/bills", bill_body(), key="another-key")
        assert twice.status_code == 409 and twice.json()["error"] == "period_billed"
        assert first["bill_id"] in twice.json()["fields"]["period"]
        assert (await s.post(f"/contracts/{cid}/bills", bill_body(2))).status_code == 201
        assert [b["period"] for b in (await s.contract(cid))["bills"]] == [1, 2]

        # A bill's reference is its own: reusing another payment's would mix up their refunds.
        dup = await s.post(
            f"/bills/{first['bill_id']}/payments", {"amount": "360.00", "reference": "DEP-1"}
        )
        assert dup.status_code == 409 and "reference" in dup.json()["fields"]

        voided_cid = await s.issue("0", application_id="APP-9")
        await s.post(f"/contracts/{voided_cid}/void", {"reason": "withdrawn"})
        void = await s.post(f"/contracts/{voided_cid}/bills", bill_body(application_id="APP-9"))
        assert void.status_code == 409 and void.json()["error"] == "contract_void"


async def test_a_bill_payment_is_refunded_like_the_deposit(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        cid = await live_contract(s)
        bill = await issue_bill(s, cid)
        await s.post(f"/bills/{bill['bill_id']}/payments", {"amount": "360.00", "reference": "F-1"})

        too_much = await s.post(
            f"/contracts/{cid}/refunds", {"amount": "360.01", "payment_reference": "F-1"}
        )
        assert too_much.status_code == 409 and too_much.json()["error"] == "refund_exceeds_paid"
        part = await s.post(
            f"/contracts/{cid}/refunds", {"amount": "60.00", "payment_reference": "F-1"}
        )
        assert part.status_code == 201
        assert (await s.http.get(f"/bills/{bill['bill_id']}")).json()["status"] == "paid"

        rest = {"amount": "300.00", "payment_reference": "F-1"}
        refunded = await s.post(f"/contracts/{cid}/refunds", rest, key="refund-fee")
        assert refunded.status_code == 201
        replay = await s.post(f"/contracts/{cid}/refunds", rest, key="refund-fee")
        assert replay.json() == refunded.json() and replay.headers["Idempotent-Replay"] == "true"
        shown = (await s.http.get(f"/bills/{bill['bill_id']}")).json()
        assert shown["status"] == "refunded" and shown["refunded_at"] is not None
        # Asked again under another key: the money is back already, that refund is the answer.
        again = await s.post(f"/contracts/{cid}/refunds", rest, key="refund-fee-2")
        assert (again.status_code, again.json()) == (200, refunded.json())
        whole = {"amount": "360.01", "payment_reference": "F-1"}
        more = await s.post(f"/contracts/{cid}/refunds", whole)
        assert more.status_code == 409 and more.json()["error"] == "refund_exceeds_paid"

        # The deposit is untouched by the fee's refunds, and given back on its own.
        state = await s.contract(cid)
        assert (state["paid"], state["refunded"]) == ("659.00", "360.00")
        deposit = {"amount": "299.00", "payment_reference": "DEP-1"}
        assert (await s.post(f"/contracts/{cid}/refunds", deposit)).status_code == 201
        assert (await s.contract(cid))["refunded"] == "659.00"


async def test_termination_ends_the_contract_once(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        cid = await live_contract(s)
        unpaid = await issue_bill(s, cid)
        ended = await s.post(f"/contracts/{cid}/termination", {"reason": "merchant closed"})
        assert ended.status_code == 200, ended.text
        assert steps.Undone.model_validate(ended.json()) == steps.Undone(
            reference=cid, detail="terminated: merchant closed"
        )
        again = await s.post(f"/contracts/{cid}/termination", {"reason": "contract end"})
        assert (again.status_code, again.json()) == (200, ended.json())

        state = await s.contract(cid)
        assert (state["status"], state["termination_reason"]) == ("terminated", "merchant closed")
        assert state["terminated_at"] is not None and state["deposit_due"] == "0.00"
        assert [h["kind"] for h in state["history"]].count("terminated") == 1
        assert state["refunded"] == "0.00"  # no money moves on termination

        bill = await s.post(f"/contracts/{cid}/bills", bill_body(2))
        assert bill.status_code == 409 and bill.json()["error"] == "contract_terminated"
        late = await s.post(f"/bills/{unpaid['bill_id']}/payments", {"amount": "360.00"})
        assert late.status_code == 409 and late.json()["error"] == "contract_terminated"
        void = await s.post(f"/contracts/{cid}/void", {"reason": "withdrawn"})
        assert void.status_code == 409 and void.json()["error"] == "contract_terminated"
        sign = await s.post(f"/contracts/{cid}/signature", {"signer_name": "B"})
        assert sign.status_code == 409 and sign.json()["error"] == "contract_terminated"
        # The deposit still comes back, payment by payment.
        deposit = {"amount": "299.00", "payment_reference": "DEP-1"}
        assert (await s.post(f"/contracts/{cid}/refunds", deposit)).status_code == 201


async def test_auto_payer_heeds_the_merchant_markers(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        past = datetime.now(UTC) - timedelta(days=1)
        future = datetime.now(UTC) + timedelta(days=30)
        bills = {}
        for name, due in [
            ("杭州西湖小吃店", future),
            ("慢付商店 [late]", future),
            ("逾期商店 [late]", past),
            ("不付商店 [unpaid]", past),
        ]:
            cid = await live_contract(s, merchant_name=name)
            bills[name] = (await issue_bill(s, cid, due_at=due))["bill_id"]
        ended = await live_contract(s, merchant_name="已终止")
        bills["已终止"] = (await issue_bill(s, ended))["bill_id"]
        await s.post(f"/contracts/{ended}/termination", {"reason": "closed"})

        assert auto_pay_due(s.service, 0.0) == 2
        statuses = {
            name: (await s.http.get(f"/bills/{bill_id}")).json()["status"]
            for name, bill_id in bills.items()
        }
        assert statuses == {
            "杭州西湖小吃店": "paid",
            "慢付商店 [late]": "issued",
            "逾期商店 [late]": "paid",
            "不付商店 [unpaid]": "issued",
            "已终止": "issued",
        }
        assert auto_pay_due(s.service, 0.0) == 0


async def test_auto_payer_pays_in_the_background(tmp_path: Path) -> None:
    async with stack(tmp_path, auto_pay_bills="true", auto_pay_delay_ms="50") as s:
        cid = await live_contract(s)
        bill = await issue_bill(s, cid)
        [fee] = fee_payments(await s.recorder.wait_for(3))
        assert (fee.bill_id, fee.payment_reference) == (bill["bill_id"], f"AUTO-{bill['bill_id']}")
        assert (await s.http.get(f"/bills/{bill['bill_id']}")).json()["status"] == "paid"


def test_auto_pay_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ServiceConfig(name="contract", database_url="sqlite://")
    monkeypatch.delenv("POSFLOW_CONTRACT_AUTO_PAY", raising=False)
    monkeypatch.delenv("POSFLOW_CONTRACT_AUTO_PAY_DELAY_MS", raising=False)
    assert auto_pay_settings(config) == (False, 0.5)
    monkeypatch.setenv("POSFLOW_CONTRACT_AUTO_PAY", "TRUE")
    monkeypatch.setenv("POSFLOW_CONTRACT_AUTO_PAY_DELAY_MS", "20")
    assert auto_pay_settings(config) == (True, 0.02)
    options = {"auto_pay_delay_ms": "100"}
    assert auto_pay_settings(ServiceConfig("contract", "sqlite://", options=options)) == (True, 0.1)


async def test_after_go_live_activities_against_the_service(tmp_path: Path) -> None:
    env = ActivityEnvironment()
    async with stack(tmp_path) as s:
        acts = contract_activities(s.url)
        cid = await live_contract(s)
        request = steps.IssueBill(
            idempotency_key="merchant-1/bill/1",
            application_id="APP-1",
            merchant_id=MID,
            contract_id=cid,
            period=1,
            annual_fee=Decimal("300"),
            service_fee=Decimal("60"),
            amount=Decimal("360"),
            due_at=datetime(2026, 3, 1, tzinfo=UTC),
        )
        bill = await env.run(acts.issue_bill, request)
        assert type(bill) is steps.BillIssued and bill.amount == Decimal("360.00")
        assert await env.run(acts.issue_bill, request) == bill  # a retry: the same bill
        with pytest.raises(ApplicationError) as unsent:
            await env.run(
                acts.issue_bill,
                request.model_copy(update={"idempotency_key": "k-2", "merchant_id": None}),
            )
        assert unsent.value.non_retryable and unsent.value.type == "invalid_request"

        paid = await s.post(f"/bills/{bill.bill_id}/payments", {"amount": "360.00"})
        reference = paid.json()["payment_reference"]
        refund = steps.RefundPayment(
            idempotency_key="merchant-1/refund/1",
            application_id="APP-1",
            merchant_id=MID,
            contract_id=cid,
            amount=Decimal("360.00"),
            payment_reference=reference,
        )
        refunded = await env.run(acts.refund_payment, refund)
        assert type(refunded) is steps.Refunded
        assert await env.run(acts.refund_payment, refund) == refunded
        assert (await s.http.get(f"/bills/{bill.bill_id}")).json()["status"] == "refunded"

        terminate = steps.TerminateContract(
            idempotency_key="merchant-1/terminate",
            application_id="APP-1",
            merchant_id=MID,
            contract_id=cid,
            reason="closed",
        )
        undone = await env.run(acts.terminate_contract, terminate)
        assert undone == steps.Undone(reference=cid, detail="terminated: closed")
        other_key = terminate.model_copy(update={"idempotency_key": "k-3"})
        assert await env.run(acts.terminate_contract, other_key) == undone
        with pytest.raises(ApplicationError) as refused:
            await env.run(
                acts.issue_bill, request.model_copy(update={"idempotency_key": "k-4", "period": 2})
            )
        assert refused.value.non_retryable and refused.value.type == "contract_terminated"
        assert set(acts.all()) >= {acts.issue_bill, acts.refund_payment, acts.terminate_contract}
        await acts.client.aclose()


def test_ids_never_look_like_a_card_number_in_a_notice() -> None:
    """A signing link the notification service refused: 16 hexadecimal characters that were
    all digits. Every id now has letters enough for the personal-number check."""
    assert personal_number("http://127.0.0.1:8102/sign/CT-4027318859106274") is not None
    for _ in range(20_000):
        contract_id = new_id("CT")
        assert len(contract_id) == 19
        assert personal_number(f"http://127.0.0.1:8102/sign/{contract_id}") is None, contract_id
