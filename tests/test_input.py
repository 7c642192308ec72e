"""What people type into the models: input no one could mean is refused with the field and the
rule; what people do type (spaces, full-width digits, +86, a lowercase x) is normalised."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from activities.documents import check_documents, validate_application
from cli.samples import make_resident_id
from schemas.application import (
    Application,
    IdentifierStr,
    LegalRepresentative,
    MobileNumber,
    Model,
    Note,
    OptionalIdentifier,
    OptionalName,
    OptionalText,
    PersonName,
    Text,
    normalise_mobile,
)
from schemas.documents import Document, DocumentKind, IssueCode
from schemas.messages import (
    AdminAction,
    CancelRequest,
    ReviewDecision,
    ShipmentScan,
    SiteSurveyResult,
    TrainingCompleted,
)
from tests.factories import (
    ENTERPRISE_NAME,
    TODAY,
    enterprise_application,
    individual_application,
    valid_documents,
)

FULL_WIDTH = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")
# An ID whose check character is X: the lowercase x case is then a valid number.
ID_WITH_X = next(
    number
    for seq in range(1000)
    if (number := make_resident_id(date(1985, 3, 14), seq)).endswith("X")
)

# (a character no one could mean in a name, the error type that names the rule)
HOSTILE = [
    ("\x00", "control_character"),  # NUL
    ("\x1b", "control_character"),  # ESC: terminal escape sequences
    ("\x7f", "control_character"),  # DEL
    ("\x85", "control_character"),  # NEL, a C1 control
    ("\n", "control_character"),  # a line break inside a one-line field
    ("\u202a", "bidi_control"),  # LEFT-TO-RIGHT EMBEDDING
    ("\u202e", "bidi_control"),  # RIGHT-TO-LEFT OVERRIDE (Trojan Source)
    ("\u2066", "bidi_control"),  # LEFT-TO-RIGHT ISOLATE
    ("\u2069", "bidi_control"),  # POP DIRECTIONAL ISOLATE
    ("\u200f", "bidi_control"),  # RIGHT-TO-LEFT MARK
    ("\u200b", "zero_width_character"),  # ZERO WIDTH SPACE
    ("\u200d", "zero_width_character"),  # ZERO WIDTH JOINER
    ("\u2060", "zero_width_character"),  # WORD JOINER
    ("\ufeff", "zero_width_character"),  # ZERO WIDTH NO-BREAK SPACE (BOM)
    ("\u00ad", "format_character"),  # SOFT HYPHEN
    ("\U000e0041", "format_character"),  # TAG LATIN CAPITAL LETTER A (hidden text)
    ("\ud800", "surrogate"),  # what JSON's "\ud800" decodes to
    ("\u2028", "line_separator"),
]
REFUSED_CHARS = [char for char, _ in HOSTILE]


def application_data(app: Application | None = None) -> dict[str, Any]:
    return (app or individual_application()).model_dump(mode="json")


def with_value(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, leaf = path.split(".")
    node = data
    for name in parents:
        node = node[name]
    node[leaf] = value
    return data


def only_error(err: pytest.ExceptionInfo[ValidationError]) -> dict[str, Any]:
    errors = err.value.errors()
    assert len(errors) == 1, errors
    return dict(errors[0])


# --- refused, with the field and the rule ----------------------------------------------------

APPLICATION_TEXT_FIELDS = [
    "merchant.name",
    "merchant.address.street",
    "legal_representative.name",
    "legal_representative.id_number",
    "contact.name",
    "contact.mobile",
    "settlement_account.holder_name",
    "settlement_account.account_number",
    "merchant.licence.number",
]


@pytest.mark.parametrize(("char", "kind"), HOSTILE, ids=[k + hex(ord(c)) for c, k in HOSTILE])
@pytest.mark.parametrize("path", APPLICATION_TEXT_FIELDS)
def test_application_refuses_characters_no_one_could_mean(path: str, char: str, kind: str) -> None:
    value = f"张三{char}便利店" if "name" in path or "street" in path else f"13{char}812345678"
    with pytest.raises(ValidationError) as err:
        Application.model_validate(with_value(application_data(), path, value))
    error = only_error(err)
    leaf = path.rsplit(".", 1)[1]
    assert error["loc"] == tuple(path.split("."))
    assert error["type"] == kind
    assert error["msg"].startswith(f"{leaf} must not contain ")
    assert f"U+{ord(char):04X} at position 3" in error["msg"]
    assert value not in error["msg"] and "张三" not in error["msg"]


def test_nul_in_the_merchant_name_is_named() -> None:
    data = with_value(application_data(), "merchant.name", "张三\x00便利店")
    with pytest.raises(ValidationError) as err:
        Application.model_validate(data)
    error = only_error(err)
    assert error["loc"] == ("merchant", "name")
    assert error["msg"] == "name must not contain a control character (U+0000 at position 3)"


def test_right_to_left_override_in_the_holder_name_is_named() -> None:
    data = with_value(application_data(), "settlement_account.holder_name", "\u202e三张")
    with pytest.raises(ValidationError) as err:
        Application.model_validate(data)
    error = only_error(err)
    assert error["loc"] == ("settlement_account", "holder_name")
    assert error["msg"] == (
        "holder_name must not contain a bidirectional text control (U+202E at position 1)"
    )


def test_position_counts_from_what_was_sent() -> None:
    data = with_value(application_data(), "contact.name", "\u3000 李\u200b四")
    with pytest.raises(ValidationError) as err:
        Application.model_validate(data)
    assert only_error(err)["msg"] == (
        "name must not contain a zero-width character (U+200B at position 4)"
    )


@pytest.mark.parametrize("blank", ["", " ", " \u3000 ", "\u3000", "\t\n", "\u00a0"])
@pytest.mark.parametrize(
    "path",
    [
        "merchant.name",
        "legal_representative.name",
        "contact.name",
        "settlement_account.holder_name",
        "settlement_account.bank_name",
        "merchant.address.city",
        "legal_representative.id_number",
        "contact.mobile",
    ],
)
def test_blank_names_and_numbers_are_refused(path: str, blank: str) -> None:
    with pytest.raises(ValidationError) as err:
        Application.model_validate(with_value(application_data(), path, blank))
    error = only_error(err)
    leaf = path.rsplit(".", 1)[1]
    assert error["loc"] == tuple(path.split("."))
    assert error["type"] == "blank"
    assert error["msg"] == f"{leaf} must not be blank (empty or only spaces)"


def test_every_bad_field_is_named_at_once() -> None:
    data = application_data()
    with_value(data, "merchant.name", " \u3000 ")
    with_value(data, "legal_representative.name", "张\x00三")
    with_value(data, "contact.name", "李四\u202e")
    with pytest.raises(ValidationError) as err:
        Application.model_validate(data)
    assert {e["loc"]: e["type"] for e in err.value.errors()} == {
        ("merchant", "name"): "blank",
        ("legal_representative", "name"): "control_character",
        ("contact", "name"): "bidi_control",
    }


@pytest.mark.parametrize(
    ("field", "value", "kind"),
    [
        ("file_id", "scan\x00.jpg", "control_character"),
        ("file_id", " \u3000 ", "blank"),
        ("number", "110108\u202e19850314", "bidi_control"),
        ("holder_name", "张\u200b三", "zero_width_character"),
    ],
)
def test_document_fields_refuse_what_no_one_could_mean(field: str, value: str, kind: str) -> None:
    data = {"kind": "identity_card", "file_id": "f-1", field: value}
    with pytest.raises(ValidationError) as err:
        Document.model_validate(data)
    error = only_error(err)
    assert error["loc"] == (field,)
    assert error["type"] == kind
    assert error["msg"].startswith(f"{field} must not ")


@pytest.mark.parametrize(
    ("model", "data", "loc", "kind"),
    [
        (
            ReviewDecision,
            {"outcome": "rejected", "reasons": ["ok", "bad\u202etxt"], "reviewer": "r1"},
            ("reasons", 1),
            "bidi_control",
        ),
        (
            ReviewDecision,
            {"outcome": "rejected", "reasons": [" \u3000 "], "reviewer": "r1"},
            ("reasons", 0),
            "blank",
        ),
        (ReviewDecision, {"outcome": "approved", "reviewer": " \u3000 "}, ("reviewer",), "blank"),
        (
            ReviewDecision,
            {"outcome": "approved", "reviewer": "rev\x00iewer"},
            ("reviewer",),
            "control_character",
        ),
        (CancelRequest, {"reason": "\u3000", "requested_by": "m"}, ("reason",), "blank"),
        (
            CancelRequest,
            {"reason": "no longer\x00needed", "requested_by": "m"},
            ("reason",),
            "control_character",
        ),
        (
            CancelRequest,
            {"reason": "moving", "requested_by": "ops\u2066"},
            ("requested_by",),
            "bidi_control",
        ),
        (AdminAction, {"admin": "ad\u200bmin"}, ("admin",), "zero_width_character"),
        (AdminAction, {"admin": "a", "note": "fixed\x1b[2J"}, ("note",), "control_character"),
        (
            SiteSurveyResult,
            {"survey_id": "s", "passed": True, "surveyor": "s", "notes": "a\x00b"},
            ("notes",),
            "control_character",
        ),
        (
            TrainingCompleted,
            {"session_id": "t", "trainer": "t", "topics": ["refunds", "\u200b"]},
            ("topics", 1),
            "zero_width_character",
        ),
    ],
)
def test_messages_refuse_what_no_one_could_mean(
    model: type[Model], data: dict[str, Any], loc: tuple[Any, ...], kind: str
) -> None:
    ids = {"decision_id": "d1", "case_id": "c1", "round": 1, "request_id": "r1", "event_id": "e1"}
    fields = {k: v for k, v in ids.items() if k in model.model_fields}
    with pytest.raises(ValidationError) as err:
        model.model_validate({**fields, **data})
    error = only_error(err)
    assert error["loc"] == loc
    assert error["type"] == kind
    assert str(loc[0]) in error["msg"]


# --- normalised ------------------------------------------------------------------------------


def test_names_are_stripped_but_kept_as_written() -> None:
    data = application_data(enterprise_application())
    with_value(data, "merchant.name", f"\u3000{ENTERPRISE_NAME} \n")
    with_value(data, "settlement_account.holder_name", f" {ENTERPRISE_NAME}\u3000")
    app = Application.model_validate(data)
    assert app.merchant.name == ENTERPRISE_NAME  # full-width parentheses kept: no NFKC on names
    assert "（" in app.merchant.name
    assert app.settlement_account.holder_name == ENTERPRISE_NAME
    assert validate_application(app, today=TODAY) == []


def test_full_width_identifiers_read_as_ascii() -> None:
    app = individual_application()
    number = app.legal_representative.id_number
    data = application_data(app)
    with_value(data, "legal_representative.id_number", f"\u3000{number.translate(FULL_WIDTH)} ")
    with_value(data, "contact.mobile", "１３８１２３４５６７８")
    with_value(data, "merchant.address.postcode", "１０００８０")
    normalised = Application.model_validate(data)
    assert normalised.legal_representative.id_number == number
    assert normalised.contact.mobile == "13812345678"
    assert normalised.merchant.address.postcode == "100080"
    assert validate_application(normalised, today=TODAY) == []


def test_postcode_takes_ascii_digits_only_after_nfkc() -> None:
    data = with_value(application_data(), "merchant.address.postcode", "١٠٠٠٨٠")  # Arabic-Indic
    with pytest.raises(ValidationError) as err:
        Application.model_validate(data)
    assert only_error(err)["loc"] == ("merchant", "address", "postcode")


@pytest.mark.parametrize("written", [ID_WITH_X[:17] + "x", ID_WITH_X[:17] + "ｘ", ID_WITH_X])
def test_resident_id_check_character_x_is_uppercase(written: str) -> None:
    app = individual_application()
    data = with_value(application_data(app), "legal_representative.id_number", written)
    normalised = Application.model_validate(data)
    assert normalised.legal_representative.id_number == ID_WITH_X
    document = Document(kind=DocumentKind.IDENTITY_CARD, file_id="f", number=written)
    assert document.number == ID_WITH_X
    documents = [
        document.model_copy(update={"holder_name": normalised.legal_representative.name})
        if d.kind is DocumentKind.IDENTITY_CARD
        else d
        for d in valid_documents(normalised)
    ]
    assert check_documents(normalised, documents, today=TODAY).complete


def test_lowercase_x_stays_in_a_passport_number() -> None:
    rep = LegalRepresentative(name="John Smith", id_kind="passport", id_number="e1234567x")
    assert rep.id_number == "e1234567x"
    assert Document(kind=DocumentKind.PASSPORT, file_id="f", number="e1234567x").number == (
        "e1234567x"
    )


@pytest.mark.parametrize(
    "written",
    [
        "13812345678",
        " 138 1234 5678 ",
        "138-1234-5678",
        "+86 138 1234 5678",
        "+86-13812345678",
        "(+86) 138 1234 5678",
        "0086 138 1234 5678",
        "8613812345678",
        "１３８　１２３４　５６７８",
        "＋８６ １３８１２３４５６７８",
    ],
)
def test_mobile_as_people_write_it_is_stored_as_11_digits(written: str) -> None:
    data = with_value(application_data(), "contact.mobile", written)
    app = Application.model_validate(data)
    assert app.contact.mobile == "13812345678"
    assert validate_application(app, today=TODAY) == []


@pytest.mark.parametrize(
    "written", ["+852 9123 4567", "+1 415 555 0100", "010-1234-5678", "1381234567", "138123456789"]
)
def test_numbers_that_are_not_mainland_mobiles_are_named(written: str) -> None:
    app = Application.model_validate(with_value(application_data(), "contact.mobile", written))
    issues = validate_application(app, today=TODAY)
    assert [(i.field, i.code) for i in issues] == [("contact.mobile", IssueCode.INVALID_FORMAT)]
    assert "mainland China mobile number" in issues[0].message


def test_free_text_may_span_lines_where_it_is_a_note() -> None:
    result = SiteSurveyResult(
        event_id="e", survey_id="s", passed=True, surveyor=" 王五 ", notes=" 门头照\n\t收银台 \n"
    )
    assert result.notes == "门头照\n\t收银台"
    assert result.surveyor == "王五"
    decision = ReviewDecision.model_validate(
        {
            "decision_id": "d",
            "case_id": "c",
            "round": 1,
            "outcome": "rejected",
            "reasons": ["营业执照\n已过期"],
            "reviewer": "r",
        }
    )
    assert decision.reasons == ["营业执照\n已过期"]


def test_optional_text_of_spaces_only_reads_as_empty() -> None:
    scan = ShipmentScan(
        event_id="e", shipment_id="s", location=" \u3000 ", scanned_at="2025-06-01T08:00:00+08:00"
    )
    assert scan.location == ""
    document = Document(
        kind=DocumentKind.PREMISES_PHOTOS, file_id="f", number=" ", holder_name="　"
    )
    assert (document.number, document.holder_name) == ("", "")


def test_a_blank_holder_name_on_a_document_is_named_as_required() -> None:
    app = individual_application()
    documents = [
        d.model_copy(update={"holder_name": ""}) if d.kind is DocumentKind.IDENTITY_CARD else d
        for d in valid_documents(app)
    ]
    documents[0] = Document.model_validate({**documents[0].model_dump(), "holder_name": "\u3000"})
    report = check_documents(app, documents, today=TODAY)
    assert [(i.field, i.code) for i in report.issues] == [
        ("documents.identity_card.holder_name", IssueCode.REQUIRED)
    ]


# --- properties ------------------------------------------------------------------------------


class Probe(Model):
    name: PersonName = "x"
    optional_name: OptionalName = ""
    text: Text = "x"
    optional_text: OptionalText = ""
    note: Note = ""
    identifier: IdentifierStr = "x"
    optional_identifier: OptionalIdentifier = ""
    mobile: MobileNumber = "13812345678"


PROBE_FIELDS = list(Probe.model_fields)


@given(st.sampled_from(PROBE_FIELDS), st.text(max_size=30))
def test_normalisation_is_idempotent(field: str, text: str) -> None:
    try:
        once = getattr(Probe.model_validate({field: text}), field)
    except ValidationError:
        return
    assert getattr(Probe.model_validate({field: once}), field) == once


@given(
    st.sampled_from(PROBE_FIELDS),
    st.text(max_size=10),
    st.sampled_from([c for c in REFUSED_CHARS if c != "\n"]),
    st.text(max_size=10),
)
def test_any_text_with_a_character_no_one_could_mean_is_refused(
    field: str, head: str, bad: str, tail: str
) -> None:
    with pytest.raises(ValidationError) as err:
        Probe.model_validate({field: head + bad + tail})
    assert {e["loc"] for e in err.value.errors()} == {(field,)}


@given(
    st.lists(st.sampled_from(["+86", "0086", "86", " ", "-", "(", ")", "1", "3", "8", "0"]))
    .map("".join)
    .filter(lambda written: len(written) <= 24)
)
def test_mobile_normalisation_is_idempotent(written: str) -> None:
    once = normalise_mobile(written)
    assert normalise_mobile(once) == once


@pytest.mark.parametrize("written", ["+86+8613812345678", "0086 0086 13812345678", "86 138 1234"])
def test_a_country_code_is_dropped_only_before_a_mobile_number(written: str) -> None:
    assert normalise_mobile(written) == written.replace(" ", "")


@given(st.sampled_from([individual_application, enterprise_application]), st.booleans())
def test_a_stored_application_validates_to_itself(build: Any, legacy: bool) -> None:
    app = build(legacy=legacy)
    assert Application.model_validate(app.model_dump()) == app
    assert Application.model_validate_json(app.model_dump_json()) == app


def test_a_mobile_that_normalises_in_two_steps_reads_back_as_itself() -> None:
    """Found by the property above in CI: NFKC turns U+00A8 into a space and a combining mark,
    dropping the space lets the mark compose with the letter before it."""
    once = Probe.model_validate({"mobile": "A\u00a8"}).mobile
    assert Probe.model_validate({"mobile": once}).mobile == once


@pytest.mark.parametrize("text", [")", " - ", "()", "-"])
def test_a_mobile_of_separators_only_is_blank(text: str) -> None:
    """Found by the property above: ")" normalised to "" and was kept, then refused on reading
    back. Nothing of a number left is as blank as an empty field."""
    with pytest.raises(ValidationError) as err:
        Probe.model_validate({"mobile": text})
    assert [e["type"] for e in err.value.errors()] == ["blank"]
