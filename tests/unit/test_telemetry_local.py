"""OpenTelemetry: spans with failure status and carried context, metrics, and nothing at
all without the extra. In-memory storage under the real worker and provider.

Spans are checked in child processes: a tracer provider, once set, stays for the whole
process, and with one every message would carry a trace context (the golden-history tests
in this process compare messages' events). The trace across two real worker processes on
Azurite is ``tests/integration/test_telemetry.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from durable_azure import (
    DurableApp,
    DurableClient,
    OrchestrationStatus,
    Worker,
    WorkerOptions,
    telemetry,
)
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.testing.memory import MemoryStorageAccount

PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Runs one orchestration (an activity that fails, caught, then one that succeeds) on
#: in-memory storage, with spans recorded in memory; prints the spans and the messages'
#: ParentTraceContext as JSON. ``BLOCK_OTEL`` makes ``opentelemetry`` unimportable.
_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    if "BLOCK_OTEL" in sys.argv:
        sys.modules["opentelemetry"] = None  # as if the extra were not installed
    from durable_azure import DurableApp, DurableClient, Worker, WorkerOptions, telemetry
    from durable_azure.errors import TaskFailedError
    from durable_azure.storage.provider import AzureStorageProvider
    from durable_azure.testing.memory import MemoryStorageAccount

    exporter = None
    if telemetry.available():
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)

    app = DurableApp()

    @app.activity
    def boom(x):
        raise ValueError("no good")

    @app.activity
    def fine(x):
        return x + 1

    @app.orchestrator
    def flow(ctx):
        try:
            yield ctx.call_activity(boom, 1)
        except TaskFailedError:
            pass
        return (yield ctx.call_activity(fine, 1))

    async def main():
        account = MemoryStorageAccount()
        sent = []
        options = WorkerOptions(max_poll_interval=0.05, max_local_activities=0)
        async with Worker(app, account=account, options=options):
            provider = AzureStorageProvider(account, app.settings().names)
            original = provider.send
            async def spy(outbound):
                event = outbound.message.event
                sent.append([type(event).__name__, getattr(event, "parent_trace_context", None)])
                await original(outbound)
            provider.send = spy
            client = DurableClient(provider)
            await client.start_new("flow", "one")
            status = await client.wait_for_completion("one", timeout=30)
        spans = []
        for s in exporter.get_finished_spans() if exporter else []:
            spans.append({
                "name": s.name, "status": s.status.status_code.name,
                "parent": f"{s.parent.span_id:016x}" if s.parent else None,
                "id": f"{s.get_span_context().span_id:016x}",
            })
        print(json.dumps({
            "available": telemetry.available(), "output": status.output, "spans": spans,
            "client_sent": sent,
        }))

    asyncio.run(main())
    """
)


def _run(*flags: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *flags],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_spans_carry_failures_and_the_start_carries_the_clients_context() -> None:
    result = _run()
    assert result["available"] is True
    assert result["output"] == 2
    spans = {(s["name"], s["status"]) for s in result["spans"]}
    assert ("activity:boom", "ERROR") in spans
    assert ("activity:fine", "UNSET") in spans
    assert ("orchestration:flow", "UNSET") in spans
    (create,) = [s for s in result["spans"] if s["name"] == "create_orchestration:flow"]
    # The start message carries the client span's W3C traceparent.
    (start,) = [c for k, c in result["client_sent"] if k == "ExecutionStarted"]
    assert start["TraceParent"].split("-")[2] == create["id"]


def test_without_the_extra_everything_runs_and_nothing_is_carried() -> None:
    result = _run("BLOCK_OTEL")
    assert result["available"] is False
    assert result["output"] == 2
    assert result["spans"] == []
    assert result["client_sent"] == [["ExecutionStarted", None]]


def test_metrics_record_episodes_replays_message_ages_and_queue_samples() -> None:
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    app = DurableApp()

    @app.activity
    def add_one(x: int) -> int:
        return x + 1

    @app.orchestrator
    def chain(ctx: Any) -> Generator[Any, Any, int]:
        value = 0
        for _ in range(3):
            value = yield ctx.call_activity(add_one, value)
        return value

    async def scenario() -> None:
        account = MemoryStorageAccount()
        options = WorkerOptions(
            max_poll_interval=0.05, max_local_activities=0, queue_metrics_interval=0.05
        )
        async with Worker(app, account=account, options=options):
            client = DurableClient(AzureStorageProvider(account, app.settings().names))
            await client.start_new("chain", "m1")
            status = await client.wait_for_completion("m1", timeout=30)
            assert status.runtime_status is OrchestrationStatus.Completed
            await asyncio.sleep(0.2)  # at least one more queue sample

    asyncio.run(scenario())
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    episodes = points["durable_azure.episode.duration"]
    # One episode per message here: the start and each of 3 activity results.
    assert sum(p.count for p in episodes) >= 4
    replayed = points["durable_azure.episode.replayed_events"]
    assert max(p.max for p in replayed) > 0  # later episodes replay the earlier ones
    ages = {p.attributes["queue"] for p in points["durable_azure.message.age"]}
    assert any(q.endswith("-workitems") for q in ages)
    assert any("-control-" in q for q in ages)
    depths = {p.attributes["queue"] for p in points["durable_azure.queue.depth"]}
    assert any(q.endswith("-workitems") for q in depths)


def test_a_failing_recorder_never_fails_the_episode(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Emitted after the checkpoint: raising here would abandon committed messages.
    class BrokenTracer:
        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("exporter exploded")

    monkeypatch.setattr(telemetry, "_tracer", BrokenTracer())
    caplog.set_level(logging.DEBUG, logger="durable_azure.telemetry")
    when = datetime(2026, 11, 25, tzinfo=UTC)
    telemetry.orchestration_finished(
        "flow", None, started=when, ended=when, status="Completed", attributes={}
    )
    assert "orchestration_finished failed" in caplog.text
    assert "exporter exploded" in caplog.text
