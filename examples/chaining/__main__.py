"""Run the chaining example: Azurite (started if none answers), a worker and a client.

    python -m examples.chaining [--connection CS] [--task-hub NAME]

Runs the chain once with a valid input and once with one that makes F1 fail (the
orchestrator compensates), prints both final statuses, and exits non-zero if either
orchestration did not complete.
"""

from __future__ import annotations

import json
import sys

from durable_azure import DurableClient
from examples._common import main
from examples.chaining.app import app


async def scenario(client: DurableClient) -> bool:
    ok = True
    for count in (3, 99):
        instance_id = await client.start_new("chaining", client_input=count)
        status = await client.wait_for_completion(instance_id, timeout=60)
        print(f"chaining({count}):", json.dumps(status.to_json(), indent=2))
        ok = ok and status.runtime_status.name == "Completed"
    return ok


if __name__ == "__main__":
    sys.exit(main(app, scenario, (__doc__ or "").splitlines()[0]))
