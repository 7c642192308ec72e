"""Inputs and outputs of every activity: the contract between the workflow and the services.

Each input carries an `idempotency_key` derived from the workflow and the step, so a retried
activity never opens two cases, ships twice or allocates two MIDs.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field

from schemas.application import Address, Application, Contact, Model
from schemas.documents import Document, FieldIssue
from schemas.policy import RiskLevel
from schemas.status import Projection


class Step(Model):
    idempotency_key: str
    application_id: str
    # Set by the merchant workflow (after go-live): the service sends its callbacks for this step
    # to the merchant's routes (`/api/merchants/{mid}/...`) instead of the application's.
    merchant_id: str | None = None
    # The notice this step causes, sent by the same activity once the service has done the step
    # (its template's fields filled in from the service's answer): one activity instead of two.
    # Never sent to the service. The result says `notified`; when it could not go out, the
    # workflow sends the same notice (same key) as an activity of its own.
    then_notify: NotifyMerchant | None = None
    # The gateway's snapshot of the application (its list pages), when it changed since the last
    # one: delivered by the worker as the activity starts (`workers.interceptors.SnapshotCourier`)
    # instead of by an activity of its own. Never sent to the service. The result says
    # `projected`; when it could not go out, the workflow sends it as an activity of its own.
    then_project: Projection | None = None
    # What the worker carries with the step and never sends to the service.
    CARRIED: ClassVar[frozenset[str]] = frozenset({"then_notify", "then_project"})


class StepResult(Model):
    """The answer of a step that can carry the gateway's snapshot (`Step.then_project`)."""

    projected: bool = False  # the snapshot the step carried reached the gateway


# --- documents and notifications -------------------------------------------------------------


class ValidateDocuments(Model):
    application: Application
    documents: list[Document]
    extra_required: list[str] = Field(default_factory=list)  # kinds a reviewer asked for
    as_of: date


class Notice(StrEnum):
    RECEIVED = "received"  # sent by the gateway when the application is submitted
    DOCUMENTS_INCOMPLETE = "documents_incomplete"
    DOCUMENTS_REMINDER = "documents_reminder"
    MORE_INFORMATION_NEEDED = "more_information_needed"
    APPROVED = "approved"  # before the notice fields: approval and contract are one notice now
    CONTRACT_READY = "contract_ready"
    CONTRACT_REMINDER = "contract_reminder"
    SHIPPED = "shipped"
    INSTALLATION_BOOKED = "installation_booked"
    PICK_UP_READY = "pick_up_ready"
    ACTIVATION_CODES = "activation_codes"
    ACTIVATION_REMINDER = "activation_reminder"
    TRAINING_BOOKED = "training_booked"
    TRAINING_REMINDER = "training_reminder"
    WENT_LIVE = "went_live"
    REJECTED = "rejected"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    # After go-live.
    FEE_BILLED = "fee_billed"
    FEE_REMINDER = "fee_reminder"
    FEE_OVERDUE = "fee_overdue"
    SUSPENDED = "suspended"
    REINSTATED = "reinstated"
    INSPECTION_BOOKED = "inspection_booked"
    INSPECTION_FAILED = "inspection_failed"
    TERMINAL_REPLACED = "terminal_replaced"
    TERMINALS_ADDED = "terminals_added"
    SETTLEMENT_REBOUND = "settlement_rebound"
    REBINDING_REFUSED = "rebinding_refused"
    CLOSED = "closed"


class NotifyMerchant(Step):
    notice: Notice
    detail: str = ""  # already masked: never a full personal number
    # The template's fields (services/notification.py `TEMPLATES`), already masked; none: the
    # notice goes out in its short form with `detail`. The merchant's mobile and e-mail are never
    # here: the notification service holds them by application id.
    fields: dict[str, str] = Field(default_factory=dict)
    # Where notices go, given with the first one (`received`): registered with the service
    # before the notice is sent. Like the application it comes from, it is encrypted in the
    # history by the payload codec; the service keeps it, so later notices name no contact.
    contact: Contact | None = None


class Notified(StepResult):
    notification_id: str


# --- push, then pull ---------------------------------------------------------------------------


