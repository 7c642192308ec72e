"""How long a bulk `posflow admin retry` of N parked cases takes (default 100), end to end.

1. Starts a Temporal dev server (the `temporal` binary of the venv, in a temporary directory),
   the gateway (`gateway.app.create_app`, served by uvicorn on loopback in this process), and a
   worker with the real workflow, the stand-in services of the tests (`tests.standins`) and the
   real projection activity, so the gateway's store follows every case.
2. Makes terminal registration fail, starts N applications through the gateway and drives each
   (documents, review, contract) until it parks on that step: N cases needing attention.
3. Heals the service and runs the real CLI in a subprocess, over HTTP, as an admin would:
   `posflow admin retry --kind needs_attention --stage preparing_devices --reason ... --rate R
   --json`. Times the CLI (from its start to its report: reading the failures list, sending N
   retries at the rate, every answer) and the time until every case has left the step (the
   workflow ran it again and moved on to delivery).

Once per rate in `--rates` (default 10, the CLI's default, and 200): each round parks N new
cases. Prints the figures; asserts nothing; exits 1 only if a retry was not applied.

Measured 2026-12-02 on 2 CPUs (x86_64, Python 3.11.7; the machine shared, load average 5.7):
100 parked cases, --rate 10: every retry answered in 10.1 s (the rate's bound), the CLI 12.2 s
from start to report, every case past the step 13.2 s after the CLI started; --rate 200: the
retries answered in 4.7 s (21 a second), every case past the step after 14.9 s.

    python -m bench.bulk_retry [--count 100] [--rates 10,200]

Not part of `make test` (`make bench-bulk-retry`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from temporalio.testing import WorkflowEnvironment

from activities import catalog
from activities.projection import ProjectionActivities
from gateway.app import SIGNERS, GatewaySettings, create_app
from schemas.messages import ReviewOutcome
from schemas.policy import policy_for
from schemas.status import Stage
from services.stack import serve, stop_all
from tests.factories import individual_application
from tests.scenario import Run
from tests.servers import free_port
from tests.standins import StandIns
from workers.codec import KEYRING_ENV, KeyRing
from workers.temporal import build_worker, data_converter, register_search_attributes
from workflows.onboarding import PosOnboarding

BIN = Path(sys.executable).parent
ADMIN = "bench-admin-token"
SECRETS = {s: f"{s}-bench-secret-0123456789" for s in SIGNERS}
POLICY: dict[str, Any] = {
    "document_deadline": "PT1H",
    "document_reminders": ["PT30M"],
    "review_sla": "PT1H",
    "review_deadline": "PT2H",
    "site_survey_deadline": "PT1H",
    "contract_deadline": "PT1H",
    "contract_reminders": ["PT30M"],
    "mail_delivery_deadline": "PT1H",
    "installation_deadline": "PT1H",
    "activation_deadline": "PT1H",
    "activation_reminders": ["PT30M"],
    "training_deadline": "PT1H",
    "training_reminders": ["PT30M"],
    "activity_timeout": "PT10S",
    "activity_retry_interval": "PT0.05S",
    "activity_retry_max_interval": "PT0.1S",
    "activity_max_attempts": 2,
}
DRIVERS = 16  # applications driven to their parking at once


@dataclass
class Round:
    rate: float
    count: int
    park_seconds: float
    cli_seconds: float
    sending_seconds: float
    moved_on_seconds: float
    outcomes: dict[str, int]


async def park(http: httpx.AsyncClient, env: WorkflowEnvironment, count: int) -> list[Run]:
    """`count` applications started through the gateway and driven until they park."""
    gate = asyncio.Semaphore(DRIVERS)

    async def one() -> Run:
        async with gate:
            app = individual_application(application_id=f"BR{uuid.uuid4().hex[:10].upper()}")
            body = {**app.model_dump(mode="json"), "policy": POLICY}
            for attempt in range(3):  # a keep-alive connection the server just closed
                try:
                    started = await http.post("/api/applications", json=body)
                    break
                except httpx.TransportError:
                    if attempt == 2:
                        raise
            if started.status_code not in (200, 201):
                raise RuntimeError(f"start refused: {started.status_code} {started.text}")
            handle = env.client.get_workflow_handle_for(PosOnboarding.run, app.workflow_id)
            run = Run(env, handle, app, policy_for(app.channel, POLICY))
            await run.submit()
            await run.decide(ReviewOutcome.APPROVED)
            await run.sign_and_pay()
            await run.until(lambda s: s.attention is not None, "parked", seconds=120)
            return run

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def listed(http: httpx.AsyncClient, ids: set[str]) -> None:
    """Until the gateway's store has every case as needing attention (snapshots are async)."""
    for _ in range(600):
        data = (
            await http.get(
                "/api/admin/failures",
                params={"kind": "needs_attention", "stage": "preparing_devices", "limit": "500"},
            )
        ).json()
        if ids <= {f["application_id"] for f in data["failures"]}:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the parked cases never all reached the failures list")


