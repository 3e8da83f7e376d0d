"""The benchmark orchestrations."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from durable_azure import DurableApp, OrchestrationContext

app = DurableApp()


@app.activity
def say_hello(city: str) -> str:
    return f"Hello {city}!"


@app.orchestrator
def hello_sequence5(ctx: OrchestrationContext) -> Generator[Any, Any, list[str]]:
    """HelloSequence5: five activities, one after the other."""
    out = []
    for city in ("Tokyo", "Seattle", "London", "Cairo", "Lima"):
        out.append((yield ctx.call_activity(say_hello, city)))
    return out
