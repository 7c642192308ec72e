"""Telling the merchant where their application stands (SMS, e-mail or app message)."""

from __future__ import annotations

import hashlib

import structlog
from temporalio import activity

from activities import catalog
from schemas.steps import Notified, NotifyMerchant

log = structlog.get_logger(__name__)


def notification_id_for(idempotency_key: str) -> str:
    """The notice's id, a function of the step's idempotency key: a retry reports the same id."""
    return "ntf-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]


@activity.defn(name=catalog.NOTIFY_MERCHANT)
async def notify_merchant(request: NotifyMerchant) -> Notified:
    """Send the merchant a notice about their application.

    No notification gateway (SMS, e-mail, app message) is configured yet, so this is the sandbox
    channel: it sends nothing to the merchant. It records each notice as one structured
    `notice_sent` log line and returns an id derived from the request's idempotency key, so a
    retried notice yields the same id. `detail` arrives already masked by the caller.
    """
    notification_id = notification_id_for(request.idempotency_key)
    log.info(
        "notice_sent",
        channel="sandbox",
        notification_id=notification_id,
        application_id=request.application_id,
        notice=request.notice.value,
        detail=request.detail,
    )
    return Notified(notification_id=notification_id)
