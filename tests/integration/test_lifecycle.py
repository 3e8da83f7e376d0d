"""The whole orchestration API on Azurite: events, eternal orchestrations, children,
retries, and controlling instances once started."""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from durable_azure import (
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InstanceStateError,
    OrchestrationStatus,
)
from durable_azure.engine.history import (
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
)
from durable_azure.storage.names import escape_key
from tests.integration import apps
from tests.integration.conftest import Hub

pytestmark = pytest.mark.azurite


async def wait_for_status(hub: Hub, instance_id: str, status: OrchestrationStatus) -> None:
    for _ in range(400):
        if (await hub.client.get_status(instance_id)).runtime_status is status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{instance_id} never became {status.name}")


async def test_counter_1000_increments_with_continue_as_new(hub: Hub, azurite: Any) -> None:
    instance_id = await hub.client.start_new("counter", "counter-1", 0)
    for _ in range(1000):
        await hub.client.raise_event(instance_id, "operation", "incr")
    await hub.client.raise_event(instance_id, "operation", "decr")
    await hub.client.raise_event(instance_id, "operation", "stop")
    status = await hub.client.wait_for_completion(instance_id, timeout=300)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == 999

    # Only the current execution's rows remain (read with the plain SDK).
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    rows = list(
        service.get_table_client(f"{hub.task_hub}History").query_entities(
            "PartitionKey eq @pk", parameters={"pk": escape_key(instance_id)}
        )
    )
    sentinel = next(r for r in rows if r["RowKey"] == "sentinel")
    events = [r for r in rows if r["RowKey"] != "sentinel"]
    assert {r["ExecutionId"] for r in events} == {sentinel["ExecutionId"]}
    assert len(events) < 20, [r["EventType"] for r in events]


async def test_events_raised_before_the_wait_are_kept_and_delivered_in_order(hub: Hub) -> None:
    instance_id = await hub.client.start_new("waits_for_go")
    await hub.client.raise_event(instance_id, "go", "first")
    await hub.client.raise_event(instance_id, "GO", "second")  # names are case-insensitive
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.output == ["first", "second"]


async def test_raising_to_unknown_or_finished_instances_is_a_clear_error(hub: Hub) -> None:
    with pytest.raises(InstanceNotFoundError, match="no-such-id"):
        await hub.client.raise_event("no-such-id", "go", 1)
    instance_id = await hub.client.start_new("chain5", client_input=1)
    await hub.client.wait_for_completion(instance_id, timeout=60)
    with pytest.raises(InstanceStateError, match="it is Completed"):
        await hub.client.raise_event(instance_id, "go", 1)


async def test_sub_orchestrations_across_partitions_with_a_failing_child(hub: Hub) -> None:
    names = hub.worker.provider.names
    children: list[str] = []
    i = 0
    while len({names.partition_of(c) for c in children}) < 3:  # three distinct partitions
        candidate = f"child-{i}"
        if names.partition_of(candidate) not in {names.partition_of(c) for c in children}:
            children.append(candidate)
        i += 1
    parent = "parent-1"
    await hub.client.start_new("parent_of_children", parent, children)
    status = await hub.client.wait_for_completion(parent, timeout=120)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == {
        "results": [4, 9, 16],
        "caught": "TaskFailedError",
        "message": "activity 'fail_with' failed: KeyError: 'negative -1'",
    }
    for child in children:
        child_status = await hub.client.get_status(child)
        assert child_status.runtime_status is OrchestrationStatus.Completed
        assert child_status.parent_instance_id == parent
        assert child_status.to_json()["parentInstanceId"] == parent
    bad = await hub.client.get_status(children[0] + "-bad")
    assert bad.runtime_status is OrchestrationStatus.Failed


async def test_retry_succeeds_on_the_third_attempt(hub: Hub) -> None:
    args = {"key": "retry-ok", "failures": 2, "max_attempts": 5}
    instance_id = await hub.client.start_new("retries", client_input=args)
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == "retry-ok ok after 3 attempts"
    events = (await hub.worker.provider.load_history(instance_id)).events
    assert sum(isinstance(e, TaskScheduled) for e in events) == 3
    assert sum(isinstance(e, TaskFailed) for e in events) == 2
    assert sum(isinstance(e, TimerCreated) for e in events) == 2  # durable waits between
    assert sum(isinstance(e, TaskCompleted) for e in events) == 1


async def test_retry_gives_up_after_max_attempts_with_the_last_error(hub: Hub) -> None:
    args = {"key": "retry-never", "failures": 100, "max_attempts": 3}
    instance_id = await hub.client.start_new("retries", client_input=args)
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Failed
    assert status.failure_details is not None
    inner = status.failure_details.inner_failure
    assert inner is not None
    assert inner.error_type == "ConnectionError"
    assert inner.error_message == "attempt 3 of retry-never failed"


async def test_suspend_stops_progress_and_keeps_events_resume_continues(hub: Hub) -> None:
    instance_id = await hub.client.start_new("waits_for_go")
    await wait_for_status(hub, instance_id, OrchestrationStatus.Running)
    await hub.client.suspend(instance_id, "maintenance")
    await wait_for_status(hub, instance_id, OrchestrationStatus.Suspended)
    await hub.client.raise_event(instance_id, "go", 1)
    await hub.client.raise_event(instance_id, "go", 2)
    # Both events reach the history (kept), but the code does not see them yet: the
    # instance stays Suspended. Wait until they are recorded, then check.
    for _ in range(200):
        events = (await hub.worker.provider.load_history(instance_id)).events
        if sum(type(e).__name__ == "EventRaised" for e in events) == 2:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("events raised while suspended were not recorded")
    assert (await hub.client.get_status(instance_id)).runtime_status is (
        OrchestrationStatus.Suspended
    )
    await hub.client.resume(instance_id, "done")
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.output == [1, 2]


