"""The merchant's page (`/m/{token}`) against the real stack: opened by the signed link alone,
it shows where the application stands and what was refused, takes the corrected document through
the same path as the API, and refuses a forged or expired link. The browser test runs on a
phone-sized viewport in Debian's chromium and keeps its screenshots under `artifacts/screenshots/`
(`merchant-page-*.png`)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from markupsafe import escape
from playwright.async_api import Browser, Page, async_playwright

from gateway.routes.page import KIND_NAMES, TEMPLATES, PageLink, page_view, submission_of
from schemas.application import Application
from schemas.documents import Document, DocumentKind
from schemas.page_links import page_key, page_url, sign
from schemas.status import ApplicationStatus, Stage
from tests.factories import ID_CARD_EXPIRES_ON, valid_documents
from tests.stack import MERCHANT_KEY, SECRETS, Stack, new_application
from tests.test_dashboard import CHROMIUM_FLAGS, SHOTS
from workflows.case import CHINA

KEY = page_key(SECRETS["worker"])  # the gateway's key: derived from the worker's secret
PHONE = {"width": 390, "height": 844}
# A merchant's phone in China: its date inputs read year-month-day, its clock China time.
PHONE_CONTEXT: dict[str, Any] = {
    "viewport": PHONE,
    "is_mobile": True,
    "has_touch": True,
    "locale": "zh-CN",
    "timezone_id": "Asia/Shanghai",
}
WRONG_HOLDER = "李四"  # not the legal representative (张三): the identity card is refused


@pytest.fixture(scope="session")
async def phone_browser() -> AsyncIterator[Browser]:
    path = os.environ.get("POSFLOW_CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(path):  # noqa: ASYNC240 (once per session)
        pytest.fail(f"no chromium at {path}: `apt-get install chromium` (.ci/run does)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=path, args=[*CHROMIUM_FLAGS, "--lang=zh-CN"]
        )
        yield browser
        await browser.close()


def base_url(stack: Stack) -> str:
    return str(stack.gateway.base_url).rstrip("/")


def link(stack: Stack, app: Application) -> str:
    return page_url(base_url(stack), app.application_id, KEY)


def anonymous(stack: Stack) -> httpx.AsyncClient:
    """A client with no credential at all: the link is all the merchant has."""
    return httpx.AsyncClient(base_url=base_url(stack), timeout=30)


def form_of(document: Document) -> dict[str, str]:
    """A document as the page's form posts it."""
    kind = document.kind.value
    return {
        f"{kind}.file_id": document.file_id,
        f"{kind}.number": document.number,
        f"{kind}.holder_name": document.holder_name,
        f"{kind}.expires_on": document.expires_on.isoformat() if document.expires_on else "",
    }


def identity_card(app: Application, **changes: Any) -> Document:
    card = next(d for d in valid_documents(app) if d.kind is DocumentKind.IDENTITY_CARD)
    return card.model_copy(update=changes)


async def with_refused_identity_card(stack: Stack) -> Application:
    """An application whose documents were filed through the API, the identity card refused
    (its holder is not the legal representative): every other document is on file."""
    app = new_application()
    await stack.start(app)
    documents = [
        (
            identity_card(app, holder_name=WRONG_HOLDER)
            if d.kind is DocumentKind.IDENTITY_CARD
            else d
        )
        for d in valid_documents(app)
    ]
    response = await stack.submit(app, [d.model_dump(mode="json") for d in documents])
    assert response.status_code == 422, response.text
    assert "documents.identity_card.holder_name" in response.json()["fields"]
    return app


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"merchant-page-{name}.png"), full_page=True)


