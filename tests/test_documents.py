"""Document collection rules of `activities.documents`: what is required, and what is wrong."""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.documents import (
    check_documents,
    required_documents,
    validate_application,
    validate_documents,
)
from schemas.application import AccountKind, Application
from schemas.documents import Document, DocumentKind, FieldIssue, IssueCode, ValidationReport
from schemas.identifiers import uscc_check_char
from schemas.steps import ValidateDocuments
from tests.factories import (
    ENTERPRISE_NAME,
    INDIVIDUAL_NAME,
    LEGAL_REP_NAME,
    ORG_CODE,
    TODAY,
    enterprise_application,
    individual_application,
    make_bank_card,
    make_org_code,
    make_registration_number,
    make_resident_id,
    make_tax_registration,
    make_uscc,
    valid_documents,
)

K = DocumentKind


def wrong_last(number: str) -> str:
    """`number` with its last character (the check character) changed to another digit."""
    return number[:-1] + ("1" if number[-1] == "0" else "0")


def build(enterprise: bool, legacy: bool, physical_shop: bool, passport: bool) -> Application:
    if enterprise:
        return enterprise_application(legacy, physical_shop=physical_shop, passport=passport)
    return individual_application(legacy=legacy, physical_shop=physical_shop, passport=passport)


ALL_SHAPES = list(itertools.product([False, True], repeat=4))


def shape_id(shape: tuple[bool, bool, bool, bool]) -> str:
    enterprise, legacy, shop, passport = shape
    return "-".join(
        (
            "enterprise" if enterprise else "individual",
            "legacy" if legacy else "uscc",
            "shop" if shop else "online",
            "passport" if passport else "resident_id",
        )
    )


def with_field(app: Application, path: str, value: Any) -> Application:
    """A copy of `app` with the dotted field `path` set to `value`, validated again."""
    data = app.model_dump()
    *parents, leaf = path.split(".")
    node = data
    for name in parents:
        node = node[name]
    node[leaf] = value
    return Application.model_validate(data)


def replace_document(
    documents: list[Document], kind: DocumentKind, **changes: Any
) -> list[Document]:
    """The documents with the one of `kind` changed; other documents untouched."""
    return [
        Document.model_validate({**d.model_dump(), **changes}) if d.kind is kind else d
        for d in documents
    ]


def codes(issues: list[FieldIssue]) -> dict[str, IssueCode]:
    by_field = {issue.field: issue.code for issue in issues}
    assert len(by_field) == len(issues), f"more than one issue on a field: {issues}"
    return by_field


def document_codes(report: ValidationReport) -> dict[str, IssueCode]:
    return codes([i for i in report.issues if i.field.startswith("documents.")])


# --- required documents ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", ALL_SHAPES, ids=shape_id)
def test_required_documents(shape: tuple[bool, bool, bool, bool]) -> None:
    enterprise, legacy, shop, passport = shape
    expected = [K.PASSPORT if passport else K.IDENTITY_CARD, K.BUSINESS_LICENCE]
    if enterprise and legacy:
        expected += [K.TAX_REGISTRATION, K.ORGANISATION_CODE]
    expected.append(K.BANK_ACCOUNT_PROOF)
    if shop:
        expected.append(K.PREMISES_PHOTOS)
    assert required_documents(build(*shape)) == expected


def test_required_documents_literal_cases() -> None:
    assert required_documents(enterprise_application(legacy=True)) == [
        K.IDENTITY_CARD,
        K.BUSINESS_LICENCE,
        K.TAX_REGISTRATION,
        K.ORGANISATION_CODE,
        K.BANK_ACCOUNT_PROOF,
        K.PREMISES_PHOTOS,
    ]
    assert required_documents(individual_application(legacy=True, physical_shop=False)) == [
        K.IDENTITY_CARD,
        K.BUSINESS_LICENCE,
        K.BANK_ACCOUNT_PROOF,
    ]


def test_extra_kinds_are_added_once_in_enum_order() -> None:
    app = individual_application(physical_shop=False)
    assert required_documents(app, [K.PREMISES_PHOTOS, K.IDENTITY_CARD, K.PASSPORT]) == [
        K.IDENTITY_CARD,
        K.PASSPORT,
        K.BUSINESS_LICENCE,
        K.BANK_ACCOUNT_PROOF,
        K.PREMISES_PHOTOS,
    ]


