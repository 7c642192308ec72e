"""Real HTTP for service tests: a FastAPI app served by uvicorn on a free loopback port, and a
recorder that plays the gateway's receiving end for callbacks (verifying their signatures)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response

from services.signing import HEADER, SignatureError, verify
from services.stack import serve, stop_all


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortHold:
    """Free loopback ports held bound until each is released just before it is served: between
    choosing a port and serving on it, a dev server starting meanwhile binds ephemeral ports of
    its own and could take it (seen once: 'address already in use')."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._sockets: dict[str, socket.socket] = {}
        for name in names:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            self._sockets[name] = sock
        self.ports = {name: int(s.getsockname()[1]) for name, s in self._sockets.items()}

    def release(self, name: str) -> int:
        self._sockets.pop(name).close()
        return self.ports[name]

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()


@asynccontextmanager
async def serving(app: FastAPI, port: int | None = None) -> AsyncIterator[str]:
    """Serve `app` (lifespan included) until the block ends; yields its base URL."""
    served = await serve("test", app, port or free_port())
    try:
        yield served.url
    finally:
        await stop_all([served])


@dataclass
class CallbackRecorder:
    """Accepts signed callbacks like the gateway will; can refuse the first N with a 503."""

    secret: str = "dev-secret"
    fail_first: int = 0
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    app: FastAPI = field(default_factory=FastAPI)

    def __post_init__(self) -> None:
        @self.app.post("/{path:path}")
        async def receive(path: str, request: Request) -> Response:
            body = await request.body()
            try:
                verify(body, request.headers.get(HEADER), self.secret, int(time.time()))
            except SignatureError as err:
                self.refused.append(str(err))
                return Response(status_code=401)
            if self.fail_first > 0:
                self.fail_first -= 1
                return Response(status_code=503)
            self.received.append(("/" + path, await request.json()))
            return Response(status_code=200)

    async def wait_for(self, count: int, seconds: float = 10) -> list[tuple[str, dict[str, Any]]]:
        deadline = time.monotonic() + seconds
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} callbacks, got {self.received}")
            await asyncio.sleep(0.02)
        return self.received
