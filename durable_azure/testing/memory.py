"""An in-memory storage account that behaves like Azure Storage (as seen through our protocols).

:class:`MemoryStorageAccount` implements :class:`~durable_azure.storage.primitives.StorageAccount`
without a network, so the real provider code runs in fast tests. It models what the engine
relies on, and what Azurite/Azure showed us:

* queues: visibility timeouts against an injectable clock, a new pop receipt on every
  receive/update (a stale one raises :class:`MessageGoneError`), dequeue counts, insertion
  order, 1-32 messages per receive/peek, the 64 KiB body limit (413) and the 7-day
  visibility limit (:class:`ValueError`);
* tables: a new ETag on every write, If-Match (``"*"`` = any), insert conflicts (409),
  updates of missing rows (404), entity-group transactions (atomic, 1-100 ops, one
  partition, no row twice, failing index reported), the 64 KiB property / 1 MiB entity
  limits, key character rules, (PartitionKey, RowKey) order, filters, select and paging;
* blobs: containers of whole-blob byte strings;
* a queue, table or container must be created before use, else :class:`NotFoundError`.

Every call is counted once in :attr:`MemoryStorageAccount.stats` with the same
:class:`OpKind` the Azure implementation uses. Each operation first yields to the event
loop once (``asyncio.sleep(0)``), then runs atomically, so concurrent callers interleave
between operations as they would against a real service.

Fault injection: ``account.faults`` is a list of callables ``(op_kind, resource_name) ->
None``. Each is called (after the op is counted, before it touches state) on every
operation that can fail; raising from it makes that operation fail with that exception and
change nothing. :meth:`MemoryStorageAccount.fail_next` adds a hook that fails the next
matching operation(s) and then removes itself.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from durable_azure.errors import (
    AlreadyExistsError,
    ConditionFailedError,
    MessageGoneError,
    NotFoundError,
    StorageError,
    TransactionFailedError,
)
from durable_azure.storage.primitives import (
    AnyOf,
    Clause,
    Cmp,
    Entity,
    Op,
    OpKind,
    QueueMessage,
    StorageStats,
    TableOp,
    TableOpKind,
    TableValue,
    UpdateMode,
    check_clauses,
    check_message_count,
    check_page_size,
    check_transaction,
    check_visibility_timeout,
    decode_continuation,
    encode_continuation,
    require_aware,
)

__all__ = ["Clock", "FaultHook", "MemoryStorageAccount"]

#: Returns the current time as an aware UTC datetime.
Clock = Callable[[], datetime]
#: Called as ``hook(op_kind, resource_name)`` before an operation; raise to make it fail.
FaultHook = Callable[[OpKind, str], None]

MAX_MESSAGE_BYTES = 64 * 1024
MAX_PROPERTY_BYTES = 64 * 1024  # strings measured as UTF-16, like the service
MAX_ENTITY_BYTES = 1024 * 1024
MAX_CUSTOM_PROPERTIES = 252
QUERY_PAGE = 1000  # the service's own page size for an unbounded query
LIST_PAGE = 5000  # blobs per List Blobs request

_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)
_QUEUE_NAME_RE = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
_TABLE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_BAD_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _err(cls: type[StorageError], status: int, code: str, what: str) -> StorageError:
    return cls(f"{what}: HTTP {status} {code}", status=status, code=code)


# --- the account -------------------------------------------------------------------------


@dataclass
class _Message:
    id: str
    content: str
    seq: int
    inserted_on: datetime
    visible_at: datetime
    dequeue_count: int = 0
    pop_receipt: str | None = None


@dataclass
class _Row:
    props: dict[str, TableValue]
    etag: str
    timestamp: datetime


@dataclass
class _State:
    queues: dict[str, dict[str, _Message]] = field(default_factory=dict)
    tables: dict[str, dict[tuple[str, str], _Row]] = field(default_factory=dict)
    containers: dict[str, dict[str, bytes]] = field(default_factory=dict)


class MemoryStorageAccount:
    """An in-memory :class:`~durable_azure.storage.primitives.StorageAccount`.

    Args:
        clock: the time source for visibility timeouts and timestamps (aware UTC);
            defaults to the real clock. Tests can pass a fake clock and advance it.
        account_name: used only to build container URLs.
    """

    def __init__(self, *, clock: Clock | None = None, account_name: str = "memory") -> None:
        self.stats = StorageStats()
        #: Fault hooks, see the module docstring. Mutate freely.
        self.faults: list[FaultHook] = []
        self.account_name = account_name
        self._clock: Clock = clock or _utc_now
        self._state = _State()
        self._seq = itertools.count(1)
        self._queues: dict[str, MemoryQueue] = {}
        self._tables: dict[str, MemoryTable] = {}
        self._containers: dict[str, MemoryBlobContainer] = {}

    def now(self) -> datetime:
        """The account's current time (from the injected clock)."""
        return self._clock()

    def queue(self, name: str) -> MemoryQueue:
        """The (cached) queue wrapper for ``name``."""
        return self._queues.setdefault(name, MemoryQueue(self, name))

    def table(self, name: str) -> MemoryTable:
        """The (cached) table wrapper for ``name``."""
        return self._tables.setdefault(name, MemoryTable(self, name))

    def container(self, name: str) -> MemoryBlobContainer:
        """The (cached) container wrapper for ``name``."""
        return self._containers.setdefault(name, MemoryBlobContainer(self, name))

    async def close(self) -> None:
        """Nothing to release; present for protocol compatibility."""

    def fail_next(
        self,
        kind: OpKind,
        error: BaseException,
        *,
        name: str | None = None,
        times: int = 1,
    ) -> FaultHook:
        """Make the next ``times`` operations of ``kind`` (on ``name``, if given) raise ``error``.

        Returns the hook, which removes itself from :attr:`faults` once used up.
        """
        remaining = times

        def hook(op_kind: OpKind, resource: str) -> None:
            nonlocal remaining
            if op_kind is not kind or (name is not None and resource != name) or remaining <= 0:
                return
            remaining -= 1
            if remaining == 0 and hook in self.faults:
                self.faults.remove(hook)
            raise error

        self.faults.append(hook)
        return hook

    def _next_seq(self) -> int:
        return next(self._seq)

    def _new_etag(self) -> str:
        # Opaque, but shaped like the service's weak datetime ETags; the counter keeps two
        # writes within one clock tick distinct.
        stamp = self.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"W/\"datetime'{stamp}'-{self._next_seq()}\""

    async def _enter(self, kind: OpKind, name: str) -> None:
        """Yield once, count the request, then run the fault hooks."""
        await asyncio.sleep(0)
        self.stats.add(kind)
        for hook in list(self.faults):
            hook(kind, name)