# --- a valid application with valid documents ------------------------------------------------


@pytest.mark.parametrize("shape", ALL_SHAPES, ids=shape_id)
def test_valid_documents_are_complete(shape: tuple[bool, bool, bool, bool]) -> None:
    app = build(*shape)
    assert validate_application(app, today=TODAY) == []
    report = check_documents(app, valid_documents(app), today=TODAY)
    assert report.issues == []
    assert report.missing == []
    assert report.accepted == required_documents(app)
    assert report.complete


def test_nothing_submitted_is_all_missing() -> None:
    app = enterprise_application(legacy=True)
    report = check_documents(app, [], today=TODAY)
    assert report.missing == required_documents(app)
    assert report.accepted == []
    assert not report.complete


def test_one_missing_document_is_named() -> None:
    app = individual_application()
    documents = [d for d in valid_documents(app) if d.kind is not K.BANK_ACCOUNT_PROOF]
    report = check_documents(app, documents, today=TODAY)
    assert report.missing == [K.BANK_ACCOUNT_PROOF]
    assert report.issues == []
    assert not report.complete


def test_premises_photos_need_only_a_file() -> None:
    app = individual_application()
    documents = replace_document(valid_documents(app), K.PREMISES_PHOTOS, number="", holder_name="")
    assert check_documents(app, documents, today=TODAY).complete


# --- the application's own fields ------------------------------------------------------------

VALID_ID = make_resident_id(date(1985, 3, 14), 123)


def uscc_outside_the_table() -> str:
    """A USCC with right check characters whose region, 000000, GB/T 2260 never issued."""
    body = "91000000" + make_org_code(2)
    return body + uscc_check_char(body)


@pytest.mark.parametrize(
    ("app", "field", "value", "code"),
    [
        (
            individual_application(),
            "legal_representative.id_number",
            wrong_last(VALID_ID),
            IssueCode.CHECKSUM,
        ),
        (
            # a lowercase x is read as the standard's X (tests/test_input.py), which is not
            # this number's check character
            individual_application(),
            "legal_representative.id_number",
            VALID_ID[:17] + "x",
            IssueCode.CHECKSUM,
        ),
        (
            individual_application(),
            "legal_representative.id_number",
            make_resident_id(TODAY + timedelta(days=1), 1),
            IssueCode.INVALID_BIRTH_DATE,
        ),
        (
            individual_application(passport=True),
            "legal_representative.id_number",
            "E123",
            IssueCode.INVALID_FORMAT,
        ),
        (
            individual_application(passport=True),
            "legal_representative.id_number",
            "E1234-567",
            IssueCode.INVALID_FORMAT,
        ),
        (
            enterprise_application(),
            "merchant.licence.number",
            wrong_last(make_uscc(2)),
            IssueCode.CHECKSUM,
        ),
        (
            enterprise_application(),
            "merchant.licence.number",
            make_registration_number(2),
            IssueCode.INVALID_FORMAT,
        ),
        (
            enterprise_application(legacy=True),
            "merchant.licence.number",
            wrong_last(make_registration_number(2)),
            IssueCode.CHECKSUM,
        ),
        (
            enterprise_application(legacy=True),
            "merchant.licence.number",
            make_uscc(2),
            IssueCode.INVALID_FORMAT,
        ),
        (
            individual_application(),
            "settlement_account.account_number",
            wrong_last(make_bank_card(1)),
            IssueCode.CHECKSUM,
        ),
        (
            individual_application(),
            "settlement_account.account_number",
            "62220212345",
            IssueCode.INVALID_FORMAT,
        ),
        (
            enterprise_application(),
            "settlement_account.account_number",
            "0200-1234-5678",
            IssueCode.INVALID_FORMAT,
        ),
        (enterprise_application(), "contact.mobile", "23812345678", IssueCode.INVALID_FORMAT),
        (enterprise_application(), "contact.mobile", "12012345678", IssueCode.INVALID_FORMAT),
        (
            individual_application(),
            "legal_representative.id_number",
            "990105194912310023",
            IssueCode.UNKNOWN_REGION,
        ),
        (
            enterprise_application(),
            "merchant.licence.number",
            "9G209971145078087U",
            IssueCode.UNKNOWN_ENTITY_TYPE,
        ),
        (
            enterprise_application(),
            "merchant.licence.number",
            uscc_outside_the_table(),
            IssueCode.UNKNOWN_REGION,
        ),
    ],
)
def test_application_field_rules(app: Application, field: str, value: str, code: IssueCode) -> None:
    issues = validate_application(with_field(app, field, value), today=TODAY)
    assert codes(issues) == {field: code}