class ReadServiceEvents(Model):
    """Ask one service for every message it recorded for an application (its outbox): what the
    workflow reads when a deadline passes with no word, so a callback lost anywhere is found."""

    application_id: str
    service: str  # review | contract | device | logistics
    # A merchant's messages instead (`GET /merchants/{mid}/events`): after go-live.
    merchant_id: str | None = None


class ServiceEvent(Model):
    """One message as the service sent (or will send) it: `kind` is the gateway's path segment
    (review-decision, site-survey, contract, delivery, activation, training, shipment-scans) and
    `body` the callback's JSON body with the same message id: a later delivery is a duplicate."""

    kind: str
    body: dict[str, Any]
    recorded_at: datetime


class ServiceEvents(Model):
    events: list[ServiceEvent] = Field(default_factory=list)


# --- review ----------------------------------------------------------------------------------


class OpenReviewCase(Step):
    round: int
    merchant_name: str
    merchant_type: str
    channel: str
    business_category: str
    documents: list[Document]


class ReviewCaseOpened(StepResult):
    case_id: str
    risk_level: RiskLevel


class RequestSiteSurvey(Step):
    case_id: str
    address: Address


class SiteSurveyRequested(StepResult):
    survey_id: str


class EscalateReview(Step):
    case_id: str
    round: int
    level: int  # 1: SLA passed, 2: hard deadline passed
    overdue_since: datetime


class Escalated(StepResult):
    escalation_id: str


class CloseReviewCase(Step):
    case_id: str
    reason: str


# --- contract and fees -----------------------------------------------------------------------


class IssueContract(Step):
    merchant_name: str
    channel: str
    deposit_amount: Decimal
    device_model: str
    quantity: int
    card_rate_percent: Decimal = Decimal("0.60")  # the channel's card rate (费率), on the contract


class ContractIssued(StepResult):
    contract_id: str
    signing_url: str
    notified: bool = False  # the step's notice went out (`Step.then_notify`)


class VoidContract(Step):
    contract_id: str
    reason: str


class RefundDeposit(Step):
    contract_id: str
    amount: Decimal
    payment_reference: str


class Refunded(StepResult):
    refund_id: str


# --- devices ---------------------------------------------------------------------------------


class ReserveTerminals(Step):
    model: str
    quantity: int


class TerminalsReserved(StepResult):
    reservation_id: str
    serials: list[str]


class RegisterTerminals(Step):
    merchant_name: str
    reservation_id: str
    serials: list[str]
    # What an activated terminal is bound to. Only the last four digits of the account travel:
    # the binding names the account, settlement itself happens in the acquirer's clearing.
    settlement_holder: str = ""
    settlement_bank: str = ""
    settlement_account_last4: str = ""
    install_address: Address | None = None


class TerminalIds(Model):
    serial: str
    tid: str = Field(min_length=8, max_length=8)


class TerminalsRegistered(StepResult):
    mid: str = Field(pattern=r"^\d{15}$")
    terminals: list[TerminalIds]


class ReleaseTerminals(Step):
    """Release the reservation and free the MID/TIDs bound to it."""

    reservation_id: str
    reason: str


# --- delivery --------------------------------------------------------------------------------


class CreateShipment(Step):
    address: Address
    recipient: str
    serials: list[str]


class ShipmentCreated(StepResult):
    shipment_id: str
    carrier: str
    tracking_number: str
    notified: bool = False


class BookInstallation(Step):
    address: Address
    contact: str
    serials: list[str]


class InstallationBooked(StepResult):
    appointment_id: str
    scheduled_for: datetime
    notified: bool = False


class RecallShipment(Step):
    shipment_id: str
    reason: str


class CancelInstallation(Step):
    appointment_id: str
    reason: str


class BookPickUp(Step):
    """Hold the terminals at the branch of the merchant's city for collection (领取)."""

    address: Address
    contact: str
    serials: list[str]


class PickUpBooked(StepResult):
    pickup_id: str
    branch: str
    ready_from: datetime
    pickup_code: str  # six digits, for the merchant only (sent by notice)
    notified: bool = False


class CancelPickUp(Step):
    pickup_id: str
    reason: str


class ArrangeReturn(Step):
    """Collect delivered or installed terminals back from the merchant."""

    serials: list[str]
    address: Address
    reason: str


