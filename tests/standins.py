"""Stand-in activities for workflow tests, registered under the real activity names.

They answer as the services would (case ids, serials, MIDs, TIDs, tracking numbers), record every
call in order, and can be told to fail or decline, so a test asserts on which steps ran.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import catalog
from activities.calendar import working_deadlines
from activities.documents import validate_documents, validate_settlement
from activities.notifications import fields_from, notice_body
from schemas import steps
from schemas.documents import ValidationReport
from schemas.merchant import MerchantStatus
from schemas.policy import RiskLevel
from schemas.status import Projection, ProjectionReceipt
from services.base import ServiceError
from services.notification import NoticeRequest, render

Req = TypeVar("Req", bound=steps.Step)
PAGE_BASE = "http://gateway.test"


# The references the stand-ins create are known in advance, as a service's own would be to it:
# a test can send a callback that names one while the step creating it is still running.
def case_id(application_id: str, round: int) -> str:
    return f"RC-{application_id}-{round}"


def survey_id(application_id: str) -> str:
    return f"SV-{application_id}"


def contract_id(application_id: str) -> str:
    return f"CT-{application_id}"


def shipment_id(application_id: str, attempt: int) -> str:
    return f"SH-{application_id}-{attempt}"


def appointment_id(application_id: str, attempt: int) -> str:
    return f"AP-{application_id}-{attempt}"


def pickup_id(application_id: str, attempt: int) -> str:
    return f"PU-{application_id}-{attempt}"


def training_id(application_id: str) -> str:
    return f"TR-{application_id}"


def bill_id(mid: str, period: int) -> str:
    return f"BILL-{mid}-{period}"


def inspection_id(mid: str, number: int) -> str:
    return f"INS-{mid}-{number}"


def rebinding_case_id(mid: str, request_id: str) -> str:
    return f"RB-{mid}-{request_id}"


def merchant_shipment_id(mid: str, request_id: str, attempt: int) -> str:
    return f"MSH-{mid}-{request_id}-{attempt}"


def merchant_appointment_id(mid: str, request_id: str, attempt: int) -> str:
    return f"MAP-{mid}-{request_id}-{attempt}"


def attempt_of(request: steps.Step) -> int:
    """The delivery attempt an idempotency key names (`<workflow>:<step>:<attempt>`)."""
    return int(request.idempotency_key.rsplit(":", 1)[-1])


@dataclass
class Call:
    name: str
    request: BaseModel

    @property
    def application_id(self) -> str:
        return str(getattr(self.request, "application_id", ""))


@dataclass
class StandIns:
    risk: RiskLevel = RiskLevel.LOW
    calls: list[Call] = field(default_factory=list)
    # Each notice as the merchant reads it, rendered by the notification service's own code.
    texts: list[str] = field(default_factory=list)
    # Notices the notification service would have refused (422): none, in any test.
    refused_notices: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # name -> failures left, -1: always
    refusals: dict[str, str] = field(default_factory=dict)  # name -> the service's refusal code
    declines: int = 0  # how many test transactions to decline before approving
    projections: list[Projection] = field(default_factory=list)  # kept apart from `calls`
    projection_failures: int = 0  # how many snapshot deliveries fail (the gateway is down)
    merchant_projections: list[MerchantStatus] = field(default_factory=list)
    # The TIDs handed out by swaps and added terminals (a swap that reissues retires the old one).
    tids: dict[str, str] = field(default_factory=dict)  # serial -> TID, as bound
    _tids: itertools.count[int] = field(default_factory=lambda: itertools.count(500))
    # What each service recorded per (application, service): read back when a deadline passes.
    recorded: dict[tuple[str, str], list[steps.ServiceEvent]] = field(default_factory=dict)
    # A step named here waits for its gate before answering (the test opens it).
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    started: dict[str, asyncio.Event] = field(default_factory=dict)  # set when a gated step runs
    # Called with (step, request, result) just before a step answers: a test plays the service
    # sending its callback before, while or after the workflow hears the answer.
    answering: Callable[[str, Any, BaseModel], Awaitable[None]] | None = None
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def hold(self, name: str) -> asyncio.Event:
        """Make step `name` wait for the returned gate (set it to let the step answer)."""
        self.gates[name] = asyncio.Event()
        self.started[name] = asyncio.Event()
        return self.gates[name]

    def record(self, application_id: str, service: str, kind: str, body: BaseModel) -> None:
        """A message the service recorded (as if its callback was lost on the way)."""
        self.recorded.setdefault((application_id, service), []).append(
            steps.ServiceEvent(
                kind=kind, body=body.model_dump(mode="json"), recorded_at=datetime.now(UTC)
            )
        )

    def fail(self, name: str, times: int = -1) -> None:
        self.failures[name] = times

    def refuse(self, name: str, code: str) -> None:
        """The service refuses step `name` for good (a 4xx with `code`), as a real one would."""
        self.refusals[name] = code

    def heal(self, name: str) -> None:
        self.failures.pop(name, None)

    def names(self, *, including_notices: bool = False) -> list[str]:
        return [
            c.name for c in self.calls if including_notices or c.name != catalog.NOTIFY_MERCHANT
        ]

    def notices(self) -> list[str]:
        return [
            str(getattr(c.request, "notice", ""))
            for c in self.calls
            if c.name == catalog.NOTIFY_MERCHANT
        ]

    def then_tell(self, request: Any, result: BaseModel) -> BaseModel:
        """A step that carries its notice sends it, as the real activity does (`then_tell`):
        recorded as a notice and rendered by the notification service's own code; a refused
        one is left to the workflow (`notified` stays false), as a failed send would be."""
        notice = getattr(request, "then_notify", None)
        if notice is None or "notified" not in type(result).model_fields:
            return result
        filled = notice.model_copy(
            update={"fields": {**notice.fields, **fields_from(notice.notice, result)}}
        )
        if self.failures.get(catalog.NOTIFY_MERCHANT):
            return result
        self.calls.append(Call(catalog.NOTIFY_MERCHANT, filled))
        try:
            self.render(filled)
        except ApplicationError:
            return result
        return result.model_copy(update={"notified": True})

    def render(self, r: steps.NotifyMerchant) -> None:
        """Rendered with the notification service's templates and checks, from the body the
        real activity sends: a notice that service would refuse (422) is refused here."""
        body = notice_body(r, f"{PAGE_BASE}/m/{r.application_id}.0.test")
        try:
            self.texts.append(render(NoticeRequest.model_validate(body)))
        except ServiceError as err:
            self.refused_notices.append(f"{r.notice}: {err.fields}")
            raise ApplicationError(
                f"notification refused: {err.fields}", type=err.error, non_retryable=True
            ) from err

    def requests(self, name: str) -> list[Any]:
        return [c.request for c in self.calls if c.name == name]

    def _record(self, name: str, request: BaseModel) -> int:
        if (code := self.refusals.get(name)) is not None:
            raise ApplicationError(f"{name}: refused ({code})", type=code, non_retryable=True)
        left = self.failures.get(name, 0)
        if left:
            self.failures[name] = left - 1 if left > 0 else left
            raise ApplicationError(f"{name}: the service answered 503", type="ServiceUnavailable")
        self.calls.append(Call(name, request))
        return next(self._numbers)

    def latest_projection(self, application_id: str) -> Projection:
        mine = [p for p in self.projections if p.application_id == application_id]
        return max(mine, key=lambda p: p.version)

    def activities(self, *, projection: bool = True) -> list[Callable[..., Any]]:
        """Every activity; `projection=False` leaves `project_status` to a real gateway."""
        s = self

        def answer(
            name: str, make: Callable[[Any, int], BaseModel], request_type: type[Req]
        ) -> Callable[..., Any]:
            async def run(request: Req) -> BaseModel:
                if (gate := s.gates.get(name)) is not None:
                    s.started[name].set()
                    await gate.wait()
                result = make(request, s._record(name, request))
                result = s.then_tell(request, result)
                if s.answering is not None:
                    await s.answering(name, request, result)
                return result

            run.__annotations__ = {"request": request_type, "return": BaseModel}
            return activity.defn(name=name)(run)

        def now() -> datetime:
            return datetime.now(UTC)

        def rendered(r: steps.NotifyMerchant, n: int) -> steps.Notified:
            s.render(r)
            return steps.Notified(notification_id=f"N{n}")

        def undone(r: Any, n: int) -> steps.Undone:
            return steps.Undone(reference=f"U{n}")

        def test_transaction(r: steps.RunTestTransaction, n: int) -> steps.TestTransactionResult:
            left = s.declines
            s.declines = max(left - 1, 0)
            return steps.TestTransactionResult(
                serial=r.serial,
                approved=left == 0,
                reference=f"TX{n:06d}",
                response_code="05" if left else "00",
            )

        @activity.defn(name=catalog.VALIDATE_DOCUMENTS)
        async def validate(request: steps.ValidateDocuments) -> ValidationReport:
            if (gate := s.gates.get(catalog.VALIDATE_DOCUMENTS)) is not None:
                s.started[catalog.VALIDATE_DOCUMENTS].set()
                await gate.wait()
            s._record(catalog.VALIDATE_DOCUMENTS, request)
            return await validate_documents(request)  # the real rules: they are pure

        @activity.defn(name=catalog.PROJECT_STATUS)
        async def project(snapshot: Projection) -> ProjectionReceipt:
            if s.projection_failures:
                s.projection_failures -= 1
                raise ApplicationError("gateway unreachable: ConnectError")
            s.projections.append(snapshot)
            return ProjectionReceipt(applied=True, version=snapshot.version)

        @activity.defn(name=catalog.READ_SERVICE_EVENTS)
        async def read_events(request: steps.ReadServiceEvents) -> steps.ServiceEvents:
            s._record(catalog.READ_SERVICE_EVENTS, request)
            whose = request.merchant_id or request.application_id
            return steps.ServiceEvents(events=s.recorded.get((whose, request.service), []))

        @activity.defn(name=catalog.PROJECT_MERCHANT)
        async def project_merchant(snapshot: MerchantStatus) -> ProjectionReceipt:
            s.merchant_projections.append(snapshot)
            return ProjectionReceipt(applied=True, version=snapshot.version)

        @activity.defn(name=catalog.VALIDATE_SETTLEMENT)
        async def validate_account(request: steps.ValidateSettlement) -> steps.SettlementChecked:
            s._record(catalog.VALIDATE_SETTLEMENT, request)
            return await validate_settlement(request)  # the real rules: they are pure

        def key_part(r: steps.Step, index: int) -> str:
            return r.idempotency_key.split(":")[index]

        def swapped(r: steps.SwapTerminal, n: int) -> steps.TerminalSwapped:
            if r.move_tid:
                return steps.TerminalSwapped(
                    serial=r.replacement_serial, tid=s.tids[r.faulty_serial]
                )
            old = s.tids.get(r.faulty_serial)
            tid = f"T{next(s._tids):07d}"
            s.tids[r.replacement_serial] = tid
            return steps.TerminalSwapped(serial=r.replacement_serial, tid=tid, retired_tid=old)

        def more(r: steps.RegisterMoreTerminals, n: int) -> steps.TerminalsRegistered:
            ids = []
            for serial in r.serials:
                s.tids[serial] = f"T{next(s._tids):07d}"
                ids.append(steps.TerminalIds(serial=serial, tid=s.tids[serial]))
            return steps.TerminalsRegistered(mid=r.mid, terminals=ids)

        merchant: list[Callable[..., Any]] = [
            project_merchant,
            validate_account,
            answer(
                catalog.ISSUE_BILL,
                lambda r, n: steps.BillIssued(
                    bill_id=bill_id(r.merchant_id or "", r.period), amount=r.amount, due_at=r.due_at
                ),
                steps.IssueBill,
            ),
            answer(
                catalog.REFUND_PAYMENT,
                lambda r, n: steps.Refunded(refund_id=f"RF{n}"),
                steps.RefundPayment,
            ),
            answer(catalog.TERMINATE_CONTRACT, undone, steps.TerminateContract),
            answer(
                catalog.CHANGE_ACQUIRING,
                lambda r, n: steps.AcquiringChanged(
                    state="suspended" if r.action == "suspend" else "enabled", changed_at=now()
                ),
                steps.ChangeAcquiring,
            ),
            answer(catalog.REGISTER_MORE_TERMINALS, more, steps.RegisterMoreTerminals),
            answer(catalog.SWAP_TERMINAL, swapped, steps.SwapTerminal),
            answer(catalog.UNBIND_TERMINAL, undone, steps.UnbindTerminal),
            answer(
                catalog.BIND_SETTLEMENT,
                lambda r, n: steps.SettlementBound(binding_id=f"BD{n}", bound_at=now()),
                steps.BindSettlement,
            ),
            answer(
                catalog.RETIRE_MERCHANT,
                lambda r, n: steps.MerchantRetired(
                    mid=r.mid, retired_tids=sorted(s.tids.values()), retired_at=now()
                ),
                steps.RetireMerchant,
            ),
            answer(
                catalog.OPEN_REBINDING_REVIEW,
                lambda r, n: steps.RebindingReviewOpened(
                    case_id=rebinding_case_id(r.mid, key_part(r, 2))
                ),
                steps.OpenRebindingReview,
            ),
            answer(
                catalog.BOOK_INSPECTION,
                lambda r, n: steps.InspectionBooked(
                    inspection_id=inspection_id(r.mid, int(key_part(r, 2))),
                    scheduled_for=now() + timedelta(days=1),
                ),
                steps.BookInspection,
            ),
        ]

        return [
            *([project] if projection else []),
            *merchant,
            read_events,
            validate,
            working_deadlines,  # the real calendar: it is pure
            answer(catalog.NOTIFY_MERCHANT, rendered, steps.NotifyMerchant),
            answer(
                catalog.OPEN_REVIEW_CASE,
                lambda r, n: steps.ReviewCaseOpened(
                    case_id=case_id(r.application_id, r.round), risk_level=s.risk
                ),
                steps.OpenReviewCase,
            ),
            answer(
                catalog.REQUEST_SITE_SURVEY,
                lambda r, n: steps.SiteSurveyRequested(survey_id=survey_id(r.application_id)),
                steps.RequestSiteSurvey,
            ),
            answer(
                catalog.ESCALATE_REVIEW,
                lambda r, n: steps.Escalated(escalation_id=f"E{n}"),
                steps.EscalateReview,
            ),
            answer(catalog.CLOSE_REVIEW_CASE, undone, steps.CloseReviewCase),
            answer(
                catalog.ISSUE_CONTRACT,
                lambda r, n: steps.ContractIssued(
                    contract_id=contract_id(r.application_id),
                    signing_url=f"https://sign.example/{n}",
                ),
                steps.IssueContract,
            ),
            answer(catalog.VOID_CONTRACT, undone, steps.VoidContract),
            answer(
                catalog.REFUND_DEPOSIT,
                lambda r, n: steps.Refunded(refund_id=f"RF{n}"),
                steps.RefundDeposit,
            ),
            answer(
                catalog.RESERVE_TERMINALS,
                lambda r, n: steps.TerminalsReserved(
                    reservation_id=f"RS{n}",
                    serials=[f"SN{n:04d}{i:02d}" for i in range(r.quantity)],
                ),
                steps.ReserveTerminals,
            ),
            answer(
                catalog.REGISTER_TERMINALS,
                lambda r, n: steps.TerminalsRegistered(
                    mid=f"898310{n:09d}",
                    terminals=[
                        steps.TerminalIds(serial=sn, tid=s.tids.setdefault(sn, f"T{n:04d}{i:03d}"))
                        for i, sn in enumerate(r.serials)
                    ],
                ),
                steps.RegisterTerminals,
            ),
            answer(catalog.RELEASE_TERMINALS, undone, steps.ReleaseTerminals),
            answer(
                catalog.CREATE_SHIPMENT,
                lambda r, n: steps.ShipmentCreated(
                    shipment_id=merchant_shipment_id(r.merchant_id, key_part(r, 2), attempt_of(r))
                    if r.merchant_id
                    else shipment_id(r.application_id, attempt_of(r)),
                    carrier="SF Express",
                    tracking_number=f"SF{n:010d}",
                ),
                steps.CreateShipment,
            ),
            answer(
                catalog.BOOK_INSTALLATION,
                lambda r, n: steps.InstallationBooked(
                    appointment_id=merchant_appointment_id(
                        r.merchant_id, key_part(r, 2), attempt_of(r)
                    )
                    if r.merchant_id
                    else appointment_id(r.application_id, attempt_of(r)),
                    scheduled_for=now() + timedelta(days=2),
                ),
                steps.BookInstallation,
            ),
            answer(catalog.RECALL_SHIPMENT, undone, steps.RecallShipment),
            answer(catalog.CANCEL_INSTALLATION, undone, steps.CancelInstallation),
            answer(
                catalog.BOOK_PICK_UP,
                lambda r, n: steps.PickUpBooked(
                    pickup_id=pickup_id(r.application_id, attempt_of(r)),
                    branch="杭州服务网点",
                    ready_from=now() + timedelta(days=1),
                    pickup_code=f"{n:06d}",
                ),
                steps.BookPickUp,
            ),
            answer(catalog.CANCEL_PICK_UP, undone, steps.CancelPickUp),
            answer(
                catalog.ARRANGE_RETURN,
                lambda r, n: steps.ReturnArranged(
                    return_id=f"RT{n}", tracking_number=f"SF{n:010d}"
                ),
                steps.ArrangeReturn,
            ),
            answer(
                catalog.ISSUE_ACTIVATION_CODES,
                lambda r, n: steps.ActivationCodesIssued(
                    codes=[
                        steps.ActivationCode(serial=t.serial, code=f"{n:03d}{i:03d}")
                        for i, t in enumerate(r.terminals)
                    ]
                ),
                steps.IssueActivationCodes,
            ),
            answer(catalog.RUN_TEST_TRANSACTION, test_transaction, steps.RunTestTransaction),
            answer(
                catalog.SCHEDULE_TRAINING,
                lambda r, n: steps.TrainingScheduled(
                    session_id=training_id(r.application_id),
                    scheduled_for=now() + timedelta(days=1),
                    sessions=r.sessions,
                ),
                steps.ScheduleTraining,
            ),
            answer(catalog.CANCEL_TRAINING, undone, steps.CancelTraining),
            answer(
                catalog.ENABLE_ACQUIRING,
                lambda r, n: steps.AcquiringEnabled(enabled_at=now()),
                steps.EnableAcquiring,
            ),
        ]
