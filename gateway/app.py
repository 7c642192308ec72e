"""The gateway's HTTP API (DESIGN.md, "External contracts"): requests become workflow starts,
queries and updates; every message is verified, applied at most once and kept with its outcome.

`create_app` only assembles: each audience's routes are one router with its guard
(`gateway.routes.*`, `gateway.dashboard`, see `gateway.auth`), the resources they use are in the
app's state (`gateway.resources`), the forwarding of messages to workflows is
`gateway.forwarding`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from temporalio.client import Client

from gateway import dashboard
from gateway.auth import Authority, DashboardForbidden, SignInRequired, staff_or_cookie
from gateway.codec import codec_router
from gateway.errors import COMMON, SIGNED_IN, ApiError, shown
from gateway.forwarding import PENDING_DETAIL, Forwarded, Forwarder, answer
from gateway.limits import BodyLimit, BodyTooLarge, excerpt, too_large_body, valid_id
from gateway.merchants import MERCHANT_SOURCES, MerchantForwarder, audit_key, valid_mid
from gateway.metrics import GatewayMetrics
from gateway.orphans import sweep_forever
from gateway.resources import SOURCES
from gateway.routes import (
    admin,
    callbacks,
    docs,
    internal,
    merchant,
    merchants,
    operations,
    page,
    public,
)
from gateway.settings import GatewaySettings, InsecureGateway
from gateway.store import Store
from workers.config import SIGNERS
from workers.logging import masked

__all__ = [
    "PENDING_DETAIL",
    "SIGNERS",
    "Forwarded",
    "Forwarder",
    "GatewaySettings",
    "InsecureGateway",
    "answer",
    "create_app",
]

STATIC = Path(__file__).parent / "static"
# Who may use the Temporal Web UI's codec endpoint: admins, by token or the dashboard's cookie
# (the UI sends the gateway's cookies when its "include credentials" setting is on).
codec_admin = staff_or_cookie("admin")


def create_app(client: Client, settings: GatewaySettings) -> FastAPI:
    """The gateway for `client`; refuses (InsecureGateway) to face a network open or with a
    default secret."""
    settings.check_exposure()
    store = Store(settings.database_url)
    metrics = GatewayMetrics(store)
    forwarder = Forwarder(
        store,
        metrics,
        wait_seconds=settings.update_wait_seconds,
        accept_seconds=settings.update_accept_seconds,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sweep = None
        if settings.pending_sweep_seconds > 0:
            sweep = asyncio.create_task(
                sweep_forever(
                    forwarder,
                    client,
                    every=timedelta(seconds=settings.pending_sweep_seconds),
                    older_than=timedelta(seconds=settings.pending_sweep_after_seconds),
                ),
                name="pending sweep",
            )
        yield
        if sweep is not None:
            sweep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweep
        await forwarder.close()

    app = FastAPI(
        title="posflow gateway",
        summary="POS-terminal onboarding: start, documents, service callbacks, operations",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served to viewers only (gateway.routes.docs)
    )
    app.state.settings = settings
    app.state.client = client
    app.state.store = store
    app.state.metrics = metrics
    app.state.forwarder = forwarder
    # The same forwarding for merchants' messages, kept in each merchant's own audit trail.
    merchant_forwarder = MerchantForwarder(forwarder)
    app.state.merchant_forwarder = merchant_forwarder
    app.state.awaiting = forwarder.awaiting  # the background waits for pending messages
    app.state.authority = Authority(
        tokens=dict(settings.tokens),
        merchant_keys=dict(settings.merchant_keys),
        open=settings.is_open,
    )
    # Inside the timing middleware (added after it): a body over the limit is refused in the
    # request's own task, where the app's handler answers it.
    app.add_middleware(
        BodyLimit, limit=settings.max_body_bytes, refused=lambda: metrics.refusal("too_large")
    )
    metrics.install(app)
    _install_error_handlers(app, settings, metrics, forwarder, merchant_forwarder)

    app.include_router(public.router)
    app.include_router(merchant.router)
    app.include_router(page.router)  # the merchant's page, opened by a signed link
    for router in callbacks.ROUTERS:
        app.include_router(router)
    app.include_router(internal.router)
    app.include_router(operations.router)
    app.include_router(admin.router)
    for router in merchants.ROUTERS:
        app.include_router(router)
    _include_codec(app, client, settings)
    if settings.api_docs:
        app.include_router(docs.router)
    app.include_router(dashboard.sign_in)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _include_codec(app: FastAPI, client: Client, settings: GatewaySettings) -> None:
    """The Temporal Web UI's codec endpoint (decrypted payloads), for admins only."""
    codec = client.data_converter.payload_codec
    if codec is None:
        return
    app.include_router(
        codec_router(codec, settings.temporal_ui_url, namespace=settings.namespace),
        dependencies=[Depends(codec_admin)],
        # What the guard and the body limit answer, declared with the codec's own answers.
        responses={**SIGNED_IN, 413: COMMON[413]},
    )


