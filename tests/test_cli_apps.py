"""`posflow apps list | show | watch` against the real gateway over real HTTP, as operators see it.

The gateway's store is filled with snapshots at known stages (as workflows send them), except for
`show`, which asks a real workflow on the time-skipping server. The CLI is synchronous, so it
runs in a thread while the gateway answers on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner, Result

from cli.main import app
from gateway.app import GatewaySettings, create_app
from gateway.store import Store
from schemas.documents import DocumentKind
from schemas.status import Attention, AttentionKind, Projection, Stage, StageVisit
from tests.factories import individual_application, valid_documents
from tests.servers import free_port, serving
from tests.standins import StandIns
from workers.config import ensure_credentials, read_credentials
from workers.temporal import build_worker

VIEWER, ADMIN = "viewer-token-1", "admin-token-1"


def snapshot(
    app_id: str,
    path: list[Stage],
    now: datetime,
    *,
    deadline: timedelta | None = None,
    attention: AttentionKind | None = None,
    name: str = "Sunrise Noodles",
    channel: str = "bank",
    review_round: int = 1,
) -> Projection:
    """An application that went through `path`, a day per stage, the last entered an hour ago."""
    entered = [now - timedelta(hours=1, days=len(path) - 1 - n) for n in range(len(path))]
    stage = path[-1]
    return Projection(
        application_id=app_id,
        workflow_id=f"pos-application-{app_id}",
        version=1,
        channel=channel,
        merchant_type="individual",
        merchant_name=name,
        fulfilment="mail",
        stage=stage,
        stage_entered_at=entered[-1],
        stage_deadline=entered[-1] + deadline if deadline else None,
        review_round=review_round,
        attention=Attention(
            kind=attention,
            step="review",
            reason="card 6222021234567890123 refused",
            since=entered[-1],
            retryable=True,
        )
        if attention
        else None,
        started_at=entered[0],
        ended_at=entered[-1] if stage.finished else None,
        visits=[StageVisit(stage=s, entered_at=e) for s, e in zip(path, entered, strict=True)],
    )


DOCS, REVIEW, LIVE = Stage.COLLECTING_DOCUMENTS, Stage.IN_REVIEW, Stage.LIVE


# Ids that are not substrings of one another, so "shown" and "not shown" are unambiguous.
def applications(now: datetime) -> list[Projection]:
    """Five applications, their last stage entered an hour before `now`."""
    return [
        snapshot(
            "A-LATE-DOCS", [DOCS], now, deadline=timedelta(minutes=30), name="Sunrise Noodles"
        ),
        snapshot(
            "A-PARKED-DOCS",
            [DOCS],
            now,
            deadline=timedelta(days=3),
            attention=AttentionKind.STEP_FAILED,
            channel="alipay",
            name="Harbour [Cafe]",
        ),
        snapshot(
            "A-REVIEWING",
            [DOCS, REVIEW],
            now,
            deadline=timedelta(days=2),
            attention=AttentionKind.REVIEW_OVERDUE,
            name="Blue Tea",
        ),
        snapshot(
            "A-SECOND-ROUND",
            [DOCS, REVIEW],
            now,
            deadline=timedelta(days=5),
            review_round=2,
            channel="lakala",
            name="Golden Dragon",
        ),
        snapshot("A-WENT-LIVE", [DOCS, REVIEW, Stage.CONTRACT, LIVE], now, name="Old Market"),
    ]


IDS = ["A-LATE-DOCS", "A-PARKED-DOCS", "A-REVIEWING", "A-SECOND-ROUND", "A-WENT-LIVE"]


@dataclass
class Gateway:
    url: str
    store: Store
    env: WorkflowEnvironment
    task_queue: str
    applications: list[Projection]  # what the store holds
    now: datetime  # when they were made
    home: Path  # the CLI's POSFLOW_HOME: no credentials file unless a test writes one

    async def cli(self, *args: str, **env: str) -> Result:
        """`posflow apps ARGS` against this gateway, in a wide terminal, without a token unless
        `env` has one."""
        environ: dict[str, str | None] = {
            "COLUMNS": "200",
            "POSFLOW_GATEWAY_URL": self.url,
            "POSFLOW_TOKEN": None,
            "POSFLOW_HOME": str(self.home),
            "POSFLOW_CREDENTIALS_FILE": None,
            **env,
        }
        runner = CliRunner()
        return await asyncio.to_thread(lambda: runner.invoke(app, ["apps", *args], env=environ))


@asynccontextmanager
async def running_gateway(
    env: WorkflowEnvironment, tmp_path: Path, tokens: dict[str, str] | None = None
) -> AsyncIterator[Gateway]:
    """The gateway over HTTP on a free port, its store holding `applications(now)`."""
    queue = f"cli-test-{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(
        database_url=f"sqlite:///{tmp_path / f'gateway-{queue}.db'}",
        task_queue=queue,
        tokens=tokens or {},
        open=tokens is None,  # without tokens: the open gateway of POSFLOW_OPEN_GATEWAY=1
    )
    gateway_app = create_app(env.client, settings)
    store: Store = gateway_app.state.store
    now = datetime.now(UTC)
    held = applications(now)
    assert sorted(a.application_id for a in held) == IDS
    for application in held:
        assert store.apply(application) == (True, 1)
    async with serving(gateway_app) as url:
        home = tmp_path / f"home-{queue}"
        home.mkdir()
        yield Gateway(url, store, env, queue, held, now, home)


@pytest.fixture
async def gateway(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(env, tmp_path) as served:
        yield served


def shown(output: str) -> list[str]:
    """The application ids in a listing, in the order shown."""
    return [i for _, i in sorted((output.index(i), i) for i in IDS if i in output)]


def entry(output: str, app_id: str) -> list[str]:
    """The lines showing one application: from its id to the next one (or the table's end)."""
    lines = output.splitlines()
    first = next(n for n, line in enumerate(lines) if app_id in line)
    rest = lines[first + 1 :]
    end = next(
        (n for n, line in enumerate(rest) if any(i in line for i in IDS) or not line.strip()),
        len(rest),
    )
    return lines[first : first + 1 + end]


def china(moment: datetime | None) -> str:
    assert moment is not None
    return moment.astimezone(timezone(timedelta(hours=8))).strftime("%Y-%m-%d %H:%M")


# --- list ----------------------------------------------------------------------------------------


async def test_list_shows_every_application_with_stage_deadline_and_attention(
    gateway: Gateway,
) -> None:
    result = await gateway.cli("list")
    assert result.exit_code == 0, result.output
    # By deadline, soonest first; the one without a deadline (ended) last.
    assert shown(result.output) == [
        "A-LATE-DOCS",
        "A-REVIEWING",
        "A-PARKED-DOCS",
        "A-SECOND-ROUND",
        "A-WENT-LIVE",
    ]
    assert "showing 1–5 of 5" in result.output
    assert "times in China time (UTC+8)" in result.output
    late = entry(result.output, "A-LATE-DOCS")
    assert "collecting_documents" in late[0] and "Sunrise Noodles" in late[0]
    assert "overdue" in "\n".join(late)
    # Times in China time, as the dashboard shows them: the date above the time in a cell.
    since, deadline = (
        china(gateway.applications[0].stage_entered_at),
        china(gateway.applications[0].stage_deadline),
    )
    assert re.search(rf"{since[:10]}\s+{deadline[:10]}", late[0])
    assert re.search(rf"{since[11:]}\s+{deadline[11:]}", late[1])
    parked = "\n".join(entry(result.output, "A-PARKED-DOCS"))
    assert "overdue" not in parked and "step_failed" in parked and "(in 3.0 d)" in parked
    assert "Harbour [Cafe]" in parked  # a name is data, never rich markup
    second = entry(result.output, "A-SECOND-ROUND")[0]
    assert re.search(r"in_review .* 2 ", second) and "lakala" in second
    live = "\n".join(entry(result.output, "A-WENT-LIVE"))
    assert "ended" in live and "overdue" not in live


async def test_list_on_a_narrow_terminal_shows_each_application_whole(gateway: Gateway) -> None:
    result = await gateway.cli("list", COLUMNS="80")
    assert result.exit_code == 0, result.output
    assert shown(result.output)[:2] == ["A-LATE-DOCS", "A-REVIEWING"]
    assert all(len(line) <= 80 for line in result.output.splitlines())
    late = gateway.applications[0]
    assert entry(result.output, "A-LATE-DOCS") == [
        "A-LATE-DOCS  Sunrise Noodles (bank)",
        f"  collecting_documents since {china(late.stage_entered_at)}, round 1",
        f"  deadline {china(late.stage_deadline)} overdue",
    ]
    parked = entry(result.output, "A-PARKED-DOCS")
    assert parked[2].endswith("(in 3.0 d), attention: step_failed")
    assert "showing 1–5 of 5" in result.output


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--stage", "collecting_documents"], ["A-LATE-DOCS", "A-PARKED-DOCS"]),
        (["--stage", "in_review", "--review-round", "2"], ["A-SECOND-ROUND"]),
        (["--overdue"], ["A-LATE-DOCS"]),
        (["--on-time", "--stage", "collecting_documents"], ["A-PARKED-DOCS"]),
        (["--needs-attention"], ["A-REVIEWING", "A-PARKED-DOCS"]),
        (["--no-attention", "--in-flight"], ["A-LATE-DOCS", "A-SECOND-ROUND"]),
        (["--ended"], ["A-WENT-LIVE"]),
        (["--channel", "alipay"], ["A-PARKED-DOCS"]),
        (["--merchant-type", "enterprise"], []),
        (["--search", "dragon"], ["A-SECOND-ROUND"]),
        (["--search", "A-REVIEWING"], ["A-REVIEWING"]),
        # Latest start first (ties by id), where the default sorts by deadline.
        (
            ["--sort", "started", "--in-flight"],
            ["A-LATE-DOCS", "A-PARKED-DOCS", "A-REVIEWING", "A-SECOND-ROUND"],
        ),
    ],
)
async def test_list_filters_reach_the_gateway(
    gateway: Gateway, options: list[str], expected: list[str]
) -> None:
    result = await gateway.cli("list", *options)
    assert result.exit_code == 0, result.output
    if expected:
        assert shown(result.output) == expected
        assert f"showing 1–{len(expected)} of {len(expected)}" in result.output
    else:
        assert shown(result.output) == [] and "no applications match" in result.output


