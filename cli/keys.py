"""`posflow keys init | show | rotate | verify`: the key ring that encrypts payloads in Temporal.

Keys live in the key file (`POSFLOW_KEYRING_FILE`, else `.posflow/keyring.json`, mode 0600) or in
the environment variable `POSFLOW_KEYRING`; nothing here takes a key as an argument or prints
one. `rotate` adds a key and makes it current, keeping the old ones; `verify` reads a workflow's
history from the server and decrypts every payload, which proves that old histories are still
readable after a rotation.
"""

from __future__ import annotations

import asyncio
import os
import stat
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from temporalio.service import RPCError

from workers.codec import (
    KEYRING_ENV,
    EncryptionCodec,
    HistoryCheck,
    KeyRing,
    KeyRingError,
    check_history,
    key_ring_file,
    load_key_ring,
    read_key_ring_file,
    write_key_ring_file,
)

keys_app = typer.Typer(
    help="The key ring that encrypts payloads in Temporal: create, show, rotate, verify.",
    no_args_is_help=True,
)
console = Console(highlight=False)
# How many undecodable payloads `verify` lists before it only counts them.
SHOWN_FAILURES = 20


def _fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _not_from_environment(action: str) -> None:
    if os.environ.get(KEYRING_ENV):
        _fail(
            f"the key ring comes from the environment variable {KEYRING_ENV}, which this command "
            f"cannot {action}: change the ring where that variable is set, or unset it to use "
            f"the key file {key_ring_file()}"
        )


@keys_app.command()
def init() -> None:
    """Create the key file with one new key (`posflow up` does this on its first run)."""
    _not_from_environment("create")
    path = key_ring_file()
    ring = KeyRing.generate(source=str(path))
    try:
        write_key_ring_file(ring, path, replace=False)
    except KeyRingError as err:
        _fail(str(err))
    console.print(f"Created the key file {path} with key {ring.current} (mode 0600).")
    console.print("Keep it safe: without it, encrypted workflow histories cannot be read.")


@keys_app.command()
def show() -> None:
    """The key ids, which one is current and where the ring comes from; never the keys."""
    try:
        ring = load_key_ring()
    except KeyRingError as err:
        _fail(str(err))
    where = ring.source
    if not os.environ.get(KEYRING_ENV):
        where += f" (mode {stat.S_IMODE(key_ring_file().stat().st_mode):04o})"
    console.print(f"key ring: {where}")
    table = Table(box=None, padding=(0, 2))
    table.add_column("key id")
    table.add_column("")
    for key_id in ring.keys:
        table.add_row(key_id, "current" if key_id == ring.current else "")
    console.print(table)


@keys_app.command()
def rotate() -> None:
    """Add a new key and make it current; the old keys stay, so old payloads still decrypt."""
    _not_from_environment("rotate")
    path = key_ring_file()
    try:
        ring = read_key_ring_file(path).rotated()
        write_key_ring_file(ring, path)
    except KeyRingError as err:
        _fail(str(err))
    old = [key_id for key_id in ring.keys if key_id != ring.current]
    console.print(f"Key {ring.current} is now current in {path}; kept {', '.join(old)}.")
    console.print(
        "Processes already running read the file again when they meet a payload under a key "
        "they do not hold, and encrypt with the new key from then on; a restart makes them use "
        "it at once. Copy the file to every host that runs a worker or a gateway first."
    )


@keys_app.command()
def verify(
    workflow_id: Annotated[
        str, typer.Option("--workflow-id", help="The workflow, e.g. pos-application-<id>.")
    ],
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="A run other than the latest.")
    ] = None,
) -> None:
    """Decrypt every payload of a workflow's history with the key ring.

    The history is read from TEMPORAL_ADDRESS; the report counts payloads per key id and lists
    any that do not decrypt (then the exit code is 1)."""
    try:
        check = asyncio.run(_verify(workflow_id, run_id))
    except KeyRingError as err:
        _fail(str(err))
    except RPCError as err:
        _fail(f"{workflow_id}: {err.message}")
    except RuntimeError as err:  # the client could not connect
        _fail(str(err))
    _report(check)
    if not check.ok:
        raise typer.Exit(1)


async def _verify(workflow_id: str, run_id: str | None) -> HistoryCheck:
    from workers.config import TemporalSettings
    from workers.temporal import connect

    codec = EncryptionCodec.from_environment()
    client = await connect(TemporalSettings.from_env())
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    return check_history(history, codec)


def _report(check: HistoryCheck) -> None:
    table = Table(
        title=f"{check.workflow_id}: {check.events} events", title_justify="left", box=None
    )
    table.add_column("payloads")
    table.add_column("count", justify="right")
    for key_id, count in sorted(check.by_key.items()):
        table.add_row(f"decrypted with key {key_id}", str(count))
    for kind, count in sorted(check.unencrypted.items()):
        if kind == "data":
            label = "not encrypted: data (written before the codec, or by a client without it)"
        else:
            label = f"not encrypted: {kind} (by design)"
        table.add_row(label, str(count))
    failed = "[bold red]do not decrypt[/]" if check.failures else "do not decrypt"
    table.add_row(failed, str(len(check.failures)))
    console.print(table)
    for failure in check.failures[:SHOWN_FAILURES]:
        console.print(f"  {failure}")
    if len(check.failures) > SHOWN_FAILURES:
        console.print(f"  ... and {len(check.failures) - SHOWN_FAILURES} more")
    if check.ok:
        console.print("[green]every encrypted payload decrypts with the key ring[/]")
