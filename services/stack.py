"""Serving the sandbox services (and the gateway) with uvicorn until asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from activities.http import DEFAULT_PORTS
from services.base import Service

PORTS = DEFAULT_PORTS  # where the activities look for each service by default
GATEWAY_PORT = 8000


@dataclass
class Served:
    name: str
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]


def build(name: str) -> Service:
    """The named sandbox service, configured from the environment."""
    module = importlib.import_module(f"services.{name}")
    service: Service = module.build()
    return service


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the process hosting it.

    Uvicorn traps Ctrl-C itself and raises it again once it has exited, which cuts short the
    ordered shutdown of the other roles in `posflow up`.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(name: str, app: FastAPI, port: int, host: str = "127.0.0.1") -> Served:
    server = _EmbeddedServer(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start (a port in use, say)
            raise RuntimeError(f"{name} stopped before it started")
        await asyncio.sleep(0.02)
    return Served(name, f"http://{host}:{port}", server, task)


async def stop_all(served: Sequence[Served]) -> None:
    for item in served:
        item.server.should_exit = True
    await asyncio.gather(*(item.task for item in served), return_exceptions=True)
