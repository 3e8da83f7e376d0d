"""The task hub doctor on Azurite: real inconsistencies are found, and repaired when safe.

Ages are judged "as if checked later" (``diagnose(now=...)``) instead of waiting, so no
test depends on timing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import ContainerClient

from durable_azure.doctor import Finding, FindingKind, Report, diagnose, fix
from durable_azure.engine.history import EventRaised, ExecutionStarted
from durable_azure.storage.azure_primitives import AzureStorageAccount
from durable_azure.storage.messages import TaskMessage
from durable_azure.storage.names import TaskHubNames, escape_key
from durable_azure.storage.primitives import QueueMessage
from durable_azure.storage.provider import AzureStorageProvider, Outbound
from tests.integration.conftest import Hub

pytestmark = pytest.mark.azurite


def _later(minutes: float = 60) -> datetime:
    """A diagnosis time this far ahead: everything written now is that old by then."""
    return datetime.now(UTC) + timedelta(minutes=minutes)


def _kinds(report: Report) -> list[tuple[FindingKind, str]]:
    return [(f.kind, f.subject) for f in report.findings]


def _check_outputs(report: Report) -> None:
    """The report's JSON form is plain JSON and its text names every finding."""
    data = json.loads(json.dumps(report.to_json()))
    assert data["clean"] is report.clean
    assert len(data["findings"]) == len(report.findings)
    text = report.format()
    for finding in report.findings:
        assert finding.message in text


@pytest.fixture
async def bare(azurite: Any, task_hub: str) -> AsyncIterator[AzureStorageProvider]:
    """The test's task hub, created, with no worker running."""
    account = AzureStorageAccount.from_connection_string(azurite.connection_string)
    provider = AzureStorageProvider(account, TaskHubNames(task_hub))
    await provider.create_if_not_exists()
    try:
        yield provider
    finally:
        await account.close()


# --- the "stuck in Running" crash ----------------------------------------------------------


@pytest.mark.parametrize(
    ("orchestrator", "client_input", "status", "older_execution"),
    [
        ("chain5", 1, "Completed", False),
        ("fails_uncaught", None, "Failed", False),
        # The row also names an older execution (a continue-as-new's row update lost).
        ("chain5", 2, "Completed", True),
    ],
)
async def test_crash_between_history_and_row_is_found_and_repaired(
    hub: Hub, orchestrator: str, client_input: Any, status: str, older_execution: bool
) -> None:
    provider = hub.client.provider
    instance_id = await hub.client.start_new(orchestrator, client_input=client_input)
    done = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert done.runtime_status.name == status
    good = await provider.instances.get(instance_id)
    assert good is not None
    history = await provider.load_history(instance_id)
    assert history.execution_id == good.execution_id

    # The crash: the last checkpoint's history is written, its Instances update is not.
    # The row is what the previous checkpoint left: Running, no output.
    stale: dict[str, Any] = {"RuntimeStatus": "Running", "Output": None, "CompletedTime": None}
    if older_execution:
        stale["ExecutionId"] = uuid.uuid4().hex
    await provider.instances.merge(instance_id, stale)

    report = await diagnose(provider, now=_later())
    assert _kinds(report) == [(FindingKind.ROW_LAGS_HISTORY, instance_id)]
    finding = report.findings[0]
    assert finding.fixable
    assert finding.instance_id == instance_id
    assert finding.details["row_status"] == "Running"
    assert finding.details["history_status"] == status
    assert status in finding.message
    assert "Running" in finding.message
    _check_outputs(report)

    actions = await fix(provider, report)
    assert len(actions) == 1
    assert actions[0].startswith(f"rewrote the Instances row of {instance_id!r}")

    repaired = await provider.instances.get(instance_id)
    assert repaired is not None
    assert repaired.runtime_status.name == status
    assert repaired.output == good.output
    assert repaired.execution_id == good.execution_id
    assert repaired.completed_time is not None
    after = await hub.client.get_status(instance_id)
    assert after is not None
    assert after.runtime_status.name == status
    assert after.output == done.output

    assert (await diagnose(provider, now=_later())).clean


