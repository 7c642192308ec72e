"""Builders of valid applications, documents and identifiers for tests.

Every identifier is deterministic and built with the check-character functions of
`schemas.identifiers`, so it passes validation; override fields to make invalid cases.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from cli.samples import (
    make_bank_card,
    make_corporate_account,
    make_org_code,
    make_registration_number,
    make_resident_id,
    make_tax_registration,
    make_uscc,
)
from schemas.application import (
    AccountKind,
    Address,
    Application,
    Channel,
    Contact,
    DeviceOrder,
    Fulfilment,
    IdentityKind,
    LegalRepresentative,
    Licence,
    LicenceKind,
    Merchant,
    MerchantType,
    SettlementAccount,
)
from schemas.documents import Document, DocumentKind

# The date the documents are validated as of in these tests: all factory documents are valid then
# and for decades after.
TODAY = date(2025, 6, 1)
ID_CARD_EXPIRES_ON = date(2045, 6, 30)

LEGAL_REP_NAME = "张三"
INDIVIDUAL_NAME = "北京市海淀区张三便利店"
ENTERPRISE_NAME = "北京示例商贸有限公司（海淀）"
PASSPORT_HOLDER = "John Smith"
PASSPORT_NUMBER = "E12345678"


# --- identifiers -----------------------------------------------------------------------------


# --- applications ----------------------------------------------------------------------------


def _address() -> Address:
    return Address(province="北京市", city="北京市", district="海淀区", street="中关村大街1号")


def _legal_representative(passport: bool) -> LegalRepresentative:
    if passport:
        return LegalRepresentative(
            name=PASSPORT_HOLDER, id_kind=IdentityKind.PASSPORT, id_number=PASSPORT_NUMBER
        )
    return LegalRepresentative(
        name=LEGAL_REP_NAME,
        id_kind=IdentityKind.RESIDENT_ID,
        id_number=make_resident_id(date(1985, 3, 14), 123),
    )


def _build(fields: dict[str, Any], overrides: dict[str, Any]) -> Application:
    return Application.model_validate({**fields, **overrides})


def individual_application(
    *,
    application_id: str = "APP-IND-0001",
    legacy: bool = False,
    physical_shop: bool = True,
    passport: bool = False,
    **overrides: Any,
) -> Application:
    """A valid individual business (个体工商户) settling to its owner's personal bank card.

    `overrides` replace top-level `Application` fields (e.g. `channel=Channel.LAKALA`).
    """
    legal_rep = _legal_representative(passport)
    licence = (
        Licence(kind=LicenceKind.LEGACY, number=make_registration_number(1))
        if legacy
        else Licence(kind=LicenceKind.USCC, number=make_uscc(1, prefix="92"))
    )
    fields: dict[str, Any] = {
        "application_id": application_id,
        "channel": Channel.ALIPAY,
        "merchant": Merchant(
            name=INDIVIDUAL_NAME,
            merchant_type=MerchantType.INDIVIDUAL,
            licence=licence,
            address=_address(),
            physical_shop=physical_shop,
        ),
        "legal_representative": legal_rep,
        "contact": Contact(name=legal_rep.name, mobile="13812345678"),
        "settlement_account": SettlementAccount(
            holder_name=legal_rep.name,
            account_kind=AccountKind.PERSONAL,
            account_number=make_bank_card(1),
            bank_name="中国工商银行",
        ),
        "device_order": DeviceOrder(model="LKL-A8", quantity=1),
        "fulfilment": Fulfilment.MAIL,
    }
    return _build(fields, overrides)


def enterprise_application(
    legacy: bool = False,
    *,
    application_id: str = "APP-ENT-0001",
    physical_shop: bool = True,
    passport: bool = False,
    **overrides: Any,
) -> Application:
    """A valid enterprise settling to its own corporate account.

    `legacy` gives it a 15-digit registration number (so it needs tax registration and
    organisation code certificates) instead of a USCC. `overrides` replace top-level fields.
    """
    licence = (
        Licence(kind=LicenceKind.LEGACY, number=make_registration_number(2))
        if legacy
        else Licence(kind=LicenceKind.USCC, number=make_uscc(2))
    )
    fields: dict[str, Any] = {
        "application_id": application_id,
        "channel": Channel.BANK,
        "merchant": Merchant(
            name=ENTERPRISE_NAME,
            merchant_type=MerchantType.ENTERPRISE,
            licence=licence,
            address=_address(),
            physical_shop=physical_shop,
        ),
        "legal_representative": _legal_representative(passport),
        "contact": Contact(name="李四", mobile="13912345678"),
        "settlement_account": SettlementAccount(
            holder_name=ENTERPRISE_NAME,
            account_kind=AccountKind.CORPORATE,
            account_number=make_corporate_account(2),
            bank_name="中国银行",
        ),
        "device_order": DeviceOrder(model="LKL-A8", quantity=3),
        "fulfilment": Fulfilment.ON_SITE,
    }
    return _build(fields, overrides)


# --- documents -------------------------------------------------------------------------------

ORG_CODE = make_org_code(3)  # the legacy enterprise's organisation code


def valid_documents(app: Application) -> list[Document]:
    """One valid, consistent document of every kind `app` needs, in `DocumentKind` order."""
    rep = app.legal_representative
    account = app.settlement_account
    legacy_enterprise = (
        app.merchant.merchant_type is MerchantType.ENTERPRISE
        and app.merchant.licence.kind is LicenceKind.LEGACY
    )
    documents: list[Document] = []
    if rep.id_kind is IdentityKind.PASSPORT:
        documents.append(
            Document(
                kind=DocumentKind.PASSPORT,
                file_id="file-passport",
                number=rep.id_number,
                holder_name=rep.name,
                expires_on=ID_CARD_EXPIRES_ON,
            )
        )
    else:
        documents.append(
            Document(
                kind=DocumentKind.IDENTITY_CARD,
                file_id="file-identity-card",
                number=rep.id_number,
                holder_name=rep.name,
                expires_on=ID_CARD_EXPIRES_ON,
            )
        )
    documents.append(
        Document(
            kind=DocumentKind.BUSINESS_LICENCE,
            file_id="file-business-licence",
            number=app.merchant.licence.number,
            holder_name=app.merchant.name,
        )
    )
    if legacy_enterprise:
        documents.append(
            Document(
                kind=DocumentKind.TAX_REGISTRATION,
                file_id="file-tax-registration",
                number=make_tax_registration(ORG_CODE),
                holder_name=app.merchant.name,
            )
        )
        documents.append(
            Document(
                kind=DocumentKind.ORGANISATION_CODE,
                file_id="file-organisation-code",
                number=f"{ORG_CODE[:8]}-{ORG_CODE[8]}",  # as printed on the certificate
                holder_name=app.merchant.name,
            )
        )
    documents.append(
        Document(
            kind=DocumentKind.BANK_ACCOUNT_PROOF,
            file_id="file-bank-account-proof",
            number=account.account_number,
            holder_name=account.holder_name,
        )
    )
    if app.merchant.physical_shop:
        documents.append(Document(kind=DocumentKind.PREMISES_PHOTOS, file_id="file-premises"))
    return documents