class ReturnArranged(StepResult):
    return_id: str
    tracking_number: str


class Undone(StepResult):
    """Acknowledgement of a compensation: what the service did, in its own words."""

    reference: str
    detail: str = ""


# --- activation, training, go-live -----------------------------------------------------------


class IssueActivationCodes(Step):
    mid: str
    terminals: list[TerminalIds]


class ActivationCode(Model):
    serial: str
    code: str


class ActivationCodesIssued(StepResult):
    codes: list[ActivationCode]
    notified: bool = False


class RunTestTransaction(Step):
    mid: str
    serial: str
    tid: str


class TestTransactionResult(StepResult):
    serial: str
    approved: bool
    reference: str
    response_code: str


class ScheduleTraining(Step):
    merchant_name: str
    address: Address
    on_site: bool
    sessions: int = 1  # the channel's profile: one session or several


class TrainingScheduled(StepResult):
    session_id: str
    scheduled_for: datetime  # the first session
    sessions: int = 1
    notified: bool = False


class CancelTraining(Step):
    session_id: str
    reason: str


class EnableAcquiring(Step):
    mid: str
    tids: list[str]


class AcquiringEnabled(StepResult):
    enabled_at: datetime
    notified: bool = False


# --- after go-live: the merchant's account -----------------------------------------------------
# Every one carries `merchant_id` (the MID): the service's callbacks go to the merchant's routes.


class IssueBill(Step):
    """A bill on an anniversary (年费 + 服务费), issued against the contract."""

    contract_id: str
    period: int
    annual_fee: Decimal
    service_fee: Decimal
    amount: Decimal
    due_at: datetime


class BillIssued(Model):
    bill_id: str
    amount: Decimal
    due_at: datetime


class RefundPayment(Step):
    """Refund a payment taken against the contract (a bill paid while the account closed)."""

    contract_id: str
    amount: Decimal
    payment_reference: str


class TerminateContract(Step):
    contract_id: str
    reason: str


class ChangeAcquiring(Step):
    """Suspend, reinstate or stop acquiring for a merchant in the device service."""

    mid: str
    action: str  # suspend | reinstate
    reason: str


class AcquiringChanged(Model):
    state: str  # enabled | suspended
    changed_at: datetime


class RegisterMoreTerminals(Step):
    """Bind reserved terminals under an existing MID (more terminals), each with a new TID."""

    mid: str
    reservation_id: str
    serials: list[str]


class SwapTerminal(Step):
    """Bind a replacement under the same MID: the faulty unit's TID moves to it, or it gets a
    new one and the old TID is retired."""

    mid: str
    faulty_serial: str
    replacement_serial: str
    reservation_id: str
    move_tid: bool


class TerminalSwapped(Model):
    serial: str
    tid: str = Field(min_length=8, max_length=8)
    retired_tid: str | None = None


class UnbindTerminal(Step):
    """Unbind a terminal from the merchant (swapped out or returned at closure)."""

    mid: str
    serial: str
    reason: str


class ValidateSettlement(Model):
    """Check a new settlement account with the application's own rules (Luhn, same name,
    corporate for an enterprise)."""

    application: Application
    account_holder: str
    account_kind: str
    account_number: str
    bank_name: str
    as_of: date


class SettlementChecked(Model):
    issues: list[FieldIssue] = Field(default_factory=list)


class OpenRebindingReview(Step):
    mid: str
    merchant_name: str
    holder_name: str
    bank_name: str
    account_kind: str
    account_last4: str


class RebindingReviewOpened(Model):
    case_id: str


class BindSettlement(Step):
    mid: str
    holder_name: str
    bank_name: str
    account_kind: str
    account_last4: str


class SettlementBound(Model):
    binding_id: str
    bound_at: datetime


class BookInspection(Step):
    mid: str
    address: Address
    serials: list[str]
    reinspection: bool = False
    due_by: datetime


class InspectionBooked(Model):
    inspection_id: str
    scheduled_for: datetime


class RetireMerchant(Step):
    """Close the merchant in the device service: acquiring off, every TID and the MID retired
    (never reused)."""

    mid: str
    reason: str


class MerchantRetired(Model):
    mid: str
    retired_tids: list[str]
    retired_at: datetime
