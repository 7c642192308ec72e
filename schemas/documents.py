"""The documents a merchant supplies (申请资料) and the field-level issues found in them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from enum import StrEnum
from types import MappingProxyType

from pydantic import Field, model_validator

from schemas.application import Model, OptionalIdentifier, OptionalName, Text, normalise_resident_id


class DocumentKind(StrEnum):
    IDENTITY_CARD = "identity_card"  # 身份证 of the legal representative
    PASSPORT = "passport"  # for a foreign legal representative
    BUSINESS_LICENCE = "business_licence"  # 营业执照
    TAX_REGISTRATION = "tax_registration"  # 税务登记证 (legacy licence only)
    ORGANISATION_CODE = "organisation_code"  # 组织机构代码证 (legacy licence only)
    BANK_ACCOUNT_PROOF = "bank_account_proof"  # 结算账户证明
    PREMISES_PHOTOS = "premises_photos"  # 经营场所照片
    # 相关行业经营许可证: food, pharmacy... (`schemas.channels.REGULATED_CATEGORIES`)
    INDUSTRY_LICENCE = "industry_licence"


# What merchants call each document: the names notices and the merchant page use.
DOCUMENT_NAMES: Mapping[DocumentKind, str] = MappingProxyType(
    {
        DocumentKind.IDENTITY_CARD: "法定代表人身份证",
        DocumentKind.PASSPORT: "法定代表人护照",
        DocumentKind.BUSINESS_LICENCE: "营业执照",
        DocumentKind.TAX_REGISTRATION: "税务登记证",
        DocumentKind.ORGANISATION_CODE: "组织机构代码证",
        DocumentKind.BANK_ACCOUNT_PROOF: "结算账户证明",
        DocumentKind.PREMISES_PHOTOS: "经营场所照片",
        DocumentKind.INDUSTRY_LICENCE: "相关行业经营许可证",
    }
)


def document_names(kinds: list[DocumentKind]) -> str:
    """The documents' names in one line: 营业执照、结算账户证明."""
    return "、".join(DOCUMENT_NAMES[k] for k in kinds)


class Document(Model):
    """One document as captured by the front end: the file reference and the data read off it."""

    kind: DocumentKind
    file_id: Text = Field(min_length=1, max_length=200)  # where the scan is stored; never the bytes
    # ID, licence, certificate or account number
    number: OptionalIdentifier = Field(default="", max_length=40)
    holder_name: OptionalName = Field(default="", max_length=120)
    expires_on: date | None = None  # None: long-term (长期有效) or not applicable

    @model_validator(mode="after")
    def _resident_id_check_character_uppercase(self) -> Document:
        if self.kind is DocumentKind.IDENTITY_CARD:
            self.number = normalise_resident_id(self.number)
        return self


class IssueCode(StrEnum):
    REQUIRED = "required"
    INVALID_FORMAT = "invalid_format"
    CHECKSUM = "checksum"
    INVALID_BIRTH_DATE = "invalid_birth_date"
    UNKNOWN_REGION = "unknown_region"  # an administrative division code GB/T 2260 never issued
    UNKNOWN_ENTITY_TYPE = "unknown_entity_type"  # a USCC authority/type pair GB 32100 lacks
    EXPIRED = "expired"
    NAME_MISMATCH = "name_mismatch"
    NUMBER_MISMATCH = "number_mismatch"
    NOT_APPLICABLE = "not_applicable"


class FieldIssue(Model):
    """One problem with one field; `message` is for people and never holds a personal number."""

    field: str
    code: IssueCode
    message: str


class DocumentSubmission(Model):
    """Documents submitted or supplemented in one go; `submission_id` makes a resend harmless."""

    submission_id: str = Field(min_length=1, max_length=80)
    documents: list[Document] = Field(min_length=1, max_length=20)


class ValidationReport(Model):
    """The outcome of validating the documents on file for an application."""

    issues: list[FieldIssue] = Field(default_factory=list)
    missing: list[DocumentKind] = Field(default_factory=list)
    accepted: list[DocumentKind] = Field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.issues and not self.missing
