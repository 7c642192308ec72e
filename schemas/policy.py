"""The channel policy: every deadline, reminder, SLA and limit the workflow obeys.

The workflow hard-codes no duration: each comes from the policy that starts with the
application. Channels have defaults here; the timings can be overridden per application (within
`PolicyOverrides`' bounds), which is how a demo runs a month-long process in seconds. The
business rules (which risk levels need a site survey, the deposit) are the channel's: an
override may ask for more site surveys, never fewer, and cannot touch the deposit.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from schemas.application import Channel, Model
from schemas.channels import PROFILES, ChannelProfile, TrainingNeed


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class MerchantPolicy(Model):
    """After go-live (the `MerchantAccount` workflow): the fee schedule, inspections, terminal
    swaps, re-binding and closure. Captured with the application: a change to a channel's
    schedule changes merchants who go live afterwards, never a running account on replay."""

    # Fees (年费 / 服务费): one bill per billing period from go-live (each anniversary), the annual
    # fee plus the service fee for each terminal in service. Money is yuan with two places.
    annual_fee: Decimal = Field(default=Decimal("0.00"), ge=0, decimal_places=2)
    service_fee_per_terminal: Decimal = Field(default=Decimal("0.00"), ge=0, decimal_places=2)
    billing_period: timedelta = timedelta(days=365)
    payment_period: timedelta = timedelta(days=30)  # from the bill to its due date
    fee_reminders: list[timedelta] = Field(
        default_factory=lambda: [timedelta(days=7), timedelta(days=21)]
    )  # offsets from the bill, before the due date
    grace_period: timedelta = timedelta(days=15)  # past the due date: then acquiring is suspended
    # A merchant suspended this long (fees unpaid, inspection not passed) is closed (撤机).
    suspension_limit: timedelta = timedelta(days=90)

    # Inspections (巡检): how often by risk level; the result is due within inspection_deadline;
    # a failed one gives remediation_period to put things right before the re-inspection.
    inspection_intervals: dict[RiskLevel, timedelta] = Field(
        default_factory=lambda: {
            RiskLevel.LOW: timedelta(days=365),
            RiskLevel.MEDIUM: timedelta(days=180),
            RiskLevel.HIGH: timedelta(days=90),
        }
    )
    inspection_deadline: timedelta = timedelta(days=14)
    remediation_period: timedelta = timedelta(days=30)

    # Terminal swaps (换机) and more terminals: the replacement keeps the faulty unit's TID when
    # tid_moves_on_swap, else gets a new one (the old TID is retired, never reused).
    tid_moves_on_swap: bool = True
    # Re-binding (重新绑定): whether a new settlement account is reviewed before it is bound.
    rebinding_review: bool = False
    rebinding_review_deadline: timedelta = timedelta(days=5)

    # The contract's term from go-live: the account closes at its end (合同到期).
    contract_term: timedelta = timedelta(days=3 * 365)

    # Continue-as-new when Temporal suggests it, or past this many history events.
    history_limit: int = Field(default=5000, ge=200, le=40000)

    @model_validator(mode="after")
    def _periods_are_coherent(self) -> MerchantPolicy:
        for offset in self.fee_reminders:
            if not timedelta(0) < offset < self.payment_period:
                raise ValueError("fee_reminders must fall between the bill and its due date")
        missing = [level.value for level in RiskLevel if level not in self.inspection_intervals]
        if missing:
            raise ValueError(f"inspection_intervals must give every risk level: {missing}")
        return self

    def inspection_interval(self, risk: RiskLevel) -> timedelta:
        return self.inspection_intervals[risk]


class Policy(Model):
    channel: Channel

    # Document collection (准备申请资料): reminders are offsets from the start of collection.
    document_deadline: timedelta = timedelta(days=30)
    document_reminders: list[timedelta] = Field(
        default_factory=lambda: [timedelta(days=3), timedelta(days=7), timedelta(days=14)]
    )

    # Review (审核): escalate at the SLA; at the hard deadline escalate again and flag it.
    review_sla: timedelta = timedelta(days=5)
    review_deadline: timedelta = timedelta(days=14)
    # In working days on the mainland calendar when the channel says so: the workflow has them
    # computed once when the review opens (the result is in its history); the calendar durations
    # above then serve only when the calendar cannot be read.
    review_sla_working_days: int | None = Field(default=None, ge=1, le=60)
    review_deadline_working_days: int | None = Field(default=None, ge=1, le=120)
    max_review_rounds: int = Field(default=3, ge=1, le=10)
    site_survey_risk_levels: list[RiskLevel] = Field(default_factory=lambda: [RiskLevel.HIGH])
    site_survey_deadline: timedelta = timedelta(days=10)

    # Contract and fees (签署合同 / 缴纳费用).
    contract_deadline: timedelta = timedelta(days=15)
    contract_reminders: list[timedelta] = Field(
        default_factory=lambda: [timedelta(days=2), timedelta(days=7)]
    )
    deposit_amount: Decimal = Field(default=Decimal("0"), ge=0, decimal_places=2)
    # The card rate (费率) the contract states, percent of a card payment.
    card_rate_percent: Decimal = Field(default=Decimal("0.60"), gt=0, le=5, decimal_places=2)

    # Delivery: past these the case is parked for attention.
    mail_delivery_deadline: timedelta = timedelta(days=7)
    installation_deadline: timedelta = timedelta(days=10)
    pick_up_deadline: timedelta = timedelta(days=14)  # collected at a branch (领取)

    # Activation and training: reminders, then attention when overdue.
    activation_deadline: timedelta = timedelta(days=7)
    activation_reminders: list[timedelta] = Field(
        default_factory=lambda: [timedelta(days=1), timedelta(days=3)]
    )
    training_deadline: timedelta = timedelta(days=7)
    training_reminders: list[timedelta] = Field(default_factory=lambda: [timedelta(days=2)])
    # The channel's training (操作培训): required before go-live, in this many sessions; where it
    # is optional the merchant goes live after activation with the guide.
    training_required: bool = True
    training_sessions: int = Field(default=1, ge=1, le=5)

    # How hard a step tries before it parks the application for an admin.
    activity_timeout: timedelta = timedelta(seconds=30)
    activity_retry_interval: timedelta = timedelta(seconds=1)
    activity_retry_max_interval: timedelta = timedelta(seconds=60)
    activity_max_attempts: int = Field(default=5, ge=1, le=100)

    # After go-live.
    merchant: MerchantPolicy = Field(default_factory=MerchantPolicy)

    @model_validator(mode="after")
    def _deadlines_are_coherent(self) -> Policy:
        if self.review_sla > self.review_deadline:
            raise ValueError("review_sla must not be later than review_deadline")
        for name in ("document", "contract", "activation", "training"):
            deadline: timedelta = getattr(self, f"{name}_deadline")
            for offset in getattr(self, f"{name}_reminders"):
                if not timedelta(0) < offset < deadline:
                    raise ValueError(
                        f"{name}_reminders must fall between the start and {name}_deadline"
                    )
        return self

    def requires_site_survey(self, risk: RiskLevel) -> bool:
        return risk in self.site_survey_risk_levels

    @property
    def deposit_due(self) -> bool:
        return self.deposit_amount > 0


def _channel_defaults(profile: ChannelProfile) -> dict[str, Any]:
    """A channel's policy defaults, from its profile (`schemas.channels`): the review deadlines,
    the deposit, and after go-live the fees and the re-binding review. Banks review longer and
    ask a deposit (押金); Lakala charges an annual fee (年费) besides; the platforms waive the
    deposit and charge a small service fee."""
    return {
        "review_sla": profile.review.sla,
        "review_deadline": profile.review.deadline,
        "review_sla_working_days": profile.review.sla_working_days,
        "review_deadline_working_days": profile.review.deadline_working_days,
        "deposit_amount": profile.fees.deposit,
        "card_rate_percent": profile.fees.card_rate_percent,
        "training_required": profile.training.need is TrainingNeed.REQUIRED,
        "training_sessions": profile.training.sessions,
        "merchant": {
            "annual_fee": profile.fees.annual_fee,
            "service_fee_per_terminal": profile.fees.service_fee_per_terminal,
            "rebinding_review": profile.review.rebinding_review,
        },
    }


_CHANNEL_DEFAULTS: dict[Channel, dict[str, Any]] = {
    channel: _channel_defaults(profile) for channel, profile in PROFILES.items()
}


# --- what a caller may override, and within which bounds ------------------------------------------

SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)
YEAR = timedelta(days=365)
MAX_REMINDERS = 20

# A deadline, SLA or reminder offset: a second (tests and demos) to a year. A zero or negative
# duration would fire at once; one past a year is a typo, and past about 10,000 years Temporal
# cannot even schedule the timer (the workflow task would fail for ever).
Deadline = Annotated[timedelta, Field(ge=SECOND, le=YEAR)]
Reminders = Annotated[list[Deadline], Field(max_length=MAX_REMINDERS)]


# After go-live a period may run to the contract's longest term (ten years).
LongPeriod = Annotated[timedelta, Field(ge=SECOND, le=10 * YEAR)]


class MerchantOverrides(Model):
    """The timings of `MerchantPolicy` one application may override (demos, tests): never a fee,
    and never the rules (re-binding review, TID moves)."""

    billing_period: LongPeriod | None = None
    payment_period: Deadline | None = None
    fee_reminders: Reminders | None = None
    grace_period: Deadline | None = None
    suspension_limit: Deadline | None = None
    inspection_intervals: dict[RiskLevel, LongPeriod] | None = None
    inspection_deadline: Deadline | None = None
    remediation_period: Deadline | None = None
    rebinding_review_deadline: Deadline | None = None
    contract_term: LongPeriod | None = None
    history_limit: int | None = Field(default=None, ge=200, le=40000)

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude_none=True)


class PolicyOverrides(Model):
    """The fields of a `Policy` one application may override (admins only, at the gateway), each
    within bounds Temporal and the process can live with. Every field is optional; an unknown
    field, the channel and the deposit are refused."""

    document_deadline: Deadline | None = None
    document_reminders: Reminders | None = None
    review_sla: Deadline | None = None
    review_deadline: Deadline | None = None
    max_review_rounds: int | None = Field(default=None, ge=1, le=10)
    # Only stricter than the channel's: the channel's levels must stay in the list.
    site_survey_risk_levels: list[RiskLevel] | None = Field(default=None, max_length=3)
    site_survey_deadline: Deadline | None = None
    contract_deadline: Deadline | None = None
    contract_reminders: Reminders | None = None
    mail_delivery_deadline: Deadline | None = None
    installation_deadline: Deadline | None = None
    pick_up_deadline: Deadline | None = None
    activation_deadline: Deadline | None = None
    activation_reminders: Reminders | None = None
    training_deadline: Deadline | None = None
    training_reminders: Reminders | None = None
    # One attempt of a step: a second to an hour. Retries: 10 ms to an hour apart, at most 100.
    activity_timeout: Annotated[timedelta, Field(ge=SECOND, le=HOUR)] | None = None
    activity_retry_interval: (
        Annotated[timedelta, Field(ge=timedelta(milliseconds=10), le=HOUR)] | None
    ) = None
    activity_retry_max_interval: (
        Annotated[timedelta, Field(ge=timedelta(milliseconds=10), le=HOUR)] | None
    ) = None
    activity_max_attempts: int | None = Field(default=None, ge=1, le=100)
    merchant: MerchantOverrides | None = None

    def given(self) -> dict[str, Any]:
        given = self.model_dump(exclude_unset=True, exclude_none=True)
        if self.merchant is not None:
            given["merchant"] = self.merchant.given()
        return given


def _refused(field: str, message: str) -> ValidationError:
    error = PydanticCustomError("policy_rule", message.replace("{", "(").replace("}", ")"))
    details: list[InitErrorDetails] = [{"type": error, "loc": (field,), "input": None}]
    return ValidationError.from_exception_data("PolicyOverrides", details)


def policy_for(
    channel: Channel, overrides: dict[str, Any] | PolicyOverrides | None = None
) -> Policy:
    """The channel's default policy with per-application overrides applied, each checked against
    `PolicyOverrides`' bounds and the channel's rules (ValidationError names the field)."""
    given = (
        overrides
        if isinstance(overrides, PolicyOverrides)
        else PolicyOverrides.model_validate(overrides or {})
    ).given()
    defaults: dict[str, Any] = {"channel": channel, **_CHANNEL_DEFAULTS[channel]}
    channel_rule = Policy.model_validate(defaults)
    levels = given.get("site_survey_risk_levels")
    if levels is not None and not set(channel_rule.site_survey_risk_levels) <= set(levels):
        kept = ", ".join(level.value for level in channel_rule.site_survey_risk_levels)
        raise _refused(
            "site_survey_risk_levels",
            f"may add risk levels to the channel's ({kept}), never leave one out",
        )
    if "review_sla" in given or "review_deadline" in given:
        # Review timings given as durations (a test, a demo) are what the application runs on.
        defaults["review_sla_working_days"] = defaults["review_deadline_working_days"] = None
    merchant = {**defaults.get("merchant", {}), **given.pop("merchant", {})}
    if "inspection_intervals" in merchant:  # the levels not named keep the channel's interval
        intervals = MerchantPolicy.model_validate(defaults.get("merchant", {})).inspection_intervals
        merchant["inspection_intervals"] = {**intervals, **merchant["inspection_intervals"]}
    if merchant:
        given["merchant"] = merchant
    policy = Policy.model_validate({**defaults, **given})
    if policy.activity_retry_max_interval < policy.activity_retry_interval:
        raise _refused(
            "activity_retry_max_interval", "must not be shorter than activity_retry_interval"
        )
    return policy
