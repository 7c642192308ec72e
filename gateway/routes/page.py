"""The merchant's own page (`/m/{token}`): where the application stands, what is missing and
why, a form to supplement exactly the documents asked for, the contract link, the tracking number.

The merchant reaches it by the signed, expiring link in every notice (`schemas.page_links`):
the token is the credential, so there is no sign-in. A forged or malformed token is answered 403,
an expired one 410, both with a plain page that names nothing about any application.

What the page shows is read from the workflow's status query, once per view. Documents posted
with the form are a `DocumentSubmission` sent exactly as the API sends one
(`gateway.routes.merchant.file_documents`): the same validation, the same field-level issues,
kept in the same audit trail. The submission id is derived from what was posted, so a
double-click sends the same submission again, which the workflow answers as a duplicate.

Nothing shown holds a personal number in full: the workflow's messages mask them, everything
shown goes through `workers.logging.masked` as well, and a number typed in the form is never
echoed back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from temporalio.service import RPCError, RPCStatusCode

from gateway.auth import GUARDS
from gateway.errors import ApiError
from gateway.resources import ClientDep, ForwarderDep, SettingsDep, workflow
from gateway.routes.merchant import file_documents
from schemas.documents import (
    DOCUMENT_NAMES,
    Document,
    DocumentKind,
    DocumentSubmission,
    FieldIssue,
    IssueCode,
)
from schemas.messages import ReviewOutcome, SubmissionResult
from schemas.page_links import InvalidLink, LinkProblem, page_key, verify
from schemas.status import ApplicationStatus, Stage
from workers.logging import mask_text, masked
from workflows.case import CHINA
from workflows.onboarding import PosOnboarding

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent.parent / "templates")

# --- the words the merchant reads ------------------------------------------------------------

STAGE_NAMES: dict[Stage, str] = {
    Stage.COLLECTING_DOCUMENTS: "待提交材料",
    Stage.SITE_SURVEY: "实地勘察中",
    Stage.IN_REVIEW: "审核中",
    Stage.CONTRACT: "待签约",
    Stage.PREPARING_DEVICES: "终端备货中",
    Stage.DELIVERING: "终端配送/安装中",
    Stage.ACTIVATING: "待激活终端",
    Stage.TRAINING: "待培训",
    Stage.GOING_LIVE: "即将开通",
    Stage.CLOSING: "申请关闭中",
    Stage.LIVE: "已开通",
    Stage.REJECTED: "未通过审核",
    Stage.EXPIRED: "已失效",
    Stage.CANCELLED: "已撤回",
}
STAGE_HINTS: dict[Stage, str] = {
    Stage.COLLECTING_DOCUMENTS: "请按下方提示补充或更正材料，材料齐全后自动进入审核。",
    Stage.SITE_SURVEY: "工作人员将与您联系，安排到店实地勘察。",
    Stage.IN_REVIEW: "材料已齐全，正在审核，请耐心等待。",
    Stage.CONTRACT: "审核已通过，请签署合同。",
    Stage.PREPARING_DEVICES: "合同已签署，正在为您准备终端。",
    Stage.DELIVERING: "终端正在配送或安排安装。",
    Stage.ACTIVATING: "请在终端上输入短信中的激活码完成激活。",
    Stage.TRAINING: "终端已激活，请参加使用培训。",
    Stage.GOING_LIVE: "正在进行开通前的最后检查。",
    Stage.CLOSING: "申请已终止，正在办理后续手续。",
    Stage.LIVE: "恭喜，您的商户已开通，可以开始收款。",
    Stage.REJECTED: "很抱歉，您的申请未通过审核。",
    Stage.EXPIRED: "申请已超过办理期限而失效，如需办理请重新申请。",
    Stage.CANCELLED: "申请已撤回。",
}
# What merchants call each document: the names the notices use too.
KIND_NAMES = DOCUMENT_NAMES
# The form's fields, in order: a document's own field names, shown beside their Chinese label.
FIELDS: dict[str, str] = {
    "file_id": "扫描件编号",
    "number": "证件号码",
    "holder_name": "持有人名称",
    "expires_on": "有效期至",
}
ISSUE_NAMES: dict[IssueCode, str] = {
    IssueCode.REQUIRED: "缺少",
    IssueCode.INVALID_FORMAT: "格式不正确",
    IssueCode.CHECKSUM: "校验位不正确",
    IssueCode.INVALID_BIRTH_DATE: "出生日期无效",
    IssueCode.UNKNOWN_REGION: "行政区划代码无效",
    IssueCode.UNKNOWN_ENTITY_TYPE: "登记机关或类别代码无效",
    IssueCode.EXPIRED: "已过期",
    IssueCode.NAME_MISMATCH: "名称与申请不一致",
    IssueCode.NUMBER_MISMATCH: "号码与申请不一致",
    IssueCode.NOT_APPLICABLE: "本申请不需要",
}
KIND_VALUES = frozenset(k.value for k in DocumentKind)
REFUSED_TITLE = {
    LinkProblem.MALFORMED: "链接无效 · This link is not valid",
    LinkProblem.FORGED: "链接无效 · This link is not valid",
    LinkProblem.EXPIRED: "链接已过期 · This link has expired",
}
REFUSED_STATUS = {LinkProblem.MALFORMED: 403, LinkProblem.FORGED: 403, LinkProblem.EXPIRED: 410}


def when(value: datetime | None) -> str:
    """A moment as the merchant reads it: China time."""
    return value.astimezone(CHINA).strftime("%Y-%m-%d %H:%M") if value else ""


TEMPLATES.env.filters.update(when=when)


# --- the link is the credential --------------------------------------------------------------


@dataclass(frozen=True)
class PageLink:
    """What the token in the path opens: an application until `expires_at`, or a refusal."""

    token: str
    application_id: str = ""
    expires_at: datetime | None = None
    problem: LinkProblem | None = None


async def page_link(request: Request, token: str) -> PageLink:
    """The token checked with the key derived from the worker's secret. A refused link is
    counted here and answered by the route (`refused`), as a page rather than JSON."""
    secret = request.app.state.settings.secrets.get("worker")
    try:
        if not secret:  # nobody signs links here: none can be genuine
            raise InvalidLink(LinkProblem.FORGED)
        application_id = verify(token, page_key(secret))
    except InvalidLink as err:
        request.app.state.metrics.refusal(f"link_{err.problem.value}")
        return PageLink(token, problem=err.problem)
    expires = int(token.split(".")[1])
    return PageLink(token, application_id, datetime.fromtimestamp(expires, UTC))


GUARDS[page_link] = "merchant link"  # the audience: whoever holds a link posflow signed
Link = Annotated[PageLink, Depends(page_link)]

router = APIRouter(
    tags=["merchant page"], dependencies=[Depends(page_link)], include_in_schema=False
)


def _html(request: Request, name: str, status_code: int, **context: Any) -> Response:
    response = TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)
    # The address is the credential: kept out of caches and out of other sites' logs.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex"
    return response


def refused(request: Request, problem: LinkProblem) -> Response:
    """A link that opens nothing: 403 forged or malformed, 410 expired; no application named."""
    return _html(
        request,
        "page_invalid.html",
        REFUSED_STATUS[problem],
        title=REFUSED_TITLE[problem],
        expired=problem is LinkProblem.EXPIRED,
    )


# --- what the page shows ---------------------------------------------------------------------


@dataclass(frozen=True)
class IssueView:
    field: str  # the document's field (`holder_name`), or the whole path for other issues
    label: str  # the field's Chinese name and the issue's, for the list of what is missing
    problem: str  # the issue's Chinese name, beside the field's input
    message: str


@dataclass
class SectionView:
    """One document asked for: why, and the form's fields with what was refused in each."""

    kind: str
    name: str
    issues: list[IssueView] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)  # re-filled after a refusal

    def errors(self, name: str) -> list[IssueView]:
        return [i for i in self.issues if i.field == name]


