"""A merchant's life after go-live, as one long-running workflow (`merchant-{MID}`).

The onboarding workflow starts it at go-live, exactly once. Three loops run side by side, each
keeping all it needs in the account's record, so any of them can stop at a wait and take up
again from the record after continue-as-new:
- **fees**: a bill on each anniversary of go-live (annual fee plus the service fee per terminal
  in service), reminders, overdue at the due date, acquiring suspended past the grace period,
  reinstated when paid;
- **inspections** (巡检): booked by the risk level's interval; a failed one opens a remediation
  period and a re-inspection, and a failed re-inspection suspends acquiring until one passes;
- **requests**, one at a time in the order accepted: a terminal swap (换机), more terminals, a new
  settlement account (重新绑定).
The account closes (注销) at the merchant's request, at the contract's end, or when suspended past
the policy's limit: acquiring off, every terminal unbound and returned, the MID and TIDs retired,
the deposit refunded, the contract terminated.

Every message follows the onboarding workflow's rule: a duplicate is acknowledged; one that
names something a step is still creating waits; then it is applied or refused with the reason.
At a deadline the workflow reads back what the service recorded (push, then pull) before it
parks for an admin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities import catalog as act
    from schemas import steps
    from schemas.application import Fulfilment
    from schemas.merchant import (
        AccountEvent,
        AccountState,
        Bill,
        Binding,
        Carried,
        ClosureCause,
        ClosureRequest,
        FaultReport,
        FeePaid,
        Inspection,
        InspectionResult,
        MerchantOutcome,
        MerchantStart,
        MerchantStatus,
        MerchantTerminal,
        RebindingDecision,
        RebindingRequest,
        Request,
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
        message_id,
    )
    from schemas.status import Attention, AttentionKind, ProjectionReceipt
    from workflows.case import (
        CHINA,
        PROJECTION_ATTEMPTS,
        failure_reason,
        innermost,
        receive,
        refuse,
    )

T = TypeVar("T", bound=BaseModel)
Message = TypeVar("Message", bound=BaseModel)

# How much of the account's past the record keeps (the full story is in the gateway's audit).
KEPT_EVENTS = 200
KEPT_ACKS = 1000
KEPT_BILLS = 6


# The loops whose every wait, parking included, can be taken up again from the record.
DRAINABLE = frozenset({"fees", "inspections"})


class Drain(Exception):
    """A loop stopped at a wait so the workflow can continue as new."""


class Closing(Exception):
    """A loop stopped because the account is closing."""


class Refused(Exception):
    """A service refused a step for good (4xx): the request it served cannot be done."""


@workflow.defn(name="MerchantAccount")
class MerchantAccount:
    @workflow.init
    def __init__(self, start: MerchantStart) -> None:
        self.start = start
        self.app = start.application
        self.policy = start.policy
        self.fees_policy = start.policy.merchant
        self.mid = start.mid
        now = workflow.now()
        carried = start.carried
        if carried is None:
            account = self.app.settlement_account
            carried = Carried(
                run=1,
                state=AccountState.ACTIVE,
                suspensions=[],
                suspended_since=None,
                terminals=start.terminals,
                retired_tids=[],
                bindings=[
                    Binding(
                        holder_name=account.holder_name,
                        bank_name=account.bank_name,
                        account_kind=account.account_kind.value,
                        account_last4=account.account_number[-4:],
                        bound_at=start.went_live_at,
                    )
                ],
                bills=[],
                bills_issued=0,
                inspection=None,
                inspections_done=0,
                next_inspection_at=start.went_live_at
                + self.fees_policy.inspection_interval(start.risk_level),
                remediation_until=None,
                queue=[],
                closure=None,
                acks=[],
                events=[AccountEvent(at=now, kind="account_opened", detail=f"MID {start.mid}")],
                counters={},
                attentions=[],
                last_inspection=None,
                version=0,
                history_events=[],
            )
        self.run_number = carried.run
        self.state = carried.state
        self.suspensions = list(carried.suspensions)
        self.suspended_since = carried.suspended_since
        self.terminals = {t.serial: t for t in carried.terminals}
        self.retired_tids = list(carried.retired_tids)
        self.bindings = list(carried.bindings)
        self.bills = list(carried.bills)
        self.bills_issued = carried.bills_issued
        self.inspection = carried.inspection
        self.last_inspection = carried.last_inspection
        self.inspections_done = carried.inspections_done
        self.next_inspection_at = carried.next_inspection_at
        self.remediation_until = carried.remediation_until
        self.queue = list(carried.queue)
        self.closure = carried.closure
        self.acks = {a.message_id: a for a in carried.acks}
        self.events = list(carried.events)
        self.counters = dict(carried.counters)
        self.attentions = {a.step: a for a in carried.attentions}
        self.version = carried.version
        self.history_events = list(carried.history_events)

        self.admin_verbs: dict[str, tuple[str, timedelta | None]] = {}
        self.creating: set[str] = set()
        self.draining = False
        self.closing = self.state is AccountState.CLOSING
        self.closure_cause: ClosureCause | None = None
        self.closure_reason = ""
        self.closed_at: datetime | None = None
        self.decisions: dict[str, RebindingDecision] = {}  # by review case
        self.dirty = True
        self.projecting = False
        self.delivery_failed: str | None = None  # why the delivery being awaited failed
        self.extension: timedelta | None = None  # the period an admin's `extend` asked for

    # --- the account ------------------------------------------------------------------------

    @workflow.run
    async def run(self, start: MerchantStart) -> MerchantOutcome:
        projector = asyncio.create_task(self.projector())
        loops = [
            asyncio.create_task(self.loop(self.fees)),
            asyncio.create_task(self.loop(self.inspections)),
            asyncio.create_task(self.loop(self.requests)),
        ]
        cause = await self.watch(loops)
        if cause is None:  # continue as new once every loop stopped at a wait
            await workflow.wait_condition(
                lambda: all(t.done() for t in loops) or self.closure is not None
            )
            if self.closure is None:
                return await self.continue_as_new(projector)
            cause = ClosureCause.REQUESTED
        self.closing = True
        await asyncio.gather(*loops)
        outcome = await self.close(cause)
        await workflow.wait_condition(
            lambda: workflow.all_handlers_finished() and not self.dirty and not self.projecting
        )
        projector.cancel()
        return outcome

    async def loop(self, body: Callable[[], Any]) -> None:
        try:
            await body()
        except (Drain, Closing):
            return

    async def watch(self, loops: list[asyncio.Task[None]]) -> ClosureCause | None:
        """Until the account must close (its cause) or continue as new (None)."""
        while True:
            for task in loops:
                if task.done() and not task.cancelled() and (error := task.exception()):
                    raise error  # a bug: fail the workflow task, so a fix lets it go on
            if self.closure is not None:
                return ClosureCause.REQUESTED
            due, cause = self.closure_due()
            if workflow.now() >= due:
                return cause
            if self.continue_due():
                self.draining = True
                return None
            seen = (self.suspended_since, len(self.bills))

            def moved(seen: tuple[datetime | None, int] = seen) -> bool:
                return (
                    self.closure is not None
                    or (self.suspended_since, len(self.bills)) != seen
                    or self.continue_due()
                    or any(t.done() for t in loops)
                )

            with suppress(TimeoutError):
                await workflow.wait_condition(
                    moved, timeout=due - workflow.now(), timeout_summary="closure due"
                )

    def closure_due(self) -> tuple[datetime, ClosureCause]:
        end = self.start.went_live_at + self.fees_policy.contract_term
        if self.suspended_since is not None:
            limit = self.suspended_since + self.fees_policy.suspension_limit
            if limit < end:
                return limit, ClosureCause.SUSPENSION
        return end, ClosureCause.CONTRACT_END

    def continue_due(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self.fees_policy.history_limit
        )

    async def continue_as_new(self, projector: asyncio.Task[None]) -> MerchantOutcome:
        await workflow.wait_condition(
            lambda: workflow.all_handlers_finished() and not self.dirty and not self.projecting
        )
        projector.cancel()
        length = workflow.info().get_current_history_length()
        self.event("continued_as_new", f"run {self.run_number} ended at {length} events")
        carried = self.carried()
        carried.history_events = [*self.history_events, length]
        carried.run = self.run_number + 1
        workflow.continue_as_new(self.start.model_copy(update={"carried": carried}))

    def carried(self) -> Carried:
        return Carried(
            run=self.run_number,
            state=self.state,
            suspensions=self.suspensions,
            suspended_since=self.suspended_since,
            terminals=list(self.terminals.values()),
            retired_tids=self.retired_tids,
            bindings=self.bindings,
            bills=self.bills[-KEPT_BILLS:],
            bills_issued=self.bills_issued,
            inspection=self.inspection,
            inspections_done=self.inspections_done,
            next_inspection_at=self.next_inspection_at,
            remediation_until=self.remediation_until,
            queue=self.queue,
            closure=self.closure,
            acks=list(self.acks.values())[-KEPT_ACKS:],
            events=self.events[-KEPT_EVENTS:],
            counters=self.counters,
            attentions=list(self.attentions.values()),
            last_inspection=self.last_inspection,
            version=self.version,
            history_events=self.history_events,
        )

    # --- fees -------------------------------------------------------------------------------

    @property
    def next_bill_at(self) -> datetime:
        return self.start.went_live_at + self.fees_policy.billing_period * (self.bills_issued + 1)

    def open_bill(self) -> Bill | None:
        return next((b for b in self.bills if b.paid_at is None and not b.refunded), None)

    def in_service(self) -> list[MerchantTerminal]:
        """The terminals the merchant has in service: a faulty one counts until its replacement
        takes over (one position, one fee), then the replacement does."""

        def replaced(t: MerchantTerminal) -> bool:
            new = self.terminals.get(t.replaced_by or "")
            return new is not None and new.state is TerminalState.ACTIVE

        return [
            t
            for t in self.terminals.values()
            if t.state is TerminalState.ACTIVE
            or (t.state is TerminalState.FAULTY and not replaced(t))
        ]

    async def fees(self) -> None:
        while True:
            bill = self.open_bill()
            if bill is None:
                await self.until(lambda: False, self.next_bill_at, drainable=True)
                await self.issue_bill()
                continue

            def paid(bill: Bill = bill) -> bool:
                return bill.paid_at is not None

            for index, offset in enumerate(sorted(self.fees_policy.fee_reminders)):
                if index < bill.reminders_sent:
                    continue
                if await self.until(paid, bill.issued_at + offset, drainable=True):
                    break
                bill.reminders_sent = index + 1
                await self.notify(
                    steps.Notice.FEE_REMINDER, self.bill_line(bill), **self.bill_fields(bill)
                )
            if (
                not paid()
                and not bill.overdue
                and not await self.until(paid, bill.due_at, drainable=True)
            ):
                bill.overdue = True
                self.event("fee_overdue", self.bill_line(bill), bill_id=bill.bill_id)
                await self.notify(
                    steps.Notice.FEE_OVERDUE, self.bill_line(bill), **self.bill_fields(bill)
                )
            if not paid() and SuspensionReason.FEES not in self.suspensions:
                grace_end = bill.due_at + self.fees_policy.grace_period
                if not await self.until(paid, grace_end, drainable=True):
                    await self.suspend(SuspensionReason.FEES, f"bill {bill.bill_id} unpaid")
            await self.until(paid, None, drainable=True)
            if SuspensionReason.FEES in self.suspensions and self.open_bill() is None:
                await self.reinstate(SuspensionReason.FEES, f"bill {bill.bill_id} paid")

    async def issue_bill(self) -> None:
        period = self.bills_issued + 1
        terminals = len(self.in_service())
        policy = self.fees_policy
        service_fee = (policy.service_fee_per_terminal * terminals).quantize(Decimal("0.01"))
        annual_fee = policy.annual_fee.quantize(Decimal("0.01"))
        amount = annual_fee + service_fee
        issued_at = workflow.now()
        due_at = issued_at + policy.payment_period
        if amount == 0:  # a free schedule, or no terminal in service: nothing to bill
            self.bills_issued = period
            self.event("no_fee_due", f"period {period}: nothing to bill")
            return
        with self.step_creating("bill"):
            issued = await self.step(
                "fees",
                act.ISSUE_BILL,
                steps.IssueBill(
                    **self.common("issue_bill", period),
                    contract_id=self.start.contract_id,
                    period=period,
                    annual_fee=annual_fee,
                    service_fee=service_fee,
                    amount=amount,
                    due_at=due_at,
                ),
                steps.BillIssued,
            )
            self.bills_issued = period
            self.bills.append(
                Bill(
                    bill_id=issued.bill_id,
                    period=period,
                    amount=issued.amount,
                    annual_fee=annual_fee,
                    service_fee=service_fee,
                    terminals=terminals,
                    issued_at=issued_at,
                    due_at=issued.due_at,
                )
            )
            self.bills = self.bills[-KEPT_BILLS:]
        self.count("bills")
        self.event("bill_issued", f"{issued.bill_id}: {issued.amount}", bill_id=issued.bill_id)
        await self.notify(
            steps.Notice.FEE_BILLED,
            f"{issued.amount} due by {_day(due_at)}",
            amount=str(issued.amount),
            due_date=_day(issued.due_at),
        )

    def bill_line(self, bill: Bill) -> str:
        return f"bill {bill.bill_id}: {bill.amount} due by {_day(bill.due_at)}"

    @staticmethod
    def bill_fields(bill: Bill) -> dict[str, str]:
        return {"amount": str(bill.amount), "due_date": _day(bill.due_at)}

    async def suspend(self, reason: SuspensionReason, detail: str) -> None:
        if not self.suspensions:
            await self.step(
                reason.value,
                act.CHANGE_ACQUIRING,
                steps.ChangeAcquiring(
                    **self.common("suspend", self.count("suspensions")),
                    mid=self.mid,
                    action="suspend",
                    reason=f"{reason.value}: {detail}",
                ),
                steps.AcquiringChanged,
            )
            self.suspended_since = workflow.now()
            self.state = AccountState.SUSPENDED
        self.suspensions.append(reason)
        self.event("suspended", f"{reason.value}: {detail}", reason=reason.value)
        await self.notify(
            steps.Notice.SUSPENDED, f"{reason.value}: {detail}", reason=SUSPENSION_REASONS[reason]
        )

    async def reinstate(self, reason: SuspensionReason, detail: str) -> None:
        self.suspensions = [r for r in self.suspensions if r is not reason]
        self.event("suspension_lifted", f"{reason.value}: {detail}", reason=reason.value)
        if self.suspensions:
            self.changed()
            return  # still suspended for another reason
        await self.step(
            reason.value,
            act.CHANGE_ACQUIRING,
            steps.ChangeAcquiring(
                **self.common("reinstate", self.counters.get("suspensions", 0)),
                mid=self.mid,
                action="reinstate",
                reason=f"{reason.value}: {detail}",
            ),
            steps.AcquiringChanged,
        )
        self.suspended_since = None
        self.state = AccountState.ACTIVE
        self.event("reinstated", detail)
        await self.notify(steps.Notice.REINSTATED, detail)

    # --- inspections ------------------------------------------------------------------------

    async def inspections(self) -> None:
        while True:
            if self.inspection is None:
                re = self.remediation_until is not None
                at = self.remediation_until if re else self.next_inspection_at
                await self.until(lambda: False, at, drainable=True)
                await self.book_inspection(re)
            inspection = self.inspection
            assert inspection is not None

            def reported(inspection: Inspection = inspection) -> bool:
                return inspection.passed is not None

            if not await self.until(
                reported, inspection.due_at, drainable=True
            ) and not await self.pulled("logistics", reported):
                await self.wait_overdue(
                    "inspections",
                    AttentionKind.INSPECTION_OVERDUE,
                    f"inspection {inspection.inspection_id}: no result by "
                    f"{inspection.due_at.isoformat()}",
                    reported,
                    "logistics",
                    self.fees_policy.inspection_deadline,
                )
            await self.inspected(inspection)

    async def book_inspection(self, reinspection: bool) -> None:
        number = self.count("inspections_booked")
        due = workflow.now() + self.fees_policy.inspection_deadline
        with self.step_creating("inspection"):
            booked = await self.step(
                "inspections",
                act.BOOK_INSPECTION,
                steps.BookInspection(
                    **self.common("book_inspection", number),
                    mid=self.mid,
                    address=self.app.delivery_address(),
                    serials=[t.serial for t in self.in_service()],
                    reinspection=reinspection,
                    due_by=due,
                ),
                steps.InspectionBooked,
            )
            self.inspection = Inspection(
                inspection_id=booked.inspection_id,
                booked_at=workflow.now(),
                scheduled_for=booked.scheduled_for,
                due_at=max(due, booked.scheduled_for + self.fees_policy.inspection_deadline),
                reinspection=reinspection,
            )
        kind = "re-inspection" if reinspection else "inspection"
        self.event("inspection_booked", f"{kind} {booked.inspection_id}")
        await self.notify(
            steps.Notice.INSPECTION_BOOKED,
            f"{kind} on {_day(booked.scheduled_for)}",
            kind="复检" if reinspection else "巡检",
            date=_day(booked.scheduled_for),
        )

    async def inspected(self, inspection: Inspection) -> None:
        self.inspection = None
        self.last_inspection = inspection
        self.inspections_done += 1
        interval = self.fees_policy.inspection_interval(self.start.risk_level)
        if inspection.passed:
            self.count("inspections_passed")
            self.remediation_until = None
            self.next_inspection_at = workflow.now() + interval
            self.changed()
            if SuspensionReason.INSPECTION in self.suspensions:
                await self.reinstate(
                    SuspensionReason.INSPECTION, f"inspection {inspection.inspection_id} passed"
                )
            return
        self.count("inspections_failed")
        findings = "; ".join(inspection.findings) or "failed"
        self.remediation_until = workflow.now() + self.fees_policy.remediation_period
        self.changed()
        await self.notify(
            steps.Notice.INSPECTION_FAILED,
            f"{findings}; re-inspection after {_day(self.remediation_until)}",
            findings=findings,
            remedy_by=_day(self.remediation_until),
        )
        if inspection.reinspection and SuspensionReason.INSPECTION not in self.suspensions:
            await self.suspend(
                SuspensionReason.INSPECTION,
                f"re-inspection {inspection.inspection_id} failed: {findings}",
            )

    # --- requests: swaps, more terminals, re-binding ----------------------------------------

    async def requests(self) -> None:
        while True:
            await self.until(lambda: bool(self.queue), None, drainable=True)
            request = self.queue[0]
            self.changed()
            try:
                if request.fault is not None:
                    await self.swap(request, request.fault)
                elif request.order is not None:
                    await self.add_terminals(request, request.order)
                elif request.rebinding is not None:
                    await self.rebind(request, request.rebinding)
            except Refused as refusal:
                self.event("request_refused", f"{request.request_id}: {refusal}")
            self.queue.pop(0)
            self.count(f"{request.kind}_done")
            self.changed()

    async def swap(self, request: Request, fault: FaultReport) -> None:
        faulty = self.terminals[fault.serial]
        faulty.state = TerminalState.FAULTY
        self.event("fault_reported", f"{fault.serial}: {fault.description}", serial=fault.serial)
        n = request.request_id
        reserved = await self.reserve(n, faulty.model, 1)
        replacement = reserved.serials[0]
        swapped = await self.step(
            "requests",
            act.SWAP_TERMINAL,
            steps.SwapTerminal(
                **self.common("swap_terminal", n),
                mid=self.mid,
                faulty_serial=faulty.serial,
                replacement_serial=replacement,
                reservation_id=reserved.reservation_id,
                move_tid=self.fees_policy.tid_moves_on_swap,
            ),
            steps.TerminalSwapped,
        )
        if swapped.retired_tid:
            self.retired_tids.append(swapped.retired_tid)
        self.terminals[replacement] = MerchantTerminal(
            serial=replacement,
            model=faulty.model,
            tid=swapped.tid,
            state=TerminalState.PENDING,
            since=workflow.now(),
            replaces=faulty.serial,
        )
        faulty.replaced_by = replacement
        self.event("replacement_bound", f"{replacement} takes TID {swapped.tid}")
        await self.bring_into_service(n, [replacement], fault.fulfilment)
        await self.step(
            "requests",
            act.ARRANGE_RETURN,
            steps.ArrangeReturn(
                **self.common("return_faulty", n),
                serials=[faulty.serial],
                address=self.app.delivery_address(),
                reason=f"faulty, replaced by {replacement}: {fault.description}",
            ),
            steps.ReturnArranged,
        )
        await self.unbind(n, faulty, f"replaced by {replacement}")
        self.count("swaps")
        await self.notify(
            steps.Notice.TERMINAL_REPLACED,
            f"{faulty.serial} replaced by {replacement}",
            faulty_serial=faulty.serial,
            replacement_serial=replacement,
        )

    async def add_terminals(self, request: Request, order: TerminalOrder) -> None:
        n = request.request_id
        reserved = await self.reserve(n, order.model, order.quantity)
        registered = await self.step(
            "requests",
            act.REGISTER_MORE_TERMINALS,
            steps.RegisterMoreTerminals(
                **self.common("register_more_terminals", n),
                mid=self.mid,
                reservation_id=reserved.reservation_id,
                serials=reserved.serials,
            ),
            steps.TerminalsRegistered,
        )
        for ids in registered.terminals:
            self.terminals[ids.serial] = MerchantTerminal(
                serial=ids.serial,
                model=order.model,
                tid=ids.tid,
                state=TerminalState.PENDING,
                since=workflow.now(),
            )
        serials = [ids.serial for ids in registered.terminals]
        self.event("terminals_registered", ", ".join(serials))
        await self.bring_into_service(n, serials, order.fulfilment)
        self.count("terminals_added", len(serials))
        await self.notify(
            steps.Notice.TERMINALS_ADDED,
            f"{len(serials)} x {order.model}",
            count=str(len(serials)),
            model=order.model,
        )

    async def reserve(self, n: str, model: str, quantity: int) -> steps.TerminalsReserved:
        return await self.step(
            "requests",
            act.RESERVE_TERMINALS,
            steps.ReserveTerminals(
                **self.common("reserve_terminals", n), model=model, quantity=quantity
            ),
            steps.TerminalsReserved,
            refusable=True,
        )

    async def bring_into_service(
        self, n: str, serials: list[str], fulfilment: Fulfilment | None
    ) -> None:
        """Deliver (mail or technician), activate and prove each new terminal."""
        on_site = (fulfilment or self.app.fulfilment) is Fulfilment.ON_SITE
        terminals = [self.terminals[s] for s in serials]
        attempt = 0
        while True:
            attempt += 1
            for t in terminals:
                t.delivered_at = None
                t.shipment_id = t.appointment_id = None
            with self.step_creating("dispatch"):
                if on_site:
                    booked = await self.step(
                        "requests",
                        act.BOOK_INSTALLATION,
                        steps.BookInstallation(
                            **self.common("book_installation", n, attempt),
                            address=self.app.delivery_address(),
                            contact=self.app.contact.name,
                            serials=serials,
                        ),
                        steps.InstallationBooked,
                    )
                    for t in terminals:
                        t.appointment_id = booked.appointment_id
                else:
                    shipped = await self.step(
                        "requests",
                        act.CREATE_SHIPMENT,
                        steps.CreateShipment(
                            **self.common("create_shipment", n, attempt),
                            address=self.app.delivery_address(),
                            recipient=self.app.contact.name,
                            serials=serials,
                        ),
                        steps.ShipmentCreated,
                    )
                    for t in terminals:
                        t.shipment_id = shipped.shipment_id
            self.changed()
            allowed = (
                self.policy.installation_deadline if on_site else self.policy.mail_delivery_deadline
            )
            self.delivery_failed = None

            def arrived() -> bool:
                return all(t.delivered_at is not None for t in terminals) or bool(
                    self.delivery_failed
                )

            if not await self.until(arrived, workflow.now() + allowed) and not await self.pulled(
                "logistics", arrived
            ):
                await self.wait_overdue(
                    "requests",
                    AttentionKind.DELIVERY_OVERDUE,
                    f"{', '.join(serials)} not delivered in {allowed}",
                    arrived,
                    "logistics",
                    allowed,
                )
            if not self.delivery_failed:
                break
            await self.park(
                "requests", AttentionKind.DELIVERY_FAILED, "delivery", self.delivery_failed
            )
        self.event("delivered", ", ".join(serials))

        with self.step_creating("activation"):
            issued = await self.step(
                "requests",
                act.ISSUE_ACTIVATION_CODES,
                steps.IssueActivationCodes(
                    **self.common("issue_activation_codes", n),
                    mid=self.mid,
                    terminals=[
                        steps.TerminalIds(serial=t.serial, tid=t.tid or "") for t in terminals
                    ],
                ),
                steps.ActivationCodesIssued,
            )
            for code in issued.codes:
                self.terminals[code.serial].activation_code_issued = True

        def activated() -> bool:
            return all(t.activated_at is not None for t in terminals)

        deadline = workflow.now() + self.policy.activation_deadline
        if not await self.until(activated, deadline) and not await self.pulled("device", activated):
            await self.wait_overdue(
                "requests",
                AttentionKind.ACTIVATION_OVERDUE,
                f"{', '.join(serials)} not activated by {deadline.isoformat()}",
                activated,
                "device",
                self.policy.activation_deadline,
            )
        if self.suspensions:
            # A suspended merchant's terminals take no payment: prove them once reinstated.
            self.event("test_waits_for_reinstatement", ", ".join(serials))
            await self.until(lambda: not self.suspensions, None)
        for terminal in terminals:
            await self.prove(n, terminal)
            terminal.state = TerminalState.ACTIVE
            terminal.since = workflow.now()
        self.changed()

    async def prove(self, n: str, terminal: MerchantTerminal) -> None:
        attempt = 1
        while True:
            result = await self.step(
                "requests",
                act.RUN_TEST_TRANSACTION,
                steps.RunTestTransaction(
                    **self.common("run_test_transaction", n, terminal.serial, attempt),
                    mid=self.mid,
                    serial=terminal.serial,
                    tid=terminal.tid or "",
                ),
                steps.TestTransactionResult,
            )
            if result.approved:
                terminal.test_transaction = result.reference
                self.event("test_transaction_approved", terminal.serial)
                return
            await self.park(
                "requests",
                AttentionKind.TEST_TRANSACTION_DECLINED,
                act.RUN_TEST_TRANSACTION,
                f"terminal {terminal.serial}: declined with response code {result.response_code}",
            )
            attempt += 1

    async def unbind(self, n: str, terminal: MerchantTerminal, reason: str) -> None:
        await self.step(
            "closure" if self.closing else "requests",
            act.UNBIND_TERMINAL,
            steps.UnbindTerminal(
                **self.common("unbind_terminal", n, terminal.serial),
                mid=self.mid,
                serial=terminal.serial,
                reason=reason,
            ),
            steps.Undone,
            skippable=self.closing,
        )
        terminal.state = TerminalState.RETURNING
        terminal.since = workflow.now()
        self.event("terminal_unbound", f"{terminal.serial}: {reason}")

    async def rebind(self, request: Request, rebinding: RebindingRequest) -> None:
        account = rebinding.account
        last4 = account.account_number[-4:]
        n = request.request_id
        if self.fees_policy.rebinding_review:
            with self.step_creating("rebinding_review"):
                opened = await self.step(
                    "requests",
                    act.OPEN_REBINDING_REVIEW,
                    steps.OpenRebindingReview(
                        **self.common("open_rebinding_review", n),
                        mid=self.mid,
                        merchant_name=self.app.merchant.name,
                        holder_name=account.holder_name,
                        bank_name=account.bank_name,
                        account_kind=account.account_kind.value,
                        account_last4=last4,
                    ),
                    steps.RebindingReviewOpened,
                )
                request.case_id = opened.case_id
            self.event("rebinding_review_opened", opened.case_id)

            def decided() -> bool:
                return opened.case_id in self.decisions

            deadline = workflow.now() + self.fees_policy.rebinding_review_deadline
            if not await self.until(decided, deadline) and not await self.pulled("review", decided):
                await self.wait_overdue(
                    "requests",
                    AttentionKind.REVIEW_OVERDUE,
                    f"re-binding review {opened.case_id}: no decision by {deadline.isoformat()}",
                    decided,
                    "review",
                    self.fees_policy.rebinding_review_deadline,
                )
            decision = self.decisions[opened.case_id]
            if not decision.approved:
                reasons = "; ".join(decision.reasons)
                self.count("rebindings_refused")
                self.event("rebinding_refused", reasons, case_id=opened.case_id)
                await self.notify(
                    steps.Notice.REBINDING_REFUSED, reasons, reasons=reasons or "审核未通过"
                )
                return
        bound = await self.step(
            "requests",
            act.BIND_SETTLEMENT,
            steps.BindSettlement(
                **self.common("bind_settlement", n),
                mid=self.mid,
                holder_name=account.holder_name,
                bank_name=account.bank_name,
                account_kind=account.account_kind.value,
                account_last4=last4,
            ),
            steps.SettlementBound,
        )
        for binding in self.bindings:
            if binding.unbound_at is None:
                binding.unbound_at = bound.bound_at
        self.bindings.append(
            Binding(
                holder_name=account.holder_name,
                bank_name=account.bank_name,
                account_kind=account.account_kind.value,
                account_last4=last4,
                bound_at=bound.bound_at,
                binding_id=bound.binding_id,
            )
        )
        # The full number is not kept once bound: the request leaves the queue after this.
        self.count("rebindings")
        self.event("settlement_rebound", f"{account.bank_name} ****{last4}")
        await self.notify(
            steps.Notice.SETTLEMENT_REBOUND,
            f"{account.bank_name} ****{last4}",
            bank_name=account.bank_name,
            account_last4=last4,
        )

    # --- closure ----------------------------------------------------------------------------

    async def close(self, cause: ClosureCause) -> MerchantOutcome:
        self.closure_cause = cause
        if cause is ClosureCause.REQUESTED and self.closure is not None:
            self.closure_reason = f"{self.closure.reason} (by {self.closure.requested_by})"
        elif cause is ClosureCause.CONTRACT_END:
            self.closure_reason = "the contract reached its end"
        else:
            self.closure_reason = (
                f"suspended ({', '.join(r.value for r in self.suspensions)}) past the limit of "
                f"{self.fees_policy.suspension_limit}"
            )
        self.state = AccountState.CLOSING
        self.event("closing", f"{cause.value}: {self.closure_reason}")
        for request in self.queue:
            self.event("request_dropped", f"{request.request_id}: the account is closing")
        self.queue = []
        reason = f"closure ({cause.value})"
        await self.step(
            "closure",
            act.CHANGE_ACQUIRING,
            steps.ChangeAcquiring(
                **self.common("close_acquiring"), mid=self.mid, action="suspend", reason=reason
            ),
            steps.AcquiringChanged,
            skippable=True,
        )
        bound = [
            t
            for t in self.terminals.values()
            if t.state in (TerminalState.ACTIVE, TerminalState.FAULTY, TerminalState.PENDING)
        ]
        returned = [t.serial for t in bound]
        if bound:
            await self.step(
                "closure",
                act.ARRANGE_RETURN,
                steps.ArrangeReturn(
                    **self.common("return_all"),
                    serials=returned,
                    address=self.app.delivery_address(),
                    reason=reason,
                ),
                steps.ReturnArranged,
                skippable=True,
            )
        for terminal in bound:
            await self.unbind("closure", terminal, reason)
        retired = await self.step(
            "closure",
            act.RETIRE_MERCHANT,
            steps.RetireMerchant(**self.common("retire_merchant"), mid=self.mid, reason=reason),
            steps.MerchantRetired,
            skippable=True,
        )
        if retired is not None:
            self.retired_tids = sorted({*self.retired_tids, *retired.retired_tids})
        refunded = await self.refunds()
        await self.step(
            "closure",
            act.TERMINATE_CONTRACT,
            steps.TerminateContract(
                **self.common("terminate_contract"),
                contract_id=self.start.contract_id,
                reason=reason,
            ),
            steps.Undone,
            skippable=True,
        )
        unpaid = [b for b in self.bills if b.paid_at is None]
        for bill in unpaid:
            self.event("bill_written_off", self.bill_line(bill), bill_id=bill.bill_id)
        self.state = AccountState.CLOSED
        self.closed_at = workflow.now()
        self.suspensions = []
        self.event("closed", f"{cause.value}: {self.closure_reason}")
        await self.notify(steps.Notice.CLOSED, self.closure_reason, reason=self.closure_reason)
        # A bill paid while the account closed is refunded too.
        refunded += await self.refunds()
        return MerchantOutcome(
            mid=self.mid,
            application_id=self.app.application_id,
            cause=cause,
            reason=self.closure_reason,
            closed_at=self.closed_at,
            refunded=refunded,
            returned=returned,
            retired_tids=self.retired_tids,
            runs=self.run_number,
        )

    async def refunds(self) -> Decimal:
        """Refund the deposit once, and every bill paid after the account began to close."""
        total = Decimal("0.00")
        start = self.start
        if (
            start.deposit_amount > 0
            and start.deposit_reference
            and not self.counters.get("deposit_refunded")
        ):
            refund = await self.step(
                "closure",
                act.REFUND_DEPOSIT,
                steps.RefundDeposit(
                    **self.common("refund_deposit"),
                    contract_id=start.contract_id,
                    amount=start.deposit_amount,
                    payment_reference=start.deposit_reference,
                ),
                steps.Refunded,
                skippable=True,
            )
            self.count("deposit_refunded")
            if refund is not None:
                total += start.deposit_amount
                self.event("deposit_refunded", f"{start.deposit_amount}")
        for bill in self.bills:
            if bill.paid_at is not None and bill.paid_after_closing and not bill.refunded:
                assert bill.payment_reference is not None
                refund = await self.step(
                    "closure",
                    act.REFUND_PAYMENT,
                    steps.RefundPayment(
                        **self.common("refund_payment", bill.bill_id),
                        contract_id=start.contract_id,
                        amount=bill.amount,
                        payment_reference=bill.payment_reference,
                    ),
                    steps.Refunded,
                    skippable=True,
                )
                bill.refunded = True
                if refund is not None:
                    total += bill.amount
                    self.event("payment_refunded", self.bill_line(bill), bill_id=bill.bill_id)
        return total

    # --- waiting, parking, pulling ----------------------------------------------------------

    async def until(
        self, done: Callable[[], bool], at: datetime | None, *, drainable: bool = False
    ) -> bool:
        """Wait until `done` (True) or `at` passes (False). Closing stops every wait; draining
        for continue-as-new stops the waits that can be taken up again from the record."""

        def stop() -> bool:
            return self.closing or (drainable and self.draining)

        if not done():
            if at is None:
                await workflow.wait_condition(lambda: done() or stop())
            elif (remaining := at - workflow.now()) > timedelta(0):
                with suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: done() or stop(), timeout=remaining, timeout_summary="deadline"
                    )
        if self.closing:
            raise Closing
        if drainable and self.draining and not done():
            raise Drain
        return done()

    async def park(
        self,
        loop: str,
        kind: AttentionKind,
        step: str,
        reason: str,
        *,
        skippable: bool = False,
        extendable: bool = False,
        resolved: Callable[[], bool] | None = None,
    ) -> str:
        """Park one loop for an admin: "retry", "skip", "extend", or "resolved". The fees and
        inspections loops stay parked across continue-as-new: they park again from the record,
        keeping the time they were first parked."""
        drainable = loop in DRAINABLE
        previous = self.attentions.get(loop)
        first = previous.since if previous is not None and previous.kind is kind else None
        self.attentions[loop] = Attention(
            kind=kind,
            step=loop,
            reason=f"{step}: {reason}",
            since=first or workflow.now(),
            retryable=True,
            skippable=skippable,
            extendable=extendable,
        )
        self.admin_verbs.pop(loop, None)
        self.event("needs_attention", f"{step}: {reason}", attention=kind.value)
        workflow.logger.warning(
            "needs_attention", extra={"mid": self.mid, "kind": kind.value, "step": step}
        )
        is_resolved = resolved or (lambda: False)
        stop_on_closing = loop != "closure"
        await workflow.wait_condition(
            lambda: (
                loop in self.admin_verbs
                or is_resolved()
                or (stop_on_closing and self.closing)
                or (drainable and self.draining)
            )
        )
        if loop not in self.admin_verbs and not is_resolved():
            if stop_on_closing and self.closing:
                self.attentions.pop(loop, None)
                raise Closing
            raise Drain  # still parked: carried across continue-as-new
        self.attentions.pop(loop, None)
        self.changed()
        verb, period = self.admin_verbs.pop(loop, ("resolved", None))
        self.extension = period
        self.event("attention_cleared", verb)
        return verb

    async def wait_overdue(
        self,
        loop: str,
        kind: AttentionKind,
        reason: str,
        done: Callable[[], bool],
        service: str,
        period: timedelta,
    ) -> None:
        while True:
            verb = await self.park(loop, kind, kind.value, reason, extendable=True, resolved=done)
            if verb == "resolved" or done():
                return
            if verb == "extend":
                due = workflow.now() + (self.extension or period)
                self.event("deadline_extended", due.isoformat())
                if await self.until(done, due):
                    return
                reason = f"still waiting after the extension to {due.isoformat()}"
            if await self.pulled(service, done):
                return

    async def pulled(self, service: str, done: Callable[[], bool]) -> bool:
        """Ask the service what it recorded for the merchant, apply what was missed."""
        try:
            found = await self.execute(
                act.READ_SERVICE_EVENTS,
                steps.ReadServiceEvents(
                    application_id=self.app.application_id, service=service, merchant_id=self.mid
                ),
                steps.ServiceEvents,
            )
        except ActivityError as err:
            self.event("service_unreachable", f"{service}: {failure_reason(err)}")
            return done()
        receivers: dict[str, tuple[type[BaseModel], Callable[[Any], bool], Callable[[Any], Ack]]]
        receivers = {
            "fee-payment": (FeePaid, self.check_fee, self._fee),
            "inspection": (InspectionResult, self.check_inspection, self._inspection),
            "delivery": (DeliveryOutcome, self.check_delivery, self._delivery),
            "activation": (TerminalActivated, self.check_activation, self._activation),
            "rebinding-decision": (RebindingDecision, self.check_rebinding, self._rebinding),
        }
        for event in found.events:
            if event.kind not in receivers:
                continue
            model, check, apply = receivers[event.kind]
            try:
                message = model.model_validate(event.body)
            except ValidationError:
                continue
            if message_id(message) in self.acks:
                continue
            try:
                if check(message):
                    continue
            except ApplicationError:
                continue
            ack = apply(message)
            self.event("message_recovered", event.kind, message_id=ack.message_id)
        return done()

    # --- steps ------------------------------------------------------------------------------

    def common(self, step: str, *discriminators: object) -> dict[str, Any]:
        """The fields every step carries: its idempotency key and whom it is for."""
        key = ":".join([merchant_workflow_id(self.mid), step, *(str(d) for d in discriminators)])
        return {
            "idempotency_key": key,
            "application_id": self.app.application_id,
            "merchant_id": self.mid,
        }

    async def step(
        self,
        loop: str,
        name: str,
        arg: BaseModel,
        result_type: type[T],
        *,
        skippable: bool = False,
        refusable: bool = False,
    ) -> T:
        """Run an activity; when its retries are exhausted, park the loop for an admin. With
        `refusable`, a service's refusal (4xx) raises `Refused`: the request cannot be done.
        With `skippable` an admin may skip a step done by hand (the result is then None)."""
        while True:
            try:
                return await self.execute(name, arg, result_type)
            except ActivityError as err:
                if refusable and _non_retryable(err):
                    raise Refused(failure_reason(err)) from err
                verb = await self.park(
                    loop, AttentionKind.STEP_FAILED, name, failure_reason(err), skippable=skippable
                )
                if verb == "skip":
                    self.event("step_skipped", name)
                    return None  # type: ignore[return-value]

    async def execute(self, name: str, arg: BaseModel, result_type: type[T]) -> T:
        result: T = await workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            start_to_close_timeout=self.policy.activity_timeout,
            retry_policy=RetryPolicy(
                initial_interval=self.policy.activity_retry_interval,
                maximum_interval=self.policy.activity_retry_max_interval,
                maximum_attempts=self.policy.activity_max_attempts,
            ),
        )
        return result

    async def notify(self, notice: steps.Notice, detail: str = "", **fields: str) -> None:
        """Tell the merchant, best effort; `fields` fill in the notice's template."""
        number = self.count("notices")
        try:
            await self.execute(
                act.NOTIFY_MERCHANT,
                steps.NotifyMerchant(
                    **self.common("notify", number), notice=notice, detail=detail, fields=fields
                ),
                steps.Notified,
            )
        except ActivityError as err:
            self.event("notification_failed", f"{notice.value}: {failure_reason(err)}")

    # --- the record -------------------------------------------------------------------------

    def event(self, kind: str, detail: str = "", /, **_: Any) -> None:
        self.events.append(AccountEvent(at=workflow.now(), kind=kind, detail=detail))
        if len(self.events) > KEPT_EVENTS:
            del self.events[: len(self.events) - KEPT_EVENTS]
        self.changed()

    def count(self, what: str, by: int = 1) -> int:
        self.counters[what] = self.counters.get(what, 0) + by
        return self.counters[what]

    def changed(self) -> None:
        self.dirty = True

    @contextmanager
    def step_creating(self, what: str) -> Iterator[None]:
        self.creating.add(what)
        try:
            yield
        finally:
            self.creating.discard(what)

    async def projector(self) -> None:
        """Send the gateway a snapshot whenever the record changed, one at a time, numbered on
        across runs, so its merchant list stays current without one activity per change."""
        while True:
            await workflow.wait_condition(lambda: self.dirty)
            self.dirty = False
            self.projecting = True
            self.version += 1
            try:
                await workflow.execute_activity(
                    act.PROJECT_MERCHANT,
                    self.status(),
                    result_type=ProjectionReceipt,
                    start_to_close_timeout=self.policy.activity_timeout,
                    retry_policy=RetryPolicy(
                        initial_interval=self.policy.activity_retry_interval,
                        maximum_interval=self.policy.activity_retry_max_interval,
                        maximum_attempts=PROJECTION_ATTEMPTS,
                    ),
                    summary=f"project {self.state.value}",
                )
            except ActivityError as err:
                workflow.logger.log(
                    logging.WARNING, "projection_given_up", extra={"error": failure_reason(err)}
                )
            finally:
                self.projecting = False

    @workflow.query
    def status(self) -> MerchantStatus:
        app = self.app
        unpaid = [b for b in self.bills if b.paid_at is None and not b.refunded]
        attentions = sorted(self.attentions.values(), key=lambda a: a.since)
        return MerchantStatus(
            mid=self.mid,
            workflow_id=merchant_workflow_id(self.mid),
            application_id=app.application_id,
            run_id=workflow.info().run_id,
            version=self.version,
            run=self.run_number,
            channel=app.channel.value,
            merchant_type=app.merchant.merchant_type.value,
            merchant_name=app.merchant.name,
            state=self.state,
            suspensions=self.suspensions,
            suspended_since=self.suspended_since,
            went_live_at=self.start.went_live_at,
            contract_id=self.start.contract_id,
            contract_ends_at=self.start.went_live_at + self.fees_policy.contract_term,
            deposit_held=Decimal("0.00")
            if self.counters.get("deposit_refunded")
            else self.start.deposit_amount,
            fees_due=sum((b.amount for b in unpaid), Decimal("0.00")),
            fees_overdue=sum((b.amount for b in unpaid if b.overdue), Decimal("0.00")),
            next_bill_at=None if self.state.finished or self.closing else self.next_bill_at,
            bills=self.bills,
            next_inspection_at=None
            if self.state.finished or self.closing or self.inspection is not None
            else (self.remediation_until or self.next_inspection_at),
            inspection=self.inspection,
            last_inspection=self.last_inspection,
            remediation_until=self.remediation_until,
            terminals=list(self.terminals.values()),
            retired_tids=self.retired_tids,
            bindings=self.bindings,
            queue=[r.request_id for r in self.queue],
            serving=self.queue[0].request_id if self.queue else None,
            attention=attentions[0] if attentions else None,
            attentions=attentions,
            closure_cause=self.closure_cause,
            closure_reason=self.closure_reason,
            closed_at=self.closed_at,
            counters=self.counters,
            history_events=self.history_events,
            events=self.events[-50:],
        )

    # --- messages ---------------------------------------------------------------------------

    def duplicate(self, key: str) -> Ack | None:
        ack = self.acks.get(key)
        return ack.model_copy(update={"duplicate": True}) if ack else None

    def acknowledge(self, key: str, detail: str) -> Ack:
        ack = Ack(message_id=key, stage=self.state.value, detail=detail, at=workflow.now())
        self.acks[key] = ack
        if len(self.acks) > KEPT_ACKS:
            del self.acks[next(iter(self.acks))]
        self.changed()
        return ack

    def expect_open(self, message: str) -> None:
        if self.state is AccountState.CLOSED:
            raise refuse(Refusal.FINISHED, f"merchant {self.mid} is closed: {message} refused")

    def expect_not_closing(self, message: str) -> None:
        self.expect_open(message)
        if self.closing or self.closure is not None:
            raise refuse(
                Refusal.OUT_OF_STAGE, f"merchant {self.mid} is closing: {message} is not accepted"
            )

    async def receive(
        self, message: Message, check: Callable[[Message], bool], apply: Callable[[Message], Ack]
    ) -> Ack:
        return await receive(message, check, apply, self.duplicate)

    def validate(self, message: BaseModel, check: Callable[[Any], Any]) -> None:
        if message_id(message) not in self.acks:
            check(message)

    # fee paid (contract service)

    def bill(self, bill_id: str) -> Bill | None:
        return next((b for b in self.bills if b.bill_id == bill_id), None)

    def check_fee(self, paid: FeePaid) -> bool:
        self.expect_open("a fee payment")
        bill = self.bill(paid.bill_id)
        if bill is None:
            if "bill" in self.creating:
                return True
            raise refuse(
                Refusal.UNKNOWN_REFERENCE, f"bill {paid.bill_id} is not merchant {self.mid}'s"
            )
        if bill.paid_at is not None:
            raise refuse(Refusal.STALE, f"bill {paid.bill_id} is already paid")
        if paid.amount != bill.amount:
            raise refuse(
                Refusal.INVALID,
                f"amount: bill {bill.bill_id} is for {bill.amount}, not {paid.amount}",
            )
        return False

    def _fee(self, paid: FeePaid) -> Ack:
        bill = self.bill(paid.bill_id)
        assert bill is not None
        bill.paid_at = workflow.now()
        bill.payment_reference = paid.payment_reference
        bill.paid_after_closing = self.closing
        late = bill.paid_at > bill.due_at
        self.count("bills_paid_late" if late else "bills_paid")
        self.event("bill_paid", self.bill_line(bill), bill_id=bill.bill_id)
        detail = "paid late" if late else "paid"
        if self.closing:
            detail = "paid while the account closes: it is refunded"
        return self.acknowledge(paid.event_id, detail)

    @workflow.update
    async def fee_paid(self, paid: FeePaid) -> Ack:
        return await self.receive(paid, self.check_fee, self._fee)

    @fee_paid.validator
    def _check_fee(self, paid: FeePaid) -> None:
        self.validate(paid, self.check_fee)

    # inspection result (logistics service)

    def check_inspection(self, result: InspectionResult) -> bool:
        self.expect_not_closing("an inspection result")
        current = self.inspection
        if current is None or current.inspection_id != result.inspection_id:
            if "inspection" in self.creating:
                return True
            last = self.last_inspection
            if last is not None and last.inspection_id == result.inspection_id:
                raise refuse(Refusal.STALE, f"inspection {result.inspection_id} already reported")
            raise refuse(
                Refusal.UNKNOWN_REFERENCE,
                f"inspection {result.inspection_id} is not merchant {self.mid}'s current one",
            )
        if current.passed is not None:
            raise refuse(Refusal.STALE, f"inspection {result.inspection_id} already reported")
        return False

    def _inspection(self, result: InspectionResult) -> Ack:
        inspection = self.inspection
        assert inspection is not None
        inspection.passed = result.passed
        inspection.inspector = result.inspector
        inspection.findings = list(result.findings)
        inspection.reported_at = workflow.now()
        verdict = "passed" if result.passed else "failed"
        self.event("inspection_result", f"{inspection.inspection_id} {verdict}")
        return self.acknowledge(result.event_id, verdict)

    @workflow.update
    async def inspection_result(self, result: InspectionResult) -> Ack:
        return await self.receive(result, self.check_inspection, self._inspection)

    @inspection_result.validator
    def _check_inspection(self, result: InspectionResult) -> None:
        self.validate(result, self.check_inspection)

    # delivery of a replacement or added terminals (logistics service)

    def delivering(self, reference: str) -> list[MerchantTerminal]:
        return [
            t
            for t in self.terminals.values()
            if t.state is TerminalState.PENDING and reference in (t.shipment_id, t.appointment_id)
        ]

    def check_delivery(self, outcome: DeliveryOutcome) -> bool:
        self.expect_not_closing("a delivery outcome")
        terminals = self.delivering(outcome.reference)
        if not terminals:
            if "dispatch" in self.creating:
                return True
            raise refuse(
                Refusal.UNKNOWN_REFERENCE,
                f"{outcome.reference} is not a delivery merchant {self.mid} is waiting for",
            )
        if all(t.delivered_at is not None for t in terminals):
            raise refuse(Refusal.STALE, f"{outcome.reference} is already delivered")
        return False

    def _delivery(self, outcome: DeliveryOutcome) -> Ack:
        terminals = self.delivering(outcome.reference)
        if outcome.kind is DeliveryOutcomeKind.FAILED:
            self.delivery_failed = outcome.detail or "delivery failed"
        else:
            for t in terminals:
                t.delivered_at = workflow.now()
        self.event(f"delivery_{outcome.kind.value}", outcome.reference)
        return self.acknowledge(outcome.event_id, outcome.kind.value)

    @workflow.update
    async def delivery_outcome(self, outcome: DeliveryOutcome) -> Ack:
        return await self.receive(outcome, self.check_delivery, self._delivery)

    @delivery_outcome.validator
    def _check_delivery(self, outcome: DeliveryOutcome) -> None:
        self.validate(outcome, self.check_delivery)

    # activation of a replacement or added terminal (device service)

    def check_activation(self, report: TerminalActivated) -> bool:
        self.expect_not_closing("an activation report")
        terminal = self.terminals.get(report.serial)
        if terminal is None or terminal.state is not TerminalState.PENDING:
            raise refuse(
                Refusal.UNKNOWN_REFERENCE,
                f"terminal {report.serial} is not one merchant {self.mid} is bringing into service",
            )
        if terminal.tid != report.tid:
            raise refuse(
                Refusal.INVALID,
                f"tid: terminal {report.serial} is bound as {terminal.tid}, not {report.tid}",
            )
        if "activation" in self.creating:
            return True
        if not terminal.activation_code_issued:
            raise refuse(
                Refusal.UNKNOWN_REFERENCE, f"terminal {report.serial} has no activation code yet"
            )
        if terminal.activated_at is not None:
            raise refuse(Refusal.STALE, f"terminal {report.serial} is already activated")
        return False

    def _activation(self, report: TerminalActivated) -> Ack:
        self.terminals[report.serial].activated_at = workflow.now()
        self.event("terminal_activated", report.serial)
        return self.acknowledge(report.event_id, f"terminal {report.serial} activated")

    @workflow.update
    async def terminal_activated(self, report: TerminalActivated) -> Ack:
        return await self.receive(report, self.check_activation, self._activation)

    @terminal_activated.validator
    def _check_activation(self, report: TerminalActivated) -> None:
        self.validate(report, self.check_activation)

    # re-binding review decision (review service)

    def check_rebinding(self, decision: RebindingDecision) -> bool:
        self.expect_not_closing("a re-binding decision")
        serving = self.queue[0] if self.queue else None
        if serving is None or serving.rebinding is None or serving.case_id != decision.case_id:
            if "rebinding_review" in self.creating:
                return True
            raise refuse(
                Refusal.UNKNOWN_REFERENCE,
                f"re-binding review {decision.case_id} is not one merchant {self.mid} awaits",
            )
        if decision.case_id in self.decisions:
            raise refuse(Refusal.STALE, f"re-binding review {decision.case_id} is already decided")
        if not decision.approved and not decision.reasons:
            raise refuse(Refusal.INVALID, "reasons: a refusal must give its reasons")
        return False

    def _rebinding(self, decision: RebindingDecision) -> Ack:
        self.decisions[decision.case_id] = decision
        verdict = "approved" if decision.approved else "refused"
        self.event("rebinding_decided", f"{decision.case_id} {verdict}")
        return self.acknowledge(decision.decision_id, verdict)

    @workflow.update
    async def rebinding_decision(self, decision: RebindingDecision) -> Ack:
        return await self.receive(decision, self.check_rebinding, self._rebinding)

    @rebinding_decision.validator
    def _check_rebinding_decision(self, decision: RebindingDecision) -> None:
        self.validate(decision, self.check_rebinding)

    # the merchant's requests

    def queued(self, kind: str) -> list[Request]:
        return [r for r in self.queue if r.kind == kind]

    def check_fault(self, report: FaultReport) -> None:
        self.expect_not_closing("a fault report")
        terminal = self.terminals.get(report.serial)
        if terminal is None:
            raise refuse(
                Refusal.UNKNOWN_REFERENCE, f"terminal {report.serial} is not merchant {self.mid}'s"
            )
        if terminal.state is not TerminalState.ACTIVE or any(
            r.fault is not None and r.fault.serial == report.serial for r in self.queue
        ):
            raise refuse(
                Refusal.STALE,
                f"terminal {report.serial} is {terminal.state.value}: a fault report for it is "
                "already being handled",
            )

    @workflow.update
    def report_fault(self, report: FaultReport) -> Ack:
        if (ack := self.duplicate(report.request_id)) is not None:
            return ack
        self.check_fault(report)
        return self.enqueue(
            Request(
                kind="fault", request_id=report.request_id, accepted_at=workflow.now(), fault=report
            ),
            f"fault on {report.serial}: a replacement is arranged",
        )

    @report_fault.validator
    def _check_fault(self, report: FaultReport) -> None:
        self.validate(report, self.check_fault)

    def check_order(self, order: TerminalOrder) -> None:
        self.expect_not_closing("an order for terminals")
        if self.suspensions:
            raise refuse(
                Refusal.OUT_OF_STAGE,
                f"merchant {self.mid} is suspended: no terminals are added until reinstated",
            )

    @workflow.update
    def order_terminals(self, order: TerminalOrder) -> Ack:
        if (ack := self.duplicate(order.request_id)) is not None:
            return ack
        self.check_order(order)
        return self.enqueue(
            Request(
                kind="order", request_id=order.request_id, accepted_at=workflow.now(), order=order
            ),
            f"{order.quantity} x {order.model} ordered",
        )

    @order_terminals.validator
    def _check_order(self, order: TerminalOrder) -> None:
        self.validate(order, self.check_order)

    def check_rebind(self, request: RebindingRequest) -> None:
        self.expect_not_closing("a new settlement account")
        if self.queued("rebinding"):
            raise refuse(
                Refusal.STALE,
                "a new settlement account is already being bound "
                f"({self.queued('rebinding')[0].request_id})",
            )

    @workflow.update
    async def rebind_settlement(self, request: RebindingRequest) -> Ack:
        """Checked with the application's own rules before it is queued: an invalid account is
        refused naming the field, and nothing changes."""
        if (ack := self.duplicate(request.request_id)) is not None:
            return ack
        account = request.account
        try:
            checked = await self.execute(
                act.VALIDATE_SETTLEMENT,
                steps.ValidateSettlement(
                    application=self.app,
                    account_holder=account.holder_name,
                    account_kind=account.account_kind.value,
                    account_number=account.account_number,
                    bank_name=account.bank_name,
                    as_of=workflow.now().astimezone(CHINA).date(),
                ),
                steps.SettlementChecked,
            )
        except ActivityError as err:
            raise refuse(
                Refusal.UNAVAILABLE, f"the account could not be checked now: {failure_reason(err)}"
            ) from err
        if (ack := self.duplicate(request.request_id)) is not None:
            return ack
        if checked.issues:
            raise ApplicationError(
                "; ".join(f"{i.field}: {i.message}" for i in checked.issues),
                {"fields": {i.field: i.message for i in checked.issues}},
                type=Refusal.INVALID.value,
                non_retryable=True,
            )
        self.check_rebind(request)
        return self.enqueue(
            Request(
                kind="rebinding",
                request_id=request.request_id,
                accepted_at=workflow.now(),
                rebinding=request,
            ),
            f"new settlement account ****{account.account_number[-4:]} accepted"
            + (" for review" if self.fees_policy.rebinding_review else ""),
        )

    @rebind_settlement.validator
    def _check_rebind(self, request: RebindingRequest) -> None:
        self.validate(request, self.check_rebind)

    def enqueue(self, request: Request, detail: str) -> Ack:
        self.queue.append(request)
        self.count(f"{request.kind}_requests")
        self.event(f"{request.kind}_accepted", detail)
        return self.acknowledge(request.request_id, detail)

    def check_closure(self, request: ClosureRequest) -> None:
        self.expect_open("a closure request")
        if self.closure is not None or self.closing:
            raise refuse(Refusal.STALE, f"merchant {self.mid} is already closing")

    @workflow.update
    def request_closure(self, request: ClosureRequest) -> Ack:
        if (ack := self.duplicate(request.request_id)) is not None:
            return ack
        self.check_closure(request)
        self.closure = request
        self.event("closure_requested", request.reason)
        return self.acknowledge(
            request.request_id, "closure accepted: devices are collected and the deposit refunded"
        )

    @request_closure.validator
    def _check_closure(self, request: ClosureRequest) -> None:
        self.validate(request, self.check_closure)

    # admins

    def parked_on(self, verb: str, action: AdminAction) -> str:
        if action.step is not None:
            if action.step not in self.attentions:
                raise refuse(Refusal.NOT_PARKED, f"nothing to {verb}: {action.step} is not parked")
            attention = self.attentions[action.step]
        else:
            if not self.attentions:
                raise refuse(
                    Refusal.NOT_PARKED, f"nothing to {verb}: merchant {self.mid} is not parked"
                )
            attention = min(self.attentions.values(), key=lambda a: a.since)
        if attention.step in self.admin_verbs:
            raise refuse(Refusal.NOT_PARKED, f"{attention.step} is already being handled")
        if verb == "extend" and not attention.extendable:
            raise refuse(
                Refusal.NOT_PARKED,
                f"nothing to extend: {attention.kind.value} is not a wait past a deadline",
            )
        if verb == "skip" and not attention.skippable:
            raise refuse(Refusal.NOT_SKIPPABLE, f"{attention.reason} cannot be skipped safely")
        return attention.step

    def _admin(self, verb: str, action: AdminAction) -> Ack:
        if (ack := self.duplicate(action.request_id)) is not None:
            return ack
        loop = self.parked_on(verb, action)
        self.admin_verbs[loop] = (verb, action.period)
        self.event(f"admin_{verb}", loop)
        return self.acknowledge(action.request_id, f"{verb} {loop}")

    @workflow.update
    def retry(self, action: AdminAction) -> Ack:
        return self._admin("retry", action)

    @retry.validator
    def _check_retry(self, action: AdminAction) -> None:
        if action.request_id not in self.acks:
            self.parked_on("retry", action)

    @workflow.update
    def skip(self, action: AdminAction) -> Ack:
        return self._admin("skip", action)

    @skip.validator
    def _check_skip(self, action: AdminAction) -> None:
        if action.request_id not in self.acks:
            self.parked_on("skip", action)

    @workflow.update
    def extend_deadline(self, action: AdminAction) -> Ack:
        return self._admin("extend", action)

    @extend_deadline.validator
    def _check_extend(self, action: AdminAction) -> None:
        if action.request_id not in self.acks:
            self.parked_on("extend", action)


# What a suspension notice tells the merchant.
SUSPENSION_REASONS = MappingProxyType(
    {SuspensionReason.FEES: "费用逾期未缴", SuspensionReason.INSPECTION: "巡检整改未通过"}
)


def _day(moment: datetime) -> str:
    return moment.astimezone(CHINA).date().isoformat()


def _non_retryable(err: ActivityError) -> bool:
    cause = innermost(err)
    return isinstance(cause, ApplicationError) and cause.non_retryable


__all__ = ["MerchantAccount"]