# --- queues ------------------------------------------------------------------------------


class MemoryQueue:
    """An in-memory queue with visibility timeouts, pop receipts and dequeue counts."""

    def __init__(self, account: MemoryStorageAccount, name: str) -> None:
        self._account = account
        self._name = name

    @property
    def name(self) -> str:
        """The queue's name."""
        return self._name

    def _messages(self) -> dict[str, _Message]:
        messages = self._account._state.queues.get(self._name)
        if messages is None:
            raise _err(NotFoundError, 404, "QueueNotFound", f"queue {self._name}")
        return messages

    def _visible(self) -> list[_Message]:
        now = self._account.now()
        return sorted(
            (m for m in self._messages().values() if m.visible_at <= now), key=lambda m: m.seq
        )

    async def create(self) -> None:
        """Create the queue; succeeds if it already exists."""
        await self._account._enter(OpKind.QUEUE_ADMIN, self._name)
        if not _QUEUE_NAME_RE.match(self._name):
            raise _err(StorageError, 400, "InvalidResourceName", f"queue name {self._name!r}")
        self._account._state.queues.setdefault(self._name, {})

    async def delete_queue(self) -> None:
        """Delete the queue and its messages; succeeds if it does not exist."""
        await self._account._enter(OpKind.QUEUE_ADMIN, self._name)
        self._account._state.queues.pop(self._name, None)

    async def send(self, content: str, *, visibility_timeout: float = 0.0) -> None:
        """Enqueue ``content``, hidden for ``visibility_timeout`` seconds."""
        delay = check_visibility_timeout(visibility_timeout)
        await self._account._enter(OpKind.QUEUE_SEND, self._name)
        messages = self._messages()
        if len(content.encode("utf-8")) > MAX_MESSAGE_BYTES:
            raise _err(StorageError, 413, "RequestBodyTooLarge", f"send to {self._name}")
        now = self._account.now()
        msg = _Message(
            id=str(uuid.uuid4()),
            content=content,
            seq=self._account._next_seq(),
            inserted_on=now,
            visible_at=now + timedelta(seconds=delay),
        )
        messages[msg.id] = msg

    async def receive(self, max_messages: int, visibility_timeout: float) -> list[QueueMessage]:
        """Receive up to ``max_messages`` visible messages, hiding each for the timeout."""
        check_message_count(max_messages)
        hide = check_visibility_timeout(visibility_timeout, minimum=1)
        await self._account._enter(OpKind.QUEUE_RECEIVE, self._name)
        now = self._account.now()
        out = []
        for msg in self._visible()[:max_messages]:
            msg.dequeue_count += 1
            msg.pop_receipt = uuid.uuid4().hex
            msg.visible_at = now + timedelta(seconds=hide)
            out.append(
                QueueMessage(
                    id=msg.id,
                    pop_receipt=msg.pop_receipt,
                    content=msg.content,
                    dequeue_count=msg.dequeue_count,
                    inserted_on=msg.inserted_on,
                    next_visible_on=msg.visible_at,
                )
            )
        return out

    def _received(self, message_id: str, pop_receipt: str, what: str) -> _Message:
        msg = self._messages().get(message_id)
        if msg is None:
            raise _err(MessageGoneError, 404, "MessageNotFound", what)
        if msg.pop_receipt is None or msg.pop_receipt != pop_receipt:
            raise _err(MessageGoneError, 400, "PopReceiptMismatch", what)
        return msg

    async def delete(self, message_id: str, pop_receipt: str) -> None:
        """Delete a received message; :class:`MessageGoneError` if gone or receipt stale."""
        await self._account._enter(OpKind.QUEUE_DELETE, self._name)
        self._received(message_id, pop_receipt, f"delete {message_id} from {self._name}")
        del self._messages()[message_id]

    async def update_visibility(
        self, message_id: str, pop_receipt: str, visibility_timeout: float
    ) -> str:
        """Change a received message's visibility; returns the new pop receipt."""
        hide = check_visibility_timeout(visibility_timeout)
        await self._account._enter(OpKind.QUEUE_UPDATE, self._name)
        msg = self._received(message_id, pop_receipt, f"update {message_id} in {self._name}")
        msg.pop_receipt = uuid.uuid4().hex
        msg.visible_at = self._account.now() + timedelta(seconds=hide)
        return msg.pop_receipt

    async def peek(self, max_messages: int) -> list[QueueMessage]:
        """Up to ``max_messages`` visible messages, unchanged and without pop receipts."""
        check_message_count(max_messages)
        await self._account._enter(OpKind.QUEUE_PEEK, self._name)
        return [
            QueueMessage(
                id=m.id,
                pop_receipt=None,
                content=m.content,
                dequeue_count=m.dequeue_count,
                inserted_on=m.inserted_on,
                next_visible_on=None,
            )
            for m in self._visible()[:max_messages]
        ]

    async def approximate_count(self) -> int:
        """The number of messages, visible or not (counted as a peek, like Azure's)."""
        await self._account._enter(OpKind.QUEUE_PEEK, self._name)
        return len(self._messages())


