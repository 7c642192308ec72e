"""Every Temporal client and worker is built here, so connection and security settings, the data
converter (pydantic, with the payload codec that encrypts personal data) and interceptors are
decided once."""

from __future__ import annotations

import dataclasses
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
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode, TLSConfig
from temporalio.worker import Replayer, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from workers.codec import EncryptionCodec, KeyRing
from workers.config import TemporalSettings
from workers.interceptors import LogContextInterceptor, SnapshotCourier
from workers.logging import core_logging
from workflows import search_attributes
from workflows.merchant import MerchantAccount
from workflows.onboarding import PosOnboarding


def data_converter(ring: KeyRing | None = None) -> DataConverter:
    """Pydantic payloads, encrypted by the payload codec: with `ring`, or with the configured key
    ring (`workers.codec.load_key_ring`; a missing or malformed one raises `KeyRingError`).

    A failure's message and stack trace travel in its encoded attributes, so the codec encrypts
    them too: an error about a document may quote it.
    """
    codec = EncryptionCodec.from_environment() if ring is None else EncryptionCodec(ring)
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


_converter: DataConverter | None = None


def __getattr__(name: str) -> DataConverter:
    """`DATA_CONVERTER`: the configured converter, built on first use (the key ring is read then,
    not at import). Kept for callers of the constant; new code calls `data_converter()`."""
    global _converter
    if name != "DATA_CONVERTER":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _converter is None:
        _converter = data_converter()
    return _converter


# Time in stage runs from seconds (a demo) to weeks (a merchant who never sends documents).
STAGE_SECONDS = [
    1,
    10,
    60,
    600,
    3600,
    6 * 3600,
    86400,
    3 * 86400,
    7 * 86400,
    14 * 86400,
    30 * 86400,
]
_runtimes: dict[str, Runtime] = {}
INTERCEPTORS = [LogContextInterceptor()]


def runtime_serving_metrics(address: str) -> Runtime:
    """A Temporal runtime (one per address and process) that serves Prometheus `/metrics` on
    `address`: the SDK's own worker and client metrics, and what workflows record on their
    metric meter. Core log lines are forwarded as by `configure_logging`."""
    if address not in _runtimes:
        _runtimes[address] = Runtime(
            telemetry=TelemetryConfig(
                logging=core_logging(),
                metrics=PrometheusConfig(
                    bind_address=address,
                    counters_total_suffix=True,
                    durations_as_seconds=True,
                    histogram_bucket_overrides={"posflow_time_in_stage_seconds": STAGE_SECONDS},
                ),
            )
        )
    return _runtimes[address]


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
        data_converter=data_converter(),
        runtime=runtime_serving_metrics(settings.metrics_address)
        if settings.metrics_address
        else None,
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


def workflow_runner() -> SandboxedWorkflowRunner:
    """The workflow sandbox with every module passed through: the SDK's runtime restrictions
    (the clock, randomness, I/O) still apply to workflow code, but a workflow run no longer
    imports the workflow modules again. That import was most of the CPU a workflow took to be
    created and of the memory it held in the worker's cache (`posflow bench`). It asks that
    workflow modules keep no mutable state at module level (`tests/test_workflow_modules.py`)."""
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_all_modules()
    )


def build_worker(
    client: Client, task_queue: str, activities: Sequence[Any], **tuning: Any
) -> Worker:
    courier = SnapshotCourier.among(activities)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[PosOnboarding, MerchantAccount],
        workflow_runner=workflow_runner(),
        activities=list(activities),
        interceptors=[*INTERCEPTORS, *([courier] if courier else [])],
        **tuning,
    )


def build_replayer(converter: DataConverter | None = None) -> Replayer:
    """A replayer configured as the workers are, for golden histories and admins' replays; it
    reads histories written before the codec existed as well as encrypted ones."""
    return Replayer(
        workflows=[PosOnboarding, MerchantAccount],
        workflow_runner=workflow_runner(),
        data_converter=converter or data_converter(),
        interceptors=INTERCEPTORS,
    )
