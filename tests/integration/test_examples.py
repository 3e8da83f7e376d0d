"""The examples (one per Durable Functions pattern) run against Azurite.

Each test runs an in-process worker for the example's own ``DurableApp`` on the test's
task hub. The scenarios ``python -m examples.<name>`` drives run here too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from durable_azure import DurableApp, DurableClient, OrchestrationStatus, Worker, WorkerOptions
from durable_azure.client import DurableOrchestrationStatus
from examples._common import Scenario, run_scenario
from examples.approval import __main__ as approval_main
from examples.approval.app import WAITING, approval, escalate, handle_approval
from examples.approval.app import app as approval_app
from examples.chaining import __main__ as chaining_main
from examples.chaining.app import app as chaining_app
from examples.counter import __main__ as counter_main
from examples.counter.app import app as counter_app
from examples.fan_out_fan_in import __main__ as fan_out_main
from examples.fan_out_fan_in.app import app as fan_out_app

pytestmark = pytest.mark.azurite

WAIT = 60.0  # seconds: an upper bound so a broken build fails instead of hanging


@asynccontextmanager
async def running(app: DurableApp, azurite: Any, task_hub: str) -> AsyncIterator[DurableClient]:
    """A worker for ``app`` on ``task_hub`` while the block runs, and a client for it."""
    worker = Worker(
        app,
        connection_string=azurite.connection_string,
        task_hub=task_hub,
        options=WorkerOptions(max_poll_interval=0.5),
    )
    await worker.start()
    client = DurableClient.from_app(
        app, connection_string=azurite.connection_string, task_hub=task_hub
    )
    try:
        yield client
    finally:
        await client.close()
        await worker.stop()


async def wait_until(
    client: DurableClient,
    instance_id: str,
    condition: Callable[[DurableOrchestrationStatus], bool],
    what: str,
    *,
    show_history: bool = False,
) -> DurableOrchestrationStatus:
    """Poll the instance's status until ``condition`` holds (fail after ``WAIT`` s)."""
    deadline = time.monotonic() + WAIT
    while True:
        status = await client.get_status(instance_id, show_history=show_history)
        if condition(status):
            return status
        if status.is_terminal or time.monotonic() > deadline:
            pytest.fail(f"{instance_id} never got {what}; last status {status.to_json()}")
        await asyncio.sleep(0.05)


async def completed(client: DurableClient, instance_id: str) -> Any:
    status = await client.wait_for_completion(instance_id, timeout=WAIT)
    assert status.runtime_status is OrchestrationStatus.Completed, status.to_json()
    return status.output


# --- what `python -m examples.<name>` runs --------------------------------------------------


