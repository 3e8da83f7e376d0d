"""The DurableApp run by the worker subprocesses of the chaos suite.

Mixed orchestrations whose outputs are pure functions of their inputs (see
:func:`expected_output`), so the chaos test can check every output exactly:

* ``chaos_chain``   - 5 activities in sequence;
* ``chaos_fanout``  - 10 activities in parallel;
* ``chaos_timer``   - a durable timer (1-2 s), then one activity;
* ``chaos_event``   - waits for the external event ``go`` (raised by the test), then one
  activity on the event data;
* ``chaos_parent``  - one activity, then a sub-orchestration ``chaos_child`` (two activities)
  under the explicit id ``<parent>-child`` (so usually on another partition);
* ``chaos_can``     - ``continue_as_new`` through 3 generations, one activity each.

Every activity execution appends one JSON line ``{"instance", "key", "pid"}`` to the file
named by ``CHAOS_ACTIVITY_LOG`` (one ``os.write`` on an ``O_APPEND`` descriptor, so lines
of concurrent processes never interleave); duplicates are counted from it. Activities
sleep ``CHAOS_ACTIVITY_SLEEP`` seconds (default 0.1) so that kills land while they run.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from durable_azure import DurableApp
from tests import activity_log

LOG_ENV = "CHAOS_ACTIVITY_LOG"
SLEEP_ENV = "CHAOS_ACTIVITY_SLEEP"
EVENT_NAME = "go"
CHAIN_LENGTH = 5
FANOUT_WIDTH = 10
GENERATIONS = 3
KINDS = ("chain", "fanout", "timer", "event", "parent", "can")
ORCHESTRATOR_OF = {kind: f"chaos_{kind}" for kind in KINDS}

app = DurableApp()


# --- pure functions (shared with the test) ------------------------------------------------


def work_value(key: str, value: int) -> int:
    """What the ``chaos_work`` activity returns for ``key`` and ``value``."""
    return (value * 31 + sum(ord(c) for c in key)) % 1_000_003


def child_id(parent_id: str) -> str:
    return f"{parent_id}-child"


def timer_seconds(seed: int) -> int:
    return 1 + seed % 2


def event_data(instance_id: str) -> str:
    return f"event-for-{instance_id}"


def expected_keys(kind: str) -> set[str]:
    """The activity keys an instance of ``kind`` runs (the child's run under its own id)."""
    if kind == "chain":
        return {f"chain:{i}" for i in range(CHAIN_LENGTH)}
    if kind == "fanout":
        return {f"fanout:{i}" for i in range(FANOUT_WIDTH)}
    if kind in ("timer", "event", "parent"):
        return {f"{kind}:0"}
    if kind == "child":
        return {"child:0", "child:1"}
    if kind == "can":
        return {f"can:{g}" for g in range(GENERATIONS)}
    raise ValueError(kind)


def _chain(seed: int) -> list[int]:
    value, out = seed, []
    for i in range(CHAIN_LENGTH):
        value = work_value(f"chain:{i}", value)
        out.append(value)
    return out


def _child(value: int) -> list[int]:
    first = work_value("child:0", value)
    return [first, work_value("child:1", first)]


def expected_output(kind: str, instance_id: str, seed: int) -> Any:
    """The output of a completed instance of ``kind`` started with input ``seed``."""
    if kind == "chain":
        return _chain(seed)
    if kind == "fanout":
        results = [work_value(f"fanout:{i}", seed + i) for i in range(FANOUT_WIDTH)]
        return {"sum": sum(results), "results": results}
    if kind == "timer":
        return {"slept": timer_seconds(seed), "value": work_value("timer:0", seed)}
    if kind == "event":
        data = event_data(instance_id)
        return {"event": data, "value": work_value("event:0", seed + len(data))}
    if kind == "parent":
        first = work_value("parent:0", seed)
        return {"first": first, "child": _child(first)}
    if kind == "child":
        return _child(seed)
    if kind == "can":
        acc = seed
        for g in range(GENERATIONS):
            acc = work_value(f"can:{g}", acc)
        return {"generations": GENERATIONS, "acc": acc}
    raise ValueError(kind)


# --- the activity ---------------------------------------------------------------------------


def record(instance_id: str, key: str) -> None:
    activity_log.append(
        os.environ.get(LOG_ENV), {"instance": instance_id, "key": key, "pid": os.getpid()}
    )


def read_log(path: str) -> list[dict[str, Any]]:
    return activity_log.read(path)


@app.activity
def chaos_work(data: dict[str, Any]) -> int:
    time.sleep(float(os.environ.get(SLEEP_ENV, "0.1")))
    result = work_value(data["key"], data["value"])
    record(data["instance"], data["key"])
    return result


def _work(ctx: Any, key: str, value: int) -> Any:
    return ctx.call_activity(chaos_work, {"instance": ctx.instance_id, "key": key, "value": value})


# --- orchestrations -------------------------------------------------------------------------


@app.orchestrator
def chaos_chain(ctx: Any) -> Any:
    value = int(ctx.get_input())
    out = []
    for i in range(CHAIN_LENGTH):
        value = yield _work(ctx, f"chain:{i}", value)
        out.append(value)
    return out


@app.orchestrator
def chaos_fanout(ctx: Any) -> Any:
    seed = int(ctx.get_input())
    results = yield ctx.task_all([_work(ctx, f"fanout:{i}", seed + i) for i in range(FANOUT_WIDTH)])
    return {"sum": sum(results), "results": results}


@app.orchestrator
def chaos_timer(ctx: Any) -> Any:
    seed = int(ctx.get_input())
    seconds = timer_seconds(seed)
    yield ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=seconds))
    value = yield _work(ctx, "timer:0", seed)
    return {"slept": seconds, "value": value}


@app.orchestrator
def chaos_event(ctx: Any) -> Any:
    seed = int(ctx.get_input())
    data = yield ctx.wait_for_external_event(EVENT_NAME)
    value = yield _work(ctx, "event:0", seed + len(str(data)))
    return {"event": data, "value": value}


@app.orchestrator
def chaos_parent(ctx: Any) -> Any:
    seed = int(ctx.get_input())
    first = yield _work(ctx, "parent:0", seed)
    child = yield ctx.call_sub_orchestrator(chaos_child, first, child_id(ctx.instance_id))
    return {"first": first, "child": child}


@app.orchestrator
def chaos_child(ctx: Any) -> Any:
    value = int(ctx.get_input())
    first = yield _work(ctx, "child:0", value)
    second = yield _work(ctx, "child:1", first)
    return [first, second]


@app.orchestrator
def chaos_can(ctx: Any) -> Any:
    state = ctx.get_input()
    generation, acc = int(state["generation"]), int(state["acc"])
    acc = yield _work(ctx, f"can:{generation}", acc)
    if generation + 1 < GENERATIONS:
        ctx.continue_as_new({"generation": generation + 1, "acc": acc})
        return None
    return {"generations": GENERATIONS, "acc": acc}


def initial_input(kind: str, seed: int) -> Any:
    """The client input that starts an instance of ``kind`` with ``seed``."""
    if kind == "can":
        return {"generation": 0, "acc": seed}
    return seed