async def test_list_json_is_plain_and_pages(gateway: Gateway) -> None:
    result = await gateway.cli("list", "--json", "--limit", "2", "--page", "2")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing but JSON on stdout
    assert data["total"] == 5 and data["offset"] == 2 and data["limit"] == 2
    assert [row["application_id"] for row in data["applications"]] == [
        "A-PARKED-DOCS",
        "A-SECOND-ROUND",
    ]
    row = data["applications"][0]
    assert row["stage"] == "collecting_documents" and row["overdue"] is False
    assert row["attention_kind"] == "step_failed"
    assert "6222021234567890123" not in result.stdout  # masked, as the API gives it

    filtered = json.loads((await gateway.cli("list", "--json", "--overdue")).stdout)
    assert filtered["total"] == 1
    assert [r["application_id"] for r in filtered["applications"]] == ["A-LATE-DOCS"]

    table = await gateway.cli("list", "--limit", "2", "--page", "2")
    assert shown(table.output) == ["A-PARKED-DOCS", "A-SECOND-ROUND"]
    assert "showing 3–4 of 5; next page: --page 3" in table.output
    last = await gateway.cli("list", "--limit", "2", "--page", "3")
    assert shown(last.output) == ["A-WENT-LIVE"] and "showing 5–5 of 5" in last.output
    beyond = await gateway.cli("list", "--limit", "2", "--page", "9")
    assert beyond.exit_code == 0 and "no applications on page 9: 5 match in all" in beyond.output


