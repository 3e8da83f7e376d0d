"""Run the example end to end: Azurite (started if none answers), a worker, and a client.

    python -m examples.hello_cities [--connection CS] [--task-hub NAME]

Prints each orchestration's final status as JSON and exits non-zero if one did not
complete.
"""

from __future__ import annotations

import json
import sys
import time

from durable_azure import DurableClient
from examples._common import main
from examples.hello_cities.app import CITIES, app


async def scenario(client: DurableClient) -> bool:
    started = time.perf_counter()
    chain_id = await client.start_new("hello_sequence", client_input=CITIES)
    fan_id = await client.start_new("letters_fan_out", client_input=CITIES)
    ok = True
    for instance_id in (chain_id, fan_id):
        status = await client.wait_for_completion(instance_id, timeout=120)
        print(json.dumps(status.to_json(), indent=2))
        ok = ok and status.runtime_status.name == "Completed"
    print(f"both orchestrations finished in {time.perf_counter() - started:.2f} s")
    return ok


if __name__ == "__main__":
    sys.exit(main(app, scenario, (__doc__ or "").splitlines()[0]))
