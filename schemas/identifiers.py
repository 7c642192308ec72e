"""Format and check-character rules for Chinese identifiers, and masks for showing them safely.

Pure functions over strings, safe to import inside the Temporal workflow sandbox (passed through:
the division table is read once, at import). The checks take an identifier in its canonical form;
the models (`schemas.application`) normalise what people type into it first.
"""

from __future__ import annotations

from datetime import date

import phonenumbers
from stdnum import numdb

from schemas.documents import IssueCode

_DIGITS = frozenset("0123456789")
_UPPER_ALNUM = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")

_RESIDENT_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_RESIDENT_ID_CHECK_TABLE = "10X98765432"
_EARLIEST_BIRTH_DATE = date(1900, 1, 1)

_ORG_CODE_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_VALUES = {c: i for i, c in enumerate(USCC_ALPHABET)}
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def _is_digits(value: str, length: int | None = None) -> bool:
    # str.isdigit() alone also accepts non-ASCII digits such as '２' or '٣'.
    if length is not None and len(value) != length:
        return False
    return bool(value) and all(c in _DIGITS for c in value)


def _require(ok: bool, what: str, value: str) -> None:
    if not ok:
        raise ValueError(f"{what} expected, got {len(value)} characters that do not fit")


# --- administrative division codes (GB/T 2260) -----------------------------------------------


def _division_table() -> dict[str, str]:
    """Every code in python-stdnum's GB/T 2260 table (`stdnum/cn/loc.dat`), ever, with its names.

    The table is a `stdnum.numdb` tree: a two-digit province line, and under it four-digit lines
    for its prefectures and counties, each with `county="[from-to]name"` (one or more, comma
    separated: a code can be reissued). The years say when a name held the code; they are ignored
    here, because a resident ID keeps the code it was issued with (a county abolished since), and
    an older person's ID may carry a code created after their birth (issued when they moved).
    """
    table: dict[str, str] = {}

    def walk(prefixes: list[numdb.PrefixInfo], head: str, names: str) -> None:
        for length, low, high, props, children in prefixes:
            for value in range(int(low), int(high) + 1):
                code = f"{head}{value:0{length}d}"
                if len(code) < 6:
                    walk(children, code, props.get("province", names))
                elif len(code) == 6:
                    table[code] = props.get("county", names)

    walk(numdb.get("cn/loc").prefixes, "", "")
    return table


_DIVISIONS = _division_table()

DIVISION_CODES: frozenset[str] = frozenset(_DIVISIONS)
"""Every administrative division code GB/T 2260 has issued since 1980, abolished ones included:
provinces (110000), prefectures (110100) and counties (110105)."""


def division_code_abolished(code: str) -> bool:
    """Whether every name that held `code` has an end year (no division holds it today)."""
    names = _DIVISIONS.get(code, "")
    return bool(names) and all(
        name.startswith("[") and name[1 : name.index("]")].rpartition("-")[2]
        for name in names.split(",")
    )


# --- resident identity number (GB 11643) -----------------------------------------------------


def resident_id_check_char(body17: str) -> str:
    """Check character (ISO 7064 MOD 11-2) for the first 17 digits of a resident ID number."""
    _require(_is_digits(body17, 17), "17 ASCII digits", body17)
    total = sum(int(c) * w for c, w in zip(body17, _RESIDENT_ID_WEIGHTS, strict=True))
    return _RESIDENT_ID_CHECK_TABLE[total % 11]


def resident_id_birth_date(number: str) -> date | None:
    """The birth date at positions 7-14, or None when it is not a real calendar date."""
    text = number[6:14]
    if not _is_digits(text, 8):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def check_resident_id(number: str, *, today: date) -> IssueCode | None:
    """GB 11643 resident identity number: 17 digits and a check character.

    The check character must be a digit or an uppercase 'X'; a lowercase 'x' is INVALID_FORMAT
    here (the models write it as 'X' before this sees it), so the number on file is always in the
    one canonical form. Positions 1-6 must be a division code GB/T 2260 has issued at any time,
    whatever the birth date (`DIVISION_CODES`). The birth date (positions 7-14) must be a real
    date from 1900-01-01 up to `today`.
    """
    if not _is_digits(number[:17], 17) or len(number) != 18:
        return IssueCode.INVALID_FORMAT
    if number[17] not in _DIGITS and number[17] != "X":
        return IssueCode.INVALID_FORMAT
    if number[:6] not in DIVISION_CODES:
        return IssueCode.UNKNOWN_REGION
    birth = resident_id_birth_date(number)
    if birth is None or not _EARLIEST_BIRTH_DATE <= birth <= today:
        return IssueCode.INVALID_BIRTH_DATE
    if resident_id_check_char(number[:17]) != number[17]:
        return IssueCode.CHECKSUM
    return None


# --- organisation code (GB 11714) ------------------------------------------------------------


