"""Task hub administration: what a hub holds (:func:`hub_info`), create it, delete it.

Everything here works on exact resource names from :class:`TaskHubNames`, never on name
prefixes: hub ``Orders`` owns ``orders-control-00`` and ``OrdersInstances``, and nothing of
hub ``Orders2`` (``orders2-control-00``, ``Orders2Instances``) ever matches. Each function
returns a dataclass with ``to_json()`` (plain JSON types) and ``format()`` (readable text)
for the command line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from durable_azure.errors import NotFoundError
from durable_azure.storage.names import MAX_PARTITION_COUNT, TaskHubNames
from durable_azure.storage.primitives import BlobContainer, Queue, Table
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.storage.queries import InstanceQuery, count_instances

__all__ = [
    "HubInfo",
    "PartitionInfo",
    "QueueInfo",
    "all_control_queue_names",
    "container_exists",
    "create_hub",
    "delete_hub",
    "format_duration",
    "hub_info",
    "hub_resource_names",
    "iso_time",
    "poison_count",
    "queue_exists",
    "read_partitions",
    "read_queue",
    "table_exists",
]

#: Containers DTFx creates for a hub that we do not use, deleted with the hub:
#: the blob-lease container (partition managers V1/V2) and the app-lease container.
_DTFX_CONTAINER_SUFFIXES = ("-leases", "-applease")

#: A blob name no writer produces: downloading it tells a missing container (404
#: ``ContainerNotFound``) from an existing one (404 ``BlobNotFound``) without listing.
_PROBE_BLOB = "durable-azure-probe/does-not-exist"


# --- resource names and existence ----------------------------------------------------------


def all_control_queue_names(names: TaskHubNames) -> list[str]:
    """Every control queue name the hub could have: 16, whatever the configured count.

    A hub created with more partitions than the caller configured still has its extra
    queues (and maybe messages stranded in them); admin code looks at all of them.
    """
    return TaskHubNames(names.hub, MAX_PARTITION_COUNT).control_queues


def hub_resource_names(names: TaskHubNames) -> dict[str, list[str]]:
    """The exact names of every resource task hub ``names.hub`` may have, by kind.

    Queues: all 16 possible control queues and the work-item queue. Tables: History,
    Instances and Partitions. Containers: large messages, poison, and DTFx's lease and
    app-lease containers.
    """
    lower = names.hub.lower()
    return {
        "queues": [*all_control_queue_names(names), names.work_item_queue],
        "tables": [names.history_table, names.instances_table, names.partitions_table],
        "containers": [
            names.large_messages_container,
            names.poison_container,
            *(lower + suffix for suffix in _DTFX_CONTAINER_SUFFIXES),
        ],
    }


async def queue_exists(queue: Queue) -> bool:
    try:
        await queue.approximate_count()
    except NotFoundError:
        return False
    return True


async def table_exists(table: Table) -> bool:
    try:
        await table.query(page_size=1, select=("RowKey",))
    except NotFoundError:
        return False
    return True


async def container_exists(container: BlobContainer) -> bool:
    try:
        await container.download(_PROBE_BLOB)
    except NotFoundError as err:
        return err.code != "ContainerNotFound"
    return True


# --- hub_info ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueInfo:
    """One queue: its approximate depth and how long its oldest visible message has waited.

    ``oldest_age_seconds`` is measured from the message's insertion time; ``None`` when the
    queue is empty of visible messages (messages parked for a timer or being processed are
    invisible and counted only in ``approximate_count``) or does not exist.
    """

    name: str
    exists: bool
    approximate_count: int = 0
    oldest_inserted_on: datetime | None = None
    oldest_age_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "exists": self.exists,
            "approximate_count": self.approximate_count,
            "oldest_inserted_on": iso_time(self.oldest_inserted_on),
            "oldest_age_seconds": self.oldest_age_seconds,
        }


@dataclass(frozen=True)
class PartitionInfo:
    """One row of ``{hub}Partitions`` (DTFx's table partition manager, reference §6.1)."""

    queue: str
    current_owner: str | None
    next_owner: str | None
    owned_since: datetime | None
    last_renewal: datetime | None
    expires_at: datetime | None
    is_draining: bool

    def live(self, now: datetime) -> bool:
        """Owned, and the lease has not expired."""
        return bool(self.current_owner) and self.expires_at is not None and self.expires_at > now

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "current_owner": self.current_owner,
            "next_owner": self.next_owner,
            "owned_since": iso_time(self.owned_since),
            "last_renewal": iso_time(self.last_renewal),
            "expires_at": iso_time(self.expires_at),
            "is_draining": self.is_draining,
        }


