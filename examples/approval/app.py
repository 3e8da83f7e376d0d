"""Pattern 5, human interaction and timeouts: wait for an approval, escalate if none comes.

The overview's C# shape, in Python: ask for approval, then race an ``"ApprovalEvent"``
against a durable timer with ``ctx.task_any``. If the event wins, the timer is cancelled
and the approval handled; if the deadline passes first, the request is escalated. The
timer is durable: the worker can stop for the whole 72 hours and the escalation still
happens on time. An event raised before the orchestrator starts waiting (while
``request_approval`` still runs, say) is kept and answers the wait at once.

Input: ``{"request": "...", "timeout_seconds": 259200}``; the deadline defaults to 72
hours, and is configurable so tests and demos can use seconds.

Run a worker for it with ``durable-azure worker examples.approval.app:app``; approve with
``client.raise_event(instance_id, "ApprovalEvent", True)``.
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from typing import Any

from durable_azure import DurableApp, OrchestrationContext

app = DurableApp(task_hub="Approval")

#: How long the approver has, unless the input says otherwise.
DEFAULT_TIMEOUT = timedelta(hours=72)

#: The custom status while the orchestrator waits for the approver.
WAITING = "waiting for approval"


@app.activity
def request_approval(request: str) -> str:
    """Ask a person to approve ``request`` (here: pretend to send them a message)."""
    return f"approval requested: {request}"


@app.activity
def handle_approval(approved: Any) -> dict[str, Any]:
    """The approver answered in time; ``approved`` is the event's data."""
    return {"outcome": "approved" if approved else "rejected", "answer": approved}


@app.activity
def escalate(request: str) -> dict[str, Any]:
    """Nobody answered in time: hand the request to someone else."""
    return {"outcome": "escalated", "request": request}


@app.orchestrator
def approval(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    """Request approval; handle the answer, or escalate when the deadline passes."""
    options = ctx.get_input() or {}
    request = str(options.get("request", "a request"))
    timeout = timedelta(seconds=options.get("timeout_seconds", DEFAULT_TIMEOUT.total_seconds()))

    yield ctx.call_activity(request_approval, request)

    due_time = ctx.current_utc_datetime + timeout
    durable_timeout = ctx.create_timer(due_time)
    approval_event = ctx.wait_for_external_event("ApprovalEvent")
    ctx.set_custom_status(WAITING)
    winner = yield ctx.task_any([approval_event, durable_timeout])
    if winner is approval_event:
        durable_timeout.cancel()
        result = yield ctx.call_activity(handle_approval, approval_event.result)
    else:
        result = yield ctx.call_activity(escalate, request)
    ctx.set_custom_status(result["outcome"])
    return result
