"""The stack a benchmark runs on: a Temporal dev server of its own (`workers.dev_server`, on a
data file in a temporary home), the sandbox services acting on their own at zero delay and the
gateway, served in this process on free ports, and workers as their own processes
(`bench.harness.worker`), so their memory and CPU can be read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client

from gateway.app import SIGNERS, GatewaySettings, create_app
from services.base import Service, ServiceConfig
from services.stack import Served, serve, stop_all
from workers.codec import KEYRING_ENV, KeyRing
from workers.config import TemporalSettings, role_environment
from workers.dev_server import DevServer
from workers.temporal import connect

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("review", "contract", "device", "logistics", "notification")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory (VmRSS) of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class WorkerProcess:
    kind: str
    queue: str
    cache: int | None
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


class FloorCalls:
    """Where the floor's activities say that their workflow is about to wait (`POST /reached`):
    an ASGI app served in this process, and one event per workflow and wait."""

    def __init__(self) -> None:
        self.events: defaultdict[tuple[str, int], asyncio.Event] = defaultdict(asyncio.Event)

    async def reached(self, workflow_id: str, wait: int) -> None:
        await self.events[(workflow_id, wait)].wait()
        del self.events[(workflow_id, wait)]

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        data = json.loads(body)
        self.events[(data["workflow_id"], int(data["wait"]))].set()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@dataclass
class Stack:
    home: Path
    review_auto: bool = True
    stock: int = 200  # terminals per model the device service starts with
    ports: dict[str, int] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    queue: str = ""
    server: DevServer | None = None
    services: dict[str, Service] = field(default_factory=dict)
    served: dict[str, Served] = field(default_factory=dict)
    client: Client | None = None  # posflow's data converter (pydantic, encrypted)
    floor_client: Client | None = None  # the SDK's default converter, as the floor's worker
    http: httpx.AsyncClient | None = None
    floor_calls: FloorCalls = field(default_factory=FloorCalls)
    workers: list[WorkerProcess] = field(default_factory=list)

    # --- up and down ---------------------------------------------------------------------------

    async def start(self) -> None:
        ring = KeyRing.generate("bench-1", source="the benchmark's key ring")
        os.environ[KEYRING_ENV] = ring.to_json()
        self.ports = {name: free_port() for name in (*SERVICES, "gateway", "floor")}
        self.secrets = {s: f"{s}-{uuid.uuid4().hex[:12]}" for s in SIGNERS}
        self.queue = f"bench-{uuid.uuid4().hex[:8]}"
        self.server = DevServer(
            port=free_port(), ui_port=free_port(), headless=True, db_file=self.home / "temporal.db"
        )
        await self.server.start()
        self.client = await connect(TemporalSettings(address=self.server.address))
        self.floor_client = await Client.connect(self.server.address)
        for name in SERVICES:
            await self.start_service(name)
        app = create_app(
            self.client,
            GatewaySettings(
                database_url=f"sqlite:///{self.home / 'gateway.db'}",
                task_queue=self.queue,
                secrets=dict(self.secrets),
            ),
        )
        self.served["gateway"] = await serve("gateway", app, self.ports["gateway"])
        self.served["floor"] = await serve(
            "floor",
            self.floor_calls,  # type: ignore[arg-type]
            self.ports["floor"],
        )
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        self.http = httpx.AsyncClient(base_url=self.url("gateway"), timeout=120, limits=limits)

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        await stop_all(list(self.served.values()))
        for worker in self.workers:
            await worker.stop()
        if self.server is not None:
            await self.server.stop()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def notify_url(self) -> str:
        return self.url("floor") + "/reached"

    # --- the sandbox services ----------------------------------------------------------------

    def _options(self, name: str) -> dict[str, str]:
        review = {"auto_review": "true", "auto_review_delay_ms": "0"} if self.review_auto else {}
        return {
            "review": review,
            "contract": {
                "auto_sign": "true",
                "auto_sign_delay_ms": "0",
                "auto_pay_bills": "true",
                "auto_pay_delay_ms": "0",
            },
            "logistics": {"auto_progress": "true", "auto_delay_ms": "0"},
            "device": {
                "auto_activate": "true",
                "auto_delay_ms": "0",
                "stock_per_model": str(self.stock),
                "logistics_url": self.url("logistics"),
            },
            "notification": {},
        }[name]

    async def start_service(self, name: str) -> None:
        module = __import__(f"services.{name}", fromlist=["build"])
        self.services[name] = module.build(
            ServiceConfig(
                name=name,
                database_url=f"sqlite:///{self.home / (name + '.db')}",
                gateway_url=self.url("gateway"),
                callback_secret=self.secrets.get(name, "unused"),
                options=self._options(name),
            )
        )
        self.served[name] = await serve(name, self.services[name].app, self.ports[name])

    async def set_review_auto(self, auto: bool) -> None:
        """Serve the review service again with its auto-reviewer on or off (same data)."""
        self.review_auto = auto
        await stop_all([self.served.pop("review")])
        await self.start_service("review")

    # --- workers -------------------------------------------------------------------------------

    def worker_env(self, queue: str) -> dict[str, str]:
        assert self.server is not None
        env = role_environment()
        env.update(
            {
                "TEMPORAL_ADDRESS": self.server.address,
                "POSFLOW_TASK_QUEUE": queue,
                "POSFLOW_HOME": str(self.home),
                "POSFLOW_GATEWAY_URL": self.url("gateway"),
                "POSFLOW_WORKER_SECRET": self.secrets["worker"],
                "POSFLOW_WORKER_METRICS": f"127.0.0.1:{free_port()}",
                "POSFLOW_LOG_FORMAT": "json",
            }
        )
        for name in SERVICES:
            env[f"POSFLOW_{name.upper()}_URL"] = self.url(name)
        return env

    async def start_worker(
        self, kind: str, queue: str | None = None, cache: int | None = None
    ) -> WorkerProcess:
        queue = queue or self.queue
        log = self.home / f"worker-{kind}-{len(self.workers):02d}.log"
        command = [sys.executable, "-m", "bench.harness.worker", kind, "--queue", queue]
        if cache is not None:
            command += ["--cache", str(cache)]
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                *command,
                env=self.worker_env(queue),
                cwd=str(REPO),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
            )
        deadline = time.monotonic() + 120
        while b"ready" not in log.read_bytes():
            if process.returncode is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the {kind} worker did not start:\n{tail}")
            await asyncio.sleep(0.05)
        worker = WorkerProcess(kind, queue, cache, process, log)
        self.workers.append(worker)
        return worker

    async def stop_worker(self, worker: WorkerProcess) -> None:
        await worker.stop()
        self.workers.remove(worker)

    # --- what the processes use ----------------------------------------------------------------

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the dev server, each worker, and this process (gateway,
        services, driver)."""
        assert self.server is not None and self.server.pid is not None
        times = os.times()
        found = {"server": cpu_seconds(self.server.pid), "harness": times.user + times.system}
        for worker in self.workers:
            found[f"worker_{worker.kind}"] = cpu_seconds(worker.pid)
        return found
