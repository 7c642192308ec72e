"""`posflow demo`: submit generated applications to a running gateway and watch them settle.

The policy runs the month-long process in seconds; the sandbox services of `posflow up` move
each case along. About one application in ten carries a bad identity card (it is refused with a
422 and, never corrected, expires), one in seven is a high-risk jewellery shop (site survey
first), and one in twenty a prohibited category (rejected).

The demo starts applications as an admin (only an admin may override the policy) and plays the
merchant with a merchant key: `POSFLOW_TOKEN` and `POSFLOW_MERCHANT_KEY`, else, for a gateway on
this machine, the admin token and the merchant key `posflow up` wrote to its credentials file.

After go-live each merchant lives a compressed year (`SIMULATED_YEAR`, a minute) for `years`
years: the policy's `merchant` section bills on each anniversary and books inspections by risk
level within seconds. Cohorts are chosen by index, like the onboarding ones (`cohort`): some
merchants pay late or never (the contract service's auto-payer reads the `[late]` / `[unpaid]`
marker in the merchant's name), some fail every first inspection (`[fail-once]` in the street:
the re-inspection passes) or every one (`[fail]`), some have a short contract or a low
`history_limit` (continue-as-new), and the demo itself, through the gateway, reports a faulty
terminal for some (a swap), gives some a new settlement account (reviewed on the bank channel)
and asks to close some. The summary counts how the accounts stand and reads each merchant
workflow's history length from Temporal.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from cli.samples import Sample, new_settlement_account, sample
from workers.config import (
    ALL_CHANNELS,
    CredentialsError,
    TemporalSettings,
    is_loopback,
    stored_credentials,
)

DEMO_POLICY: dict[str, Any] = {
    "document_deadline": "PT20S",
    "document_reminders": ["PT5S"],
    "review_sla": "PT10S",
    "review_deadline": "PT30S",
    "site_survey_deadline": "PT30S",
    "contract_deadline": "PT30S",
    "contract_reminders": ["PT10S"],
    "mail_delivery_deadline": "PT30S",
    "installation_deadline": "PT30S",
    "activation_deadline": "PT30S",
    "activation_reminders": ["PT10S"],
    "training_deadline": "PT30S",
    "training_reminders": ["PT10S"],
    "activity_retry_interval": "PT0.5S",
    "activity_max_attempts": 10,
}
FINISHED = {"live", "rejected", "expired", "cancelled"}

# After go-live a simulated year lasts a minute; the other timings keep roughly their proportion
# to it (within `MerchantOverrides`' bounds), long enough for the sandbox services' automation
# (half a second a step) to answer well inside each of them.
SIMULATED_YEAR = timedelta(seconds=60)
DEMO_MERCHANT_POLICY: dict[str, Any] = {
    "billing_period": "PT60S",  # a bill on each anniversary of go-live
    "payment_period": "PT8S",  # from the bill to its due date
    "fee_reminders": ["PT3S", "PT6S"],
    "grace_period": "PT6S",  # past the due date: then acquiring is suspended
    "suspension_limit": "PT20S",  # suspended this long: the account is closed
    "inspection_intervals": {"low": "PT30S", "medium": "PT20S", "high": "PT10S"},
    "inspection_deadline": "PT10S",
    "remediation_period": "PT10S",
    "rebinding_review_deadline": "PT20S",
    # Three simulated years, like the channels' three real ones: no account outlives the demo
    # by long (the others close at the contract's end, not years after the stack's last use).
    "contract_term": "PT180S",
}
CONTRACT_YEARS = 3
# The lowest history_limit the policy allows: this cohort continues as new within the demo.
SHORT_HISTORY_LIMIT = 200

# What each cohort is meant to show, by the index's last digit (3 is the onboarding's bad
# identity card: those never go live).
COHORTS: dict[str, str] = {
    "short_history": "history_limit 200: continues as new",
    "late": "[late]: pays each bill after its due date",
    "unpaid": "[unpaid]: never pays: suspended, then closed by suspension",
    "fail_once": "[fail-once]: fails each first inspection, passes the re-inspection",
    "short_contract": "a contract term ending half a year before the demo (or 3 years) does",
    "fault": "reports a faulty terminal a quarter year after go-live: swapped",
    "rebinding": "a new settlement account half a year after go-live (reviewed: bank)",
    "closure": "asks to close the account half a year before the demo ends",
    "fail": "[fail]: fails every inspection: suspended, then closed by suspension",
    "plain": "pays on time, passes its inspections",
}
_BY_DIGIT = {
    0: "short_history",
    1: "late",
    2: "unpaid",
    4: "fail_once",
    5: "short_contract",
    6: "fault",
    7: "rebinding",
    8: "closure",
}


def cohort(n: int) -> str:
    """The merchant cohort of the n-th application (0-based), fixed by the index."""
    if n % 20 == 9:
        return "fail"
    return _BY_DIGIT.get(n % 10, "plain")


def merchant_policy(kind: str, years: int) -> dict[str, Any]:
    """The `merchant` section of the demo policy for a cohort."""
    policy = dict(DEMO_MERCHANT_POLICY)
    if kind == "short_history":
        policy["history_limit"] = SHORT_HISTORY_LIMIT
    elif kind == "short_contract":
        term = SIMULATED_YEAR * max(0.5, min(years, CONTRACT_YEARS) - 0.5)
        policy["contract_term"] = f"PT{int(term.total_seconds())}S"
    return policy


def demo_policy(n: int, years: int) -> dict[str, Any]:
    return {**DEMO_POLICY, "merchant": merchant_policy(cohort(n), years)}


@dataclass
class MerchantWatch:
    """One merchant after go-live, as the demo saw it."""

    application_id: str
    index: int
    cohort: str
    channel: str
    mid: str | None = None
    requests: dict[str, str] = field(default_factory=dict)  # kind -> the gateway's answer
    status: dict[str, Any] | None = None  # the last status read
    history_events: int | None = None  # every run's history length, from Temporal
    years_elapsed: float = 0.0
    error: str = ""


@dataclass
class DemoResult:
    submitted: int = 0
    refused_documents: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    supplemented: int = 0
    unfinished: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    years: int = 0
    merchants: list[MerchantWatch] = field(default_factory=list)
    history_note: str = ""
    # Each application's channel, and the status of each that went live: how channels differ.
    channels: dict[str, str] = field(default_factory=dict)
    live: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # why history lengths could not be read, if they could not


@dataclass(frozen=True)
class DemoCredentials:
    admin: dict[str, str]  # headers of an admin: starts with a policy
    merchant: dict[str, str]  # headers of the merchant: documents and status

    @classmethod
    def for_gateway(cls, gateway_url: str) -> DemoCredentials:
        token = os.environ.get("POSFLOW_TOKEN")
        key = os.environ.get("POSFLOW_MERCHANT_KEY")
        if is_loopback(httpx.URL(gateway_url).host):
            try:
                stored = stored_credentials()
            except CredentialsError:
                stored = None
            if stored is not None:
                token = token or stored.tokens.get("admin")
                key = key or stored.merchant_keys.get(ALL_CHANNELS)
        admin = {"Authorization": f"Bearer {token}"} if token else {}
        return cls(admin=admin, merchant={"X-Api-Key": key} if key else admin)


_NAME_MARKERS = {"late": "[late]", "unpaid": "[unpaid]"}
_STREET_MARKERS = {"fail_once": "[fail-once]", "fail": "[fail]"}


def samples(count: int, seed: int) -> list[Sample]:
    result = []
    for n in range(count):
        s = seed + n
        # A regulated category now and then: its industry licence is asked and filed.
        category = (
            "prepaid_cards"
            if n % 20 == 19
            else "jewelry"
            if n % 7 == 6
            else "food"
            if n % 9 == 4
            else "retail"
        )
        kind = cohort(n)
        result.append(
            sample(
                s,
                bad_document=n % 10 == 3,
                category=category,
                name_marker=_NAME_MARKERS.get(kind, ""),
                street_marker=_STREET_MARKERS.get(kind, ""),
            )
        )
    return result


async def post_until_answered(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], tries: int = 5
) -> httpx.Response:
    """POST as a merchant's front end would: a timeout or a 503 is sent again with the same
    submission id (answered once, as a duplicate if the first got through), after the
    gateway's Retry-After."""
    for attempt in range(1, tries + 1):
        try:
            response = await http.post(path, json=body)
        except httpx.TimeoutException:
            if attempt == tries:
                raise
            continue
        if response.status_code != 503 or attempt == tries:
            return response
        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
    raise AssertionError("unreachable")


