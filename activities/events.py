"""Push, then pull: read what a service recorded for an application.

Services answer the workflow through signed callbacks, and a callback can be lost on the way.
When a stage's deadline passes with no word, the workflow asks the service for every message it
recorded for the application (`GET /applications/{id}/events` on any of the four services) and
applies the ones it missed; each carries its message id, so one the gateway also delivers is a
duplicate. A read has no idempotency key: asking twice changes nothing.

One activity reaches every service: `ReadServiceEvents.service` names it. An unknown name is a
non-retryable error (a bug, not an outage); a 4xx is a refusal, a 5xx or an unreachable service
is left to the activity's retry policy (`ServiceClient.call`).
"""

from __future__ import annotations

from collections.abc import Mapping

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import catalog
from activities.http import DEFAULT_PORTS, ServiceClient, path, service_url
from schemas import steps

SERVICES = tuple(DEFAULT_PORTS)  # review, contract, device, logistics


class EventActivities:
    """The events read, with one HTTP client per service made on first use."""

    def __init__(self, base_urls: Mapping[str, str] | None = None) -> None:
        self._base_urls = dict(base_urls or {})
        self._clients: dict[str, ServiceClient] = {}

    def client(self, service: str) -> ServiceClient:
        if service not in SERVICES:
            raise ApplicationError(
                f"no service {service!r}: expected one of {', '.join(SERVICES)}",
                {"service": service},
                type="unknown_service",
                non_retryable=True,
            )
        if service not in self._clients:
            url = self._base_urls.get(service) or service_url(service)
            self._clients[service] = ServiceClient(service, url)
        return self._clients[service]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    @activity.defn(name=catalog.READ_SERVICE_EVENTS)
    async def read_service_events(self, request: steps.ReadServiceEvents) -> steps.ServiceEvents:
        where = (
            path("merchants", request.merchant_id, "events")
            if request.merchant_id
            else path("applications", request.application_id, "events")
        )
        return await self.client(request.service).call("GET", where, steps.ServiceEvents)


def event_activities(base_urls: Mapping[str, str] | None = None) -> EventActivities:
    """The events read against `base_urls[service]`, else `service_url(service)`."""
    return EventActivities(base_urls)
