"""Messages from services, people and admins that move an application along.

Each carries its own id, so a resend is acknowledged without being applied twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, Field, model_validator

from schemas.application import Model, Note, OptionalText, PersonName, RequiredNote, Text
from schemas.documents import DocumentKind, FieldIssue

MessageId = str


class ReviewOutcome(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    NEEDS_MORE_INFO = "needs_more_info"  # 补充资料


class ReviewDecision(Model):
    decision_id: MessageId = Field(min_length=1, max_length=80)
    case_id: str = Field(min_length=1, max_length=80)
    round: int = Field(ge=1)
    outcome: ReviewOutcome
    required_documents: list[DocumentKind] = Field(default_factory=list)
    reasons: list[RequiredNote] = Field(default_factory=list)
    reviewer: PersonName = Field(min_length=1, max_length=80)

    @model_validator(mode="after")
    def _outcome_has_its_details(self) -> ReviewDecision:
        if self.outcome is ReviewOutcome.NEEDS_MORE_INFO and not self.required_documents:
            raise ValueError("needs_more_info must name the required_documents")
        if self.outcome is not ReviewOutcome.NEEDS_MORE_INFO and self.required_documents:
            raise ValueError("required_documents only go with needs_more_info")
        if self.outcome is ReviewOutcome.REJECTED and not self.reasons:
            raise ValueError("a rejection must give its reasons")
        return self


class SiteSurveyResult(Model):
    event_id: MessageId = Field(min_length=1, max_length=80)
    survey_id: str = Field(min_length=1, max_length=80)
    passed: bool
    surveyor: PersonName = Field(min_length=1, max_length=80)
    notes: Note = Field(default="", max_length=1000)


class ContractEventKind(StrEnum):
    SIGNED = "signed"
    DEPOSIT_PAID = "deposit_paid"


class ContractEvent(Model):
    event_id: MessageId = Field(min_length=1, max_length=80)
    contract_id: str = Field(min_length=1, max_length=80)
    kind: ContractEventKind
    amount: Decimal | None = Field(default=None, ge=0)
    payment_reference: str = Field(default="", max_length=80)


class DeliveryOutcomeKind(StrEnum):
    DELIVERED = "delivered"  # parcel signed for
    INSTALLED = "installed"  # technician finished installation and debugging
    FAILED = "failed"  # parcel lost or refused, installation could not be done


class DeliveryOutcome(Model):
    event_id: MessageId = Field(min_length=1, max_length=80)
    reference: str = Field(min_length=1, max_length=80)  # shipment or appointment id
    kind: DeliveryOutcomeKind
    detail: Note = Field(default="", max_length=500)


class ShipmentScan(Model):
    """A tracking scan on the way: informative, fire-and-forget (a signal)."""

    event_id: MessageId = Field(min_length=1, max_length=80)
    shipment_id: str = Field(min_length=1, max_length=80)
    location: OptionalText = Field(max_length=120)
    scanned_at: AwareDatetime
    description: OptionalText = Field(default="", max_length=200)


class TerminalActivated(Model):
    event_id: MessageId = Field(min_length=1, max_length=80)
    serial: str = Field(min_length=1, max_length=40)
    tid: str = Field(min_length=8, max_length=8)


class TrainingCompleted(Model):
    event_id: MessageId = Field(min_length=1, max_length=80)
    session_id: str = Field(min_length=1, max_length=80)
    trainer: PersonName = Field(min_length=1, max_length=80)
    topics: list[Text] = Field(default_factory=list)


class CancelRequest(Model):
    request_id: MessageId = Field(min_length=1, max_length=80)
    reason: RequiredNote = Field(min_length=1, max_length=500)
    requested_by: PersonName = Field(min_length=1, max_length=80)


class AdminAction(Model):
    """An admin's `retry`, `skip` or `extend` of the step an application is parked on."""

    request_id: MessageId = Field(min_length=1, max_length=80)
    admin: PersonName = Field(min_length=1, max_length=80)
    note: Note = Field(default="", max_length=500)
    # `extend` only: the new period from now (ISO 8601, e.g. "P3D"); the stage's own period
    # from the policy when absent.
    period: timedelta | None = Field(default=None, gt=timedelta(0), le=timedelta(days=180))
    # A merchant account may be parked on more than one step at once (a bill and a swap): the
    # one meant; the one parked longest when absent. Applications are parked on one at most.
    step: str | None = Field(default=None, max_length=80)


class Ack(Model):
    """What the caller of an update gets back: applied, or acknowledged as a duplicate."""

    message_id: MessageId
    duplicate: bool = False
    stage: str
    detail: str = ""
    at: datetime | None = None


class SubmissionResult(Model):
    """What `submit_documents` answers: what was filed, what is wrong, what is still outstanding."""

    submission_id: MessageId
    duplicate: bool = False
    stage: str
    filed: list[DocumentKind] = Field(default_factory=list)
    issues: list[FieldIssue] = Field(default_factory=list)
    outstanding: list[DocumentKind] = Field(default_factory=list)
    complete: bool = False


def message_id(message: BaseModel) -> MessageId:
    """The id a message is acknowledged by, whatever its kind calls it."""
    for name in ("decision_id", "event_id", "request_id", "submission_id"):
        if isinstance(value := getattr(message, name, None), str):
            return value
    raise TypeError(f"{type(message).__name__} carries no message id")


class Refusal(StrEnum):
    """Why a message was refused; the error type a caller (and the gateway) can map to HTTP."""

    OUT_OF_STAGE = "OutOfStage"
    STALE = "StaleMessage"
    UNKNOWN_REFERENCE = "UnknownReference"
    INVALID = "InvalidMessage"
    NOT_PARKED = "NotParked"
    NOT_SKIPPABLE = "NotSkippable"
    FINISHED = "ApplicationFinished"
    UNAVAILABLE = "TemporarilyUnavailable"
