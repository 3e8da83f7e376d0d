"""Purging instances: their history rows, their blobs and their Instances row (reference §8.8).

One instance (:func:`purge_instance`) is purged in this order:

1. read the Instances row and refuse if the instance is Pending, Running, Suspended or
   ContinuedAsNew (it would keep writing history we are deleting);
2. delete its History partition (keys only are read; deletes go in transactions of up to
   100 with ETag ``*``) and its blobs (every name under ``escape_key(id) + "/"`` in the
   large-messages container);
3. delete the Instances row LAST, with the ETag read in step 1.

A crash (or cancellation) anywhere leaves the Instances row in place as long as anything
else is left, so the instance still shows up in queries and purging it again finishes the
job; a purge that finds no row still deletes stray history rows and blobs.

Many instances (:func:`purge_instances`) are purged a page of the query at a time. See
:class:`PurgeResult` for how an interrupted purge is resumed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from durable_azure.engine.history import OrchestrationStatus
from durable_azure.errors import (
    ConditionFailedError,
    ConfigurationError,
    DurableAzureError,
    InstanceStateError,
    NotFoundError,
    TransactionFailedError,
)
from durable_azure.storage.names import INSTANCE_ROW_KEY, escape_key, unescape_key
from durable_azure.storage.primitives import MAX_TRANSACTION_OPS, TableOp, TableOpKind
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.storage.queries import InstanceQuery, query_page

__all__ = ["TERMINAL_STATUSES", "PurgeResult", "purge_instance", "purge_instances"]

T = TypeVar("T")

#: The statuses an instance may be purged in (the instance will not run again).
TERMINAL_STATUSES = (
    OrchestrationStatus.Completed,
    OrchestrationStatus.Failed,
    OrchestrationStatus.Terminated,
    OrchestrationStatus.Canceled,
)

#: History rows read (and then deleted) per round.
_HISTORY_PAGE_SIZE = 1000

#: Transactions of one round sent at once (they touch disjoint rows of one partition).
_HISTORY_BATCHES_AT_ONCE = 4

#: Rounds of "read keys, delete them" before giving up on a partition that keeps refilling.
_MAX_HISTORY_ROUNDS = 1000

#: Attempts to delete an Instances row whose ETag changed since it was read.
_MAX_ROW_ATTEMPTS = 3


def _refusal(instance_id: str, status: OrchestrationStatus) -> InstanceStateError:
    return InstanceStateError(
        instance_id,
        status.name,
        f"instance {instance_id!r} is {status.name}; terminate it (or wait for it to "
        "finish) before purging - only Completed, Failed, Terminated or Canceled instances "
        "can be purged",
    )


async def purge_instance(provider: AzureStorageProvider, instance_id: str) -> bool:
    """Delete everything stored for one instance: history rows, blobs, Instances row.

    Returns:
        ``True`` if anything was deleted, ``False`` if there was nothing for this id.

    Raises:
        InstanceStateError: the instance is Pending, Running, Suspended or ContinuedAsNew
            (nothing is deleted), or it was restarted while being purged.
        NotFoundError: the task hub does not exist.
    """
    record = await provider.instances.get(instance_id)
    etag: str | None = None
    if record is not None:
        if not record.runtime_status.is_terminal:
            raise _refusal(instance_id, record.runtime_status)
        etag = record.etag
    return await _purge(provider, instance_id, etag)


async def _purge(provider: AzureStorageProvider, instance_id: str, row_etag: str | None) -> bool:
    """Purge an instance whose row (if ``row_etag``) was read as terminal with that ETag.

    Raises:
        InstanceStateError: the row changed to a non-terminal status meanwhile (restarted).
    """
    rows, blobs = await _delete_data(provider, instance_id)
    # The Instances row goes LAST: until here a crash leaves the row, so the instance is
    # still found by queries and a repeated purge (single or by filter) finishes the job.
    if row_etag is not None:
        restarted = await _delete_row(provider, instance_id, row_etag)
        if restarted is not None:
            raise _refusal(instance_id, restarted)
    return row_etag is not None or rows > 0 or blobs > 0


async def _delete_data(provider: AzureStorageProvider, instance_id: str) -> tuple[int, int]:
    """Delete the History partition and the blobs of an instance; returns both counts."""
    rows, blobs = await _all(
        [_delete_history(provider, instance_id), _delete_blobs(provider, instance_id)]
    )
    return rows, blobs


async def _delete_blobs(provider: AzureStorageProvider, instance_id: str) -> int:
    return await provider.payloads.delete_instance_blobs(instance_id)


async def _all(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``coros`` concurrently; the results in order.

    Unlike ``asyncio.gather``, a failure cancels the others and waits for them before it
    propagates, so nothing keeps deleting after the call has returned (or been cancelled).
    """
    if not coros:
        return []
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # no effect on finished ones
        await asyncio.wait(tasks)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    return [task.result() for task in tasks]


