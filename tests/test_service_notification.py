"""The notification service over real HTTP: a Chinese template for every notice with its fields
filled in, no personal number ever in a message (a field that holds one is refused with 422
naming it), idempotent writes, contacts kept masked, the SMS and e-mail outbox delivered with
retries and status; and the `notify_merchant` activity against the running service."""

from __future__ import annotations

import asyncio
import itertools
import string
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.notifications import notify_merchant, register_contact
from schemas.identifiers import mask_mobile
from schemas.steps import Notice, NotifyMerchant
from services.base import Service, ServiceConfig
from services.notification import SIGNATURE, TEMPLATES, DeliveryRow, build, personal_number
from tests.servers import free_port, serving
from tests.stack import Stack, new_application

RESIDENT_ID = "11010519491231002X"
CARD = "6222021234567890123"
MOBILE = "13812345678"
MID = "898662862827037"
APP = "APP-NTF-1"

# What the workflow passes in `fields` for each notice: every value already masked.
EXAMPLE_FIELDS: dict[str, dict[str, str]] = {
    "received": {},
    "documents_incomplete": {"issues": "身份证：已过期；营业执照：缺少"},
    "documents_reminder": {"missing": "门店照片", "deadline": "2026-12-20"},
    "more_information_needed": {"documents": "门店照片", "reasons": "照片未显示门头"},
    "approved": {},
    "pick_up_ready": {
        "branch": "拉卡拉杭州西湖网点",
        "ready_from": "2026-12-20",
        "pickup_code": "482913",
    },
    "contract_ready": {
        "signing_link": "https://sign.example.cn/sign/ct-9f2c",
        "deadline": "12月9日",
    },
    "contract_reminder": {
        "signing_link": "https://sign.example.cn/sign/ct-9f2c",
        "deadline": "12月9日",
    },
    "shipped": {"carrier": "顺丰速运", "tracking_number": "SF123456789012"},
    "installation_booked": {"appointment": "2026-12-05 上午9:00-12:00"},
    "activation_codes": {"codes": "LKL2400000001：482913；LKL2400000002：006127"},
    "activation_reminder": {"deadline": "2026-12-12"},
    "training_booked": {"appointment": "2026-12-06 14:00 线上"},
    "training_reminder": {"deadline": "2026-12-15"},
    "went_live": {"mid": MID},
    "rejected": {"reason": "经营类目不在受理范围"},
    "expired": {"reason": "材料未在期限内补齐", "expired_on": "2026-12-30"},
    "withdrawn": {"reason": "商户主动撤销"},
    "fee_billed": {"amount": "480.00", "due_date": "2027-01-15"},
    "fee_reminder": {"amount": "480.00", "due_date": "2027-01-15"},
    "fee_overdue": {"amount": "480.00", "due_date": "2027-01-15"},
    "suspended": {"reason": "年费逾期未缴"},
    "reinstated": {},
    "inspection_booked": {"kind": "年度巡检", "date": "2027-03-02"},
    "inspection_failed": {"findings": "收银台未张贴受理标识", "remedy_by": "2027-03-16"},
    "terminal_replaced": {"faulty_serial": "LKL2400000001", "replacement_serial": "LKL2400000007"},
    "terminals_added": {"count": "2", "model": "LKL-A8"},
    "settlement_rebound": {"bank_name": "招商银行", "account_last4": "0123"},
    "rebinding_refused": {"reasons": "账户名与商户名称不一致"},
    "closed": {"reason": "合同到期"},
}

_keys = itertools.count(1)


def key() -> str:
    return f"ntf-test-{next(_keys)}"


def notice_body(notice: str, fields: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"application_id": APP, "notice": notice, "fields": fields or {}, **extra}


