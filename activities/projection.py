"""Keeping the gateway's list of applications current: the workflow sends a numbered snapshot at
every change of stage, deadline, attention or review round, and this activity delivers it.

Every failure is retried (the policy has no attempt limit): a snapshot the gateway never gets
would leave the list pages wrong, and the next one carries the whole state anyway.
"""

from __future__ import annotations

import os
import time

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import catalog
from schemas.status import Projection, ProjectionReceipt
from services.signing import HEADER, sign
from workers.config import signing_secret

GATEWAY_DEFAULT_URL = "http://127.0.0.1:8000"
PROJECTIONS_PATH = "/api/internal/projections"


def gateway_url() -> str:
    return os.environ.get("POSFLOW_GATEWAY_URL", GATEWAY_DEFAULT_URL)


def worker_secret() -> str:
    """`POSFLOW_WORKER_SECRET`, else the credentials file `posflow up` generated."""
    return signing_secret("worker")


class ProjectionActivities:
    def __init__(
        self,
        base_url: str | None = None,
        secret: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.secret = secret or worker_secret()
        self._client = httpx.AsyncClient(
            base_url=base_url or gateway_url(), transport=transport, timeout=10.0
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    @activity.defn(name=catalog.PROJECT_STATUS)
    async def project_status(self, projection: Projection) -> ProjectionReceipt:
        raw = projection.model_dump_json().encode()
        headers = {
            HEADER: sign(raw, self.secret, int(time.time())),
            "Content-Type": "application/json",
        }
        try:
            response = await self._client.post(PROJECTIONS_PATH, content=raw, headers=headers)
        except httpx.HTTPError as err:
            raise ApplicationError(f"gateway unreachable: {type(err).__name__}") from err
        if response.status_code != 200:
            # Retryable, 4xx included: a wrong secret or an older gateway is fixed by deploying,
            # and the snapshot must still arrive afterwards.
            raise ApplicationError(
                f"gateway answered {response.status_code}: {response.text[:200]}",
                type="ProjectionRefused",
            )
        return ProjectionReceipt.model_validate(response.json())
