"""The merchant's life after go-live (`MerchantAccount`), on the time-skipping test server with
stand-in services: fees paid on time, late and never; inspections passed and failed; terminal
swaps by mail and on site; more terminals; re-binding accepted and refused; closure by request,
by contract end and by suspension; continue-as-new keeping the record and its messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities import catalog
from schemas.application import AccountKind, Channel, Fulfilment, SettlementAccount
from schemas.identifiers import luhn_check_digit
from schemas.merchant import (
    AccountState,
    ClosureCause,
    ClosureRequest,
    FaultReport,
    FeePaid,
    InspectionResult,
    MerchantOutcome,
    MerchantStart,
    MerchantStatus,
    MerchantTerminal,
    RebindingDecision,
    RebindingRequest,
    SuspensionReason,
    TerminalOrder,
    TerminalState,
    merchant_workflow_id,
)
from schemas.messages import (
    Ack,
    AdminAction,
    DeliveryOutcome,
    DeliveryOutcomeKind,
    Refusal,
    TerminalActivated,
)
from schemas.policy import Policy, RiskLevel
from schemas.status import AttentionKind, Stage
from tests.factories import enterprise_application, individual_application
from tests.scenario import GOLDEN, Bench, fast_policy, new_id, refused
from tests.standins import (
    StandIns,
    bill_id,
    inspection_id,
    merchant_appointment_id,
    merchant_shipment_id,
    rebinding_case_id,
)
from workers.temporal import build_worker
from workflows.merchant import MerchantAccount

pytestmark = pytest.mark.asyncio

MID = "898310000000042"
MERCHANT_GOLDEN = GOLDEN / "merchant"
DAY = timedelta(days=1)


def merchant_policy(policy: Policy, **overrides: Any) -> Policy:
    """The channel's schedule in days (the defaults), with a short history limit if asked."""
    merchant = policy.merchant.model_copy(update=overrides)
    return policy.model_copy(update={"merchant": merchant})


