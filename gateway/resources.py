"""What the routes share, handed to them by `Depends` from the app's state (set once by
`create_app`): the settings, the Temporal client, the store, the metrics and the forwarder; and
the one way a message is sent to its workflow and answered."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from temporalio.client import Client, WorkflowHandle

from gateway.forwarding import Forwarded, Forwarder, answer, describe_ack
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.store import Store
from schemas.application import workflow_id_for
from schemas.messages import Ack
from workers.logging import masked
from workflows.onboarding import PosOnboarding

# The message routes (by route name, which is the message's kind) and who sends each: a body
# they refuse as invalid is kept in the application's audit trail under this source.
SOURCES: dict[str, str] = {}


def settings_of(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


def client_of(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def metrics_of(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


def forwarder_of(request: Request) -> Forwarder:
    forwarder: Forwarder = request.app.state.forwarder
    return forwarder


SettingsDep = Annotated[GatewaySettings, Depends(settings_of)]
ClientDep = Annotated[Client, Depends(client_of)]
StoreDep = Annotated[Store, Depends(store_of)]
MetricsDep = Annotated[GatewayMetrics, Depends(metrics_of)]
ForwarderDep = Annotated[Forwarder, Depends(forwarder_of)]


def workflow(client: Client, application_id: str) -> WorkflowHandle[PosOnboarding, Any]:
    return client.get_workflow_handle_for(PosOnboarding.run, workflow_id_for(application_id))


async def send(
    request: Request, application_id: str, source: str, kind: str, update: Any, payload: BaseModel
) -> Forwarded[Ack]:
    """Send one message (a callback or an action) to its application's workflow and keep it
    with its outcome; raises ApiError when it is refused."""
    return await forwarder_of(request).forward(
        workflow(client_of(request), application_id),
        update,
        payload,
        application_id=application_id,
        source=source,
        kind=kind,
        body=masked(payload.model_dump(mode="json")),
        describe=describe_ack,
    )


async def deliver(
    request: Request, application_id: str, source: str, kind: str, update: Any, payload: BaseModel
) -> JSONResponse:
    """`send`, answered: 200 with the workflow's ack, 202 while pending."""
    forwarded = await send(request, application_id, source, kind, update, payload)
    return answer(forwarded, payload)
