"""Document collection rules (准备申请资料): which documents an application needs, and whether the
application and the documents on file are valid and consistent, plus the activity running them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import catalog
from schemas.application import (
    AccountKind,
    Application,
    IdentityKind,
    LicenceKind,
    MerchantType,
    SettlementAccount,
)
from schemas.channels import REGULATED_CATEGORIES, normalise_category, profile_for
from schemas.documents import Document, DocumentKind, FieldIssue, IssueCode, ValidationReport
from schemas.identifiers import (
    check_bank_card,
    check_corporate_account,
    check_mobile,
    check_organisation_code,
    check_registration_number,
    check_resident_id,
    check_uscc,
    mask_account,
    mask_id_number,
    normalise_organisation_code,
)
from schemas.steps import SettlementChecked, ValidateDocuments, ValidateSettlement

_CHECK_RULES: dict[IssueCode, str] = {
    IssueCode.INVALID_FORMAT: "is not in the expected format",
    IssueCode.CHECKSUM: "has a check character that does not match",
    IssueCode.INVALID_BIRTH_DATE: "carries a birth date that is not a real date from 1900 to today",
    IssueCode.UNKNOWN_REGION: "carries a region code that GB/T 2260 has never issued",
    IssueCode.UNKNOWN_ENTITY_TYPE: (
        "starts with a registering authority and entity type (characters 1-2) "
        "that GB 32100 does not define"
    ),
}


# --- names and numbers -----------------------------------------------------------------------


def normalise_name(name: str) -> str:
    """A name as compared by the same-name rule: no whitespace (ASCII or full-width), and
    full-width parentheses read as ASCII ones, because bank records and licences differ in both."""
    return "".join(name.split()).replace("（", "(").replace("）", ")")


def _same_name(a: str, b: str) -> bool:
    return normalise_name(a) == normalise_name(b)


def _check_passport(number: str) -> IssueCode | None:
    if not 5 <= len(number) <= 17 or not (number.isascii() and number.isalnum()):
        return IssueCode.INVALID_FORMAT
    return None


def _id_check(app: Application, *, today: date) -> Callable[[str], IssueCode | None]:
    if app.legal_representative.id_kind is IdentityKind.PASSPORT:
        return _check_passport
    return lambda number: check_resident_id(number, today=today)


def _licence_check(app: Application) -> Callable[[str], IssueCode | None]:
    if app.merchant.licence.kind is LicenceKind.USCC:
        return check_uscc
    return check_registration_number


def _account_check(app: Application) -> Callable[[str], IssueCode | None]:
    if app.settlement_account.account_kind is AccountKind.PERSONAL:
        return check_bank_card
    return check_corporate_account


def _check_tax_registration(number: str) -> IssueCode | None:
    # A legacy tax registration number (税务登记证号) is the 6-digit area code followed by the
    # holder's 9-character organisation code.
    head, org_code = number[:6], number[6:]
    if len(number) != 15 or not (head.isascii() and head.isdigit()):
        return IssueCode.INVALID_FORMAT
    return check_organisation_code(org_code)


_RESIDENT_ID_RULE = "GB 11643: 17 digits, then a digit or X"
_LICENCE_STANDARD = {LicenceKind.USCC: "GB 32100", LicenceKind.LEGACY: "ISO 7064 MOD 11,10"}
_ACCOUNT_RULE = {AccountKind.PERSONAL: "Luhn, 12-19 digits", AccountKind.CORPORATE: "8-30 digits"}


def _number_issue(field: str, code: IssueCode, label: str, rule: str) -> FieldIssue:
    return FieldIssue(field=field, code=code, message=f"{label} {_CHECK_RULES[code]} ({rule})")


def _id_rule(app: Application) -> str:
    if app.legal_representative.id_kind is IdentityKind.PASSPORT:
        return "passport: 5-17 letters or digits"
    return _RESIDENT_ID_RULE


# --- required documents ----------------------------------------------------------------------


def required_documents(app: Application, extra: Iterable[DocumentKind] = ()) -> list[DocumentKind]:
    """The documents `app` needs, plus the `extra` kinds a reviewer asked for, in enum order."""
    kinds = set(extra)
    if app.legal_representative.id_kind is IdentityKind.PASSPORT:
        kinds.add(DocumentKind.PASSPORT)
    else:
        kinds.add(DocumentKind.IDENTITY_CARD)
    kinds.update((DocumentKind.BUSINESS_LICENCE, DocumentKind.BANK_ACCOUNT_PROOF))
    if app.merchant.physical_shop:
        kinds.add(DocumentKind.PREMISES_PHOTOS)
    # The three-in-one USCC licence (三证合一) replaces the two separate certificates.
    if (
        app.merchant.merchant_type is MerchantType.ENTERPRISE
        and app.merchant.licence.kind is LicenceKind.LEGACY
    ):
        kinds.update((DocumentKind.TAX_REGISTRATION, DocumentKind.ORGANISATION_CODE))
    # The channel's own (schemas.channels): what it asks of this merchant type, and the
    # industry licence (相关行业经营许可证) of a regulated business category.
    profile = profile_for(app.channel)
    kinds.update(profile.documents.extra.get(app.merchant.merchant_type, ()))
    if profile.industry_licence_needed(app.merchant.business_category):
        kinds.add(DocumentKind.INDUSTRY_LICENCE)
    return [kind for kind in DocumentKind if kind in kinds]


def required_documents_v1(app: Application) -> list[DocumentKind]:
    """The rules of December 2026, frozen: the documents of a run started before the rules were
    captured in its input. Never edit this: open runs replay with it."""
    kinds = {
        DocumentKind.PASSPORT
        if app.legal_representative.id_kind is IdentityKind.PASSPORT
        else DocumentKind.IDENTITY_CARD,
        DocumentKind.BUSINESS_LICENCE,
        DocumentKind.BANK_ACCOUNT_PROOF,
    }
    if app.merchant.physical_shop:
        kinds.add(DocumentKind.PREMISES_PHOTOS)
    if (
        app.merchant.merchant_type is MerchantType.ENTERPRISE
        and app.merchant.licence.kind is LicenceKind.LEGACY
    ):
        kinds.update((DocumentKind.TAX_REGISTRATION, DocumentKind.ORGANISATION_CODE))
    return [kind for kind in DocumentKind if kind in kinds]


# --- the application's own fields ------------------------------------------------------------


def validate_application(app: Application, *, today: date) -> list[FieldIssue]:
    """Issues with the application's own identifiers and with its settlement account holder."""
    issues: list[FieldIssue] = []

    id_number = app.legal_representative.id_number
    code = _id_check(app, today=today)(id_number)
    if code is not None:
        issues.append(
            _number_issue(
                "legal_representative.id_number",
                code,
                f"legal representative's ID number {mask_id_number(id_number)}",
                _id_rule(app),
            )
        )

    licence = app.merchant.licence
    code = _licence_check(app)(licence.number)
    if code is not None:
        issues.append(
            _number_issue(
                "merchant.licence.number",
                code,
                f"licence number {mask_id_number(licence.number)}",
                _LICENCE_STANDARD[licence.kind],
            )
        )

    account = app.settlement_account
    masked_account = mask_account(account.account_number)
    code = _account_check(app)(account.account_number)
    if code is not None:
        issues.append(
            _number_issue(
                "settlement_account.account_number",
                code,
                f"{account.account_kind.value} account number {masked_account}",
                _ACCOUNT_RULE[account.account_kind],
            )
        )

    code = check_mobile(app.contact.mobile)
    if code is not None:
        issues.append(
            FieldIssue(
                field="contact.mobile",
                code=code,
                message=(
                    "contact mobile number must be a mainland China mobile number: 11 digits "
                    "in a range assigned to mobiles (+86, spaces and hyphens may be written)"
                ),
            )
        )

    if (
        app.merchant.merchant_type is MerchantType.ENTERPRISE
        and account.account_kind is not AccountKind.CORPORATE
    ):
        issues.append(
            FieldIssue(
                field="settlement_account.account_kind",
                code=IssueCode.NOT_APPLICABLE,
                message="an enterprise must settle to a corporate account, not a personal one",
            )
        )
    issue = _same_name_issue(app, account.holder_name, "settlement_account.holder_name")
    if issue is not None:
        issues.append(issue)
    return issues