# --- tables: values, limits and filters --------------------------------------------------


def _normalize(value: TableValue, column: str) -> TableValue:
    """What the service would store for ``value``: the client-side checks of the SDK."""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool | float | str | bytes | uuid.UUID):
        return value
    if isinstance(value, int):
        if value not in _INT64:
            raise TypeError(f"{column}: {value} does not fit Edm.Int64")
        return value
    if isinstance(value, datetime):
        return require_aware(value)
    raise TypeError(f"{column}: unsupported table value type {type(value).__name__}")


def _value_size(value: TableValue) -> int:
    """The service's documented size of a property value, in bytes."""
    if isinstance(value, str):
        return 4 + len(value.encode("utf-16-le"))
    if isinstance(value, bytes):
        return 4 + len(value)
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return 4 if value in _INT32 else 8
    if isinstance(value, uuid.UUID):
        return 16
    return 8  # float, datetime


def _prepare(entity: Mapping[str, TableValue], what: str) -> dict[str, TableValue]:
    """Client-side normalization (TypeError/ValueError); None values are not sent at all."""
    pk, rk = entity.get("PartitionKey"), entity.get("RowKey")
    if not isinstance(pk, str) or not isinstance(rk, str):
        raise TypeError(f"{what}: PartitionKey and RowKey must be str")
    return {k: _normalize(v, k) for k, v in entity.items() if v is not None}