async def test_a_row_that_just_lags_is_not_reported_until_it_settles(hub: Hub) -> None:
    """A worker between checkpoint steps 2 and 3 is not a crash: the history's newest
    event must be older than the settle time before its row counts as lagging."""
    provider = hub.client.provider
    instance_id = await hub.client.start_new("chain5", client_input=1)
    await hub.client.wait_for_completion(instance_id, timeout=60)
    await provider.instances.merge(instance_id, {"RuntimeStatus": "Running"})
    history = await provider.load_history(instance_id)
    newest = history.events[-1].timestamp
    assert (await diagnose(provider, now=newest + timedelta(seconds=1))).clean
    late = await diagnose(provider, now=newest + timedelta(minutes=1))
    assert _kinds(late) == [(FindingKind.ROW_LAGS_HISTORY, instance_id)]


# --- the lost start ------------------------------------------------------------------------


@pytest.mark.parametrize("large", [False, True], ids=["small-input", "offloaded-input"])
async def test_lost_start_is_sent_again_and_the_instance_completes(hub: Hub, large: bool) -> None:
    provider = hub.client.provider
    instance_id = f"lost-{uuid.uuid4().hex[:8]}"
    if large:
        orchestrator, client_input = "large_payloads", {"text": "x" * 70_000}
    else:
        orchestrator, client_input = "chain5", 3
    now = datetime.now(UTC)
    # A Pending row as a client writes it, but its start message never reached the queue.
    await provider.instances.create(
        instance_id,
        {
            "Name": orchestrator,
            "Version": "",
            "Input": json.dumps(client_input),
            "CustomStatus": "null",
            "RuntimeStatus": "Pending",
            "ExecutionId": uuid.uuid4().hex,
            "CreatedTime": now,
            "LastUpdatedTime": now,
            "Generation": 0,
            "Tags": "null",
        },
        replace_etag=None,
    )
    row = await provider.instances.get(instance_id)
    assert row is not None
    assert (row.input or "").startswith("http") is large  # offloaded to a blob

    # Not stuck yet: it is younger than stale_after.
    assert (await diagnose(provider)).clean

    report = await diagnose(provider, now=_later())
    assert _kinds(report) == [(FindingKind.START_LOST, instance_id)]
    assert report.findings[0].fixable
    assert (
        report.findings[0].details["control_queue"] == provider.control_queue_of(instance_id).name
    )
    _check_outputs(report)

    actions = await fix(provider, report)
    assert len(actions) == 1
    assert actions[0].startswith(f"sent the lost start of {instance_id!r} again")

    status = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert status.runtime_status.name == "Completed"
    if large:
        assert status.output == {"received": 70_000, "reply": "y" * 70_000}
    else:
        assert status.output == {"value": 127, "steps": [3, 7, 15, 31, 63]}
    finished = await provider.instances.get(instance_id)
    assert finished is not None
    assert finished.execution_id == row.execution_id  # the same execution, not a new one

    assert (await diagnose(provider, now=_later())).clean


async def test_lost_start_of_a_restart_is_sent_again(hub: Hub) -> None:
    """A finished instance restarted under its id: the row names the new execution
    (Pending) and the history still holds the old, finished one."""
    provider = hub.client.provider
    instance_id = await hub.client.start_new("chain5", client_input=1)
    first = await hub.client.wait_for_completion(instance_id, timeout=60)
    old = await provider.instances.get(instance_id)
    assert old is not None
    now = datetime.now(UTC)
    restarted = {
        "RuntimeStatus": "Pending",
        "ExecutionId": uuid.uuid4().hex,
        "Input": json.dumps(4),
        "Output": None,
        "CompletedTime": None,
        "CreatedTime": now,
        "LastUpdatedTime": now,
        "Generation": old.generation + 1,
    }
    await provider.instances.merge(instance_id, restarted)

    report = await diagnose(provider, now=_later())
    assert _kinds(report) == [(FindingKind.START_LOST, instance_id)]
    assert report.findings[0].details["row_execution_id"] == restarted["ExecutionId"]
    assert len(await fix(provider, report)) == 1

    second = await hub.client.wait_for_completion(instance_id, timeout=60)
    assert first.output == {"value": 63, "steps": [1, 3, 7, 15, 31]}
    assert second.output == {"value": 159, "steps": [4, 9, 19, 39, 79]}
    history = await provider.load_history(instance_id)
    assert history.execution_id == restarted["ExecutionId"]
    assert (await diagnose(provider, now=_later())).clean


