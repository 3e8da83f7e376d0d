"""The lean transport: the engine's hot storage requests as plain signed HTTP over aiohttp.

Why: the Azure SDK spends 1.2-1.4 ms of client CPU on one simple request (its pipeline
of policies, generated operation code and model (de)serialisation); the same table read
signed here and sent with aiohttp costs 0.26 ms (``bench/request_cost.py``). An
orchestration makes about ten such requests, so the SDK was the largest share of the
worker's CPU.

What goes through here (:class:`RestQueueOps`, :class:`RestTableOps`): queue send,
receive, delete and update; table point read, query, insert, upsert, update, delete and
``$batch``. Everything else (creating and deleting queues, tables and containers, peeks,
queue properties, all blob traffic) stays on the SDK, in
:mod:`durable_azure.storage.azure_primitives`, which validates arguments, counts requests
and hands the hot ones to these classes when the account has a :class:`RestClient`.

Authentication (:class:`SharedKeyAuth`, :class:`SasAuth`, :class:`TokenAuth`): the
account key signs ``SharedKey`` (queues) and ``SharedKeyLite`` (tables) as the storage
service defines them; a SAS token is appended to the query; an azure-identity credential
gives a bearer token, cached until a few minutes before it expires.

Failures are raised as :mod:`durable_azure.errors`, classified by :func:`error_for` from
the HTTP status and the storage error code, exactly as the SDK path classifies them.
Transport failures and the statuses the service marks as transient are retried (see
:data:`RETRY_DELAYS`); a request whose answer was lost may have been applied, as with the
SDK, which retries the same requests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import logging
import random
import ssl
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape as xml_escape

import aiohttp
import yarl

from durable_azure.errors import (
    AlreadyExistsError,
    ConditionFailedError,
    MessageGoneError,
    NotFoundError,
    StorageError,
    TransactionFailedError,
)
from durable_azure.storage import table_batch
from durable_azure.storage.primitives import Entity, QueueMessage, TableOp, TableValue

__all__ = [
    "RestClient",
    "RestQueueOps",
    "RestTableOps",
    "SasAuth",
    "SharedKeyAuth",
    "TokenAuth",
    "entity_from_json",
    "error_for",
]

logger = logging.getLogger(__name__)

#: ``x-ms-version`` of queue requests (any version since 2017-11-09 accepts bearer tokens).
QUEUE_API_VERSION = "2021-08-06"
#: ``x-ms-version`` of table requests (the version the table SDK speaks).
TABLE_API_VERSION = "2019-02-02"
#: OAuth scope of a bearer token for Azure Storage.
STORAGE_SCOPE = "https://storage.azure.com/.default"
#: A cached bearer token is renewed this many seconds before it expires.
TOKEN_REFRESH_MARGIN = 300.0

#: Seconds to wait before each retry (jittered by up to a quarter). A transport failure
#: is first retried at once: the usual cause is a pooled keep-alive connection the
#: server closed while idle (Azurite closes them after 5 s), and a fresh one works.
#: Then roughly 1, 3, 5 and 9 s, as the SDK clients are configured
#: (``azure_primitives.STORAGE_RETRY``), so an outage of ~20 s is ridden out.
RETRY_DELAYS = (1.0, 3.0, 5.0, 9.0)
#: The statuses the storage service documents as transient.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Socket timeouts, seconds (the same as ``azure_primitives.STORAGE_TIMEOUTS``).
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0

_JSON = "application/json"
_ACCEPT_ENTITIES = "application/json;odata=minimalmetadata"
_USER_AGENT = "durable-azure (lean transport; aiohttp)"


# --- errors ------------------------------------------------------------------------------


def error_for(
    what: str, status: int, code: str | None, message: str = "", *, message_op: bool = False
) -> StorageError:
    """Our error for an HTTP status and storage error code.

    ``message_op``: a queue message delete or update, where a 404 or a stale pop receipt
    means the message is gone (:class:`MessageGoneError`), unless the queue itself is.
    """
    text = f"{what}: HTTP {status} {code or ''}".rstrip()
    if message_op and code != "QueueNotFound" and (status == 404 or code == "PopReceiptMismatch"):
        return MessageGoneError(text, status=status, code=code)
    if status == 404:
        return NotFoundError(text, status=status, code=code)
    if status == 409:
        return AlreadyExistsError(text, status=status, code=code)
    if status == 412:
        return ConditionFailedError(text, status=status, code=code)
    if status == 413:
        text += " (the request is too large)"
    elif message and not code:
        text += f": {message[:200]}"
    return StorageError(text, status=status, code=code)


def _xml_error(body: bytes) -> tuple[str | None, str]:
    """(code, message) of a queue/blob ``<Error>`` body."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None, body.decode("utf-8", "replace").strip()[:500]
    return root.findtext("Code"), root.findtext("Message") or ""