async def _delete_row(
    provider: AzureStorageProvider, instance_id: str, etag: str
) -> OrchestrationStatus | None:
    """Delete the Instances row if it is unchanged or still terminal.

    Returns:
        ``None`` when the row is gone, else the non-terminal status it changed to (the
        instance was started again after it was read) - the row is then kept.
    """
    table = provider.instances.table
    for _ in range(_MAX_ROW_ATTEMPTS):
        try:
            await table.delete(escape_key(instance_id), INSTANCE_ROW_KEY, etag=etag)
            return None
        except ConditionFailedError:
            # The row changed after it was read: fine if it is still terminal (e.g. a late
            # merge of the same status), not if the instance was started again.
            record = await provider.instances.get(instance_id)
            if record is None:
                return None
            if not record.runtime_status.is_terminal:
                return record.runtime_status
            etag = record.etag
    raise DurableAzureError(
        f"the Instances row of {instance_id!r} kept changing while it was being purged; "
        "purge it again"
    )


async def _delete_history(provider: AzureStorageProvider, instance_id: str) -> int:
    """Delete every row of the instance's History partition; returns how many were deleted.

    Each round reads up to 1000 keys from the start of the partition and deletes them, so a
    round never depends on a continuation into rows that are being deleted. Rounds repeat
    until a round saw the end of the partition and deleted all it saw.
    """
    table = provider.history.table
    pk = escape_key(instance_id)
    gate = asyncio.Semaphore(_HISTORY_BATCHES_AT_ONCE)

    async def delete_batch(row_keys: list[str]) -> int:
        ops = [
            TableOp(TableOpKind.DELETE, {"PartitionKey": pk, "RowKey": rk}, etag="*")
            for rk in row_keys
        ]
        async with gate:
            try:
                await table.transaction(ops)
            except TransactionFailedError as exc:
                if isinstance(exc.cause, NotFoundError):
                    return 0  # a concurrent purge deleted a row first; the next round re-reads
                raise
        return len(row_keys)

    deleted = 0
    for _ in range(_MAX_HISTORY_ROUNDS):
        entities, token = await table.query(
            partition_key=pk, select=("RowKey",), page_size=_HISTORY_PAGE_SIZE
        )
        keys = [e.row_key for e in entities]
        batches = [
            keys[i : i + MAX_TRANSACTION_OPS] for i in range(0, len(keys), MAX_TRANSACTION_OPS)
        ]
        counts = await _all([delete_batch(b) for b in batches])
        deleted += sum(counts)
        if token is None and all(counts):
            return deleted  # that was the whole partition, and every batch went through
    raise DurableAzureError(
        f"the history of {instance_id!r} kept growing while it was being purged; "
        "is the instance running again?"
    )


@dataclass
class PurgeResult:
    """What :func:`purge_instances` did.

    Attributes:
        deleted: instances purged by this call.
        continuation: where to resume when ``complete`` is ``False`` (pass it back as
            ``continuation=``); ``None`` when complete.
        complete: ``True`` when every matching instance has been purged.
    """

    deleted: int
    continuation: str | None
    complete: bool