async def test_a_bad_filter_is_refused_by_name_with_exit_2(gateway: Gateway) -> None:
    result = await gateway.cli("list", "--stage", "on_the_moon")
    assert result.exit_code == 2
    assert "the request has invalid fields (HTTP 422)" in result.stderr
    assert "stage (--stage):" in result.stderr and "in_review" in result.stderr  # valid ones
    assert result.stdout == "" and "Traceback" not in result.output

    both = await gateway.cli("list", "--limit", "0", "--sort", "colour", "--json")
    assert both.exit_code == 2 and both.stdout == ""
    assert "limit (--limit):" in both.stderr and "sort (--sort):" in both.stderr


async def test_an_unreachable_gateway_is_named_without_a_traceback(gateway: Gateway) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    for command in (["list"], ["show", "A-LATE-DOCS"], ["watch", "--iterations", "1"]):
        result = await gateway.cli(*command, "--gateway-url", nowhere)
        assert result.exit_code == 1, result.output
        assert f"cannot reach the gateway at {nowhere}" in result.stderr
        assert "Traceback" not in result.output and result.exception is not None
        assert isinstance(result.exception, SystemExit)


# --- show ----------------------------------------------------------------------------------------


async def test_show_an_unknown_application_says_so(gateway: Gateway) -> None:
    result = await gateway.cli("show", "NOBODY-HERE")
    assert result.exit_code == 1
    assert "error: no application NOBODY-HERE (HTTP 404)" in result.stderr
    assert result.stdout == ""


