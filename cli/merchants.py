"""`posflow merchants list | show | messages | fault | order | close | retry | extend`: merchants
after go-live, from a terminal, through the gateway's API (nothing else).

The list and counts come from the gateway's store (`GET /api/merchants`, `/api/merchants/counts`),
one merchant from its workflow's status query or, once the workflow is gone, the file the gateway
kept (`GET /api/merchants/{mid}`). Actions are the API's (`POST /api/merchants/{mid}/faults`,
`/terminal-orders`, `/closure`, `/api/admin/merchants/{mid}/retry`, `/extend`), each with a
request id: sending the same command again with `--request-id` is answered `duplicate`, never
done twice. Everything printed goes through the masking used for logs.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli.apps import (
    DEFAULT_GATEWAY_URL,
    OPTION_OF,
    GatewayError,
    GatewayUrlOption,
    JsonOption,
    TokenOption,
    _console,
    _flag,
    _gateway,
    _print_json,
    _text,
    _when,
    _when_relative,
    stored_token,
)
from workers.logging import masked

merchants_app = typer.Typer(
    help="Merchants after go-live through the gateway: list, show one, report a fault, order "
    "terminals, close, and (admin) retry or extend.",
    no_args_is_help=True,
)

OPTION_OF.update(
    {
        "state": "--state",
        "suspended": "--suspended/--not-suspended",
        "suspension": "--suspension",
        "fees_overdue": "--fees-overdue/--fees-paid",
        "mid": "MID",
        "serial": "SERIAL",
        "description": "--description",
        "reported_by": "--reported-by",
        "requested_by": "--requested-by",
        "reason": "--reason",
        "quantity": "--quantity",
        "model": "MODEL",
        "period": "--period",
        "request_id": "--request-id",
    }
)

RequestIdOption = Annotated[
    str | None,
    typer.Option(
        "--request-id",
        help="The action's id (generated when absent): the same id again is answered "
        "`duplicate`, never done twice.",
        show_default=False,
    ),
]
ActionTokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="POSFLOW_TOKEN",
        help="Bearer token (operator for faults and closure, admin for orders, retry and "
        "extend); default: the admin token in the credentials file, for a gateway on this "
        "machine.",
        show_default=False,
        show_envvar=True,
    ),
]


def _path(mid: str, tail: str = "") -> str:
    return f"/api/merchants/{quote(mid, safe='')}{tail}"


# --- list --------------------------------------------------------------------------------------


@merchants_app.command("list")
def list_merchants(
    state: Annotated[str | None, typer.Option(help="active, suspended, closing or closed.")] = None,
    channel: Annotated[str | None, typer.Option(help="bank, lakala, tmall or alipay.")] = None,
    merchant_type: Annotated[
        str | None, typer.Option(help="individual or enterprise.", show_default=False)
    ] = None,
    suspended: Annotated[
        bool | None,
        typer.Option("--suspended/--not-suspended", help="Acquiring switched off, or not."),
    ] = None,
    suspension: Annotated[
        str | None, typer.Option(help="Suspended for this reason: fees or inspection.")
    ] = None,
    fees_overdue: Annotated[
        bool | None,
        typer.Option("--fees-overdue/--fees-paid", help="With fees unpaid past the due date."),
    ] = None,
    needs_attention: Annotated[
        bool | None,
        typer.Option("--needs-attention/--no-attention", help="Parked for an operator, or not."),
    ] = None,
    search: Annotated[
        str | None, typer.Option(help="A MID, application id, or part of a merchant's name.")
    ] = None,
    sort: Annotated[
        str, typer.Option(help="updated, went_live, next_bill, next_inspection, overdue or name.")
    ] = "updated",
    limit: Annotated[int, typer.Option(help="Rows per page (at most 500).")] = 50,
    page: Annotated[int, typer.Option(min=1, help="Which page, from 1.")] = 1,
    as_json: JsonOption = False,
    gateway_url: GatewayUrlOption = DEFAULT_GATEWAY_URL,
    token: TokenOption = None,
) -> None:
    """List merchants with their counts (GET /api/merchants, /api/merchants/counts)."""
    offset = (page - 1) * limit
    wanted: dict[str, str | None] = {
        "state": state,
        "channel": channel,
        "merchant_type": merchant_type,
        "suspended": _flag(suspended),
        "suspension": suspension,
        "fees_overdue": _flag(fees_overdue),
        "needs_attention": _flag(needs_attention),
        "q": search,
        "sort": sort,
        "limit": str(limit),
        "offset": str(offset),
    }
    params = {k: v for k, v in wanted.items() if v is not None}
    with _gateway(gateway_url, token) as gateway:
        response = gateway.get("/api/merchants", params)
        listed = gateway.json("/api/merchants", params, response)
        counts = gateway.json("/api/merchants/counts")
        if not isinstance(listed, list) or not isinstance(counts, dict):
            raise GatewayError(f"{gateway.url} did not answer with merchants")
        header = response.headers.get("X-Total-Count", "")
        total = int(header) if header.isdigit() else offset + len(listed)
    rows: list[dict[str, Any]] = [masked(row) for row in listed]
    if as_json:
        _print_json(
            {"total": total, "offset": offset, "limit": limit, "counts": counts, "merchants": rows}
        )
        return
    console = _console()
    console.print(_counts_line(counts))
    if rows:
        console.print(_merchants_table(rows))
        first, last = offset + 1, offset + len(rows)
        more = f"; next page: --page {page + 1}" if last < total else ""
        console.print(f"showing {first}–{last} of {total}{more}")
    elif total:
        console.print(f"no merchants on page {page}: {total} match in all")
    else:
        console.print("no merchants match")


def _counts_line(counts: dict[str, Any]) -> Text:
    states = counts.get("by_state") or {}
    reasons = counts.get("suspended_by_reason") or {}
    parts: list[str | tuple[str, str]] = []
    for name, n in states.items():
        parts += [f"{name} ", (str(n), "bold"), "  "]
    for name, n in reasons.items():
        parts += [f"suspended for {name} ", (str(n), "bold yellow"), "  "]
    parts += ["fees overdue ", (str(counts.get("fees_overdue", 0)), "bold red"), "  "]
    parts += ["need attention ", (str(counts.get("needs_attention", 0)), "bold red")]
    return Text.assemble(*parts)


def _merchants_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, caption="times in China time (UTC+8)")
    for name in ("MID", "merchant", "channel", "state", "terminals", "fees due", "overdue"):
        table.add_column(name, justify="right" if name in ("terminals", "fees due") else "left")
    table.add_column("next bill")
    table.add_column("attention")
    for row in rows:
        state = str(row.get("state", ""))
        suspensions = row.get("suspensions") or []
        overdue = str(row.get("fees_overdue", "0.00"))
        table.add_row(
            _text(row.get("mid")),
            _text(row.get("merchant_name")),
            _text(row.get("channel")),
            Text.assemble(
                state, *((f" ({', '.join(suspensions)})", "yellow"),) * bool(suspensions)
            ),
            _text(row.get("terminals")),
            _text(row.get("fees_due")),
            Text(overdue, style="bold red") if overdue != "0.00" else Text("—"),
            _text(_when(row.get("closed_at")) + " closed")
            if row.get("closed_at")
            else _text(_when(row.get("next_bill_at"))),
            Text(str(row.get("attention_kind") or ""), style="yellow"),
        )
    return table


# --- show, messages ----------------------------------------------------------------------------


@merchants_app.command("show")
def show_merchant(
    mid: Annotated[str, typer.Argument(help="The MID (15 digits).")],
    as_json: JsonOption = False,
    gateway_url: GatewayUrlOption = DEFAULT_GATEWAY_URL,
    token: TokenOption = None,
) -> None:
    """One merchant (GET /api/merchants/{mid}): state, fees and bills, inspection, terminals
    with their TIDs and what replaced what, settlement accounts, requests, recent events."""
    with _gateway(gateway_url, token) as gateway:
        response = gateway.get(_path(mid))
        status = gateway.json(_path(mid), response=response)
        if not isinstance(status, dict):
            raise GatewayError(f"{gateway.url} did not answer with a merchant")
    status = masked(status)
    source = response.headers.get("X-Posflow-Source", "workflow")
    if as_json:
        _print_json({**status, "source": source})
        return
    console = _console()
    for part in _status_parts(status, source):
        console.print(part)


def _status_parts(status: dict[str, Any], source: str) -> list[RenderableType]:
    parts: list[RenderableType] = [
        Text.assemble((str(status.get("mid", "")), "bold"), "  ", str(status.get("merchant_name")))
    ]
    if source == "snapshot":
        parts.append(
            Text("the gateway's stored file: the workflow is closed or gone", style="yellow")
        )
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    suspensions = status.get("suspensions") or []
    state = str(status.get("state", ""))
    if suspensions:
        state += f" ({', '.join(suspensions)} since {_when(status.get('suspended_since'))})"
    facts.add_row("state", _text(state))
    facts.add_row("application", _text(status.get("application_id")))
    facts.add_row("channel", _text(f"{status.get('channel')} · {status.get('merchant_type')}"))
    facts.add_row("went live", _text(_when_relative(status.get("went_live_at"))))
    facts.add_row(
        "fees", _text(f"{status.get('fees_due')} due, {status.get('fees_overdue')} overdue (CNY)")
    )
    facts.add_row("next bill", _text(_when(status.get("next_bill_at"))))
    facts.add_row("next inspection", _text(_when(status.get("next_inspection_at"))))
    for name in ("inspection", "last_inspection"):
        inspection = status.get(name)
        if isinstance(inspection, dict):
            verdict = {True: "passed", False: "failed", None: "awaiting the result"}
            facts.add_row(
                name.replace("_", " "),
                _text(
                    f"{inspection.get('inspection_id')} {_when(inspection.get('scheduled_for'))}: "
                    f"{verdict.get(inspection.get('passed'), '')}"
                ),
            )
    attention = status.get("attention")
    facts.add_row(
        "attention",
        Text(
            f"{attention.get('kind')} at {attention.get('step')}: {attention.get('reason')}",
            style="yellow",
        )
        if isinstance(attention, dict)
        else Text("none"),
    )
    if status.get("closure_cause"):
        facts.add_row(
            "closure",
            _text(
                f"{status['closure_cause']}: {status.get('closure_reason', '')} "
                f"({_when(status.get('closed_at')) if status.get('closed_at') else 'closing'})"
            ),
        )
    facts.add_row("retired TIDs", _text(", ".join(status.get("retired_tids") or []) or "none"))
    queue = status.get("queue") or []
    facts.add_row(
        "requests", _text(f"serving {status.get('serving') or 'none'}; waiting {len(queue)}")
    )
    parts.append(facts)

    terminals = Table(title="terminals", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("serial", "model", "TID", "state", "replaces", "replaced by", "activated"):
        terminals.add_column(name)
    for t in status.get("terminals") or []:
        terminals.add_row(
            _text(t.get("serial")),
            _text(t.get("model")),
            _text(t.get("tid") or "—"),
            _text(t.get("state")),
            _text(t.get("replaces") or ""),
            _text(t.get("replaced_by") or ""),
            _text(_when(t.get("activated_at"))),
        )
    bindings = Table(title="settlement accounts", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("holder", "bank", "account", "bound", "unbound"):
        bindings.add_column(name)
    for b in status.get("bindings") or []:
        bindings.add_row(
            _text(b.get("holder_name")),
            _text(b.get("bank_name")),
            _text(f"**** {b.get('account_last4')}"),
            _text(_when(b.get("bound_at"))),
            _text(_when(b.get("unbound_at")) if b.get("unbound_at") else "current"),
        )
    events = Table(title="recent events", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("when", "event", "detail"):
        events.add_column(name)
    for e in list(reversed(status.get("events") or []))[:10]:
        events.add_row(_text(_when(e.get("at"))), _text(e.get("kind")), _text(e.get("detail")))
    parts += [terminals, bindings, events, Text("times in China time (UTC+8)", style="dim")]
    return parts


@merchants_app.command("messages")
def merchant_messages(
    mid: Annotated[str, typer.Argument(help="The MID (15 digits).")],
    as_json: JsonOption = False,
    gateway_url: GatewayUrlOption = DEFAULT_GATEWAY_URL,
    token: TokenOption = None,
) -> None:
    """Every message the merchant's account received, with its outcome (its audit trail)."""
    with _gateway(gateway_url, token) as gateway:
        kept = gateway.json(_path(mid, "/messages"))
        if not isinstance(kept, list):
            raise GatewayError(f"{gateway.url} did not answer with messages")
    kept = masked(kept)
    if as_json:
        _print_json(kept)
        return
    table = Table(box=box.SIMPLE_HEAD, caption="times in China time (UTC+8)")
    for name in ("received", "from", "kind", "id", "outcome", "detail", "by", "why"):
        table.add_column(name)
    for m in kept:
        table.add_row(
            *(
                _text(v)
                for v in (
                    _when(m.get("received_at")),
                    m.get("source"),
                    m.get("kind"),
                    m.get("message_id"),
                    m.get("outcome"),
                    m.get("detail"),
                    m.get("actor"),
                    m.get("reason"),
                )
            )
        )
    _console().print(table if kept else Text("no messages"))


