"""Every Temporal client and worker is built here, so connection and security settings, the data
converter and interceptors are decided once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode, TLSConfig
from temporalio.worker import Worker

from workers.config import TemporalSettings
from workflows import search_attributes
from workflows.onboarding import PosOnboarding

DATA_CONVERTER = pydantic_data_converter


async def connect(settings: TemporalSettings) -> Client:
    tls: TLSConfig | bool = False
    if settings.tls_cert and settings.tls_key:
        tls = TLSConfig(
            client_cert=settings.tls_cert.read_bytes(),
            client_private_key=settings.tls_key.read_bytes(),
            server_root_ca_cert=settings.tls_ca.read_bytes() if settings.tls_ca else None,
        )
    elif settings.api_key:
        tls = True
    return await Client.connect(
        settings.address,
        namespace=settings.namespace,
        api_key=settings.api_key,
        tls=tls,
        data_converter=DATA_CONVERTER,
    )


async def register_search_attributes(
    client: Client, keys: Sequence[SearchAttributeKey[Any]] = search_attributes.ALL
) -> list[str]:
    """Register the custom search attributes the server does not know yet; returns those added.

    A workflow that upserts an unknown attribute fails its task forever, so this runs before any
    worker starts.
    """
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
        known = set(listed.custom_attributes)
    except RPCError as err:
        # The time-skipping test server can add search attributes but not list them.
        if err.status is not RPCStatusCode.UNIMPLEMENTED:
            raise
        known = set()
    missing = {
        key.name: IndexedValueType.ValueType(key.indexed_value_type.value)
        for key in keys
        if key.name not in known
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
        )
    return sorted(missing)


def build_worker(
    client: Client, task_queue: str, activities: Sequence[Any], **tuning: Any
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[PosOnboarding],
        activities=list(activities),
        **tuning,
    )
