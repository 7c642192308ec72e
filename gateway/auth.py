"""Who may do what. Every route of the gateway belongs to one audience, declared by the guard its
router is built with (`dependencies=[Depends(guard)]`):

- ops tokens (`Authorization: Bearer`), roles viewer < operator < admin: reads, withdrawals,
  re-driving parked steps; the dashboard takes the same tokens in an HTTP-only cookie;
- merchant keys (`X-Api-Key`), one per channel or `all`: starting applications, documents, and
  the status of the channel's own applications (an admin token may do these too, and only an
  admin may override the policy);
- signatures (`X-Posflow-Signature`, `services.signing`): each service's callbacks under its own
  secret, the worker's snapshots under the worker's;
- `public`: only signing in, the health check and the dashboard's static files.

An open gateway (`GatewaySettings.is_open`) takes everyone as admin; signatures are checked all
the same. `GUARDS` lists every guard with its audience, so a test can prove that no route lacks
one.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from gateway.errors import ApiError
from schemas.application import Channel
from services.signing import HEADER, SignatureError, check
from workers.config import ALL_CHANNELS

ROLES = ("viewer", "operator", "admin")
COOKIE = "posflow_token"
MERCHANT_HEADER = "X-Api-Key"
MERCHANT_LABELS = (*(c.value for c in Channel), ALL_CHANNELS)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an ops role, or a merchant key's channel (`all`: every channel)."""

    role: str | None = None
    merchant: str | None = None

    def allows(self, needed: str) -> bool:
        return Authority.allows(self.role, needed)

    def may_see(self, channel: str) -> bool:
        """Whether this caller may see or act on an application of `channel`."""
        if self.role is not None:
            return True
        return self.merchant in (ALL_CHANNELS, channel)


@dataclass(frozen=True)
class Authority:
    tokens: dict[str, str] = field(default_factory=dict)  # token -> role
    merchant_keys: dict[str, str] = field(default_factory=dict)  # key -> channel or "all"
    open: bool = False

    @property
    def enabled(self) -> bool:
        return not self.open

    @staticmethod
    def _find(known: dict[str, str], given: str | None) -> str | None:
        if not given:
            return None
        found = None
        for candidate, value in known.items():  # every entry compared: no early exit to time
            if hmac.compare_digest(candidate.encode(), given.encode()):
                found = value
        return found

    def role_of(self, token: str | None) -> str | None:
        if self.open:
            return "admin"
        return self._find(self.tokens, token)

    def merchant_of(self, key: str | None) -> str | None:
        return self._find(self.merchant_keys, key)

    def dashboard_role(self, request: Request) -> str | None:
        return self.role_of(request.cookies.get(COOKIE))

    @staticmethod
    def allows(role: str | None, needed: str) -> bool:
        return role is not None and ROLES.index(role) >= ROLES.index(needed)


