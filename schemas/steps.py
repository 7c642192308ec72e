"""Inputs and outputs of every activity: the contract between the workflow and the services.

Each input carries an `idempotency_key` derived from the workflow and the step, so a retried
activity never opens two cases, ships twice or allocates two MIDs.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import Field

from schemas.application import Address, Application, Model
from schemas.documents import Document
from schemas.policy import RiskLevel


class Step(Model):
    idempotency_key: str
    application_id: str


# --- documents and notifications -------------------------------------------------------------


class ValidateDocuments(Model):
    application: Application
    documents: list[Document]
    extra_required: list[str] = Field(default_factory=list)  # kinds a reviewer asked for
    as_of: date


class Notice(StrEnum):
    DOCUMENTS_INCOMPLETE = "documents_incomplete"
    DOCUMENTS_REMINDER = "documents_reminder"
    MORE_INFORMATION_NEEDED = "more_information_needed"
    APPROVED = "approved"
    CONTRACT_REMINDER = "contract_reminder"
    SHIPPED = "shipped"
    ACTIVATION_REMINDER = "activation_reminder"
    TRAINING_REMINDER = "training_reminder"
    WENT_LIVE = "went_live"
    REJECTED = "rejected"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


class NotifyMerchant(Step):
    notice: Notice
    detail: str = ""  # already masked: never a full personal number


class Notified(Model):
    notification_id: str


# --- push, then pull ---------------------------------------------------------------------------


class ReadServiceEvents(Model):
    """Ask one service for every message it recorded for an application (its outbox): what the
    workflow reads when a deadline passes with no word, so a callback lost anywhere is found."""

    application_id: str
    service: str  # review | contract | device | logistics


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


class ReviewCaseOpened(Model):
    case_id: str
    risk_level: RiskLevel


class RequestSiteSurvey(Step):
    case_id: str
    address: Address


class SiteSurveyRequested(Model):
    survey_id: str


class EscalateReview(Step):
    case_id: str
    round: int
    level: int  # 1: SLA passed, 2: hard deadline passed
    overdue_since: datetime


class Escalated(Model):
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


class ContractIssued(Model):
    contract_id: str
    signing_url: str


class VoidContract(Step):
    contract_id: str
    reason: str


class RefundDeposit(Step):
    contract_id: str
    amount: Decimal
    payment_reference: str


class Refunded(Model):
    refund_id: str


# --- devices ---------------------------------------------------------------------------------


class ReserveTerminals(Step):
    model: str
    quantity: int


class TerminalsReserved(Model):
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


class TerminalsRegistered(Model):
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


class ShipmentCreated(Model):
    shipment_id: str
    carrier: str
    tracking_number: str


class BookInstallation(Step):
    address: Address
    contact: str
    serials: list[str]


class InstallationBooked(Model):
    appointment_id: str
    scheduled_for: datetime


class RecallShipment(Step):
    shipment_id: str
    reason: str


class CancelInstallation(Step):
    appointment_id: str
    reason: str


class ArrangeReturn(Step):
    """Collect delivered or installed terminals back from the merchant."""

    serials: list[str]
    address: Address
    reason: str


class ReturnArranged(Model):
    return_id: str
    tracking_number: str


class Undone(Model):
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


class ActivationCodesIssued(Model):
    codes: list[ActivationCode]


class RunTestTransaction(Step):
    mid: str
    serial: str
    tid: str


class TestTransactionResult(Model):
    serial: str
    approved: bool
    reference: str
    response_code: str


class ScheduleTraining(Step):
    merchant_name: str
    address: Address
    on_site: bool


class TrainingScheduled(Model):
    session_id: str
    scheduled_for: datetime


class CancelTraining(Step):
    session_id: str
    reason: str


class EnableAcquiring(Step):
    mid: str
    tids: list[str]


class AcquiringEnabled(Model):
    enabled_at: datetime