def _check_limits(props: Mapping[str, TableValue], what: str) -> None:
    """Server-side entity checks (StorageError 400), applied to the entity as stored."""
    for key in ("PartitionKey", "RowKey"):
        value = str(props[key])
        if _BAD_KEY_CHARS.search(value) or len(value) > 1024:
            raise _err(StorageError, 400, "InvalidInput", f"{what}: bad {key} {value!r}")
    custom = [k for k in props if k not in ("PartitionKey", "RowKey")]
    if len(custom) > MAX_CUSTOM_PROPERTIES:
        raise _err(StorageError, 400, "TooManyProperties", what)
    size = 4 + 2 * (len(str(props["PartitionKey"])) + len(str(props["RowKey"])))
    for name in custom:
        value = props[name]
        if isinstance(value, str | bytes) and _value_size(value) - 4 > MAX_PROPERTY_BYTES:
            raise _err(StorageError, 400, "PropertyValueTooLarge", f"{what}: {name}")
        size += 8 + 2 * len(name) + _value_size(value)
    if size > MAX_ENTITY_BYTES:
        raise _err(StorageError, 400, "EntityTooLarge", what)


def _type_class(value: TableValue) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"  # Edm.Int32/Int64/Double compare with each other
    return type(value).__name__


_COMPARE: dict[Op, Callable[[Any, Any], bool]] = {
    Op.EQ: lambda a, b: bool(a == b),
    Op.NE: lambda a, b: bool(a != b),
    Op.GT: lambda a, b: bool(a > b),
    Op.GE: lambda a, b: bool(a >= b),
    Op.LT: lambda a, b: bool(a < b),
    Op.LE: lambda a, b: bool(a <= b),
}


def _cmp_matches(row: _Row, cmp: Cmp) -> bool:
    actual = row.timestamp if cmp.column == "Timestamp" else row.props.get(cmp.column)
    if actual is None:
        return False  # a missing column never matches, not even "ne"
    expected = _normalize(cmp.value, cmp.column)
    if _type_class(actual) != _type_class(expected):
        return False  # the service does not convert between types
    return _COMPARE[cmp.op](actual, expected)


def _validate_where(where: Sequence[Clause]) -> None:
    """Reject bad filters up front, as the Azure implementation does while building $filter:
    first the shape (AnyOf, column names), then the values."""
    check_clauses(where)
    for clause in where:
        for c in clause.alternatives if isinstance(clause, AnyOf) else (clause,):
            if c.value is None:
                raise TypeError("unsupported filter value type: NoneType")
            _normalize(c.value, c.column)


def _row_matches(row: _Row, where: Sequence[Clause]) -> bool:
    for clause in where:
        if isinstance(clause, AnyOf):
            if not any(_cmp_matches(row, c) for c in clause.alternatives):
                return False
        elif not _cmp_matches(row, clause):
            return False
    return True


def _to_entity(row: _Row, select: Sequence[str] | None) -> Entity:
    if select is None:
        props = dict(row.props)
    else:
        # Keys always come back (the Azure implementation adds them to $select too).
        wanted = ("PartitionKey", "RowKey", *select)
        props = {k: row.props[k] for k in wanted if k in row.props}
    return Entity(properties=props, etag=row.etag)


def _decode_token(token: str | None) -> tuple[str, str] | None:
    """A continuation token as the (PartitionKey, RowKey) key the next page starts at."""
    if token is None:
        return None
    partition_key, row_key = decode_continuation(token)
    return str(partition_key), str(row_key)


# --- tables ------------------------------------------------------------------------------


