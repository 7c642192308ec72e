"""`posflow up | worker | gateway | services | dev-server`: the stack on a laptop, or one role.

Modules that import the workflow are imported inside the commands, so `posflow --help` answers
at once and without a server.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import Annotated, Any

import structlog
import typer
from rich.console import Console
from rich.table import Table

from cli.admin import admin_app
from cli.apps import apps_app
from cli.bench import bench
from cli.keys import keys_app
from cli.merchants import merchants_app
from services.stack import GATEWAY_PORT, PORTS, Served, serve, stop_all
from services.stack import build as build_service
from workers.codec import KeyRingError, ensure_key_ring, load_key_ring
from workers.config import (
    ConfigurationError,
    TemporalSettings,
    credentials_file,
    ensure_credentials,
)
from workers.dev_server import DEFAULT_PORT, DEFAULT_UI_PORT, DevServer, DevServerError
from workers.logging import configure_logging
from workers.settings_check import require_valid_environment

app = typer.Typer(
    help="posflow: durable onboarding of POS terminals, on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    # Locals in a traceback may hold an application with personal data.
    pretty_exceptions_show_locals=False,
)
app.add_typer(admin_app, name="admin")
app.add_typer(apps_app, name="apps")
app.add_typer(keys_app, name="keys")
app.add_typer(merchants_app, name="merchants")
app.command("bench")(bench)
console = Console()
log = structlog.get_logger(__name__)

# Where a worker serves Prometheus metrics unless POSFLOW_WORKER_METRICS says otherwise.
DEFAULT_WORKER_METRICS = "127.0.0.1:9464"

PortOption = Annotated[int, typer.Option(help="gRPC port of the Temporal dev server.")]
UiPortOption = Annotated[int, typer.Option(help="Port of the Temporal Web UI.")]


def _stop_on_signals() -> asyncio.Event:
    """An event set by Ctrl-C or SIGTERM, so shutdown runs in order instead of by interruption."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.run(main)
    except (DevServerError, KeyRingError, ConfigurationError) as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False)
        raise typer.Exit(1) from None


