"""The remote codec of the Temporal Web UI: `POST /codec/decode` and `POST /codec/encode` run
payloads through the workers' payload codec, so that people allowed to see personal data read
decrypted histories in the UI (and in `temporal workflow show --codec-endpoint`).

Both take and answer `{"payloads": [...]}`, each payload in the proto JSON form
(`{"metadata": {"encoding": "<base64>", ...}, "data": "<base64>"}`). The UI names its namespace
in `X-Namespace`; `namespace=` refuses the payloads of any other.

`codec_router` checks nobody's identity: the gateway includes it, without a prefix, behind the
admin role, e.g. `app.include_router(codec_router(codec, settings.temporal_ui_url),
dependencies=[Depends(admin_only)])`, where `codec` is the gateway client's
`data_converter.payload_codec`. Its CORS preflights are plain Starlette routes, which FastAPI
includes without the router's dependencies: a browser sends no credentials on a preflight, and a
preflight answers headers only. The UI sends credentials on the real requests only if its codec
setting "Include cross-origin credentials" is on; it then sends the gateway's cookies (cookies are
per host, not per port, so the dashboard's sign-in cookie for 127.0.0.1 reaches the gateway from
the UI on 127.0.0.1:8233), so the admin guard should accept that cookie as the dashboard does, as
well as a bearer token.

A POST from a browser page whose origin is not the UI's is refused, and only JSON is accepted (so
a browser always asks first with a preflight): another page cannot make a signed-in admin's
browser decode payloads for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from pydantic import BaseModel, Field
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from workers.codec import PayloadDecryptionError

PREFIX = "/codec"
ALLOWED_METHODS = "POST, OPTIONS"
# What the UI sends: JSON, its namespace, and (with "pass access token") its bearer token.
ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"
PREFLIGHT_MAX_AGE_SECONDS = 600
_LOOPBACK = ("127.0.0.1", "localhost")


class PayloadJson(BaseModel):
    """One payload in the proto JSON form; bytes are base64."""

    metadata: dict[str, str] = Field(default_factory=dict, examples=[{"encoding": "YmluYXJ5"}])
    data: str = ""


class PayloadsJson(BaseModel):
    payloads: list[PayloadJson]


def _error(code: str, message: str) -> dict[str, Any]:
    return {"description": message, "content": {"application/json": {"example": {
        "error": code, "message": message, "fields": {}}}}}  # fmt: skip


def allowed_origins(ui_origin: str | Sequence[str]) -> frozenset[str]:
    """The browser origins of the UI's URL(s); a loopback UI is reachable as 127.0.0.1 and as
    localhost, and the browser sends whichever was typed."""
    origins: set[str] = set()
    for url in [ui_origin] if isinstance(ui_origin, str) else ui_origin:
        parts = urlsplit(url.strip())
        if not parts.scheme or not parts.hostname:
            raise ValueError(f"{url!r} is not a URL with a scheme and a host")
        port = f":{parts.port}" if parts.port else ""
        hosts = _LOOPBACK if parts.hostname in _LOOPBACK else (parts.hostname,)
        origins.update(f"{parts.scheme.lower()}://{host.lower()}{port}" for host in hosts)
    return frozenset(origins)


def codec_router(
    codec: PayloadCodec, ui_origin: str | Sequence[str], *, namespace: str | None = None
) -> APIRouter:
    """`/codec/encode` and `/codec/decode` with `codec`, answering CORS for `ui_origin` (the
    Temporal Web UI's URL). No authentication inside: include it behind the admin role."""
    origins = allowed_origins(ui_origin)
    router = APIRouter(prefix=PREFIX, tags=["codec"])

    def cors(request: Request) -> dict[str, str]:
        origin = request.headers.get("origin")
        if origin is None or origin not in origins:
            return {"Vary": "Origin"}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }

    def refuse(request: Request, status: int, code: str, message: str) -> JSONResponse:
        body = {"error": code, "message": message, "fields": {}}
        return JSONResponse(body, status_code=status, headers=cors(request))

    async def apply(
        request: Request, step: Callable[[Sequence[Payload]], Awaitable[list[Payload]]]
    ) -> JSONResponse:
        origin = request.headers.get("origin")
        if origin is not None and origin not in origins:
            return refuse(request, 403, "origin_not_allowed", f"origin {origin} is not the UI's")
        content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type != "application/json":
            return refuse(request, 415, "unsupported_media_type", "send application/json")
        asked = request.headers.get("x-namespace")
        if namespace is not None and asked is not None and asked != namespace:
            return refuse(
                request, 400, "wrong_namespace", f"this codec serves the namespace {namespace}"
            )
        try:
            payloads = json_format.Parse(await request.body(), Payloads())
        except (json_format.ParseError, UnicodeDecodeError) as err:
            return refuse(request, 400, "invalid_payloads", f"not proto JSON payloads: {err}")
        try:
            result = Payloads(payloads=await step(payloads.payloads))
        except PayloadDecryptionError as err:
            return refuse(request, 422, "undecodable_payload", str(err))
        return JSONResponse(json_format.MessageToDict(result), headers=cors(request))

    body_schema = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": PayloadsJson.model_json_schema()}},
        }
    }
    responses: dict[int | str, dict[str, Any]] = {
        400: _error("invalid_payloads", "the body is not proto JSON payloads"),
        403: _error("origin_not_allowed", "a browser page of another origin"),
        415: _error("unsupported_media_type", "the body is not application/json"),
    }

    @router.post(
        "/decode",
        response_model=PayloadsJson,
        openapi_extra=body_schema,
        responses={
            **responses,
            422: _error("undecodable_payload", "unknown key id, or altered data"),
        },
        summary="Decrypt payloads for the Temporal Web UI",
    )
    async def decode(request: Request) -> JSONResponse:
        return await apply(request, codec.decode)

    @router.post(
        "/encode",
        response_model=PayloadsJson,
        openapi_extra=body_schema,
        responses=responses,
        summary="Encrypt payloads the Temporal Web UI sends (a signal, a start)",
    )
    async def encode(request: Request) -> JSONResponse:
        return await apply(request, codec.encode)

    async def preflight(request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is None:
            return Response(status_code=204, headers={"Allow": ALLOWED_METHODS})
        if origin not in origins:
            return refuse(request, 403, "origin_not_allowed", f"origin {origin} is not the UI's")
        return Response(
            status_code=204,
            headers={
                **cors(request),
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS),
            },
        )

    # Plain routes (not APIRoutes): included without the router's dependencies, see above.
    for path in ("/decode", "/encode"):
        router.add_route(PREFIX + path, preflight, methods=["OPTIONS"], include_in_schema=False)
    return router