@dataclass
class PageView:
    status: ApplicationStatus
    stage_name: str
    hint: str
    sections: list[SectionView]  # the documents asked for, in `DocumentKind` order
    other_issues: list[IssueView]  # issues not about one document's field (the application's)
    review_reasons: list[str]
    signing_url: str | None
    deposit_due: str | None
    fields: dict[str, str] = field(default_factory=lambda: dict(FIELDS))

    @property
    def can_supplement(self) -> bool:
        return self.status.stage is Stage.COLLECTING_DOCUMENTS and bool(self.sections)


def _issue_view(issue: FieldIssue) -> tuple[DocumentKind | None, IssueView]:
    """An issue placed on its document and field (`documents.identity_card.holder_name`)."""
    parts = issue.field.split(".")
    message = str(masked(issue.message))
    code = ISSUE_NAMES.get(issue.code, issue.code.value)
    if len(parts) >= 2 and parts[0] == "documents" and parts[1] in KIND_VALUES:
        kind = DocumentKind(parts[1])
        name = parts[2] if len(parts) > 2 else ""
        label = (
            f"{FIELDS[name]}（{name}）：{code}" if name in FIELDS else f"{KIND_NAMES[kind]}：{code}"
        )
        return kind, IssueView(name, label, code, message)
    return None, IssueView(issue.field, f"{mask_text(issue.field)}：{code}", code, message)


