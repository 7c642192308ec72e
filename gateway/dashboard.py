"""The operations dashboard the gateway serves: an overview with the funnel and time in stage, the
filtered list, and one application's page with the actions the viewer's role allows. Every page
needs the sign-in cookie (viewer and above; a withdrawal operator, a retry admin), except the
sign-in form itself.

Lists and counts come from the projection (`gateway.store`); an application's page asks its
workflow (the status query). Everything shown goes through the masking used for logs.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError
from temporalio.service import RPCError, RPCStatusCode

from gateway.auth import COOKIE, ROLES, Authority, Principal, dashboard, public
from gateway.errors import ApiError, shown
from gateway.forwarding import pending_ack
from gateway.limits import valid_id
from gateway.merchants import audit_key, send_to_merchant, valid_mid
from gateway.models import AdminAction as GatewayAdminAction
from gateway.models import ExtendRequest, MerchantAction, MerchantExtendRequest, ResetRequest
from gateway.resources import send, workflow
from gateway.routes.admin import FailureFilter, actor_of, find_failures, take_action, take_reset
from gateway.routes.merchants import merchant_message, merchant_status
from gateway.settings import GatewaySettings
from gateway.store import ENDINGS, IN_FLIGHT, PROCESS, ListFilter, MerchantFilter, Store
from schemas.application import Channel, MerchantType
from schemas.merchant import (
    AccountState,
    ClosureRequest,
    FaultReport,
    SuspensionReason,
    merchant_workflow_id,
)
from schemas.messages import CancelRequest
from workers.logging import masked
from workflows.case import CHINA
from workflows.merchant import MerchantAccount
from workflows.onboarding import PosOnboarding

HERE = Path(__file__).parent
PERIODS = {"24 hours": 1, "7 days": 7, "30 days": 30, "90 days": 90}


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


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(when=when, duration=duration, relative=relative, label=label)
templates.env.globals.update(china=CHINA)

# Signing in needs no credential (the form takes one); everything else needs the viewer role at
# least, and the actions their own.
sign_in = APIRouter(dependencies=[Depends(public)], include_in_schema=False)
dashboard_viewer = dashboard("viewer")
router = APIRouter(dependencies=[Depends(dashboard_viewer)], include_in_schema=False)
Viewer = Annotated[Principal, Depends(dashboard_viewer)]


def render(
    request: Request, name: str, role: str | None, status_code: int = 200, **context: Any
) -> Response:
    settings: GatewaySettings = request.app.state.settings
    authority: Authority = request.app.state.authority
    context.update(
        role=role,
        can=lambda r: role is not None and ROLES.index(role) >= ROLES.index(r),
        auth=authority,
        refresh_seconds=settings.refresh_seconds,
    )
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def sign_in_redirect(request: Request) -> Response:
    return RedirectResponse(f"/ui/login?{urlencode({'next': request.url.path})}", 303)


@sign_in.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/ui", 303)


@sign_in.get("/ui/login", response_class=HTMLResponse)
async def login_form(
    request: Request,
    next: Annotated[str, Query(max_length=200)] = "/ui",
    error: Annotated[str, Query(max_length=100)] = "",
) -> Response:
    return render(request, "login.html", None, next=_local(next), error=error)


def _local(target: str) -> str:
    """Only a dashboard page to go back to after signing in (never another site)."""
    return target if target.startswith("/ui") and "//" not in target else "/ui"


@sign_in.post("/ui/login")
async def login(
    request: Request,
    token: Annotated[str, Form(max_length=500)],
    next: Annotated[str, Form(max_length=200)] = "/ui",
) -> Response:
    authority: Authority = request.app.state.authority
    if authority.role_of(token) is None:
        request.app.state.metrics.refusal("unauthenticated")
        return RedirectResponse(f"/ui/login?{urlencode({'error': 'unknown token'})}", 303)
    response = RedirectResponse(_local(next), 303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=12 * 3600)
    return response


@sign_in.post("/ui/logout")
async def logout() -> Response:
    response = RedirectResponse("/ui/login", 303)
    response.delete_cookie(COOKIE)
    return response


@router.get("/ui")
async def overview(request: Request, viewer: Viewer, days: int = 7) -> Response:
    days = days if days in PERIODS.values() else 7
    store: Store = request.app.state.store
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
        Bar(label(s.value), data.in_flight[s.value], 0, href=f"/ui/applications?stage={s.value}")
        for s in IN_FLIGHT
    ]
    return render(
        request,
        "overview.html",
        viewer.role,
        data=data,
        days=days,
        periods=PERIODS,
        stages=stages,
        funnel=funnel_bars(data.funnel),
        times=times,
        now=now,
    )


Filter = TypeVar("Filter", bound=BaseModel)


def page_filter(
    request: Request, model: type[Filter]
) -> tuple[dict[str, str], int, Filter, dict[str, str]]:
    """A list page's filter from its query string: the parameters given (but the page), the
    page number, the filter validated with the page's offset (not copied in: a page past the
    bound is refused), and the problems by field, shown on the page (the default filter then)."""
    params = {k: v for k, v in request.query_params.items() if v != ""}
    page_number = params.pop("page", "1")
    try:
        number = max(1, int(page_number))
        wanted = model.model_validate({"limit": 50, **params})
        offset = (number - 1) * getattr(wanted, "limit")  # noqa: B009
        return params, number, model.model_validate({**wanted.model_dump(), "offset": offset}), {}
    except (ValidationError, ValueError) as err:
        problems = (
            {".".join(str(p) for p in e["loc"]): e["msg"] for e in err.errors()}
            if isinstance(err, ValidationError)
            else {"page": "must be a whole number"}
        )
        return params, 1, model(), problems


@router.get("/ui/applications")
async def applications(request: Request, viewer: Viewer) -> Response:
    params, number, wanted, problems = page_filter(request, ListFilter)
    store: Store = request.app.state.store
    now = datetime.now(UTC)
    rows, total = await asyncio.to_thread(store.page, wanted, now)
    pages = max(1, -(-total // wanted.limit))
    kept = {k: v for k, v in params.items() if k not in ("offset",)}

    def link(to_page: int) -> str:
        return "/ui/applications?" + urlencode({**kept, "page": to_page})

    return render(
        request,
        "applications.html",
        viewer.role,
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


async def status_of(request: Request, application_id: str) -> tuple[dict[str, Any] | None, str]:
    """The status query's answer, or None and why there is none."""
    try:
        result = await workflow(request.app.state.client, application_id).query(
            PosOnboarding.status
        )
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            return None, "The process engine no longer holds this workflow (retention ended)."
        return None, "The process engine did not answer."
    return result.model_dump(mode="json"), ""


