"""Run the example end to end: Azurite (started if none answers), a worker, and a client.

    python -m examples.hello_cities [--connection CS] [--task-hub NAME]

Prints each orchestration's final status as JSON and exits non-zero if one did not
complete.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

from durable_azure import DurableClient, Worker
from durable_azure import azurite as azurite_tool
from examples.hello_cities.app import CITIES, app


async def run(connection: str, task_hub: str) -> int:
    worker = Worker(app, connection_string=connection, task_hub=task_hub)
    await worker.start()
    ok = True
    try:
        async with DurableClient.from_app(
            app, connection_string=connection, task_hub=task_hub
        ) as client:
            started = time.perf_counter()
            chain_id = await client.start_new("hello_sequence", client_input=CITIES)
            fan_id = await client.start_new("letters_fan_out", client_input=CITIES)
            for instance_id in (chain_id, fan_id):
                status = await client.wait_for_completion(instance_id, timeout=120)
                print(json.dumps(status.to_json(), indent=2))
                ok = ok and status.runtime_status.name == "Completed"
            print(f"both orchestrations finished in {time.perf_counter() - started:.2f} s")
    finally:
        await worker.stop()
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connection", help="storage connection string (default: Azurite)")
    parser.add_argument("--task-hub", default="HelloCities")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.connection:
        return asyncio.run(run(args.connection, args.task_hub))
    # No connection given: use an Azurite already answering, or start one for this run.
    host, ports = azurite_tool.DEFAULT_HOST, azurite_tool.resolve_ports()
    if azurite_tool.is_answering(host, ports):
        return asyncio.run(run(azurite_tool.connection_string(host, ports), args.task_hub))
    print("starting Azurite ...", file=sys.stderr)
    with azurite_tool.AzuriteProcess(host=host, ports=ports) as emulator:
        return asyncio.run(run(emulator.connection_string, args.task_hub))


if __name__ == "__main__":
    sys.exit(main())
