"""Orchestrators and activities shared by the in-process integration tests."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from durable_azure import DurableApp, OrchestrationContext, TaskFailedError

app = DurableApp()


@app.activity
def add_step(state: dict[str, Any]) -> dict[str, Any]:
    return {"value": state["value"] * 2 + 1, "steps": [*state["steps"], state["value"]]}


@app.activity
def square(n: int) -> int:
    return n * n


@app.activity
async def echo_async(value: Any) -> Any:
    return value


@app.activity
def fail_with(message: str) -> None:
    raise KeyError(message)


@app.activity
def blob_size(text: str) -> dict[str, Any]:
    return {"received": len(text), "reply": "y" * len(text)}


@app.orchestrator
def chain5(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    state = {"value": ctx.get_input(), "steps": []}
    for _ in range(5):
        state = yield ctx.call_activity(add_step, state)
    return state


@app.orchestrator
def fan_out_squares(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    n = ctx.get_input()
    squares = yield ctx.task_all([ctx.call_activity(square, i) for i in range(n)])
    echoed = yield ctx.call_activity(echo_async, len(squares))
    return {"count": echoed, "sum": sum(squares)}


@app.orchestrator
def catches_failure(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    try:
        yield ctx.call_activity(fail_with, "no such key")
    except TaskFailedError as exc:
        return {
            "type": exc.error_type,
            "message": exc.error_message,
            "has_traceback": "fail_with" in exc.stack_trace,
        }
    return {"type": None}


@app.orchestrator
def fails_uncaught(ctx: OrchestrationContext) -> Generator[Any, Any, None]:
    yield ctx.call_activity(fail_with, "boom")


@app.orchestrator
def large_payloads(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    text = ctx.get_input()["text"]
    reply = yield ctx.call_activity(blob_size, text)
    return {"received": reply["received"], "reply": reply["reply"]}
