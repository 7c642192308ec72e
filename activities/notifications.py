"""Telling the merchant where their application stands (SMS, and e-mail when they gave one).

The notification service (`services/notification.py`, `POSFLOW_NOTIFICATION_URL`) renders each
notice from its Chinese templates and sends it. The workflow passes the application id, the
notice, its template `fields` and `detail`. The merchant's mobile and e-mail come once, with
the first notice (`received`, `NotifyMerchant.contact`): the activity registers them with the
service (`POST /contacts`) before sending it, and later notices name the application only; the
service looks the contact up when it delivers.

Every notice ends with the merchant's page: a signed link (`schemas.page_links`) made here, when
the notice is sent, so it is never in the history. Its address is `POSFLOW_PUBLIC_URL` (the
gateway as merchants reach it), else the gateway's own URL; its key comes from the worker's
signing secret, which the gateway holds too. Field values are masked here as a last safety net
(a reviewer's reason quoting a number): the service would refuse them whole.

Without `POSFLOW_NOTIFICATION_URL` (a worker on its own, unit tests) nothing is sent: the notice
is only logged, with an id derived from the step's idempotency key. `posflow up` and the test
stack set the URL to the notification service they run.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta, timezone
from typing import TypeVar

import httpx
import structlog
from pydantic import BaseModel
from temporalio import activity

from activities import catalog
from activities.http import ServiceClient
from activities.projection import gateway_url
from schemas import steps
from schemas.page_links import page_key, page_url
from schemas.steps import Notice, Notified, NotifyMerchant
from workers.config import signing_secret
from workers.logging import mask_text

log = structlog.get_logger(__name__)

SERVICE = "notification"
URL_ENV = "POSFLOW_NOTIFICATION_URL"
CHINA = timezone(timedelta(hours=8), "CST")
PUBLIC_URL_ENV = "POSFLOW_PUBLIC_URL"


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


def public_url() -> str:
    """The gateway's address as merchants reach it, for the links in notices."""
    return os.environ.get(PUBLIC_URL_ENV) or gateway_url()


def merchant_page_link(application_id: str) -> str:
    """A signed link to the application's merchant page, valid `LINK_LIFETIME` from the day the
    notice was first scheduled: every attempt of one notice sends the same link, so a retry is
    the same request to the service's idempotency check."""
    since = activity.info().scheduled_time if activity.in_activity() else datetime.now(UTC)
    day = since.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return page_url(public_url(), application_id, page_key(signing_secret("worker")), now=day)


def _cut(value: str, limit: int = 500) -> str:
    """A field value within the service's limit: a long reason ends with an ellipsis."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def notice_body(request: NotifyMerchant, link: str) -> dict[str, object]:
    """What `POST /notices` gets: the step without its key, field values masked, the link."""
    body = request.model_dump(
        mode="json", exclude={"idempotency_key", "contact", *NotifyMerchant.CARRIED}
    )
    body["fields"] = {name: _cut(mask_text(value)) for name, value in request.fields.items()}
    body["detail"] = mask_text(request.detail)
    body["link"] = link
    if request.merchant_id is None:
        body.pop("merchant_id")
    return body


@activity.defn(name=catalog.NOTIFY_MERCHANT)
async def notify_merchant(request: NotifyMerchant) -> Notified:
    """The notice as an activity of its own (see `send_notice`)."""
    return await send_notice(request)


async def send_notice(request: NotifyMerchant) -> Notified:
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
        body = notice_body(request, merchant_page_link(request.application_id))
        try:
            if request.contact is not None:
                await register_contact(
                    request.application_id,
                    request.contact.mobile,
                    request.contact.email,
                    request.merchant_id,
                    client=client,
                )
            queued = await client.call(
                "POST", "/notices", _Queued, idempotency_key=request.idempotency_key, body=body
            )
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
    client: ServiceClient | None = None,
) -> ContactRegistered:
    """Tell the notification service where an application's notices go (`POST /contacts`): sent
    with the first notice, or when the contact changes. Idempotent:
    the key is the application and the contact, so a resend changes nothing and a new number
    replaces the old one. Raises `ApplicationError` as the activities' clients do."""
    digest = hashlib.sha256(f"{mobile}\n{email}\n{merchant_id or ''}".encode()).hexdigest()[:16]
    own = client is None
    client = client or ServiceClient(SERVICE, base_url or notification_url(), transport=transport)
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
        if own:
            await client.aclose()


# --- a notice sent by the step that causes it ---------------------------------------------------

R = TypeVar("R", bound=BaseModel)


def china_time(moment: datetime) -> str:
    """A moment as merchants read it: China time, to the minute (as the workflow writes it)."""
    return moment.astimezone(CHINA).strftime("%Y-%m-%d %H:%M")


def fields_from(notice: Notice, result: BaseModel) -> dict[str, str]:
    """The notice's template fields that the step's answer gives (the rest come with it)."""
    if isinstance(result, steps.ContractIssued):
        return {"signing_link": result.signing_url}
    if isinstance(result, steps.ShipmentCreated):
        return {"carrier": result.carrier, "tracking_number": result.tracking_number}
    if isinstance(result, steps.InstallationBooked):
        return {"appointment": china_time(result.scheduled_for)}
    if isinstance(result, steps.PickUpBooked):
        return {
            "branch": result.branch,
            "ready_from": china_time(result.ready_from),
            "pickup_code": result.pickup_code,
        }
    if isinstance(result, steps.ActivationCodesIssued):
        return {"codes": "；".join(f"终端{c.serial[-4:]}：{c.code}" for c in result.codes)}
    if isinstance(result, steps.TrainingScheduled):
        more = f" 起，共{result.sessions}次" if result.sessions > 1 else ""
        return {"appointment": china_time(result.scheduled_for) + more}
    return {}


async def then_tell(step: steps.Step, result: R) -> R:
    """Send the notice the step causes (`Step.then_notify`), now that the service has done the
    step, and say so in the result (`notified`). Best effort: a notice that cannot go out is
    logged and left to the workflow, which sends it by itself under the same key (so it goes
    out once even if this one did reach the service)."""
    notice = step.then_notify
    if notice is None or "notified" not in type(result).model_fields:
        return result
    request = notice.model_copy(
        update={"fields": {**notice.fields, **fields_from(notice.notice, result)}}
    )
    try:
        await send_notice(request)
    except Exception as err:
        log.warning(
            "notice_left_to_the_workflow",
            application_id=request.application_id,
            notice=request.notice.value,
            error=mask_text(str(err))[:300],
        )
        return result
    return result.model_copy(update={"notified": True})
