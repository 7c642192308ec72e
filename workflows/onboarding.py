"""One merchant's POS-terminal application, from document collection to go-live, as one workflow."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities import catalog as act
    from activities.calendar import WORKING_DEADLINES, WorkingDeadlines, WorkingDeadlinesComputed
    from activities.notifications import fields_from
    from schemas import steps
    from schemas.application import Address, Contact, Fulfilment
    from schemas.documents import (
        DOCUMENT_NAMES,
        DocumentKind,
        DocumentSubmission,
        FieldIssue,
        ValidationReport,
        document_names,
    )
    from schemas.merchant import MerchantStart, MerchantTerminal, merchant_workflow_id
    from schemas.messages import (
        Ack,
        AdminAction,
        CancelRequest,
        ContractEvent,
        ContractEventKind,
        DeliveryOutcome,
        DeliveryOutcomeKind,
        Refusal,
        ReviewDecision,
        ReviewOutcome,
        ShipmentScan,
        SiteSurveyResult,
        SubmissionResult,
        TerminalActivated,
        TrainingCompleted,
        message_id,
    )
    from schemas.policy import RiskLevel
    from schemas.status import (
        ApplicationStatus,
        AttentionKind,
        Installation,
        OnboardingStart,
        Outcome,
        PickUp,
        ReviewRound,
        Shipment,
        Stage,
        Terminal,
    )
    from workflows.case import (
        BEST_EFFORT_PATCH,
        CHECKPOINT_PATCH,
        CHINA,
        HANDOVER_PATCH,
        NOTICES_PATCH,
        PULL_PATCH,
        RETURN_PATCH,
        SHIPMENT_DELIVERED,
        WORKING_DAYS_PATCH,
        Case,
        Ended,
        Undo,
        china_time,
        failure_reason,
        innermost,
        receive,
        refuse,
    )

T = TypeVar("T", bound=BaseModel)


def describe_issues(issues: list[FieldIssue]) -> str:
    """A submission's issues for the merchant: 法定代表人身份证（number：…）；…"""
    parts = []
    for issue in issues:
        kind, _, name = issue.field.removeprefix("documents.").partition(".")
        try:
            document = DOCUMENT_NAMES[DocumentKind(kind)]
        except ValueError:
            document = kind
        parts.append(f"{document}（{name or issue.code.value}：{issue.message}）")
    return "；".join(parts)


Message = TypeVar("Message", bound=BaseModel)
# How many times the projector lets the ready tasks run before it sends a snapshot alone: a
# message's handler wakes the main task, which may start a step that carries the snapshot.
PROJECTOR_YIELDS = 3


