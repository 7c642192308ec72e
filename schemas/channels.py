"""The channel profiles: what each channel (bank, Lakala, Tmall, Alipay) asks and offers, as data.

One profile per channel, validated when this module is imported (a broken profile fails start-up
with the field named): the documents it asks beyond the common rules and its prerequisites, the
terminal models (and, for a bank, the banks) it offers, how terminals reach the merchant, its
fees and card rate, its training, and its review deadlines. The channel defaults of
`schemas.policy` are derived from these profiles, so no figure is stated twice.

Where the profiles differ, they follow the source texts (shared/seeds/):
- Tmall (天猫): only a merchant with a Tmall store applies (入驻天猫, from the store's back
  office); the terminal is mailed for the merchant to install, or installed by Tmall's team
  (自行安装 / 上门服务); "one or several" training sessions; a handling fee (手续费).
- Alipay (支付宝商家服务平台): the terminal is mailed (邮寄至商户指定地址) and set up by the
  merchant following the guide; no training is described beyond the guide.
- A bank (选择银行): the merchant chooses the bank, and one of several models (多种型号); the bank
  installs and debugs the terminal on site and trains the merchant (培训操作).
- Lakala (拉卡拉): a deposit (保证金), an annual fee and service fees (年费和服务费), the UnionPay
  standard card rate; the terminal is mailed, installed on site, or collected at a branch (领取).
- Everywhere: a regulated business category needs its industry licence (相关行业经营许可证).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator, model_validator

from schemas.application import Application, Channel, Fulfilment, MerchantType, Model
from schemas.documents import DocumentKind, FieldIssue, IssueCode

# --- regulated business categories -------------------------------------------------------------

# A regulated category needs its industry licence (相关行业经营许可证) on file, named here by the
# licence's own name. Categories are the review service's codes (lower case, snake case).
REGULATED_CATEGORIES: dict[str, str] = {
    "food": "食品经营许可证",
    "catering": "食品经营许可证（餐饮服务）",
    "pharmacy": "药品经营许可证",
    "medical_devices": "医疗器械经营许可证",
    "tobacco": "烟草专卖零售许可证",
    "alcohol": "酒类商品零售许可证",
}


def normalise_category(category: str) -> str:
    return category.strip().lower().replace("-", "_").replace(" ", "_")


# --- the parts of a profile --------------------------------------------------------------------


class DocumentRules(Model):
    """What a channel asks beyond the common rules (identity, licence, settlement account proof,
    premises photos of a physical shop, the tax and organisation-code certificates of an
    enterprise on a legacy licence: `activities.documents.required_documents`)."""

    # Further documents the channel asks of a merchant type (none of the four does today).
    extra: dict[MerchantType, list[DocumentKind]] = Field(default_factory=dict)
    # The categories whose industry licence (DocumentKind.INDUSTRY_LICENCE) the channel asks:
    # every one of REGULATED_CATEGORIES unless a profile says otherwise.
    industry_licence_categories: list[str] = Field(
        default_factory=lambda: list(REGULATED_CATEGORIES)
    )
    # Tmall: the application names the merchant's Tmall store (Application.tmall_store), checked
    # with the platform when the application is submitted.
    tmall_store: bool = False

    @field_validator("industry_licence_categories")
    @classmethod
    def _known_categories(cls, categories: list[str]) -> list[str]:
        unknown = [c for c in categories if c not in REGULATED_CATEGORIES]
        if unknown:
            raise ValueError(
                f"unknown regulated categories {unknown}: known are {sorted(REGULATED_CATEGORIES)}"
            )
        return categories

    @field_validator("extra")
    @classmethod
    def _no_industry_licence_for_all(
        cls, extra: dict[MerchantType, list[DocumentKind]]
    ) -> dict[MerchantType, list[DocumentKind]]:
        for kinds in extra.values():
            if DocumentKind.INDUSTRY_LICENCE in kinds:
                raise ValueError(
                    "the industry licence goes by category: industry_licence_categories"
                )
        return extra


class DeviceRules(Model):
    """The terminal models the channel offers (codes of the device service's catalogue) and, for
    a bank, the banks the merchant chooses from (选择银行; Application.acquiring_bank, which a
    bank application may leave out: the bank is then settled with the contract)."""

    models: list[str] = Field(min_length=1)
    banks: list[str] = Field(default_factory=list)

    @field_validator("models", "banks")
    @classmethod
    def _no_repeats(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("must not name one twice")
        return names


class FulfilmentRules(Model):
    """How terminals reach the merchant: the `Fulfilment`s the channel allows (mail, on-site
    installation, or collection at a branch: 领取)."""

    allowed: list[Fulfilment] = Field(min_length=1)

    @field_validator("allowed")
    @classmethod
    def _no_repeats(cls, allowed: list[Fulfilment]) -> list[Fulfilment]:
        if len(set(allowed)) != len(allowed):
            raise ValueError("allowed must not repeat a fulfilment")
        return allowed


class FeeSchedule(Model):
    """The merchant's money: the deposit taken with the contract (押金 / 保证金), the fees billed
    each year after go-live (`MerchantPolicy`), and the card rate (费率, percent of a card
    payment) the contract states. A free terminal is a channel whose deposit is zero."""

    deposit: Decimal = Field(ge=0, decimal_places=2)
    annual_fee: Decimal = Field(default=Decimal("0.00"), ge=0, decimal_places=2)
    service_fee_per_terminal: Decimal = Field(default=Decimal("0.00"), ge=0, decimal_places=2)
    card_rate_percent: Decimal = Field(gt=0, le=5, decimal_places=2)

    @property
    def free_terminal(self) -> bool:
        return self.deposit == 0


class TrainingNeed(StrEnum):
    REQUIRED = "required"  # go-live waits for it
    OPTIONAL = "optional"  # offered; the merchant may decline


class TrainingRules(Model):
    """Operating training (操作培训): whether the channel requires it and in how many sessions.

    Data only for now: the workflow still runs one required training step for every channel;
    making it follow this profile is a later workflow change."""

    need: TrainingNeed
    sessions: int = Field(ge=1, le=5)


class ReviewRules(Model):
    """Review (审核): escalate at the SLA, escalate again and flag at the deadline; and whether a
    new settlement account is reviewed after go-live (重新绑定)."""

    sla: timedelta = Field(gt=timedelta(0))
    deadline: timedelta = Field(gt=timedelta(0))
    # The same in working days on the mainland calendar (public holidays and the adjusted
    # working weekends): what the channel's SLA means. The calendar durations above apply when
    # these are absent, or when an application overrides the review timings (tests, demos).
    sla_working_days: int | None = Field(default=None, ge=1, le=60)
    deadline_working_days: int | None = Field(default=None, ge=1, le=120)
    rebinding_review: bool = False

    @model_validator(mode="after")
    def _sla_first(self) -> ReviewRules:
        if self.sla > self.deadline:
            raise ValueError("sla must not be later than deadline")
        if (self.sla_working_days is None) != (self.deadline_working_days is None):
            raise ValueError("sla_working_days and deadline_working_days go together")
        if (
            self.sla_working_days is not None
            and self.deadline_working_days is not None
            and self.sla_working_days > self.deadline_working_days
        ):
            raise ValueError("sla_working_days must not be more than deadline_working_days")
        return self


class ChannelProfile(Model):
    channel: Channel
    documents: DocumentRules = Field(default_factory=DocumentRules)
    devices: DeviceRules
    fulfilment: FulfilmentRules
    fees: FeeSchedule
    training: TrainingRules
    review: ReviewRules

    @model_validator(mode="after")
    def _banks_for_a_bank(self) -> ChannelProfile:
        if self.channel is Channel.BANK and not self.devices.banks:
            raise ValueError("devices.banks: a bank channel must list the banks to choose from")
        if self.channel is not Channel.BANK and self.devices.banks:
            raise ValueError("devices.banks: only a bank channel lists banks")
        return self

    # --- what an application must meet at submission -------------------------------------------

    def industry_licence_needed(self, category: str) -> bool:
        return normalise_category(category) in self.documents.industry_licence_categories

    def submission_issues(self, app: Application) -> list[FieldIssue]:
        """What the application asks that this channel does not offer: field-level issues, each
        naming the field and what the channel allows. The Tmall store's platform check is the
        gateway's (it is a call to the platform, not a rule of the data)."""
        issues: list[FieldIssue] = []
        channel = self.channel.value
        model = app.device_order.model
        if model not in self.devices.models:
            issues.append(
                FieldIssue(
                    field="device_order.model",
                    code=IssueCode.NOT_APPLICABLE,
                    message=f"model {model} is not offered on channel {channel}: "
                    f"choose one of {', '.join(self.devices.models)}",
                )
            )
        if app.fulfilment not in self.fulfilment.allowed:
            allowed = ", ".join(f.value for f in self.fulfilment.allowed)
            issues.append(
                FieldIssue(
                    field="fulfilment",
                    code=IssueCode.NOT_APPLICABLE,
                    message=f"fulfilment {app.fulfilment.value} is not offered on channel "
                    f"{channel}: choose one of {allowed}",
                )
            )
        if app.decline_training and self.training.need is TrainingNeed.REQUIRED:
            issues.append(
                FieldIssue(
                    field="decline_training",
                    code=IssueCode.NOT_APPLICABLE,
                    message=f"channel {channel} requires operating training "
                    f"({self.training.sessions} session(s)): it cannot be declined",
                )
            )
        bank = app.acquiring_bank
        if bank and not self.devices.banks:
            issues.append(
                FieldIssue(
                    field="acquiring_bank",
                    code=IssueCode.NOT_APPLICABLE,
                    message=f"only a bank application chooses a bank, not one on channel {channel}",
                )
            )
        elif bank and bank not in self.devices.banks:
            issues.append(
                FieldIssue(
                    field="acquiring_bank",
                    code=IssueCode.NOT_APPLICABLE,
                    message=f"bank {bank} is not offered: choose one of "
                    f"{', '.join(self.devices.banks)}",
                )
            )
        if self.documents.tmall_store and not app.tmall_store:
            issues.append(
                FieldIssue(
                    field="tmall_store",
                    code=IssueCode.REQUIRED,
                    message="a Tmall application names the merchant's Tmall store (入驻天猫 first)",
                )
            )
        elif app.tmall_store and not self.documents.tmall_store:
            issues.append(
                FieldIssue(
                    field="tmall_store",
                    code=IssueCode.NOT_APPLICABLE,
                    message=f"only a Tmall application names a Tmall store, not one on {channel}",
                )
            )
        return issues


# --- the four profiles -------------------------------------------------------------------------

_DAY = timedelta(days=1)

_PROFILES: dict[str, dict[str, Any]] = {
    # Banks review longer, take a deposit (押金), install on site (安装调试) or mail, train the
    # merchant, bill a service fee per terminal and review a new settlement account.
    "bank": {
        "channel": "bank",
        "devices": {
            "models": ["LKL-A8", "LKL-Q5"],
            "banks": [
                "中国工商银行",
                "中国建设银行",
                "中国银行",
                "中国农业银行",
                "交通银行",
                "招商银行",
            ],
        },
        "fulfilment": {"allowed": ["on_site", "mail"]},
        "fees": {
            "deposit": "299.00",
            "service_fee_per_terminal": "120.00",
            "card_rate_percent": "0.60",
        },
        "training": {"need": "required", "sessions": 1},
        "review": {
            "sla": 7 * _DAY,
            "deadline": 21 * _DAY,
            "sla_working_days": 5,
            "deadline_working_days": 15,
            "rebinding_review": True,
        },
    },
    # Lakala: a deposit (保证金), an annual fee and service fees, the UnionPay standard rate; mail,
    # on-site installation, or collection at a branch (领取).
    "lakala": {
        "channel": "lakala",
        "devices": {"models": ["LKL-A8", "LKL-Q5", "SMART-P2"]},
        "fulfilment": {"allowed": ["mail", "on_site", "pick_up"]},
        "fees": {
            "deposit": "99.00",
            "annual_fee": "365.00",
            "service_fee_per_terminal": "60.00",
            "card_rate_percent": "0.60",
        },
        "training": {"need": "required", "sessions": 1},
        "review": {
            "sla": 3 * _DAY,
            "deadline": 10 * _DAY,
            "sla_working_days": 2,
            "deadline_working_days": 7,
        },
    },
    # Tmall: a Tmall store first; mailed for the merchant to install or installed by Tmall's team;
    # one or several training sessions; a handling fee, no deposit.
    "tmall": {
        "channel": "tmall",
        "documents": {"tmall_store": True},
        "devices": {"models": ["LKL-A8", "SMART-P2"]},
        "fulfilment": {"allowed": ["mail", "on_site"]},
        "fees": {"deposit": "0", "service_fee_per_terminal": "36.00", "card_rate_percent": "0.60"},
        "training": {"need": "required", "sessions": 2},
        "review": {
            "sla": 2 * _DAY,
            "deadline": 7 * _DAY,
            "sla_working_days": 2,
            "deadline_working_days": 5,
        },
    },
    # Alipay: mailed (邮寄) and set up by the merchant with the guide; training optional.
    "alipay": {
        "channel": "alipay",
        "devices": {"models": ["LKL-A8", "SMART-P2"]},
        "fulfilment": {"allowed": ["mail"]},
        "fees": {"deposit": "0", "service_fee_per_terminal": "36.00", "card_rate_percent": "0.38"},
        "training": {"need": "optional", "sessions": 1},
        "review": {
            "sla": 2 * _DAY,
            "deadline": 7 * _DAY,
            "sla_working_days": 2,
            "deadline_working_days": 5,
        },
    },
}


def load_profiles(data: dict[str, dict[str, Any]]) -> dict[Channel, ChannelProfile]:
    """Validate the profiles: one per channel, each under its own channel's key. A broken profile
    raises pydantic's ValidationError naming the field (e.g. `fees.card_rate_percent`)."""
    profiles = {Channel(key): ChannelProfile.model_validate(value) for key, value in data.items()}
    for key, profile in profiles.items():
        if profile.channel is not key:
            raise ValueError(f"profile under {key.value} is for channel {profile.channel.value}")
    missing = [c.value for c in Channel if c not in profiles]
    if missing:
        raise ValueError(f"no channel profile for {missing}")
    return profiles


PROFILES: dict[Channel, ChannelProfile] = load_profiles(_PROFILES)


def profile_for(channel: Channel) -> ChannelProfile:
    return PROFILES[channel]