def _terminal_only(query: InstanceQuery) -> InstanceQuery:
    if not query.runtime_status:
        return InstanceQuery(
            runtime_status=TERMINAL_STATUSES,
            created_time_from=query.created_time_from,
            created_time_to=query.created_time_to,
            instance_id_prefix=query.instance_id_prefix,
            name=query.name,
        )
    running = [s.name for s in query.runtime_status if not s.is_terminal]
    if running:
        raise ConfigurationError(
            f"cannot purge instances that are {', '.join(running)}: only Completed, Failed, "
            "Terminated or Canceled instances can be purged (terminate them first)"
        )
    return query


async def purge_instances(
    provider: AzureStorageProvider,
    query: InstanceQuery,
    *,
    progress: Callable[[int], None] | None = None,
    continuation: str | None = None,
    page_size: int = 100,
    concurrency: int = 8,
    time_limit: float | None = None,
) -> PurgeResult:
    """Purge every terminal instance matching ``query``, a page at a time.

    Only Completed, Failed, Terminated and Canceled instances are purged: a query without
    ``runtime_status`` means those four. Each page's instances are purged ``concurrency``
    at a time, as :func:`purge_instance` does; an instance restarted between the query and
    its purge is skipped (and not counted).

    Stopping and resuming: after each page ``progress(deleted_so_far)`` is called, then, if
    ``time_limit`` seconds have passed since the call began and more pages remain, the
    purge stops with ``complete=False`` and a ``continuation``. At least one page is always
    purged, so a loop of time-limited calls finishes. The continuation is the table's own
    token, the key position of the next row to read: every matching instance before it has
    been purged, so resuming from it purges each remaining one exactly once and re-reads
    nothing already done. It is only a position: any query may be resumed from it.

    If the purge is cancelled, or ``progress`` raises, the exception propagates and no
    continuation is returned. That is still safe: every instance is either fully purged,
    untouched, or partly purged with its Instances row left, so running the same purge
    again from the start (``continuation=None``) purges exactly what is left - purged
    instances no longer exist to be found.

    Args:
        provider: the task hub.
        query: which instances.
        progress: called with the number of instances purged so far, after each page.
        continuation: resume where a previous call with ``complete=False`` stopped.
        page_size: instances read per page (1..1000).
        concurrency: instances purged at the same time (at least 1).
        time_limit: stop after the first page that ends this many seconds after the start.

    Raises:
        ConfigurationError: the query names a non-terminal status, or a bad
            ``page_size``/``concurrency``/``time_limit``.
        ValueError: ``continuation`` is not a token from this function.
        NotFoundError: the task hub does not exist.
    """
    query = _terminal_only(query)
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
    if time_limit is not None and time_limit < 0:
        raise ConfigurationError(f"time_limit must not be negative, got {time_limit}")
    deadline = None if time_limit is None else time.monotonic() + time_limit
    gate = asyncio.Semaphore(concurrency)
    deleted = 0

    async def purge_one(instance_id: str, status: OrchestrationStatus, etag: str) -> bool:
        if not status.is_terminal:  # the filter excludes these; never purge one anyway
            return False
        async with gate:
            await _delete_data(provider, instance_id)
            # Row last, as in purge_instance. A row that turned non-terminal (restarted
            # since the query read it) is kept and not counted.
            return await _delete_row(provider, instance_id, etag) is None

    while True:
        entities, continuation = await query_page(
            provider,
            query,
            select=("RuntimeStatus",),
            page_size=page_size,
            continuation=continuation,
        )
        done = await _all(
            [
                purge_one(
                    unescape_key(e.partition_key),
                    OrchestrationStatus[str(e.get("RuntimeStatus") or "Pending")],
                    e.etag,
                )
                for e in entities
            ]
        )
        deleted += sum(done)
        if progress is not None:
            progress(deleted)
        if continuation is None:
            return PurgeResult(deleted=deleted, continuation=None, complete=True)
        if deadline is not None and time.monotonic() >= deadline:
            return PurgeResult(deleted=deleted, continuation=continuation, complete=False)
