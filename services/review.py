"""The review service (审核): one case per application across review rounds, reviewers' decisions,
on-site surveys (现场勘查) and escalations, each outcome sent to the gateway as a signed callback.

Risk level, decided when a case is opened or reopened, by a fixed rule on the request:
- HIGH: the business category is in the high-risk set or the prohibited set (both configurable:
  options `high_risk_categories` / `prohibited_categories`, or the environment variables
  `POSFLOW_REVIEW_HIGH_RISK_CATEGORIES` / `POSFLOW_REVIEW_PROHIBITED_CATEGORIES`, comma-separated);
- MEDIUM: a foreign legal representative (a passport instead of a resident ID, which cannot be
  checked against the resident register), or an enterprise on a legacy licence (separate tax
  registration and organisation code certificates to cross-check instead of one 三证合一 code);
- LOW: everything else.

Case statuses: `open` (waiting in the queue), `in_review` (assigned to a reviewer), `decided` (this
round has its decision), `closed` (withdrawn or expired; final). A later round reopens the case.

The auto-reviewer (demo only; option `auto_review` or `POSFLOW_REVIEW_AUTO=true`, delay option
`auto_review_delay_ms` or `POSFLOW_REVIEW_AUTO_DELAY_MS`, default 500 ms) completes site surveys
requested more than the delay ago (passed), then decides open cases idle for the delay that have
no survey pending: a prohibited category is rejected; round 1 of an application whose stable hash
is divisible by 5 needs better premises photos; the rest are approved. A high-risk case waits for
its survey to be requested and completed first. It decides through the same
function as the decision endpoint, so its callbacks are the same.

After go-live a merchant's new settlement account is reviewed too (重新绑定): a rebinding review
(`POST /rebinding-reviews`, case ids `RB-...`) is decided approved or refused with reasons
(`POST /rebinding-reviews/{case_id}/decision`, once), and the decision is sent to the merchant's
route as `RebindingDecision`. The auto-reviewer, when on, decides rebinding reviews open longer
than its delay: approved, unless the holder's name holds the marker `[refuse]`.

Documents' numbers (ID, account) are never stored or logged here: only the kinds of documents,
and of a rebinding account its last four digits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import structlog
from fastapi import Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from pydantic import Field as PydanticField
from sqlalchemy import UniqueConstraint, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from schemas.application import Address, Model
from schemas.documents import Document, DocumentKind
from schemas.merchant import MID_PATTERN, RebindingDecision
from schemas.messages import ReviewDecision, ReviewOutcome, SiteSurveyResult
from schemas.policy import RiskLevel
from schemas.steps import (
    Escalated,
    RebindingReviewOpened,
    ReviewCaseOpened,
    SiteSurveyRequested,
    Undone,
)
from services.base import (
    Service,
    ServiceConfig,
    ServiceError,
    callback_path,
    create_service,
    enqueue_callback,
    idempotent,
    merchant_callback_path,
)

log = structlog.get_logger(__name__)

NAME = "review"
DEFAULT_HIGH_RISK_CATEGORIES = frozenset(
    {"jewelry", "precious_metals", "gaming_tokens", "prepaid_cards"}
)
DEFAULT_PROHIBITED_CATEGORIES = frozenset({"gaming_tokens", "prepaid_cards"})
DEFAULT_AUTO_DELAY_MS = 500
AUTO_REVIEWER = "auto-reviewer"
AUTO_SURVEYOR = "auto-surveyor"
# A holder's name with this marker is refused by the demo auto-reviewer.
REFUSE_MARKER = "[refuse]"


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    """Databases may hand back naive datetimes: every one stored here is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewRules:
    high_risk_categories: frozenset[str] = DEFAULT_HIGH_RISK_CATEGORIES
    prohibited_categories: frozenset[str] = DEFAULT_PROHIBITED_CATEGORIES
    auto_review: bool = False
    auto_delay: timedelta = timedelta(milliseconds=DEFAULT_AUTO_DELAY_MS)

    @classmethod
    def from_config(cls, config: ServiceConfig) -> ReviewRules:
        """Each setting from `config.options`, else its environment variable, else the default."""

        def setting(key: str, env: str) -> str | None:
            return config.options[key] if key in config.options else os.environ.get(env)

        def categories(key: str, env: str, default: frozenset[str]) -> frozenset[str]:
            value = setting(key, env)
            if value is None:
                return default
            return frozenset(c for c in (normalise(p) for p in value.split(",")) if c)

        auto = setting("auto_review", "POSFLOW_REVIEW_AUTO") or ""
        delay_ms = setting("auto_review_delay_ms", "POSFLOW_REVIEW_AUTO_DELAY_MS")
        return cls(
            high_risk_categories=categories(
                "high_risk_categories",
                "POSFLOW_REVIEW_HIGH_RISK_CATEGORIES",
                DEFAULT_HIGH_RISK_CATEGORIES,
            ),
            prohibited_categories=categories(
                "prohibited_categories",
                "POSFLOW_REVIEW_PROHIBITED_CATEGORIES",
                DEFAULT_PROHIBITED_CATEGORIES,
            ),
            auto_review=auto.strip().lower() == "true",
            auto_delay=timedelta(milliseconds=float(delay_ms or DEFAULT_AUTO_DELAY_MS)),
        )

    def prohibited(self, category: str) -> bool:
        return normalise(category) in self.prohibited_categories

    def risk_level(self, merchant_type: str, category: str, kinds: list[DocumentKind]) -> RiskLevel:
        cat = normalise(category)
        if cat in self.high_risk_categories or cat in self.prohibited_categories:
            return RiskLevel.HIGH
        legacy = {DocumentKind.TAX_REGISTRATION, DocumentKind.ORGANISATION_CODE} & set(kinds)
        if DocumentKind.PASSPORT in kinds or (merchant_type == "enterprise" and legacy):
            return RiskLevel.MEDIUM
        return RiskLevel.LOW


