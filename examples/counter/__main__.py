"""Run the counter example: Azurite (started if none answers), a worker and a client.

    python -m examples.counter [--connection CS] [--task-hub NAME]

Starts a counter at 0, raises 10 "incr" and 3 "decr" events, waits until the count (its
custom status) reads 7, stops it and prints the final status; exits non-zero if the
count is wrong.
"""

from __future__ import annotations

import asyncio
import json
import sys

from durable_azure import DurableClient
from examples._common import main
from examples.counter.app import app

EXPECTED = 7


async def scenario(client: DurableClient) -> bool:
    instance_id = await client.start_new("counter", client_input=0)
    for operation in ["incr"] * 10 + ["decr"] * 3:
        await client.raise_event(instance_id, "operation", operation)
    for _ in range(600):  # up to a minute
        status = await client.get_status(instance_id)
        if status.custom_status == EXPECTED:
            break
        await asyncio.sleep(0.1)
    print(f"count is {status.custom_status} after 13 operations; stopping the counter")
    await client.raise_event(instance_id, "operation", "stop")
    status = await client.wait_for_completion(instance_id, timeout=60)
    print(json.dumps(status.to_json(), indent=2))
    return status.runtime_status.name == "Completed" and status.output == EXPECTED


if __name__ == "__main__":
    sys.exit(main(app, scenario, (__doc__ or "").splitlines()[0]))
