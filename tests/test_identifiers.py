"""Check-character, format and masking rules of `schemas.identifiers`."""

from __future__ import annotations

import string
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.documents import IssueCode
from schemas.identifiers import (
    USCC_ALPHABET,
    check_bank_card,
    check_corporate_account,
    check_mid,
    check_mobile,
    check_organisation_code,
    check_registration_number,
    check_resident_id,
    check_tid,
    check_uscc,
    luhn_check_digit,
    mask_account,
    mask_id_number,
    mask_mobile,
    organisation_code_check_char,
    registration_check_digit,
    resident_id_check_char,
    uscc_check_char,
)
from tests.factories import (
    TODAY,
    make_bank_card,
    make_org_code,
    make_registration_number,
    make_resident_id,
    make_uscc,
)

DIGITS = string.digits
ORG_ALPHABET = string.digits + string.ascii_uppercase
ID_CHECK_CHARS = DIGITS + "X"


def substitute(value: str, index: int, char: str) -> str:
    return value[:index] + char + value[index + 1 :]


def other_char(alphabet: str, current: str) -> st.SearchStrategy[str]:
    return st.sampled_from([c for c in alphabet if c != current])


# --- resident identity number ----------------------------------------------------------------


def test_gb11643_standard_example_is_valid() -> None:
    assert resident_id_check_char("11010519491231002") == "X"
    assert check_resident_id("11010519491231002X", today=TODAY) is None


def test_resident_id_check_char_digit_example() -> None:
    # The weighted sum over 11010519850314123 is 194; 194 mod 11 = 7; "10X98765432"[7] = '5'.
    assert resident_id_check_char("11010519850314123") == "5"
    assert check_resident_id("110105198503141235", today=TODAY) is None


@pytest.mark.parametrize(
    "number",
    [
        "11010519491231002x",  # lowercase x is not the canonical form
        "11010519491231002",  # 17 characters
        "11010519491231002X1",  # 19 characters
        "1101051949123100XX",  # X before the check position
        "A1010519491231002X",
        "１1010519491231002X",  # full-width digit
        "",
    ],
)
def test_resident_id_format_errors(number: str) -> None:
    assert check_resident_id(number, today=TODAY) is IssueCode.INVALID_FORMAT


def test_resident_id_wrong_check_char() -> None:
    assert check_resident_id("110105194912310021", today=TODAY) is IssueCode.CHECKSUM


def _with_birth(birth: str) -> str:
    body = f"110105{birth}002"
    return body + resident_id_check_char(body)


@pytest.mark.parametrize(
    "birth",
    [
        "20000230",  # 30 February
        "20190229",  # 2019 is not a leap year
        "19851301",  # month 13
        "19850100",  # day 0
        "18991231",  # before 1900
        (TODAY + timedelta(days=1)).strftime("%Y%m%d"),  # in the future
    ],
)
def test_resident_id_birth_date_errors(birth: str) -> None:
    assert check_resident_id(_with_birth(birth), today=TODAY) is IssueCode.INVALID_BIRTH_DATE


@pytest.mark.parametrize("birth", ["19000101", "20000229", TODAY.strftime("%Y%m%d")])
def test_resident_id_birth_date_bounds_are_valid(birth: str) -> None:
    assert check_resident_id(_with_birth(birth), today=TODAY) is None


def test_resident_id_birth_date_is_checked_before_checksum() -> None:
    body = "11010520000230002"
    wrong = next(c for c in ID_CHECK_CHARS if c != resident_id_check_char(body))
    assert check_resident_id(body + wrong, today=TODAY) is IssueCode.INVALID_BIRTH_DATE


def test_resident_id_check_char_rejects_a_bad_body() -> None:
    with pytest.raises(ValueError):
        resident_id_check_char("1101051949123100")
    with pytest.raises(ValueError):
        resident_id_check_char("1101051949123100A")


resident_ids = st.builds(
    make_resident_id,
    st.dates(min_value=date(1900, 1, 1), max_value=TODAY),
    st.integers(0, 999),
    st.text(DIGITS, min_size=6, max_size=6),
)


@given(resident_ids)
def test_generated_resident_id_is_valid(number: str) -> None:
    assert check_resident_id(number, today=TODAY) is None


@given(resident_ids, st.data())
def test_any_single_substitution_in_resident_id_fails(number: str, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, 17))
    alphabet = ID_CHECK_CHARS if index == 17 else DIGITS
    changed = substitute(number, index, data.draw(other_char(alphabet, number[index])))
    assert check_resident_id(changed, today=TODAY) in {
        IssueCode.CHECKSUM,
        IssueCode.INVALID_BIRTH_DATE,
    }


