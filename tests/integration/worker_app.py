"""A DurableApp for the subprocess workers of the crash-recovery tests.

Every activity execution appends JSON lines ``{"instance", "input", "pid", "phase"}`` to
the file named by ``DURABLE_TEST_LOG`` (one ``write`` per line on an ``O_APPEND``
descriptor, so lines from concurrent threads and processes never interleave): phase
``"start"`` when it begins and ``"done"`` when it returns, after sleeping
``DURABLE_TEST_ACTIVITY_SLEEP`` seconds (default 0.2) in between so that a kill can land
while activities are running. ``"done"`` means the function returned; whether its response
reached the control queue is another matter (that is what the tests probe).

Results are pure functions of the inputs (:func:`expected_chain10`,
:func:`expected_fanout100`), so the tests can check outputs exactly.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from durable_azure import DurableApp
from tests import activity_log

LOG_ENV = "DURABLE_TEST_LOG"
SLEEP_ENV = "DURABLE_TEST_ACTIVITY_SLEEP"
CHAIN_LENGTH = 10
FANOUT_WIDTH = 100

app = DurableApp()


def record(instance_id: str, key: str, phase: str) -> None:
    """Append one execution record to the log file (if ``DURABLE_TEST_LOG`` is set)."""
    entry = {"instance": instance_id, "input": key, "pid": os.getpid(), "phase": phase}
    activity_log.append(os.environ.get(LOG_ENV), entry)


def read_log(path: str) -> list[dict[str, Any]]:
    """The records written so far."""
    return activity_log.read(path)


def _work(instance_id: str, key: str) -> None:
    record(instance_id, key, "start")
    time.sleep(float(os.environ.get(SLEEP_ENV, "0.2")))
    record(instance_id, key, "done")


def chain_step_value(step: int, value: int) -> int:
    return value * 3 + step + 1


def fanout_item_value(index: int) -> int:
    return index * index + 7


@app.activity
def chain_step(data: dict[str, Any]) -> int:
    _work(data["instance"], f"chain:{data['step']}")
    return chain_step_value(data["step"], data["value"])


@app.activity
def fanout_item(data: dict[str, Any]) -> int:
    _work(data["instance"], f"fanout:{data['index']}")
    return fanout_item_value(data["index"])


@app.orchestrator
def chain10(ctx: Any) -> Any:
    value = int(ctx.get_input() or 0)
    results = []
    for step in range(CHAIN_LENGTH):
        value = yield ctx.call_activity(
            chain_step, {"instance": ctx.instance_id, "step": step, "value": value}
        )
        results.append(value)
    return results


@app.orchestrator
def fanout100(ctx: Any) -> Any:
    tasks = [
        ctx.call_activity(fanout_item, {"instance": ctx.instance_id, "index": i})
        for i in range(FANOUT_WIDTH)
    ]
    results = yield ctx.task_all(tasks)
    return {"sum": sum(results), "results": results}


def expected_chain10(start: int) -> list[int]:
    value, out = start, []
    for step in range(CHAIN_LENGTH):
        value = chain_step_value(step, value)
        out.append(value)
    return out


def expected_fanout100() -> dict[str, Any]:
    results = [fanout_item_value(i) for i in range(FANOUT_WIDTH)]
    return {"sum": sum(results), "results": results}


@app.orchestrator
def timer_then_event(ctx: Any) -> Any:
    """Waits on a durable timer, then on an external event (for kill-and-restart tests)."""
    seconds = ctx.get_input()
    yield ctx.create_timer(ctx.current_utc_datetime + timedelta(seconds=seconds))
    answer = yield ctx.wait_for_external_event("answer")
    return {"answer": answer, "woke_at_or_after": seconds}
