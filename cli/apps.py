"""`posflow apps list | show | watch`: the applications as operations see them, from a terminal.

A client of the gateway's API, nothing more: the list and the counts come from the gateway's
projection (`GET /api/applications`, `GET /api/overview`), one application's detail from its
workflow's status query (`GET /api/applications/{id}`). The gateway validates every filter, so
the CLI passes them through and reports a refusal by field. Times are shown in China time, like
the dashboard shows them, and everything printed goes through the masking used for logs.

The dashboard's formatting helpers are imported when first used, so `posflow --help` does not
wait for the web stack.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn
from urllib.parse import quote, urlsplit

import httpx
import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.stack import GATEWAY_PORT
from workers.config import CredentialsError, is_loopback, stored_credentials
from workers.logging import masked

apps_app = typer.Typer(
    help="Look at applications through the gateway: list and filter, show one, watch the counts.",
    no_args_is_help=True,
)

DEFAULT_GATEWAY_URL = f"http://127.0.0.1:{GATEWAY_PORT}"
TIMEOUT_SECONDS = 15.0
# Narrower than this, the list is a block of three lines per application instead of a table.
TABLE_WIDTH = 100
FINISHED = frozenset({"live", "rejected", "expired", "cancelled"})
# The list's query parameters (`gateway.store.ListFilter`) and the options that set them, so a
# refusal names what the user typed.
OPTION_OF = {
    "stage": "--stage",
    "channel": "--channel",
    "merchant_type": "--merchant-type",
    "overdue": "--overdue/--on-time",
    "needs_attention": "--needs-attention/--no-attention",
    "review_round": "--review-round",
    "in_flight": "--in-flight/--ended",
    "q": "--search",
    "sort": "--sort",
    "limit": "--limit",
    "offset": "--page",
    "days": "--days",
}

GatewayUrlOption = Annotated[
    str,
    typer.Option(
        "--gateway-url",
        envvar="POSFLOW_GATEWAY_URL",
        help="The gateway's base URL.",
        show_envvar=True,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="POSFLOW_TOKEN",
        help="Bearer token (viewer role or above); default: the viewer token in the credentials "
        "file `posflow up` wrote, for a gateway on this machine.",
        show_default=False,
        show_envvar=True,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON to stdout, for scripts, instead of tables.")
]


# --- talking to the gateway ----------------------------------------------------------------------


class GatewayError(Exception):
    """What went wrong, in words for the operator, with the exit code it deserves."""

    def __init__(
        self,
        message: str,
        fields: dict[str, str] | None = None,
        code: int = 1,
        status: int | None = None,  # the HTTP status, if the gateway answered
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.code = code
        self.status = status

    @property
    def lasting(self) -> bool:
        """A refusal (4xx) that asking again will not change."""
        return self.status is not None and 400 <= self.status < 500


class Gateway:
    """A synchronous client of the gateway that turns every failure into a `GatewayError`."""

    def __init__(self, url: str, token: str | None, timeout: float = TIMEOUT_SECONDS) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        return self._send("GET", path, params=params)

    def post(self, path: str, body: Any) -> httpx.Response:
        """POST `body` as JSON; a 202 (accepted, pending) is a success like a 200."""
        return self._send("POST", path, body=body)

    def _send(
        self, method: str, path: str, params: dict[str, str] | None = None, body: Any = None
    ) -> httpx.Response:
        try:
            response = self.http.request(method, path, params=params, json=body)
        except httpx.TimeoutException:
            raise GatewayError(
                f"the gateway at {self.url} did not answer within {self.timeout:g} s"
            ) from None
        except (httpx.TransportError, httpx.InvalidURL) as err:
            raise GatewayError(
                f"cannot reach the gateway at {self.url} ({err or type(err).__name__}); "
                "is it running? Set --gateway-url or POSFLOW_GATEWAY_URL"
            ) from None
        if response.is_success:
            return response
        raise self._refusal(response)

    def _refusal(self, response: httpx.Response) -> GatewayError:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            message = str(body["message"])
            raw_fields = body.get("fields")
            fields = (
                {str(k): str(v) for k, v in raw_fields.items()}
                if isinstance(raw_fields, dict)
                else {}
            )
        else:  # not one of the gateway's errors: a proxy, or not the gateway at all
            detail = body.get("detail") if isinstance(body, dict) else None
            message = str(detail or response.text.strip()[:200] or response.reason_phrase)
            fields = {}
        message = f"{message} (HTTP {status})"
        if status in (401, 403):
            message += "; pass a token with --token or POSFLOW_TOKEN"
        return GatewayError(message, fields, code=2 if status == 422 else 1, status=status)

    def json(
        self,
        path: str,
        params: dict[str, str] | None = None,
        response: httpx.Response | None = None,
    ) -> Any:
        """The JSON answer to `GET path` (or of `response`, already received)."""
        response = response or self.get(path, params)
        try:
            return response.json()
        except ValueError:
            raise GatewayError(
                f"{self.url}{path} did not answer with JSON: is this the posflow gateway?"
            ) from None


def stored_token(url: str, role: str) -> str | None:
    """The `role` token `posflow up` wrote into its credentials file, for a gateway on this
    machine (loopback) only, and only if this user may read the file."""
    host = urlsplit(url).hostname or ""
    if not is_loopback(host):
        return None
    try:
        stored = stored_credentials()
    except CredentialsError:
        return None
    return stored.tokens.get(role) if stored is not None else None


@contextmanager
def _gateway(url: str, token: str | None) -> Iterator[Gateway]:
    """A client for the command; a `GatewayError` ends the command with its message. Without
    a token, the viewer token of `posflow up`'s credentials file is used."""
    gateway = Gateway(url, token or stored_token(url, "viewer"))
    try:
        yield gateway
    except GatewayError as err:
        _fail(err)
    finally:
        gateway.close()