# --- organisation code -----------------------------------------------------------------------


def test_organisation_code_examples() -> None:
    assert organisation_code_check_char("M000100Y") == "4"
    assert check_organisation_code("M000100Y4") is None
    assert check_organisation_code("M000100Y-4") is None
    assert check_organisation_code("M000100Y5") is IssueCode.CHECKSUM


def test_organisation_code_check_char_ten_and_eleven() -> None:
    # C = 11 - (sum mod 11): "00000004" sums to 4*2 = 8, C = 3; "0000000B" sums to 11*2 = 22,
    # 0 mod 11, C = 11 -> '0'; "00000006" sums to 6*2 = 12, 1 mod 11, C = 10 -> 'X'.
    assert organisation_code_check_char("00000004") == "3"
    assert organisation_code_check_char("0000000B") == "0"
    assert organisation_code_check_char("00000006") == "X"
    assert check_organisation_code("00000006X") is None
    assert check_organisation_code("00000006-X") is None
    assert check_organisation_code("0000000B0") is None


@pytest.mark.parametrize(
    "code",
    [
        "00000006x",  # lowercase check character
        "0000000b0",  # lowercase body
        "00000006",
        "00000006XX",
        "0000000-6X",  # hyphen in the wrong place
        "00000006-",
        "00000006A",  # check character is a digit or X
        "0000-0006X",
    ],
)
def test_organisation_code_format_errors(code: str) -> None:
    assert check_organisation_code(code) is IssueCode.INVALID_FORMAT


def test_organisation_code_wrong_check_char() -> None:
    assert check_organisation_code("000000060") is IssueCode.CHECKSUM
    assert check_organisation_code("00000006-0") is IssueCode.CHECKSUM


def test_organisation_code_check_char_rejects_a_bad_body() -> None:
    with pytest.raises(ValueError):
        organisation_code_check_char("0000000a")
    with pytest.raises(ValueError):
        organisation_code_check_char("0000000")


org_codes = st.text(ORG_ALPHABET, min_size=8, max_size=8).map(
    lambda body: body + organisation_code_check_char(body)
)


def _org_value(char: str) -> int:
    return ORG_ALPHABET.index(char)


@given(org_codes)
def test_generated_organisation_code_is_valid(code: str) -> None:
    assert check_organisation_code(code) is None
    assert check_organisation_code(f"{code[:8]}-{code[8]}") is None


@given(org_codes, st.data())
def test_single_substitution_in_organisation_code(code: str, data: st.DataObject) -> None:
    """MOD 11 over values 0-35 detects a substitution unless the two values differ by a multiple
    of 11 (e.g. '0' and 'B'), a blind spot of GB 11714 itself; the check character always."""
    index = data.draw(st.integers(0, 8))
    if index == 8:
        changed = substitute(code, 8, data.draw(other_char(ID_CHECK_CHARS, code[8])))
        assert check_organisation_code(changed) is IssueCode.CHECKSUM
        return
    char = data.draw(other_char(ORG_ALPHABET, code[index]))
    result = check_organisation_code(substitute(code, index, char))
    if (_org_value(char) - _org_value(code[index])) % 11 == 0:
        assert result is None
    else:
        assert result is IssueCode.CHECKSUM


@given(st.integers(0, 10**8 - 1))
def test_digit_only_organisation_codes_detect_every_digit_substitution(seed: int) -> None:
    code = make_org_code(seed)
    for index in range(8):
        for char in DIGITS.replace(code[index], ""):
            assert check_organisation_code(substitute(code, index, char)) is IssueCode.CHECKSUM


# --- Unified Social Credit Code --------------------------------------------------------------


def test_well_known_uscc_is_valid() -> None:
    assert uscc_check_char("91350100M000100Y4") == "3"
    assert check_uscc("91350100M000100Y43") is None


def test_uscc_wrong_check_char() -> None:
    assert check_uscc("91350100M000100Y44") is IssueCode.CHECKSUM


@pytest.mark.parametrize(
    "code",
    [
        "91350100M000100Y4",  # 17 characters
        "91350100M000100Y433",
        "91350100M000100Y4I",  # I, O, S, V, Z are not in the alphabet
        "9135010OM000100Y43",
        "91350100S000100Y43",
        "91350100V000100Y43",
        "91350100Z000100Y43",
        "91350100m000100y43",  # lowercase
        "",
    ],
)
def test_uscc_format_errors(code: str) -> None:
    assert check_uscc(code) is IssueCode.INVALID_FORMAT


