"""The merchant's application for POS terminals: who applies, for what, through which channel.

Also the text types every posflow model uses for what people type (names, free text,
identifiers): input no one could mean is refused with the rule, what people do type is normalised.
The rules are pure functions over strings (stdlib only): models are validated in the workflow
sandbox too.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError


class Model(BaseModel):
    """Base for every posflow model: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=False)


# --- text people type ------------------------------------------------------------------------

# Stripped from both ends of every text field: ASCII blanks, line ends and tabs, and every
# Unicode space separator (Zs), including U+3000 IDEOGRAPHIC SPACE and U+00A0 NO-BREAK SPACE.
_SURROUNDING_SPACE = (
    " \t\n\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u202f\u205f\u3000"
)
# Characters that reorder how text is displayed (Trojan Source): embeddings, overrides and
# isolates, and the implicit direction marks.
_BIDI_CONTROLS = frozenset(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
)
_ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")
# Inside free text spanning several lines (notes, details), line ends and tabs are meant.
_MULTILINE_CONTROLS = frozenset("\t\n\r")


def _refused_char(text: str, *, multiline: bool) -> tuple[int, str, str] | None:
    """The first character no one could mean in `text`: (index, error type, what it is)."""
    for index, char in enumerate(text):
        category = unicodedata.category(char)
        if category == "Cc":
            if multiline and char in _MULTILINE_CONTROLS:
                continue
            return index, "control_character", "a control character"
        if char in _BIDI_CONTROLS:
            return index, "bidi_control", "a bidirectional text control"
        if char in _ZERO_WIDTH:
            return index, "zero_width_character", "a zero-width character"
        if category == "Cf":
            return index, "format_character", "an invisible formatting character"
        if category == "Cs":
            return index, "surrogate", "an unpaired surrogate"
        if category in ("Zl", "Zp"):
            return index, "line_separator", "a line or paragraph separator"
    return None


def _text_error(kind: str, field: str, message: str) -> PydanticCustomError:
    # The message goes out as is (the gateway's 422 names each field with it): it says where and
    # what, never the value itself, which may be personal.
    return PydanticCustomError(kind, f"{field} {message}")