# --- actions -----------------------------------------------------------------------------------


def _act(
    gateway_url: str, token: str | None, path: str, body: dict[str, Any], as_json: bool
) -> None:
    """POST an action and report what became of it: applied, duplicate, or pending (202)."""
    with _gateway(gateway_url, token or stored_token(gateway_url, "admin")) as gateway:
        response = gateway.post(path, body)
        answer = gateway.json(path, response=response)
    if as_json:
        _print_json(masked(answer))
        return
    outcome = str(answer.get("outcome", "")) if isinstance(answer, dict) else ""
    detail = str(answer.get("detail", "")) if isinstance(answer, dict) else ""
    style = "green" if outcome in ("applied", "duplicate") else "yellow"
    _console().print(
        Group(
            Text.assemble((outcome or "done", f"bold {style}"), f"  {body['request_id']}"),
            Text(detail),
        )
    )


def _request_id(given: str | None) -> str:
    return given or f"cli-{uuid.uuid4().hex[:12]}"


@merchants_app.command("fault")
def report_fault(
    mid: Annotated[str, typer.Argument(help="The MID (15 digits).")],
    serial: Annotated[str, typer.Argument(help="The faulty terminal's serial.")],
    description: Annotated[str, typer.Option(help="What is wrong.")] = "reported faulty",
    reported_by: Annotated[str, typer.Option(help="Who reports it.")] = "operations",
    request_id: RequestIdOption = None,
    as_json: JsonOption = False,
    gateway_url: GatewayUrlOption = DEFAULT_GATEWAY_URL,
    token: ActionTokenOption = None,
) -> None:
    """Report a faulty terminal: a replacement is sent, the faulty one comes back (operator)."""
    body = {
        "request_id": _request_id(request_id),
        "serial": serial,
        "description": description,
        "reported_by": reported_by,
    }
    _act(gateway_url, token, _path(mid, "/faults"), body, as_json)