def test_uscc_area_code_must_be_digits() -> None:
    body = "9135A100M000100Y4"
    assert check_uscc(body + uscc_check_char(body)) is IssueCode.INVALID_FORMAT


def test_uscc_embedded_organisation_code_must_pass_its_own_check() -> None:
    body = "91350100M000100Y5"  # M000100Y's check character is 4, not 5
    code = body + uscc_check_char(body)
    assert check_organisation_code(code[8:17]) is IssueCode.CHECKSUM
    assert check_uscc(code) is IssueCode.CHECKSUM


def test_uscc_check_char_rejects_a_bad_body() -> None:
    with pytest.raises(ValueError):
        uscc_check_char("91350100I000100Y4")


def _build_uscc(head: str, area: str, org_body: str) -> str:
    body = head + area + org_body + organisation_code_check_char(org_body)
    return body + uscc_check_char(body)


usccs = st.builds(
    _build_uscc,
    st.text(USCC_ALPHABET, min_size=2, max_size=2),
    st.text(DIGITS, min_size=6, max_size=6),
    st.text(USCC_ALPHABET, min_size=8, max_size=8),
)


@given(usccs)
def test_generated_uscc_is_valid(code: str) -> None:
    assert check_uscc(code) is None


@given(st.integers(0, 10**8 - 1))
def test_factory_uscc_is_valid(seed: int) -> None:
    assert check_uscc(make_uscc(seed)) is None
    assert check_uscc(make_uscc(seed, prefix="92")) is None


@given(usccs, st.data())
def test_any_single_substitution_in_uscc_fails(code: str, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, 17))
    changed = substitute(code, index, data.draw(other_char(USCC_ALPHABET, code[index])))
    # A letter in the area code is a format error; anything else breaks a check character.
    assert check_uscc(changed) in {IssueCode.CHECKSUM, IssueCode.INVALID_FORMAT}


# --- legacy registration number --------------------------------------------------------------


def test_registration_number_worked_example() -> None:
    assert registration_check_digit("11010800000001") == "6"
    assert check_registration_number("110108000000016") is None


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("110108000000017", IssueCode.CHECKSUM),
        ("11010800000001", IssueCode.INVALID_FORMAT),
        ("1101080000000160", IssueCode.INVALID_FORMAT),
        ("11010800000001X", IssueCode.INVALID_FORMAT),
        ("", IssueCode.INVALID_FORMAT),
    ],
)
def test_registration_number_errors(number: str, expected: IssueCode) -> None:
    assert check_registration_number(number) is expected


def test_registration_check_digit_rejects_a_bad_body() -> None:
    with pytest.raises(ValueError):
        registration_check_digit("1101080000000")


registration_numbers = st.text(DIGITS, min_size=14, max_size=14).map(
    lambda body: body + registration_check_digit(body)
)


@given(registration_numbers)
def test_generated_registration_number_is_valid(number: str) -> None:
    assert check_registration_number(number) is None


@given(registration_numbers, st.data())
def test_any_single_substitution_in_registration_number_fails(
    number: str, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, 14))
    changed = substitute(number, index, data.draw(other_char(DIGITS, number[index])))
    assert check_registration_number(changed) is IssueCode.CHECKSUM


def test_mod_11_10_detects_every_single_digit_error_exhaustively() -> None:
    # Each step maps the running value through a bijection of the digit, so a single changed
    # digit always changes the final state: checked over every position and digit here.
    for seed in (0, 1, 12345678, 99999999):
        number = make_registration_number(seed)
        assert check_registration_number(number) is None
        for index in range(15):
            for char in DIGITS.replace(number[index], ""):
                changed = substitute(number, index, char)
                assert check_registration_number(changed) is IssueCode.CHECKSUM


# --- bank cards and accounts -----------------------------------------------------------------


def test_luhn_known_values() -> None:
    assert luhn_check_digit("7992739871") == "3"  # the textbook example 79927398713
    assert check_bank_card("4111111111111111") is None
    assert check_bank_card("4111111111111112") is IssueCode.CHECKSUM
    assert check_bank_card(make_bank_card(1)) is None


@pytest.mark.parametrize(
    "number", ["41111111111", "41111111111111111111", "4111 1111 1111 1111", "411111111111111a", ""]
)
def test_bank_card_format_errors(number: str) -> None:
    assert check_bank_card(number) is IssueCode.INVALID_FORMAT


