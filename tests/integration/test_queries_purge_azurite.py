"""Instance queries and purges against Azurite, checked with the plain Azure SDK.

Instances are created the way a client does (``provider.start_instance``: control-queue
message, then the Instances row), moved to their status with ``provider.instances.merge``
(as a checkpoint does), given history with ``provider.history.append`` and large-message
blobs through ``provider.payloads``. After a purge the History and Instances tables and the
large-messages container are read with the synchronous ``azure.data.tables`` /
``azure.storage.blob`` clients, not with the code under test.

(The file is not named ``test_queries_purge.py``: the unit tests use that name and test
modules are imported by basename, so two files with one name cannot both be collected.)
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient

from durable_azure.engine.history import (
    ExecutionCompleted,
    ExecutionStarted,
    HistoryEvent,
    OrchestrationStatus,
    TaskCompleted,
    TaskScheduled,
)
from durable_azure.errors import ConfigurationError, InstanceStateError
from durable_azure.storage.azure_primitives import AzureStorageAccount
from durable_azure.storage.names import (
    MAX_INLINE_MESSAGE_BYTES,
    MAX_INLINE_PROPERTY_BYTES,
    TaskHubNames,
    escape_key,
)
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.storage.purge import purge_instance, purge_instances
from durable_azure.storage.queries import (
    InstanceQuery,
    count_instances,
    iterate_instances,
    query_instances,
)

pytestmark = pytest.mark.azurite

S = OrchestrationStatus
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
#: Storage requests in flight while seeding.
SEED_CONCURRENCY = 32


@dataclass(frozen=True)
class Spec:
    """One instance to create."""

    instance_id: str
    status: OrchestrationStatus = S.Completed
    created: datetime = T0
    name: str = "orch"
    events: int = 3
    blobs: int = 1
    large: bool = False


@pytest.fixture
async def provider(azurite: Any, task_hub: str) -> AsyncIterator[AzureStorageProvider]:
    account = AzureStorageAccount.from_connection_string(azurite.connection_string)
    provider = AzureStorageProvider(account, TaskHubNames(task_hub))
    await provider.create_if_not_exists()
    try:
        yield provider
    finally:
        await account.close()


async def create(provider: AzureStorageProvider, spec: Spec, *, as_client: bool) -> None:
    """Create the instance in ``spec.status``, with history and message blobs.

    ``as_client``: start it as a client does (control-queue message, Pending row), then
    merge the status as a checkpoint does. Otherwise write the row a checkpoint leaves
    directly (two requests fewer; same columns).
    """
    text = json.dumps("x" * MAX_INLINE_MESSAGE_BYTES) if spec.large else '"in"'
    if as_client:
        execution_id = await provider.start_instance(
            spec.name, spec.instance_id, text, now=spec.created
        )
    else:
        execution_id = uuid.uuid4().hex
    history: list[HistoryEvent] = [
        ExecutionStarted(
            timestamp=spec.created,
            name=spec.name,
            instance_id=spec.instance_id,
            execution_id=execution_id,
            input=text,
        )
    ]
    for i in range((spec.events - 1) // 2):
        history.append(TaskScheduled(timestamp=spec.created, event_id=i, name="act"))
        history.append(TaskCompleted(timestamp=spec.created, task_scheduled_id=i, result="1"))
    if spec.status.is_terminal:
        result = json.dumps("r" * MAX_INLINE_PROPERTY_BYTES) if spec.large else '"done"'
        history.append(
            ExecutionCompleted(
                timestamp=spec.created, orchestration_status=spec.status, result=result
            )
        )
    update: dict[str, Any] = {"RuntimeStatus": spec.status.name, "LastUpdatedTime": spec.created}
    if spec.status.is_terminal:
        update["CompletedTime"] = spec.created
    row = (
        provider.instances.merge(spec.instance_id, update)
        if as_client
        else provider.instances.create(
            spec.instance_id,
            {
                "Name": spec.name,
                "Version": "",
                "Input": text,
                "CustomStatus": "null",
                "ExecutionId": execution_id,
                "CreatedTime": spec.created,
                "Generation": 0,
                "Tags": "null",
                **update,
            },
            replace_etag=None,
        )
    )
    await asyncio.gather(
        provider.history.append(
            spec.instance_id,
            execution_id=execution_id,
            start_position=0,
            events=history,
            etag=None,
        ),
        row,
        *(
            provider.payloads.store_message(
                '{"big": true}',
                instance_id=spec.instance_id,
                activity_id=uuid.uuid4().hex,
                event_type="TaskCompleted",
            )
            for _ in range(spec.blobs)
        ),
    )


async def create_all(
    provider: AzureStorageProvider, specs: Iterable[Spec], *, as_client: bool = True
) -> None:
    gate = asyncio.Semaphore(SEED_CONCURRENCY)

    async def one(spec: Spec) -> None:
        async with gate:
            await create(provider, spec, as_client=as_client)

    await asyncio.gather(*(one(s) for s in specs))


class PlainView:
    """The task hub as the plain (synchronous) Azure SDK sees it."""

    def __init__(self, connection_string: str, hub: str) -> None:
        names = TaskHubNames(hub)
        tables = TableServiceClient.from_connection_string(connection_string)
        self.history = tables.get_table_client(names.history_table)
        self.instances = tables.get_table_client(names.instances_table)
        self.blobs = BlobServiceClient.from_connection_string(
            connection_string
        ).get_container_client(names.large_messages_container)

    def snapshot(self) -> dict[str, tuple[int, list[str]]]:
        """Per escaped instance id: its History row count and its blob names (3 listings)."""
        out: dict[str, tuple[int, list[str]]] = {}
        for entity in self.history.list_entities(select=["PartitionKey"]):
            rows, names = out.get(entity["PartitionKey"], (0, []))
            out[entity["PartitionKey"]] = (rows + 1, names)
        for name in sorted(self.blobs.list_blob_names()):
            key = name.split("/", 1)[0]
            rows, names = out.get(key, (0, []))
            out[key] = (rows, [*names, name])
        for key in self.instance_ids():
            out.setdefault(key, (0, []))
        return out

    def instance_ids(self) -> set[str]:
        return {e["PartitionKey"] for e in self.instances.list_entities(select=["PartitionKey"])}

    def history_partitions(self) -> set[str]:
        return {e["PartitionKey"] for e in self.history.list_entities(select=["PartitionKey"])}

    def blob_owners(self) -> set[str]:
        return {name.split("/", 1)[0] for name in self.blobs.list_blob_names()}

    def history_rows(self, instance_id: str) -> int:
        rows = self.history.query_entities(
            "PartitionKey eq @pk", parameters={"pk": escape_key(instance_id)}, select=["RowKey"]
        )
        return len(list(rows))

    def has_row(self, instance_id: str) -> bool:
        try:
            self.instances.get_entity(escape_key(instance_id), "")
        except ResourceNotFoundError:
            return False
        return True

    def blob_names(self, instance_id: str) -> list[str]:
        return list(self.blobs.list_blob_names(name_starts_with=escape_key(instance_id) + "/"))


def keys(ids: Iterable[str]) -> set[str]:
    return {escape_key(i) for i in ids}


async def all_pages(
    provider: AzureStorageProvider, query: InstanceQuery, page_size: int
) -> list[str]:
    ids: list[str] = []
    token: str | None = None
    while True:
        records, token = await query_instances(
            provider, query, page_size=page_size, continuation=token, include_input=False
        )
        assert len(records) <= page_size
        ids += [r.instance_id for r in records]
        if token is None:
            return ids


def key_order(ids: Sequence[str]) -> list[str]:
    return sorted(ids, key=escape_key)


# --- queries -----------------------------------------------------------------------------


async def test_query_filters_and_paging_over_250_instances(
    provider: AzureStorageProvider,
) -> None:
    statuses = [S.Completed, S.Running, S.Failed, S.Pending, S.Terminated, S.Suspended]
    prefixes = ["job/", "job#", "job^", "jobs", "x\x01", "j"]
    specs = [
        Spec(
            f"{prefixes[i % len(prefixes)]}{i:03d}",
            status=statuses[i % 5],  # 5 and 6 are coprime: every prefix gets every status
            created=T0 + timedelta(seconds=i),
            name="alpha" if i % 3 else "beta",
            events=1,
            blobs=0,
        )
        for i in range(250)
    ]
    await create_all(provider, specs)

    cases: list[tuple[InstanceQuery, list[Spec]]] = [
        (InstanceQuery(), specs),
        (
            InstanceQuery(runtime_status=(S.Running, S.Failed)),
            [s for s in specs if s.status in (S.Running, S.Failed)],
        ),
        (
            InstanceQuery(
                created_time_from=T0 + timedelta(seconds=40),
                created_time_to=T0 + timedelta(seconds=99),
            ),
            [s for s in specs if 40 <= (s.created - T0).total_seconds() <= 99],
        ),
        (
            InstanceQuery(instance_id_prefix="job/"),
            [s for s in specs if s.instance_id.startswith("job/")],
        ),
        (
            InstanceQuery(instance_id_prefix="job"),
            [s for s in specs if s.instance_id.startswith("job")],
        ),
        (
            InstanceQuery(instance_id_prefix="job^"),
            [s for s in specs if s.instance_id.startswith("job^")],
        ),
        (
            InstanceQuery(instance_id_prefix="x\x01"),
            [s for s in specs if s.instance_id.startswith("x\x01")],
        ),
        (InstanceQuery(name="beta"), [s for s in specs if s.name == "beta"]),
        (
            InstanceQuery(
                runtime_status=(S.Completed,),
                instance_id_prefix="job",
                created_time_to=T0 + timedelta(seconds=200),
                name="alpha",
            ),
            [
                s
                for s in specs
                if s.status is S.Completed
                and s.instance_id.startswith("job")
                and s.created <= T0 + timedelta(seconds=200)
                and s.name == "alpha"
            ],
        ),
    ]
    for query, expected_specs in cases:
        expected = key_order([s.instance_id for s in expected_specs])
        assert expected, query
        for page_size in (7, 100):
            got = await all_pages(provider, query, page_size)
            assert got == expected, (query, page_size)
    # Page size 1 over everything, and the async iterator.
    assert await all_pages(provider, InstanceQuery(), 1) == key_order(
        [s.instance_id for s in specs]
    )
    iterated = [r.instance_id async for r in iterate_instances(provider, InstanceQuery())]
    assert iterated == key_order([s.instance_id for s in specs])

    # Records are decoded from the rows the client and the checkpoint wrote.
    [record], _ = await query_instances(provider, InstanceQuery(instance_id_prefix="job/000"))
    assert (record.instance_id, record.name, record.runtime_status) == (
        "job/000",
        "beta",
        S.Completed,
    )
    assert (record.created_time, record.input) == (T0, '"in"')

    counts = await count_instances(provider, InstanceQuery())
    assert counts == {
        status.name: sum(1 for s in specs if s.status is status)
        for status in sorted(set(statuses[:5]))
    }
    assert await count_instances(provider, InstanceQuery(instance_id_prefix="job^")) == {
        status.name: n
        for status in sorted(set(statuses[:5]))
        if (n := sum(1 for s in specs if s.status is status and s.instance_id.startswith("job^")))
    }


async def test_prefix_queries_over_escaped_and_far_unicode_ids(
    provider: AzureStorageProvider,
) -> None:
    # The service orders keys by UTF-16 code unit (U+10000 and up sort below U+E000-U+FFFF),
    # the memory tables by code point; the prefix ranges must be right for both.
    ids = [
        *("a", "ab", "a/", "a/b", "a\\b", "a^", "a^0", "a^^", "a#", "a#1", "a?x", "b/a"),
        *("a\x01", "a\x01b", "a\x1f", "a\x7f", "a\x9fz", "a\u00c1", "a_"),
        *(
            "a\ud7ff",
            "a\ue000",
            "a\uffff",
            "a\uffffb",
            "a\U00010000",
            "a\U0010ffff",
            "a\U0010ffffb",
        ),
    ]
    await create_all(provider, [Spec(i, events=1, blobs=0) for i in ids], as_client=False)
    prefixes = {i[:k] for i in ids for k in range(1, len(i) + 1)} | {"c", "a\x02", "a^1"}
    for prefix in sorted(prefixes):
        got = {
            r.instance_id
            async for r in iterate_instances(provider, InstanceQuery(instance_id_prefix=prefix))
        }
        assert got == {i for i in ids if i.startswith(prefix)}, f"prefix {prefix!r}"


# --- purge one ---------------------------------------------------------------------------


async def test_purge_instance_leaves_no_row_history_or_blob(
    provider: AzureStorageProvider, azurite: Any, task_hub: str
) -> None:
    target = "purge/me#1"
    neighbours = ["purge/me#10", "purge/me", "purge/me#1/x", "purge^0me#1"]
    # A large input: the start message, the Instances row's Input and the ExecutionStarted
    # row's Input go to blobs, and so does the large result. 251 history rows: three
    # delete transactions.
    await create_all(
        provider,
        [Spec(target, events=250, blobs=2, large=True)] + [Spec(n) for n in neighbours],
    )
    plain = PlainView(azurite.connection_string, task_hub)
    assert plain.has_row(target)
    assert plain.history_rows(target) == 251  # 250 events + the sentinel
    assert len(plain.blob_names(target)) == 6  # those four, plus two message blobs
    before = {n: (plain.history_rows(n), plain.blob_names(n)) for n in neighbours}

    assert await purge_instance(provider, target) is True

    assert not plain.has_row(target)
    assert plain.history_rows(target) == 0
    assert plain.blob_names(target) == []
    assert escape_key(target) not in plain.history_partitions()
    assert escape_key(target) not in plain.blob_owners()
    assert {n: (plain.history_rows(n), plain.blob_names(n)) for n in neighbours} == before
    assert all(plain.has_row(n) for n in neighbours)
    assert await purge_instance(provider, target) is False


async def test_concurrent_purges_of_one_instance_both_succeed(
    provider: AzureStorageProvider, azurite: Any, task_hub: str
) -> None:
    await create_all(provider, [Spec("twice", events=450, blobs=3)], as_client=False)
    results = await asyncio.gather(
        purge_instance(provider, "twice"), purge_instance(provider, "twice")
    )
    assert True in results
    plain = PlainView(azurite.connection_string, task_hub)
    assert (plain.has_row("twice"), plain.history_rows("twice"), plain.blob_names("twice")) == (
        False,
        0,
        [],
    )


async def test_purge_instance_refuses_a_running_instance(
    provider: AzureStorageProvider, azurite: Any, task_hub: str
) -> None:
    await create_all(provider, [Spec("live", status=S.Running)])
    plain = PlainView(azurite.connection_string, task_hub)
    rows = plain.history_rows("live")
    with pytest.raises(InstanceStateError, match="'live' is Running; terminate it"):
        await purge_instance(provider, "live")
    assert plain.has_row("live")
    assert plain.history_rows("live") == rows
    assert len(plain.blob_names("live")) == 1


# --- purge by filter ---------------------------------------------------------------------


async def test_purge_by_filter_over_500_instances_reports_progress_and_resumes(
    provider: AzureStorageProvider, azurite: Any, task_hub: str
) -> None:
    statuses = [S.Completed, S.Failed, S.Terminated, S.Canceled, S.Running]
    specs = [
        Spec(
            f"batch/{i:03d}" if i % 9 else f"batch#{i:03d}",
            status=statuses[i % len(statuses)],
            created=T0 + timedelta(seconds=i),
            events=1 + 2 * (i % 3),
            blobs=i % 2,
        )
        for i in range(500)
    ]
    decoys = [Spec(f"keep/{i}", events=3) for i in range(10)]  # outside the prefix
    decoys += [Spec(f"batch/late{i}", created=T0 + timedelta(days=1)) for i in range(10)]
    await create_all(provider, specs + decoys, as_client=False)
    matching = [s.instance_id for s in specs if s.status.is_terminal]
    kept = [s.instance_id for s in specs if not s.status.is_terminal]
    kept += [s.instance_id for s in decoys]
    assert len(matching) == 400
    plain = PlainView(azurite.connection_string, task_hub)
    before = plain.snapshot()
    assert set(before) == keys(matching) | keys(kept)

    query = InstanceQuery(
        instance_id_prefix="batch",
        created_time_from=T0,
        created_time_to=T0 + timedelta(hours=1),
    )
    with pytest.raises(ConfigurationError, match="Running"):
        await purge_instances(provider, InstanceQuery(runtime_status=(S.Running,)))

    # 1. Stopped by the time limit after its first page.
    reported: list[int] = []
    first = await purge_instances(
        provider, query, progress=reported.append, page_size=50, time_limit=0
    )
    assert (first.complete, first.deleted, reported) == (False, 50, [50])
    assert first.continuation is not None

    # 2. Resumed from the continuation, then stopped by a progress callback that raises.
    class Interrupted(Exception):
        pass

    def stop_after_two_pages(deleted: int) -> None:
        reported.append(deleted)
        if deleted >= 100:
            raise Interrupted

    with pytest.raises(Interrupted):
        await purge_instances(
            provider,
            query,
            progress=stop_after_two_pages,
            continuation=first.continuation,
            page_size=50,
            concurrency=16,
        )
    assert reported == [50, 50, 100]
    assert len(plain.instance_ids() & keys(matching)) == 400 - 150

    # 3. Run again from the start: only what is left is found, each instance once.
    rest = await purge_instances(provider, query, progress=reported.append, concurrency=16)
    assert rest.complete
    assert rest.continuation is None
    assert first.deleted + 100 + rest.deleted == 400
    assert reported[-1] == rest.deleted

    # Everything matching is gone - rows, history, blobs - and nothing else was touched.
    assert plain.instance_ids() == keys(kept)
    assert plain.snapshot() == {k: v for k, v in before.items() if k in keys(kept)}
    done = await purge_instances(provider, query)
    assert (done.deleted, done.complete) == (0, True)