async def moved_on(runs: list[Run]) -> None:
    async def one(run: Run) -> None:
        await run.until(
            lambda s: s.stage is not Stage.PREPARING_DEVICES, "left the step", seconds=300
        )

    await asyncio.gather(*(one(r) for r in runs))


async def retry_round(
    http: httpx.AsyncClient,
    env: WorkflowEnvironment,
    services: StandIns,
    url: str,
    rate: float,
    count: int,
) -> Round:
    services.fail(catalog.REGISTER_TERMINALS)
    began = time.perf_counter()
    runs = await park(http, env, count)
    await listed(http, {r.app.application_id for r in runs})
    parked = time.perf_counter() - began
    services.heal(catalog.REGISTER_TERMINALS)

    environ = {**os.environ, "POSFLOW_TOKEN": ADMIN, "POSFLOW_GATEWAY_URL": url}
    began = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        str(BIN / "posflow"),
        "admin",
        "retry",
        "--kind",
        "needs_attention",
        "--stage",
        "preparing_devices",
        "--reason",
        "bench: the device service is back",
        "--rate",
        f"{rate:g}",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    out, err = await process.communicate()
    cli = time.perf_counter() - began
    if process.returncode != 0:
        sys.stderr.write(err.decode())
    report = json.loads(out)
    await moved_on(runs)
    done = time.perf_counter() - began
    for run in runs:  # leave nothing waiting on the server
        await run.handle.terminate(reason="bench done")
    return Round(rate, count, parked, cli, float(report["seconds"]), done, dict(report["summary"]))


async def main(count: int, rates: list[float]) -> int:
    # The parked steps' failures are the point here: the SDK's warnings about each are not.
    logging.getLogger("temporalio").setLevel(logging.CRITICAL)
    ring = KeyRing.generate("bench-1", source="the bench's key ring")
    os.environ[KEYRING_ENV] = ring.to_json()
    os.environ.pop("POSFLOW_TOKEN", None)
    with tempfile.TemporaryDirectory(prefix="posflow-bench-") as home:
        env = await WorkflowEnvironment.start_local(
            data_converter=data_converter(ring),
            dev_server_existing_path=str(BIN / "temporal"),
            dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal"],
        )
        await register_search_attributes(env.client)
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        settings = GatewaySettings(
            database_url=f"sqlite:///{Path(home) / 'gateway.db'}",
            task_queue=queue,
            secrets=dict(SECRETS),
            tokens={ADMIN: "admin"},
        )
        served = await serve("gateway", create_app(env.client, settings), free_port())
        projection = ProjectionActivities(base_url=served.url, secret=SECRETS["worker"])
        services = StandIns()
        activities = [*services.activities(projection=False), projection.project_status]
        rounds: list[Round] = []
        try:
            async with (
                build_worker(env.client, queue, activities),
                httpx.AsyncClient(
                    base_url=served.url, timeout=60, headers={"Authorization": f"Bearer {ADMIN}"}
                ) as http,
            ):
                for rate in rates:
                    rounds.append(await retry_round(http, env, services, served.url, rate, count))
        finally:
            await stop_all([served])
            await projection.aclose()
            await env.shutdown()
    print(
        f"bulk retry of parked cases: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, Temporal dev server (in memory); "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'cases':>6} {'rate/s':>7} {'park':>8} {'CLI':>8} {'sending':>8} {'answered/s':>10} "
        f"{'moved on':>9}  outcomes"
    )
    for r in rounds:
        outcomes = ", ".join(f"{n} {k}" for k, n in sorted(r.outcomes.items()))
        print(
            f"{r.count:>6} {r.rate:>7g} {r.park_seconds:>7.1f}s {r.cli_seconds:>7.1f}s "
            f"{r.sending_seconds:>7.1f}s {r.count / r.sending_seconds:>10.1f} "
            f"{r.moved_on_seconds:>8.1f}s  {outcomes}"
        )
    print(
        "park: starting the cases and driving them until all are listed as parked; CLI: "
        "`posflow admin retry` from its start to its report; sending: the CLI's own time from "
        "the first retry sent to the last answer; moved on: from the CLI's start until every "
        "case left the step"
    )
    applied = all(
        sum(r.outcomes.get(k, 0) for k in ("applied", "pending")) == r.count for r in rounds
    )
    return 0 if applied else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="parked cases per round")
    parser.add_argument("--rates", default="10,200", help="the CLI's --rate for each round")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.count, [float(r) for r in args.rates.split(",")])))