class Running:
    def __init__(self, service: Service, client: httpx.AsyncClient, url: str) -> None:
        self.service = service
        self.client = client
        self.url = url

    async def post(
        self, path: str, json: dict[str, Any], idem: str | None = None
    ) -> httpx.Response:
        return await self.client.post(path, json=json, headers={"Idempotency-Key": idem or key()})

    async def notice(self, notice_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/notices/{notice_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())


@asynccontextmanager
async def running(db: Path, **options: str) -> AsyncIterator[Running]:
    service = build(
        ServiceConfig(name="notification", database_url=f"sqlite:///{db}", options=options)
    )
    async with serving(service.app) as url, httpx.AsyncClient(base_url=url) as client:
        yield Running(service, client, url)


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Running]:
    async with running(tmp_path / "notification.db", retry_base_ms="20", retry_max_ms="100") as s:
        yield s


async def until(condition: Callable[[], Any], seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.05)):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the condition did not come true in time")


# --- templates ---------------------------------------------------------------------------------


def test_one_template_per_notice_with_exactly_its_fields() -> None:
    assert {n.value for n in Notice} <= set(TEMPLATES)
    assert set(EXAMPLE_FIELDS) == set(TEMPLATES)
    for kind, template in TEMPLATES.items():
        named = {f for _, f, _, _ in string.Formatter().parse(template.text) if f}
        short = {f for _, f, _, _ in string.Formatter().parse(template.short) if f}
        assert named == {*template.fields, "application_code"}, kind
        assert short == {"application_code"}, kind
        assert set(EXAMPLE_FIELDS[kind]) == set(template.fields), kind


async def test_every_notice_renders_in_chinese_with_its_fields_and_no_personal_number(
    svc: Running,
) -> None:
    for kind, fields in EXAMPLE_FIELDS.items():
        response = await svc.post("/notices", notice_body(kind, fields))
        assert response.status_code == 201, (kind, response.text)
        text = response.json()["text"]
        assert text.startswith(SIGNATURE)
        assert "申请码 " + APP in text or "申请码：" + APP in text, text
        assert any("\u4e00" <= c <= "\u9fff" for c in text)
        for value in fields.values():
            assert value in text, (kind, text)
        assert "{" not in text and "}" not in text
        assert personal_number(text, ours=(APP,)) is None
        assert MOBILE not in text
    listed = (await svc.client.get("/notices", params={"application_id": APP})).json()["notices"]
    assert [n["notice"] for n in listed] == list(EXAMPLE_FIELDS)


async def test_without_fields_the_short_form_goes_out_with_the_detail(svc: Running) -> None:
    response = await svc.post("/notices", notice_body("shipped", detail="SF Express SF1234567890"))
    assert response.status_code == 201, response.text
    assert response.json()["text"] == (
        f"{SIGNATURE}您的POS终端已发货（申请码 {APP}）。（SF Express SF1234567890）"
    )
    # The received notice has no fields: the application code (申请码) is the request's id.
    received = await svc.post("/notices", notice_body("received"))
    assert f"申请码：{APP}" in received.json()["text"]


# --- no personal number ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (MOBILE, "mobile number"),
        ("+86 138-1234-5678", "mobile number"),
        ("请联系 13812345678 处理", "mobile number"),
        ("１３８１２３４５６７８", "mobile number"),  # full-width digits
        (RESIDENT_ID, "resident ID number"),
        (f"法人{RESIDENT_ID}", "resident ID number"),
        (CARD, "bank card or account number"),
        ("6222 0212 3456 7890 123", "bank card or account number"),
        ("对公账户 11001234567890123456", "bank card or account number"),
    ],
)
async def test_a_personal_number_in_a_field_is_refused_naming_the_field(
    svc: Running, value: str, kind: str
) -> None:
    response = await svc.post("/notices", notice_body("rejected", {"reason": value}))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_notice"
    assert kind in body["fields"]["fields.reason"]
    assert value not in response.text  # the refusal never repeats the number
    detail = await svc.post("/notices", notice_body("rejected", detail=f"reason: {value}"))
    assert detail.status_code == 422 and "detail" in detail.json()["fields"]
    listed = await svc.client.get("/notices", params={"application_id": APP})
    assert listed.json()["notices"] == []