@dataclass
class Account:
    env: WorkflowEnvironment
    services: StandIns
    handle: WorkflowHandle[MerchantAccount, MerchantOutcome]
    start: MerchantStart
    first: WorkflowHandle[MerchantAccount, MerchantOutcome]  # the first run only

    async def save_golden(self, name: str, *, first_run: bool = False) -> None:
        """Keep a run's history as a golden one (`POSFLOW_RECORD_GOLDEN=1`) for replay."""
        if not os.environ.get("POSFLOW_RECORD_GOLDEN"):
            return
        handle = self.handle
        if first_run:
            handle = self.env.client.get_workflow_handle_for(
                MerchantAccount.run, self.handle.id, run_id=self.first.first_execution_run_id
            )
        history = await handle.fetch_history()
        MERCHANT_GOLDEN.mkdir(parents=True, exist_ok=True)
        data = json.loads(history.to_json())
        text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
        (MERCHANT_GOLDEN / f"{name}.json").write_text(text)

    async def status(self) -> MerchantStatus:
        for _ in range(5):
            try:
                return await self.handle.query(
                    MerchantAccount.status, rpc_timeout=timedelta(seconds=5)
                )
            except RPCError as err:
                # A query that reaches the account while it continues as new can go unanswered
                # on the time-skipping test server (the run it was sent to has ended): ask again,
                # as the gateway does (it falls back to the snapshot).
                if err.status not in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
                    raise
        raise AssertionError("the account never answered its status query")

    async def until(
        self, check: Callable[[MerchantStatus], bool], what: str, seconds: float = 15
    ) -> MerchantStatus:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + seconds
        while True:
            status = await self.status()
            if check(status):
                return status
            if loop.time() > give_up:
                trace = await self.handle.query("__stack_trace")
                raise AssertionError(f"never {what}: {trace}")
            await asyncio.sleep(0.05)

    async def idle(self) -> None:
        """Let the activities in flight finish (the test server skips no time meanwhile)."""
        for _ in range(100):
            with contextlib.suppress(RPCError):
                if not (await self.handle.describe()).raw_description.pending_activities:
                    return
            await asyncio.sleep(0.02)

    async def sleep(self, days: float) -> None:
        await self.idle()
        await self.env.sleep(DAY * days)
        await self.idle()

    async def pay(self, period: int, amount: Decimal | None = None, event_id: str = "") -> Ack:
        status = await self.status()
        bill = next(b for b in status.bills if b.period == period)
        paid = FeePaid(
            event_id=event_id or f"pay-{period}",
            bill_id=bill.bill_id,
            amount=bill.amount if amount is None else amount,
            payment_reference=f"PAY-{period}",
        )
        for _ in range(10):
            try:
                return await self.handle.execute_update(MerchantAccount.fee_paid, paid)
            except RPCError as err:
                # The time-skipping test server drops an update admitted by a run that then
                # continued as new (a real server hands it to the new run): send it again, as
                # the contract service's outbox would.
                if err.status is not RPCStatusCode.NOT_FOUND:
                    raise
                if (await self.handle.describe()).status is WorkflowExecutionStatus.COMPLETED:
                    raise
                await asyncio.sleep(0.2)
        raise AssertionError(f"payment {paid.event_id} never taken")

    async def fault(self, serial: str, fulfilment: Fulfilment | None = None) -> Ack:
        return await self.handle.execute_update(
            MerchantAccount.report_fault,
            FaultReport(
                request_id=f"fault-{serial}",
                serial=serial,
                description="screen dead",
                fulfilment=fulfilment,
                reported_by="shop owner",
            ),
        )

    async def deliver(self, reference: str, kind: DeliveryOutcomeKind) -> Ack:
        return await self.handle.execute_update(
            MerchantAccount.delivery_outcome,
            DeliveryOutcome(event_id=f"dl-{reference}", reference=reference, kind=kind),
        )

    async def activate(self, serial: str) -> Ack:
        status = await self.until(
            lambda s: _terminal(s, serial).activation_code_issued, f"{serial} has a code"
        )
        tid = _terminal(status, serial).tid
        assert tid is not None
        return await self.handle.execute_update(
            MerchantAccount.terminal_activated,
            TerminalActivated(event_id=f"act-{serial}", serial=serial, tid=tid),
        )

    async def close(self, reason: str = "shop closing down") -> Ack:
        return await self.handle.execute_update(
            MerchantAccount.request_closure,
            ClosureRequest(request_id="close-1", reason=reason, requested_by="shop owner"),
        )

    async def admin(self, verb: str, step: str | None = None) -> Ack:
        update = {"retry": MerchantAccount.retry, "extend": MerchantAccount.extend_deadline}[verb]
        return await self.handle.execute_update(
            update,
            AdminAction(request_id=f"adm-{uuid.uuid4().hex[:6]}", admin="admin-1", step=step),
        )


def _terminal(status: MerchantStatus, serial: str) -> MerchantTerminal:
    return next(t for t in status.terminals if t.serial == serial)


@dataclass
class Accounts:
    env: WorkflowEnvironment
    services: StandIns
    queue: str
    handles: list[WorkflowHandle[Any, Any]]

    async def open(
        self,
        *,
        channel_app: Any = None,
        risk: RiskLevel = RiskLevel.LOW,
        deposit: Decimal = Decimal("299.00"),
        terminals: int = 1,
        **merchant: Any,
    ) -> Account:
        app = channel_app or individual_application(application_id=new_id(), channel=Channel.BANK)
        policy = merchant_policy(fast_policy(app, DAY), **merchant)
        now = await self.env.get_current_time()
        serials = [f"SN-OLD-{i}" for i in range(terminals)]
        for i, serial in enumerate(serials):
            self.services.tids[serial] = f"T00000{i:02d}"
        start = MerchantStart(
            application=app,
            policy=policy,
            mid=MID,
            went_live_at=now,
            contract_id=f"CT-{app.application_id}",
            deposit_amount=deposit,
            deposit_reference="PAY-DEPOSIT" if deposit else None,
            risk_level=risk,
            terminals=[
                MerchantTerminal(
                    serial=s, model="P1", tid=self.services.tids[s], since=now, activated_at=now
                )
                for s in serials
            ],
        )
        first = await self.env.client.start_workflow(
            MerchantAccount.run, start, id=merchant_workflow_id(MID), task_queue=self.queue
        )
        # Not bound to the first run: messages and queries follow the account across runs.
        handle = self.env.client.get_workflow_handle_for(
            MerchantAccount.run, merchant_workflow_id(MID)
        )
        self.handles.append(handle)
        account = Account(self.env, self.services, handle, start, first)
        await account.until(lambda s: s.state is AccountState.ACTIVE, "open")
        return account


