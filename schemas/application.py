"""The merchant's application for POS terminals: who applies, for what, through which channel."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Model(BaseModel):
    """Base for every posflow model: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class MerchantType(StrEnum):
    INDIVIDUAL = "individual"  # 个体工商户
    ENTERPRISE = "enterprise"  # 企业


class LicenceKind(StrEnum):
    USCC = "uscc"  # 三证合一: 18-character Unified Social Credit Code
    # 15-digit registration number, with separate tax and organisation-code certificates
    LEGACY = "legacy"


class Channel(StrEnum):
    BANK = "bank"
    LAKALA = "lakala"
    TMALL = "tmall"
    ALIPAY = "alipay"


class Fulfilment(StrEnum):
    MAIL = "mail"  # 邮寄
    ON_SITE = "on_site"  # 上门安装调试


class IdentityKind(StrEnum):
    RESIDENT_ID = "resident_id"  # 居民身份证
    PASSPORT = "passport"


class AccountKind(StrEnum):
    PERSONAL = "personal"  # a personal bank card: Luhn-checked
    CORPORATE = "corporate"  # 对公账户: digits only, bank-specific length


class Address(Model):
    province: str = Field(min_length=1, max_length=40)
    city: str = Field(min_length=1, max_length=40)
    district: str = Field(default="", max_length=40)
    street: str = Field(min_length=1, max_length=200)
    postcode: str = Field(default="", pattern=r"^(\d{6})?$")

    def one_line(self) -> str:
        return "".join(p for p in (self.province, self.city, self.district, self.street) if p)


class Licence(Model):
    kind: LicenceKind
    number: str = Field(min_length=1, max_length=32)


class Merchant(Model):
    name: str = Field(min_length=1, max_length=120)
    merchant_type: MerchantType
    licence: Licence
    address: Address
    physical_shop: bool = True  # premises photos are required for a physical shop
    business_category: str = Field(default="retail", max_length=60)


class LegalRepresentative(Model):
    name: str = Field(min_length=1, max_length=60)
    id_kind: IdentityKind = IdentityKind.RESIDENT_ID
    id_number: str = Field(min_length=1, max_length=32)


class Contact(Model):
    name: str = Field(min_length=1, max_length=60)
    mobile: str = Field(min_length=1, max_length=20)
    email: str = Field(default="", max_length=120)


class SettlementAccount(Model):
    holder_name: str = Field(min_length=1, max_length=120)
    account_kind: AccountKind
    account_number: str = Field(min_length=1, max_length=40)
    bank_name: str = Field(min_length=1, max_length=80)


class DeviceOrder(Model):
    model: str = Field(min_length=1, max_length=40)
    quantity: int = Field(ge=1, le=50)


class Application(Model):
    """What the merchant front end submits to start an application (提交申请)."""

    application_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    channel: Channel
    merchant: Merchant
    legal_representative: LegalRepresentative
    contact: Contact
    settlement_account: SettlementAccount
    device_order: DeviceOrder
    fulfilment: Fulfilment
    installation_address: Address | None = None  # defaults to the merchant's address

    @property
    def workflow_id(self) -> str:
        return workflow_id_for(self.application_id)

    def delivery_address(self) -> Address:
        return self.installation_address or self.merchant.address


WORKFLOW_ID_PREFIX = "pos-application-"


def workflow_id_for(application_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}{application_id}"


def application_id_of(workflow_id: str | None) -> str | None:
    """The application an onboarding workflow runs, from its id; None for any other workflow."""
    if workflow_id and workflow_id.startswith(WORKFLOW_ID_PREFIX):
        return workflow_id[len(WORKFLOW_ID_PREFIX) :]
    return None
