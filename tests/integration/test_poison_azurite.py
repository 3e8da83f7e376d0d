"""Poison handling on Azurite: garbage in a queue is quarantined, the worker keeps going."""

from __future__ import annotations

import asyncio
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
