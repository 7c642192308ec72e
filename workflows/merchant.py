"""A merchant's life after go-live as one long-running workflow (skeleton: being written)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from schemas.merchant import (
        ClosureRequest,
        FaultReport,
        FeePaid,
        InspectionResult,
        MerchantOutcome,
        MerchantStart,
        MerchantStatus,
        RebindingDecision,
        RebindingRequest,
        TerminalOrder,
    )
    from schemas.messages import Ack, AdminAction, DeliveryOutcome, TerminalActivated


@workflow.defn(name="MerchantAccount")
class MerchantAccount:
    @workflow.run
    async def run(self, start: MerchantStart) -> MerchantOutcome:
        raise NotImplementedError

    @workflow.query
    def status(self) -> MerchantStatus:
        raise NotImplementedError

    @workflow.update
    async def fee_paid(self, paid: FeePaid) -> Ack:
        raise NotImplementedError

    @workflow.update
    async def inspection_result(self, result: InspectionResult) -> Ack:
        raise NotImplementedError

    @workflow.update
    async def delivery_outcome(self, outcome: DeliveryOutcome) -> Ack:
        raise NotImplementedError

    @workflow.update
    async def terminal_activated(self, report: TerminalActivated) -> Ack:
        raise NotImplementedError

    @workflow.update
    async def rebinding_decision(self, decision: RebindingDecision) -> Ack:
        raise NotImplementedError

    @workflow.update
    async def report_fault(self, report: FaultReport) -> Ack:
        raise NotImplementedError

    @workflow.update
    async def order_terminals(self, order: TerminalOrder) -> Ack:
        raise NotImplementedError

    @workflow.update
    async def rebind_settlement(self, request: RebindingRequest) -> Ack:
        raise NotImplementedError

    @workflow.update
    async def request_closure(self, request: ClosureRequest) -> Ack:
        raise NotImplementedError

    @workflow.update
    def retry(self, action: AdminAction) -> Ack:
        raise NotImplementedError

    @workflow.update
    def extend_deadline(self, action: AdminAction) -> Ack:
        raise NotImplementedError