def test_region_and_entity_type_issues_name_their_standard() -> None:
    app = with_field(
        individual_application(), "legal_representative.id_number", "990105194912310023"
    )
    [issue] = validate_application(app, today=TODAY)
    assert "region code that GB/T 2260 has never issued" in issue.message
    assert "990105194912310023" not in issue.message
    app = with_field(enterprise_application(), "merchant.licence.number", "9G209971145078087U")
    [issue] = validate_application(app, today=TODAY)
    assert "(characters 1-2) that GB 32100 does not define" in issue.message
    assert "9G209971145078087U" not in issue.message


def test_passport_number_may_have_letters_and_digits() -> None:
    app = individual_application(passport=True)
    assert (
        validate_application(
            with_field(app, "legal_representative.id_number", "AB12345"), today=TODAY
        )
        == []
    )


# --- the same-name rule ----------------------------------------------------------------------


def test_enterprise_settles_only_to_its_own_name() -> None:
    app = enterprise_application()
    assert validate_application(app, today=TODAY) == []
    renamed = with_field(app, "settlement_account.holder_name", LEGAL_REP_NAME)
    issues = validate_application(renamed, today=TODAY)
    assert codes(issues) == {"settlement_account.holder_name": IssueCode.NAME_MISMATCH}


def test_enterprise_name_compared_without_spaces_and_with_either_parentheses() -> None:
    assert "（" in ENTERPRISE_NAME
    spelled = ENTERPRISE_NAME.replace("（", " (").replace("）", ")\u3000")
    app = with_field(enterprise_application(), "settlement_account.holder_name", spelled)
    assert validate_application(app, today=TODAY) == []
    documents = replace_document(
        valid_documents(app), K.BANK_ACCOUNT_PROOF, holder_name=ENTERPRISE_NAME
    )
    assert check_documents(app, documents, today=TODAY).complete


def test_enterprise_must_settle_to_a_corporate_account() -> None:
    app = with_field(
        enterprise_application(), "settlement_account.account_kind", AccountKind.PERSONAL
    )
    app = with_field(app, "settlement_account.account_number", make_bank_card(7))
    issues = validate_application(app, today=TODAY)
    assert codes(issues) == {"settlement_account.account_kind": IssueCode.NOT_APPLICABLE}
    assert "corporate account" in issues[0].message


@pytest.mark.parametrize("holder", [LEGAL_REP_NAME, INDIVIDUAL_NAME, f" {LEGAL_REP_NAME} "])
def test_individual_settles_to_the_merchant_or_its_legal_representative(holder: str) -> None:
    app = with_field(individual_application(), "settlement_account.holder_name", holder)
    assert validate_application(app, today=TODAY) == []
    assert check_documents(app, valid_documents(app), today=TODAY).complete


def test_individual_cannot_settle_to_someone_else() -> None:
    app = with_field(individual_application(), "settlement_account.holder_name", "王五")
    issues = validate_application(app, today=TODAY)
    assert codes(issues) == {"settlement_account.holder_name": IssueCode.NAME_MISMATCH}
    report = check_documents(app, valid_documents(app), today=TODAY)
    assert document_codes(report) == {
        "documents.bank_account_proof.holder_name": IssueCode.NAME_MISMATCH
    }
    assert K.BANK_ACCOUNT_PROOF not in report.accepted


def test_application_issues_make_the_report_incomplete() -> None:
    app = with_field(individual_application(), "contact.mobile", "1381234567")
    report = check_documents(app, valid_documents(app), today=TODAY)
    assert codes(report.issues) == {"contact.mobile": IssueCode.INVALID_FORMAT}
    assert report.accepted == required_documents(app)
    assert not report.complete


# --- document rules --------------------------------------------------------------------------

OTHER_ID = make_resident_id(date(1990, 7, 1), 456)


