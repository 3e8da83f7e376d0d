"""Poison messages: set aside after too many deliveries, never looped, never dropped."""

from __future__ import annotations

import json
from collections.abc import Generator
from datetime import timedelta
from typing import Any

import pytest

from durable_azure import OrchestrationContext, OrchestrationStatus, TaskFailedError
from durable_azure.engine.history import ExecutionCompleted
from durable_azure.errors import NotFoundError
from durable_azure.storage.primitives import UpdateMode
from durable_azure.storage.queues import TaskHubQueue
from tests.unit.harness import VISIBILITY, Harness

MAX = 3  # deliveries before a message is set aside, for these tests


def chain(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
    return (yield ctx.call_activity("double", ctx.get_input()))


def catches(ctx: OrchestrationContext) -> Generator[Any, Any, Any]:
    try:
        yield ctx.call_activity("crashes_worker", 1)
    except TaskFailedError as exc:
        return {"caught": exc.error_type, "message": exc.error_message}
    return "not reached"


def double(x: int) -> int:
    return x * 2


@pytest.fixture
def h() -> Harness:
    harness = Harness(
        {"chain": chain, "catches": catches}, {"double": double, "crashes_worker": double}
    )
    low_threshold(harness)
    return harness


def low_threshold(h: Harness) -> None:
    h.episodes.max_dequeue_count = MAX
    h.activities.max_dequeue_count = MAX


async def die_holding(h: Harness, queue: TaskHubQueue) -> int:
    """The worker receives what is visible in ``queue`` and dies before finishing it."""
    received, _ = await queue.receive(32, VISIBILITY)
    h.restart()
    low_threshold(h)
    h.clock.advance(VISIBILITY.total_seconds() + 1)
    return len(received)


async def test_control_message_that_kills_the_worker_is_set_aside_and_fails_the_instance(
    h: Harness,
) -> None:
    await h.start("chain", "inst", 4)
    await h.run_episodes()  # the first episode commits: the instance is Running
    await h.run_activities()  # the response is now in the control queue
    control = h.provider.control_queue_of("inst")
    for _ in range(MAX):
        assert await die_holding(h, control) == 1
    await h.run_episodes()  # delivery MAX + 1: set aside, not processed

    assert await control.queue.approximate_count() == 0
    [record] = await h.provider.poison.list()
    assert record.queue == control.name
    assert record.instance_id == "inst"
    assert record.dequeue_count == MAX + 1
    assert json.loads(record.body)["TaskMessage"]["Event"]["EventType"] == 5  # TaskCompleted
    status = await h.client.get_status("inst")
    assert status.runtime_status is OrchestrationStatus.Failed
    assert status.failure_details is not None
    assert status.failure_details.error_type == "PoisonMessageError"
    assert record.message_id in status.failure_details.error_message
    assert record.name in status.failure_details.error_message
    events = await h.history("inst")
    assert isinstance(events[-2], ExecutionCompleted)  # history and row agree

    # One call recovers it: the instance is rewound and the message sent back, in that
    # order, so the message is applied (not discarded as news for a Failed instance).
    done = await h.client.requeue_poison(record.name)
    assert done == f"rewound inst; sent the message back to {control.name}"
    assert await h.provider.poison.list() == []
    await h.drain()
    status = await h.client.get_status("inst")
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == 8


async def test_work_item_that_kills_the_worker_becomes_a_catchable_failure(h: Harness) -> None:
    await h.start("catches", "inst")
    await h.run_episodes()
    for _ in range(MAX):
        assert await die_holding(h, h.provider.work_items) == 1
    await h.run_activities()  # set aside; the orchestration gets a TaskFailed
    assert h.calls["crashes_worker"] == 0  # the activity never ran again
    await h.drain()

    [record] = await h.provider.poison.list()
    assert record.queue == h.provider.work_items.name
    result = await h.output("inst")
    assert result["caught"] == "PoisonMessageError"
    assert "'crashes_worker' was delivered 4 times" in result["message"]
    assert record.name in result["message"]
    # The instance caught it and completed: requeue just forgets the work item.
    done = await h.client.requeue_poison(record.name)
    assert done == "dropped the work item (its instance had already handled the failure)"
    assert h.calls["crashes_worker"] == 0


async def test_poison_record_can_be_dropped(h: Harness) -> None:
    await h.start("chain", "inst", 1)
    control = h.provider.control_queue_of("inst")
    for _ in range(MAX):
        await die_holding(h, control)
    await h.run_episodes()
    [record] = await h.provider.poison.list()
    status = await h.client.get_status("inst")  # a start that never ran: Failed, not Pending
    assert status.runtime_status is OrchestrationStatus.Failed
    await h.provider.poison.drop(record.name)
    assert await h.provider.poison.list() == []
    with pytest.raises(NotFoundError):
        await h.provider.poison.drop(record.name)


async def test_a_message_below_the_threshold_is_processed_normally(h: Harness) -> None:
    await h.start("chain", "inst", 5)
    control = h.provider.control_queue_of("inst")
    for _ in range(MAX - 1):
        await die_holding(h, control)
    await h.drain()
    await h.assert_completed("inst", 10)
    assert await h.provider.poison.list() == []
    assert timedelta(0) < VISIBILITY


async def test_set_aside_retried_when_another_writer_commits_first(h: Harness) -> None:
    await h.start("chain", "inst", 4)
    await h.run_episodes()
    await h.run_activities()
    control = h.provider.control_queue_of("inst")
    for _ in range(MAX):
        await die_holding(h, control)
    # Another writer moves the sentinel between this worker's history load and its commit.
    real_load = h.provider.load_history

    async def load_then_race(instance_id: str) -> Any:
        loaded = await real_load(instance_id)
        sentinel = await h.provider.history.table.get(instance_id, "sentinel")
        assert sentinel is not None
        await h.provider.history.table.upsert(dict(sentinel.properties), UpdateMode.MERGE)
        return loaded

    h.provider.load_history = load_then_race  # type: ignore[method-assign]
    await h.run_episodes()  # SessionAbortedError inside the set-aside: logged, not raised
    h.provider.load_history = real_load  # type: ignore[method-assign]
    assert await control.queue.approximate_count() == 1  # kept for the next delivery
    h.clock.advance(VISIBILITY.total_seconds() + 1)
    await h.run_episodes()
    assert await control.queue.approximate_count() == 0
    status = await h.client.get_status("inst")
    assert status.runtime_status is OrchestrationStatus.Failed
    assert len(await h.provider.poison.list()) == 1