def workflow_url(settings: GatewaySettings, workflow_id: str) -> str:
    return (
        f"{settings.temporal_ui_url.rstrip('/')}/namespaces/{quote(settings.namespace)}"
        f"/workflows/{quote(workflow_id, safe='')}"
    )


@router.get("/ui/applications/{application_id}")
async def application(
    request: Request, application_id: str, viewer: Viewer, done: str = ""
) -> Response:
    if not valid_id(application_id):  # never sent to the store, Temporal or the page whole
        return render(
            request, "missing.html", viewer.role, 404, application_id=shown(application_id)
        )
    store: Store = request.app.state.store
    record, visits, kept = await asyncio.to_thread(
        lambda: (
            store.application(application_id),
            store.visits(application_id),
            store.messages(application_id),
        )
    )
    # What the page shows changes with a snapshot (its version) or a message: a refresh that
    # finds both as they were is answered 204 without asking the workflow (a status query is a
    # billable action and may replay the workflow on a worker that dropped it from its cache).
    page_shows = f"{record.version if record else 0}:{len(kept)}"
    if request.headers.get("X-Refresh") and request.headers.get("X-Shown") == page_shows:
        return Response(status_code=204)
    status, unavailable = await status_of(request, application_id)
    if record is None and status is None:
        return render(request, "missing.html", viewer.role, 404, application_id=application_id)
    now = datetime.now(UTC)
    return render(
        request,
        "application.html",
        viewer.role,
        application_id=application_id,
        status=masked(status) if status else None,
        row=masked(record.summary(now)) if record else None,
        visits=visits,
        messages=[masked(m.model_dump(mode="json")) for m in kept],
        # A reset can take the run back to the start of any stage it entered.
        reset_stages=list(dict.fromkeys(v.stage for v in visits if v.stage in RESETTABLE)),
        unavailable=unavailable,
        workflow_url=workflow_url(
            request.app.state.settings, record.workflow_id if record else application_id
        ),
        done=shown(done, 300),
        now=now,
        shown=page_shows,
    )