@pytest.mark.parametrize(
    ("app", "scenario"),
    [
        (chaining_app, chaining_main.scenario),
        (fan_out_app, fan_out_main.scenario),
        (counter_app, counter_main.scenario),
        (approval_app, approval_main.scenario),
    ],
    ids=["chaining", "fan_out_fan_in", "counter", "approval"],
)
async def test_example_main_scenario_succeeds(
    app: DurableApp,
    scenario: Scenario,
    azurite: Any,
    task_hub: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await run_scenario(app, scenario, azurite.connection_string, task_hub) == 0
    assert '"runtimeStatus": "Completed"' in capsys.readouterr().out


# --- pattern 1: chaining ----------------------------------------------------------------------


async def test_chaining_feeds_each_output_to_the_next_step(azurite: Any, task_hub: str) -> None:
    async with running(chaining_app, azurite, task_hub) as client:
        ok = await client.start_new("chaining", client_input=3)
        failing = await client.start_new("chaining", client_input=0)

        assert await completed(client, ok) == {
            "text": "Hello Tokyo! Hello Seattle! Hello London!",
            "words": 6,
        }
        # F1 rejects 0 cities; the orchestrator catches the failure and compensates.
        assert await completed(client, failing) == {
            "error": "ValueError",
            "report": "reported: count must be between 1 and 5, not 0",
        }


# --- pattern 2: fan-out/fan-in ----------------------------------------------------------------


async def test_fan_out_fan_in_aggregates_twenty_parallel_results(
    azurite: Any, task_hub: str
) -> None:
    async with running(fan_out_app, azurite, task_hub) as client:
        instance_id = await client.start_new("fan_out_fan_in", client_input=20)
        output = await completed(client, instance_id)
        status = await client.get_status(instance_id, show_history=True)

    # Tokyo 5, Seattle 7, London 6, Cairo 5, Lima 4 letters, four times over.
    assert output == {"items": 20, "sum": 4 * (5 + 7 + 6 + 5 + 4), "published": True}
    scheduled = [e for e in status.history or [] if e["EventType"] == "TaskScheduled"]
    assert [e["Name"] for e in scheduled].count("count_letters") == 20


# --- pattern 4: the counter -------------------------------------------------------------------


async def test_counter_counts_every_event_across_continue_as_new(
    azurite: Any, task_hub: str
) -> None:
    async with running(counter_app, azurite, task_hub) as client:
        instance_id = await client.start_new("counter", client_input=0)
        for _ in range(20):
            await client.raise_event(instance_id, "operation", "incr")

        await wait_until(client, instance_id, lambda s: s.custom_status == 20, "count 20")
        await client.raise_event(instance_id, "operation", "decr")
        await wait_until(client, instance_id, lambda s: s.custom_status == 19, "count 19")
        await client.raise_event(instance_id, "operation", "stop")

        assert await completed(client, instance_id) == 19
        status = await client.get_status(instance_id, show_history=True)

    # continue_as_new started a fresh history each time: only "stop" is in the last one.
    raised = [e for e in status.history or [] if e["EventType"] == "EventRaised"]
    assert len(raised) == 1


# --- pattern 5: approval with a timeout -------------------------------------------------------


@pytest.mark.parametrize(("answer", "outcome"), [(True, "approved"), (False, "rejected")])
async def test_approval_answered_before_the_deadline_is_handled(
    answer: bool, outcome: str, azurite: Any, task_hub: str
) -> None:
    async with running(approval_app, azurite, task_hub) as client:
        instance_id = await client.start_new(
            "approval", client_input={"request": "expense", "timeout_seconds": 3600}
        )
        await wait_until(client, instance_id, lambda s: s.custom_status == WAITING, WAITING)
        await client.raise_event(instance_id, "ApprovalEvent", answer)

        assert await completed(client, instance_id) == {"outcome": outcome, "answer": answer}


async def test_approval_without_an_answer_is_escalated_at_the_deadline(
    azurite: Any, task_hub: str
) -> None:
    async with running(approval_app, azurite, task_hub) as client:
        instance_id = await client.start_new(
            "approval", client_input={"request": "expense", "timeout_seconds": 1}
        )
        assert await completed(client, instance_id) == {
            "outcome": "escalated",
            "request": "expense",
        }
        status = await client.get_status(instance_id, show_history=True)

    kinds = [e["EventType"] for e in status.history or []]
    assert "TimerFired" in kinds
    assert "EventRaised" not in kinds


async def test_approval_raised_right_after_start_is_not_lost(azurite: Any, task_hub: str) -> None:
    async with running(approval_app, azurite, task_hub) as client:
        instance_id = await client.start_new(
            "approval", client_input={"request": "early", "timeout_seconds": 3600}
        )
        await client.raise_event(instance_id, "ApprovalEvent", True)

        assert await completed(client, instance_id) == {"outcome": "approved", "answer": True}


async def test_approval_event_that_arrives_before_the_wait_is_kept(
    azurite: Any, task_hub: str
) -> None:
    # The same orchestrator, with a request_approval that runs until the test lets it
    # finish: the event is then certainly recorded before the orchestrator waits for it.
    gate = threading.Event()
    gated_app = DurableApp()
    gated_app.orchestrator(approval)
    gated_app.activity(handle_approval)
    gated_app.activity(escalate)

    @gated_app.activity(name="request_approval")
    def gated_request(request: str) -> str:
        gate.wait(WAIT)
        return f"approval requested: {request}"

    try:
        async with running(gated_app, azurite, task_hub) as client:
            instance_id = await client.start_new(
                "approval", client_input={"request": "gated", "timeout_seconds": 3600}
            )
            await client.raise_event(instance_id, "ApprovalEvent", "yes, early")

            def event_recorded_while_requesting(status: DurableOrchestrationStatus) -> bool:
                kinds = [e["EventType"] for e in status.history or []]
                return "EventRaised" in kinds and "TaskCompleted" not in kinds

            await wait_until(
                client,
                instance_id,
                event_recorded_while_requesting,
                "the event recorded while request_approval runs",
                show_history=True,
            )
            gate.set()

            assert await completed(client, instance_id) == {
                "outcome": "approved",
                "answer": "yes, early",
            }
    finally:
        gate.set()