async def test_terminate_a_running_and_a_pending_instance(hub: Hub) -> None:
    running = await hub.client.start_new("waits_for_go")
    await wait_for_status(hub, running, OrchestrationStatus.Running)
    await hub.client.terminate(running, "no longer needed")
    status = await hub.client.wait_for_completion(running, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Terminated
    assert status.output == "no longer needed"

    from datetime import datetime, timedelta

    later = datetime.now(UTC) + timedelta(seconds=3)
    pending = await hub.client.start_new("chain5", client_input=1, start_at=later)
    await hub.client.terminate(pending, "cancelled before start")
    status = await hub.client.wait_for_completion(pending, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Terminated
    await asyncio.sleep(4)  # past the scheduled start: the start must not run after all
    status = await hub.client.get_status(pending)
    assert status.runtime_status is OrchestrationStatus.Terminated
    assert (await hub.worker.provider.load_history(pending)).events == []
    with pytest.raises(InstanceStateError):
        await hub.client.terminate(running, "again")


async def test_scheduled_start_waits_and_keeps_events_raised_meanwhile(hub: Hub) -> None:
    from datetime import datetime, timedelta

    start_at = datetime.now(UTC) + timedelta(seconds=2)
    instance_id = await hub.client.start_new("waits_for_go", start_at=start_at)
    await hub.client.raise_event(instance_id, "go", "a")
    await hub.client.raise_event(instance_id, "go", "b")
    assert (await hub.client.get_status(instance_id)).runtime_status is (
        OrchestrationStatus.Pending
    )
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.output == ["a", "b"]
    started = (await hub.worker.provider.load_history(instance_id)).events[0].timestamp
    assert started >= start_at


async def test_rewind_brings_a_failed_instance_to_completed(hub: Hub) -> None:
    key = "rewind-1"
    instance_id = await hub.client.start_new("rewindable", client_input=key)
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Failed
    other = await hub.client.start_new("chain5", client_input=1)
    await hub.client.wait_for_completion(other, timeout=60)
    with pytest.raises(InstanceStateError, match="only a Failed instance"):
        await hub.client.rewind(other)
    apps.FIXED.add(key)
    await hub.client.rewind(instance_id, "fixed the bug")
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == ["3", f"{key} fixed"]
    events = (await hub.worker.provider.load_history(instance_id)).events
    scheduled = [e.name for e in events if isinstance(e, TaskScheduled)]
    assert scheduled == ["add_step", "fails_until_fixed"]  # the success was kept, not rerun
    assert not any(isinstance(e, TaskFailed) for e in events)


async def test_restart_with_and_without_a_new_instance_id(hub: Hub) -> None:
    instance_id = await hub.client.start_new("chain5", "restart-me", 2)
    first = await hub.client.wait_for_completion(instance_id, timeout=60)
    new_id = await hub.client.restart(instance_id)
    assert new_id != instance_id
    again = await hub.client.wait_for_completion(new_id, timeout=60)
    assert again.output == first.output
    assert again.input_ == 2

    same_id = await hub.client.restart(instance_id, restart_with_new_instance_id=False)
    assert same_id == instance_id
    rerun = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert rerun.output == first.output

    running = await hub.client.start_new("waits_for_go")
    with pytest.raises(InstanceAlreadyExistsError):
        await hub.client.restart(running, restart_with_new_instance_id=False)


async def test_orchestrator_changed_between_episodes_fails_with_a_clear_error(
    hub: Hub,
) -> None:
    apps.VERSION["value"] = 1
    try:
        instance_id = await hub.client.start_new("changes_between_episodes")
        for _ in range(400):
            events = (await hub.worker.provider.load_history(instance_id)).events
            if any(isinstance(e, TaskCompleted) for e in events):
                break
            await asyncio.sleep(0.05)
        apps.VERSION["value"] = 2  # "deploy" code that calls another activity
        await hub.client.raise_event(instance_id, "continue")
        status = await hub.client.wait_for_completion(instance_id, timeout=60)
    finally:
        apps.VERSION["value"] = 1
    assert status.runtime_status is OrchestrationStatus.Failed
    assert status.failure_details is not None
    assert status.failure_details.error_type == "NonDeterministicOrchestrationError"
    message = status.failure_details.error_message
    assert "'square'" in message
    assert "'echo_async'" in message
    assert "task #0" in message


async def test_custom_status_is_visible_in_status_and_in_the_instances_row(
    hub: Hub, azurite: Any
) -> None:
    import json

    instance_id = await hub.client.start_new("reports_progress", "progress-1")
    for _ in range(200):
        status = await hub.client.get_status(instance_id)
        if status.custom_status is not None:
            break
        await asyncio.sleep(0.05)
    assert status.custom_status == {"stage": "waiting", "step": 1}
    assert status.to_json()["customStatus"] == {"stage": "waiting", "step": 1}
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    row = service.get_table_client(f"{hub.task_hub}Instances").get_entity(instance_id, "")
    assert json.loads(row["CustomStatus"]) == {"stage": "waiting", "step": 1}
    await hub.client.raise_event(instance_id, "go")
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.custom_status == {"stage": "done", "step": 2}
