"""A long-running orchestration behind an HTTP API (pattern 3 of the overview).

Serve it with ``durable-azure serve examples.async_http_api.app:app``; then::

    curl -i -X POST http://127.0.0.1:7071/runtime/webhooks/durabletask/orchestrators/export \\
         -H 'Content-Type: application/json' -d '{"rows": 3}'
    # 202 Accepted, Location: .../instances/<id>?...  - poll it until 200
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from durable_azure import DurableApp, OrchestrationContext

app = DurableApp(task_hub="AsyncHttpApi")


@app.activity
def export_row(row: int) -> str:
    time.sleep(0.2)  # pretend to be slow
    return f"row-{row}.csv"


@app.orchestrator
def export(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    rows = ctx.get_input()["rows"]
    files = []
    for row in range(rows):
        files.append((yield ctx.call_activity(export_row, row)))
        ctx.set_custom_status({"done": row + 1, "of": rows})
    return {"files": files}