async def _start_or_stop(server: DevServer, stop: asyncio.Event) -> bool:
    """Start the server unless asked to stop first; True when it is up."""
    starting = asyncio.create_task(server.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():
        starting.cancel()  # `start` stops the half-started server on its way out
        await asyncio.gather(starting, return_exceptions=True)
        return False
    starting.result()
    return True


def _print_urls(
    title: str, server: DevServer, task_queue: str | None, served: Sequence[Served] = ()
) -> None:
    table = Table(show_header=False, box=None, padding=(0, 2))
    for item in served:
        table.add_row(
            "Gateway (API)" if item.name == "gateway" else f"{item.name} service", item.url
        )
        if item.name == "gateway":
            table.add_row("Dashboard", f"{item.url}/ui")
            table.add_row("Sign in", _how_to_sign_in())
    table.add_row("Temporal gRPC", f"{server.address}  (namespace {server.namespace})")
    if server.ui_url:
        table.add_row("Temporal Web UI", server.ui_url)
    if task_queue:
        table.add_row("Task queue", task_queue)
        table.add_row("Worker metrics", f"http://{DEFAULT_WORKER_METRICS}/metrics")
    table.add_row("Data file", str(server.db_file))
    table.add_row("Server log", str(server.log_file))
    console.print(f"[bold green]{title}[/]")
    console.print(table)
    console.print("Press Ctrl-C to stop.")


def _how_to_sign_in() -> str:
    """Where the admin token is; never a token or a secret itself."""
    if os.environ.get("POSFLOW_OPEN_GATEWAY", "").strip().lower() in ("1", "true", "yes"):
        return "no sign-in: POSFLOW_OPEN_GATEWAY is set (everyone is admin)"
    if os.environ.get("POSFLOW_TOKENS"):
        return "with the admin token of POSFLOW_TOKENS"
    return f'with the admin token: "tokens" → "admin" in {credentials_file()}'


async def _register_search_attributes(server: DevServer) -> None:
    from workers.temporal import connect, register_search_attributes

    settings = TemporalSettings(address=server.address, namespace=server.namespace)
    added = await register_search_attributes(await connect(settings))
    if added:
        log.info("search_attributes_registered", names=added)


# On the embedded stack the sandbox services act for the reviewers, merchants, carriers and
# technicians, so an application moves from submission to go-live on its own.
SANDBOX_AUTOMATION = ("REVIEW", "CONTRACT", "DEVICE", "LOGISTICS")


async def _up(port: int, ui_port: int) -> None:
    from workers.main import run_worker

    for service in SANDBOX_AUTOMATION:
        os.environ.setdefault(f"POSFLOW_{service}_AUTO", "true")
    # ...and the merchants pay their fee bills after go-live (the demo's markers aside).
    os.environ.setdefault("POSFLOW_CONTRACT_AUTO_PAY", "true")
    # The worker's notices go to the notification service served below (a worker started on
    # its own only logs them unless POSFLOW_NOTIFICATION_URL is set).
    os.environ.setdefault("POSFLOW_NOTIFICATION_URL", f"http://127.0.0.1:{PORTS['notification']}")

    created = ensure_key_ring()
    if created is not None:
        console.print(f"Created the payload encryption key file {created} (keep it).")
    load_key_ring()  # a malformed ring stops here, before anything starts
    written = ensure_credentials()  # ops tokens, a merchant key, every signer's secret
    if written is not None:
        console.print(f"Wrote the stack's tokens, merchant key and signing secrets to {written}.")

    stop = _stop_on_signals()
    # The Web UI decrypts payloads through the gateway's codec endpoint.
    codec = f"http://127.0.0.1:{GATEWAY_PORT}/codec"
    server = DevServer(port=port, ui_port=ui_port, ui_codec_endpoint=codec)
    if not await _start_or_stop(server, stop):
        return
    try:
        await _register_search_attributes(server)
        configured = TemporalSettings.from_env()
        settings = TemporalSettings(
            address=server.address,
            namespace=server.namespace,
            task_queue=configured.task_queue,
            metrics_address=configured.metrics_address or DEFAULT_WORKER_METRICS,
        )
        ready = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, ready=ready, stop=stop))
        server_exited = asyncio.create_task(server.wait())
        readied = asyncio.create_task(ready.wait())
        await asyncio.wait({worker, readied}, return_when=asyncio.FIRST_COMPLETED)
        readied.cancel()
        served = await _serve_http_roles(settings) if ready.is_set() else []
        if ready.is_set():
            _print_urls("posflow is up", server, settings.task_queue, served)
        await asyncio.wait({worker, server_exited}, return_when=asyncio.FIRST_COMPLETED)
        await stop_all(served)
        if server_exited.done() and not stop.is_set():
            # The worker cannot do anything useful without its server: end it and say why.
            stop.set()
            await asyncio.gather(worker, return_exceptions=True)
            raise DevServerError(
                f"the Temporal dev server exited unexpectedly; see {server.log_file}"
            )
        server_exited.cancel()
        await worker
    finally:
        await server.stop()
    console.print("posflow stopped.")


SERVICE_HOST_ENV = "POSFLOW_SERVICE_HOST"


async def _serve_http_roles(
    settings: TemporalSettings,
    services: bool = True,
    gateway: bool = True,
    only: Sequence[str] = (),
) -> list[Served]:
    """The sandbox services (all, or `only` those named) and the gateway, each on its port of
    the embedded stack. Services listen on `POSFLOW_SERVICE_HOST` (loopback by default; a
    container sets 0.0.0.0)."""
    from gateway.app import GatewaySettings, create_app
    from workers.temporal import connect

    served: list[Served] = []
    host = os.environ.get(SERVICE_HOST_ENV, "127.0.0.1")
    try:
        if services:
            for name, port in PORTS.items():
                if not only or name in only:
                    served.append(await serve(name, build_service(name).app, port, host=host))
        if gateway:
            gateway_settings = GatewaySettings.from_env()  # refused before anything connects
            client = await connect(settings)
            app = create_app(client, gateway_settings)
            served.append(await serve("gateway", app, GATEWAY_PORT, host=gateway_settings.host))
    except BaseException:
        await stop_all(served)
        raise
    return served


async def _http_roles_until_stopped(
    services: bool, gateway: bool, only: Sequence[str] = ()
) -> None:
    require_valid_environment("gateway" if gateway else "service")
    stop = _stop_on_signals()
    served = await _serve_http_roles(TemporalSettings.from_env(), services, gateway, only)
    for item in served:
        console.print(f"  {item.name:<10} {item.url}", highlight=False)
    try:
        await stop.wait()
    finally:
        await stop_all(served)