def page_view(
    status: ApplicationStatus,
    refused: list[FieldIssue] | None = None,
    values: dict[DocumentKind, dict[str, str]] | None = None,
) -> PageView:
    """The page for `status`. `refused`: the issues of what was just posted (they replace the
    status's own, which are those of the last submission); `values`: what was posted, to fill
    the form again (never a document's number)."""
    issues = status.documents.issues if refused is None else refused
    sections = {
        kind: SectionView(kind.value, KIND_NAMES[kind]) for kind in status.documents.outstanding
    }
    others: list[IssueView] = []
    for issue in issues:
        kind, view = _issue_view(issue)
        if kind is not None and kind in sections:
            sections[kind].issues.append(view)
        elif kind is None or kind not in status.documents.on_file:
            others.append(view)
    for kind, posted in (values or {}).items():
        if kind in sections:
            sections[kind].values = {k: v for k, v in posted.items() if k != "number"}
    reasons: list[str] = []
    rounds = status.review.rounds
    if status.stage is Stage.COLLECTING_DOCUMENTS or status.stage is Stage.REJECTED:
        decided = [r for r in rounds if r.outcome is not None]
        if decided and decided[-1].outcome in (
            ReviewOutcome.NEEDS_MORE_INFO,
            ReviewOutcome.REJECTED,
        ):
            reasons = [str(masked(r)) for r in decided[-1].reasons]
    contract = status.contract
    awaiting_signature = (
        status.stage is Stage.CONTRACT and contract.signing_url and contract.signed_at is None
    )
    return PageView(
        status=status,
        stage_name=STAGE_NAMES.get(status.stage, status.stage.value),
        hint=STAGE_HINTS.get(status.stage, ""),
        sections=[sections[k] for k in DocumentKind if k in sections],
        other_issues=others,
        review_reasons=reasons,
        signing_url=contract.signing_url if awaiting_signature else None,
        deposit_due=contract.deposit_due
        if awaiting_signature and _owed(contract.deposit_due)
        else None,
    )


def _owed(amount: str) -> bool:
    try:
        return Decimal(amount) > 0
    except ArithmeticError:
        return False


# --- the form --------------------------------------------------------------------------------


@dataclass
class Posted:
    """What the form sent, read as documents: the ones filled in, what each field held, and the
    fields the document model itself refused (the API's 422 `fields`, by document)."""

    documents: list[Document] = field(default_factory=list)
    values: dict[DocumentKind, dict[str, str]] = field(default_factory=dict)
    issues: list[FieldIssue] = field(default_factory=list)


