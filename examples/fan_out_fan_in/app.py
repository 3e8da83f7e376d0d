"""Pattern 2, fan-out/fan-in: F1 lists the work, F2 runs once per item in parallel, F3
gets the aggregate.

The overview's C# shape, in Python: ``ctx.task_all`` plays ``Task.WhenAll``. All F2 calls
are scheduled in one checkpoint; their results come back in any order and batches, and
the orchestrator resumes once every one has arrived (with results in call order). A
crash in between does not run the finished ones again.

Run a worker for it with ``durable-azure worker examples.fan_out_fan_in.app:app``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from durable_azure import DurableApp, OrchestrationContext

app = DurableApp(task_hub="FanOutFanIn")

CITIES = ["Tokyo", "Seattle", "London", "Cairo", "Lima"]


@app.activity
def get_work_batch(size: int) -> list[str]:
    """F1: the items to process (``size`` city names, repeating the list as needed)."""
    return [CITIES[i % len(CITIES)] for i in range(size)]


@app.activity
def count_letters(city: str) -> int:
    """F2: the work for one item."""
    return sum(ch.isalpha() for ch in city)


@app.activity
def publish_total(summary: dict[str, int]) -> dict[str, Any]:
    """F3: do something with the aggregate (here: return it, marked published)."""
    return {**summary, "published": True}


@app.orchestrator
def fan_out_fan_in(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    """F1, then F2 on every item at once, then F3 with the sum of their results."""
    work_batch = yield ctx.call_activity(get_work_batch, ctx.get_input() or 20)
    parallel_tasks = [ctx.call_activity(count_letters, item) for item in work_batch]
    counts = yield ctx.task_all(parallel_tasks)
    return (yield ctx.call_activity(publish_total, {"items": len(counts), "sum": sum(counts)}))
