"""Poison handling on Azurite: garbage in a queue is quarantined, the worker keeps going."""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from durable_azure import DurableClient, Worker, WorkerOptions
from tests.integration.apps import app

pytestmark = pytest.mark.azurite


@pytest.mark.parametrize("garbage", ["{not json", "", '{"TaskMessage": {"Event": 7}}'])
async def test_garbage_messages_are_set_aside_and_work_goes_on(
    azurite: Any, task_hub: str, garbage: str
) -> None:
    options = WorkerOptions(max_poll_interval=0.2, max_dequeue_count=2)
    worker = Worker(
        app, connection_string=azurite.connection_string, task_hub=task_hub, options=options
    )
    await worker.start()
    try:
        async with DurableClient.from_app(
            app, connection_string=azurite.connection_string, task_hub=task_hub
        ) as client:
            for queue in (worker.provider.control_queues[1], worker.provider.work_items):
                await queue.queue.send(garbage or " ")
            instance_id = await client.start_new("chain5", client_input=1)
            status = await client.wait_for_completion(instance_id, timeout=60)
            assert status.runtime_status.name == "Completed"
            for _ in range(300):  # retried with backoff (1 s, 2 s), then set aside
                records = await client.list_poison()
                if len(records) == 2:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"garbage not set aside: {await client.list_poison()}")
            for queue in (worker.provider.control_queues[1], worker.provider.work_items):
                assert await queue.queue.approximate_count() == 0
    finally:
        await worker.stop()
    assert {r.queue for r in records} == {
        worker.provider.control_queues[1].name,
        worker.provider.work_items.name,
    }
    assert all(r.dequeue_count == 3 for r in records)
    assert all(r.reason.startswith("unreadable:") for r in records)
    assert all(r.body == (garbage or " ") for r in records)
    # Stored where the plain SDK (or Storage Explorer) can see it.
    container = ContainerClient.from_connection_string(
        azurite.connection_string, f"{task_hub.lower()}-poison"
    )
    assert sorted(b.name for b in container.list_blobs()) == sorted(r.name for r in records)


def test_poison_cli_lists_requeues_and_drops(azurite: Any, task_hub: str) -> None:
    import json
    import subprocess
    import sys

    from durable_azure.storage.poison import PoisonStore
    from durable_azure.storage.primitives import QueueMessage

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "durable_azure.cli", "--connection",
             azurite.connection_string, "--task-hub", task_hub, "poison", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    async def prepare() -> tuple[str, str]:
        async with DurableClient.from_app(
            app, connection_string=azurite.connection_string, task_hub=task_hub
        ) as client:
            await client.provider.create_if_not_exists()
            store: PoisonStore = client.provider.poison
            from datetime import datetime

            now = datetime.now(UTC)
            queue = client.provider.control_queues[0].name
            records = []
            for i in range(2):
                raw = QueueMessage(f"m{i}", "r", f"body {i}", 11, now, None)
                records.append(await store.set_aside(queue, raw, reason="test", instance_id=None))
            return records[0].name, records[1].name

    first, second = asyncio.run(prepare())
    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(r["name"] for r in json.loads(listed.stdout)) == sorted([first, second])
    requeued = cli("requeue", first)
    assert requeued.returncode == 0, requeued.stderr
    assert "sent the message back" in requeued.stdout
    dropped = cli("drop", second)
    assert dropped.returncode == 0, dropped.stderr
    assert "1 poison" not in cli("list").stdout
    assert "0 poison message(s)" in cli("list").stdout
    missing = cli("drop", "no/such.json")
    assert missing.returncode == 1
    assert "no poison message named 'no/such.json'" in missing.stderr