UPDATES: dict[str, Any] = {"cancel": PosOnboarding.cancel}


def _back(form_next: str, application_id: str, done: str) -> RedirectResponse:
    """Back to the page the form was on (a dashboard page only), with what became of it."""
    own = f"/ui/applications/{quote(application_id)}"
    target = _local(form_next) if form_next.startswith("/ui/") else own
    parts = urlsplit(target)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "done"] + [("done", done)]
    return RedirectResponse(f"{parts.path}?{urlencode(query)}", 303)


async def action(request: Request, application_id: str, who: Principal, verb: str) -> Response:
    """An action from a dashboard form, kept in the audit trail with who (the sign-in's role)
    and why (the form's reason); what became of it is shown on the page it came from."""
    if not valid_id(application_id):
        return Response("no such application", status_code=404)
    form = await request.form()
    actor = actor_of(who)
    request_id = f"ui-{uuid.uuid4().hex[:12]}"
    reason = str(form.get("reason", "")).strip()
    back = str(form.get("next", ""))
    try:
        if verb == "cancel":
            reason = reason or "withdrawn by operations"
            payload: Any = CancelRequest(
                request_id=request_id, reason=reason, requested_by=f"dashboard:{who.role}"
            )
            try:
                forwarded = await send(
                    request, application_id, "operator", verb, UPDATES[verb], payload
                )
            finally:
                await asyncio.to_thread(
                    request.app.state.store.stamp_action,
                    application_id,
                    request_id,
                    verb,
                    actor,
                    reason,
                )
        elif verb == "reset":
            body = ResetRequest.model_validate(
                {"request_id": request_id, "to_stage": form.get("to_stage", ""), "reason": reason}
            )
            done_reset = await take_reset(request, application_id, body, actor)
            return _back(
                back,
                application_id,
                f"reset: {done_reset.outcome} — to the start of {done_reset.stage.value}, "
                f"new run {done_reset.new_run_id}",
            )
        else:
            fields: dict[str, Any] = {"request_id": request_id, "reason": reason}
            period = str(form.get("period", "")).strip()
            if verb == "extend" and period:
                fields["period"] = period
            model = ExtendRequest if verb == "extend" else GatewayAdminAction
            forwarded, payload = await take_action(
                request, application_id, verb, model.model_validate(fields), actor
            )
        ack = forwarded.result or pending_ack(payload)
        done = f"{verb}: {forwarded.outcome} — {ack.detail}"
    except ValidationError as err:  # nothing was sent
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        done = f"{verb} not sent: {problems}"
    except Exception as err:  # the refusal is shown to the operator, nothing changed
        done = f"{verb} refused: {getattr(err, 'message', str(err))}"
    return _back(back, application_id, shown(done, 300))


dashboard_operator = dashboard("operator")
dashboard_admin = dashboard("admin")


@router.post("/ui/applications/{application_id}/cancel")
async def cancel(
    request: Request, application_id: str, who: Annotated[Principal, Depends(dashboard_operator)]
) -> Response:
    return await action(request, application_id, who, "cancel")


DashboardAdmin = Annotated[Principal, Depends(dashboard_admin)]


@router.post("/ui/applications/{application_id}/retry")
async def retry(request: Request, application_id: str, who: DashboardAdmin) -> Response:
    return await action(request, application_id, who, "retry")


@router.post("/ui/applications/{application_id}/extend")
async def extend(request: Request, application_id: str, who: DashboardAdmin) -> Response:
    return await action(request, application_id, who, "extend")


@router.post("/ui/applications/{application_id}/withdraw")
async def withdraw(request: Request, application_id: str, who: DashboardAdmin) -> Response:
    return await action(request, application_id, who, "withdraw")


