"""A worker process for the benchmark: posflow's (the workflow and activities `posflow worker`
runs, built by `workers.temporal.build_worker`) or the floor's, with an optional bound on the
workflow cache, until SIGTERM. Prints `ready` once it polls.

    python -m bench.harness.worker posflow|floor --queue Q [--cache N]

The environment is `posflow worker`'s (TEMPORAL_ADDRESS, POSFLOW_* service URLs, key ring).
`posflow worker` itself has no setting for the cache size, hence this entry point.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker


async def posflow_worker(queue: str, tuning: dict[str, Any]) -> Worker:
    from workers.config import TemporalSettings
    from workers.logging import configure_logging
    from workers.main import worker_activities
    from workers.temporal import build_worker, connect, register_search_attributes

    configure_logging()
    client = await connect(TemporalSettings.from_env())
    await register_search_attributes(client)
    return build_worker(client, queue, worker_activities(), **tuning)


async def floor_worker(queue: str, tuning: dict[str, Any]) -> Worker:
    from bench.harness.floor import Floor, FloorChild, noop, reached

    client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
    return Worker(
        client,
        task_queue=queue,
        workflows=[Floor, FloorChild],
        activities=[noop, reached],
        **tuning,
    )


async def main(kind: str, queue: str, cache: int | None) -> None:
    tuning: dict[str, Any] = {} if cache is None else {"max_cached_workflows": cache}
    build = posflow_worker if kind == "posflow" else floor_worker
    worker = await build(queue, tuning)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = asyncio.create_task(worker.run())
    print("ready", flush=True)
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not running.done():
        await worker.shutdown()
    await running


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["posflow", "floor"])
    parser.add_argument("--queue", required=True)
    parser.add_argument("--cache", type=int, default=None)
    args = parser.parse_args()
    asyncio.run(main(args.kind, args.queue, args.cache))
    sys.exit(0)
