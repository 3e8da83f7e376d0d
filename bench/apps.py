"""The benchmark orchestrations and activities (run by ``bench/worker_main.py``)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from durable_azure import DurableApp, OrchestrationContext

app = DurableApp()

#: The name the external-events orchestration waits for.
EVENT_NAME = "e"


@app.activity
def say_hello(city: str) -> str:
    return f"Hello {city}!"


@app.activity
def echo(value: int) -> int:
    """The fan-out's trivial activity."""
    return value


@app.orchestrator
def hello_sequence5(ctx: OrchestrationContext) -> Generator[Any, Any, list[str]]:
    """HelloSequence5: five activities, one after the other."""
    out = []
    for city in ("Tokyo", "Seattle", "London", "Cairo", "Lima"):
        out.append((yield ctx.call_activity(say_hello, city)))
    return out


@app.orchestrator
def fan_out(ctx: OrchestrationContext) -> Generator[Any, Any, int]:
    """Fan out ``input`` activities ``echo(0..input-1)`` at once; return their sum."""
    count = int(ctx.get_input())
    results = yield ctx.task_all([ctx.call_activity(echo, i) for i in range(count)])
    return sum(results)


@app.orchestrator
def wait_events(ctx: OrchestrationContext) -> Generator[Any, Any, int]:
    """Wait for ``input`` events named :data:`EVENT_NAME`, one after another; return the
    sum of their data."""
    total = 0
    for _ in range(int(ctx.get_input())):
        total += yield ctx.wait_for_external_event(EVENT_NAME)
    return total


def expected_fan_out(count: int) -> int:
    """What :func:`fan_out` returns for ``count``."""
    return count * (count - 1) // 2


def expected_events(count: int) -> int:
    """What :func:`wait_events` returns when the events carry the data 1..count."""
    return count * (count + 1) // 2