async def run_demo(
    gateway_url: str, count: int, seed: int, patience: float, years: int = 0
) -> DemoResult:
    result = DemoResult(years=years)
    started = time.monotonic()
    batch = samples(count, seed)
    index = {s.application.application_id: n for n, s in enumerate(batch)}
    mids: dict[str, str] = {}
    credentials = DemoCredentials.for_gateway(gateway_url)
    async with (
        httpx.AsyncClient(base_url=gateway_url, timeout=30, headers=credentials.admin) as admin,
        httpx.AsyncClient(base_url=gateway_url, timeout=30, headers=credentials.merchant) as http,
    ):

        async def submit(s: Sample) -> None:
            app = s.application
            policy = demo_policy(index[app.application_id], years) if years else DEMO_POLICY
            body = {**app.model_dump(mode="json"), "policy": policy}
            response = await post_until_answered(admin, "/api/applications", body)
            response.raise_for_status()
            docs = {
                "submission_id": f"{app.application_id}-docs",
                "documents": [d.model_dump(mode="json") for d in s.documents],
            }
            answer = await post_until_answered(
                http, f"/api/applications/{app.application_id}/documents", docs
            )
            if answer.status_code == 422:
                result.refused_documents += 1
            else:
                answer.raise_for_status()

        by_id = {s.application.application_id: s for s in batch}
        pending = set(by_id)
        stages: dict[str, str] = {}
        supplemented: set[tuple[str, int]] = set()
        # Each merchant watches their own application from the moment it is submitted (one
        # status query at a time, a few merchants at once): one asked for documents again must
        # not wait for the other submissions or a sweep over every other case.
        polling = asyncio.Semaphore(16)

        async def follow(app_id: str) -> None:
            async with polling:
                try:
                    answer = await http.get(f"/api/applications/{app_id}")
                except httpx.TimeoutException:
                    return  # a busy stack: look again on the next round
            if answer.status_code != 200:
                return
            status = answer.json()
            stages[app_id] = status["stage"]
            requested = status["documents"]["requested_by_review"]
            round_ = int(status["round"])
            if (
                status["stage"] == "collecting_documents"
                and requested
                and ((app_id, round_) not in supplemented)
            ):
                # The merchant supplies again what the reviewer asked for (补充资料).
                supplemented.add((app_id, round_))
                docs = [
                    d.model_dump(mode="json")
                    for d in by_id[app_id].documents
                    if d.kind.value in requested
                ]
                await post_until_answered(
                    http,
                    f"/api/applications/{app_id}/documents",
                    {"submission_id": f"{app_id}-round-{round_}", "documents": docs},
                )
            if status["stage"] in FINISHED:
                result.outcomes[status["stage"]] += 1
                if status["stage"] == "live" and status.get("mid"):
                    mids[app_id] = status["mid"]
                    result.live[app_id] = status
                pending.discard(app_id)

        async def merchant(s: Sample) -> None:
            await submit(s)
            app_id = s.application.application_id
            while app_id in pending and time.monotonic() - started < patience:
                await follow(app_id)
                await asyncio.sleep(0.5)
            if years and app_id in mids:
                watch = MerchantWatch(
                    application_id=app_id,
                    index=index[app_id],
                    cohort=cohort(index[app_id]),
                    channel=s.application.channel.value,
                    mid=mids[app_id],
                )
                result.merchants.append(watch)
                try:
                    await live_on(admin, http, s, watch, years)
                except httpx.HTTPError as err:
                    watch.error = f"{type(err).__name__}: {err}"

        result.channels = {s.application.application_id: s.application.channel.value for s in batch}
        await asyncio.gather(*(merchant(s) for s in batch))
        result.submitted = len(batch)
        result.supplemented = len(supplemented)
        result.unfinished = {app_id: stages.get(app_id, "?") for app_id in pending}
    if result.merchants:
        result.history_note = await read_history_lengths(result.merchants)
    result.merchants.sort(key=lambda w: w.index)
    result.seconds = time.monotonic() - started
    return result