@dataclass(frozen=True, slots=True)
class Response:
    """A storage answer: status, headers (case-insensitive) and the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def error(self, what: str, *, message_op: bool = False) -> StorageError:
        """The error this (non-2xx) answer stands for."""
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            body_code, message = table_batch.odata_error(self.body)
        else:
            body_code, message = _xml_error(self.body) if self.body else (None, "")
        code = self.headers.get("x-ms-error-code") or body_code
        return error_for(what, self.status, code, message, message_op=message_op)


# --- authentication ----------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    """One request being built: what the signers read and add to."""

    method: str
    service: str  # "queue" or "table"
    path: str  # the URL path, percent-encoded, from the account endpoint's host on
    query: list[tuple[str, str]] = field(default_factory=list)  # names and raw values
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    sas: str = ""  # an already encoded SAS query, appended as is


class Auth(Protocol):
    """Adds the credentials to a request (called again for every retry)."""

    async def authorize(self, request: Request) -> None: ...


class SharedKeyAuth:
    """Account-key signatures: ``SharedKey`` for queues, ``SharedKeyLite`` for tables.

    With path-style endpoints (Azurite, ``http://host:port/account``) the path already
    starts with the account name, and the canonical resource names it once more, as the
    service's rules for such endpoints say.
    """

    def __init__(self, account: str, key: str) -> None:
        self._account = account
        self._key = base64.b64decode(key)

    def _signature(self, text: str) -> str:
        digest = hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).digest()
        return base64.b64encode(digest).decode("ascii")

    async def authorize(self, request: Request) -> None:
        headers = request.headers
        headers["x-ms-date"] = formatdate(usegmt=True)
        resource = f"/{self._account}{request.path}"
        if request.service == "table":
            text = f"{headers['x-ms-date']}\n{resource}"
            headers["Authorization"] = f"SharedKeyLite {self._account}:{self._signature(text)}"
            return
        canonical_headers = "".join(
            f"{name}:{value.strip()}\n"
            for name, value in sorted((k.lower(), v) for k, v in headers.items())
            if name.startswith("x-ms-")
        )
        params: dict[str, list[str]] = {}
        for name, value in request.query:
            params.setdefault(name.lower(), []).append(value)
        canonical_query = "".join(
            f"\n{name}:{','.join(sorted(values))}" for name, values in sorted(params.items())
        )
        length = str(len(request.body)) if request.body else ""
        text = "\n".join(
            (
                request.method,
                "",  # Content-Encoding
                "",  # Content-Language
                length,
                "",  # Content-MD5
                headers.get("Content-Type", ""),
                "",  # Date (x-ms-date is signed instead)
                "",  # If-Modified-Since
                headers.get("If-Match", ""),
                "",  # If-None-Match
                "",  # If-Unmodified-Since
                "",  # Range
                canonical_headers + resource + canonical_query,
            )
        )
        headers["Authorization"] = f"SharedKey {self._account}:{self._signature(text)}"


class SasAuth:
    """A shared access signature, appended to every request's query."""

    def __init__(self, token: str) -> None:
        self._token = token.lstrip("?")

    async def authorize(self, request: Request) -> None:
        request.sas = self._token


class TokenAuth:
    """A bearer token from an azure-identity credential (sync or async ``get_token``),
    cached until :data:`TOKEN_REFRESH_MARGIN` seconds before it expires."""

    def __init__(self, credential: Any) -> None:
        self._credential = credential
        self._token = ""
        self._expires_on = 0.0
        self._lock = asyncio.Lock()

    async def authorize(self, request: Request) -> None:
        if time.time() > self._expires_on - TOKEN_REFRESH_MARGIN:
            async with self._lock:
                if time.time() > self._expires_on - TOKEN_REFRESH_MARGIN:
                    await self._refresh()
        request.headers["Authorization"] = f"Bearer {self._token}"

    async def _refresh(self) -> None:
        get_token = self._credential.get_token
        try:
            if inspect.iscoroutinefunction(get_token):
                token = await get_token(STORAGE_SCOPE)
            else:  # a sync credential may block on the network: not on the loop
                token = await asyncio.to_thread(get_token, STORAGE_SCOPE)
        except Exception as err:  # whatever the credential raises: ours, with its words
            raise StorageError(
                f"cannot get a storage access token from {type(self._credential).__name__}: "
                f"{type(err).__name__}: {err}"
            ) from err
        self._token, self._expires_on = token.token, float(token.expires_on)


# --- the client --------------------------------------------------------------------------


def ssl_setting(connection_verify: bool | str) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl=`` for the SDK-style ``connection_verify`` (True: the system's
    CAs, False: no verification, or the path of a CA bundle)."""
    if isinstance(connection_verify, bool):
        return connection_verify
    return ssl.create_default_context(cafile=connection_verify)


class RestClient:
    """One aiohttp session (created on first use, in the running loop) and the credentials.

    Args:
        auth: how requests are authorised.
        ssl_context: aiohttp's ``ssl=`` (True: verify with the system's CAs).
    """

    def __init__(self, auth: Auth, *, ssl_context: ssl.SSLContext | bool = True) -> None:
        self._auth = auth
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                # aiohttp would add "Content-Type: application/octet-stream" to a PUT
                # without a body (a visibility update): a header the signature lacks.
                skip_auto_headers=("Content-Type",),
                trust_env=True,
                headers={"User-Agent": _USER_AGENT},
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session (a later request opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, origin: str, request: Request, what: str) -> Response:
        """Send ``request`` to ``origin`` (``scheme://host:port``), retrying transport
        failures and transient statuses; the last answer is returned whatever its status.

        Raises:
            StorageError: the request could not be sent (after the retries).
        """
        stale_retry_done = False
        attempt = 0
        while True:
            await self._auth.authorize(request)
            url = origin + request.path
            query = "&".join(f"{n}={quote(v, safe='')}" for n, v in request.query)
            if request.sas:
                query = f"{query}&{request.sas}" if query else request.sas
            if query:
                url = f"{url}?{query}"
            try:
                async with self._session_now().request(
                    request.method,
                    yarl.URL(url, encoded=True),
                    headers=request.headers,
                    data=request.body or None,
                    ssl=self._ssl,
                ) as raw:
                    body = await raw.read()
                    response = Response(raw.status, raw.headers, body)
            except (aiohttp.ClientError, TimeoutError) as err:
                if not stale_retry_done:
                    stale_retry_done = True
                    logger.debug("%s: %s; retrying at once", what, err)
                    continue
                if attempt >= len(RETRY_DELAYS):
                    raise StorageError(f"{what}: {type(err).__name__}: {err}") from err
                await self._pause(what, attempt, f"{type(err).__name__}: {err}")
                attempt += 1
                continue
            if response.status in RETRY_STATUSES and attempt < len(RETRY_DELAYS):
                await self._pause(what, attempt, f"HTTP {response.status}")
                attempt += 1
                continue
            return response

    @staticmethod
    async def _pause(what: str, attempt: int, cause: str) -> None:
        delay = RETRY_DELAYS[attempt] * (1 + random.uniform(-0.25, 0.25))
        logger.debug("%s: %s; retry %d in %.1f s", what, cause, attempt + 1, delay)
        await asyncio.sleep(delay)


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """An account's service endpoint split for requests: ``origin`` + ``path`` prefix."""

    origin: str
    path: str

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        parts = urlsplit(url)
        return cls(f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/"))


# --- queues ------------------------------------------------------------------------------


def _http_date(text: str | None) -> datetime:
    if not text:
        raise ValueError("a message without its times")
    return parsedate_to_datetime(text).astimezone(UTC)


def parse_messages(body: bytes) -> list[QueueMessage]:
    """The messages of a Get Messages answer (``<QueueMessagesList>``)."""
    root = ElementTree.fromstring(body)
    return [
        QueueMessage(
            id=m.findtext("MessageId") or "",
            pop_receipt=m.findtext("PopReceipt") or "",
            content=m.findtext("MessageText") or "",
            dequeue_count=int(m.findtext("DequeueCount") or 0),
            inserted_on=_http_date(m.findtext("InsertionTime")),
            next_visible_on=_http_date(m.findtext("TimeNextVisible")),
        )
        for m in root.iter("QueueMessage")
    ]


class RestQueueOps:
    """The hot operations of one queue (``queue_url``: the queue's URL, no query)."""

    def __init__(self, client: RestClient, queue_url: str) -> None:
        endpoint = _Endpoint.parse(queue_url)
        self._client = client
        self._origin = endpoint.origin
        self._messages = f"{endpoint.path}/messages"
        self.name = endpoint.path.rsplit("/", 1)[-1]

    def _request(self, method: str, path: str, query: list[tuple[str, str]]) -> Request:
        return Request(method, "queue", path, query, {"x-ms-version": QUEUE_API_VERSION})

    async def send(self, content: str, visibility_timeout: int) -> None:
        what = f"send to {self.name}"
        request = self._request(
            "POST",
            self._messages,
            [("messagettl", "-1"), ("visibilitytimeout", str(visibility_timeout))],
        )
        request.headers["Content-Type"] = "application/xml"
        request.body = (
            f"<QueueMessage><MessageText>{xml_escape(content)}</MessageText></QueueMessage>"
        ).encode()
        response = await self._client.send(self._origin, request, what)
        if response.status != 201:
            raise response.error(what)

    async def receive(self, max_messages: int, visibility_timeout: int) -> list[QueueMessage]:
        what = f"receive from {self.name}"
        request = self._request(
            "GET",
            self._messages,
            [("numofmessages", str(max_messages)), ("visibilitytimeout", str(visibility_timeout))],
        )
        response = await self._client.send(self._origin, request, what)
        if response.status != 200:
            raise response.error(what)
        try:
            return parse_messages(response.body)
        except (ElementTree.ParseError, ValueError) as err:
            raise StorageError(f"{what}: unreadable answer: {err}") from err

    def _message_request(self, method: str, message_id: str, pop_receipt: str) -> Request:
        path = f"{self._messages}/{quote(message_id, safe='')}"
        return self._request(method, path, [("popreceipt", pop_receipt)])

    async def delete(self, message_id: str, pop_receipt: str) -> None:
        what = f"delete message {message_id} from {self.name}"
        request = self._message_request("DELETE", message_id, pop_receipt)
        response = await self._client.send(self._origin, request, what)
        if response.status != 204:
            raise response.error(what, message_op=True)

    async def update_visibility(
        self, message_id: str, pop_receipt: str, visibility_timeout: int
    ) -> str:
        what = f"update message {message_id} in {self.name}"
        request = self._message_request("PUT", message_id, pop_receipt)
        request.query.append(("visibilitytimeout", str(visibility_timeout)))
        response = await self._client.send(self._origin, request, what)
        if response.status != 204:
            raise response.error(what, message_op=True)
        receipt = response.headers.get("x-ms-popreceipt")
        if not receipt:
            raise StorageError(f"{what}: the answer has no new pop receipt")
        return receipt


# --- tables ------------------------------------------------------------------------------


def _edm(kind: str, value: Any) -> TableValue:
    """A property value annotated with ``@odata.type`` as the plain Python value."""
    if kind == "Edm.DateTime":
        return datetime.fromisoformat(value).astimezone(UTC)
    if kind == "Edm.Int64":
        return int(value)
    if kind == "Edm.Double":
        return float(value)  # also "NaN", "Infinity", "-Infinity"
    if kind == "Edm.Binary":
        return base64.b64decode(value)
    if kind == "Edm.Guid":
        return uuid.UUID(value)
    return value


def entity_from_json(raw: Mapping[str, Any], etag: str | None = None) -> Entity:
    """An entity from its JSON (minimal metadata) form; the table's own ``Timestamp`` and
    the ``odata.*`` metadata are not properties (as with the SDK)."""
    properties: dict[str, TableValue] = {}
    for name, value in raw.items():
        if name.startswith("odata.") or "@odata." in name or name == "Timestamp":
            continue
        if value is None:
            continue
        kind = raw.get(name + "@odata.type")
        properties[name] = _edm(kind, value) if kind else value
    return Entity(properties=properties, etag=str(etag or raw.get("odata.etag") or ""))


def _entity_path(table_path: str, partition_key: str, row_key: str) -> str:
    pk, rk = (quote(k.replace("'", "''"), safe="") for k in (partition_key, row_key))
    return f"{table_path}(PartitionKey='{pk}',RowKey='{rk}')"


def _select(columns: Sequence[str] | None) -> list[tuple[str, str]]:
    return [("$select", ",".join(columns))] if columns else []


class RestTableOps:
    """The hot operations of one table (``account_url``: the table endpoint, no query)."""

    def __init__(self, client: RestClient, account_url: str, name: str) -> None:
        endpoint = _Endpoint.parse(account_url)
        self._client = client
        self._origin = endpoint.origin
        self._account_path = endpoint.path
        self._table = f"{endpoint.path}/{name}"
        self.name = name

    def _request(
        self, method: str, path: str, query: list[tuple[str, str]] | None = None
    ) -> Request:
        return Request(
            method,
            "table",
            path,
            query or [],
            {
                "x-ms-version": TABLE_API_VERSION,
                "Accept": _ACCEPT_ENTITIES,
                "DataServiceVersion": "3.0",
                "MaxDataServiceVersion": "3.0;NetFx",
            },
        )

    async def get(
        self, partition_key: str, row_key: str, select: Sequence[str] | None
    ) -> Entity | None:
        what = f"get {partition_key}/{row_key} from {self.name}"
        path = _entity_path(self._table, partition_key, row_key)
        response = await self._client.send(
            self._origin, self._request("GET", path, _select(select)), what
        )
        if response.status == 200:
            return entity_from_json(json.loads(response.body), response.headers.get("ETag"))
        error = response.error(what)
        if isinstance(error, NotFoundError) and error.code != "TableNotFound":
            return None
        raise error

    async def query(
        self,
        query_filter: str,
        select: Sequence[str] | None,
        page_size: int | None,
        start: tuple[str | None, str | None] | None,
    ) -> tuple[list[Entity], tuple[str | None, str | None] | None]:
        """One page: entities and the next page's (NextPartitionKey, NextRowKey), if any."""
        what = f"query {self.name}"
        query = [("$filter", query_filter)] if query_filter else []
        query += _select(select)
        if page_size is not None:
            query.append(("$top", str(page_size)))
        if start is not None:
            next_pk, next_rk = start
            if next_pk is not None:
                query.append(("NextPartitionKey", next_pk))
            if next_rk is not None:
                query.append(("NextRowKey", next_rk))
        response = await self._client.send(
            self._origin, self._request("GET", f"{self._table}()", query), what
        )
        if response.status != 200:
            raise response.error(what)
        entities = [entity_from_json(e) for e in json.loads(response.body).get("value", [])]
        next_pk = response.headers.get("x-ms-continuation-NextPartitionKey")
        next_rk = response.headers.get("x-ms-continuation-NextRowKey")
        return entities, ((next_pk, next_rk) if next_pk or next_rk else None)

    async def write(
        self,
        method: str,
        entity: Mapping[str, TableValue],
        what: str,
        *,
        etag: str | None = None,
    ) -> str:
        """Insert (``POST``), replace (``PUT``) or merge (``PATCH``) one entity; ``etag``
        makes it conditional (``If-Match``). Returns the new ETag."""
        body = json.dumps(table_batch.entity_json(entity), separators=(",", ":")).encode()
        if method == "POST":
            path = self._table
        else:
            path = _entity_path(self._table, str(entity["PartitionKey"]), str(entity["RowKey"]))
        request = self._request(method, path)
        request.headers["Content-Type"] = _JSON
        if method == "POST":
            request.headers["Prefer"] = "return-no-content"
        if etag is not None:
            request.headers["If-Match"] = etag
        request.body = body
        response = await self._client.send(self._origin, request, what)
        if response.status not in (201, 204):
            raise response.error(what)
        return response.headers.get("ETag", "")

    async def delete(self, partition_key: str, row_key: str, etag: str | None) -> None:
        """Delete; a 404 is fine, a missing table's too (as with the SDK and the memory
        account: deleting is idempotent)."""
        what = f"delete {partition_key}/{row_key} from {self.name}"
        request = self._request("DELETE", _entity_path(self._table, partition_key, row_key))
        request.headers["If-Match"] = etag or "*"
        response = await self._client.send(self._origin, request, what)
        if response.status == 204:
            return
        if response.status != 404:
            raise response.error(what)

    async def transaction(self, ops: Sequence[TableOp]) -> list[str]:
        """A ``$batch`` of ``ops`` (checked by the caller); their ETags."""
        what = f"transaction on {self.name}"
        table_url = f"{self._origin}{self._table}"
        content_type, body = table_batch.encode_request(table_url, ops)
        request = self._request("POST", f"{self._account_path}/$batch")
        request.headers["Content-Type"] = content_type
        request.headers["Accept"] = _JSON
        request.body = body
        response = await self._client.send(self._origin, request, what)
        return batch_outcome(what, response.status, response.headers, response.body)


def batch_outcome(what: str, status: int, headers: Mapping[str, str], body: bytes) -> list[str]:
    """The ETags of an accepted ``$batch``, or the error that rejected it (the same
    reading for the SDK path and this one)."""
    if status != 202:
        code, message = table_batch.odata_error(body)
        raise error_for(what, status, code, message)
    try:
        outcome = table_batch.decode_response(headers.get("Content-Type", ""), body)
    except table_batch.BatchFormatError as err:
        raise StorageError(f"{what}: unreadable response: {err}") from err
    if isinstance(outcome, table_batch.BatchFailure):
        part = outcome.part
        cause = error_for(f"{what}, op #{outcome.index}", part.status, part.code, part.message)
        if part.code == "TableNotFound":
            # Not an op's failure (the service still names op 0): the table is gone.
            raise cause
        raise TransactionFailedError(
            f"{what} failed at op #{outcome.index}: {cause}", index=outcome.index, cause=cause
        )
    return [part.etag for part in outcome]