@pytest.mark.parametrize(
    ("app", "kind", "changes", "field", "code"),
    [
        (
            individual_application(),
            K.IDENTITY_CARD,
            {"number": wrong_last(VALID_ID)},
            "number",
            IssueCode.CHECKSUM,
        ),
        (
            individual_application(),
            K.IDENTITY_CARD,
            {"number": "19850314"},
            "number",
            IssueCode.INVALID_FORMAT,
        ),
        (individual_application(), K.IDENTITY_CARD, {"number": ""}, "number", IssueCode.REQUIRED),
        (
            individual_application(),
            K.IDENTITY_CARD,
            {"number": "000000194912310027"},
            "number",
            IssueCode.UNKNOWN_REGION,
        ),
        (
            individual_application(),
            K.IDENTITY_CARD,
            {"number": OTHER_ID},
            "number",
            IssueCode.NUMBER_MISMATCH,
        ),
        (
            individual_application(),
            K.IDENTITY_CARD,
            {"holder_name": "李四"},
            "holder_name",
            IssueCode.NAME_MISMATCH,
        ),
        (
            individual_application(),
            K.IDENTITY_CARD,
            {"holder_name": " "},
            "holder_name",
            IssueCode.REQUIRED,
        ),
        (
            individual_application(passport=True),
            K.PASSPORT,
            {"number": "E87654321"},
            "number",
            IssueCode.NUMBER_MISMATCH,
        ),
        (
            individual_application(passport=True),
            K.PASSPORT,
            {"number": "E1"},
            "number",
            IssueCode.INVALID_FORMAT,
        ),
        (
            individual_application(passport=True),
            K.PASSPORT,
            {"holder_name": "Jane Smith"},
            "holder_name",
            IssueCode.NAME_MISMATCH,
        ),
        (
            enterprise_application(),
            K.BUSINESS_LICENCE,
            {"number": wrong_last(make_uscc(2))},
            "number",
            IssueCode.CHECKSUM,
        ),
        (
            enterprise_application(),
            K.BUSINESS_LICENCE,
            {"number": make_uscc(99)},
            "number",
            IssueCode.NUMBER_MISMATCH,
        ),
        (
            enterprise_application(),
            K.BUSINESS_LICENCE,
            {"number": make_registration_number(2)},
            "number",
            IssueCode.INVALID_FORMAT,
        ),
        (
            enterprise_application(legacy=True),
            K.BUSINESS_LICENCE,
            {"number": make_registration_number(99)},
            "number",
            IssueCode.NUMBER_MISMATCH,
        ),
        (
            enterprise_application(legacy=True),
            K.BUSINESS_LICENCE,
            {"number": wrong_last(make_registration_number(2))},
            "number",
            IssueCode.CHECKSUM,
        ),
        (
            enterprise_application(legacy=True),
            K.ORGANISATION_CODE,
            {"number": ORG_CODE[:8] + "Y"},
            "number",
            IssueCode.INVALID_FORMAT,
        ),
        (
            enterprise_application(legacy=True),
            K.ORGANISATION_CODE,
            {"number": wrong_last(ORG_CODE)},
            "number",
            IssueCode.CHECKSUM,
        ),
        (
            enterprise_application(legacy=True),
            K.TAX_REGISTRATION,
            {"number": ORG_CODE},
            "number",
            IssueCode.INVALID_FORMAT,
        ),
        (
            enterprise_application(legacy=True),
            K.TAX_REGISTRATION,
            {"number": "11010A" + ORG_CODE},
            "number",
            IssueCode.INVALID_FORMAT,
        ),
        (
            enterprise_application(legacy=True),
            K.TAX_REGISTRATION,
            {"number": "110108" + wrong_last(ORG_CODE)},
            "number",
            IssueCode.CHECKSUM,
        ),
        (
            enterprise_application(legacy=True),
            K.TAX_REGISTRATION,
            {"number": make_tax_registration(make_org_code(4))},
            "number",
            IssueCode.NUMBER_MISMATCH,
        ),
        (
            individual_application(),
            K.BANK_ACCOUNT_PROOF,
            {"number": make_bank_card(2)},
            "number",
            IssueCode.NUMBER_MISMATCH,
        ),
        (
            individual_application(),
            K.BANK_ACCOUNT_PROOF,
            {"number": wrong_last(make_bank_card(1))},
            "number",
            IssueCode.CHECKSUM,
        ),
        (
            enterprise_application(),
            K.BANK_ACCOUNT_PROOF,
            {"number": "0200 0000"},
            "number",
            IssueCode.INVALID_FORMAT,
        ),
        (
            individual_application(),
            K.BANK_ACCOUNT_PROOF,
            {"holder_name": INDIVIDUAL_NAME},
            "holder_name",
            IssueCode.NAME_MISMATCH,
        ),
        (
            enterprise_application(),
            K.BANK_ACCOUNT_PROOF,
            {"holder_name": "北京示例商贸有限公司"},
            "holder_name",
            IssueCode.NAME_MISMATCH,
        ),
    ],
)
def test_document_rules(
    app: Application, kind: DocumentKind, changes: dict[str, Any], field: str, code: IssueCode
) -> None:
    documents = replace_document(valid_documents(app), kind, **changes)
    report = check_documents(app, documents, today=TODAY)
    assert document_codes(report) == {f"documents.{kind.value}.{field}": code}
    assert kind not in report.accepted
    assert report.accepted == [k for k in required_documents(app) if k is not kind]
    assert report.missing == []
    assert not report.complete
    number = changes.get("number", "")
    assert all(number not in issue.message for issue in report.issues if number)


