"""Orchestrators and activities shared by the in-process integration tests."""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from typing import Any

from durable_azure import DurableApp, OrchestrationContext, RetryOptions, TaskFailedError

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


# --- issue 3: the whole orchestration API ------------------------------------------------

#: Attempts per key, for activities that fail a set number of times.
ATTEMPTS: dict[str, int] = {}
#: Keys whose activity has been "fixed" (for rewind tests).
FIXED: set[str] = set()
#: Switch read by `changes_between_episodes` (non-determinism tests).
VERSION = {"value": 1}


@app.activity
def fails_then_succeeds(args: dict[str, Any]) -> str:
    key = args["key"]
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] <= args["failures"]:
        raise ConnectionError(f"attempt {ATTEMPTS[key]} of {key} failed")
    return f"{key} ok after {ATTEMPTS[key]} attempts"


@app.activity
def fails_until_fixed(key: str) -> str:
    if key not in FIXED:
        raise RuntimeError(f"{key} is broken")
    return f"{key} fixed"


@app.orchestrator
def counter(ctx: OrchestrationContext) -> Generator[Any, Any, int]:
    """Pattern 4: an eternal counter; each operation is one execution."""
    count = ctx.get_input()
    operation = yield ctx.wait_for_external_event("operation")
    if operation == "incr":
        count += 1
    elif operation == "decr":
        count -= 1
    elif operation == "stop":
        return count
    ctx.continue_as_new(count)
    return count


@app.orchestrator
def waits_for_go(ctx: OrchestrationContext) -> Generator[Any, Any, list[Any]]:
    first = yield ctx.wait_for_external_event("go")
    second = yield ctx.wait_for_external_event("go")
    return [first, second]


@app.orchestrator
def retries(ctx: OrchestrationContext) -> Generator[Any, Any, str]:
    args = ctx.get_input()
    options = RetryOptions(timedelta(milliseconds=200), args["max_attempts"])
    return (yield ctx.call_activity_with_retry(fails_then_succeeds, options, args))


@app.orchestrator
def child_square(ctx: OrchestrationContext) -> Generator[Any, Any, int]:
    n = ctx.get_input()
    if n < 0:
        yield ctx.call_activity(fail_with, f"negative {n}")
    return (yield ctx.call_activity(square, n))


@app.orchestrator
def parent_of_children(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    ids = ctx.get_input()  # child instance ids, chosen to land on different partitions
    results = yield ctx.task_all(
        [ctx.call_sub_orchestrator(child_square, i + 2, instance_id=c) for i, c in enumerate(ids)]
    )
    try:
        yield ctx.call_sub_orchestrator(child_square, -1, instance_id=ids[0] + "-bad")
    except TaskFailedError as exc:
        return {"results": results, "caught": exc.error_type, "message": exc.error_message}
    return {"results": results, "caught": None}


@app.orchestrator
def rewindable(ctx: OrchestrationContext) -> Generator[Any, Any, list[str]]:
    key = ctx.get_input()
    first = yield ctx.call_activity(add_step, {"value": 1, "steps": []})
    second = yield ctx.call_activity(fails_until_fixed, key)
    return [str(first["value"]), second]


@app.orchestrator
def changes_between_episodes(ctx: OrchestrationContext) -> Generator[Any, Any, str]:
    name = "square" if VERSION["value"] == 1 else "echo_async"
    yield ctx.call_activity(name, 3)
    yield ctx.wait_for_external_event("continue")
    return "done"


@app.orchestrator
def reports_progress(ctx: OrchestrationContext) -> Generator[Any, Any, str]:
    ctx.set_custom_status({"stage": "waiting", "step": 1})
    yield ctx.wait_for_external_event("go")
    ctx.set_custom_status({"stage": "done", "step": 2})
    return "finished"
