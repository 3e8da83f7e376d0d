"""The task hub, read with the plain Azure SDK, has the DTFx Azure Storage layout."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.data.tables import TableServiceClient, UpdateMode
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from durable_azure import DurableClient
from durable_azure.storage.names import fnv1a32
from tests.integration.apps import app
from tests.integration.conftest import Hub

pytestmark = pytest.mark.azurite

HISTORY_EVENT_TYPES = {
    "ExecutionStarted",
    "ExecutionCompleted",
    "TaskScheduled",
    "TaskCompleted",
    "OrchestratorStarted",
    "OrchestratorCompleted",
}


async def test_names_keys_and_columns_match_the_reference(hub: Hub, azurite: Any) -> None:
    cs, hub_name = azurite.connection_string, hub.task_hub
    instance_id = "layout/check#1"
    await hub.client.start_new("chain5", instance_id=instance_id, client_input=2)
    await hub.client.wait_for_completion(instance_id, timeout=60)

    queues = {q.name for q in QueueServiceClient.from_connection_string(cs).list_queues()}
    lower = hub_name.lower()
    assert {f"{lower}-control-0{i}" for i in range(4)} | {f"{lower}-workitems"} <= queues
    tables = {t.name for t in TableServiceClient.from_connection_string(cs).list_tables()}
    assert {f"{hub_name}History", f"{hub_name}Instances"} <= tables
    containers = {c.name for c in BlobServiceClient.from_connection_string(cs).list_containers()}
    assert f"{lower}-largemessages" in containers

    service = TableServiceClient.from_connection_string(cs)
    escaped = "layout^0check^21"
    rows = list(
        service.get_table_client(f"{hub_name}History").query_entities(
            "PartitionKey eq @pk", parameters={"pk": escaped}
        )
    )
    keys = [r["RowKey"] for r in rows]
    assert keys[-1] == "sentinel"
    hex_keys = keys[:-1]
    assert hex_keys == [f"{i:016X}" for i in range(len(hex_keys))]
    assert all(re.fullmatch(r"[0-9A-F]{16}", k) for k in hex_keys)
    sentinel = rows[-1]
    execution_id = sentinel["ExecutionId"]
    assert re.fullmatch(r"[0-9a-f]{32}", execution_id)
    assert sentinel["IsCheckpointComplete"] is True
    events = rows[:-1]
    assert {r["EventType"] for r in events} == HISTORY_EVENT_TYPES
    assert all(r["ExecutionId"] == execution_id for r in events)
    assert all("_Timestamp" in r and "EventId" in r and "IsPlayed" in r for r in events)
    started = next(r for r in events if r["EventType"] == "ExecutionStarted")
    assert started["EventId"] == -1
    assert started["Name"] == "chain5"
    assert json.loads(started["OrchestrationInstance"]) == {
        "InstanceId": instance_id,
        "ExecutionId": execution_id,
    }
    assert started["ParentInstance"] == "null"
    scheduled = [r for r in events if r["EventType"] == "TaskScheduled"]
    assert [r["EventId"] for r in scheduled] == [0, 1, 2, 3, 4]
    assert all(r["Name"] == "add_step" for r in scheduled)
    completed = [r for r in events if r["EventType"] == "TaskCompleted"]
    assert [r["TaskScheduledId"] for r in completed] == [0, 1, 2, 3, 4]
    assert all(r["EventId"] == -1 for r in completed)
    done = next(r for r in events if r["EventType"] == "ExecutionCompleted")
    assert done["OrchestrationStatus"] == "Completed"
    assert done["FailureDetails"] == "null"

    row = service.get_table_client(f"{hub_name}Instances").get_entity(escaped, "")
    for column in (
        "Name",
        "Version",
        "Input",
        "Output",
        "CustomStatus",
        "RuntimeStatus",
        "CreatedTime",
        "LastUpdatedTime",
        "CompletedTime",
        "ExecutionId",
        "Generation",
        "TaskHubName",
    ):
        assert column in row, column
    assert row["RuntimeStatus"] == "Completed"
    assert row["ExecutionId"] == execution_id
    assert row["CustomStatus"] == "null"
    assert row["TaskHubName"] == hub_name
    assert json.loads(row["Input"]) == 2


async def test_start_message_has_the_dtfx_envelope_on_the_hashed_partition(
    azurite: Any, task_hub: str
) -> None:
    # No worker runs here, so the start message stays in its queue to be read.
    cs = azurite.connection_string
    async with DurableClient.from_app(app, connection_string=cs, task_hub=task_hub) as client:
        instance_id = "myinstance"  # FNV-1a 0xC06A6290, partition 0 of 4 (reference §1.4)
        await client.start_new("chain5", instance_id=instance_id, client_input={"a": 1})
        status = await client.get_status(instance_id)
    assert status.runtime_status.name == "Pending"
    assert fnv1a32(instance_id.encode()) % 4 == 0
    queue = QueueServiceClient.from_connection_string(cs).get_queue_client(
        f"{task_hub.lower()}-control-00"
    )
    peeked = queue.peek_messages(max_messages=5)
    assert len(peeked) == 1
    body = peeked[0].content
    assert body.startswith('{"$type":"DurableTask.AzureStorage.MessageData"')  # raw, no base64
    data = json.loads(body)
    task = data["TaskMessage"]
    assert next(iter(task)) == "$type"
    assert task["$type"] == "DurableTask.Core.TaskMessage"
    event = task["Event"]
    assert event["$type"] == "DurableTask.Core.History.ExecutionStartedEvent"
    assert event["EventType"] == 0
    assert event["EventId"] == -1
    assert event["Name"] == "chain5"
    assert json.loads(event["Input"]) == {"a": 1}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", event["Timestamp"])
    assert task["OrchestrationInstance"]["InstanceId"] == instance_id
    assert "Episode" not in data  # omitted when null, as DTFx does
    assert data["Sender"] == {"InstanceId": "", "ExecutionId": ""}


# --- date-times and activity inputs, as Storage Explorer shows them ----------------------


def _rows(cs: str, table: str, pk: str, where: str = "", **params: Any) -> list[Any]:
    client = TableServiceClient.from_connection_string(cs).get_table_client(table)
    text = "PartitionKey eq @pk" + (f" and {where}" if where else "")
    return list(client.query_entities(text, parameters={"pk": pk, **params}))


async def test_times_are_date_times_and_activity_inputs_are_in_task_scheduled_rows(
    hub: Hub,
) -> None:
    # The SDK returns a datetime only for a property typed Edm.DateTime on the wire (it
    # reads the @odata.type annotation); the server-side datetime comparisons below match
    # only such properties, never text.
    cs, hub_name = hub.connection_string, hub.task_hub
    key = "layout-retry"
    args = {"key": key, "failures": 1, "max_attempts": 3}
    instance_id = await hub.client.start_new("retries", "layout-times", args)
    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.output == f"{key} ok after 2 attempts"

    rows = _rows(cs, f"{hub_name}History", instance_id)
    events, sentinel = rows[:-1], rows[-1]
    assert all(isinstance(r["_Timestamp"], datetime) for r in events)
    assert isinstance(sentinel["CheckpointCompletedTimestamp"], datetime)
    timers = [r for r in events if r["EventType"] in ("TimerCreated", "TimerFired")]
    assert [r["EventType"] for r in timers] == ["TimerCreated", "TimerFired"]
    assert all(isinstance(r["FireAt"], datetime) for r in timers)
    assert timers[0]["FireAt"] == timers[1]["FireAt"]
    # Each attempt's input is in its TaskScheduled row, readable as it was passed.
    scheduled = [r for r in events if r["EventType"] == "TaskScheduled"]
    assert [r["Name"] for r in scheduled] == ["fails_then_succeeds"] * 2
    assert [json.loads(r["Input"]) for r in scheduled] == [args, args]
    completed = next(r for r in events if r["EventType"] == "TaskCompleted")
    assert json.loads(completed["Result"]) == status.output

    earliest = min(r["_Timestamp"] for r in events)
    assert len(_rows(cs, f"{hub_name}History", instance_id, "_Timestamp ge @t", t=earliest)) == (
        len(events)
    )
    assert _rows(cs, f"{hub_name}History", instance_id, "FireAt ge @t", t=earliest) == timers

    escaped = "layout-times"
    (row,) = _rows(cs, f"{hub_name}Instances", escaped)
    for column in ("CreatedTime", "LastUpdatedTime", "CompletedTime"):
        assert isinstance(row[column], datetime), column
    assert row["CreatedTime"] <= row["LastUpdatedTime"]
    created = row["CreatedTime"]
    assert _rows(cs, f"{hub_name}Instances", escaped, "CreatedTime ge @t", t=created) == [row]
    assert status.created_time == created

    leases = list(
        TableServiceClient.from_connection_string(cs)
        .get_table_client(f"{hub_name}Partitions")
        .list_entities()
    )
    assert len(leases) == 4
    for lease in leases:
        for column in ("OwnedSince", "LastRenewal", "ExpiresAt"):
            assert isinstance(lease[column], datetime), (lease["RowKey"], column)


async def test_rows_whose_times_are_text_still_read(hub: Hub) -> None:
    # Another tool (or a hand edit in Storage Explorer) may store a time as a string.
    cs, hub_name = hub.connection_string, hub.task_hub
    instance_id = await hub.client.start_new("chain5", "layout-text-times", 1)
    before = await hub.client.wait_for_completion(instance_id, timeout=60)
    history = await hub.client.get_status(instance_id, show_history=True)
    service = TableServiceClient.from_connection_string(cs)

    def as_text(value: datetime) -> str:
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"  # .NET style

    instances = service.get_table_client(f"{hub_name}Instances")
    row = instances.get_entity(instance_id, "")
    instances.update_entity(
        {
            "PartitionKey": instance_id,
            "RowKey": "",
            "CreatedTime": as_text(row["CreatedTime"]),
            "CompletedTime": as_text(row["CompletedTime"]),
        },
        mode=UpdateMode.MERGE,
    )
    history_table = service.get_table_client(f"{hub_name}History")
    for event in _rows(cs, f"{hub_name}History", instance_id, "RowKey ne 'sentinel'"):
        history_table.update_entity(
            {
                "PartitionKey": instance_id,
                "RowKey": event["RowKey"],
                "_Timestamp": as_text(event["_Timestamp"]),
            },
            mode=UpdateMode.MERGE,
        )
    assert isinstance(instances.get_entity(instance_id, "")["CreatedTime"], str)

    after = await hub.client.get_status(instance_id, show_history=True)
    assert after.created_time == before.created_time
    assert after.history == history.history
    assert after.output == before.output
