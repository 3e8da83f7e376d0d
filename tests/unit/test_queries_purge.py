"""Instance queries, counts and purges (``storage.queries``, ``storage.purge``) on the
in-memory account: the real provider code, exact expected sets, interruptions and resumes.

The Azurite counterparts are in ``tests/integration/test_queries_purge_azurite.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest

from durable_azure.engine.history import (
    ExecutionStarted,
    HistoryEvent,
    OrchestrationStatus,
    TaskScheduled,
)
from durable_azure.errors import ConfigurationError, InstanceStateError, StorageError
from durable_azure.storage.names import (
    MAX_INLINE_PROPERTY_BYTES,
    TaskHubNames,
    escape_key,
)
from durable_azure.storage.primitives import OpKind, UpdateMode
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.storage.purge import PurgeResult, purge_instance, purge_instances
from durable_azure.storage.queries import (
    InstanceQuery,
    count_instances,
    iterate_instances,
    key_prefix_range,
    query_instances,
)
from durable_azure.testing.memory import MemoryStorageAccount

S = OrchestrationStatus
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TERMINAL = (S.Completed, S.Failed, S.Terminated, S.Canceled)
NOT_TERMINAL = (S.Pending, S.Running, S.Suspended, S.ContinuedAsNew)

#: Ids that exercise every escape: / \ # ? ^, control characters (shifted by U+00C0),
#: characters next to the escape sequences in key order, and the far end of Unicode.
TRICKY_IDS = [
    "a",
    "ab",
    "a/",
    "a/b",
    "a/b/c",
    "a\\b",
    "a^",
    "a^0",
    "a^^",
    "a^b",
    "a#",
    "a#1",
    "a?x",
    "a\x01",
    "a\x01b",
    "a\x1f",
    "a\x7f",
    "a\x9fz",
    "a\u00c1",  # what "\x01" becomes after the ^ in a key
    "a_",
    "b",
    "b/a",
    "z",
    "a\ud7ff",
    "a\ue000",
    "a\uffff",
    "a\uffffb",
    "a\U00010000",
    "a\U0010ffff",
    "a\U0010ffffb",
]


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def account() -> MemoryStorageAccount:
    return MemoryStorageAccount()


@pytest.fixture
async def provider(account: MemoryStorageAccount) -> AzureStorageProvider:
    provider = AzureStorageProvider(account, TaskHubNames("QueryHub"))
    await provider.create_if_not_exists()
    return provider


async def seed(
    provider: AzureStorageProvider,
    instance_id: str,
    *,
    status: OrchestrationStatus = S.Completed,
    created: datetime = T0,
    name: str = "orch",
    events: int = 3,
    blobs: int = 1,
    large: bool = False,
) -> None:
    """An instance as the worker leaves it: Instances row, history rows + sentinel, blobs.

    ``large`` makes its input big enough to be offloaded from the Instances row and from
    a history row (two more blobs).
    """
    execution_id = uuid.uuid4().hex
    text = json.dumps("x" * MAX_INLINE_PROPERTY_BYTES) if large else '"in"'
    await provider.instances.create(
        instance_id,
        {
            "Name": name,
            "Version": "",
            "Input": text,
            "CustomStatus": "null",
            "RuntimeStatus": status.name,
            "ExecutionId": execution_id,
            "CreatedTime": created,
            "LastUpdatedTime": created,
            "Generation": 0,
        },
        replace_etag=None,
    )
    history: list[HistoryEvent] = [
        ExecutionStarted(
            timestamp=created,
            name=name,
            instance_id=instance_id,
            execution_id=execution_id,
            input=text,
        )
    ]
    history += [
        TaskScheduled(timestamp=created, event_id=i, name="act", input='"a"')
        for i in range(events - 1)
    ]
    await provider.history.append(
        instance_id, execution_id=execution_id, start_position=0, events=history, etag=None
    )
    for _ in range(blobs):
        await provider.payloads.store_message(
            '{"big": true}',
            instance_id=instance_id,
            activity_id=uuid.uuid4().hex,
            event_type="TaskCompleted",
        )


@dataclass(frozen=True)
class Footprint:
    """What storage holds for one instance (the row's ETag shows whether it was written)."""

    row_etag: str | None
    history_rows: int
    blobs: int

    @property
    def gone(self) -> bool:
        return self.row_etag is None and self.history_rows == 0 and self.blobs == 0


async def footprint(provider: AzureStorageProvider, instance_id: str) -> Footprint:
    key = escape_key(instance_id)
    row = await provider.instances.table.get(key, "")
    rows, _ = await provider.history.table.query(partition_key=key)
    blobs = await provider.payloads.container.list_names(key + "/")
    return Footprint(row.etag if row else None, len(rows), len(blobs))


async def footprints(provider: AzureStorageProvider, ids: Sequence[str]) -> dict[str, Footprint]:
    return {i: await footprint(provider, i) for i in ids}


async def all_pages(
    provider: AzureStorageProvider, query: InstanceQuery, page_size: int
) -> tuple[list[str], int]:
    """Every id the query returns, page by page, and the number of pages."""
    ids: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        records, token = await query_instances(
            provider, query, page_size=page_size, continuation=token
        )
        pages += 1
        assert len(records) <= page_size
        ids += [r.instance_id for r in records]
        if token is None:
            return ids, pages
        token = json.loads(json.dumps(token))  # tokens survive being stored as text


async def query_ids(provider: AzureStorageProvider, query: InstanceQuery) -> list[str]:
    return [r.instance_id async for r in iterate_instances(provider, query, page_size=7)]


def key_order(ids: Sequence[str]) -> list[str]:
    return sorted(ids, key=escape_key)


# --- InstanceQuery validation ------------------------------------------------------------


def test_query_rejects_naive_datetimes_and_inverted_ranges() -> None:
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        InstanceQuery(created_time_from=datetime(2024, 1, 1))
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        InstanceQuery(created_time_to=datetime(2024, 1, 1))
    with pytest.raises(ConfigurationError, match="is after created_time_to"):
        InstanceQuery(created_time_from=T0, created_time_to=T0 - timedelta(microseconds=1))
    InstanceQuery(created_time_from=T0, created_time_to=T0)  # a single instant is fine


def test_query_rejects_empty_prefix_and_name_and_unknown_statuses() -> None:
    with pytest.raises(ConfigurationError, match="instance_id_prefix must be a non-empty"):
        InstanceQuery(instance_id_prefix="")
    with pytest.raises(ConfigurationError, match="name must be a non-empty"):
        InstanceQuery(name="")
    with pytest.raises(ConfigurationError, match="not valid Unicode"):
        InstanceQuery(instance_id_prefix="a\ud800")
    with pytest.raises(ConfigurationError, match="unknown runtime status 'Done'"):
        InstanceQuery(runtime_status=("Done",))  # type: ignore[arg-type]
    assert issubclass(ConfigurationError, ValueError)


def test_query_normalizes_statuses_and_times() -> None:
    plus5 = timezone(timedelta(hours=5))
    query = InstanceQuery(
        runtime_status=["Running", S.Failed, S.Running],  # type: ignore[arg-type]
        created_time_from=T0.astimezone(plus5),
    )
    assert query.runtime_status == (S.Running, S.Failed)
    assert query.created_time_from == T0
    assert query.created_time_from is not None
    assert query.created_time_from.tzinfo is UTC


def test_prefix_range_increments_the_last_escaped_character() -> None:
    assert key_prefix_range(escape_key("abc")) == ("abc", "abd")
    # A prefix ending in an escaped character: the range covers the whole escape sequence.
    assert key_prefix_range(escape_key("a/")) == ("a^0", "a^1")
    assert key_prefix_range(escape_key("a^")) == ("a^^", "a^_")
    assert key_prefix_range(escape_key("a#")) == ("a^2", "a^3")
    assert key_prefix_range(escape_key("a\x01")) == ("a^\u00c1", "a^\u00c2")
    # No safe successor: drop the character and increment the one before.
    assert key_prefix_range("a\uffff") == ("a\uffff", "b")
    assert key_prefix_range("a\ud7ff") == ("a\ud7ff", "b")
    assert key_prefix_range("a\U0010ffff\U0010ffff") == ("a\U0010ffff\U0010ffff", "b")
    assert key_prefix_range("\uffff") == ("\uffff", None)
    assert key_prefix_range("a\U00010000") == ("a\U00010000", "a\U00010001")


# --- filters -----------------------------------------------------------------------------


async def test_status_filter_is_or_ed(provider: AzureStorageProvider) -> None:
    statuses = list(S)
    for i in range(24):
        await seed(provider, f"i{i:02d}", status=statuses[i % len(statuses)])
    for wanted in [(S.Running,), (S.Running, S.Failed), (S.Completed, S.Pending, S.Suspended)]:
        got = await query_ids(provider, InstanceQuery(runtime_status=wanted))
        expected = [f"i{i:02d}" for i in range(24) if statuses[i % len(statuses)] in wanted]
        assert got == expected
    assert len(await query_ids(provider, InstanceQuery())) == 24


async def test_created_time_range_is_inclusive_at_both_ends(
    provider: AzureStorageProvider,
) -> None:
    created = {f"t{i}": T0 + timedelta(minutes=i) for i in range(10)}
    created["t5+1us"] = T0 + timedelta(minutes=5, microseconds=1)
    for instance_id, when in created.items():
        await seed(provider, instance_id, created=when)

    async def between(start: datetime | None, end: datetime | None) -> set[str]:
        query = InstanceQuery(created_time_from=start, created_time_to=end)
        return set(await query_ids(provider, query))

    def expect(start: datetime | None, end: datetime | None) -> set[str]:
        return {
            i
            for i, when in created.items()
            if (start is None or when >= start) and (end is None or when <= end)
        }

    minute = timedelta(minutes=1)
    cases: list[tuple[datetime | None, datetime | None]] = [
        (T0 + 2 * minute, T0 + 5 * minute),
        (T0 + 5 * minute, T0 + 5 * minute),
        (T0 + 5 * minute, None),
        (None, T0),
        (None, T0 - timedelta(microseconds=1)),
        (T0 + 9 * minute + timedelta(microseconds=1), None),
        (None, None),
    ]
    for start, end in cases:
        assert await between(start, end) == expect(start, end), (start, end)
    assert await between(T0 + 5 * minute, T0 + 5 * minute) == {"t5"}
    # Aware datetimes in another zone mean the same instants.
    plus2 = timezone(timedelta(hours=2))
    assert await between((T0 + 2 * minute).astimezone(plus2), None) == expect(T0 + 2 * minute, None)


async def test_prefix_filter_matches_exactly_the_ids_with_that_prefix(
    provider: AzureStorageProvider,
) -> None:
    for instance_id in TRICKY_IDS:
        await seed(provider, instance_id, events=1, blobs=0)
    prefixes = {i[:k] for i in TRICKY_IDS for k in range(1, len(i) + 1)}
    prefixes |= {"c", "^", "/", "#", "\x01", "a\x02", "a/b/c/d", "a^1", "a\U0010fffe"}
    for prefix in sorted(prefixes):
        got = await query_ids(provider, InstanceQuery(instance_id_prefix=prefix))
        expected = key_order([i for i in TRICKY_IDS if i.startswith(prefix)])
        assert got == expected, f"prefix {prefix!r}"


async def test_prefix_ending_in_an_escape_does_not_match_lookalike_ids(
    provider: AzureStorageProvider,
) -> None:
    for instance_id in ["a/b", "a^0b", "a\\b", "a^1b", "a^", "a^^"]:
        await seed(provider, instance_id, events=1, blobs=0)
    assert await query_ids(provider, InstanceQuery(instance_id_prefix="a/")) == ["a/b"]
    assert await query_ids(provider, InstanceQuery(instance_id_prefix="a\\")) == ["a\\b"]
    assert await query_ids(provider, InstanceQuery(instance_id_prefix="a^0")) == ["a^0b"]
    assert await query_ids(provider, InstanceQuery(instance_id_prefix="a^^")) == ["a^^"]
    assert set(await query_ids(provider, InstanceQuery(instance_id_prefix="a^"))) == {
        "a^",
        "a^^",
        "a^0b",
        "a^1b",
    }


async def test_name_filter_is_exact(provider: AzureStorageProvider) -> None:
    for instance_id, name in [("1", "orch"), ("2", "orch2"), ("3", "Orch"), ("4", "orch")]:
        await seed(provider, instance_id, name=name)
    assert await query_ids(provider, InstanceQuery(name="orch")) == ["1", "4"]
    assert await query_ids(provider, InstanceQuery(name="Orch")) == ["3"]
    assert await query_ids(provider, InstanceQuery(name="orc")) == []


async def test_filters_combine_with_and(provider: AzureStorageProvider) -> None:
    expected = []
    for i in range(40):
        instance_id = f"{'job' if i % 2 else 'other'}/{i:02d}"
        status = S.Failed if i % 3 == 0 else S.Completed
        created = T0 + timedelta(hours=i)
        name = "n1" if i % 5 else "n2"
        await seed(provider, instance_id, status=status, created=created, name=name)
        if (
            instance_id.startswith("job/")
            and status is S.Failed
            and created >= T0 + timedelta(hours=5)
            and name == "n1"
        ):
            expected.append(instance_id)
    query = InstanceQuery(
        runtime_status=(S.Failed,),
        created_time_from=T0 + timedelta(hours=5),
        instance_id_prefix="job/",
        name="n1",
    )
    assert await query_ids(provider, query) == key_order(expected)
    assert len(expected) == 5


async def test_only_instance_rows_are_returned(provider: AzureStorageProvider) -> None:
    await seed(provider, "real")
    # A row with another RowKey in the Instances table (not written by us, but possible).
    await provider.instances.table.upsert(
        {"PartitionKey": "stray", "RowKey": "x", "RuntimeStatus": "Completed", "Name": "orch"},
        UpdateMode.REPLACE,
    )
    assert await query_ids(provider, InstanceQuery()) == ["real"]
    assert await count_instances(provider, InstanceQuery()) == {"Completed": 1}


async def test_records_are_decoded_and_input_can_be_left_out(
    provider: AzureStorageProvider,
) -> None:
    await seed(provider, "a/1", status=S.Failed, created=T0, name="orch")
    [record], token = await query_instances(provider, InstanceQuery())
    assert token is None
    assert (record.instance_id, record.name, record.runtime_status) == ("a/1", "orch", S.Failed)
    assert record.created_time == T0
    assert record.input == '"in"'
    [lean], _ = await query_instances(provider, InstanceQuery(), include_input=False)
    assert lean.input is None
    assert (lean.name, lean.runtime_status, lean.created_time) == ("orch", S.Failed, T0)


# --- paging ------------------------------------------------------------------------------


async def test_paging_returns_every_instance_once_for_any_page_size(
    provider: AzureStorageProvider,
) -> None:
    ids = [f"p/{i:03d}" if i % 4 else f"p#{i}" for i in range(250)]
    statuses = {i: (S.Completed if n % 3 else S.Running) for n, i in enumerate(ids)}
    await asyncio.gather(*(seed(provider, i, status=statuses[i], events=1, blobs=0) for i in ids))
    everything = InstanceQuery()
    completed = InstanceQuery(runtime_status=(S.Completed,))
    for page_size in (1, 7, 100):
        got, pages = await all_pages(provider, everything, page_size)
        assert got == key_order(ids)
        assert pages == -(-len(ids) // page_size)
        got, _ = await all_pages(provider, completed, page_size)
        assert got == key_order([i for i in ids if statuses[i] is S.Completed])
        assert len(got) == len(set(got))


async def test_page_size_is_checked(provider: AzureStorageProvider) -> None:
    for bad in (0, -1, 1001):
        with pytest.raises(ConfigurationError, match="page_size"):
            await query_instances(provider, InstanceQuery(), page_size=bad)
    with pytest.raises(ValueError, match="continuation"):
        await query_instances(provider, InstanceQuery(), continuation="not a token")


# --- counts ------------------------------------------------------------------------------


async def test_counts_per_status(provider: AzureStorageProvider) -> None:
    statuses = [S.Completed] * 5 + [S.Running] * 3 + [S.Failed] * 2 + [S.Pending]
    for n, status in enumerate(statuses):
        await seed(provider, f"{'x' if n % 2 else 'y'}{n}", status=status)
    assert await count_instances(provider, InstanceQuery()) == {
        "Running": 3,
        "Completed": 5,
        "Failed": 2,
        "Pending": 1,
    }
    assert list(await count_instances(provider, InstanceQuery())) == [
        "Running",
        "Completed",
        "Failed",
        "Pending",
    ]
    expected = Counter(s.name for n, s in enumerate(statuses) if n % 2)
    assert await count_instances(provider, InstanceQuery(instance_id_prefix="x")) == expected
    query = InstanceQuery(runtime_status=(S.Failed, S.Pending))
    assert await count_instances(provider, query) == {"Failed": 2, "Pending": 1}
    assert await count_instances(provider, InstanceQuery(name="nobody")) == {}


async def test_counts_page_through_large_tables(
    provider: AzureStorageProvider, account: MemoryStorageAccount
) -> None:
    for i in range(1500):
        await provider.instances.table.insert(
            {"PartitionKey": f"k{i:04d}", "RowKey": "", "RuntimeStatus": "Completed"}
        )
    account.stats.reset()
    assert await count_instances(provider, InstanceQuery()) == {"Completed": 1500}
    assert account.stats.snapshot() == {"table_query": 2}  # pages of 1000


# --- purging one instance ----------------------------------------------------------------


async def test_purge_instance_deletes_rows_blobs_and_the_instance_row(
    provider: AzureStorageProvider,
) -> None:
    target = "x/1#?"
    neighbours = ["x/1#?a", "x/1#", "x", "x/1#?/b", "x^0"]
    # 250 events: three delete transactions; large input: Instances and History blobs.
    await seed(provider, target, events=250, blobs=3, large=True)
    for n in neighbours:
        await seed(provider, n, events=2, blobs=1)
    before = await footprints(provider, neighbours)
    mine = await footprint(provider, target)
    assert (mine.history_rows, mine.blobs) == (251, 5)

    assert await purge_instance(provider, target) is True

    assert (await footprint(provider, target)).gone
    assert await footprints(provider, neighbours) == before
    assert await purge_instance(provider, target) is False
    assert await purge_instance(provider, "never-existed") is False


@pytest.mark.parametrize("status", NOT_TERMINAL)
async def test_purge_instance_refuses_unfinished_instances(
    provider: AzureStorageProvider, status: OrchestrationStatus
) -> None:
    await seed(provider, "busy", status=status)
    before = await footprint(provider, "busy")
    with pytest.raises(InstanceStateError, match=f"'busy' is {status.name}; terminate it"):
        await purge_instance(provider, "busy")
    assert await footprint(provider, "busy") == before


@pytest.mark.parametrize("status", TERMINAL)
async def test_purge_instance_accepts_every_terminal_status(
    provider: AzureStorageProvider, status: OrchestrationStatus
) -> None:
    await seed(provider, "done", status=status)
    assert await purge_instance(provider, "done") is True
    assert (await footprint(provider, "done")).gone


async def test_a_purge_that_crashed_before_the_row_can_be_repeated(
    provider: AzureStorageProvider, account: MemoryStorageAccount
) -> None:
    await seed(provider, "crash/1", events=120, blobs=2)
    account.fail_next(
        OpKind.TABLE_WRITE, StorageError("boom", status=500), name=provider.names.instances_table
    )
    with pytest.raises(StorageError, match="boom"):
        await purge_instance(provider, "crash/1")
    left = await footprint(provider, "crash/1")
    # History and blobs went first; the row is still there, so the instance is still found.
    assert (left.row_etag is not None, left.history_rows, left.blobs) == (True, 0, 0)
    assert await query_ids(provider, InstanceQuery(instance_id_prefix="crash/")) == ["crash/1"]
    assert await purge_instance(provider, "crash/1") is True
    assert (await footprint(provider, "crash/1")).gone


async def test_a_purge_that_failed_mid_history_keeps_the_row(
    provider: AzureStorageProvider, account: MemoryStorageAccount
) -> None:
    await seed(provider, "h", events=350, blobs=1)
    hook_calls = 0

    def fail_third_batch(kind: OpKind, name: str) -> None:
        nonlocal hook_calls
        if kind is OpKind.TABLE_BATCH:
            hook_calls += 1
            if hook_calls == 3:
                raise StorageError("batch failed", status=500)

    account.faults.append(fail_third_batch)
    with pytest.raises(StorageError, match="batch failed"):
        await purge_instance(provider, "h")
    account.faults.remove(fail_third_batch)
    left = await footprint(provider, "h")
    assert left.row_etag is not None
    assert 0 < left.history_rows < 351
    assert await purge_instance(provider, "h") is True
    assert (await footprint(provider, "h")).gone


async def test_concurrent_purges_of_one_instance_both_succeed(
    provider: AzureStorageProvider,
) -> None:
    await seed(provider, "twice", events=450, blobs=3)
    results = await asyncio.gather(
        purge_instance(provider, "twice"), purge_instance(provider, "twice")
    )
    assert True in results
    assert (await footprint(provider, "twice")).gone


async def test_purging_history_reads_the_partition_once_when_nothing_interferes(
    provider: AzureStorageProvider, account: MemoryStorageAccount
) -> None:
    await seed(provider, "lean", events=250, blobs=1)
    account.stats.reset()
    assert await purge_instance(provider, "lean") is True
    stats = account.stats.snapshot()
    assert (stats["table_query"], stats["table_batch"]) == (1, 3)


async def test_stray_history_and_blobs_without_a_row_are_purged(
    provider: AzureStorageProvider,
) -> None:
    await seed(provider, "orphan/1", events=5, blobs=2)
    await provider.instances.table.delete(escape_key("orphan/1"), "")
    assert await purge_instance(provider, "orphan/1") is True
    assert (await footprint(provider, "orphan/1")).gone
    # Only blobs left (e.g. a large start message whose row was never written).
    await provider.payloads.store_message("{}", instance_id="b", activity_id="1", event_type="E")
    assert await purge_instance(provider, "b") is True
    assert (await footprint(provider, "b")).gone


async def test_an_instance_restarted_during_its_purge_keeps_its_row(
    provider: AzureStorageProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(provider, "again")
    original = provider.payloads.delete_instance_blobs

    async def restart_then_delete(instance_id: str) -> int:
        await provider.instances.merge(instance_id, {"RuntimeStatus": "Running"})
        return await original(instance_id)

    monkeypatch.setattr(provider.payloads, "delete_instance_blobs", restart_then_delete)
    with pytest.raises(InstanceStateError, match="'again' is Running"):
        await purge_instance(provider, "again")
    record = await provider.instances.get("again")
    assert record is not None
    assert record.runtime_status is S.Running


# --- purging by filter -------------------------------------------------------------------


@dataclass
class Population:
    """Instances some of which match a purge query; the rest must stay untouched."""

    matching: list[str]
    others: list[str]
    before: dict[str, Footprint]


async def populate(provider: AzureStorageProvider, n: int) -> Population:
    """``n`` candidates under ``old/`` (some Running: not purgeable) plus decoys."""
    matching: list[str] = []
    others: list[str] = []
    jobs: list[Awaitable[None]] = []
    for i in range(n):
        instance_id = f"old/{i:04d}" if i % 7 else f"old#{i}"
        status = [S.Completed, S.Failed, S.Terminated, S.Canceled, S.Running][i % 5]
        jobs.append(seed(provider, instance_id, status=status, events=1 + i % 4, blobs=i % 3))
        (matching if status.is_terminal else others).append(instance_id)
    for i in range(n // 5):
        others.append(f"new/{i}")  # outside the prefix
        jobs.append(seed(provider, f"new/{i}", events=2, blobs=1))
        others.append(f"old/late{i}")  # inside the prefix, created too late
        jobs.append(seed(provider, f"old/late{i}", created=T0 + timedelta(days=2), events=2))
    await asyncio.gather(*jobs)
    return Population(matching, others, await footprints(provider, others))


PURGE_QUERY = InstanceQuery(
    instance_id_prefix="old", created_time_from=T0 - timedelta(days=1), created_time_to=T0
)


async def assert_purged(provider: AzureStorageProvider, population: Population) -> None:
    after = await footprints(provider, population.matching)
    assert [i for i, f in after.items() if not f.gone] == []
    assert await footprints(provider, population.others) == population.before


async def test_purge_instances_refuses_non_terminal_statuses(
    provider: AzureStorageProvider,
) -> None:
    for status in NOT_TERMINAL:
        query = InstanceQuery(runtime_status=(S.Completed, status))
        with pytest.raises(
            ConfigurationError, match=f"cannot purge instances that are {status.name}"
        ):
            await purge_instances(provider, query)
    with pytest.raises(ConfigurationError, match="concurrency"):
        await purge_instances(provider, InstanceQuery(), concurrency=0)


@pytest.mark.parametrize(("page_size", "concurrency"), [(100, 8), (7, 1), (1000, 50)])
async def test_purge_instances_purges_exactly_the_matching_terminal_instances(
    provider: AzureStorageProvider, page_size: int, concurrency: int
) -> None:
    population = await populate(provider, 120)
    seen: list[int] = []
    result = await purge_instances(
        provider, PURGE_QUERY, progress=seen.append, page_size=page_size, concurrency=concurrency
    )
    assert result == PurgeResult(deleted=len(population.matching), continuation=None, complete=True)
    assert seen == sorted(seen)
    assert seen[-1] == len(population.matching)
    await assert_purged(provider, population)
    again = await purge_instances(provider, PURGE_QUERY)
    assert again == PurgeResult(deleted=0, continuation=None, complete=True)


async def test_purge_instances_with_a_status_filter(provider: AzureStorageProvider) -> None:
    population = await populate(provider, 60)
    records = [await provider.instances.get(i) for i in population.matching]
    failed = [r.instance_id for r in records if r and r.runtime_status is S.Failed]
    result = await purge_instances(
        provider, InstanceQuery(runtime_status=(S.Failed,), instance_id_prefix="old")
    )
    assert result.deleted == len(failed) > 0
    for instance_id in population.matching:
        assert (await footprint(provider, instance_id)).gone == (instance_id in failed)


async def test_purge_interrupted_by_time_limit_resumes_from_its_continuation(
    provider: AzureStorageProvider,
) -> None:
    population = await populate(provider, 150)
    total = 0
    calls = 0
    continuation: str | None = None
    while True:
        # time_limit=0: each call purges exactly one page, then stops.
        result = await purge_instances(
            provider, PURGE_QUERY, continuation=continuation, page_size=10, time_limit=0
        )
        calls += 1
        total += result.deleted
        assert 0 <= result.deleted <= 10
        if result.complete:
            assert result.continuation is None
            break
        assert result.continuation is not None
        continuation = json.loads(json.dumps(result.continuation))
        # Between calls nothing is half done: every matching instance is whole or gone.
        states = await footprints(provider, population.matching)
        assert all(f.gone or f.row_etag is not None for f in states.values())
    assert total == len(population.matching)
    assert calls > 10
    await assert_purged(provider, population)


async def test_resuming_from_a_continuation_finishes_the_rest(
    provider: AzureStorageProvider,
) -> None:
    population = await populate(provider, 100)
    first = await purge_instances(provider, PURGE_QUERY, page_size=30, time_limit=0)
    assert (first.complete, first.deleted) == (False, 30)  # the filter left out Running
    second = await purge_instances(provider, PURGE_QUERY, continuation=first.continuation)
    assert second.complete
    assert first.deleted + second.deleted == len(population.matching)
    await assert_purged(provider, population)


async def test_purge_interrupted_by_a_failing_progress_callback_is_rerun(
    provider: AzureStorageProvider,
) -> None:
    population = await populate(provider, 100)
    reported: list[int] = []

    class Stop(Exception):
        pass

    def progress(deleted: int) -> None:
        reported.append(deleted)
        if len(reported) == 2:
            raise Stop

    with pytest.raises(Stop):
        await purge_instances(provider, PURGE_QUERY, progress=progress, page_size=20)
    assert 0 < reported[-1] < len(population.matching)
    # Purged instances are gone, so running the same purge again finds only the rest.
    rest = await purge_instances(provider, PURGE_QUERY)
    assert reported[-1] + rest.deleted == len(population.matching)
    await assert_purged(provider, population)


async def test_purge_cancelled_mid_page_is_rerun(
    provider: AzureStorageProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    population = await populate(provider, 100)
    original = provider.payloads.delete_instance_blobs
    started = 0
    task: asyncio.Task[PurgeResult] | None = None

    async def cancel_on_the_15th(instance_id: str) -> int:
        nonlocal started
        started += 1
        if started == 15:
            assert task is not None
            task.cancel()
        return await original(instance_id)

    monkeypatch.setattr(provider.payloads, "delete_instance_blobs", cancel_on_the_15th)
    task = asyncio.create_task(purge_instances(provider, PURGE_QUERY, page_size=10, concurrency=4))
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.undo()
    await asyncio.sleep(0.01)  # nothing keeps running after the cancellation
    states = await footprints(provider, population.matching)
    assert all(f.gone or f.row_etag is not None for f in states.values())
    purged = sum(f.gone for f in states.values())
    assert 0 < purged < len(population.matching)
    rest = await purge_instances(provider, PURGE_QUERY)
    assert purged + rest.deleted == len(population.matching)
    await assert_purged(provider, population)


async def test_a_storage_failure_mid_page_stops_the_purge_and_a_rerun_finishes(
    provider: AzureStorageProvider, account: MemoryStorageAccount
) -> None:
    population = await populate(provider, 80)
    account.fail_next(OpKind.BLOB_LIST, StorageError("list failed", status=503), times=1)
    with pytest.raises(StorageError, match="list failed"):
        await purge_instances(provider, PURGE_QUERY, page_size=25)
    ops = account.stats.total()
    await asyncio.sleep(0.01)
    assert account.stats.total() == ops  # the failed page's other purges were cancelled
    rest = await purge_instances(provider, PURGE_QUERY)
    assert rest.complete
    await assert_purged(provider, population)


async def test_instances_restarted_after_the_query_are_skipped(
    provider: AzureStorageProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(6):
        await seed(provider, f"r{i}")
    original = provider.payloads.delete_instance_blobs

    async def restart_r3(instance_id: str) -> int:
        if instance_id == "r3":
            await provider.instances.merge(instance_id, {"RuntimeStatus": "Pending"})
        return await original(instance_id)

    monkeypatch.setattr(provider.payloads, "delete_instance_blobs", restart_r3)
    result = await purge_instances(provider, InstanceQuery(instance_id_prefix="r"))
    assert result == PurgeResult(deleted=5, continuation=None, complete=True)
    assert await query_ids(provider, InstanceQuery(instance_id_prefix="r")) == ["r3"]