def test_tax_registration_needs_no_certificate_to_compare_with() -> None:
    app = enterprise_application(legacy=True)
    documents = [d for d in valid_documents(app) if d.kind is not K.ORGANISATION_CODE]
    documents = replace_document(
        documents, K.TAX_REGISTRATION, number=make_tax_registration(make_org_code(4))
    )
    report = check_documents(app, documents, today=TODAY)
    assert report.issues == []
    assert report.missing == [K.ORGANISATION_CODE]


def test_organisation_code_certificate_accepts_both_printed_forms() -> None:
    app = enterprise_application(legacy=True)
    for number in (ORG_CODE, f"{ORG_CODE[:8]}-{ORG_CODE[8]}"):
        documents = replace_document(valid_documents(app), K.ORGANISATION_CODE, number=number)
        assert check_documents(app, documents, today=TODAY).complete


# --- expiry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [K.IDENTITY_CARD, K.BUSINESS_LICENCE, K.BANK_ACCOUNT_PROOF])
def test_expired_document(kind: DocumentKind) -> None:
    app = individual_application()
    documents = replace_document(valid_documents(app), kind, expires_on=TODAY - timedelta(days=1))
    report = check_documents(app, documents, today=TODAY)
    assert document_codes(report) == {f"documents.{kind.value}.expires_on": IssueCode.EXPIRED}
    assert kind not in report.accepted


def test_document_valid_through_its_expiry_date() -> None:
    app = individual_application()
    documents = replace_document(valid_documents(app), K.IDENTITY_CARD, expires_on=TODAY)
    assert check_documents(app, documents, today=TODAY).complete
    later = TODAY + timedelta(days=1)
    report = check_documents(app, documents, today=later)
    assert document_codes(report) == {"documents.identity_card.expires_on": IssueCode.EXPIRED}


# --- documents that are not needed ----------------------------------------------------------


def test_tax_registration_with_a_uscc_licence_is_not_applicable() -> None:
    app = enterprise_application()
    tax = Document(kind=K.TAX_REGISTRATION, file_id="f-tax", number=make_tax_registration(ORG_CODE))
    report = check_documents(app, [*valid_documents(app), tax], today=TODAY)
    assert codes(report.issues) == {"documents.tax_registration": IssueCode.NOT_APPLICABLE}
    assert K.TAX_REGISTRATION not in report.accepted
    assert report.accepted == required_documents(app)
    assert not report.complete


def test_individual_never_needs_organisation_code() -> None:
    app = individual_application(legacy=True)
    org = Document(kind=K.ORGANISATION_CODE, file_id="f-org", number=ORG_CODE)
    report = check_documents(app, [*valid_documents(app), org], today=TODAY)
    assert codes(report.issues) == {"documents.organisation_code": IssueCode.NOT_APPLICABLE}


def test_document_requested_by_a_reviewer_is_required_and_checked() -> None:
    app = individual_application(physical_shop=False)
    report = check_documents(
        app, valid_documents(app), today=TODAY, extra_required=[K.PREMISES_PHOTOS]
    )
    assert report.missing == [K.PREMISES_PHOTOS]

    photos = Document(kind=K.PREMISES_PHOTOS, file_id="f-photos", expires_on=TODAY - timedelta(1))
    report = check_documents(
        app, [*valid_documents(app), photos], today=TODAY, extra_required=[K.PREMISES_PHOTOS]
    )
    assert document_codes(report) == {"documents.premises_photos.expires_on": IssueCode.EXPIRED}
    assert report.missing == []


