"""The production storage primitives: the async Azure SDK clients behind the small protocols.

One :class:`AzureStorageAccount` owns one service client per service (queue, table, blob);
``queue(name)`` / ``table(name)`` / ``container(name)`` hand out cached per-name wrappers
whose clients share that service client's HTTP transport. The wrappers check arguments
and count requests; the hot queue and table requests then go through the lean transport
(:mod:`durable_azure.storage.rest`, unless the account was built with ``lean=False``),
everything else through the SDK.

Everything the SDK raises is translated in exactly one place, :func:`_azure_errors`, into
:mod:`durable_azure.errors`; no ``azure.core`` exception leaves this module. Each request
sent is counted once in :attr:`AzureStorageAccount.stats`.

SDK and Azurite quirks handled here (see ``/work/shared/reference/azurite.md``):

* queue messages are raw text: the queue clients use no encode/decode policy (the SDK's
  ``TextBase64*`` policies would store base64, which other DTFx readers do not expect);
* ``receive_messages`` is paged; we take exactly ONE page (one HTTP call), and the aio pager
  raises ``StopAsyncIteration`` when the queue is empty;
* transactions of more than 100 operations make Azurite reply with a malformed multipart
  body (``BadStatusLine``), so the limit is enforced before sending;
* ``create_entity`` conflicts carry no ``error_code``; ``create_queue`` on an existing queue
  raises ``ResourceExistsError`` with status 204, so errors are classified by type first;
* int64 columns come back as ``EntityProperty`` and date-times as the SDK's
  ``TablesEntityDatetime`` subclass; both are converted to plain values;
* a ``$select`` without PartitionKey/RowKey returns entities without their keys, so the
  keys are always added to the selection.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import math
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.rest import HttpRequest
from azure.data.tables import EdmType, EntityProperty
from azure.data.tables import UpdateMode as SdkUpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient
from azure.storage.blob.aio import BlobServiceClient, ContainerClient
from azure.storage.queue.aio import QueueClient, QueueServiceClient

from durable_azure.errors import (
    AlreadyExistsError,
    ConfigurationError,
    NotFoundError,
    StorageError,
)
from durable_azure.storage import rest, table_batch
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

__all__ = ["AzureBlobContainer", "AzureQueue", "AzureStorageAccount", "AzureTable"]

#: Retry settings for the queue and blob clients. Their SDK default waits 15 s (+-3) before
#: the first retry; a connection the server closed while idle (Azurite closes keep-alive
#: connections after 5 s) then stalls a request 12-18 s. Retry after ~1, 3, 5, 9 s instead.
#: (The table client uses azure-core's retry, which already starts below a second.)
STORAGE_RETRY: dict[str, Any] = {
    "retry_total": 4,
    "initial_backoff": 1,
    "increment_base": 2,
    "random_jitter_range": 1,
}

#: Socket timeouts of every client, seconds. The table SDK's default read timeout is
#: 300 s: one request the server never answers (a keep-alive connection closed under it,
#: an emulator stall) would hold an episode or a lease step that long before the retry
#: policy sees an error. 30 s matches the storage service's own server-side limit for a
#: single operation, so a slow-but-working request is never cut short.
STORAGE_TIMEOUTS: dict[str, Any] = {"connection_timeout": 10, "read_timeout": 30}

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_PARAM_RE = re.compile(r"@p(\d+)")


# --- error translation (the ONE place) ---------------------------------------------------


def _error_code(err: HttpResponseError) -> str | None:
    """The storage error code, also when the SDK left ``error_code`` empty.

    ``create_entity`` conflicts and table-name errors have no (or an empty) ``error_code``;
    the ``x-ms-error-code`` response header usually still has it.
    """
    code: Any = getattr(err, "error_code", None)
    if code:
        return str(getattr(code, "value", code))
    response = getattr(err, "response", None)
    header = response.headers.get("x-ms-error-code") if response is not None else None
    return str(header) if header else None


def _translate(err: AzureError, what: str, *, message_op: bool = False) -> StorageError:
    """Map an Azure SDK error to our hierarchy. ``message_op``: a queue message delete/update."""
    if not isinstance(err, HttpResponseError):
        # Transport failures (ServiceRequestError, ServiceResponseError...): no status.
        return StorageError(f"{what}: {type(err).__name__}: {err}")
    status = err.status_code
    code = _error_code(err)
    if status is None:
        # Raised before any response (e.g. signing failed): keep the cause's own words.
        return StorageError(f"{what}: {type(err).__name__}: {err.message}", code=code)
    # Classify by exception type first: the SDK raises ResourceExistsError for
    # create_queue-on-existing with status 204, and its create_entity conflict lacks a code.
    # A message delete/update that 404s is a gone message, decided by the status.
    if not message_op:
        for cls, like in (
            (ResourceNotFoundError, 404),
            (ResourceExistsError, 409),
            (ResourceModifiedError, 412),
        ):
            if isinstance(err, cls):
                status = like if status not in (404, 409, 412) else status
                break
    return rest.error_for(what, status, code, message_op=message_op)


@contextlib.contextmanager
def _azure_errors(what: str, *, message_op: bool = False) -> Iterator[None]:
    """Re-raise any Azure SDK error inside the block as a :class:`StorageError`."""
    try:
        yield
    except AzureError as err:
        raise _translate(err, what, message_op=message_op) from err


def _being_deleted(err: AlreadyExistsError) -> bool:
    """A 409 ``*BeingDeleted`` means the resource is going away, not that it exists."""
    return bool(err.code and err.code.endswith("BeingDeleted"))


# --- value conversion --------------------------------------------------------------------


def _to_sdk_value(value: TableValue) -> TableValue:
    if isinstance(value, enum.Enum):
        # The SDK writes str(member), i.e. "Kind.NAME" even for str enums; store the value.
        value = value.value
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not _INT32_MIN <= value <= _INT32_MAX:
        # A plain int outside int32 makes the SDK raise TypeError; write it as Edm.Int64.
        return EntityProperty(value, EdmType.INT64)
    if isinstance(value, datetime):
        return require_aware(value)
    return value


def _to_sdk_entity(entity: Mapping[str, TableValue]) -> dict[str, Any]:
    return {k: _to_sdk_value(v) for k, v in entity.items()}


def _from_sdk_value(value: Any) -> TableValue:
    if isinstance(value, EntityProperty):
        value = value.value
    if isinstance(value, datetime) and type(value) is not datetime:
        # TablesEntityDatetime -> a plain aware UTC datetime (equality and pickling behave).
        value = value.astimezone(UTC)
        return datetime(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
            tzinfo=UTC,
        )
    return value


def _from_sdk_entity(raw: Any) -> Entity:
    # None values only appear for selected-but-missing columns; treat them as missing.
    props = {k: _from_sdk_value(v) for k, v in raw.items() if v is not None}
    etag = raw.metadata.get("etag") or ""
    return Entity(properties=props, etag=str(etag))


def _odata_literal(value: TableValue) -> str:
    """An OData literal for ``value``; strings are quoted with ``'`` doubled, never raw."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if _INT32_MIN <= value <= _INT32_MAX else f"{value}L"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot filter on a non-finite float: {value!r}")
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, datetime):
        return "datetime'" + require_aware(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ") + "'"
    if isinstance(value, uuid.UUID):
        return f"guid'{value}'"
    if isinstance(value, bytes):
        return f"X'{value.hex()}'"
    raise TypeError(f"unsupported filter value type: {type(value).__name__}")


def build_filter(partition_key: str | None, where: Sequence[Clause]) -> str:
    """Build the OData ``$filter`` for a query (``""`` when there is no condition).

    The expression is first written with ``@pN`` placeholders and the values are then
    substituted as typed, escaped literals. (We do not use the SDK's ``parameters=``: it
    splits on spaces, so ``(@p0)`` breaks, and it writes 2**31..2**32-1 without the ``L``.)
    """
    check_clauses(where)
    params: list[TableValue] = []

    def cmp(c: Cmp) -> str:
        params.append(c.value)
        return f"{c.column} {c.op.value} @p{len(params) - 1}"

    parts: list[str] = []
    if partition_key is not None:
        parts.append(cmp(Cmp("PartitionKey", Op.EQ, partition_key)))
    for clause in where:
        if isinstance(clause, AnyOf):
            parts.append("(" + " or ".join(cmp(a) for a in clause.alternatives) + ")")
        else:
            parts.append(cmp(clause))
    template = " and ".join(parts)
    return _PARAM_RE.sub(lambda m: _odata_literal(params[int(m.group(1))]), template)


def _encode_token(token: Any) -> str | None:
    """The SDK's ``{"PartitionKey", "RowKey"}`` continuation dict as our token."""
    if not token:
        return None
    return encode_continuation(token.get("PartitionKey"), token.get("RowKey"))


def _decode_token(token: str | None) -> dict[str, Any] | None:
    """Our token as the SDK's continuation dict."""
    if token is None:
        return None
    partition_key, row_key = decode_continuation(token)
    return {"PartitionKey": partition_key, "RowKey": row_key}


def _method(mode: UpdateMode) -> str:
    """The HTTP method of an upsert or update: merge is ``PATCH``, replace ``PUT``."""
    return "PATCH" if mode is UpdateMode.MERGE else "PUT"


def _sdk_mode(mode: UpdateMode) -> Any:
    return SdkUpdateMode.MERGE if mode is UpdateMode.MERGE else SdkUpdateMode.REPLACE


def _etag_of(result: Mapping[str, Any] | None) -> str:
    return str((result or {}).get("etag") or "")


# --- queues ------------------------------------------------------------------------------


def _to_message(m: Any) -> QueueMessage:
    content = m.content
    if isinstance(content, bytes):
        content = content.decode("utf-8")
    return QueueMessage(
        id=str(m.id),
        pop_receipt=m.pop_receipt,
        content=str(content) if content is not None else "",
        dequeue_count=int(m.dequeue_count or 0),
        inserted_on=m.inserted_on,
        next_visible_on=m.next_visible_on,
    )


class AzureQueue:
    """A storage queue over :class:`azure.storage.queue.aio.QueueClient` (raw text bodies).

    With ``fast`` (the lean transport, :mod:`durable_azure.storage.rest`) the hot message
    operations go through it; creation, deletion, peeks and properties stay on the SDK.
    """

    def __init__(
        self, client: QueueClient, stats: StorageStats, fast: rest.RestQueueOps | None = None
    ) -> None:
        self._client = client
        self._stats = stats
        self._fast = fast

    @property
    def name(self) -> str:
        """The queue's name."""
        return str(self._client.queue_name)

    async def create(self) -> None:
        """Create the queue; succeeds if it already exists."""
        self._stats.add(OpKind.QUEUE_ADMIN)
        try:
            with _azure_errors(f"create queue {self.name}"):
                await self._client.create_queue()
        except AlreadyExistsError as err:
            if _being_deleted(err):
                raise

    async def delete_queue(self) -> None:
        """Delete the queue; succeeds if it does not exist."""
        self._stats.add(OpKind.QUEUE_ADMIN)
        with contextlib.suppress(NotFoundError), _azure_errors(f"delete queue {self.name}"):
            await self._client.delete_queue()

    async def send(self, content: str, *, visibility_timeout: float = 0.0) -> None:
        """Enqueue ``content`` (raw text) with infinite TTL, hidden for ``visibility_timeout``."""
        delay = check_visibility_timeout(visibility_timeout)
        self._stats.add(OpKind.QUEUE_SEND)
        if self._fast is not None:
            await self._fast.send(content, delay)
            return
        with _azure_errors(f"send to {self.name}"):
            await self._client.send_message(content, visibility_timeout=delay, time_to_live=-1)

    async def receive(self, max_messages: int, visibility_timeout: float) -> list[QueueMessage]:
        """Receive up to ``max_messages`` (1-32) in ONE request; ``[]`` if none is visible.

        The service requires a receive visibility timeout of at least 1 s.
        """
        check_message_count(max_messages)
        hide = check_visibility_timeout(visibility_timeout, minimum=1)
        self._stats.add(OpKind.QUEUE_RECEIVE)
        if self._fast is not None:
            return await self._fast.receive(max_messages, hide)
        with _azure_errors(f"receive from {self.name}"):
            # Without messages_per_page the SDK pages one message per HTTP call, and
            # iterating the pager would drain the queue: take exactly one page.
            pager = self._client.receive_messages(
                messages_per_page=max_messages, visibility_timeout=hide
            )
            pages = pager.by_page()
            try:
                page = await pages.__anext__()
            except StopAsyncIteration:  # the aio pager's way of saying "empty"
                return []
            return [_to_message(m) async for m in page]

    async def delete(self, message_id: str, pop_receipt: str) -> None:
        """Delete a received message; :class:`MessageGoneError` if gone or receipt stale."""
        self._stats.add(OpKind.QUEUE_DELETE)
        if self._fast is not None:
            await self._fast.delete(message_id, pop_receipt)
            return
        with _azure_errors(f"delete message {message_id} from {self.name}", message_op=True):
            await self._client.delete_message(message_id, pop_receipt)

    async def update_visibility(
        self, message_id: str, pop_receipt: str, visibility_timeout: float
    ) -> str:
        """Change a received message's visibility; returns the new pop receipt."""
        hide = check_visibility_timeout(visibility_timeout)
        self._stats.add(OpKind.QUEUE_UPDATE)
        if self._fast is not None:
            return await self._fast.update_visibility(message_id, pop_receipt, hide)
        with _azure_errors(f"update message {message_id} in {self.name}", message_op=True):
            updated = await self._client.update_message(
                message_id, pop_receipt, visibility_timeout=hide
            )
        return str(updated.pop_receipt)

    async def peek(self, max_messages: int) -> list[QueueMessage]:
        """Up to ``max_messages`` (1-32) visible messages, without receiving them."""
        check_message_count(max_messages)
        self._stats.add(OpKind.QUEUE_PEEK)
        with _azure_errors(f"peek {self.name}"):
            messages = await self._client.peek_messages(max_messages=max_messages)
        return [_to_message(m) for m in messages]

    async def approximate_count(self) -> int:
        """The approximate number of messages (one Get Queue Properties, counted as a peek)."""
        self._stats.add(OpKind.QUEUE_PEEK)
        with _azure_errors(f"get properties of {self.name}"):
            props = await self._client.get_queue_properties()
        return int(props.approximate_message_count or 0)


# --- tables ------------------------------------------------------------------------------


def _with_keys(select: Sequence[str] | None) -> list[str] | None:
    if select is None:
        return None
    return list(dict.fromkeys(["PartitionKey", "RowKey", *select]))


class AzureTable:
    """A storage table over :class:`azure.data.tables.aio.TableClient`.

    With ``fast`` (the lean transport, :mod:`durable_azure.storage.rest`) reads, queries,
    writes and transactions go through it; creation and deletion stay on the SDK.
    """

    def __init__(
        self, client: TableClient, stats: StorageStats, fast: rest.RestTableOps | None = None
    ) -> None:
        self._client = client
        self._stats = stats
        self._fast = fast

    @property
    def name(self) -> str:
        """The table's name."""
        return str(self._client.table_name)

    async def create(self) -> None:
        """Create the table; succeeds if it already exists."""
        self._stats.add(OpKind.TABLE_ADMIN)
        try:
            with _azure_errors(f"create table {self.name}"):
                await self._client.create_table()
        except AlreadyExistsError as err:
            if _being_deleted(err):
                raise

    async def delete_table(self) -> None:
        """Delete the table; succeeds if it does not exist."""
        self._stats.add(OpKind.TABLE_ADMIN)
        with contextlib.suppress(NotFoundError), _azure_errors(f"delete table {self.name}"):
            await self._client.delete_table()

    async def get(
        self, partition_key: str, row_key: str, *, select: Sequence[str] | None = None
    ) -> Entity | None:
        """Point read; ``None`` when the entity does not exist."""
        self._stats.add(OpKind.TABLE_READ)
        if self._fast is not None:
            return await self._fast.get(partition_key, row_key, _with_keys(select))
        try:
            with _azure_errors(f"get {partition_key}/{row_key} from {self.name}"):
                raw = await self._client.get_entity(
                    partition_key, row_key, select=_with_keys(select)
                )
        except NotFoundError as err:
            if err.code == "TableNotFound":
                raise
            return None
        return _from_sdk_entity(raw)

    async def query(
        self,
        *,
        partition_key: str | None = None,
        where: Sequence[Clause] = (),
        select: Sequence[str] | None = None,
        page_size: int | None = None,
        continuation: str | None = None,
    ) -> tuple[list[Entity], str | None]:
        """One page of matching entities (everything when ``page_size`` is None)."""
        check_page_size(page_size)
        query_filter = build_filter(partition_key, where)
        start = _decode_token(continuation)
        columns = _with_keys(select)
        out: list[Entity] = []
        if self._fast is not None:
            position = decode_continuation(continuation) if continuation else None
            while True:
                self._stats.add(OpKind.TABLE_QUERY)
                page, position = await self._fast.query(query_filter, columns, page_size, position)
                out.extend(page)
                token = encode_continuation(*position) if position else None
                if page_size is not None or token is None:
                    return out, token
        with _azure_errors(f"query {self.name}"):
            if query_filter:
                pager = self._client.query_entities(
                    query_filter, results_per_page=page_size, select=columns
                )
            else:
                pager = self._client.list_entities(results_per_page=page_size, select=columns)
            # Typed as str by azure-core, but the tables pager wants its dict token.
            pages: Any = pager.by_page(continuation_token=cast(Any, start))
            while True:
                self._stats.add(OpKind.TABLE_QUERY)
                try:
                    page = await pages.__anext__()
                except StopAsyncIteration:
                    return out, None
                out.extend([_from_sdk_entity(e) async for e in page])
                token = _encode_token(pages.continuation_token)
                if page_size is not None or token is None:
                    return out, token

    async def insert(self, entity: Mapping[str, TableValue]) -> str:
        """Insert; returns the new ETag. :class:`AlreadyExistsError` on conflict."""
        sdk_entity = _to_sdk_entity(entity)  # client-side errors: nothing sent, not counted
        self._stats.add(OpKind.TABLE_WRITE)
        if self._fast is not None:
            return await self._fast.write("POST", entity, f"insert into {self.name}")
        with _azure_errors(f"insert into {self.name}"):
            result = await self._client.create_entity(sdk_entity)
        return _etag_of(result)

    async def upsert(self, entity: Mapping[str, TableValue], mode: UpdateMode) -> str:
        """Insert or update (merge/replace) unconditionally; returns the new ETag."""
        sdk_entity = _to_sdk_entity(entity)
        self._stats.add(OpKind.TABLE_WRITE)
        if self._fast is not None:
            return await self._fast.write(_method(mode), entity, f"upsert into {self.name}")
        with _azure_errors(f"upsert into {self.name}"):
            result = await self._client.upsert_entity(sdk_entity, mode=_sdk_mode(mode))
        return _etag_of(result)

    async def update(self, entity: Mapping[str, TableValue], *, etag: str, mode: UpdateMode) -> str:
        """Update if the ETag matches (``"*"`` = any); returns the new ETag."""
        sdk_entity = _to_sdk_entity(entity)
        self._stats.add(OpKind.TABLE_WRITE)
        if self._fast is not None:
            what = f"update in {self.name}"
            return await self._fast.write(_method(mode), entity, what, etag=etag)
        with _azure_errors(f"update in {self.name}"):
            # IfNotModified sends If-Match: <etag>, which for "*" means "exists".
            result = await self._client.update_entity(
                sdk_entity,
                mode=_sdk_mode(mode),
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        return _etag_of(result)

    async def delete(self, partition_key: str, row_key: str, *, etag: str | None = None) -> None:
        """Delete; a missing entity is fine (the SDK swallows the 404, with or without etag)."""
        self._stats.add(OpKind.TABLE_WRITE)
        if self._fast is not None:
            await self._fast.delete(partition_key, row_key, etag)
            return
        with _azure_errors(f"delete {partition_key}/{row_key} from {self.name}"):
            if etag is None or etag == "*":
                await self._client.delete_entity(partition_key, row_key)
            else:
                await self._client.delete_entity(
                    partition_key, row_key, etag=etag, match_condition=MatchConditions.IfNotModified
                )

    async def transaction(self, ops: Sequence[TableOp]) -> list[str]:
        """Apply 1-100 ops on one partition atomically; returns their ETags (``""`` for deletes).

        The ``$batch`` body is built and read by :mod:`~durable_azure.storage.table_batch`
        (the SDK's multipart handling costs more CPU than the rest of an episode) and sent
        through the table client's own pipeline: its authentication, retries and timeouts.
        """
        check_transaction(ops)
        self._stats.add(OpKind.TABLE_BATCH)
        if self._fast is not None:
            return await self._fast.transaction(ops)
        what = f"transaction on {self.name}"
        client = self._client
        base = f"{client.scheme}://{client._primary_hostname}"
        content_type, body = table_batch.encode_request(f"{base}/{self.name}", ops)
        request = HttpRequest(
            "POST",
            f"{base}/$batch",
            headers={
                "Content-Type": content_type,
                "Accept": "application/json",
                "DataServiceVersion": "3.0",
                "MaxDataServiceVersion": "3.0;NetFx",
                "x-ms-version": client.api_version,
            },
            content=body,
        )
        with _azure_errors(what):
            response = await client._client.send_request(request, stream=True)
            await response.read()
        return rest.batch_outcome(what, response.status_code, response.headers, response.content)


# --- blobs -------------------------------------------------------------------------------


class AzureBlobContainer:
    """A blob container over :class:`azure.storage.blob.aio.ContainerClient` (block blobs)."""

    def __init__(self, client: ContainerClient, stats: StorageStats) -> None:
        self._client = client
        self._stats = stats

    @property
    def name(self) -> str:
        """The container's name."""
        return str(self._client.container_name)

    @property
    def url(self) -> str:
        """The container's absolute URL."""
        return str(self._client.url)

    async def create(self) -> None:
        """Create the container; succeeds if it already exists."""
        self._stats.add(OpKind.BLOB_ADMIN)
        try:
            with _azure_errors(f"create container {self.name}"):
                await self._client.create_container()
        except AlreadyExistsError as err:
            if _being_deleted(err):
                raise

    async def delete_container(self) -> None:
        """Delete the container; succeeds if it does not exist."""
        self._stats.add(OpKind.BLOB_ADMIN)
        with contextlib.suppress(NotFoundError), _azure_errors(f"delete container {self.name}"):
            await self._client.delete_container()

    async def upload(self, blob_name: str, data: bytes) -> None:
        """Write (or overwrite) a block blob."""
        self._stats.add(OpKind.BLOB_UPLOAD)
        with _azure_errors(f"upload {self.name}/{blob_name}"):
            await self._client.upload_blob(blob_name, data, overwrite=True)

    async def download(self, blob_name: str) -> bytes:
        """Read a blob; :class:`NotFoundError` if it does not exist."""
        self._stats.add(OpKind.BLOB_DOWNLOAD)
        with _azure_errors(f"download {self.name}/{blob_name}"):
            stream = await self._client.download_blob(blob_name)
            return bytes(await stream.readall())

    async def delete(self, blob_name: str) -> None:
        """Delete a blob; succeeds if it does not exist (but not if the container is missing)."""
        self._stats.add(OpKind.BLOB_DELETE)
        try:
            with _azure_errors(f"delete {self.name}/{blob_name}"):
                await self._client.delete_blob(blob_name)
        except NotFoundError as err:
            if err.code == "ContainerNotFound":
                raise

    async def list_names(self, prefix: str = "") -> list[str]:
        """Names of the blobs starting with ``prefix`` (one request per page of 5000)."""
        names: list[str] = []
        with _azure_errors(f"list {self.name}"):
            pager = self._client.list_blob_names(name_starts_with=prefix or None)
            pages: Any = pager.by_page()
            while True:
                self._stats.add(OpKind.BLOB_LIST)
                try:
                    page = await pages.__anext__()
                except StopAsyncIteration:
                    return names
                names.extend([str(n) async for n in page])
                if pages.continuation_token is None:
                    return names


# --- the account -------------------------------------------------------------------------


def _check_account_key(connection_string: str) -> None:
    """Refuse an AccountKey that is not base64 now, not at the first request."""
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip().lower() != "accountkey":
            continue
        try:
            base64.b64decode(value.strip() + "=" * (-len(value.strip()) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                "the connection string's AccountKey is not valid base64 (copy the key "
                "exactly as the portal shows it)"
            ) from None


def _endpoint(url: str) -> str:
    """A service client's URL without its query (a SAS) or trailing slash."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _lean_auth(table_service: TableServiceClient, credential: Any = None) -> rest.Auth | None:
    """The lean transport's credentials: a token credential if given, else the account
    key or SAS the SDK read from the connection string (None: anonymous, SDK only)."""
    if credential is not None:
        return rest.TokenAuth(credential) if hasattr(credential, "get_token") else None
    sdk_credential = table_service.credential
    if isinstance(sdk_credential, AzureNamedKeyCredential):
        name, key = sdk_credential.named_key
        return rest.SharedKeyAuth(name, key)
    if isinstance(sdk_credential, AzureSasCredential):
        return rest.SasAuth(sdk_credential.signature)
    return None


class AzureStorageAccount:
    """One storage account: shared service clients and cached per-name wrappers.

    Build it with :meth:`from_connection_string` or :meth:`from_credential`; call
    :meth:`close` when done. With ``lean=True`` (the default of both) the hot queue and
    table requests go through the lean transport (:mod:`durable_azure.storage.rest`);
    ``lean=False`` keeps every request on the Azure SDK.
    """

    def __init__(
        self,
        *,
        queue_service: QueueServiceClient,
        table_service: TableServiceClient,
        blob_service: BlobServiceClient,
        lean: rest.RestClient | None = None,
    ) -> None:
        self.stats = StorageStats()
        self._queue_service = queue_service
        self._table_service = table_service
        self._blob_service = blob_service
        self._lean = lean
        self._queue_endpoint = _endpoint(queue_service.url)
        self._table_endpoint = _endpoint(table_service.url)
        self._queues: dict[str, AzureQueue] = {}
        self._tables: dict[str, AzureTable] = {}
        self._containers: dict[str, AzureBlobContainer] = {}

    @classmethod
    def from_connection_string(
        cls, connection_string: str, *, lean: bool = True
    ) -> AzureStorageAccount:
        """From a connection string (``UseDevelopmentStorage=true`` or explicit endpoints)."""
        _check_account_key(connection_string)
        try:
            table_service = TableServiceClient.from_connection_string(
                connection_string, **STORAGE_TIMEOUTS
            )
            queue_service = QueueServiceClient.from_connection_string(
                connection_string, **STORAGE_RETRY, **STORAGE_TIMEOUTS
            )
            blob_service = BlobServiceClient.from_connection_string(
                connection_string, **STORAGE_RETRY, **STORAGE_TIMEOUTS
            )
        except (ValueError, AzureError) as err:
            raise ConfigurationError(f"invalid storage connection string: {err}") from err
        auth = _lean_auth(table_service) if lean else None
        return cls(
            queue_service=queue_service,
            table_service=table_service,
            blob_service=blob_service,
            lean=rest.RestClient(auth) if auth is not None else None,
        )

    @classmethod
    def from_credential(
        cls,
        credential: Any,
        *,
        account_name: str | None = None,
        blob_url: str | None = None,
        queue_url: str | None = None,
        table_url: str | None = None,
        connection_verify: bool | str = True,
        lean: bool = True,
    ) -> AzureStorageAccount:
        """From an azure-identity (token) credential and the account name or endpoint URLs.

        Endpoints not given are derived from ``account_name`` as
        ``https://<account>.<service>.core.windows.net``. ``connection_verify``: False, or
        the path of a CA bundle (PEM) to trust instead of the system's (default True).
        """
        common: dict[str, Any] = (
            {} if connection_verify is True else {"connection_verify": connection_verify}
        )
        common.update(STORAGE_TIMEOUTS)

        def endpoint(url: str | None, service: str) -> str:
            if url:
                return url
            if not account_name:
                raise ConfigurationError(
                    f"from_credential needs account_name or an explicit {service}_url"
                )
            return f"https://{account_name}.{service}.core.windows.net"

        table_service = TableServiceClient(
            endpoint(table_url, "table"), credential=credential, **common
        )
        auth = _lean_auth(table_service, credential) if lean else None
        return cls(
            queue_service=QueueServiceClient(
                endpoint(queue_url, "queue"), credential=credential, **STORAGE_RETRY, **common
            ),
            table_service=table_service,
            blob_service=BlobServiceClient(
                endpoint(blob_url, "blob"), credential=credential, **STORAGE_RETRY, **common
            ),
            lean=(
                rest.RestClient(auth, ssl_context=rest.ssl_setting(connection_verify))
                if auth is not None
                else None
            ),
        )

    def queue(self, name: str) -> AzureQueue:
        """The (cached) queue wrapper for ``name``."""
        if name not in self._queues:
            # None = no base64 policy: bodies are stored and read back as raw text.
            client = self._queue_service.get_queue_client(
                name, message_encode_policy=None, message_decode_policy=None
            )
            fast = None
            if self._lean is not None:
                fast = rest.RestQueueOps(self._lean, f"{self._queue_endpoint}/{name}")
            self._queues[name] = AzureQueue(client, self.stats, fast)
        return self._queues[name]

    def table(self, name: str) -> AzureTable:
        """The (cached) table wrapper for ``name``."""
        if name not in self._tables:
            fast = None
            if self._lean is not None:
                fast = rest.RestTableOps(self._lean, self._table_endpoint, name)
            self._tables[name] = AzureTable(
                self._table_service.get_table_client(name), self.stats, fast
            )
        return self._tables[name]

    def container(self, name: str) -> AzureBlobContainer:
        """The (cached) container wrapper for ``name``."""
        if name not in self._containers:
            client = self._blob_service.get_container_client(name)
            self._containers[name] = AzureBlobContainer(client, self.stats)
        return self._containers[name]

    async def close(self) -> None:
        """Close the three service clients (and with them the shared HTTP sessions)."""
        if self._lean is not None:
            await self._lean.close()
        for service in (self._queue_service, self._table_service, self._blob_service):
            with contextlib.suppress(AzureError):
                await service.close()