@pytest.fixture
async def accounts(env: WorkflowEnvironment) -> AsyncIterator[Accounts]:
    if not env.supports_time_skipping:
        pytest.skip("a merchant's years need the time-skipping test server")
    services = StandIns()
    queue = f"merchant-test-{uuid.uuid4().hex[:8]}"
    async with build_worker(env.client, queue, services.activities()):
        bench = Accounts(env, services, queue, [])
        yield bench
        for handle in bench.handles:
            with contextlib.suppress(RPCError):
                await handle.terminate("test finished")
    # Every notice an account sent would have been accepted by the notification service.
    assert services.refused_notices == []


# --- fees --------------------------------------------------------------------------------------


async def test_a_bill_paid_on_time_is_issued_on_the_anniversary_and_nothing_is_suspended(
    accounts: Accounts,
) -> None:
    account = await accounts.open(terminals=2)  # bank: 120.00 per terminal, no annual fee
    await account.sleep(364)
    assert (await account.status()).bills == []
    await account.sleep(1.5)
    status = await account.until(lambda s: len(s.bills) == 1, "billed")
    bill = status.bills[0]
    assert bill.bill_id == bill_id(MID, 1)
    assert bill.amount == Decimal("240.00") and bill.terminals == 2
    assert status.fees_due == Decimal("240.00") and status.fees_overdue == Decimal("0.00")
    await account.until(lambda s: "fee_billed" in accounts.services.notices(), "told")

    ack = await account.pay(1)
    assert ack.detail == "paid"
    resent = await account.pay(1)
    assert resent.duplicate
    status = await account.status()
    assert status.bills[0].paid_at is not None and status.fees_due == Decimal("0.00")
    assert status.state is AccountState.ACTIVE
    assert catalog.CHANGE_ACQUIRING not in accounts.services.names()
    assert status.next_bill_at == account.start.went_live_at + 2 * 365 * DAY


async def test_a_wrong_amount_or_an_unknown_bill_is_refused_and_changes_nothing(
    accounts: Accounts,
) -> None:
    account = await accounts.open()
    await account.sleep(366)
    await account.until(lambda s: len(s.bills) == 1, "billed")
    wrong = await refused(account.pay(1, amount=Decimal("1.00")))
    assert wrong.type == Refusal.INVALID.value and "amount" in wrong.message
    unknown = await refused(
        account.handle.execute_update(
            MerchantAccount.fee_paid,
            FeePaid(event_id="x", bill_id="BILL-other", amount=Decimal("1"), payment_reference="r"),
        )
    )
    assert unknown.type == Refusal.UNKNOWN_REFERENCE.value
    assert (await account.status()).bills[0].paid_at is None


async def test_a_late_bill_suspends_acquiring_and_the_payment_reinstates_it(
    accounts: Accounts,
) -> None:
    account = await accounts.open()
    await account.sleep(366)
    await account.until(lambda s: len(s.bills) == 1, "billed")
    await account.sleep(31)  # past the due date: overdue, not yet suspended
    status = await account.until(lambda s: s.fees_overdue > 0, "overdue")
    assert status.state is AccountState.ACTIVE
    assert accounts.services.notices().count("fee_reminder") == 2
    await account.sleep(15)  # past the grace period
    status = await account.until(lambda s: s.state is AccountState.SUSPENDED, "suspended")
    assert status.suspensions == [SuspensionReason.FEES]
    suspend = accounts.services.requests(catalog.CHANGE_ACQUIRING)
    assert [r.action for r in suspend] == ["suspend"]

    ack = await account.pay(1)
    assert ack.detail == "paid late"
    status = await account.until(lambda s: s.state is AccountState.ACTIVE, "reinstated")
    assert status.suspensions == [] and status.suspended_since is None
    assert [r.action for r in accounts.services.requests(catalog.CHANGE_ACQUIRING)] == [
        "suspend",
        "reinstate",
    ]
    assert status.counters["bills_paid_late"] == 1
    # The merchant is told once acquiring is back (the notice follows the state change).
    await account.until(lambda s: "reinstated" in accounts.services.notices(), "told")
    await account.close()
    await account.handle.result()
    await account.save_golden("fee_late_reinstated_then_closed")


