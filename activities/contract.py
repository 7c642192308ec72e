"""The contract / e-sign service's activities: issue the agreement, and on the way back void it
and refund the deposit. Each passes the step's idempotency key, so a retry never issues two
contracts or refunds twice."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from temporalio import activity

from activities import catalog
from activities.http import ServiceClient, path
from schemas import steps


class _Issued(BaseModel):
    """The service's answer to `POST /contracts`: the step's result and more (status, due)."""

    model_config = ConfigDict(extra="ignore")

    contract_id: str
    signing_url: str


class ContractActivities:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    @activity.defn(name=catalog.ISSUE_CONTRACT)
    async def issue_contract(self, request: steps.IssueContract) -> steps.ContractIssued:
        issued = await self.client.send("/contracts", request, _Issued)
        return steps.ContractIssued(contract_id=issued.contract_id, signing_url=issued.signing_url)

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


def contract_activities(base_url: str | None = None) -> ContractActivities:
    """The activities against the contract service at `base_url`, else `service_url("contract")`."""
    return ContractActivities(ServiceClient("contract", base_url))
