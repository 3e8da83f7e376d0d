"""What every example's ``__main__`` does: find storage, run a worker and a client.

Storage is ``--connection`` if given, else an Azurite answering on the default ports, else
an Azurite started for this run (and stopped after it). The worker runs in-process on the
example's task hub (``--task-hub``, default: the one its ``DurableApp`` names).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence

from durable_azure import DurableApp, DurableClient, Worker, WorkerOptions
from durable_azure import azurite as azurite_tool

#: A scenario drives the orchestrations with the client and returns True on success.
Scenario = Callable[[DurableClient], Awaitable[bool]]


async def run_scenario(
    app: DurableApp, scenario: Scenario, connection: str, task_hub: str | None = None
) -> int:
    """Run ``scenario`` with a worker for ``app`` running alongside; 0 if it succeeded."""
    worker = Worker(
        app,
        connection_string=connection,
        task_hub=task_hub,
        options=WorkerOptions(max_poll_interval=0.5),
    )
    await worker.start()
    try:
        async with DurableClient.from_app(
            app, connection_string=connection, task_hub=task_hub
        ) as client:
            ok = await scenario(client)
    finally:
        await worker.stop()
    return 0 if ok else 1


def main(
    app: DurableApp, scenario: Scenario, description: str, argv: Sequence[str] | None = None
) -> int:
    """Parse ``--connection``/``--task-hub``, find or start Azurite, run ``scenario``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--connection", help="storage connection string (default: Azurite)")
    parser.add_argument("--task-hub", help=f"default: {app.settings().names.hub}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.connection:
        return asyncio.run(run_scenario(app, scenario, args.connection, args.task_hub))
    host, ports = azurite_tool.DEFAULT_HOST, azurite_tool.resolve_ports()
    if azurite_tool.is_answering(host, ports):
        connection = azurite_tool.connection_string(host, ports)
        return asyncio.run(run_scenario(app, scenario, connection, args.task_hub))
    print("starting Azurite ...", file=sys.stderr)
    with azurite_tool.AzuriteProcess(host=host, ports=ports) as emulator:
        return asyncio.run(run_scenario(app, scenario, emulator.connection_string, args.task_hub))