def test_our_own_identifiers_are_not_personal_numbers() -> None:
    for text in (
        f"商户编号 {MID}",  # 15 digits
        "运单号 SF123456789012",
        "激活码 482913",
        "金额 480.00 元，到期日 2027-01-15",
        "https://sign.example.cn/sign/ct-13812345678abc",
        "尾号0123",
    ):
        assert personal_number(text) is None, text
    # The application code is ours, whatever digits it holds.
    assert personal_number("申请码 202612011234563988", ours=("202612011234563988",)) is None
    assert personal_number("申请码 202612011234563988") is not None


async def test_a_missing_or_unknown_field_or_notice_is_refused_by_name(svc: Running) -> None:
    missing = await svc.post("/notices", notice_body("shipped", {"carrier": "顺丰速运"}))
    assert missing.status_code == 422
    assert missing.json()["fields"] == {"fields.tracking_number": "required by shipped"}
    unknown = await svc.post("/notices", notice_body("went_live", {"mid": MID, "mobile": "x"}))
    assert unknown.status_code == 422 and "fields.mobile" in unknown.json()["fields"]
    kind = await svc.post("/notices", notice_body("birthday"))
    assert kind.status_code == 422 and unknown.json()["error"] == "invalid_notice"
    assert kind.json()["error"] == "unknown_notice"
    no_key = await svc.client.post("/notices", json=notice_body("approved"))
    assert no_key.status_code == 400


async def test_a_notice_is_written_once_per_idempotency_key(svc: Running) -> None:
    body = notice_body("went_live", {"mid": MID})
    first = await svc.post("/notices", body, idem="pos-application-APP/notify/3")
    again = await svc.post("/notices", body, idem="pos-application-APP/notify/3")
    assert first.status_code == again.status_code == 201
    assert again.headers.get("Idempotent-Replay") == "true"
    assert again.json()["notification_id"] == first.json()["notification_id"]
    other = await svc.post("/notices", notice_body("approved"), idem="pos-application-APP/notify/3")
    assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"
    listed = await svc.client.get("/notices", params={"application_id": APP})
    assert len(listed.json()["notices"]) == 1
    with svc.service.session() as session:
        assert len(session.exec(select(DeliveryRow)).all()) == 1  # one SMS, no e-mail known


# --- contacts and delivery -----------------------------------------------------------------------


