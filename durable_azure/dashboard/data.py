"""What the dashboard reads from the task hub, beyond what :class:`DurableClient` offers.

* :class:`InstanceFilter`: the list's filters, including a last-updated time range (which
  :class:`~durable_azure.storage.queries.InstanceQuery` does not have); every filter is
  applied by the table service.
* :func:`list_page`, :func:`count_by_status`, :func:`matching_ids`: pages, counts per
  status and every matching id (for batch actions), through
  :mod:`durable_azure.storage.queries` with a :class:`FilterQuery`.
* :func:`read_history`: the current execution's history *without* fetching offloaded
  payloads (a history row whose ``Input``/``Result`` went to a blob keeps only the blob
  name), so a 10,000-event history is one partition query; :func:`history_value` and
  :func:`instance_value` fetch one full value on demand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from durable_azure.engine.history import (
    ExecutionStarted,
    HistoryEvent,
    OrchestrationStatus,
    SubOrchestrationInstanceCreated,
)
from durable_azure.errors import ConfigurationError, InstanceNotFoundError
from durable_azure.storage.codec import row_to_event
from durable_azure.storage.names import SENTINEL_ROW_KEY, escape_key, history_row_key
from durable_azure.storage.primitives import Clause, Cmp, Op
from durable_azure.storage.provider import AzureStorageProvider
from durable_azure.storage.queries import (
    MAX_PAGE_SIZE,
    InstanceQuery,
    count_instances,
    iterate_instances,
    parse_statuses,
    query_instances,
)
from durable_azure.storage.tracking import InstanceRecord

__all__ = [
    "FilterQuery",
    "HistoryItem",
    "InstanceFilter",
    "children_of",
    "count_by_status",
    "history_value",
    "instance_value",
    "list_page",
    "matching_ids",
    "parent_of",
    "read_history",
]

#: How many service pages :func:`list_page` reads at most to fill one dashboard page (a
#: prefix filter can make service pages short).
_MAX_FETCHES_PER_PAGE = 20

#: Instance columns whose value can be shown in full on demand.
INSTANCE_VALUE_COLUMNS = ("Input", "Output", "CustomStatus")


@dataclass(frozen=True)
class FilterQuery(InstanceQuery):
    """An :class:`InstanceQuery` with a last-updated time range too (both ends inclusive),
    so the paging, counting and iterating of :mod:`durable_azure.storage.queries` apply."""

    updated_from: datetime | None = None
    updated_to: datetime | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for label in ("updated_from", "updated_to"):
            value = getattr(self, label)
            if value is not None and value.tzinfo is None:
                raise ConfigurationError(f"{label} must be timezone-aware")
        if self.updated_from and self.updated_to and self.updated_from > self.updated_to:
            raise ConfigurationError("the last-updated range ends before it starts")

    def where(self) -> list[Clause]:
        clauses = super().where()
        if self.updated_from is not None:
            clauses.append(Cmp("LastUpdatedTime", Op.GE, self.updated_from.astimezone(UTC)))
        if self.updated_to is not None:
            clauses.append(Cmp("LastUpdatedTime", Op.LE, self.updated_to.astimezone(UTC)))
        return clauses


@dataclass(frozen=True)
class InstanceFilter:
    """The dashboard's instance filters; every one given must hold.

    Raises:
        ConfigurationError: as :class:`InstanceQuery` does, or an updated-time range
            that ends before it starts.
    """

    statuses: tuple[OrchestrationStatus, ...] = ()
    name: str | None = None
    prefix: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "statuses", parse_statuses(self.statuses))
        self.query()  # validates

    def query(self, *, with_status: bool = True) -> FilterQuery:
        return FilterQuery(
            runtime_status=self.statuses if with_status else (),
            created_time_from=self.created_from,
            created_time_to=self.created_to,
            instance_id_prefix=self.prefix,
            name=self.name,
            updated_from=self.updated_from,
            updated_to=self.updated_to,
        )

    @property
    def is_empty(self) -> bool:
        return self == InstanceFilter()


async def list_page(
    provider: AzureStorageProvider,
    flt: InstanceFilter,
    *,
    page_size: int,
    continuation: str | None,
) -> tuple[list[InstanceRecord], str | None]:
    """Up to ``page_size`` matching instances (in instance-id order, inputs not read) and
    the token of the next page (``None`` at the end). Short service pages are topped up,
    so a page is only short at the end (or after many sparse service pages).

    Raises:
        ValueError: ``continuation`` is not a token from this function.
    """
    records: list[InstanceRecord] = []
    token = continuation
    for _ in range(_MAX_FETCHES_PER_PAGE):
        page, token = await query_instances(
            provider,
            flt.query(),
            page_size=page_size - len(records),
            continuation=token,
            include_input=False,
        )
        records.extend(page)
        if token is None or len(records) >= page_size:
            break
    return records, token


async def count_by_status(provider: AzureStorageProvider, flt: InstanceFilter) -> dict[str, int]:
    """How many instances match every filter but the status one, per status name (every
    status is a key, in :class:`OrchestrationStatus` order)."""
    counts = await count_instances(provider, flt.query(with_status=False))
    return {name: counts.get(name, 0) for name in OrchestrationStatus.__members__}


async def matching_ids(provider: AzureStorageProvider, flt: InstanceFilter) -> list[str]:
    """The id of every instance matching ``flt`` (all pages)."""
    query = flt.query()
    records = iterate_instances(provider, query, page_size=MAX_PAGE_SIZE, include_input=False)
    return [record.instance_id async for record in records]


# --- history -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryItem:
    """One history event and which of its columns are offloaded to blobs (their value in
    ``event`` is then empty: fetch it with :func:`history_value`)."""

    position: int
    event: HistoryEvent
    offloaded: frozenset[str] = field(default_factory=frozenset)


async def read_history(provider: AzureStorageProvider, instance_id: str) -> list[HistoryItem]:
    """The current execution's events, offloaded payloads left in their blobs.

    As :meth:`HistoryStore.load`, rows of an older execution (a restarted instance whose
    previous history was longer) are cut off at the first row of another execution.
    """
    rows, _ = await provider.history.table.query(partition_key=escape_key(instance_id))
    sentinel = next((r for r in rows if r.row_key == SENTINEL_ROW_KEY), None)
    history_rows = [r for r in rows if r.row_key != SENTINEL_ROW_KEY]
    first = sentinel if sentinel is not None else (history_rows[0] if history_rows else None)
    execution_id = first.get("ExecutionId") if first is not None else None
    items: list[HistoryItem] = []
    for position, entity in enumerate(history_rows):
        if entity.row_key != history_row_key(position) or (
            entity.get("ExecutionId") != execution_id
        ):
            break
        row = dict(entity.properties)
        offloaded = frozenset(
            column[: -len("BlobName")]
            for column, value in row.items()
            if column.endswith("BlobName") and value
        )
        items.append(HistoryItem(position, row_to_event(row), offloaded))
    return items


async def history_value(
    provider: AzureStorageProvider, instance_id: str, position: int, column: str
) -> str | None:
    """One column of one history row, fetched from its blob if offloaded.

    Raises:
        InstanceNotFoundError: no such row.
    """
    entity = await provider.history.table.get(escape_key(instance_id), history_row_key(position))
    if entity is None:
        raise InstanceNotFoundError(f"instance {instance_id!r} has no history event {position}")
    row = await provider.payloads.fetch_history_row(dict(entity.properties))
    value = row.get(column)
    return None if value is None else str(value)


async def instance_value(
    provider: AzureStorageProvider, record: InstanceRecord, column: str
) -> str | None:
    """``Input``, ``Output`` or ``CustomStatus`` of an instance, fetched if offloaded."""
    if column == "Input":
        value = record.input
    elif column == "Output":
        value = record.output
    else:
        value = record.custom_status
    return await provider.payloads.fetch_instance_value(value)


def parent_of(items: Iterable[HistoryItem]) -> str | None:
    for item in items:
        if isinstance(item.event, ExecutionStarted) and item.event.parent_instance is not None:
            return item.event.parent_instance.instance_id
    return None


def children_of(items: Iterable[HistoryItem]) -> list[tuple[str, str]]:
    """(instance id, orchestrator name) of every sub-orchestration this history started."""
    seen: dict[str, str] = {}
    for item in items:
        if isinstance(item.event, SubOrchestrationInstanceCreated):
            seen.setdefault(item.event.instance_id, item.event.name)
    return list(seen.items())
