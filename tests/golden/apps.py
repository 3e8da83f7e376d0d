"""The orchestrators whose recorded histories live in ``tests/golden/*.json``.

Changing one of them changes what its recording replays against: a change that would
strand running instances makes ``tests/unit/test_golden.py`` fail. If a change is meant
(and no instance of the old code can still be running), re-record with
``python tests/golden/record.py``.

The orchestrators use ``current_utc_datetime`` and ``new_uuid`` on purpose: their
recordings then also pin how the engine derives time and ids during replay.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from durable_azure import DurableApp, OrchestrationContext, TaskFailedError

app = DurableApp(task_hub="GoldenHistories")


@app.activity
def add_step(state: dict[str, Any]) -> dict[str, Any]:
    return {"value": state["value"] * 2 + 1, "steps": [*state["steps"], state["value"]]}


@app.activity
def square(n: int) -> int:
    return n * n


@app.activity
def summarize(values: list[int]) -> dict[str, int]:
    return {"count": len(values), "sum": sum(values)}


@app.activity
def fail_with(message: str) -> None:
    raise KeyError(message)


@app.orchestrator
def golden_chain(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    """Pattern 1: five activities in a row, each fed the previous one's output."""
    state = {"value": ctx.get_input(), "steps": []}
    for _ in range(5):
        state = yield ctx.call_activity(add_step, state)
    return {**state, "id": ctx.new_uuid(), "finished_at": ctx.current_utc_datetime.isoformat()}


@app.orchestrator
def golden_fan_out(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    """Pattern 2: 20 activities in parallel, then one that aggregates their results."""
    n = ctx.get_input()
    squares = yield ctx.task_all([ctx.call_activity(square, i) for i in range(n)])
    return (yield ctx.call_activity(summarize, squares))


@app.orchestrator
def golden_catches_failure(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    """An activity fails; the orchestrator catches it and carries on with a fallback."""
    try:
        yield ctx.call_activity(fail_with, "no such key")
    except TaskFailedError as exc:
        fallback = yield ctx.call_activity(square, 7)
        return {"caught": exc.error_type, "message": exc.error_message, "fallback": fallback}
    return {"caught": None}


@app.orchestrator
def golden_fails_uncaught(ctx: OrchestrationContext) -> Generator[Any, Any, None]:
    """An activity fails and nothing catches it: the orchestration fails."""
    yield ctx.call_activity(square, 3)
    yield ctx.call_activity(fail_with, "boom")


@app.activity
def notify(message: str) -> str:
    return f"sent: {message}"


@app.orchestrator
def golden_approval(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    """Pattern 5: an event raced against a durable timer; the loser is cancelled."""
    timeout = timedelta(seconds=ctx.get_input()["timeout_seconds"])
    yield ctx.call_activity(notify, "please approve")
    timer = ctx.create_timer(ctx.current_utc_datetime + timeout)
    answer = ctx.wait_for_external_event("ApprovalEvent")
    ctx.set_custom_status(WAITING)
    winner = yield ctx.task_any([answer, timer])
    if winner is answer:
        timer.cancel()
        sent = yield ctx.call_activity(notify, f"approved: {answer.result}")
        return {"outcome": "approved", "sent": sent}
    sent = yield ctx.call_activity(notify, "escalated")
    return {"outcome": "escalated", "sent": sent}


#: The custom status of ``golden_approval`` while it waits for the event.
WAITING = "waiting"


@dataclass(frozen=True)
class Recording:
    """One instance ``record.py`` runs: the orchestrator, instance id and input, and the
    events to raise once its custom status reads :data:`WAITING`."""

    orchestrator: str
    instance_id: str
    input: Any = None
    events: tuple[tuple[str, Any], ...] = ()


#: What ``record.py`` runs, by file stem.
RECORDINGS: dict[str, Recording] = {
    "chain": Recording("golden_chain", "golden-chain", 1),
    "fan_out_fan_in": Recording("golden_fan_out", "golden-fan-out", 20),
    "caught_failure": Recording("golden_catches_failure", "golden-caught-failure"),
    "uncaught_failure": Recording("golden_fails_uncaught", "golden-uncaught-failure"),
    "approval_answered": Recording(
        "golden_approval",
        "golden-approval-answered",
        {"timeout_seconds": 3600},
        events=(("ApprovalEvent", True),),
    ),
    "approval_timed_out": Recording(
        "golden_approval", "golden-approval-timed-out", {"timeout_seconds": 1}
    ),
}