async def test_a_bill_never_paid_closes_the_account_after_the_suspension_limit(
    accounts: Accounts,
) -> None:
    account = await accounts.open()
    await account.sleep(366 + 46)
    await account.until(lambda s: s.state is AccountState.SUSPENDED, "suspended")
    await account.sleep(91)
    outcome = await account.handle.result()
    assert outcome.cause is ClosureCause.SUSPENSION
    assert outcome.refunded == Decimal("299.00")  # the deposit comes back
    assert outcome.returned == ["SN-OLD-0"]
    names = accounts.services.names()
    closing = names[names.index(catalog.ARRANGE_RETURN) :]
    assert closing == [
        catalog.ARRANGE_RETURN,
        catalog.UNBIND_TERMINAL,
        catalog.RETIRE_MERCHANT,
        catalog.REFUND_DEPOSIT,
        catalog.TERMINATE_CONTRACT,
    ]
    status = await account.status()
    assert status.state is AccountState.CLOSED
    assert _terminal(status, "SN-OLD-0").state is TerminalState.RETURNING
    assert "T0000000" in status.retired_tids
    assert any(e.kind == "bill_written_off" for e in status.events)
    await account.save_golden("fee_unpaid_closed_by_suspension")
    with pytest.raises(RPCError):  # the account is closed: nothing takes the message
        await account.pay(1)


async def test_a_free_schedule_bills_nothing_and_never_suspends(accounts: Accounts) -> None:
    account = await accounts.open(service_fee_per_terminal=Decimal("0.00"))
    await account.sleep(366)
    status = await account.until(
        lambda s: any(e.kind == "no_fee_due" for e in s.events), "a year passed"
    )
    assert status.bills == [] and status.fees_due == Decimal("0.00")
    assert catalog.ISSUE_BILL not in accounts.services.names()
    assert status.next_bill_at == account.start.went_live_at + 2 * 365 * DAY


# --- inspections -------------------------------------------------------------------------------


async def test_a_high_risk_merchant_is_inspected_every_quarter_and_a_pass_books_the_next(
    accounts: Accounts,
) -> None:
    account = await accounts.open(risk=RiskLevel.HIGH)
    await account.sleep(90.5)
    status = await account.until(lambda s: s.inspection is not None, "inspection booked")
    assert status.inspection is not None
    assert status.inspection.inspection_id == inspection_id(MID, 1)
    ack = await account.handle.execute_update(
        MerchantAccount.inspection_result,
        InspectionResult(
            event_id="ins-1", inspection_id=inspection_id(MID, 1), passed=True, inspector="Li"
        ),
    )
    assert ack.detail == "passed"
    status = await account.until(lambda s: s.inspection is None, "inspection done")
    assert status.last_inspection is not None and status.last_inspection.passed
    assert status.next_inspection_at is not None
    assert status.next_inspection_at - (await account.env.get_current_time()) > 89 * DAY


async def test_a_failed_inspection_gives_a_remediation_period_then_a_failed_reinspection_suspends(
    accounts: Accounts,
) -> None:
    account = await accounts.open(risk=RiskLevel.HIGH)

    async def inspect(number: int, passed: bool) -> None:
        await account.until(
            lambda s: (
                s.inspection is not None
                and s.inspection.inspection_id == inspection_id(MID, number)
            ),
            f"inspection {number}",
        )
        await account.handle.execute_update(
            MerchantAccount.inspection_result,
            InspectionResult(
                event_id=f"ins-{number}",
                inspection_id=inspection_id(MID, number),
                passed=passed,
                inspector="Li",
                findings=[] if passed else ["no QR code sticker"],
            ),
        )
        await account.until(lambda s: s.inspection is None, f"inspection {number} handled")

    await account.sleep(90.5)
    await inspect(1, passed=False)
    status = await account.status()
    assert status.state is AccountState.ACTIVE and status.remediation_until is not None
    await account.until(lambda s: "inspection_failed" in accounts.services.notices(), "told")
    await account.sleep(30.5)
    await inspect(2, passed=False)
    status = await account.until(lambda s: s.state is AccountState.SUSPENDED, "suspended")
    assert status.suspensions == [SuspensionReason.INSPECTION]
    assert accounts.services.requests(catalog.BOOK_INSPECTION)[1].reinspection
    await account.sleep(30.5)
    await inspect(3, passed=True)
    status = await account.until(lambda s: s.state is AccountState.ACTIVE, "reinstated")
    assert status.remediation_until is None


