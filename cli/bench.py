"""`posflow bench`: posflow against the engine's floor on a dev server of its own (bench/harness,
bench/README.md): throughput, cost per application, callback latency, scale and replay."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

DEFAULT_RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def bench(
    count: Annotated[int, typer.Option(min=1, help="Applications per throughput round.")] = 40,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of posflow then the floor.")] = 3,
    open_: Annotated[
        int, typer.Option("--open", min=1, help="Open applications parked for the scale part.")
    ] = 1_000,
    skip_scale: Annotated[bool, typer.Option(help="Leave out the scale part.")] = False,
    bounded_cache: Annotated[
        int, typer.Option(min=1, help="The bounded workflow cache of the scale part.")
    ] = 100,
    paths: Annotated[
        int, typer.Option(min=1, help="Applications of each other path (cost only).")
    ] = 2,
    concurrency: Annotated[int, typer.Option(min=1, help="Driver requests in flight.")] = 32,
    out: Annotated[Path, typer.Option(help="Where the JSON results go.")] = DEFAULT_RESULTS,
) -> None:
    """Benchmark posflow against a minimal workflow of the same shape, on a dev server started
    for the run (about 8 minutes with the defaults on 2 cores)."""
    from bench.harness.report import print_tables, write_json
    from bench.harness.run import Config, run

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # the tables whole in a log or a pipe
    config = Config(
        count=count,
        rounds=rounds,
        open=open_,
        skip_scale=skip_scale,
        bounded_cache=bounded_cache,
        paths=paths,
        concurrency=concurrency,
        out_dir=out,
    )
    results = asyncio.run(run(config, progress=lambda m: console.print(m, highlight=False)))
    print_tables(results, console)
    console.print(f"results: {write_json(results, out)}", highlight=False)
