"""Device activities: the workflow's terminal steps, carried out by the device service over HTTP.

Each passes the step's idempotency key as the `Idempotency-Key` header, so a retried activity
never reserves twice or allocates a second MID. A refusal (4xx) is a non-retryable
ApplicationError named by the service's error code; an unreachable service or a 5xx is left to
the activity's retry policy.

After go-live the merchant workflow asks for the same steps and its own (acquiring suspended or
reinstated, more terminals, swaps, unbinding, re-binding, retirement) with `merchant_id` set:
it is sent only then, so onboarding's requests stay exactly as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import catalog
from activities.http import ServiceClient, path, service_url
from activities.notifications import then_tell
from schemas import steps

# The device service's route for each `ChangeAcquiring.action`.
ACQUIRING_ACTIONS = {"suspend": "suspension", "reinstate": "reinstatement"}


def _fields(request: steps.Step, *names: str) -> set[str]:
    """The step's fields to send, with `merchant_id` when the merchant workflow set it."""
    return {*names, "merchant_id"} if request.merchant_id else set(names)


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
            self.change_acquiring,
            self.register_more_terminals,
            self.swap_terminal,
            self.unbind_terminal,
            self.bind_settlement,
            self.retire_merchant,
        ]

    @activity.defn(name=catalog.RESERVE_TERMINALS)
    async def reserve_terminals(self, request: steps.ReserveTerminals) -> steps.TerminalsReserved:
        return await self.client.send(
            "/reservations",
            request,
            steps.TerminalsReserved,
            fields=_fields(request, "application_id", "model", "quantity"),
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
        issued = await self.client.send(
            "/activation-codes",
            request,
            steps.ActivationCodesIssued,
            fields=_fields(request, "application_id", "mid", "terminals"),
        )
        return await then_tell(request, issued)

    @activity.defn(name=catalog.RUN_TEST_TRANSACTION)
    async def run_test_transaction(
        self, request: steps.RunTestTransaction
    ) -> steps.TestTransactionResult:
        return await self.client.send(
            "/test-transactions",
            request,
            steps.TestTransactionResult,
            fields=_fields(request, "application_id", "mid", "serial", "tid"),
        )

    @activity.defn(name=catalog.ENABLE_ACQUIRING)
    async def enable_acquiring(self, request: steps.EnableAcquiring) -> steps.AcquiringEnabled:
        enabled = await self.client.send(
            path("merchants", request.mid, "acquiring"),
            request,
            steps.AcquiringEnabled,
            fields={"application_id", "tids"},
        )
        return await then_tell(request, enabled)

    # --- after go-live: the merchant's account ---

    @activity.defn(name=catalog.CHANGE_ACQUIRING)
    async def change_acquiring(self, request: steps.ChangeAcquiring) -> steps.AcquiringChanged:
        route = ACQUIRING_ACTIONS.get(request.action)
        if route is None:
            raise ApplicationError(
                f"no acquiring action {request.action!r}: suspend or reinstate",
                type="invalid_action",
                non_retryable=True,
            )
        return await self.client.send(
            path("merchants", request.mid, "acquiring", route),
            request,
            steps.AcquiringChanged,
            fields=_fields(request, "application_id", "reason"),
        )

    @activity.defn(name=catalog.REGISTER_MORE_TERMINALS)
    async def register_more_terminals(
        self, request: steps.RegisterMoreTerminals
    ) -> steps.TerminalsRegistered:
        return await self.client.send(
            path("merchants", request.mid, "terminals"),
            request,
            steps.TerminalsRegistered,
            fields=_fields(request, "application_id", "reservation_id", "serials"),
        )

    @activity.defn(name=catalog.SWAP_TERMINAL)
    async def swap_terminal(self, request: steps.SwapTerminal) -> steps.TerminalSwapped:
        return await self.client.send(
            path("merchants", request.mid, "swaps"),
            request,
            steps.TerminalSwapped,
            fields=_fields(
                request,
                "application_id",
                "faulty_serial",
                "replacement_serial",
                "reservation_id",
                "move_tid",
            ),
        )

    @activity.defn(name=catalog.UNBIND_TERMINAL)
    async def unbind_terminal(self, request: steps.UnbindTerminal) -> steps.Undone:
        return await self.client.send(
            path("terminals", request.serial, "unbinding"),
            request,
            steps.Undone,
            fields=_fields(request, "application_id", "mid", "reason"),
        )

    @activity.defn(name=catalog.BIND_SETTLEMENT)
    async def bind_settlement(self, request: steps.BindSettlement) -> steps.SettlementBound:
        return await self.client.send(
            path("merchants", request.mid, "settlement"),
            request,
            steps.SettlementBound,
            fields=_fields(
                request,
                "application_id",
                "holder_name",
                "bank_name",
                "account_kind",
                "account_last4",
            ),
        )

    @activity.defn(name=catalog.RETIRE_MERCHANT)
    async def retire_merchant(self, request: steps.RetireMerchant) -> steps.MerchantRetired:
        return await self.client.send(
            path("merchants", request.mid, "retirement"),
            request,
            steps.MerchantRetired,
            fields=_fields(request, "application_id", "reason"),
        )


def device_activities(base_url: str | None = None) -> DeviceActivities:
    """The device activities against `base_url`, else `POSFLOW_DEVICE_URL` or the embedded
    stack's address."""
    return DeviceActivities(ServiceClient("device", base_url or service_url("device")))
