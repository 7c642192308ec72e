"""Realistic sample merchants for the demo and benchmarks: every number passes its checksum, the
documents match the application, and a chosen share is deliberately wrong."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date

from schemas.application import (
    AccountKind,
    Address,
    Application,
    Channel,
    Contact,
    DeviceOrder,
    IdentityKind,
    LegalRepresentative,
    Licence,
    LicenceKind,
    Merchant,
    MerchantType,
    SettlementAccount,
)
from schemas.channels import TrainingNeed, profile_for
from schemas.documents import Document, DocumentKind
from schemas.identifiers import (
    DIVISION_CODES,
    luhn_check_digit,
    organisation_code_check_char,
    registration_check_digit,
    resident_id_check_char,
    uscc_check_char,
)

AREA_CODE = "110108"  # 北京市海淀区


def _division(area: str) -> str:
    # Every generated number must pass the region check: only codes GB/T 2260 has issued.
    if area not in DIVISION_CODES:
        raise ValueError(f"{area!r} is not a GB/T 2260 division code")
    return area


def make_resident_id(birth: date, seq: int = 1, area: str = AREA_CODE) -> str:
    """A valid resident ID number for someone born on `birth`; `seq` (0-999) is the order code."""
    body = f"{_division(area)}{birth:%Y%m%d}{seq % 1000:03d}"
    return body + resident_id_check_char(body)


def make_org_code(seed: int) -> str:
    """A valid 9-digit GB 11714 organisation code (no hyphen); the check may be 'X'."""
    body = f"{seed % 10**8:08d}"
    return body + organisation_code_check_char(body)


def make_uscc(seed: int, prefix: str = "91", area: str = AREA_CODE) -> str:
    """A valid USCC: `prefix` ("91" enterprise, "92" individual business), area, org code."""
    body = f"{prefix}{_division(area)}{make_org_code(seed)}"
    return body + uscc_check_char(body)


def make_registration_number(seed: int, area: str = AREA_CODE) -> str:
    """A valid legacy 15-digit business registration number."""
    body = f"{area}{seed % 10**8:08d}"
    return body + registration_check_digit(body)


def make_bank_card(seed: int) -> str:
    """A valid 19-digit personal bank card number (Luhn)."""
    body = f"622202{seed % 10**12:012d}"
    return body + luhn_check_digit(body)


def make_corporate_account(seed: int) -> str:
    """A valid 20-digit corporate account number."""
    return f"0200{seed % 10**16:016d}"


def make_tax_registration(org_code: str, area: str = AREA_CODE) -> str:
    """A legacy tax registration number: the area code followed by the organisation code."""
    return area + org_code


_CITIES = [
    ("北京市", "海淀区", "110108"),
    ("上海市", "浦东新区", "310115"),
    ("浙江省", "杭州市", "330106"),
    ("广东省", "广州市", "440106"),
    ("四川省", "成都市", "510104"),
]
_SURNAMES = "王李张刘陈杨赵黄周吴"
_GIVEN = ["伟", "芳", "娜", "敏", "静", "强", "磊", "洋", "艳", "军"]
_SHOPS = ["便利店", "小吃店", "水果店", "服装店", "五金店", "理发店"]


@dataclass
class Sample:
    application: Application
    documents: list[Document]
    bad_document: bool  # the identity card carries a wrong check character


def sample(
    seed: int,
    *,
    bad_document: bool = False,
    category: str = "retail",
    name_marker: str = "",
    street_marker: str = "",
    channel: Channel | None = None,
) -> Sample:
    """One applicant: individual or enterprise, USCC or legacy licence, mail or on-site, on a
    random channel (or `channel`), valid under its channel's profile (`schemas.channels`): a
    model and a fulfilment the channel offers, the Tmall store of a Tmall application, the bank
    of a bank application, and the industry licence of a regulated `category`.

    `name_marker` is appended to the merchant's name (on its licence and, for an enterprise, its
    account too) and `street_marker` to its street: the sandbox services' demo markers (the
    contract service's auto-payer reads the name, the logistics inspectors the street)."""
    rnd = random.Random(seed)
    province, city, area = rnd.choice(_CITIES)
    enterprise = rnd.random() < 0.4
    legacy = rnd.random() < 0.2
    rep_name = rnd.choice(_SURNAMES) + rnd.choice(_GIVEN)
    rep_id = make_resident_id(
        date(rnd.randint(1960, 2000), rnd.randint(1, 12), rnd.randint(1, 28)),
        rnd.randint(0, 999),
        area,
    )
    org_code = make_org_code(seed * 7919 + 17)
    if enterprise:
        name = f"{city.removesuffix('市').removesuffix('区')}{rnd.choice(_SURNAMES)}氏商贸有限公司"
        name += name_marker
        licence_number = (
            make_registration_number(seed, area)
            if legacy
            else make_uscc(seed * 7919 + 17, "91", area)
        )
        account = SettlementAccount(
            holder_name=name,
            account_kind=AccountKind.CORPORATE,
            account_number=make_corporate_account(seed),
            bank_name="中国银行",
        )
    else:
        name = f"{city}{rep_name}{rnd.choice(_SHOPS)}{name_marker}"
        licence_number = (
            make_registration_number(seed, area)
            if legacy
            else make_uscc(seed * 7919 + 17, "92", area)
        )
        account = SettlementAccount(
            holder_name=rep_name,
            account_kind=AccountKind.PERSONAL,
            account_number=make_bank_card(seed),
            bank_name="中国工商银行",
        )
    address = Address(
        province=province,
        city=city,
        street=f"{rnd.choice('东西南北')}大街{rnd.randint(1, 300)}号{street_marker}",
    )
    drawn = rnd.choice(list(Channel))  # drawn even when given: the draws after it stay the same
    channel = channel or drawn
    profile = profile_for(channel)
    banks = profile.devices.banks
    application = Application(
        application_id=f"DEMO-{seed:06d}",
        channel=channel,
        merchant=Merchant(
            name=name,
            merchant_type=MerchantType.ENTERPRISE if enterprise else MerchantType.INDIVIDUAL,
            licence=Licence(
                kind=LicenceKind.LEGACY if legacy else LicenceKind.USCC, number=licence_number
            ),
            address=address,
            business_category=category,
        ),
        legal_representative=LegalRepresentative(
            name=rep_name, id_kind=IdentityKind.RESIDENT_ID, id_number=rep_id
        ),
        contact=Contact(name=rep_name, mobile=f"13{rnd.randint(0, 999999999):09d}"),
        settlement_account=account,
        device_order=DeviceOrder(
            model=rnd.choice(profile.devices.models), quantity=rnd.choice([1, 1, 1, 2, 3])
        ),
        fulfilment=rnd.choice(profile.fulfilment.allowed),
        # A store name the sandbox Tmall platform knows (ending in 旗舰店): see the gateway.
        tmall_store=f"{name}旗舰店" if profile.documents.tmall_store else None,
        acquiring_bank=banks[seed % len(banks)] if banks else None,
        # Where training is optional (Alipay), every other merchant declines it.
        decline_training=True
        if profile.training.need is TrainingNeed.OPTIONAL and seed % 2 == 0
        else None,
    )
    card_number = rep_id if not bad_document else rep_id[:-1] + ("1" if rep_id[-1] != "1" else "2")
    documents = [
        Document(
            kind=DocumentKind.IDENTITY_CARD,
            file_id=f"{seed}-id",
            number=card_number,
            holder_name=rep_name,
            expires_on=date(2040, 1, 1),
        ),
        Document(
            kind=DocumentKind.BUSINESS_LICENCE,
            file_id=f"{seed}-licence",
            number=licence_number,
            holder_name=name,
        ),
        Document(
            kind=DocumentKind.BANK_ACCOUNT_PROOF,
            file_id=f"{seed}-bank",
            number=account.account_number,
            holder_name=account.holder_name,
        ),
        Document(kind=DocumentKind.PREMISES_PHOTOS, file_id=f"{seed}-premises"),
    ]
    if enterprise and legacy:
        documents += [
            Document(
                kind=DocumentKind.TAX_REGISTRATION,
                file_id=f"{seed}-tax",
                number=make_tax_registration(org_code, area),
                holder_name=name,
            ),
            Document(
                kind=DocumentKind.ORGANISATION_CODE,
                file_id=f"{seed}-org",
                number=org_code,
                holder_name=name,
            ),
        ]
    if profile.industry_licence_needed(category):
        documents.append(
            Document(
                kind=DocumentKind.INDUSTRY_LICENCE,
                file_id=f"{seed}-industry",
                number=f"JY1{area}{seed % 10**7:07d}",  # 食品经营许可证: JY + 14 digits
                holder_name=name,
                expires_on=date(2031, 12, 31),
            )
        )
    return Sample(application, documents, bad_document)


def new_settlement_account(application: Application, seed: int) -> SettlementAccount:
    """Another account for the same holder (重新绑定), valid under the application's rules: a
    Luhn-valid personal card for the same person, or another corporate account of the
    enterprise, at another bank."""
    current = application.settlement_account
    number = (
        make_bank_card(seed)
        if current.account_kind is AccountKind.PERSONAL
        else make_corporate_account(seed)
    )
    return SettlementAccount(
        holder_name=current.holder_name,
        account_kind=current.account_kind,
        account_number=number,
        bank_name="中国建设银行",
    )