def normalise(category: str) -> str:
    return category.strip().lower().replace(" ", "_").replace("-", "_")


def stable_bucket(application_id: str, buckets: int = 5) -> int:
    """The same number for the same application in every process (unlike `hash`)."""
    digest = hashlib.sha256(application_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


# --- tables ----------------------------------------------------------------------------------


class CaseStatus(StrEnum):
    OPEN = "open"
    IN_REVIEW = "in_review"
    DECIDED = "decided"
    CLOSED = "closed"


class SurveyStatus(StrEnum):
    REQUESTED = "requested"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class ReviewCaseRow(SQLModel, table=True):
    __tablename__ = "review_cases"

    case_id: str = Field(primary_key=True)
    application_id: str = Field(index=True, unique=True)
    round: int
    status: str = Field(index=True)
    risk_level: str
    merchant_name: str
    merchant_type: str
    channel: str
    business_category: str
    document_kinds: str = "[]"  # JSON list of kinds: never the documents' numbers
    reviewer: str = ""
    escalation_level: int = 0
    close_reason: str = ""
    opened_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)  # when the current round (re)opened


class ReviewDecisionRow(SQLModel, table=True):
    __tablename__ = "review_decisions"
    __table_args__ = (UniqueConstraint("case_id", "round", name="uq_review_decision_round"),)

    decision_id: str = Field(primary_key=True)
    case_id: str = Field(index=True)
    round: int
    outcome: str
    required_documents: str = "[]"
    reasons: str = "[]"
    reviewer: str
    decided_at: datetime = Field(default_factory=_now)

    def message(self) -> ReviewDecision:
        return ReviewDecision(
            decision_id=self.decision_id,
            case_id=self.case_id,
            round=self.round,
            outcome=ReviewOutcome(self.outcome),
            required_documents=[DocumentKind(k) for k in json.loads(self.required_documents)],
            reasons=json.loads(self.reasons),
            reviewer=self.reviewer,
        )


class ReviewSurveyRow(SQLModel, table=True):
    __tablename__ = "review_surveys"

    survey_id: str = Field(primary_key=True)
    case_id: str = Field(index=True)
    round: int
    address: str  # JSON of the Address
    status: str = Field(index=True)
    passed: bool | None = None
    surveyor: str = ""
    notes: str = ""
    requested_at: datetime = Field(default_factory=_now)
    completed_at: datetime | None = None


class ReviewEscalationRow(SQLModel, table=True):
    __tablename__ = "review_escalations"

    escalation_id: str = Field(primary_key=True)
    case_id: str = Field(index=True)
    round: int
    level: int
    overdue_since: datetime
    created_at: datetime = Field(default_factory=_now)


class RebindingStatus(StrEnum):
    OPEN = "open"
    DECIDED = "decided"


class RebindingReviewRow(SQLModel, table=True):
    """A merchant's new settlement account under review; decided once."""

    __tablename__ = "review_rebindings"

    case_id: str = Field(primary_key=True)
    mid: str = Field(index=True)
    application_id: str = ""
    merchant_name: str
    holder_name: str
    bank_name: str
    account_kind: str
    account_last4: str  # never more of the number
    status: str = Field(default=RebindingStatus.OPEN.value, index=True)
    approved: bool | None = None
    reasons: str = "[]"
    reviewer: str = ""
    decision_id: str | None = None
    opened_at: datetime = Field(default_factory=_now, index=True)
    decided_at: datetime | None = None


TABLES: list[type[SQLModel]] = [
    ReviewCaseRow,
    ReviewDecisionRow,
    ReviewSurveyRow,
    ReviewEscalationRow,
    RebindingReviewRow,
]


# --- requests and views ----------------------------------------------------------------------