def test_bank_card_length_bounds() -> None:
    for length in (12, 19):
        body = "6" * (length - 1)
        assert check_bank_card(body + luhn_check_digit(body)) is None


def test_luhn_check_digit_rejects_a_bad_body() -> None:
    with pytest.raises(ValueError):
        luhn_check_digit("")
    with pytest.raises(ValueError):
        luhn_check_digit("12a4")


bank_cards = st.text(DIGITS, min_size=11, max_size=18).map(
    lambda body: body + luhn_check_digit(body)
)


@given(bank_cards)
def test_generated_bank_card_is_valid(number: str) -> None:
    assert check_bank_card(number) is None


@given(bank_cards, st.data())
def test_any_single_substitution_in_bank_card_fails(number: str, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(number) - 1))
    changed = substitute(number, index, data.draw(other_char(DIGITS, number[index])))
    assert check_bank_card(changed) is IssueCode.CHECKSUM


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("12345678", None),
        ("1" * 30, None),
        ("1234567", IssueCode.INVALID_FORMAT),
        ("1" * 31, IssueCode.INVALID_FORMAT),
        ("1234-5678", IssueCode.INVALID_FORMAT),
        ("", IssueCode.INVALID_FORMAT),
    ],
)
def test_corporate_account(number: str, expected: IssueCode | None) -> None:
    assert check_corporate_account(number) is expected


# --- mobile, MID, TID ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("13812345678", None),
        ("19912345678", None),
        ("1381234567", IssueCode.INVALID_FORMAT),
        ("138123456789", IssueCode.INVALID_FORMAT),
        ("23812345678", IssueCode.INVALID_FORMAT),
        ("+8613812345678", IssueCode.INVALID_FORMAT),
        ("138 1234 5678", IssueCode.INVALID_FORMAT),
        ("", IssueCode.INVALID_FORMAT),
    ],
)
def test_mobile(number: str, expected: IssueCode | None) -> None:
    assert check_mobile(number) is expected


@pytest.mark.parametrize(
    ("tid", "expected"),
    [
        ("A1B2C3D4", None),
        ("12345678", None),
        ("a1b2c3d4", IssueCode.INVALID_FORMAT),
        ("A1B2C3D", IssueCode.INVALID_FORMAT),
        ("A1B2C3D45", IssueCode.INVALID_FORMAT),
        ("A1B2-3D4", IssueCode.INVALID_FORMAT),
    ],
)
def test_tid(tid: str, expected: IssueCode | None) -> None:
    assert check_tid(tid) is expected


@pytest.mark.parametrize(
    ("mid", "expected"),
    [
        ("898110148160001", None),
        ("89811014816000", IssueCode.INVALID_FORMAT),
        ("8981101481600012", IssueCode.INVALID_FORMAT),
        ("89811014816000A", IssueCode.INVALID_FORMAT),
    ],
)
def test_mid(mid: str, expected: IssueCode | None) -> None:
    assert check_mid(mid) is expected


# --- masks -----------------------------------------------------------------------------------


def test_mask_examples() -> None:
    assert mask_id_number("11010519491231002X") == "110***********002X"
    assert mask_id_number("E12345678") == "E12**5678"
    assert mask_id_number("1234567") == "*****67"
    assert mask_id_number("12") == "**"
    assert mask_account("6222021234567890123") == "***************0123"
    assert mask_account("1234") == "****"
    assert mask_mobile("13812345678") == "138****5678"
    for mask in (mask_id_number, mask_account, mask_mobile):
        assert mask("") == ""


def _head_and_tail(n: int) -> set[int]:
    """Positions `mask_id_number` may show: first 3 and last 4, or the last 2 of a short value."""
    if n > 7:
        return set(range(3)) | set(range(n - 4, n))
    return set(range(n - 2, n)) if n > 2 else set()


@given(st.text(alphabet=st.characters(blacklist_characters="*"), max_size=40))
def test_masks_preserve_length_and_reveal_at_most_the_stated_characters(value: str) -> None:
    n = len(value)
    for mask, allowed in (
        (mask_id_number, _head_and_tail(n)),
        (mask_mobile, _head_and_tail(n)),
        (mask_account, set(range(n - 4, n)) if n > 4 else set()),
    ):
        masked = mask(value)
        assert len(masked) == n
        revealed = [i for i, c in enumerate(masked) if c != "*"]
        assert set(revealed) <= allowed
        assert all(masked[i] == value[i] for i in revealed)
        if n:
            assert masked != value