async def test_an_inspection_with_no_result_reads_the_service_back_then_parks(
    accounts: Accounts,
) -> None:
    account = await accounts.open(risk=RiskLevel.HIGH)
    await account.sleep(90.5)
    await account.until(lambda s: s.inspection is not None, "booked")
    # The result was recorded by logistics but its callback never arrived.
    accounts.services.record(
        MID,
        "logistics",
        "inspection",
        InspectionResult(
            event_id="lost-1", inspection_id=inspection_id(MID, 1), passed=True, inspector="Li"
        ),
    )
    await account.sleep(15)
    status = await account.until(
        lambda s: s.last_inspection is not None and s.inspection is None, "recovered"
    )
    assert any(e.kind == "message_recovered" for e in status.events)
    assert status.attentions == []

    await account.sleep(90)  # the next one: nothing recorded, nothing sent
    await account.until(lambda s: s.inspection is not None, "booked again")
    await account.sleep(15)
    status = await account.until(lambda s: bool(s.attentions), "parked")
    assert status.attentions[0].kind is AttentionKind.INSPECTION_OVERDUE
    await account.handle.execute_update(
        MerchantAccount.inspection_result,
        InspectionResult(
            event_id="ins-late", inspection_id=inspection_id(MID, 2), passed=True, inspector="Li"
        ),
    )
    await account.until(lambda s: not s.attentions and s.inspection is None, "resolved")


# --- terminal swaps and more terminals ---------------------------------------------------------


async def test_a_faulty_terminal_is_swapped_by_mail_keeping_its_tid(accounts: Accounts) -> None:
    account = await accounts.open()
    ack = await account.fault("SN-OLD-0")
    assert "replacement" in ack.detail
    again = await refused(_other_fault(account))
    assert again.type == Refusal.STALE.value
    shipment = merchant_shipment_id(MID, "fault-SN-OLD-0", 1)
    status = await account.until(
        lambda s: any(t.shipment_id == shipment for t in s.terminals), "shipped"
    )
    replacement = next(t for t in status.terminals if t.replaces == "SN-OLD-0")
    assert replacement.tid == "T0000000"  # the TID moved to the replacement
    assert _terminal(status, "SN-OLD-0").state is TerminalState.FAULTY
    await account.deliver(shipment, DeliveryOutcomeKind.DELIVERED)
    await account.activate(replacement.serial)
    status = await account.until(
        lambda s: _terminal(s, "SN-OLD-0").state is TerminalState.RETURNING and not s.queue,
        "swapped",
    )
    assert _terminal(status, replacement.serial).state is TerminalState.ACTIVE
    assert _terminal(status, replacement.serial).test_transaction
    assert _terminal(status, "SN-OLD-0").replaced_by == replacement.serial
    returned = accounts.services.requests(catalog.ARRANGE_RETURN)
    assert [r.serials for r in returned] == [["SN-OLD-0"]]
    assert [r.serial for r in accounts.services.requests(catalog.UNBIND_TERMINAL)] == ["SN-OLD-0"]
    assert status.retired_tids == [] and status.queue == []
    assert "terminal_replaced" in accounts.services.notices()
    await account.close()
    await account.handle.result()
    await account.save_golden("swapped_by_mail_then_closed")


async def _other_fault(account: Account) -> Ack:
    """A second report for a terminal already being replaced, under another request id."""
    return await account.handle.execute_update(
        MerchantAccount.report_fault,
        FaultReport(
            request_id="fault-again", serial="SN-OLD-0", description="still dead", reported_by="x"
        ),
    )