class OpenCaseRequest(Model):
    """`schemas.steps.OpenReviewCase` without its idempotency key (that travels as a header)."""

    application_id: str = PydanticField(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    round: int = PydanticField(ge=1)
    merchant_name: str = PydanticField(min_length=1, max_length=120)
    merchant_type: str = PydanticField(min_length=1, max_length=40)
    channel: str = PydanticField(min_length=1, max_length=40)
    business_category: str = PydanticField(max_length=60)
    documents: list[Document] = PydanticField(default_factory=list)
    # Every step carries it; an application's review is before go-live, so never a merchant's.
    merchant_id: None = None


class AssignRequest(Model):
    reviewer: str = PydanticField(min_length=1, max_length=80)


class DecisionRequest(Model):
    decision: ReviewOutcome
    required_documents: list[DocumentKind] = PydanticField(default_factory=list)
    reasons: list[str] = PydanticField(default_factory=list)
    reviewer: str = PydanticField(min_length=1, max_length=80)


class SurveyRequest(Model):
    address: Address
    application_id: str | None = None  # when given, checked against the case's


class SurveyResultRequest(Model):
    passed: bool
    surveyor: str = PydanticField(min_length=1, max_length=80)
    notes: str = PydanticField(default="", max_length=1000)


class EscalationRequest(Model):
    level: int = PydanticField(ge=1, le=2)
    round: int = PydanticField(ge=1)
    overdue_since: datetime
    application_id: str | None = None


class CloseRequest(Model):
    reason: str = PydanticField(min_length=1, max_length=500)
    application_id: str | None = None


class OpenRebindingRequest(Model):
    """`schemas.steps.OpenRebindingReview` without its key. The MID is `merchant_id`; the step's
    `mid`, when sent as well, must be the same."""

    merchant_id: str | None = PydanticField(default=None, pattern=MID_PATTERN)
    mid: str | None = PydanticField(default=None, pattern=MID_PATTERN)
    application_id: str | None = PydanticField(default=None, max_length=80)
    merchant_name: str = PydanticField(min_length=1, max_length=120)
    holder_name: str = PydanticField(min_length=1, max_length=120)
    bank_name: str = PydanticField(min_length=1, max_length=80)
    account_kind: str = PydanticField(min_length=1, max_length=40)
    account_last4: str = PydanticField(min_length=1, max_length=4)

    def merchant(self) -> str:
        if self.merchant_id and self.mid and self.merchant_id != self.mid:
            raise ServiceError(
                422,
                "invalid_request",
                "merchant_id and mid name different merchants",
                {"mid": "must equal merchant_id"},
            )
        mid = self.merchant_id or self.mid
        if not mid:
            raise ServiceError(
                422,
                "invalid_request",
                "the merchant's MID is required",
                {"merchant_id": "the merchant's MID is required"},
            )
        return mid


class RebindingDecisionRequest(Model):
    approved: bool
    reasons: list[str] = PydanticField(default_factory=list, max_length=20)
    reviewer: str = PydanticField(min_length=1, max_length=80)


class RebindingReviewView(Model):
    case_id: str
    merchant_id: str
    application_id: str
    merchant_name: str
    holder_name: str
    bank_name: str
    account_kind: str
    account_last4: str
    status: RebindingStatus
    approved: bool | None
    reasons: list[str]
    reviewer: str
    decision_id: str | None
    opened_at: datetime
    decided_at: datetime | None


class RebindingReviewList(Model):
    reviews: list[RebindingReviewView]


class SurveyView(Model):
    survey_id: str
    case_id: str
    round: int
    status: SurveyStatus
    address: Address
    passed: bool | None
    surveyor: str
    notes: str
    requested_at: datetime
    completed_at: datetime | None


class EscalationView(Model):
    escalation_id: str
    round: int
    level: int
    overdue_since: datetime
    created_at: datetime


class DecisionView(Model):
    decision: ReviewDecision
    decided_at: datetime


class CaseView(Model):
    case_id: str
    application_id: str
    round: int
    status: CaseStatus
    risk_level: RiskLevel
    merchant_name: str
    merchant_type: str
    channel: str
    business_category: str
    document_kinds: list[DocumentKind]
    reviewer: str
    escalation_level: int
    close_reason: str
    opened_at: datetime
    updated_at: datetime
    decisions: list[DecisionView] = PydanticField(default_factory=list)
    surveys: list[SurveyView] = PydanticField(default_factory=list)
    escalations: list[EscalationView] = PydanticField(default_factory=list)


class CaseList(Model):
    cases: list[CaseView]


def _survey_view(row: ReviewSurveyRow) -> SurveyView:
    return SurveyView(
        survey_id=row.survey_id,
        case_id=row.case_id,
        round=row.round,
        status=SurveyStatus(row.status),
        address=Address.model_validate_json(row.address),
        passed=row.passed,
        surveyor=row.surveyor,
        notes=row.notes,
        requested_at=_utc(row.requested_at),
        completed_at=_utc(row.completed_at) if row.completed_at else None,
    )


def case_view(session: Session, row: ReviewCaseRow, *, details: bool = True) -> CaseView:
    view = CaseView(
        case_id=row.case_id,
        application_id=row.application_id,
        round=row.round,
        status=CaseStatus(row.status),
        risk_level=RiskLevel(row.risk_level),
        merchant_name=row.merchant_name,
        merchant_type=row.merchant_type,
        channel=row.channel,
        business_category=row.business_category,
        document_kinds=[DocumentKind(k) for k in json.loads(row.document_kinds)],
        reviewer=row.reviewer,
        escalation_level=row.escalation_level,
        close_reason=row.close_reason,
        opened_at=_utc(row.opened_at),
        updated_at=_utc(row.updated_at),
    )
    if details:
        decisions = session.exec(
            select(ReviewDecisionRow)
            .where(ReviewDecisionRow.case_id == row.case_id)
            .order_by(col(ReviewDecisionRow.round))
        ).all()
        view.decisions = [
            DecisionView(decision=d.message(), decided_at=_utc(d.decided_at)) for d in decisions
        ]
        surveys = session.exec(
            select(ReviewSurveyRow)
            .where(ReviewSurveyRow.case_id == row.case_id)
            .order_by(col(ReviewSurveyRow.requested_at))
        ).all()
        view.surveys = [_survey_view(s) for s in surveys]
        escalations = session.exec(
            select(ReviewEscalationRow)
            .where(ReviewEscalationRow.case_id == row.case_id)
            .order_by(col(ReviewEscalationRow.created_at))
        ).all()
        view.escalations = [
            EscalationView(
                escalation_id=e.escalation_id,
                round=e.round,
                level=e.level,
                overdue_since=_utc(e.overdue_since),
                created_at=_utc(e.created_at),
            )
            for e in escalations
        ]
    return view


# --- the rules, shared by the endpoints and the auto-reviewer --------------------------------


def _case(session: Session, case_id: str) -> ReviewCaseRow:
    row = session.get(ReviewCaseRow, case_id)
    if row is None:
        raise ServiceError(404, "case_not_found", f"no review case {case_id}", {"case_id": case_id})
    return row


def _check_application(row: ReviewCaseRow, application_id: str | None) -> None:
    if application_id is not None and application_id != row.application_id:
        raise ServiceError(
            409,
            "case_mismatch",
            f"review case {row.case_id} belongs to another application",
            {"application_id": "does not match the case"},
        )


def _refuse_closed(row: ReviewCaseRow) -> None:
    if row.status == CaseStatus.CLOSED:
        raise ServiceError(409, "case_closed", f"review case {row.case_id} is closed")


def _pending_survey(session: Session, case_id: str) -> ReviewSurveyRow | None:
    return session.exec(
        select(ReviewSurveyRow).where(
            ReviewSurveyRow.case_id == case_id, ReviewSurveyRow.status == SurveyStatus.REQUESTED
        )
    ).first()


def open_case(session: Session, rules: ReviewRules, request: OpenCaseRequest) -> ReviewCaseOpened:
    """Open the application's case, or reopen it for a later round (same case id)."""
    kinds = [d.kind for d in request.documents]
    risk = rules.risk_level(request.merchant_type, request.business_category, kinds)
    row = session.exec(
        select(ReviewCaseRow).where(ReviewCaseRow.application_id == request.application_id)
    ).first()
    if row is None:
        row = ReviewCaseRow(
            case_id=_new_id("rc"),
            application_id=request.application_id,
            round=0,
            status=CaseStatus.OPEN,
            risk_level=risk,
            merchant_name="",
            merchant_type="",
            channel="",
            business_category="",
        )
    else:
        _refuse_closed(row)
        if request.round < row.round:
            raise ServiceError(
                409,
                "stale_round",
                f"review case {row.case_id} is already in round {row.round}",
                {"round": f"must be at least {row.round}"},
            )
        if request.round == row.round:
            return ReviewCaseOpened(case_id=row.case_id, risk_level=RiskLevel(row.risk_level))
    row.round = request.round
    row.status = CaseStatus.OPEN
    row.risk_level = risk
    row.reviewer = ""
    row.escalation_level = 0
    row.merchant_name = request.merchant_name
    row.merchant_type = request.merchant_type
    row.channel = request.channel
    row.business_category = request.business_category
    row.document_kinds = json.dumps([k.value for k in kinds])
    row.updated_at = _now()
    session.add(row)
    log.info(
        "review_case_opened",
        case_id=row.case_id,
        application_id=row.application_id,
        round=row.round,
        risk_level=risk.value,
    )
    return ReviewCaseOpened(case_id=row.case_id, risk_level=risk)


def decide(session: Session, case_id: str, request: DecisionRequest) -> ReviewDecision:
    """Record the current round's decision and queue its callback."""
    row = _case(session, case_id)
    _refuse_closed(row)
    if row.status == CaseStatus.DECIDED:
        raise ServiceError(
            409, "already_decided", f"round {row.round} of case {case_id} is already decided"
        )
    if _pending_survey(session, case_id) is not None:
        raise ServiceError(
            409, "survey_pending", f"case {case_id} waits for its site survey before a decision"
        )
    try:
        decision = ReviewDecision(
            decision_id=_new_id("rd"),
            case_id=case_id,
            round=row.round,
            outcome=request.decision,
            required_documents=request.required_documents,
            reasons=request.reasons,
            reviewer=request.reviewer,
        )
    except ValidationError as err:
        fields = {".".join(str(p) for p in e["loc"]) or "decision": e["msg"] for e in err.errors()}
        raise ServiceError(422, "invalid_decision", "the decision is incomplete", fields) from err
    session.add(
        ReviewDecisionRow(
            decision_id=decision.decision_id,
            case_id=case_id,
            round=decision.round,
            outcome=decision.outcome.value,
            required_documents=json.dumps([k.value for k in decision.required_documents]),
            reasons=json.dumps(decision.reasons),
            reviewer=decision.reviewer,
        )
    )
    row.status = CaseStatus.DECIDED
    row.reviewer = decision.reviewer
    session.add(row)
    path = callback_path(row.application_id, "review-decision")
    enqueue_callback(session, NAME, path, decision)
    log.info(
        "review_decided",
        case_id=case_id,
        application_id=row.application_id,
        round=decision.round,
        outcome=decision.outcome.value,
        reviewer=decision.reviewer,
    )
    return decision


def complete_survey(
    session: Session, survey_id: str, request: SurveyResultRequest
) -> SiteSurveyResult:
    """Record a survey's result and queue its callback."""
    survey = session.get(ReviewSurveyRow, survey_id)
    if survey is None:
        raise ServiceError(404, "survey_not_found", f"no site survey {survey_id}")
    if survey.status != SurveyStatus.REQUESTED:
        raise ServiceError(
            409, f"survey_{survey.status}", f"site survey {survey_id} is {survey.status}"
        )
    row = _case(session, survey.case_id)
    result = SiteSurveyResult(
        event_id=str(uuid.uuid4()),
        survey_id=survey_id,
        passed=request.passed,
        surveyor=request.surveyor,
        notes=request.notes,
    )
    survey.status = SurveyStatus.COMPLETED
    survey.passed = request.passed
    survey.surveyor = request.surveyor
    survey.notes = request.notes
    survey.completed_at = _now()
    session.add(survey)
    enqueue_callback(session, NAME, callback_path(row.application_id, "site-survey"), result)
    log.info(
        "site_survey_completed",
        survey_id=survey_id,
        case_id=row.case_id,
        application_id=row.application_id,
        passed=request.passed,
    )
    return result


def request_survey(session: Session, case_id: str, request: SurveyRequest) -> SiteSurveyRequested:
    """Ask for an on-site survey of the premises; a case has at most one pending at a time."""
    row = _case(session, case_id)
    _check_application(row, request.application_id)
    _refuse_closed(row)
    pending = _pending_survey(session, case_id)
    if pending is not None:
        return SiteSurveyRequested(survey_id=pending.survey_id)
    survey = ReviewSurveyRow(
        survey_id=_new_id("sv"),
        case_id=case_id,
        round=row.round,
        address=request.address.model_dump_json(),
        status=SurveyStatus.REQUESTED,
    )
    session.add(survey)
    log.info("site_survey_requested", survey_id=survey.survey_id, case_id=case_id)
    return SiteSurveyRequested(survey_id=survey.survey_id)


def escalate(session: Session, case_id: str, request: EscalationRequest) -> Escalated:
    row = _case(session, case_id)
    _check_application(row, request.application_id)
    _refuse_closed(row)
    escalation = ReviewEscalationRow(
        escalation_id=_new_id("es"),
        case_id=case_id,
        round=request.round,
        level=request.level,
        overdue_since=request.overdue_since,
    )
    row.escalation_level = max(row.escalation_level, request.level)
    session.add(escalation)
    session.add(row)
    log.warning(
        "review_escalated",
        case_id=case_id,
        application_id=row.application_id,
        round=request.round,
        level=request.level,
    )
    return Escalated(escalation_id=escalation.escalation_id)


def close_case(session: Session, case_id: str, request: CloseRequest) -> Undone:
    """Close the case and cancel its pending survey; closing a closed case changes nothing."""
    row = _case(session, case_id)
    _check_application(row, request.application_id)
    if row.status == CaseStatus.CLOSED:
        return Undone(reference=case_id, detail=f"already closed: {row.close_reason}")
    row.status = CaseStatus.CLOSED
    row.close_reason = request.reason
    row.updated_at = _now()
    session.add(row)
    pending = _pending_survey(session, case_id)
    if pending is not None:
        pending.status = SurveyStatus.CANCELLED
        session.add(pending)
    log.info("review_case_closed", case_id=case_id, application_id=row.application_id)
    return Undone(reference=case_id, detail=f"closed: {request.reason}")


# --- rebinding reviews (after go-live) -------------------------------------------------------


def rebinding_view(row: RebindingReviewRow) -> RebindingReviewView:
    return RebindingReviewView(
        case_id=row.case_id,
        merchant_id=row.mid,
        application_id=row.application_id,
        merchant_name=row.merchant_name,
        holder_name=row.holder_name,
        bank_name=row.bank_name,
        account_kind=row.account_kind,
        account_last4=row.account_last4,
        status=RebindingStatus(row.status),
        approved=row.approved,
        reasons=json.loads(row.reasons),
        reviewer=row.reviewer,
        decision_id=row.decision_id,
        opened_at=_utc(row.opened_at),
        decided_at=_utc(row.decided_at) if row.decided_at else None,
    )


def _rebinding(session: Session, case_id: str) -> RebindingReviewRow:
    row = session.get(RebindingReviewRow, case_id)
    if row is None:
        raise ServiceError(
            404, "case_not_found", f"no rebinding review {case_id}", {"case_id": case_id}
        )
    return row


def open_rebinding(session: Session, request: OpenRebindingRequest) -> RebindingReviewOpened:
    row = RebindingReviewRow(
        case_id=f"RB-{uuid.uuid4().hex}",
        mid=request.merchant(),
        application_id=request.application_id or "",
        merchant_name=request.merchant_name,
        holder_name=request.holder_name,
        bank_name=request.bank_name,
        account_kind=request.account_kind,
        account_last4=request.account_last4,
    )
    session.add(row)
    log.info("rebinding_review_opened", case_id=row.case_id, mid=row.mid)
    return RebindingReviewOpened(case_id=row.case_id)


def decide_rebinding(
    session: Session, case_id: str, request: RebindingDecisionRequest
) -> RebindingDecision:
    """Approve or refuse the new account, once, and queue the decision to the merchant's route."""
    row = _rebinding(session, case_id)
    if row.status != RebindingStatus.OPEN:
        raise ServiceError(409, "already_decided", f"rebinding review {case_id} is already decided")
    if not request.approved and not request.reasons:
        raise ServiceError(
            422,
            "invalid_decision",
            "a refusal must give its reasons",
            {"reasons": "a refusal must give its reasons"},
        )
    try:
        decision = RebindingDecision(
            decision_id=_new_id("rd"),
            case_id=case_id,
            approved=request.approved,
            reasons=request.reasons,
            reviewer=request.reviewer,
        )
    except ValidationError as err:
        fields = {".".join(str(p) for p in e["loc"]) or "decision": e["msg"] for e in err.errors()}
        raise ServiceError(422, "invalid_decision", "the decision is incomplete", fields) from err
    # Only while still open: a reviewer and the auto-reviewer never both decide and call back.
    result = session.execute(
        update(RebindingReviewRow)
        .where(
            col(RebindingReviewRow.case_id) == case_id,
            col(RebindingReviewRow.status) == RebindingStatus.OPEN.value,
        )
        .values(
            status=RebindingStatus.DECIDED.value,
            approved=decision.approved,
            reasons=json.dumps(decision.reasons),
            reviewer=decision.reviewer,
            decision_id=decision.decision_id,
            decided_at=_now(),
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise ServiceError(409, "already_decided", f"rebinding review {case_id} is already decided")
    path = merchant_callback_path(row.mid, "rebinding-decision")
    enqueue_callback(session, NAME, path, decision)
    log.info(
        "rebinding_decided",
        case_id=case_id,
        mid=row.mid,
        approved=decision.approved,
        reviewer=decision.reviewer,
    )
    return decision


# --- the auto-reviewer -----------------------------------------------------------------------


def auto_decision(rules: ReviewRules, row: ReviewCaseRow) -> DecisionRequest:
    """What the demo's auto-reviewer decides for a case."""
    if rules.prohibited(row.business_category):
        return DecisionRequest(
            decision=ReviewOutcome.REJECTED,
            reasons=[f"business category {row.business_category} is not accepted"],
            reviewer=AUTO_REVIEWER,
        )
    if row.round == 1 and stable_bucket(row.application_id) == 0:
        return DecisionRequest(
            decision=ReviewOutcome.NEEDS_MORE_INFO,
            required_documents=[DocumentKind.PREMISES_PHOTOS],
            reasons=["photos do not show the shop front"],
            reviewer=AUTO_REVIEWER,
        )
    return DecisionRequest(decision=ReviewOutcome.APPROVED, reviewer=AUTO_REVIEWER)


def auto_rebinding_decision(row: RebindingReviewRow) -> RebindingDecisionRequest:
    """What the demo's auto-reviewer decides for a new settlement account."""
    if REFUSE_MARKER in row.holder_name:
        return RebindingDecisionRequest(
            approved=False,
            reasons=["the account holder's name does not match the merchant"],
            reviewer=AUTO_REVIEWER,
        )
    return RebindingDecisionRequest(approved=True, reviewer=AUTO_REVIEWER)


def auto_review_once(service: Service, rules: ReviewRules) -> int:
    """Complete surveys and decide cases that have waited the delay; returns how many acted on."""
    cutoff = _now() - rules.auto_delay
    done = 0
    with service.session() as session:
        surveys = session.exec(
            select(ReviewSurveyRow)
            .where(ReviewSurveyRow.status == SurveyStatus.REQUESTED)
            .order_by(col(ReviewSurveyRow.requested_at))
        ).all()
        for survey in surveys:
            if _utc(survey.requested_at) <= cutoff:
                complete_survey(
                    session,
                    survey.survey_id,
                    SurveyResultRequest(passed=True, surveyor=AUTO_SURVEYOR),
                )
                session.commit()
                done += 1
    with service.session() as session:
        cases = session.exec(
            select(ReviewCaseRow)
            .where(ReviewCaseRow.status == CaseStatus.OPEN)
            .order_by(col(ReviewCaseRow.updated_at))
        ).all()
        for row in cases:
            if not _ready(session, row, cutoff):
                continue
            try:
                decide(session, row.case_id, auto_decision(rules, row))
                session.commit()
                done += 1
            except ServiceError as err:
                # A reviewer got there first: theirs stands.
                session.rollback()
                log.info("auto_review_skipped", case_id=row.case_id, reason=err.error)
            except IntegrityError:
                session.rollback()
                log.info("auto_review_skipped", case_id=row.case_id, reason="decided concurrently")
    with service.session() as session:
        rebindings = session.exec(
            select(RebindingReviewRow)
            .where(
                RebindingReviewRow.status == RebindingStatus.OPEN.value,
                col(RebindingReviewRow.opened_at) <= cutoff,
            )
            .order_by(col(RebindingReviewRow.opened_at))
            .limit(50)
        ).all()
        for rebinding in rebindings:
            case_id = rebinding.case_id
            try:
                decide_rebinding(session, case_id, auto_rebinding_decision(rebinding))
                session.commit()
                done += 1
            except ServiceError as err:
                session.rollback()  # a reviewer got there first: theirs stands
                log.info("auto_review_skipped", case_id=case_id, reason=err.error)
    return done


def _ready(session: Session, row: ReviewCaseRow, cutoff: datetime) -> bool:
    """Idle for the delay since it (re)opened and since its last survey, with none pending; a
    high-risk case only once surveyed (the process asks for the survey after opening the case, and
    under load that request can come later than the delay)."""
    if _utc(row.updated_at) > cutoff:
        return False
    surveys = session.exec(
        select(ReviewSurveyRow).where(ReviewSurveyRow.case_id == row.case_id)
    ).all()
    if row.risk_level == RiskLevel.HIGH and not any(s.completed_at for s in surveys):
        return False
    for survey in surveys:
        if survey.status == SurveyStatus.REQUESTED:
            return False
        if survey.completed_at is not None and _utc(survey.completed_at) > cutoff:
            return False
    return True


def auto_reviewer(rules: ReviewRules) -> Callable[[Service], Coroutine[Any, Any, None]]:
    async def job(service: Service) -> None:
        poll = min(max(rules.auto_delay.total_seconds() / 4, 0.02), 0.5)
        log.info("auto_reviewer_started", delay_ms=rules.auto_delay.total_seconds() * 1000)
        while True:
            try:
                await asyncio.to_thread(auto_review_once, service, rules)
            except Exception:
                log.exception("auto_reviewer_failed")
            await asyncio.sleep(poll)

    return job


# --- the app ---------------------------------------------------------------------------------

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def _write(
    service: Service,
    key: str | None,
    payload: dict[str, Any],
    write: Callable[[Session], BaseModel],
    status_code: int = 200,
) -> JSONResponse:
    with service.session() as session:
        try:
            return idempotent(
                session, NAME, key, payload, lambda: write(session), status_code=status_code
            )
        except IntegrityError as err:
            session.rollback()
            raise ServiceError(
                409, "conflict", "a concurrent request changed this case; read it and retry"
            ) from err


def _routes(rules: ReviewRules) -> Callable[[Service], None]:
    def setup(service: Service) -> None:
        app = service.app

        @app.post("/cases")
        def open_review_case(body: OpenCaseRequest, key: IdempotencyKey = None) -> JSONResponse:
            payload = body.model_dump(mode="json", exclude={"merchant_id"})
            return _write(service, key, payload, lambda s: open_case(s, rules, body))

        @app.get("/cases")
        def list_cases(
            status: CaseStatus | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 100
        ) -> CaseList:
            with service.session() as session:
                query = select(ReviewCaseRow)
                if status is not None:
                    query = query.where(ReviewCaseRow.status == status)
                rows = session.exec(
                    query.order_by(col(ReviewCaseRow.updated_at)).limit(limit)
                ).all()
                return CaseList(cases=[case_view(session, r, details=False) for r in rows])

        @app.get("/cases/{case_id}")
        def get_case(case_id: str) -> CaseView:
            with service.session() as session:
                return case_view(session, _case(session, case_id))

        @app.post("/cases/{case_id}/assign")
        def assign(case_id: str, body: AssignRequest, key: IdempotencyKey = None) -> JSONResponse:
            def write(session: Session) -> CaseView:
                row = _case(session, case_id)
                _refuse_closed(row)
                if row.status == CaseStatus.DECIDED:
                    raise ServiceError(409, "already_decided", f"case {case_id} is decided")
                row.status = CaseStatus.IN_REVIEW
                row.reviewer = body.reviewer
                session.add(row)
                return case_view(session, row)

            payload = {"case_id": case_id, **body.model_dump(mode="json")}
            return _write(service, key, payload, write)

        @app.post("/cases/{case_id}/decision")
        def decision(
            case_id: str, body: DecisionRequest, key: IdempotencyKey = None
        ) -> JSONResponse:
            payload = {"case_id": case_id, **body.model_dump(mode="json")}
            return _write(service, key, payload, lambda s: decide(s, case_id, body))

        @app.post("/cases/{case_id}/site-surveys")
        def site_survey(
            case_id: str, body: SurveyRequest, key: IdempotencyKey = None
        ) -> JSONResponse:
            payload = {"case_id": case_id, **body.model_dump(mode="json")}
            return _write(service, key, payload, lambda s: request_survey(s, case_id, body))

        @app.post("/surveys/{survey_id}/result")
        def survey_result(
            survey_id: str, body: SurveyResultRequest, key: IdempotencyKey = None
        ) -> JSONResponse:
            payload = {"survey_id": survey_id, **body.model_dump(mode="json")}
            return _write(service, key, payload, lambda s: complete_survey(s, survey_id, body))

        @app.post("/cases/{case_id}/escalations")
        def escalation(
            case_id: str, body: EscalationRequest, key: IdempotencyKey = None
        ) -> JSONResponse:
            payload = {"case_id": case_id, **body.model_dump(mode="json")}
            return _write(service, key, payload, lambda s: escalate(s, case_id, body))

        @app.post("/cases/{case_id}/close")
        def close(case_id: str, body: CloseRequest, key: IdempotencyKey = None) -> JSONResponse:
            payload = {"case_id": case_id, **body.model_dump(mode="json")}
            return _write(service, key, payload, lambda s: close_case(s, case_id, body))

        @app.post("/rebinding-reviews", status_code=201, response_model=RebindingReviewOpened)
        def open_rebinding_review(
            body: OpenRebindingRequest, key: IdempotencyKey = None
        ) -> JSONResponse:
            payload = {"rebinding": body.model_dump(mode="json")}
            return _write(service, key, payload, lambda s: open_rebinding(s, body), 201)

        @app.get("/rebinding-reviews")
        def list_rebinding_reviews(
            status: RebindingStatus | None = None,
            merchant_id: str | None = None,
            limit: Annotated[int, Query(ge=1, le=500)] = 100,
        ) -> RebindingReviewList:
            with service.session() as session:
                query = select(RebindingReviewRow)
                if status is not None:
                    query = query.where(RebindingReviewRow.status == status.value)
                if merchant_id is not None:
                    query = query.where(RebindingReviewRow.mid == merchant_id)
                rows = session.exec(
                    query.order_by(col(RebindingReviewRow.opened_at)).limit(limit)
                ).all()
                return RebindingReviewList(reviews=[rebinding_view(r) for r in rows])

        @app.get("/rebinding-reviews/{case_id}")
        def get_rebinding_review(case_id: str) -> RebindingReviewView:
            with service.session() as session:
                return rebinding_view(_rebinding(session, case_id))

        @app.post("/rebinding-reviews/{case_id}/decision", response_model=RebindingDecision)
        def rebinding_decision(
            case_id: str, body: RebindingDecisionRequest, key: IdempotencyKey = None
        ) -> JSONResponse:
            payload = {"rebinding_case_id": case_id, **body.model_dump(mode="json")}
            return _write(service, key, payload, lambda s: decide_rebinding(s, case_id, body))

    return setup


def build(config: ServiceConfig | None = None) -> Service:
    """The review service; its auto-reviewer runs only when switched on (see the module doc)."""
    config = config or ServiceConfig.from_env(NAME)
    rules = ReviewRules.from_config(config)
    return create_service(
        config,
        tables=TABLES,
        setup=_routes(rules),
        background=[auto_reviewer(rules)] if rules.auto_review else [],
    )