# --- after go-live -------------------------------------------------------------------------------

# How long the demo waits past the watched years for accounts still closing.
CLOSING_PATIENCE = 60.0


def _at(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


async def _sleep_until(moment: datetime) -> None:
    remaining = (moment - datetime.now(UTC)).total_seconds()
    if remaining > 0:
        await asyncio.sleep(remaining)


async def merchant_status(admin: httpx.AsyncClient, mid: str) -> dict[str, Any] | None:
    """The account's status (`GET /api/merchants/{mid}`), or None while the gateway does not
    know it yet (the onboarding workflow hands over at go-live) or is too busy to answer."""
    try:
        answer = await admin.get(f"/api/merchants/{mid}")
    except httpx.TimeoutException:
        return None
    if answer.status_code != 200:
        return None
    status: dict[str, Any] = answer.json()
    return status


async def known_to_gateway(admin: httpx.AsyncClient, mid: str, patience: float = 60) -> bool:
    """Whether the gateway's store holds the merchant yet (its workflow's first snapshot): a
    merchant key acts only on the merchants its store shows in its channel, so a request sent
    before that is answered 404."""
    give_up = time.monotonic() + patience
    while time.monotonic() < give_up:
        try:
            answer = await admin.get("/api/merchants", params={"q": mid, "limit": 1})
        except httpx.TimeoutException:
            answer = None
        if answer is not None and answer.status_code == 200 and answer.json():
            return True
        await asyncio.sleep(1)
    return False


def _answer(response: httpx.Response) -> str:
    """The gateway's answer to a request, as the summary shows it."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}"
    if response.status_code < 300:
        return str(body.get("outcome", response.status_code))
    return f"{response.status_code} {body.get('error', '')}: {body.get('message', '')}"


async def live_on(
    admin: httpx.AsyncClient, http: httpx.AsyncClient, s: Sample, watch: MerchantWatch, years: int
) -> None:
    """Play the merchant for `years` simulated years after go-live: the cohort's requests at
    their moments, then the account's status once the years are over (and it is not closing)."""
    assert watch.mid is not None
    mid = watch.mid
    status = None
    for _ in range(60):
        status = await merchant_status(admin, mid)
        if status is not None:
            break
        await asyncio.sleep(1)
    if status is None:
        watch.error = f"merchant {mid} unknown to the gateway"
        return
    watch.status = status
    live_at = _at(status["went_live_at"])
    app = s.application
    requester = app.legal_representative.name
    if watch.cohort in ("fault", "rebinding") and not await known_to_gateway(admin, mid):
        watch.error = f"merchant {mid} not in the gateway's list after a minute"
    if watch.cohort == "fault":
        await _sleep_until(live_at + SIMULATED_YEAR / 4)
        status = await merchant_status(admin, mid) or status
        serials = [t["serial"] for t in status["terminals"] if t["state"] == "active"]
        if serials:
            body = {
                "request_id": f"{app.application_id}-fault",
                "serial": serials[0],
                "description": "the card reader does not read chip cards",
                "reported_by": requester,
            }
            answer = await post_until_answered(http, f"/api/merchants/{mid}/faults", body)
            watch.requests["fault"] = _answer(answer)
        else:
            watch.requests["fault"] = "no active terminal to report"
    elif watch.cohort == "rebinding":
        await _sleep_until(live_at + SIMULATED_YEAR / 2)
        account = new_settlement_account(app, 7_000_000 + watch.index)
        body = {
            "request_id": f"{app.application_id}-rebinding",
            "account": account.model_dump(mode="json"),
            "requested_by": requester,
        }
        answer = await post_until_answered(http, f"/api/merchants/{mid}/settlement-account", body)
        watch.requests["rebinding"] = _answer(answer)
    elif watch.cohort == "closure":
        await _sleep_until(live_at + SIMULATED_YEAR * max(0.5, years - 0.5))
        body = {
            "request_id": f"{app.application_id}-closure",
            "reason": "the shop is closing down",
            "requested_by": requester,
        }
        answer = await post_until_answered(admin, f"/api/merchants/{mid}/closure", body)
        watch.requests["closure"] = _answer(answer)
    end = live_at + SIMULATED_YEAR * years
    await _sleep_until(end)
    give_up = time.monotonic() + CLOSING_PATIENCE
    while True:
        status = await merchant_status(admin, mid) or status
        if status["state"] != "closing" or time.monotonic() > give_up:
            break
        await asyncio.sleep(2)
    watch.status = status
    finished = _at(status["closed_at"]) if status.get("closed_at") else datetime.now(UTC)
    watch.years_elapsed = (finished - live_at) / SIMULATED_YEAR


async def read_history_lengths(watches: list[MerchantWatch]) -> str:
    """Each merchant workflow's history length, every run counted: the current run's from
    Temporal (describe) plus the earlier runs' (`history_events` in its status). Returns why
    they could not be read, or ""."""
    from workers.temporal import connect

    settings = replace(TemporalSettings.from_env(), metrics_address=None)
    try:
        client = await connect(settings)
    except Exception as err:  # no Temporal reachable from here: the figures are left out
        return f"Temporal at {settings.address} not reachable ({type(err).__name__})"
    for watch in watches:
        if watch.mid is None or watch.status is None:
            continue
        try:
            described = await client.get_workflow_handle(f"merchant-{watch.mid}").describe()
        except Exception as err:
            watch.error = watch.error or f"describe: {type(err).__name__}: {err}"
            continue
        earlier = sum(int(n) for n in watch.status.get("history_events", []))
        watch.history_events = described.history_length + earlier
    return ""


def _merchant_figures(watches: list[MerchantWatch]) -> list[tuple[str, str]]:
    states = Counter(str(w.status["state"]) for w in watches if w.status)
    causes = Counter(
        str(w.status.get("closure_cause") or "?")
        for w in watches
        if w.status and w.status["state"] == "closed"
    )

    def counted(name: str) -> int:
        return sum(1 for w in watches if w.status and w.status["counters"].get(name, 0) > 0)

    rows = [("merchants watched after go-live", str(len(watches)))]
    for state in ("active", "suspended", "closing", "closed"):
        rows.append((state, str(states[state])))
    for cause in ("requested", "contract_end", "suspension"):
        rows.append((f"  closed: {cause}", str(causes[cause])))
    rows += [
        ("suspended at some point", str(counted("suspensions"))),
        ("bills paid late", str(counted("bills_paid_late"))),
        ("failed an inspection", str(counted("inspections_failed"))),
        ("terminal swapped", str(counted("swaps"))),
        ("settlement account rebound", str(counted("rebindings"))),
        ("re-binding refused by review", str(counted("rebindings_refused"))),
        ("continued as new", str(sum(1 for w in watches if w.status and w.status["run"] > 1))),
        (
            "needing attention",
            str(sum(1 for w in watches if w.status and w.status.get("attentions"))),
        ),
    ]
    return rows


def channel_figures(result: DemoResult) -> dict[str, dict[str, str]]:
    """What the applications that went live saw, per channel, read from their status: the
    deposit and card rate on the contract, how the terminals came, the training, and the
    industry licences filed."""
    figures: dict[str, dict[str, str]] = {}
    for channel in sorted(set(result.channels.values())):
        live = [s for a, s in result.live.items() if result.channels[a] == channel]
        fulfilment: Counter[str] = Counter()
        training: Counter[str] = Counter()
        for status in live:
            fulfilment[
                "pick-up"
                if status.get("pick_up")
                else "on site"
                if status.get("installation")
                else "mail"
            ] += 1
            events = {e["kind"]: e for e in status["timeline"]}
            if "training_declined" in events:
                training["declined"] += 1
            elif (scheduled := events.get("training_scheduled")) is not None:
                sessions = scheduled.get("data", {}).get("sessions", 1)
                training[f"{sessions} session{'s' if sessions != 1 else ''}"] += 1

        def counted(counter: Counter[str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "-"

        figures[channel] = {
            "live": f"{len(live)} of {sum(1 for c in result.channels.values() if c == channel)}",
            "deposit": counted(Counter(s["contract"]["deposit_due"] for s in live)),
            "card rate %": counted(
                Counter(str(s["contract"].get("card_rate_percent") or "-") for s in live)
            ),
            "terminals by": counted(fulfilment),
            "training": counted(training),
            "industry licence": str(
                sum("industry_licence" in s["documents"]["on_file"] for s in live)
            ),
        }
    return figures


def print_channel_summary(console: Console, result: DemoResult) -> None:
    figures = channel_figures(result)
    if not figures:
        return
    table = Table(title="the channels, as their profiles make them differ (live applications)")
    columns = ["channel", *next(iter(figures.values()))]
    for column in columns:
        table.add_column(column)
    for channel, row in figures.items():
        table.add_row(channel, *row.values())
    console.print(table)


def print_merchant_summary(console: Console, result: DemoResult) -> None:
    """The merchants after go-live: how their accounts stand, per cohort, and how long their
    workflows' histories grow per simulated year."""
    watches = result.merchants
    if not result.years:
        return
    year = f"{SIMULATED_YEAR.total_seconds():.0f} s"
    table = Table(title=f"after go-live: {result.years} simulated year(s) of {year}")
    table.add_column("merchants")
    table.add_column("count", justify="right")
    for name, value in _merchant_figures(watches):
        table.add_row(name, value)
    console.print(table)

    per_cohort = Table(title="cohorts (see COHORTS in cli/demo.py)")
    for column in ("cohort", "live", "active", "suspended", "closing", "closed (cause)"):
        per_cohort.add_column(column)
    for kind in COHORTS:
        members = [w for w in watches if w.cohort == kind]
        if not members:
            continue
        states = Counter(str(w.status["state"]) if w.status else "?" for w in members)
        causes = Counter(
            str(w.status.get("closure_cause"))
            for w in members
            if w.status and w.status["state"] == "closed"
        )
        per_cohort.add_row(
            kind,
            str(len(members)),
            str(states["active"]),
            str(states["suspended"]),
            str(states["closing"]),
            ", ".join(f"{n} {c}" for c, n in sorted(causes.items())) or "0",
        )
    console.print(per_cohort)

    if result.history_note:
        console.print(f"history lengths not read: {result.history_note}", markup=False)
    rates = [
        (w.history_events / w.years_elapsed, w)
        for w in watches
        if w.history_events is not None and w.years_elapsed > 0
    ]
    if rates:
        top, top_watch = max(rates, key=lambda r: r[0])
        console.print(
            "history events per simulated year (every run): "
            f"mean {statistics.fmean(r for r, _ in rates):.0f}, "
            f"max {top:.0f} (merchant {top_watch.mid}, {top_watch.cohort}); "
            f"{len(rates)} merchant workflows",
            highlight=False,
        )
    for watch in watches:
        refused = {k: v for k, v in watch.requests.items() if v not in ("applied", "pending")}
        if watch.error or refused:
            console.print(
                f"  {watch.application_id} ({watch.cohort}, MID {watch.mid}): "
                f"{watch.error or refused}",
                markup=False,
                highlight=False,
            )
