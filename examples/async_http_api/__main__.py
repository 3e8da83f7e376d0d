"""Run pattern 3 end to end: the HTTP API and a worker, then a client that only speaks HTTP.

    python -m examples.async_http_api [--connection CS] [--task-hub NAME]

The client POSTs a start, gets ``202 Accepted`` with a ``Location`` header, and polls that
URL (honouring ``Retry-After``, capped for the demo) until it answers ``200`` with the
output - the flow of the Durable Functions overview's curl session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

import httpx

from durable_azure import DurableClient, Worker
from durable_azure import azurite as azurite_tool
from durable_azure.http import create_management_app
from durable_azure.http.server import EmbeddedServer, server_config
from examples.async_http_api.app import app

BASE = "/runtime/webhooks/durabletask"


async def poll_over_http(origin: str) -> bool:
    async with httpx.AsyncClient(base_url=origin, timeout=30) as http:
        started = await http.post(f"{BASE}/orchestrators/export", json={"rows": 4})
        print(f"POST start -> {started.status_code}, Location: {started.headers['location']}")
        location = started.headers["location"]
        while True:
            status = await http.get(location)
            body = status.json()
            print(f"GET status -> {status.status_code} {body['runtimeStatus']} "
                  f"{json.dumps(body['customStatus'])}")  # fmt: skip
            if status.status_code != 202:
                print(json.dumps(body, indent=2))
                return body["runtimeStatus"] == "Completed"
            await asyncio.sleep(min(float(status.headers.get("retry-after", 1)), 0.5))


async def run(connection: str, task_hub: str | None) -> int:
    settings = {"connection_string": connection, "task_hub": task_hub}
    worker = Worker(app, **settings)
    client = DurableClient.from_app(app, **settings)
    api = create_management_app(client, orchestrator_names=lambda: set(app.orchestrators))
    server = EmbeddedServer(server_config(api, "127.0.0.1", 0))
    await worker.start()
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        return 0 if await poll_over_http(f"http://127.0.0.1:{port}") else 1
    finally:
        server.should_exit = True
        await serving
        await worker.stop()
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connection", help="storage connection string (default: Azurite)")
    parser.add_argument("--task-hub")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.connection:
        return asyncio.run(run(args.connection, args.task_hub))
    host, ports = azurite_tool.DEFAULT_HOST, azurite_tool.resolve_ports()
    if azurite_tool.is_answering(host, ports):
        return asyncio.run(run(azurite_tool.connection_string(host, ports), args.task_hub))
    with azurite_tool.AzuriteProcess(host=host, ports=ports) as emulator:
        return asyncio.run(run(emulator.connection_string, args.task_hub))


if __name__ == "__main__":
    sys.exit(main())