async def test_the_page_shows_a_refused_document_and_accepts_the_corrected_one(
    stack: Stack, phone_browser: Browser
) -> None:
    app = await with_refused_identity_card(stack)
    context = await phone_browser.new_context(**PHONE_CONTEXT)
    page = await context.new_page()
    response = await page.goto(link(stack, app))
    assert response is not None and response.status == 200
    assert await page.get_by_test_id("stage").get_attribute("data-stage") == "collecting_documents"
    assert app.application_id in await page.get_by_test_id("application-code").inner_text()
    # Only the refused document is asked for again, with the refusal beside its field.
    assert await page.locator("fieldset").count() == 1
    section = page.get_by_test_id("section-identity_card")
    error = section.get_by_test_id("error-identity_card-holder_name")
    assert "holder name does not match" in await error.inner_text()
    assert (
        await section.locator("#identity_card-holder_name").get_attribute("aria-invalid") == "true"
    )
    missing = await page.get_by_test_id("missing").inner_text()
    assert "法定代表人身份证" in missing and "营业执照" not in missing
    # The page fits the phone: nothing wider than the viewport, inputs big enough to tap.
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]
    box = await section.locator("#identity_card-holder_name").bounding_box()
    assert box is not None and box["height"] >= 44
    await shot(page, "refused")

    card = identity_card(app, file_id="file-identity-card-rescan")
    await section.get_by_label("扫描件编号").fill(card.file_id)
    await section.get_by_label("证件号码").fill(card.number)
    await section.get_by_label("持有人名称").fill(card.holder_name)
    await section.get_by_label("有效期至").fill(ID_CARD_EXPIRES_ON.isoformat())
    await page.get_by_test_id("submit").click()
    result = page.get_by_test_id("result")
    await result.wait_for()
    assert "材料已提交成功" in await result.inner_text()
    assert "法定代表人身份证" in await result.inner_text()
    assert await page.locator("fieldset").count() == 0  # nothing is asked for any more
    html = await page.content()
    assert app.legal_representative.id_number not in html
    assert app.settlement_account.account_number not in html
    await shot(page, "accepted")

    # The application moves on; the page, opened again by its link, says so.
    status = await stack.status(app)
    assert "identity_card" in status["documents"]["on_file"]
    for _ in range(300):
        await page.goto(link(stack, app))
        stage = await page.get_by_test_id("stage").get_attribute("data-stage")
        if stage != "collecting_documents":
            break
        await asyncio.sleep(0.1)
    assert stage != "collecting_documents"
    assert await page.get_by_test_id("supplement").count() == 0
    # (The signing link is checked where the stage is held still: the sandbox signs at once,
    # and the contract stage begins before the contract exists.)
    await shot(page, "moved-on")
    await context.close()


async def test_a_forged_or_expired_link_is_refused(stack: Stack, phone_browser: Browser) -> None:
    app = new_application()
    await stack.start(app)
    token = link(stack, app).rsplit("/", 1)[1]
    signature_at = token.rindex(".") + 1
    changed = "B" if token[signature_at] != "B" else "C"
    forged = token[:signature_at] + changed + token[signature_at + 1 :]
    expired = sign(app.application_id, datetime.now(UTC) - timedelta(minutes=1), KEY)
    other_key = sign(app.application_id, datetime.now(UTC) + timedelta(days=1), page_key("x"))
    _, expires, signature = expired.split(".")
    stretched = f"{app.application_id}.{int(expires) + 86400 * 365}.{signature}"
    another = f"{new_application().application_id}.{token.split('.', 1)[1]}"
    async with anonymous(stack) as http:
        assert (await http.get(f"/m/{token}")).status_code == 200
        for bad, status in (
            (forged, 403),
            (other_key, 403),
            (stretched, 403),  # an old link's expiry pushed back
            (another, 403),  # a genuine link's signature on another application
            ("not-a-token", 403),
            (f"{app.application_id}.9999999999", 403),
            (expired, 410),
        ):
            answer = await http.get(f"/m/{bad}")
            assert answer.status_code == status, (bad, answer.status_code)
            assert answer.headers["content-type"].startswith("text/html")
            assert answer.headers["cache-control"] == "no-store"
            assert app.application_id not in answer.text  # names nothing about the application
            assert app.merchant.name not in answer.text
            assert "链接" in answer.text and "link" in answer.text
            # Nor does a form posted with it reach the application.
            posted = await http.post(
                f"/m/{bad}/documents", data=form_of(identity_card(app, file_id="forged"))
            )
            assert posted.status_code == status
    assert (await stack.status(app))["documents"]["on_file"] == []

    context = await phone_browser.new_context(**PHONE_CONTEXT)
    page = await context.new_page()
    response = await page.goto(f"{base_url(stack)}/m/{expired}")
    assert response is not None and response.status == 410
    assert "链接已过期" in await page.get_by_test_id("refused").inner_text()
    await shot(page, "expired")
    response = await page.goto(f"{base_url(stack)}/m/{forged}")
    assert response is not None and response.status == 403
    assert "链接无效" in await page.get_by_test_id("refused").inner_text()
    await shot(page, "forged")
    await context.close()