async def test_show_a_running_workflow_with_its_documents_and_timeline(gateway: Gateway) -> None:
    application = individual_application(application_id=f"CLI{uuid.uuid4().hex[:10].upper()}")
    app_id = application.application_id
    documents = [d.model_dump(mode="json") for d in valid_documents(application)]
    card = next(d for d in documents if d["kind"] == DocumentKind.IDENTITY_CARD.value)
    bad_number = card["number"][:-1] + ("1" if card["number"][-1] != "1" else "2")
    card["number"] = bad_number
    worker = build_worker(gateway.env.client, gateway.task_queue, StandIns().activities())
    async with worker, httpx.AsyncClient(base_url=gateway.url, timeout=20) as http:
        started = await http.post("/api/applications", json=application.model_dump(mode="json"))
        assert started.status_code == 201, started.text
        refused = await http.post(
            f"/api/applications/{app_id}/documents",
            json={"submission_id": "s1", "documents": documents},
        )
        assert refused.status_code == 422, refused.text

        result = await gateway.cli("show", app_id)
        assert result.exit_code == 0, result.output
        out = result.output
        assert app_id in out and application.merchant.name in out
        assert re.search(r"stage\s+collecting_documents since", out)
        assert re.search(r"stage deadline\s+\d{4}-\d\d-\d\d \d\d:\d\d \(in ", out)
        assert re.search(r"outstanding documents\s+identity_card", out)
        assert "documents.identity_card.number" in out  # the issue, by field
        assert bad_number not in out
        assert re.search(r"review round\s+1", out) and re.search(r"attention\s+none", out)
        timeline = out[out.index("timeline") :]
        assert "stage_entered" in timeline or "collecting_documents" in timeline

        as_json = await gateway.cli("show", app_id, "--json")
        status = json.loads(as_json.stdout)
        assert status["application_id"] == app_id and status["stage"] == "collecting_documents"
        assert status["documents"]["outstanding"] == ["identity_card"]
        assert status["timeline"] and bad_number not in as_json.stdout
        # Every timeline event is a row, at its time in China.
        for event in status["timeline"]:
            at = datetime.fromisoformat(event["at"]).astimezone(timezone(timedelta(hours=8)))
            assert at.strftime("%Y-%m-%d %H:%M") in timeline
            assert event["kind"] in timeline


