"""Personal numbers never reach a log line; the sandbox notification channel is idempotent."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs
from temporalio.testing import ActivityEnvironment

from activities.notifications import notify_merchant
from schemas.documents import Document, DocumentKind
from schemas.steps import Notice, NotifyMerchant
from workers.logging import configure_logging, mask_number, mask_personal_data, mask_text

RESIDENT_ID = "11010519491231002X"
ACCOUNT = "6222021234567890123"


def masked(**event: Any) -> dict[str, Any]:
    return dict(mask_personal_data(None, "info", event))


def test_personal_keys_are_masked_wherever_they_are() -> None:
    event = masked(
        event="merchant_checked",
        id_number=RESIDENT_ID,
        account_number=ACCOUNT,
        card_number="4111111111111111",
        mobile="13812345678",
        contact={"settlement_account_number": "12345678", "mobile": 13912345678},
    )
    assert event["id_number"] == "110***********002X"
    assert event["account_number"] == "***************0123"
    assert event["card_number"] == "************1111"
    assert event["mobile"] == "*******5678"
    assert event["contact"] == {"settlement_account_number": "****5678", "mobile": "*******5678"}
    assert event["event"] == "merchant_checked"


def test_a_number_is_masked_only_inside_a_document() -> None:
    licence = {"kind": "business_licence", "file_id": "f-1", "number": "91110000600037341L"}
    event = masked(
        documents=[{"kind": "identity_card", "number": "3301"}],
        document=licence,
        on_file=[licence],
        number=3,
        round={"number": "2"},
    )
    assert event["documents"] == [{"kind": "identity_card", "number": "****"}]
    assert event["document"]["number"] == "**************341L"
    assert event["on_file"][0]["number"] == "**************341L"
    assert event["number"] == 3
    assert event["round"] == {"number": "2"}


def test_a_pydantic_document_is_masked() -> None:
    card = Document(kind=DocumentKind.IDENTITY_CARD, file_id="scan-7", number=RESIDENT_ID)
    event = masked(event="document_received", submitted=card)
    assert event["submitted"]["number"] == "110***********002X"
    assert event["submitted"]["file_id"] == "scan-7"


def test_numbers_inside_free_text_are_masked() -> None:
    text = f"holder {RESIDENT_ID} pays from {ACCOUNT}; ref 12345678901 at 2026-03-01T10:00:00"
    assert mask_text(text) == (
        "holder 110***********002X pays from ***************0123; "
        "ref 12345678901 at 2026-03-01T10:00:00"
    )
    assert mask_text("id 110105194912310021 ok") == "id 110***********0021 ok"
    # Digits glued to letters or hyphens belong to an identifier: left whole.
    assert mask_text("x1101051949123100211y") == "x1101051949123100211y"
    assert (
        mask_text("case rc-421fdb9f1234567890123456c199") == "case rc-421fdb9f1234567890123456c199"
    )
    # Shorter runs are not masked by shape (a MID is 15 digits); 16 and more are.
    assert mask_text("MID 898662862827037") == "MID 898662862827037"
    assert mask_text("error: " + "1" * 16) == "error: ************1111"
    assert masked(event=f"rejected {RESIDENT_ID}")["event"] == "rejected 110***********002X"
    assert masked(reasons=[f"account {ACCOUNT} closed"])["reasons"] == [
        "account ***************0123 closed"
    ]


def test_short_values_are_masked_whole() -> None:
    assert mask_number("123") == "***"
    assert mask_number(" 12345 ") == "*2345"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_are_masked_for_structlog_and_the_standard_library(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(json=True)
    structlog.get_logger("posflow.test").info("document_checked", id_number=RESIDENT_ID)
    logging.getLogger("temporalio.activity").warning("activity failed for %s", ACCOUNT)

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == [
        "document_checked",
        "activity failed for ***************0123",
    ]
    assert lines[0]["id_number"] == "110***********002X"
    assert lines[0]["level"] == "info"
    assert lines[1]["level"] == "warning"
    assert all("timestamp" in line for line in lines)


@pytest.mark.usefixtures("restore_logging")
def test_the_log_format_follows_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSFLOW_LOG_FORMAT", "console")
    configure_logging()
    structlog.get_logger().info("console_line", mobile="13812345678")
    out = capsys.readouterr().out
    assert "console_line" in out and "*******5678" in out
    assert not out.lstrip().startswith("{")

    monkeypatch.setenv("POSFLOW_LOG_FORMAT", "json")
    configure_logging()
    structlog.get_logger().info("json_line")
    assert json.loads(capsys.readouterr().out)["event"] == "json_line"


def notice(key: str) -> NotifyMerchant:
    return NotifyMerchant(
        idempotency_key=key,
        application_id="app-1",
        notice=Notice.DOCUMENTS_INCOMPLETE,
        detail="business licence expired",
    )


async def test_a_notice_is_recorded_and_a_retry_yields_the_same_id() -> None:
    env = ActivityEnvironment()
    with capture_logs() as logs:
        first = await env.run(notify_merchant, notice("pos-application-app-1/notice/1"))
        retried = await env.run(notify_merchant, notice("pos-application-app-1/notice/1"))
        other = await env.run(notify_merchant, notice("pos-application-app-1/notice/2"))

    assert first.notification_id.startswith("ntf-")
    assert len(first.notification_id) == len("ntf-") + 16
    assert retried == first
    assert other != first
    sent = [entry for entry in logs if entry["event"] == "notice_sent"]
    assert len(sent) == 3
    assert sent[0]["application_id"] == "app-1"
    assert sent[0]["notice"] == "documents_incomplete"
    assert sent[0]["detail"] == "business licence expired"
    assert sent[0]["notification_id"] == first.notification_id


def test_operational_identifiers_stay_whole_while_personal_numbers_are_masked() -> None:
    status = {
        "mid": "898662862827037",
        "terminals": [{"serial": "LKL20261123000001", "tid": "T1234567"}],
        "shipment": {"tracking_number": "SF1234567890123"},
        "settlement_account_number": ACCOUNT,
        "detail": f"refund to {ACCOUNT}",
    }
    shown = masked(**status)
    assert shown["mid"] == "898662862827037"
    assert shown["terminals"] == [{"serial": "LKL20261123000001", "tid": "T1234567"}]
    assert shown["shipment"]["tracking_number"] == "SF1234567890123"
    assert ACCOUNT not in str(shown) and shown["settlement_account_number"].endswith("0123")


def test_identifiers_are_never_touched_whatever_digits_they_hold() -> None:
    """Masked by field, not by pattern: an 18-digit application id, a case id with a long digit
    run, the MID and the tracking number in the timeline all come back whole, while the
    personal fields beside them are masked."""
    status = {
        "application_id": "202612011234563988",
        "workflow_id": "pos-application-202612011234563988",
        "review": {"case_id": "rc-421fdb9f1234567890123456c199", "rounds": []},
        "installation": {"appointment_id": "ap-20261201123456789012"},
        "timeline": [
            {"kind": "terminals_registered", "detail": "898662862827037"},
            {"kind": "shipped", "detail": "SF Express SF1234567890123"},
        ],
        "contact": {"mobile": "13812345678"},
        "documents": [{"kind": "identity_card", "file_id": "f-1", "number": RESIDENT_ID}],
    }
    shown = masked(**status)
    for key in ("application_id", "workflow_id", "review", "installation", "timeline"):
        assert shown[key] == status[key], key
    assert shown["contact"] == {"mobile": "*******5678"}
    assert shown["documents"][0]["number"] == "110***********002X"