@dataclass(frozen=True)
class HubInfo:
    """What :func:`hub_info` found in one task hub.

    Attributes:
        hub: the task hub name.
        partition_count: the configured number of control queues.
        checked_at: when the hub was read (UTC).
        queues: the configured control queues and the work-item queue, plus any control
            queue beyond the configured count that exists (left from another count).
        partitions: the Partitions table's rows, or ``None`` when there is no such table
            (durable-azure does not use one; DTFx does).
        instance_counts: instances per runtime status name; ``None`` when the Instances
            table does not exist (the hub was never created).
        poison_count: records in the poison container; ``None`` if it does not exist.
    """

    hub: str
    partition_count: int
    checked_at: datetime
    queues: list[QueueInfo]
    partitions: list[PartitionInfo] | None
    instance_counts: dict[str, int] | None
    poison_count: int | None

    @property
    def exists(self) -> bool:
        return self.instance_counts is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "hub": self.hub,
            "partition_count": self.partition_count,
            "checked_at": iso_time(self.checked_at),
            "exists": self.exists,
            "queues": [q.to_json() for q in self.queues],
            "partitions": (
                None if self.partitions is None else [p.to_json() for p in self.partitions]
            ),
            "instance_counts": self.instance_counts,
            "poison_count": self.poison_count,
        }

    def format(self) -> str:
        lines = [f"task hub {self.hub} ({self.partition_count} partitions)"]
        if not self.exists:
            lines.append("  the hub does not exist (no Instances table); create it first")
        lines.append("queues:")
        width = max((len(q.name) for q in self.queues), default=0)
        for q in self.queues:
            if not q.exists:
                lines.append(f"  {q.name:<{width}}  missing")
                continue
            oldest = (
                "no visible message"
                if q.oldest_age_seconds is None
                else f"oldest visible {format_duration(q.oldest_age_seconds)} old"
            )
            count = f"~{q.approximate_count} message{'' if q.approximate_count == 1 else 's'}"
            lines.append(f"  {q.name:<{width}}  {count}, {oldest}")
        lines.append("partitions:")
        if self.partitions is None:
            lines.append("  no partition table")
        elif not self.partitions:
            lines.append("  partition table is empty")
        for p in self.partitions or []:
            state = "live" if p.live(self.checked_at) else "NO LIVE OWNER"
            lines.append(
                f"  {p.queue}: owner {p.current_owner or '-'}, next owner "
                f"{p.next_owner or '-'}, expires {iso_time(p.expires_at) or '-'}"
                f"{', draining' if p.is_draining else ''} ({state})"
            )
        lines.append("instances:")
        if self.instance_counts is None:
            lines.append("  (no Instances table)")
        elif not self.instance_counts:
            lines.append("  none")
        else:
            lines.extend(f"  {status}: {n}" for status, n in self.instance_counts.items())
        poison = "no poison container" if self.poison_count is None else str(self.poison_count)
        lines.append(f"poison records: {poison}")
        return "\n".join(lines)


async def read_queue(queue: Queue, now: datetime) -> QueueInfo:
    """One queue's approximate depth and the age of its oldest visible message."""
    try:
        count = await queue.approximate_count()
        peeked = await queue.peek(1)
    except NotFoundError:
        return QueueInfo(queue.name, exists=False)
    if not peeked:
        return QueueInfo(queue.name, exists=True, approximate_count=count)
    inserted = peeked[0].inserted_on
    return QueueInfo(
        queue.name,
        exists=True,
        approximate_count=max(count, 1),
        oldest_inserted_on=inserted,
        oldest_age_seconds=max(0.0, (now - inserted).total_seconds()),
    )


async def read_partitions(provider: AzureStorageProvider) -> list[PartitionInfo] | None:
    """The rows of ``{hub}Partitions``, or ``None`` when the table does not exist."""
    table = provider.account.table(provider.names.partitions_table)
    try:
        rows, _ = await table.query()
    except NotFoundError:
        return None
    return [
        PartitionInfo(
            queue=row.row_key,
            current_owner=row.get("CurrentOwner") or None,
            next_owner=row.get("NextOwner") or None,
            owned_since=row.get("OwnedSince"),
            last_renewal=row.get("LastRenewal"),
            expires_at=row.get("ExpiresAt"),
            is_draining=bool(row.get("IsDraining")),
        )
        for row in rows
    ]