def _same_name_issue(app: Application, holder_name: str, field: str) -> FieldIssue | None:
    # 与商户名称一致: the money goes to the merchant; an individual business (个体工商户) is
    # its owner, so the legal representative's own account is accepted for it as well.
    if _same_name(holder_name, app.merchant.name):
        return None
    if app.merchant.merchant_type is MerchantType.INDIVIDUAL:
        if _same_name(holder_name, app.legal_representative.name):
            return None
        message = (
            "settlement account holder must be the merchant or its legal representative "
            "(same-name rule)"
        )
    else:
        message = "settlement account holder must be the enterprise itself (same-name rule)"
    return FieldIssue(field=field, code=IssueCode.NAME_MISMATCH, message=message)


# --- the documents ---------------------------------------------------------------------------


def _latest_by_kind(documents: Sequence[Document]) -> dict[DocumentKind, Document]:
    # Documents come in submission order, so a resubmitted kind (补充资料) replaces the old one.
    latest: dict[DocumentKind, Document] = {}
    for document in documents:
        latest[document.kind] = document
    return latest


class _DocumentChecker:
    """Collects the issues of one document; one issue per field at most."""

    def __init__(self, document: Document, today: date) -> None:
        self.document = document
        self.today = today
        self.prefix = f"documents.{document.kind.value}"
        self.label = document.kind.value.replace("_", " ")
        self.issues: list[FieldIssue] = []

    def add(self, field: str, code: IssueCode, message: str) -> None:
        self.issues.append(FieldIssue(field=f"{self.prefix}.{field}", code=code, message=message))

    def present(self, field: str, value: str) -> bool:
        if value.strip():
            return True
        self.add(field, IssueCode.REQUIRED, f"{self.label} {field.replace('_', ' ')} is required")
        return False

    def number(
        self,
        check: Callable[[str], IssueCode | None],
        rule: str,
        mask: Callable[[str], str],
        expected: str | None = None,
        expected_of: str = "",
    ) -> bool:
        """Checks the number's format and check character, then that it equals `expected`.

        Returns whether the number is valid (equal or not), so cross-document checks can run.
        """
        number = self.document.number
        if not self.present("number", number):
            return False
        code = check(number)
        if code is not None:
            message = f"{self.label} number {mask(number)} {_CHECK_RULES[code]} ({rule})"
            self.add("number", code, message)
            return False
        if expected is not None and number != expected:
            self.add(
                "number",
                IssueCode.NUMBER_MISMATCH,
                f"{self.label} number {mask(number)} does not match {expected_of}",
            )
        return True

    def holder(self, expected: str, expected_of: str) -> bool:
        name = self.document.holder_name
        if not self.present("holder_name", name):
            return False
        if not _same_name(name, expected):
            self.add(
                "holder_name",
                IssueCode.NAME_MISMATCH,
                f"{self.label} holder name does not match {expected_of}",
            )
            return False
        return True

    def unexpired(self) -> None:
        expires_on = self.document.expires_on
        if expires_on is not None and expires_on < self.today:
            self.add(
                "expires_on",
                IssueCode.EXPIRED,
                f"{self.label} expired on {expires_on.isoformat()}; an unexpired one is needed",
            )


