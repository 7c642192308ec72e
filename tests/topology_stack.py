"""posflow spread over processes, as a cluster deployment runs it (tests/test_topology.py): a
throwaway PostgreSQL cluster on loopback holding posflow's store, a Temporal dev server, several
`posflow worker` processes, each sandbox service in its own process, and two gateways behind one
round-robin address.

Run as a module, it serves one HTTP role on a given port, configured by the environment alone
(as `posflow services` and `posflow gateway` do on their fixed ports):

    python -m tests.topology_stack service review 18101
    python -m tests.topology_stack gateway 18000
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response

from gateway.app import SIGNERS
from services.stack import Served, serve, stop_all
from tests.faults_stack import AUTO_DELAY_MS, FaultStack, WorkerProcess
from tests.servers import free_port
from workers.config import TemporalSettings, role_environment
from workers.temporal import connect

REPO = Path(__file__).resolve().parents[1]


# --- PostgreSQL ------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL binaries (`apt-get install postgresql`), the newest major version;
    None when it is not installed."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class Postgres:
    """A throwaway cluster in a temporary directory, listening on 127.0.0.1 only, on a free port;
    `trust` authentication for the `postgres` superuser (nobody else can reach it). PostgreSQL
    refuses to run as root: under root (CI) it runs as the `postgres` user Debian's package
    creates, in a directory that user owns."""

    bin: Path
    port: int = 0
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="posflow-pg-")))
    user: str | None = None  # the OS user it runs as; None: this process's
    process: subprocess.Popen[bytes] | None = None

    def _owner(self) -> dict[str, Any]:
        """`subprocess` arguments that run a command as the cluster's owner."""
        if self.user is None:
            return {}
        owner = pwd.getpwnam(self.user)
        return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

    def start(self) -> None:
        self.port = self.port or free_port()
        if os.geteuid() == 0:
            self.user = "postgres"
            owner = pwd.getpwnam(self.user)
            os.chown(self.home, owner.pw_uid, owner.pw_gid)
        data = self.home / "data"
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **self._owner(),
        )
        log = (self.home / "postgres.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.home),
                "-c",
                "max_connections=300",
                # A throwaway cluster: durability on disk is not what is tested here.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.home,
            **self._owner(),
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.home / "postgres.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL did not start:\n{tail}")
            time.sleep(0.1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """A running throwaway cluster for the block (raises if PostgreSQL is not installed)."""
    binaries = postgres_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
    cluster = Postgres(binaries)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# --- one address in front of two gateways ----------------------------------------------------


def round_robin(backends: list[str], counts: Counter[str]) -> FastAPI:
    """A reverse proxy that sends each request to the next backend in turn (what a load balancer
    in front of two gateways does); `counts` tallies the requests each backend answered."""
    clients = [httpx.AsyncClient(base_url=b, timeout=120) for b in backends]
    turn = itertools.cycle(range(len(backends)))
    app = FastAPI()
    hop = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def forward(path: str, request: Request) -> Response:
        index = next(turn)
        response = await clients[index].request(
            request.method,
            "/" + path,
            params=list(request.query_params.multi_items()),
            content=await request.body(),
            headers={k: v for k, v in request.headers.items() if k.lower() not in hop},
        )
        counts[backends[index]] += 1
        return Response(
            response.content,
            status_code=response.status_code,
            headers={k: v for k, v in response.headers.items() if k.lower() not in hop},
        )

    return app


# --- the stack -------------------------------------------------------------------------------

SERVICE_NAMES = ("review", "contract", "device", "logistics", "notification")
GATEWAYS = ("gateway-a", "gateway-b")


@dataclass
class Role:
    """One HTTP role in its own process (`python -m tests.topology_stack ...`)."""

    name: str
    port: int
    process: asyncio.subprocess.Process
    log: Path


@dataclass
class TopologyStack(FaultStack):
    """A `FaultStack` (its merchants, waits and audit) whose every role is its own process and
    whose store is PostgreSQL: services and gateways read their settings from the environment,
    as in a cluster deployment; the audit reads the services' PostgreSQL databases."""

    pg: Postgres | None = None
    databases: dict[str, str] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    proxy: Served | None = None
    proxied: Counter[str] = field(default_factory=Counter)
    stopped_workers: list[int | None] = field(default_factory=list)  # their exit codes

    async def start(self) -> None:
        assert self.pg is not None
        names = (*SERVICE_NAMES, *GATEWAYS, "proxy")
        self.ports = {name: free_port() for name in names}
        self.ports["gateway"] = self.ports["proxy"]  # what FaultStack's helpers call
        self.secrets = {s: f"{s}-{uuid.uuid4().hex}" for s in SIGNERS}
        self.queue = f"topology-{self.name}"
        for name in ("gateway", *SERVICE_NAMES):
            self.databases[name] = self.pg.create_database(name)
        self.server_port = free_port()
        self.server = self._dev_server()
        await self.server.start()
        self.proxy = await serve(
            "proxy", round_robin([self.url(g) for g in GATEWAYS], self.proxied), self.ports["proxy"]
        )
        await self.add_worker()  # registers the search attributes before anything starts
        await asyncio.gather(
            *(self.start_role("service", name) for name in SERVICE_NAMES),
            *(self.start_role("gateway", name) for name in GATEWAYS),
        )
        self.client = await connect(TemporalSettings(address=self.server.address))
        self.gateway = httpx.AsyncClient(base_url=self.url("proxy"), timeout=120)

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.aclose()
        if self.proxy is not None:
            await stop_all([self.proxy])
        processes = [r.process for r in self.roles.values()] + [w.process for w in self.workers]
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self.server is not None:
            await self.server.stop()

    # --- the processes -----------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        """The outer environment without posflow's, Temporal's or a database's settings (the
        tests' payload key ring excepted), and what every role of this stack shares."""
        assert self.server is not None
        env = role_environment()
        env.update(
            {
                "TEMPORAL_ADDRESS": self.server.address,
                "POSFLOW_TASK_QUEUE": self.queue,
                "POSFLOW_HOME": str(self.home),
                "POSFLOW_GATEWAY_URL": self.url("proxy"),
                "POSFLOW_LOG_FORMAT": "json",
            }
        )
        for signer, secret in self.secrets.items():
            env[f"POSFLOW_{signer.upper()}_SECRET"] = secret
        for name in SERVICE_NAMES:
            env[f"POSFLOW_{name.upper()}_URL"] = self.url(name)
        return env

    def worker_env(self) -> dict[str, str]:
        env = self.base_env()
        env["POSFLOW_WORKER_METRICS"] = f"127.0.0.1:{free_port()}"
        return env

    async def add_worker(self) -> WorkerProcess:
        worker = await self.start_worker()
        self.workers.append(worker)
        return worker

    async def stop_worker(self, worker: WorkerProcess, patience: float = 60) -> int | None:
        """SIGTERM, as a deploy stops a worker: it stops polling and hands back or finishes what
        it holds; returns its exit code."""
        worker.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.process.wait(), patience)
        except TimeoutError:
            worker.process.kill()
            await worker.process.wait()
        self.stopped_workers.append(worker.process.returncode)
        return worker.process.returncode

    def role_env(self, kind: str, name: str) -> dict[str, str]:
        env = self.base_env()
        if kind == "gateway":
            env["POSFLOW_GATEWAY_DATABASE_URL"] = self.databases["gateway"]
            env["POSFLOW_OPEN_GATEWAY"] = "1"  # on loopback: no sign-in, signatures checked
            return env
        env["DATABASE_URL"] = self.databases[name]
        env.update(
            {
                "POSFLOW_REVIEW_AUTO": "true",
                "POSFLOW_REVIEW_AUTO_DELAY_MS": AUTO_DELAY_MS,
                "POSFLOW_CONTRACT_AUTO": "true",
                "POSFLOW_CONTRACT_AUTO_DELAY_MS": AUTO_DELAY_MS,
                "POSFLOW_DEVICE_AUTO": "true",
                "POSFLOW_DEVICE_AUTO_DELAY_MS": AUTO_DELAY_MS,
                "POSFLOW_DEVICE_STOCK": "200",
                "POSFLOW_LOGISTICS_AUTO": "true",
                "POSFLOW_LOGISTICS_AUTO_DELAY_MS": AUTO_DELAY_MS,
            }
        )
        return env

    async def start_role(self, kind: str, name: str, patience: float = 60) -> Role:
        log = self.home / f"{name}.log"
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.topology_stack",
                kind,
                name,
                str(self.ports[name]),
                env=self.role_env(kind, name),
                cwd=str(REPO),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
            )
        role = Role(name, self.ports[name], process, log)
        self.roles[name] = role
        deadline = time.monotonic() + patience
        async with httpx.AsyncClient(base_url=self.url(name), timeout=5) as client:
            while True:
                try:
                    if (await client.get("/health")).status_code == 200:
                        return role
                except httpx.HTTPError:
                    pass
                if process.returncode is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise AssertionError(f"{name} did not start ({process.returncode}):\n{tail}")
                await asyncio.sleep(0.2)

    def _build(self, name: str) -> Any:
        raise NotImplementedError("every service runs in its own process here")

    # --- reading the services' own records (PostgreSQL) --------------------------------------

    def query(self, name: str, sql: str, *params: Any) -> list[dict[str, Any]]:
        import psycopg
        from psycopg.rows import dict_row

        assert self.pg is not None
        with psycopg.connect(
            f"host=127.0.0.1 port={self.pg.port} user=postgres dbname={name}", row_factory=dict_row
        ) as conn:
            return list(conn.execute(sql.replace("?", "%s"), params).fetchall())


# --- one role in this process ------------------------------------------------------------------


async def _serve_role(kind: str, name: str, port: int) -> None:
    import uvicorn

    if kind == "gateway":
        from gateway.app import GatewaySettings, create_app

        app = create_app(await connect(TemporalSettings.from_env()), GatewaySettings.from_env())
    else:
        from services.stack import build

        app = build(name).app
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()  # until SIGTERM or SIGINT


if __name__ == "__main__":
    from workers.logging import configure_logging

    configure_logging()
    kind, name, port = sys.argv[1:4]
    asyncio.run(_serve_role(kind, name, int(port)))
