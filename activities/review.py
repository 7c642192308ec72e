"""Review activities: open (or reopen) the application's review case, ask for a site survey,
escalate an overdue review, and close the case when the application is undone. Each calls the
review service over HTTP with the step's idempotency key, so a retried activity repeats nothing.

After go-live, the merchant workflow opens a rebinding review of a new settlement account.

Decisions and survey results are not returned here: the review service sends them to the gateway
as signed callbacks, which deliver them to the workflow (a rebinding decision to the merchant's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity

from activities import catalog
from activities.http import ServiceClient, path
from schemas import steps

SERVICE = "review"


class ReviewActivities:
    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    def all(self) -> list[Callable[..., Any]]:
        """The activities to register on a worker."""
        return [
            self.open_review_case,
            self.request_site_survey,
            self.escalate_review,
            self.close_review_case,
            self.open_rebinding_review,
        ]

    @activity.defn(name=catalog.OPEN_REVIEW_CASE)
    async def open_review_case(self, request: steps.OpenReviewCase) -> steps.ReviewCaseOpened:
        return await self.client.send("/cases", request, steps.ReviewCaseOpened)

    @activity.defn(name=catalog.REQUEST_SITE_SURVEY)
    async def request_site_survey(
        self, request: steps.RequestSiteSurvey
    ) -> steps.SiteSurveyRequested:
        return await self.client.send(
            path("cases", request.case_id, "site-surveys"),
            request,
            steps.SiteSurveyRequested,
            fields={"application_id", "address"},
        )

    @activity.defn(name=catalog.ESCALATE_REVIEW)
    async def escalate_review(self, request: steps.EscalateReview) -> steps.Escalated:
        return await self.client.send(
            path("cases", request.case_id, "escalations"),
            request,
            steps.Escalated,
            fields={"application_id", "level", "round", "overdue_since"},
        )

    @activity.defn(name=catalog.CLOSE_REVIEW_CASE)
    async def close_review_case(self, request: steps.CloseReviewCase) -> steps.Undone:
        return await self.client.send(
            path("cases", request.case_id, "close"),
            request,
            steps.Undone,
            fields={"application_id", "reason"},
        )

    @activity.defn(name=catalog.OPEN_REBINDING_REVIEW)
    async def open_rebinding_review(
        self, request: steps.OpenRebindingReview
    ) -> steps.RebindingReviewOpened:
        """Open the review of a merchant's new settlement account (the MID as `merchant_id`,
        else the step's `mid`); the decision comes back as a callback."""
        return await self.client.send("/rebinding-reviews", request, steps.RebindingReviewOpened)


def review_activities(base_url: str | None = None) -> ReviewActivities:
    """Activities against the review service at `base_url`, else `service_url("review")`."""
    return ReviewActivities(ServiceClient(SERVICE, base_url))