def _org_value(char: str) -> int:
    return int(char) if char in _DIGITS else ord(char) - ord("A") + 10


def organisation_code_check_char(body8: str) -> str:
    """Check character for the 8-character body (0-9, A-Z) of an organisation code."""
    _require(len(body8) == 8 and all(c in _UPPER_ALNUM for c in body8), "8 of 0-9A-Z", body8)
    total = sum(_org_value(c) * w for c, w in zip(body8, _ORG_CODE_WEIGHTS, strict=True))
    check = 11 - total % 11
    if check == 10:
        return "X"
    if check == 11:
        return "0"
    return str(check)


def normalise_organisation_code(code: str) -> str:
    """Drop the hyphen printed before the check character ("12345678-9" -> "123456789")."""
    if len(code) == 10 and code[8] == "-":
        return code[:8] + code[9:]
    return code


def check_organisation_code(code: str) -> IssueCode | None:
    """GB 11714 organisation code: 8 characters of 0-9A-Z and a check character (0-9 or X).

    The hyphenated form printed on certificates ("12345678-9") is accepted too.
    """
    code = normalise_organisation_code(code)
    if len(code) != 9 or not all(c in _UPPER_ALNUM for c in code[:8]):
        return IssueCode.INVALID_FORMAT
    if code[8] not in _DIGITS and code[8] != "X":
        return IssueCode.INVALID_FORMAT
    if organisation_code_check_char(code[:8]) != code[8]:
        return IssueCode.CHECKSUM
    return None


# --- Unified Social Credit Code (GB 32100-2015) ----------------------------------------------


def uscc_check_char(body17: str) -> str:
    """Check character for the first 17 characters of a Unified Social Credit Code."""
    _require(len(body17) == 17 and all(c in _USCC_VALUES for c in body17), "17 USCC chars", body17)
    total = sum(_USCC_VALUES[c] * w for c, w in zip(body17, _USCC_WEIGHTS, strict=True))
    return USCC_ALPHABET[(31 - total % 31) % 31]


# GB 32100-2015 table 1 and its amendments: the registering authority (登记管理部门, character 1)
# and the entity types (机构类别, character 2) each defines.
USCC_ENTITY_TYPES: dict[str, str] = {
    "1": "1239",  # 机构编制: 机关, 事业单位, 中央编办直接管理机构编制的群众团体, 其他
    "2": "19",  # 外交: 外国常驻新闻机构, 其他
    "3": "123459",  # 司法行政: 律师执业机构, 公证处, 基层法律服务所, 司法鉴定机构, 仲裁委员会, 其他
    "4": "19",  # 文化: 外国在华文化中心, 其他
    "5": "1239",  # 民政: 社会团体, 民办非企业单位, 基金会, 其他
    "6": "129",  # 旅游: 外国旅游部门常驻代表机构, 港澳台地区旅游部门常驻内地(大陆)代表机构, 其他
    "7": "129",  # 宗教: 宗教活动场所, 宗教院校, 其他
    "8": "19",  # 工会: 基层工会, 其他
    "9": "123",  # 工商 (市场监管): 企业, 个体工商户, 农民专业合作社
    "A": "19",  # 中央军委改革和编制办公室: 军队事业单位, 其他
    "N": "1239",  # 农业: 组级, 村级, 乡镇级集体经济组织, 其他
    "Y": "1",  # 其他: one type only
}
# A code registered by a national authority carries the country's own code as its region
# (国发〔2015〕33号, the scheme GB 32100 implements: "国家用100000"); GB/T 2260 lists no such row.
USCC_NATIONAL_REGION = "100000"


def check_uscc(code: str) -> IssueCode | None:
    """GB 32100-2015 Unified Social Credit Code (统一社会信用代码), 18 characters.

    Characters 1-2 are a registering authority and one of its entity types (`USCC_ENTITY_TYPES`);
    characters 3-8 the registering authority's division code (`DIVISION_CODES`, or 100000 for a
    national one); characters 9-17 a GB 11714 organisation code, whose own check character must
    also be right.
    """
    if len(code) != 18 or not all(c in _USCC_VALUES for c in code):
        return IssueCode.INVALID_FORMAT
    if not _is_digits(code[2:8], 6):
        return IssueCode.INVALID_FORMAT
    if code[1] not in USCC_ENTITY_TYPES.get(code[0], ""):
        return IssueCode.UNKNOWN_ENTITY_TYPE
    if code[2:8] not in DIVISION_CODES and code[2:8] != USCC_NATIONAL_REGION:
        return IssueCode.UNKNOWN_REGION
    if uscc_check_char(code[:17]) != code[17]:
        return IssueCode.CHECKSUM
    if check_organisation_code(code[8:17]) is not None:
        return IssueCode.CHECKSUM
    return None


# --- legacy business registration number (15 digits) -----------------------------------------


