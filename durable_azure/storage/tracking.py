"""The History and Instances tables (DTFx ``Tracking/``).

History: one partition per instance, rows keyed by 16-digit hex position, plus the
``sentinel`` row whose ETag guards every write (reference §2.5): the first write inserts
it, later ones update it with If-Match, inside the same entity-group transaction as the
rows. A 409 or 412 there means another writer committed first: :class:`SessionAbortedError`.

Instances: one row per instance (RowKey ``""``), the queryable status.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from durable_azure.engine.history import (
    ExecutionStarted,
    HistoryEvent,
    OrchestrationStatus,
    type_of,
)
from durable_azure.errors import (
    AlreadyExistsError,
    ConditionFailedError,
    NotFoundError,
    SessionAbortedError,
    TransactionFailedError,
)
from durable_azure.storage.codec import as_datetime, event_to_row, row_to_event
from durable_azure.storage.largepayloads import LargePayloads
from durable_azure.storage.names import (
    INSTANCE_ROW_KEY,
    MAX_BATCH_PAYLOAD_BYTES,
    MAX_HISTORY_ROWS_PER_BATCH,
    SENTINEL_ROW_KEY,
    escape_key,
    history_row_key,
    utf16_size,
)
from durable_azure.storage.primitives import Entity, Table, TableOp, TableOpKind, UpdateMode

logger = logging.getLogger(__name__)

# DTFx's batch-size estimate: 1 KiB per entity plus the UTF-16 size of its strings.
_ENTITY_OVERHEAD_BYTES = 1024


@dataclass(frozen=True, slots=True)
class LoadedHistory:
    """The current execution's history as committed, and the ETag to write after it.

    ``etag`` is ``None`` when the instance has no sentinel yet (never checkpointed).
    """

    events: list[HistoryEvent]
    execution_id: str | None
    etag: str | None

    @property
    def started(self) -> ExecutionStarted | None:
        for event in self.events:
            if isinstance(event, ExecutionStarted):
                return event
        return None


EMPTY_HISTORY = LoadedHistory(events=[], execution_id=None, etag=None)


class HistoryStore:
    """Reads and appends history rows for the instances of one task hub."""

    def __init__(self, table: Table, payloads: LargePayloads) -> None:
        self.table = table
        self.payloads = payloads

    async def load(self, instance_id: str) -> LoadedHistory:
        """Load the current execution's events (one partition query, then any blobs).

        Rows left over from an older, longer execution (a restarted instance) are cut off
        at the first row whose ExecutionId differs from the sentinel's.
        """
        rows, _ = await self.table.query(partition_key=escape_key(instance_id))
        if not rows:
            return EMPTY_HISTORY
        sentinel = next((r for r in rows if r.row_key == SENTINEL_ROW_KEY), None)
        history_rows = [r for r in rows if r.row_key != SENTINEL_ROW_KEY]
        execution_id = (
            sentinel.get("ExecutionId")
            if sentinel is not None
            else (history_rows[0].get("ExecutionId") if history_rows else None)
        )
        events: list[HistoryEvent] = []
        for position, entity in enumerate(history_rows):
            if entity.row_key != history_row_key(position) or (
                entity.get("ExecutionId") != execution_id
            ):
                break
            row = await self.payloads.fetch_history_row(dict(entity.properties))
            events.append(row_to_event(row))
        return LoadedHistory(
            events=events,
            execution_id=execution_id,
            etag=sentinel.etag if sentinel is not None else None,
        )

    async def append(
        self,
        instance_id: str,
        *,
        execution_id: str,
        start_position: int,
        events: Sequence[HistoryEvent],
        etag: str | None,
        previous_length: int = 0,
    ) -> str:
        """Write ``events`` at ``start_position`` onwards; returns the new sentinel ETag.

        Each batch holds at most 99 rows plus the sentinel, so every batch is guarded.
        Rows are written with upsert-replace: a retried checkpoint overwrites the same
        RowKeys, and a new execution overwrites an old one's rows from position 0.
        Rows of a replaced execution beyond the new end (up to ``previous_length``) are
        deleted in the same guarded batches, so only the current execution stays.

        Raises:
            SessionAbortedError: the sentinel was inserted or changed by someone else.
        """
        pk = escape_key(instance_id)
        rows: list[dict[str, Any]] = []
        for offset, event in enumerate(events):
            row = event_to_row(
                event,
                partition_key=pk,
                row_key=history_row_key(start_position + offset),
                execution_id=execution_id,
            )
            await self.payloads.offload_history_row(row, event_type=type_of(event).name)
            rows.append(row)
        end = start_position + len(events)
        stale = [
            {"PartitionKey": pk, "RowKey": history_row_key(position)}
            for position in range(end, previous_length)
        ]
        batches = _split_batches(rows + stale)
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            sentinel: dict[str, Any] = {
                "PartitionKey": pk,
                "RowKey": SENTINEL_ROW_KEY,
                "ExecutionId": execution_id,
                "IsCheckpointComplete": last,
            }
            if last:
                sentinel["CheckpointCompletedTimestamp"] = datetime.now(UTC)
            sentinel_op = (
                TableOp(TableOpKind.INSERT, sentinel)
                if etag is None
                else TableOp(TableOpKind.UPDATE_MERGE, sentinel, etag=etag)
            )
            ops = [
                TableOp(TableOpKind.UPSERT_REPLACE, row)
                if "EventType" in row
                else TableOp(TableOpKind.DELETE, row, etag="*")
                for row in batch
            ]
            try:
                etags = await self.table.transaction([*ops, sentinel_op])
            except TransactionFailedError as exc:
                if isinstance(exc.cause, (ConditionFailedError, AlreadyExistsError)):
                    raise SessionAbortedError(
                        f"history of {instance_id!r} was changed by another writer "
                        f"({exc.cause.code or exc.cause.status}); abandoning this episode"
                    ) from exc
                raise
            etag = etags[-1]
        assert etag is not None
        return etag


def _split_batches(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    batches: list[list[dict[str, Any]]] = [[]]
    size = 0
    for row in rows:
        row_size = _ENTITY_OVERHEAD_BYTES + sum(
            utf16_size(v) for v in row.values() if isinstance(v, str)
        )
        current = batches[-1]
        if current and (
            len(current) >= MAX_HISTORY_ROWS_PER_BATCH or size + row_size > MAX_BATCH_PAYLOAD_BYTES
        ):
            batches.append([])
            size = 0
        batches[-1].append(row)
        size += row_size
    return batches


# --- instances ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """An Instances row, decoded (large Input/Output not yet fetched)."""

    instance_id: str
    name: str
    runtime_status: OrchestrationStatus
    execution_id: str | None
    input: str | None
    output: str | None
    custom_status: str | None
    created_time: datetime | None
    last_updated_time: datetime | None
    completed_time: datetime | None
    generation: int
    etag: str
    scheduled_start_time: datetime | None = None
    parent_instance_id: str | None = None

    @classmethod
    def from_entity(cls, instance_id: str, entity: Entity) -> InstanceRecord:
        status = entity.get("RuntimeStatus") or "Pending"
        custom = entity.get("CustomStatus")
        return cls(
            instance_id=instance_id,
            name=str(entity.get("Name") or ""),
            runtime_status=OrchestrationStatus[status],
            execution_id=entity.get("ExecutionId"),
            input=entity.get("Input"),
            output=entity.get("Output"),
            custom_status=None if custom in (None, "null") else custom,
            created_time=as_datetime(entity.get("CreatedTime")),
            last_updated_time=as_datetime(entity.get("LastUpdatedTime")),
            completed_time=as_datetime(entity.get("CompletedTime")),
            generation=int(entity.get("Generation") or 0),
            etag=entity.etag,
            scheduled_start_time=as_datetime(entity.get("ScheduledStartTime")),
            parent_instance_id=entity.get("ParentInstanceId") or None,
        )


class InstanceStore:
    """The Instances table of one task hub."""

    def __init__(self, table: Table, payloads: LargePayloads, hub: str) -> None:
        self.table = table
        self.payloads = payloads
        self.hub = hub

    async def get(self, instance_id: str) -> InstanceRecord | None:
        entity = await self.table.get(escape_key(instance_id), INSTANCE_ROW_KEY)
        return InstanceRecord.from_entity(instance_id, entity) if entity else None

    def _row(self, instance_id: str, values: dict[str, Any]) -> dict[str, Any]:
        row = {"PartitionKey": escape_key(instance_id), "RowKey": INSTANCE_ROW_KEY}
        row.update(values)
        row["TaskHubName"] = self.hub
        return row

    async def create(
        self, instance_id: str, values: dict[str, Any], *, replace_etag: str | None
    ) -> None:
        """Write a new instance's first row: insert, or replace the old row if ``replace_etag``.

        Raises:
            AlreadyExistsError: the row was inserted by someone else first.
            ConditionFailedError: the old row changed since it was read.
        """
        row = self._row(instance_id, values)
        await self.payloads.offload_instance_row(row)
        if replace_etag is None:
            await self.table.insert(row)
        else:
            await self.table.update(row, etag=replace_etag, mode=UpdateMode.REPLACE)

    async def merge_if_unchanged(
        self, instance_id: str, values: dict[str, Any], *, etag: str
    ) -> bool:
        """Merge ``values`` only if the row still has ``etag``; False if it changed."""
        row = self._row(instance_id, values)
        try:
            await self.table.update(row, etag=etag, mode=UpdateMode.MERGE)
        except (ConditionFailedError, NotFoundError):
            return False
        return True

    async def merge_existing(self, instance_id: str, values: dict[str, Any]) -> bool:
        """Merge ``values`` into the row if it exists; False (nothing written) if not.
        Costs the same one request as :meth:`merge`."""
        row = self._row(instance_id, values)
        await self.payloads.offload_instance_row(row)
        try:
            await self.table.update(row, etag="*", mode=UpdateMode.MERGE)
        except NotFoundError as exc:
            if exc.code in (None, "ResourceNotFound", ""):
                return False
            raise  # the table itself is missing: a storage error, not a missing row
        return True

    async def merge(self, instance_id: str, values: dict[str, Any]) -> None:
        """InsertOrMerge the given columns (the checkpoint's status update)."""
        row = self._row(instance_id, values)
        await self.payloads.offload_instance_row(row)
        await self.table.upsert(row, UpdateMode.MERGE)