def _fail(err: GatewayError) -> NoReturn:
    errors = Console(stderr=True, highlight=False)
    errors.print(Text.assemble(("error: ", "bold red"), err.message))
    for name, why in err.fields.items():
        option = OPTION_OF.get(name)
        where = f"{name} ({option})" if option else name
        errors.print(Text.assemble("  ", (where, "bold"), f": {why}"))
    raise typer.Exit(err.code)


# --- formatting ----------------------------------------------------------------------------------


def _when(value: Any) -> str:
    from gateway.dashboard import when

    return when(value)


def _relative(value: Any) -> str:
    from gateway.dashboard import relative

    return relative(value)


def _when_relative(value: Any) -> str:
    shown = _when(value)
    ago = _relative(value)
    return f"{shown} ({ago})" if ago else shown


def _moment(value: Any) -> datetime | None:
    """An ISO time from the API (UTC when it has no offset); None when there is none."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _clock(value: Any) -> str:
    """Seconds matter when the screen refreshes every few of them."""
    from workflows.case import CHINA

    moment = _moment(value) or datetime.now(UTC)
    return moment.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")


def _deadline_passed(deadline: Any) -> bool:
    moment = _moment(deadline)
    return moment is not None and moment < datetime.now(UTC)


def _text(value: Any) -> Text:
    """A cell: data is never read as rich markup, `[x]` in a merchant's name stays as it is."""
    return Text("" if value is None else str(value))


def _deadline_cell(deadline: Any, overdue: bool, narrow: bool = False) -> Text:
    """The deadline, marked when it has passed; `narrow`: the date, time and mark one a line."""
    if not deadline:
        return Text("—")
    shown, sep = (_stacked(deadline), "\n") if narrow else (_when(deadline), " ")
    if overdue:
        return Text.assemble(shown, sep, ("overdue", "bold red"))
    return Text.assemble(shown, sep, (f"({_relative(deadline)})", "dim"))


def _stacked(value: Any) -> str:
    """A time as the dashboard shows it, the date above the time: a table cell 10 wide."""
    return _when(value).replace(" ", "\n", 1)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))


def _console() -> Console:
    return Console(highlight=False)


# --- posflow apps list ---------------------------------------------------------------------------


def _flag(value: bool | None) -> str | None:
    return None if value is None else str(value).lower()


