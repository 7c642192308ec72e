"""Telling the merchant where their application stands (SMS, and e-mail when they gave one).

The notification service (`services/notification.py`, `POSFLOW_NOTIFICATION_URL`) renders each
notice from its Chinese templates and sends it. The workflow passes the application id, the
notice, its template `fields` (already masked) and `detail`, never the merchant's mobile or
e-mail: the service holds those by application id, registered once with `register_contact` (the
gateway's call at submission), so no contact detail enters Temporal's history.

Without `POSFLOW_NOTIFICATION_URL` (a worker on its own, unit tests) nothing is sent: the notice
is only logged, with an id derived from the step's idempotency key. `posflow up` and the test
stack set the URL to the notification service they run.
"""

from __future__ import annotations

import hashlib
import os

import httpx
import structlog
from pydantic import BaseModel
from temporalio import activity

from activities import catalog
from activities.http import ServiceClient
from schemas.steps import Notified, NotifyMerchant

log = structlog.get_logger(__name__)

SERVICE = "notification"
URL_ENV = "POSFLOW_NOTIFICATION_URL"


class _Queued(BaseModel):
    """The part of the service's answer (`NoticeView`) the workflow keeps."""

    notification_id: str


class ContactRegistered(BaseModel):
    application_id: str
    mobile: str  # masked
    email: str  # masked


def notification_id_for(idempotency_key: str) -> str:
    """The notice's id when no service is configured, a function of the step's idempotency key:
    a retry reports the same id."""
    return "ntf-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]


def notification_url() -> str | None:
    """Where the notification service is, or None: notices are then only logged."""
    return os.environ.get(URL_ENV) or None


@activity.defn(name=catalog.NOTIFY_MERCHANT)
async def notify_merchant(request: NotifyMerchant) -> Notified:
    """Send the merchant a notice: `POST /notices` under the step's idempotency key, so a
    retried activity sends it once and gets the same id back. The service's refusal (a 4xx: an
    unknown notice, a missing field, a personal number in a field) is non-retryable; a 5xx or
    an unreachable service is retried by the activity's retry policy. `detail` and `fields`
    arrive already masked by the caller (the service refuses them otherwise)."""
    url = notification_url()
    if url is None:
        notification_id = notification_id_for(request.idempotency_key)
        channel = "sandbox"
    else:
        client = ServiceClient(SERVICE, url)
        try:
            queued = await client.send("/notices", request, _Queued)
        finally:
            await client.aclose()
        notification_id = queued.notification_id
        channel = SERVICE
    log.info(
        "notice_sent",
        channel=channel,
        notification_id=notification_id,
        application_id=request.application_id,
        notice=request.notice.value,
        detail=request.detail,
    )
    return Notified(notification_id=notification_id)


async def register_contact(
    application_id: str,
    mobile: str,
    email: str = "",
    merchant_id: str | None = None,
    *,
    base_url: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ContactRegistered:
    """Tell the notification service where an application's notices go (`POST /contacts`): for
    the gateway to call when an application is submitted or its contact changes. Idempotent:
    the key is the application and the contact, so a resend changes nothing and a new number
    replaces the old one. Raises `ApplicationError` as the activities' clients do."""
    digest = hashlib.sha256(f"{mobile}\n{email}\n{merchant_id or ''}".encode()).hexdigest()[:16]
    client = ServiceClient(SERVICE, base_url or notification_url(), transport=transport)
    try:
        return await client.call(
            "POST",
            "/contacts",
            ContactRegistered,
            idempotency_key=f"contact/{application_id}/{digest}",
            body={
                "application_id": application_id,
                "merchant_id": merchant_id,
                "mobile": mobile,
                "email": email,
            },
        )
    finally:
        await client.aclose()