def _install_error_handlers(
    app: FastAPI,
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    forwarder: Forwarder,
    merchant_forwarder: MerchantForwarder,
) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return err.response(settings.retry_after_seconds)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        """Every invalid field named with its rule, never with the value sent; a message
        refused so is kept in its application's audit trail (a masked excerpt)."""
        errors = list(err.errors())
        fields = {_field(e["loc"]): str(masked(e["msg"])) for e in errors}
        malformed = any(e["type"] == "json_invalid" for e in errors)
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        not_json = media != "application/json" and any(tuple(e["loc"]) == ("body",) for e in errors)
        if malformed or not_json:
            malformed = True
            answer = (
                ApiError(400, "invalid_json", "the body is not JSON")
                if media == "application/json"
                else ApiError(415, "unsupported_media_type", "send the body as application/json")
            )
        elif errors and all(tuple(e["loc"][:2]) == ("body", "policy") for e in errors):
            answer = ApiError(422, "invalid_policy", "the policy overrides are invalid", fields)
        else:
            answer = ApiError(422, "invalid_request", "the request has invalid fields", fields)
        route = request.scope.get("route")
        kind = getattr(route, "name", "")
        application_id = request.path_params.get("application_id")
        mid = request.path_params.get("mid")

        def kept() -> Any:
            raw = err.body if isinstance(err.body, bytes | str) else json.dumps(err.body)
            return excerpt(raw.encode() if isinstance(raw, str) else raw)

        if (
            kind in SOURCES
            and not malformed  # JSON that does not parse is refused before anyone signed in
            and isinstance(application_id, str)
            and valid_id(application_id)
        ):
            forwarder.record_refusal(answer, application_id, SOURCES[kind], kind, kept())
        elif (
            kind in MERCHANT_SOURCES
            and not malformed
            and isinstance(mid, str)
            and valid_mid(mid)
            and not any(e["loc"][:1] == ("path",) for e in errors)
        ):
            source, message_kind = MERCHANT_SOURCES[kind]
            merchant_forwarder.record_refusal(answer, audit_key(mid), source, message_kind, kept())
        else:
            metrics.refusal(answer.error)
        return answer.response(settings.retry_after_seconds)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, err: BodyTooLarge) -> JSONResponse:
        return JSONResponse(
            too_large_body(err.limit), status_code=413, headers={"Connection": "close"}
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, err: HTTPException) -> Response:
        """Starlette's own answers (no such route, method not allowed) in the API's shape."""
        codes = {404: "not_found", 405: "method_not_allowed"}
        body = ApiError(
            err.status_code, codes.get(err.status_code, "http_error"), shown(str(err.detail))
        )
        return body.response(settings.retry_after_seconds)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, _: SignInRequired) -> Response:
        return dashboard.sign_in_redirect(request)

    @app.exception_handler(DashboardForbidden)
    async def _forbidden(_: Request, err: DashboardForbidden) -> Response:
        return PlainTextResponse(str(err), status_code=403)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """An error's location as a field path: `legal_representative.id_number`, `limit`."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "body"
