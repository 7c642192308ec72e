"""The notification service (通知): every notice to a merchant, rendered from one set of Chinese
templates and sent as an SMS, and as an e-mail when the merchant gave an address.

- `POST /contacts` registers (or replaces) an application's contact: the mobile number and the
  e-mail address. They are kept here, and only here: the workflow sends a notice with its
  `application_id` alone, so no mobile number or e-mail address enters Temporal's history. Every
  answer shows the contact masked (`138****5678`).
- `POST /notices` takes a notice (`application_id`, optional `merchant_id`, `notice`: one of
  `TEMPLATES`, its `fields`, and an optional `detail`), renders it, and queues one SMS and, when an
  e-mail address is known, one e-mail in the outbox. 201 with the notice; idempotent by the
  `Idempotency-Key` header.
- `GET /notices?application_id=&merchant_id=&limit=` and `GET /notices/{id}`: what was sent, each
  delivery with its status (`queued`, `sent`, `failed`), attempts and last error.

**No personal number in a message.** A field value (or `detail`) that looks like a resident ID
number, a bank card or account number, or a mobile number is refused with 422 naming the field;
the rendered text is checked the same way before anything is queued (`personal_number`). The
application code and the merchant's MID are our own identifiers and stay whole.

**Fields.** `TEMPLATES` names the fields each notice fills in. A notice with no fields at all
is sent in its short form (the application code, and `detail` when there is one): that is what
the workflow sends until it passes fields. A notice with fields must give every field its
template names and no other (422 naming the missing or unknown ones).

**Delivery.** A background sender takes queued deliveries in order: it looks the contact up at
that moment (a contact registered after the notice is still used), "sends" (the sandbox marks it
`sent`; option `send_failure_rate` / `POSFLOW_NOTIFICATION_SEND_FAILURE_RATE` fails that share of
attempts on purpose), and retries a failed attempt after 0.5 s doubling to 30 s
(`retry_base_ms`, `retry_max_ms`), at most `max_attempts` times (default 8), after which the
delivery is `failed` with its last error. A delivery with no contact to go to stays `queued`
(its last error says why) until `POST /contacts` registers one, which makes it due at once, or
fails once `contact_wait_s` (a day) has passed since the notice. The number is never copied into
a delivery: only its mask, once sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import unicodedata
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import structlog
from fastapi import Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, field_validator
from pydantic import Field as PydanticField
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from schemas.application import normalise_mobile
from schemas.identifiers import check_mobile, check_resident_id, mask_mobile
from schemas.steps import Notice
from services.base import Service, ServiceConfig, ServiceError, create_service, idempotent

log = structlog.get_logger(__name__)

NAME = "notification"
SIGNATURE = "【posflow】"  # how every SMS and e-mail begins
LINK_LEAD = " 查看进度："  # before the merchant page's link, when the notice has one
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_RETRY_BASE_MS = 500
DEFAULT_RETRY_MAX_MS = 30_000
DEFAULT_CONTACT_WAIT_S = 86_400  # a day


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- the templates: every message a merchant can receive, in one place -------------------------


@dataclass(frozen=True)
class Template:
    """A notice's full text, with `{field}` placeholders for `fields`, and its short form (only
    `{application_code}`), sent when the notice comes without fields."""

    text: str
    short: str
    fields: tuple[str, ...] = ()


TEMPLATES: dict[str, Template] = {
    Notice.RECEIVED: Template(
        "您的POS终端申请已受理，申请码：{application_code}。请妥善保存申请码，查询进度时使用。",
        "您的POS终端申请已受理，申请码：{application_code}。",
    ),
    Notice.DOCUMENTS_INCOMPLETE: Template(
        "您的申请（申请码 {application_code}）材料不完整：{issues}。请按提示补充或更正后重新提交。",
        "您的申请（申请码 {application_code}）材料不完整，请补充或更正后重新提交。",
        ("issues",),
    ),
    Notice.DOCUMENTS_REMINDER: Template(
        "提醒：您的申请（申请码 {application_code}）仍缺少：{missing}。"
        "请于{deadline}前提交，逾期申请将自动失效。",
        "提醒：您的申请（申请码 {application_code}）材料尚未补齐，逾期申请将自动失效。",
        ("missing", "deadline"),
    ),
    Notice.MORE_INFORMATION_NEEDED: Template(
        "您的申请（申请码 {application_code}）需要补充材料：{documents}。原因：{reasons}。",
        "您的申请（申请码 {application_code}）需要补充材料，请按审核意见重新提交。",
        ("documents", "reasons"),
    ),
    Notice.APPROVED: Template(
        "恭喜！您的申请（申请码 {application_code}）已通过审核，我们将尽快发送签约链接。",
        "恭喜！您的申请（申请码 {application_code}）已通过审核。",
    ),
    Notice.CONTRACT_READY: Template(
        "您的申请（申请码 {application_code}）合同已生成，请于{deadline}前签署：{signing_link}",
        "您的申请（申请码 {application_code}）合同已生成，请尽快签署。",
        ("signing_link", "deadline"),
    ),
    Notice.CONTRACT_REMINDER: Template(
        "提醒：您的申请（申请码 {application_code}）合同尚未签署，请于{deadline}前签署："
        "{signing_link}",
        "提醒：您的申请（申请码 {application_code}）合同尚未签署，请尽快签署。",
        ("signing_link", "deadline"),
    ),
    Notice.SHIPPED: Template(
        "您的POS终端已发货（申请码 {application_code}），{carrier}运单号：{tracking_number}。",
        "您的POS终端已发货（申请码 {application_code}）。",
        ("carrier", "tracking_number"),
    ),
    Notice.INSTALLATION_BOOKED: Template(
        "您的POS终端安装已预约（申请码 {application_code}）：{appointment}，"
        "工程师上门前会与您联系。",
        "您的POS终端安装已预约（申请码 {application_code}），工程师上门前会与您联系。",
        ("appointment",),
    ),
    Notice.PICK_UP_READY: Template(
        "您的POS终端已备好（申请码 {application_code}），请于{ready_from}起凭取件码{pickup_code}"
        "到{branch}领取。",
        "您的POS终端已备好（申请码 {application_code}），请到网点领取。",
        ("branch", "ready_from", "pickup_code"),
    ),
    Notice.ACTIVATION_CODES: Template(
        "您的POS终端激活码（申请码 {application_code}）：{codes}。"
        "请在终端上输入对应激活码完成激活。",
        "您的POS终端激活码已生成（申请码 {application_code}），请在终端上完成激活。",
        ("codes",),
    ),
    Notice.ACTIVATION_REMINDER: Template(
        "提醒：您的POS终端（申请码 {application_code}）尚未激活，请于{deadline}前完成激活。",
        "提醒：您的POS终端（申请码 {application_code}）尚未激活，请尽快完成激活。",
        ("deadline",),
    ),
    Notice.TRAINING_BOOKED: Template(
        "您的POS终端使用培训已安排（申请码 {application_code}）：{appointment}。",
        "您的POS终端使用培训已安排（申请码 {application_code}）。",
        ("appointment",),
    ),
    Notice.TRAINING_REMINDER: Template(
        "提醒：您的POS终端使用培训（申请码 {application_code}）尚未完成，请于{deadline}前参加。",
        "提醒：您的POS终端使用培训（申请码 {application_code}）尚未完成。",
        ("deadline",),
    ),
    Notice.WENT_LIVE: Template(
        "您的POS终端已开通收单（申请码 {application_code}），商户编号：{mid}。祝您生意兴隆！",
        "您的POS终端已开通收单（申请码 {application_code}）。祝您生意兴隆！",
        ("mid",),
    ),
    Notice.REJECTED: Template(
        "很抱歉，您的申请（申请码 {application_code}）未通过审核。原因：{reason}。",
        "很抱歉，您的申请（申请码 {application_code}）未通过审核。",
        ("reason",),
    ),
    Notice.EXPIRED: Template(
        "您的申请（申请码 {application_code}）已于{expired_on}因{reason}失效。如需办理请重新申请。",
        "您的申请（申请码 {application_code}）已失效。如需办理请重新申请。",
        ("reason", "expired_on"),
    ),
    Notice.WITHDRAWN: Template(
        "您的申请（申请码 {application_code}）已撤销。原因：{reason}。已收取的押金将原路退回。",
        "您的申请（申请码 {application_code}）已撤销。已收取的押金将原路退回。",
        ("reason",),
    ),
    Notice.FEE_BILLED: Template(
        "您的商户（申请码 {application_code}）本期费用{amount}元已出账，请于{due_date}前缴纳。",
        "您的商户（申请码 {application_code}）本期费用已出账，请按时缴纳。",
        ("amount", "due_date"),
    ),
    Notice.FEE_REMINDER: Template(
        "提醒：您的商户（申请码 {application_code}）费用{amount}元将于{due_date}到期，请及时缴纳。",
        "提醒：您的商户（申请码 {application_code}）有待缴费用即将到期，请及时缴纳。",
        ("amount", "due_date"),
    ),
    Notice.FEE_OVERDUE: Template(
        "您的商户（申请码 {application_code}）费用{amount}元已逾期（到期日{due_date}），"
        "逾期未缴将暂停收单。",
        "您的商户（申请码 {application_code}）有费用已逾期，逾期未缴将暂停收单。",
        ("amount", "due_date"),
    ),
    Notice.SUSPENDED: Template(
        "您的商户（申请码 {application_code}）收单已暂停。原因：{reason}。处理后将自动恢复。",
        "您的商户（申请码 {application_code}）收单已暂停。处理后将自动恢复。",
        ("reason",),
    ),
    Notice.REINSTATED: Template(
        "您的商户（申请码 {application_code}）收单已恢复，感谢您的配合。",
        "您的商户（申请码 {application_code}）收单已恢复，感谢您的配合。",
    ),
    Notice.INSPECTION_BOOKED: Template(
        "您的商户（申请码 {application_code}）{kind}已预约：{date}，届时请配合检查。",
        "您的商户（申请码 {application_code}）巡检已预约，届时请配合检查。",
        ("kind", "date"),
    ),
    Notice.INSPECTION_FAILED: Template(
        "您的商户（申请码 {application_code}）巡检未通过：{findings}。请于{remedy_by}前完成整改。",
        "您的商户（申请码 {application_code}）巡检未通过，请尽快完成整改。",
        ("findings", "remedy_by"),
    ),
    Notice.TERMINAL_REPLACED: Template(
        "您的商户（申请码 {application_code}）故障终端{faulty_serial}"
        "已更换为{replacement_serial}。",
        "您的商户（申请码 {application_code}）故障终端已更换。",
        ("faulty_serial", "replacement_serial"),
    ),
    Notice.TERMINALS_ADDED: Template(
        "您的商户（申请码 {application_code}）新增{count}台{model}终端已开通。",
        "您的商户（申请码 {application_code}）新增终端已开通。",
        ("count", "model"),
    ),
    Notice.SETTLEMENT_REBOUND: Template(
        "您的商户（申请码 {application_code}）结算账户已变更为"
        "{bank_name}尾号{account_last4}的账户。",
        "您的商户（申请码 {application_code}）结算账户已变更。",
        ("bank_name", "account_last4"),
    ),
    Notice.REBINDING_REFUSED: Template(
        "您的商户（申请码 {application_code}）结算账户变更未通过：{reasons}。原账户继续有效。",
        "您的商户（申请码 {application_code}）结算账户变更未通过，原账户继续有效。",
        ("reasons",),
    ),
    Notice.CLOSED: Template(
        "您的商户（申请码 {application_code}）已注销。原因：{reason}。"
        "押金将原路退回，终端请按通知寄回。",
        "您的商户（申请码 {application_code}）已注销。押金将原路退回，终端请按通知寄回。",
        ("reason",),
    ),
}
NOTICE_KINDS = frozenset(TEMPLATES)

MAX_FIELDS = 20
MAX_FIELD_LENGTH = 500
FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


# --- personal numbers ----------------------------------------------------------------------------

# A number as people write it, not glued to a word (a tracking number `SF123...`, a serial or a
# token stay out): a run of digits (an ID may end in X), or a mobile, a card or an ID number
# written in groups with spaces or hyphens, with an optional +86 in front.
_CANDIDATE = re.compile(
    r"(?<![0-9A-Za-z_])(?:\+?86[ -]?)?"
    r"(?:\d{3}[ -]\d{4}[ -]\d{4}"
    r"|\d{4}(?:[ -]\d{4}){2,6}(?:[ -]\d{1,4})?"
    r"|\d{6}[ -]\d{8}[ -]\d{3}[\dXx]"
    r"|\d+[Xx]?)"
    r"(?![0-9A-Za-z_])"
)


def personal_number(text: str, *, ours: tuple[str, ...] = ()) -> str | None:
    """What personal number `text` holds ("mobile number", "resident ID number", "bank card or
    account number"), or None. `ours` are our own identifiers (the application code, the MID),
    left out before looking. Checked with `schemas.identifiers`: a mobile libphonenumber gives to
    a mainland mobile range, a resident ID with its check character (any 17 digits and an X too),
    and any run of 16 to 30 digits (a card with or without a valid Luhn digit, a corporate
    account). A 15-digit MID, a 6-digit code, a 12-digit tracking number are not personal."""
    text = unicodedata.normalize("NFKC", text)
    for identifier in sorted((o for o in ours if o), key=len, reverse=True):
        text = text.replace(identifier, " ")
    for match in _CANDIDATE.finditer(text):
        number = re.sub(r"[ +\-]", "", match.group(0)).upper()
        if len(number) == 13 and number.startswith("86") and check_mobile(number[2:]) is None:
            return "mobile number"
        if len(number) == 11 and check_mobile(number) is None:
            return "mobile number"
        if (
            len(number) == 18
            and number[:17].isdigit()
            and (number[17] == "X" or check_resident_id(number, today=date.today()) is None)
        ):
            return "resident ID number"
        if number.isdigit() and 16 <= len(number) <= 30:
            return "bank card or account number"
    return None


# --- the database ----------------------------------------------------------------------------


class Channel(StrEnum):
    SMS = "sms"
    EMAIL = "email"


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"


class ContactRow(SQLModel, table=True):
    """Where an application's notices go; the only place the number and the address are kept."""

    __tablename__ = "notification_contacts"

    application_id: str = Field(primary_key=True)
    merchant_id: str | None = Field(default=None, index=True)
    mobile: str
    email: str = ""
    updated_at: datetime = Field(default_factory=_now)


class NoticeRow(SQLModel, table=True):
    __tablename__ = "notification_notices"

    id: str = Field(primary_key=True)
    application_id: str = Field(index=True)
    merchant_id: str | None = Field(default=None, index=True)
    notice: str
    fields: str = "{}"  # JSON
    text: str
    created_at: datetime = Field(default_factory=_now, index=True)


class DeliveryRow(SQLModel, table=True):
    """The outbox: one row per channel of a notice, kept until sent or failed for good."""

    __tablename__ = "notification_deliveries"

    id: int | None = Field(default=None, primary_key=True)
    notice_id: str = Field(index=True)
    channel: str
    status: str = Field(default=DeliveryStatus.QUEUED.value, index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=_now)
    sent_at: datetime | None = None
    recipient: str = ""  # masked, once sent
    last_error: str = ""


TABLES: list[type[SQLModel]] = [ContactRow, NoticeRow, DeliveryRow]


# --- requests and answers ------------------------------------------------------------------------


class ContactRequest(BaseModel):
    application_id: str = PydanticField(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    merchant_id: str | None = PydanticField(default=None, max_length=64)
    mobile: str = PydanticField(min_length=1, max_length=20)
    email: str = PydanticField(default="", max_length=120)

    @field_validator("mobile")
    @classmethod
    def _mobile(cls, value: str) -> str:
        number = unicodedata.normalize("NFKC", normalise_mobile(value))
        if check_mobile(number) is not None:
            raise ValueError("not a mainland mobile number")
        return number

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            raise ValueError("not an e-mail address")
        return value


class ContactView(BaseModel):
    application_id: str
    merchant_id: str | None
    mobile: str  # masked
    email: str  # masked
    updated_at: datetime


class NoticeRequest(BaseModel):
    application_id: str = PydanticField(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    merchant_id: str | None = PydanticField(default=None, max_length=64)
    notice: str
    fields: dict[str, str] = PydanticField(default_factory=dict)
    detail: str = PydanticField(default="", max_length=1000)
    # The merchant's page (a signed, expiring link: `schemas.page_links`), added at the end of
    # the message. It carries no personal data, and its signature is not read as a number.
    link: str = PydanticField(default="", max_length=400, pattern=r"^(https?://\S+)?$")


class DeliveryView(BaseModel):
    channel: Channel
    status: DeliveryStatus
    attempts: int
    recipient: str  # masked; empty until sent
    sent_at: datetime | None
    next_attempt_at: datetime | None
    last_error: str


class NoticeView(BaseModel):
    notification_id: str
    application_id: str
    merchant_id: str | None
    notice: str
    text: str
    fields: dict[str, str]
    created_at: datetime
    deliveries: list[DeliveryView]


class NoticeList(BaseModel):
    notices: list[NoticeView]


def mask_email(address: str) -> str:
    name, at, domain = address.partition("@")
    if not at:
        return "*" * len(address)
    return (name[:1] + "***" if name else "") + "@" + domain


def contact_view(row: ContactRow) -> ContactView:
    return ContactView(
        application_id=row.application_id,
        merchant_id=row.merchant_id,
        mobile=mask_mobile(row.mobile),
        email=mask_email(row.email) if row.email else "",
        updated_at=_utc(row.updated_at),
    )


def notice_view(session: Session, row: NoticeRow) -> NoticeView:
    deliveries = session.exec(
        select(DeliveryRow).where(DeliveryRow.notice_id == row.id).order_by(col(DeliveryRow.id))
    ).all()
    return NoticeView(
        notification_id=row.id,
        application_id=row.application_id,
        merchant_id=row.merchant_id,
        notice=row.notice,
        text=row.text,
        fields=json.loads(row.fields),
        created_at=_utc(row.created_at),
        deliveries=[
            DeliveryView(
                channel=Channel(d.channel),
                status=DeliveryStatus(d.status),
                attempts=d.attempts,
                recipient=d.recipient,
                sent_at=_utc(d.sent_at) if d.sent_at else None,
                next_attempt_at=(
                    _utc(d.next_attempt_at) if d.status == DeliveryStatus.QUEUED else None
                ),
                last_error=d.last_error,
            )
            for d in deliveries
        ],
    )


# --- rendering ---------------------------------------------------------------------------------


def render(request: NoticeRequest) -> str:
    """The message for `request`, checked: 422 naming the field for an unknown notice, a
    missing or unknown field, or a personal number in a field, in `detail` or in the text."""
    template = TEMPLATES.get(request.notice)
    if template is None:
        raise ServiceError(
            422,
            "unknown_notice",
            f"no template for notice {request.notice!r}",
            {"notice": f"one of {', '.join(sorted(NOTICE_KINDS))}"},
        )
    ours = (request.application_id, request.merchant_id or "")
    problems: dict[str, str] = {}
    if len(request.fields) > MAX_FIELDS:
        problems["fields"] = f"at most {MAX_FIELDS} fields"
    for name, value in request.fields.items():
        key = f"fields.{name}"
        if not FIELD_NAME.match(name) or name not in template.fields:
            problems[key] = f"not a field of {request.notice}: {', '.join(template.fields) or '-'}"
        elif not value.strip() or len(value) > MAX_FIELD_LENGTH:
            problems[key] = f"1 to {MAX_FIELD_LENGTH} characters"
        elif (kind := personal_number(value, ours=ours)) is not None:
            problems[key] = f"looks like a {kind}: a message never carries one, send it masked"
    if request.fields:
        for name in template.fields:
            if name not in request.fields:
                problems[f"fields.{name}"] = f"required by {request.notice}"
    if request.detail and (kind := personal_number(request.detail, ours=ours)) is not None:
        problems["detail"] = f"looks like a {kind}: a message never carries one, send it masked"
    if problems:
        raise ServiceError(422, "invalid_notice", "the notice cannot be sent as given", problems)
    values = {name: value.strip() for name, value in request.fields.items()}
    values["application_code"] = request.application_id
    if request.fields or not template.fields:
        body = template.text.format_map(values)
    else:
        body = template.short.format_map(values)
        if request.detail.strip():
            body += f"（{request.detail.strip()}）"
    text = SIGNATURE + body
    if (kind := personal_number(text, ours=ours)) is not None:
        raise ServiceError(
            422,
            "invalid_notice",
            "the rendered message would carry a personal number",
            {"text": f"looks like a {kind}"},
        )
    if request.link:
        text += f"{LINK_LEAD}{request.link}"
    return text


def create_notice(session: Session, request: NoticeRequest) -> NoticeView:
    text = render(request)
    row = NoticeRow(
        id=f"ntf-{uuid.uuid4().hex[:16]}",
        application_id=request.application_id,
        merchant_id=request.merchant_id,
        notice=request.notice,
        fields=json.dumps(request.fields, ensure_ascii=False, sort_keys=True),
        text=text,
    )
    session.add(row)
    channels = [Channel.SMS]
    contact = session.get(ContactRow, request.application_id)
    if contact is not None and contact.email:
        channels.append(Channel.EMAIL)
    for channel in channels:
        session.add(DeliveryRow(notice_id=row.id, channel=channel.value))
    session.flush()
    log.info(
        "notice_queued",
        notification_id=row.id,
        application_id=row.application_id,
        notice=row.notice,
        channels=[c.value for c in channels],
    )
    return notice_view(session, row)


def register_contact(session: Session, request: ContactRequest) -> ContactView:
    row = session.get(ContactRow, request.application_id) or ContactRow(
        application_id=request.application_id, mobile=request.mobile
    )
    row.mobile = request.mobile
    row.email = request.email
    row.merchant_id = request.merchant_id or row.merchant_id
    row.updated_at = _now()
    session.add(row)
    # Deliveries that were waiting for this contact are due now.
    notices = select(NoticeRow.id).where(NoticeRow.application_id == request.application_id)
    session.execute(
        update(DeliveryRow)
        .where(col(DeliveryRow.notice_id).in_(notices))
        .where(col(DeliveryRow.status) == DeliveryStatus.QUEUED.value)
        .values(next_attempt_at=_now())
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return contact_view(row)


# --- the sender --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SenderSettings:
    failure_rate: float = 0.0  # share of attempts that fail on purpose
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_base: float = DEFAULT_RETRY_BASE_MS / 1000
    retry_max: float = DEFAULT_RETRY_MAX_MS / 1000
    # How long a delivery waits for its application's contact to be registered before it fails.
    contact_wait: float = DEFAULT_CONTACT_WAIT_S
    poll: float = 0.2

    @classmethod
    def from_config(cls, config: ServiceConfig) -> SenderSettings:
        def setting(key: str, default: float) -> float:
            env = f"POSFLOW_NOTIFICATION_{key.upper()}"
            value = config.options.get(key, os.environ.get(env))
            return float(value) if value not in (None, "") else default

        return cls(
            failure_rate=setting("send_failure_rate", 0.0),
            max_attempts=max(1, int(setting("max_attempts", DEFAULT_MAX_ATTEMPTS))),
            retry_base=setting("retry_base_ms", DEFAULT_RETRY_BASE_MS) / 1000,
            retry_max=setting("retry_max_ms", DEFAULT_RETRY_MAX_MS) / 1000,
            contact_wait=setting("contact_wait_s", DEFAULT_CONTACT_WAIT_S),
        )


def send_due(service: Service, settings: SenderSettings) -> int:
    """One pass of the sender over the due deliveries; returns how many were attempted."""
    now = _now()
    with service.session() as session:
        due = session.exec(
            select(DeliveryRow)
            .where(DeliveryRow.status == DeliveryStatus.QUEUED.value)
            .where(DeliveryRow.next_attempt_at <= now)
            .order_by(col(DeliveryRow.id))
            .limit(200)
        ).all()
        for delivery in due:
            notice = session.get(NoticeRow, delivery.notice_id)
            contact = session.get(ContactRow, notice.application_id) if notice else None
            address = ""
            if contact is not None:
                address = contact.mobile if delivery.channel == Channel.SMS else contact.email
            delivery.attempts += 1
            if not address and notice is not None:
                # Nothing to retry until a contact is registered (`POST /contacts` makes the
                # application's queued deliveries due at once); given up after `contact_wait`.
                delivery.last_error = (
                    f"no {delivery.channel} contact registered for the application"
                )
                waited_until = _utc(notice.created_at) + timedelta(seconds=settings.contact_wait)
                if _now() >= waited_until:
                    delivery.status = DeliveryStatus.FAILED.value
                delivery.next_attempt_at = waited_until
                session.add(delivery)
                log.info(
                    "notice_waiting_for_contact",
                    notification_id=delivery.notice_id,
                    channel=delivery.channel,
                    attempt=delivery.attempts,
                    status=delivery.status,
                )
                continue
            if not address:
                error = "the notice is gone"
            elif settings.failure_rate and random.random() < settings.failure_rate:
                error = f"{delivery.channel} gateway failed (simulated)"
            else:
                error = ""
            if not error:
                delivery.status = DeliveryStatus.SENT.value
                delivery.sent_at = _now()
                delivery.last_error = ""
                delivery.recipient = (
                    mask_mobile(address) if delivery.channel == Channel.SMS else mask_email(address)
                )
            else:
                delivery.last_error = error
                if delivery.attempts >= settings.max_attempts:
                    delivery.status = DeliveryStatus.FAILED.value
                else:
                    wait = min(
                        settings.retry_base * 2 ** (delivery.attempts - 1), settings.retry_max
                    )
                    delivery.next_attempt_at = _now() + timedelta(seconds=wait)
            session.add(delivery)
            log.info(
                "notice_delivery_attempt",
                notification_id=delivery.notice_id,
                channel=delivery.channel,
                attempt=delivery.attempts,
                status=delivery.status,
                error=error or None,
            )
        session.commit()
        return len(due)


def sender(settings: SenderSettings) -> Callable[[Service], Coroutine[Any, Any, None]]:
    async def job(service: Service) -> None:
        while True:
            try:
                await asyncio.to_thread(send_due, service, settings)
            except Exception:
                log.exception("notice_sender_failed")
            await asyncio.sleep(settings.poll)

    return job


# --- the app ---------------------------------------------------------------------------------

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def _write(
    service: Service,
    key: str | None,
    payload: Mapping[str, Any],
    write: Callable[[Session], BaseModel],
    status_code: int = 200,
) -> JSONResponse:
    with service.session() as session:
        try:
            return idempotent(
                session, NAME, key, dict(payload), lambda: write(session), status_code=status_code
            )
        except IntegrityError as err:
            session.rollback()
            raise ServiceError(
                409, "conflict", "a concurrent request wrote the same record"
            ) from err


def _routes(service: Service) -> None:
    app = service.app

    @app.post("/contacts", response_model=ContactView)
    def post_contact(body: ContactRequest, key: IdempotencyKey = None) -> JSONResponse:
        """Register where an application's notices go (replacing an earlier contact)."""
        payload = {"contact": body.model_dump(mode="json")}
        return _write(service, key, payload, lambda s: register_contact(s, body))

    @app.get("/contacts/{application_id}", response_model=ContactView)
    def get_contact(application_id: str) -> ContactView:
        with service.session() as session:
            row = session.get(ContactRow, application_id)
            if row is None:
                raise ServiceError(
                    404,
                    "contact_not_found",
                    f"no contact for application {application_id}",
                    {"application_id": application_id},
                )
            return contact_view(row)

    @app.post("/notices", status_code=201, response_model=NoticeView)
    def post_notice(body: NoticeRequest, key: IdempotencyKey = None) -> JSONResponse:
        payload = {"notice": body.model_dump(mode="json")}
        return _write(service, key, payload, lambda s: create_notice(s, body), 201)

    @app.get("/notices", response_model=NoticeList)
    def list_notices(
        application_id: str | None = None,
        merchant_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> NoticeList:
        with service.session() as session:
            query = select(NoticeRow)
            if application_id is not None:
                query = query.where(NoticeRow.application_id == application_id)
            if merchant_id is not None:
                query = query.where(NoticeRow.merchant_id == merchant_id)
            rows = session.exec(query.order_by(col(NoticeRow.created_at)).limit(limit)).all()
            return NoticeList(notices=[notice_view(session, r) for r in rows])

    @app.get("/notices/{notification_id}", response_model=NoticeView)
    def get_notice(notification_id: str) -> NoticeView:
        with service.session() as session:
            row = session.get(NoticeRow, notification_id)
            if row is None:
                raise ServiceError(
                    404,
                    "notice_not_found",
                    f"no notice {notification_id}",
                    {"notification_id": notification_id},
                )
            return notice_view(session, row)


def build(config: ServiceConfig | None = None) -> Service:
    """The notification service with its background sender (see the module doc)."""
    config = config or ServiceConfig.from_env(NAME)
    return create_service(
        config,
        tables=TABLES,
        setup=_routes,
        background=[sender(SenderSettings.from_config(config))],
    )
