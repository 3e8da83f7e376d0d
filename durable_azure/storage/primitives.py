"""The seam between the provider and storage: small Queue / Table / Blob protocols.

Everything above this module (tracking, messaging, the provider, the worker) talks only to
these protocols. Two implementations exist:

* :mod:`durable_azure.storage.azure_primitives` - the async Azure SDK (production, Azurite);
* :mod:`durable_azure.testing.memory` - in memory, modelling ETags, pop receipts, visibility
  timeouts, dequeue counts and batch limits, so the real provider code runs in fast tests
  and under fault injection.

Both translate failures into :mod:`durable_azure.errors` (``NotFoundError``,
``AlreadyExistsError``, ``ConditionFailedError``, ``MessageGoneError``,
``TransactionFailedError``) and both count operations in a :class:`StorageStats`.
Both also reject the same bad arguments, with the same :class:`ValueError`, before anything
is sent or changed: the ``check_*`` functions at the end of this module are those rules.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from durable_azure.storage.names import MAX_MESSAGES_PER_RECEIVE, MAX_VISIBILITY_TIMEOUT

#: A table property value: str, int, float, bool, datetime (UTC, aware), bytes or None.
TableValue = Any


class OpKind(str, enum.Enum):
    """Kinds of storage operation, as counted by :class:`StorageStats`."""

    QUEUE_SEND = "queue_send"
    QUEUE_RECEIVE = "queue_receive"
    QUEUE_DELETE = "queue_delete"
    QUEUE_UPDATE = "queue_update"
    QUEUE_PEEK = "queue_peek"
    QUEUE_ADMIN = "queue_admin"
    TABLE_READ = "table_read"
    TABLE_QUERY = "table_query"
    TABLE_WRITE = "table_write"
    TABLE_BATCH = "table_batch"
    TABLE_ADMIN = "table_admin"
    BLOB_UPLOAD = "blob_upload"
    BLOB_DOWNLOAD = "blob_download"
    BLOB_DELETE = "blob_delete"
    BLOB_LIST = "blob_list"
    BLOB_ADMIN = "blob_admin"


@dataclass
class StorageStats:
    """Counts of storage operations (one per request sent), by kind."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, kind: OpKind, n: int = 1) -> None:
        self.counts[kind.value] += n

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

    def total(self, *, include_admin: bool = False) -> int:
        return sum(v for k, v in self.counts.items() if include_admin or not k.endswith("_admin"))

    def reset(self) -> None:
        self.counts.clear()


