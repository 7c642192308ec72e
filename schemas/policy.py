"""The channel policy: every deadline, reminder, SLA and limit the workflow obeys.

The workflow hard-codes no duration: each comes from the policy that starts with the
application. Channels have defaults here; any field can be overridden per application, which is
how a demo runs a month-long process in seconds.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

from schemas.application import Channel, Model


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


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
    max_review_rounds: int = Field(default=3, ge=1, le=10)
    site_survey_risk_levels: list[RiskLevel] = Field(default_factory=lambda: [RiskLevel.HIGH])
    site_survey_deadline: timedelta = timedelta(days=10)

    # Contract and fees (签署合同 / 缴纳费用).
    contract_deadline: timedelta = timedelta(days=15)
    contract_reminders: list[timedelta] = Field(
        default_factory=lambda: [timedelta(days=2), timedelta(days=7)]
    )
    deposit_amount: Decimal = Field(default=Decimal("0"), ge=0, decimal_places=2)

    # Delivery: past these the case is parked for attention.
    mail_delivery_deadline: timedelta = timedelta(days=7)
    installation_deadline: timedelta = timedelta(days=10)

    # Activation and training: reminders, then attention when overdue.
    activation_deadline: timedelta = timedelta(days=7)
    activation_reminders: list[timedelta] = Field(
        default_factory=lambda: [timedelta(days=1), timedelta(days=3)]
    )
    training_deadline: timedelta = timedelta(days=7)
    training_reminders: list[timedelta] = Field(default_factory=lambda: [timedelta(days=2)])

    # How hard a step tries before it parks the application for an admin.
    activity_timeout: timedelta = timedelta(seconds=30)
    activity_retry_interval: timedelta = timedelta(seconds=1)
    activity_retry_max_interval: timedelta = timedelta(seconds=60)
    activity_max_attempts: int = Field(default=5, ge=1, le=100)

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


_CHANNEL_DEFAULTS: dict[Channel, dict[str, Any]] = {
    # Banks review longer and ask a deposit (押金); platforms are quicker and waive it.
    Channel.BANK: {
        "review_sla": timedelta(days=7),
        "review_deadline": timedelta(days=21),
        "deposit_amount": Decimal("299.00"),
    },
    Channel.LAKALA: {
        "review_sla": timedelta(days=3),
        "review_deadline": timedelta(days=10),
        "deposit_amount": Decimal("99.00"),
    },
    Channel.TMALL: {"review_sla": timedelta(days=2), "review_deadline": timedelta(days=7)},
    Channel.ALIPAY: {"review_sla": timedelta(days=2), "review_deadline": timedelta(days=7)},
}


def policy_for(channel: Channel, overrides: dict[str, Any] | None = None) -> Policy:
    """The channel's default policy with per-application overrides applied (and validated)."""
    fields: dict[str, Any] = {"channel": channel, **_CHANNEL_DEFAULTS[channel], **(overrides or {})}
    return Policy.model_validate(fields)
