"""The contract / e-sign service's activities: issue the agreement, and on the way back void it
and refund the deposit; after go-live, bill the merchant's fees, refund a payment and terminate
the contract. Each passes the step's idempotency key, so a retry never issues two contracts or
bills, or refunds twice. A bill's payment comes back as the service's `FeePaid` callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict
from temporalio import activity

from activities import catalog
from activities.http import ServiceClient, path
from activities.notifications import then_tell
from schemas import steps


class _Issued(BaseModel):
    """The service's answer to `POST /contracts`: the step's result and more (status, due)."""

    model_config = ConfigDict(extra="ignore")

    contract_id: str
    signing_url: str


class ContractActivities:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    def all(self) -> list[Callable[..., Any]]:
        """The activities to register on a worker."""
        return [
            self.issue_contract,
            self.void_contract,
            self.refund_deposit,
            self.issue_bill,
            self.refund_payment,
            self.terminate_contract,
        ]

    @activity.defn(name=catalog.ISSUE_CONTRACT)
    async def issue_contract(self, request: steps.IssueContract) -> steps.ContractIssued:
        issued = await self.client.send("/contracts", request, _Issued)
        result = steps.ContractIssued(
            contract_id=issued.contract_id, signing_url=issued.signing_url
        )
        return await then_tell(request, result)

    @activity.defn(name=catalog.VOID_CONTRACT)
    async def void_contract(self, request: steps.VoidContract) -> steps.Undone:
        return await self.client.send(
            path("contracts", request.contract_id, "void"), request, steps.Undone, fields={"reason"}
        )

    @activity.defn(name=catalog.REFUND_DEPOSIT)
    async def refund_deposit(self, request: steps.RefundDeposit) -> steps.Refunded:
        return await self.client.send(
            path("contracts", request.contract_id, "refunds"),
            request,
            steps.Refunded,
            fields={"amount", "payment_reference"},
        )

    @activity.defn(name=catalog.ISSUE_BILL)
    async def issue_bill(self, request: steps.IssueBill) -> steps.BillIssued:
        return await self.client.send(
            path("contracts", request.contract_id, "bills"),
            request,
            steps.BillIssued,
            fields={
                "application_id",
                "merchant_id",
                "period",
                "annual_fee",
                "service_fee",
                "amount",
                "due_at",
            },
        )

    @activity.defn(name=catalog.REFUND_PAYMENT)
    async def refund_payment(self, request: steps.RefundPayment) -> steps.Refunded:
        """A bill's payment (or the deposit) given back: the same refunds as `refund_deposit`."""
        return await self.client.send(
            path("contracts", request.contract_id, "refunds"),
            request,
            steps.Refunded,
            fields={"amount", "payment_reference"},
        )

    @activity.defn(name=catalog.TERMINATE_CONTRACT)
    async def terminate_contract(self, request: steps.TerminateContract) -> steps.Undone:
        return await self.client.send(
            path("contracts", request.contract_id, "termination"),
            request,
            steps.Undone,
            fields={"reason"},
        )


def contract_activities(base_url: str | None = None) -> ContractActivities:
    """The activities against the contract service at `base_url`, else `service_url("contract")`."""
    return ContractActivities(ServiceClient("contract", base_url))
