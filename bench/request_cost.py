"""What one storage request costs the client: the Azure SDK against bare HTTP.

    python bench/request_cost.py [--connection CS] [--requests N]

Reads one table row N times (default 1,500) in a row, three ways, and prints the client
process's CPU time and the wall time per request for each:

* ``sdk get_entity``: ``azure.data.tables.aio.TableClient.get_entity`` (what the engine
  calls today for a point read);
* ``sdk send_request``: a prebuilt ``HttpRequest`` through the same client's pipeline
  (policies and the aiohttp transport of azure-core, no generated operation code);
* ``bare aiohttp``: the same GET with a ``SharedKeyLite`` signature computed here, one
  aiohttp session, the JSON body parsed.

An Azurite is started on free ports unless ``--connection`` names storage (an account-key
connection string: the bare variant signs with the key). The figures are this machine's;
they size what a leaner transport could save, they are not a target.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from azure.core.rest import HttpRequest
from azure.data.tables.aio import TableClient, TableServiceClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from durable_azure import azurite as azurite_tool

TABLE = "benchrequestcost"
ROW = {"PartitionKey": "p", "RowKey": "r", "Value": 1}
ACCEPT = "application/json;odata=minimalmetadata"
TABLE_API_VERSION = "2019-02-02"


@contextlib.contextmanager
def storage(connection: str | None) -> Iterator[str]:
    if connection:
        yield connection
        return
    with azurite_tool.start_on_free_ports() as emulator:
        yield emulator.connection_string


def connection_parts(connection: str) -> dict[str, str]:
    parts = dict(p.split("=", 1) for p in connection.split(";") if "=" in p)
    for key in ("AccountName", "AccountKey", "TableEndpoint"):
        if key not in parts:
            raise SystemExit(f"--connection needs {key}= (an account-key connection string)")
    return parts


async def measure(n: int, one: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Milliseconds of client CPU and of wall time per call, after 20 warm-up calls."""
    for _ in range(20):
        await one()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        await one()
    return (time.process_time() - cpu) / n * 1000, (time.perf_counter() - wall) / n * 1000


async def run(connection: str, n: int) -> list[tuple[str, float, float]]:
    parts = connection_parts(connection)
    async with TableServiceClient.from_connection_string(connection) as service:
        await service.create_table_if_not_exists(TABLE)
    endpoint = parts["TableEndpoint"].rstrip("/")
    account, key = parts["AccountName"], base64.b64decode(parts["AccountKey"])
    resource = f"{TABLE}(PartitionKey='p',RowKey='r')"
    url = f"{endpoint}/{resource}"
    # SharedKeyLite for tables signs the date and /account/path (the path holds the
    # account name again with Azurite's path-style URLs).
    canonical = f"/{account}{urlsplit(url).path}"
    results = []
    async with TableClient.from_connection_string(connection, TABLE) as table:
        await table.upsert_entity(ROW)

        async def sdk_get() -> None:
            await table.get_entity("p", "r")

        async def sdk_send() -> None:
            request = HttpRequest(
                "GET", url, headers={"x-ms-version": TABLE_API_VERSION, "Accept": ACCEPT}
            )
            response = await table._client.send_request(request)
            response.raise_for_status()
            response.json()

        results.append(("sdk get_entity", *await measure(n, sdk_get)))
        results.append(("sdk send_request", *await measure(n, sdk_send)))

    async with aiohttp.ClientSession() as session:

        async def bare() -> None:
            date = formatdate(usegmt=True)
            digest = hmac.new(key, f"{date}\n{canonical}".encode(), hashlib.sha256).digest()
            headers = {
                "x-ms-date": date,
                "x-ms-version": TABLE_API_VERSION,
                "Accept": ACCEPT,
                "Authorization": f"SharedKeyLite {account}:{base64.b64encode(digest).decode()}",
            }
            async with session.get(url, headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"bare GET answered {response.status}: {body[:200]!r}")
                json.loads(body)

        results.append(("bare aiohttp", *await measure(n, bare)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connection", help="storage connection string (default: Azurite)")
    parser.add_argument("--requests", type=int, default=1500, help="reads per variant")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    with storage(args.connection) as connection:
        results = asyncio.run(run(connection, args.requests))
    print(f"table point read, {args.requests} in a row")
    print(f"{'variant':<20}{'client CPU ms':>15}{'wall ms':>10}")
    for name, cpu_ms, wall_ms in results:
        print(f"{name:<20}{cpu_ms:>15.3f}{wall_ms:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