async def test_a_swap_on_site_reissues_the_tid_when_the_policy_says_so(accounts: Accounts) -> None:
    account = await accounts.open(tid_moves_on_swap=False)
    await account.fault("SN-OLD-0", Fulfilment.ON_SITE)
    appointment = merchant_appointment_id(MID, "fault-SN-OLD-0", 1)
    status = await account.until(
        lambda s: any(t.appointment_id == appointment for t in s.terminals), "booked"
    )
    replacement = next(t for t in status.terminals if t.replaces == "SN-OLD-0")
    assert replacement.tid != "T0000000"
    assert status.retired_tids == ["T0000000"]
    # A delivery callback that crosses the booking's answer waits, then applies.
    await account.deliver(appointment, DeliveryOutcomeKind.INSTALLED)
    await account.activate(replacement.serial)
    await account.until(
        lambda s: _terminal(s, replacement.serial).state is TerminalState.ACTIVE, "in service"
    )


async def test_a_failed_replacement_delivery_parks_and_a_retry_ships_again(
    accounts: Accounts,
) -> None:
    account = await accounts.open()
    await account.fault("SN-OLD-0")
    first = merchant_shipment_id(MID, "fault-SN-OLD-0", 1)
    await account.until(lambda s: any(t.shipment_id == first for t in s.terminals), "shipped")
    await account.handle.execute_update(
        MerchantAccount.delivery_outcome,
        DeliveryOutcome(
            event_id="lost", reference=first, kind=DeliveryOutcomeKind.FAILED, detail="lost"
        ),
    )
    status = await account.until(lambda s: bool(s.attentions), "parked")
    assert status.attentions[0].kind is AttentionKind.DELIVERY_FAILED
    await account.admin("retry")
    second = merchant_shipment_id(MID, "fault-SN-OLD-0", 2)
    await account.until(lambda s: any(t.shipment_id == second for t in s.terminals), "reshipped")
    stale = await refused(account.deliver(first, DeliveryOutcomeKind.DELIVERED))
    assert stale.type == Refusal.UNKNOWN_REFERENCE.value


async def test_more_terminals_are_registered_delivered_activated_and_billed_next_year(
    accounts: Accounts,
) -> None:
    account = await accounts.open()
    await account.handle.execute_update(
        MerchantAccount.order_terminals,
        TerminalOrder(request_id="order-1", model="P1", quantity=2, requested_by="owner"),
    )
    shipment = merchant_shipment_id(MID, "order-1", 1)
    status = await account.until(
        lambda s: sum(t.shipment_id == shipment for t in s.terminals) == 2, "shipped"
    )
    added = [t.serial for t in status.terminals if t.shipment_id == shipment]
    await account.deliver(shipment, DeliveryOutcomeKind.DELIVERED)
    for serial in added:
        await account.activate(serial)
    status = await account.until(
        lambda s: all(_terminal(s, x).state is TerminalState.ACTIVE for x in added), "in service"
    )
    assert len({t.tid for t in status.terminals}) == 3
    await account.sleep(366)
    status = await account.until(lambda s: len(s.bills) == 1, "billed")
    assert status.bills[0].terminals == 3 and status.bills[0].amount == Decimal("360.00")


# --- re-binding --------------------------------------------------------------------------------


# A personal card that passes Luhn, and the same with its check digit wrong.
GOOD_CARD = "622202020011223344" + luhn_check_digit("622202020011223344")
BAD_CARD = GOOD_CARD[:-1] + str((int(GOOD_CARD[-1]) + 1) % 10)


def _account(number: str, holder: str = "") -> SettlementAccount:
    return SettlementAccount(
        holder_name=holder,
        account_kind=AccountKind.PERSONAL,
        account_number=number,
        bank_name="ICBC",
    )


async def test_a_new_account_is_reviewed_then_bound_and_the_old_binding_kept(
    accounts: Accounts,
) -> None:
    account = await accounts.open()  # a bank reviews a new settlement account
    holder = account.start.application.legal_representative.name
    ack = await account.handle.execute_update(
        MerchantAccount.rebind_settlement,
        RebindingRequest(request_id="rb-1", account=_account(GOOD_CARD, holder), requested_by="o"),
    )
    assert "for review" in ack.detail
    case = rebinding_case_id(MID, "rb-1")
    await account.handle.execute_update(
        MerchantAccount.rebinding_decision,
        RebindingDecision(decision_id="d1", case_id=case, approved=True, reviewer="Wang"),
    )
    status = await account.until(lambda s: len(s.bindings) == 2, "rebound")
    old, new = status.bindings
    assert old.unbound_at is not None and new.unbound_at is None
    assert new.account_last4 == GOOD_CARD[-4:] and new.binding_id
    assert GOOD_CARD not in status.model_dump_json()
    assert accounts.services.requests(catalog.BIND_SETTLEMENT)[0].account_last4 == GOOD_CARD[-4:]
    await account.close()
    await account.handle.result()
    await account.save_golden("rebound_after_review_then_closed")


