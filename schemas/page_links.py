"""Signed, expiring links to a merchant's own page (`/m/{token}` on the gateway).

Every notice to the merchant carries one. The token names the application and when it stops
working, with an HMAC-SHA256 over both, so it can be neither forged for another application nor
stretched past its expiry. The key is derived from the worker's signing secret, which the worker
(that puts the link in notices) and the gateway (that checks it) both hold already: no new secret
to distribute, and rotating the worker's secret retires every link out.

A token: `<application_id>.<expires, unix seconds>.<signature, base64url without padding>`.
Application ids are `[A-Za-z0-9_-]`, so the dots are unambiguous.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from enum import StrEnum

LINK_LIFETIME = timedelta(days=30)
_KEY_LABEL = b"posflow/merchant-page-link/v1"


class LinkProblem(StrEnum):
    MALFORMED = "malformed"
    FORGED = "forged"
    EXPIRED = "expired"


class InvalidLink(Exception):
    """The token is not one posflow signed, or no longer valid; `problem` says which."""

    def __init__(self, problem: LinkProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem


def page_key(worker_secret: str) -> bytes:
    """The links' key, from the worker's signing secret."""
    return hmac.new(worker_secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _signature(key: bytes, application_id: str, expires: int) -> str:
    mac = hmac.new(key, f"{application_id}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def sign(application_id: str, expires_at: datetime, key: bytes) -> str:
    expires = int(expires_at.timestamp())
    return f"{application_id}.{expires}.{_signature(key, application_id, expires)}"


def verify(token: str, key: bytes, now: datetime | None = None) -> str:
    """The application the token opens, or `InvalidLink`. The signature is checked before the
    expiry, so a forged token is told apart from an old genuine one."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        raise InvalidLink(LinkProblem.MALFORMED)
    application_id, expires_text, signature = parts
    expires = int(expires_text)
    if not hmac.compare_digest(signature, _signature(key, application_id, expires)):
        raise InvalidLink(LinkProblem.FORGED)
    if (now or datetime.now(UTC)).timestamp() >= expires:
        raise InvalidLink(LinkProblem.EXPIRED)
    return application_id


def page_url(
    base_url: str,
    application_id: str,
    key: bytes,
    now: datetime | None = None,
    lifetime: timedelta = LINK_LIFETIME,
) -> str:
    """The merchant page's full address for an application, valid for `lifetime` from `now`."""
    expires_at = (now or datetime.now(UTC)) + lifetime
    return f"{base_url.rstrip('/')}/m/{sign(application_id, expires_at, key)}"
