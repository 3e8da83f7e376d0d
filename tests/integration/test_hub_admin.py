"""Task hub administration on Azurite: hub_info, create_hub, delete_hub.

Deletion is checked with the plain Azure SDK, listing the account's queues, tables and
containers: everything of the hub goes, and a hub whose name extends this one's
("Orders" / "Orders2") is left exactly as it was.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from durable_azure.engine.history import EventRaised
from durable_azure.hub import create_hub, delete_hub, hub_info
from durable_azure.storage.azure_primitives import AzureStorageAccount
from durable_azure.storage.names import TaskHubNames
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.testing.hub_cleanup import delete_hub_resources
from tests.integration.conftest import Hub

pytestmark = pytest.mark.azurite


@pytest.fixture
async def account(azurite: Any) -> AsyncIterator[AzureStorageAccount]:
    account = AzureStorageAccount.from_connection_string(azurite.connection_string)
    try:
        yield account
    finally:
        await account.close()


@pytest.fixture
def hub_pair(azurite: Any, task_hub: str) -> Iterator[tuple[str, str]]:
    """Two unique hub names, the second the first plus "2" ("Orders", "Orders2"); both
    are deleted afterwards."""
    name = task_hub[:40]
    yield name, name + "2"
    for hub in (name, name + "2"):
        delete_hub_resources(azurite.connection_string, hub)


def _listing(connection_string: str, prefix: str = "") -> dict[str, set[str]]:
    """The account's queues, tables and containers whose names start with ``prefix``
    (case-insensitively), listed by the plain SDK."""
    lower = prefix.lower()
    with (
        QueueServiceClient.from_connection_string(connection_string) as queues,
        TableServiceClient.from_connection_string(connection_string) as tables,
        BlobServiceClient.from_connection_string(connection_string) as blobs,
    ):
        found = {
            "queues": {q.name for q in queues.list_queues()},
            "tables": {t.name for t in tables.list_tables()},
            "containers": {c.name for c in blobs.list_containers()},
        }
    return {
        kind: {n for n in names if n.lower().startswith(lower)} for kind, names in found.items()
    }


def _hub_names(names: TaskHubNames, *, partitions: bool = True) -> dict[str, set[str]]:
    return {
        "queues": {*names.control_queues, names.work_item_queue},
        "tables": {names.history_table, names.instances_table}
        | ({names.partitions_table} if partitions else set()),
        "containers": {names.large_messages_container, names.poison_container},
    }


def _write_partitions(connection_string: str, names: TaskHubNames, owner: str) -> None:
    now = datetime.now(UTC)
    with TableServiceClient.from_connection_string(connection_string) as service:
        table = service.create_table_if_not_exists(names.partitions_table)
        for index, queue in enumerate(names.control_queues):
            table.upsert_entity(
                {
                    "PartitionKey": "",
                    "RowKey": queue,
                    "CurrentOwner": owner,
                    "NextOwner": "worker-b" if index == 0 else "",
                    "OwnedSince": now - timedelta(hours=1),
                    "LastRenewal": now,
                    "ExpiresAt": now + timedelta(seconds=30) if index else now - timedelta(hours=1),
                    "IsDraining": index == 0,
                }
            )


async def _fill(provider: AzureStorageProvider, connection_string: str) -> None:
    """Put something in every kind of resource of a hub."""
    await provider.start_instance("chain5", "order-1", json.dumps(1))
    await provider.send_to_instance(
        "order-2", EventRaised(timestamp=datetime.now(UTC), name="big", input="z" * 70_000)
    )
    await provider.poison.container.upload("x-control-00/m.json", b"{}")
    _write_partitions(connection_string, provider.names, "worker-a")


# --- hub_info ------------------------------------------------------------------------------


async def test_info_of_a_running_hub(hub: Hub) -> None:
    client, provider = hub.client, hub.client.provider
    names = provider.names
    done = [await client.start_new("chain5", client_input=i) for i in range(3)]
    failed = await client.start_new("fails_uncaught")
    for instance_id in [*done, failed]:
        await client.wait_for_completion(instance_id, timeout=60)
    # Parked for an hour: Pending, and its message is in its queue but invisible.
    later = datetime.now(UTC) + timedelta(hours=1)
    scheduled = await client.start_new("chain5", client_input=1, start_at=later)

    info = await hub_info(provider)
    assert info.exists
    assert info.instance_counts == {"Completed": 3, "Failed": 1, "Pending": 1}
    assert [q.name for q in info.queues] == [*names.control_queues, names.work_item_queue]
    depths = {q.name: q.approximate_count for q in info.queues}
    parked = provider.control_queue_of(scheduled).name
    assert depths == {q: (1 if q == parked else 0) for q in depths}
    assert all(q.exists and q.oldest_age_seconds is None for q in info.queues)
    assert info.poison_count == 0
    text = info.format()
    if info.partitions is None:  # the worker runs without partition leases
        assert "no partition table" in text
    else:  # ... or with them: one row per control queue
        assert {p.queue for p in info.partitions} == set(names.control_queues)
    assert f"{parked}  ~1 message, no visible message" in text
    assert "Completed: 3" in text
    assert "Pending: 1" in text

    # With the worker stopped, a new start waits, visible, in its queue.
    await hub.worker.stop()
    waiting = await client.start_new("chain5", client_input=1)
    queue = provider.control_queue_of(waiting).name
    info = await hub_info(provider, now=datetime.now(UTC) + timedelta(minutes=5))
    entry = next(q for q in info.queues if q.name == queue)
    assert entry.approximate_count == (2 if queue == parked else 1)
    assert entry.oldest_inserted_on is not None
    assert entry.oldest_age_seconds is not None
    assert entry.oldest_age_seconds >= 4 * 60
    assert info.instance_counts == {"Completed": 3, "Failed": 1, "Pending": 2}
    data = json.loads(json.dumps(info.to_json()))
    assert data["hub"] == names.hub
    assert data["exists"] is True
    assert data["instance_counts"] == {"Completed": 3, "Failed": 1, "Pending": 2}
    assert {q["name"]: q["approximate_count"] for q in data["queues"]}[queue] >= 1


async def test_info_reads_the_partition_table(
    azurite: Any, task_hub: str, account: AzureStorageAccount
) -> None:
    provider = AzureStorageProvider(account, TaskHubNames(task_hub, 2))
    await create_hub(provider)
    _write_partitions(azurite.connection_string, provider.names, "worker-a")
    await provider.poison.container.upload("q/1.json", b"{}")

    info = await hub_info(provider)
    assert info.partitions is not None
    by_queue = {p.queue: p for p in info.partitions}
    first, second = provider.names.control_queues
    assert set(by_queue) == {first, second}
    assert by_queue[first].current_owner == "worker-a"
    assert by_queue[first].next_owner == "worker-b"
    assert by_queue[first].is_draining
    assert not by_queue[first].live(info.checked_at)
    assert by_queue[second].next_owner is None
    assert by_queue[second].live(info.checked_at)
    assert info.poison_count == 1
    assert info.instance_counts == {}
    text = info.format()
    assert f"{first}: owner worker-a, next owner worker-b" in text
    assert "NO LIVE OWNER" in text
    assert "draining" in text
    assert json.loads(json.dumps(info.to_json()))["partitions"][0]["current_owner"] == "worker-a"


async def test_info_of_a_hub_that_does_not_exist(
    task_hub: str, account: AzureStorageAccount
) -> None:
    info = await hub_info(AzureStorageProvider(account, TaskHubNames(task_hub)))
    assert not info.exists
    assert info.instance_counts is None
    assert info.poison_count is None
    assert info.partitions is None
    assert not any(q.exists for q in info.queues)
    assert "does not exist" in info.format()


# --- create / delete -----------------------------------------------------------------------


async def test_create_is_idempotent(
    azurite: Any, task_hub: str, account: AzureStorageAccount
) -> None:
    provider = AzureStorageProvider(account, TaskHubNames(task_hub, 3))
    created = await create_hub(provider)
    assert await create_hub(provider) == created
    expected = _hub_names(provider.names, partitions=False)
    assert set(created) == set().union(*expected.values())
    listing = _listing(azurite.connection_string)
    for kind, wanted in expected.items():
        assert wanted <= listing[kind]


async def test_delete_removes_the_hub_and_leaves_a_longer_named_hub_alone(
    azurite: Any, hub_pair: tuple[str, str], account: AzureStorageAccount
) -> None:
    cs = azurite.connection_string
    task_hub, other_hub = hub_pair
    # This hub was created with 8 partitions; it is deleted through a 4-partition
    # provider, which must still find control queues 04-07.
    wide = AzureStorageProvider(account, TaskHubNames(task_hub, 8))
    this = AzureStorageProvider(account, TaskHubNames(task_hub, 4))
    other = AzureStorageProvider(account, TaskHubNames(other_hub, 4))
    for provider in (wide, other):
        await create_hub(provider)
        await _fill(provider, cs)
    # DTFx's lease containers, if the hub was ever run by DTFx.
    for suffix in ("-leases", "-applease"):
        await account.container(task_hub.lower() + suffix).create()
        await account.container(other_hub.lower() + suffix).create()

    this_names = _hub_names(wide.names)
    this_names["containers"] |= {task_hub.lower() + "-leases", task_hub.lower() + "-applease"}
    other_names = _hub_names(other.names)
    other_names["containers"] |= {other_hub.lower() + "-leases", other_hub.lower() + "-applease"}
    # Only names starting with this hub's are compared (other test runs may share Azurite).
    before = _listing(cs, task_hub)
    for kind in this_names:
        assert this_names[kind] <= before[kind]
        assert other_names[kind] <= before[kind]
    other_info_before = (await hub_info(other)).to_json()
    other_blobs_before = {
        c: sorted(await account.container(c).list_names()) for c in other_names["containers"]
    }
    assert other_blobs_before[other.names.large_messages_container]  # the big event

    deleted = await delete_hub(this)

    assert sorted(deleted) == sorted(set().union(*this_names.values()))
    after = _listing(cs, task_hub)
    for kind in this_names:
        assert not this_names[kind] & after[kind], f"{kind} of {task_hub} left behind"
        assert other_names[kind] <= after[kind], f"{kind} of {other_hub} deleted"
        # Of everything named like either hub, exactly this hub's resources are gone.
        assert after[kind] == before[kind] - this_names[kind]

    # The other hub is untouched: same messages, rows, partitions and blobs.
    other_info_after = (await hub_info(other)).to_json()
    for info in (other_info_before, other_info_after):
        info.pop("checked_at")
        for queue in info["queues"]:
            queue.pop("oldest_age_seconds")
    assert other_info_after == other_info_before
    assert other_info_after["instance_counts"] == {"Pending": 1}
    assert other_info_after["poison_count"] == 1
    assert {
        c: sorted(await account.container(c).list_names()) for c in other_names["containers"]
    } == other_blobs_before

    # Deleting again finds nothing; the other hub is still whole.
    assert await delete_hub(this) == []
    assert (await hub_info(other)).instance_counts == {"Pending": 1}
