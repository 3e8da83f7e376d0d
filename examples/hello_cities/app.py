"""The example's orchestrators and activities.

Run a worker for it with ``durable-azure worker examples.hello_cities.app:app``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from durable_azure import DurableApp, OrchestrationContext

app = DurableApp(task_hub="HelloCities")

CITIES = ["Tokyo", "Seattle", "London", "Cairo", "Lima"]


@app.activity
def say_hello(city: str) -> str:
    return f"Hello {city}!"


@app.activity
def count_letters(city: str) -> int:
    return sum(ch.isalpha() for ch in city)


@app.orchestrator
def hello_sequence(ctx: OrchestrationContext) -> Generator[Any, Any, list[str]]:
    """Pattern 1, function chaining: one activity after another."""
    greetings = []
    for city in ctx.get_input() or CITIES:
        greetings.append((yield ctx.call_activity(say_hello, city)))
    return greetings


@app.orchestrator
def letters_fan_out(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    """Pattern 2, fan-out/fan-in: run activities in parallel, then aggregate."""
    cities = ctx.get_input() or CITIES
    counts = yield ctx.task_all([ctx.call_activity(count_letters, c) for c in cities])
    return {"per_city": dict(zip(cities, counts, strict=False)), "total": sum(counts)}