async def _dev_server(port: int, ui_port: int, headless: bool) -> None:
    stop = _stop_on_signals()
    server = DevServer(port=port, ui_port=ui_port, headless=headless)
    if not await _start_or_stop(server, stop):
        return
    try:
        # Search attributes are left to the worker, which registers them before it polls: this
        # command must run even while the workflow code does not import.
        _print_urls("Temporal dev server is up", server, task_queue=None)
        stopping = asyncio.create_task(stop.wait())
        exited = asyncio.create_task(server.wait())
        await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if exited.done() and not stop.is_set():
            raise DevServerError(
                f"the Temporal dev server exited unexpectedly; see {server.log_file}"
            )
        exited.cancel()
    finally:
        await server.stop()
    console.print("Temporal dev server stopped.")


async def _worker() -> None:
    from workers.main import run_worker

    require_valid_environment("worker")
    settings = TemporalSettings.from_env()
    if settings.metrics_address is None:
        settings = replace(settings, metrics_address=DEFAULT_WORKER_METRICS)
    log.info("worker_metrics", url=f"http://{settings.metrics_address}/metrics")
    await run_worker(settings, stop=_stop_on_signals())


@app.command()
def up(port: PortOption = DEFAULT_PORT, ui_port: UiPortOption = DEFAULT_UI_PORT) -> None:
    """Start the embedded Temporal dev server and a worker; Ctrl-C stops both."""
    configure_logging()
    _run(_up(port, ui_port))


@app.command()
def worker() -> None:
    """Run a worker against the Temporal service in TEMPORAL_ADDRESS until Ctrl-C or SIGTERM."""
    configure_logging()
    _run(_worker())


@app.command()
def services() -> None:
    """Run the sandbox services (review, contract, device, logistics, notification) until Ctrl-C."""
    configure_logging()
    _run(_http_roles_until_stopped(services=True, gateway=False))


@app.command()
def service(name: Annotated[str, typer.Argument(help=f"one of {', '.join(PORTS)}")]) -> None:
    """Run one sandbox service on its port (a container per service, in deploy/)."""
    if name not in PORTS:
        raise typer.BadParameter(
            f"no service {name!r}: one of {', '.join(PORTS)}", param_hint="NAME"
        )
    configure_logging()
    _run(_http_roles_until_stopped(services=True, gateway=False, only=(name,)))


@app.command()
def gateway() -> None:
    """Run the gateway (HTTP API) against the Temporal service in TEMPORAL_ADDRESS."""
    configure_logging()
    _run(_http_roles_until_stopped(services=False, gateway=True))


@app.command()
def demo(
    count: Annotated[int, typer.Option(help="How many applications to submit.")] = 20,
    gateway_url: Annotated[
        str, typer.Option(help="The gateway's base URL.")
    ] = f"http://127.0.0.1:{GATEWAY_PORT}",
    seed: Annotated[int, typer.Option(help="First seed of the generated merchants.")] = 1,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every case to settle.")] = 300,
    years: Annotated[
        int,
        typer.Option(
            min=0, max=20, help="Simulated years (a minute each) to watch merchants after go-live."
        ),
    ] = 1,
) -> None:
    """Submit generated applications to a running stack (`posflow up`) and report how they end."""
    from cli.demo import print_channel_summary, print_merchant_summary, run_demo

    result = asyncio.run(run_demo(gateway_url, count, seed, timeout, years))
    table = Table(title=f"posflow demo: {result.submitted} applications in {result.seconds:.1f} s")
    table.add_column("outcome")
    table.add_column("applications", justify="right")
    for outcome in ("live", "rejected", "expired", "cancelled"):
        table.add_row(outcome, str(result.outcomes[outcome]))
    table.add_row("documents refused (422)", str(result.refused_documents))
    table.add_row("documents supplemented on request", str(result.supplemented))
    table.add_row("not finished", str(len(result.unfinished)))
    console.print(table)
    for app_id, stage in sorted(result.unfinished.items()):
        console.print(f"  {app_id} still in {stage}", highlight=False)
    print_channel_summary(console, result)
    print_merchant_summary(console, result)
    if result.unfinished:
        raise typer.Exit(1)


@app.command("dev-server")
def dev_server(
    port: PortOption = DEFAULT_PORT,
    ui_port: UiPortOption = DEFAULT_UI_PORT,
    headless: Annotated[bool, typer.Option(help="Run without the Web UI.")] = False,
) -> None:
    """Run only the embedded Temporal dev server (state in .posflow/) until Ctrl-C; a worker
    started with `posflow worker` registers the search attributes."""
    configure_logging()
    _run(_dev_server(port, ui_port, headless))