async def test_the_page_asks_only_for_the_documents_the_application_needs(stack: Stack) -> None:
    app = new_application()
    await stack.start(app)
    status = await stack.status(app)
    async with anonymous(stack) as http:
        page = await http.get(link(stack, app))
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    sections = set(re.findall(r'data-testid="section-([a-z_]+)"', page.text))
    assert sections == set(status["documents"]["outstanding"])
    assert "passport" not in sections and "identity_card" in sections
    for name in ("file_id", "number", "holder_name", "expires_on"):
        assert f'name="identity_card.{name}"' in page.text
    assert app.legal_representative.id_number not in page.text
    deadline = datetime.fromisoformat(status["deadlines"]["stage_deadline"])
    shown = deadline.astimezone(CHINA).strftime("%Y-%m-%d %H:%M")
    assert shown in page.text  # in China time


async def test_the_form_answers_the_apis_field_errors(stack: Stack) -> None:
    """The same document refused through the page and through the API: the same fields, the
    same messages; a malformed field is refused before anything is sent, as the API refuses it."""
    app = new_application()
    await stack.start(app)
    page_link = link(stack, app)
    malformed = {**form_of(identity_card(app)), "identity_card.expires_on": "30/06/2045"}
    async with anonymous(stack) as http:
        page = await http.post(f"{page_link}/documents", data=malformed)
    assert page.status_code == 422
    document = {**identity_card(app).model_dump(mode="json"), "expires_on": "30/06/2045"}
    api = await stack.submit(app, [document])
    assert api.status_code == 422
    (message,) = api.json()["fields"].values()
    error = re.search(r'data-testid="error-identity_card-expires_on">(.*?)</p>', page.text)
    assert error is not None and str(escape(message)) in error.group(1)
    assert (await stack.status(app))["documents"]["on_file"] == []

    # Refused by the workflow's validation: the page's fields are the API's fields.
    wrong = identity_card(app, holder_name=WRONG_HOLDER, file_id="file-wrong-holder")
    async with anonymous(stack) as http:
        page = await http.post(f"{page_link}/documents", data=form_of(wrong))
    assert page.status_code == 422
    api = await stack.submit(app, [wrong.model_dump(mode="json")])
    assert api.status_code == 422
    for field, message in api.json()["fields"].items():
        kind, name = field.split(".")[1:3]
        shown = re.search(rf'data-testid="error-{kind}-{name}">(.*?)</p>', page.text)
        assert shown is not None and str(escape(message)) in shown.group(1), field
    assert wrong.number not in page.text  # a typed number is never echoed back
    assert f'value="{WRONG_HOLDER}"' in page.text  # the rest is, to correct it


