"""The gateway's Prometheus metrics: applications per stage, overdue and needing attention (read
from the projection at each scrape), messages by source and outcome (the answer given: applied,
duplicate, pending, refused, invalid, failed), what the pending ones became, snapshots applied,
requests refused before they reached a workflow, and the latency of every route."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from gateway.store import Store


class _ProjectionCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        per_stage, overdue, attention = self.store.gauges()
        stages = GaugeMetricFamily(
            "posflow_applications", "Applications by current stage", labels=["stage"]
        )
        for stage, count in sorted(per_stage.items()):
            stages.add_metric([stage], count)
        yield stages
        yield GaugeMetricFamily(
            "posflow_applications_overdue",
            "Applications in flight past their stage deadline",
            value=overdue,
        )
        yield GaugeMetricFamily(
            "posflow_applications_needing_attention",
            "Applications in flight parked or flagged for operations",
            value=attention,
        )


class GatewayMetrics:
    """One registry per gateway app (tests run several in one process)."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_ProjectionCollector(store))
        self.messages = Counter(
            "posflow_gateway_messages",
            "Messages received (callbacks, documents, admin actions) by outcome",
            ["source", "kind", "outcome"],
            registry=self.registry,
        )
        self.settled = Counter(
            "posflow_gateway_messages_settled",
            "Messages answered pending, by what finally became of them",
            ["source", "kind", "outcome"],
            registry=self.registry,
        )
        self.awaiting = Gauge(
            "posflow_gateway_messages_awaiting",
            "Messages answered pending whose outcome this gateway is still waiting for",
            registry=self.registry,
        )
        self.projections = Counter(
            "posflow_gateway_projections",
            "Workflow snapshots received: applied, or older than the one held",
            ["result"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "posflow_gateway_refusals",
            "Requests refused before they reached a workflow (unauthenticated, forbidden, bad "
            "or replayed signature, too large, invalid, unknown application), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "posflow_gateway_request_seconds",
            "HTTP request latency by route",
            ["method", "route", "status"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )

    def message(self, source: str, kind: str, outcome: str) -> None:
        self.messages.labels(source, kind, outcome).inc()

    def message_settled(self, source: str, kind: str, outcome: str) -> None:
        self.settled.labels(source, kind, outcome).inc()

    def refusal(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def projection_applied(self, applied: bool) -> None:
        self.projections.labels("applied" if applied else "stale").inc()

    async def exposition(self) -> Response:
        """The Prometheus text of this registry (what `GET /metrics` answers)."""
        # Collecting reads the store: off the event loop, like every other store read.
        body = await asyncio.to_thread(generate_latest, self.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def install(self, app: FastAPI) -> None:
        """Time every request under its route's template (not its path: ids are unbounded)."""

        @app.middleware("http")
        async def _timed(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            started = time.perf_counter()
            response = await call_next(request)
            self.latency.labels(
                request.method, _route(request), f"{response.status_code // 100}xx"
            ).observe(time.perf_counter() - started)
            return response


def _route(request: Request) -> str:
    """The template of the route that answered (FastAPI leaves it in the scope), or `unmatched`."""
    route = request.scope.get("route")
    return str(getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched")