@apps_app.command("list")
def list_applications(
    stage: Annotated[
        str | None,
        typer.Option(help="Only this stage, e.g. in_review (the gateway names the valid ones)."),
    ] = None,
    channel: Annotated[str | None, typer.Option(help="bank, lakala, tmall or alipay.")] = None,
    merchant_type: Annotated[
        str | None, typer.Option(help="individual or enterprise.", show_default=False)
    ] = None,
    overdue: Annotated[
        bool | None,
        typer.Option("--overdue/--on-time", help="Past the stage deadline, or not. Default: any."),
    ] = None,
    needs_attention: Annotated[
        bool | None,
        typer.Option(
            "--needs-attention/--no-attention", help="Parked for an operator, or not. Default: any."
        ),
    ] = None,
    review_round: Annotated[int | None, typer.Option(help="Only this review round.")] = None,
    in_flight: Annotated[
        bool | None,
        typer.Option("--in-flight/--ended", help="Still running, or ended. Default: any."),
    ] = None,
    search: Annotated[
        str | None, typer.Option(help="An application id, workflow id, MID or part of a name.")
    ] = None,
    sort: Annotated[str, typer.Option(help="deadline, started, updated or stage_entered.")] = (
        "deadline"
    ),
    limit: Annotated[int, typer.Option(help="Rows per page (at most 500).")] = 50,
    page: Annotated[int, typer.Option(min=1, help="Which page, from 1.")] = 1,
    as_json: JsonOption = False,
    gateway_url: GatewayUrlOption = DEFAULT_GATEWAY_URL,
    token: TokenOption = None,
) -> None:
    """List applications, filtered like the gateway's list API (GET /api/applications)."""
    offset = (page - 1) * limit
    wanted: dict[str, str | None] = {
        "stage": stage,
        "channel": channel,
        "merchant_type": merchant_type,
        "overdue": _flag(overdue),
        "needs_attention": _flag(needs_attention),
        "review_round": None if review_round is None else str(review_round),
        "in_flight": _flag(in_flight),
        "q": search,
        "sort": sort,
        "limit": str(limit),
        "offset": str(offset),
    }
    params = {k: v for k, v in wanted.items() if v is not None}
    with _gateway(gateway_url, token) as gateway:
        response = gateway.get("/api/applications", params)
        listed = gateway.json("/api/applications", params, response)
        if not isinstance(listed, list):
            raise GatewayError(
                f"{gateway.url}/api/applications did not answer with a list: "
                "is this the posflow gateway?"
            )
        rows: list[dict[str, Any]] = [masked(row) for row in listed]
        header = response.headers.get("X-Total-Count", "")
        total = int(header) if header.isdigit() else offset + len(rows)

    if as_json:
        _print_json({"total": total, "offset": offset, "limit": limit, "applications": rows})
        return
    console = _console()
    if rows:
        wide = console.width >= TABLE_WIDTH
        console.print(_applications_table(rows) if wide else _applications_blocks(rows))
        first, last = offset + 1, offset + len(rows)
        more = f"; next page: --page {page + 1}" if last < total else ""
        console.print(f"showing {first}–{last} of {total}{more}")
    elif total:
        console.print(f"no applications on page {page}: {total} match in all")
    else:
        console.print("no applications match")


def _applications_blocks(rows: list[dict[str, Any]]) -> RenderableType:
    """The list for a narrow terminal: each application on three lines, nothing cut."""
    blocks: list[RenderableType] = []
    for row in rows:
        if row.get("ended_at"):
            deadline = Text.assemble(("ended ", "dim"), _when(row["ended_at"]))
        else:
            deadline = Text.assemble(
                "deadline ", _deadline_cell(row.get("stage_deadline"), bool(row.get("overdue")))
            )
        attention = row.get("attention_kind")
        blocks.append(
            Text.assemble(
                (str(row.get("application_id", "")), "bold"),
                f"  {row.get('merchant_name', '')} ({row.get('channel', '')})\n  ",
                (str(row.get("stage", "")), "bold"),
                f" since {_when(row.get('stage_entered_at'))}, round {row.get('review_round', '')}",
                "\n  ",
                deadline,
                *((", attention: ", (str(attention), "yellow")) if attention else ()),
            )
        )
    blocks.append(Text("times in China time (UTC+8)", style="dim"))
    return Group(*blocks)


def _applications_table(rows: list[dict[str, Any]]) -> Table:
    # Where space is short the other columns wrap around the id and the stage; nothing is cut.
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption="times in China time (UTC+8)",
        caption_justify="left",
    )
    table.add_column("application", no_wrap=True)
    table.add_column("merchant", overflow="fold")
    table.add_column("channel", overflow="fold")
    table.add_column("stage", no_wrap=True)
    table.add_column("in stage since", overflow="fold", min_width=10)
    table.add_column("deadline", overflow="fold", min_width=10)
    table.add_column("round", justify="right", overflow="fold")
    table.add_column("attention", overflow="fold")
    for row in rows:
        if row.get("ended_at"):
            deadline = Text.assemble(_stacked(row["ended_at"]), "\n", ("ended", "dim"))
        else:
            deadline = _deadline_cell(
                row.get("stage_deadline"), bool(row.get("overdue")), narrow=True
            )
        table.add_row(
            _text(row.get("application_id")),
            _text(row.get("merchant_name")),
            _text(row.get("channel")),
            _text(row.get("stage")),
            _text(_stacked(row.get("stage_entered_at"))),
            deadline,
            _text(row.get("review_round")),
            Text(str(row.get("attention_kind") or ""), style="yellow"),
        )
    return table