def check_documents(
    app: Application,
    documents: Sequence[Document],
    *,
    today: date,
    extra_required: Iterable[DocumentKind] = (),
) -> ValidationReport:
    """Validate the documents on file (in submission order) against the application.

    The report also carries the application's own issues (`validate_application`), so that
    `complete` means the case can go to review as it stands.
    """
    required = required_documents(app, extra_required)
    latest = _latest_by_kind(documents)
    issues = validate_application(app, today=today)
    accepted: list[DocumentKind] = []

    for kind in DocumentKind:
        document = latest.get(kind)
        if document is None:
            continue
        if kind not in required:
            issues.append(
                FieldIssue(
                    field=f"documents.{kind.value}",
                    code=IssueCode.NOT_APPLICABLE,
                    message=f"{kind.value.replace('_', ' ')} is not required for this application",
                )
            )
            continue
        document_issues = _check_document(app, document, latest, today)
        issues.extend(document_issues)
        if not document_issues:
            accepted.append(kind)

    missing = [kind for kind in required if kind not in latest]
    return ValidationReport(issues=issues, missing=missing, accepted=accepted)


def _check_document(
    app: Application, document: Document, latest: dict[DocumentKind, Document], today: date
) -> list[FieldIssue]:
    checker = _DocumentChecker(document, today)
    checker.unexpired()
    rep = app.legal_representative
    account = app.settlement_account
    licence = app.merchant.licence

    match document.kind:
        case DocumentKind.IDENTITY_CARD:
            checker.number(
                lambda number: check_resident_id(number, today=today),
                _RESIDENT_ID_RULE,
                mask_id_number,
                rep.id_number if rep.id_kind is IdentityKind.RESIDENT_ID else None,
                "the legal representative's",
            )
            checker.holder(rep.name, "the legal representative's name")
        case DocumentKind.PASSPORT:
            checker.number(
                _check_passport,
                "5-17 letters or digits",
                mask_id_number,
                rep.id_number if rep.id_kind is IdentityKind.PASSPORT else None,
                "the legal representative's",
            )
            checker.holder(rep.name, "the legal representative's name")
        case DocumentKind.BUSINESS_LICENCE:
            checker.number(
                _licence_check(app),
                _LICENCE_STANDARD[licence.kind],
                mask_id_number,
                licence.number,
                "the licence number in the application",
            )
        case DocumentKind.ORGANISATION_CODE:
            checker.number(check_organisation_code, "GB 11714", mask_id_number)
        case DocumentKind.TAX_REGISTRATION:
            _check_tax_certificate(checker, latest)
        case DocumentKind.BANK_ACCOUNT_PROOF:
            checker.number(
                _account_check(app),
                _ACCOUNT_RULE[account.account_kind],
                mask_account,
                account.account_number,
                "the settlement account in the application",
            )
            if checker.holder(account.holder_name, "the settlement account holder's name"):
                issue = _same_name_issue(app, document.holder_name, f"{checker.prefix}.holder_name")
                if issue is not None:
                    checker.issues.append(issue)
        case DocumentKind.PREMISES_PHOTOS:
            pass  # the photos themselves are the evidence: file_id is all that is needed
        case DocumentKind.INDUSTRY_LICENCE:
            _check_industry_licence(checker, app)
    return checker.issues