# --- watch ---------------------------------------------------------------------------------------


def count_of(output: str, name: str) -> int:
    match = re.search(rf"│ {re.escape(name)}\s+│\s+(\d+) │", output)
    assert match, f"no {name} row in\n{output}"
    return int(match.group(1))


async def test_watch_once_prints_the_counts_of_the_store(gateway: Gateway) -> None:
    result = await gateway.cli("watch", "--iterations", "1")
    assert result.exit_code == 0, result.output
    overview = gateway.store.overview(gateway.now - timedelta(days=7), datetime.now(UTC))
    for stage, count in overview.in_flight.items():
        assert count_of(result.output, stage) == count
    assert count_of(result.output, "collecting_documents") == 2
    assert count_of(result.output, "in_review") == 2
    assert count_of(result.output, "total") == overview.in_flight_total == 4
    assert "overdue: 1" in result.output and "needs attention: 2" in result.output
    assert count_of(result.output, "live") == overview.outcomes["live"] == 1
    assert count_of(result.output, "rejected") == 0


async def test_watch_refreshes_live_in_a_terminal(gateway: Gateway) -> None:
    result = await gateway.cli(
        "watch", "--iterations", "2", "--interval", "0.1", FORCE_COLOR="1", TERM="xterm"
    )
    assert result.exit_code == 0, result.output
    assert "\x1b[?25l" in result.output  # rich.live took the screen (and hid the cursor)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.output)
    assert plain.count("(China time)") >= 2  # redrawn in place at each refresh
    assert count_of(plain, "collecting_documents") == 2
    assert "overdue: 1" in plain


# --- tokens --------------------------------------------------------------------------------------


async def test_a_gateway_with_tokens_wants_one(env: WorkflowEnvironment, tmp_path: Path) -> None:
    async with running_gateway(env, tmp_path, {VIEWER: "viewer", ADMIN: "admin"}) as gateway:
        anonymous = await gateway.cli("list")
        assert anonymous.exit_code == 1 and anonymous.stdout == ""
        assert "a bearer token is required (HTTP 401)" in anonymous.stderr
        assert "--token" in anonymous.stderr and "POSFLOW_TOKEN" in anonymous.stderr
        wrong = await gateway.cli("watch", "--iterations", "1", "--token", "not-a-token")
        assert wrong.exit_code == 1 and "a bearer token is required" in wrong.stderr

        viewer = await gateway.cli("list", "--overdue", POSFLOW_TOKEN=VIEWER)
        assert viewer.exit_code == 0, viewer.output
        assert shown(viewer.output) == ["A-LATE-DOCS"]
        by_option = await gateway.cli("list", "--json", "--token", VIEWER)
        assert json.loads(by_option.stdout)["total"] == 5
        watched = await gateway.cli("watch", "--iterations", "1", POSFLOW_TOKEN=VIEWER)
        assert watched.exit_code == 0 and count_of(watched.output, "in_review") == 2


async def test_without_a_token_the_cli_reads_the_viewer_token_posflow_up_wrote(
    env: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_gateway(env, tmp_path, {VIEWER: "viewer", ADMIN: "admin"}) as gateway:
        path = ensure_credentials(gateway.home / "credentials.json")
        assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600
        stored = read_credentials(path)
        assert stored is not None
        # This gateway knows other tokens: the file's viewer token is sent, and refused.
        refused = await gateway.cli("list")
        assert refused.exit_code == 1 and "HTTP 401" in refused.stderr
        path.write_text(
            replace(stored, tokens={**stored.tokens, "viewer": VIEWER}).to_json(), "utf-8"
        )
        listed = await gateway.cli("list", "--overdue")
        assert listed.exit_code == 0, listed.output
        assert shown(listed.output) == ["A-LATE-DOCS"]
        # A file others may read is not used.
        path.chmod(0o644)
        assert (await gateway.cli("list")).exit_code == 1
