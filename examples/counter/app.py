"""Pattern 4, stateful singletons: an "eternal" counter that reacts to events.

The overview's C# shape, in Python. Each execution starts from the count it is given,
waits for one ``"operation"`` event, applies it and restarts itself with
``ctx.continue_as_new(count)``: a fresh execution with an empty history, so the history
never grows however many events arrive. Events raised while it restarts are carried over
to the next execution, in order, and none is lost.

Operations: ``"incr"``, ``"decr"``, and ``"stop"``, which ends the orchestration with the
count as its output (the overview's counter never ends; stopping makes the demo finish).
The current count is published as the custom status, so ``get_status`` shows it.

Run a worker for it with ``durable-azure worker examples.counter.app:app``; send events
with ``client.raise_event(instance_id, "operation", "incr")``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from durable_azure import DurableApp, OrchestrationContext

app = DurableApp(task_hub="Counter")


@app.orchestrator
def counter(ctx: OrchestrationContext) -> Generator[Any, Any, int | None]:
    """Wait for an operation, apply it, continue as new with the new count."""
    count: int = ctx.get_input() or 0
    ctx.set_custom_status(count)

    operation = yield ctx.wait_for_external_event("operation")
    if operation == "incr":
        count += 1
    elif operation == "decr":
        count -= 1
    elif operation == "stop":
        return count

    ctx.continue_as_new(count)
    return None