def read_form(form: Any) -> Posted:
    """Documents from a form whose inputs are named `<kind>.<field>`; a kind whose fields are all
    empty was not filled in. Each filled kind is validated as the API validates a document."""
    posted = Posted()
    for kind in DocumentKind:
        raw = {name: form.get(f"{kind.value}.{name}") for name in FIELDS}
        values = {k: v.strip() for k, v in raw.items() if isinstance(v, str)}
        if not any(values.values()):
            continue
        posted.values[kind] = values
        data: dict[str, Any] = {"kind": kind.value, **values}
        if not values.get("expires_on"):
            data["expires_on"] = None  # left empty: long-term (长期有效)
        try:
            posted.documents.append(Document.model_validate(data))
        except ValidationError as err:
            for error in err.errors():
                name = ".".join(str(p) for p in error["loc"]) or "document"
                posted.issues.append(
                    FieldIssue(
                        field=f"documents.{kind.value}.{name}",
                        code=IssueCode.INVALID_FORMAT,
                        message=mask_text(error["msg"]),
                    )
                )
    return posted


def submission_of(application_id: str, documents: list[Document]) -> DocumentSubmission:
    """The submission, its id derived from what was posted: the same form sent twice (a
    double-click, a reload) is the same submission, which the workflow files once."""
    canonical = json.dumps(
        [application_id, [d.model_dump(mode="json") for d in documents]],
        sort_keys=True,
        ensure_ascii=False,
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:40]
    return DocumentSubmission(submission_id=f"page-{digest}", documents=documents)


# --- the routes ------------------------------------------------------------------------------


async def _status(request: Request, client: Any, link: PageLink) -> ApplicationStatus | Response:
    try:
        status: ApplicationStatus = await workflow(client, link.application_id).query(
            PosOnboarding.status
        )
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            return _notice(request, 404, "找不到这份申请 · No such application")
        return _notice(request, 503, "暂时无法查询，请稍后刷新 · Please try again shortly")
    return status


def _notice(request: Request, status_code: int, title: str) -> Response:
    return _html(request, "page_invalid.html", status_code, title=title, expired=False)


def _page(
    request: Request, link: PageLink, view: PageView, status_code: int = 200, **context: Any
) -> Response:
    return _html(
        request, "page.html", status_code, view=view, link=link, kind_names=KIND_NAMES, **context
    )


@router.get("/m/{token}", response_class=HTMLResponse)
async def merchant_page(request: Request, link: Link, client: ClientDep) -> Response:
    """Where the application stands, and the form for the documents still asked for."""
    if link.problem is not None:
        return refused(request, link.problem)
    status = await _status(request, client, link)
    if isinstance(status, Response):
        return status
    return _page(request, link, page_view(status))


@router.post("/m/{token}/documents", response_class=HTMLResponse)
async def supplement(
    request: Request, link: Link, client: ClientDep, forwarder: ForwarderDep, settings: SettingsDep
) -> Response:
    """The documents filled in, sent as the API sends them; the page again, with each refused
    field's message beside its input, or what was filed."""
    if link.problem is not None:
        return refused(request, link.problem)
    posted = read_form(await request.form(max_files=0, max_fields=4 * len(DocumentKind) + 4))
    result: SubmissionResult | None = None
    error, code = "", 200
    if posted.issues:
        code = 422  # refused as the API refuses a malformed document: nothing is sent
    elif not posted.documents:
        error, code = "请至少填写一份材料后再提交。", 422
    else:
        submission = submission_of(link.application_id, posted.documents)
        try:
            result = await file_documents(
                client, forwarder, settings, link.application_id, submission
            )
        except ApiError as err:
            error, code = _refusal_text(err), err.status
        else:
            code = 422 if result.issues else 200
    status = await _status(request, client, link)
    if isinstance(status, Response):
        return status
    refused_now = posted.issues or (result.issues if result is not None else [])
    view = page_view(status, refused_now or None, posted.values if refused_now else None)
    return _page(request, link, view, code, result=result, error=error)


def _refusal_text(err: ApiError) -> str:
    """The workflow's or Temporal's refusal of a submission, as the merchant reads it."""
    if err.error == "still_validating":
        return "材料已收到，正在校验，请稍后刷新本页查看结果。"
    if err.status == 409:
        return "当前阶段无需提交材料，本次提交未被受理。"
    if err.status == 503:
        return "系统繁忙，本次提交未能处理，请稍后重试。"
    return f"本次提交未被受理：{mask_text(err.message)}"
