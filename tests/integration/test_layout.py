"""The task hub, read with the plain Azure SDK, has the DTFx Azure Storage layout."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
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
