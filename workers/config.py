"""Settings for connecting to Temporal, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TASK_QUEUE = "pos-onboarding"


@dataclass(frozen=True)
class TemporalSettings:
    address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = DEFAULT_TASK_QUEUE
    api_key: str | None = None  # Temporal Cloud
    tls_cert: Path | None = None  # mTLS client certificate and key, for a self-hosted cluster
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # host:port where this process's Temporal clients and workers serve Prometheus `/metrics`
    # (the SDK's runtime metrics and posflow's stage metrics); None: not served.
    metrics_address: str | None = None

    @classmethod
    def from_env(cls) -> TemporalSettings:
        def path(name: str) -> Path | None:
            value = os.environ.get(name)
            return Path(value) if value else None

        return cls(
            address=os.environ.get("TEMPORAL_ADDRESS", cls.address),
            namespace=os.environ.get("TEMPORAL_NAMESPACE", cls.namespace),
            task_queue=os.environ.get("POSFLOW_TASK_QUEUE", cls.task_queue),
            api_key=os.environ.get("TEMPORAL_API_KEY") or None,
            tls_cert=path("TEMPORAL_TLS_CERT"),
            tls_key=path("TEMPORAL_TLS_KEY"),
            tls_ca=path("TEMPORAL_TLS_CA"),
            metrics_address=os.environ.get("POSFLOW_WORKER_METRICS") or None,
        )


def state_dir() -> Path:
    """Where the embedded stack keeps its files (`.posflow/` in the working directory)."""
    return Path(os.environ.get("POSFLOW_HOME", ".posflow"))
