"""A fresh task hub with its worker processes and a client, and the measuring helpers the
scenarios share (waiting for instances, latencies, storage operation counts)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.workers import (
    BenchError,
    WorkerCounters,
    WorkerProcess,
    running_workers,
    worker_options,
)
from durable_azure import DurableClient, OrchestrationStatus
from durable_azure.cli_output import Progress
from durable_azure.settings import StorageSettings
from durable_azure.storage.names import DEFAULT_PARTITION_COUNT
from durable_azure.storage.partitions import PartitionLease
from durable_azure.storage.primitives import AnyOf, Cmp, Entity, Op
from durable_azure.storage.tracking import InstanceRecord
from durable_azure.testing.hub_cleanup import delete_hub_resources

#: Seconds the workers may take to share the partitions evenly before a scenario starts.
BALANCE_TIMEOUT = 180.0
#: After the last instance finished, the workers' counters are read this much later, so
#: the deletes of the last messages (after the Instances row is written) are counted.
SETTLE_SECONDS = 0.5
#: Seconds between progress lines while waiting for many instances.
PROGRESS_EVERY = 15.0

_TERMINAL = AnyOf(
    tuple(Cmp("RuntimeStatus", Op.EQ, s.name) for s in OrchestrationStatus if s.is_terminal)
)


@dataclass
class BenchHub:
    """A task hub of its own, the worker processes running it, and a client."""

    name: str
    client: DurableClient
    workers: list[WorkerProcess]

    async def reset_counters(self) -> None:
        """Zero the workers' counters and the client's."""
        await asyncio.gather(*(w.reset_counters() for w in self.workers))
        self.client.provider.account.stats.reset()

    async def read_counters(self) -> WorkerCounters:
        """The workers' counters summed: non-admin storage ops by kind, CPU seconds."""
        counters = await asyncio.gather(*(w.read_counters() for w in self.workers))
        return WorkerCounters(
            ops=dict(sum((Counter(non_admin(c.ops)) for c in counters), Counter())),
            cpu_s=sum(c.cpu_s for c in counters),
        )

    def client_ops(self) -> dict[str, int]:
        """The client's non-admin storage ops since the last reset."""
        return non_admin(self.client.provider.account.stats.snapshot())


@contextlib.asynccontextmanager
async def bench_hub(
    connection: str,
    *,
    workers: int = 1,
    partitions: int = DEFAULT_PARTITION_COUNT,
    lease_seconds: float | None = None,
    max_poll_interval: float | None = None,
) -> AsyncIterator[BenchHub]:
    """A fresh task hub ``bench<hex>`` run by ``workers`` processes that share its
    ``partitions`` evenly (partition leases of ``lease_seconds`` and idle polls at most
    ``max_poll_interval`` apart; None: the engine's defaults); everything is stopped and
    the hub deleted on exit."""
    name = "bench" + uuid.uuid4().hex[:12]
    settings = StorageSettings.resolve(
        connection_string=connection, task_hub=name, partition_count=partitions
    )
    try:
        async with DurableClient.from_settings(settings) as client:
            await client.provider.create_if_not_exists()
            options = worker_options(partitions, lease_seconds, max_poll_interval)
            async with running_workers(connection, name, workers, options) as processes:
                hub = BenchHub(name, client, processes)
                await wait_until_balanced(hub, partitions)
                yield hub
    finally:
        await asyncio.to_thread(delete_hub_resources, connection, name)


async def partition_owners(hub: BenchHub) -> list[str | None]:
    """The live owner (worker id) of each row of the hub's partitions table."""
    table = hub.client.provider.account.table(hub.client.provider.names.partitions_table)
    rows, _ = await table.query(partition_key="")
    now = datetime.now(UTC)
    leases = [PartitionLease.from_entity(row) for row in rows]
    return [None if lease.expired(now) else lease.current_owner for lease in leases]


async def wait_until_balanced(hub: BenchHub, partitions: int) -> None:
    """Wait until every partition has a live owner among the hub's workers, each owning
    ``partitions / workers`` of them (rounded down or up)."""
    ids = {w.worker_id for w in hub.workers}
    low, high = partitions // len(ids), math.ceil(partitions / len(ids))
    deadline = time.monotonic() + BALANCE_TIMEOUT
    while True:
        owners = await partition_owners(hub)
        counts = Counter(owners)
        if (
            len(owners) == partitions
            and set(counts) == ids
            and all(low <= n <= high for n in counts.values())
        ):
            return
        if time.monotonic() > deadline:
            raise BenchError(
                f"the {len(ids)} workers did not share the {partitions} partitions evenly "
                f"within {BALANCE_TIMEOUT:.0f} s (owners: {dict(counts)})"
            )
        await asyncio.sleep(0.25)


