"""A DurableApp whose processes record their OpenTelemetry spans, for ``test_telemetry.py``.

When ``DURABLE_OTEL_SPANS`` names a file, importing this module installs an SDK tracer
provider with the in-memory exporter, and at exit the process appends every finished span
to that file as one JSON line (name, ids, parent, kind, pid, attributes).

``python -m tests.integration.otel_app CONNECTION HUB PARTITIONS PARENT_ID CHILD_ID`` is
the client: it starts ``traced_parent`` (whose child gets ``CHILD_ID``), waits for it and
prints its output as JSON.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import sys
from pathlib import Path
from typing import Any

from durable_azure import DurableApp, DurableClient

SPANS_ENV = "DURABLE_OTEL_SPANS"

app = DurableApp()


@app.activity
def double(value: int) -> int:
    return value * 2


@app.orchestrator
def traced_child(ctx: Any) -> Any:
    value = yield ctx.call_activity(double, ctx.get_input())
    return value + 1


@app.orchestrator
def traced_parent(ctx: Any) -> Any:
    start = ctx.get_input()
    first = yield ctx.call_activity(double, start["value"])
    second = yield ctx.call_activity(double, first)
    child = yield ctx.call_sub_orchestrator(traced_child, second, instance_id=start["child"])
    return [first, second, child]


def _install_exporter(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    def dump() -> None:
        lines = []
        for span in exporter.get_finished_spans():
            context, parent = span.get_span_context(), span.parent
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": f"{context.trace_id:032x}",
                        "span_id": f"{context.span_id:016x}",
                        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
                        "kind": span.kind.name,
                        "pid": os.getpid(),
                        "attributes": dict(span.attributes or {}),
                        "status": span.status.status_code.name,
                    }
                )
            )
        with Path(path).open("a", encoding="utf-8") as sink:
            sink.write("".join(line + "\n" for line in lines))

    atexit.register(dump)


if os.environ.get(SPANS_ENV):
    _install_exporter(os.environ[SPANS_ENV])


async def _client(connection: str, hub: str, partitions: int, parent: str, child: str) -> None:
    client = DurableClient.from_app(
        app, connection_string=connection, task_hub=hub, partition_count=partitions
    )
    try:
        await client.start_new("traced_parent", parent, {"value": 1, "child": child})
        status = await client.wait_for_completion(parent, timeout=60)
    finally:
        await client.close()
    print(json.dumps({"status": status.runtime_status.name, "output": status.output}))


if __name__ == "__main__":
    connection, hub, partitions, parent, child = sys.argv[1:6]
    asyncio.run(_client(connection, hub, int(partitions), parent, child))
