"""Orchestrators and activities for tests/integration/test_bad_input.py (their own app)."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from durable_azure import DurableApp, OrchestrationContext, TaskFailedError

app = DurableApp()

#: Orchestrator names that look like OData syntax, all running the same code.
ODD_NAMES = ("it's", 'say "hi"', "a eq b", "x' or Name ne '", "100% and more", "a&b=c+d")


@app.activity
def step(n: int) -> int:
    return n + 1


@app.activity
def slow_step(args: dict[str, Any]) -> int:
    time.sleep(args["sleep"])
    return int(args["n"]) + 1


@app.activity
def returns_a_set(_: Any) -> Any:
    return {1, 2, 3}


@app.activity
def make_text(size: int) -> str:
    return pseudo_random_text(size, seed=size)


@app.orchestrator
def chain3(ctx: OrchestrationContext) -> Generator[Any, Any, int]:
    n = ctx.get_input()
    for _ in range(3):
        n = yield ctx.call_activity(step, n)
    return n


@app.orchestrator
def slow_chain(ctx: OrchestrationContext) -> Generator[Any, Any, list[int]]:
    """``{"steps": k, "sleep": s}``: k activities in a row, each sleeping s seconds."""
    args = ctx.get_input()
    seen = []
    n = 0
    for _ in range(args["steps"]):
        n = yield ctx.call_activity(slow_step, {"n": n, "sleep": args["sleep"]})
        seen.append(n)
    return seen


@app.orchestrator
def catches_unserializable_result(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
    try:
        yield ctx.call_activity(returns_a_set, None)
    except TaskFailedError as exc:
        return {"type": exc.error_type, "message": exc.error_message, "task": exc.task_name}
    return "not failed"


@app.orchestrator
def returns_an_object(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
    yield ctx.call_activity(step, 1)
    return object()


@app.orchestrator
def unserializable_activity_input(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
    return (yield ctx.call_activity(step, {1, 2}))


@app.orchestrator
def unserializable_custom_status(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
    ctx.set_custom_status({"seen": {1, 2}})
    return (yield ctx.call_activity(step, 1))


@app.orchestrator
def waits_for_data(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
    return (yield ctx.wait_for_external_event("data"))


@app.orchestrator
def big_round_trip(ctx: OrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    """Input ``{"text": ..., "reply_size": n}``: an activity returns n characters."""
    args = ctx.get_input()
    reply = ""
    if args["reply_size"]:
        reply = yield ctx.call_activity(make_text, args["reply_size"])
    return {"received": len(args["text"]), "head": args["text"][:16], "reply": reply}


def odd_named(ctx: OrchestrationContext) -> Generator[Any, Any, str]:
    yield ctx.call_activity(step, 0)
    return ctx.instance_id


for _name in ODD_NAMES:
    app.orchestrator(name=_name)(odd_named)


def pseudo_random_text(size: int, *, seed: int) -> str:
    """``size`` characters that compress poorly (so blobs really hold megabytes)."""
    import random

    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.-"
    return "".join(rng.choices(alphabet, k=size))