def _check_industry_licence_number(number: str) -> IssueCode | None:
    # Licence numbers differ by licence (食品经营许可证 JY + 14 digits, 药品经营许可证 京AA0100001,
    # 烟草专卖零售许可证 12 digits...): an optional province abbreviation, then 6-30 letters or
    # digits. No check character is common to them.
    body = number[1:] if number and "\u4e00" <= number[0] <= "\u9fff" else number
    if not 6 <= len(body) <= 30 or not (body.isascii() and body.isalnum()):
        return IssueCode.INVALID_FORMAT
    return None


def _check_industry_licence(checker: _DocumentChecker, app: Application) -> None:
    """相关行业经营许可证: a number in a licence's format, issued to the merchant itself (the name
    on the business licence), unexpired; the licence for the merchant's category is named."""
    category = normalise_category(app.merchant.business_category)
    licence = REGULATED_CATEGORIES.get(category, "industry licence")
    checker.number(
        _check_industry_licence_number,
        f"{licence}: an optional province abbreviation, then 6-30 letters or digits",
        mask_id_number,
    )
    checker.holder(app.merchant.name, f"the merchant's name (the {licence} is the merchant's own)")


def _check_tax_certificate(checker: _DocumentChecker, latest: dict[DocumentKind, Document]) -> None:
    if not checker.number(
        _check_tax_registration, "6-digit area code + GB 11714 organisation code", mask_id_number
    ):
        return
    org_certificate = latest.get(DocumentKind.ORGANISATION_CODE)
    if org_certificate is None or check_organisation_code(org_certificate.number) is not None:
        return
    if checker.document.number[6:] != normalise_organisation_code(org_certificate.number):
        checker.add(
            "number",
            IssueCode.NUMBER_MISMATCH,
            f"tax registration number {mask_id_number(checker.document.number)} does not carry "
            "the organisation code of the organisation code certificate",
        )


# --- the activity ----------------------------------------------------------------------------


@activity.defn(name=catalog.VALIDATE_DOCUMENTS)
async def validate_documents(request: ValidateDocuments) -> ValidationReport:
    """Validate the documents on file as of `request.as_of` (the workflow's date, not the clock)."""
    try:
        extra = [DocumentKind(kind) for kind in request.extra_required]
    except ValueError as error:
        # A retry cannot fix an unknown document kind: fail the activity for good.
        raise ApplicationError(
            f"unknown document kind in extra_required: {error}",
            type="UnknownDocumentKind",
            non_retryable=True,
        ) from error
    report = check_documents(
        request.application, request.documents, today=request.as_of, extra_required=extra
    )
    activity.logger.info(
        "documents validated: %d issues, %d missing, %d accepted",
        len(report.issues),
        len(report.missing),
        len(report.accepted),
    )
    return report


@activity.defn(name=catalog.VALIDATE_SETTLEMENT)
async def validate_settlement(request: ValidateSettlement) -> SettlementChecked:
    """After go-live: a new settlement account (重新绑定) checked with the rules the application's
    own account met (Luhn for a personal card, a corporate account for an enterprise, the
    same-name rule), as of the workflow's date. Issues name `account.<field>`."""
    try:
        account = SettlementAccount(
            holder_name=request.account_holder,
            account_kind=AccountKind(request.account_kind),
            account_number=request.account_number,
            bank_name=request.bank_name,
        )
    except ValueError as err:
        raise ApplicationError(
            f"malformed settlement account: {type(err).__name__}", non_retryable=True
        ) from err
    app = request.application.model_copy(update={"settlement_account": account})
    prefix = "settlement_account."
    issues = [
        issue.model_copy(update={"field": "account." + issue.field.removeprefix(prefix)})
        for issue in validate_application(app, today=request.as_of)
        if issue.field.startswith(prefix)
    ]
    return SettlementChecked(issues=issues)