async def test_an_invalid_account_is_refused_naming_the_field_and_nothing_changes(
    accounts: Accounts,
) -> None:
    account = await accounts.open()
    holder = account.start.application.legal_representative.name
    bad = await refused(
        account.handle.execute_update(
            MerchantAccount.rebind_settlement,
            RebindingRequest(
                request_id="rb-bad", account=_account(BAD_CARD, holder), requested_by="o"
            ),
        )
    )
    assert bad.type == Refusal.INVALID.value
    assert "account.account_number" in bad.message
    assert BAD_CARD not in bad.message
    stranger = await refused(
        account.handle.execute_update(
            MerchantAccount.rebind_settlement,
            RebindingRequest(
                request_id="rb-name", account=_account(GOOD_CARD, "Somebody Else"), requested_by="o"
            ),
        )
    )
    assert "account.holder_name" in stranger.message
    status = await account.status()
    assert len(status.bindings) == 1 and status.queue == []


async def test_a_refused_review_keeps_the_old_account(accounts: Accounts) -> None:
    account = await accounts.open()
    holder = account.start.application.legal_representative.name
    await account.handle.execute_update(
        MerchantAccount.rebind_settlement,
        RebindingRequest(request_id="rb-1", account=_account(GOOD_CARD, holder), requested_by="o"),
    )
    await account.handle.execute_update(
        MerchantAccount.rebinding_decision,
        RebindingDecision(
            decision_id="d1",
            case_id=rebinding_case_id(MID, "rb-1"),
            approved=False,
            reasons=["account frozen by the bank"],
            reviewer="Wang",
        ),
    )
    status = await account.until(lambda s: s.queue == [], "decided")
    assert len(status.bindings) == 1
    assert "rebinding_refused" in accounts.services.notices()
    assert catalog.BIND_SETTLEMENT not in accounts.services.names()


async def test_an_enterprise_must_rebind_to_a_corporate_account(accounts: Accounts) -> None:
    app = enterprise_application(application_id=new_id(), channel=Channel.BANK)
    account = await accounts.open(channel_app=app)
    bad = await refused(
        account.handle.execute_update(
            MerchantAccount.rebind_settlement,
            RebindingRequest(
                request_id="rb-1", account=_account(GOOD_CARD, app.merchant.name), requested_by="o"
            ),
        )
    )
    assert "account.account_kind" in bad.message


# --- closure -----------------------------------------------------------------------------------


async def test_closure_at_the_merchants_request_returns_devices_retires_ids_and_refunds(
    accounts: Accounts,
) -> None:
    account = await accounts.open(terminals=2)
    ack = await account.close()
    assert "closure accepted" in ack.detail
    outcome = await account.handle.result()
    assert outcome.cause is ClosureCause.REQUESTED
    assert sorted(outcome.returned) == ["SN-OLD-0", "SN-OLD-1"]
    assert outcome.refunded == Decimal("299.00")
    assert sorted(outcome.retired_tids) == ["T0000000", "T0000001"]
    refund = accounts.services.requests(catalog.REFUND_DEPOSIT)[0]
    assert refund.payment_reference == "PAY-DEPOSIT" and refund.amount == Decimal("299.00")
    assert accounts.services.requests(catalog.TERMINATE_CONTRACT)[0].contract_id.startswith("CT-")
    status = await account.status()
    assert status.state is AccountState.CLOSED and status.deposit_held == Decimal("0.00")
    assert "closed" in accounts.services.notices()
    with pytest.raises(RPCError):  # the account is closed: nothing takes the report
        await account.fault("SN-OLD-0")
    snapshot = accounts.services.merchant_projections[-1]
    assert snapshot.state is AccountState.CLOSED


