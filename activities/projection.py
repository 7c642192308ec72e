"""Keeping the gateway's lists current: an application's workflow sends a numbered snapshot at
every change of stage, deadline, attention or review round, a merchant's account workflow its
whole status at every change (numbered for the MID across runs), and these activities deliver
them.

Every failure is retried (the policy has no attempt limit): a snapshot the gateway never gets
would leave the list pages wrong, and the next one carries the whole state anyway.
"""

from __future__ import annotations

import os
import time

import httpx
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import catalog
from activities.http import tls_context
from schemas.merchant import MerchantStatus
from schemas.status import Projection, ProjectionReceipt
from services.signing import HEADER, sign
from workers.config import signing_secret

GATEWAY_DEFAULT_URL = "http://127.0.0.1:8000"
PROJECTIONS_PATH = "/api/internal/projections"
MERCHANTS_PATH = "/api/internal/merchants"


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
            base_url=base_url or gateway_url(),
            transport=transport,
            timeout=10.0,
            verify=tls_context(),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    @activity.defn(name=catalog.PROJECT_STATUS)
    async def project_status(self, projection: Projection) -> ProjectionReceipt:
        return await self._deliver(PROJECTIONS_PATH, projection)

    @activity.defn(name=catalog.PROJECT_MERCHANT)
    async def project_merchant(self, status: MerchantStatus) -> ProjectionReceipt:
        """The merchant account's whole status, for the gateway's merchant row (the file kept
        after the workflow is gone); an older version than the gateway holds is ignored there."""
        return await self._deliver(MERCHANTS_PATH, status)

    async def _deliver(self, path: str, snapshot: BaseModel) -> ProjectionReceipt:
        """POST the snapshot signed with the worker's secret; any failure is retried."""
        raw = snapshot.model_dump_json().encode()
        headers = {
            HEADER: sign(raw, self.secret, int(time.time())),
            "Content-Type": "application/json",
        }
        try:
            response = await self._client.post(path, content=raw, headers=headers)
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
