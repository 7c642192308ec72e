"""What an application looks like from outside: its stage, the status query and the outcome."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from schemas.application import Application, Model
from schemas.documents import DocumentKind, FieldIssue
from schemas.messages import ReviewOutcome
from schemas.policy import Policy, RiskLevel


class Stage(StrEnum):
    COLLECTING_DOCUMENTS = "collecting_documents"
    SITE_SURVEY = "site_survey"
    IN_REVIEW = "in_review"
    CONTRACT = "contract"
    PREPARING_DEVICES = "preparing_devices"
    DELIVERING = "delivering"
    ACTIVATING = "activating"
    TRAINING = "training"
    GOING_LIVE = "going_live"
    CLOSING = "closing"  # compensating after a withdrawal, expiry or rejection
    LIVE = "live"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = {Stage.LIVE, Stage.REJECTED, Stage.EXPIRED, Stage.CANCELLED}


class OnboardingStart(Model):
    """The workflow's input: the application, the policy it runs under, and the documents it
    needs under the rules in force when it was submitted. The input is in the history, so a later
    change to the rules changes new applications only, never what an open run does on replay."""

    application: Application
    policy: Policy
    # None for runs started before the rules were captured: they keep the rules of that time.
    required_documents: list[DocumentKind] | None = None


class TimelineEvent(Model):
    at: datetime
    stage: Stage
    kind: str  # e.g. stage_entered, documents_submitted, reminder_sent, escalated, parked
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class AttentionKind(StrEnum):
    STEP_FAILED = "step_failed"  # an activity exhausted its retries: `retry` re-runs it
    REVIEW_OVERDUE = "review_overdue"
    SITE_SURVEY_OVERDUE = "site_survey_overdue"
    DELIVERY_FAILED = "delivery_failed"  # `retry` delivers again
    DELIVERY_OVERDUE = "delivery_overdue"  # `retry` delivers again; a late delivery still counts
    ACTIVATION_OVERDUE = "activation_overdue"
    TRAINING_OVERDUE = "training_overdue"
    TEST_TRANSACTION_DECLINED = "test_transaction_declined"
    INSPECTION_OVERDUE = "inspection_overdue"  # after go-live: no inspection result in time


class Attention(Model):
    kind: AttentionKind
    step: str
    reason: str
    since: datetime
    retryable: bool
    skippable: bool = False
    extendable: bool = False  # an overdue wait on others: `extend` gives them another period


class DocumentState(Model):
    """The documents on file and what is still outstanding, with every issue."""

    on_file: list[DocumentKind] = Field(default_factory=list)
    outstanding: list[DocumentKind] = Field(default_factory=list)
    issues: list[FieldIssue] = Field(default_factory=list)
    requested_by_review: list[DocumentKind] = Field(default_factory=list)


class ReviewRound(Model):
    round: int
    case_id: str
    opened_at: datetime
    decision_id: str | None = None
    outcome: ReviewOutcome | None = None
    reviewer: str | None = None
    reasons: list[str] = Field(default_factory=list)
    required_documents: list[DocumentKind] = Field(default_factory=list)
    decided_at: datetime | None = None
    escalations: int = 0


class ReviewState(Model):
    case_id: str | None = None
    risk_level: RiskLevel | None = None
    survey_id: str | None = None
    survey_passed: bool | None = None
    rounds: list[ReviewRound] = Field(default_factory=list)


class ContractState(Model):
    contract_id: str | None = None
    signing_url: str | None = None
    signed_at: datetime | None = None
    deposit_due: str = "0"
    card_rate_percent: str | None = None  # 费率 on the contract (None: before it was shown)
    deposit_paid_at: datetime | None = None
    payment_reference: str | None = None


class Terminal(Model):
    serial: str
    model: str
    tid: str | None = None
    activation_code_issued: bool = False
    activated_at: datetime | None = None
    test_transaction: str | None = None  # reference of the approved test transaction


class Shipment(Model):
    shipment_id: str
    carrier: str
    tracking_number: str
    delivered_at: datetime | None = None
    scans: list[str] = Field(default_factory=list)


class Installation(Model):
    appointment_id: str
    scheduled_for: datetime
    installed_at: datetime | None = None


class PickUp(Model):
    """Terminals held at a branch for the merchant (the pick-up code is not here: it went to the
    merchant by notice)."""

    pickup_id: str
    branch: str
    ready_from: datetime
    collected_at: datetime | None = None


class Deadlines(Model):
    stage_deadline: datetime | None = None
    next_reminder: datetime | None = None
    review_sla: datetime | None = None


class ApplicationStatus(Model):
    """What the `status` query returns."""

    application_id: str
    workflow_id: str
    channel: str
    merchant_type: str
    merchant_name: str
    fulfilment: str
    stage: Stage
    round: int
    stage_entered_at: datetime
    deadlines: Deadlines
    documents: DocumentState
    review: ReviewState
    contract: ContractState
    reservation_id: str | None = None
    mid: str | None = None
    terminals: list[Terminal] = Field(default_factory=list)
    shipment: Shipment | None = None
    installation: Installation | None = None
    pick_up: PickUp | None = None
    training_session_id: str | None = None
    attention: Attention | None = None
    withdrawal_reason: str | None = None
    timeline: list[TimelineEvent] = Field(default_factory=list)


class Outcome(Model):
    """What the workflow returns when the application ends."""

    application_id: str
    stage: Stage  # live, rejected, expired or cancelled
    reason: str = ""
    mid: str | None = None
    tids: list[str] = Field(default_factory=list)
    went_live_at: datetime | None = None
    started_at: datetime
    ended_at: datetime
    stage_entered: dict[str, datetime] = Field(default_factory=dict)
    compensations: list[str] = Field(default_factory=list)
    # The merchant's account after go-live (`merchant-{MID}`), when it was handed over.
    merchant_workflow_id: str | None = None


class StageVisit(Model):
    stage: Stage
    entered_at: datetime


class Projection(Model):
    """What the gateway's list pages know of an application, sent by the workflow each time any
    of it changes. A whole snapshot, numbered: a late or repeated one never overwrites a newer."""

    application_id: str
    workflow_id: str
    version: int  # numbered within its run
    # The run that sent it: after an admin's reset the new run's numbering takes over, and a
    # late snapshot of the old run is ignored. "" from runs that did not say.
    run_id: str = ""
    channel: str
    merchant_type: str
    merchant_name: str
    fulfilment: str
    stage: Stage
    stage_entered_at: datetime
    stage_deadline: datetime | None = None
    review_round: int
    attention: Attention | None = None
    mid: str | None = None
    started_at: datetime
    ended_at: datetime | None = None
    outcome_reason: str = ""
    visits: list[StageVisit] = Field(default_factory=list)


class ProjectionReceipt(Model):
    """The gateway's answer: whether the snapshot was newer than what it had, and what it has."""

    applied: bool
    version: int
