"""Pattern 1, function chaining: ``x = F1(); y = F2(x); z = F3(y); return F4(z)``.

The overview's C# shape, in Python. Each ``yield`` is a checkpoint: if the worker stops
half-way, the orchestration resumes after the last completed step, without running the
earlier activities again. A failed step raises ``TaskFailedError`` in the orchestrator,
where ordinary ``try``/``except`` does the compensation.

Run a worker for it with ``durable-azure worker examples.chaining.app:app``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from durable_azure import DurableApp, OrchestrationContext, TaskFailedError

app = DurableApp(task_hub="Chaining")

CITIES = ["Tokyo", "Seattle", "London", "Cairo", "Lima"]


@app.activity
def pick_cities(count: int) -> list[str]:
    """F1: choose the first ``count`` cities."""
    if not 1 <= count <= len(CITIES):
        raise ValueError(f"count must be between 1 and {len(CITIES)}, not {count}")
    return CITIES[:count]


@app.activity
def greet(cities: list[str]) -> list[str]:
    """F2: one greeting per city."""
    return [f"Hello {city}!" for city in cities]


@app.activity
def join_lines(greetings: list[str]) -> str:
    """F3: one line of text."""
    return " ".join(greetings)


@app.activity
def word_count(text: str) -> dict[str, Any]:
    """F4: the text and how many words it has."""
    return {"text": text, "words": len(text.split())}


@app.activity
def report_failure(message: str) -> str:
    """The compensation step: here it only records what went wrong."""
    return f"reported: {message}"


@app.orchestrator
def chaining(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    """F1 -> F2 -> F3 -> F4, each output the next input; failures are compensated."""
    try:
        x = yield ctx.call_activity(pick_cities, ctx.get_input())
        y = yield ctx.call_activity(greet, x)
        z = yield ctx.call_activity(join_lines, y)
        return (yield ctx.call_activity(word_count, z))
    except TaskFailedError as exc:
        # Error handling / compensation goes here.
        report = yield ctx.call_activity(report_failure, exc.error_message)
        return {"error": exc.error_type, "report": report}