# --- resubmission ----------------------------------------------------------------------------


def test_later_document_of_the_same_kind_replaces_the_earlier() -> None:
    app = individual_application()
    good = valid_documents(app)
    bad_card = replace_document(good, K.IDENTITY_CARD, number=OTHER_ID)[0]
    good_card = good[0]
    assert bad_card.kind is good_card.kind is K.IDENTITY_CARD

    fixed = check_documents(app, [bad_card, *good], today=TODAY)
    assert fixed.complete

    broken = check_documents(app, [*good, bad_card], today=TODAY)
    assert document_codes(broken) == {"documents.identity_card.number": IssueCode.NUMBER_MISMATCH}
    assert K.IDENTITY_CARD not in broken.accepted


# --- personal data in messages ---------------------------------------------------------------


def test_messages_never_hold_a_full_number() -> None:
    app = individual_application()
    app = with_field(app, "legal_representative.id_number", wrong_last(VALID_ID))
    app = with_field(app, "settlement_account.account_number", wrong_last(make_bank_card(1)))
    app = with_field(app, "merchant.licence.number", wrong_last(make_uscc(5)))
    documents = valid_documents(individual_application())
    documents = replace_document(documents, K.IDENTITY_CARD, number=OTHER_ID)
    documents = replace_document(documents, K.BANK_ACCOUNT_PROOF, number=make_bank_card(2))
    documents = replace_document(documents, K.BUSINESS_LICENCE, number=make_uscc(6))
    report = check_documents(app, documents, today=TODAY)

    numbers = [
        app.legal_representative.id_number,
        app.settlement_account.account_number,
        app.merchant.licence.number,
        *(d.number for d in documents if d.number),
    ]
    messages = [issue.message for issue in report.issues]
    assert len(messages) >= 6
    for number in numbers:
        for message in messages:
            assert number not in message
    mismatch = next(i for i in report.issues if i.field == "documents.identity_card.number")
    assert mismatch.message == (
        f"identity card number {OTHER_ID[:3]}{'*' * 11}{OTHER_ID[-4:]} "
        "does not match the legal representative's"
    )


def test_messages_on_a_legacy_enterprise_hold_no_full_number() -> None:
    app = enterprise_application(legacy=True)
    documents = replace_document(
        valid_documents(app), K.TAX_REGISTRATION, number=make_tax_registration(make_org_code(4))
    )
    documents = replace_document(documents, K.BANK_ACCOUNT_PROOF, number="02000000000000000009")
    documents = replace_document(documents, K.ORGANISATION_CODE, number=ORG_CODE)
    report = check_documents(app, documents, today=TODAY)
    assert set(document_codes(report).values()) == {IssueCode.NUMBER_MISMATCH}
    for issue in report.issues:
        for number in (d.number for d in documents if d.number):
            assert number not in issue.message


# --- the activity ----------------------------------------------------------------------------


async def test_activity_returns_the_same_report() -> None:
    app = enterprise_application(legacy=True)
    documents = replace_document(valid_documents(app), K.IDENTITY_CARD, number=OTHER_ID)
    request = ValidateDocuments(
        application=app, documents=documents, extra_required=[K.PREMISES_PHOTOS.value], as_of=TODAY
    )
    report = await ActivityEnvironment().run(validate_documents, request)
    expected = check_documents(app, documents, today=TODAY, extra_required=[K.PREMISES_PHOTOS])
    assert report == expected
    assert not report.complete


async def test_activity_uses_the_requested_date() -> None:
    app = individual_application()
    documents = replace_document(valid_documents(app), K.IDENTITY_CARD, expires_on=TODAY)
    env = ActivityEnvironment()
    on_time = await env.run(
        validate_documents, ValidateDocuments(application=app, documents=documents, as_of=TODAY)
    )
    late = await env.run(
        validate_documents,
        ValidateDocuments(application=app, documents=documents, as_of=TODAY + timedelta(days=1)),
    )
    assert on_time.complete
    assert document_codes(late) == {"documents.identity_card.expires_on": IssueCode.EXPIRED}


async def test_activity_rejects_an_unknown_kind_for_good() -> None:
    app = individual_application()
    request = ValidateDocuments(
        application=app, documents=[], extra_required=["utility_bill"], as_of=TODAY
    )
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(validate_documents, request)
    assert raised.value.non_retryable
