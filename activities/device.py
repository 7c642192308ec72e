"""Device activities: the workflow's terminal steps, carried out by the device service over HTTP.

Each passes the step's idempotency key as the `Idempotency-Key` header, so a retried activity
never reserves twice or allocates a second MID. A refusal (4xx) is a non-retryable
ApplicationError named by the service's error code; an unreachable service or a 5xx is left to
the activity's retry policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from activities import catalog
from activities.http import ServiceClient, path, service_url
from schemas import steps


class DeviceActivities:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    def all(self) -> list[Callable[..., Any]]:
        """The activities to register on a worker."""
        return [
            self.reserve_terminals,
            self.register_terminals,
            self.release_terminals,
            self.issue_activation_codes,
            self.run_test_transaction,
            self.enable_acquiring,
        ]

    @activity.defn(name=catalog.RESERVE_TERMINALS)
    async def reserve_terminals(self, request: steps.ReserveTerminals) -> steps.TerminalsReserved:
        return await self.client.send(
            "/reservations",
            request,
            steps.TerminalsReserved,
            fields={"application_id", "model", "quantity"},
        )

    @activity.defn(name=catalog.REGISTER_TERMINALS)
    async def register_terminals(
        self, request: steps.RegisterTerminals
    ) -> steps.TerminalsRegistered:
        return await self.client.send(
            path("reservations", request.reservation_id, "registration"),
            request,
            steps.TerminalsRegistered,
            fields={
                "application_id",
                "merchant_name",
                "serials",
                "settlement_holder",
                "settlement_bank",
                "settlement_account_last4",
                "install_address",
            },
        )

    @activity.defn(name=catalog.RELEASE_TERMINALS)
    async def release_terminals(self, request: steps.ReleaseTerminals) -> steps.Undone:
        return await self.client.send(
            path("reservations", request.reservation_id, "release"),
            request,
            steps.Undone,
            fields={"reason"},
        )

    @activity.defn(name=catalog.ISSUE_ACTIVATION_CODES)
    async def issue_activation_codes(
        self, request: steps.IssueActivationCodes
    ) -> steps.ActivationCodesIssued:
        return await self.client.send(
            "/activation-codes",
            request,
            steps.ActivationCodesIssued,
            fields={"application_id", "mid", "terminals"},
        )

    @activity.defn(name=catalog.RUN_TEST_TRANSACTION)
    async def run_test_transaction(
        self, request: steps.RunTestTransaction
    ) -> steps.TestTransactionResult:
        return await self.client.send(
            "/test-transactions",
            request,
            steps.TestTransactionResult,
            fields={"application_id", "mid", "serial", "tid"},
        )

    @activity.defn(name=catalog.ENABLE_ACQUIRING)
    async def enable_acquiring(self, request: steps.EnableAcquiring) -> steps.AcquiringEnabled:
        return await self.client.send(
            path("merchants", request.mid, "acquiring"),
            request,
            steps.AcquiringEnabled,
            fields={"application_id", "tids"},
        )


def device_activities(base_url: str | None = None) -> DeviceActivities:
    """The device activities against `base_url`, else `POSFLOW_DEVICE_URL` or the embedded
    stack's address."""
    return DeviceActivities(ServiceClient("device", base_url or service_url("device")))