def _text_rule(
    *, multiline: bool = False, identifier: bool = False, required: bool = True
) -> Callable[[Any, ValidationInfo], Any]:
    """The validator behind the text types below: a required field refuses empty or spaces only;
    in an optional one, spaces only read as empty ("not given", which the document checks name
    when the field is needed)."""

    def validate(value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value  # pydantic's own type check answers
        field = info.field_name or "text"
        text = value.strip(_SURROUNDING_SPACE)
        refused = _refused_char(text, multiline=multiline)
        if refused is not None:
            index, kind, what = refused
            position = len(value) - len(value.lstrip(_SURROUNDING_SPACE)) + index + 1
            code_point = f"U+{ord(text[index]):04X}"
            raise _text_error(
                kind, field, f"must not contain {what} ({code_point} at position {position})"
            )
        if identifier:
            # Full-width digits and letters (１２３ＡＢＣ) and other compatibility forms to ASCII.
            text = unicodedata.normalize("NFKC", text).strip(_SURROUNDING_SPACE)
        if not text and required:
            raise _text_error("blank", field, "must not be blank (empty or only spaces)")
        return text

    return validate


PersonName = Annotated[str, BeforeValidator(_text_rule())]
"""The name of a person or a business: one line, not blank; kept as written (no NFKC: a name's
full-width parentheses are the ones on the licence)."""

OptionalName = Annotated[str, BeforeValidator(_text_rule(required=False))]
"""A name that may be missing (read off a document): empty, or a `PersonName`."""

Text = Annotated[str, BeforeValidator(_text_rule())]
"""One line of text that must be there (a street, a reason)."""

OptionalText = Annotated[str, BeforeValidator(_text_rule(required=False))]
"""One line of text that may be empty; only spaces read as empty."""

Note = Annotated[str, BeforeValidator(_text_rule(multiline=True, required=False))]
"""Free text that may span lines (line ends and tabs allowed inside); may be empty."""

RequiredNote = Annotated[str, BeforeValidator(_text_rule(multiline=True))]
"""Free text that may span lines and must be there (a reason)."""

IdentifierStr = Annotated[str, BeforeValidator(_text_rule(identifier=True))]
"""A number or code (ID, licence, account): one line, not blank, NFKC-normalised so full-width
digits and letters read as ASCII. Its format and check character are checked by
`schemas.identifiers`, not here."""

OptionalIdentifier = Annotated[str, BeforeValidator(_text_rule(identifier=True, required=False))]
"""An identifier that may be empty (a document without a number)."""


def normalise_mobile(number: str) -> str:
    """A mainland mobile number as people write it, as its 11 digits: the spaces, hyphens and
    parentheses people group it with are dropped, and a +86, 0086 or 86 country code in front of
    11 digits starting with 1.

    Anything else is left for `schemas.identifiers.check_mobile` to refuse with its rule.
    """
    digits = "".join(c for c in number if c not in " -()")
    for prefix in ("+86", "0086", "86"):
        rest = digits.removeprefix(prefix)
        if (
            rest != digits
            and len(rest) == 11
            and rest.isascii()
            and rest.isdigit()
            and rest[0] == "1"
        ):
            return rest
    return digits


_identifier_rule = _text_rule(identifier=True)


def _mobile(value: Any, info: ValidationInfo) -> Any:
    value = _identifier_rule(value, info)
    if not isinstance(value, str):
        return value
    # Dropping the separators can bring together characters NFKC then composes ("A" + " ̈"
    # → "Ä"): normalise until nothing changes, so a stored number reads back as itself.
    for _ in range(4):
        again = unicodedata.normalize("NFKC", normalise_mobile(value))
        if again == value:
            break
        value = again
    if not value.strip():
        # Only separators (")", " - "): nothing of a number is left, so it is as blank as "".
        field = info.field_name or "mobile"
        raise _text_error("blank", field, "must not be blank (empty or only spaces)")
    return value


MobileNumber = Annotated[str, BeforeValidator(_mobile)]
"""A contact mobile number, stored as its 11 digits (see `normalise_mobile`)."""


def normalise_resident_id(number: str) -> str:
    """A resident ID number with its check character 'x' written as the standard's 'X'."""
    return number[:-1] + "X" if number.endswith("x") else number


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
    PICK_UP = "pick_up"  # 网点领取: collected at a branch with a code


class IdentityKind(StrEnum):
    RESIDENT_ID = "resident_id"  # 居民身份证
    PASSPORT = "passport"


class AccountKind(StrEnum):
    PERSONAL = "personal"  # a personal bank card: Luhn-checked
    CORPORATE = "corporate"  # 对公账户: digits only, bank-specific length


class Address(Model):
    province: Text = Field(min_length=1, max_length=40)
    city: Text = Field(min_length=1, max_length=40)
    district: OptionalText = Field(default="", max_length=40)
    street: Text = Field(min_length=1, max_length=200)
    # [0-9], not \d: the pattern engine's \d also matches other scripts' digits.
    postcode: OptionalIdentifier = Field(default="", pattern=r"^([0-9]{6})?$")

    def one_line(self) -> str:
        return "".join(p for p in (self.province, self.city, self.district, self.street) if p)


class Licence(Model):
    kind: LicenceKind
    number: IdentifierStr = Field(min_length=1, max_length=32)


class Merchant(Model):
    name: PersonName = Field(min_length=1, max_length=120)
    merchant_type: MerchantType
    licence: Licence
    address: Address
    physical_shop: bool = True  # premises photos are required for a physical shop
    business_category: OptionalText = Field(default="retail", max_length=60)


class LegalRepresentative(Model):
    name: PersonName = Field(min_length=1, max_length=60)
    id_kind: IdentityKind = IdentityKind.RESIDENT_ID
    id_number: IdentifierStr = Field(min_length=1, max_length=32)

    @model_validator(mode="after")
    def _resident_id_check_character_uppercase(self) -> LegalRepresentative:
        if self.id_kind is IdentityKind.RESIDENT_ID:
            self.id_number = normalise_resident_id(self.id_number)
        return self


class Contact(Model):
    name: PersonName = Field(min_length=1, max_length=60)
    mobile: MobileNumber = Field(min_length=1, max_length=20)
    email: OptionalIdentifier = Field(default="", max_length=120)


class SettlementAccount(Model):
    holder_name: PersonName = Field(min_length=1, max_length=120)
    account_kind: AccountKind
    account_number: IdentifierStr = Field(min_length=1, max_length=40)
    bank_name: PersonName = Field(min_length=1, max_length=80)


class DeviceOrder(Model):
    model: Text = Field(min_length=1, max_length=40)
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
    # Channel prerequisites (`schemas.channels`), absent from applications that need none:
    # the merchant's Tmall store (天猫店铺), required on Tmall and checked with the platform;
    # the bank a bank application chooses (选择银行), one of its profile's banks.
    tmall_store: OptionalText | None = Field(default=None, max_length=60)
    acquiring_bank: OptionalText | None = Field(default=None, max_length=40)
    # Where the channel's training is optional (Alipay: the set-up guide), the merchant may
    # decline it and go live after activation; a channel requiring it refuses this (422).
    decline_training: bool | None = None
    # The merchant asks for a site survey (实地考察) whatever the risk rule says.
    request_site_survey: bool | None = None

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
