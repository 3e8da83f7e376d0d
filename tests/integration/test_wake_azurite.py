"""Wake addresses and batched lease renewals on a real ``{hub}Partitions`` table (Azurite),
and a WakeSender reading that table to wake a listener over loopback UDP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableClient

from durable_azure import DurableClient, Worker, WorkerOptions
from durable_azure.storage.azure_primitives import AzureStorageAccount
from durable_azure.storage.names import TaskHubNames
from durable_azure.storage.partitions import PartitionManager
from durable_azure.wake import WakeListener, WakeSender
from tests.integration.apps import app
from tests.integration.test_orchestrations import expected_chain

pytestmark = pytest.mark.azurite


class Clock:
    """A clock the test moves (starting at the real time, so leases look live)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def sdk_rows(connection_string: str, names: TaskHubNames) -> dict[str, dict[str, Any]]:
    """The partitions table as the plain SDK sees it."""
    with TableClient.from_connection_string(connection_string, names.partitions_table) as t:
        return {e["RowKey"]: dict(e) for e in t.list_entities()}


@asynccontextmanager
async def accounts(connection_string: str, n: int) -> AsyncIterator[list[AzureStorageAccount]]:
    opened = [AzureStorageAccount.from_connection_string(connection_string) for _ in range(n)]
    try:
        yield opened
    finally:
        for account in opened:
            await account.close()


async def test_wake_address_and_batched_renewal(azurite: Any, task_hub: str) -> None:
    conn = azurite.connection_string
    names = TaskHubNames(task_hub, 4)
    clock = Clock()
    async with accounts(conn, 2) as (account_a, account_b):
        a = PartitionManager.for_account(
            account_a, names, "a", clock=clock, wake_address="127.0.0.1:40001"
        )
        b = PartitionManager.for_account(
            account_b, names, "b", clock=clock, wake_address="127.0.0.1:40002"
        )
        await a.create_rows()
        assert (await a.step()).acquired == set(names.control_queues)
        rows = sdk_rows(conn, names)
        assert {r["WakeAddress"] for r in rows.values()} == {"127.0.0.1:40001"}
        clock.advance(a.options.step_interval)
        await a.step()  # the first renewal after a change: read, row by row

        # Steady: the next renewal is one transaction, without a read.
        clock.advance(a.options.step_interval)
        before = account_a.stats.snapshot()
        changes = await a.step()
        after = account_a.stats.snapshot()
        assert not changes.changed
        assert not changes.retry_now
        assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k)} == {
            "table_batch": 1
        }
        rows = sdk_rows(conn, names)
        for row in rows.values():
            assert row["CurrentOwner"] == "a"
            assert row["WakeAddress"] == "127.0.0.1:40001"
            assert row["LastRenewal"] == clock.now
            assert row["ExpiresAt"] == clock.now + timedelta(seconds=a.options.lease_interval)

        # b asks for its share; a's next batch meets a 412 (Azure's transaction error),
        # falls back to a read and starts the hand-over.
        asked = (await b.step()).requested
        assert len(asked) == 2
        clock.advance(a.options.step_interval)
        before = account_a.stats.snapshot()
        changes = await a.step()
        after = account_a.stats.snapshot()
        assert after["table_batch"] - before["table_batch"] == 1
        assert after["table_query"] - before["table_query"] == 1
        assert changes.draining == asked == a.draining
        assert not changes.retry_now
        for queue in asked:
            a.mark_drained(queue)
        assert (await a.step()).released == asked
        rows = sdk_rows(conn, names)
        for queue in asked:
            assert "CurrentOwner" not in rows[queue]
            assert "WakeAddress" not in rows[queue]  # cleared on release
            assert rows[queue]["NextOwner"] == "b"
        assert (await b.step()).acquired == asked
        rows = sdk_rows(conn, names)
        for queue, row in rows.items():
            expected = "127.0.0.1:40002" if queue in asked else "127.0.0.1:40001"
            assert row["WakeAddress"] == expected, queue


async def test_a_sender_reading_the_table_wakes_the_owner(azurite: Any, task_hub: str) -> None:
    names = TaskHubNames(task_hub, 2)
    woken: asyncio.Queue[str] = asyncio.Queue()
    listener = WakeListener(names, woken.put_nowait)
    await listener.start()
    try:
        async with accounts(azurite.connection_string, 2) as (worker_account, client_account):
            manager = PartitionManager.for_account(
                worker_account, names, "worker", wake_address=listener.address
            )
            await manager.create_rows()
            assert manager.owned == set()
            await manager.step()
            assert manager.owned == set(names.control_queues)

            sender = WakeSender.for_account(client_account, names)
            try:
                queue = names.control_queue(1)
                sender.notify(queue)  # the first: read the table, then send
                async with asyncio.timeout(10):
                    assert await woken.get() == queue
                sender.notify(names.work_item_queue)
                async with asyncio.timeout(10):
                    assert await woken.get() == names.work_item_queue
                assert sender.stats["sent"] == 2
                assert sender.stats["refreshes"] == 1
            finally:
                await sender.aclose()
            await manager.release_all()
    finally:
        await listener.close()


@pytest.mark.parametrize(
    "listen",
    [{}, {"wake_host": "0.0.0.0", "wake_advertise_host": "127.0.0.1"}],
    ids=["loopback", "every-interface"],
)
async def test_a_worker_with_polling_all_but_off_is_woken_by_a_client(
    azurite: Any, task_hub: str, listen: dict[str, str]
) -> None:
    # The worker polls each queue once, then waits 10 minutes between empty polls: the
    # orchestration below completes only through wake-ups (the client's datagram for the
    # start, then the worker's own sends), on Azurite's real tables and queues. Bound to
    # every interface, the worker publishes the advertised IP (what a client on another
    # machine would send to).
    options = WorkerOptions(min_poll_interval=600, max_poll_interval=600, **listen)
    settings = {"connection_string": azurite.connection_string, "task_hub": task_hub}
    async with Worker(app, options=options, **settings) as worker:
        rows = sdk_rows(azurite.connection_string, worker.settings.names)
        assert worker._wake_listener is not None
        address = worker._wake_listener.address
        assert address.startswith("127.0.0.1:")
        assert worker._wake_listener.host == listen.get("wake_host", "127.0.0.1")
        assert {row["WakeAddress"] for row in rows.values()} == {address}
        await asyncio.sleep(0.5)  # every poller has polled once and now waits
        client = DurableClient.from_app(app, **settings)
        try:
            instance_id = await client.start_new("chain5", client_input=1)
            status = await client.wait_for_completion(instance_id, timeout=30)
        finally:
            await client.close()
    assert status.output == expected_chain(1)