async def test_a_contact_is_kept_here_and_only_shown_masked(svc: Running) -> None:
    bad = await svc.post("/contacts", {"application_id": APP, "mobile": "12345"})
    assert bad.status_code == 422 and "mobile" in bad.json()["fields"]
    response = await svc.post(
        "/contacts",
        {"application_id": APP, "mobile": "+86 138-1234-5678", "email": "zhang@example.cn"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["mobile"] == "138****5678"
    assert response.json()["email"] == "z***@example.cn"
    shown = await svc.client.get(f"/contacts/{APP}")
    assert MOBILE not in shown.text and "zhang@" not in shown.text
    assert (await svc.client.get("/contacts/nobody")).status_code == 404


async def test_sms_and_email_are_delivered_with_status_and_masked_recipients(svc: Running) -> None:
    await svc.post(
        "/contacts", {"application_id": APP, "mobile": MOBILE, "email": "zhang@example.cn"}
    )
    created = await svc.post("/notices", notice_body("went_live", {"mid": MID}))
    notice_id = created.json()["notification_id"]
    assert [(d["channel"], d["status"]) for d in created.json()["deliveries"]] == [
        ("sms", "queued"),
        ("email", "queued"),
    ]

    async def sent() -> bool:
        notice = await svc.notice(notice_id)
        return all(d["status"] == "sent" for d in notice["deliveries"])

    await until(sent)
    deliveries = (await svc.notice(notice_id))["deliveries"]
    assert [d["recipient"] for d in deliveries] == ["138****5678", "z***@example.cn"]
    assert all(d["attempts"] == 1 and d["sent_at"] and not d["last_error"] for d in deliveries)


async def test_a_delivery_waits_for_its_contact_then_goes_out(svc: Running) -> None:
    created = await svc.post("/notices", notice_body("approved"))
    notice_id = created.json()["notification_id"]

    async def tried() -> bool:
        return int((await svc.notice(notice_id))["deliveries"][0]["attempts"]) >= 1

    await until(tried)
    await asyncio.sleep(0.5)  # no busy retries while nobody can be reached
    waiting = (await svc.notice(notice_id))["deliveries"][0]
    assert waiting["status"] == "queued" and waiting["attempts"] == 1
    assert "no sms contact" in waiting["last_error"]
    assert waiting["next_attempt_at"] > created.json()["created_at"]
    await svc.post("/contacts", {"application_id": APP, "mobile": MOBILE})

    async def sent() -> bool:
        return (await svc.notice(notice_id))["deliveries"][0]["status"] == "sent"

    await until(sent)
    done = (await svc.notice(notice_id))["deliveries"][0]
    assert done["attempts"] == 2 and done["last_error"] == "" and done["recipient"] == "138****5678"


async def test_a_delivery_with_no_contact_fails_after_the_wait(tmp_path: Path) -> None:
    async with running(tmp_path / "n.db", contact_wait_s="0.3") as svc:
        notice_id = (await svc.post("/notices", notice_body("approved"))).json()["notification_id"]

        async def failed() -> bool:
            return (await svc.notice(notice_id))["deliveries"][0]["status"] == "failed"

        await until(failed)
        delivery = (await svc.notice(notice_id))["deliveries"][0]
        assert delivery["attempts"] == 2 and "no sms contact" in delivery["last_error"]


async def test_a_failing_channel_is_retried_then_marked_failed(tmp_path: Path) -> None:
    async with running(
        tmp_path / "n.db", send_failure_rate="1", max_attempts="3", retry_base_ms="10"
    ) as svc:
        await svc.post("/contacts", {"application_id": APP, "mobile": MOBILE})
        created = await svc.post("/notices", notice_body("approved"))
        notice_id = created.json()["notification_id"]

        async def failed() -> bool:
            return (await svc.notice(notice_id))["deliveries"][0]["status"] == "failed"

        await until(failed)
        delivery = (await svc.notice(notice_id))["deliveries"][0]
        assert delivery["attempts"] == 3
        assert "simulated" in delivery["last_error"] and delivery["sent_at"] is None


async def test_deliveries_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    async with running(db, send_failure_rate="1", retry_base_ms="10") as svc:
        await svc.post("/contacts", {"application_id": APP, "mobile": MOBILE})
        notice_id = (await svc.post("/notices", notice_body("approved"))).json()["notification_id"]
    async with running(db, retry_base_ms="10") as svc:

        async def sent() -> bool:
            return (await svc.notice(notice_id))["deliveries"][0]["status"] == "sent"

        await until(sent)


# --- the activity against the service ----------------------------------------------------------


def step(key: str, notice: Notice, **fields: Any) -> NotifyMerchant:
    return NotifyMerchant(idempotency_key=key, application_id=APP, notice=notice, **fields)


async def test_the_activity_sends_through_the_service_once_per_step(
    svc: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSFLOW_NOTIFICATION_URL", svc.url)
    registered = await register_contact(APP, "138 1234 5678", "zhang@example.cn")
    assert registered.mobile == "138****5678"
    assert (await register_contact(APP, MOBILE, "zhang@example.cn")).mobile == "138****5678"
    env = ActivityEnvironment()
    request = step("pos-application-APP/notify/1", Notice.WENT_LIVE, fields={"mid": MID})
    first = await env.run(notify_merchant, request)
    retried = await env.run(notify_merchant, request)
    assert retried == first
    notice = await svc.notice(first.notification_id)
    assert f"商户编号：{MID}。祝您生意兴隆！ 查看进度：http" in notice["text"]
    assert [d["channel"] for d in notice["deliveries"]] == ["sms", "email"]
    # Today's workflow passes only `detail`: the short form goes out.
    short = await env.run(
        notify_merchant, step("pos-application-APP/notify/2", Notice.SHIPPED, detail="SF SF1")
    )
    assert "（SF SF1） 查看进度：http" in (await svc.notice(short.notification_id))["text"]


async def test_the_activity_refusal_is_final_and_an_outage_is_retried(
    svc: Running, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = ActivityEnvironment()
    monkeypatch.setenv("POSFLOW_NOTIFICATION_URL", svc.url)
    with pytest.raises(ApplicationError) as refused:
        await env.run(
            notify_merchant,
            step("k-refused", Notice.REJECTED, fields={"reason": "x", "colour": "red"}),
        )
    assert refused.value.non_retryable and refused.value.type == "invalid_notice"
    assert "colour" in str(refused.value)
    # A number in a field (a reviewer's reason quoting a card) goes out masked, not refused.
    masked_out = await env.run(
        notify_merchant, step("k-masked", Notice.REJECTED, fields={"reason": f"card {CARD}"})
    )
    text = (await svc.notice(masked_out.notification_id))["text"]
    assert CARD not in text and CARD[-4:] in text

    monkeypatch.setenv("POSFLOW_NOTIFICATION_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ApplicationError) as down:
        await env.run(notify_merchant, step("k-down", Notice.APPROVED))
    assert not down.value.non_retryable and down.value.type == "ServiceUnavailable"

    failing = build(
        ServiceConfig(
            name="notification", database_url=f"sqlite:///{tmp_path / 'f.db'}", failure_rate=1.0
        )
    )
    async with serving(failing.app) as url:
        monkeypatch.setenv("POSFLOW_NOTIFICATION_URL", url)
        with pytest.raises(ApplicationError) as busy:
            await env.run(notify_merchant, step("k-busy", Notice.APPROVED))
        assert not busy.value.non_retryable and "503" in str(busy.value)


async def test_without_a_service_configured_the_notice_is_only_logged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POSFLOW_NOTIFICATION_URL", raising=False)
    result = await ActivityEnvironment().run(notify_merchant, step("k-log", Notice.APPROVED))
    assert result.notification_id.startswith("ntf-")


# --- on the shared real stack --------------------------------------------------------------------


async def test_each_step_of_a_real_application_reaches_the_merchant(stack: Stack) -> None:
    """The workflow's notices, through the worker's activity, reach the stack's notification
    service in full (every template field filled in), in order, with no personal number, each
    with a working link to the merchant's page; the contact came with the first notice."""
    app = new_application()
    url = stack.served["notification"].url
    status = await stack.go_live(app)
    assert not [e for e in status["timeline"] if e["kind"] == "notification_failed"]
    on_site = app.fulfilment.value == "on_site"
    expected = [
        "received",
        "contract_ready",
        "installation_booked" if on_site else "shipped",
        "activation_codes",
        "training_booked",
        "went_live",
    ]
    async with httpx.AsyncClient(base_url=url) as http:

        async def notices() -> list[dict[str, Any]]:
            response = await http.get("/notices", params={"application_id": app.application_id})
            return sorted(response.json()["notices"], key=lambda n: n["created_at"])

        async def all_sent() -> bool:
            found = await notices()
            return [n["notice"] for n in found] == expected and all(
                d["status"] == "sent" for n in found for d in n["deliveries"]
            )

        await until(all_sent, seconds=20)
        contact = (await http.get(f"/contacts/{app.application_id}")).json()
        assert contact["mobile"] == mask_mobile(app.contact.mobile)
        found = await notices()
    for notice in found:
        text = notice["text"]
        assert text.startswith(SIGNATURE) and app.application_id in text
        assert set(notice["fields"]) == set(TEMPLATES[notice["notice"]].fields), notice["notice"]
        assert app.contact.mobile not in text
        body, _, link = text.partition(" 查看进度：")
        assert personal_number(body, ours=(app.application_id, status["mid"])) is None
        assert notice["deliveries"][0]["recipient"] == mask_mobile(app.contact.mobile)
        gateway = str(stack.gateway.base_url).rstrip("/")
        assert link.startswith(f"{gateway}/m/{app.application_id}.")
    texts = {n["notice"]: n["text"] for n in found}
    assert status["mid"] in texts["went_live"]
    assert status["contract"]["signing_url"] in texts["contract_ready"]
    async with httpx.AsyncClient() as browser:
        page = await browser.get(texts["went_live"].partition(" 查看进度：")[2])
    assert page.status_code == 200 and status["mid"] in page.text