@merchants_app.command("order")
def order_terminals(
    mid: Annotated[str, typer.Argument(help="The MID (15 digits).")],
    model: Annotated[str, typer.Argument(help="The terminal model, e.g. LKL-A8.")],
    quantity: Annotated[int, typer.Option(help="How many (1-20).")] = 1,
    requested_by: Annotated[str, typer.Option(help="Who asks.")] = "operations",
    request_id: RequestIdOption = None,
    as_json: JsonOption = False,
    gateway_url: GatewayUrlOption = DEFAULT_GATEWAY_URL,
    token: ActionTokenOption = None,
) -> None:
    """Order more terminals under the same MID (admin, or the merchant's own key)."""
    body = {
        "request_id": _request_id(request_id),
        "model": model,
        "quantity": quantity,
        "requested_by": requested_by,
    }
    _act(gateway_url, token, _path(mid, "/terminal-orders"), body, as_json)


@merchants_app.command("close")
def close_merchant(
    mid: Annotated[str, typer.Argument(help="The MID (15 digits).")],
    reason: Annotated[str, typer.Option(help="Why the account is closed (kept with it).")],
    requested_by: Annotated[str, typer.Option(help="Who asks.")] = "operations",
    request_id: RequestIdOption = None,
    as_json: JsonOption = False,
    gateway_url: GatewayUrlOption = DEFAULT_GATEWAY_URL,
    token: ActionTokenOption = None,
) -> None:
    """Close the account (注销): devices come back, the MID is retired (operator)."""
    body = {"request_id": _request_id(request_id), "reason": reason, "requested_by": requested_by}
    _act(gateway_url, token, _path(mid, "/closure"), body, as_json)


