"""The contract / e-sign service's activities: issue the agreement, and on the way back void it
and refund the deposit. Each passes the step's idempotency key, so a retry never issues two
contracts or refunds twice."""

from __future__ import annotations

from urllib.parse import quote

from pydantic import BaseModel, ConfigDict
from temporalio import activity

from activities import catalog
from activities.http import ServiceClient
from schemas import steps


class _Issued(BaseModel):
    """The service's answer to `POST /contracts`: the step's result and more (status, due)."""

    model_config = ConfigDict(extra="ignore")

    contract_id: str
    signing_url: str


def _contract_path(contract_id: str) -> str:
    return f"/contracts/{quote(contract_id, safe='')}"


class ContractActivities:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    @activity.defn(name=catalog.ISSUE_CONTRACT)
    async def issue_contract(self, request: steps.IssueContract) -> steps.ContractIssued:
        issued = await self.client.call(
            "POST",
            "/contracts",
            _Issued,
            idempotency_key=request.idempotency_key,
            body=request.model_dump(mode="json", exclude={"idempotency_key"}),
        )
        return steps.ContractIssued(contract_id=issued.contract_id, signing_url=issued.signing_url)

    @activity.defn(name=catalog.VOID_CONTRACT)
    async def void_contract(self, request: steps.VoidContract) -> steps.Undone:
        return await self.client.call(
            "POST",
            _contract_path(request.contract_id) + "/void",
            steps.Undone,
            idempotency_key=request.idempotency_key,
            body={"reason": request.reason},
        )

    @activity.defn(name=catalog.REFUND_DEPOSIT)
    async def refund_deposit(self, request: steps.RefundDeposit) -> steps.Refunded:
        return await self.client.call(
            "POST",
            _contract_path(request.contract_id) + "/refunds",
            steps.Refunded,
            idempotency_key=request.idempotency_key,
            body={"amount": str(request.amount), "payment_reference": request.payment_reference},
        )


def contract_activities(base_url: str | None = None) -> ContractActivities:
    """The activities against the contract service at `base_url`, else `service_url("contract")`."""
    return ContractActivities(ServiceClient("contract", base_url))
