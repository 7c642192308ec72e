"""The operations dashboard the gateway serves: an overview with the funnel and time in stage, the
filtered list, and one application's page with the actions the viewer's role allows.

Lists and counts come from the projection (`gateway.store`); an application's page asks its
workflow (the status query). Everything shown goes through the masking used for logs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from gateway.auth import COOKIE, ROLES, Authority
from gateway.store import ENDINGS, IN_FLIGHT, PROCESS, ListFilter, Store
from schemas.application import Channel, MerchantType
from schemas.messages import Ack, AdminAction, CancelRequest
from workers.logging import masked
from workflows.case import CHINA

HERE = Path(__file__).parent
PERIODS = {"24 hours": 1, "7 days": 7, "30 days": 30, "90 days": 90}

# The status query's answer, or None and why there is none.
StatusOf = Callable[[str], Awaitable[tuple[dict[str, Any] | None, str]]]
Act = Callable[[str, str, str, Any], Awaitable[tuple[str, Ack]]]


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def when(value: Any) -> str:
    """A time as operators in China read it."""
    moment = _parse_time(value)
    return moment.astimezone(CHINA).strftime("%Y-%m-%d %H:%M") if moment else "—"


def duration(seconds: Any) -> str:
    if seconds is None:
        return "—"
    value = float(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if value >= size:
            amount = value / size
            return f"{amount:.1f} {unit}" if amount < 10 else f"{amount:.0f} {unit}"
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def relative(value: Any, now: datetime | None = None) -> str:
    """`in 3.0 h` or `5 min ago`."""
    moment = _parse_time(value)
    if moment is None:
        return ""
    delta = (moment - (now or datetime.now(UTC))).total_seconds()
    return f"in {duration(delta)}" if delta >= 0 else f"{duration(-delta)} ago"


def label(value: Any) -> str:
    return str(value or "").replace("_", " ")


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    share: float  # of the widest bar, 0..1
    note: str = ""
    href: str = ""


def funnel_bars(funnel: dict[str, int]) -> list[Bar]:
    first = funnel.get(PROCESS[0].value, 0) or 1
    widest = max(funnel.values(), default=0) or 1
    return [
        Bar(
            label(stage.value),
            funnel.get(stage.value, 0),
            funnel.get(stage.value, 0) / widest,
            f"{100 * funnel.get(stage.value, 0) / first:.0f}%",
        )
        for stage in PROCESS
    ]


def install_dashboard(
    app: FastAPI,
    store: Store,
    authority: Authority,
    status_of: StatusOf,
    act: Act,
    workflow_url: Callable[[str], str],
    refresh_seconds: int = 10,
) -> None:
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(when=when, duration=duration, relative=relative, label=label)
    templates.env.globals.update(refresh_seconds=refresh_seconds, china=CHINA)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        viewer = authority.dashboard_role(request)
        if viewer is None:
            return RedirectResponse(f"/ui/login?{urlencode({'next': request.url.path})}", 303)
        context.update(
            role=viewer, can=lambda r: ROLES.index(viewer) >= ROLES.index(r), auth=authority
        )
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui", 303)

    @app.get("/ui/login", include_in_schema=False, response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/ui", error: str = "") -> Response:
        return templates.TemplateResponse(
            request, "login.html", {"next": next, "error": error, "role": None, "auth": authority}
        )

    @app.post("/ui/login", include_in_schema=False)
    async def login(token: str = Form(...), next: str = Form("/ui")) -> Response:
        if authority.role_of(token) is None:
            return RedirectResponse(f"/ui/login?{urlencode({'error': 'unknown token'})}", 303)
        target = next if next.startswith("/ui") else "/ui"
        response = RedirectResponse(target, 303)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=12 * 3600)
        return response

    @app.post("/ui/logout", include_in_schema=False)
    async def logout() -> Response:
        response = RedirectResponse("/ui/login", 303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/ui", include_in_schema=False)
    async def overview(request: Request, days: int = 7) -> Response:
        days = days if days in PERIODS.values() else 7
        now = datetime.now(UTC)
        data = await asyncio.to_thread(store.overview, now - timedelta(days=days), now)
        slowest = max((t["p90_seconds"] for t in data.time_in_stage), default=0) or 1
        times = [
            {
                **t,
                "label": label(t["stage"]),
                "median_share": t["median_seconds"] / slowest,
                "p90_share": t["p90_seconds"] / slowest,
            }
            for t in data.time_in_stage
        ]
        stages = [
            Bar(
                label(s.value), data.in_flight[s.value], 0, href=f"/ui/applications?stage={s.value}"
            )
            for s in IN_FLIGHT
        ]
        return page(
            request,
            "overview.html",
            data=data,
            days=days,
            periods=PERIODS,
            stages=stages,
            funnel=funnel_bars(data.funnel),
            times=times,
            now=now,
        )

    @app.get("/ui/applications", include_in_schema=False)
    async def applications(request: Request) -> Response:
        params = {k: v for k, v in request.query_params.items() if v != ""}
        page_number = params.pop("page", "1")
        try:
            number = max(1, int(page_number))
            wanted = ListFilter.model_validate({"limit": 50, **params})
            wanted = wanted.model_copy(update={"offset": (number - 1) * wanted.limit})
            problems: dict[str, str] = {}
        except (ValidationError, ValueError) as err:
            number, wanted = 1, ListFilter()
            problems = (
                {".".join(str(p) for p in e["loc"]): e["msg"] for e in err.errors()}
                if isinstance(err, ValidationError)
                else {"page": "must be a whole number"}
            )
        now = datetime.now(UTC)
        rows, total = await asyncio.to_thread(store.page, wanted, now)
        pages = max(1, -(-total // wanted.limit))
        kept = {k: v for k, v in params.items() if k not in ("offset",)}

        def link(to_page: int) -> str:
            return "/ui/applications?" + urlencode({**kept, "page": to_page})

        return page(
            request,
            "applications.html",
            status_code=422 if problems else 200,
            rows=[masked(r.summary(now)) for r in rows],
            total=total,
            wanted=wanted,
            params=params,
            problems=problems,
            number=number,
            pages=pages,
            link=link,
            first=wanted.offset + 1 if rows else 0,
            last=wanted.offset + len(rows),
            stages=[*IN_FLIGHT, *(s for s in PROCESS if s not in IN_FLIGHT), *ENDINGS[1:]],
            channels=[c.value for c in Channel],
            merchant_types=[m.value for m in MerchantType],
            now=now,
        )

    @app.get("/ui/applications/{application_id}", include_in_schema=False)
    async def application(request: Request, application_id: str, done: str = "") -> Response:
        record, visits, kept = await asyncio.to_thread(
            lambda: (
                store.application(application_id),
                store.visits(application_id),
                store.messages(application_id),
            )
        )
        status, unavailable = await status_of(application_id)
        if record is None and status is None:
            return page(request, "missing.html", status_code=404, application_id=application_id)
        now = datetime.now(UTC)
        return page(
            request,
            "application.html",
            application_id=application_id,
            status=masked(status) if status else None,
            row=masked(record.summary(now)) if record else None,
            visits=visits,
            messages=[masked(m.model_dump(mode="json")) for m in kept],
            unavailable=unavailable,
            workflow_url=workflow_url(record.workflow_id if record else application_id),
            done=done,
            now=now,
        )

    async def action(request: Request, application_id: str, needed: str, verb: str) -> Response:
        viewer = authority.dashboard_role(request)
        if viewer is None or ROLES.index(viewer) < ROLES.index(needed):
            return Response(f"{verb} needs the {needed} role", status_code=403)
        form = await request.form()
        who = f"dashboard:{viewer}"
        request_id = f"ui-{uuid.uuid4().hex[:12]}"
        try:
            if verb == "cancel":
                reason = str(form.get("reason", "")).strip() or "withdrawn by operations"
                payload: Any = CancelRequest(request_id=request_id, reason=reason, requested_by=who)
            else:
                payload = AdminAction(request_id=request_id, admin=who)
            outcome, ack = await act(
                application_id, verb, "operator" if verb == "cancel" else "admin", payload
            )
            done = f"{verb}: {outcome} — {ack.detail}"
        except Exception as err:  # the refusal is shown to the operator, nothing changed
            done = f"{verb} refused: {getattr(err, 'message', str(err))}"
        return RedirectResponse(
            f"/ui/applications/{application_id}?{urlencode({'done': done})}", 303
        )

    @app.post("/ui/applications/{application_id}/cancel", include_in_schema=False)
    async def cancel(request: Request, application_id: str) -> Response:
        return await action(request, application_id, "operator", "cancel")

    @app.post("/ui/applications/{application_id}/retry", include_in_schema=False)
    async def retry(request: Request, application_id: str) -> Response:
        return await action(request, application_id, "admin", "retry")
