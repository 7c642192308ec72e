"""`posflow demo`: submit generated applications to a running gateway and watch them settle.

The policy runs the month-long process in seconds; the sandbox services of `posflow up` move
each case along. About one application in ten carries a bad identity card (it is refused with a
422 and, never corrected, expires), one in seven is a high-risk jewellery shop (site survey
first), and one in twenty a prohibited category (rejected).

The demo starts applications as an admin (only an admin may override the policy) and plays the
merchant with a merchant key: `POSFLOW_TOKEN` and `POSFLOW_MERCHANT_KEY`, else, for a gateway on
this machine, the admin token and the merchant key `posflow up` wrote to its credentials file.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from cli.samples import Sample, sample
from workers.config import ALL_CHANNELS, CredentialsError, is_loopback, stored_credentials

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


@dataclass
class DemoResult:
    submitted: int = 0
    refused_documents: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    supplemented: int = 0
    unfinished: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


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


def samples(count: int, seed: int) -> list[Sample]:
    result = []
    for n in range(count):
        s = seed + n
        category = "prepaid_cards" if n % 20 == 19 else "jewelry" if n % 7 == 6 else "retail"
        result.append(sample(s, bad_document=n % 10 == 3, category=category))
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


async def run_demo(gateway_url: str, count: int, seed: int, patience: float) -> DemoResult:
    result = DemoResult()
    started = time.monotonic()
    batch = samples(count, seed)
    credentials = DemoCredentials.for_gateway(gateway_url)
    async with (
        httpx.AsyncClient(base_url=gateway_url, timeout=30, headers=credentials.admin) as admin,
        httpx.AsyncClient(base_url=gateway_url, timeout=30, headers=credentials.merchant) as http,
    ):

        async def submit(s: Sample) -> None:
            app = s.application
            body = {**app.model_dump(mode="json"), "policy": DEMO_POLICY}
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
                pending.discard(app_id)

        async def merchant(s: Sample) -> None:
            await submit(s)
            app_id = s.application.application_id
            while app_id in pending and time.monotonic() - started < patience:
                await follow(app_id)
                await asyncio.sleep(0.5)

        await asyncio.gather(*(merchant(s) for s in batch))
        result.submitted = len(batch)
        result.supplemented = len(supplemented)
        result.unfinished = {app_id: stages.get(app_id, "?") for app_id in pending}
    result.seconds = time.monotonic() - started
    return result
