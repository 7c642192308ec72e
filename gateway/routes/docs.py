"""The API's own description, for viewers: `/openapi.json` and Swagger UI at `/docs`. A browser
fetches the description by itself, so the dashboard's sign-in cookie is taken as well as a
bearer token. `POSFLOW_GATEWAY_API_DOCS=0` leaves both out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from gateway.auth import staff_or_cookie

viewer_or_cookie = staff_or_cookie("viewer")
router = APIRouter(dependencies=[Depends(viewer_or_cookie)], include_in_schema=False)


@router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} API")
