"""Run the approval example: Azurite (started if none answers), a worker and a client.

    python -m examples.approval [--connection CS] [--task-hub NAME]

Runs two approvals: one answered by an "ApprovalEvent" before its deadline, one whose
3-second deadline passes unanswered and is escalated. Prints both final statuses and
exits non-zero if either outcome is not the expected one.
"""

from __future__ import annotations

import asyncio
import json
import sys

from durable_azure import DurableClient
from examples._common import main
from examples.approval.app import WAITING, app


async def scenario(client: DurableClient) -> bool:
    answered = await client.start_new(
        "approval", client_input={"request": "expense #1 (answered)", "timeout_seconds": 300}
    )
    unanswered = await client.start_new(
        "approval", client_input={"request": "expense #2 (unanswered)", "timeout_seconds": 3}
    )
    for _ in range(600):  # up to a minute for the request to go out
        if (await client.get_status(answered)).custom_status == WAITING:
            break
        await asyncio.sleep(0.1)
    print("approver says yes to expense #1; nobody answers about expense #2")
    await client.raise_event(answered, "ApprovalEvent", True)
    outcomes = []
    for instance_id in (answered, unanswered):
        status = await client.wait_for_completion(instance_id, timeout=60)
        print(json.dumps(status.to_json(), indent=2))
        outcomes.append((status.output or {}).get("outcome"))
    return outcomes == ["approved", "escalated"]


if __name__ == "__main__":
    sys.exit(main(app, scenario, (__doc__ or "").splitlines()[0]))