async def test_a_pending_instance_whose_start_is_queued_is_not_a_lost_start(
    bare: AzureStorageProvider,
) -> None:
    """No worker: the start waits in its queue. That is an old message, not a lost start,
    and the fix touches neither."""
    await bare.start_instance("chain5", "waiting-1", "1")
    report = await diagnose(bare, now=_later())
    queue = bare.control_queue_of("waiting-1").name
    assert _kinds(report) == [(FindingKind.OLD_MESSAGE, queue)]
    assert report.findings[0].instance_id == "waiting-1"
    assert await fix(bare, report) == []
    assert await bare.control_queue_of("waiting-1").queue.approximate_count() == 1
    row = await bare.instances.get("waiting-1")
    assert row is not None
    assert row.runtime_status.name == "Pending"


# --- orphaned blobs ------------------------------------------------------------------------


async def test_orphaned_blobs_are_deleted_and_live_ones_kept(hub: Hub, azurite: Any) -> None:
    provider = hub.client.provider
    live = await hub.client.start_new("large_payloads", client_input={"text": "x" * 70_000})
    assert (await hub.client.wait_for_completion(live, timeout=60)).runtime_status.name == (
        "Completed"
    )
    container = provider.payloads.container
    live_blobs = await container.list_names(escape_key(live) + "/")
    assert live_blobs  # the large input and result went to blobs

    # Left behind by an instance that no longer exists (a purge or a crashed write).
    ghost = "ghost/order#7"
    key = escape_key(ghost)
    orphans = [
        f"{key}/history-0000000000000004-TaskCompleted-0A1B2C3D-Result.json.gz",
        f"{key}/message-{uuid.uuid4().hex}-ExecutionStarted.json.gz",
        f"{key}/Input-0F0F0F0F.json.gz",
    ]
    for name in orphans:
        await container.upload(name, b"\x1f\x8b not read")

    # Too young to be judged orphaned: a write may be in progress.
    assert not (await diagnose(provider)).of_kind(FindingKind.ORPHANED_BLOB)

    report = await diagnose(provider, now=_later())
    assert sorted(_kinds(report)) == sorted((FindingKind.ORPHANED_BLOB, n) for n in orphans)
    assert all(f.fixable and f.instance_id == ghost for f in report.findings)
    _check_outputs(report)

    actions = await fix(provider, report)
    assert sorted(actions) == sorted(
        f"deleted orphaned blob {n!r} (instance {ghost!r} has no row and no history)"
        for n in orphans
    )
    client = ContainerClient.from_connection_string(
        azurite.connection_string, provider.names.large_messages_container
    )
    with client:
        remaining = sorted(b.name for b in client.list_blobs())
    assert remaining == sorted(live_blobs)
    assert (await diagnose(provider, now=_later())).clean


async def test_a_blob_named_by_a_queued_message_is_not_orphaned(
    bare: AzureStorageProvider,
) -> None:
    """A large start waiting in its queue (no row: the client crashed before writing
    it) needs its blob: it is never reported, let alone deleted."""
    start = ExecutionStarted(
        timestamp=datetime.now(UTC),
        name="large_payloads",
        instance_id="nobody-yet",
        execution_id=uuid.uuid4().hex,
        input=json.dumps({"text": "z" * 70_000}),
    )
    await bare.send(Outbound(TaskMessage(start, "nobody-yet", start.execution_id)))
    blobs = await bare.payloads.container.list_names()
    assert len(blobs) == 1
    report = await diagnose(bare, now=_later())
    assert _kinds(report) == [(FindingKind.OLD_MESSAGE, bare.control_queue_of("nobody-yet").name)]
    assert await fix(bare, report) == []
    assert await bare.payloads.container.list_names() == blobs


# --- report-only findings ------------------------------------------------------------------