def registration_check_digit(body14: str) -> str:
    """Check digit (ISO 7064 MOD 11,10) for the first 14 digits of a legacy registration number.

    Worked example, body 11010800000001 (p starts at 10; s = (p + d) mod 10, 0 read as 10;
    p' = 2s mod 11):
        d=1 s=1 p=2 | d=1 s=3 p=6 | d=0 s=6 p=1 | d=1 s=2 p=4 | d=0 s=4 p=8 | d=8 s=6 p=1
        d=0 s=1 p=2 | d=0 s=2 p=4 | d=0 s=4 p=8 | d=0 s=8 p=5 | d=0 s=5 p=10 | d=0 s=10 p=9
        d=0 s=9 p=7 | d=1 s=8 p=5
    so c = (11 - 5) mod 10 = 6 and the full number is 110108000000016.
    """
    _require(_is_digits(body14, 14), "14 ASCII digits", body14)
    p = 10
    for char in body14:
        s = (p + int(char)) % 10 or 10
        p = (2 * s) % 11
    return str((11 - p) % 10)


def check_registration_number(number: str) -> IssueCode | None:
    """Legacy 15-digit business registration number (注册号) with an ISO 7064 MOD 11,10 check."""
    if not _is_digits(number, 15):
        return IssueCode.INVALID_FORMAT
    if registration_check_digit(number[:14]) != number[14]:
        return IssueCode.CHECKSUM
    return None


# --- bank accounts ---------------------------------------------------------------------------


def luhn_check_digit(body: str) -> str:
    """Luhn check digit to append to `body` (all digits, at least one)."""
    _require(_is_digits(body), "ASCII digits", body)
    total = 0
    # Counting from the right of the body, every first digit is the one doubled once the check
    # digit is appended.
    for i, char in enumerate(reversed(body)):
        d = int(char)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def check_bank_card(number: str) -> IssueCode | None:
    """A personal bank card number: 12-19 digits with a Luhn check digit."""
    if not _is_digits(number) or not 12 <= len(number) <= 19:
        return IssueCode.INVALID_FORMAT
    if luhn_check_digit(number[:-1]) != number[-1]:
        return IssueCode.CHECKSUM
    return None


def check_corporate_account(number: str) -> IssueCode | None:
    """A corporate account number (对公账户): digits only, 8 to 30 long; no check digit to verify
    because each bank has its own scheme."""
    if not _is_digits(number) or not 8 <= len(number) <= 30:
        return IssueCode.INVALID_FORMAT
    return None


# --- contact and terminal identifiers --------------------------------------------------------


_MOBILE_TYPES = frozenset(
    (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)
)


def check_mobile(number: str) -> IssueCode | None:
    """A mainland mobile number as stored: its 11 digits, no country code or spaces (the models
    normalise "+86 138-1234-5678" to that), in a range libphonenumber's plan for China (CN) gives
    to mobiles."""
    if not _is_digits(number, 11) or number[0] != "1":
        return IssueCode.INVALID_FORMAT
    try:
        parsed = phonenumbers.parse(number, "CN")
    except phonenumbers.NumberParseException:
        return IssueCode.INVALID_FORMAT
    if not phonenumbers.is_valid_number_for_region(parsed, "CN"):
        return IssueCode.INVALID_FORMAT
    if phonenumbers.number_type(parsed) not in _MOBILE_TYPES:
        return IssueCode.INVALID_FORMAT
    return None


def check_tid(tid: str) -> IssueCode | None:
    """A terminal ID: 8 characters, uppercase letters or digits."""
    if len(tid) != 8 or not all(c in _UPPER_ALNUM for c in tid):
        return IssueCode.INVALID_FORMAT
    return None


def check_mid(mid: str) -> IssueCode | None:
    """A merchant ID: 15 digits."""
    if not _is_digits(mid, 15):
        return IssueCode.INVALID_FORMAT
    return None


# --- masks -----------------------------------------------------------------------------------


def _mask(value: str, head: int, tail: int) -> str:
    return value[:head] + "*" * (len(value) - head - tail) + value[len(value) - tail :]


def _mask_short(value: str) -> str:
    # A value of one or two characters would be shown whole by "all but the last 2".
    if len(value) <= 2:
        return "*" * len(value)
    return _mask(value, 0, 2)


def mask_id_number(value: str) -> str:
    """Keep the first 3 and last 4 characters; up to 7 characters long, keep only the last 2
    (and nothing when the value has 2 characters or fewer). The length is preserved."""
    if len(value) <= 7:
        return _mask_short(value)
    return _mask(value, 3, 4)


def mask_account(value: str) -> str:
    """Keep only the last 4 characters; 4 characters or fewer are masked whole. Length is kept."""
    if len(value) <= 4:
        return "*" * len(value)
    return _mask(value, 0, 4)


def mask_mobile(value: str) -> str:
    """Keep the first 3 and last 4 digits ("138****5678"); short values as `mask_id_number`."""
    return mask_id_number(value)
