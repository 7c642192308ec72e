"""Check-character, format and masking rules of `schemas.identifiers`."""

from __future__ import annotations

import string
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stdnum import exceptions as stdnum_exceptions
from stdnum.cn import ric as stdnum_ric
from stdnum.cn import uscc as stdnum_uscc

from activities.documents import validate_application
from cli.samples import sample
from schemas.application import LicenceKind
from schemas.documents import IssueCode
from schemas.identifiers import (
    DIVISION_CODES,
    USCC_ALPHABET,
    USCC_ENTITY_TYPES,
    USCC_NATIONAL_REGION,
    check_bank_card,
    check_corporate_account,
    check_mid,
    check_mobile,
    check_organisation_code,
    check_registration_number,
    check_resident_id,
    check_tid,
    check_uscc,
    division_code_abolished,
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


DIVISIONS = sorted(DIVISION_CODES)
divisions = st.sampled_from(DIVISIONS)
not_divisions = st.text(DIGITS, min_size=6, max_size=6).filter(lambda c: c not in DIVISION_CODES)

resident_ids = st.builds(
    make_resident_id,
    st.dates(min_value=date(1900, 1, 1), max_value=TODAY),
    st.integers(0, 999),
    divisions,
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
        IssueCode.UNKNOWN_REGION,
    }


# --- administrative division codes (GB/T 2260) ----------------------------------------------


def _resident_id(area: str, birth: str, seq: str = "002") -> str:
    body = f"{area}{birth}{seq}"
    return body + resident_id_check_char(body)


def test_division_table_is_python_stdnum_2_2() -> None:
    # python-stdnum is pinned; a new release may add codes (changes in 2025 and later).
    assert len(DIVISION_CODES) == 6885
    assert sum(map(division_code_abolished, DIVISION_CODES)) == 3371
    assert all(len(code) == 6 and code.isdigit() for code in DIVISION_CODES)


@pytest.mark.parametrize(
    "code",
    [
        "110000",  # 北京市 (a province-level code)
        "110100",  # 北京市市辖区 (a prefecture-level code)
        "110105",  # 北京市朝阳区
        "110108",  # 北京市海淀区
        "370202",  # 青岛市市南区, since 1983
        "440106",  # 广州市天河区, since 1985
        "513402",  # 会理市, since 2021
        "653228",  # 和康县, since 2024
    ],
)
def test_current_division_codes(code: str) -> None:
    assert code in DIVISION_CODES
    assert not division_code_abolished(code)


@pytest.mark.parametrize(
    "code",
    [
        "110103",  # 北京市崇文区, merged into 东城区 in 2010
        "110104",  # 北京市宣武区, merged into 西城区 in 2010
        "370205",  # 青岛市四方区, 1983-2012
        "370220",  # 青岛市市区, until 1983 (the "××××20" city-area codes of 1980-1982)
        "412723",  # 商水县 under 周口地区, until 2000 (python-stdnum issue #442)
        "442100",  # 海南行政区, under 广东省 until 1988
        "513425",  # 会理县, until 2021
    ],
)
def test_abolished_division_codes_stay_valid_in_resident_ids(code: str) -> None:
    assert code in DIVISION_CODES
    assert division_code_abolished(code)
    # whether the holder was born before, while or after the code was in use
    for birth in ("19300101", "19850601", "20200229"):
        assert check_resident_id(_resident_id(code, birth), today=TODAY) is None


@pytest.mark.parametrize(
    "number",
    [
        "990105194912310023",  # no province 99
        "000000194912310027",
        _resident_id("110199", "19850601"),  # no such county in 北京市
        # 830000 opens the residence permits of Taiwan residents (港澳台居民居住证); GB/T 2260
        # never issued it, so those permits are refused as resident IDs
        _resident_id("830000", "19850601"),
    ],
)
def test_resident_id_region_never_issued(number: str) -> None:
    assert resident_id_check_char(number[:17]) == number[17]  # a right check character
    assert check_resident_id(number, today=TODAY) is IssueCode.UNKNOWN_REGION


def test_resident_id_code_created_after_the_birth_passes() -> None:
    # 青岛市市南区 got 370202 in 1983; a holder born in 1955 was issued an ID with it.
    assert check_resident_id("370202195511198195", today=TODAY) is None


def test_python_stdnum_validator_is_not_used_for_resident_ids() -> None:
    # Why the region check reads python-stdnum's table but not its validator: the validator
    # refuses a code that did not exist at the birth date.
    with pytest.raises(stdnum_exceptions.InvalidComponent):
        stdnum_ric.validate("370202195511198195")


def test_demo_merchants_carry_only_division_codes() -> None:
    for seed in range(300):
        application = sample(seed).application
        assert application.legal_representative.id_number[:6] in DIVISION_CODES
        licence = application.merchant.licence
        area = licence.number[2:8] if licence.kind is LicenceKind.USCC else licence.number[:6]
        assert area in DIVISION_CODES
        assert validate_application(application, today=TODAY) == []
    with pytest.raises(ValueError, match="not a GB/T 2260 division code"):
        make_resident_id(date(1985, 3, 14), 1, "990105")
    with pytest.raises(ValueError, match="not a GB/T 2260 division code"):
        make_uscc(1, area="000000")


@given(not_divisions, st.dates(min_value=date(1900, 1, 1), max_value=TODAY), st.integers(0, 999))
def test_any_resident_id_with_a_region_outside_the_table_is_refused(
    area: str, birth: date, seq: int
) -> None:
    number = _resident_id(area, f"{birth:%Y%m%d}", f"{seq:03d}")
    assert check_resident_id(number, today=TODAY) is IssueCode.UNKNOWN_REGION


@given(divisions, st.dates(min_value=date(1900, 1, 1), max_value=TODAY), st.integers(0, 999))
def test_any_resident_id_from_the_table_with_valid_date_and_checksum_passes(
    area: str, birth: date, seq: int
) -> None:
    number = _resident_id(area, f"{birth:%Y%m%d}", f"{seq:03d}")
    assert check_resident_id(number, today=TODAY) is None


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


USCC_HEADS = sorted(a + t for a, types in USCC_ENTITY_TYPES.items() for t in types)

usccs = st.builds(
    _build_uscc,
    st.sampled_from(USCC_HEADS),
    st.one_of(divisions, st.just(USCC_NATIONAL_REGION)),
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
    # A letter in the area code is a format error; an authority, type or region the standards
    # never defined is named; anything else breaks a check character.
    assert check_uscc(changed) in {
        IssueCode.CHECKSUM,
        IssueCode.INVALID_FORMAT,
        IssueCode.UNKNOWN_ENTITY_TYPE,
        IssueCode.UNKNOWN_REGION,
    }


def test_uscc_with_an_undefined_authority_and_type_is_refused() -> None:
    # Both check characters are right, but 工商 (9) has no entity type G, and no division
    # 209971 was ever issued: the first rule broken is named.
    code = "9G209971145078087U"
    assert uscc_check_char(code[:17]) == code[17]
    assert check_organisation_code(code[8:17]) is None
    assert check_uscc(code) is IssueCode.UNKNOWN_ENTITY_TYPE


def test_uscc_authority_and_type_pairs_are_exactly_those_of_gb32100() -> None:
    defined = {
        ("1", "1"), ("1", "2"), ("1", "3"), ("1", "9"),
        ("2", "1"), ("2", "9"),
        ("3", "1"), ("3", "2"), ("3", "3"), ("3", "4"), ("3", "5"), ("3", "9"),
        ("4", "1"), ("4", "9"),
        ("5", "1"), ("5", "2"), ("5", "3"), ("5", "9"),
        ("6", "1"), ("6", "2"), ("6", "9"),
        ("7", "1"), ("7", "2"), ("7", "9"),
        ("8", "1"), ("8", "9"),
        ("9", "1"), ("9", "2"), ("9", "3"),
        ("A", "1"), ("A", "9"),
        ("N", "1"), ("N", "2"), ("N", "3"), ("N", "9"),
        ("Y", "1"),
    }  # fmt: skip
    for authority in USCC_ALPHABET:
        for entity_type in USCC_ALPHABET:
            code = _build_uscc(authority + entity_type, "110108", "M000100Y")
            expected = (
                None if (authority, entity_type) in defined else IssueCode.UNKNOWN_ENTITY_TYPE
            )
            assert check_uscc(code) is expected, code


def test_uscc_region_must_be_a_division_code_or_the_national_one() -> None:
    assert check_uscc(_build_uscc("91", "110105", "M000100Y")) is None  # a county
    assert check_uscc(_build_uscc("91", "350100", "M000100Y")) is None  # a prefecture
    assert check_uscc(_build_uscc("91", "110000", "M000100Y")) is None  # a province
    assert check_uscc(_build_uscc("91", "110103", "M000100Y")) is None  # abolished in 2010
    assert check_uscc(_build_uscc("11", USCC_NATIONAL_REGION, "00001314")) is None
    assert check_uscc(_build_uscc("91", "209971", "M000100Y")) is IssueCode.UNKNOWN_REGION
    assert check_uscc(_build_uscc("91", "000000", "M000100Y")) is IssueCode.UNKNOWN_REGION


@given(st.sampled_from(sorted(USCC_ENTITY_TYPES)), not_divisions, st.data())
def test_any_uscc_with_a_region_outside_the_table_is_refused(
    authority: str, area: str, data: st.DataObject
) -> None:
    if area == USCC_NATIONAL_REGION:
        return
    head = authority + data.draw(st.sampled_from(USCC_ENTITY_TYPES[authority]))
    code = _build_uscc(head, area, data.draw(st.text(USCC_ALPHABET, min_size=8, max_size=8)))
    assert check_uscc(code) is IssueCode.UNKNOWN_REGION


def test_python_stdnum_uscc_validator_is_not_used() -> None:
    # It refuses a letter among the first 8 characters, which GB 32100 allows for the authority
    # (A, N, Y), and it accepts authority and type pairs the standard does not define.
    for head in ("Y1", "N1", "A1"):
        code = _build_uscc(head, "110108", "M000100Y")
        assert check_uscc(code) is None
        assert not stdnum_uscc.is_valid(code)
    undefined = _build_uscc("99", "110108", "M000100Y")
    assert stdnum_uscc.is_valid(undefined)
    assert check_uscc(undefined) is IssueCode.UNKNOWN_ENTITY_TYPE


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


@pytest.mark.parametrize("number", ["14512345678", "16612345678", "17012345678", "19212345678"])
def test_mobile_ranges_of_every_operator(number: str) -> None:
    assert check_mobile(number) is None


@pytest.mark.parametrize("number", ["10012345678", "11012345678", "12012345678"])
def test_mobile_range_not_assigned_to_mobiles(number: str) -> None:
    # 11 digits starting with 1, but no mobile range in China's numbering plan (libphonenumber)
    assert check_mobile(number) is IssueCode.INVALID_FORMAT


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