async def test_old_messages_partitions_and_poison_are_reported_not_touched(
    bare: AzureStorageProvider, azurite: Any
) -> None:
    names = bare.names
    # A message nobody reads (no worker), and one in a control queue beyond the count.
    await bare.send_to_instance("someone", EventRaised(timestamp=_later(0), name="ping"))
    stranded = TaskHubNames(names.hub, 8).control_queue(6)
    await bare.account.queue(stranded).create()
    await bare.account.queue(stranded).send("{}")
    # DTFx's partition table: one live lease, one expired.
    now = datetime.now(UTC)
    with TableServiceClient.from_connection_string(azurite.connection_string) as service:
        table = service.create_table(names.partitions_table)
        for queue, expires in [(names.control_queue(0), now + timedelta(days=1)),
                               (names.control_queue(1), now - timedelta(minutes=5))]:  # fmt: skip
            table.create_entity(
                {
                    "PartitionKey": "",
                    "RowKey": queue,
                    "CurrentOwner": "worker-a",
                    "NextOwner": "",
                    "ExpiresAt": expires,
                    "IsDraining": False,
                }
            )
    # A poison record.
    raw = QueueMessage("m-1", None, "{bad", 11, now, None)
    record = await bare.poison.set_aside(
        names.control_queue(2), raw, reason="unreadable: test", instance_id=None
    )

    report = await diagnose(bare, now=now + timedelta(minutes=30))
    event_queue = bare.control_queue_of("someone").name
    assert sorted(_kinds(report)) == sorted(
        [
            (FindingKind.OLD_MESSAGE, event_queue),
            (FindingKind.STRANDED_QUEUE, stranded),
            (FindingKind.PARTITION_UNOWNED, names.control_queue(1)),
            (FindingKind.POISON_RECORD, record.name),
        ]
    )
    assert not report.fixable
    old = report.of_kind(FindingKind.OLD_MESSAGE)[0]
    assert old.queue == event_queue
    assert old.instance_id == "someone"
    assert old.details["oldest_age_seconds"] >= 29 * 60
    assert "worker-a" in report.of_kind(FindingKind.PARTITION_UNOWNED)[0].message
    _check_outputs(report)

    assert await fix(bare, report) == []
    assert await bare.control_queue_of("someone").queue.approximate_count() == 1
    assert await bare.account.queue(stranded).approximate_count() == 1
    assert [r.name for r in await bare.poison.list()] == [record.name]

    # Judged at the time of writing, the queue is not old and the lease not expired...
    soon = await diagnose(bare, now=now + timedelta(seconds=1))
    assert sorted(f.kind for f in soon.findings) == sorted(
        [FindingKind.STRANDED_QUEUE, FindingKind.POISON_RECORD, FindingKind.PARTITION_UNOWNED]
    )
    await bare.account.queue(stranded).delete_queue()


async def test_a_hub_that_does_not_exist_reports_missing_resources(
    azurite: Any, task_hub: str
) -> None:
    account = AzureStorageAccount.from_connection_string(azurite.connection_string)
    try:
        provider = AzureStorageProvider(account, TaskHubNames(task_hub, 2))
        report = await diagnose(provider)
    finally:
        await account.close()
    names = provider.names
    assert sorted(_kinds(report)) == sorted(
        (FindingKind.MISSING_RESOURCE, n)
        for n in [
            names.history_table,
            names.instances_table,
            names.large_messages_container,
            names.poison_container,
            *names.control_queues,
            names.work_item_queue,
        ]
    )
    assert report.instances_checked == 0


# --- a healthy hub -------------------------------------------------------------------------


async def test_a_clean_hub_has_no_findings(hub: Hub) -> None:
    provider = hub.client.provider
    ids = [
        await hub.client.start_new("chain5", client_input=1),
        await hub.client.start_new("large_payloads", client_input={"text": "x" * 70_000}),
        await hub.client.start_new("catches_failure"),
    ]
    for instance_id in ids:
        await hub.client.wait_for_completion(instance_id, timeout=60)
    for now in (None, _later()):
        report = await diagnose(provider, now=now)
        assert report.clean, report.format()
        assert report.findings == []
        assert report.queues_checked == provider.names.partition_count + 1
        assert report.blobs_checked > 0
        assert report.format().startswith(f"task hub {provider.names.hub}: no problems found")
        _check_outputs(report)
        assert await fix(provider, report) == []


def test_finding_formats() -> None:
    finding = Finding(FindingKind.START_LOST, "x", "instance 'x' lost its start", fixable=True)
    assert finding.format() == "[start_lost] instance 'x' lost its start (fixable)"
    assert finding.to_json()["kind"] == "start_lost"