async def poison_count(provider: AzureStorageProvider) -> int | None:
    """How many records the poison container holds; ``None`` if it does not exist."""
    try:
        return len(await provider.poison.container.list_names())
    except NotFoundError:
        return None


async def hub_info(provider: AzureStorageProvider, *, now: datetime | None = None) -> HubInfo:
    """Read the state of the provider's task hub (nothing is changed).

    Queue depths are the service's approximate counts; a queue's oldest message is found
    by peeking one (visible) message and its age is measured from its insertion time.
    Control queues beyond the configured partition count are listed only if they exist.
    ``now`` defaults to the current time (UTC).
    """
    now = now or datetime.now(UTC)
    names = provider.names
    configured = [*names.control_queues, names.work_item_queue]
    extra = all_control_queue_names(names)[names.partition_count :]

    async def instance_counts() -> dict[str, int] | None:
        try:
            return await count_instances(provider, InstanceQuery())
        except NotFoundError:
            return None

    queue_infos, extra_infos, partitions, counts, poison = await asyncio.gather(
        asyncio.gather(*(read_queue(provider.account.queue(n), now) for n in configured)),
        asyncio.gather(*(read_queue(provider.account.queue(n), now) for n in extra)),
        read_partitions(provider),
        instance_counts(),
        poison_count(provider),
    )
    return HubInfo(
        hub=names.hub,
        partition_count=names.partition_count,
        checked_at=now,
        queues=[*queue_infos, *(q for q in extra_infos if q.exists)],
        partitions=partitions,
        instance_counts=counts,
        poison_count=poison,
    )


# --- create / delete -----------------------------------------------------------------------


@dataclass(frozen=True)
class HubResources:
    """Names of queues, tables and containers (created, or deleted)."""

    queues: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        return [*self.queues, *self.tables, *self.containers]


async def create_hub(provider: AzureStorageProvider) -> list[str]:
    """Create every queue, table and container of the hub (idempotent).

    Returns the names of the hub's resources (all of them now exist). The Partitions
    table is not created: durable-azure does not use one.
    """
    await provider.create_if_not_exists()
    names = provider.names
    return [
        *names.control_queues,
        names.work_item_queue,
        names.history_table,
        names.instances_table,
        names.large_messages_container,
        names.poison_container,
    ]


async def delete_hub(
    provider: AzureStorageProvider, *, progress: Callable[[int, int], None] | None = None
) -> list[str]:
    """Delete every queue, table and container of this task hub, and nothing else.

    The resources are addressed by their exact names (:func:`hub_resource_names`): all
    16 possible control queues and the work-item queue, the History, Instances and
    Partitions tables, and the large-message, poison, lease and app-lease containers.
    Another hub is never touched, even one whose name starts with this one's. Queues go
    first, so running workers find no more work before the tables disappear. Irreversible.
    ``progress(done, total)`` is called after each resource's delete request.

    Returns:
        The names of the resources that existed and were deleted (queues, then tables,
        then containers); empty if the hub did not exist.
    """
    account = provider.account
    wanted = hub_resource_names(provider.names)
    queues = [account.queue(n) for n in wanted["queues"]]
    tables = [account.table(n) for n in wanted["tables"]]
    containers = [account.container(n) for n in wanted["containers"]]
    queue_found, table_found, container_found = await asyncio.gather(
        asyncio.gather(*(queue_exists(q) for q in queues)),
        asyncio.gather(*(table_exists(t) for t in tables)),
        asyncio.gather(*(container_exists(c) for c in containers)),
    )
    deleted = HubResources(
        queues=[q.name for q, found in zip(queues, queue_found, strict=True) if found],
        tables=[t.name for t, found in zip(tables, table_found, strict=True) if found],
        containers=[c.name for c, found in zip(containers, container_found, strict=True) if found],
    )
    # Delete even what looked missing: a resource created meanwhile goes too (each
    # delete succeeds when there is nothing to delete).
    total = len(queues) + len(tables) + len(containers)
    done = 0

    async def counted(delete: Awaitable[None]) -> None:
        nonlocal done
        await delete
        done += 1
        if progress is not None:
            progress(done, total)

    await asyncio.gather(*(counted(q.delete_queue()) for q in queues))
    await asyncio.gather(*(counted(t.delete_table()) for t in tables))
    await asyncio.gather(*(counted(c.delete_container()) for c in containers))
    return deleted.names()


# --- formatting helpers --------------------------------------------------------------------


def iso_time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def format_duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.5 h``, ``2.0 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
