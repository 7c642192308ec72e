"""The gateway's merchant API (after go-live) over real HTTP, in front of a stand-in
`MerchantAccount` workflow on the time-skipping server: the same update names as the real one,
so routing, signatures, roles, the 200/202/409/422 answers and the audit trail are tested
without the real workflow; the store is fed by the real `project_merchant` activity."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from temporalio import workflow
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.projection import ProjectionActivities
from gateway.app import PENDING_DETAIL, SIGNERS, GatewaySettings, create_app
from schemas.merchant import (
    AccountEvent,
    AccountState,
    Bill,
    Binding,
    ClosureCause,
    ClosureRequest,
    FaultReport,
    FeePaid,
    Inspection,
    InspectionResult,
    MerchantStatus,
    MerchantTerminal,
    RebindingDecision,
    RebindingRequest,
    SuspensionReason,
    TerminalOrder,
    TerminalState,
    merchant_workflow_id,
)
from schemas.messages import Ack, AdminAction, DeliveryOutcome, Refusal, TerminalActivated
from schemas.status import Attention, AttentionKind
from services.signing import HEADER, sign
from tests.servers import serving

VIEWER, OPERATOR, ADMIN = "m-viewer", "m-operator", "m-admin"
TOKENS = {VIEWER: "viewer", OPERATOR: "operator", ADMIN: "admin"}
ALL_KEY, BANK_KEY = "m-merchant-all", "m-merchant-bank"
SECRETS = {s: f"{s}-merchant-secret" for s in SIGNERS}
WAIT = 0.5  # the gateway's update wait: short, so "pending" comes quickly
ACCOUNT = "6222021234567890128"  # a full settlement account number: never kept whole


def mid_for(n: int) -> str:
    return f"{898310000000000 + n:015d}"


def merchant_status(
    mid: str,
    *,
    version: int = 1,
    state: AccountState = AccountState.ACTIVE,
    name: str = "Sunrise Noodles",
    channel: str = "bank",
    suspensions: list[SuspensionReason] | None = None,
    fees_due: str = "0.00",
    fees_overdue: str = "0.00",
    attention: AttentionKind | None = None,
    run_id: str = "run-1",
    closed: bool = False,
) -> MerchantStatus:
    """A merchant account as its workflow would report it: went live ten days ago, one terminal
    replaced, one binding replaced, a bill, a passed inspection."""
    now = datetime.now(UTC)
    live = now - timedelta(days=10)
    return MerchantStatus(
        mid=mid,
        workflow_id=merchant_workflow_id(mid),
        application_id=f"APP-{mid[-6:]}",
        run_id=run_id,
        version=version,
        channel=channel,
        merchant_type="individual",
        merchant_name=name,
        state=state,
        suspensions=suspensions or [],
        suspended_since=now - timedelta(days=1) if suspensions else None,
        went_live_at=live,
        contract_id=f"C-{mid[-6:]}",
        contract_ends_at=live + timedelta(days=365),
        fees_due=Decimal(fees_due),
        fees_overdue=Decimal(fees_overdue),
        next_bill_at=now + timedelta(days=355),
        bills=[
            Bill(
                bill_id=f"B-{mid[-6:]}-1",
                period=1,
                amount=Decimal("1200.00"),
                annual_fee=Decimal("1000.00"),
                service_fee=Decimal("200.00"),
                terminals=1,
                issued_at=live,
                due_at=live + timedelta(days=30),
                overdue=Decimal(fees_overdue) > 0,
            )
        ],
        next_inspection_at=now + timedelta(days=80),
        inspection=Inspection(
            inspection_id=f"I-{mid[-6:]}",
            booked_at=live,
            scheduled_for=live + timedelta(days=2),
            due_at=live + timedelta(days=5),
            passed=True,
            inspector="王检查",
            findings=["terminal clean"],
            reported_at=live + timedelta(days=2),
        ),
        terminals=[
            MerchantTerminal(
                serial="SN-OLD-1",
                model="LKL-A8",
                tid="T0000001",
                state=TerminalState.RETURNING,
                since=live,
                replaced_by="SN-NEW-2",
            ),
            MerchantTerminal(
                serial="SN-NEW-2",
                model="LKL-A8",
                tid="T0000002",
                state=TerminalState.ACTIVE,
                since=now - timedelta(days=2),
                replaces="SN-OLD-1",
                activated_at=now - timedelta(days=1),
            ),
        ],
        retired_tids=["T0000001"],
        bindings=[
            Binding(
                holder_name="张三",
                bank_name="中国工商银行",
                account_kind="personal",
                account_last4="0123",
                bound_at=live,
                unbound_at=now - timedelta(days=3),
            ),
            Binding(
                holder_name="张三",
                bank_name="中国银行",
                account_kind="personal",
                account_last4="0128",
                bound_at=now - timedelta(days=3),
            ),
        ],
        queue=["R-QUEUED-1"],
        serving="R-SERVING-1",
        attention=Attention(
            kind=attention,
            step="swap_terminal",
            reason="device service refused",
            since=now - timedelta(hours=5),
            retryable=True,
        )
        if attention
        else None,
        closure_cause=ClosureCause.REQUESTED if closed else None,
        closure_reason="shop closed" if closed else "",
        closed_at=now if closed else None,
        counters={"faults": 1},
        events=[
            AccountEvent(at=live, kind="went_live", detail="handed over"),
            AccountEvent(at=now - timedelta(days=2), kind="terminal_replaced", detail="SN-OLD-1"),
        ],
    )


# --- the stand-in workflow ------------------------------------------------------------------------


@workflow.defn(name="MerchantAccount", sandboxed=False)
class StandInMerchant:
    """The real workflow's message surface: every update acknowledges its message once (a resend
    is a duplicate); a fault for serial `NOBODY` is refused by the validator, a fee payment for
    bill `LATER` waits until `release`, a closure ends the run."""

    def __init__(self) -> None:
        self.mid = ""
        self.closed = False
        self.released = False
        self.acks: dict[str, Ack] = {}
        self.received: list[tuple[str, dict[str, Any]]] = []

    @workflow.run
    async def run(self, mid: str) -> list[str]:
        self.mid = mid
        await workflow.wait_condition(lambda: self.closed)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return [kind for kind, _ in self.received]

    def _receive(self, kind: str, message_id: str, body: Any) -> Ack:
        key = f"{kind}:{message_id}"
        if (ack := self.acks.get(key)) is not None:
            return ack.model_copy(update={"duplicate": True})
        self.received.append((kind, body.model_dump(mode="json")))
        ack = Ack(message_id=message_id, stage="active", detail=f"{kind} applied")
        self.acks[key] = ack
        return ack

    @workflow.signal
    def release(self) -> None:
        self.released = True

    @workflow.query
    def status(self) -> MerchantStatus:
        # Parked on a terminal swap, as the dashboard's admin sees it.
        return merchant_status(
            self.mid, name="Live From Workflow", version=99, attention=AttentionKind.STEP_FAILED
        )

    @workflow.query
    def messages(self) -> list[tuple[str, dict[str, Any]]]:
        return self.received

    @workflow.update
    async def fee_paid(self, paid: FeePaid) -> Ack:
        if paid.bill_id == "LATER":
            await workflow.wait_condition(lambda: self.released)
        return self._receive("fee_paid", paid.event_id, paid)

    @workflow.update
    def inspection_result(self, result: InspectionResult) -> Ack:
        return self._receive("inspection_result", result.event_id, result)

    @workflow.update
    def delivery_outcome(self, outcome: DeliveryOutcome) -> Ack:
        return self._receive("delivery_outcome", outcome.event_id, outcome)

    @workflow.update
    def terminal_activated(self, report: TerminalActivated) -> Ack:
        return self._receive("terminal_activated", report.event_id, report)

    @workflow.update
    def rebinding_decision(self, decision: RebindingDecision) -> Ack:
        return self._receive("rebinding_decision", decision.decision_id, decision)

    @workflow.update
    def report_fault(self, report: FaultReport) -> Ack:
        return self._receive("report_fault", report.request_id, report)

    @report_fault.validator
    def _known_serial(self, report: FaultReport) -> None:
        if report.serial == "NOBODY":
            raise ApplicationError(
                "no terminal NOBODY under this MID", type=Refusal.UNKNOWN_REFERENCE.value
            )

    @workflow.update
    def order_terminals(self, order: TerminalOrder) -> Ack:
        return self._receive("order_terminals", order.request_id, order)

    @workflow.update
    def rebind_settlement(self, request: RebindingRequest) -> Ack:
        return self._receive("rebind_settlement", request.request_id, request)

    @workflow.update
    def request_closure(self, request: ClosureRequest) -> Ack:
        ack = self._receive("request_closure", request.request_id, request)
        self.closed = True
        return ack

    @workflow.update
    def retry(self, action: AdminAction) -> Ack:
        return self._receive("retry", action.request_id, action)

    @workflow.update
    def extend_deadline(self, action: AdminAction) -> Ack:
        return self._receive("extend_deadline", action.request_id, action)


# --- the bench ---------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Bench:
    url: str
    app: FastAPI
    env: WorkflowEnvironment
    queue: str
    http: httpx.AsyncClient  # as a viewer
    projection: ProjectionActivities
    sent: int = 0
    last_signed_at: int = 0  # each signature a second before the one before it

    def client(self, headers: dict[str, str]) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=20, headers=headers)

    async def project(self, status: MerchantStatus) -> dict[str, Any]:
        receipt = await self.projection.project_merchant(status)
        return receipt.model_dump()

    async def start(self, mid: str, **fields: Any) -> WorkflowHandle[StandInMerchant, list[str]]:
        """A merchant the gateway knows (its first snapshot) with its workflow running."""
        await self.project(merchant_status(mid, **fields))
        return await self.env.client.start_workflow(
            StandInMerchant.run, mid, id=merchant_workflow_id(mid), task_queue=self.queue
        )

    async def signed(self, path: str, body: dict[str, Any], signer: str | None) -> httpx.Response:
        raw = json.dumps(body, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        if signer is not None:
            # Each a second before the last (back in time, whatever the clock did meanwhile): a
            # resend is signed anew, never replayed.
            self.sent += 1
            at = int(time.time()) - self.sent
            if self.last_signed_at:
                at = min(at, self.last_signed_at - 1)
            self.last_signed_at = at
            headers[HEADER] = sign(raw, SECRETS[signer], at)
        return await self.http.post(path, content=raw, headers=headers)

    async def audit(self, mid: str) -> list[dict[str, Any]]:
        answer = await self.http.get(f"/api/merchants/{mid}/messages")
        assert answer.status_code == 200, answer.text
        return list(answer.json())

    async def settled(self, mid: str, seconds: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while True:
            kept = await self.audit(mid)
            if all(m["outcome"] != "pending" for m in kept):
                return kept
            if time.monotonic() > deadline:
                raise AssertionError(f"still pending: {kept}")
            await asyncio.sleep(0.05)


def gateway_settings(tmp_path: Path, queue: str) -> GatewaySettings:
    return GatewaySettings(
        database_url=f"sqlite:///{tmp_path / f'gateway-{uuid.uuid4().hex[:6]}.db'}",
        task_queue=queue,
        secrets=dict(SECRETS),
        tokens=dict(TOKENS),
        merchant_keys={ALL_KEY: "all", BANK_KEY: "bank"},
        update_wait_seconds=WAIT,
        update_accept_seconds=2.0,
    )


@pytest.fixture
async def bench(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Bench]:
    queue = f"merchants-{uuid.uuid4().hex[:8]}"
    app = create_app(env.client, gateway_settings(tmp_path, queue))
    async with serving(app) as url:
        projection = ProjectionActivities(base_url=url, secret=SECRETS["worker"])
        async with (
            Worker(env.client, task_queue=queue, workflows=[StandInMerchant]),
            httpx.AsyncClient(base_url=url, timeout=20, headers=bearer(VIEWER)) as http,
        ):
            yield Bench(url, app, env, queue, http, projection)
        await projection.aclose()


def fee(event_id: str, bill_id: str = "B-1") -> dict[str, Any]:
    return {
        "event_id": event_id,
        "bill_id": bill_id,
        "amount": "1200.00",
        "payment_reference": f"PAY-{event_id}",
    }


def fault(request_id: str, serial: str = "SN-NEW-2") -> dict[str, Any]:
    return {
        "request_id": request_id,
        "serial": serial,
        "description": "screen stays black",
        "reported_by": "张三",
    }


def rebinding(request_id: str, account: str = ACCOUNT) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "account": {
            "holder_name": "张三",
            "account_kind": "personal",
            "account_number": account,
            "bank_name": "中国银行",
        },
        "requested_by": "张三",
    }


# --- the projection ---------------------------------------------------------------------------


async def test_a_snapshot_older_than_the_one_held_never_overwrites_it(bench: Bench) -> None:
    mid = mid_for(1)
    assert await bench.project(merchant_status(mid, version=2)) == {"applied": True, "version": 2}
    # Late and repeated deliveries: ignored, the newer one kept.
    older = merchant_status(mid, version=1, state=AccountState.SUSPENDED, name="Old Name")
    assert await bench.project(older) == {"applied": False, "version": 2}
    assert await bench.project(merchant_status(mid, version=2, name="Same")) == {
        "applied": False,
        "version": 2,
    }
    # Versions go on across continue-as-new runs: the run is not part of the order.
    newer = merchant_status(
        mid,
        version=3,
        run_id="run-2",
        suspensions=[SuspensionReason.FEES],
        state=AccountState.SUSPENDED,
        fees_overdue="1200.00",
        fees_due="1200.00",
    )
    assert await bench.project(newer) == {"applied": True, "version": 3}
    stale_run = merchant_status(mid, version=2, run_id="run-1", name="Stale Run")
    assert await bench.project(stale_run) == {"applied": False, "version": 3}

    [row] = (await bench.http.get("/api/merchants")).json()
    assert row["mid"] == mid and row["version"] == 3 and row["run_id"] == "run-2"
    assert row["state"] == "suspended" and row["suspensions"] == ["fees"]
    assert row["merchant_name"] == "Sunrise Noodles"
    assert (row["fees_due"], row["fees_overdue"]) == ("1200.00", "1200.00")
    assert row["terminals"] == 1  # the replaced one is on its way back
    assert row["workflow_id"] == f"merchant-{mid}"


async def test_a_snapshot_that_names_another_workflow_or_a_bad_mid_is_422(bench: Bench) -> None:
    good = merchant_status(mid_for(2)).model_dump(mode="json")
    changes: list[tuple[dict[str, Any], str]] = [
        ({"workflow_id": "merchant-000000000000000"}, "mid"),
        ({"mid": "12345", "workflow_id": "merchant-12345"}, "mid"),
        ({"fees_due": "-1.00"}, "fees_due"),
        ({"version": 2**40}, "version"),
    ]
    for change, field in changes:
        answer = await bench.signed("/api/internal/merchants", {**good, **change}, "worker")
        assert answer.status_code == 422, answer.text
        assert field in answer.json()["fields"]
    unsigned = await bench.signed("/api/internal/merchants", good, None)
    assert unsigned.status_code == 401
    by_a_service = await bench.signed("/api/internal/merchants", good, "review")
    assert by_a_service.status_code == 401
    assert (await bench.http.get("/api/merchants")).json() == []


# --- the list and the counts ------------------------------------------------------------------


async def seed_list(bench: Bench) -> dict[str, str]:
    mids = {
        "active": mid_for(11),
        "fees": mid_for(12),
        "inspection": mid_for(13),
        "closed": mid_for(14),
    }
    await bench.project(merchant_status(mids["active"], name="Blue Tea", channel="bank"))
    await bench.project(
        merchant_status(
            mids["fees"],
            name="Harbour Cafe",
            channel="alipay",
            state=AccountState.SUSPENDED,
            suspensions=[SuspensionReason.FEES],
            fees_due="1200.00",
            fees_overdue="1200.00",
        )
    )
    await bench.project(
        merchant_status(
            mids["inspection"],
            name="Golden Dragon",
            channel="bank",
            state=AccountState.SUSPENDED,
            suspensions=[SuspensionReason.INSPECTION, SuspensionReason.FEES],
            fees_due="300.00",
            attention=AttentionKind.STEP_FAILED,
        )
    )
    await bench.project(
        merchant_status(
            mids["closed"],
            name="Old Market",
            channel="lakala",
            state=AccountState.CLOSED,
            fees_overdue="50.00",
            closed=True,
        )
    )
    return mids


async def test_the_list_filters_sorts_pages_and_counts(bench: Bench) -> None:
    mids = await seed_list(bench)

    async def listed(**params: Any) -> list[str]:
        answer = await bench.http.get("/api/merchants", params={"sort": "name", **params})
        assert answer.status_code == 200, answer.text
        return [row["mid"] for row in answer.json()]

    assert await listed() == [mids[k] for k in ("active", "inspection", "fees", "closed")]
    assert await listed(state="suspended") == [mids["inspection"], mids["fees"]]
    assert await listed(channel="bank") == [mids["active"], mids["inspection"]]
    assert await listed(suspended="true") == [mids["inspection"], mids["fees"]]
    assert await listed(suspended="false") == [mids["active"], mids["closed"]]
    assert await listed(suspension="inspection") == [mids["inspection"]]
    assert await listed(suspension="fees") == [mids["inspection"], mids["fees"]]
    # A closed account's unpaid fees are not "overdue" on the operations list.
    assert await listed(fees_overdue="true") == [mids["fees"]]
    assert await listed(needs_attention="true") == [mids["inspection"]]
    assert await listed(q="harbour") == [mids["fees"]]
    assert await listed(q=mids["closed"]) == [mids["closed"]]
    assert await listed(q="%") == []
    assert await listed(sort="overdue", limit=1) == [mids["fees"]]

    page = await bench.http.get("/api/merchants", params={"sort": "name", "limit": 2, "offset": 2})
    assert [r["mid"] for r in page.json()] == [mids["fees"], mids["closed"]]
    assert page.headers["X-Total-Count"] == "4"

    refused = await bench.http.get("/api/merchants", params={"state": "asleep", "limit": 0})
    assert refused.status_code == 422
    assert set(refused.json()["fields"]) == {"state", "limit"}

    counts = (await bench.http.get("/api/merchants/counts")).json()
    assert counts == {
        "total": 4,
        "by_state": {"active": 1, "suspended": 2, "closing": 0, "closed": 1},
        "suspended_by_reason": {"fees": 2, "inspection": 1},
        "fees_overdue": 1,
        "needs_attention": 1,
    }


# --- callbacks and the audit trail -----------------------------------------------------------


async def test_each_service_callback_is_signed_routed_and_kept(bench: Bench) -> None:
    mid = mid_for(21)
    handle = await bench.start(mid)
    base = f"/api/merchants/{mid}"
    paid = await bench.signed(f"{base}/fee-payment", fee("fee-1"), "contract")
    assert paid.status_code == 200, paid.text
    assert paid.json()["outcome"] == "applied" and paid.json()["detail"] == "fee_paid applied"
    again = await bench.signed(f"{base}/fee-payment", fee("fee-1"), "contract")
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
    # Another service's signature, or none: 401, nothing applied, kept as refused in the trail.
    wrong = await bench.signed(f"{base}/fee-payment", fee("fee-2"), "logistics")
    assert wrong.status_code == 401 and wrong.json()["error"] == "bad_signature"
    assert (await bench.signed(f"{base}/fee-payment", fee("fee-3"), None)).status_code == 401

    inspection = {
        "event_id": "insp-1",
        "inspection_id": "I-1",
        "passed": False,
        "inspector": "王检查",
        "findings": ["seal broken"],
    }
    delivery = {"event_id": "del-1", "reference": "SHIP-1", "kind": "delivered"}
    activation = {"event_id": "act-1", "serial": "SN-NEW-3", "tid": "T0000003"}
    decision = {"decision_id": "dec-1", "case_id": "RB-1", "approved": True, "reviewer": "李审核"}
    callbacks: list[tuple[str, dict[str, Any], str]] = [
        ("inspection", inspection, "logistics"),
        ("delivery", delivery, "logistics"),
        ("activation", activation, "device"),
        ("rebinding-decision", decision, "review"),
    ]
    for path, body, signer in callbacks:
        answer = await bench.signed(f"{base}/{path}", body, signer)
        assert answer.status_code == 200, (path, answer.text)
        assert answer.json()["outcome"] == "applied"
    # The same paths signed by the wrong service are refused.
    wrong_device = await bench.signed(f"{base}/activation", activation, "logistics")
    assert wrong_device.status_code == 401

    received = await handle.query(StandInMerchant.messages)
    assert [kind for kind, _ in received] == [
        "fee_paid",
        "inspection_result",
        "delivery_outcome",
        "terminal_activated",
        "rebinding_decision",
    ]
    kept = await bench.audit(mid)
    assert [(m["source"], m["kind"], m["message_id"], m["outcome"]) for m in kept] == [
        ("contract", "fee_paid", "fee-1", "applied"),
        ("contract", "fee_paid", "fee-1", "duplicate"),
        # Kept under the service the route takes (the signature names nobody it can trust).
        ("contract", "fee_paid", "", "invalid"),
        ("contract", "fee_paid", "", "invalid"),
        ("logistics", "inspection_result", "insp-1", "applied"),
        ("logistics", "delivery_outcome", "del-1", "applied"),
        ("device", "terminal_activated", "act-1", "applied"),
        ("review", "rebinding_decision", "dec-1", "applied"),
        ("device", "terminal_activated", "", "invalid"),
    ]
    assert all(m["application_id"] == f"merchant:{mid}" for m in kept)
    # Never mixed with an application's trail, whatever its id.
    app_trail = await bench.http.get(f"/api/applications/{mid}/messages")
    assert app_trail.status_code == 200 and app_trail.json() == []


async def test_a_message_the_workflow_holds_is_202_then_settled(bench: Bench) -> None:
    mid = mid_for(22)
    handle = await bench.start(mid)
    held = await bench.signed(
        f"/api/merchants/{mid}/fee-payment", fee("fee-9", "LATER"), "contract"
    )
    assert held.status_code == 202
    assert held.json() == {"outcome": "pending", "message_id": "fee-9", "detail": PENDING_DETAIL}
    assert [m["outcome"] for m in await bench.audit(mid)] == ["pending"]
    await handle.signal(StandInMerchant.release)
    kept = await bench.settled(mid)
    assert [(m["outcome"], m["detail"]) for m in kept] == [("applied", "fee_paid applied")]


async def test_refusals_are_answered_and_kept_for_known_merchants_only(bench: Bench) -> None:
    mid = mid_for(23)
    await bench.start(mid)
    admin = bench.client(bearer(ADMIN))
    async with admin:
        refused = await admin.post(f"/api/merchants/{mid}/faults", json=fault("f-1", "NOBODY"))
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "UnknownReference"
        assert refused.json()["retry"] is False
        invalid = await admin.post(f"/api/merchants/{mid}/faults", json={"request_id": "f-2"})
        assert invalid.status_code == 422
        assert {"serial", "description", "reported_by"} <= set(invalid.json()["fields"])
        kept = await bench.audit(mid)
        assert [(m["kind"], m["outcome"]) for m in kept] == [
            ("report_fault", "refused"),
            ("report_fault", "invalid"),
        ]
        assert kept[0]["detail"].startswith("UnknownReference: no terminal NOBODY")
        assert kept[0]["actor"] == "admin" and kept[0]["reason"] == "screen stays black"

        # A MID nobody knows: 404, counted, never kept; a malformed one: 422.
        nobody = mid_for(99)
        unknown = await admin.post(f"/api/merchants/{nobody}/faults", json=fault("f-3"))
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_merchant"
        signed = await bench.signed(f"/api/merchants/{nobody}/fee-payment", fee("x"), "contract")
        assert signed.status_code == 404
        bad_body = await bench.signed(f"/api/merchants/{nobody}/fee-payment", {}, "contract")
        assert bad_body.status_code == 422
        assert await bench.audit(nobody) == []
        for malformed in ("12345", "89831000000000X", "8983100000000001"):
            answer = await admin.post(f"/api/merchants/{malformed}/faults", json=fault("f-4"))
            assert answer.status_code == 422, malformed
            assert "mid" in answer.json()["fields"]
        assert (await bench.http.get(f"/api/merchants/{nobody}")).status_code == 404
        assert (await bench.http.get("/api/merchants/12345")).status_code == 422


async def test_a_new_settlement_account_is_kept_masked_in_the_audit(bench: Bench) -> None:
    mid = mid_for(24)
    handle = await bench.start(mid)
    merchant = bench.client({"X-Api-Key": ALL_KEY})
    async with merchant:
        applied = await merchant.post(
            f"/api/merchants/{mid}/settlement-account", json=rebinding("rb-1")
        )
        assert applied.status_code == 200, applied.text
        # Refused as invalid (a blank holder): the excerpt kept is masked too.
        body = rebinding("rb-2")
        body["account"]["holder_name"] = " "
        invalid = await merchant.post(f"/api/merchants/{mid}/settlement-account", json=body)
        assert invalid.status_code == 422
    # The workflow gets the number whole: it binds it.
    [(kind, received)] = await handle.query(StandInMerchant.messages)
    assert kind == "rebind_settlement" and received["account"]["account_number"] == ACCOUNT

    raw = (await bench.http.get(f"/api/merchants/{mid}/messages")).text
    assert ACCOUNT not in raw and ACCOUNT[:12] not in raw
    kept = await bench.audit(mid)
    assert [(m["kind"], m["outcome"], m["actor"]) for m in kept] == [
        ("rebind_settlement", "applied", "merchant:all"),
        ("rebind_settlement", "invalid", ""),
    ]
    stored = json.loads(kept[0]["body"])["account"]["account_number"]
    assert stored.endswith(ACCOUNT[-4:]) and stored != ACCOUNT
    assert ACCOUNT[-4:] in kept[1]["body"] and ACCOUNT not in kept[1]["body"]


# --- roles ---------------------------------------------------------------------------------------


async def test_each_role_acts_on_merchants_as_it_does_on_applications(bench: Bench) -> None:
    mid = mid_for(25)
    await bench.start(mid, channel="alipay")
    closure = {"request_id": "cl-1", "reason": "shop closed", "requested_by": "ops"}
    order = {"request_id": "o-1", "model": "LKL-A8", "quantity": 2, "requested_by": "张三"}
    viewer, operator, admin = (bench.client(bearer(t)) for t in (VIEWER, OPERATOR, ADMIN))
    bank, everyone = bench.client({"X-Api-Key": BANK_KEY}), bench.client({"X-Api-Key": ALL_KEY})
    base = f"/api/merchants/{mid}"
    async with viewer, operator, admin, bank, everyone:
        # A viewer reads, and cannot close, report, order or retry.
        assert (await viewer.get(base)).status_code == 200
        refused = await viewer.post(f"{base}/closure", json=closure)
        assert refused.status_code == 403 and "operator" in refused.json()["message"]
        assert (await viewer.post(f"{base}/faults", json=fault("f-1"))).status_code == 403
        # A merchant key is not an ops credential: no lists, no closure.
        assert (await everyone.get("/api/merchants")).status_code == 401
        assert (await everyone.post(f"{base}/closure", json=closure)).status_code == 401
        # Orders and new accounts: the merchant (its channel) or an admin, not an operator.
        assert (await operator.post(f"{base}/terminal-orders", json=order)).status_code == 403
        assert (await bank.post(f"{base}/terminal-orders", json=order)).status_code == 404
        ordered = await everyone.post(f"{base}/terminal-orders", json=order)
        assert ordered.status_code == 200, ordered.text
        # Faults: the merchant or an operator.
        assert (await operator.post(f"{base}/faults", json=fault("f-2"))).status_code == 200
        # Retry and extend: admin only.
        action = {"request_id": "r-1", "reason": "device service is back"}
        assert (
            await operator.post(f"/api/admin/merchants/{mid}/retry", json=action)
        ).status_code == 403
        retried = await admin.post(f"/api/admin/merchants/{mid}/retry", json=action)
        assert retried.status_code == 200, retried.text
        extended = await admin.post(
            f"/api/admin/merchants/{mid}/extend",
            json={"request_id": "x-1", "reason": "carrier strike", "period": "P3D"},
        )
        assert extended.status_code == 200, extended.text
        # An operator closes it.
        closed = await operator.post(f"{base}/closure", json=closure)
        assert closed.status_code == 200, closed.text
    kept = await bench.audit(mid)
    assert [(m["source"], m["kind"], m["actor"], m["reason"]) for m in kept] == [
        ("merchant", "order_terminals", "merchant:all", "2 × LKL-A8"),
        ("merchant", "report_fault", "operator", "screen stays black"),
        ("admin", "retry", "admin", "device service is back"),
        ("admin", "extend", "admin", "carrier strike"),
        ("operator", "request_closure", "operator", "shop closed"),
    ]


# --- one merchant ---------------------------------------------------------------------------------


async def test_status_is_live_and_then_the_stored_file_once_the_workflow_is_gone(
    bench: Bench,
) -> None:
    mid = mid_for(26)
    handle = await bench.start(mid)
    live = await bench.http.get(f"/api/merchants/{mid}")
    assert live.status_code == 200, live.text
    assert live.headers["X-Posflow-Source"] == "workflow"
    assert live.json()["merchant_name"] == "Live From Workflow"

    operator = bench.client(bearer(OPERATOR))
    async with operator:
        closure = {"request_id": "cl-1", "reason": "shop closed", "requested_by": "ops"}
        assert (
            await operator.post(f"/api/merchants/{mid}/closure", json=closure)
        ).status_code == 200
        await handle.result()  # the run ended
        # The workflow's last snapshot reaches the gateway; later ones would be older.
        await bench.project(merchant_status(mid, version=5, state=AccountState.CLOSED, closed=True))
        # A message for a closed merchant: 409, final, kept.
        late = await bench.signed(f"/api/merchants/{mid}/fee-payment", fee("fee-5"), "contract")
        assert late.status_code == 409, late.text
        assert late.json()["retry"] is False
        # The same closure sent again is what was applied; another one is refused.
        again = await operator.post(f"/api/merchants/{mid}/closure", json=closure)
        assert again.status_code == 200 and again.json()["outcome"] == "duplicate"
        another = await operator.post(
            f"/api/merchants/{mid}/closure", json={**closure, "request_id": "cl-2"}
        )
        assert another.status_code == 409, another.text
    stored = await bench.http.get(f"/api/merchants/{mid}")
    assert stored.status_code == 200
    assert stored.headers["X-Posflow-Source"] == "snapshot"
    assert stored.json()["state"] == "closed" and stored.json()["closure_cause"] == "requested"
    assert stored.json()["merchant_name"] == "Sunrise Noodles"
    assert [(m["kind"], m["outcome"]) for m in await bench.audit(mid)][-3:] == [
        ("fee_paid", "refused"),
        ("request_closure", "duplicate"),
        ("request_closure", "refused"),
    ]

    # A merchant whose workflow is gone altogether (retention): its file is served.
    gone = mid_for(27)
    await bench.project(merchant_status(gone, version=7, name="Kept File"))
    kept = await bench.http.get(f"/api/merchants/{gone}")
    assert kept.status_code == 200 and kept.headers["X-Posflow-Source"] == "snapshot"
    assert kept.json()["merchant_name"] == "Kept File"
    assert kept.json()["bindings"][0]["account_last4"] == "0123"


async def test_a_merchant_key_reaches_an_account_before_its_first_snapshot(bench: Bench) -> None:
    """Just handed over, the account has not yet sent the gateway a snapshot: the merchant's
    request is checked against the workflow itself rather than refused as unknown."""
    mid = mid_for(31)
    await bench.env.client.start_workflow(
        StandInMerchant.run, mid, id=merchant_workflow_id(mid), task_queue=bench.queue
    )
    everyone, bank = bench.client({"X-Api-Key": ALL_KEY}), bench.client({"X-Api-Key": BANK_KEY})
    async with everyone, bank:
        reported = await everyone.post(f"/api/merchants/{mid}/faults", json=fault("early-1"))
        assert reported.status_code == 200, reported.text
        # The workflow says which channel: the bank's key may act for this bank merchant.
        own = await bank.post(f"/api/merchants/{mid}/faults", json=fault("early-2"))
        assert own.status_code == 200, own.text
        nobody = await everyone.post(f"/api/merchants/{mid_for(32)}/faults", json=fault("e-3"))
        assert nobody.status_code == 404