async def test_the_account_closes_at_the_contracts_end(accounts: Accounts) -> None:
    account = await accounts.open(contract_term=200 * DAY)
    await account.sleep(201)
    outcome = await account.handle.result()
    assert outcome.cause is ClosureCause.CONTRACT_END
    assert outcome.reason == "the contract reached its end"


async def test_a_bill_paid_while_the_account_closes_is_refunded(accounts: Accounts) -> None:
    account = await accounts.open()
    await account.sleep(366)
    await account.until(lambda s: len(s.bills) == 1, "billed")
    gate = accounts.services.hold(catalog.TERMINATE_CONTRACT)
    await account.close()
    await asyncio.wait_for(accounts.services.started[catalog.TERMINATE_CONTRACT].wait(), 10)
    ack = await account.pay(1)
    assert "refunded" in ack.detail
    gate.set()
    outcome = await account.handle.result()
    assert outcome.refunded == Decimal("299.00") + Decimal("120.00")
    assert accounts.services.requests(catalog.REFUND_PAYMENT)[0].payment_reference == "PAY-1"


# --- continue-as-new ---------------------------------------------------------------------------


async def test_the_account_continues_as_new_keeping_its_record_and_its_messages(
    accounts: Accounts,
) -> None:
    account = await accounts.open(
        history_limit=200, terminals=2, contract_term=3650 * DAY, risk=RiskLevel.HIGH
    )
    year = 0
    while (await account.status()).run == 1:
        assert year < 9, "a year's history is small, but 9 years must pass the limit of 200"
        year += 1
        await account.sleep(365)

        def billed(s: MerchantStatus, y: int = year) -> bool:
            return bool(s.bills) and s.bills[-1].period >= y

        await account.until(billed, f"bill {year}")
        await account.pay(year)
    status = await account.status()
    assert status.history_events and all(n >= 200 for n in status.history_events)
    assert [b.period for b in status.bills] == list(range(1, year + 1))[-6:]
    assert all(b.paid_at is not None for b in status.bills)
    assert status.counters["bills_paid"] == year
    # A payment acknowledged in an earlier run is still a duplicate.
    assert (await account.pay(1)).duplicate
    # The first inspection was booked in the first run and never reported: the account stayed
    # parked on it across continue-as-new, and its late result is taken by the new run.
    parked = status.attentions[0]
    assert parked.kind is AttentionKind.INSPECTION_OVERDUE
    assert parked.since < account.start.went_live_at + 120 * DAY  # since the first run
    assert status.inspection is not None
    assert status.inspection.inspection_id == inspection_id(MID, 1)
    ack = await account.handle.execute_update(
        MerchantAccount.inspection_result,
        InspectionResult(
            event_id="late-1", inspection_id=inspection_id(MID, 1), passed=True, inspector="Li"
        ),
    )
    assert ack.detail == "passed"
    status = await account.until(lambda s: not s.attentions and s.inspection is None, "resolved")
    assert status.last_inspection is not None and status.last_inspection.passed
    runs = status.run
    await account.close()
    outcome = await account.handle.result()
    assert outcome.runs >= runs and outcome.cause is ClosureCause.REQUESTED
    await account.save_golden("continued_as_new_first_run", first_run=True)
    await account.save_golden("continued_as_new_last_run")


# --- the hand-over -----------------------------------------------------------------------------


async def test_go_live_hands_the_merchant_over_to_its_account_once(bench: Bench) -> None:
    run = await bench.start()
    await run.to(Stage.LIVE)
    outcome = await run.outcome()
    assert outcome.mid is not None
    assert outcome.merchant_workflow_id == merchant_workflow_id(outcome.mid)
    handle = bench.env.client.get_workflow_handle_for(
        MerchantAccount.run, merchant_workflow_id(outcome.mid)
    )
    status = await handle.query(MerchantAccount.status)
    assert status.application_id == run.app.application_id
    assert status.state is AccountState.ACTIVE
    assert [t.tid for t in status.terminals] == outcome.tids
    assert status.deposit_held == run.policy.deposit_amount
    assert status.contract_id == (await run.status()).contract.contract_id
    await run.save_golden("individual_mail_live_handed_over")
    await handle.terminate("test finished")