@router.post("/ui/applications/{application_id}/reset")
async def reset(request: Request, application_id: str, who: DashboardAdmin) -> Response:
    return await action(request, application_id, who, "reset")


RESETTABLE = {s.value for s in IN_FLIGHT if s.value != "closing"}
KINDS = {"needs_attention": "needs attention", "overdue": "overdue", "failed": "failed"}


@router.get("/ui/attention")
async def attention(request: Request, viewer: Viewer, done: str = "") -> Response:
    """What needs an admin (the admin API's failures list), with the same filters; each case
    links to its page, and an admin acts on it from here."""
    params = {k: v for k, v in request.query_params.items() if v != "" and k != "done"}
    page_number = params.pop("page", "1")
    try:
        number = max(1, int(page_number))
        wanted = FailureFilter.model_validate({"limit": 50, **params})
        wanted = wanted.model_copy(update={"offset": (number - 1) * wanted.limit})
        problems: dict[str, str] = {}
    except (ValidationError, ValueError) as err:
        number, wanted = 1, FailureFilter()
        problems = (
            {".".join(str(p) for p in e["loc"]): e["msg"] for e in err.errors()}
            if isinstance(err, ValidationError)
            else {"page": "must be a whole number"}
        )
    found = await find_failures(request.app.state.client, request.app.state.store, wanted)
    pages = max(1, -(-found.total // wanted.limit))
    here = "/ui/attention?" + urlencode({**params, "page": number})

    def link(to_page: int) -> str:
        return "/ui/attention?" + urlencode({**params, "page": to_page})

    return render(
        request,
        "attention.html",
        viewer.role,
        status_code=422 if problems else 200,
        found=found,
        rows=[f.model_dump(mode="json") for f in found.failures],
        params=params,
        problems=problems,
        number=number,
        pages=pages,
        link=link,
        here=here,
        first=wanted.offset + 1 if found.failures else 0,
        last=wanted.offset + len(found.failures),
        stages=[*IN_FLIGHT],
        channels=[c.value for c in Channel],
        kinds=KINDS,
        done=shown(done, 300),
        now=datetime.now(UTC),
    )


# --- merchants after go-live ---------------------------------------------------------------------

MERCHANT_SORTS = {
    "updated": "recently changed",
    "went_live": "newest",
    "next_bill": "next bill, soonest",
    "next_inspection": "next inspection, soonest",
    "overdue": "most fees overdue",
    "name": "name",
}


@router.get("/ui/merchants")
async def merchants(request: Request, viewer: Viewer) -> Response:
    """Merchants after go-live, from the store: counts by state and what needs a look, the
    filtered list."""
    params, number, wanted, problems = page_filter(request, MerchantFilter)
    store: Store = request.app.state.store
    (rows, total), counts = await asyncio.to_thread(
        lambda: (store.merchant_page(wanted), store.merchant_counts())
    )
    pages = max(1, -(-total // wanted.limit))

    def link(to_page: int) -> str:
        return "/ui/merchants?" + urlencode({**params, "page": to_page})

    return render(
        request,
        "merchants.html",
        viewer.role,
        status_code=422 if problems else 200,
        rows=[masked(r.summary()) for r in rows],
        counts=counts,
        total=total,
        wanted=wanted,
        params=params,
        problems=problems,
        number=number,
        pages=pages,
        link=link,
        first=wanted.offset + 1 if rows else 0,
        last=wanted.offset + len(rows),
        states=[s.value for s in AccountState],
        reasons=[r.value for r in SuspensionReason],
        channels=[c.value for c in Channel],
        merchant_types=[m.value for m in MerchantType],
        sorts=MERCHANT_SORTS,
        now=datetime.now(UTC),
    )


@router.get("/ui/merchants/{mid}")
async def merchant(request: Request, mid: str, viewer: Viewer, done: str = "") -> Response:
    """One merchant: the workflow's status (or the file kept once it is gone), its messages."""
    if not valid_mid(mid):  # never sent to the store, Temporal or the page whole
        return render(request, "merchant_missing.html", viewer.role, 404, mid=shown(mid))
    store: Store = request.app.state.store
    record, kept = await asyncio.to_thread(
        lambda: (store.merchant(mid), store.messages(audit_key(mid)))
    )
    try:
        found = await merchant_status(request.app.state.client, store, mid)
        unavailable = ""
    except ApiError as err:
        found, unavailable = None, err.message
    if found is None and record is None:
        return render(request, "merchant_missing.html", viewer.role, 404, mid=mid)
    status, source = found if found else (record.status() if record else None, "snapshot")
    settings: GatewaySettings = request.app.state.settings
    return render(
        request,
        "merchant.html",
        viewer.role,
        mid=mid,
        s=masked(status.model_dump(mode="json")) if status else None,
        row=masked(record.summary()) if record else None,
        source=source,
        unavailable=unavailable,
        messages=[masked(m.model_dump(mode="json")) for m in kept],
        workflow_url=workflow_url(settings, merchant_workflow_id(mid)),
        done=shown(done, 300),
        now=datetime.now(UTC),
    )


async def merchant_action(request: Request, mid: str, who: Principal, verb: str) -> Response:
    """A merchant action from a dashboard form, kept in the merchant's audit trail with who (the
    sign-in's role) and why; what became of it is shown on the merchant's page."""
    if not valid_mid(mid):
        return Response("no such merchant", status_code=404)
    form = await request.form()
    actor = actor_of(who)
    request_id = f"ui-{uuid.uuid4().hex[:12]}"
    reason = str(form.get("reason", "")).strip()
    try:
        payload: Any
        update: Any
        if verb == "closure":
            payload = ClosureRequest(
                request_id=request_id, reason=reason, requested_by=f"dashboard:{who.role}"
            )
            update, source, kind = MerchantAccount.request_closure, "operator", "request_closure"
        elif verb == "fault":
            payload = FaultReport(
                request_id=request_id,
                serial=str(form.get("serial", "")).strip(),
                description=reason,
                reported_by=f"dashboard:{who.role}",
            )
            update, source, kind = MerchantAccount.report_fault, "merchant", "report_fault"
        else:
            fields: dict[str, Any] = {"request_id": request_id, "reason": reason}
            period = str(form.get("period", "")).strip()
            step = str(form.get("step", "")).strip()
            if verb == "extend" and period:
                fields["period"] = period
            if step:
                fields["step"] = step
            model = MerchantExtendRequest if verb == "extend" else MerchantAction
            payload = merchant_message(verb, model.model_validate(fields), actor)
            update = MerchantAccount.retry if verb == "retry" else MerchantAccount.extend_deadline
            source, kind = "admin", verb
        forwarded = await send_to_merchant(
            request, mid, source, kind, update, payload, actor=actor, reason=reason
        )
        ack = forwarded.result or pending_ack(payload)
        done = f"{kind.replace('_', ' ')}: {forwarded.outcome} — {ack.detail}"
    except ValidationError as err:  # nothing was sent
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        done = f"{verb} not sent: {problems}"
    except Exception as err:  # the refusal is shown to the operator, nothing changed
        done = f"{verb} refused: {getattr(err, 'message', str(err))}"
    target = f"/ui/merchants/{quote(mid)}?{urlencode({'done': shown(done, 300)})}"
    return RedirectResponse(target, 303)


@router.post("/ui/merchants/{mid}/closure")
async def merchant_closure(
    request: Request, mid: str, who: Annotated[Principal, Depends(dashboard_operator)]
) -> Response:
    return await merchant_action(request, mid, who, "closure")


@router.post("/ui/merchants/{mid}/fault")
async def merchant_fault(
    request: Request, mid: str, who: Annotated[Principal, Depends(dashboard_operator)]
) -> Response:
    return await merchant_action(request, mid, who, "fault")


@router.post("/ui/merchants/{mid}/retry")
async def merchant_retry(request: Request, mid: str, who: DashboardAdmin) -> Response:
    return await merchant_action(request, mid, who, "retry")


@router.post("/ui/merchants/{mid}/extend")
async def merchant_extend(request: Request, mid: str, who: DashboardAdmin) -> Response:
    return await merchant_action(request, mid, who, "extend")