# The credentials as OpenAPI declares them (nothing is refused by these: the guards decide).
bearer = HTTPBearer(auto_error=False, description="an ops token: viewer, operator or admin")
merchant_key = APIKeyHeader(
    name=MERCHANT_HEADER, auto_error=False, description="a merchant key (per channel)"
)
dashboard_cookie = APIKeyCookie(
    name=COOKIE, auto_error=False, description="the dashboard's sign-in: an ops token"
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
MerchantKey = Annotated[str | None, Depends(merchant_key)]
Cookie = Annotated[str | None, Depends(dashboard_cookie)]

Guard = Callable[..., Coroutine[Any, Any, Any]]
# Every guard and its audience: a route is guarded if one of these is among its dependencies.
GUARDS: dict[Guard, str] = {}


def _guard(audience: str) -> Callable[[Guard], Guard]:
    def register(guard: Guard) -> Guard:
        GUARDS[guard] = audience
        return guard

    return register


def authority_of(request: Request) -> Authority:
    authority: Authority = request.app.state.authority
    return authority


def refuse(request: Request, status: int, reason: str, message: str) -> ApiError:
    """A refusal by a guard, counted by reason (never stored per request)."""
    request.app.state.metrics.refusal(reason)
    return ApiError(status, reason, message)


def _staff(request: Request, role: str | None, needed: str) -> Principal:
    if role is None:
        raise refuse(request, 401, "unauthenticated", "a bearer token is required")
    if not Authority.allows(role, needed):
        raise refuse(request, 403, "forbidden", f"this call needs the {needed} role")
    return Principal(role=role)


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None else None


def staff(needed: str) -> Guard:
    """An ops token with at least the role `needed`, as a bearer token."""

    @_guard(needed)
    async def guard(request: Request, credentials: Bearer) -> Principal:
        return _staff(request, authority_of(request).role_of(_token(credentials)), needed)

    guard.__name__ = f"{needed}_token"
    return guard


def staff_or_cookie(needed: str) -> Guard:
    """An ops token with at least `needed`, as a bearer token or the dashboard's cookie (for what
    a browser fetches by itself: the API's description, the Temporal UI's codec calls)."""

    @_guard(needed)
    async def guard(request: Request, credentials: Bearer, cookie: Cookie) -> Principal:
        authority = authority_of(request)
        role = authority.role_of(_token(credentials)) or authority.role_of(cookie)
        return _staff(request, role, needed)

    guard.__name__ = f"{needed}_token_or_cookie"
    return guard


def merchant_or_staff(needed: str) -> Guard:
    """A merchant key, or an ops token with at least the role `needed`."""

    @_guard(f"merchant|{needed}")
    async def guard(request: Request, credentials: Bearer, key: MerchantKey) -> Principal:
        authority = authority_of(request)
        if authority.open:
            return Principal(role="admin")
        if key is not None:
            channel = authority.merchant_of(key)
            if channel is None:
                raise refuse(request, 401, "unauthenticated", "unknown merchant key")
            return Principal(merchant=channel)
        if credentials is None:
            raise refuse(
                request,
                401,
                "unauthenticated",
                f"a merchant key ({MERCHANT_HEADER}) or an ops bearer token is required",
            )
        return _staff(request, authority.role_of(credentials.credentials), needed)

    guard.__name__ = f"merchant_key_or_{needed}_token"
    return guard


class SignInRequired(Exception):
    """A dashboard page asked for without a valid sign-in cookie: answered by a redirect."""


class DashboardForbidden(Exception):
    def __init__(self, needed: str) -> None:
        super().__init__(f"this needs the {needed} role")
        self.needed = needed


def dashboard(needed: str) -> Guard:
    """The dashboard's sign-in cookie with at least the role `needed`; without one, the browser
    is sent to the sign-in page."""

    @_guard(f"dashboard:{needed}")
    async def guard(request: Request, cookie: Cookie) -> Principal:
        role = authority_of(request).role_of(cookie)
        if role is None:
            request.app.state.metrics.refusal("unauthenticated")
            raise SignInRequired
        if not Authority.allows(role, needed):
            request.app.state.metrics.refusal("forbidden")
            raise DashboardForbidden(needed)
        return Principal(role=role)

    guard.__name__ = f"dashboard_{needed}"
    return guard


@dataclass(frozen=True)
class Signed:
    """A request whose signature was verified: who signed it and the raw body signed."""

    signer: str
    body: bytes


def signed_by(signer: str) -> Guard:
    """A body signed with `signer`'s secret (`services.signing`), fresh and never seen before.
    A refusal is 401; it is kept in the application's audit trail (a masked excerpt of the
    body) when the application is known, and only counted otherwise."""

    @_guard(f"signed:{signer}")
    async def guard(
        request: Request,
        signature: Annotated[
            str | None,
            Header(
                alias=HEADER, description="t=<unix seconds>,v1=<hex HMAC-SHA256 of '<t>.' + body>"
            ),
        ] = None,
    ) -> Signed:
        state = request.app.state
        raw = await request.body()
        try:
            checked = check(raw, signature, state.settings.secrets[signer], int(time.time()))
        except SignatureError as err:
            raise await _refused(request, signer, "bad_signature", str(err), raw) from err
        if not await asyncio.to_thread(state.store.first_use_of, checked.key):
            raise await _refused(
                request,
                signer,
                "replayed_signature",
                "this signed message was already received",
                raw,
            )
        return Signed(signer, raw)

    guard.__name__ = f"signed_by_{signer}"
    return guard


async def _refused(
    request: Request, signer: str, reason: str, message: str, raw: bytes
) -> ApiError:
    err = ApiError(401, reason, message)
    application_id = request.path_params.get("application_id")
    mid = request.path_params.get("mid")
    route = request.scope.get("route")
    kind = getattr(route, "name", "") or "message"
    if isinstance(application_id, str):
        await request.app.state.forwarder.refused_raw(err, application_id, signer, kind, raw)
    elif isinstance(mid, str):
        # A merchant's callback: kept in its own audit trail (`gateway.merchants`) if known.
        kind = kind.removeprefix("merchant_")
        await request.app.state.merchant_forwarder.refused_raw(
            err, f"merchant:{mid}", signer, kind, raw
        )
    else:
        request.app.state.metrics.refusal(reason)
    return err


@_guard("public")
async def public() -> None:
    """No credential: signing in, the health check, static files. Declared all the same, so that
    a route without any audience stands out."""


viewer = staff("viewer")
operator = staff("operator")
admin = staff("admin")
