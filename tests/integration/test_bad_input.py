"""Bad input on Azurite, each with a test: odd ids and hub names, unserializable payloads,
huge payloads, unreadable queue messages, OData-looking filters, storage deleted or
restarted under a running worker, wrong credentials. Real SDK, real Azurite, no mocks."""

from __future__ import annotations

import asyncio
import base64
import gc
import gzip
import json
import logging
import re
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient

from durable_azure import (
    ConfigurationError,
    DurableApp,
    DurableAzureError,
    DurableClient,
    DurableOrchestrationStatus,
    InstanceNotFoundError,
    InvalidInstanceIdError,
    OrchestrationStatus,
    StorageError,
    StorageSettings,
    Worker,
    WorkerOptions,
)
from durable_azure import azurite as az
from durable_azure.engine.history import EventRaised, ExecutionStarted
from durable_azure.engine.serialization import PayloadError
from durable_azure.errors import NotFoundError
from durable_azure.storage import messages
from durable_azure.storage.messages import TaskMessage
from tests.integration.bad_input_apps import ODD_NAMES, app, pseudo_random_text
from tests.integration.conftest import Hub

pytestmark = pytest.mark.azurite

FAST = WorkerOptions(max_poll_interval=0.2)


@pytest.fixture
async def bad_hub(azurite: Any, task_hub: str) -> AsyncIterator[Hub]:
    """An in-process worker and a client for this module's own app."""
    worker = Worker(
        app, connection_string=azurite.connection_string, task_hub=task_hub, options=FAST
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


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds (a bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


def pollers_alive(worker: Worker) -> bool:
    pollers = [*worker._control_pollers.values(), worker._work_item_poller]
    return len(pollers) > 1 and not any(p is None or p.done() for p in pollers)


async def queued_messages(client: DurableClient) -> int:
    provider = client.provider
    counts = [await q.queue.approximate_count() for q in provider.control_queues]
    return sum(counts) + await provider.work_items.queue.approximate_count()


def wrong_key_connection_string(connection_string: str) -> str:
    wrong = base64.b64encode(b"not the key of this account, but well formed").decode()
    parts = [
        f"AccountKey={wrong}" if p.startswith("AccountKey=") else p
        for p in connection_string.split(";")
    ]
    assert parts != connection_string.split(";"), "the test connection string has no key"
    return ";".join(parts)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "durable_azure.cli", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


# --- instance ids (what test_orchestrations.py does not cover yet) -----------------------


@pytest.mark.parametrize(
    "instance_id",
    [
        "nul\x00in-the-middle",
        "ctl\x01\x02\x1b\x1f-low",
        "line\nfeed\rreturn",
        "del\x7f-and-c1-\x80\x85\x9f",
        "\x01" * 256,  # 256 characters that each double when escaped
        "/" * 255 + "?",
    ],
    ids=["nul", "c0", "newlines", "del-c1", "256-controls", "256-slashes"],
)
async def test_instance_ids_with_control_characters_round_trip(
    bad_hub: Hub, instance_id: str
) -> None:
    await bad_hub.client.start_new("chain3", instance_id=instance_id, client_input=10)
    status = await bad_hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.instance_id == instance_id
    assert status.output == 13
    found = await bad_hub.client.get_status_by(instance_id_prefix=instance_id[:8])
    assert [s.instance_id for s in found] == [instance_id]


@pytest.mark.parametrize(
    "operation",
    ["start_new", "get_status", "raise_event", "terminate", "purge", "rewind", "restart"],
)
async def test_a_1000_character_instance_id_is_refused_by_every_operation(
    bad_hub: Hub, operation: str
) -> None:
    long_id = "k" * 1000
    client = bad_hub.client
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "start_new": lambda: client.start_new("chain3", instance_id=long_id, client_input=1),
        "get_status": lambda: client.get_status(long_id),
        "raise_event": lambda: client.raise_event(long_id, "data", 1),
        "terminate": lambda: client.terminate(long_id, "stop"),
        "purge": lambda: client.purge_instance_history(long_id),
        "rewind": lambda: client.rewind(long_id, "again"),
        "restart": lambda: client.restart(long_id),
    }
    with pytest.raises(InvalidInstanceIdError, match="at most 256 characters") as raised:
        await calls[operation]()
    assert "has 1000" in str(raised.value)
    assert await queued_messages(client) == 0


# --- task hub names ----------------------------------------------------------------------

BAD_HUB_NAMES = [
    ("ab", "3-45 characters long"),
    ("h" * 46, "3-45 characters long"),
    ("1stHub", "start with a letter"),
    ("my-hub", "only letters and digits"),
    ("my_hub", "only letters and digits"),
    ("my hub", "only letters and digits"),
    ("hüb", "only letters and digits"),
]


@pytest.mark.parametrize(("name", "rule"), BAD_HUB_NAMES)
def test_invalid_task_hub_names_are_refused_by_worker_and_client(
    azurite: Any, name: str, rule: str
) -> None:
    cs = azurite.connection_string
    with pytest.raises(ConfigurationError, match=rule):
        Worker(app, connection_string=cs, task_hub=name)
    with pytest.raises(ConfigurationError, match=rule):
        DurableClient.from_app(app, connection_string=cs, task_hub=name)
    with pytest.raises(ConfigurationError, match=rule):
        StorageSettings(task_hub=name, connection_string=cs)
    with pytest.raises(ConfigurationError, match=rule):
        Worker(DurableApp(task_hub=name, connection_string=cs))


def test_an_invalid_task_hub_name_from_the_environment_is_refused(
    azurite: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURABLE_TASK_HUB", "hub-with-hyphens")
    with pytest.raises(ConfigurationError, match="only letters and digits"):
        Worker(app, connection_string=azurite.connection_string)
    with pytest.raises(ConfigurationError, match="only letters and digits"):
        DurableClient.from_app(app, connection_string=azurite.connection_string)


@pytest.mark.parametrize(("name", "rule"), BAD_HUB_NAMES[:4])
def test_durable_app_refuses_an_invalid_task_hub_name_at_construction(name: str, rule: str) -> None:
    with pytest.raises(ConfigurationError, match=rule):
        DurableApp(task_hub=name)


def test_an_explicit_empty_task_hub_name_is_refused(azurite: Any) -> None:
    with pytest.raises(ConfigurationError, match="task hub"):
        Worker(app, connection_string=azurite.connection_string, task_hub="")


def test_a_task_hub_name_with_a_trailing_newline_is_refused(azurite: Any) -> None:
    with pytest.raises(ConfigurationError, match="only letters and digits"):
        Worker(app, connection_string=azurite.connection_string, task_hub="MyHub\n")


@pytest.mark.parametrize("count", [0, 17, -1])
def test_invalid_partition_counts_are_refused(azurite: Any, count: int) -> None:
    with pytest.raises(ConfigurationError, match="between 1 and 16"):
        Worker(app, connection_string=azurite.connection_string, partition_count=count)


@pytest.mark.parametrize(
    ("name", "rule"), [("my-hub", "only letters and digits"), ("ab", "3-45 characters")]
)
@pytest.mark.parametrize("command", ["list", "status", "start", "worker"])
def test_cli_refuses_an_invalid_task_hub_name_with_exit_code_2(
    azurite: Any, name: str, rule: str, command: str
) -> None:
    args = {
        "list": ["list"],
        "status": ["status", "some-id"],
        "start": ["start", "chain3", "--input", "1"],
        "worker": ["worker", "tests.integration.bad_input_apps:app"],
    }[command]
    done = run_cli("--connection", azurite.connection_string, "--task-hub", name, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert rule in done.stderr
    assert "Traceback" not in done.stderr


# --- payloads that cannot be serialized --------------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize(
    "client_input",
    [{1, 2, 3}, Opaque(), {"nested": [1, {"deep": {1}}]}, b"raw bytes"],
    ids=["set", "object", "nested-set", "bytes"],
)
async def test_start_new_with_unserializable_input_fails_and_writes_nothing(
    azurite: Any, task_hub: str, client_input: Any
) -> None:
    async with DurableClient.from_app(
        app, connection_string=azurite.connection_string, task_hub=task_hub
    ) as client:
        # On a hub that does not exist yet: not even the hub is created.
        with pytest.raises(PayloadError, match="not JSON serializable"):
            await client.start_new("chain3", instance_id="bad-input", client_input=client_input)
        with pytest.raises(NotFoundError, match="TableNotFound"):
            await client.provider.instances.table.query(page_size=1)
        # On an existing hub: no start message, no Instances row.
        await client.provider.create_if_not_exists()
        with pytest.raises(PayloadError, match="not JSON serializable"):
            await client.start_new("chain3", instance_id="bad-input", client_input=client_input)
        assert await queued_messages(client) == 0
        assert await client.provider.read_instance("bad-input") is None
        rows, _ = await client.provider.instances.table.query(page_size=10)
        assert rows == []
        with pytest.raises(InstanceNotFoundError):
            await client.get_status("bad-input")


async def test_an_activity_returning_an_unserializable_value_fails_its_task(
    bad_hub: Hub,
) -> None:
    instance_id = await bad_hub.client.start_new("catches_unserializable_result")
    status = await bad_hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output["type"] == "PayloadError"
    assert status.output["task"] == "returns_a_set"
    assert "object of type set is not JSON serializable" in status.output["message"]


async def test_an_orchestrator_returning_an_unserializable_value_fails_the_instance(
    bad_hub: Hub,
) -> None:
    instance_id = await bad_hub.client.start_new("returns_an_object")
    status = await bad_hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Failed
    assert status.failure_details is not None
    assert status.failure_details.error_type == "PayloadError"
    assert "object of type object is not JSON serializable" in (
        status.failure_details.error_message
    )
    assert "not JSON serializable" in status.output


@pytest.mark.parametrize(
    "orchestrator", ["unserializable_activity_input", "unserializable_custom_status"]
)
async def test_unserializable_values_inside_an_orchestrator_fail_the_instance(
    bad_hub: Hub, orchestrator: str
) -> None:
    instance_id = await bad_hub.client.start_new(orchestrator)
    status = await bad_hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Failed
    assert status.failure_details is not None
    assert status.failure_details.error_type == "PayloadError"
    assert "object of type set is not JSON serializable" in status.failure_details.error_message


async def test_raise_event_or_terminate_with_unserializable_data_sends_nothing(
    bad_hub: Hub,
) -> None:
    client = bad_hub.client
    instance_id = await client.start_new("waits_for_data")

    async def running() -> bool:
        status = await client.get_status(instance_id)
        return status.runtime_status is OrchestrationStatus.Running

    await eventually(running, 60, "the instance to run")
    with pytest.raises(PayloadError, match="object of type set is not JSON serializable"):
        await client.raise_event(instance_id, "data", {1, 2})
    with pytest.raises(PayloadError, match="object of type Opaque is not JSON serializable"):
        await client.terminate(instance_id, Opaque())
    assert (await client.get_status(instance_id)).runtime_status is OrchestrationStatus.Running
    await client.raise_event(instance_id, "data", {"ok": True})
    status = await client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == {"ok": True}
    events = (await client.provider.load_history(instance_id)).events
    assert [e.input for e in events if isinstance(e, EventRaised)] == ['{"ok":true}']


async def test_a_payload_error_is_a_durable_azure_error(azurite: Any, task_hub: str) -> None:
    import durable_azure

    async with DurableClient.from_app(
        app, connection_string=azurite.connection_string, task_hub=task_hub
    ) as client:
        with pytest.raises(DurableAzureError, match="not JSON serializable"):
            await client.start_new("chain3", client_input={1})
    assert "PayloadError" in durable_azure.__all__


# --- large payloads ----------------------------------------------------------------------

MB = 1024 * 1024


@pytest.mark.parametrize(
    ("input_size", "output_size"),
    [(1 * MB, 1 * MB), (10 * MB, 10 * MB)],
    ids=["1MB", "10MB"],
)
async def test_megabyte_payloads_round_trip_through_blobs(
    bad_hub: Hub, azurite: Any, input_size: int, output_size: int
) -> None:
    text = pseudo_random_text(input_size, seed=1)
    client_input = {"text": text, "reply_size": output_size}
    instance_id = await bad_hub.client.start_new("big_round_trip", client_input=client_input)
    status = await bad_hub.client.wait_for_completion(instance_id, timeout=110)
    assert status.runtime_status is OrchestrationStatus.Completed, status.output
    assert status.input_ == client_input
    assert status.output == {
        "received": input_size,
        "head": text[:16],
        "reply": pseudo_random_text(output_size, seed=output_size),
    }
    container = ContainerClient.from_connection_string(
        azurite.connection_string, bad_hub.worker.provider.names.large_messages_container
    )
    with container:
        blobs = {b.name: b.size for b in container.list_blobs()}
    assert any("/message-" in name for name in blobs), blobs
    assert any("/history-" in name for name in blobs), blobs
    assert any("/Input-" in name for name in blobs), blobs
    assert any("/Output-" in name for name in blobs), blobs


# --- unreadable queue messages -----------------------------------------------------------


def real_start_body(instance_id: str) -> str:
    now = datetime.now(UTC)
    event = ExecutionStarted(
        timestamp=now,
        name="chain3",
        instance_id=instance_id,
        execution_id="0" * 32,
        input="1",
    )
    return messages.encode(TaskMessage(event=event, instance_id=instance_id, execution_id="0" * 32))


async def test_truncated_and_malformed_messages_are_set_aside_and_work_goes_on(
    azurite: Any, task_hub: str
) -> None:
    options = WorkerOptions(max_poll_interval=0.2, max_dequeue_count=2)
    worker = Worker(
        app, connection_string=azurite.connection_string, task_hub=task_hub, options=options
    )
    await worker.start()
    provider = worker.provider
    start = real_start_body("truncated-start")
    json.loads(start)  # the whole body is a real message ...
    gz = gzip.compress(start.encode())
    await provider.payloads.container.upload("cut/message-truncated.json.gz", gz[: len(gz) // 2])
    bodies = {
        "truncated envelope": start[: len(start) // 2],
        "json array": json.dumps([1, {"TaskMessage": None}, "x"]),
        "base64 garbage": base64.b64encode(b"\x80\xfe\xff garbage \x00\x01").decode(),
        "base64 text": base64.b64encode(b"hello, this is not json").decode(),
        "missing blob": messages.encode_blob_reference("nobody/message-0000-TaskCompleted.json.gz"),
        "truncated blob": messages.encode_blob_reference("cut/message-truncated.json.gz"),
    }
    try:
        async with DurableClient.from_app(
            app, connection_string=azurite.connection_string, task_hub=task_hub
        ) as client:
            for body in bodies.values():
                await provider.control_queues[0].queue.send(body)
                await provider.work_items.queue.send(body)
            first = await client.start_new("chain3", client_input=1)
            assert (await client.wait_for_completion(first, timeout=60)).output == 4

            async def all_set_aside() -> bool:
                return len(await client.list_poison()) == 2 * len(bodies)

            await eventually(all_set_aside, 60, "every bad message to be set aside")
            records = await client.list_poison()
            assert pollers_alive(worker)
            second = await client.start_new("chain3", client_input=2)
            assert (await client.wait_for_completion(second, timeout=60)).output == 5
            assert await queued_messages(client) == 0
    finally:
        await worker.stop()
    for queue in (provider.control_queues[0].name, provider.work_items.name):
        assert sorted(r.body for r in records if r.queue == queue) == sorted(bodies.values())
    assert all(r.dequeue_count == 3 for r in records)
    assert all(r.instance_id is None for r in records)
    assert all(r.reason.startswith("unreadable:") for r in records)
    reasons = {r.body: r.reason for r in records}
    assert "not valid JSON" in reasons[bodies["truncated envelope"]]
    assert "JSON" in reasons[bodies["json array"]]
    assert "neither JSON nor base64 JSON" in reasons[bodies["base64 garbage"]]
    assert "not valid JSON" in reasons[bodies["base64 text"]]
    assert "BlobNotFound" in reasons[bodies["missing blob"]]
    assert reasons[bodies["truncated blob"]] != "unreadable: "


@pytest.mark.parametrize("body", ['[1, {"TaskMessage": null}]', '"a string"', "42"])
def test_a_json_body_that_is_not_an_object_is_reported_as_such(body: str) -> None:
    with pytest.raises(messages.MessageFormatError, match="not an object"):
        messages.parse_envelope(body)


# --- filters that look like OData --------------------------------------------------------

ODD_IDS = [
    "x' or PartitionKey ne '",
    "x'",
    "x",
    "xy",
    'x"q',
    "x eq y",
    "x and y",
    "x%",
    "x%25",
    "x&y=1",
    "x+y",
    "x#y",
    "x?y",
    "x/y",
    "x)",
    "y' or '1' eq '1",
    "z",
]


async def test_query_filters_with_quotes_and_operators_match_exactly(bad_hub: Hub) -> None:
    client = bad_hub.client
    names = {i: ODD_NAMES[n % len(ODD_NAMES)] for n, i in enumerate(ODD_IDS)}
    for instance_id, name in names.items():
        await client.start_new(name, instance_id=instance_id)
    for instance_id in ODD_IDS:
        status = await client.wait_for_completion(instance_id, timeout=60)
        assert status.runtime_status is OrchestrationStatus.Completed
        assert status.output == instance_id
        assert status.name == names[instance_id]

    async def ids(**filters: Any) -> set[str]:
        return {s.instance_id for s in await client.get_status_by(**filters)}

    x_ids = {i for i in ODD_IDS if i.startswith("x")}
    assert await ids(instance_id_prefix="x' or PartitionKey ne '") == {"x' or PartitionKey ne '"}
    assert await ids(instance_id_prefix="x'") == {"x'", "x' or PartitionKey ne '"}
    assert await ids(instance_id_prefix="y' or '1' eq '1") == {"y' or '1' eq '1"}
    assert await ids(instance_id_prefix="' or ''='") == set()
    assert await ids(instance_id_prefix="x%") == {"x%", "x%25"}
    assert await ids(instance_id_prefix="x%2") == {"x%25"}
    assert await ids(instance_id_prefix="x&") == {"x&y=1"}
    assert await ids(instance_id_prefix="x+") == {"x+y"}
    assert await ids(instance_id_prefix='x"') == {'x"q'}
    assert await ids(instance_id_prefix="x eq") == {"x eq y"}
    assert await ids(instance_id_prefix="x)") == {"x)"}
    assert await ids(instance_id_prefix="x#") == {"x#y"}
    assert await ids(instance_id_prefix="x?") == {"x?y"}
    assert await ids(instance_id_prefix="x") == x_ids
    for name in ODD_NAMES:
        expected = {i for i, n in names.items() if n == name}
        assert await ids(name=name) == expected, name
        assert await ids(name=name, instance_id_prefix="x'") == expected & {
            "x'",
            "x' or PartitionKey ne '",
        }
    with pytest.raises(ConfigurationError, match="unknown runtime status"):
        await client.get_status_by(runtime_status=["Completed' or RuntimeStatus ne '"])
    assert await ids(name="it's' or Name ne '") == set()
    assert await ids(name="' or ''='") == set()
    counts = await client.count_instances(instance_id_prefix="x' or PartitionKey ne '")
    assert counts == {"Completed": 1}
    assert await client.count_instances(name="x' or Name ne '") == {
        "Completed": len([n for n in names.values() if n == "x' or Name ne '"])
    }
    paged: list[str] = []
    token: str | None = None
    while True:
        page, token = await client.query_instances(
            instance_id_prefix="x'", page_size=1, continuation=token
        )
        paged += [s.instance_id for s in page]
        if token is None:
            break
    assert sorted(paged) == sorted(["x'", "x' or PartitionKey ne '"])
    purged = await client.purge_instance_history_by(instance_id_prefix="x' or PartitionKey ne '")
    assert (purged.deleted, purged.complete) == (1, True)
    assert await ids() == set(ODD_IDS) - {"x' or PartitionKey ne '"}


# --- storage deleted under a running worker ----------------------------------------------


async def wait_for_progress(client: DurableClient, instance_id: str, completed: int) -> None:
    """Until at least ``completed`` activities finished and the next one is running."""

    async def progressed() -> bool:
        events = (await client.provider.load_history(instance_id)).events
        kinds = [type(e).__name__ for e in events]
        done = kinds.count("TaskCompleted")
        return done >= completed and kinds.count("TaskScheduled") == done + 1

    await eventually(progressed, 60, f"{completed} activities of {instance_id} to finish")


SLOW5 = {"steps": 5, "sleep": 0.5}


async def lose_the_instances_table_mid_run(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> DurableOrchestrationStatus:
    """Delete the Instances table under a running instance, check the errors, recreate
    it, and return the instance's final status."""
    caplog.set_level(logging.WARNING, logger="durable_azure")
    client = hub.client
    instance_id = await client.start_new("slow_chain", client_input=SLOW5)
    await wait_for_progress(client, instance_id, 1)
    await client.provider.instances.table.delete_table()
    with pytest.raises(InstanceNotFoundError, match="does not exist"):
        await client.get_status(instance_id)
    with pytest.raises(NotFoundError, match="TableNotFound"):
        await client.start_new("chain3", instance_id="while-missing", client_input=1)

    async def worker_noticed() -> bool:
        return any(
            r.name.startswith("durable_azure") and "TableNotFound" in r.getMessage()
            for r in caplog.records
        )

    await eventually(worker_noticed, 30, "the worker to log the missing table")
    assert pollers_alive(hub.worker)
    await client.provider.create_if_not_exists()

    async def row_back() -> bool:
        return await client.provider.read_instance(instance_id) is not None

    # The row went with the table; the worker writes it again at its next checkpoint.
    await eventually(row_back, 60, "the worker to write the instance row again")
    return await client.wait_for_completion(instance_id, timeout=60)


async def test_instances_table_deleted_under_a_running_worker(
    bad_hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    status = await lose_the_instances_table_mid_run(bad_hub, caplog)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == [1, 2, 3, 4, 5]
    again = await bad_hub.client.start_new("chain3", client_input=1)
    assert (await bad_hub.client.wait_for_completion(again, timeout=60)).output == 4
    assert await bad_hub.client.list_poison() == []


async def test_an_instance_row_lost_with_its_table_is_rebuilt_in_full(
    bad_hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    status = await lose_the_instances_table_mid_run(bad_hub, caplog)
    assert status.output == [1, 2, 3, 4, 5]
    assert (status.name, status.input_) == ("slow_chain", SLOW5)
    assert status.created_time is not None
    assert len(await bad_hub.client.get_status_by(name="slow_chain")) == 1


async def test_control_queue_deleted_under_a_running_worker(
    bad_hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="durable_azure")
    client = bad_hub.client
    instance_id = await client.start_new("slow_chain", client_input={"steps": 3, "sleep": 2.0})
    queue = client.provider.control_queue_of(instance_id)
    await wait_for_progress(client, instance_id, 1)
    await queue.queue.delete_queue()  # while the second activity runs
    neighbour = next(
        f"n{i}" for i in range(100) if client.provider.control_queue_of(f"n{i}") is queue
    )
    with pytest.raises(NotFoundError, match="QueueNotFound"):
        await client.start_new("chain3", instance_id=neighbour, client_input=1)
    assert await client.provider.read_instance(neighbour) is None  # nothing half-written

    async def worker_noticed() -> bool:
        text = [r.getMessage() for r in caplog.records]
        return any("QueueNotFound" in t and queue.name in t for t in text)

    await eventually(worker_noticed, 30, "the worker to log the missing queue")
    assert pollers_alive(bad_hub.worker)
    await client.provider.create_if_not_exists()
    status = await client.wait_for_completion(instance_id, timeout=90)
    assert status.runtime_status is OrchestrationStatus.Completed
    assert status.output == [1, 2, 3]
    await client.start_new("chain3", instance_id=neighbour, client_input=1)
    assert (await client.wait_for_completion(neighbour, timeout=60)).output == 4


# --- wrong credentials and malformed connection strings ----------------------------------


async def test_a_wrong_account_key_fails_fast_with_an_authorization_error(
    azurite: Any, task_hub: str
) -> None:
    cs = wrong_key_connection_string(azurite.connection_string)
    async with DurableClient.from_settings(
        StorageSettings(task_hub=task_hub, connection_string=cs)
    ) as client:
        with pytest.raises(StorageError, match=r"403 Auth(orization|entication)") as raised:
            await asyncio.wait_for(client.start_new("chain3", client_input=1), 60)
        assert raised.value.status == 403
        # Not "no such instance": a wrong key must not look like a missing instance.
        with pytest.raises(StorageError, match=r"403 Auth(orization|entication)") as raised:
            await asyncio.wait_for(client.get_status("any-id"), 60)
        assert not isinstance(raised.value, InstanceNotFoundError)


async def test_a_worker_with_a_wrong_account_key_fails_to_start_quickly(
    azurite: Any, task_hub: str
) -> None:
    cs = wrong_key_connection_string(azurite.connection_string)
    worker = Worker(app, connection_string=cs, task_hub=task_hub, options=FAST)
    try:
        with pytest.raises(StorageError, match=r"403 Auth(orization|entication)"):
            await asyncio.wait_for(worker.start(), 60)
        assert worker._control_pollers == {}
        assert worker._work_item_poller is None
    finally:
        await worker.stop()


def resource_warnings(scenario: Callable[[], Coroutine[Any, Any, None]]) -> list[str]:
    """Run ``scenario`` on an event loop of its own, close the loop, collect garbage and
    return the ResourceWarnings (unclosed sessions, sockets) that this produced."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(scenario())
        gc.collect()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_worker_that_fails_to_start_can_be_stopped_cleanly(azurite: Any, task_hub: str) -> None:
    cs = wrong_key_connection_string(azurite.connection_string)

    async def fail_then_stop() -> None:
        worker = Worker(app, connection_string=cs, task_hub=task_hub)
        with pytest.raises(StorageError, match="403"):
            await worker.start()
        await worker.stop()

    assert resource_warnings(fail_then_stop) == []


def test_a_worker_that_fails_to_start_releases_its_connections(azurite: Any, task_hub: str) -> None:
    cs = wrong_key_connection_string(azurite.connection_string)

    async def fail_to_start() -> None:
        with pytest.raises(StorageError, match="403"):
            async with Worker(app, connection_string=cs, task_hub=task_hub):
                pass

    assert resource_warnings(fail_to_start) == []


def test_cli_with_a_wrong_account_key_exits_with_a_clear_error(azurite: Any, task_hub: str) -> None:
    cs = wrong_key_connection_string(azurite.connection_string)
    done = run_cli("--connection", cs, "--task-hub", task_hub, "start", "chain3")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert re.search("403 Auth(orization|entication)", done.stderr), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "connection_string",
    [
        "not a connection string",
        "AccountName=;AccountKey=",
        "UseDevelopmentStorage=false",
        "DefaultEndpointsProtocol=http;AccountName=someaccount",
    ],
)
def test_a_malformed_connection_string_is_refused_at_once(connection_string: str) -> None:
    settings = StorageSettings(task_hub="BadInput", connection_string=connection_string)
    with pytest.raises(ConfigurationError, match="invalid storage connection string"):
        DurableClient.from_settings(settings)
    with pytest.raises(ConfigurationError, match="invalid storage connection string"):
        Worker(app, connection_string=connection_string, task_hub="BadInput")
    done = run_cli("--connection", connection_string, "--task-hub", "BadInput", "list")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "invalid storage connection string" in done.stderr


def not_base64_key(connection_string: str) -> str:
    parts = connection_string.split(";")
    return ";".join("AccountKey=not-base64!!" if p.startswith("AccountKey=") else p for p in parts)


def test_an_account_key_that_is_not_base64_is_refused_at_once(azurite: Any) -> None:
    cs = not_base64_key(azurite.connection_string)
    with pytest.raises(ConfigurationError, match="AccountKey"):
        StorageSettings(task_hub="BadInput", connection_string=cs).open_account()


async def test_an_account_key_that_is_not_base64_gets_a_clear_error(azurite: Any) -> None:
    cs = not_base64_key(azurite.connection_string)
    settings = StorageSettings(task_hub="BadInput", connection_string=cs)
    with pytest.raises((ConfigurationError, StorageError), match="base64"):
        async with DurableClient.from_settings(settings) as client:
            await asyncio.wait_for(client.get_status("x"), 60)


def test_an_explicit_empty_connection_string_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    with pytest.raises(ConfigurationError, match="connection string"):
        DurableClient.from_settings(StorageSettings.resolve(connection_string=""))


# --- Azurite stopped and restarted mid-run -----------------------------------------------


def start_own_azurite(location: Path) -> az.AzuriteProcess:
    """An Azurite of this test's own (it is stopped and restarted), on free ports."""
    for attempt in range(3):
        base = az.find_free_port_base(start=26000 + 30 * attempt)
        process = az.AzuriteProcess(ports=az.AzuritePorts.from_base(base), location=location)
        try:
            return process.start()
        except az.AzuritePortInUseError:  # taken between the probe and the bind
            continue
    raise AssertionError("no free ports for a second Azurite")


async def test_worker_rides_out_an_azurite_restart_and_an_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="durable_azure")
    process = start_own_azurite(tmp_path / "az")
    try:
        cs = process.connection_string
        worker = Worker(app, connection_string=cs, task_hub="RestartHub", options=FAST)
        await worker.start()
        try:
            async with DurableClient.from_app(
                app, connection_string=cs, task_hub="RestartHub"
            ) as client:
                instance_id = await client.start_new(
                    "slow_chain", client_input={"steps": 8, "sleep": 0.5}
                )
                # 1. A graceful restart mid-run (the SDK's own retries bridge it).
                await wait_for_progress(client, instance_id, 2)
                await asyncio.to_thread(process.restart)
                # 2. An outage longer than those retries: clear errors and warnings.
                await wait_for_progress(client, instance_id, 4)
                await asyncio.to_thread(process.stop)
                with pytest.raises(StorageError, match="Cannot connect"):
                    await asyncio.wait_for(client.get_status(instance_id), 60)

                async def worker_warned() -> bool:
                    return any(
                        r.name == "durable_azure.worker" and "Cannot connect" in r.getMessage()
                        for r in caplog.records
                    )

                await eventually(worker_warned, 60, "the worker to warn about the outage")
                assert pollers_alive(worker)
                await asyncio.to_thread(process.start)
                status = await client.wait_for_completion(instance_id, timeout=100)
                assert status.runtime_status is OrchestrationStatus.Completed
                assert status.output == [1, 2, 3, 4, 5, 6, 7, 8]
                assert pollers_alive(worker)
                again = await client.start_new("chain3", client_input=1)
                assert (await client.wait_for_completion(again, timeout=60)).output == 4
        finally:
            await worker.stop()
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--fold-window", "9"], "fold_window must be within 0..5.0 s"),
        (["--max-local-activities", "-1"], "max_local_activities must be 0 or more"),
        (["--wake-host", "0.0.0.0"], "also give wake_advertise_host"),
        (["--queue-metrics-interval", "0"], "queue_metrics_interval must be more than 0 s"),
        (
            ["--wake-host", "0.0.0.0", "--wake-advertise-host", "my-host"],
            "wake_advertise_host must be an IP address, got 'my-host'",
        ),
    ],
)
def test_cli_worker_refuses_invalid_tuning_with_exit_code_2(
    azurite: Any, task_hub: str, flags: list[str], message: str
) -> None:
    done = run_cli(
        "--connection",
        azurite.connection_string,
        "--task-hub",
        task_hub,
        "worker",
        "tests.integration.bad_input_apps:app",
        *flags,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr
