"""Run the fan-out/fan-in example: Azurite (started if none answers), a worker, a client.

    python -m examples.fan_out_fan_in [--connection CS] [--task-hub NAME]

Fans out over 20 items, prints the final status, and exits non-zero if the orchestration
did not complete.
"""

from __future__ import annotations

import json
import sys
import time

from durable_azure import DurableClient
from examples._common import main
from examples.fan_out_fan_in.app import app


async def scenario(client: DurableClient) -> bool:
    started = time.perf_counter()
    instance_id = await client.start_new("fan_out_fan_in", client_input=20)
    status = await client.wait_for_completion(instance_id, timeout=120)
    print(json.dumps(status.to_json(), indent=2))
    print(f"20 parallel activities fanned in after {time.perf_counter() - started:.2f} s")
    return status.runtime_status.name == "Completed"


if __name__ == "__main__":
    sys.exit(main(app, scenario, (__doc__ or "").splitlines()[0]))