# --- posflow apps show ---------------------------------------------------------------------------


@apps_app.command("show")
def show_application(
    application_id: Annotated[str, typer.Argument(help="The application id.")],
    as_json: JsonOption = False,
    gateway_url: GatewayUrlOption = DEFAULT_GATEWAY_URL,
    token: TokenOption = None,
) -> None:
    """One application as its workflow reports it (GET /api/applications/{id}): stage, deadline,
    documents, review rounds, terminals, shipment and the timeline."""
    with _gateway(gateway_url, token) as gateway:
        status = gateway.json(f"/api/applications/{quote(application_id, safe='')}")
        if not isinstance(status, dict):
            raise GatewayError(f"{gateway.url} did not answer with an application")
    status = masked(status)
    if as_json:
        _print_json(status)
        return
    console = _console()
    for part in _status_parts(status):
        console.print(part)


def _status_parts(status: dict[str, Any]) -> Iterator[RenderableType]:
    stage = str(status.get("stage", ""))
    yield Text.assemble(
        (str(status.get("application_id", "")), "bold"), "  ", str(status.get("merchant_name", ""))
    )
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("stage", Text(f"{stage} since {_when_relative(status.get('stage_entered_at'))}"))
    deadline = (status.get("deadlines") or {}).get("stage_deadline")
    if stage not in FINISHED:
        facts.add_row("stage deadline", _deadline_cell(deadline, _deadline_passed(deadline)))
    facts.add_row(
        "channel",
        _text(
            f"{status.get('channel', '')} · {status.get('merchant_type', '')} · "
            f"fulfilment {status.get('fulfilment', '')}"
        ),
    )
    facts.add_row("review round", _text(status.get("round")))
    facts.add_row("MID", _text(status.get("mid") or "—"))
    contract = status.get("contract") or {}
    if contract.get("contract_id"):
        signed = contract.get("signed_at")
        facts.add_row(
            "contract",
            _text(
                f"{contract['contract_id']}, "
                + (f"signed {_when(signed)}" if signed else "not signed yet")
            ),
        )
    attention = status.get("attention")
    if attention:
        facts.add_row(
            "attention",
            Text.assemble(
                (str(attention.get("kind", "")), "bold yellow"),
                f" at {attention.get('step', '')}: {attention.get('reason', '')} "
                f"(since {_when(attention.get('since'))}"
                f"{'; retry allowed' if attention.get('retryable') else ''}"
                f"{'; skip allowed' if attention.get('skippable') else ''})",
            ),
        )
    else:
        facts.add_row("attention", Text("none"))
    if status.get("withdrawal_reason"):
        facts.add_row("withdrawal", _text(status["withdrawal_reason"]))
    documents = status.get("documents") or {}
    facts.add_row("documents on file", _text(", ".join(documents.get("on_file") or []) or "none"))
    facts.add_row(
        "outstanding documents", _text(", ".join(documents.get("outstanding") or []) or "none")
    )
    if documents.get("requested_by_review"):
        facts.add_row("requested by review", _text(", ".join(documents["requested_by_review"])))
    yield facts

    issues = documents.get("issues") or []
    if issues:
        table = Table(title="document issues", title_justify="left")
        for name in ("field", "code", "message"):
            table.add_column(name)
        for issue in issues:
            table.add_row(
                _text(issue.get("field")), _text(issue.get("code")), _text(issue.get("message"))
            )
        yield table

    rounds = (status.get("review") or {}).get("rounds") or []
    if rounds:
        table = Table(title="review rounds", title_justify="left")
        for name in ("round", "opened (China)", "decision", "reviewer", "decided (China)"):
            table.add_column(name)
        table.add_column("reasons / documents asked for")
        for item in rounds:
            wanted = [*(item.get("reasons") or []), *(item.get("required_documents") or [])]
            table.add_row(
                _text(item.get("round")),
                _text(_when(item.get("opened_at"))),
                _text(item.get("outcome") or "pending"),
                _text(item.get("reviewer") or "—"),
                _text(_when(item.get("decided_at"))),
                _text("; ".join(str(w) for w in wanted)),
            )
        yield table

    terminals = status.get("terminals") or []
    if terminals:
        table = Table(title="terminals", title_justify="left")
        for name in ("serial", "model", "TID", "activated (China)"):
            table.add_column(name)
        for terminal in terminals:
            table.add_row(
                _text(terminal.get("serial")),
                _text(terminal.get("model")),
                _text(terminal.get("tid") or "—"),
                _text(_when(terminal.get("activated_at"))),
            )
        yield table

    shipment = status.get("shipment")
    if shipment:
        delivered = shipment.get("delivered_at")
        yield Text.assemble(
            ("shipment ", "bold"),
            f"{shipment.get('carrier', '')} {shipment.get('tracking_number', '')}: ",
            f"delivered {_when(delivered)}" if delivered else "not delivered yet",
            f" ({len(shipment.get('scans') or [])} scans)",
        )

    timeline = status.get("timeline") or []
    table = Table(title="timeline", title_justify="left")
    for name in ("at (China)", "stage", "event", "detail"):
        table.add_column(name)
    for event in timeline:
        table.add_row(
            _text(_when(event.get("at"))),
            _text(event.get("stage")),
            _text(event.get("kind")),
            _text(event.get("detail")),
        )
    yield table


