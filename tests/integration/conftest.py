"""Fixtures for integration tests: a worker and a client on a fresh task hub in Azurite."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from durable_azure import DurableClient, Worker, WorkerOptions
from tests.integration.apps import app


@dataclass
class Hub:
    """A running in-process worker and a client, both on the test's own task hub."""

    worker: Worker
    client: DurableClient
    connection_string: str
    task_hub: str


@pytest.fixture
async def hub(azurite: Any, task_hub: str) -> AsyncIterator[Hub]:
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
        yield Hub(worker, client, azurite.connection_string, task_hub)
    finally:
        await client.close()
        await worker.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """When a test that uses a :class:`Hub` fixture fails, show what its worker was doing
    at that moment (pollers, partitions, instances in progress and where each waits): an
    intermittent stall is then diagnosable from the CI log alone."""
    report = yield
    if report.when == "call" and report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            worker = getattr(value, "worker", None)  # a Hub (the class may be imported twice)
            if isinstance(worker, Worker):
                snapshot = json.dumps(worker.snapshot(), indent=1, default=str)
                report.sections.append(
                    (f"durable-azure worker of {name!r} at the failure", snapshot)
                )
    return report