# --- waiting for instances -----------------------------------------------------------------


def is_terminal(status: OrchestrationStatus) -> bool:
    return status.is_terminal


async def wait_for_instance(
    client: DurableClient,
    instance_id: str,
    *,
    poll: float,
    until: Callable[[OrchestrationStatus], bool] = is_terminal,
) -> InstanceRecord:
    """Read the instance's row every ``poll`` seconds until its status satisfies ``until``."""
    while True:
        record = await client.provider.read_instance(instance_id)
        if record is not None and until(record.runtime_status):
            return record
        await asyncio.sleep(poll)


def require_completed(record: InstanceRecord) -> InstanceRecord:
    if record.runtime_status is not OrchestrationStatus.Completed:
        detail = (record.output or "")[:500]
        raise BenchError(f"instance {record.instance_id} is {record.runtime_status.name}: {detail}")
    return record


async def run_one(
    client: DurableClient, orchestrator: str, instance_id: str, data: Any, *, poll: float
) -> InstanceRecord:
    """Start one instance and wait (polling its row) until it has completed."""
    await client.start_new(orchestrator, instance_id, data)
    return require_completed(await wait_for_instance(client, instance_id, poll=poll))


async def wait_for_all(client: DurableClient, count: int, *, what: str) -> list[Entity]:
    """Wait until ``count`` instances of the hub have finished; their rows, all Completed."""
    table = client.provider.instances.table
    # A bar redrawn in place on a terminal; elsewhere a line every PROGRESS_EVERY s.
    progress = Progress(f"  {what}", total=count, unit="finished", interval=PROGRESS_EVERY)
    while True:
        done, _ = await table.query(where=[_TERMINAL], select=["RuntimeStatus"])
        progress.update(len(done))
        if len(done) >= count:
            break
        await asyncio.sleep(0.5)
    progress.close()
    rows, _ = await table.query(
        select=["PartitionKey", "RuntimeStatus", "CreatedTime", "CompletedTime", "Output"]
    )
    failed = [r for r in rows if r.get("RuntimeStatus") != OrchestrationStatus.Completed.name]
    if failed:
        first = failed[0]
        raise BenchError(
            f"{len(failed)}/{len(rows)} instances did not complete; e.g. {first.partition_key} "
            f"is {first.get('RuntimeStatus')}: {str(first.get('Output') or '')[:500]}"
        )
    return rows


# --- figures ---------------------------------------------------------------------------------


def entity_time(row: Entity, column: str) -> datetime:
    value = row.get(column)
    if not isinstance(value, datetime):
        raise BenchError(f"instance {row.partition_key} has no {column}")
    return value


def record_times(record: InstanceRecord) -> tuple[datetime, datetime]:
    """CreatedTime and CompletedTime of a finished instance."""
    if record.created_time is None or record.completed_time is None:
        raise BenchError(f"instance {record.instance_id} has no CreatedTime or CompletedTime")
    return record.created_time, record.completed_time


def millis(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() * 1000


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile."""
    ordered = sorted(values)
    if not ordered:
        raise BenchError("no values to take a percentile of")
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def latency_figures(latencies_ms: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(latencies_ms, 50), 1),
        "p99": round(percentile(latencies_ms, 99), 1),
    }


def non_admin(ops: dict[str, int]) -> dict[str, int]:
    return {kind: n for kind, n in ops.items() if not kind.endswith("_admin") and n}


#: The order (and grouping) in which storage operation kinds are reported; the blob kinds
#: are reported together as ``blob``.
OP_KINDS = (
    "queue_send",
    "queue_receive",
    "queue_delete",
    "queue_update",
    "queue_peek",
    "table_read",
    "table_write",
    "table_batch",
    "table_query",
)


def ops_per_orchestration(ops: dict[str, int], orchestrations: int) -> dict[str, float]:
    """``total`` and each kind that occurred, per orchestration (blob kinds as ``blob``)."""
    grouped = Counter({k: n for k, n in ops.items() if not k.startswith("blob_")})
    grouped["blob"] = sum(n for k, n in ops.items() if k.startswith("blob_"))
    order = [*OP_KINDS, *sorted(set(grouped) - {*OP_KINDS, "blob"}), "blob"]
    figures = {"total": round(sum(grouped.values()) / orchestrations, 2)}
    figures.update({k: round(grouped[k] / orchestrations, 2) for k in order if grouped[k]})
    return figures
