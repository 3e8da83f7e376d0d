"""Patterns 1 and 2 end to end on Azurite: chains, fan-out/fan-in, failures, big payloads."""

from __future__ import annotations

from typing import Any

import pytest

from durable_azure import InstanceAlreadyExistsError, InvalidInstanceIdError, OrchestrationStatus
from durable_azure.storage.names import MAX_INLINE_MESSAGE_BYTES, MAX_INLINE_PROPERTY_BYTES
from tests.integration.conftest import Hub

pytestmark = pytest.mark.azurite


def expected_chain(start: int) -> dict[str, Any]:
    value, steps = start, []
    for _ in range(5):
        steps.append(value)
        value = value * 2 + 1
    return {"value": value, "steps": steps}


async def test_five_step_chain_returns_the_chained_output(hub: Hub) -> None:
    instance_id = await hub.client.start_new("chain5", client_input=3)
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == expected_chain(3)
    assert status.input_ == 3
    history = await hub.client.get_status(instance_id, show_history=True)
    assert history.history is not None
    kinds = [e["EventType"] for e in history.history]
    assert kinds.count("TaskScheduled") == 5
    assert kinds.count("TaskCompleted") == 5
    assert kinds[-2:] == ["ExecutionCompleted", "OrchestratorCompleted"]


async def test_fan_out_of_100_activities_sums_correctly(hub: Hub) -> None:
    instance_id = await hub.client.start_new("fan_out_squares", client_input=100)
    status = await hub.client.wait_for_completion(instance_id, timeout=120)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == {"count": 100, "sum": sum(i * i for i in range(100))}
    events = (await hub.worker.provider.load_history(instance_id)).events
    completions = [e.task_scheduled_id for e in events if type(e).__name__ == "TaskCompleted"]
    assert sorted(completions) == list(range(101))  # 100 squares + the async echo


async def test_activity_failure_is_caught_by_the_orchestrator(hub: Hub) -> None:
    instance_id = await hub.client.start_new("catches_failure")
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == {
        "type": "KeyError",
        "message": "'no such key'",
        "has_traceback": True,
    }


async def test_uncaught_activity_failure_fails_with_the_original_details(hub: Hub) -> None:
    instance_id = await hub.client.start_new("fails_uncaught")
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Failed
    assert "KeyError" in status.output
    assert "boom" in status.output
    assert status.failure_details is not None
    assert status.failure_details.error_type == "TaskFailedError"
    inner = status.failure_details.inner_failure
    assert inner is not None
    assert inner.error_type == "KeyError"
    assert "fail_with" in inner.stack_trace  # the activity's own traceback
    assert status.to_json()["failureDetails"]["errorType"] == "TaskFailedError"


async def test_200kb_input_and_output_round_trip_through_blobs(hub: Hub, azurite: Any) -> None:
    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient

    text = "x" * 200_000
    instance_id = await hub.client.start_new("large_payloads", client_input={"text": text})
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.input_ == {"text": text}
    assert status.output == {"received": 200_000, "reply": "y" * 200_000}

    # The payloads really went through the large-message container ...
    names = hub.worker.provider.names
    container = ContainerClient.from_connection_string(
        azurite.connection_string, names.large_messages_container
    )
    blobs = [b.name for b in container.list_blobs()]
    assert any("/message-" in b for b in blobs), blobs  # spilled queue messages
    assert any("/history-" in b for b in blobs), blobs  # offloaded history properties
    # ... and nothing stored inline exceeds the queue or table limits.
    history_rows = await hub.worker.provider.history.table.query(partition_key=instance_id)
    for row in history_rows[0]:
        for value in row.properties.values():
            if isinstance(value, str):
                assert len(value.encode("utf-16-le")) <= MAX_INLINE_PROPERTY_BYTES
    for queue_name in [*names.control_queues, names.work_item_queue]:
        queue = QueueClient.from_connection_string(azurite.connection_string, queue_name)
        for message in queue.peek_messages(max_messages=32):
            assert len(str(message.content).encode()) <= MAX_INLINE_MESSAGE_BYTES


async def test_starting_a_running_id_is_rejected_and_leaves_it_intact(hub: Hub) -> None:
    instance_id = "order-42"
    await hub.client.start_new("chain5", instance_id=instance_id, client_input=1)
    with pytest.raises(InstanceAlreadyExistsError) as raised:
        await hub.client.start_new("chain5", instance_id=instance_id, client_input=999)
    assert raised.value.instance_id == instance_id
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.input_ == 1
    assert status.output == expected_chain(1)


async def test_starting_a_finished_id_runs_a_new_execution(hub: Hub) -> None:
    instance_id = "reused-id"
    await hub.client.start_new("chain5", instance_id=instance_id, client_input=1)
    first = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert first.output == expected_chain(1)
    first_execution = (await hub.worker.provider.load_history(instance_id)).execution_id

    await hub.client.start_new("fan_out_squares", instance_id=instance_id, client_input=3)
    second = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert second.runtime_status is OrchestrationStatus.Completed
    assert second.name == "fan_out_squares"
    assert second.output == {"count": 3, "sum": 5}
    loaded = await hub.worker.provider.load_history(instance_id)
    assert loaded.execution_id != first_execution
    # The shorter new history hides the old execution's leftover rows.
    assert all(type(e).__name__ != "TaskScheduled" or e.name != "add_step" for e in loaded.events)


@pytest.mark.parametrize(
    "instance_id", ["a/b\\c#d?e", "caret^id", "tab\there", "ünïcødé-☃", "x" * 256]
)
async def test_instance_ids_with_key_characters_are_escaped_not_rejected(
    hub: Hub, instance_id: str
) -> None:
    await hub.client.start_new("chain5", instance_id=instance_id, client_input=0)
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.instance_id == instance_id
    assert status.output == expected_chain(0)


@pytest.mark.parametrize(
    ("instance_id", "problem"),
    [("", "empty"), ("y" * 257, "at most 256"), ("@entity@key", "reserved"), ("\ud800", "Unicode")],
)
async def test_invalid_instance_ids_get_a_clear_error(
    hub: Hub, instance_id: str, problem: str
) -> None:
    with pytest.raises(InvalidInstanceIdError, match=problem):
        await hub.client.start_new("chain5", instance_id=instance_id)