def _admin(
    verb: str,
    mid: str,
    reason: str,
    step: str | None,
    period: str | None,
    request_id: str | None,
    as_json: bool,
    gateway_url: str,
    token: str | None,
) -> None:
    body: dict[str, Any] = {"request_id": _request_id(request_id), "reason": reason}
    if step:
        body["step"] = step
    if period:
        body["period"] = period
    path = f"/api/admin/merchants/{quote(mid, safe='')}/{verb}"
    _act(gateway_url, token, path, body, as_json)


StepOption = Annotated[
    str | None, typer.Option(help="The step meant, when the account is parked on more than one.")
]


@merchants_app.command("retry")
def retry(
    mid: Annotated[str, typer.Argument(help="The MID (15 digits).")],
    reason: Annotated[str, typer.Option(help="Why (kept with the action).")],
    step: StepOption = None,
    request_id: RequestIdOption = None,
    as_json: JsonOption = False,
    gateway_url: GatewayUrlOption = DEFAULT_GATEWAY_URL,
    token: ActionTokenOption = None,
) -> None:
    """Re-run the step the account is parked on (admin)."""
    _admin("retry", mid, reason, step, None, request_id, as_json, gateway_url, token)


@merchants_app.command("extend")
def extend(
    mid: Annotated[str, typer.Argument(help="The MID (15 digits).")],
    reason: Annotated[str, typer.Option(help="Why (kept with the action).")],
    period: Annotated[
        str | None, typer.Option(help="The new period from now, ISO 8601 (e.g. P3D).")
    ] = None,
    step: StepOption = None,
    request_id: RequestIdOption = None,
    as_json: JsonOption = False,
    gateway_url: GatewayUrlOption = DEFAULT_GATEWAY_URL,
    token: ActionTokenOption = None,
) -> None:
    """Give an overdue wait another period (admin)."""
    _admin("extend", mid, reason, step, period, request_id, as_json, gateway_url, token)