class MemoryTable:
    """An in-memory table with ETags, conditional writes and atomic transactions."""

    def __init__(self, account: MemoryStorageAccount, name: str) -> None:
        self._account = account
        self._name = name

    @property
    def name(self) -> str:
        """The table's name."""
        return self._name

    def _rows(self) -> dict[tuple[str, str], _Row]:
        rows = self._account._state.tables.get(self._name)
        if rows is None:
            raise _err(NotFoundError, 404, "TableNotFound", f"table {self._name}")
        return rows

    async def create(self) -> None:
        """Create the table; succeeds if it already exists."""
        await self._account._enter(OpKind.TABLE_ADMIN, self._name)
        if not _TABLE_NAME_RE.match(self._name):
            raise _err(StorageError, 400, "InvalidResourceName", f"table name {self._name!r}")
        self._account._state.tables.setdefault(self._name, {})

    async def delete_table(self) -> None:
        """Delete the table and its entities; succeeds if it does not exist."""
        await self._account._enter(OpKind.TABLE_ADMIN, self._name)
        self._account._state.tables.pop(self._name, None)

    async def get(
        self, partition_key: str, row_key: str, *, select: Sequence[str] | None = None
    ) -> Entity | None:
        """Point read; ``None`` when the entity does not exist."""
        await self._account._enter(OpKind.TABLE_READ, self._name)
        row = self._rows().get((partition_key, row_key))
        return None if row is None else _to_entity(row, select)

    async def query(
        self,
        *,
        partition_key: str | None = None,
        where: Sequence[Clause] = (),
        select: Sequence[str] | None = None,
        page_size: int | None = None,
        continuation: str | None = None,
    ) -> tuple[list[Entity], str | None]:
        """One page of matching entities in (PartitionKey, RowKey) order."""
        check_page_size(page_size)
        start = _decode_token(continuation)
        _validate_where(where)
        await self._account._enter(OpKind.TABLE_QUERY, self._name)
        rows = self._rows()
        matches = [
            (key, rows[key])
            for key in sorted(rows)
            if (start is None or key >= start)
            and (partition_key is None or key[0] == partition_key)
            and _row_matches(rows[key], where)
        ]
        if page_size is None:
            # The service pages unbounded queries by 1000; count those requests too.
            pages = max(1, math.ceil(len(matches) / QUERY_PAGE))
            if pages > 1:
                self._account.stats.add(OpKind.TABLE_QUERY, pages - 1)
            return [_to_entity(row, select) for _, row in matches], None
        token = None
        if len(matches) > page_size:
            pk, rk = matches[page_size][0]
            token = encode_continuation(pk, rk)
        return [_to_entity(row, select) for _, row in matches[:page_size]], token

    def _apply(
        self,
        rows: dict[tuple[str, str], _Row],
        kind: TableOpKind,
        props: dict[str, TableValue],
        etag: str | None,
    ) -> str:
        """Apply one write to ``rows`` (live or a transaction's copy); returns the new ETag.

        Rows are replaced, never mutated, so a transaction's copy cannot leak into the
        live table before it commits.
        """
        what = f"{kind.value} {props['PartitionKey']}/{props['RowKey']} in {self._name}"
        _check_limits(props, what)
        key = (str(props["PartitionKey"]), str(props["RowKey"]))
        existing = rows.get(key)
        if kind is TableOpKind.INSERT and existing is not None:
            raise _err(AlreadyExistsError, 409, "EntityAlreadyExists", what)
        if kind in (TableOpKind.UPDATE_MERGE, TableOpKind.UPDATE_REPLACE, TableOpKind.DELETE):
            if existing is None:
                raise _err(NotFoundError, 404, "ResourceNotFound", what)
            if etag not in (None, "*") and etag != existing.etag:
                raise _err(ConditionFailedError, 412, "UpdateConditionNotSatisfied", what)
        if kind is TableOpKind.DELETE:
            del rows[key]
            return ""
        if existing is not None and kind in (TableOpKind.UPSERT_MERGE, TableOpKind.UPDATE_MERGE):
            props = {**existing.props, **props}
            _check_limits(props, what)
        row = _Row(props=props, etag=self._account._new_etag(), timestamp=self._account.now())
        rows[key] = row
        return row.etag

    async def _write(
        self, kind: TableOpKind, entity: Mapping[str, TableValue], etag: str | None
    ) -> str:
        props = _prepare(entity, f"{kind.value} in {self._name}")
        await self._account._enter(OpKind.TABLE_WRITE, self._name)
        return self._apply(self._rows(), kind, props, etag)

    async def insert(self, entity: Mapping[str, TableValue]) -> str:
        """Insert; returns the new ETag. :class:`AlreadyExistsError` on conflict."""
        return await self._write(TableOpKind.INSERT, entity, None)

    async def upsert(self, entity: Mapping[str, TableValue], mode: UpdateMode) -> str:
        """Insert or update (merge/replace) unconditionally; returns the new ETag."""
        kind = TableOpKind.UPSERT_MERGE if mode is UpdateMode.MERGE else TableOpKind.UPSERT_REPLACE
        return await self._write(kind, entity, None)

    async def update(self, entity: Mapping[str, TableValue], *, etag: str, mode: UpdateMode) -> str:
        """Update an existing entity if the ETag matches (``"*"`` = any)."""
        kind = TableOpKind.UPDATE_MERGE if mode is UpdateMode.MERGE else TableOpKind.UPDATE_REPLACE
        return await self._write(kind, entity, etag)

    async def delete(self, partition_key: str, row_key: str, *, etag: str | None = None) -> None:
        """Delete; a missing entity is fine (as with the SDK, even when an etag is given).

        Like the SDK, which swallows every 404 here, this also succeeds when the table
        itself does not exist.
        """
        await self._account._enter(OpKind.TABLE_WRITE, self._name)
        rows = self._account._state.tables.get(self._name, {})
        if (partition_key, row_key) not in rows:
            return
        props = {"PartitionKey": partition_key, "RowKey": row_key}
        self._apply(rows, TableOpKind.DELETE, props, etag)

    async def transaction(self, ops: Sequence[TableOp]) -> list[str]:
        """Apply 1-100 ops on one partition atomically; returns their ETags (``""`` for deletes)."""
        check_transaction(ops)
        prepared = [_prepare(op.entity, f"transaction op #{i}") for i, op in enumerate(ops)]
        await self._account._enter(OpKind.TABLE_BATCH, self._name)
        rows = self._rows()
        seen: set[tuple[str, str]] = set()
        for index, props in enumerate(prepared):
            key = (str(props["PartitionKey"]), str(props["RowKey"]))
            if key in seen:
                cause = _err(StorageError, 400, "InvalidDuplicateRow", f"transaction op #{index}")
                raise TransactionFailedError(str(cause), index=index, cause=cause)
            seen.add(key)
        staging = dict(rows)
        etags = []
        for index, (op, props) in enumerate(zip(ops, prepared, strict=True)):
            try:
                etags.append(self._apply(staging, op.kind, props, op.etag))
            except StorageError as cause:
                raise TransactionFailedError(
                    f"transaction on {self._name} failed at op #{index}: {cause}",
                    index=index,
                    cause=cause,
                ) from cause
        rows.clear()
        rows.update(staging)
        return etags