async def test_a_double_click_files_the_documents_once(stack: Stack) -> None:
    app = new_application()
    await stack.start(app)
    form: dict[str, str] = {}
    for document in valid_documents(app):
        form.update(form_of(document))
    async with anonymous(stack) as http:
        first, second = await asyncio.gather(
            http.post(f"{link(stack, app)}/documents", data=form),
            http.post(f"{link(stack, app)}/documents", data=form),
        )
    assert {first.status_code, second.status_code} == {200}, (first.text, second.text)
    submission = submission_of(app.application_id, valid_documents(app))
    status = await stack.status(app)
    filed = [
        e
        for e in status["timeline"]
        if e["kind"] == "documents_submitted" and e["detail"] == submission.submission_id
    ]
    assert len(filed) == 1
    assert status["documents"]["outstanding"] == []
    # What the API files is what the page files: the same submission through the API is the same.
    again = await stack.gateway.post(
        f"/api/applications/{app.application_id}/documents",
        json=submission.model_dump(mode="json"),
        headers={"X-Api-Key": MERCHANT_KEY},
    )
    assert again.status_code == 200 and again.json()["duplicate"] is True


async def test_once_live_the_page_shows_the_tracking_number_and_the_mid(stack: Stack) -> None:
    app = new_application()
    status = await stack.go_live(app)
    async with anonymous(stack) as http:
        page = await http.get(link(stack, app))
    assert page.status_code == 200
    assert 'data-stage="live"' in page.text and "已开通" in page.text
    assert status["mid"] in re.search(r'data-testid="mid">(.*?)<', page.text).group(1)  # type: ignore[union-attr]
    assert status["shipment"]["tracking_number"] in page.text
    assert status["shipment"]["carrier"] in page.text
    assert 'data-testid="supplement"' not in page.text
    assert 'data-testid="contract"' not in page.text  # signed long ago

    # While the contract awaits signature, its link is there (the same status, one stage back).
    live = ApplicationStatus.model_validate(status)
    awaiting = live.model_copy(
        update={
            "stage": Stage.CONTRACT,
            "mid": None,
            "shipment": None,
            "contract": live.contract.model_copy(
                update={"signing_url": "https://sign.example/c/123", "signed_at": None}
            ),
        }
    )
    html = TEMPLATES.get_template("page.html").render(
        view=page_view(awaiting),
        link=PageLink("t", app.application_id, datetime.now(UTC) + timedelta(days=1)),
        kind_names=KIND_NAMES,
    )
    assert 'href="https://sign.example/c/123"' in html and "签署合同" in html
    assert 'data-testid="mid"' not in html


def test_a_refused_document_is_placed_beside_its_field() -> None:
    """The status's issues are placed on the document asked for and its field; an issue of the
    application itself is listed apart; a number typed is never put back in the form."""
    status = ApplicationStatus.model_validate(
        {
            "application_id": "A1",
            "workflow_id": "pos-application-A1",
            "channel": "alipay",
            "merchant_type": "individual",
            "merchant_name": "店",
            "fulfilment": "mail",
            "stage": "collecting_documents",
            "round": 1,
            "stage_entered_at": "2026-01-01T00:00:00Z",
            "deadlines": {"stage_deadline": "2026-01-08T00:00:00Z"},
            "documents": {
                "on_file": ["business_licence"],
                "outstanding": ["identity_card"],
                "issues": [
                    {
                        "field": "documents.identity_card.expires_on",
                        "code": "expired",
                        "message": "identity card expired on 2020-01-01",
                    },
                    {
                        "field": "legal_representative.id_number",
                        "code": "checksum",
                        "message": "the number 110101198503141234 is wrong",
                    },
                ],
            },
            "review": {},
            "contract": {},
        }
    )
    view = page_view(
        status, values={DocumentKind.IDENTITY_CARD: {"number": "secret", "file_id": "f"}}
    )
    (section,) = view.sections
    assert section.kind == "identity_card"
    assert [i.field for i in section.errors("expires_on")] == ["expires_on"]
    assert "已过期" in section.errors("expires_on")[0].label
    assert section.values == {"file_id": "f"}
    (other,) = view.other_issues
    assert "110101198503141234" not in other.message  # masked
    assert view.can_supplement and view.signing_url is None