# --- posflow apps watch --------------------------------------------------------------------------


@apps_app.command("watch")
def watch(
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 5.0,
    iterations: Annotated[
        int | None,
        typer.Option(min=1, help="Stop after this many refreshes. Default: until Ctrl-C."),
    ] = None,
    days: Annotated[float, typer.Option(help="Count outcomes over this many days.")] = 7.0,
    gateway_url: GatewayUrlOption = DEFAULT_GATEWAY_URL,
    token: TokenOption = None,
) -> None:
    """Live counts per stage in flight, overdue, needing attention and outcomes
    (GET /api/overview), refreshed every --interval seconds."""
    console = _console()
    params = {"days": f"{days:g}"}
    with _gateway(gateway_url, token) as gateway:
        first = _overview(gateway, params)  # a wrong URL or token ends the command at once
        try:
            if console.is_terminal:
                with Live(console=console, auto_refresh=False) as live:
                    for view in _views(gateway, params, first, interval, iterations):
                        live.update(view, refresh=True)
            else:  # piped or logged: one block per refresh
                for view in _views(gateway, params, first, interval, iterations):
                    console.print(view)
        except KeyboardInterrupt:
            pass


def _overview(gateway: Gateway, params: dict[str, str]) -> dict[str, Any]:
    data = gateway.json("/api/overview", params)
    if not isinstance(data, dict) or not isinstance(data.get("in_flight"), dict):
        raise GatewayError(f"{gateway.url}/api/overview is not the posflow gateway's overview")
    return data


def _views(
    gateway: Gateway,
    params: dict[str, str],
    first: dict[str, Any],
    interval: float,
    iterations: int | None,
) -> Iterator[RenderableType]:
    """One view per refresh; the gateway going away mid-watch is shown, not fatal."""
    data: dict[str, Any] | None = first
    problem = ""
    shown = 0
    while True:
        if data is not None:
            yield _overview_view(gateway.url, data)
        else:
            yield Text.assemble(("gateway unavailable: ", "bold red"), problem, "; retrying")
        shown += 1
        if iterations is not None and shown >= iterations:
            return
        time.sleep(interval)
        try:
            data = _overview(gateway, params)
        except GatewayError as err:
            if err.lasting:
                raise
            data, problem = None, err.message


def _overview_view(url: str, data: dict[str, Any]) -> RenderableType:
    stages = Table(title="in flight", title_justify="left")
    stages.add_column("stage")
    stages.add_column("applications", justify="right")
    for stage, count in data["in_flight"].items():
        stages.add_row(_text(stage), _text(count))
    stages.add_row(Text("total", style="bold"), Text(str(data.get("in_flight_total", 0))))

    outcomes = Table(title=f"ended since {_when(data.get('since'))}", title_justify="left")
    outcomes.add_column("outcome")
    outcomes.add_column("applications", justify="right")
    for outcome, count in (data.get("outcomes") or {}).items():
        outcomes.add_row(_text(outcome), _text(count))

    overdue, attention = int(data.get("overdue", 0)), int(data.get("needs_attention", 0))
    return Group(
        Text.assemble(("posflow ", "bold"), f"{url} at {_clock(data.get('now'))} (China time)"),
        stages,
        Text.assemble(
            "overdue: ",
            (str(overdue), "bold red" if overdue else ""),
            "   needs attention: ",
            (str(attention), "bold yellow" if attention else ""),
            f"   started: {data.get('started', 0)}",
        ),
        outcomes,
    )