# --- blobs -------------------------------------------------------------------------------


class MemoryBlobContainer:
    """An in-memory blob container holding whole block blobs."""

    def __init__(self, account: MemoryStorageAccount, name: str) -> None:
        self._account = account
        self._name = name

    @property
    def name(self) -> str:
        """The container's name."""
        return self._name

    @property
    def url(self) -> str:
        """A fake but absolute URL (``.invalid`` is reserved, so it can never resolve)."""
        return f"http://{self._account.account_name}.blob.memory.invalid/{self._name}"

    def _blobs(self) -> dict[str, bytes]:
        blobs = self._account._state.containers.get(self._name)
        if blobs is None:
            raise _err(NotFoundError, 404, "ContainerNotFound", f"container {self._name}")
        return blobs

    async def create(self) -> None:
        """Create the container; succeeds if it already exists."""
        await self._account._enter(OpKind.BLOB_ADMIN, self._name)
        if not _QUEUE_NAME_RE.match(self._name):  # same rules as queue names
            raise _err(StorageError, 400, "InvalidResourceName", f"container {self._name!r}")
        self._account._state.containers.setdefault(self._name, {})

    async def delete_container(self) -> None:
        """Delete the container and its blobs; succeeds if it does not exist."""
        await self._account._enter(OpKind.BLOB_ADMIN, self._name)
        self._account._state.containers.pop(self._name, None)

    async def upload(self, blob_name: str, data: bytes) -> None:
        """Write (or overwrite) a blob."""
        await self._account._enter(OpKind.BLOB_UPLOAD, self._name)
        self._blobs()[blob_name] = bytes(data)

    async def download(self, blob_name: str) -> bytes:
        """Read a blob; :class:`NotFoundError` if it does not exist."""
        await self._account._enter(OpKind.BLOB_DOWNLOAD, self._name)
        data = self._blobs().get(blob_name)
        if data is None:
            raise _err(NotFoundError, 404, "BlobNotFound", f"blob {self._name}/{blob_name}")
        return data

    async def delete(self, blob_name: str) -> None:
        """Delete a blob; succeeds if it does not exist (but not if the container is missing)."""
        await self._account._enter(OpKind.BLOB_DELETE, self._name)
        self._blobs().pop(blob_name, None)

    async def list_names(self, prefix: str = "") -> list[str]:
        """Names of the blobs starting with ``prefix``, sorted (one request per 5000)."""
        await self._account._enter(OpKind.BLOB_LIST, self._name)
        names = sorted(n for n in self._blobs() if n.startswith(prefix))
        pages = max(1, math.ceil(len(names) / LIST_PAGE))
        if pages > 1:
            self._account.stats.add(OpKind.BLOB_LIST, pages - 1)
        return names