@workflow.defn(name="PosOnboarding")
class PosOnboarding:
    @workflow.init
    def __init__(self, start: OnboardingStart) -> None:
        self.case = Case(start)
        self.app = start.application
        self.policy = start.policy
        self._documents_lock = asyncio.Lock()
        self._submissions: dict[str, SubmissionResult] = {}
        self._submitting = 0  # submissions accepted and not yet answered
        self._documents_closed = False  # the deadline passed: no new submission is accepted
        self.closing_reason = ""
        # Notices sent alongside a message's answer (not holding it up): awaited before the end.
        self._side_notices: set[asyncio.Task[None]] = set()

    @property
    def stage(self) -> str:
        """The stage the application is in (logs and activities are bound with it)."""
        return self.case.stage.value

    @workflow.run
    async def run(self, start: OnboardingStart) -> Outcome:
        projector = asyncio.create_task(self.projector())
        try:
            return await self.onboard()
        except Exception:
            # The workflow fails (a bad deploy): operators still find it where it stood.
            self.case.write_attributes()
            raise
        finally:
            projector.cancel()

    async def onboard(self) -> Outcome:
        if workflow.patched(NOTICES_PATCH):
            # The application code, and where notices go from now on: sent aside, so a slow
            # notification service never delays the case.
            self.notify_aside(
                steps.Notice.RECEIVED, "application received", contact=self.app.contact
            )
        try:
            await self.collect_documents()
            while not await self.review():
                await self.collect_documents()
            await self.sign_contract_and_pay()
            await self.prepare_devices()
            await self.deliver()
            await self.activate()
            await self.train()
        except Ended as end:
            return await self.close(end)
        return await self.go_live()

    # --- 1. documents ---------------------------------------------------------------------------

    async def collect_documents(self) -> None:
        started = workflow.now()
        deadline = started + self.policy.document_deadline
        self._documents_closed = False  # a new round: an earlier round's deadline is not this one
        self.case.enter(Stage.COLLECTING_DOCUMENTS, deadline)
        if self.case.requested_documents:
            kinds = ", ".join(k.value for k in self.case.requested_documents)
            await self.notify(
                steps.Notice.MORE_INFORMATION_NEEDED,
                f"please supply again: {kinds}",
                documents=document_names(self.case.requested_documents),
                reasons="；".join(self.case.requested_reasons) or "审核意见",
            )
        complete = await self.wait_with_reminders(
            lambda: not self.case.outstanding(),
            started,
            deadline,
            self.policy.document_reminders,
            steps.Notice.DOCUMENTS_REMINDER,
            lambda: {"missing": document_names(self.case.outstanding())},
        )
        if not complete:
            # A submission accepted before the deadline is validated and counted before the
            # application expires; none is accepted from now on.
            self._documents_closed = True
            await workflow.wait_condition(lambda: self._submitting == 0)
            complete = not self.case.outstanding()
        if not complete:
            missing = ", ".join(k.value for k in self.case.outstanding())
            raise Ended(Stage.EXPIRED, f"documents incomplete at the deadline: {missing}")
        self.case.event("documents_complete", round=self.case.round)

    # --- 2. review ------------------------------------------------------------------------------

    async def review(self) -> bool:
        """One review round; True when approved, False when the merchant must supplement."""
        case = self.case
        case.enter(Stage.IN_REVIEW)
        case.decision = None
        with case.step_creating("review_case"):
            opened = await self.step(
                act.OPEN_REVIEW_CASE,
                steps.OpenReviewCase(
                    idempotency_key=case.key("open_review_case", case.round),
                    application_id=case.app_id,
                    round=case.round,
                    merchant_name=self.app.merchant.name,
                    merchant_type=self.app.merchant.merchant_type.value,
                    channel=self.app.channel.value,
                    business_category=self.app.merchant.business_category,
                    documents=list(case.documents.values()),
                ),
                steps.ReviewCaseOpened,
            )
            first = case.review.case_id is None
            # The case of the current round: a decision names it, a withdrawal closes it.
            case.review.case_id = opened.case_id
            case.review.risk_level = case.review.risk_level or opened.risk_level
            case.review.rounds.append(
                ReviewRound(round=case.round, case_id=opened.case_id, opened_at=workflow.now())
            )
        if first:
            self.on_undo(
                "close_review_case",
                act.CLOSE_REVIEW_CASE,
                lambda: steps.CloseReviewCase(
                    idempotency_key=case.key("close_review_case"),
                    application_id=case.app_id,
                    case_id=case.review.case_id or opened.case_id,
                    reason=self.closing_reason,
                ),
            )
        self.checkpoint()
        case.event("review_opened", opened.case_id, round=case.round, risk=opened.risk_level.value)
        if case.review.survey_passed is None and (
            self.policy.requires_site_survey(opened.risk_level) or self.app.request_site_survey
        ):
            await self.site_survey()

        sla_at, deadline = await self.review_deadlines()
        if case.stage is Stage.IN_REVIEW:
            case.set_deadline(deadline)
        else:
            case.enter(Stage.IN_REVIEW, deadline)
        case.deadlines.review_sla = sla_at

        def decided() -> bool:
            return case.decision is not None

        if not await self.wait(decided, sla_at) and not await self.pulled("review", decided):
            await self.escalate(1, sla_at)
            if not await self.wait(decided, deadline) and not await self.pulled("review", decided):
                await self.escalate(2, deadline)
                await self.wait_overdue(
                    AttentionKind.REVIEW_OVERDUE,
                    "review_decision",
                    f"no review decision by {deadline.isoformat()}",
                    decided,
                    "review",
                    self.policy.review_deadline,
                )
        decision = case.decision
        assert decision is not None
        if decision.outcome is ReviewOutcome.APPROVED:
            # With the notices patch, approval is told with the contract to sign (its link).
            if not workflow.patched(NOTICES_PATCH):
                await self.notify(steps.Notice.APPROVED)
            return True
        if decision.outcome is ReviewOutcome.REJECTED:
            raise Ended(Stage.REJECTED, "; ".join(decision.reasons))
        if case.round >= self.policy.max_review_rounds:
            raise Ended(
                Stage.REJECTED,
                f"still incomplete after {case.round} review rounds (the most allowed is "
                f"{self.policy.max_review_rounds}): {'; '.join(decision.reasons)}",
            )
        case.round += 1
        case.requested_documents = list(decision.required_documents)
        case.requested_reasons = list(decision.reasons)
        for kind in decision.required_documents:
            case.documents.pop(kind, None)
        return False

    async def review_deadlines(self) -> tuple[datetime, datetime]:
        """The round's SLA and hard deadline: in working days on the mainland calendar when the
        channel counts them so (computed once by an activity: the result is in the history, so a
        newer calendar never changes a replay), else the policy's durations."""
        policy = self.policy
        opened_at = workflow.now()
        sla_days = policy.review_sla_working_days
        deadline_days = policy.review_deadline_working_days
        if (
            sla_days is not None
            and deadline_days is not None
            and workflow.patched(WORKING_DAYS_PATCH)
        ):
            try:
                computed = await self.execute(
                    WORKING_DEADLINES,
                    WorkingDeadlines(
                        start=opened_at, sla_days=sla_days, deadline_days=deadline_days
                    ),
                    WorkingDeadlinesComputed,
                )
            except ActivityError as err:
                self.case.event("working_days_unavailable", failure_reason(err))
            else:
                self.case.event(
                    "review_deadlines",
                    f"{sla_days} and {deadline_days} working days ({computed.calendar})",
                    sla=computed.sla_at.isoformat(),
                    deadline=computed.deadline_at.isoformat(),
                )
                return computed.sla_at, computed.deadline_at
        return opened_at + policy.review_sla, opened_at + policy.review_deadline

    async def site_survey(self) -> None:
        case = self.case
        assert case.review.case_id is not None
        case.enter(Stage.SITE_SURVEY, workflow.now() + self.policy.site_survey_deadline)
        with case.step_creating("survey"):
            requested = await self.step(
                act.REQUEST_SITE_SURVEY,
                steps.RequestSiteSurvey(
                    idempotency_key=case.key("request_site_survey"),
                    application_id=case.app_id,
                    case_id=case.review.case_id,
                    address=self.app.merchant.address,
                ),
                steps.SiteSurveyRequested,
            )
            case.review.survey_id = requested.survey_id
        self.checkpoint()

        def surveyed() -> bool:
            return case.survey is not None

        deadline = case.deadlines.stage_deadline
        assert deadline is not None
        if not await self.wait(surveyed, deadline) and not await self.pulled("review", surveyed):
            await self.wait_overdue(
                AttentionKind.SITE_SURVEY_OVERDUE,
                "site_survey",
                f"no site survey result by {deadline.isoformat()}",
                surveyed,
                "review",
                self.policy.site_survey_deadline,
            )
        assert case.survey is not None
        case.review.survey_passed = case.survey.passed
        if not case.survey.passed:
            raise Ended(Stage.REJECTED, f"site survey failed: {case.survey.notes}")

    async def escalate(self, level: int, overdue_since: datetime) -> None:
        case = self.case
        assert case.review.case_id is not None
        case.current_round.escalations = level
        request = steps.EscalateReview(
            idempotency_key=case.key("escalate_review", case.round, level),
            application_id=case.app_id,
            case_id=case.review.case_id,
            round=case.round,
            level=level,
            overdue_since=overdue_since,
        )
        if not workflow.patched(BEST_EFFORT_PATCH):
            await self.try_step(act.ESCALATE_REVIEW, request, steps.Escalated)
        else:
            # Best effort: an escalation that cannot be sent must not hold up a decision.
            try:
                await self.execute(act.ESCALATE_REVIEW, request, steps.Escalated)
            except ActivityError as err:
                reason = failure_reason(err)
                case.event("escalation_failed", f"level {level}: {reason}", level=level)
                return
        case.event("review_escalated", f"level {level}", level=level, round=case.round)

    # --- 3. contract and deposit ----------------------------------------------------------------

    async def sign_contract_and_pay(self) -> None:
        case = self.case
        started = workflow.now()
        deadline = started + self.policy.contract_deadline
        case.enter(Stage.CONTRACT, deadline)
        case.contract.deposit_due = str(self.policy.deposit_amount)
        case.contract.card_rate_percent = str(self.policy.card_rate_percent)
        ready = self.step_notice(
            steps.Notice.CONTRACT_READY, "contract to sign", deadline=china_time(deadline)
        )
        with case.step_creating("contract"):
            issued = await self.step(
                act.ISSUE_CONTRACT,
                steps.IssueContract(
                    idempotency_key=case.key("issue_contract"),
                    application_id=case.app_id,
                    merchant_name=self.app.merchant.name,
                    channel=self.app.channel.value,
                    deposit_amount=self.policy.deposit_amount,
                    card_rate_percent=self.policy.card_rate_percent,
                    device_model=self.app.device_order.model,
                    quantity=self.app.device_order.quantity,
                    then_notify=ready,
                ),
                steps.ContractIssued,
            )
            case.contract.contract_id = issued.contract_id
            case.contract.signing_url = issued.signing_url
        self.on_undo(
            "void_contract",
            act.VOID_CONTRACT,
            lambda: steps.VoidContract(
                idempotency_key=case.key("void_contract"),
                application_id=case.app_id,
                contract_id=issued.contract_id,
                reason=self.closing_reason,
            ),
        )
        self.checkpoint()
        case.event("contract_issued", issued.contract_id)
        signing = {"signing_link": issued.signing_url}
        await self.told(ready, issued)

        def done() -> bool:
            return case.contract_done

        if not await self.wait_with_reminders(
            done,
            started,
            deadline,
            self.policy.contract_reminders,
            steps.Notice.CONTRACT_REMINDER,
            lambda: signing,
        ) and not await self.pulled("contract", done):
            what = "signed" if case.contract.signed_at is None else "paid the deposit"
            raise Ended(Stage.EXPIRED, f"the merchant had not {what} by the contract deadline")

    # --- 4. devices -----------------------------------------------------------------------------

    async def prepare_devices(self) -> None:
        case = self.case
        case.enter(Stage.PREPARING_DEVICES)
        order = self.app.device_order
        reserved = await self.step(
            act.RESERVE_TERMINALS,
            steps.ReserveTerminals(
                idempotency_key=case.key("reserve_terminals"),
                application_id=case.app_id,
                model=order.model,
                quantity=order.quantity,
            ),
            steps.TerminalsReserved,
        )
        case.reservation_id = reserved.reservation_id
        case.terminals = {s: Terminal(serial=s, model=order.model) for s in reserved.serials}
        self.on_undo(
            "release_terminals",
            act.RELEASE_TERMINALS,
            lambda: steps.ReleaseTerminals(
                idempotency_key=case.key("release_terminals"),
                application_id=case.app_id,
                reservation_id=reserved.reservation_id,
                reason=self.closing_reason,
            ),
        )
        self.checkpoint()
        case.event("terminals_reserved", reserved.reservation_id, serials=reserved.serials)
        registered = await self.step(
            act.REGISTER_TERMINALS,
            steps.RegisterTerminals(
                idempotency_key=case.key("register_terminals"),
                application_id=case.app_id,
                merchant_name=self.app.merchant.name,
                reservation_id=reserved.reservation_id,
                serials=reserved.serials,
                settlement_holder=self.app.settlement_account.holder_name,
                settlement_bank=self.app.settlement_account.bank_name,
                settlement_account_last4=self.app.settlement_account.account_number[-4:],
                install_address=self.app.delivery_address(),
            ),
            steps.TerminalsRegistered,
        )
        case.mid = registered.mid
        for ids in registered.terminals:
            case.terminals[ids.serial].tid = ids.tid
        self.checkpoint()
        case.event(
            "terminals_registered", registered.mid, tids=[t.tid for t in registered.terminals]
        )

    # --- 5. delivery ----------------------------------------------------------------------------

    async def deliver(self) -> None:
        case = self.case
        case.enter(Stage.DELIVERING)
        fulfilment = self.app.fulfilment
        allowed = {
            Fulfilment.MAIL: self.policy.mail_delivery_deadline,
            Fulfilment.ON_SITE: self.policy.installation_deadline,
            Fulfilment.PICK_UP: self.policy.pick_up_deadline,
        }[fulfilment]
        chased = {
            Fulfilment.MAIL: act.CREATE_SHIPMENT,
            Fulfilment.ON_SITE: act.BOOK_INSTALLATION,
            Fulfilment.PICK_UP: act.BOOK_PICK_UP,
        }[fulfilment]

        def arrived() -> bool:
            return case.delivery is not None

        attempt = 1
        while True:
            case.delivery = None
            await self.dispatch(attempt)
            due = case.set_deadline(workflow.now() + allowed)
            while not await self.wait(arrived, due) and not await self.pulled("logistics", arrived):
                verb = await self.park(
                    AttentionKind.DELIVERY_OVERDUE,
                    chased,
                    f"not delivered by {due.isoformat()}",
                    extendable=True,
                    resolved=arrived,
                )
                if verb == "retry":  # the carrier or technician was chased: another period
                    due = case.set_deadline(workflow.now() + allowed)
                elif verb == "extend":
                    due = self.extend(allowed)
            outcome = case.delivery
            assert outcome is not None
            if outcome.kind is not DeliveryOutcomeKind.FAILED:
                return
            # A failed delivery brings the terminals back to the warehouse: nothing to recall.
            case.undo = [
                u
                for u in case.undo
                if u.label not in ("recall_shipment", "cancel_installation", "cancel_pick_up")
            ]
            await self.park(
                AttentionKind.DELIVERY_FAILED,
                outcome.kind.value,
                outcome.detail or "delivery failed",
            )
            attempt += 1

    async def dispatch(self, attempt: int) -> None:
        case = self.case
        serials = list(case.terminals)
        address = self.app.delivery_address()
        # What the last attempt dispatched is replaced: a late outcome for it is stale.
        if (earlier := case.delivery_reference) is not None:
            case.past_deliveries.append(earlier)
            case.shipment = case.installation = case.pick_up = None
        with case.step_creating("dispatch"):
            await self.dispatch_once(attempt, serials, address)

    async def dispatch_once(self, attempt: int, serials: list[str], address: Address) -> None:
        case = self.case
        if self.app.fulfilment is Fulfilment.MAIL:
            on_its_way = self.step_notice(steps.Notice.SHIPPED, f"shipment {attempt}")
            shipped = await self.step(
                act.CREATE_SHIPMENT,
                steps.CreateShipment(
                    idempotency_key=case.key("create_shipment", attempt),
                    application_id=case.app_id,
                    address=address,
                    recipient=self.app.contact.name,
                    serials=serials,
                    then_notify=on_its_way,
                ),
                steps.ShipmentCreated,
            )
            case.shipment = Shipment(
                shipment_id=shipped.shipment_id,
                carrier=shipped.carrier,
                tracking_number=shipped.tracking_number,
            )
            self.on_undo_delivery("recall_shipment", attempt)
            self.checkpoint()
            case.event("shipped", f"{shipped.carrier} {shipped.tracking_number}", attempt=attempt)
            if on_its_way is None:  # before the notices patch: a notice of its own
                await self.notify(
                    steps.Notice.SHIPPED,
                    f"{shipped.carrier} {shipped.tracking_number}",
                    carrier=shipped.carrier,
                    tracking_number=shipped.tracking_number,
                )
            await self.told(on_its_way, shipped)
        elif self.app.fulfilment is Fulfilment.PICK_UP:
            collect = self.step_notice(steps.Notice.PICK_UP_READY, f"pick-up {attempt}")
            held = await self.step(
                act.BOOK_PICK_UP,
                steps.BookPickUp(
                    idempotency_key=case.key("book_pick_up", attempt),
                    application_id=case.app_id,
                    address=address,
                    contact=self.app.contact.name,
                    serials=serials,
                    then_notify=collect,
                ),
                steps.PickUpBooked,
            )
            case.pick_up = PickUp(
                pickup_id=held.pickup_id, branch=held.branch, ready_from=held.ready_from
            )
            self.on_undo_delivery("cancel_pick_up", attempt)
            self.checkpoint()
            case.event("pick_up_booked", f"{held.pickup_id} at {held.branch}", attempt=attempt)
            await self.told(collect, held)
        else:
            visit = self.step_notice(steps.Notice.INSTALLATION_BOOKED, f"installation {attempt}")
            booked = await self.step(
                act.BOOK_INSTALLATION,
                steps.BookInstallation(
                    idempotency_key=case.key("book_installation", attempt),
                    application_id=case.app_id,
                    address=address,
                    contact=self.app.contact.name,
                    serials=serials,
                    then_notify=visit,
                ),
                steps.InstallationBooked,
            )
            case.installation = Installation(
                appointment_id=booked.appointment_id, scheduled_for=booked.scheduled_for
            )
            self.on_undo_delivery("cancel_installation", attempt)
            self.checkpoint()
            case.event("installation_booked", booked.appointment_id, attempt=attempt)
            await self.told(visit, booked)

    def on_undo_delivery(self, label: str, attempt: int) -> None:
        """Undoing a delivery depends on how far it got: recall, cancel, or fetch the devices."""
        case = self.case

        async def undo() -> None:
            delivered = (
                case.delivery is not None and case.delivery.kind is not DeliveryOutcomeKind.FAILED
            )
            common = {"application_id": case.app_id, "reason": self.closing_reason}

            async def arrange_return() -> None:
                await self.undo_step(
                    "arrange_return",
                    act.ARRANGE_RETURN,
                    steps.ArrangeReturn(
                        idempotency_key=case.key("arrange_return"),
                        serials=list(case.terminals),
                        address=self.app.delivery_address(),
                        **common,
                    ),
                    steps.ReturnArranged,
                )

            if delivered:
                await arrange_return()
            elif case.shipment is not None:
                recall = steps.RecallShipment(
                    idempotency_key=case.key("recall_shipment", attempt),
                    shipment_id=case.shipment.shipment_id,
                    **common,
                )
                if workflow.patched(RETURN_PATCH):
                    # The parcel may have been delivered before we heard of it: the carrier
                    # refuses the recall, and the devices come back by a return instead.
                    try:
                        await self.undo_step(
                            "recall_shipment",
                            act.RECALL_SHIPMENT,
                            recall,
                            refused_when=SHIPMENT_DELIVERED,
                        )
                    except Refused:
                        case.event("recall_refused", "the parcel was delivered: arranging a return")
                        await arrange_return()
                else:
                    await self.undo_step("recall_shipment", act.RECALL_SHIPMENT, recall)
            elif case.pick_up is not None:
                await self.undo_step(
                    "cancel_pick_up",
                    act.CANCEL_PICK_UP,
                    steps.CancelPickUp(
                        idempotency_key=case.key("cancel_pick_up", attempt),
                        pickup_id=case.pick_up.pickup_id,
                        **common,
                    ),
                )
            elif case.installation is not None:
                await self.undo_step(
                    "cancel_installation",
                    act.CANCEL_INSTALLATION,
                    steps.CancelInstallation(
                        idempotency_key=case.key("cancel_installation", attempt),
                        appointment_id=case.installation.appointment_id,
                        **common,
                    ),
                )

        case.undo.append(Undo(label, undo))

    # --- 6. activation --------------------------------------------------------------------------

    async def activate(self) -> None:
        case = self.case
        started = workflow.now()
        deadline = started + self.policy.activation_deadline
        case.enter(Stage.ACTIVATING, deadline)
        assert case.mid is not None
        # The codes go to the merchant only: the notice is the one place they are written.
        codes_notice = self.step_notice(steps.Notice.ACTIVATION_CODES, "activation codes")
        with case.step_creating("activation_codes"):
            issued = await self.step(
                act.ISSUE_ACTIVATION_CODES,
                steps.IssueActivationCodes(
                    idempotency_key=case.key("issue_activation_codes"),
                    application_id=case.app_id,
                    mid=case.mid,
                    terminals=[
                        steps.TerminalIds(serial=t.serial, tid=t.tid or "")
                        for t in case.terminals.values()
                    ],
                    then_notify=codes_notice,
                ),
                steps.ActivationCodesIssued,
            )
            for code in issued.codes:
                case.terminals[code.serial].activation_code_issued = True
        self.checkpoint()
        case.event("activation_codes_issued", count=len(issued.codes))
        await self.told(codes_notice, issued)

        def activated() -> bool:
            return case.all_activated

        if not await self.wait_with_reminders(
            activated,
            started,
            deadline,
            self.policy.activation_reminders,
            steps.Notice.ACTIVATION_REMINDER,
            dict,
        ) and not await self.pulled("device", activated):
            await self.wait_overdue(
                AttentionKind.ACTIVATION_OVERDUE,
                "terminal_activation",
                f"terminals not all activated by {deadline.isoformat()}",
                activated,
                "device",
                self.policy.activation_deadline,
            )
        for terminal in case.terminals.values():
            await self.prove_terminal(terminal)

    async def prove_terminal(self, terminal: Terminal) -> None:
        """A test transaction per terminal proves it is bound and can take payments."""
        case = self.case
        assert case.mid is not None and terminal.tid is not None
        attempt = 1
        while True:
            result = await self.step(
                act.RUN_TEST_TRANSACTION,
                steps.RunTestTransaction(
                    idempotency_key=case.key("run_test_transaction", terminal.serial, attempt),
                    application_id=case.app_id,
                    mid=case.mid,
                    serial=terminal.serial,
                    tid=terminal.tid,
                ),
                steps.TestTransactionResult,
            )
            if result.approved:
                terminal.test_transaction = result.reference
                case.event("test_transaction_approved", terminal.serial, reference=result.reference)
                return
            await self.park(
                AttentionKind.TEST_TRANSACTION_DECLINED,
                act.RUN_TEST_TRANSACTION,
                f"terminal {terminal.serial}: declined with response code {result.response_code}",
            )
            attempt += 1

    # --- 7. training ----------------------------------------------------------------------------

    async def train(self) -> None:
        case = self.case
        if not self.policy.training_required and self.app.decline_training:
            # Optional on this channel (Alipay: the set-up guide), and the merchant declined it.
            case.event("training_declined", "optional on this channel: declined by the merchant")
            return
        started = workflow.now()
        deadline = started + self.policy.training_deadline
        case.enter(Stage.TRAINING, deadline)
        booked = self.step_notice(steps.Notice.TRAINING_BOOKED, "training")
        with case.step_creating("training"):
            scheduled = await self.step(
                act.SCHEDULE_TRAINING,
                steps.ScheduleTraining(
                    idempotency_key=case.key("schedule_training"),
                    application_id=case.app_id,
                    merchant_name=self.app.merchant.name,
                    address=self.app.delivery_address(),
                    on_site=self.app.fulfilment is Fulfilment.ON_SITE,
                    sessions=self.policy.training_sessions,
                    then_notify=booked,
                ),
                steps.TrainingScheduled,
            )
            case.training_session_id = scheduled.session_id
        self.on_undo(
            "cancel_training",
            act.CANCEL_TRAINING,
            lambda: steps.CancelTraining(
                idempotency_key=case.key("cancel_training"),
                application_id=case.app_id,
                session_id=scheduled.session_id,
                reason=self.closing_reason,
            ),
        )
        self.checkpoint()
        case.event(
            "training_scheduled",
            scheduled.session_id,
            at=scheduled.scheduled_for.isoformat(),
            sessions=scheduled.sessions,
        )
        await self.told(booked, scheduled)

        def trained() -> bool:
            return case.training is not None

        if not await self.wait_with_reminders(
            trained,
            started,
            deadline,
            self.policy.training_reminders,
            steps.Notice.TRAINING_REMINDER,
            dict,
        ) and not await self.pulled("logistics", trained):
            await self.wait_overdue(
                AttentionKind.TRAINING_OVERDUE,
                "training",
                f"training not completed by {deadline.isoformat()}",
                trained,
                "logistics",
                self.policy.training_deadline,
            )

    # --- 8. go-live, or the end before it -------------------------------------------------------

    async def go_live(self) -> Outcome:
        case = self.case
        case.enter(Stage.GOING_LIVE)
        assert case.mid is not None
        tids = [t.tid for t in case.terminals.values() if t.tid]
        live = self.step_notice(steps.Notice.WENT_LIVE, f"MID {case.mid}", mid=case.mid)
        enabled = await self.step(
            act.ENABLE_ACQUIRING,
            steps.EnableAcquiring(
                idempotency_key=case.key("enable_acquiring"),
                application_id=case.app_id,
                mid=case.mid,
                tids=tids,
                then_notify=live,
            ),
            steps.AcquiringEnabled,
        )
        case.enter(Stage.LIVE)
        case.event("went_live", case.mid)
        if live is None:  # before the notices patch: a notice of its own
            await self.notify(steps.Notice.WENT_LIVE, f"MID {case.mid}", mid=case.mid)
        await self.told(live, enabled)
        handed_over = None
        if workflow.patched(HANDOVER_PATCH):
            handed_over = await self.hand_over(enabled.enabled_at)
        await self.settle()
        outcome = self.outcome(Stage.LIVE, "", went_live_at=enabled.enabled_at)
        outcome.merchant_workflow_id = handed_over
        return outcome

    async def hand_over(self, went_live_at: datetime) -> str:
        """Start the merchant's account workflow, once: it lives on after this one ends (the
        parent's close abandons it), and this history stays short."""
        case = self.case
        assert case.mid is not None
        account_id = merchant_workflow_id(case.mid)
        start = MerchantStart(
            application=self.app,
            policy=self.policy,
            mid=case.mid,
            went_live_at=went_live_at,
            contract_id=case.contract.contract_id or "",
            deposit_amount=self.policy.deposit_amount
            if case.contract.deposit_paid_at is not None
            else Decimal("0.00"),
            deposit_reference=case.contract.payment_reference,
            risk_level=case.review.risk_level or RiskLevel.LOW,
            terminals=[
                MerchantTerminal(
                    serial=t.serial,
                    model=t.model,
                    tid=t.tid,
                    since=went_live_at,
                    activated_at=t.activated_at,
                    test_transaction=t.test_transaction,
                    activation_code_issued=t.activation_code_issued,
                )
                for t in case.terminals.values()
            ],
        )
        try:
            await workflow.start_child_workflow(
                "MerchantAccount",
                start,
                id=account_id,
                parent_close_policy=ParentClosePolicy.ABANDON,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                static_summary=f"merchant {case.mid}",
            )
            case.event("handed_over", account_id)
        except WorkflowAlreadyStartedError:
            # A reset re-ran go-live: the account already exists and keeps the merchant.
            case.event("handed_over", f"{account_id} (already running)")
        return account_id

    async def close(self, end: Ended) -> Outcome:
        """Undo what was done, newest first, then end with the reason."""
        case = self.case
        case.closing = True
        self.closing_reason = f"{end.stage.value}: {end.reason}"
        case.ending_reason = end.reason
        case.attention = None
        case.enter(Stage.CLOSING)
        case.event("closing", end.reason, outcome=end.stage.value)
        await self.compensate()
        case.enter(end.stage)
        notice = {
            Stage.CANCELLED: steps.Notice.WITHDRAWN,
            Stage.EXPIRED: steps.Notice.EXPIRED,
            Stage.REJECTED: steps.Notice.REJECTED,
        }[end.stage]
        fields = {"reason": end.reason}
        if notice is steps.Notice.EXPIRED:
            fields["expired_on"] = china_time(workflow.now())
        await self.notify(notice, end.reason, template=fields)
        await self.settle()
        await self.compensate()  # a deposit paid while closing is refunded too
        return self.outcome(end.stage, end.reason)

    async def compensate(self) -> None:
        """Run the compensations, newest first, including any a late message adds meanwhile."""
        case = self.case
        while case.undo:
            await case.undo.pop().run()

    async def settle(self) -> None:
        """Before the workflow ends: every message handled and every snapshot delivered."""
        await workflow.wait_condition(
            lambda: (
                workflow.all_handlers_finished()
                and self.case.projected()
                and not self._side_notices
            )
        )

    def outcome(self, stage: Stage, reason: str, went_live_at: datetime | None = None) -> Outcome:
        case = self.case
        return Outcome(
            application_id=case.app_id,
            stage=stage,
            reason=reason,
            mid=case.mid,
            tids=[t.tid for t in case.terminals.values() if t.tid] if stage is Stage.LIVE else [],
            went_live_at=went_live_at,
            started_at=case.started_at,
            ended_at=workflow.now(),
            stage_entered=case.stage_entered,
            compensations=case.compensated,
        )

    # --- waiting: deadlines, reminders, attention -----------------------------------------------

    async def wait(self, done: Callable[[], bool], until: datetime | None) -> bool:
        """Wait until `done`, or `until` passes (False). A withdrawal interrupts any wait."""
        case = self.case
        if until is None:
            await workflow.wait_condition(lambda: done() or case.withdrawn)
        elif (remaining := until - workflow.now()) > timedelta(0) and not done():
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: done() or case.withdrawn,
                    timeout=remaining,
                    timeout_summary=f"{case.stage.value} deadline",
                )
        case.stop_if_withdrawn()
        return done()

    async def wait_with_reminders(
        self,
        done: Callable[[], bool],
        started: datetime,
        deadline: datetime,
        reminders: list[timedelta],
        notice: steps.Notice,
        fields: Callable[[], dict[str, str]],
    ) -> bool:
        """Wait for `done` until `deadline`, with a reminder (`notice`, its template's `fields`
        as they stand then, and the deadline) at each of `reminders` after `started`."""
        for offset in sorted(reminders):
            remind_at = started + offset
            if remind_at <= workflow.now():
                continue
            self.case.deadlines.next_reminder = remind_at
            if await self.wait(done, remind_at):
                self.case.deadlines.next_reminder = None
                return True
            await self.notify(
                notice,
                f"due by {deadline.astimezone(CHINA).isoformat()}",
                template={**fields(), "deadline": china_time(deadline)},
            )
            self.case.event("reminder_sent", notice.value)
        self.case.deadlines.next_reminder = None
        return await self.wait(done, deadline)

    async def wait_overdue(
        self,
        kind: AttentionKind,
        step: str,
        reason: str,
        done: Callable[[], bool],
        service: str,
        period: timedelta,
    ) -> None:
        """Past a deadline on somebody else's action: flag it for operations and keep waiting.
        An admin's `retry` asks the service again, in case its answer was lost on the way;
        `extend` gives them another period (the stage's own, or the one the admin names)."""
        while True:
            verb = await self.park(kind, step, reason, extendable=True, resolved=done)
            if verb == "resolved":
                return
            if verb == "extend":
                due = self.extend(period)
                if await self.wait(done, due):
                    return
                reason = f"still waiting after the extension to {due.isoformat()}"
            if await self.pulled(service, done):
                return

    def extend(self, period: timedelta) -> datetime:
        """A new deadline for the stage, `period` from now unless the admin named another."""
        case = self.case
        due = case.set_deadline(workflow.now() + (case.extension or period))
        case.extension = None
        case.event("deadline_extended", due.isoformat(), deadline=due.isoformat())
        return due

    # --- push, then pull ------------------------------------------------------------------------

    async def pulled(self, service: str, done: Callable[[], bool]) -> bool:
        """A deadline passed with no word: ask the service what it recorded, apply what was
        missed, and say whether the awaited event is there after all."""
        if not workflow.patched(PULL_PATCH):
            return False
        case = self.case
        try:
            found = await self.execute(
                act.READ_SERVICE_EVENTS,
                steps.ReadServiceEvents(application_id=case.app_id, service=service),
                steps.ServiceEvents,
            )
        except ActivityError as err:
            case.event("service_unreachable", f"{service}: {failure_reason(err)}", service=service)
            return done()
        for event in found.events:
            self.recover(service, event)
        case.stop_if_withdrawn()
        return done()

    def recover(self, service: str, event: steps.ServiceEvent) -> None:
        """Apply one message read back from a service, as if its callback had arrived."""
        receivers: dict[str, tuple[type[BaseModel], Callable[[Any], bool], Callable[[Any], Ack]]]
        receivers = {
            "review-decision": (ReviewDecision, self.case.check_decision, self._decision),
            "site-survey": (SiteSurveyResult, self.case.check_survey, self._survey),
            "contract": (ContractEvent, self.case.check_contract_event, self._contract_event),
            "delivery": (DeliveryOutcome, self.case.check_delivery, self._delivery),
            "activation": (TerminalActivated, self.case.check_activation, self._activation),
            "training": (TrainingCompleted, self.case.check_training, self._training),
        }
        if event.kind not in receivers:
            return  # informative only (tracking scans)
        model, check, apply = receivers[event.kind]
        try:
            message = model.model_validate(event.body)
        except ValidationError:
            self.case.event("recovered_message_invalid", event.kind, service=service)
            return
        if message_id(message) in self.case.acks:
            return
        try:
            if check(message):
                return
        except ApplicationError:
            return  # not for now (an earlier round, another stage): nothing was lost
        ack = apply(message)
        self.case.event("message_recovered", event.kind, message_id=ack.message_id, service=service)

    async def park(
        self,
        kind: AttentionKind,
        step: str,
        reason: str,
        *,
        skippable: bool = False,
        extendable: bool = False,
        resolved: Callable[[], bool] | None = None,
    ) -> str:
        """Park for an admin: returns "retry", "skip", "extend", or "resolved" when the awaited
        event came."""
        case = self.case
        case.park(kind, step, reason, retryable=True, skippable=skippable, extendable=extendable)
        is_resolved = resolved or (lambda: False)
        await self.wait(lambda: case.admin_verb is not None or is_resolved(), None)
        verb = case.admin_verb or "resolved"
        case.unpark(verb)
        return verb

    # --- steps and compensations ----------------------------------------------------------------

    def checkpoint(self) -> None:
        """After a step's result and its compensation are recorded: a withdrawal accepted while
        it ran stops the process here, before anything else is recorded or sent."""
        if self.case.withdrawn and workflow.patched(CHECKPOINT_PATCH):
            self.case.stop_if_withdrawn()

    async def step(self, name: str, arg: BaseModel, result_type: type[T]) -> T:
        """Run an activity; when its retries are exhausted, park for an admin instead of failing."""
        while True:
            self.case.stop_if_withdrawn()
            try:
                return await self.execute(name, arg, result_type)
            except ActivityError as err:
                await self.park(AttentionKind.STEP_FAILED, name, failure_reason(err))

    async def try_step(
        self,
        name: str,
        arg: BaseModel,
        result_type: type[BaseModel],
        refused_when: str | None = None,
    ) -> bool:
        """Like `step`, for a step an admin may skip once handled by hand; False when skipped.
        A refusal of type `refused_when` raises `Refused`: the caller has another way."""
        while True:
            self.case.stop_if_withdrawn()
            try:
                await self.execute(name, arg, result_type)
                return True
            except ActivityError as err:
                if refused_when is not None and _error_type(err) == refused_when:
                    raise Refused(failure_reason(err)) from err
                reason = failure_reason(err)
                if (
                    await self.park(AttentionKind.STEP_FAILED, name, reason, skippable=True)
                    == "skip"
                ):
                    return False

    async def execute(self, name: str, arg: BaseModel, result_type: type[T]) -> T:
        """Run an activity with the policy's timeout and retries (the one place they are set),
        carrying the gateway's unsent snapshot when it can (`Case.carry`)."""
        arg, snapshot = self.case.carry(arg, result_type)
        result: T | None = None
        self.case.stepping += 1
        try:
            result = await workflow.execute_activity(
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
        finally:
            self.case.stepping -= 1
            self.case.carried(snapshot, result)
        return result

    async def projector(self) -> None:
        """Before the workflow waits for the world: write the search attributes that changed
        and send alone the snapshot no step carried. It wakes when a snapshot is unsent, or
        attributes are pending with no step running, then lets every task that is ready run
        first (one of them may be about to start a step that carries the snapshot)."""
        case = self.case
        while True:
            await workflow.wait_condition(
                lambda: (
                    case.unsent is not None or bool(case.pending_attributes and not case.stepping)
                )
            )
            for _ in range(PROJECTOR_YIELDS):
                await asyncio.sleep(0)
            if case.unsent is not None or not case.stepping:
                case.write_attributes()
            case.send_unsent()

    def on_undo(
        self,
        label: str,
        name: str,
        arg: Callable[[], BaseModel],
        result_type: type[BaseModel] = steps.Undone,
    ) -> None:
        """Remember how to undo a step; its argument is built when it runs, with the reason."""

        async def undo() -> None:
            await self.undo_step(label, name, arg(), result_type)

        self.case.undo.append(Undo(label, undo))

    async def undo_step(
        self,
        label: str,
        name: str,
        arg: BaseModel,
        result_type: type[BaseModel] = steps.Undone,
        refused_when: str | None = None,
    ) -> None:
        if await self.try_step(name, arg, result_type, refused_when):
            self.case.compensated.append(label)
            self.case.event("compensated", label)
        else:
            self.case.compensated.append(f"{label} (skipped by admin)")
            self.case.event("compensation_skipped", label)

    async def notify(
        self,
        notice: steps.Notice,
        detail: str = "",
        *,
        contact: Contact | None = None,
        template: dict[str, str] | None = None,
        **fields: str,
    ) -> None:
        """Tell the merchant, best effort: a notice that cannot go out must not hold up the case.
        `fields` (and `template`, the same as a dict) fill in the notice's template
        (services/notification.py); `detail` is what the timeline and the logs say."""
        request = self.notice_request(notice, detail, {**(template or {}), **fields})
        await self.send_notice(request.model_copy(update={"contact": contact}))

    def notice_request(
        self, notice: steps.Notice, detail: str, fields: dict[str, str]
    ) -> steps.NotifyMerchant:
        case = self.case
        case.notices_sent += 1
        return steps.NotifyMerchant(
            idempotency_key=case.key("notify", case.notices_sent),
            application_id=case.app_id,
            notice=notice,
            detail=detail,
            fields=fields,
        )

    async def send_notice(self, request: steps.NotifyMerchant) -> None:
        try:
            await self.execute(act.NOTIFY_MERCHANT, request, steps.Notified)
            self.case.event("merchant_notified", request.notice.value)
        except ActivityError as err:
            self.case.event("notification_failed", f"{request.notice.value}: {failure_reason(err)}")

    def step_notice(
        self, notice: steps.Notice, detail: str, **fields: str
    ) -> steps.NotifyMerchant | None:
        """The notice a step sends itself once the service has done it (`Step.then_notify`),
        its other fields filled in from the service's answer; None before the notices patch."""
        if not workflow.patched(NOTICES_PATCH):
            return None
        return self.notice_request(notice, detail, fields)

    async def told(self, request: steps.NotifyMerchant | None, result: BaseModel) -> None:
        """After a step that carried its notice: recorded when it went out, else sent now as an
        activity of its own under the same key (the service sends it once either way)."""
        if request is None:
            return
        if getattr(result, "notified", False):
            self.case.event("merchant_notified", request.notice.value)
            return
        fields = {**request.fields, **fields_from(request.notice, result)}
        await self.send_notice(request.model_copy(update={"fields": fields}))

    # --- messages from people and services ------------------------------------------------------

    @workflow.query
    def status(self) -> ApplicationStatus:
        return self.case.status()

    @workflow.update
    async def submit_documents(self, submission: DocumentSubmission) -> SubmissionResult:
        self._submitting += 1
        try:
            async with self._documents_lock:
                return await self._file(submission)
        finally:
            self._submitting -= 1

    async def _file(self, submission: DocumentSubmission) -> SubmissionResult:
        earlier = self._submissions.get(submission.submission_id)
        if earlier is not None:
            return earlier.model_copy(update={"duplicate": True})
        case = self.case
        # Queued behind another submission, this one may find the stage moved on: nothing filed.
        case.expect_stage("documents", Stage.COLLECTING_DOCUMENTS)
        candidate = {**case.documents, **{d.kind: d for d in submission.documents}}
        try:
            report = await self.execute(
                act.VALIDATE_DOCUMENTS,
                steps.ValidateDocuments(
                    application=self.app,
                    documents=list(candidate.values()),
                    extra_required=[k.value for k in case.requested_documents],
                    as_of=workflow.now().astimezone(CHINA).date(),
                ),
                ValidationReport,
            )
        except ActivityError as err:
            # Nothing is filed: the merchant can send the same submission again.
            raise refuse(
                Refusal.UNAVAILABLE, f"documents could not be validated now: {failure_reason(err)}"
            ) from err
        # File what passed; a bad replacement never pushes out a good document already on file.
        for kind in report.accepted:
            case.documents[kind] = candidate[kind]
        submitted = {d.kind for d in submission.documents}
        case.document_issues = report.issues
        result = SubmissionResult(
            submission_id=submission.submission_id,
            stage=case.stage.value,
            filed=[k for k in report.accepted if k in submitted],
            issues=report.issues,
            outstanding=case.outstanding(),
            complete=not case.outstanding(),
        )
        self._submissions[submission.submission_id] = result
        case.event(
            "documents_submitted",
            submission.submission_id,
            filed=[k.value for k in result.filed],
            issues=len(result.issues),
        )
        if result.issues and workflow.patched(NOTICES_PATCH):
            # Told by notice too (the merchant may have used a front end that shows nothing),
            # without holding up the answer the sender is waiting for.
            self.notify_aside(
                steps.Notice.DOCUMENTS_INCOMPLETE,
                submission.submission_id,
                issues=describe_issues(result.issues),
            )
        return result

    def notify_aside(
        self, notice: steps.Notice, detail: str, *, contact: Contact | None = None, **fields: str
    ) -> None:
        """Send a notice without waiting for it (the workflow waits for it before it ends)."""
        task = asyncio.create_task(self.notify(notice, detail, contact=contact, template=fields))
        self._side_notices.add(task)
        task.add_done_callback(self._side_notices.discard)

    @submit_documents.validator
    def _check_submission(self, submission: DocumentSubmission) -> None:
        if submission.submission_id in self._submissions:
            return
        self.case.expect_stage("documents", Stage.COLLECTING_DOCUMENTS)
        if self._documents_closed:
            raise refuse(
                Refusal.OUT_OF_STAGE,
                f"the document deadline of application {self.case.app_id} has passed",
            )

    async def receive(
        self, message: Message, check: Callable[[Message], bool], apply: Callable[[Message], Ack]
    ) -> Ack:
        return await receive(message, check, apply, self.case.duplicate)

    @workflow.update
    async def review_decision(self, decision: ReviewDecision) -> Ack:
        return await self.receive(decision, self.case.check_decision, self._decision)

    @review_decision.validator
    def _check_decision(self, decision: ReviewDecision) -> None:
        if decision.decision_id not in self.case.acks:
            self.case.check_decision(decision)

    def _decision(self, decision: ReviewDecision) -> Ack:
        self.case.decision_recorded(decision)
        return self.case.acknowledge(decision.decision_id, decision.outcome.value)

    @workflow.update
    async def site_survey_result(self, result: SiteSurveyResult) -> Ack:
        return await self.receive(result, self.case.check_survey, self._survey)

    @site_survey_result.validator
    def _check_survey(self, result: SiteSurveyResult) -> None:
        if result.event_id not in self.case.acks:
            self.case.check_survey(result)

    def _survey(self, result: SiteSurveyResult) -> Ack:
        case = self.case
        case.survey = result
        verdict = "passed" if result.passed else "failed"
        case.event("site_survey_result", verdict, surveyor=result.surveyor)
        return case.acknowledge(result.event_id, verdict)

    @workflow.update
    async def contract_event(self, event: ContractEvent) -> Ack:
        return await self.receive(event, self.case.check_contract_event, self._contract_event)

    @contract_event.validator
    def _check_contract_event(self, event: ContractEvent) -> None:
        if event.event_id not in self.case.acks:
            self.case.check_contract_event(event)

    def _contract_event(self, event: ContractEvent) -> Ack:
        case = self.case
        detail = event.kind.value
        if event.kind is ContractEventKind.SIGNED:
            case.contract.signed_at = workflow.now()
        else:
            case.contract.deposit_paid_at = workflow.now()
            case.contract.payment_reference = event.payment_reference
            contract_id = event.contract_id
            self.on_undo(
                "refund_deposit",
                act.REFUND_DEPOSIT,
                lambda: steps.RefundDeposit(
                    idempotency_key=case.key("refund_deposit"),
                    application_id=case.app_id,
                    contract_id=contract_id,
                    amount=self.policy.deposit_amount,
                    payment_reference=event.payment_reference,
                ),
                steps.Refunded,
            )
            if case.closing:
                detail = "deposit_paid: the application is closing, so it is refunded"
        case.event(f"contract_{event.kind.value}", event.contract_id)
        return case.acknowledge(event.event_id, detail)

    @workflow.update
    async def delivery_outcome(self, outcome: DeliveryOutcome) -> Ack:
        return await self.receive(outcome, self.case.check_delivery, self._delivery)

    @delivery_outcome.validator
    def _check_delivery(self, outcome: DeliveryOutcome) -> None:
        if outcome.event_id not in self.case.acks:
            self.case.check_delivery(outcome)

    def _delivery(self, outcome: DeliveryOutcome) -> Ack:
        case = self.case
        case.delivery = outcome
        if outcome.kind is DeliveryOutcomeKind.DELIVERED and case.shipment is not None:
            case.shipment.delivered_at = workflow.now()
        if outcome.kind is DeliveryOutcomeKind.INSTALLED and case.installation is not None:
            case.installation.installed_at = workflow.now()
        if outcome.kind is DeliveryOutcomeKind.DELIVERED and case.pick_up is not None:
            case.pick_up.collected_at = workflow.now()
        case.event(f"delivery_{outcome.kind.value}", outcome.reference, detail=outcome.detail)
        return case.acknowledge(outcome.event_id, outcome.kind.value)

    @workflow.signal
    async def shipment_scanned(self, scan: ShipmentScan) -> None:
        """Tracking scans are informative: kept on the shipment, never moving the case."""
        case = self.case
        try:
            await self.receive(scan, case.check_scan, self._scan)
        except ApplicationError as refusal:
            case.event("message_refused", refusal.message, event_id=scan.event_id)

    def _scan(self, scan: ShipmentScan) -> Ack:
        case = self.case
        assert case.shipment is not None
        case.shipment.scans.append(
            f"{scan.scanned_at.isoformat()} {scan.location} {scan.description}".strip()
        )
        return case.acknowledge(scan.event_id, "scan recorded")

    @workflow.update
    async def terminal_activated(self, report: TerminalActivated) -> Ack:
        return await self.receive(report, self.case.check_activation, self._activation)

    @terminal_activated.validator
    def _check_activation(self, report: TerminalActivated) -> None:
        if report.event_id not in self.case.acks:
            self.case.check_activation(report)

    def _activation(self, report: TerminalActivated) -> Ack:
        case = self.case
        case.terminals[report.serial].activated_at = workflow.now()
        case.event("terminal_activated", report.serial, tid=report.tid)
        return case.acknowledge(report.event_id, f"terminal {report.serial} activated")

    @workflow.update
    async def training_completed(self, done: TrainingCompleted) -> Ack:
        return await self.receive(done, self.case.check_training, self._training)

    @training_completed.validator
    def _check_training(self, done: TrainingCompleted) -> None:
        if done.event_id not in self.case.acks:
            self.case.check_training(done)

    def _training(self, done: TrainingCompleted) -> Ack:
        case = self.case
        case.training = done
        case.event("training_completed", done.session_id, trainer=done.trainer)
        return case.acknowledge(done.event_id, "training completed")

    @workflow.update
    def cancel(self, request: CancelRequest) -> Ack:
        case = self.case
        if (ack := case.duplicate(request.request_id)) is not None:
            return ack
        case.cancel = request
        case.event("withdrawal_requested", request.reason, requested_by=request.requested_by)
        return case.acknowledge(request.request_id, "withdrawal accepted: undoing what was done")

    @cancel.validator
    def _check_cancel(self, request: CancelRequest) -> None:
        if request.request_id not in self.case.acks:
            self.case.check_cancel(request)

    @workflow.update
    def retry(self, action: AdminAction) -> Ack:
        return self._admin("retry", action)

    @retry.validator
    def _check_retry(self, action: AdminAction) -> None:
        if action.request_id not in self.case.acks:
            self.case.check_admin("retry", action)

    @workflow.update
    def skip(self, action: AdminAction) -> Ack:
        return self._admin("skip", action)

    @skip.validator
    def _check_skip(self, action: AdminAction) -> None:
        if action.request_id not in self.case.acks:
            self.case.check_admin("skip", action)

    @workflow.update
    def extend_deadline(self, action: AdminAction) -> Ack:
        return self._admin("extend", action)

    @extend_deadline.validator
    def _check_extend(self, action: AdminAction) -> None:
        if action.request_id not in self.case.acks:
            self.case.check_admin("extend", action)

    def _admin(self, verb: str, action: AdminAction) -> Ack:
        case = self.case
        if (ack := case.duplicate(action.request_id)) is not None:
            return ack
        assert case.attention is not None
        step = case.attention.step
        case.admin_verb = verb
        if verb == "extend":
            case.extension = action.period
        case.event(f"admin_{verb}", step, admin=action.admin, note=action.note)
        return case.acknowledge(action.request_id, f"{verb} {step}")


class Refused(Exception):
    """A step refused for a reason its caller handles another way."""


def _error_type(err: ActivityError) -> str | None:
    cause = innermost(err)
    return cause.type if isinstance(cause, ApplicationError) else None


__all__ = ["PosOnboarding"]