# --- queues ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """A message as received from a queue.

    ``pop_receipt`` is ``None`` for peeked messages.
    """

    id: str
    pop_receipt: str | None
    content: str
    dequeue_count: int
    inserted_on: datetime
    next_visible_on: datetime | None


@runtime_checkable
class Queue(Protocol):
    """One storage queue. Message content is text (raw UTF-8 JSON, no base64)."""

    @property
    def name(self) -> str: ...

    async def create(self) -> None:
        """Create the queue; succeeds if it already exists."""

    async def delete_queue(self) -> None:
        """Delete the queue; succeeds if it does not exist."""

    async def send(self, content: str, *, visibility_timeout: float = 0.0) -> None:
        """Enqueue ``content`` with infinite time-to-live, hidden for ``visibility_timeout`` s.

        Raises:
            ValueError: the visibility timeout is negative or over 7 days.
            StorageError: the message is too large or storage failed.
        """

    async def receive(self, max_messages: int, visibility_timeout: float) -> list[QueueMessage]:
        """Receive up to ``max_messages`` (1-32) visible messages in one request.

        Each returned message is hidden for ``visibility_timeout`` seconds and its dequeue
        count is incremented. An empty list means the queue had no visible message.
        """

    async def delete(self, message_id: str, pop_receipt: str) -> None:
        """Delete a received message.

        Raises:
            MessageGoneError: already deleted, or the pop receipt is stale.
        """

    async def update_visibility(
        self, message_id: str, pop_receipt: str, visibility_timeout: float
    ) -> str:
        """Change a received message's visibility; returns the new pop receipt.

        Raises:
            MessageGoneError: already deleted, or the pop receipt is stale.
        """

    async def peek(self, max_messages: int) -> list[QueueMessage]:
        """Look at up to ``max_messages`` (1-32) visible messages without receiving them."""

    async def approximate_count(self) -> int:
        """The approximate number of messages in the queue (visible or not)."""


# --- tables ------------------------------------------------------------------------------


class UpdateMode(str, enum.Enum):
    """How a write treats properties not named in the new entity."""

    MERGE = "merge"  # keep them
    REPLACE = "replace"  # drop them


@dataclass(frozen=True, slots=True)
class Entity:
    """A table entity as read back: its properties (PartitionKey and RowKey included) and ETag.

    Property values are plain Python values: int64 columns come back as ``int``, date-times
    as timezone-aware UTC ``datetime``.
    """

    properties: Mapping[str, TableValue]
    etag: str

    @property
    def partition_key(self) -> str:
        return str(self.properties["PartitionKey"])

    @property
    def row_key(self) -> str:
        return str(self.properties["RowKey"])

    def get(self, name: str, default: TableValue = None) -> TableValue:
        return self.properties.get(name, default)


class Op(str, enum.Enum):
    """Comparison operators a :class:`Cmp` filter can use."""

    EQ = "eq"
    NE = "ne"
    GT = "gt"
    GE = "ge"
    LT = "lt"
    LE = "le"


@dataclass(frozen=True, slots=True)
class Cmp:
    """``column <op> value``; a missing column never matches (as in Azure Tables)."""

    column: str
    op: Op
    value: TableValue


@dataclass(frozen=True, slots=True)
class AnyOf:
    """A disjunction of comparisons, e.g. ``RuntimeStatus eq 'Running' or ... 'Pending'``."""

    alternatives: tuple[Cmp, ...]


#: A filter is a conjunction of clauses.
Clause = Cmp | AnyOf


class TableOpKind(str, enum.Enum):
    """Operations allowed inside a table transaction."""

    INSERT = "insert"  # fails with 409 if the entity exists
    UPSERT_MERGE = "upsert_merge"
    UPSERT_REPLACE = "upsert_replace"
    UPDATE_MERGE = "update_merge"  # needs an etag ("*" = any); fails if missing
    UPDATE_REPLACE = "update_replace"
    DELETE = "delete"  # etag "*" or a real one


@dataclass(frozen=True, slots=True)
class TableOp:
    """One operation in a table transaction. All ops in one transaction share a PartitionKey."""

    kind: TableOpKind
    entity: Mapping[str, TableValue]
    etag: str | None = None


#: Azure's limit on operations in one entity-group transaction.
MAX_TRANSACTION_OPS = 100


@runtime_checkable
class Table(Protocol):
    """One storage table."""

    @property
    def name(self) -> str: ...

    async def create(self) -> None:
        """Create the table; succeeds if it already exists."""

    async def delete_table(self) -> None:
        """Delete the table; succeeds if it does not exist."""

    async def get(
        self, partition_key: str, row_key: str, *, select: Sequence[str] | None = None
    ) -> Entity | None:
        """Point read; ``None`` when the entity does not exist."""

    async def query(
        self,
        *,
        partition_key: str | None = None,
        where: Sequence[Clause] = (),
        select: Sequence[str] | None = None,
        page_size: int | None = None,
        continuation: str | None = None,
    ) -> tuple[list[Entity], str | None]:
        """One page of entities matching the filter, in (PartitionKey, RowKey) order.

        Returns the page and a continuation token for the next page (``None`` at the end).
        Without ``page_size`` the page holds everything (the implementation follows the
        service's own continuation internally).
        """

    async def insert(self, entity: Mapping[str, TableValue]) -> str:
        """Insert; returns the new ETag. Raises :class:`AlreadyExistsError` on conflict."""

    async def upsert(self, entity: Mapping[str, TableValue], mode: UpdateMode) -> str:
        """Insert or update without a condition; returns the new ETag."""

    async def update(self, entity: Mapping[str, TableValue], *, etag: str, mode: UpdateMode) -> str:
        """Update an existing entity if its ETag matches (``"*"`` matches any).

        Raises:
            NotFoundError: no such entity.
            ConditionFailedError: the ETag did not match.
        """

    async def delete(self, partition_key: str, row_key: str, *, etag: str | None = None) -> None:
        """Delete; succeeds if missing (when no etag is given).

        Raises:
            ConditionFailedError: an etag was given and did not match.
        """

    async def transaction(self, ops: Sequence[TableOp]) -> list[str]:
        """Apply 1-100 operations on one partition atomically; returns each op's new ETag
        (``""`` for deletes).

        Raises:
            ValueError: more than :data:`MAX_TRANSACTION_OPS` ops, none, or mixed partitions.
            TransactionFailedError: an op failed; nothing was written.
        """


# --- blobs -------------------------------------------------------------------------------


@runtime_checkable
class BlobContainer(Protocol):
    """One blob container."""

    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str:
        """The container's absolute URL (used where DTFx stores blob URLs)."""

    async def create(self) -> None:
        """Create the container; succeeds if it already exists."""

    async def delete_container(self) -> None:
        """Delete the container; succeeds if it does not exist."""

    async def upload(self, blob_name: str, data: bytes) -> None:
        """Write (or overwrite) a block blob."""

    async def download(self, blob_name: str) -> bytes:
        """Read a blob. Raises :class:`NotFoundError` if it does not exist."""

    async def delete(self, blob_name: str) -> None:
        """Delete a blob; succeeds if it does not exist."""

    async def list_names(self, prefix: str = "") -> list[str]:
        """Names of the blobs whose names start with ``prefix``."""


class StorageAccount(Protocol):
    """A factory for the queues, tables and containers of one storage account."""

    stats: StorageStats

    def queue(self, name: str) -> Queue: ...

    def table(self, name: str) -> Table: ...

    def container(self, name: str) -> BlobContainer: ...

    async def close(self) -> None:
        """Release network resources."""


# --- argument checks both implementations make before sending anything -------------------

_MAX_VISIBILITY_SECONDS = int(MAX_VISIBILITY_TIMEOUT.total_seconds())
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_visibility_timeout(seconds: float, *, minimum: int = 0) -> int:
    """Azure's queue visibility rule: ``minimum``..7 days; returns whole seconds, rounded up.

    Send and Update Message allow 0 s; Get Messages needs at least 1 s (``minimum=1``). The
    service takes whole seconds, so a fraction is rounded up (never shown early).

    Raises:
        ValueError: the timeout is outside ``minimum``..:data:`MAX_VISIBILITY_TIMEOUT`.
    """
    if not minimum <= seconds <= _MAX_VISIBILITY_SECONDS:
        raise ValueError(
            f"visibility timeout must be within {minimum}..{_MAX_VISIBILITY_SECONDS} s, "
            f"got {seconds}"
        )
    return math.ceil(seconds)


def check_message_count(n: int) -> None:
    """Azure's rule for Get / Peek Messages: 1..:data:`MAX_MESSAGES_PER_RECEIVE` (32) per request.

    Raises:
        ValueError: ``n`` is outside that range.
    """
    if not 1 <= n <= MAX_MESSAGES_PER_RECEIVE:
        raise ValueError(f"max_messages must be 1..{MAX_MESSAGES_PER_RECEIVE}, got {n}")


def check_transaction(ops: Sequence[TableOp]) -> str:
    """Azure's entity-group transaction rules; returns the one PartitionKey the ops share.

    1..:data:`MAX_TRANSACTION_OPS` operations, each with PartitionKey and RowKey, all with
    the same PartitionKey, and an etag on every update (``"*"`` matches any). (Azurite
    answers more than 100 ops with a malformed body, so this is checked before sending.)

    Raises:
        ValueError: naming the rule that was broken.
    """
    if not 1 <= len(ops) <= MAX_TRANSACTION_OPS:
        raise ValueError(f"a transaction needs 1..{MAX_TRANSACTION_OPS} ops, got {len(ops)}")
    partitions = set()
    for op in ops:
        if "PartitionKey" not in op.entity or "RowKey" not in op.entity:
            raise ValueError("every transaction op needs PartitionKey and RowKey")
        partitions.add(op.entity["PartitionKey"])
        if op.kind in (TableOpKind.UPDATE_MERGE, TableOpKind.UPDATE_REPLACE) and not op.etag:
            raise ValueError(f"{op.kind.value} needs an etag ('*' matches any)")
    if len(partitions) != 1:
        raise ValueError(f"a transaction must use one PartitionKey, got {sorted(partitions)}")
    return str(next(iter(partitions)))


def check_column_name(name: str) -> str:
    """Return ``name`` if a filter may use it as a column: an ASCII identifier.

    Azure property names follow C# identifier rules; checking this also keeps a column from
    smuggling an OData expression into ``$filter`` (``"N eq 1 or N"``).

    Raises:
        ValueError: ``name`` is not an identifier.
    """
    if not _COLUMN_NAME.match(name):
        raise ValueError(f"invalid column name in filter: {name!r}")
    return name


def check_clauses(where: Sequence[Clause]) -> None:
    """The filter's shape: every :class:`AnyOf` has an alternative, every column is a name.

    Clauses are checked in order; the values are left to each implementation (the Azure one
    renders them as OData literals, the memory one stores-and-compares them).

    Raises:
        ValueError: an empty :class:`AnyOf` or a bad column name (:func:`check_column_name`).
    """
    for clause in where:
        cmps = clause.alternatives if isinstance(clause, AnyOf) else (clause,)
        if not cmps:
            raise ValueError("AnyOf needs at least one alternative")
        for cmp in cmps:
            check_column_name(cmp.column)


def check_page_size(page_size: int | None) -> None:
    """A query page size (``$top``), if given, is at least 1.

    Raises:
        ValueError: ``page_size`` is zero or negative.
    """
    if page_size is not None and page_size < 1:
        raise ValueError(f"page_size must be positive, got {page_size}")


def require_aware(value: datetime) -> datetime:
    """A table date-time as aware UTC (Edm.DateTime is UTC); naive ones are refused.

    The SDK would silently read a naive datetime as *local* time.

    Raises:
        ValueError: ``value`` has no time zone.
    """
    if value.tzinfo is None:
        raise ValueError(f"table date-times must be timezone-aware (UTC), got {value!r}")
    return value.astimezone(UTC)


def encode_continuation(partition_key: str | None, row_key: str | None) -> str:
    """A query continuation token: the next (PartitionKey, RowKey), as both implementations
    hand it to callers (the service's ``NextPartitionKey`` / ``NextRowKey``)."""
    return json.dumps({"pk": partition_key, "rk": row_key})


def decode_continuation(token: str) -> tuple[Any, Any]:
    """The (PartitionKey, RowKey) in a token from :func:`encode_continuation`.

    Raises:
        ValueError: ``token`` is not such a token.
    """
    try:
        data = json.loads(token)
        return data["pk"], data["rk"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"invalid continuation token: {token!r}") from err
